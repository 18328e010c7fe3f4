"""What a call can fail with: the gateway's answer (gRPC code plus its
``google.rpc.ErrorInfo`` reason and metadata, and ``RetryInfo``), input
refused before it was sent, or a closed session."""

from __future__ import annotations

from typing import Mapping, Optional

import grpc
from google.rpc import error_details_pb2, status_pb2

# The reasons a gateway gives when a session token no longer works; a
# session allowed to reopen itself does so on these. INVALID_SESSION_TOKEN:
# a restarted gateway without a shared session store never heard of it.
SESSION_LOST = frozenset(
    {"SESSION_EXPIRED", "SESSION_CLOSED", "SESSION_FAILED", "INVALID_SESSION_TOKEN"}
)
# RESOURCE_EXHAUSTED reasons no retry cures: a size limit, or a stream
# ended for falling behind.
TOO_LARGE = frozenset({"PAYLOAD_TOO_LARGE", "RESPONSE_TOO_LARGE", "SUBSCRIBER_TOO_SLOW"})


class PrismError(Exception):
    """A gRPC error, with what the gateway said about it.

    Attributes:
        code: the gRPC status code.
        message: the gateway's message (lowercase; says what to fix).
        reason: ``ErrorInfo.reason`` (``SESSION_EXPIRED``, ``RATE_LIMITED``,
            ...), or None when the error did not come from the gateway.
        domain: ``ErrorInfo.domain``: the API that answered.
        metadata: ``ErrorInfo.metadata``: the facts behind the error.
        retry_after: seconds the gateway asked the client to wait, if any.
        not_sent: the request is known not to have reached the gateway.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: Optional[str] = None,
        domain: Optional[str] = None,
        metadata: Optional[Mapping[str, str]] = None,
        retry_after: Optional[float] = None,
        not_sent: bool = False,
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after
        self.not_sent = not_sent

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> "PrismError":
        """Reads a failed call: code, message, ErrorInfo and RetryInfo."""
        code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
        message = err.details() if callable(getattr(err, "details", None)) else str(err)
        message = message or ""
        reason = domain = None
        metadata: dict = {}
        retry_after = None
        trailers = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) else None
        for key, value in trailers or ():
            if key != "grpc-status-details-bin":
                continue
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                retry = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
                elif detail.Unpack(retry):
                    retry_after = retry.retry_delay.ToTimedelta().total_seconds()
        lowered = message.lower()
        # The channel could not connect: the request never left the client.
        not_sent = (
            code == grpc.StatusCode.UNAVAILABLE
            and reason is None
            and ("failed to connect" in lowered or "connection refused" in lowered)
        )
        return cls(code, message, reason, domain, metadata, retry_after, not_sent)

    @property
    def is_session_lost(self) -> bool:
        """Whether the session's token no longer works."""
        return self.code == grpc.StatusCode.UNAUTHENTICATED and self.reason in SESSION_LOST

    @property
    def is_transient(self) -> bool:
        """Whether a retry may succeed: ``UNAVAILABLE``, or
        ``RESOURCE_EXHAUSTED`` for a limit that frees up (not a size)."""
        if self.code == grpc.StatusCode.UNAVAILABLE:
            return True
        return self.code == grpc.StatusCode.RESOURCE_EXHAUSTED and self.reason not in TOO_LARGE


class SessionClosedError(PrismError):
    """The session was closed by ``Session.close``."""

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, "the session is closed")


class InvalidInputError(PrismError, ValueError):
    """Input refused before it was sent."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, message)
