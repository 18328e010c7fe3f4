#!/usr/bin/env bash
# Runs the fuzz targets under libFuzzer with cargo-fuzz (installed when
# missing), each for a bounded time, starting from the committed seeds.
#
#   bash scripts/fuzz.sh                  # every target, 10 minutes each
#   SECONDS_PER_TARGET=60 bash scripts/fuzz.sh gate reader
#
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain take them. Targets: config, topics, reader, gate (fuzz/targets/).
# A finding is written to fuzz/artifacts/<target>/ and fails the run; copy
# it into fuzz/seeds/<target>/ once fixed, so `tests/fuzz_seeds.rs` keeps
# it fixed.
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.1 --locked
seconds=${SECONDS_PER_TARGET:-600}
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(config topics reader gate)

# Safe Rust throughout: the address sanitizer adds nothing but slowness;
# libFuzzer still catches panics, aborts, hangs and runaway memory.
flags=(--sanitizer none --release --debug-assertions)
cargo fuzz build "${flags[@]}"

for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  cp -n fuzz/seeds/"$t"/* "fuzz/corpus/$t/" 2>/dev/null || true
  echo "[fuzz] $t for ${seconds}s (log: fuzz/$t.log)"
  status=0
  cargo fuzz run "${flags[@]}" "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=30 -rss_limit_mb=4096 \
    -print_final_stats=1 >"fuzz/$t.log" 2>&1 || status=$?
  grep -E "^Done|stat::number_of_executed_units|stat::peak_rss_mb" "fuzz/$t.log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "fuzz/$t.log" >&2
    echo "[fuzz] $t found a problem: see fuzz/$t.log and fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
echo "[fuzz] no findings"
