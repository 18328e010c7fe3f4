"""The asyncio client against a gateway on its embedded default config."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from prism_sdk import PrismError, change, where
from prism_sdk.aio import Client

from conftest import DEV_KEY


def test_asyncio_apis(endpoint):
    async def main() -> None:
        async with Client(endpoint) as client:
            async with await client.session(api_key=DEV_KEY, config="user-profiles") as session:
                prefix = f"pyaio/{random.getrandbits(32):08x}/"
                version = await session.kv.set(prefix + "a", b"ada", ttl=60)
                got = await session.kv.get(prefix + "a")
                assert got.value == b"ada" and got.version == version and 0 < got.ttl <= 60
                await session.kv.batch_set({f"{prefix}k{i}": b"v" for i in range(5)})
                keys = [k async for k in session.kv.scan_keys(prefix + "k")]
                assert keys == [f"{prefix}k{i}" for i in range(5)]
                with pytest.raises(PrismError) as stale:
                    await session.kv.compare_and_swap(prefix + "a", version + 1, b"x")
                assert stale.value.code == grpc.StatusCode.ABORTED

            async with await client.session(api_key=DEV_KEY, config="events") as events:
                pattern = f"pyaio{random.getrandbits(32):08x}"

                subscription = events.pubsub.subscribe(f"{pattern}.*")

                async def first_event():
                    async for event in subscription:
                        if event.payload != b"probe":
                            return event

                waiting = asyncio.ensure_future(first_event())
                for _ in range(500):
                    probe = await events.pubsub.publish(f"{pattern}.probe", b"probe")
                    if probe.subscriber_count:
                        break
                    await asyncio.sleep(0.01)
                # Over 1 MiB, publish sends the payload in pieces (PublishStream).
                hello = random.randbytes(2 * 1024 * 1024)
                await events.pubsub.publish(f"{pattern}.hello", hello)
                event = await asyncio.wait_for(waiting, 30)
                await subscription.aclose()
                assert (event.topic, event.payload) == (f"{pattern}.hello", hello)

            async with await client.session(api_key=DEV_KEY, config="orders-db") as orders:
                first = random.randrange(1_000_000, 2_000_000_000)
                row = {"customer": "pyaio", "status": "paid", "amount": 3.0,
                       "created_at": "2026-12-01T00:00:00Z"}
                async with await orders.transact.begin() as tx:
                    await tx.write(change("orders", {"id": first, **row}))
                    await tx.write(change("orders", {"id": first + 1, **row},
                                          mailbox="order-events", message=b"two orders"))
                assert await orders.reader.count("orders", where("customer", "=", "pyaio")) == 2
                rows = [r async for r in orders.reader.rows(
                    "orders", filter=where("customer", "=", "pyaio"), sort=["-id"])]
                assert [r["id"] for r in rows] == [first + 1, first]

    asyncio.run(main())
