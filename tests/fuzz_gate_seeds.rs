//! The `gate` fuzz target over its committed seeds (`fuzz/seeds/gate/`),
//! against a gateway on the embedded default. Its own test binary: a
//! panic on one of the gateway's tasks reaches the client only as a reset
//! stream, so every panic in the process is counted.

use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "../fuzz/targets/gate.rs"]
mod gate;

static PANICS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn gate_seeds_are_answered_without_a_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/gate");
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 20, "seeds in {}", dir.display());
    let mut harness = gate::Harness::start();
    for path in &seeds {
        let outcome = harness.run(&std::fs::read(path).unwrap());
        // Seeds are well-formed requests: each must reach the services.
        assert_ne!(
            outcome,
            gate::Outcome::Undecodable,
            "{} does not decode as its method's request",
            path.display()
        );
    }
    harness.stop();
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic while replaying");
}
