//! Reader paging benchmark (not a test): page 1 and page 500 of a
//! 100,000-row table through the gateway, by keyset cursor, on SQLite and
//! (when it answers at `DATABASE_URL`) Postgres. For contrast, the same
//! page by OFFSET (Query's `offset`). Reports median and p90 over
//! `PRISM_BENCH_RUNS` (default 30) fetches of one 100-row page.
//!
//! Run: `cargo bench --bench reader_paging`. Under `cargo test` it makes a
//! smoke run over 1,000 rows (page 10 instead of 500).

use std::time::Duration;

use futures::StreamExt;
use prism::{
    config::{GatewayConfig, Source},
    proto::{
        reader::v1::{self as pb, reader_service_client::ReaderServiceClient, sort::Direction},
        session::v1::{
            create_session_request::{Auth, Config},
            session_service_client::SessionServiceClient,
            CreateSessionRequest,
        },
    },
    runtime::block_on_multi_thread,
    server::{self, Gateway, Listeners},
};
use sqlx::AnyPool;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

const KEY: &str = "bench-key";
/// Rows in the table; a smoke run under `cargo test` (no --bench) uses
/// far fewer.
fn rows() -> i64 {
    if std::env::args().any(|a| a == "--bench") {
        100_000
    } else {
        1_000
    }
}
const PAGE: i32 = 100;

fn seed_sql(backend: &str, table: &str) -> Vec<String> {
    let rows = rows();
    let (create, fill) = match backend {
        "postgres" => (
            format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, name TEXT NOT NULL, score INTEGER NOT NULL)"),
            format!(
                "INSERT INTO {table} SELECT g, 'item-' || g, (g * 37) % 1009 FROM generate_series(1, {rows}) g"
            ),
        ),
        _ => (
            format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score INTEGER NOT NULL)"),
            format!(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) \
                 INSERT INTO {table} SELECT x, 'item-' || x, (x * 37) % 1009 FROM c"
            ),
        ),
    };
    vec![
        create,
        fill,
        format!("CREATE INDEX {table}_score ON {table} (score, id)"),
        // Planner statistics, as a table in service would have.
        format!("ANALYZE {table}"),
    ]
}

fn stats(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    format!(
        "median {:.2} ms, p90 {:.2} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3
    )
}

struct Bench {
    client: ReaderServiceClient<Channel>,
    token: String,
    collection: String,
}

impl Bench {
    fn read(&self, sort: &[pb::Sort], cursor: Option<String>) -> pb::ReadRequest {
        pb::ReadRequest {
            session_token: self.token.clone(),
            collection: self.collection.clone(),
            page_size: PAGE,
            cursor,
            sort: sort.to_vec(),
            ..Default::default()
        }
    }

    /// One page (the stream is dropped after it), and how long it took.
    async fn first_page(&self, req: pb::ReadRequest) -> (pb::Page, Duration) {
        let t = Instant::now();
        let mut stream = self.client.clone().read(req).await.unwrap().into_inner();
        let page = stream.message().await.unwrap().unwrap();
        (page, t.elapsed())
    }

    async fn offset_page(&self, sort: &[pb::Sort], offset: i32) -> Duration {
        let t = Instant::now();
        let rows: Vec<_> = self
            .client
            .clone()
            .query(pb::QueryRequest {
                session_token: self.token.clone(),
                collection: self.collection.clone(),
                sort: sort.to_vec(),
                limit: Some(PAGE),
                offset: Some(offset),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .collect()
            .await;
        assert_eq!(rows.len(), PAGE as usize);
        t.elapsed()
    }
}

fn main() {
    let runs: usize = std::env::var("PRISM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if rows() > 1_000 { 30 } else { 3 });
    block_on_multi_thread(async move {
        sqlx::any::install_default_drivers();
        let table = format!("prism_bench_{:08x}", rand::random::<u32>());
        let sqlite = std::env::temp_dir().join(format!("{table}.db"));
        let pg_url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let mut pools = vec![(
            "sqlite",
            AnyPool::connect(&format!("sqlite://{}?mode=rwc", sqlite.display()))
                .await
                .expect("sqlite"),
        )];
        match AnyPool::connect(&pg_url).await {
            Ok(pool) => pools.push(("postgres", pool)),
            Err(e) => println!("postgres skipped: {e}"),
        }
        for (b, pool) in &pools {
            for statement in seed_sql(b, &table) {
                sqlx::query(&statement).execute(pool).await.expect("seed");
            }
        }
        let backends: Vec<&str> = pools.iter().map(|(b, _)| *b).collect();
        let yaml = format!(
            r#"
backends:
  sqlite: {{ type: sqlite, path: "{sqlite}" }}
  postgres: {{ type: postgres, url: "{pg_url}" }}
namespaces:
  bench:
    allowed_backends: [sqlite, postgres]
    allowed_patterns: [reader]
    api_keys: [{{ name: bench, sha256: "{key}" }}]
    collections:
      rows_sqlite: {{ backend: sqlite, table: {table} }}
      rows_postgres: {{ backend: postgres, table: {table} }}
configs:
  sqlite: {{ namespace: bench, pattern: reader, backend: sqlite }}
  postgres: {{ namespace: bench, pattern: reader, backend: postgres }}
"#,
            sqlite = sqlite.display(),
            key = prism::auth::api_key_digest(KEY),
        );
        let config = GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gateway = std::sync::Arc::new(Gateway::start(config).expect("gateway starts"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(server::run(
            gateway,
            Listeners {
                grpc: listener,
                admin: None,
            },
            async move {
                let _ = stopped.await;
            },
        ));
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        println!("{} rows, pages of {PAGE}, {runs} runs each", rows());
        for b in backends {
            let token = SessionServiceClient::new(channel.clone())
                .create_session(CreateSessionRequest {
                    auth: Some(Auth::ApiKey(KEY.into())),
                    config: Some(Config::ConfigName(b.into())),
                    ..Default::default()
                })
                .await
                .expect("session")
                .into_inner()
                .session_token;
            let bench = Bench {
                client: ReaderServiceClient::new(channel.clone()),
                token,
                collection: format!("rows_{b}"),
            };
            for (label, sort) in [
                ("by id", vec![]),
                (
                    "by score desc",
                    vec![pb::Sort {
                        field: "score".into(),
                        direction: Direction::Desc as i32,
                    }],
                ),
            ] {
                // The cursor that ends page 499, read page by page once.
                let mut stream = bench
                    .client
                    .clone()
                    .read(bench.read(&sort, None))
                    .await
                    .unwrap()
                    .into_inner();
                let mut cursor = None;
                let deep_page = (rows() / i64::from(PAGE)).min(500) as i32;
                for _ in 0..deep_page - 1 {
                    cursor = stream.message().await.unwrap().unwrap().next_cursor;
                }
                drop(stream);
                let mut first = Vec::with_capacity(runs);
                let mut deep = Vec::with_capacity(runs);
                let mut offset = Vec::with_capacity(runs);
                for _ in 0..runs {
                    first.push(bench.first_page(bench.read(&sort, None)).await.1);
                    let (page, t) = bench.first_page(bench.read(&sort, cursor.clone())).await;
                    assert_eq!(page.metadata.unwrap().page_number, deep_page);
                    deep.push(t);
                    offset.push(bench.offset_page(&sort, (deep_page - 1) * PAGE).await);
                }
                println!("{b:8} {label:13} page 1:   {}", stats(first));
                println!(
                    "{b:8} {label:13} page {deep_page}: {} (keyset cursor)",
                    stats(deep)
                );
                println!(
                    "{b:8} {label:13} page {deep_page}: {} (OFFSET, for contrast)",
                    stats(offset)
                );
            }
        }
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        for (_, pool) in pools {
            let _ = sqlx::query(&format!("DROP TABLE {table}"))
                .execute(&pool)
                .await;
            pool.close().await;
        }
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", sqlite.display()));
        }
    });
}
