//! libFuzzer target: a local configuration file (see `breakwater_fuzz::config_file`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| breakwater_fuzz::config_file(data));
