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
#   ONLY=cluster bash scripts/loadtest.sh   # the cluster table alone (needs haproxy)
#   ONLY=transact bash scripts/loadtest.sh  # README's Transact table alone (Postgres, NATS, Kafka)
#   ONLY=postgres bash scripts/loadtest.sh  # README's Reader, Queue and cached KeyValue on Postgres tables alone
#   ONLY=kvget bash scripts/loadtest.sh     # README's KV Get against a minimal tonic service table alone
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
# KeyValue Get against its floor: the gateway (embedded default, memory)
# beside a minimal tonic KeyValue service (a DashMap behind the same
# generated code) and the no-op server, on one connection and on four,
# then at 1,000 requests/s for the latency the gateway itself adds; into
# README.md's table.
kvget_figures() {
  local kp
  RUST_LOG=warn "$PRISM" serve --listen 127.0.0.1:18970 --admin-listen 127.0.0.1:18971 \
    >"$WORK/kvget.log" 2>&1 &
  kp=$!
  pids+=("$kp")
  wait_port 18970
  # Five short rounds of each side taken in turn; the table shows medians.
  local round=(--duration 3s --rounds 5)
  [ -n "${QUICK:-}" ] && round=(--duration 1s --rounds 3)
  for c in 1 4; do
    "$LOAD" run loadtest/scenarios/kv_get_hot.json --host 127.0.0.1:18970 --baseline --minimal-kv \
      --connections "$c" --concurrency 64 "${round[@]}" \
      --name "KV Get 1 KiB, hot key (memory), $c connection(s), 64 workers" \
      --compare-out "$WORK/kvget-$c.json" >/dev/null
  done
  "$LOAD" run loadtest/scenarios/kv_get_hot.json --host 127.0.0.1:18970 --baseline --minimal-kv \
    --rps 1000 --connections 1 --concurrency 8 "${round[@]}" \
    --name "KV Get 1 KiB, hot key (memory), at 1,000 req/s" \
    --compare-out "$WORK/kvget-rate.json" >/dev/null
  kill "$kp"; wait "$kp" 2>/dev/null || true
  python3 - "$WORK" >"$WORK/kvget.txt" <<'PY'
import json, sys, pathlib
work = pathlib.Path(sys.argv[1])
print("| run | gateway req/s | p50 / p99 ms | minimal tonic KV req/s | p50 / p99 ms "
      "| gateway ÷ minimal (target ≥ 0.95×) | no-op p50 / p99 ms | added over no-op p50 / p99 ms (target ≤ +0.10 / +0.30) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
rounds = 1
for name in ["kvget-1", "kvget-4", "kvget-rate"]:
    c = json.loads((work / f"{name}.json").read_text())
    g, m, n = c["gateway"], c["minimal"], c["noop"]
    rounds = c.get("rounds", 1)
    print(f"| {c['scenario']} | {g['rps']:,.0f} | {g['p50_ms']:.3f} / {g['p99_ms']:.3f} "
          f"| {m['rps']:,.0f} | {m['p50_ms']:.3f} / {m['p99_ms']:.3f} | **{g['rps'] / m['rps']:.2f}×** "
          f"| {n['p50_ms']:.3f} / {n['p99_ms']:.3f} "
          f"| {g['p50_ms'] - n['p50_ms']:+.3f} / {g['p99_ms'] - n['p99_ms']:+.3f} |")
print()
print(f"64 workers (8 at 1,000 req/s); each figure the median of {rounds} runs per side, "
      "the sides taken in turn (gateway, no-op, minimal).")
PY
  write_table kvget
}

if [ "${ONLY:-}" = cluster ]; then rm -f "$OUT"/cluster-*.json; else rm -f "$OUT"/*.json; fi

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


limit=()
dur=10s
if [ -n "${QUICK:-}" ]; then limit=(-n 1000); dur=2s; fi

# The cluster: KeyValue Get (Redis) through HAProxy in front of 1, 2 and 3
# gateways sharing sessions in Redis (loadtest/cluster.yaml), and the
# session store's cost: the same Gets on one gateway with in-process
# sessions (loadtest/bench.yaml) and with Redis-stored ones. The gateways
# and the load generator share this machine's cores, so read the ratio.
cluster_figures() {
  local ports=(18900 18901 18902) cpids=() hp
  for p in "${ports[@]}"; do
    PRISM_ADMIN_TOKEN=bench RUST_LOG=warn "$PRISM" serve --config loadtest/cluster.yaml \
      --listen "127.0.0.1:$p" --admin-listen "127.0.0.1:$((p + 50))" >"$WORK/cluster-$p.log" 2>&1 &
    cpids+=($!)
  done
  PRISM_ADMIN_TOKEN=bench RUST_LOG=warn "$PRISM" serve --config loadtest/bench.yaml \
    --listen 127.0.0.1:18990 --admin-listen 127.0.0.1:18991 >"$WORK/bench2.log" 2>&1 &
  cpids+=($!)
  for p in "${ports[@]}" 18990; do wait_port "$p"; done
  local runs=(-n 20000)
  [ -n "${QUICK:-}" ] && runs=(-n 2000)
  "$LOAD" run loadtest/scenarios/kv_get_hot.json --host 127.0.0.1:18990 "${runs[@]}" \
    --name "one gateway, in-process sessions" -o "$OUT/cluster-inprocess.report.json" >/dev/null
  "$LOAD" run loadtest/scenarios/kv_get_hot.json --host 127.0.0.1:18900 "${runs[@]}" \
    --name "one gateway, sessions in Redis" -o "$OUT/cluster-redis-store.report.json" >/dev/null
  for n in 1 2 3; do
    { printf 'global\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 1s\n'
      printf '  timeout client 60s\n  timeout server 60s\nfrontend grpc\n'
      printf '  bind 127.0.0.1:18909 proto h2\n  default_backend gateways\n'
      printf 'backend gateways\n  balance roundrobin\n'
      for i in $(seq 0 $((n - 1))); do
        printf '  server g%s 127.0.0.1:%s proto h2\n' "$i" "${ports[$i]}"
      done; } >"$WORK/haproxy-$n.cfg"
    haproxy -db -f "$WORK/haproxy-$n.cfg" >"$WORK/haproxy-$n.log" 2>&1 &
    hp=$!
    wait_port 18909
    "$LOAD" run loadtest/scenarios/kv_get_hot.json --host 127.0.0.1:18909 "${runs[@]}" \
      --name "HAProxy, $n gateway(s)" -o "$OUT/cluster-$n.report.json" >/dev/null
    kill "$hp"; wait "$hp" 2>/dev/null || true
  done
  kill "${cpids[@]}" 2>/dev/null || true
  python3 - "$OUT" >"$WORK/cluster.txt" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
def row(name):
    r = json.loads((out / f"{name}.report.json").read_text())
    lat = {l["percentage"]: l["latency"] / 1e6 for l in r["latencyDistribution"]}
    errors = sum(r["errorDistribution"].values())
    return r["name"], r["rps"], lat.get(50), lat.get(99), errors
rows = [row(n) for n in ["cluster-inprocess", "cluster-redis-store", "cluster-1", "cluster-2", "cluster-3"]]
print("| KV Get hot (Redis), 16 workers, 2 connections | requests/s | vs first | p50 ms | p99 ms | errors |")
print("|---|---:|---:|---:|---:|---:|")
for name, rps, p50, p99, errors in rows:
    print(f"| {name} | {rps:,.0f} | {rps / rows[0][1]:.2f}x | {p50:.2f} | {p99:.2f} | {errors} |")
PY
  {
    echo "<!-- cluster:begin -->"
    echo "Measured $(date -u +%Y-%m-%d) by \`bash scripts/loadtest.sh\` (\`ONLY=cluster\` for this table alone) on $(nproc) cores."
    echo
    cat "$WORK/cluster.txt"
    echo "<!-- cluster:end -->"
  } >"$WORK/cluster.md"
  replace_between cluster loadtest/README.md "$WORK/cluster.md"
}

# Replaces the text between `<!-- $1:begin -->` and `<!-- $1:end -->` in
# file $2 with the contents of file $3.
replace_between() {
  python3 - "$1" "$2" "$3" <<'PY'
import re, sys
mark, doc, figures = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().rstrip("\n")
text = open(doc).read()
pattern = re.compile(rf"<!-- {mark}:begin -->.*?<!-- {mark}:end -->", re.S)
if not pattern.search(text):
    sys.exit(f"{doc}: no {mark} markers")
open(doc, "w").write(pattern.sub(lambda _: figures, text))
PY
}

# Puts the table in $WORK/$1.txt, with when and how it was measured,
# between README.md's `<!-- $1:begin -->` / `<!-- $1:end -->` markers.
write_table() {
  {
    echo "<!-- $1:begin -->"
    cat "$WORK/$1.txt"
    echo
    echo "Measured $(date -u +%Y-%m-%d) by \`bash scripts/loadtest.sh\` (\`ONLY=$1\` for this table alone) on $(nproc) cores."
    echo "<!-- $1:end -->"
  } >"$WORK/$1.md"
  replace_between "$1" README.md "$WORK/$1.md"
}

# Runs `cargo bench --bench $1` with the given VAR=value settings, its
# figures as JSON in $WORK/$1.json; shows its log and stops if it fails.
run_bench() {
  local bench=$1
  shift
  env "$@" PRISM_BENCH_JSON="$WORK/$bench.json" \
    cargo bench --bench "$bench" >"$WORK/$bench.log" 2>&1 || {
    cat "$WORK/$bench.log" >&2
    exit 1
  }
}

# Transact Writes on Postgres and SQLite, relayed to PubSub, NATS and
# Kafka, each beside the same INSERTs straight to the database
# (benches/transact_write.rs), into README.md's Transact table.
transact_figures() {
  local writes=()
  [ -n "${QUICK:-}" ] && writes=(PRISM_BENCH_WRITES=1000)
  run_bench transact_write "${writes[@]}"
  python3 - "$WORK/transact_write.json" >"$WORK/transact.txt" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
runs = doc["runs"]
head = [f"{r['store']} → {r['target']}" for r in runs]
def row(name, cell):
    print(f"| {name} | " + " | ".join(cell(r) for r in runs) + " |")
print("| measure (issue target) | " + " | ".join(head) + " |")
print("|---|" + "---|" * len(runs))
row("Write throughput, one mailbox", lambda r: f"{r['rate']:,.0f} writes/s")
row("direct baseline, same run", lambda r: f"{r['direct']:,.0f} tx/s")
row("gateway ÷ direct (≥ 0.7×)", lambda r: f"**{r['rate'] / r['direct']:.2f}×**")
row("Write latency p50 / p99", lambda r: f"{r['write_p50_ms']:.1f} / {r['write_p99_ms']:.1f} ms")
row("commit-to-relay p50 / p99 (p99 < 10 ms)",
    lambda r: f"{r['relay_p50_ms']:.1f} / **{r['relay_p99_ms']:.1f}** ms")
row("broker alone, send to arrival p50 / p99",
    lambda r: "—" if r.get("broker_p99_ms") is None
    else f"{r['broker_p50_ms']:.1f} / {r['broker_p99_ms']:.1f} ms")
print()
print(f"{doc['writers']} clients, {doc['writes']:,} Writes per column.")
PY
  write_table transact
}

# A Reader page and a Queue Publish on Postgres, each beside the same SQL
# sent straight to Postgres in the same run (benches/postgres_paths.rs),
# into README.md's table.
postgres_figures() {
  local calls=()
  [ -n "${QUICK:-}" ] && calls=(PRISM_BENCH_CALLS=1000)
  run_bench postgres_paths "${calls[@]}"
  python3 - "$WORK/postgres_paths.json" >"$WORK/postgres.txt" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
print("| call (issue target: gateway ≥ 0.8× direct) | gateway calls/s | p50 / p99 ms | direct SQL calls/s | p50 / p99 ms | gateway ÷ direct |")
print("|---|---:|---:|---:|---:|---:|")
cache = doc["runs"].pop("kv_get_cached", None)
for r in doc["runs"].values():
    g, d = r["gateway"], r["direct"]
    print(f"| {r['name']} | {g['rate']:,.0f} | {g['p50_ms']:.2f} / {g['p99_ms']:.2f} "
          f"| {d['rate']:,.0f} | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} | **{g['rate'] / d['rate']:.2f}×** |")
print()
print(f"{doc['clients']} clients, {doc['calls']:,} calls per column.")
if cache:
    c, u = cache["cached"], cache["uncached"]
    print()
    print("| KeyValue Get on Postgres | calls/s | p50 / p99 ms |")
    print("|---|---:|---:|")
    print(f"| {cache['name']}, uncached config | {u['rate']:,.0f} | {u['p50_ms']:.2f} / {u['p99_ms']:.2f} |")
    print(f"| {cache['name']}, config with a look-aside cache (hit rate {cache['hit_rate']:.3f}, the warm-up pass's 1,000 misses included) "
          f"| {c['rate']:,.0f} | {c['p50_ms']:.2f} / {c['p99_ms']:.2f} |")
    print(f"| cached ÷ uncached | **{c['rate'] / u['rate']:.2f}×** | |")
PY
  write_table postgres
}

if [ "${ONLY:-}" = cluster ]; then
  cluster_figures
  echo "figures written to loadtest/README.md"
  exit 0
fi
if [ "${ONLY:-}" = transact ]; then
  transact_figures
  echo "figures written to README.md"
  exit 0
fi
if [ "${ONLY:-}" = postgres ]; then
  postgres_figures
  echo "figures written to README.md"
  exit 0
fi
if [ "${ONLY:-}" = kvget ]; then
  kvget_figures
  echo "figures written to README.md"
  exit 0
fi

PRISM_SQLITE_PATH="$WORK/orders.db" RUST_LOG=warn \
  "$PRISM" serve --listen 127.0.0.1:18980 --admin-listen 127.0.0.1:18981 >"$WORK/default.log" 2>&1 &
pids+=($!)
PRISM_ADMIN_TOKEN=bench RUST_LOG=warn \
  "$PRISM" serve --config loadtest/bench.yaml --listen 127.0.0.1:18990 --admin-listen 127.0.0.1:18991 \
  >"$WORK/bench.log" 2>&1 &
pids+=($!)
wait_port 18980
wait_port 18990

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

kvget_figures
cluster_figures
transact_figures
postgres_figures

sessions=1000000
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
  replace_between loadtest "$doc" "$WORK/figures.md"
done
echo "figures written to loadtest/README.md and README.md"
