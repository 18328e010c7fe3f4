"""The retry and error rules, without a gateway."""

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from prism_sdk import PrismError, RetryPolicy
from prism_sdk.retry import Resend


class FakeError(grpc.RpcError):
    def __init__(self, code, details, trailers=()):
        self._code, self._details, self._trailers = code, details, trailers

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


def status_details(reason, domain, retry_ms=None, **metadata):
    status = status_pb2.Status()
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata))
    if retry_ms is not None:
        status.details.add().Pack(error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(nanos=retry_ms * 1_000_000)))
    return (("grpc-status-details-bin", status.SerializeToString()),)


def test_error_info_and_retry_info_are_read():
    e = PrismError.from_rpc_error(FakeError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "over the rate limit",
        status_details("RATE_LIMITED", "prism.keyvalue.v1", 250, limit="100")))
    assert (e.reason, e.domain, e.metadata, e.retry_after) == (
        "RATE_LIMITED", "prism.keyvalue.v1", {"limit": "100"}, 0.25)
    assert e.is_transient and not e.is_session_lost and not e.not_sent
    lost = PrismError.from_rpc_error(FakeError(
        grpc.StatusCode.UNAUTHENTICATED, "x", status_details("INVALID_SESSION_TOKEN", "prism.session.v1")))
    assert lost.is_session_lost
    too_big = PrismError.from_rpc_error(FakeError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "x", status_details("PAYLOAD_TOO_LARGE", "prism.queue.v1")))
    assert not too_big.is_transient


def test_publish_is_resent_only_when_not_applied():
    refused = PrismError.from_rpc_error(FakeError(
        grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; connection refused"))
    backend = PrismError.from_rpc_error(FakeError(
        grpc.StatusCode.UNAVAILABLE, "backend down", status_details("BACKEND_UNAVAILABLE", "prism.queue.v1")))
    limited = PrismError.from_rpc_error(FakeError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", status_details("RATE_LIMITED", "prism.queue.v1")))
    assert refused.not_sent
    assert Resend.ONLY_IF_NOT_APPLIED.allows(refused)
    assert Resend.ONLY_IF_NOT_APPLIED.allows(limited)
    assert not Resend.ONLY_IF_NOT_APPLIED.allows(backend)
    assert Resend.SAFE.allows(backend)


def test_backoff_grows_to_its_ceiling_honours_retry_info_and_ends():
    backoff = RetryPolicy(max_attempts=6, initial_backoff=0.1, max_backoff=0.4).start()
    for ceiling in (0.1, 0.2, 0.4, 0.4):
        assert 0 <= backoff.next(None) <= ceiling
    assert backoff.next(3.0) == 3.0
    assert backoff.next(None) is None
    assert RetryPolicy.none().start().next(None) is None


def test_pieces_of_a_large_payload_are_joined_and_gaps_refused():
    import pytest
    from prism.queue.v1 import queue_pb2
    from prism_sdk._calls import Joiner
    from prism_sdk.errors import InvalidInputError

    def piece(i, n, data, total=6):
        headers = {"prism-chunk": f"{i}/{n}", "prism-chunk-total-size": str(total)}
        if i == 0:
            headers["k"] = "v"
        return queue_pb2.Message(message_id="t/0/1", payload=data, headers=headers)

    j = Joiner()
    assert j.add(piece(0, 3, b"ab")) is None
    assert j.add(piece(1, 3, b"cd")) is None
    whole = j.add(piece(2, 3, b"ef"))
    assert (whole.payload, dict(whole.headers)) == (b"abcdef", {"k": "v"})
    plain = queue_pb2.Message(message_id="x", payload=b"p")
    assert j.add(plain) is plain
    from prism.reader.v1 import reader_pb2
    page = reader_pb2.Page()
    page.metadata.SetInParent()
    assert j.add(page) is page, "a Reader page's metadata is no header map"
    j.add(piece(0, 3, b"ab"))
    with pytest.raises(InvalidInputError):
        j.add(piece(2, 3, b"ef"))
    j.add(piece(0, 2, b"ab"))
    with pytest.raises(InvalidInputError):
        j.add(piece(1, 2, b"cd"))
