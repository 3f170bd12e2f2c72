//! `breakwater-sidecar init` for real: iptables rules inside network namespaces this test
//! creates (addresses in 198.18.0.0/15), a sidecar and an app running inside, traffic from the
//! pod to a Service address and from a remote client to the pod.
//!
//! Needs root, `ip` (iproute2), `iptables` and `curl` (`make test` installs them). It fails —
//! never skips — when they are missing, so CI cannot pass without running it.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A network namespace, deleted on drop along with the processes started in it.
struct Netns {
    name: String,
    children: Vec<Child>,
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("bw-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name, children: Vec::new() };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    fn try_exec(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("ip").args(["netns", "exec", &self.name]).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn spawn(&mut self, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"));
        self.children.push(child);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

fn require_environment() {
    let uid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
    });
    assert_eq!(
        uid.as_deref(),
        Some("0"),
        "this test needs root (network namespaces and iptables); run `make test` as root"
    );
    for tool in ["ip", "iptables-restore", "iptables-save", "curl", "setpriv"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "`{tool}` is missing: run `make deps` (installs iproute2, iptables, curl, util-linux)"
        );
    }
}

fn bin(name: &str) -> PathBuf {
    let sidecar = PathBuf::from(env!("CARGO_BIN_EXE_breakwater-sidecar"));
    let p = sidecar.with_file_name(name);
    assert!(p.exists(), "{} is missing: build the workspace first (cargo build --workspace)", p.display());
    p
}

/// Polls `f` every 20ms until it returns `Some`, for at most 10s.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::SystemTime::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::SystemTime::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn our_rules(ns: &Netns) -> Vec<String> {
    ns.exec(&["iptables-save", "-t", "nat"])
        .lines()
        .filter(|l| l.contains("BREAKWATER"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn init_redirects_pod_traffic_through_the_sidecar() {
    require_environment();
    let sidecar = bin("breakwater-sidecar");
    let fault = bin("breakwater-fault");
    let sidecar = sidecar.to_str().expect("utf-8 path");
    let fault = fault.to_str().expect("utf-8 path");

    // The pod, and a remote client joined to it by a veth pair.
    let mut pod = Netns::new("pod");
    let client = Netns::new("client");
    let (vp, vc) = (format!("bwp{}", std::process::id()), format!("bwc{}", std::process::id()));
    pod.exec(&["ip", "link", "add", &vp, "type", "veth", "peer", "name", &vc]);
    pod.exec(&["ip", "link", "set", &vc, "netns", &client.name]);
    pod.exec(&["ip", "addr", "add", "198.18.0.2/24", "dev", &vp]);
    pod.exec(&["ip", "link", "set", &vp, "up"]);
    pod.exec(&["ip", "route", "add", "default", "via", "198.18.0.1"]);
    client.exec(&["ip", "addr", "add", "198.18.0.1/24", "dev", &vc]);
    client.exec(&["ip", "link", "set", &vc, "up"]);

    // init, twice: the second run is a no-op.
    let first = pod.exec(&[sidecar, "init", "--proxy-uid", "2102", "--ipv6", "off"]);
    assert!(first.contains("rules installed"), "{first}");
    let rules = our_rules(&pod);
    assert!(rules.iter().any(|r| r.contains("REDIRECT --to-ports 15001")), "{rules:?}");
    let second = pod.exec(&[sidecar, "init", "--proxy-uid", "2102", "--ipv6", "off"]);
    assert!(second.contains("nothing changed"), "{second}");
    assert_eq!(our_rules(&pod), rules, "a second run changes nothing");

    // The app, and the sidecar (as the proxy UID, so its own connections are not redirected).
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sidecar.yaml");
    std::fs::write(
        &config,
        "apiVersion: breakwater.dev/v1alpha1\nkind: SidecarConfig\n\
         listeners: {outbound: 127.0.0.1:15001, inbound: 0.0.0.0:15006, admin: 127.0.0.1:15000}\n\
         inbound: {app: 127.0.0.1:8080, service: {name: web, namespace: shop}}\n\
         services:\n  - name: payments\n    namespace: shop\n    ports: [80]\n\
         \x20   endpoints: [\"127.0.0.1:8080\"]\n    addresses: [\"198.19.0.10:80\"]\n",
    )
    .expect("write config");
    sh(&["chmod", "0755", dir.path().to_str().expect("utf-8")]);
    sh(&["chmod", "0644", config.to_str().expect("utf-8")]);
    pod.spawn(&[fault, "--listen", "127.0.0.1:8080", "--name", "app-in-pod"]);
    pod.spawn(&[
        "setpriv",
        "--reuid=2102",
        "--regid=2102",
        "--clear-groups",
        sidecar,
        "run",
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    eventually("the sidecar to be ready", || {
        pod.try_exec(&["curl", "-sf", "http://127.0.0.1:15000/ready"]).filter(|b| b.contains("ready"))
    });
    eventually("the app to listen", || pod.try_exec(&["curl", "-sf", "http://127.0.0.1:8080/"]));

    // Outbound: the app calls a Service address that no host has; iptables sends it to the
    // sidecar, which routes by the original destination.
    let out = pod.exec(&["curl", "-s", "-D", "-", "http://198.19.0.10/echo"]);
    assert!(out.contains("x-served-by: app-in-pod"), "routed by original destination: {out}");
    let metrics = pod.exec(&["curl", "-s", "http://127.0.0.1:15000/metrics"]);
    assert!(
        metrics.contains("breakwater_requests_total{service=\"payments.shop\",direction=\"outbound\",status_class=\"2xx\"} 1"),
        "counted under the Service, not as passthrough:\n{metrics}"
    );

    // Inbound: a remote client calls the pod's app port; iptables sends it to the inbound listener.
    let inbound = client.exec(&["curl", "-s", "-D", "-", "http://198.18.0.2:8080/"]);
    assert!(inbound.contains("x-served-by: app-in-pod"), "{inbound}");
    let metrics = pod.exec(&["curl", "-s", "http://127.0.0.1:15000/metrics"]);
    assert!(
        metrics.contains(
            "breakwater_requests_total{service=\"web.shop\",direction=\"inbound\",status_class=\"2xx\"} 1"
        ),
        "the inbound call went through the sidecar:\n{metrics}"
    );
}

#[test]
fn init_dry_run_prints_rules_without_touching_the_table() {
    require_environment();
    let sidecar = bin("breakwater-sidecar");
    let ns = Netns::new("dry");
    let out =
        ns.exec(&[sidecar.to_str().expect("utf-8"), "init", "--dry-run", "--skip-outbound-ports", "5432"]);
    assert!(out.contains("-A BREAKWATER_OUTBOUND -p tcp -m multiport --dports 5432 -j RETURN"), "{out}");
    assert!(our_rules(&ns).is_empty(), "a dry run installs nothing");
}
