//! Transact benchmark (not a test): Write throughput on Postgres (a data
//! row and a mailbox row per Write, through the gateway's gRPC endpoint on
//! loopback) beside its baseline in the same run — the same two INSERTs in
//! one transaction sent straight to Postgres by as many clients, each on a
//! connection of its own — and commit-to-relay latency: from the moment a
//! Write returned (committed) to the moment its mailbox message, published
//! by the MailboxListenerActor, reached a consumer of the destination. The
//! write load runs once per destination: a PubSub topic on the memory
//! backend (read through the gateway), a NATS JetStream subject (read by a
//! core NATS subscriber) and a Kafka topic (read by an rdkafka consumer).
//!
//! Run: `cargo bench --bench transact_write` (needs Postgres, NATS and
//! Kafka; `DATABASE_URL`, `NATS_URL` and `KAFKA_BROKERS` override the
//! loopback defaults; `PRISM_BENCH_RELAYS=memory,nats,kafka` picks the
//! destinations; `PRISM_BENCH_JSON=<file>` also writes the figures as JSON,
//! which `scripts/loadtest.sh` turns into the README's table). Bounded in
//! count and time: `PRISM_BENCH_WRITES` (default
//! 5000), `PRISM_BENCH_WRITERS` (concurrent clients, default 16); each run
//! stops after 120 s whatever happens. Under `cargo test` it makes a small
//! smoke run (100 writes, 4 writers, the memory destination).

mod common;

use common::{connect, env, percentile, session, subscribe, Served};
use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use prism::{
    config::{GatewayConfig, Source},
    proto::transact::v1::{
        self as pb, data_write::WriteMode, transact_service_client::TransactServiceClient,
    },
    runtime::block_on_multi_thread,
};
use prost_types::{value::Kind as V, Value};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    message::{Headers, Message},
    ClientConfig,
};
use tokio::{sync::oneshot, task::JoinHandle, time::Instant};
use tonic::transport::Channel;

const KEY: &str = "bench-key";
const LIMIT: Duration = Duration::from_secs(120);

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_string())
}

fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// Where the relay publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Memory,
    Nats,
    Kafka,
}

impl Target {
    fn parse(name: &str) -> Target {
        match name.trim() {
            "memory" => Target::Memory,
            "nats" => Target::Nats,
            "kafka" => Target::Kafka,
            other => panic!("PRISM_BENCH_RELAYS: unknown destination `{other}`"),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Target::Memory => "a PubSub topic (memory backend)",
            Target::Nats => "a NATS JetStream subject",
            Target::Kafka => "a Kafka topic",
        }
    }

    /// The destination's name in the README's table.
    fn short(self) -> &'static str {
        match self {
            Target::Memory => "PubSub",
            Target::Nats => "NATS",
            Target::Kafka => "Kafka",
        }
    }

    /// The relay's `to:`.
    fn relay_to(self, run: &str) -> String {
        match self {
            Target::Memory => "{ pubsub: { backend: memory, topic: bench.orders } }".into(),
            Target::Nats => format!("{{ nats: {{ backend: nats, subject: bench.{run}.orders }} }}"),
            Target::Kafka => {
                format!("{{ kafka: {{ backend: kafka, topic: bench-{run}-orders }} }}")
            }
        }
    }
}

/// Where the Writes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Postgres,
    Sqlite,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::Postgres => "postgres",
            Store::Sqlite => "sqlite",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Store::Postgres => "Postgres",
            Store::Sqlite => "SQLite",
        }
    }

    /// The bench's own database file for SQLite runs.
    fn sqlite_path(run: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("prism-bench-{run}.db"))
    }

    fn url(self, run: &str) -> String {
        match self {
            Store::Postgres => database_url(),
            Store::Sqlite => format!("sqlite://{}?mode=rwc", Store::sqlite_path(run).display()),
        }
    }

    fn table_ddl(self, table: &str) -> String {
        match self {
            Store::Postgres => format!(
                "CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, customer TEXT NOT NULL, \
                 amount DOUBLE PRECISION NOT NULL)"
            ),
            Store::Sqlite => format!(
                "CREATE TABLE {table} (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, \
                 amount REAL NOT NULL)"
            ),
        }
    }
}

fn config(ns: &str, table: &str, run: &str, target: Target, store: Store) -> GatewayConfig {
    let yaml = format!(
        r#"
server: {{ shutdown_grace: 2s }}
backends:
  postgres: {{ type: postgres, url: "{pg}", pool: {{ max_connections: 32 }} }}
  sqlite: {{ type: sqlite, path: "{sqlite}" }}
  memory: {{ type: memory }}
  nats: {{ type: nats, url: "{nats}" }}
  kafka: {{ type: kafka, url: "{kafka}" }}
namespaces:
  {ns}:
    allowed_backends: [postgres, sqlite, memory, nats, kafka]
    allowed_patterns: [transact, pubsub]
    api_keys: [{{ name: bench, sha256: "{key}" }}]
    pubsub: {{ buffer: 100000, overflow: drop_oldest }}
    transact:
      tables:
        {table}: {{ backend: {store} }}
    relays:
      out:
        backend: {store}
        mailbox: bench
        to: {to}
        batch_size: 500
configs:
  orders: {{ namespace: {ns}, pattern: transact, backend: {store} }}
  events: {{ namespace: {ns}, pattern: pubsub, backend: memory }}
"#,
        pg = database_url(),
        sqlite = Store::sqlite_path(run).display(),
        store = store.name(),
        nats = nats_url(),
        kafka = kafka_brokers(),
        to = target.relay_to(run),
        key = prism::auth::api_key_digest(KEY)
    );
    GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).expect("bench config")
}

/// What one run measured.
struct Run {
    store: Store,
    target: Target,
    rate: f64,
    /// Write latencies, µs, sorted.
    writes: Vec<u64>,
    /// Commit-to-relay latencies, µs, sorted.
    relay: Vec<u64>,
    /// Messages that reached the consumer before their Write's answer
    /// reached the client.
    early: usize,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let writes = env("PRISM_BENCH_WRITES", if full { 5000 } else { 100 });
    let writers = env("PRISM_BENCH_WRITERS", if full { 16 } else { 4 }).max(1);
    let sqlite = std::env::var("PRISM_BENCH_SQLITE").map_or(full, |v| v != "0");
    let targets: Vec<Target> = std::env::var("PRISM_BENCH_RELAYS")
        .unwrap_or_else(|_| if full { "memory,nats,kafka" } else { "memory" }.to_string())
        .split(',')
        .map(Target::parse)
        .collect();
    block_on_multi_thread(async move {
        sqlx::any::install_default_drivers();
        let mut runs = Vec::new();
        let mut plan: Vec<(Store, Target)> =
            targets.iter().map(|t| (Store::Postgres, *t)).collect();
        if sqlite {
            plan.push((Store::Sqlite, Target::Memory));
        }
        for (store, target) in plan {
            let run = gateway_run(store, target, writes, writers).await;
            println!(
                "relayed to {}: {} writes from {writers} clients on {}: {:.0} writes/s; \
                 write latency p50 {:.2} ms, p99 {:.2} ms; commit-to-relay (Write returned -> \
                 consumer received) p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} arrived before \
                 their Write's answer)",
                target.describe(),
                run.writes.len(),
                store.describe(),
                run.rate,
                ms(percentile(&run.writes, 0.50)),
                ms(percentile(&run.writes, 0.99)),
                ms(percentile(&run.relay, 0.50)),
                ms(percentile(&run.relay, 0.99)),
                ms(percentile(&run.relay, 1.0)),
                run.early
            );
            runs.push(run);
        }
        let broker = if targets.contains(&Target::Kafka) {
            let latencies = kafka_direct(writes, writers).await;
            println!(
                "baseline, the broker alone: {} records from {writers} producers straight to \
                 Kafka, send to arrival p50 {:.2} ms, p99 {:.2} ms",
                latencies.len(),
                ms(percentile(&latencies, 0.50)),
                ms(percentile(&latencies, 0.99)),
            );
            Some(latencies)
        } else {
            None
        };
        let mut direct = Vec::new();
        for store in [Store::Postgres, Store::Sqlite] {
            if runs.iter().any(|r: &Run| r.store == store) {
                let rate = direct_baseline(store, writes, writers).await;
                println!(
                    "baseline, the same two INSERTs per transaction straight to {} from \
                     {writers} clients: {rate:.0} transactions/s",
                    store.describe()
                );
                direct.push((store, rate));
            }
        }
        let mut summary = Vec::new();
        for run in &runs {
            let Some((_, rate)) = direct.iter().find(|(s, _)| *s == run.store) else {
                continue;
            };
            println!(
                "gateway / direct on {}, relaying to {}: {:.2}x",
                run.store.describe(),
                run.target.describe(),
                run.rate / rate
            );
            summary.push(serde_json::json!({
                "store": run.store.describe(),
                "target": run.target.short(),
                "rate": run.rate,
                "direct": rate,
                "write_p50_ms": ms(percentile(&run.writes, 0.50)),
                "write_p99_ms": ms(percentile(&run.writes, 0.99)),
                "relay_p50_ms": ms(percentile(&run.relay, 0.50)),
                "relay_p99_ms": ms(percentile(&run.relay, 0.99)),
                "relay_max_ms": ms(percentile(&run.relay, 1.0)),
                "broker_p50_ms": broker.as_ref().filter(|_| run.target == Target::Kafka)
                    .map(|b| ms(percentile(b, 0.50))),
                "broker_p99_ms": broker.as_ref().filter(|_| run.target == Target::Kafka)
                    .map(|b| ms(percentile(b, 0.99))),
            }));
        }
        // For scripts/loadtest.sh, which writes the README's table.
        if let Ok(path) = std::env::var("PRISM_BENCH_JSON") {
            let doc = serde_json::json!({ "writes": writes, "writers": writers, "runs": summary });
            std::fs::write(&path, doc.to_string()).expect("the summary is written");
        }
    });
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// One gateway on a table and namespace of its own, relaying to `target`:
/// `writes` Writes from `writers` clients, each Write's commit time and
/// each message's arrival matched by mailbox sequence.
async fn gateway_run(store: Store, target: Target, writes: usize, writers: usize) -> Run {
    let run = format!("{:08x}", rand::random::<u32>());
    let ns = format!("bench{run}");
    let table = format!("prism_bench_tx_{run}");
    let pool = sqlx::AnyPool::connect(&store.url(&run))
        .await
        .expect("the database is reachable");
    sqlx::query(&store.table_ddl(&table))
        .execute(&pool)
        .await
        .unwrap();

    let served = Served::start(config(&ns, &table, &run, target, store)).await;
    let (gateway, addr) = (served.gateway.clone(), served.addr);
    let mut health = gateway
        .backends
        .get(store.name())
        .unwrap()
        .health
        .subscribe();
    tokio::time::timeout(
        Duration::from_secs(30),
        health.wait_for(|h| *h == prism::backends::HealthState::Up),
    )
    .await
    .expect("the database comes up")
    .expect("health is reported");
    let control = connect(addr).await;
    let orders = session(&control, KEY, "orders").await;
    let deadline = Instant::now() + LIMIT;
    let receiver = consume(target, &control, &run, writes, deadline).await;

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let channel = connect(addr).await;
        let token = orders.clone();
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = TransactServiceClient::new(channel);
            // (mailbox sequence, answered at, latency µs)
            let mut done = Vec::new();
            for i in (w..writes).step_by(writers) {
                if Instant::now() >= deadline {
                    break;
                }
                let t0 = Instant::now();
                let r = client
                    .write(write_request(&token, &table, i))
                    .await
                    .expect("write")
                    .into_inner();
                let at = Instant::now();
                let seq = r.mailbox_result.expect("a mailbox result").sequence;
                done.push((seq, at, at.duration_since(t0).as_micros() as u64));
            }
            done
        }));
    }
    let mut committed = std::collections::HashMap::with_capacity(writes);
    let mut latencies = Vec::with_capacity(writes);
    for t in tasks {
        for (seq, at, latency) in t.await.unwrap() {
            committed.insert(seq, at);
            latencies.push(latency);
        }
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    let arrived = receiver.await.unwrap();
    let mut relay = Vec::with_capacity(arrived.len());
    let mut early = 0;
    for (seq, at) in &arrived {
        match committed.get(seq) {
            Some(c) if at >= c => relay.push(at.duration_since(*c).as_micros() as u64),
            Some(_) => early += 1,
            None => panic!("sequence {seq} arrived but no Write was answered with it"),
        }
    }
    assert_eq!(
        relay.len() + early,
        latencies.len(),
        "every committed write was relayed to {}",
        target.describe()
    );
    latencies.sort_unstable();
    relay.sort_unstable();

    served.stop().await;
    let _ = sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await;
    for t in [
        "prism_mailbox",
        "prism_mailbox_sequence",
        "prism_relay_cursor",
    ] {
        let _ = sqlx::query(&format!("DELETE FROM {t} WHERE namespace = $1"))
            .bind(ns.as_str())
            .execute(&pool)
            .await;
    }
    pool.close().await;
    if store == Store::Sqlite {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", Store::sqlite_path(&run).display()));
        }
    }
    Run {
        store,
        target,
        rate,
        writes: latencies,
        relay,
        early,
    }
}

fn write_request(token: &str, table: &str, i: usize) -> pb::WriteRequest {
    pb::WriteRequest {
        session_token: token.to_string(),
        data: Some(pb::DataWrite {
            table: table.to_string(),
            record: [
                (
                    "customer".to_string(),
                    Value {
                        kind: Some(V::StringValue(format!("c{i}"))),
                    },
                ),
                (
                    "amount".to_string(),
                    Value {
                        kind: Some(V::NumberValue(i as f64)),
                    },
                ),
            ]
            .into(),
            mode: WriteMode::Insert as i32,
            id_field: None,
        }),
        mailbox: Some(pb::MailboxWrite {
            mailbox_id: "bench".into(),
            message: vec![0u8; 256],
            ..Default::default()
        }),
        options: None,
    }
}

/// A consumer of the relay's destination, ready before it returns: the
/// task ends with each message's (mailbox sequence, arrival) once
/// `expected` arrived or at `deadline`.
async fn consume(
    target: Target,
    control: &Channel,
    run: &str,
    expected: usize,
    deadline: Instant,
) -> JoinHandle<Vec<(i64, Instant)>> {
    match target {
        Target::Memory => {
            let events = session(control, KEY, "events").await;
            let mut sub = subscribe(control.clone(), events, "bench.orders", expected).await;
            tokio::spawn(async move {
                let mut arrived = Vec::with_capacity(expected);
                while let Ok(Ok(Some(event))) =
                    tokio::time::timeout_at(deadline, sub.message()).await
                {
                    let at = Instant::now();
                    arrived.push((event.metadata["prism-sequence"].parse().unwrap(), at));
                }
                arrived
            })
        }
        Target::Nats => {
            let client = async_nats::connect(nats_url())
                .await
                .expect("nats is reachable");
            let mut sub = client
                .subscribe(format!("bench.{run}.orders"))
                .await
                .expect("subscribe");
            client
                .flush()
                .await
                .expect("the subscription is registered");
            tokio::spawn(async move {
                let mut arrived = Vec::with_capacity(expected);
                while arrived.len() < expected {
                    let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await else {
                        break;
                    };
                    let at = Instant::now();
                    let seq = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("prism-sequence"))
                        .expect("a prism-sequence header")
                        .as_str()
                        .parse()
                        .unwrap();
                    arrived.push((seq, at));
                }
                drop(client);
                arrived
            })
        }
        Target::Kafka => {
            kafka_consumer(&format!("bench-{run}-orders"), run, expected, deadline).await
        }
    }
}

/// A Kafka consumer of `topic` (made here, one partition), assigned before
/// it returns: the task ends with each message's (`prism-sequence` header,
/// arrival) once `expected` arrived or at `deadline`.
async fn kafka_consumer(
    topic: &str,
    run: &str,
    expected: usize,
    deadline: Instant,
) -> JoinHandle<Vec<(i64, Instant)>> {
    create_topic(topic).await;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", format!("bench-{run}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .set("socket.nagle.disable", "true")
        .create()
        .expect("a kafka consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let consumer = Arc::new(consumer);
    let (ready, assigned) = oneshot::channel();
    let task = {
        let consumer = consumer.clone();
        tokio::spawn(async move {
            let mut ready = Some(ready);
            let mut arrived = Vec::with_capacity(expected);
            while arrived.len() < expected {
                let poll = tokio::time::timeout(Duration::from_millis(50), consumer.recv());
                if ready.is_some() && consumer.assignment().is_ok_and(|a| a.count() > 0) {
                    let _ = ready.take().map(|r| r.send(()));
                }
                if Instant::now() >= deadline {
                    break;
                }
                let Ok(m) = poll.await else { continue };
                let m = m.expect("a kafka message");
                let at = Instant::now();
                let seq = m
                    .headers()
                    .and_then(|h| {
                        h.iter()
                            .find(|h| h.key == "prism-sequence")
                            .and_then(|h| h.value)
                    })
                    .map(|v| String::from_utf8_lossy(v).parse().unwrap())
                    .expect("a prism-sequence header");
                arrived.push((seq, at));
            }
            arrived
        })
    };
    tokio::time::timeout(Duration::from_secs(30), assigned)
        .await
        .expect("the consumer is assigned the topic")
        .expect("the consumer runs");
    task
}

/// The broker alone, the physical limit commit-to-relay on Kafka is read
/// against: `messages` records from `producers` concurrent senders, each
/// awaiting its delivery before sending the next, with the relay's
/// producer settings, read by the consumer the relay runs are read by.
/// Latencies from send to arrival, µs, sorted.
async fn kafka_direct(messages: usize, producers: usize) -> Vec<u64> {
    use rdkafka::{
        message::{Header, OwnedHeaders},
        producer::{FutureProducer, FutureRecord},
    };
    let run = format!("{:08x}", rand::random::<u32>());
    let topic = format!("bench-{run}-direct");
    let deadline = Instant::now() + LIMIT;
    let receiver = kafka_consumer(&topic, &run, messages, deadline).await;
    // As src/backends/kafka.rs makes the relay's producer.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "1")
        .set("socket.nagle.disable", "true")
        .create()
        .expect("a kafka producer");
    let mut tasks = Vec::with_capacity(producers);
    for p in 0..producers {
        let (producer, topic) = (producer.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            let payload = [0u8; 256];
            let mut sent = Vec::new();
            for i in (p..messages).step_by(producers) {
                if Instant::now() >= deadline {
                    break;
                }
                let seq = i.to_string();
                let headers = OwnedHeaders::new().insert(Header {
                    key: "prism-sequence",
                    value: Some(seq.as_bytes()),
                });
                let record = FutureRecord::<str, [u8]>::to(&topic)
                    .key("bench")
                    .payload(&payload[..])
                    .headers(headers);
                let t0 = Instant::now();
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| e)
                    .expect("the broker takes the record");
                sent.push((i as i64, t0));
            }
            sent
        }));
    }
    let mut started = std::collections::HashMap::with_capacity(messages);
    for t in tasks {
        started.extend(t.await.unwrap());
    }
    let arrived = receiver.await.unwrap();
    let mut latencies: Vec<u64> = arrived
        .iter()
        .filter_map(|(seq, at)| {
            started
                .get(seq)
                .map(|t0| at.duration_since(*t0).as_micros() as u64)
        })
        .collect();
    assert_eq!(latencies.len(), started.len(), "every record sent arrived");
    latencies.sort_unstable();
    latencies
}

/// Makes a one-partition topic, so the consumer can be assigned it before
/// the first Write.
async fn create_topic(topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()
        .expect("a kafka admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("kafka is reachable");
    for r in results {
        r.expect("the topic is made");
    }
}

/// Transactions per second of `writers` clients, each on a connection of
/// its own, inserting what a Write inserts (the data row; a 256-byte
/// message row) in one transaction each: the physical limit a Write is
/// measured against. SQLite connections get the gateway's settings (WAL,
/// synchronous NORMAL, a 5 s busy timeout).
async fn direct_baseline(store: Store, writes: usize, writers: usize) -> f64 {
    use sqlx::Connection as _;
    let run = format!("{:08x}", rand::random::<u32>());
    let table = format!("prism_bench_direct_{run}");
    let outbox = format!("{table}_outbox");
    let connect = || async {
        let mut conn = sqlx::AnyConnection::connect(&store.url(&run))
            .await
            .expect("the database is reachable");
        if store == Store::Sqlite {
            for pragma in [
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = NORMAL",
                "PRAGMA busy_timeout = 5000",
            ] {
                sqlx::query(pragma).execute(&mut conn).await.unwrap();
            }
        }
        conn
    };
    let mut admin = connect().await;
    sqlx::query(&store.table_ddl(&table))
        .execute(&mut admin)
        .await
        .unwrap();
    let (id, bytes) = match store {
        Store::Postgres => ("BIGSERIAL", "BYTEA"),
        Store::Sqlite => ("INTEGER", "BLOB"),
    };
    sqlx::query(&format!(
        "CREATE TABLE {outbox} (id {id} PRIMARY KEY, mailbox_id TEXT NOT NULL, \
         message {bytes} NOT NULL)"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let deadline = Instant::now() + LIMIT;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let (table, outbox) = (table.clone(), outbox.clone());
        let mut conn = connect().await;
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            for i in (w..writes).step_by(writers) {
                if Instant::now() >= deadline {
                    break;
                }
                let mut tx = conn.begin().await.unwrap();
                sqlx::query(&format!(
                    "INSERT INTO {table} (customer, amount) VALUES ($1, $2)"
                ))
                .bind(format!("d{i}"))
                .bind(i as f64)
                .execute(&mut *tx)
                .await
                .unwrap();
                sqlx::query(&format!(
                    "INSERT INTO {outbox} (mailbox_id, message) VALUES ($1, $2)"
                ))
                .bind("bench")
                .bind(vec![0u8; 256])
                .execute(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
                done += 1;
            }
            done
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap();
    }
    let rate = done as f64 / started.elapsed().as_secs_f64();
    for t in [&outbox, &table] {
        let _ = sqlx::query(&format!("DROP TABLE {t}"))
            .execute(&mut admin)
            .await;
    }
    drop(admin);
    if store == Store::Sqlite {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", Store::sqlite_path(&run).display()));
        }
    }
    rate
}
