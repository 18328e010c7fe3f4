#!/usr/bin/env python3
"""The Python SDK (clients/python) against a gateway on its embedded default.

Usage:
    pip install ./clients/python
    cargo run --release -- serve &          # the embedded default config
    python3 scripts/python_client.py [127.0.0.1:8980]

KeyValue on `user-profiles`, a typed error, the orders table through Reader,
and a Transact write whose outbox message the relay delivers to PubSub
subscribers of `events.orders`. Exit status 0 means every check held.
"""

import random
import sys
import threading
import time

from prism_sdk import Client, PrismError, change, where

target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8980"
with Client(target) as client:
    with client.session(api_key="prism-dev-key", config="user-profiles") as session:
        version = session.kv.set("user/42", b"ada")
        print("user/42 =", session.kv.get("user/42").value, "at version", version)
        try:
            session.kv.compare_and_swap("user/42", version + 1, b"stale")
        except PrismError as e:
            print("stale write refused:", e.code.name, e.reason)

    with client.session(api_key="prism-dev-key", config="orders-db") as orders, \
            client.session(api_key="prism-dev-key", config="events") as events:
        print("alice's orders:", orders.reader.count("orders", where("customer", "=", "alice")))
        order = random.randrange(1_000, 2_000_000_000)
        subscription = events.pubsub.subscribe("events.orders")
        arrived = threading.Event()

        def wait_for_order() -> None:
            for event in subscription:
                if event.payload == f"order {order} placed".encode():
                    arrived.set()
                    return

        threading.Thread(target=wait_for_order, daemon=True).start()
        # Probes until the subscription is in place (PubSub is at-most-once).
        for _ in range(500):
            if events.pubsub.publish("events.orders", b"probe").subscriber_count:
                break
            time.sleep(0.01)
        orders.transact.write(change(
            "orders", {"id": order, "customer": "carol", "status": "paid", "amount": 12.5,
                       "created_at": "2026-12-01T00:00:00Z"},
            mailbox="order-events", message=f"order {order} placed".encode()))
        assert arrived.wait(30), "the relay delivered the order's event"
        subscription.close()
        print(f"order {order} written; its event arrived on events.orders")
print("ok")
