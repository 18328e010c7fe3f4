//! libFuzzer entry for the `gate` target (its body: `targets/gate.rs`):
//! one gateway for the whole run.
#![no_main]

use std::sync::{Mutex, OnceLock};

// The gateway lives as long as the fuzzing process; `Harness::stop` is for
// the seed replay in `tests/fuzz_seeds.rs`.
#[allow(dead_code)]
#[path = "../targets/gate.rs"]
mod target;

static HARNESS: OnceLock<Mutex<target::Harness>> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let harness = HARNESS.get_or_init(|| Mutex::new(target::Harness::start()));
    harness.lock().unwrap().run(data);
});
