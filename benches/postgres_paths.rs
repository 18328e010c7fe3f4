//! Reader, Queue and KeyValue on Postgres (not a test): a Reader page (Read
//! of a 100-row collection in one page) and a Queue Publish (1 KiB) through
//! the gateway's gRPC endpoint on loopback, each beside the equivalent SQL sent
//! straight to Postgres in the same run by as many clients, each on a
//! connection of its own (sqlx, the driver the gateway uses). The direct
//! Reader client runs the statement the gateway runs for that page and
//! decodes its rows; the direct Queue client takes the partition's next
//! offset and inserts the message in one statement, as the gateway does
//! once the topic is known (both on topics of four partitions, messages
//! spread over them). Then a KeyValue Get (1 KiB values, 1,000 keys read
//! in turn) through a config with a look-aside cache in the gateway beside
//! the same Gets through an uncached config of the same namespace, in the
//! same run (the cache warmed by one pass over the keys first).
//!
//! Run: `cargo bench --bench postgres_paths` (needs Postgres at
//! `DATABASE_URL`, default the loopback one). Bounded in count and time:
//! `PRISM_BENCH_CALLS` (default 10,000 per measure), `PRISM_BENCH_CLIENTS`
//! (default 16); each measure stops after 60 s whatever happens.
//! `PRISM_BENCH_JSON=<file>` also writes the figures as JSON, which
//! `scripts/loadtest.sh` turns into the README's table. Under `cargo test`
//! it makes a small smoke run (200 calls, 4 clients).

mod common;

use common::{connect, env, percentile, session, Served};
use std::time::Duration;

use prism::{
    config::{GatewayConfig, Source},
    proto::{
        keyvalue::v1::{self as kv, key_value_service_client::KeyValueServiceClient},
        queue::v1::{self as q, queue_service_client::QueueServiceClient},
        reader::v1::{self as r, reader_service_client::ReaderServiceClient},
    },
    runtime::block_on_multi_thread,
};
use sqlx::{Connection as _, Row as _};
use tokio::time::Instant;
use tonic::transport::Channel;

const KEY: &str = "bench-key";
const LIMIT: Duration = Duration::from_secs(60);
const ROWS: i64 = 100;
const PAYLOAD: usize = 1024;
/// Partitions of the Queue topics, gateway's and direct.
const PARTITIONS: i32 = 4;
/// Keys the KeyValue Gets go over.
const KEYS: usize = 1000;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

fn is_bench() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// One side of a measure: calls per second and latency percentiles.
#[derive(Debug, Clone, Copy)]
struct Figures {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Figures {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "rate": self.rate, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms })
    }
}

/// Runs `calls` calls over `clients` concurrent clients (client `c` makes
/// every `clients`-th call; a call takes its client and gives it back),
/// each call timed; stops at [`LIMIT`].
async fn drive<C, F, Fut>(clients: Vec<C>, calls: usize, call: F) -> Figures
where
    C: Send + 'static,
    F: Fn(C, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = C> + Send,
{
    let n = clients.len();
    let deadline = Instant::now() + LIMIT;
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut client)| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut times = Vec::new();
                for i in (c..calls).step_by(n) {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let t = Instant::now();
                    client = call(client, i).await;
                    times.push(t.elapsed().as_micros() as u64);
                }
                times
            })
        })
        .collect();
    let mut times = Vec::with_capacity(calls);
    for t in tasks {
        times.extend(t.await.expect("a client ran"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    times.sort_unstable();
    Figures {
        rate: times.len() as f64 / elapsed,
        p50_ms: percentile(&times, 0.5) as f64 / 1e3,
        p99_ms: percentile(&times, 0.99) as f64 / 1e3,
    }
}

fn config(table: &str) -> GatewayConfig {
    let yaml = format!(
        r#"
server: {{ shutdown_grace: 2s }}
backends:
  # A statement lane per client (the default is 4): a lone Publish or page
  # then skips the ping sqlx sends as a pooled connection goes back.
  postgres: {{ type: postgres, url: "{pg}", pool: {{ max_connections: 32, statement_lanes: 16 }} }}
namespaces:
  bench:
    allowed_backends: [postgres]
    allowed_patterns: [reader, queue, key_value]
    api_keys: [{{ name: bench, sha256: "{key}" }}]
    collections:
      rows: {{ backend: postgres, table: {table} }}
configs:
  reader: {{ namespace: bench, pattern: reader, backend: postgres }}
  kv: {{ namespace: bench, pattern: key_value, backend: postgres }}
  kv-cached:
    namespace: bench
    pattern: key_value
    backend: postgres
    cache: {{ enabled: true, strategy: look_aside, ttl: 10m, max_entries: 10000, max_bytes: 67108864 }}
  queue:
    namespace: bench
    pattern: queue
    backend: postgres
    options: {{ partitions: "{PARTITIONS}" }}
"#,
        pg = database_url(),
        key = prism::auth::api_key_digest(KEY)
    );
    GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).expect("bench config")
}

/// Connections to the gateway, one per four clients (as a client library
/// multiplexes), and a client for each.
async fn gateway_clients<T>(
    addr: std::net::SocketAddr,
    clients: usize,
    client: impl Fn(Channel) -> T,
) -> Vec<T> {
    let mut channels = Vec::new();
    for _ in 0..clients.div_ceil(4) {
        channels.push(connect(addr).await);
    }
    (0..clients)
        .map(|c| client(channels[c % channels.len()].clone()))
        .collect()
}

async fn direct_clients(clients: usize) -> Vec<sqlx::AnyConnection> {
    let mut out = Vec::with_capacity(clients);
    for _ in 0..clients {
        out.push(
            sqlx::AnyConnection::connect(&database_url())
                .await
                .expect("Postgres is reachable"),
        );
    }
    out
}

/// The statement the gateway runs for the first page of the collection
/// (`sql_reader::rows`: every column read in a dialect-neutral form, the
/// key first, one row more than the page to know whether another follows).
fn page_sql(table: &str) -> String {
    format!(
        "SELECT CAST(\"id\" AS BIGINT) AS prism_c0, CAST(\"id\" AS BIGINT) AS prism_c1, \
         CAST(\"name\" AS TEXT) AS prism_c2, CAST(\"score\" AS BIGINT) AS prism_c3 \
         FROM \"{table}\" ORDER BY \"id\" ASC LIMIT $1 OFFSET $2"
    )
}

/// Takes a partition's next offset and appends the message, in one
/// statement (the one the gateway's Postgres queue runs for a known topic).
const APPEND: &str = "WITH o AS (UPDATE prism_queue_partitions SET next_offset = next_offset + 1 \
     WHERE namespace = $1 AND topic = $2 AND partition = $3 RETURNING next_offset - 1 AS off) \
     INSERT INTO prism_queue_messages \
     (namespace, topic, partition, msg_offset, payload, headers, ts) \
     SELECT $1, $2, $3, o.off, $4, $5, $6 FROM o RETURNING msg_offset";

fn main() {
    let (calls, clients) = if is_bench() {
        (
            env("PRISM_BENCH_CALLS", 10_000),
            env("PRISM_BENCH_CLIENTS", 16),
        )
    } else {
        (200, 4)
    };
    block_on_multi_thread(async move {
        sqlx::any::install_default_drivers();
        let run = format!("{:08x}", rand::random::<u32>());
        let table = format!("prism_bench_rows_{run}");
        let mut admin = sqlx::AnyConnection::connect(&database_url())
            .await
            .expect("Postgres is reachable");
        for statement in [
            format!(
                "CREATE TABLE {table} (id BIGINT PRIMARY KEY, name TEXT NOT NULL, \
                 score INTEGER NOT NULL)"
            ),
            format!(
                "INSERT INTO {table} SELECT g, 'item-' || g, (g * 37) % 1009 \
                 FROM generate_series(1, {ROWS}) g"
            ),
            format!("ANALYZE {table}"),
        ] {
            sqlx::query(&statement).execute(&mut admin).await.unwrap();
        }
        let served = Served::start(config(&table)).await;
        let admin_channel = connect(served.addr).await;
        println!("{calls} calls per measure, {clients} clients");
        let mut summary = serde_json::Map::new();

        // A Reader page: the whole 100-row collection in one page.
        let token = session(&admin_channel, KEY, "reader").await;
        let readers = gateway_clients(served.addr, clients, ReaderServiceClient::new).await;
        let gateway = drive(readers, calls, move |mut client, _| {
            let token = token.clone();
            async move {
                let mut pages = client
                    .read(r::ReadRequest {
                        session_token: token,
                        collection: "rows".into(),
                        page_size: ROWS as i32,
                        ..Default::default()
                    })
                    .await
                    .expect("Read")
                    .into_inner();
                let page = pages.message().await.expect("a page").expect("one page");
                assert_eq!(page.rows.len(), ROWS as usize);
                client
            }
        })
        .await;
        let sql = page_sql(&table);
        let direct = drive(direct_clients(clients).await, calls, move |mut conn, _| {
            let sql = sql.clone();
            async move {
                // Rows decoded into values, as the gateway decodes them.
                let rows = sqlx::query(&sql)
                    .bind(ROWS + 1)
                    .bind(0i64)
                    .fetch_all(&mut conn)
                    .await
                    .expect("the page");
                let decoded: Vec<(i64, String, i64)> = rows
                    .iter()
                    .map(|row| (row.get(1), row.get(2), row.get(3)))
                    .collect();
                assert_eq!(decoded.len(), ROWS as usize);
                conn
            }
        })
        .await;
        report(
            &mut summary,
            "reader_page",
            "Reader page (100 rows)",
            gateway,
            direct,
        );

        // A Queue Publish of 1 KiB to a topic that exists (the gateway's
        // first Publish creates it and its partitions).
        let token = session(&admin_channel, KEY, "queue").await;
        let topic = format!("bench.{run}");
        let publishers = gateway_clients(served.addr, clients, QueueServiceClient::new).await;
        let payload = vec![7u8; PAYLOAD];
        let publish = {
            let (token, topic, payload) = (token.clone(), topic.clone(), payload.clone());
            move |mut client: QueueServiceClient<Channel>, _: usize| {
                let request = q::PublishRequest {
                    session_token: token.clone(),
                    topic: topic.clone(),
                    payload: payload.clone(),
                    ..Default::default()
                };
                async move {
                    client.publish(request).await.expect("Publish");
                    client
                }
            }
        };
        publish(publishers[0].clone(), 0).await;
        // Direct first: its table is the smaller one then.
        let direct_topic = format!("bench.direct.{run}");
        for statement in [
            format!(
                "INSERT INTO prism_queue_topics (namespace, topic, partitions) \
                 VALUES ('bench', '{direct_topic}', {PARTITIONS})"
            ),
            format!(
                "INSERT INTO prism_queue_partitions (namespace, topic, partition, next_offset) \
                 SELECT 'bench', '{direct_topic}', p, 0 FROM generate_series(0, {PARTITIONS} - 1) p"
            ),
        ] {
            sqlx::query(&statement).execute(&mut admin).await.unwrap();
        }
        let direct = drive(direct_clients(clients).await, calls, move |mut conn, i| {
            let (topic, payload) = (direct_topic.clone(), payload.clone());
            let partition = (i % PARTITIONS as usize) as i32;
            async move {
                // To the statement's end, commit included, as the gateway
                // reads it.
                let rows = sqlx::query(APPEND)
                    .bind("bench")
                    .bind(topic)
                    .bind(partition)
                    .bind(payload)
                    .bind("{}")
                    .bind(i as i64)
                    .fetch_all(&mut conn)
                    .await
                    .expect("the append");
                assert_eq!(rows.len(), 1);
                conn
            }
        })
        .await;
        let gateway = drive(publishers, calls, publish).await;
        report(
            &mut summary,
            "queue_publish",
            "Queue Publish 1 KiB",
            gateway,
            direct,
        );

        // KeyValue Gets, cached config beside uncached, same keys.
        let token = session(&admin_channel, KEY, "kv").await;
        let mut writer = KeyValueServiceClient::new(admin_channel.clone());
        let keys: Vec<String> = (0..KEYS).map(|i| format!("bench/{run}/{i}")).collect();
        for key in &keys {
            writer
                .set(kv::SetRequest {
                    session_token: token.clone(),
                    key: key.clone(),
                    value: vec![9u8; PAYLOAD],
                    ..Default::default()
                })
                .await
                .expect("Set");
        }
        let get = |token: String, keys: Vec<String>| {
            move |mut client: KeyValueServiceClient<Channel>, i: usize| {
                let request = kv::GetRequest {
                    session_token: token.clone(),
                    key: keys[i % keys.len()].clone(),
                };
                async move {
                    let got = client.get(request).await.expect("Get").into_inner();
                    assert_eq!(got.value.len(), PAYLOAD);
                    client
                }
            }
        };
        let uncached_clients =
            gateway_clients(served.addr, clients, KeyValueServiceClient::new).await;
        let uncached = drive(uncached_clients, calls, get(token.clone(), keys.clone())).await;
        let cached_token = session(&admin_channel, KEY, "kv-cached").await;
        let cached_clients =
            gateway_clients(served.addr, clients, KeyValueServiceClient::new).await;
        let warm = get(cached_token.clone(), keys.clone());
        for i in 0..KEYS {
            warm(cached_clients[0].clone(), i).await;
        }
        let cached = drive(cached_clients, calls, get(cached_token, keys.clone())).await;
        let figures = served
            .gateway
            .kv_caches
            .figures()
            .into_iter()
            .find(|f| f.config == "kv-cached")
            .expect("the cache");
        let hit_rate = figures.lru.hits as f64 / (figures.lru.hits + figures.lru.misses) as f64;
        println!(
            "KV Get 1 KiB on Postgres: cached {:.0}/s (p50 {:.2} ms, p99 {:.2} ms), uncached \
             {:.0}/s (p50 {:.2} ms, p99 {:.2} ms): {:.2}x; hit rate {:.3}",
            cached.rate,
            cached.p50_ms,
            cached.p99_ms,
            uncached.rate,
            uncached.p50_ms,
            uncached.p99_ms,
            cached.rate / uncached.rate,
            hit_rate
        );
        summary.insert(
            "kv_get_cached".to_string(),
            serde_json::json!({
                "name": "KV Get 1 KiB, 1,000 keys",
                "cached": cached.json(),
                "uncached": uncached.json(),
                "hit_rate": hit_rate,
            }),
        );

        served.stop().await;
        for statement in [
            format!("DELETE FROM prism_kv WHERE namespace = 'bench' AND key LIKE 'bench/{run}/%'"),
            format!("DROP TABLE {table}"),
            format!("DELETE FROM prism_queue_messages WHERE namespace = 'bench' AND topic LIKE 'bench.%{run}'"),
            format!("DELETE FROM prism_queue_partitions WHERE namespace = 'bench' AND topic LIKE 'bench.%{run}'"),
            format!("DELETE FROM prism_queue_topics WHERE namespace = 'bench' AND topic LIKE 'bench.%{run}'"),
        ] {
            let _ = sqlx::query(&statement).execute(&mut admin).await;
        }
        if let Ok(path) = std::env::var("PRISM_BENCH_JSON") {
            let doc = serde_json::json!({ "calls": calls, "clients": clients, "runs": summary });
            std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap())
                .expect("JSON written");
        }
    });
}

fn report(
    summary: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
    name: &str,
    gateway: Figures,
    direct: Figures,
) {
    println!(
        "{name}: gateway {:.0}/s (p50 {:.2} ms, p99 {:.2} ms), direct SQL {:.0}/s \
         (p50 {:.2} ms, p99 {:.2} ms): {:.2}x",
        gateway.rate,
        gateway.p50_ms,
        gateway.p99_ms,
        direct.rate,
        direct.p50_ms,
        direct.p99_ms,
        gateway.rate / direct.rate
    );
    summary.insert(
        key.to_string(),
        serde_json::json!({ "name": name, "gateway": gateway.json(), "direct": direct.json() }),
    );
}
