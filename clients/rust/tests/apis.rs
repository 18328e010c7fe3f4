//! Each API of the client against a real gateway: KeyValue, Queue,
//! PubSub, Reader and Transact.

mod common;

use std::time::Duration;

use common::*;
use futures::{StreamExt, TryStreamExt};
use prism_client::{Code, Error};

#[test]
fn key_value_through_a_session() {
    run(async {
        let (gw, addr) = Served::on_free_port().await;
        let session = client(addr)
            .await
            .session()
            .api_key(KEY)
            .config("kv")
            .client_id("prism-client-test")
            .open()
            .await
            .expect("session opens");
        assert!(session.id().starts_with("sess-"));
        assert_eq!(session.config().expect("resolved config").name, "kv");
        let kv = session.kv();

        let v1 = kv.set("user/1", b"ada".to_vec()).await.unwrap();
        let got = kv.get("user/1").await.unwrap().expect("set");
        assert_eq!(
            (got.value.as_slice(), got.version, got.ttl),
            (&b"ada"[..], v1, None)
        );
        assert_eq!(kv.get("user/none").await.unwrap(), None);
        assert!(kv.exists("user/1").await.unwrap());

        kv.expire("user/1", Duration::from_secs(60)).await.unwrap();
        let ttl = kv.ttl("user/1").await.unwrap().expect("expires");
        assert!(
            ttl <= Duration::from_secs(60) && ttl > Duration::from_secs(50),
            "{ttl:?}"
        );
        assert!(kv.persist("user/1").await.unwrap());
        assert_eq!(kv.ttl("user/1").await.unwrap(), None);

        let v2 = kv
            .compare_and_swap("user/1", v1, b"grace".to_vec())
            .await
            .unwrap();
        assert!(v2 > v1);
        let stale = kv
            .compare_and_swap("user/1", v1, b"again".to_vec())
            .await
            .expect_err("a stale version is refused");
        assert_eq!(stale.code(), Code::Aborted, "{stale}");
        assert_eq!(stale.reason(), Some("PRECONDITION_FAILED"));

        let applied = kv
            .transaction()
            .put("user/2", b"two".to_vec())
            .if_exists(false)
            .delete("user/1")
            .if_version(v2)
            .commit()
            .await
            .unwrap();
        assert!(applied[0].version > 0 && applied[1].deleted, "{applied:?}");

        // 2,345 keys: three Scan pages of 1,000, followed by the stream.
        let keys: Vec<String> = (0..2345).map(|i| format!("scan/{i:05}")).collect();
        for chunk in keys.chunks(500) {
            let versions = kv
                .batch_set(chunk.iter().map(|k| (k.clone(), k.as_bytes().to_vec())))
                .await
                .unwrap();
            assert_eq!(versions.len(), chunk.len());
        }
        assert_eq!(kv.count("scan/").await.unwrap(), 2345);
        let scanned: Vec<_> = kv.scan("scan/").try_collect().await.unwrap();
        assert_eq!(scanned.len(), 2345);
        assert!(scanned
            .iter()
            .zip(&keys)
            .all(|((k, v), want)| k == want && v.value == want.as_bytes()));
        let listed: Vec<String> = kv.scan_keys("scan/").try_collect().await.unwrap();
        assert_eq!(listed, keys);

        let batch = kv.batch_get(&["user/2", "user/1"]).await.unwrap();
        assert_eq!(
            batch[0].as_ref().map(|v| v.value.as_slice()),
            Some(&b"two"[..])
        );
        assert_eq!(batch[1], None);
        assert_eq!(kv.batch_delete(&keys[..10]).await.unwrap(), 10);
        assert!(kv.delete("user/2").await.unwrap());
        assert!(!kv.delete("user/2").await.unwrap());

        session.close().await.unwrap();
        let closed = kv.get("user/2").await.expect_err("closed");
        assert!(matches!(closed, Error::Closed), "{closed:?}");
        gw.stop().await;
    });
}

#[test]
fn queue_publish_subscribe_and_acknowledge() {
    run(async {
        let (gw, addr) = Served::on_free_port().await;
        let queue = open(addr, "jobs").await.queue();
        for i in 0..5 {
            let receipt = queue
                .publish("jobs.email", format!("job {i}").into_bytes())
                .await
                .unwrap();
            assert_eq!(receipt.offset, i);
        }
        let batch = queue
            .publish_batch("jobs.email", [b"job 5".to_vec(), b"job 6".to_vec()])
            .await
            .unwrap();
        assert_eq!(batch.success_count, 2);

        let options = prism_client::queue::SubscribeOptions {
            consumer_group: "mailers".into(),
            start: Some(prism_client::queue::Start::Earliest),
            max_messages: Some(7),
            ..Default::default()
        };
        let deliveries: Vec<_> = queue
            .subscribe("jobs.email", options)
            .try_collect()
            .await
            .unwrap();
        let payloads: Vec<String> = deliveries
            .iter()
            .map(|d| String::from_utf8_lossy(&d.message.payload).into_owned())
            .collect();
        assert_eq!(
            payloads,
            (0..7).map(|i| format!("job {i}")).collect::<Vec<_>>()
        );
        deliveries[0].ack().await.expect("acknowledged one");
        let again = deliveries[0].ack().await.expect_err("acknowledged already");
        assert!(
            matches!(again, Error::NotAcknowledged(ref ids) if ids.len() == 1),
            "{again:?}"
        );
        let failed = queue
            .acknowledge(deliveries[1..].iter().map(|d| d.message.message_id.clone()))
            .await
            .unwrap();
        assert!(failed.is_empty(), "{failed:?}");
        gw.stop().await;
    });
}

#[test]
fn pubsub_subscription_receives_what_is_published() {
    run(async {
        let (gw, addr) = Served::on_free_port().await;
        let pubsub = open(addr, "events").await.pubsub();
        let received = tokio::spawn({
            let mut events = Box::pin(pubsub.subscribe("users.>"));
            async move {
                let mut got = Vec::new();
                while got.len() < 3 {
                    let event = events.next().await.expect("open").expect("an event");
                    if event.payload != b"probe" {
                        got.push((event.topic, event.payload, event.metadata));
                    }
                }
                got
            }
        });
        until_subscribed(&pubsub, "users.probe").await;
        for i in 0..3 {
            let mut event = prism_client::pubsub::Outgoing::from(format!("user {i}").into_bytes());
            event.metadata.insert("n".into(), i.to_string());
            pubsub
                .publish(&format!("users.created.{i}"), event)
                .await
                .unwrap();
        }
        let got = received.await.unwrap();
        for (i, (topic, payload, metadata)) in got.into_iter().enumerate() {
            assert_eq!(topic, format!("users.created.{i}"));
            assert_eq!(payload, format!("user {i}").into_bytes());
            assert_eq!(metadata.get("n"), Some(&i.to_string()));
        }
        gw.stop().await;
    });
}

#[test]
fn transact_writes_relay_and_read_back() {
    use prism_client::{reader::Filter, transact::Change};
    run(async {
        let (gw, addr) = Served::on_free_port().await;
        let session = open(addr, "orders").await;
        let events = open(addr, "events").await.pubsub();
        let relayed = tokio::spawn({
            let mut stream = Box::pin(events.subscribe("events.orders"));
            async move {
                loop {
                    let event = stream.next().await.expect("open").expect("an event");
                    if event.payload != b"probe" {
                        return event;
                    }
                }
            }
        });
        until_subscribed(&events, "events.orders").await;

        let transact = session.transact();
        let written = transact
            .write(
                Change::insert("orders")
                    .field("id", 1.0)
                    .field("customer", "ada")
                    .field("amount", 42.5)
                    .message("order-events", b"order 1 placed".to_vec())
                    .message_type("order.placed"),
            )
            .await
            .unwrap();
        assert!(written.committed);
        let event = relayed.await.unwrap();
        assert_eq!(event.payload, b"order 1 placed");
        assert_eq!(
            event.metadata.get("prism-mailbox-id").map(String::as_str),
            Some("order-events")
        );

        // Several changes, one transaction.
        let mut tx = transact.begin().await.unwrap();
        for (id, customer) in [(2.0, "bob"), (3.0, "ada")] {
            tx.write(
                Change::insert("orders")
                    .field("id", id)
                    .field("customer", customer)
                    .field("amount", id),
            )
            .await
            .unwrap();
        }
        assert_eq!(tx.commit().await.unwrap(), 2);
        // Rolled back, and dropped unfinished: neither row stays, and the
        // write lock is free for the next transaction.
        let mut tx = transact.begin().await.unwrap();
        tx.write(
            Change::insert("orders")
                .field("id", 4.0)
                .field("customer", "x")
                .field("amount", 0.0),
        )
        .await
        .unwrap();
        tx.rollback("changed my mind").await.unwrap();
        let mut tx = transact.begin().await.unwrap();
        tx.write(
            Change::insert("orders")
                .field("id", 5.0)
                .field("customer", "y")
                .field("amount", 0.0),
        )
        .await
        .unwrap();
        drop(tx);
        let duplicate = transact
            .write(
                Change::insert("orders")
                    .field("id", 1.0)
                    .field("customer", "again")
                    .field("amount", 1.0),
            )
            .await
            .expect_err("id 1 exists");
        assert_eq!(duplicate.code(), Code::AlreadyExists, "{duplicate}");

        let reader = session.reader();
        let pages: Vec<_> = reader
            .read("orders")
            .page_size(2)
            .pages()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(pages.len(), 2, "three rows in pages of two");
        let rows: Vec<_> = reader
            .read("orders")
            .page_size(2)
            .rows()
            .try_collect()
            .await
            .unwrap();
        let ids: Vec<f64> = rows
            .iter()
            .map(|r| match r.fields["id"].kind {
                Some(prost_types::value::Kind::NumberValue(n)) => n,
                ref other => panic!("id {other:?}"),
            })
            .collect();
        assert_eq!(ids, [1.0, 2.0, 3.0]);
        assert_eq!(
            reader
                .count("orders", Some(Filter::eq("customer", "ada")))
                .await
                .unwrap(),
            2
        );
        assert!(reader.get("orders", "2").await.unwrap().is_some());
        assert!(reader.get("orders", "4").await.unwrap().is_none());

        let mailbox: Vec<_> = transact
            .read_mailbox("order-events", None, false)
            .take(1)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(mailbox[0].message, b"order 1 placed");
        gw.stop().await;
    });
}

#[test]
fn payloads_over_a_mebibyte_travel_in_pieces_and_arrive_whole() {
    run(async {
        let dir = std::env::temp_dir().join(format!("prism-client-claims-{}", std::process::id()));
        let yaml = config_yaml().replace(
            "namespaces:\n  default:\n",
            &format!(
                "object_stores:\n  files: {{ type: local, path: {} }}\nnamespaces:\n  default:\n    \
                 claim_check: {{ store: files, threshold: 262144, delete_on_ack: true }}\n",
                dir.display()
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gw = Served::start_with(listener, parse(&yaml)).await;
        let body: Vec<u8> = (0..5 * 1024 * 1024 + 3).map(|i| (i % 251) as u8).collect();

        // Queue: published over PublishStream, kept in the store, joined.
        let queue = open(addr, "jobs").await.queue();
        queue.publish("big", body.clone()).await.unwrap();
        let options = prism_client::queue::SubscribeOptions {
            consumer_group: "g".into(),
            start: Some(prism_client::queue::Start::Earliest),
            max_messages: Some(1),
            ..Default::default()
        };
        let deliveries: Vec<_> = queue.subscribe("big", options).try_collect().await.unwrap();
        assert_eq!(deliveries.len(), 1);
        let message = &deliveries[0].message;
        assert!(message.payload == body, "the payload arrives whole");
        assert!(
            !message.headers.keys().any(|k| k.starts_with("prism-")),
            "{:?}",
            message.headers
        );
        deliveries[0].ack().await.unwrap();

        // PubSub the same way.
        let pubsub = open(addr, "events").await.pubsub();
        let received = tokio::spawn({
            let mut events = Box::pin(pubsub.subscribe("big.events"));
            async move {
                loop {
                    let event = events.next().await.expect("open").expect("an event");
                    if event.payload != b"probe" {
                        return event.payload;
                    }
                }
            }
        });
        until_subscribed(&pubsub, "big.events").await;
        pubsub.publish("big.events", body.clone()).await.unwrap();
        assert!(received.await.unwrap() == body, "the event arrives whole");
        gw.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    });
}
