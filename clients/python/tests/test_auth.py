"""Sessions opened with a JWT and with an inline configuration."""

import base64
import hashlib
import hmac
import json
import time

import pytest

from prism.config.v1 import client_config_pb2 as cfg
from prism_sdk import Client

from conftest import Gateway

SECRET = "py-test-hs256-secret-long-enough-0123456789"
KEY = "py-auth-key"

CONFIG = f"""
server: {{ shutdown_grace: 1s }}
backends:
  memory: {{ type: memory }}
namespaces:
  default:
    allowed_backends: [memory]
    allowed_patterns: [key_value]
    api_keys: [{{ name: test, sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}" }}]
configs:
  kv: {{ namespace: default, pattern: key_value, backend: memory }}
auth:
  jwt:
    - issuer: https://issuer.test
      audience: prism
      algorithm: HS256
      secret: {SECRET}
      namespace_claim: ns
"""


def hs256(claims: dict) -> str:
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


@pytest.fixture
def gateway():
    g = Gateway(CONFIG)
    g.start()
    yield g
    g.stop()


def test_jwt_and_inline_config_sessions(gateway):
    jwt = hs256({"iss": "https://issuer.test", "aud": "prism", "sub": "ada",
                 "exp": int(time.time()) + 300, "ns": "default", "roles": ["admin"]})
    with Client(gateway.endpoint) as client:
        with client.session(jwt=jwt, config="kv") as session:
            session.kv.set("jwt", b"ok")
        inline = cfg.ClientConfig(
            pattern=cfg.ACCESS_PATTERN_KEY_VALUE,
            backend=cfg.BackendConfig(type=cfg.BACKEND_TYPE_MEMORY),
            consistency=cfg.ConsistencyConfig(level=cfg.CONSISTENCY_LEVEL_EVENTUAL),
        )
        with client.session(api_key=KEY, inline_config=inline) as session:
            assert session.config.namespace == "default"
            assert session.kv.get("jwt").value == b"ok"
