//! libFuzzer entry for the `reader` target (its body: `targets/reader.rs`).
#![no_main]

#[path = "../targets/reader.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
