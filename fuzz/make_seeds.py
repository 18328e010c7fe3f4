#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs under fuzz/seeds/<target>/.

Hand-encoded protobuf (a few helpers below) so that no build is needed.
The fuzzer grows its own corpus from these; `tests/fuzz_seeds.rs` replays
them on every test run. Run from anywhere: python3 fuzz/make_seeds.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, value):
    """A field: int -> varint, bytes/str -> length-delimited."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


def double(num, value):
    return varint(num << 3 | 1) + struct.pack("<d", value)


def msg(*fields):
    return b"".join(fields)


def pb_value_str(s):  # google.protobuf.Value{string_value = 3}
    return field(3, s)


def pb_value_num(x):  # number_value = 2
    return double(2, x)


def pb_list(*values):  # list_value = 6 -> ListValue{values = 1}
    return field(6, msg(*[field(1, v) for v in values]))


def duration(seconds, nanos=0):
    return msg(field(1, seconds), field(2, nanos))


def field_filter(name, op, value):
    return field(1, msg(field(1, name), field(2, op), field(3, value)))


def composite(op, *filters):
    return field(2, msg(field(1, op), *[field(2, f) for f in filters]))


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- gate: [method index, flags (bit 0: lay a credential over field 1), message]
# The index is the method's place in METHODS in targets/gate.rs, read from there.
import re

with open(os.path.join(HERE, "targets", "gate.rs")) as f:
    METHODS = re.findall(r'\("/prism\.[a-z]+\.v1\.(\w+/\w+)", \w+, C::\w+\)', f.read())
assert len(METHODS) > 30, METHODS


def gate(name, method, message, overlay=True):
    write("gate", name, bytes([METHODS.index(method), 1 if overlay else 0]) + message)


gate("create-named", "SessionService/CreateSession", field(4, "user-profiles"))
# ClientConfig: pattern KEY_VALUE (3 = 5), backend { name (2) } (4)
inline = msg(field(3, 5), field(4, msg(field(2, "memory"))))
gate("create-inline", "SessionService/CreateSession", field(5, inline) + field(6, "fuzz-client"))
gate("create-no-key", "SessionService/CreateSession", field(4, "events"), overlay=False)
gate("heartbeat", "SessionService/Heartbeat", b"")
gate("refresh", "SessionService/RefreshSession", b"")
gate("close", "SessionService/CloseSession", b"")
gate("get-config", "ConfigService/GetConfig", field(1, "orders-db"), overlay=False)
gate("list-configs", "ConfigService/ListConfigs", field(1, "default"), overlay=False)
gate("kv-set", "KeyValueService/Set", msg(field(2, "k"), field(3, b"v"), field(4, duration(60))))
gate("kv-set-huge-ttl", "KeyValueService/Set", msg(field(2, "k"), field(3, b"v"),
                                      field(4, duration((1 << 63) - 1, 999999999))))
gate("kv-get", "KeyValueService/Get", field(2, "k"))
gate("kv-scan", "KeyValueService/Scan", msg(field(2, ""), field(3, 5)))
gate("kv-count", "KeyValueService/Count", field(2, "k"))
gate("kv-expire-negative", "KeyValueService/Expire", msg(field(2, "k"), field(3, duration(-5))))
entry = msg(field(1, "a"), field(2, b"1"))
gate("kv-batch-set", "KeyValueService/BatchSet", field(2, entry) + field(2, entry))
gate("kv-cas", "KeyValueService/CompareAndSwap", msg(field(2, "k"), field(3, 1), field(4, b"w")))
gate("q-publish", "QueueService/Publish", msg(field(2, "orders"), field(3, b"hello"), field(6, 3)))
gate("q-subscribe", "QueueService/Subscribe", msg(field(2, "orders"), field(3, "g"), field(6, 1),
                                       field(7, 2), field(8, duration(0, 1000000))))
gate("q-subscribe-offset", "QueueService/Subscribe", msg(field(2, "orders"), field(4, (1 << 63) - 1)))
gate("q-ack", "QueueService/Acknowledge", field(2, "orders:0:0"))
gate("q-commit", "QueueService/Commit", msg(field(2, "orders"), field(3, "g"),
                                 field(4, msg(field(1, 0), field(2, 1 << 40)))))
gate("q-topic-info", "QueueService/GetTopicInfo", field(2, "orders"))
gate("ps-publish", "PubSubService/Publish", msg(field(2, "a.b"), field(3, b"x"), field(4, msg(field(1, "k"), field(2, "v")))))
gate("ps-subscribe", "PubSubService/Subscribe", msg(field(2, "a.*.>")))
filt = field_filter("status", 1, pb_value_str("paid"))
gate("r-read", "ReaderService/Read", msg(field(2, "orders"), field(3, 2), field(6, filt),
                             field(7, msg(field(1, "amount"), field(2, 2)))))
many = composite(2, field_filter("amount", 3, pb_value_num(10.0)),
                 field_filter("customer", 7, pb_list(pb_value_str("alice"), pb_value_str("bob"))))
gate("r-query", "ReaderService/Query", msg(field(2, "orders"), field(3, many), field(5, 10), field(6, 1)))
gate("r-count", "ReaderService/Count", msg(field(2, "orders"), field(3, filt)))
gate("r-get", "ReaderService/Get", msg(field(2, "orders"), field(3, "1")))
record = msg(field(1, "customer"), field(2, pb_value_str("carol")))
data = msg(field(1, "orders"), field(2, record), field(3, 1))
mailbox = msg(field(1, "order-events"), field(2, b"created"))
gate("t-write", "TransactService/Write", msg(field(2, data), field(3, mailbox)))
gate("t-transaction", "TransactService/Transaction", field(2, msg(field(2, data))))
gate("t-read-mailbox", "TransactService/ReadMailbox", msg(field(2, "order-events"), field(3, 0), field(4, 5)))
gate("t-process", "TransactService/ProcessMailbox", field(2, "order-events:1"))

# --- reader: a QueryRequest (filter 3, sort 4, limit 5, offset 6, fields 7)
def query(name, *fields):
    write("reader", name, msg(*fields))


query("eq", field(3, field_filter("name", 1, pb_value_str("x"))))
query("in", field(3, field_filter("id", 7, pb_list(pb_value_num(1), pb_value_num(2)))))
query("not-and", field(3, composite(3, composite(1, field_filter("price", 3, pb_value_num(1.5)),
                                                 field_filter("at", 5, pb_value_str("2026-01-01T00:00:00Z"))))))
query("starts", field(3, field_filter("name", 10, pb_value_str("a%_"))), field(4, msg(field(1, "price"), field(2, 2))))
query("fields", field(7, "id"), field(7, "doc"), field(4, msg(field(1, "done"))))
write("reader", "cursor", b"eyJxIjoiYSJ9.AAAA")

# --- topics: patterns on the first line, topics after
write("topics", "basic", b"a.* a.> a.b.c * > a.*.c\na.b\na.b.c\nx\nns.a.b\nns.x.a.b\n")
write("topics", "dotted-ns", b"t.> t.x.>\nt.x.a\nt.x~a.b\nt-1.a\n")

# --- config: YAML
write("config", "minimal.yaml", b"backends:\n  m: { type: memory }\nnamespaces:\n  n: { allowed_backends: [m], allowed_patterns: [key_value] }\n")
write("config", "interpolation.yaml", b"server:\n  listen: ${LISTEN:-127.0.0.1:0}\n  admin_token: ${EMPTY:-x}${PRISM_SQLITE_PATH}\n")
write("config", "rules.yaml", b"""backends:
  m: { type: memory }
namespaces:
  n:
    allowed_backends: [m]
    allowed_patterns: [key_value, queue]
    queue: { buffer: 8, buffer_bytes: 4096 }
    rules:
      - { patterns: [queue], backends: [m], roles: [w], max_attempts: 3, rate_limit: { requests_per_second: 5, burst: 5 } }
configs:
  c: { namespace: n, pattern: queue, backend: m, options: { max_attempts: 2 } }
""")
