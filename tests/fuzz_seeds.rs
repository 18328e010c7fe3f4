//! The fuzz targets (`fuzz/targets/`) run over their committed seeds
//! (`fuzz/seeds/<target>/`) on every test run: the targets keep compiling,
//! and every input that once found a problem stays fixed. The long runs
//! are `cargo fuzz` (README, "Fuzzing"). The `gate` target has its own
//! test binary, `fuzz_gate_seeds.rs`, as it counts every panic in its
//! process.

use std::path::{Path, PathBuf};

#[path = "../fuzz/targets/config.rs"]
mod config;
#[path = "../fuzz/targets/reader.rs"]
mod reader;
#[path = "../fuzz/targets/topics.rs"]
mod topics;

/// Every file under `dirs`, sorted.
fn inputs(dirs: &[PathBuf]) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in dirs {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                let data = std::fs::read(&path).unwrap();
                out.push((path, data));
            }
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no seeds in {dirs:?}");
    out
}

fn seeds(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target)
}

fn replay(dirs: &[PathBuf], mut run: impl FnMut(&[u8])) -> usize {
    let inputs = inputs(dirs);
    for (path, data) in &inputs {
        eprintln!("{}", path.display());
        run(data);
    }
    inputs.len()
}

#[test]
fn config_seeds_and_the_shipped_configs() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    replay(&[seeds("config"), shipped], config::run);
}

#[test]
fn topics_seeds() {
    replay(&[seeds("topics")], topics::run);
}

#[test]
fn reader_seeds() {
    replay(&[seeds("reader")], reader::run);
}
