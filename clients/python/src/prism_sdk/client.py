"""The blocking client: a ``Client`` (one gRPC channel, TLS or mTLS) opens
``Session``s that keep themselves alive from a heartbeat thread, put their
token on every call, reopen when the gateway says the token is dead (if
allowed), and retry by one rule. One API object per service hangs off the
session: ``kv``, ``queue``, ``pubsub``, ``reader``, ``transact``."""

from __future__ import annotations

import queue as _queue
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import grpc

from prism.keyvalue.v1 import keyvalue_pb2_grpc
from prism.pubsub.v1 import pubsub_pb2_grpc
from prism.queue.v1 import queue_pb2, queue_pb2_grpc
from prism.reader.v1 import reader_pb2, reader_pb2_grpc
from prism.session.v1 import session_pb2, session_pb2_grpc
from prism.transact.v1 import transact_pb2, transact_pb2_grpc

from . import _calls as c
from .errors import PrismError, SessionClosedError
from .retry import Resend, RetryPolicy

__version__ = "0.1.0"

# Keepalive as the spec's client pattern: a dead connection is found
# within 40 s even with no call running. Reconnect backoff capped at 5 s
# (gRPC's default grows to 120 s), so calls waiting for a restarted gateway
# go through within seconds of its return.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]


@dataclass(frozen=True)
class Tls:
    """TLS settings (PEM bytes): the CA of the gateway's certificate (None:
    the system's roots) and, for mTLS, the client's certificate and key."""

    ca: Optional[bytes] = None
    cert: Optional[bytes] = None
    key: Optional[bytes] = None


def make_channel(target: str, tls: Optional[Tls], aio: bool) -> Any:
    # `http://host:port` as the Rust SDK takes it; gRPC's own schemes
    # (dns:///, unix:///) pass through.
    for scheme in ("http://", "https://"):
        if target.startswith(scheme):
            target = target[len(scheme):]
    mod = grpc.aio if aio else grpc
    if tls is None:
        return mod.insecure_channel(target, options=CHANNEL_OPTIONS)
    creds = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
    return mod.secure_channel(target, creds, options=CHANNEL_OPTIONS)


STUBS = {
    "session": session_pb2_grpc.SessionServiceStub,
    "kv": keyvalue_pb2_grpc.KeyValueServiceStub,
    "queue": queue_pb2_grpc.QueueServiceStub,
    "pubsub": pubsub_pb2_grpc.PubSubServiceStub,
    "reader": reader_pb2_grpc.ReaderServiceStub,
    "transact": transact_pb2_grpc.TransactServiceStub,
}


class Client:
    """A connection to a Prism gateway (or a load balancer in front of
    several). ``target``: ``host:port``. Use as a context manager, or call
    ``close``."""

    def __init__(self, target: str = "127.0.0.1:8980", *, tls: Optional[Tls] = None,
                 retry: RetryPolicy = RetryPolicy(), call_timeout: float = 30.0) -> None:
        self._channel = make_channel(target, tls, aio=False)
        self._stubs = {name: stub(self._channel) for name, stub in STUBS.items()}
        self._tls = tls
        self.retry = retry
        self.call_timeout = call_timeout
        # Closed with the client, so no heartbeat outlives its channel.
        self._sessions: "weakref.WeakSet[Session]" = weakref.WeakSet()

    def session(self, *, api_key: Optional[str] = None, jwt: Optional[str] = None,
                mtls: bool = False, config: Optional[str] = None, inline_config: Any = None,
                client_id: str = "", metadata: Optional[Mapping[str, str]] = None,
                reopen: bool = True) -> "Session":
        """Opens a session: one of ``api_key``, ``jwt`` or ``mtls`` (the
        client certificate of ``Tls``), and one of ``config`` (a name) or
        ``inline_config`` (a ``prism.config.v1.ClientConfig``). With
        ``reopen`` (the default) it opens itself again when the gateway
        says its token no longer works; that is a new gateway session, and
        subscriptions and transactions of the old one end."""
        cert = None
        if mtls:
            if self._tls is None or self._tls.cert is None:
                raise c.InvalidInputError("mtls needs a client built with Tls(cert=..., key=...)")
            cert = self._tls.cert
        request = c.create_request(
            api_key=api_key, jwt=jwt, client_cert=cert, config=config,
            inline_config=inline_config, client_id=client_id, metadata=metadata,
            version=__version__,
        )
        session = Session(self, request, reopen)
        self._sessions.add(session)
        return session

    def close(self) -> None:
        """Closes the client's open sessions, then its channel."""
        for session in list(self._sessions):
            try:
                session.close()
            except PrismError:
                pass
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Core:
    """What a session's calls and its heartbeat thread share (the thread
    holds this, never the Session, so dropping the Session stops it)."""

    def __init__(self, client: Client, request: session_pb2.CreateSessionRequest,
                 reopen: bool) -> None:
        self.client = client
        self.open_request = request
        self.reopen = reopen
        self.lock = threading.Lock()
        self.reopening = threading.Lock()
        self.closed = False
        self.token = ""
        self.id = ""
        self.generation = 0
        self.expires_at: Optional[float] = None
        self.config: Any = None
        self.features: List[str] = []

    def stub(self, service: str) -> Any:
        return self.client._stubs[service]

    def current(self) -> tuple:
        with self.lock:
            if self.closed:
                raise SessionClosedError()
            return self.token, self.generation

    def retrying(self, resend: Resend, attempt: Any) -> Any:
        """Runs ``attempt()`` under the retry policy (no session token)."""
        backoff = self.client.retry.start()
        while True:
            try:
                return attempt()
            except grpc.RpcError as err:
                e = PrismError.from_rpc_error(err)
                wait = backoff.next(e.retry_after)
                if wait is None or not resend.allows(e):
                    raise e from None
                time.sleep(wait)

    def create(self) -> session_pb2.CreateSessionResponse:
        return self.retrying(Resend.SAFE, lambda: self.stub("session").CreateSession(
            self.open_request, timeout=self.client.call_timeout, wait_for_ready=True))

    def install(self, opened: session_pb2.CreateSessionResponse, generation: int) -> float:
        ttl = c.ttl_of(opened)
        with self.lock:
            self.token, self.id, self.generation = opened.session_token, opened.session_id, generation
            self.expires_at = time.time() + ttl
            self.config, self.features = opened.config, list(opened.supported_features)
        return c.cadence(ttl)

    def reopen_after(self, seen: int) -> None:
        # Holding `reopening`: close() waits for this, then closes the new
        # session, never the old one while a new one goes unclosed.
        with self.reopening:
            if self.current()[1] != seen:
                return
            self.install(self.create(), seen + 1)

    def metadata(self, token: str) -> list:
        return [(c.TOKEN_HEADER, token)]

    def call(self, call: c.Call) -> Any:
        """One logical call: the current token on each attempt; a dead
        token reopens the session once (if allowed); transient errors are
        retried as the call's resend rule allows."""
        backoff = self.client.retry.start()
        reopened = False
        while True:
            token, generation = self.current()
            try:
                method = getattr(self.stub(call.service), call.method)
                response = method(c.sent(call.request), metadata=self.metadata(token),
                                  timeout=c.deadline(call, self.client.call_timeout),
                                  wait_for_ready=True)
                return call.parse(response)
            except grpc.RpcError as err:
                e = PrismError.from_rpc_error(err)
            if e.is_session_lost and self.reopen and not reopened:
                reopened = True
                self.reopen_after(generation)
                continue
            wait = backoff.next(e.retry_after)
            if wait is None or not call.resend.allows(e):
                raise e
            time.sleep(wait)

    def stream(self, service: str, method: str, position: Any) -> Iterator[Any]:
        """A server stream opened again where ``position`` says it got to
        after a transient failure; an error ends it."""
        backoff = self.client.retry.start()
        reopened = False
        while True:
            token, generation = self.current()
            stream = getattr(self.stub(service), method)(
                position.request(), metadata=self.metadata(token), wait_for_ready=True)
            joiner = c.Joiner()
            try:
                for piece in stream:
                    backoff = self.client.retry.start()
                    reopened = False
                    item = joiner.add(piece)
                    if item is None:
                        continue
                    position.seen(item)
                    yield item
                return
            except grpc.RpcError as err:
                e = PrismError.from_rpc_error(err)
            finally:
                # A caller that stops reading (or closes the iterator) ends
                # the call, so the gateway frees its subscription at once.
                stream.cancel()
            if position.finished:
                return
            if e.is_session_lost and self.reopen and not reopened and position.resumable:
                reopened = True
                self.reopen_after(generation)
                continue
            wait = backoff.next(e.retry_after)
            if wait is None or not e.is_transient or not position.resumable:
                raise e
            time.sleep(wait)

    def heartbeat(self) -> float:
        beat = self.call(c.Call("session", "Heartbeat", session_pb2.HeartbeatRequest(),
                                Resend.SAFE, lambda r: r))
        ttl = c.seconds(beat.ttl) if beat.HasField("ttl") else c.HEARTBEAT_MAX
        with self.lock:
            self.expires_at = time.time() + ttl
        return ttl


def _keep_alive(core: _Core, stop: threading.Event, first: float) -> None:
    """The heartbeat thread: ends when the session is closed or dropped, or
    when it is lost and may not reopen."""
    wait, failing = first, c.HEARTBEAT_RETRY
    while not stop.wait(wait):
        try:
            wait, failing = c.cadence(core.heartbeat()), c.HEARTBEAT_RETRY
        except SessionClosedError:
            return
        except ValueError:
            return  # the client's channel was closed under it
        except PrismError as e:
            if c.heartbeat_gives_up(e, core.reopen):
                return
            # Retries spent (the gateway down for long): keep trying, backing
            # off to a minute, so the session reopens when it is back.
            wait, failing = failing, min(failing * 2, c.HEARTBEAT_MAX)


class Session:
    """An open session. Use as a context manager, or call ``close``;
    dropped unclosed, its heartbeats stop and the gateway ends it at its
    idle timeout."""

    def __init__(self, client: Client, request: session_pb2.CreateSessionRequest,
                 reopen: bool) -> None:
        core = _Core(client, request, reopen)
        first = core.install(core.create(), 0)
        self._core = core
        self._stop = threading.Event()
        self._thread = threading.Thread(target=_keep_alive, args=(core, self._stop, first),
                                        name="prism-heartbeat", daemon=True)
        self._thread.start()
        weakref.finalize(self, self._stop.set)
        self.kv = KeyValue(self)
        self.queue = Queue(self)
        self.pubsub = PubSub(self)
        self.reader = Reader(self)
        self.transact = Transact(self)

    @property
    def id(self) -> str:
        """The gateway's id of the session (changes when it reopens)."""
        return self._core.id

    @property
    def token(self) -> str:
        """The current token, for calls made with the generated stubs."""
        return self._core.token

    @property
    def expires_at(self) -> Optional[float]:
        """When (epoch seconds) the gateway ends it unless it hears from it."""
        return self._core.expires_at

    @property
    def config(self) -> Any:
        """The ``ClientConfig`` the gateway resolved."""
        return self._core.config

    @property
    def reopened(self) -> int:
        """How many times the session has been reopened."""
        return self._core.generation

    def heartbeat(self) -> float:
        """Sends one heartbeat now; returns seconds left before expiry."""
        return self._core.heartbeat()

    def close(self) -> None:
        """Ends the session on the gateway at once (its open streams and
        transactions end with it) and stops its heartbeats."""
        core = self._core
        with core.reopening:
            with core.lock:
                if core.closed:
                    return
                core.closed = True
                token = core.token
        self._stop.set()
        try:
            closed = core.retrying(Resend.SAFE, lambda: core.stub("session").CloseSession(
                session_pb2.CloseSessionRequest(force=True), metadata=core.metadata(token),
                timeout=core.client.call_timeout, wait_for_ready=True))
            if not closed.success:
                raise PrismError(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"the gateway did not close the session: {closed.message}")
        except PrismError as e:
            if not e.is_session_lost:
                raise
        finally:
            if self._thread is not threading.current_thread():
                self._thread.join(timeout=core.client.call_timeout)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class KeyValue:
    """KeyValue over a session. Every write carries an idempotency token
    made once per logical write, so retries apply it once."""

    def __init__(self, session: "Session") -> None:
        # The Session, not only its core: an API object kept alone keeps
        # the session (and its heartbeats) alive.
        self._session = session
        self._core = session._core

    def get(self, key: str) -> Optional[c.Value]:
        """The value of ``key``, or None when it is not set."""
        return self._core.call(c.kv_get(key))

    def set(self, key: str, value: bytes, *, ttl: Optional[float] = None) -> int:
        """Sets ``key`` (to expire after ``ttl`` seconds if given); returns
        its new version."""
        return self._core.call(c.kv_set(key, value, ttl))

    def delete(self, key: str) -> bool:
        """Deletes ``key``; False when it did not exist."""
        return self._core.call(c.kv_delete(key))

    def exists(self, key: str) -> bool:
        return self._core.call(c.kv_exists(key))

    def count(self, prefix: str = "") -> int:
        """How many keys start with ``prefix``."""
        return self._core.call(c.kv_count(prefix))

    def expire(self, key: str, ttl: float) -> None:
        """Makes ``key`` expire ``ttl`` seconds from now."""
        self._core.call(c.kv_expire(key, ttl))

    def ttl(self, key: str) -> Optional[float]:
        """Seconds left before ``key`` expires; None when it does not."""
        return self._core.call(c.kv_ttl(key))

    def persist(self, key: str) -> bool:
        """Removes ``key``'s expiry; whether it had one."""
        return self._core.call(c.kv_persist(key))

    def batch_get(self, keys: Sequence[str]) -> List[Optional[c.Value]]:
        return self._core.call(c.kv_batch_get(keys))

    def batch_set(self, entries: Mapping[str, bytes]) -> List[int]:
        return self._core.call(c.kv_batch_set(entries))

    def batch_delete(self, keys: Sequence[str]) -> int:
        return self._core.call(c.kv_batch_delete(keys))

    def compare_and_swap(self, key: str, expected_version: int, value: bytes) -> int:
        """Sets ``key`` only at ``expected_version`` (0: only if absent);
        a mismatch raises ABORTED with reason PRECONDITION_FAILED."""
        return self._core.call(c.kv_compare_and_swap(key, expected_version, value))

    def transaction(self, tx: c.KvTransaction) -> List[tuple]:
        """Applies every operation of ``tx`` or none; ``(version, deleted)``
        per operation."""
        return self._core.call(tx.call())

    def scan(self, prefix: str = "") -> Iterator[tuple]:
        """``(key, Value)`` of every key starting with ``prefix``, in key
        order, following cursors page by page."""
        return self._scan(prefix, keys_only=False)

    def scan_keys(self, prefix: str = "") -> Iterator[str]:
        return self._scan(prefix, keys_only=True)

    def _scan(self, prefix: str, keys_only: bool) -> Iterator[Any]:
        position = c.ScanPosition(prefix, keys_only)
        while True:
            for item in self._core.stream("kv", position.method, position):
                yield position.item(item)
            if not position.page_was_full():
                return


class Queue:
    """Queue over a session. Publish is resent only when refused before
    anything happened (the wire cannot deduplicate it)."""

    def __init__(self, session: "Session") -> None:
        self._session = session
        self._core = session._core

    def publish(self, topic: str, payload: bytes, *, headers: Optional[Mapping[str, str]] = None,
                partition_key: Optional[str] = None) -> queue_pb2.PublishResponse:
        return self._core.call(c.queue_publish(topic, payload, headers, partition_key))

    def publish_batch(self, topic: str, payloads: Sequence[bytes]) -> queue_pb2.PublishBatchResponse:
        return self._core.call(c.queue_publish_batch(topic, payloads))

    def acknowledge(self, message_ids: Sequence[str]) -> List[str]:
        """Acknowledges messages; returns the ids that could not be."""
        return self._core.call(c.queue_acknowledge(message_ids))

    def commit(self, topic: str, group: str, offsets: Mapping[int, int]) -> bool:
        return self._core.call(c.queue_commit(topic, group, offsets))

    def subscribe(self, topic: str, *, group: str = "", start: Optional[str] = None,
                  offset: Optional[int] = None,
                  max_messages: Optional[int] = None) -> Iterator[queue_pb2.Message]:
        """Messages of ``topic``; ``start``: ``earliest``, ``latest`` or
        ``committed`` (default: a group where it committed, a private
        subscription at new messages). Resumes after transient failures."""
        position = c.QueuePosition(topic, group, _start(start), offset, max_messages)
        return self._core.stream("queue", "Subscribe", position)


def _start(start: Optional[str]) -> Optional[int]:
    if start is None:
        return None
    names = {"earliest": queue_pb2.START_POSITION_EARLIEST,
             "latest": queue_pb2.START_POSITION_LATEST,
             "committed": queue_pb2.START_POSITION_COMMITTED}
    if start not in names:
        raise c.InvalidInputError(f"start must be one of {sorted(names)}")
    return names[start]


class PubSub:
    """PubSub over a session (at-most-once: events published while a
    subscription resubscribes are not seen)."""

    def __init__(self, session: "Session") -> None:
        self._session = session
        self._core = session._core

    def publish(self, topic: str, payload: bytes, *, metadata: Optional[Mapping[str, str]] = None,
                correlation_id: Optional[str] = None, reply_to: Optional[str] = None) -> Any:
        """Publishes an event; the answer has ``event_id`` and
        ``subscriber_count``."""
        return self._core.call(c.pubsub_publish(topic, payload, metadata, correlation_id, reply_to))

    def subscribe(self, pattern: str, *, queue_group: Optional[str] = None,
                  max_messages: Optional[int] = None) -> Iterator[Any]:
        """Events on topics matching ``pattern`` (``users.*``, ``users.>``)."""
        position = c.PubSubPosition(pattern, queue_group, max_messages)
        return self._core.stream("pubsub", "Subscribe", position)


class Reader:
    """Reader over a session: pages and rows that follow cursors."""

    def __init__(self, session: "Session") -> None:
        self._session = session
        self._core = session._core

    def pages(self, collection: str, *, page_size: int = 0, fields: Sequence[str] = (),
              filter: Optional[reader_pb2.Filter] = None,
              sort: Sequence[str] = ()) -> Iterator[reader_pb2.Page]:
        """The pages of a read, to the last; ``sort``: field names,
        ``-name`` for descending; ``filter``: from ``where``/``all_of``."""
        request = c.read_request(collection, page_size, fields, filter, sort)
        return self._core.stream("reader", "Read", c.ReadPosition(request))

    def rows(self, collection: str, **options: Any) -> Iterator[Dict[str, Any]]:
        """Every row of a read as a dict, page after page."""
        for page in self.pages(collection, **options):
            for row in page.rows:
                yield c.row_dict(row)

    def count(self, collection: str, filter: Optional[reader_pb2.Filter] = None) -> int:
        return self._core.call(c.reader_count(collection, filter))

    def get(self, collection: str, id: str) -> Optional[Dict[str, Any]]:
        return self._core.call(c.reader_get(collection, id))


class Transact:
    """Transact over a session: a row change and its outbox message
    committed together."""

    def __init__(self, session: "Session") -> None:
        self._session = session
        self._core = session._core

    def write(self, change: transact_pb2.WriteRequest) -> transact_pb2.WriteResponse:
        """Commits one change (from ``change(...)``) as a transaction,
        retried safely with an idempotency key made once per write."""
        return self._core.call(c.transact_write(change))

    def begin(self) -> "Transaction":
        """Opens a transaction for several changes; use as a context
        manager (commits on success, rolls back on an exception)."""
        return Transaction(self._core)

    def read_mailbox(self, mailbox: str, *, since_sequence: Optional[int] = None,
                     unprocessed_only: bool = False) -> Iterator[transact_pb2.MailboxMessage]:
        return self._core.stream("transact", "ReadMailbox",
                                 c.MailboxPosition(mailbox, since_sequence, unprocessed_only))

    def process_mailbox(self, message_ids: Sequence[str]) -> List[str]:
        return self._core.call(c.transact_process(message_ids))


_END = object()


class Transaction:
    """A transaction on the bidirectional stream. Opening it is retried
    (and reopens a lost session); the changes in it are not (the gateway
    cannot deduplicate them), so a failed transaction is the caller's to
    run again — except a commit whose answer was lost, which may have
    committed (``PrismError`` with ``reason`` ``OUTCOME_UNKNOWN``).
    Closed or dropped unfinished, it rolls back."""

    def __init__(self, core: _Core) -> None:
        self._done = True
        self._outbox: "_queue.Queue[Any]" = _queue.Queue()
        self._responses: Any = None
        backoff = core.client.retry.start()
        reopened = False
        while True:
            token, generation = core.current()
            self._outbox = _queue.Queue()
            self._done = False
            self._outbox.put(transact_pb2.TransactRequest(begin=transact_pb2.BeginTransaction()))
            self._responses = core.stub("transact").Transaction(
                iter(self._outbox.get, _END), metadata=core.metadata(token))
            try:
                self.id = self._next("started").transaction_id
                return
            except PrismError as e:
                self.close()
                if e.is_session_lost and core.reopen and not reopened:
                    reopened = True
                    core.reopen_after(generation)
                    continue
                wait = backoff.next(e.retry_after)
                if wait is None or not e.is_transient:
                    raise
                time.sleep(wait)

    def _next(self, expected: str, after_commit: bool = False) -> Any:
        try:
            response = next(self._responses)
        except StopIteration:
            self._finish()
            raise c.stream_lost(grpc.StatusCode.ABORTED, "the gateway ended the transaction stream",
                                after_commit) from None
        except grpc.RpcError as err:
            self._finish()
            e = PrismError.from_rpc_error(err)
            raise (c.stream_lost(e.code, e.message, True) if after_commit else e) from None
        kind = response.WhichOneof("response")
        if kind == expected:
            return getattr(response, kind)
        self._finish()
        if kind == "error":
            raise c.in_band_error(response.error)
        if kind == "rolled_back":
            raise PrismError(grpc.StatusCode.ABORTED,
                             f"the gateway rolled the transaction back: {response.rolled_back.reason}")
        raise PrismError(grpc.StatusCode.INTERNAL, f"expected {expected}, got {kind}")

    def _send(self, request: transact_pb2.TransactRequest) -> None:
        if self._done:
            raise PrismError(grpc.StatusCode.ABORTED, "the transaction has ended; open a new one")
        self._outbox.put(request)

    def write(self, change: transact_pb2.WriteRequest) -> transact_pb2.WriteResponse:
        """Applies a change inside the transaction; an error rolls it all back."""
        self._send(transact_pb2.TransactRequest(write=change))
        return self._next("write_result")

    def commit(self) -> int:
        """Commits; returns how many changes there were."""
        self._send(transact_pb2.TransactRequest(commit=transact_pb2.CommitTransaction()))
        try:
            return self._next("committed", after_commit=True).write_count
        finally:
            self._finish()

    def rollback(self, reason: str = "") -> None:
        self._send(transact_pb2.TransactRequest(
            rollback=transact_pb2.RollbackTransaction(reason=reason)))
        try:
            self._next("rolled_back")
        finally:
            self._finish()

    def _finish(self) -> None:
        """Ends the request stream (and so gRPC's thread feeding it)."""
        if not self._done:
            self._done = True
            self._outbox.put(_END)

    def close(self) -> None:
        """Ends the stream; an open transaction rolls back."""
        self._finish()
        if self._responses is not None:
            self._responses.cancel()

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.close()
