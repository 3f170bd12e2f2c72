//! `breakwater-e2e-exec`: the last step of the e2e kubelet's container start, what an OCI runtime
//! (runc, crun) does between "mounts ready" and the container's first instruction.
//!
//! The kubelet's launch script (see `kubelet/volumes.rs`) has already made the container's mount
//! namespace: the image's root filesystem with `/proc`, `/dev`, `/sys`, `/etc/hosts` and the
//! pod's volumes mounted into it. This program then, as root:
//!
//! 1. `chroot`s into that root and changes to the working directory (created if missing, as
//!    runc does);
//! 2. finds the program as the runtime does: a path with a `/` as given, a bare name on the
//!    container's `PATH`;
//! 3. keeps only the container's capabilities in the bounding set, sets the groups, gid and uid,
//!    and leaves the capabilities permitted and effective — no ambient ones, as containerd does,
//!    so a non-root process has none after `exec`;
//! 4. sets `no_new_privs` if asked, and `exec`s the program with exactly the container's
//!    environment.
//!
//! Why not `setpriv` + `chroot` (util-linux) as before: after the chroot the host's `setpriv`
//! is not in the container's root, and before it the dropped capabilities forbid the chroot.
//! Why not runc itself: its containers outlive their `runc run` process when that is killed,
//! while the harness's whole cleanup (the reaper, `kill_on_drop`) relies on a container being
//! one process it started.

use std::{collections::BTreeSet, ffi::CString, os::unix::ffi::OsStrExt, path::PathBuf, process::ExitCode};

use caps::{CapSet, Capability, CapsHashSet};
use clap::Parser;
use nix::unistd::{Gid, Uid};

/// Runs PROGRAM inside ROOT as the given user, with only the given capabilities.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The container's root filesystem (already mounted).
    #[arg(long)]
    root: PathBuf,
    /// Working directory inside the root.
    #[arg(long, default_value = "/")]
    cwd: PathBuf,
    /// User id.
    #[arg(long, default_value_t = 0)]
    uid: u32,
    /// Group id.
    #[arg(long, default_value_t = 0)]
    gid: u32,
    /// Supplementary groups, comma-separated.
    #[arg(long, value_delimiter = ',')]
    groups: Vec<u32>,
    /// Capabilities kept (NET_ADMIN or CAP_NET_ADMIN), comma-separated; none if absent.
    #[arg(long, value_delimiter = ',')]
    caps: Vec<String>,
    /// Set no_new_privs (`allowPrivilegeEscalation: false`).
    #[arg(long)]
    no_new_privs: bool,
    /// The container's environment, `NAME=value`, repeated; nothing else is passed on.
    #[arg(long = "env")]
    env: Vec<String>,
    /// The program and its arguments.
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Why the container could not start, with the exit code an OCI runtime's shim would report.
struct Failure(u8, String);

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(never) => match never {},
        Err(Failure(code, message)) => {
            eprintln!("breakwater-e2e-exec: {message}");
            ExitCode::from(code)
        }
    }
}

fn run(args: &Args) -> Result<std::convert::Infallible, Failure> {
    let fail = |what: String| move |e: std::io::Error| Failure(1, format!("{what}: {e}"));
    std::os::unix::fs::chroot(&args.root).map_err(fail(format!("chroot {}", args.root.display())))?;
    std::env::set_current_dir("/").map_err(fail("chdir /".into()))?;
    if !args.cwd.is_dir() {
        std::fs::create_dir_all(&args.cwd)
            .map_err(fail(format!("creating the working directory {}", args.cwd.display())))?;
    }
    std::env::set_current_dir(&args.cwd).map_err(fail(format!("chdir {}", args.cwd.display())))?;

    let path_var = args.env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or_default();
    let program = find_program(&args.command[0], path_var)?;

    let wanted: CapsHashSet = args
        .caps
        .iter()
        .map(|c| {
            let name = format!("CAP_{}", c.trim_start_matches("CAP_").to_ascii_uppercase());
            name.parse::<Capability>().map_err(|e| Failure(1, format!("capability {c}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let supported = caps::runtime::procfs_all_supported(None).unwrap_or_else(|_| caps::all());
    for cap in supported.difference(&wanted) {
        caps::drop(None, CapSet::Bounding, *cap).map_err(|e| Failure(1, format!("dropping {cap}: {e}")))?;
    }
    let os = |what: &'static str| move |e: nix::Error| Failure(1, format!("{what}: {e}"));
    nix::sys::prctl::set_keepcaps(true).map_err(os("keeping capabilities across setuid"))?;
    let groups: Vec<Gid> =
        args.groups.iter().copied().collect::<BTreeSet<_>>().into_iter().map(Gid::from_raw).collect();
    nix::unistd::setgroups(&groups).map_err(os("setgroups"))?;
    let (gid, uid) = (Gid::from_raw(args.gid), Uid::from_raw(args.uid));
    nix::unistd::setresgid(gid, gid, gid).map_err(os("setresgid"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(os("setresuid"))?;
    let set = |which: CapSet, caps: &CapsHashSet| {
        caps::set(None, which, caps)
            .map_err(|e| Failure(1, format!("setting the {which:?} capabilities: {e}")))
    };
    set(CapSet::Effective, &CapsHashSet::new())?;
    set(CapSet::Inheritable, &CapsHashSet::new())?;
    set(CapSet::Permitted, &wanted)?;
    set(CapSet::Effective, &wanted)?;
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| Failure(1, format!("clearing ambient capabilities: {e}")))?;
    if args.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(os("no_new_privs"))?;
    }

    let cstring =
        |s: &[u8]| CString::new(s).map_err(|_| Failure(1, "an argument contains a NUL byte".into()));
    let argv = args.command.iter().map(|a| cstring(a.as_bytes())).collect::<Result<Vec<_>, _>>()?;
    let envp = args.env.iter().map(|e| cstring(e.as_bytes())).collect::<Result<Vec<_>, _>>()?;
    let path = cstring(program.as_os_str().as_bytes())?;
    let Err(err) = nix::unistd::execve(&path, &argv, &envp);
    Err(Failure(
        if err == nix::Error::EACCES { 126 } else { 127 },
        format!("exec {}: {err}", program.display()),
    ))
}

/// `program` as the runtime finds it: a path (with a `/`) as given, a name on `path_var`.
fn find_program(program: &str, path_var: &str) -> Result<PathBuf, Failure> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Failure(127, format!("exec: {program:?}: stat {program}: no such file or directory")))
        };
    }
    path_var
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| PathBuf::from(dir).join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| Failure(127, format!("exec: {program:?}: executable file not found in $PATH")))
}
