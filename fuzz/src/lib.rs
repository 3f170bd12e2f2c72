//! What each fuzz target runs, with the properties it checks beyond "does not crash". A panic
//! anywhere, in a spawned task too, aborts the process (tokio would otherwise catch it), so
//! libFuzzer records it as a crash.

use std::{
    sync::{Arc, Once, OnceLock},
    time::Duration,
};

use breakwater_sidecar::{
    drain::Drain,
    metrics::{Direction, Metrics},
    proxy::{http::ConnContext, listener::serve_connection},
    store::Store,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn abort_on_panic() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            std::process::abort();
        }));
    });
}

/// The sidecar's configuration for the request front: one Service under a policy with retries
/// and a breaker, its endpoint a closed loopback port (so attempts fail fast, without anything
/// leaving the machine), and the default limits.
const FRONT: &str = r#"apiVersion: breakwater.dev/v1alpha1
kind: SidecarConfig
listeners: {outbound: 127.0.0.1:0, inbound: 127.0.0.1:0, admin: 127.0.0.1:0}
services:
  - name: payments
    namespace: shop
    endpoints: ["127.0.0.1:9"]
---
apiVersion: breakwater.dev/v1alpha1
kind: CommunicationPolicy
metadata: {name: p, namespace: shop}
spec:
  targetRef: {name: payments}
  timeouts: {request: 2s, perTry: 500ms}
  retries: {attempts: 2}
  circuitBreaker: {consecutiveFailures: 1000}
"#;

/// One runtime per process, on this thread. Paused time: every timeout (detection, header
/// read, idle) fires as soon as nothing else can run, so waiting costs no wall-clock time.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        abort_on_panic();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a tokio runtime")
    })
}

/// Runs `f` (which builds a configuration: breakers start tasks) inside the runtime, then lets
/// the tasks of what `f` dropped see it gone, so nothing piles up from one input to the next.
fn in_runtime<T>(f: impl FnOnce() -> T) -> T {
    runtime().block_on(async {
        let out = f();
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        out
    })
}

struct Front {
    runtime: &'static tokio::runtime::Runtime,
    store: Arc<Store>,
}

fn front() -> &'static Front {
    static FRONT_STATE: OnceLock<Front> = OnceLock::new();
    FRONT_STATE.get_or_init(|| {
        let store = in_runtime(|| Store::new(FRONT, Arc::new(Metrics::new())));
        Front { runtime: runtime(), store: Arc::new(store.expect("the fuzzing configuration is valid")) }
    })
}

/// `data` as the bytes a client sends to the outbound listener (explicit mode, so routed by
/// authority): protocol detection, then HTTP/1 (hyper's parser and the sidecar's own checks:
/// Host, framing, limits) or HTTP/2, routing, the policy path, and the answer. Whatever comes
/// back must be HTTP: an HTTP/1 status line, or HTTP/2 frames after an HTTP/2 preface.
pub fn request_front(data: &[u8]) {
    let f = front();
    let answer = f.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 17);
        let ctx = ConnContext {
            direction: Direction::Outbound,
            orig_dst: None,
            store: f.store.clone(),
            activity: Default::default(),
        };
        let limits = f.store.load().routes.limits;
        let drain = Drain::new();
        let served = tokio::spawn(serve_connection(server, ctx, limits, None, drain.signal()));
        let _ = client.write_all(data).await;
        let mut answer = Vec::new();
        // Virtual time: bounded, and instant.
        let _ = tokio::time::timeout(Duration::from_secs(3600), client.read_to_end(&mut answer)).await;
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(3600), served).await;
        answer
    });
    let h2 = data.starts_with(b"PRI * HTTP/2.0");
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.") || h2,
        "not an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );
}

/// `data` as a local configuration file: parsed, validated as the API server would, compiled
/// and turned into routes; an invalid one is an error, never a panic.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    in_runtime(|| drop(Store::new(text, Arc::new(Metrics::new()))));
}

/// The sidecar's own settings in cluster mode: the snapshot brings the rest.
const SETTINGS: &str = "apiVersion: breakwater.dev/v1alpha1\nkind: SidecarConfig\n\
    listeners: {outbound: 127.0.0.1:0, inbound: 127.0.0.1:0, admin: 127.0.0.1:0}\n\
    inbound: {app: 127.0.0.1:9}\n";

/// `data` as a snapshot from the config API (JSON, as the operator sends it): decoded,
/// validated and compiled; refused without a trace, the running configuration stays.
pub fn snapshot_wire(data: &[u8]) {
    in_runtime(|| {
        let store = Store::new(SETTINGS, Arc::new(Metrics::new())).expect("the settings are valid");
        let before = store.load();
        if store.apply_snapshot(data).is_err() {
            assert!(Arc::ptr_eq(&before, &store.load()), "a refused snapshot replaced the running one");
        }
    });
}
