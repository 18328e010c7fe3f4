#!/usr/bin/env bash
# Regenerates the load-test figures in loadtest/README.md and README.md:
# builds release binaries, starts `prism serve` on the embedded default (and
# on loadtest/bench.yaml for the Redis comparison), runs every scenario with
# the no-op baseline, then the single-connection and Redis runs and the
# footprint measurement, and writes the tables between the
# `<!-- loadtest:begin -->` / `<!-- loadtest:end -->` markers.
#
#   bash scripts/loadtest.sh            # full figures (about 5 minutes)
#   QUICK=1 bash scripts/loadtest.sh    # 1,000 requests per scenario
#
# Only loopback addresses are loaded; every run is bounded by its total or
# its duration.
set -euo pipefail
cd "$(dirname "$0")/.."

redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || {
  echo "Redis is not running on 127.0.0.1:6379 (scripts/test.sh starts it)" >&2
  exit 1
}

cargo build --release -p prism -p prism-loadtest
PRISM=target/release/prism
LOAD=target/release/prism-loadtest
WORK=$(mktemp -d)
OUT=loadtest/results
mkdir -p "$OUT"
rm -f "$OUT"/*.json

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 300); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  exit 1
}

PRISM_SQLITE_PATH="$WORK/orders.db" RUST_LOG=warn \
  "$PRISM" serve --listen 127.0.0.1:18980 --admin-listen 127.0.0.1:18981 >"$WORK/default.log" 2>&1 &
pids+=($!)
PRISM_ADMIN_TOKEN=bench RUST_LOG=warn \
  "$PRISM" serve --config loadtest/bench.yaml --listen 127.0.0.1:18990 --admin-listen 127.0.0.1:18991 \
  >"$WORK/bench.log" 2>&1 &
pids+=($!)
wait_port 18980
wait_port 18990

limit=()
dur=10s
if [ -n "${QUICK:-}" ]; then limit=(-n 1000); dur=2s; fi

for s in loadtest/scenarios/*.json; do
  name=$(basename "$s" .json)
  "$LOAD" run "$s" --host 127.0.0.1:18980 --baseline "${limit[@]}" \
    -o "$OUT/$name.report.json" --compare-out "$OUT/$name.json"
done

# One HTTP/2 connection, no rate limit: how far one client connection goes.
"$LOAD" run loadtest/scenarios/kv_get_hot.json --host 127.0.0.1:18980 --baseline \
  --connections 1 --concurrency 32 --duration "$dur" \
  --name "KV Get hot (memory), 1 connection, 32 workers" \
  -o "$OUT/kv_get_hot_one_connection.report.json" --compare-out "$OUT/kv_get_hot_one_connection.json"

# KeyValue on Redis at 1,000 requests/s, against Redis GETs at the same rate.
"$LOAD" run loadtest/scenarios/kv_get_hot.json --host 127.0.0.1:18990 --baseline \
  --redis-direct redis://127.0.0.1:6379 --rps 1000 --duration "$dur" \
  --concurrency 8 --connections 1 --name "KV Get hot (Redis) at 1,000 req/s" \
  -o "$OUT/kv_get_redis_1k.report.json" --compare-out "$OUT/kv_get_redis_1k.json"

# One session's Gets, alone and beside a neighbour session of the same
# namespace walking its keys (Count, full Scan, BatchGet) all the while.
keys=100000
[ -n "${QUICK:-}" ] && keys=10000
"$LOAD" neighbour loadtest/scenarios/kv_get_hot.json --host 127.0.0.1:18980 \
  --duration "$dur" --keys "$keys" | tee "$WORK/neighbour.txt"

kill "${pids[@]}" 2>/dev/null || true
pids=()

sessions=100000
[ -n "${QUICK:-}" ] && sessions=5000
PRISM_ADMIN_TOKEN=bench "$LOAD" footprint --prism "$PRISM" --config loadtest/bench.yaml \
  --sessions "$sessions" | tee "$WORK/footprint.txt"

machine="$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), \
$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), \
$(rustc --version | cut -d' ' -f1-2), gateway and load generator on the same machine"

table=$("$LOAD" table $(ls "$OUT"/*.json | grep -v '\.report\.json$'))
{
  echo "<!-- loadtest:begin -->"
  echo "Measured $(date -u +%Y-%m-%d) by \`bash scripts/loadtest.sh\` on: $machine."
  echo
  echo "$table"
  echo
  echo '```text'
  cat "$WORK/footprint.txt"
  sed '/^$/d' "$WORK/neighbour.txt"
  echo '```'
  echo "<!-- loadtest:end -->"
} >"$WORK/figures.md"

for doc in loadtest/README.md README.md; do
  python3 - "$doc" "$WORK/figures.md" <<'PY'
import re, sys
doc, figures = sys.argv[1], open(sys.argv[2]).read().rstrip("\n")
text = open(doc).read()
pattern = re.compile(r"<!-- loadtest:begin -->.*?<!-- loadtest:end -->", re.S)
if not pattern.search(text):
    sys.exit(f"{doc}: no loadtest markers")
open(doc, "w").write(pattern.sub(lambda _: figures, text))
PY
done
echo "figures written to loadtest/README.md and README.md"
