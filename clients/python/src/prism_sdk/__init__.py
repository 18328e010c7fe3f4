"""Python client for the Prism data access gateway.

Sessions look after themselves (heartbeats paced by the TTL the gateway
returns, the token on every call, reopened when the gateway says the token
no longer works, if allowed); ``UNAVAILABLE`` and ``RESOURCE_EXHAUSTED``
are retried with backoff and jitter, never sooner than the gateway's
``RetryInfo``; every write carries an idempotency token made once per
logical write. Blocking API here, asyncio in ``prism_sdk.aio``::

    from prism_sdk import Client

    with Client("127.0.0.1:8980") as client:
        with client.session(api_key="prism-dev-key", config="user-profiles") as session:
            session.kv.set("user/42", b"ada")
            print(session.kv.get("user/42").value)

The generated stubs ship in the ``prism`` package beside this one.
"""

from ._calls import KvTransaction, Value, all_of, any_of, change, where
from .client import Client, Session, Tls, __version__
from .errors import InvalidInputError, PrismError, SessionClosedError
from .retry import RetryPolicy

__all__ = [
    "Client",
    "InvalidInputError",
    "KvTransaction",
    "PrismError",
    "RetryPolicy",
    "Session",
    "SessionClosedError",
    "Tls",
    "Value",
    "__version__",
    "all_of",
    "any_of",
    "change",
    "where",
]
