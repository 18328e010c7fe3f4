//! The tests' gateway: started in the test's process on a free loopback
//! port, with memory and SQLite backends only.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use prism::{
    config::GatewayConfig,
    server::{self, Gateway, Listeners},
};
use prism_client::Client;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// The API key of namespace `default`.
pub const KEY: &str = "client-test-key";
/// The API key of namespace `short`.
pub const SHORT_KEY: &str = "client-test-short-key";

/// A SQLite file of this test process's own.
fn sqlite_path() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join("prism-client-tests");
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let file = format!(
        "{}-{}.db",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    dir.join(file).display().to_string()
}

/// A gateway over memory and a SQLite file: `kv`, `jobs` (Queue),
/// `events` (PubSub), `orders` (Reader and Transact, with a relay of
/// mailbox `order-events` to PubSub topic `events.orders`); `short`, whose
/// sessions idle out after 600 ms unless heartbeats keep them; `limited`,
/// at 5 calls/s.
pub fn config() -> GatewayConfig {
    parse(&config_yaml())
}

/// [`config`]'s YAML, for tests that add to it.
pub fn config_yaml() -> String {
    let digest = prism::auth::api_key_digest(KEY);
    let short = prism::auth::api_key_digest(SHORT_KEY);
    let path = sqlite_path();
    format!(
        r#"
server:
  shutdown_grace: 1s
  supervision_interval: 100ms
backends:
  memory: {{ type: memory }}
  lite:
    type: sqlite
    path: {path}
    init_sql:
      - CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, amount REAL NOT NULL)
sessions:
  flush_interval: 100ms
namespaces:
  default:
    allowed_backends: [memory, lite]
    allowed_patterns: [key_value, queue, pubsub, reader, transact]
    collections:
      orders: {{ backend: lite, table: orders, id: id, default_page_size: 100, max_page_size: 1000 }}
    transact:
      tables:
        orders: {{ backend: lite, id: id }}
    relays:
      order-events:
        backend: lite
        mailbox: order-events
        to: {{ pubsub: {{ backend: memory, topic: events.orders }} }}
        poll_interval: 1s
    api_keys:
      - {{ name: test, sha256: "{digest}", roles: [admin] }}
  short:
    allowed_backends: [memory]
    allowed_patterns: [key_value]
    session: {{ idle_timeout: 600ms, max_lifetime: 1h, expiring_within: 100ms }}
    api_keys:
      - {{ name: short, sha256: "{short}", roles: [admin] }}
configs:
  kv: {{ namespace: default, pattern: key_value, backend: memory }}
  jobs: {{ namespace: default, pattern: queue, backend: memory }}
  events: {{ namespace: default, pattern: pubsub, backend: memory }}
  orders:
    namespace: default
    pattern: reader
    also: [transact]
    backend: lite
    options: {{ collection: orders, mailbox: order-events }}
  short: {{ namespace: short, pattern: key_value, backend: memory }}
  limited:
    namespace: default
    pattern: key_value
    backend: memory
    rate_limit: {{ requests_per_second: 5, burst: 1 }}
"#
    )
}

/// Parses and validates a gateway config.
pub fn parse(yaml: &str) -> GatewayConfig {
    let config = GatewayConfig::from_yaml(
        yaml,
        &prism::config::Source::Embedded,
        &prism::config::ProcessEnv,
    )
    .expect("the test config parses");
    let report = prism::config::validate::validate(&config);
    assert!(!report.has_failures(), "{}", report.failures_text());
    config
}

/// A gateway serving on `addr` until stopped.
pub struct Served {
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl Served {
    pub async fn start(listener: TcpListener) -> Served {
        Self::start_with(listener, config()).await
    }

    pub async fn start_with(listener: TcpListener, config: GatewayConfig) -> Served {
        let gateway = Arc::new(Gateway::start(config).expect("gateway starts"));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let listeners = Listeners {
                grpc: listener,
                admin: None,
            };
            let _ = server::run(gateway, listeners, async move {
                let _ = stopped.await;
            })
            .await;
        });
        Served { stop, server }
    }

    /// A gateway on the embedded default config (`prism-dev-key`, the
    /// `user-profiles` config, ...), its SQLite file in a temp dir.
    pub async fn embedded_on_free_port() -> (Served, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let path = sqlite_path();
        let vars = [("PRISM_SQLITE_PATH", path.as_str())];
        let config = GatewayConfig::embedded(&vars).expect("the embedded default parses");
        (Self::start_with(listener, config).await, addr)
    }

    pub async fn on_free_port() -> (Served, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (Self::start(listener).await, addr)
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
    }
}

pub fn run<F: std::future::Future>(test: F) -> F::Output {
    prism::runtime::block_on_multi_thread(test)
}

pub async fn client(addr: SocketAddr) -> Client {
    Client::connect(format!("http://{addr}"))
        .await
        .expect("the gateway is reachable")
}

/// A session with [`KEY`] and the named config.
pub async fn open(addr: SocketAddr, config: &str) -> prism_client::Session {
    client(addr)
        .await
        .session()
        .api_key(KEY)
        .config(config)
        .open()
        .await
        .expect("session opens")
}

/// Publishes probes to `topic` until one reaches a subscriber: the
/// subscription being waited on is then in place.
pub async fn until_subscribed(pubsub: &prism_client::PubSub, topic: &str) {
    for _ in 0..500 {
        let probe = pubsub
            .publish(topic, b"probe".to_vec())
            .await
            .expect("publish");
        if probe.subscriber_count > 0 {
            return;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no subscriber on {topic} after 500 probes");
}
