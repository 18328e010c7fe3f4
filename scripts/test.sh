#!/usr/bin/env bash
# Runs Prism's whole test suite, first making sure every service the tests
# talk to answers on loopback: Postgres (5432, database `test`), Redis (6379),
# NATS with JetStream (4222) and the nisshi Kafka broker (9092). Services that
# are down are started; nisshi is installed when missing (~15 min, once), and
# Debian's chromium (the admin page test) and haproxy (the cluster test) when
# missing.
# Then: cargo fmt --check, cargo clippy -D warnings, cargo test (the whole
# workspace: gateway, wire contract, load runner), and a Python
# client generated from proto/ against the binary on its embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test.sh] %s\n' "$*"; }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port NAME PORT SECONDS
wait_port() {
  local name=$1 port=$2 deadline=$((SECONDS + $3))
  until port_open "$port"; do
    if ((SECONDS > deadline)); then log "$name did not come up on port $port"; return 1; fi
    sleep 0.2
  done
  log "$name is up on 127.0.0.1:$port"
}

apt_install() {
  log "installing $* from Debian packages"
  if [ -z "${PRISM_APT_UPDATED:-}" ]; then apt-get update -qq; PRISM_APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if ! port_open 5432; then
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    log "starting postgres"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
    wait_port postgres 5432 60
  else
    log "postgres is up on 127.0.0.1:5432"
  fi
  if ! psql -h 127.0.0.1 -U postgres -d test -qtAc 'select 1' >/dev/null 2>&1; then
    log "creating database test"
    psql -h 127.0.0.1 -U postgres -qc 'create database test' >/dev/null
  fi
}

ensure_redis() {
  if port_open 6379; then log "redis is up on 127.0.0.1:6379"; return; fi
  command -v redis-server >/dev/null || apt_install redis-server
  log "starting redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port redis 6379 30
}

ensure_nats() {
  if port_open 4222; then log "nats is up on 127.0.0.1:4222"; return; fi
  command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || apt_install nats-server
  log "starting nats with jetstream"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server || echo /usr/sbin/nats-server)" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_port nats 4222 30
}

NISSHI_VERSION=0.8.1
ensure_chromium() {
  # The admin page test drives Debian's headless Chromium.
  if [ -x /usr/bin/chromium ]; then log "chromium present"; return; fi
  apt_install chromium
}

ensure_haproxy() {
  # The cluster test balances three gateways with Debian's HAProxy.
  if command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ]; then log "haproxy present"; return; fi
  apt_install haproxy
}

ensure_promtool() {
  # tests/dashboards.rs checks the alert rules and dashboard queries with
  # promtool (Debian's prometheus package; its server is not started).
  if command -v promtool >/dev/null; then log "promtool present"; return; fi
  apt_install --no-install-recommends prometheus
}

ensure_kafka() {
  if port_open 9092; then log "kafka (nisshi) is up on 127.0.0.1:9092"; return; fi
  export PATH="$HOME/.cargo/bin:$PATH"
  if ! command -v nisshi >/dev/null; then
    log "installing nisshi $NISSHI_VERSION (about 15 minutes, once)"
    cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version
  fi
  log "starting nisshi kafka broker (log: target/nisshi.log)"
  mkdir -p target
  nohup nisshi broker --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://nisshi/ \
    >target/nisshi.log 2>&1 &
  wait_port kafka 9092 60
}

ensure_postgres
ensure_redis
ensure_nats
ensure_kafka
ensure_chromium
ensure_haproxy
ensure_promtool
# tests/deploy.rs validates the Kubernetes manifests offline.
if ! command -v kubernetes-validate >/dev/null; then
  log "installing kubernetes-validate (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi
# tests/exposition.rs parses /metrics with the OpenMetrics parser of the
# Python prometheus_client.
if ! python3 -c "import prometheus_client" 2>/dev/null; then
  log "installing prometheus_client (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check prometheus_client
fi
# tests/claim_check.rs keeps payloads on an S3 server: moto, started by the
# test on a free loopback port.
if ! python3 -c "import moto.server, flask" 2>/dev/null; then
  log "installing moto[server] (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
fi

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
log "cargo test"
cargo test --workspace --all-targets "$@"

# The Python SDK (clients/python, its stubs generated from proto/ alone)
# installed into a fresh virtualenv as a user would, then its example and
# its pytest suite against the binary on its embedded default config.
log "python sdk against the embedded default"
client_dir="$(mktemp -d)"
python3 -m venv "$client_dir/venv"
"$client_dir/venv/bin/pip" install --quiet --disable-pip-version-check "./clients/python[test]"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
PRISM_LISTEN="127.0.0.1:$port" PRISM_ADMIN_LISTEN="127.0.0.1:0" \
  PRISM_SQLITE_PATH="$client_dir/orders.db" target/debug/prism serve >"$client_dir/gateway.log" 2>&1 &
gateway_pid=$!
trap 'kill "$gateway_pid" 2>/dev/null || true' EXIT
wait_port "prism (embedded default)" "$port" 30
"$client_dir/venv/bin/python" scripts/python_client.py "127.0.0.1:$port"
PRISM_ENDPOINT="127.0.0.1:$port" PRISM_BIN="$PWD/target/debug/prism" \
  "$client_dir/venv/bin/python" -m pytest -q -p no:cacheprovider clients/python/tests
kill -TERM "$gateway_pid"
wait "$gateway_pid"
trap - EXIT
rm -rf "$client_dir"
log "all checks passed"
