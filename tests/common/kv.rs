//! KeyValue test harness: a gateway with one KeyValue config per backend
//! (memory, SQLite, Postgres, Redis — real servers on loopback) in two fresh
//! namespaces, so every run starts from empty data, and a small client.

use std::time::Duration;

use prism::{
    backends::{BackendKind, HealthState, Interface},
    config::{GatewayConfig, Source},
    proto::keyvalue::v1::{self as pb, key_value_service_client::KeyValueServiceClient},
};
use tonic::{transport::Channel, Status};

use super::{api_key_request, TestGateway, OTHER_KEY, TEST_KEY};

/// The backends every acceptance test runs against, with their config names.
pub const BACKENDS: [(&str, BackendKind); 4] = [
    ("memory", BackendKind::Memory),
    ("sqlite", BackendKind::Sqlite),
    ("postgres", BackendKind::Postgres),
    ("redis", BackendKind::Redis),
];

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

pub fn run_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Pool settings that notice failures and recover quickly in tests.
pub const FAST_POOL: &str =
    "{ connect_timeout: 1s, health_interval: 200ms, backoff_initial: 50ms, backoff_max: 500ms, sweep_interval: 200ms }";

/// A config with namespaces `kv<run>` (key test-key) and `kv<run>.o` (key
/// other-key; the first's name prefixes it) and, per backend, configs
/// `<backend>` and `<backend>-other`.
pub fn kv_config(run: &str, postgres_url: &str, redis_url: &str) -> GatewayConfig {
    let sqlite = std::env::temp_dir().join(format!("prism-kv-{run}.db"));
    let ns = format!("kv{run}");
    let other = format!("kv{run}.o");
    let mut configs = String::new();
    for (name, _) in BACKENDS {
        configs.push_str(&format!(
            "  {name}: {{ namespace: {ns}, pattern: key_value, backend: {name} }}\n  \
             {name}-other: {{ namespace: {other}, pattern: key_value, backend: {name} }}\n"
        ));
    }
    let yaml = format!(
        r#"
server:
  shutdown_grace: 5s
  supervision_interval: 100ms
  actor_threads: 2
backends:
  memory: {{ type: memory, pool: {FAST_POOL} }}
  sqlite: {{ type: sqlite, path: "{sqlite}", pool: {FAST_POOL} }}
  postgres: {{ type: postgres, url: "{postgres_url}", pool: {FAST_POOL} }}
  redis: {{ type: redis, url: "{redis_url}", pool: {FAST_POOL} }}
  events-kafka: {{ type: kafka, url: "127.0.0.1:9092" }}
namespaces:
  {ns}:
    allowed_backends: [memory, sqlite, postgres, redis]
    allowed_patterns: [key_value, queue]
    api_keys: [{{ name: test, sha256: "{test}" }}]
  {other}:
    allowed_backends: [memory, sqlite, postgres, redis]
    allowed_patterns: [key_value]
    api_keys: [{{ name: other, sha256: "{other_key}" }}]
configs:
{configs}
"#,
        sqlite = sqlite.display(),
        test = prism::auth::api_key_digest(TEST_KEY),
        other_key = prism::auth::api_key_digest(OTHER_KEY),
    );
    GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).expect("kv config parses")
}

pub struct Harness {
    pub gw: TestGateway,
}

/// The SQLite file a config's `sqlite` backend uses.
fn sqlite_path(config: &GatewayConfig) -> Option<std::path::PathBuf> {
    config.backends.get("sqlite").and_then(|b| b.path.clone())
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(kv_config(&run_id(), &database_url(), &redis_url())).await
    }

    pub async fn start_with(config: GatewayConfig) -> Self {
        let gw = TestGateway::start_with(config).await;
        let h = Harness { gw };
        for (name, _) in BACKENDS {
            h.wait_health(name, HealthState::Up).await;
        }
        h
    }

    /// Waits (bounded) for a backend's pool actor to report `state`.
    pub async fn wait_health(&self, backend: &str, state: HealthState) {
        let b = self.gw.gateway.backends.get(backend).expect("backend");
        let mut rx = b.health.subscribe();
        let waited =
            tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| *s == state)).await;
        assert!(
            waited.is_ok(),
            "backend {backend} did not become {state:?}; last error: {:?}",
            b.health.last_error()
        );
    }

    /// The backends implementing `interface`; prints why others are skipped.
    pub fn backends(&self, interface: Interface) -> Vec<&'static str> {
        BACKENDS
            .iter()
            .filter_map(|(name, kind)| {
                if kind.has(interface) {
                    Some(*name)
                } else {
                    println!("skipping {name}: the {kind} backend does not implement {interface}");
                    None
                }
            })
            .collect()
    }

    /// A client on a fresh session of `config` (in the test namespace).
    pub async fn client(&self, config: &str) -> Kv {
        self.client_as(TEST_KEY, config).await
    }

    pub async fn client_as(&self, api_key: &str, config: &str) -> Kv {
        let session = self
            .gw
            .sessions()
            .create_session(api_key_request(api_key, config))
            .await
            .unwrap_or_else(|e| panic!("session for {config}: {e:?}"))
            .into_inner();
        Kv {
            client: kv_client(self.gw.channel.clone()),
            token: session.session_token,
            backend: config.to_string(),
        }
    }

    /// Deletes what the test wrote to the shared servers (its namespaces
    /// are its own), stops the gateway and removes its SQLite file.
    pub async fn stop(self) {
        for (name, _) in BACKENDS {
            if !self
                .gw
                .gateway
                .backends
                .get(name)
                .is_some_and(|b| b.health.is_up())
            {
                continue; // an outage test's backend may be gone
            }
            for (key, config) in [
                (TEST_KEY, name.to_string()),
                (OTHER_KEY, format!("{name}-other")),
            ] {
                let kv = self.client_as(key, &config).await;
                let keys: Vec<String> = kv.scan_keys("", 10_000).await;
                for chunk in keys.chunks(1000) {
                    kv.client
                        .clone()
                        .batch_delete(pb::BatchDeleteRequest {
                            session_token: kv.token.clone(),
                            keys: chunk.to_vec(),
                            idempotency_token: None,
                        })
                        .await
                        .unwrap_or_else(|e| panic!("{config}: cleanup: {e:?}"));
                }
            }
        }
        let sqlite = sqlite_path(&self.gw.gateway.config.load());
        self.gw.stop().await;
        if let Some(path) = sqlite {
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.clone().into_os_string();
                file.push(suffix);
                let _ = tokio::fs::remove_file(file).await;
            }
        }
    }
}

/// A client that accepts messages as large as the gateway's limit.
pub fn kv_client(channel: Channel) -> KeyValueServiceClient<Channel> {
    KeyValueServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

pub fn ms(d: &prost_types::Duration) -> i64 {
    d.seconds * 1000 + i64::from(d.nanos) / 1_000_000
}

pub fn dur(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

pub fn token(id: &str) -> pb::IdempotencyToken {
    pb::IdempotencyToken {
        id: id.to_string(),
        generated_at: Some(std::time::SystemTime::now().into()),
    }
}

/// A session-bound client with shorthand for the common calls.
#[derive(Clone)]
pub struct Kv {
    pub client: KeyValueServiceClient<Channel>,
    pub token: String,
    /// The config (= backend) name, for assertion messages.
    pub backend: String,
}

impl Kv {
    pub async fn set(&self, key: &str, value: &[u8]) -> Result<pb::SetResponse, Status> {
        self.set_req(pb::SetRequest {
            key: key.into(),
            value: value.to_vec(),
            ..Default::default()
        })
        .await
    }

    pub async fn set_ttl(
        &self,
        key: &str,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<pb::SetResponse, Status> {
        self.set_req(pb::SetRequest {
            key: key.into(),
            value: value.to_vec(),
            ttl: Some(dur(ttl_ms)),
            ..Default::default()
        })
        .await
    }

    pub async fn set_req(&self, mut req: pb::SetRequest) -> Result<pb::SetResponse, Status> {
        req.session_token = self.token.clone();
        self.client.clone().set(req).await.map(|r| r.into_inner())
    }

    pub async fn get(&self, key: &str) -> Result<pb::GetResponse, Status> {
        self.client
            .clone()
            .get(pb::GetRequest {
                session_token: self.token.clone(),
                key: key.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// The value, or None when the key is absent.
    pub async fn value(&self, key: &str) -> Option<Vec<u8>> {
        let got = self
            .get(key)
            .await
            .unwrap_or_else(|e| panic!("{}: get {key}: {e:?}", self.backend));
        got.found.then_some(got.value)
    }

    pub async fn delete(&self, key: &str) -> Result<pb::DeleteResponse, Status> {
        self.client
            .clone()
            .delete(pb::DeleteRequest {
                session_token: self.token.clone(),
                key: key.into(),
                idempotency_token: None,
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn exists(&self, key: &str) -> bool {
        self.client
            .clone()
            .exists(pb::ExistsRequest {
                session_token: self.token.clone(),
                key: key.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{}: exists {key}: {e:?}", self.backend))
            .into_inner()
            .exists
    }

    /// One Scan call: (key, value, cursor) items.
    pub async fn scan(&self, prefix: &str, limit: u32, cursor: &str) -> Vec<pb::ScanResponse> {
        let mut stream = self
            .client
            .clone()
            .scan(pb::ScanRequest {
                session_token: self.token.clone(),
                prefix: prefix.into(),
                limit,
                cursor: cursor.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{}: scan: {e:?}", self.backend))
            .into_inner();
        let mut out = Vec::new();
        while let Some(item) = stream
            .message()
            .await
            .unwrap_or_else(|e| panic!("{}: scan stream: {e:?}", self.backend))
        {
            out.push(item);
        }
        out
    }

    /// Every key under `prefix`, up to `limit`.
    pub async fn scan_keys(&self, prefix: &str, limit: u32) -> Vec<String> {
        let mut stream = self
            .client
            .clone()
            .scan_keys(pb::ScanKeysRequest {
                session_token: self.token.clone(),
                prefix: prefix.into(),
                limit,
                cursor: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("{}: scan keys: {e:?}", self.backend))
            .into_inner();
        let mut out = Vec::new();
        while let Some(item) = stream
            .message()
            .await
            .unwrap_or_else(|e| panic!("{}: scan keys stream: {e:?}", self.backend))
        {
            out.push(item.key);
        }
        out
    }

    pub async fn transaction(
        &self,
        operations: Vec<pb::Operation>,
    ) -> Result<pb::TransactionResponse, Status> {
        self.client
            .clone()
            .transaction(pb::TransactionRequest {
                session_token: self.token.clone(),
                operations,
                idempotency_token: None,
            })
            .await
            .map(|r| r.into_inner())
    }
}

pub fn put_op(
    key: &str,
    value: &[u8],
    precondition: Option<pb::precondition::Condition>,
) -> pb::Operation {
    pb::Operation {
        key: key.into(),
        action: Some(pb::operation::Action::Put(pb::Put {
            value: value.to_vec(),
            ttl: None,
        })),
        precondition: precondition.map(|c| pb::Precondition { condition: Some(c) }),
    }
}

pub fn delete_op(key: &str) -> pb::Operation {
    pb::Operation {
        key: key.into(),
        action: Some(pb::operation::Action::Delete(pb::Remove {})),
        precondition: None,
    }
}
