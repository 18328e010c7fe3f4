//! Test harness: starts the gateway in-process on 127.0.0.1:0 and talks real
//! gRPC to it.

#![allow(dead_code)]

pub mod kv;
pub mod outbox;
pub mod serve;
pub mod servers;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use prism::{
    config::{GatewayConfig, Source},
    error::Service,
    proto::session::v1::{
        create_session_request::{Auth, Config},
        session_service_client::SessionServiceClient,
        CreateSessionRequest, CreateSessionResponse,
    },
    server::{self, Gateway, Listeners, ServeError},
    session::SessionEvent,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    transport::{Channel, ClientTlsConfig, Endpoint},
    Code, Status,
};
use tonic_types::StatusExt;

pub const TEST_KEY: &str = "test-key";
pub const OTHER_KEY: &str = "other-key";
pub const HS256_SECRET: &str = "test-hs256-secret-that-is-long-enough-123";
pub const ISSUER: &str = "https://issuer.test";
pub const RS_ISSUER: &str = "https://rs-issuer.test";
pub const AUDIENCE: &str = "prism";

fn digest(key: &str) -> String {
    prism::auth::api_key_digest(key)
}

/// The admin token of [`test_config`].
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The gateway configuration the tests run against.
pub fn test_config_yaml() -> String {
    let public_key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt_rs256_public.pem"
    );
    format!(
        r#"
server:
  shutdown_grace: 5s
  supervision_interval: 100ms
  actor_threads: 2
  admin_token: {ADMIN_TOKEN}
backends:
  memory: {{ type: memory }}
  local-sqlite: {{ type: sqlite, path: prism-data/test.db }}
  events-kafka: {{ type: kafka, url: "127.0.0.1:9092" }}
namespaces:
  default:
    allowed_backends: [memory, local-sqlite, events-kafka]
    allowed_patterns: [key_value, queue, pubsub, reader, transact]
    session:
      idle_timeout: 10m
      max_lifetime: 1h
      expiring_within: 1m
      close_drain_timeout: 10s
      max_restarts: 3
    api_keys:
      - {{ name: test, sha256: "{test}", roles: [admin] }}
  other:
    allowed_backends: [memory]
    allowed_patterns: [key_value]
    session:
      idle_timeout: 10m
      max_lifetime: 1h
      close_drain_timeout: 100ms
    api_keys:
      - {{ name: other, sha256: "{other}" }}
configs:
  user-profiles: {{ namespace: default, pattern: key_value, backend: memory }}
  orders-db: {{ namespace: default, pattern: reader, also: [transact], backend: local-sqlite }}
  other-kv: {{ namespace: other, pattern: key_value, backend: memory }}
  admins-only: {{ namespace: default, pattern: key_value, backend: memory, roles: [admin] }}
  writers-only: {{ namespace: default, pattern: key_value, backend: memory, roles: [writer] }}
auth:
  jwt:
    - issuer: {ISSUER}
      audience: {AUDIENCE}
      algorithm: HS256
      secret: {HS256_SECRET}
      namespace_claim: ns
    - issuer: {RS_ISSUER}
      audience: {AUDIENCE}
      algorithm: RS256
      public_key_file: {public_key}
      leeway: 0s
      namespaces: [default]
"#,
        test = digest(TEST_KEY),
        other = digest(OTHER_KEY),
    )
}

pub fn test_config() -> GatewayConfig {
    GatewayConfig::from_yaml(&test_config_yaml(), &Source::Inline, &[("_", "_"); 0])
        .expect("test config parses")
}

/// A gateway served on an ephemeral loopback port.
pub struct TestGateway {
    pub addr: SocketAddr,
    /// The admin HTTP listener.
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), ServeError>>,
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: GatewayConfig) -> Self {
        Self::start_inner(config, prism::server::reload::Origin::inline(), None).await
    }

    /// A gateway on the config in `file`, which a reload reads again.
    pub async fn start_from_file(file: &std::path::Path) -> Self {
        let config = GatewayConfig::load_validated(Some(file), &prism::config::ProcessEnv)
            .expect("the config file loads");
        let origin = prism::server::reload::Origin {
            source: prism::config::Source::File(file.to_path_buf()),
            listen: None,
            admin_listen: None,
        };
        Self::start_inner(config, origin, None).await
    }

    /// A gateway with TLS configured, reached over TLS.
    pub async fn start_tls(config: GatewayConfig, client: ClientTlsConfig) -> Self {
        Self::start_inner(
            config,
            prism::server::reload::Origin::inline(),
            Some(client),
        )
        .await
    }

    /// Another connection to the same gateway (e.g. with another certificate).
    pub async fn connect_tls(&self, client: ClientTlsConfig) -> Channel {
        Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(client)
            .unwrap()
            .connect()
            .await
            .expect("tls connect to gateway")
    }

    async fn start_inner(
        config: GatewayConfig,
        origin: prism::server::reload::Origin,
        tls: Option<ClientTlsConfig>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let admin = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let admin_addr = admin.local_addr().unwrap();
        let gateway = Arc::new(Gateway::start_from(config, origin).expect("gateway starts"));
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(server::run(
            gateway.clone(),
            Listeners {
                grpc: listener,
                admin: Some(admin),
            },
            async move {
                let _ = rx.await;
            },
        ));
        let channel = match tls {
            None => Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .expect("connect to gateway"),
            Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .expect("tls connect to gateway"),
        };
        TestGateway {
            addr,
            admin_addr,
            gateway,
            channel,
            shutdown: Some(tx),
            server,
        }
    }

    /// Another connection whose HTTP/2 windows (stream and connection) hold
    /// `window` bytes: what its client does not read stays in the gateway.
    pub async fn narrow_channel(&self, window: u32) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .initial_stream_window_size(window)
            .initial_connection_window_size(window)
            .connect()
            .await
            .expect("connect to gateway")
    }

    /// A gRPC connection to the admin listener (AdminService lives there).
    pub async fn admin_channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.admin_addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to the admin listener")
    }

    pub fn sessions(&self) -> SessionServiceClient<Channel> {
        SessionServiceClient::new(self.channel.clone())
    }

    /// Sends the shutdown signal; returns the server's task to await.
    pub fn begin_shutdown(&mut self) -> &mut JoinHandle<Result<(), ServeError>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        &mut self.server
    }

    pub async fn stop(mut self) {
        let server = self.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server ran cleanly");
    }

    /// Waits (bounded) for the server to stop by itself, without asking it
    /// to; what it returned.
    pub async fn stopped(mut self) -> Result<(), ServeError> {
        let server = &mut self.server;
        tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("server stops in time")
            .expect("server task")
    }

    /// Waits (bounded) until backend `name` is up; a backend without a
    /// client, or an unknown name, needs no wait.
    pub async fn wait_backend_up(&self, name: &str) {
        let Some(b) = self
            .gateway
            .backends
            .get(name)
            .filter(|b| b.client.is_some())
        else {
            return;
        };
        let mut health = b.health.subscribe();
        let up = tokio::time::timeout(
            Duration::from_secs(30),
            health.wait_for(|h| *h == prism::backends::HealthState::Up),
        )
        .await;
        assert!(
            matches!(up, Ok(Ok(_))),
            "backend {name} did not come up; last error: {:?}",
            b.health.last_error()
        );
    }

    /// Opens a session with the test API key and an inline config:
    /// `pattern` on backend `backend`.
    pub async fn open_inline(
        &self,
        pattern: prism::proto::config::v1::AccessPattern,
        backend: &str,
    ) -> CreateSessionResponse {
        self.sessions()
            .create_session(inline_request(TEST_KEY, pattern, backend))
            .await
            .expect("create session")
            .into_inner()
    }

    /// A PubSub Subscribe stream on `pattern`, in place when this returns.
    pub async fn subscribe(
        &self,
        token: &str,
        pattern: &str,
    ) -> tonic::Streaming<prism::proto::pubsub::v1::Event> {
        use prism::proto::pubsub::v1 as ps;
        ps::pub_sub_service_client::PubSubServiceClient::new(self.channel.clone())
            .subscribe(ps::SubscribeRequest {
                session_token: token.to_string(),
                topic_pattern: pattern.to_string(),
                ..Default::default()
            })
            .await
            .expect("subscribe")
            .into_inner()
    }

    /// Opens a session with the test API key and the named config.
    pub async fn open(&self, config_name: &str) -> CreateSessionResponse {
        self.sessions()
            .create_session(api_key_request(TEST_KEY, config_name))
            .await
            .expect("create session")
            .into_inner()
    }

    /// Waits (bounded) for a session event matching `pred`.
    pub async fn wait_event(
        events: &mut tokio::sync::broadcast::Receiver<SessionEvent>,
        pred: impl Fn(&SessionEvent) -> bool,
    ) -> SessionEvent {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match events.recv().await {
                    Ok(e) if pred(&e) => return e,
                    Ok(_) => continue,
                    Err(e) => panic!("event stream ended: {e}"),
                }
            }
        })
        .await
        .expect("event arrives in time")
    }
}

/// A CreateSession with an API key and an inline config: `pattern` on the
/// configured backend `backend`.
pub fn inline_request(
    key: &str,
    pattern: prism::proto::config::v1::AccessPattern,
    backend: &str,
) -> CreateSessionRequest {
    use prism::proto::config::v1 as cfg;
    CreateSessionRequest {
        auth: Some(Auth::ApiKey(key.to_string())),
        config: Some(Config::InlineConfig(cfg::ClientConfig {
            pattern: pattern as i32,
            backend: Some(cfg::BackendConfig {
                name: backend.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub fn api_key_request(key: &str, config_name: &str) -> CreateSessionRequest {
    CreateSessionRequest {
        auth: Some(Auth::ApiKey(key.to_string())),
        config: Some(Config::ConfigName(config_name.to_string())),
        client_id: "test-client".to_string(),
        client_version: "1.0.0".to_string(),
        ..Default::default()
    }
}

/// Asserts a status's code and ErrorInfo reason and domain.
pub fn assert_error(status: &Status, code: Code, reason: &str, service: Service) {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "unexpected reason in {status:?}");
    assert_eq!(info.domain, service.domain());
    assert!(
        status
            .message()
            .chars()
            .next()
            .is_some_and(|c| !c.is_uppercase()),
        "messages are lowercase: {}",
        status.message()
    );
}

/// A request carrying the session token only in the `x-session-token` header.
pub fn with_token_header<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-session-token", token.parse().expect("ascii token"));
    request
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after
/// 60 s. For states with no event to wait on (a database row count, a node
/// in the actor tree).
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

/// One HTTP/1.1 request to `addr` (the admin listener): status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let (status, _, body) = http_with_head(addr, method, path, headers).await;
    (status, body)
}

/// [`http`], with the response's head (status line and headers) too.
pub async fn http_with_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "chunked bodies are not read here"
    );
    (status, head.to_string(), body.to_string())
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `prism serve` (this package's binary) as a child process; see
/// [`serve::spawn_serve`].
pub async fn spawn_serve(
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &std::ffi::OsStr)],
) -> (tokio::process::Child, String) {
    serve::spawn_serve(env!("CARGO_BIN_EXE_prism").as_ref(), args, envs).await
}

/// [`spawn_serve`], with the child's log lines.
pub async fn spawn_serve_logged(
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &std::ffi::OsStr)],
) -> (
    tokio::process::Child,
    String,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    serve::spawn_serve_logged(env!("CARGO_BIN_EXE_prism").as_ref(), args, envs).await
}

/// Parses the OpenMetrics text of `/metrics` strictly enough to catch a
/// malformed line: every sample belongs to a family with HELP and TYPE (a
/// counter's samples end in `_total`), label sets are well quoted, values
/// are numbers. Returns sample → value. (tests/exposition.rs checks the
/// whole text with a real parser.)
pub fn parse_exposition(text: &str) -> std::collections::HashMap<String, f64> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "bad type: {line}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line == "# EOF" || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name: {line}"
        );
        if let Some(l) = series.strip_prefix(name) {
            if !l.is_empty() {
                assert!(l.starts_with('{') && l.ends_with('}'), "bad labels: {line}");
                for pair in l[1..l.len() - 1].split("\",") {
                    let (k, v) = pair.split_once("=\"").expect("label k=\"v\"");
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(!v.trim_end_matches('"').contains('"') || v.contains("\\\""));
                }
            }
        }
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample without TYPE: {line}");
        samples.insert(series.to_string(), value);
    }
    samples
}

/// The admin listener's `/metrics` text (fetched with the admin token).
pub async fn metrics_text(admin: SocketAddr) -> String {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, body) = http(admin, "GET", "/metrics", &[("Authorization", &auth)]).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Scrapes the admin listener's `/metrics`: sample → value.
pub async fn scrape_metrics(admin: SocketAddr) -> std::collections::HashMap<String, f64> {
    parse_exposition(&metrics_text(admin).await)
}

/// Deletes what Queue tests left on the shared servers for these
/// namespaces: their Postgres queue rows and NATS streams.
pub async fn forget_queue_namespaces(namespaces: &[String]) {
    sqlx::any::install_default_drivers();
    if let Ok(pool) = sqlx::AnyPool::connect(&kv::database_url()).await {
        for ns in namespaces {
            for table in [
                "prism_queue_deliveries",
                "prism_queue_groups",
                "prism_queue_messages",
                "prism_queue_partitions",
                "prism_queue_topics",
            ] {
                let _ = sqlx::query(&format!("DELETE FROM {table} WHERE namespace = $1"))
                    .bind(ns.as_str())
                    .execute(&pool)
                    .await;
            }
        }
        pool.close().await;
    }
    if let Ok(client) = async_nats::connect(
        std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
    )
    .await
    {
        use futures::StreamExt;
        let js = async_nats::jetstream::new(client);
        let names: Vec<String> = js
            .stream_names()
            .filter_map(|n| async move { n.ok() })
            .collect()
            .await;
        for name in names.into_iter().filter(|n| n.starts_with("PRISM_")) {
            if let Ok(mut stream) = js.get_stream(&name).await {
                let mine = stream.info().await.is_ok_and(|i| {
                    i.config.subjects.iter().any(|s| {
                        namespaces
                            .iter()
                            .any(|ns| s.starts_with(&format!("prism.{}.", ns.replace('.', "~"))))
                    })
                });
                if mine {
                    let _ = js.delete_stream(&name).await;
                }
            }
        }
    }
}
