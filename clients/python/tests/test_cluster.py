"""Two gateways behind HAProxy (HTTP/2, each request balanced on its own),
sessions and KeyValue in Postgres: a blocking client keeps writing while
one gateway is killed with SIGKILL, with no retry code of its own. Every
write is answered, the session never reopens (it lives in Postgres, not in
a gateway), and every acknowledged write reads back."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from prism_sdk import Client

from conftest import Gateway, free_port

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
KEY = "py-cluster-key"
WRITES = 200


def config(namespace: str) -> str:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    return f"""
server: {{ shutdown_grace: 1s, supervision_interval: 100ms }}
sessions: {{ store: postgres, url: "{DATABASE_URL}", flush_interval: 200ms }}
backends:
  postgres:
    type: postgres
    url: "{DATABASE_URL}"
    pool: {{ connect_timeout: 1s, health_interval: 200ms, backoff_initial: 50ms, backoff_max: 500ms }}
namespaces:
  {namespace}:
    allowed_backends: [postgres]
    allowed_patterns: [key_value]
    api_keys: [{{ name: test, sha256: "{digest}" }}]
configs:
  kv: {{ namespace: {namespace}, pattern: key_value, backend: postgres }}
"""


def haproxy_config(port: int, servers: list, stats: str) -> str:
    lines = [
        "global", "  maxconn 2000", f"  stats socket {stats} mode 600 level user",
        "defaults", "  mode http", "  timeout connect 1s", "  timeout client 60s",
        "  timeout server 60s", "  retries 3", "  option redispatch 1",
        "  retry-on conn-failure empty-response",
        "frontend grpc", f"  bind 127.0.0.1:{port} proto h2", "  default_backend gateways",
        "backend gateways", "  balance roundrobin",
    ]
    lines += [f"  server g{i} {s} proto h2 check inter 100ms fall 2 rise 2"
              for i, s in enumerate(servers)]
    return "\n".join(lines) + "\n"


def until_servers_up(stats: str, count: int) -> None:
    """Waits until HAProxy's health checks have every gateway in rotation."""
    deadline = time.monotonic() + 30
    while True:
        up = 0
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(stats)
                s.sendall(b"show stat\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            for line in data.decode().splitlines():
                fields = line.split(",")
                if len(fields) > 17 and fields[0] == "gateways" and fields[1].startswith("g"):
                    up += fields[17] == "UP"
        except OSError:
            pass
        if up == count:
            return
        assert time.monotonic() < deadline, f"{up} of {count} gateways up behind haproxy"
        time.sleep(0.05)


@pytest.fixture
def cluster():
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert os.path.exists(haproxy), "haproxy is installed (scripts/test.sh installs it)"
    namespace = f"py{random.getrandbits(32):08x}"
    gateways = [Gateway(config(namespace)) for _ in range(2)]
    for g in gateways:
        g.start()
    port = free_port()
    work = tempfile.mkdtemp(prefix="prism-py-cluster-")
    cfg = os.path.join(work, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(haproxy_config(port, [g.endpoint for g in gateways], os.path.join(work, "stats")))
    proxy = subprocess.Popen([haproxy, "-db", "-f", cfg],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "haproxy did not listen"
            time.sleep(0.05)
    until_servers_up(os.path.join(work, "stats"), len(gateways))
    yield f"127.0.0.1:{port}", gateways
    proxy.terminate()
    proxy.wait(timeout=10)
    for g in gateways:
        g.stop()
    shutil.rmtree(work, ignore_errors=True)
    if shutil.which("psql"):
        subprocess.run(["psql", DATABASE_URL, "-qc",
                        f"DELETE FROM prism_kv WHERE namespace = '{namespace}'"],
                       capture_output=True, check=False)


def test_writes_go_on_when_a_gateway_behind_the_balancer_is_killed(cluster):
    endpoint, gateways = cluster
    with Client(endpoint) as client:
        session = client.session(api_key=KEY, config="kv")
        kv = session.kv
        for i in range(WRITES):
            if i == WRITES // 4:
                victim = gateways[1].process
                victim.kill()  # SIGKILL, by the PID this test started
                victim.wait(timeout=10)
                gateways[1].process = None
            kv.set(f"k{i}", str(i).encode())
        assert session.reopened == 0, "the session lives in Postgres, not in a gateway"
        for i in range(WRITES):
            got = kv.get(f"k{i}")
            assert got is not None and got.value == str(i).encode(), f"acknowledged write k{i} lost"
        session.close()
