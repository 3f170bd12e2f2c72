//! HTTP/2 conformance: h2spec (github.com/summerwind/h2spec, built from its Go module by
//! `make h2spec`) in strict mode against the sidecar's h2c listeners, each forwarding to a real
//! upstream: the outbound listener (routed by authority to a Service under a policy, so every
//! request takes the policy path) and the inbound one (to the pod's app).
//!
//! Every case must pass except those in [`EXCEPTIONS`], each with its reason.

mod support;

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

use breakwater_fault::{FaultServer, Faults};
use support::*;

/// Cases allowed to fail, per listener, and why.
const EXCEPTIONS: &[(&str, &str, &str)] = &[(
    "inbound",
    "http2/3.5/2",
    "Sends invalid connection preface. A port whose protocol is not declared is detected: bytes \
     that are neither an HTTP/1 request line nor the HTTP/2 preface are opaque TCP, forwarded \
     to the app as they are, and the app (here hyper's HTTP/1.1 server) answers 400 before it \
     closes. h2spec expects a server that speaks only HTTP/2; the outbound listener, which has \
     no app to forward opaque bytes to, closes at once and passes.",
)];

fn h2spec() -> PathBuf {
    go_tool("h2spec", "h2spec", "builds h2spec from its Go module")
}

/// Runs h2spec (strict) against `host:port` and returns the ids (`http2/3.5/2`) of the failed
/// cases, with h2spec's account of each, and how many cases ran.
async fn run(h2spec: &PathBuf, host: &str, port: u16) -> (Vec<(String, String)>, usize) {
    let report = tempfile::NamedTempFile::new().expect("report file");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(h2spec)
            .args([
                "--strict",
                "--timeout",
                "5",
                "--host",
                host,
                "--port",
                &port.to_string(),
                "--junit-report",
            ])
            .arg(report.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("h2spec finished within 2 minutes")
    .expect("run h2spec");
    let text = String::from_utf8_lossy(&out.stdout);
    let junit = std::fs::read_to_string(report.path()).expect("h2spec's JUnit report");
    let (mut failed, mut ran) = (Vec::new(), 0);
    let (mut package, mut index) = (String::new(), 0);
    for line in junit.lines().map(str::trim) {
        if line.starts_with("<testsuite ") {
            package = attr(line, "package").to_owned();
            index = 0;
        } else if line.starts_with("<testcase ") {
            index += 1;
            ran += 1;
            if !line.ends_with("</testcase>") {
                failed.push((format!("{package}/{index}"), attr(line, "classname").to_owned()));
            }
        }
    }
    assert!(ran > 100, "h2spec ran {ran} cases:\n{text}");
    let details: Vec<(String, String)> = failed
        .into_iter()
        .map(|(id, name)| {
            let account = text.split("Failures:").nth(1).unwrap_or_default();
            let detail =
                account.split(&name).nth(1).map(|s| s.lines().take(5).collect::<Vec<_>>().join("\n"));
            (id, format!("{name}{}", detail.unwrap_or_default()))
        })
        .collect();
    (details, ran)
}

fn attr<'a>(line: &'a str, name: &str) -> &'a str {
    let key = format!("{name}=\"");
    line.split_once(&key).and_then(|(_, rest)| rest.split_once('"')).map_or("", |(v, _)| v)
}

#[tokio::test]
async fn h2c_listeners_pass_h2spec() {
    let h2spec = h2spec();
    let app = FaultServer::bind("127.0.0.1:0", Faults { name: "app".into(), ..Default::default() })
        .await
        .expect("fault server");
    // h2spec's requests carry `:authority: localhost:PORT`: a Service named `localhost` takes
    // them on the outbound listener, under a policy (timeouts, retries with body replay).
    let yaml = sidecar_yaml(&service("localhost", &[app.addr()]), Some(app.addr()), "")
        + &policy("conformance", "localhost", "  timeouts: {request: 10s}\n  retries: {attempts: 2}\n");
    let sc = start(&yaml).await;
    let listeners: [(&str, SocketAddr); 2] =
        [("outbound", sc.outbound), ("inbound", sc.inbound.expect("an inbound listener"))];
    let mut unexpected = Vec::new();
    for (listener, addr) in listeners {
        let (failed, ran) = run(&h2spec, "localhost", addr.port()).await;
        let allowed: BTreeSet<&str> =
            EXCEPTIONS.iter().filter(|(l, _, _)| *l == listener).map(|(_, id, _)| *id).collect();
        for (id, detail) in failed {
            if !allowed.contains(id.as_str()) {
                unexpected.push(format!("{listener} {id}: {detail}"));
            }
        }
        eprintln!("h2spec against the {listener} listener: {ran} cases");
    }
    assert!(unexpected.is_empty(), "h2spec cases failed:\n{}", unexpected.join("\n\n"));
    assert_eq!(get(sc.outbound, "http://localhost/").await.status, 200, "still serving");
}
