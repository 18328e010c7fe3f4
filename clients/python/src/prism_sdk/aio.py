"""The asyncio client: the same concepts and rules as the blocking one
(``prism_sdk.client``), awaited. Heartbeats run as a task owned by the
session; streams are async iterators."""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any, AsyncIterator, Dict, List, Mapping, Optional, Sequence

import grpc

from prism.queue.v1 import queue_pb2
from prism.reader.v1 import reader_pb2
from prism.session.v1 import session_pb2
from prism.transact.v1 import transact_pb2

from . import _calls as c
from .client import STUBS, Tls, __version__, _start, make_channel
from .errors import PrismError, SessionClosedError
from .retry import Resend, RetryPolicy


class Client:
    """A connection to a Prism gateway; ``async with`` it, or ``await
    close()``."""

    def __init__(self, target: str = "127.0.0.1:8980", *, tls: Optional[Tls] = None,
                 retry: RetryPolicy = RetryPolicy(), call_timeout: float = 30.0) -> None:
        self._channel = make_channel(target, tls, aio=True)
        self._stubs = {name: stub(self._channel) for name, stub in STUBS.items()}
        self._tls = tls
        self.retry = retry
        self.call_timeout = call_timeout
        # Closed with the client, so no heartbeat outlives its channel.
        self._sessions: "weakref.WeakSet[Session]" = weakref.WeakSet()

    async def session(self, *, api_key: Optional[str] = None, jwt: Optional[str] = None,
                      mtls: bool = False, config: Optional[str] = None,
                      inline_config: Any = None, client_id: str = "",
                      metadata: Optional[Mapping[str, str]] = None,
                      reopen: bool = True) -> "Session":
        """Opens a session; arguments as ``prism_sdk.Client.session``."""
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
        core = _Core(self, request, reopen)
        first = core.install(await core.create(), 0)
        session = Session(core, first)
        self._sessions.add(session)
        return session

    async def close(self) -> None:
        """Closes the client's open sessions, then its channel."""
        for session in list(self._sessions):
            try:
                await session.close()
            except PrismError:
                pass
        await self._channel.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class _Core:
    """What a session's calls and its heartbeat task share."""

    def __init__(self, client: Client, request: session_pb2.CreateSessionRequest,
                 reopen: bool) -> None:
        self.client = client
        self.open_request = request
        self.reopen = reopen
        self.reopening = asyncio.Lock()
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
        if self.closed:
            raise SessionClosedError()
        return self.token, self.generation

    def metadata(self, token: str) -> list:
        return [(c.TOKEN_HEADER, token)]

    async def retrying(self, resend: Resend, attempt: Any) -> Any:
        backoff = self.client.retry.start()
        while True:
            try:
                return await attempt()
            except grpc.RpcError as err:
                e = PrismError.from_rpc_error(err)
                wait = backoff.next(e.retry_after)
                if wait is None or not resend.allows(e):
                    raise e from None
                await asyncio.sleep(wait)

    async def create(self) -> session_pb2.CreateSessionResponse:
        return await self.retrying(Resend.SAFE, lambda: self.stub("session").CreateSession(
            self.open_request, timeout=self.client.call_timeout, wait_for_ready=True))

    def install(self, opened: session_pb2.CreateSessionResponse, generation: int) -> float:
        ttl = c.ttl_of(opened)
        self.token, self.id, self.generation = opened.session_token, opened.session_id, generation
        self.expires_at = time.time() + ttl
        self.config = opened.config
        self.features = list(opened.supported_features)
        return c.cadence(ttl)

    async def reopen_after(self, seen: int) -> None:
        # Holding `reopening`: close() waits for this, then closes the new
        # session.
        async with self.reopening:
            if self.current()[1] != seen:
                return
            self.install(await self.create(), seen + 1)

    async def call(self, call: c.Call) -> Any:
        """As the blocking client's: one logical call under the rules."""
        backoff = self.client.retry.start()
        reopened = False
        while True:
            token, generation = self.current()
            try:
                method = getattr(self.stub(call.service), call.method)
                response = await method(c.sent(call.request), metadata=self.metadata(token),
                                        timeout=c.deadline(call, self.client.call_timeout),
                                        wait_for_ready=True)
                return call.parse(response)
            except grpc.RpcError as err:
                e = PrismError.from_rpc_error(err)
            if e.is_session_lost and self.reopen and not reopened:
                reopened = True
                await self.reopen_after(generation)
                continue
            wait = backoff.next(e.retry_after)
            if wait is None or not call.resend.allows(e):
                raise e
            await asyncio.sleep(wait)

    async def stream(self, service: str, method: str, position: Any) -> AsyncIterator[Any]:
        """A server stream resumed where ``position`` got to after a
        transient failure."""
        backoff = self.client.retry.start()
        reopened = False
        while True:
            token, generation = self.current()
            stream = getattr(self.stub(service), method)(
                position.request(), metadata=self.metadata(token), wait_for_ready=True)
            joiner = c.Joiner()
            try:
                async for piece in stream:
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
                stream.cancel()
            if position.finished:
                return
            if e.is_session_lost and self.reopen and not reopened and position.resumable:
                reopened = True
                await self.reopen_after(generation)
                continue
            wait = backoff.next(e.retry_after)
            if wait is None or not e.is_transient or not position.resumable:
                raise e
            await asyncio.sleep(wait)

    async def heartbeat(self) -> float:
        beat = await self.call(c.Call("session", "Heartbeat", session_pb2.HeartbeatRequest(),
                                      Resend.SAFE, lambda r: r))
        ttl = c.seconds(beat.ttl) if beat.HasField("ttl") else c.HEARTBEAT_MAX
        self.expires_at = time.time() + ttl
        return ttl


async def _keep_alive(core: _Core, first: float) -> None:
    wait, failing = first, c.HEARTBEAT_RETRY
    while True:
        await asyncio.sleep(wait)
        try:
            wait, failing = c.cadence(await core.heartbeat()), c.HEARTBEAT_RETRY
        except (SessionClosedError, grpc.aio.UsageError):
            return  # closed, or the client's channel closed under it
        except PrismError as e:
            if c.heartbeat_gives_up(e, core.reopen):
                return
            wait, failing = failing, min(failing * 2, c.HEARTBEAT_MAX)


class Session:
    """An open session; ``async with`` it, or ``await close()``."""

    def __init__(self, core: _Core, first: float) -> None:
        self._core = core
        self._task = asyncio.get_running_loop().create_task(_keep_alive(core, first))
        weakref.finalize(self, self._task.cancel)
        self.kv = KeyValue(self)
        self.queue = Queue(self)
        self.pubsub = PubSub(self)
        self.reader = Reader(self)
        self.transact = Transact(self)

    @property
    def id(self) -> str:
        return self._core.id

    @property
    def token(self) -> str:
        return self._core.token

    @property
    def expires_at(self) -> Optional[float]:
        return self._core.expires_at

    @property
    def config(self) -> Any:
        return self._core.config

    @property
    def reopened(self) -> int:
        return self._core.generation

    async def heartbeat(self) -> float:
        return await self._core.heartbeat()

    async def close(self) -> None:
        """Ends the session on the gateway at once and stops heartbeats."""
        core = self._core
        async with core.reopening:
            if core.closed:
                return
            core.closed = True
        self._task.cancel()
        try:
            closed = await core.retrying(Resend.SAFE, lambda: core.stub("session").CloseSession(
                session_pb2.CloseSessionRequest(force=True), metadata=core.metadata(core.token),
                timeout=core.client.call_timeout, wait_for_ready=True))
            if not closed.success:
                raise PrismError(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"the gateway did not close the session: {closed.message}")
        except PrismError as e:
            if not e.is_session_lost:
                raise

    async def __aenter__(self) -> "Session":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class KeyValue:
    """As ``prism_sdk.client.KeyValue``, awaited."""

    def __init__(self, session: "Session") -> None:
        self._session = session
        self._core = session._core

    async def get(self, key: str) -> Optional[c.Value]:
        return await self._core.call(c.kv_get(key))

    async def set(self, key: str, value: bytes, *, ttl: Optional[float] = None) -> int:
        return await self._core.call(c.kv_set(key, value, ttl))

    async def delete(self, key: str) -> bool:
        return await self._core.call(c.kv_delete(key))

    async def exists(self, key: str) -> bool:
        return await self._core.call(c.kv_exists(key))

    async def count(self, prefix: str = "") -> int:
        return await self._core.call(c.kv_count(prefix))

    async def expire(self, key: str, ttl: float) -> None:
        await self._core.call(c.kv_expire(key, ttl))

    async def ttl(self, key: str) -> Optional[float]:
        return await self._core.call(c.kv_ttl(key))

    async def persist(self, key: str) -> bool:
        return await self._core.call(c.kv_persist(key))

    async def batch_get(self, keys: Sequence[str]) -> List[Optional[c.Value]]:
        return await self._core.call(c.kv_batch_get(keys))

    async def batch_set(self, entries: Mapping[str, bytes]) -> List[int]:
        return await self._core.call(c.kv_batch_set(entries))

    async def batch_delete(self, keys: Sequence[str]) -> int:
        return await self._core.call(c.kv_batch_delete(keys))

    async def compare_and_swap(self, key: str, expected_version: int, value: bytes) -> int:
        return await self._core.call(c.kv_compare_and_swap(key, expected_version, value))

    async def transaction(self, tx: c.KvTransaction) -> List[tuple]:
        return await self._core.call(tx.call())

    async def scan(self, prefix: str = "") -> AsyncIterator[tuple]:
        async for item in self._scan(prefix, keys_only=False):
            yield item

    async def scan_keys(self, prefix: str = "") -> AsyncIterator[str]:
        async for item in self._scan(prefix, keys_only=True):
            yield item

    async def _scan(self, prefix: str, keys_only: bool) -> AsyncIterator[Any]:
        position = c.ScanPosition(prefix, keys_only)
        while True:
            async for item in self._core.stream("kv", position.method, position):
                yield position.item(item)
            if not position.page_was_full():
                return


class Queue:
    """As ``prism_sdk.client.Queue``, awaited."""

    def __init__(self, session: "Session") -> None:
        self._session = session
        self._core = session._core

    async def publish(self, topic: str, payload: bytes, *,
                      headers: Optional[Mapping[str, str]] = None,
                      partition_key: Optional[str] = None) -> queue_pb2.PublishResponse:
        return await self._core.call(c.queue_publish(topic, payload, headers, partition_key))

    async def publish_batch(self, topic: str, payloads: Sequence[bytes]) -> Any:
        return await self._core.call(c.queue_publish_batch(topic, payloads))

    async def acknowledge(self, message_ids: Sequence[str]) -> List[str]:
        return await self._core.call(c.queue_acknowledge(message_ids))

    async def commit(self, topic: str, group: str, offsets: Mapping[int, int]) -> bool:
        return await self._core.call(c.queue_commit(topic, group, offsets))

    def subscribe(self, topic: str, *, group: str = "", start: Optional[str] = None,
                  offset: Optional[int] = None,
                  max_messages: Optional[int] = None) -> AsyncIterator[queue_pb2.Message]:
        position = c.QueuePosition(topic, group, _start(start), offset, max_messages)
        return self._core.stream("queue", "Subscribe", position)


class PubSub:
    """As ``prism_sdk.client.PubSub``, awaited."""

    def __init__(self, session: "Session") -> None:
        self._session = session
        self._core = session._core

    async def publish(self, topic: str, payload: bytes, *,
                      metadata: Optional[Mapping[str, str]] = None,
                      correlation_id: Optional[str] = None,
                      reply_to: Optional[str] = None) -> Any:
        return await self._core.call(
            c.pubsub_publish(topic, payload, metadata, correlation_id, reply_to))

    def subscribe(self, pattern: str, *, queue_group: Optional[str] = None,
                  max_messages: Optional[int] = None) -> AsyncIterator[Any]:
        position = c.PubSubPosition(pattern, queue_group, max_messages)
        return self._core.stream("pubsub", "Subscribe", position)


class Reader:
    """As ``prism_sdk.client.Reader``, awaited."""

    def __init__(self, session: "Session") -> None:
        self._session = session
        self._core = session._core

    def pages(self, collection: str, *, page_size: int = 0, fields: Sequence[str] = (),
              filter: Optional[reader_pb2.Filter] = None,
              sort: Sequence[str] = ()) -> AsyncIterator[reader_pb2.Page]:
        request = c.read_request(collection, page_size, fields, filter, sort)
        return self._core.stream("reader", "Read", c.ReadPosition(request))

    async def rows(self, collection: str, **options: Any) -> AsyncIterator[Dict[str, Any]]:
        async for page in self.pages(collection, **options):
            for row in page.rows:
                yield c.row_dict(row)

    async def count(self, collection: str, filter: Optional[reader_pb2.Filter] = None) -> int:
        return await self._core.call(c.reader_count(collection, filter))

    async def get(self, collection: str, id: str) -> Optional[Dict[str, Any]]:
        return await self._core.call(c.reader_get(collection, id))


class Transact:
    """As ``prism_sdk.client.Transact``, awaited."""

    def __init__(self, session: "Session") -> None:
        self._session = session
        self._core = session._core

    async def write(self, change: transact_pb2.WriteRequest) -> transact_pb2.WriteResponse:
        return await self._core.call(c.transact_write(change))

    async def begin(self) -> "Transaction":
        tx = Transaction(self._core)
        await tx._start()
        return tx

    def read_mailbox(self, mailbox: str, *, since_sequence: Optional[int] = None,
                     unprocessed_only: bool = False) -> AsyncIterator[transact_pb2.MailboxMessage]:
        return self._core.stream("transact", "ReadMailbox",
                                 c.MailboxPosition(mailbox, since_sequence, unprocessed_only))

    async def process_mailbox(self, message_ids: Sequence[str]) -> List[str]:
        return await self._core.call(c.transact_process(message_ids))


class Transaction:
    """As ``prism_sdk.client.Transaction``, awaited; ``async with`` commits
    on success and rolls back on an exception."""

    def __init__(self, core: _Core) -> None:
        self._core = core
        self._call: Any = None
        self._done = True
        self.id = ""

    async def _start(self) -> None:
        core = self._core
        backoff = core.client.retry.start()
        reopened = False
        while True:
            token, generation = core.current()
            self._call = core.stub("transact").Transaction(metadata=core.metadata(token))
            self._done = False
            try:
                started = await self._exchange(
                    transact_pb2.TransactRequest(begin=transact_pb2.BeginTransaction()), "started")
                self.id = started.transaction_id
                return
            except PrismError as e:
                await self.close()
                if e.is_session_lost and core.reopen and not reopened:
                    reopened = True
                    await core.reopen_after(generation)
                    continue
                wait = backoff.next(e.retry_after)
                if wait is None or not e.is_transient:
                    raise
                await asyncio.sleep(wait)

    async def _exchange(self, request: transact_pb2.TransactRequest, expected: str,
                        after_commit: bool = False) -> Any:
        if self._done:
            raise PrismError(grpc.StatusCode.ABORTED, "the transaction has ended; open a new one")
        try:
            await self._call.write(request)
            response = await self._call.read()
        except grpc.RpcError as err:
            self._done = True
            e = PrismError.from_rpc_error(err)
            raise (c.stream_lost(e.code, e.message, True) if after_commit else e) from None
        if response is grpc.aio.EOF:
            self._done = True
            raise c.stream_lost(grpc.StatusCode.ABORTED, "the gateway ended the transaction stream",
                                after_commit)
        kind = response.WhichOneof("response")
        if kind == expected:
            return getattr(response, kind)
        await self._finish()
        if kind == "error":
            raise c.in_band_error(response.error)
        if kind == "rolled_back":
            raise PrismError(grpc.StatusCode.ABORTED,
                             f"the gateway rolled the transaction back: {response.rolled_back.reason}")
        raise PrismError(grpc.StatusCode.INTERNAL, f"expected {expected}, got {kind}")

    async def write(self, change: transact_pb2.WriteRequest) -> transact_pb2.WriteResponse:
        return await self._exchange(transact_pb2.TransactRequest(write=change), "write_result")

    async def commit(self) -> int:
        try:
            done = await self._exchange(
                transact_pb2.TransactRequest(commit=transact_pb2.CommitTransaction()), "committed",
                after_commit=True)
            return done.write_count
        finally:
            await self._finish()

    async def rollback(self, reason: str = "") -> None:
        try:
            await self._exchange(transact_pb2.TransactRequest(
                rollback=transact_pb2.RollbackTransaction(reason=reason)), "rolled_back")
        finally:
            await self._finish()

    async def _finish(self) -> None:
        if not self._done:
            self._done = True
            try:
                await self._call.done_writing()
            except (grpc.RpcError, grpc.aio.UsageError):
                pass

    async def close(self) -> None:
        """Ends the stream; an open transaction rolls back."""
        self._done = True
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> "Transaction":
        return self

    async def __aexit__(self, exc_type: Any, *exc: Any) -> None:
        if self._done:
            return
        if exc_type is None:
            await self.commit()
        else:
            await self.close()
