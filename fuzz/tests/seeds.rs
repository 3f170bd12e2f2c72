//! The checked-in seeds are what they claim to be: valid configurations and snapshots (the
//! invalid ones excepted), and requests the front answers as HTTP. Run with
//! `cargo test --manifest-path fuzz/Cargo.toml`.

use std::{path::PathBuf, sync::Arc};

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .map(|p| {
            (
                p.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                std::fs::read(&p).expect("read"),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn configuration_seeds_are_valid_unless_named_invalid() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _in = rt.enter();
    for (name, data) in seeds("config_file") {
        let store = breakwater_sidecar::store::Store::new(
            std::str::from_utf8(&data).expect("utf-8"),
            Arc::new(breakwater_sidecar::metrics::Metrics::new()),
        );
        assert_eq!(store.is_ok(), !name.starts_with("invalid-"), "{name}: {:?}", store.err());
    }
}

#[test]
fn snapshot_seeds_apply() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _in = rt.enter();
    for (name, data) in seeds("snapshot_wire") {
        let store = breakwater_sidecar::store::Store::new(
            "apiVersion: breakwater.dev/v1alpha1\nkind: SidecarConfig\ninbound: {app: 127.0.0.1:9}\n",
            Arc::new(breakwater_sidecar::metrics::Metrics::new()),
        )
        .expect("settings");
        assert!(store.apply_snapshot(&data).is_ok(), "{name}: {:?}", store.apply_snapshot(&data));
    }
}

#[test]
fn request_seeds_get_http_answers() {
    for (_, data) in seeds("request_front") {
        breakwater_fuzz::request_front(&data);
    }
}
