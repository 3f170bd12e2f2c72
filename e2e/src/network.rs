//! The Node's network: a bridge on the host with pod network namespaces attached by veth pairs,
//! and iptables rules that do kube-proxy's job.
//!
//! Addresses (and nothing else): each cluster takes an index `X` in 1..=254, the first whose
//! bridge name is free, and uses
//! - `198.18.X.0/24` for pods, `198.18.X.1` being the bridge (the host, the Node's InternalIP and
//!   where pods reach the API server);
//! - `198.19.X.0/24` for Service cluster IPs (the API server's `--service-cluster-ip-range`).
//!
//! so two clusters on one machine (two test binaries at once) never collide. Names carry `X`:
//! bridge `bwe2eX`, pod namespaces `bwe2eX-pN`, host-side veths `bweXpN`, iptables chains
//! `BWE2EX-*`. The [`reaper`](crate::reaper) relies on these names; change both together.
//!
//! Services: the cluster IP route goes to the bridge, and nat `PREROUTING`/`OUTPUT` jump to
//! `BWE2EX-SVC`, which DNATs `clusterIP:port` to a ready endpoint (random choice, as kube-proxy's
//! iptables mode does). A pod calling a Service whose endpoint is on the same bridge would get the
//! reply straight from the endpoint, bypassing the host's conntrack, so `BWE2EX-POST` masquerades
//! DNATed pod traffic as the bridge address (kube-proxy's hairpin masquerade). Forwarding is turned
//! on for the bridge only (`net.ipv4.conf.bwe2eX.forwarding`), never host-wide.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::fs::MetadataExt,
    process::{Command, Stdio},
};

use crate::{Error, Result};

/// Pods live in 198.18.0.0/16; each cluster takes one /24 of it.
pub const POD_NETWORK: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// Services live in 198.19.0.0/16; each cluster takes one /24 of it.
pub const SERVICE_NETWORK: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);

/// Fails with a message naming what is missing when the harness cannot build networks here.
pub fn check_environment() -> Result<()> {
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    if uid != 0 {
        return Err(Error::Environment(format!(
            "the e2e harness runs pods as network namespaces and programs iptables, which needs root \
             (running as uid {uid}); run the tests as root"
        )));
    }
    for (tool, package) in [("ip", "iproute2"), ("iptables", "iptables"), ("iptables-restore", "iptables")] {
        if Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            return Err(Error::Environment(format!(
                "`{tool}` is not installed (Debian package {package}); run `make deps`"
            )));
        }
    }
    Ok(())
}

/// Runs a command, failing with its stderr when it does not succeed.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with_input(program, args, None)
}

fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::io(format!("starting `{command}`")))?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        stdin.write_all(input.as_bytes()).map_err(Error::io(format!("writing to `{command}`")))?;
    }
    let out = child.wait_with_output().map_err(Error::io(format!("waiting for `{command}`")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if let Some(input) = input {
            let _ = write!(stderr, "\ninput:\n{input}");
        }
        Err(Error::Command { command, status: out.status, stderr })
    }
}

/// The host side of a cluster's pod network: the bridge, its routes and iptables chains.
/// Dropping it removes them (pod namespaces must be removed first; see [`PodNetns::remove`]).
#[derive(Debug)]
pub struct HostNetwork {
    index: u8,
}

impl HostNetwork {
    /// Takes the first free index and sets up the bridge, the service route and the chains.
    pub fn create() -> Result<Self> {
        check_environment()?;
        for index in 1..=254u8 {
            let bridge = bridge_name(index);
            if link_exists(&bridge) {
                continue;
            }
            match run("ip", &["link", "add", &bridge, "type", "bridge"]) {
                Ok(_) => {}
                // Another cluster took it between our check and our add.
                Err(_) if link_exists(&bridge) => continue,
                Err(e) => return Err(e),
            }
            let net = HostNetwork { index };
            net.setup()?;
            return Ok(net);
        }
        Err(Error::Environment("all 254 e2e bridges bwe2e1..bwe2e254 exist; remove stale ones".into()))
    }

    fn setup(&self) -> Result<()> {
        let br = self.bridge();
        let gw = format!("{}/24", self.gateway());
        let alias = format!("breakwater-e2e pid={}", std::process::id());
        run("ip", &["link", "set", "dev", &br, "alias", &alias])?;
        run("ip", &["addr", "add", &gw, "dev", &br])?;
        run("ip", &["link", "set", "dev", &br, "up"])?;
        let forwarding = format!("/proc/sys/net/ipv4/conf/{br}/forwarding");
        std::fs::write(&forwarding, "1").map_err(Error::io(format!("writing {forwarding}")))?;
        run("ip", &["route", "add", &self.service_cidr(), "dev", &br, "src", &self.gateway().to_string()])?;

        let (svc, post, fwd) = (self.chain("SVC"), self.chain("POST"), self.chain("FWD"));
        let pods = self.pod_cidr();
        let gateway = self.gateway();
        run_with_input(
            "iptables-restore",
            &["-w", "--noflush"],
            Some(&format!(
                "*nat\n:{svc} - [0:0]\n:{post} - [0:0]\n\
                 -A {post} -s {pods} -o {br} -m conntrack --ctstate DNAT -j SNAT --to-source {gateway}\n\
                 COMMIT\n*filter\n:{fwd} - [0:0]\n-A {fwd} -i {br} -j ACCEPT\n-A {fwd} -o {br} -j ACCEPT\nCOMMIT\n"
            )),
        )?;
        self.iptables_jump("-I")
    }

    /// The jump rules into our chains: `[table, chain, match..., -j, target]`.
    fn jumps(&self) -> [[String; 6]; 4] {
        let (svc, post, fwd) = (self.chain("SVC"), self.chain("POST"), self.chain("FWD"));
        let (cidr, br) = (self.service_cidr(), self.bridge());
        let rule = |table: &str, chain: &str, flag: &str, value: &str, target: &str| {
            [table, chain, flag, value, "-j", target].map(str::to_owned)
        };
        [
            rule("nat", "PREROUTING", "-d", &cidr, &svc),
            rule("nat", "OUTPUT", "-d", &cidr, &svc),
            rule("nat", "POSTROUTING", "-o", &br, &post),
            rule("filter", "FORWARD", "-i", &br, &fwd),
        ]
    }

    /// Inserts (`-I`) or deletes (`-D`) every jump; tries all, returns the first error.
    fn iptables_jump(&self, action: &str) -> Result<()> {
        let mut result = Ok(());
        for rule in self.jumps() {
            let mut args = vec!["-w", "-t", rule[0].as_str(), action];
            args.extend(rule[1..].iter().map(String::as_str));
            if let Err(e) = run("iptables", &args) {
                result = result.and(Err(e));
            }
        }
        result
    }

    /// This cluster's index `X`.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The bridge, `bwe2eX`.
    pub fn bridge(&self) -> String {
        bridge_name(self.index)
    }

    /// The host's address on the bridge, `198.18.X.1`: the pods' gateway and the Node's IP.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.index, 1)
    }

    /// `198.18.X.0/24`.
    pub fn pod_cidr(&self) -> String {
        format!("198.18.{}.0/24", self.index)
    }

    /// `198.19.X.0/24`, the API server's `--service-cluster-ip-range`.
    pub fn service_cidr(&self) -> String {
        format!("198.19.{}.0/24", self.index)
    }

    /// The pod address for slot `n` (2..=254).
    pub fn pod_ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.index, n)
    }

    fn chain(&self, suffix: &str) -> String {
        format!("BWE2E{}-{suffix}", self.index)
    }

    /// Replaces every Service rule at once (one `iptables-restore` transaction).
    pub fn set_services(&self, services: &[ServiceRule]) -> Result<()> {
        let svc = self.chain("SVC");
        let mut rules = format!("*nat\n:{svc} - [0:0]\n");
        for s in services {
            let n = s.endpoints.len();
            for (i, ep) in s.endpoints.iter().enumerate() {
                let _ = write!(rules, "-A {svc} -d {}/32 -p {} --dport {}", s.cluster_ip, s.protocol, s.port);
                if i + 1 < n {
                    let _ = write!(
                        rules,
                        " -m statistic --mode random --probability {:.10}",
                        1.0 / (n - i) as f64
                    );
                }
                let _ = writeln!(rules, " -j DNAT --to-destination {ep}");
            }
        }
        rules.push_str("COMMIT\n");
        run_with_input("iptables-restore", &["-w", "--noflush"], Some(&rules)).map(drop)
    }

    /// Creates pod namespace `bwe2eX-pN` with address `ip`, joined to the bridge by a veth pair.
    pub fn add_pod(&self, seq: u32, ip: Ipv4Addr) -> Result<PodNetns> {
        let netns = PodNetns { name: format!("bwe2e{}-p{seq}", self.index), ip };
        run("ip", &["netns", "add", &netns.name])?;
        // From here on, dropping `netns` on error removes what was made.
        let host = format!("bwe{}p{seq}", self.index);
        let peer = format!("bwe{}c{seq}", self.index);
        let addr = format!("{ip}/24");
        let gw = self.gateway().to_string();
        let br = self.bridge();
        let ns = netns.name.as_str();
        let steps: [&[&str]; 9] = [
            &["link", "add", &host, "type", "veth", "peer", "name", &peer, "netns", ns],
            &["link", "set", "dev", &host, "master", &br],
            &["link", "set", "dev", &host, "type", "bridge_slave", "hairpin", "on"],
            &["link", "set", "dev", &host, "up"],
            &["-n", ns, "link", "set", "dev", &peer, "name", "eth0"],
            &["-n", ns, "addr", "add", &addr, "dev", "eth0"],
            &["-n", ns, "link", "set", "dev", "eth0", "up"],
            &["-n", ns, "link", "set", "dev", "lo", "up"],
            &["-n", ns, "route", "add", "default", "via", &gw],
        ];
        for step in steps {
            if let Err(e) = run("ip", step) {
                let _ = netns.remove();
                return Err(e);
            }
        }
        Ok(netns)
    }
}

impl Drop for HostNetwork {
    fn drop(&mut self) {
        let _ = self.iptables_jump("-D");
        for (table, chain) in [("nat", "SVC"), ("nat", "POST"), ("filter", "FWD")] {
            let chain = self.chain(chain);
            let _ = run("iptables", &["-w", "-t", table, "-F", &chain]);
            let _ = run("iptables", &["-w", "-t", table, "-X", &chain]);
        }
        let _ = run("ip", &["link", "del", &self.bridge()]);
    }
}

fn bridge_name(index: u8) -> String {
    format!("bwe2e{index}")
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// One Service port and the endpoints it is DNATed to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceRule {
    /// The Service's cluster IP.
    pub cluster_ip: Ipv4Addr,
    /// The Service port.
    pub port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Ready endpoints (pod IP and target port); empty means no rule.
    pub endpoints: Vec<SocketAddrV4>,
}

/// A pod's network namespace.
#[derive(Debug)]
pub struct PodNetns {
    /// `bwe2eX-pN`, as listed by `ip netns list`.
    pub name: String,
    /// The pod IP.
    pub ip: Ipv4Addr,
}

impl PodNetns {
    /// The process ids currently in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        run("ip", &["netns", "pids", &self.name])
            .map(|out| out.split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kills what still runs inside (by pid) and deletes the namespace, which takes the veth pair
    /// with it.
    pub fn remove(&self) -> Result<()> {
        for pid in self.pids() {
            crate::process::signal(pid, "KILL");
        }
        run("ip", &["netns", "del", &self.name]).map(drop)
    }
}
