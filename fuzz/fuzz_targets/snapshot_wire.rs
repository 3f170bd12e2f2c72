//! libFuzzer target: a snapshot from the config API (see `breakwater_fuzz::snapshot_wire`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| breakwater_fuzz::snapshot_wire(data));
