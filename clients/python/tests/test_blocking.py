"""The blocking client against a gateway on its embedded default config."""

from __future__ import annotations

import random
import threading

import grpc
import pytest

from prism.session.v1 import session_pb2, session_pb2_grpc
from prism_sdk import (Client, InvalidInputError, KvTransaction, PrismError, RetryPolicy,
                       SessionClosedError, change, where)

from conftest import DEV_KEY, until_subscribed


def test_key_value_through_a_session(endpoint):
    with Client(endpoint) as client:
        session = client.session(api_key=DEV_KEY, config="user-profiles", client_id="pytest")
        assert session.id.startswith("sess-")
        assert session.config.name == "user-profiles"
        kv = session.kv
        prefix = f"py/{random.getrandbits(32):08x}/"

        v1 = kv.set(prefix + "a", b"ada")
        got = kv.get(prefix + "a")
        assert (got.value, got.version, got.ttl) == (b"ada", v1, None)
        assert kv.get(prefix + "none") is None
        assert kv.exists(prefix + "a")
        kv.expire(prefix + "a", 60)
        assert 50 < kv.ttl(prefix + "a") <= 60
        assert kv.persist(prefix + "a") and kv.ttl(prefix + "a") is None

        v2 = kv.compare_and_swap(prefix + "a", v1, b"grace")
        with pytest.raises(PrismError) as stale:
            kv.compare_and_swap(prefix + "a", v1, b"again")
        assert stale.value.code == grpc.StatusCode.ABORTED
        assert stale.value.reason == "PRECONDITION_FAILED"

        results = kv.transaction(KvTransaction()
                                 .put(prefix + "b", b"two", if_exists=False)
                                 .delete(prefix + "a", if_version=v2))
        assert results[0][0] > 0 and results[1][1]

        keys = [f"{prefix}scan/{i:05}" for i in range(2345)]
        for start in range(0, len(keys), 500):
            kv.batch_set({k: k.encode() for k in keys[start:start + 500]})
        assert kv.count(prefix + "scan/") == 2345
        scanned = list(kv.scan(prefix + "scan/"))
        assert [k for k, _ in scanned] == keys and all(v.value == k.encode() for k, v in scanned)
        assert list(kv.scan_keys(prefix + "scan/")) == keys
        assert sum(kv.batch_delete(keys[i:i + 1000]) for i in range(0, len(keys), 1000)) == 2345

        batch = kv.batch_get([prefix + "b", prefix + "a"])
        assert batch[0].value == b"two" and batch[1] is None
        assert kv.delete(prefix + "b") and not kv.delete(prefix + "b")

        session.close()
        with pytest.raises(SessionClosedError):
            kv.get(prefix + "b")


def test_errors_carry_the_gateways_reason(endpoint):
    with Client(endpoint) as client:
        with pytest.raises(PrismError) as wrong:
            client.session(api_key="not-a-key", config="user-profiles")
        assert wrong.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert (wrong.value.reason, wrong.value.domain) == ("INVALID_API_KEY", "prism.session.v1")
        with pytest.raises(InvalidInputError):
            client.session(config="user-profiles")
        with client.session(api_key=DEV_KEY, config="user-profiles") as session:
            with pytest.raises(InvalidInputError):
                session.kv.set("k", b"v", ttl=-1)
            with pytest.raises(PrismError) as empty:
                session.kv.get("")
            assert empty.value.code == grpc.StatusCode.INVALID_ARGUMENT and empty.value.reason


def test_queue_and_pubsub(endpoint):
    with Client(endpoint) as client, \
            client.session(api_key=DEV_KEY, config="orders-queue") as jobs, \
            client.session(api_key=DEV_KEY, config="events") as events:
        topic = f"jobs.py.{random.getrandbits(32):08x}"
        for i in range(3):
            assert jobs.queue.publish(topic, f"job {i}".encode()).offset == i
        assert jobs.queue.publish_batch(topic, [b"job 3", b"job 4"]).success_count == 2
        messages = list(jobs.queue.subscribe(topic, group="py", start="earliest", max_messages=5))
        assert [m.payload for m in messages] == [f"job {i}".encode() for i in range(5)]
        assert jobs.queue.acknowledge([m.message_id for m in messages]) == []
        # Over 1 MiB, publish sends the payload in pieces (PublishStream); a
        # namespace without a claim check takes up to limits.max_value_bytes.
        big = random.randbytes(3 * 1024 * 1024 + 5)
        jobs.queue.publish(f"{topic}.big", big)
        [whole] = list(jobs.queue.subscribe(f"{topic}.big", group="py", start="earliest",
                                            max_messages=1))
        assert whole.payload == big

        pattern = f"py{random.getrandbits(32):08x}"
        got: list = []
        subscription = events.pubsub.subscribe(f"{pattern}.>")

        def consume() -> None:
            for event in subscription:
                if event.payload != b"probe":
                    got.append((event.topic, event.payload, dict(event.metadata)))
                    if len(got) == 3:
                        return

        consumer = threading.Thread(target=consume)
        consumer.start()
        until_subscribed(events.pubsub, f"{pattern}.probe")
        for i in range(3):
            events.pubsub.publish(f"{pattern}.user.{i}", f"user {i}".encode(), metadata={"n": str(i)})
        consumer.join(timeout=30)
        subscription.close()
        assert got == [(f"{pattern}.user.{i}", f"user {i}".encode(), {"n": str(i)}) for i in range(3)]


def test_transact_relay_and_reader(endpoint):
    with Client(endpoint) as client, \
            client.session(api_key=DEV_KEY, config="orders-db") as orders, \
            client.session(api_key=DEV_KEY, config="events") as events:
        first = random.randrange(1_000_000, 2_000_000_000)
        relayed: list = []
        subscription = events.pubsub.subscribe("events.orders")

        def consume() -> None:
            for event in subscription:
                if event.payload == f"order {first} placed".encode():
                    relayed.append(event)
                    return

        consumer = threading.Thread(target=consume)
        consumer.start()
        until_subscribed(events.pubsub, "events.orders")
        written = orders.transact.write(change(
            "orders", {"id": first, "customer": "py", "status": "paid", "amount": 1.5,
                       "created_at": "2026-12-01T00:00:00Z"},
            mailbox="order-events", message=f"order {first} placed".encode(),
            message_type="order.placed"))
        assert written.committed
        sequence = written.mailbox_result.sequence
        [mine] = list(orders.transact.read_mailbox("order-events", since_sequence=sequence - 1))[:1]
        assert (mine.sequence, mine.message) == (sequence, f"order {first} placed".encode())
        consumer.join(timeout=30)
        subscription.close()
        assert relayed and relayed[0].metadata["prism-mailbox-id"] == "order-events"

        with orders.transact.begin() as tx:
            for n in (1, 2):
                tx.write(change("orders", {"id": first + n, "customer": "py", "status": "paid",
                                           "amount": 2.0, "created_at": "2026-12-01T00:00:00Z"}))
        rolled = orders.transact.begin()
        rolled.write(change("orders", {"id": first + 3, "customer": "py", "status": "x",
                                       "amount": 0.0, "created_at": "2026-12-01T00:00:00Z"}))
        rolled.rollback("changed my mind")
        with pytest.raises(PrismError) as duplicate:
            orders.transact.write(change("orders", {"id": first, "customer": "again", "status": "x",
                                                    "amount": 0.0, "created_at": "2026-12-01T00:00:00Z"}))
        assert duplicate.value.code == grpc.StatusCode.ALREADY_EXISTS

        mine = where("customer", "=", "py")
        rows = list(orders.reader.rows("orders", filter=mine, page_size=2, sort=["id"]))
        assert [r["id"] for r in rows] == [first, first + 1, first + 2]
        pages = list(orders.reader.pages("orders", filter=mine, page_size=2))
        assert len(pages) == 2 and not pages[-1].has_more
        assert orders.reader.count("orders", mine) == 3
        assert orders.reader.get("orders", str(first + 1))["customer"] == "py"
        assert orders.reader.get("orders", str(first + 3)) is None


def test_a_lost_session_reopens_only_when_allowed(endpoint):
    with Client(endpoint) as client:
        raw = session_pb2_grpc.SessionServiceStub(grpc.insecure_channel(endpoint))

        def close_behind(token: str) -> None:
            raw.CloseSession(session_pb2.CloseSessionRequest(session_token=token, force=True))

        keeps = client.session(api_key=DEV_KEY, config="user-profiles")
        first = keeps.id
        close_behind(keeps.token)
        keeps.kv.set("py/reopen", b"1")
        assert keeps.reopened == 1 and keeps.id != first

        strict = client.session(api_key=DEV_KEY, config="user-profiles", reopen=False)
        close_behind(strict.token)
        with pytest.raises(PrismError) as lost:
            strict.kv.get("py/reopen")
        assert (lost.value.code, lost.value.reason) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_CLOSED")
        keeps.close()


def test_a_session_survives_a_gateway_restart(own_gateway):
    client = Client(own_gateway.endpoint, retry=RetryPolicy(max_attempts=20))
    session = client.session(api_key=DEV_KEY, config="user-profiles")
    session.kv.set("before", b"1")
    jobs = client.session(api_key=DEV_KEY, config="orders-queue")
    own_gateway.stop()

    results: dict = {}

    def write() -> None:
        results["set"] = session.kv.set("after", b"2")
        results["publish"] = jobs.queue.publish("jobs.restart", b"once")

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(timeout=0.3)
    assert writer.is_alive(), "the calls wait for the gateway"
    own_gateway.start()
    writer.join(timeout=60)
    assert "publish" in results, results
    assert session.reopened == 1 and jobs.reopened == 1
    assert session.kv.get("after").value == b"2"
    assert results["publish"].offset == 0, "the publish went out once, to the new gateway"
    session.close()
    jobs.close()
    client.close()


def test_expiry_is_read_as_utc_whatever_the_local_zone(endpoint, monkeypatch):
    import time
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        with Client(endpoint) as client, \
                client.session(api_key=DEV_KEY, config="user-profiles") as session:
            # The embedded default's idle timeout: 15 minutes.
            assert abs(session.expires_at - (time.time() + 900)) < 60, session.expires_at - time.time()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_refused_begin_and_a_repeated_ack_are_reported(endpoint):
    with Client(endpoint, retry=RetryPolicy.none()) as client:
        with client.session(api_key=DEV_KEY, config="orders-db") as orders:
            # The embedded default allows 8 open transactions per session.
            open_ones = [orders.transact.begin() for _ in range(8)]
            with pytest.raises(PrismError) as refused:
                orders.transact.begin()
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
            for tx in open_ones:
                tx.rollback()
        with client.session(api_key=DEV_KEY, config="orders-queue") as jobs:
            topic = f"jobs.ack.{random.getrandbits(32):08x}"
            jobs.queue.publish(topic, b"once")
            [message] = list(jobs.queue.subscribe(topic, group="g", start="earliest", max_messages=1))
            assert jobs.queue.acknowledge([message.message_id]) == []
            assert jobs.queue.acknowledge([message.message_id]) == [message.message_id]
