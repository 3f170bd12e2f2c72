//! `make bench`: what a Breakwater sidecar costs, measured against no proxy and against HAProxy
//! on the same load in the same run, reported as ratios.
//!
//! One backend (`breakwater-fault`, HTTP/1.1 and h2c on one port) serves every setup; `oha`
//! sends the load; the proxies under test run on their own CPU. For each round, protocol and
//! setup the proxies are started fresh, their idle memory read, warmed up, then measured at each
//! load shape (fixed rates with latency percentiles, and saturation for throughput) with their
//! CPU time and peak memory read from `/proc`. The result is a Markdown table (printed and
//! written), JSON beside it, and an SVG plot, in `--out`.
//!
//! `--smoke` runs every setup and protocol for a fraction of a second with tiny loads, so the
//! harness is exercised by `make test` without taking its time (and without asserting on it).

#![forbid(unsafe_code)]

mod builtin;
mod instructions;
mod load;
mod machine;
mod plot;
mod procs;
mod report;
mod run;
mod setups;
mod syscalls;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::Parser;
use load::{LoadGen, Protocol, Shape};
use procs::Proc;
use run::Plan;
use setups::{Env, Setup};

/// Measure the latency, throughput, CPU and memory a Breakwater sidecar adds, against no proxy
/// and against HAProxy, on the same load in one run.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Where the report goes (bench.md, bench.json, bench.svg).
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Directory holding breakwater-sidecar and breakwater-fault (default: beside this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The oha binary (default: $BREAKWATER_CACHE/tools/oha-1.16.0/bin/oha, where `make bench-tools`
    /// puts it, else `oha` on the PATH).
    #[arg(long, env = "BREAKWATER_OHA")]
    oha: Option<PathBuf>,
    /// The haproxy binary.
    #[arg(long, default_value = "haproxy")]
    haproxy: PathBuf,
    /// Rounds; the report takes the median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Fixed request rates (requests per second).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<u32>,
    /// How long each fixed-rate run lasts.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    fixed_duration: Duration,
    /// How long each saturation run lasts.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    saturation_duration: Duration,
    /// Load before the measured runs of each started setup, at the first rate (discarded).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Connections the load generator uses.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Setups to run (default: all but the route ones): direct, haproxy, bw-1hop, bw-1hop-policy,
    /// bw-2hop, bw-1hop-trace100, bw-1hop-trace1 (tracing every request / 1 % of them, exported
    /// over OTLP/HTTP to the backend, which discards it), bw-1hop-route1, bw-1hop-routes50 (1 and
    /// 50 HTTPRoutes on the Service; counted by default with --instructions and --syscalls).
    #[arg(long, value_delimiter = ',')]
    setups: Vec<String>,
    /// Protocols to run (default: both): http1, h2c.
    #[arg(long, value_delimiter = ',')]
    protocols: Vec<String>,
    /// CPUs for the load generator and the backend (`taskset -c` list). Default: 0.
    #[arg(long)]
    load_cpus: Option<String>,
    /// CPUs for the proxies under test. Default: 1 (0 on a one-CPU machine).
    #[arg(long)]
    proxy_cpus: Option<String>,
    /// Exercise the harness: one round, 200 rps and saturation for 0.15 s each, 4 connections.
    #[arg(long)]
    smoke: bool,
    /// Use the harness's own small load generator instead of oha (for smoke runs: its numbers
    /// are not comparable with oha's).
    #[arg(long)]
    builtin_load: bool,
    /// Instead of timing, count the user-space instructions each proxy executes per request,
    /// under valgrind's callgrind (steady on a shared machine, where wall-clock figures move by
    /// ±15 %). Writes instructions.md and instructions.json in --out.
    #[arg(long)]
    instructions: bool,
    /// Instead of timing, count the system calls each proxy makes per request, with
    /// `strace -f -c` attached after the warm-up. Writes syscalls.md and syscalls.json in --out.
    #[arg(long, conflicts_with = "instructions")]
    syscalls: bool,
    /// Requests counted per setup with --instructions or --syscalls (after
    /// --instructions-warmup more).
    #[arg(long, default_value_t = 10_000)]
    instructions_requests: u64,
    /// Requests sent before counting starts with --instructions (fills the connection pools).
    #[arg(long, default_value_t = 2_000)]
    instructions_warmup: u64,
    /// Keep callgrind's dumps (one per proxy, `callgrind.<pid>.<n>`) in this directory, for
    /// `callgrind_annotate`; by default they go with the run's temporary directory.
    #[arg(long)]
    callgrind_dir: Option<PathBuf>,
}

// One thread: the harness mostly waits, and the children's parent-death signal is tied to the
// thread that spawned them (see `procs::pinned`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.rounds = 1;
        args.rates = vec![200];
        args.fixed_duration = Duration::from_millis(150);
        args.saturation_duration = Duration::from_millis(150);
        args.warmup = Duration::from_millis(50);
        args.connections = 4;
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let started = tokio::time::Instant::now();
    let mut backend: Option<Proc> = None;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = bench(&args, &mut backend) => r,
        // Ctrl-C: dropping `bench` drops its guards, which kill what it started.
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        // Stopped by a supervisor: the same.
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };
    if let Some(b) = backend {
        b.stop().await;
    }
    result?;
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn bench(args: &Args, backend_slot: &mut Option<Proc>) -> anyhow::Result<()> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().context("this binary has no directory")?.to_path_buf(),
    };
    let sidecar =
        existing(bin_dir.join("breakwater-sidecar"), "cargo build --release -p breakwater-sidecar")?;
    let fault = existing(bin_dir.join("breakwater-fault"), "cargo build --release -p breakwater-fault")?;
    let oha = if args.builtin_load { None } else { Some(find_oha(args.oha.clone())?) };
    let oha_label = oha.as_ref().map_or_else(|| PathBuf::from(BUILTIN), Clone::clone);
    let haproxy = find_haproxy(&args.haproxy)?;
    for tool in ["taskset", "setpriv"] {
        if which(tool).is_none() {
            bail!("{tool} is missing: install util-linux (`make deps` does)");
        }
    }

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load_cpus = args.load_cpus.clone().unwrap_or_else(|| "0".to_owned());
    let proxy_cpus = args.proxy_cpus.clone().unwrap_or_else(|| if cpus >= 2 { "1" } else { "0" }.to_owned());
    let load_threads = load_cpus.split(',').count().max(1);
    let pinning = format!(
        "Pinning ({cpus} CPUs): the load generator (oha, {load_threads} worker thread(s)) and the backend share \
         CPU {load_cpus}; the proxies under test run on CPU {proxy_cpus} (`taskset -c`), each with one event loop \
         (the sidecar's tokio runtime sizes itself from its CPU affinity; HAProxy has `nbthread 1`). Both \
         sidecars of the 2-hop setup share CPU {proxy_cpus}. Only 127.0.0.1 is used."
    );

    let plan = Plan {
        setups: if args.setups.is_empty() && (args.instructions || args.syscalls) {
            Setup::every().collect()
        } else if args.setups.is_empty() {
            Setup::ALL.to_vec()
        } else {
            args.setups.iter().map(|s| Setup::parse(s)).collect::<anyhow::Result<_>>()?
        },
        protocols: if args.protocols.is_empty() {
            Protocol::ALL.to_vec()
        } else {
            args.protocols
                .iter()
                .map(|p| match p.as_str() {
                    "http1" => Ok(Protocol::Http1),
                    "h2c" => Ok(Protocol::H2c),
                    other => bail!("unknown protocol {other:?}: expected http1 or h2c"),
                })
                .collect::<anyhow::Result<_>>()?
        },
        shapes: args
            .rates
            .iter()
            .map(|&r| (Shape::Fixed(r), args.fixed_duration))
            .chain([(Shape::Saturation, args.saturation_duration)])
            .collect(),
        warmup: args.warmup,
        rounds: args.rounds,
        connections: args.connections,
    };

    let dir = tempfile::Builder::new().prefix("breakwater-bench-").tempdir()?;
    let backend_addr = procs::free_port()?;
    let backend_args = vec!["--listen".to_owned(), backend_addr.to_string()];
    let mut b = Proc::spawn("backend", &load_cpus, &fault, &backend_args, dir.path())?;
    b.wait_listening(backend_addr, Duration::from_secs(10)).await?;
    let backend_pid = b.pid();
    *backend_slot = Some(b);

    let env = Env {
        sidecar: sidecar.clone(),
        haproxy: haproxy.clone(),
        proxy_cpus,
        backend: backend_addr,
        dir: dir.path().into(),
        wrap: match (&args.instructions, &args.callgrind_dir) {
            (false, _) => Vec::new(),
            (true, Some(d)) => {
                std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
                instructions::wrapper(&std::path::absolute(d)?)
            }
            (true, None) => instructions::wrapper(dir.path()),
        },
    };
    if args.syscalls || args.instructions {
        let what = if args.syscalls { "--syscalls" } else { "--instructions" };
        let Some(oha) = &oha else { bail!("{what} needs oha, not --builtin-load") };
        let tools: &[_] = if args.syscalls { &["strace"] } else { &["valgrind", "callgrind_control"] };
        for tool in tools {
            if which(tool).is_none() {
                bail!("{tool} is missing (`make bench-tools` installs it)");
            }
        }
        let counting = instructions::Counting {
            env: &env,
            oha,
            load_cpus: &load_cpus,
            connections: args.connections,
            warmup: args.instructions_warmup,
            requests: args.instructions_requests,
        };
        let machine = machine::Machine::gather(&sidecar, &oha_label, &haproxy, pinning);
        let setup = format!(
            "{}, commit {}, {} ({}), {}. {} requests over {} connections from oha to warm up, then",
            machine.date,
            machine.commit,
            machine.sidecar,
            machine.cpu,
            machine.haproxy,
            args.instructions_warmup,
            args.connections,
        );
        let n = args.instructions_requests;
        let (name, md, json) = if args.syscalls {
            let counted = syscalls::run(&counting, dir.path(), &plan.protocols, &plan.setups).await?;
            let header = format!(
                "{setup} `strace -f -c -p PID` on every proxy of the setup (all threads), each running as it \
                 ships, for exactly {n} requests. *without epoll waits* leaves out `epoll_wait`/`epoll_pwait` \
                 and `futex`, whose count per request falls as a traced (slower) proxy finds more work ready at \
                 each wake-up."
            );
            ("syscalls", syscalls::markdown(&counted, &header), serde_json::to_string_pretty(&counted)?)
        } else {
            let dumps = args.callgrind_dir.clone().unwrap_or_else(|| dir.path().into());
            let counted = instructions::run(&counting, &dumps, &plan.protocols, &plan.setups).await?;
            let header = format!(
                "{setup} counting on (`callgrind_control -i on`, each proxy under `valgrind --tool=callgrind \
                 --instr-atstart=no`) for exactly {n} requests, then dumped. All threads of every proxy of the \
                 setup; kernel time is not included."
            );
            (
                "instructions",
                instructions::markdown(&counted, &header),
                serde_json::to_string_pretty(&counted)?,
            )
        };
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?;
        std::fs::write(args.out.join(format!("{name}.md")), &md)?;
        std::fs::write(args.out.join(format!("{name}.json")), json)?;
        println!("{md}");
        eprintln!("wrote {}", args.out.join(format!("{name}.md")).display());
        return Ok(());
    }
    let load = LoadGen {
        oha: oha.clone(),
        cpus: load_cpus.clone(),
        threads: load_threads,
        connections: args.connections,
    };
    let machine = machine::Machine::gather(&sidecar, &oha_label, &haproxy, pinning);
    eprintln!(
        "{} rounds × {} protocols × {} setups; shapes: {}",
        plan.rounds,
        plan.protocols.len(),
        plan.setups.len(),
        plan.shapes.iter().map(|(s, d)| format!("{} for {d:?}", s.label())).collect::<Vec<_>>().join(", ")
    );
    let tick = procs::clock_ticks_per_second() as f64;
    let measurements = run::run(&plan, &env, &load, backend_pid, tick).await?;

    let mut load_commands =
        vec![format!("taskset -c {load_cpus} {} {}", fault.display(), backend_args.join(" "))];
    for &p in &plan.protocols {
        for &(shape, d) in &plan.shapes {
            let a = load.args(([127, 0, 0, 1], 0).into(), p, shape, d).join(" ");
            let a = a.replace("127.0.0.1:0", "127.0.0.1:$PORT");
            load_commands.push(format!("taskset -c {load_cpus} {} {a}", oha_label.display()));
        }
    }
    let report = report::Report::new(machine, plan, measurements, load_commands);
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let md = report.markdown();
    let md_path = args.out.join("bench.md");
    std::fs::write(&md_path, &md).with_context(|| format!("cannot write {}", md_path.display()))?;
    let json_path = args.out.join("bench.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let svg_path = args.out.join("bench.svg");
    plot::draw(&report, &svg_path)?;
    println!("{md}");
    eprintln!("wrote {}, {} and {}", md_path.display(), json_path.display(), svg_path.display());
    Ok(())
}

fn existing(path: PathBuf, how: &str) -> anyhow::Result<PathBuf> {
    if !path.is_file() {
        bail!("{} is missing: build it with `{how}` (make bench does)", path.display());
    }
    Ok(path)
}

/// How reports name the built-in generator.
const BUILTIN: &str = "builtin-load-generator";

/// oha: `--oha`, else where `make bench-tools` installs it, else the PATH.
fn find_oha(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return existing(p, "make bench-tools");
    }
    let cache = match std::env::var_os("BREAKWATER_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/breakwater"),
    };
    let cached = cache.join("tools/oha-1.16.0/bin/oha");
    if cached.is_file() {
        return Ok(cached);
    }
    which("oha").with_context(|| {
        format!(
            "oha is missing ({} and the PATH): run `make bench-tools`, which installs it",
            cached.display()
        )
    })
}

fn find_haproxy(given: &std::path::Path) -> anyhow::Result<PathBuf> {
    if given.components().count() > 1 {
        return existing(given.to_path_buf(), "make bench-tools");
    }
    which(&given.display().to_string())
        .or_else(|| Some(PathBuf::from("/usr/sbin/haproxy")).filter(|p| p.is_file()))
        .context("haproxy is missing: run `make bench-tools`, which installs it from Debian's packages")
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}
