//! Gateway configuration: the YAML schema, loading with environment
//! overrides, and the embedded default (`config/prism.yaml`).
//!
//! Server configuration (backends, namespaces, credentials) is the operator's;
//! client configurations (named here, or sent inline) say which pattern and
//! backend a session uses. See `resolve` for how the two meet.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

pub use crate::backends::{relay::RelayTarget, BackendSpec, PoolSpec};
use crate::backends::{BackendKind, Interface};

pub mod claim_check;
pub mod layers;
pub mod options;
pub mod policy;
pub mod resolve;
pub mod sessions;
pub mod tls;
pub mod validate;

/// The configuration compiled into the binary, used when no file is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/prism.yaml");

/// Where configuration came from, for messages.
#[derive(Debug, Clone)]
pub enum Source {
    Embedded,
    File(PathBuf),
    Inline,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Embedded => f.write_str("embedded default config"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Inline => f.write_str("inline config"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: environment variable {var} is not set; set it or give a default as ${{{var}:-value}}")]
    MissingEnv { source_name: String, var: String },
    #[error("{source_name} is invalid:\n{report}")]
    Invalid { source_name: String, report: String },
}

/// The whole gateway configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub backends: BTreeMap<String, BackendSpec>,
    pub namespaces: BTreeMap<String, NamespaceSpec>,
    #[serde(default)]
    pub configs: BTreeMap<String, NamedConfigSpec>,
    #[serde(default)]
    pub auth: AuthSpec,
    #[serde(default)]
    pub limits: Limits,
    /// The audit log's sink and PII fields.
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// Where sessions live: this process (one instance) or a store the
    /// instances of a cluster share.
    #[serde(default)]
    pub sessions: sessions::StoreConfig,
    /// Where namespaces with a `claim_check` keep large payloads.
    #[serde(default)]
    pub object_stores: BTreeMap<String, crate::backends::blob::ObjectStoreSpec>,
}

/// The running configuration, shared by what reads it after start; a
/// config reload replaces it with what it applied.
pub type LiveConfig = std::sync::Arc<arc_swap::ArcSwap<GatewayConfig>>;

/// Limits on what clients may send to the data APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest value a key may hold (default 4 MiB).
    pub max_value_bytes: usize,
    /// Longest key, in bytes of UTF-8.
    pub max_key_bytes: usize,
    /// Most operations in one batch or transaction.
    pub max_batch_ops: usize,
    /// Largest gRPC request message; must exceed `max_value_bytes`.
    pub max_message_bytes: usize,
    /// How long a write's idempotency token is remembered (and how old a
    /// token may be).
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// How long a Transaction stream may stay open before its
    /// BeginTransaction (then DEADLINE_EXCEEDED `BEGIN_TIMEOUT`).
    #[serde(with = "humantime_serde")]
    pub transaction_begin_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 4 * 1024 * 1024,
            max_key_bytes: 1024,
            max_batch_ops: 1000,
            max_message_bytes: 16 * 1024 * 1024,
            idempotency_window: Duration::from_secs(3600),
            transaction_begin_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address (health and readiness).
    pub admin_listen: SocketAddr,
    /// How long in-flight calls may run after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Arbiter threads for actors; absent = one per core, 0 = run actors on
    /// the calling thread (tests with paused time).
    pub actor_threads: Option<usize>,
    /// How often supervisors check that their children are alive and making
    /// progress.
    #[serde(with = "humantime_serde")]
    pub supervision_interval: Duration,
    /// Restarts of a backend pool actor, an outbox relay or a namespace
    /// supervisor before its supervisor gives up on it (a pool is then
    /// reported down, a relay stopped; a namespace supervisor stops the
    /// gateway). Sessions have their own: `session.max_restarts`.
    pub max_restarts: u32,
    /// TLS for the gRPC listener; with `client_ca_file`, mutual TLS.
    pub tls: Option<TlsSpec>,
    /// Key that signs Reader cursors; gateways sharing one accept each
    /// other's cursors. Absent: a random key per process.
    pub cursor_secret: Option<String>,
    /// The admin token: the admin listener's endpoints (all but `/healthz`
    /// and the page's HTML) and its AdminService require it, in a header.
    /// Absent: they are refused.
    pub admin_token: Option<String>,
    /// OTLP/gRPC endpoint to export traces to (e.g. http://127.0.0.1:4317);
    /// absent: `OTEL_EXPORTER_OTLP_ENDPOINT`, else nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// How client connections to the gRPC port are held.
    pub connections: ConnectionLimits,
    /// What is logged, as `RUST_LOG` directives (`info`,
    /// `warn,prism=debug`); `RUST_LOG`, when set, is used instead. Absent:
    /// `info`. Changes on a config reload.
    pub log_level: Option<String>,
}

/// What one client connection may hold, and how dead ones are found.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// gRPC connections open at once; further clients wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
    /// HTTP/2 streams open at once on one connection; further ones wait.
    pub max_concurrent_streams: u32,
    /// Bytes of one request's header list (metadata included).
    pub max_header_list_bytes: u32,
    /// A ping every this long on an idle connection...
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// ...that must be answered within this, or the connection is closed.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// A new connection must send its first bytes, and finish its TLS
    /// handshake, within this, or it is closed.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Connections are closed after this long (after their streams end,
    /// within `shutdown_grace`), so clients spread over replicas again;
    /// absent: never.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            max_concurrent_streams: 256,
            max_header_list_bytes: 16 * 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_age: None,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:8980".parse().expect("valid default address"),
            admin_listen: "127.0.0.1:8981".parse().expect("valid default address"),
            shutdown_grace: Duration::from_secs(10),
            actor_threads: None,
            supervision_interval: Duration::from_secs(1),
            max_restarts: 100,
            tls: None,
            cursor_secret: None,
            admin_token: None,
            otlp_endpoint: None,
            connections: ConnectionLimits::default(),
            log_level: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA that signs client certificates; enables mTLS when set.
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are looked at for new content (a rotated
    /// certificate is used for new connections from then on); `0s`: only
    /// on a config reload.
    #[serde(default = "TlsSpec::default_watch_interval", with = "humantime_serde")]
    pub watch_interval: Duration,
}

impl TlsSpec {
    fn default_watch_interval() -> Duration {
        Duration::from_secs(10)
    }
}

/// An access pattern, i.e. which client API a config is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    #[serde(alias = "keyvalue")]
    KeyValue,
    Queue,
    Pubsub,
    Reader,
    Transact,
    Cache,
}

impl Pattern {
    pub const ALL: [Pattern; 6] = [
        Pattern::KeyValue,
        Pattern::Queue,
        Pattern::Pubsub,
        Pattern::Reader,
        Pattern::Transact,
        Pattern::Cache,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Pattern::KeyValue => "key_value",
            Pattern::Queue => "queue",
            Pattern::Pubsub => "pubsub",
            Pattern::Reader => "reader",
            Pattern::Transact => "transact",
            Pattern::Cache => "cache",
        }
    }

    /// The interfaces every backend serving this pattern must implement.
    pub fn base_interfaces(self) -> &'static [Interface] {
        match self {
            Pattern::KeyValue => &[Interface::KeyValueBasic],
            Pattern::Queue => &[Interface::QueueBasic],
            Pattern::Pubsub => &[Interface::PubSubBasic],
            Pattern::Reader => &[Interface::ReaderPaged],
            Pattern::Transact => &[Interface::TransactOutbox],
            Pattern::Cache => &[Interface::CacheBasic],
        }
    }

    /// Whether this build serves the pattern's gRPC API. A pattern's base
    /// interfaces are only enforced once it is served; until then a session
    /// for it opens but its API answers `UNIMPLEMENTED`.
    pub fn served(self) -> bool {
        match self {
            Pattern::KeyValue
            | Pattern::Queue
            | Pattern::Pubsub
            | Pattern::Reader
            | Pattern::Transact
            | Pattern::Cache => true,
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    #[serde(default)]
    pub description: String,
    /// Backend names sessions of this namespace may use.
    pub allowed_backends: Vec<String>,
    /// Patterns sessions of this namespace may use.
    pub allowed_patterns: Vec<Pattern>,
    #[serde(default)]
    pub session: SessionPolicy,
    #[serde(default)]
    pub api_keys: Vec<ApiKeySpec>,
    #[serde(default)]
    pub queue: QueuePolicy,
    #[serde(default)]
    pub pubsub: PubSubPolicy,
    /// Reader collections: name → table on one of the namespace's backends.
    #[serde(default)]
    pub collections: BTreeMap<String, CollectionSpec>,
    /// Transact: the tables Write may change, and its limits.
    #[serde(default)]
    pub transact: TransactPolicy,
    /// Outbox relays: name → mailbox to broker, each run by a
    /// MailboxListenerActor.
    #[serde(default)]
    pub relays: BTreeMap<String, RelaySpec>,
    /// Rules every client config of the namespace is held to, named or
    /// inline: roles, rate ceilings, option caps ([`policy`]).
    #[serde(default)]
    pub rules: Vec<policy::PolicyRule>,
    /// Payloads above a threshold kept in an object store, the message
    /// carrying their key (Queue, PubSub and Transact mailbox messages).
    #[serde(default)]
    pub claim_check: Option<claim_check::ClaimCheckPolicy>,
}

/// How the namespace's Transact service writes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransactPolicy {
    /// Tables a DataWrite may target: table → its SQL backend and id column.
    pub tables: BTreeMap<String, TransactTable>,
    /// How long an idempotency key's outcome is kept for retries.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// A transaction's time limit when the request sets no timeout_ms.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// The largest timeout_ms accepted.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Streaming transactions open at once, per session and per namespace.
    pub max_open_per_session: usize,
    pub max_open_per_namespace: usize,
}

impl Default for TransactPolicy {
    fn default() -> Self {
        TransactPolicy {
            tables: BTreeMap::new(),
            idempotency_window: Duration::from_secs(24 * 3600),
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(600),
            max_open_per_session: 8,
            max_open_per_namespace: 512,
        }
    }
}

/// A table Transact may write.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactTable {
    /// A SQL backend of the namespace.
    pub backend: String,
    /// The key column: UPDATE and DELETE find rows by it, UPSERT conflicts
    /// on it, unless a write names another `id_field`.
    #[serde(default = "CollectionSpec::default_id")]
    pub id: String,
}

/// An outbox relay: the rows of one mailbox, in sequence order, to one
/// broker destination; its progress is its own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySpec {
    /// The SQL backend holding the mailbox.
    pub backend: String,
    pub mailbox: String,
    /// `{ pubsub: {..} }`, `{ kafka: {..} }` or `{ nats: {..} }`.
    #[serde(with = "yaml_serde::with::singleton_map")]
    pub to: RelayTarget,
    /// How often to look for rows when no notification came (the only
    /// wake-up for writes from other processes on SQLite).
    #[serde(default = "RelaySpec::default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Rows read and published per round.
    #[serde(default = "RelaySpec::default_batch")]
    pub batch_size: usize,
    /// The longest wait between attempts while the broker is down.
    #[serde(default = "RelaySpec::default_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Sends of one row the broker refuses (too large, malformed) before
    /// the relay moves it aside as a dead letter and goes on with the next.
    /// Failures while the broker is down do not count.
    #[serde(default = "RelaySpec::default_max_attempts")]
    pub max_attempts: u32,
}

impl RelaySpec {
    fn default_poll() -> Duration {
        Duration::from_secs(1)
    }
    fn default_batch() -> usize {
        100
    }
    fn default_backoff() -> Duration {
        Duration::from_secs(10)
    }
    fn default_max_attempts() -> u32 {
        5
    }
}

/// A table the Reader API exposes as a collection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionSpec {
    /// A SQL backend of the namespace.
    pub backend: String,
    pub table: String,
    /// The id column (Get, and the paging tiebreaker).
    #[serde(default = "CollectionSpec::default_id")]
    pub id: String,
    #[serde(default = "CollectionSpec::default_page_size")]
    pub default_page_size: usize,
    #[serde(default = "CollectionSpec::default_max_page_size")]
    pub max_page_size: usize,
    /// A page stops growing past this many bytes of row data.
    #[serde(default = "CollectionSpec::default_max_page_bytes")]
    pub max_page_bytes: usize,
}

impl CollectionSpec {
    fn default_id() -> String {
        "id".into()
    }
    fn default_page_size() -> usize {
        100
    }
    fn default_max_page_size() -> usize {
        1000
    }
    fn default_max_page_bytes() -> usize {
        4 * 1024 * 1024
    }
}

/// How a namespace's Queue Subscribe streams buffer messages. A full
/// buffer is backpressure: the subscription stops fetching until the
/// client takes messages; nothing is dropped.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueuePolicy {
    /// Messages buffered per Subscribe stream between backend and client.
    pub buffer: usize,
    /// Bytes those messages may hold (encoded size). One message larger
    /// than this still travels, alone.
    pub buffer_bytes: usize,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            buffer: 64,
            buffer_bytes: 8 * 1024 * 1024,
        }
    }
}

/// How a namespace's PubSub subscriptions buffer events.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PubSubPolicy {
    /// Events buffered per subscription between backend and client.
    pub buffer: usize,
    /// Bytes those events may hold (payloads, topics, metadata).
    pub buffer_bytes: usize,
    /// What push-only backends (memory, NATS core, Redis) do when a
    /// subscription's buffer is full: `drop_oldest` (counted) or
    /// `end_stream` (RESOURCE_EXHAUSTED). Kafka waits instead.
    pub overflow: crate::backends::pubsub::Overflow,
}

impl Default for PubSubPolicy {
    fn default() -> Self {
        PubSubPolicy {
            buffer: 1024,
            buffer_bytes: 8 * 1024 * 1024,
            overflow: crate::backends::pubsub::Overflow::DropOldest,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionPolicy {
    /// A session with no activity for this long expires.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// No session outlives this, however active or refreshed.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Heartbeat reports EXPIRING when less than this remains.
    #[serde(with = "humantime_serde")]
    pub expiring_within: Duration,
    /// How long a non-forced close waits for pending operations.
    #[serde(with = "humantime_serde")]
    pub close_drain_timeout: Duration,
    /// Sessions open at once in the namespace.
    pub max_sessions: usize,
    /// Sessions one principal (API key, JWT subject, certificate) may hold
    /// open at once, so no one caller takes the namespace's whole share
    /// (`max_sessions` still bounds them all).
    pub max_sessions_per_principal: usize,
    /// Entries of a session's `metadata`.
    pub max_metadata_entries: usize,
    /// Bytes of a session's `metadata`, keys and values together.
    pub max_metadata_bytes: usize,
    /// Bytes of `client_id` and of `client_version`.
    pub max_client_id_bytes: usize,
    /// Streams one session may hold open at once (Subscribe, Scan, Read,
    /// Query, ReadMailbox, Transaction, all services together).
    pub max_streams_per_session: i32,
    /// Restarts of one session actor before the supervisor gives up and
    /// closes the session.
    pub max_restarts: u32,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            idle_timeout: Duration::from_secs(15 * 60),
            max_lifetime: Duration::from_secs(24 * 3600),
            expiring_within: Duration::from_secs(60),
            close_drain_timeout: Duration::from_secs(10),
            max_sessions: 10_000,
            max_sessions_per_principal: 1_000,
            max_metadata_entries: 32,
            max_metadata_bytes: 4096,
            max_client_id_bytes: 256,
            max_streams_per_session: 64,
            max_restarts: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    pub name: String,
    /// Hex SHA-256 of the key; the key itself is never stored.
    pub sha256: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    #[default]
    Strong,
    Eventual,
    BoundedStaleness,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedConfigSpec {
    pub namespace: String,
    pub pattern: Pattern,
    /// Further patterns this config serves (e.g. reader + transact).
    #[serde(default)]
    pub also: Vec<Pattern>,
    /// Name of a configured backend.
    pub backend: String,
    #[serde(default = "default_version")]
    pub version: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub required_interfaces: Vec<String>,
    #[serde(default)]
    pub consistency: Consistency,
    #[serde(default, with = "humantime_serde")]
    pub max_staleness: Option<Duration>,
    pub cache: Option<CacheSpec>,
    pub rate_limit: Option<RateLimitSpec>,
    /// Roles allowed to use this config (any of); empty = any principal of
    /// the namespace.
    #[serde(default)]
    pub roles: Vec<String>,
}

fn default_version() -> String {
    "v1".to_string()
}

/// A config's `cache`. On a `key_value` config with `enabled: true`: a
/// cache in the gateway in front of the backend (`services::kv_cache`).
/// On a `cache` config: `ttl` is the expiry of entries written without
/// one (nothing else applies).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub strategy: CacheStrategy,
    /// How long a cached value is served without asking the backend:
    /// the bound on staleness for writes that bypass the gateway. Default
    /// 60s on a KeyValue cache; none on a cache config.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Default 10,000.
    pub max_entries: Option<i64>,
    /// Keys, values and 64 bytes of bookkeeping per entry; default 16 MiB.
    pub max_bytes: Option<i64>,
}

/// How a KeyValue cache keeps up with writes through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStrategy {
    /// Reads fill the cache; a write drops the key from it.
    #[default]
    LookAside,
    /// A write also puts the written value in the cache.
    WriteThrough,
}

impl CacheStrategy {
    /// As the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            CacheStrategy::LookAside => "look_aside",
            CacheStrategy::WriteThrough => "write_through",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub requests_per_second: i32,
    #[serde(default)]
    pub burst: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    #[serde(default)]
    pub jwt: Vec<JwtIssuerSpec>,
    pub mtls: Option<MtlsSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerSpec {
    pub issuer: String,
    pub audience: String,
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret (use `${PRISM_JWT_SECRET}`, never a literal).
    pub secret: Option<String>,
    /// RS256 public key, PEM text or a file.
    pub public_key_pem: Option<String>,
    pub public_key_file: Option<PathBuf>,
    /// Claim naming the namespace.
    #[serde(default = "default_namespace_claim")]
    pub namespace_claim: String,
    /// Claim listing roles (array of strings or space-separated string).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// The namespaces this issuer's tokens may name; empty = any
    /// configured namespace. A token naming another is refused.
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
}

impl JwtIssuerSpec {
    /// The key that verifies this issuer's signatures, from the secret, the
    /// PEM text or the file. Validation calls it to report a bad key;
    /// the JWT verifier calls it again when the gateway starts.
    pub fn decoding_key(&self) -> Result<jsonwebtoken::DecodingKey, String> {
        match self.algorithm {
            JwtAlgorithm::HS256 => {
                let secret = self
                    .secret
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .ok_or("HS256 needs `secret` (e.g. secret: ${PRISM_JWT_SECRET})")?;
                Ok(jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()))
            }
            JwtAlgorithm::RS256 => {
                let pem = match (&self.public_key_pem, &self.public_key_file) {
                    (Some(pem), _) => pem.clone(),
                    (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                        format!("cannot read public_key_file {}: {e}", path.display())
                    })?,
                    (None, None) => {
                        return Err("RS256 needs `public_key_pem` or `public_key_file`".into())
                    }
                };
                jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|e| format!("RS256 public key is not a valid PEM RSA public key: {e}"))
            }
        }
    }
}

fn default_namespace_claim() -> String {
    "namespace".to_string()
}
fn default_roles_claim() -> String {
    "roles".to_string()
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsSpec {
    /// Client certificate subject common name → principal.
    pub identities: BTreeMap<String, MtlsIdentity>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsIdentity {
    pub namespace: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

pub use layers::{Env, ProcessEnv};

impl GatewayConfig {
    /// The Reader collections configured on backend `name`: (collection,
    /// table, id column).
    /// What SQL backend `name` serves beyond KeyValue: its Reader
    /// collections and the relays of its mailboxes.
    pub fn sql_uses(&self, name: &str) -> crate::backends::SqlUses {
        crate::backends::SqlUses {
            collections: self
                .namespaces
                .values()
                .flat_map(|ns| ns.collections.iter())
                .filter(|(_, c)| c.backend == name)
                .map(|(n, c)| (n.clone(), c.table.clone(), c.id.clone()))
                .collect(),
            relays: self
                .namespaces
                .iter()
                .flat_map(|(ns, spec)| spec.relays.iter().map(move |r| (ns, r)))
                .filter(|(_, (_, r))| r.backend == name)
                .map(|(ns, (relay, r))| crate::backends::transact::RelayId {
                    namespace: ns.clone(),
                    name: relay.clone(),
                    mailbox: r.mailbox.clone(),
                })
                .collect(),
        }
    }

    /// The embedded default, with environment overrides.
    pub fn embedded(env: &dyn Env) -> Result<Self, ConfigError> {
        Self::from_yaml(EMBEDDED_DEFAULT, &Source::Embedded, env)
    }

    pub fn from_file(path: &Path, env: &dyn Env) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, &Source::File(path.to_path_buf()), env)
    }

    /// The config from YAML text, in layers ([`layers`]): `${VAR}` /
    /// `${VAR:-default}` filled from `env`, parsed, then the well-known
    /// environment overrides.
    pub fn from_yaml(text: &str, source: &Source, env: &dyn Env) -> Result<Self, ConfigError> {
        layers::parse(text, source, env)
    }

    /// Loads and validates; a config that fails any check is rejected with
    /// every failing check in the message.
    pub fn load_validated(path: Option<&Path>, env: &dyn Env) -> Result<Self, ConfigError> {
        let config = match path {
            Some(p) => Self::from_file(p, env)?,
            None => Self::embedded(env)?,
        };
        let report = validate::validate(&config);
        if report.has_failures() {
            let source_name = match path {
                Some(p) => p.display().to_string(),
                None => Source::Embedded.to_string(),
            };
            return Err(ConfigError::Invalid {
                source_name,
                report: report.failures_text(),
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ENV: [(&str, &str); 0] = [];

    #[test]
    fn embedded_default_parses_and_validates() {
        let cfg = GatewayConfig::embedded(&NO_ENV).expect("embedded config parses");
        let report = validate::validate(&cfg);
        assert!(!report.has_failures(), "{}", report.failures_text());
        assert!(cfg.namespaces.contains_key("default"));
        for name in ["user-profiles", "orders-queue", "events", "orders-db"] {
            assert!(
                cfg.configs.contains_key(name),
                "missing named config {name}"
            );
        }
        for spec in cfg.backends.values() {
            assert!(
                matches!(spec.kind, BackendKind::Memory | BackendKind::Sqlite),
                "the embedded default must need no external service"
            );
        }
    }
}
