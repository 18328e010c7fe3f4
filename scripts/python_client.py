#!/usr/bin/env python3
"""A client generated from proto/ alone (grpcio-tools), run against a gateway.

Usage:
    pip install grpcio-tools googleapis-common-protos
    cargo run --release -- serve &          # the embedded default config
    python3 scripts/python_client.py [127.0.0.1:8980]

It opens a session with the development key and the `user-profiles` config,
then Set/Get/Exists/Delete a key, checks the errors a client must be able to
read (ErrorInfo reason and domain), and closes the session; then, on the
`events` config, subscribes to a wildcard pattern and receives what it
publishes (PubSub); and on `orders-db` pages, counts and gets the demo
orders (Reader), and writes an order with an outbox message whose relayed
event it receives on `events.orders` (Transact), all from the spec's own
protobuf. Exit status 0 means every check held.
"""

import importlib
import pathlib
import sys
import tempfile
import uuid

import grpc
from google.protobuf import timestamp_pb2
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = [
    "prism/config/v1/client_config.proto",
    "prism/session/v1/session.proto",
    "prism/keyvalue/v1/keyvalue.proto",
    "prism/pubsub/v1/pubsub.proto",
    "prism/reader/v1/reader.proto",
    "prism/transact/v1/transact.proto",
]


def generate(out: pathlib.Path) -> None:
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    for proto in PROTOS:
        code = protoc.main([
            "protoc",
            f"-I{ROOT / 'proto'}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            proto,
        ])
        if code != 0:
            sys.exit(f"protoc failed on {proto}")
    for d in out.rglob("*"):
        if d.is_dir():
            (d / "__init__.py").touch()


def error_reason(err: grpc.RpcError) -> str:
    from google.rpc import error_details_pb2, status_pb2
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return f"{info.domain}/{info.reason}"
    return ""


def main() -> None:
    target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8980"
    out = pathlib.Path(tempfile.mkdtemp(prefix="prism-py-"))
    generate(out)
    sys.path.insert(0, str(out))
    session_pb2 = importlib.import_module("prism.session.v1.session_pb2")
    session_grpc = importlib.import_module("prism.session.v1.session_pb2_grpc")
    kv_pb2 = importlib.import_module("prism.keyvalue.v1.keyvalue_pb2")
    kv_grpc = importlib.import_module("prism.keyvalue.v1.keyvalue_pb2_grpc")

    channel = grpc.insecure_channel(target)
    sessions = session_grpc.SessionServiceStub(channel)
    kv = kv_grpc.KeyValueServiceStub(channel)

    created = sessions.CreateSession(session_pb2.CreateSessionRequest(
        api_key="prism-dev-key", config_name="user-profiles",
        client_id="python-check", client_version="1"))
    token = created.session_token
    print(f"session {created.session_id} on config {created.config.name}")

    generated = timestamp_pb2.Timestamp()
    generated.GetCurrentTime()
    idem = kv_pb2.IdempotencyToken(id=str(uuid.uuid4()), generated_at=generated)
    first = kv.Set(kv_pb2.SetRequest(session_token=token, key="user/42",
                                     value=b"\x00\x01\xff\xfe", idempotency_token=idem))
    retry = kv.Set(kv_pb2.SetRequest(session_token=token, key="user/42",
                                     value=b"\x00\x01\xff\xfe", idempotency_token=idem))
    assert retry.replayed and retry.version == first.version, (first, retry)
    got = kv.Get(kv_pb2.GetRequest(key="user/42"), metadata=[("x-session-token", token)])
    assert got.found and got.value == b"\x00\x01\xff\xfe" and got.version == first.version, got
    assert kv.Exists(kv_pb2.ExistsRequest(session_token=token, key="user/42")).exists
    print(f"set/get user/42 at version {got.version} (retry replayed)")

    try:
        kv.Expire(kv_pb2.ExpireRequest(session_token=token, key="missing"))
        sys.exit("expire without ttl should fail")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        print(f"expire without ttl: {err.code().name} {error_reason(err)}")

    assert kv.Delete(kv_pb2.DeleteRequest(session_token=token, key="user/42")).deleted
    sessions.CloseSession(session_pb2.CloseSessionRequest(session_token=token))
    try:
        kv.Get(kv_pb2.GetRequest(session_token=token, key="user/42"))
        sys.exit("a closed session must not work")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
        print(f"after close: {err.code().name} {error_reason(err)}")

    check_pubsub(channel, session_pb2, sessions)
    check_reader(channel, session_pb2, sessions)
    check_transact(channel, session_pb2, sessions)
    print("ok")


def check_reader(channel, session_pb2, sessions) -> None:
    reader_pb2 = importlib.import_module("prism.reader.v1.reader_pb2")
    reader_grpc = importlib.import_module("prism.reader.v1.reader_pb2_grpc")
    from google.protobuf import struct_pb2
    reader = reader_grpc.ReaderServiceStub(channel)
    token = sessions.CreateSession(session_pb2.CreateSessionRequest(
        api_key="prism-dev-key", config_name="orders-db")).session_token
    pages = list(reader.Read(reader_pb2.ReadRequest(
        session_token=token, collection="orders", page_size=2,
        sort=[reader_pb2.Sort(field="amount", direction=reader_pb2.Sort.DIRECTION_DESC)])))
    amounts = [r.fields["amount"].number_value for p in pages for r in p.rows]
    assert amounts == sorted(amounts, reverse=True) and len(amounts) >= 3, amounts
    assert pages[0].has_more and pages[0].next_cursor and not pages[-1].has_more, pages
    alice = reader_pb2.Filter(field=reader_pb2.FieldFilter(
        field="customer", op=reader_pb2.FieldFilter.OPERATOR_EQUALS,
        value=struct_pb2.Value(string_value="alice")))
    count = reader.Count(reader_pb2.CountRequest(session_token=token, collection="orders",
                                                 filter=alice)).count
    assert count >= 2, count
    got = reader.Get(reader_pb2.GetRequest(session_token=token, collection="orders", id="1"))
    assert got.found and got.row.fields["customer"].string_value == "alice", got
    try:
        reader.Count(reader_pb2.CountRequest(session_token=token, collection="orders",
                                             filter=reader_pb2.Filter(field=reader_pb2.FieldFilter(
                                                 field="id; DROP TABLE orders",
                                                 op=reader_pb2.FieldFilter.OPERATOR_EQUALS,
                                                 value=struct_pb2.Value(number_value=1)))))
        sys.exit("an unknown field must fail")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        print(f"reader: {len(amounts)} orders in {len(pages)} pages; unknown field: "
              f"{err.code().name} {error_reason(err)}")
    sessions.CloseSession(session_pb2.CloseSessionRequest(session_token=token))


def check_pubsub(channel, session_pb2, sessions) -> None:
    pubsub_pb2 = importlib.import_module("prism.pubsub.v1.pubsub_pb2")
    pubsub_grpc = importlib.import_module("prism.pubsub.v1.pubsub_pb2_grpc")
    pubsub = pubsub_grpc.PubSubServiceStub(channel)
    token = sessions.CreateSession(session_pb2.CreateSessionRequest(
        api_key="prism-dev-key", config_name="events")).session_token
    stream = pubsub.Subscribe(pubsub_pb2.SubscribeRequest(
        session_token=token, topic_pattern="app.user.*",
        options=pubsub_pb2.SubscriptionOptions(max_messages=1)), timeout=30)
    stream.initial_metadata()  # the subscription is in place
    sent = pubsub.Publish(pubsub_pb2.PublishRequest(
        session_token=token, topic="app.user.created", payload=b"\x00hello",
        metadata={"source": "python"}, correlation_id="c-1"))
    assert sent.subscriber_count == 1, sent
    event = next(stream)
    assert (event.event_id, event.topic, event.payload, event.metadata["source"],
            event.correlation_id) == (sent.event_id, "app.user.created", b"\x00hello",
                                      "python", "c-1"), event
    assert list(stream) == [], "max_messages ends the stream"
    print(f"pubsub: {event.topic} delivered to {event.subscription_id}")
    sessions.CloseSession(session_pb2.CloseSessionRequest(session_token=token))


def check_transact(channel, session_pb2, sessions) -> None:
    pubsub_pb2 = importlib.import_module("prism.pubsub.v1.pubsub_pb2")
    pubsub_grpc = importlib.import_module("prism.pubsub.v1.pubsub_pb2_grpc")
    tx_pb2 = importlib.import_module("prism.transact.v1.transact_pb2")
    tx_grpc = importlib.import_module("prism.transact.v1.transact_pb2_grpc")
    from google.protobuf import struct_pb2
    events = sessions.CreateSession(session_pb2.CreateSessionRequest(
        api_key="prism-dev-key", config_name="events")).session_token
    stream = pubsub_grpc.PubSubServiceStub(channel).Subscribe(pubsub_pb2.SubscribeRequest(
        session_token=events, topic_pattern="events.orders",
        options=pubsub_pb2.SubscriptionOptions(max_messages=1)), timeout=30)
    stream.initial_metadata()  # the subscription is in place
    token = sessions.CreateSession(session_pb2.CreateSessionRequest(
        api_key="prism-dev-key", config_name="orders-db")).session_token
    transact = tx_grpc.TransactServiceStub(channel)
    key = f"py-{uuid.uuid4()}"
    request = tx_pb2.WriteRequest(
        session_token=token,
        data=tx_pb2.DataWrite(table="orders", mode=tx_pb2.DataWrite.WRITE_MODE_INSERT, record={
            "customer": struct_pb2.Value(string_value="python"),
            "status": struct_pb2.Value(string_value="pending"),
            "amount": struct_pb2.Value(number_value=9.5),
            "created_at": struct_pb2.Value(string_value="2026-11-22T10:00:00Z"),
        }),
        mailbox=tx_pb2.MailboxWrite(mailbox_id="order-events", message=b"order created",
                                    message_type="order.created"),
        options=tx_pb2.TransactionOptions(idempotent=True, idempotency_key=key))
    written = transact.Write(request)
    again = transact.Write(request)
    assert written.committed and again.transaction_id == written.transaction_id, (written, again)
    sequence = written.mailbox_result.sequence
    event = next(stream)
    assert (event.payload, event.metadata["prism-sequence"]) == (b"order created",
                                                                 str(sequence)), event
    print(f"transact: order {written.data_result.generated_values['id'].number_value:.0f} "
          f"relayed as sequence {sequence} to {event.topic}")
    for t in (token, events):
        sessions.CloseSession(session_pb2.CloseSessionRequest(session_token=t))


if __name__ == "__main__":
    main()
