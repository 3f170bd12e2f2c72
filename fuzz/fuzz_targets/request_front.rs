//! libFuzzer target: bytes a client sends to the outbound listener (see `breakwater_fuzz::request_front`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| breakwater_fuzz::request_front(data));
