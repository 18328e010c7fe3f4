"""The gateway the tests talk to: the one at PRISM_ENDPOINT if set (as
scripts/test.sh does), else the built binary on its embedded default
config, started here on a free loopback port. Tests that restart a gateway
always start their own (PRISM_BIN, default target/debug/prism)."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
DEV_KEY = "prism-dev-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """The gateway binary on the embedded default (or ``config``), on one
    port, started and stopped by this test (by PID only)."""

    def __init__(self, config: str | None = None) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="prism-sdk-py-")
        self.process: subprocess.Popen | None = None
        self.args = ["serve"]
        if config is not None:
            path = os.path.join(self.dir, "prism.yaml")
            with open(path, "w") as f:
                f.write(config)
            self.args += ["--config", path]

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = os.environ.get("PRISM_BIN", str(ROOT / "target" / "debug" / "prism"))
        env = dict(os.environ, PRISM_LISTEN=self.endpoint, PRISM_ADMIN_LISTEN="127.0.0.1:0",
                   PRISM_SQLITE_PATH=os.path.join(self.dir, "orders.db"))
        log = open(os.path.join(self.dir, "gateway.log"), "ab")
        self.process = subprocess.Popen([binary, *self.args], env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited; see {self.dir}/gateway.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("gateway did not listen within 30 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture(scope="session")
def endpoint():
    given = os.environ.get("PRISM_ENDPOINT")
    if given:
        yield given
        return
    gateway = Gateway()
    gateway.start()
    yield gateway.endpoint
    gateway.stop()


@pytest.fixture
def own_gateway():
    gateway = Gateway()
    gateway.start()
    yield gateway
    gateway.stop()


def until_subscribed(pubsub, topic: str) -> None:
    """Publishes probes to ``topic`` until one reaches a subscriber: the
    subscription being waited on is then in place (PubSub is at-most-once:
    what is published before it is not seen)."""
    for _ in range(1000):
        if pubsub.publish(topic, b"probe").subscriber_count:
            return
        time.sleep(0.01)
    raise AssertionError(f"no subscriber on {topic} after 1000 probes")
