"""TLS and mTLS: a session opened with the client certificate of the
connection, against a gateway with TLS (the repository's test fixtures)."""

import pathlib

import pytest

from prism_sdk import Client, InvalidInputError, Tls

from conftest import Gateway

FIXTURES = pathlib.Path(__file__).resolve().parents[3] / "tests" / "fixtures"

CONFIG = f"""
server:
  shutdown_grace: 1s
  tls:
    cert_file: {FIXTURES / "server.pem"}
    key_file: {FIXTURES / "server.key"}
    client_ca_file: {FIXTURES / "ca.pem"}
backends:
  memory: {{ type: memory }}
namespaces:
  default:
    allowed_backends: [memory]
    allowed_patterns: [key_value]
configs:
  kv: {{ namespace: default, pattern: key_value, backend: memory }}
auth:
  mtls:
    identities:
      orders-client: {{ namespace: default, roles: [admin] }}
"""


@pytest.fixture
def tls_gateway():
    gateway = Gateway(CONFIG)
    gateway.start()
    yield gateway
    gateway.stop()


def test_mtls_session(tls_gateway):
    read = lambda name: (FIXTURES / name).read_bytes()  # noqa: E731
    tls = Tls(ca=read("ca.pem"), cert=read("client.pem"), key=read("client.key"))
    with Client(tls_gateway.endpoint, tls=tls) as client:
        with client.session(mtls=True, config="kv") as session:
            session.kv.set("tls", b"yes")
            assert session.kv.get("tls").value == b"yes"
    # TLS without a client certificate: the client refuses mtls=True
    # before sending anything.
    with Client(tls_gateway.endpoint, tls=Tls(ca=read("ca.pem"))) as plain:
        with pytest.raises(InvalidInputError):
            plain.session(mtls=True, config="kv")
