//! Transact benchmark (not a test): Write throughput on Postgres (a data
//! row and a mailbox row per Write, through the gateway's gRPC endpoint on
//! loopback) beside its baseline in the same run — the same two INSERTs in
//! one transaction sent straight to Postgres by as many clients, each on a
//! connection of its own — and commit-to-relay latency: from the moment a
//! Write returned (committed) to the moment its mailbox message, relayed by
//! the MailboxListenerActor to a PubSub topic on the memory backend,
//! reached a subscriber.
//!
//! Run: `cargo bench --bench transact_write` (needs Postgres; `DATABASE_URL`
//! overrides the default loopback URL). Bounded in count and time:
//! `PRISM_BENCH_WRITES` (default 5000), `PRISM_BENCH_WRITERS` (concurrent
//! clients, default 16); the run stops after 120 s whatever happens. Under
//! `cargo test` it makes a small smoke run (100 writes, 4 writers).

mod common;

use common::{connect, env, percentile};
use std::{collections::HashMap, sync::Arc, time::Duration};

use parking_lot::Mutex;
use prism::{
    config::{GatewayConfig, Source},
    proto::{
        pubsub::v1::{self as ps, pub_sub_service_client::PubSubServiceClient},
        session::v1::{
            create_session_request::{Auth, Config},
            session_service_client::SessionServiceClient,
            CreateSessionRequest,
        },
        transact::v1::{
            self as pb, data_write::WriteMode, transact_service_client::TransactServiceClient,
        },
    },
    runtime::block_on_multi_thread,
    server::{self, Gateway, Listeners},
};
use prost_types::{value::Kind as V, Value};
use tokio::time::Instant;
use tonic::transport::Channel;

const KEY: &str = "bench-key";
const LIMIT: Duration = Duration::from_secs(120);

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

fn config(ns: &str, table: &str) -> GatewayConfig {
    let yaml = format!(
        r#"
server: {{ shutdown_grace: 2s }}
backends:
  postgres: {{ type: postgres, url: "{pg}", pool: {{ max_connections: 32 }} }}
  memory: {{ type: memory }}
namespaces:
  {ns}:
    allowed_backends: [postgres, memory]
    allowed_patterns: [transact, pubsub]
    api_keys: [{{ name: bench, sha256: "{key}" }}]
    pubsub: {{ buffer: 100000, overflow: drop_oldest }}
    transact:
      tables:
        {table}: {{ backend: postgres }}
    relays:
      out:
        backend: postgres
        mailbox: bench
        to: {{ pubsub: {{ backend: memory, topic: bench.orders }} }}
        batch_size: 500
configs:
  orders: {{ namespace: {ns}, pattern: transact, backend: postgres }}
  events: {{ namespace: {ns}, pattern: pubsub, backend: memory }}
"#,
        pg = database_url(),
        key = prism::auth::api_key_digest(KEY)
    );
    GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).expect("bench config")
}

async fn session(channel: &Channel, config: &str) -> String {
    SessionServiceClient::new(channel.clone())
        .create_session(CreateSessionRequest {
            auth: Some(Auth::ApiKey(KEY.into())),
            config: Some(Config::ConfigName(config.into())),
            ..Default::default()
        })
        .await
        .expect("session")
        .into_inner()
        .session_token
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let writes = env("PRISM_BENCH_WRITES", if full { 5000 } else { 100 });
    let writers = env("PRISM_BENCH_WRITERS", if full { 16 } else { 4 }).max(1);
    block_on_multi_thread(async move {
        let run = format!("{:08x}", rand::random::<u32>());
        let ns = format!("bench{run}");
        let table = format!("prism_bench_tx_{run}");
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&database_url())
            .await
            .expect("postgres is reachable");
        sqlx::query(&format!(
            "CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, customer TEXT NOT NULL, \
             amount DOUBLE PRECISION NOT NULL)"
        ))
        .execute(&pool)
        .await
        .unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gateway = Arc::new(Gateway::start(config(&ns, &table)).expect("gateway starts"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(server::run(
            gateway.clone(),
            Listeners {
                grpc: listener,
                admin: None,
            },
            async move {
                let _ = stopped.await;
            },
        ));
        let mut health = gateway.backends.get("postgres").unwrap().health.subscribe();
        tokio::time::timeout(
            Duration::from_secs(30),
            health.wait_for(|h| *h == prism::backends::HealthState::Up),
        )
        .await
        .expect("postgres comes up")
        .expect("health is reported");
        let control = connect(addr).await;
        let orders = session(&control, "orders").await;
        let events = session(&control, "events").await;
        let mut sub = PubSubServiceClient::new(control.clone())
            .subscribe(ps::SubscribeRequest {
                session_token: events,
                topic_pattern: "bench.orders".into(),
                options: Some(ps::SubscriptionOptions {
                    max_messages: Some(writes as i32),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("subscribe")
            .into_inner();

        // Commit times by mailbox sequence; the subscriber looks them up.
        let committed: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
        let deadline = Instant::now() + LIMIT;
        let receiver = {
            let committed = committed.clone();
            tokio::spawn(async move {
                let mut relay = Vec::with_capacity(writes);
                let mut early = Vec::new();
                while let Ok(Ok(Some(event))) =
                    tokio::time::timeout_at(deadline, sub.message()).await
                {
                    let now = Instant::now();
                    let seq: i64 = event.metadata["prism-sequence"].parse().unwrap();
                    match committed.lock().get(&seq) {
                        Some(t) => relay.push(now.duration_since(*t).as_micros() as u64),
                        // Relayed before the Write's answer reached us.
                        None => early.push(seq),
                    }
                }
                (relay, early.len())
            })
        };

        let started = Instant::now();
        let mut tasks = Vec::with_capacity(writers);
        for w in 0..writers {
            let channel = connect(addr).await;
            let token = orders.clone();
            let table = table.clone();
            let committed = committed.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = TransactServiceClient::new(channel);
                let mut latencies = Vec::new();
                for i in (w..writes).step_by(writers) {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let t0 = Instant::now();
                    let r = client
                        .write(pb::WriteRequest {
                            session_token: token.clone(),
                            data: Some(pb::DataWrite {
                                table: table.clone(),
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
                        })
                        .await
                        .expect("write")
                        .into_inner();
                    let done = Instant::now();
                    let seq = r.mailbox_result.expect("a mailbox result").sequence;
                    committed.lock().insert(seq, done);
                    latencies.push(done.duration_since(t0).as_micros() as u64);
                }
                latencies
            }));
        }
        let mut write_latency = Vec::with_capacity(writes);
        for t in tasks {
            write_latency.extend(t.await.unwrap());
        }
        let elapsed = started.elapsed().as_secs_f64();
        let (mut relay, early) = receiver.await.unwrap();
        write_latency.sort_unstable();
        relay.sort_unstable();
        println!(
            "{} writes from {writers} clients on Postgres in {elapsed:.2}s: {:.0} writes/s",
            write_latency.len(),
            write_latency.len() as f64 / elapsed
        );
        println!(
            "write latency: p50 {:.2} ms, p99 {:.2} ms",
            percentile(&write_latency, 0.50) as f64 / 1000.0,
            percentile(&write_latency, 0.99) as f64 / 1000.0
        );
        println!(
            "commit-to-relay (Write returned -> subscriber received): p50 {:.2} ms, p99 {:.2} ms, \
             max {:.2} ms; {} relayed ({early} arrived before their Write's answer)",
            percentile(&relay, 0.50) as f64 / 1000.0,
            percentile(&relay, 0.99) as f64 / 1000.0,
            percentile(&relay, 1.0) as f64 / 1000.0,
            relay.len() + early
        );
        assert_eq!(
            relay.len() + early,
            write_latency.len(),
            "every committed write was relayed"
        );

        let _ = stop.send(());
        let _ = server.await;

        let direct = direct_baseline(&table, writes, writers).await;
        println!(
            "baseline, the same two INSERTs per transaction straight to Postgres from {writers} \
             clients: {direct:.0} transactions/s; the gateway's Writes are {:.2}x of it",
            write_latency.len() as f64 / elapsed / direct
        );
        let _ = sqlx::query(&format!("DROP TABLE {table}"))
            .execute(&pool)
            .await;
        for t in ["prism_mailbox", "prism_mailbox_sequence"] {
            let _ = sqlx::query(&format!("DELETE FROM {t} WHERE namespace = $1"))
                .bind(ns.as_str())
                .execute(&pool)
                .await;
        }
    });
}

/// Transactions per second of `writers` clients, each on a connection of
/// its own, inserting what a Write inserts (the data row; a 256-byte
/// message row) in one transaction each: the physical limit a Write is
/// measured against.
async fn direct_baseline(table: &str, writes: usize, writers: usize) -> f64 {
    use sqlx::Connection as _;
    let outbox = format!("{table}_direct");
    let mut admin = sqlx::postgres::PgConnection::connect(&database_url())
        .await
        .expect("postgres is reachable");
    sqlx::query(&format!(
        "CREATE TABLE {outbox} (id BIGSERIAL PRIMARY KEY, mailbox_id TEXT NOT NULL, \
         message BYTEA NOT NULL)"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let deadline = Instant::now() + LIMIT;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let (table, outbox) = (table.to_string(), outbox.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = sqlx::postgres::PgConnection::connect(&database_url())
                .await
                .expect("postgres is reachable");
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
    let _ = sqlx::query(&format!("DROP TABLE {outbox}"))
        .execute(&mut admin)
        .await;
    rate
}
