//! Outbox relay tests (MailboxListenerActor) on real servers: Writes on
//! Postgres relayed to Kafka (nisshi) and to NATS JetStream arrive complete
//! and in sequence order; a NATS outage (a private nats-server,
//! `common::servers`, really killed and restarted) delays but loses nothing; a gateway killed
//! mid-relay and started again loses nothing (duplicates allowed, gaps not);
//! the embedded default relays `order-events` to PubSub with no other
//! service.

mod common;

use std::{collections::HashMap, time::Duration};

use common::{
    api_key_request,
    outbox::{capture, cleanup, create_table, customer_write, nats_url, pg},
    servers::{Kind, Server},
    TestGateway, TEST_KEY,
};
use futures::StreamExt;
use prism::{
    config::{GatewayConfig, Source},
    proto::{
        pubsub::v1 as ps,
        transact::v1::{self as pb, data_write::WriteMode},
    },
    runtime::block_on_multi_thread,
};
use prost_types::{value::Kind as V, Value};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    message::{Headers, Message as _},
    ClientConfig,
};
use sqlx::{AnyPool, Row};

const WRITES: i64 = 1000;
const MAILBOX: &str = "order-events";

fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A namespace with a Postgres table and one relay `to`.
fn relay_yaml(run: &str, table: &str, to: &str, nats: &str) -> String {
    format!(
        r#"
server: {{ shutdown_grace: 5s, supervision_interval: 100ms, actor_threads: 2 }}
backends:
  postgres: {{ type: postgres, url: "{pg}", pool: {pool} }}
  kafka: {{ type: kafka, url: "{kafka}" }}
  nats: {{ type: nats, url: "{nats}" }}
  memory: {{ type: memory }}
namespaces:
  r{run}:
    allowed_backends: [postgres, kafka, nats, memory]
    allowed_patterns: [transact, pubsub]
    api_keys: [{{ name: test, sha256: "{key}" }}]
    transact:
      tables:
        {table}: {{ backend: postgres }}
    relays:
      out:
        backend: postgres
        mailbox: {MAILBOX}
        to: {to}
        poll_interval: 200ms
        batch_size: 50
        max_backoff: 500ms
configs:
  postgres: {{ namespace: r{run}, pattern: transact, backend: postgres }}
"#,
        pg = common::kv::database_url(),
        pool = common::kv::FAST_POOL,
        kafka = kafka_brokers(),
        key = prism::auth::api_key_digest(TEST_KEY),
    )
}

/// A gateway on `relay_yaml`, with its Postgres and the relay's broker up.
async fn start(run: &str, table: &str, to: &str, nats: &str, broker: &str) -> TestGateway {
    let config = GatewayConfig::from_yaml(
        &relay_yaml(run, table, to, nats),
        &Source::Inline,
        &[("_", "_"); 0],
    )
    .unwrap();
    let gw = TestGateway::start_with(config).await;
    gw.wait_backend_up("postgres").await;
    gw.wait_backend_up(broker).await;
    gw
}

/// Rows of the namespace's mailbox after relay `out`'s cursor.
async fn unprocessed(pool: &AnyPool, ns: &str) -> i64 {
    sqlx::query(
        "SELECT COUNT(*) FROM prism_mailbox WHERE namespace = $1 AND sequence > COALESCE( \
         (SELECT through FROM prism_relay_cursor WHERE namespace = $1 AND relay = 'out'), 0)",
    )
    .bind(ns)
    .fetch_one(pool)
    .await
    .unwrap()
    .get::<i64, _>(0)
}

/// `WRITES` Writes (a row and a mailbox message each) from 8 clients.
async fn write_all(gw: &TestGateway, table: &str, count: i64) {
    let token = gw
        .sessions()
        .create_session(api_key_request(TEST_KEY, "postgres"))
        .await
        .unwrap()
        .into_inner()
        .session_token;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let mut client =
            pb::transact_service_client::TransactServiceClient::new(gw.channel.clone());
        let token = token.clone();
        let table = table.to_string();
        tasks.spawn(async move {
            for i in (w..count).step_by(8) {
                client
                    .write(customer_write(
                        &token,
                        &table,
                        &format!("c{i}"),
                        MAILBOX,
                        format!("m{i}").into_bytes(),
                    ))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// Checks relayed sequences: the first time each appears they run 1, 2, 3,
/// ... with nothing missing; repeats (at-least-once) are allowed.
fn assert_complete_in_order(seen: &[i64], count: i64) {
    let mut next = 1;
    for s in seen {
        if *s == next {
            next += 1;
        } else {
            assert!(
                *s < next,
                "sequence {s} arrived before {next}: a gap or reordering"
            );
        }
    }
    assert_eq!(next, count + 1, "relayed up to {} of {count}", next - 1);
}

/// Waits (bounded) until relay `out` has passed every row of the mailbox.
async fn wait_relayed(pool: &AnyPool, ns: &str) {
    common::wait_until("every mailbox row is relayed", || async {
        unprocessed(pool, ns).await == 0
    })
    .await;
}

#[test]
fn a_thousand_writes_reach_kafka_complete_and_in_order() {
    block_on_multi_thread(async {
        let run = common::kv::run_id();
        let ns = format!("r{run}");
        let table = format!("prism_relay_k_{run}");
        let topic = format!("prism-relay-{run}");
        let pool = pg().await;
        create_table(&pool, &table).await;
        let to = format!("{{ kafka: {{ backend: kafka, topic: {topic} }} }}");
        let gw = start(&run, &table, &to, &nats_url(), "kafka").await;

        write_all(&gw, &table, WRITES).await;
        wait_relayed(&pool, &ns).await;

        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .set("group.id", format!("relay-test-{run}"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        let mut seen = Vec::new();
        let mut distinct = std::collections::HashSet::new();
        tokio::time::timeout(Duration::from_secs(60), async {
            while distinct.len() < WRITES as usize {
                let m = consumer.recv().await.unwrap();
                let headers: HashMap<String, String> = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(headers["prism-mailbox-id"], MAILBOX);
                let seq: i64 = headers["prism-sequence"].parse().unwrap();
                assert!(headers["prism-message-id"].starts_with("msg-"));
                seen.push(seq);
                distinct.insert(seq);
            }
        })
        .await
        .expect("all relayed messages are in the topic");
        assert_complete_in_order(&seen, WRITES);

        gw.stop().await;
        cleanup(&pool, &table, &ns).await;
    });
}

/// A JetStream stream capturing `subject`, made by the test so it can read
/// back everything the relay published there.
/// The `prism-sequence` of every message in a stream, in stream order.
async fn stream_sequences(js: &async_nats::jetstream::Context, name: &str) -> Vec<i64> {
    let mut stream = js.get_stream(name).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        let seq: i64 = m
            .headers
            .get("prism-sequence")
            .expect("a prism-sequence header")
            .as_str()
            .parse()
            .unwrap();
        out.push(seq);
    }
    out
}

#[test]
fn a_thousand_writes_reach_nats_complete_and_in_order() {
    block_on_multi_thread(async {
        let run = common::kv::run_id();
        let ns = format!("r{run}");
        let table = format!("prism_relay_n_{run}");
        let subject = format!("prism.relaytest.{run}");
        let stream = format!("RELAYTEST_{run}");
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        capture(&js, &stream, &subject).await;
        let pool = pg().await;
        create_table(&pool, &table).await;
        let to = format!("{{ nats: {{ backend: nats, subject: {subject} }} }}");
        let gw = start(&run, &table, &to, &nats_url(), "nats").await;

        write_all(&gw, &table, WRITES).await;
        wait_relayed(&pool, &ns).await;
        let seen = stream_sequences(&js, &stream).await;
        assert_complete_in_order(&seen, WRITES);

        gw.stop().await;
        js.delete_stream(&stream).await.unwrap();
        cleanup(&pool, &table, &ns).await;
    });
}

async fn connect_retrying(url: &str) -> async_nats::Client {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(c) = async_nats::connect(url).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("nats-server starts")
}

/// The relay's node in the actor tree.
async fn relay_state(gw: &TestGateway, ns: &str) -> serde_json::Value {
    let tree = gw.gateway.observe().await.unwrap();
    tree.find(&format!("relay/{ns}/out"))
        .expect("the relay is in the tree")
        .state
        .clone()
}

#[test]
fn with_the_broker_down_writes_commit_and_the_relay_catches_up() {
    block_on_multi_thread(async {
        let run = common::kv::run_id();
        let ns = format!("r{run}");
        let table = format!("prism_relay_o_{run}");
        let subject = format!("prism.outage.{run}");
        let stream = format!("OUTAGE_{run}");
        let mut server = Server::start(Kind::Nats).await;
        let url = server.url();
        let js = async_nats::jetstream::new(connect_retrying(&url).await);
        capture(&js, &stream, &subject).await;

        let pool = pg().await;
        create_table(&pool, &table).await;
        let to = format!("{{ nats: {{ backend: nats, subject: {subject} }} }}");
        let gw = start(&run, &table, &to, &url, "nats").await;
        write_all(&gw, &table, 20).await;
        wait_relayed(&pool, &ns).await;

        // The broker goes away; writes still commit.
        server.kill9().await;
        write_all(&gw, &table, 100).await;
        assert!(unprocessed(&pool, &ns).await > 0);
        // The listener fails and backs off (its state says so). Each failed
        // round waits out JetStream's acknowledgement timeout, so this is
        // bounded generously rather than tightly.
        common::wait_until("the relay reports a failure and backs off", || async {
            let s = relay_state(&gw, &ns).await;
            s["failures_in_a_row"].as_u64().unwrap_or(0) >= 1
                && s["backoff_ms"].as_u64().unwrap_or(0) > 0
        })
        .await;
        let s = relay_state(&gw, &ns).await;
        assert!(s["last_error"].is_string(), "{s}");
        assert!(s["lag"]["unprocessed"].as_u64().unwrap() > 0, "{s}");

        // The broker returns (same port, same store): everything arrives.
        server.restart().await;
        wait_relayed(&pool, &ns).await;
        let s = relay_state(&gw, &ns).await;
        assert_eq!(s["lag"]["unprocessed"], 0, "{s}");
        let seen = stream_sequences(&js_after(&url).await, &stream).await;
        assert_complete_in_order(&seen, 120);

        gw.stop().await;
        cleanup(&pool, &table, &ns).await;
    });
}

async fn js_after(url: &str) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(connect_retrying(url).await)
}

/// `prism serve` on `config` as a child process, once it serves.
async fn serve(config: &std::path::Path) -> tokio::process::Child {
    common::spawn_serve(&["--config".as_ref(), config.as_os_str()], &[])
        .await
        .0
}

/// A relay from Postgres to NATS (batches of 5, so a kill lands mid-way)
/// served by a `prism serve` process, its mailbox filled at once with
/// `WRITES` rows written directly (as after an outage).
struct Crash {
    ns: String,
    table: String,
    stream: String,
    js: async_nats::jetstream::Context,
    pool: AnyPool,
    path: std::path::PathBuf,
}

impl Crash {
    async fn start(name: &str) -> (Crash, tokio::process::Child) {
        let run = common::kv::run_id();
        let ns = format!("r{run}");
        let table = format!("prism_relay_{name}_{run}");
        let subject = format!("prism.{name}.{run}");
        let stream = format!("{}_{run}", name.to_uppercase());
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        capture(&js, &stream, &subject).await;
        let pool = pg().await;
        create_table(&pool, &table).await;
        let to = format!("{{ nats: {{ backend: nats, subject: {subject} }} }}");
        let yaml =
            relay_yaml(&run, &table, &to, &nats_url()).replace("batch_size: 50", "batch_size: 5");
        let path = std::env::temp_dir().join(format!("prism-relay-{run}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let first = serve(&path).await;
        // The gateway makes the tables and the relay's cursor when it connects.
        common::wait_until("the relay's cursor exists", || async {
            sqlx::query("SELECT COUNT(*) FROM prism_relay_cursor WHERE namespace = $1")
                .bind(ns.as_str())
                .fetch_one(&pool)
                .await
                .is_ok_and(|r| r.get::<i64, _>(0) == 1)
        })
        .await;
        let mut tx = pool.begin().await.unwrap();
        for seq in 1..=WRITES {
            sqlx::query(
                "INSERT INTO prism_mailbox (namespace, mailbox_id, sequence, message_id, message, \
                 metadata, created_at) VALUES ($1, $2, $3, $4, $5, '{}', $6)",
            )
            .bind(ns.as_str())
            .bind(MAILBOX)
            .bind(seq)
            .bind(format!("msg-{run}-{seq}"))
            .bind(format!("m{seq}").into_bytes())
            .bind(prism::backends::epoch_ms())
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        let crash = Crash {
            ns,
            table,
            stream,
            js,
            pool,
            path,
        };
        (crash, first)
    }

    /// Messages in the destination stream now.
    async fn stored(&self) -> u64 {
        let mut s = self.js.get_stream(&self.stream).await.unwrap();
        s.info().await.unwrap().state.messages
    }

    async fn finish(self) {
        self.js.delete_stream(&self.stream).await.unwrap();
        cleanup(&self.pool, &self.table, &self.ns).await;
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn killing_the_gateway_mid_relay_loses_nothing() {
    block_on_multi_thread(async {
        let (c, mut first) = Crash::start("crash").await;

        // Kill -9 once some, not all, have gone out.
        common::wait_until("the relay has sent 100", || async {
            c.stored().await >= 100
        })
        .await;
        first.kill().await.unwrap();
        let left = unprocessed(&c.pool, &c.ns).await;
        assert!(
            left > 0,
            "the relay finished before the kill; nothing was tested"
        );

        // A new gateway on the same config finishes the job.
        let second = serve(&c.path).await;
        wait_relayed(&c.pool, &c.ns).await;
        let seen = stream_sequences(&c.js, &c.stream).await;
        assert_complete_in_order(&seen, WRITES);
        drop(second);
        c.finish().await;
    });
}

#[test]
fn the_embedded_default_relays_order_events_to_pubsub() {
    block_on_multi_thread(async {
        let dir = std::env::temp_dir().join(format!("prism-default-{}", common::kv::run_id()));
        let db = dir.join("orders.db");
        let db = db.to_string_lossy().to_string();
        let config = GatewayConfig::from_yaml(
            prism::config::EMBEDDED_DEFAULT,
            &Source::Embedded,
            &[("PRISM_SQLITE_PATH", db.as_str())],
        )
        .unwrap();
        let gw = TestGateway::start_with(config).await;
        gw.wait_backend_up("orders-sqlite").await;
        let token = |name: &'static str| {
            let mut sessions = gw.sessions();
            async move {
                sessions
                    .create_session(api_key_request("prism-dev-key", name))
                    .await
                    .unwrap()
                    .into_inner()
                    .session_token
            }
        };
        let events = token("events").await;
        let mut pubsub = ps::pub_sub_service_client::PubSubServiceClient::new(gw.channel.clone());
        let mut stream = pubsub
            .subscribe(ps::SubscribeRequest {
                session_token: events,
                topic_pattern: "events.orders".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();

        let orders = token("orders-db").await;
        let mut transact =
            pb::transact_service_client::TransactServiceClient::new(gw.channel.clone());
        let text = |s: &str| Value {
            kind: Some(V::StringValue(s.into())),
        };
        let written = transact
            .write(pb::WriteRequest {
                session_token: orders,
                data: Some(pb::DataWrite {
                    table: "orders".into(),
                    record: [
                        ("customer".to_string(), text("carol")),
                        ("status".to_string(), text("pending")),
                        (
                            "amount".to_string(),
                            Value {
                                kind: Some(V::NumberValue(12.5)),
                            },
                        ),
                        ("created_at".to_string(), text("2026-11-22T10:00:00Z")),
                    ]
                    .into(),
                    mode: WriteMode::Insert as i32,
                    id_field: None,
                }),
                mailbox: Some(pb::MailboxWrite {
                    mailbox_id: MAILBOX.into(),
                    message: b"order created".to_vec(),
                    message_type: Some("order.created".into()),
                    ..Default::default()
                }),
                options: None,
            })
            .await
            .unwrap()
            .into_inner();
        let id = &written.data_result.unwrap().generated_values["id"];
        assert!(matches!(id.kind, Some(V::NumberValue(_))), "{id:?}");
        let sequence = written.mailbox_result.unwrap().sequence;

        let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("the relay publishes in time")
            .unwrap()
            .unwrap();
        assert_eq!(event.topic, "events.orders");
        assert_eq!(event.payload, b"order created");
        assert_eq!(event.metadata["prism-mailbox-id"], MAILBOX);
        assert_eq!(event.metadata["prism-sequence"], sequence.to_string());
        assert_eq!(event.metadata["prism-message-type"], "order.created");

        gw.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// One Write of a row and a mailbox message; its message id.
async fn write_one(
    gw: &TestGateway,
    token: &str,
    table: &str,
    message: Vec<u8>,
    metadata: &[(&str, &str)],
) -> Result<String, tonic::Status> {
    let mut client = pb::transact_service_client::TransactServiceClient::new(gw.channel.clone());
    let mut write = customer_write(token, table, "c", MAILBOX, message);
    if let Some(mailbox) = write.mailbox.as_mut() {
        mailbox.metadata = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }
    let r = client.write(write).await?;
    Ok(r.into_inner().mailbox_result.unwrap().message_id)
}

/// The whole mailbox as ReadMailbox streams it.
async fn read_mailbox(gw: &TestGateway, token: &str) -> Vec<pb::MailboxMessage> {
    let mut client = pb::transact_service_client::TransactServiceClient::new(gw.channel.clone());
    let mut stream = client
        .read_mailbox(pb::ReadMailboxRequest {
            session_token: token.to_string(),
            mailbox_id: MAILBOX.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.next().await {
        out.push(m.unwrap());
    }
    out
}

async fn session(gw: &TestGateway) -> String {
    gw.sessions()
        .create_session(api_key_request(TEST_KEY, "postgres"))
        .await
        .unwrap()
        .into_inner()
        .session_token
}

#[test]
fn a_client_processing_rows_never_hides_them_from_the_relay() {
    block_on_multi_thread(async {
        let run = common::kv::run_id();
        let ns = format!("r{run}");
        let table = format!("prism_relay_p_{run}");
        let subject = format!("prism.processed.{run}");
        let stream = format!("PROCESSED_{run}");
        let mut server = Server::prepare(Kind::Nats).await;
        let url = server.url();
        let pool = pg().await;
        create_table(&pool, &table).await;
        // The relay's broker is not up yet, so every row waits for it.
        let to = format!("{{ nats: {{ backend: nats, subject: {subject} }} }}");
        let config = GatewayConfig::from_yaml(
            &relay_yaml(&run, &table, &to, &url),
            &Source::Inline,
            &[("_", "_"); 0],
        )
        .unwrap();
        let gw = TestGateway::start_with(config).await;
        gw.wait_backend_up("postgres").await;
        let token = session(&gw).await;
        for i in 0..50 {
            write_one(&gw, &token, &table, format!("m{i}").into_bytes(), &[])
                .await
                .unwrap();
        }
        // A consumer of the mailbox marks every row processed at once.
        let ids: Vec<String> = read_mailbox(&gw, &token)
            .await
            .into_iter()
            .map(|m| m.message_id)
            .collect();
        assert_eq!(ids.len(), 50);
        let processed = pb::transact_service_client::TransactServiceClient::new(gw.channel.clone())
            .process_mailbox(pb::ProcessMailboxRequest {
                session_token: token.clone(),
                message_ids: ids,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(processed.processed_count, 50);

        // The broker comes up: the relay still publishes all 50.
        server.restart().await;
        let js = async_nats::jetstream::new(connect_retrying(&url).await);
        capture(&js, &stream, &subject).await;
        wait_relayed(&pool, &ns).await;
        let seen = stream_sequences(&js, &stream).await;
        assert_complete_in_order(&seen, 50);
        // Clients' processed marks are theirs: still set.
        assert!(read_mailbox(&gw, &token).await.iter().all(|m| m.processed));

        gw.stop().await;
        cleanup(&pool, &table, &ns).await;
    });
}

#[test]
fn a_row_the_broker_refuses_is_moved_aside_and_the_rest_flow_on() {
    block_on_multi_thread(async {
        let run = common::kv::run_id();
        let ns = format!("r{run}");
        let table = format!("prism_relay_d_{run}");
        let subject = format!("prism.dead.{run}");
        let stream = format!("DEAD_{run}");
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        // The destination stream takes messages up to 1,000 bytes.
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![subject.clone()],
            max_message_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
        let pool = pg().await;
        create_table(&pool, &table).await;
        let to = format!("{{ nats: {{ backend: nats, subject: {subject} }} }}");
        let yaml = relay_yaml(&run, &table, &to, &nats_url()).replace(
            "max_backoff: 500ms",
            "max_backoff: 200ms\n        max_attempts: 2",
        );
        let config = GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).unwrap();
        let gw = TestGateway::start_with(config).await;
        gw.wait_backend_up("postgres").await;
        gw.wait_backend_up("nats").await;
        let token = session(&gw).await;

        // Metadata no NATS header can carry is refused at Write time, and
        // nothing is written.
        let e = write_one(&gw, &token, &table, b"x".to_vec(), &[("bad key", "v")])
            .await
            .expect_err("a message the relay could never publish");
        common::assert_error(
            &e,
            tonic::Code::InvalidArgument,
            "MAILBOX_MESSAGE_UNRELAYABLE",
            prism::error::Service::Transact,
        );
        // Sequence 1 flows; 2 is larger than the stream takes (the broker
        // refuses it each time); 3 flows after it.
        write_one(&gw, &token, &table, b"one".to_vec(), &[])
            .await
            .unwrap();
        write_one(&gw, &token, &table, vec![b'x'; 2000], &[])
            .await
            .unwrap();
        write_one(&gw, &token, &table, b"three".to_vec(), &[])
            .await
            .unwrap();
        // Rows written before the Write check existed (or by another writer):
        // 4 has a header NATS cannot carry, 5 is fine.
        for (seq, metadata) in [(4, r#"{"bad key":"v"}"#), (5, "{}")] {
            sqlx::query(
                "INSERT INTO prism_mailbox (namespace, mailbox_id, sequence, message_id, \
                 message, metadata, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(ns.as_str())
            .bind(MAILBOX)
            .bind(seq)
            .bind(format!("msg-{run}-{seq}"))
            .bind(format!("m{seq}").into_bytes())
            .bind(metadata)
            .bind(prism::backends::epoch_ms())
            .execute(&pool)
            .await
            .unwrap();
        }
        wait_relayed(&pool, &ns).await;

        let seen = stream_sequences(&js, &stream).await;
        let distinct: std::collections::BTreeSet<i64> = seen.iter().copied().collect();
        assert_eq!(distinct, [1, 3, 5].into(), "{seen:?}");
        let rows = read_mailbox(&gw, &token).await;
        assert_eq!(rows.len(), 5);
        let dead = |seq: usize| &rows[seq - 1].metadata;
        assert_eq!(dead(2)["prism-dead-letter-relay"], "out");
        assert_eq!(dead(2)["prism-dead-letter-attempts"], "2");
        assert!(dead(2)["prism-dead-letter-error"].contains("refused"));
        assert_eq!(dead(4)["prism-dead-letter-attempts"], "0");
        assert!(dead(4)["prism-dead-letter-error"].contains("bad key"));
        for seq in [1, 3, 5] {
            assert!(!dead(seq).contains_key("prism-dead-letter-relay"));
        }
        let s = relay_state(&gw, &ns).await;
        assert_eq!(s["dead_lettered"], 2, "{s}");
        assert_eq!(s["last_dead_letter"]["sequence"], 4, "{s}");
        let metrics = gw.gateway.exposition().render();
        let sample =
            format!("prism_relay_dead_lettered_total{{namespace=\"{ns}\",relay=\"out\"}} 2");
        assert!(metrics.lines().any(|l| l == sample), "{metrics}");

        gw.stop().await;
        js.delete_stream(&stream).await.unwrap();
        cleanup(&pool, &table, &ns).await;
    });
}

#[test]
fn a_message_larger_than_kafka_takes_is_refused_at_write_time() {
    block_on_multi_thread(async {
        let run = common::kv::run_id();
        let ns = format!("r{run}");
        let table = format!("prism_relay_b_{run}");
        let topic = format!("prism-relay-big-{run}");
        let pool = pg().await;
        create_table(&pool, &table).await;
        let to = format!("{{ kafka: {{ backend: kafka, topic: {topic} }} }}");
        let gw = start(&run, &table, &to, &nats_url(), "kafka").await;
        let token = session(&gw).await;
        let e = write_one(&gw, &token, &table, vec![0; 1_100_000], &[])
            .await
            .expect_err("larger than a Kafka record may be");
        common::assert_error(
            &e,
            tonic::Code::InvalidArgument,
            "MAILBOX_MESSAGE_UNRELAYABLE",
            prism::error::Service::Transact,
        );
        assert!(
            read_mailbox(&gw, &token).await.is_empty(),
            "nothing was written"
        );
        write_one(&gw, &token, &table, vec![0; 900_000], &[])
            .await
            .unwrap();
        wait_relayed(&pool, &ns).await;
        gw.stop().await;
        cleanup(&pool, &table, &ns).await;
    });
}

/// The high watermark of partition 0 of `topic`: how many records it holds.
fn records_in(topic: &str) -> i64 {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", "prism-relay-watermarks")
        .create()
        .unwrap();
    consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap()
        .1
}

#[test]
fn two_gateways_relay_each_row_once() {
    block_on_multi_thread(async {
        let run = common::kv::run_id();
        let ns = format!("r{run}");
        let table = format!("prism_relay_c_{run}");
        let topic = format!("prism-relay-c-{run}");
        let pool = pg().await;
        create_table(&pool, &table).await;
        let to = format!("{{ kafka: {{ backend: kafka, topic: {topic} }} }}");
        // One config, two gateways: both run the relay's actor.
        let a = start(&run, &table, &to, &nats_url(), "kafka").await;
        let b = start(&run, &table, &to, &nats_url(), "kafka").await;
        write_all(&a, &table, 250).await;
        write_all(&b, &table, 250).await;
        wait_relayed(&pool, &ns).await;

        let (sa, sb) = (relay_state(&a, &ns).await, relay_state(&b, &ns).await);
        let relayed = sa["relayed"].as_u64().unwrap() + sb["relayed"].as_u64().unwrap();
        assert_eq!(relayed, 500, "each row published by one gateway: {sa} {sb}");
        assert!(
            [&sa, &sb]
                .iter()
                .any(|s| s["status"] == "standby" && s["relayed"] == 0),
            "one gateway stood by: {sa} {sb}"
        );
        assert_eq!(records_in(&topic), 500, "no row twice in the topic");

        a.stop().await;
        b.stop().await;
        cleanup(&pool, &table, &ns).await;
    });
}

#[test]
fn a_standby_gateway_takes_over_when_the_relaying_one_is_killed() {
    block_on_multi_thread(async {
        let (c, mut first) = Crash::start("failover").await;
        common::wait_until("the first gateway relays", || async {
            c.stored().await >= 100
        })
        .await;
        // A second gateway on the same config stands by; the first is killed.
        let second = serve(&c.path).await;
        first.kill().await.unwrap();
        let killed = tokio::time::Instant::now();
        let at_kill = c.stored().await;
        common::wait_until("the second gateway takes over", || async {
            c.stored().await > at_kill
        })
        .await;
        let takeover = killed.elapsed();
        wait_relayed(&c.pool, &c.ns).await;
        let seen = stream_sequences(&c.js, &c.stream).await;
        assert_complete_in_order(&seen, WRITES);
        // JetStream drops a resend inside its duplicate window (Nats-Msg-Id):
        // the stream holds each row once.
        assert_eq!(seen.len() as i64, WRITES, "a row stored twice");
        println!(
            "FAULT relay: the relaying gateway killed at {at_kill} of {WRITES} rows; the standby \
             published again {:.0} ms later; {} rows stored, each once",
            takeover.as_secs_f64() * 1000.0,
            seen.len()
        );
        drop(second);
        c.finish().await;
    });
}
