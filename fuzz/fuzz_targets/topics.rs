//! libFuzzer entry for the `topics` target (its body: `targets/topics.rs`).
#![no_main]

#[path = "../targets/topics.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
