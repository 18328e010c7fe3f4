//! Backends and their thin interfaces (seeds 003/004).
//!
//! A backend's capabilities are the interfaces it implements in code, never
//! flags in config, declared in one table ([`capabilities`]): a backend
//! appears there with an interface only once that interface's trait is
//! implemented for it and served end to end, so `prism registry backends`
//! and config validation always tell the truth about this build.
//!
//! The backend types, one per kind: [`memory::MemoryBackend`],
//! [`sql::SqlBackend`] (SQLite and Postgres; Postgres adds
//! [`pg_queue::PgQueue`]), [`redis::RedisBackend`], [`nats::NatsBackend`]
//! and [`kafka::KafkaBackend`].
//!
//! [`Backends`] holds one [`Backend`] per configured backend: the cloned
//! client the data path uses, its API surfaces (KeyValue, Queue, PubSub
//! handles) and the [`Health`] its pool actor maintains.

use std::{collections::BTreeMap, fmt, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::clock::Clock;

pub mod blob;
pub mod cache;
pub mod capabilities;
pub mod health;
pub mod kafka;
pub mod kafka_pubsub;
pub mod kv;
pub mod lru;
pub mod memory;
pub mod nats;
pub mod nats_pubsub;
pub mod pg_queue;
pub mod postgres;
pub mod pubsub;
pub mod queue;
pub mod reader;
pub mod redis;
pub mod redis_cache;
pub mod redis_pubsub;
pub mod relay;
pub mod spec;
pub mod sql;
pub mod sql_lanes;
pub mod sql_reader;
pub mod sql_transact;
pub mod sql_write;
pub mod sqlite;
pub mod transact;

pub use health::{Health, HealthState};
pub use spec::{BackendSpec, PoolSpec};

/// Milliseconds since the Unix epoch: stored expiry and publish times are
/// wall-clock time, shared by every gateway using a backend.
pub fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A wall-clock time in ms since the Unix epoch, as a protobuf Timestamp.
pub fn timestamp_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The kinds of backend Prism can talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Memory,
    Sqlite,
    Postgres,
    Redis,
    Kafka,
    Nats,
}

impl BackendKind {
    pub const ALL: [BackendKind; 6] = [
        BackendKind::Memory,
        BackendKind::Sqlite,
        BackendKind::Postgres,
        BackendKind::Redis,
        BackendKind::Kafka,
        BackendKind::Nats,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
            BackendKind::Redis => "redis",
            BackendKind::Kafka => "kafka",
            BackendKind::Nats => "nats",
        }
    }

    pub fn has(self, interface: Interface) -> bool {
        self.implements().contains(&interface)
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! interfaces {
    ($($variant:ident => $name:literal,)*) => {
        /// The thin interfaces of seed 004 that Prism's APIs are built from.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Interface { $($variant,)* }

        impl Interface {
            pub const ALL: &'static [Interface] = &[$(Interface::$variant,)*];

            pub fn name(self) -> &'static str {
                match self { $(Interface::$variant => $name,)* }
            }

            pub fn parse(name: &str) -> Option<Interface> {
                match name { $($name => Some(Interface::$variant),)* _ => None }
            }
        }
    };
}

interfaces! {
    KeyValueBasic => "keyvalue_basic",
    KeyValueScan => "keyvalue_scan",
    KeyValueTtl => "keyvalue_ttl",
    KeyValueBatch => "keyvalue_batch",
    KeyValueCas => "keyvalue_cas",
    KeyValueTransactional => "keyvalue_transactional",
    QueueBasic => "queue_basic",
    QueueVisibility => "queue_visibility",
    QueueDeadLetter => "queue_dead_letter",
    StreamBasic => "stream_basic",
    StreamConsumerGroups => "stream_consumer_groups",
    StreamReplay => "stream_replay",
    PubSubBasic => "pubsub_basic",
    PubSubWildcards => "pubsub_wildcards",
    PubSubPersistent => "pubsub_persistent",
    ReaderPaged => "reader_paged",
    ReaderQuery => "reader_query",
    TransactOutbox => "transact_outbox",
    CacheBasic => "cache_basic",
    CacheCounters => "cache_counters",
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The backend × interface matrix of this build, as text.
pub fn registry_matrix() -> String {
    let mut out = String::new();
    let width = Interface::ALL
        .iter()
        .map(|i| i.name().len())
        .max()
        .unwrap_or(0);
    out.push_str(&format!("{:width$}", "interface"));
    for kind in BackendKind::ALL {
        out.push_str(&format!("  {:>8}", kind.name()));
    }
    out.push('\n');
    for interface in Interface::ALL {
        out.push_str(&format!("{:width$}", interface.name()));
        for kind in BackendKind::ALL {
            let mark = if kind.has(*interface) { "yes" } else { "-" };
            out.push_str(&format!("  {mark:>8}"));
        }
        out.push('\n');
    }
    out
}

/// The error for a backend lacking an interface a config or a call needs:
/// `UNIMPLEMENTED`, naming both, in config validation and at run time alike.
pub fn missing_interface(
    backend: &str,
    kind: BackendKind,
    interface: Interface,
) -> crate::error::Error {
    crate::error::Error::new(
        crate::error::ErrorKind::Unimplemented,
        "MISSING_INTERFACE",
        format!(
            "backend `{backend}` ({kind}) does not implement {interface}; use a backend that \
             does (`prism registry backends` lists them)"
        ),
    )
    .with("backend", backend)
    .with("interface", interface.name())
}

/// What a SQL backend serves beyond KeyValue (see [`Backends::build`]).
#[derive(Debug, Clone, Default)]
pub struct SqlUses {
    pub collections: Vec<CollectionTable>,
    pub relays: Vec<transact::RelayId>,
}

/// The client of one configured backend, as the data path uses it.
#[derive(Clone)]
pub enum Client {
    Memory(memory::MemoryBackend),
    /// The SQL key-value engine, and on Postgres the table queue.
    Sql(Arc<sql::SqlBackend>, Option<Arc<pg_queue::PgQueue>>),
    Redis(Arc<redis::RedisBackend>),
    Nats(Arc<nats::NatsBackend>),
    Kafka(Arc<kafka::KafkaBackend>),
}

impl Client {
    /// Establishes what the backend needs before serving (schema, the
    /// connection manager); idempotent.
    pub async fn connect(&self) -> Result<(), crate::error::Error> {
        match self {
            Client::Memory(_) => Ok(()),
            Client::Sql(s, queue) => {
                if !s.is_migrated() {
                    s.migrate().await?;
                }
                if let Some(q) = queue.as_ref().filter(|q| !q.is_migrated()) {
                    q.migrate().await?;
                }
                s.learn_collections().await;
                s.ping().await
            }
            Client::Redis(r) => {
                r.connect().await?;
                r.ping().await
            }
            Client::Nats(n) => {
                n.connect().await?;
                n.ping().await
            }
            Client::Kafka(k) => k.connect().await,
        }
    }

    /// One health round trip.
    pub async fn check(&self) -> Result<(), crate::error::Error> {
        match self {
            Client::Memory(_) => Ok(()),
            Client::Sql(s, _) => s.ping().await,
            Client::Redis(r) => r.ping().await,
            Client::Nats(n) => n.ping().await,
            Client::Kafka(k) => k.ping().await,
        }
    }

    /// Removes expired data where the backend does not do it itself.
    pub async fn sweep(&self) -> Result<u64, crate::error::Error> {
        match self {
            // A walk of every entry: on a blocking thread, not the pool
            // actor's async worker.
            Client::Memory(m) => {
                let (kv, cache) = (m.kv.clone(), m.cache.clone());
                tokio::task::spawn_blocking(move || (kv.sweep() + cache.sweep()) as u64)
                    .await
                    .map_err(|e| crate::error::Error::internal(format!("memory sweep: {e}")))
            }
            Client::Sql(s, _) => s.sweep().await,
            Client::Redis(_) | Client::Nats(_) | Client::Kafka(_) => Ok(0),
        }
    }

    /// The figures of a SQL pool (`None` for clients without one), for
    /// `/metrics`.
    pub fn pool_stats(&self) -> Option<PoolStats> {
        match self {
            Client::Sql(s, _) => Some(PoolStats {
                connections: s.pool.size(),
                idle: s.pool.num_idle(),
                lanes_connected: s.lanes.connected(),
            }),
            _ => None,
        }
    }

    /// The figures of a memory backend's Cache store (`None` for other
    /// kinds, whose server holds the entries), for `/metrics`.
    pub fn cache_figures(&self) -> Option<lru::Snapshot> {
        match self {
            Client::Memory(m) => Some(m.cache.snapshot()),
            _ => None,
        }
    }

    /// Pool figures for the admin view.
    pub fn stats(&self) -> serde_json::Value {
        match self {
            Client::Memory(m) => serde_json::json!({
                "keys": m.kv.len(),
                "queued_messages": m.queue.len(),
                "pubsub_subscriptions": m.pubsub.subscriptions(),
                "cache": m.cache.snapshot(),
            }),
            Client::Sql(s, _) => serde_json::json!({
                "connections": s.pool.size(),
                "idle": s.pool.num_idle(),
                "statement_lanes": s.lanes.lanes(),
                "statement_lanes_connected": s.lanes.connected(),
                "schema_ready": s.is_migrated(),
            }),
            Client::Redis(r) => serde_json::json!({ "connected": r.is_connected() }),
            Client::Nats(n) => serde_json::json!({ "connected": n.is_connected() }),
            Client::Kafka(k) => serde_json::json!({ "connected": k.is_connected() }),
        }
    }

    /// The Queue surface, where the backend has one in this build.
    pub fn queue(&self) -> Option<queue::QueueHandle> {
        match self {
            Client::Memory(m) => Some(m.queue.queue_handle()),
            Client::Sql(_, q) => q.as_ref().map(|q| q.queue_handle()),
            Client::Nats(n) => Some(n.queue_handle()),
            Client::Kafka(k) => Some(k.queue_handle()),
            Client::Redis(_) => None,
        }
    }

    /// The PubSub surface, where the backend has one in this build.
    pub fn pubsub(&self) -> Option<pubsub::PubSubHandle> {
        match self {
            Client::Memory(m) => Some(m.pubsub.pubsub_handle()),
            Client::Redis(r) => Some(r.pubsub_handle()),
            Client::Nats(n) => Some(n.pubsub_handle()),
            Client::Kafka(k) => Some(k.pubsub_handle()),
            Client::Sql(..) => None,
        }
    }

    /// The Reader surface, where the backend has one.
    pub fn reader(&self) -> Option<reader::ReaderHandle> {
        match self {
            Client::Sql(s, _) => Some(s.reader_handle()),
            _ => None,
        }
    }

    /// The Transact surface, where the backend has one.
    pub fn transact(&self) -> Option<Arc<dyn transact::TransactOutbox>> {
        match self {
            Client::Sql(s, _) => Some(s.transact_handle()),
            _ => None,
        }
    }

    /// The Cache surface, where the backend has one.
    pub fn cache(&self) -> Option<cache::CacheHandle> {
        match self {
            Client::Memory(m) => Some(m.cache.cache_handle()),
            Client::Redis(r) => Some(r.cache_handle()),
            Client::Sql(..) | Client::Nats(_) | Client::Kafka(_) => None,
        }
    }

    /// The KeyValue surface, where the backend has one.
    pub fn kv(&self) -> Option<kv::KvHandle> {
        match self {
            Client::Memory(m) => Some(m.kv.kv_handle()),
            Client::Sql(s, _) => Some(s.kv_handle()),
            Client::Redis(r) => Some(r.kv_handle()),
            Client::Nats(_) | Client::Kafka(_) => None,
        }
    }
}

/// A namespace as one token of a dotted broker name (NATS subjects, Redis
/// channels). Namespace names may hold dots, which those brokers read as
/// separators: with `t` and `t.x` both configured, `t` + `x.a` and `t.x` +
/// `a` would meet on one name. A dot is written as `~`, which namespace
/// names never hold, so the namespace token ends at the first dot and no
/// two (namespace, name) pairs share a broker name. Dot-free names are
/// kept as they are.
pub fn ns_token(ns: &str) -> std::borrow::Cow<'_, str> {
    if ns.contains('.') {
        std::borrow::Cow::Owned(ns.replace('.', "~"))
    } else {
        std::borrow::Cow::Borrowed(ns)
    }
}

/// The start of a Kafka name for `kind` (`prism`, `prism-ps`) in a
/// namespace: `<kind>.<ns>.`. Kafka names allow only letters, digits,
/// `.`, `_` and `-`, all of which namespace names use, so a namespace with
/// dots is written with its length instead — `<kind>-<len>.<ns>.` — which
/// no dot-free form starts with, and which says where the namespace ends.
pub fn kafka_ns_prefix(kind: &str, ns: &str) -> String {
    if ns.contains('.') {
        format!("{kind}-{}.{ns}.", ns.len())
    } else {
        format!("{kind}.{ns}.")
    }
}

/// A Reader collection served by a backend: (collection, table, id column).
pub type CollectionTable = (String, String, String);

/// One configured backend.
pub struct Backend {
    pub name: String,
    pub kind: BackendKind,
    pub spec: PoolSpec,
    /// `None` for kinds with no client in this build (kafka, nats).
    pub client: Option<Client>,
    pub kv: Option<kv::KvHandle>,
    pub queue: Option<queue::QueueHandle>,
    pub pubsub: Option<pubsub::PubSubHandle>,
    pub reader: Option<reader::ReaderHandle>,
    pub transact: Option<Arc<dyn transact::TransactOutbox>>,
    pub cache: Option<cache::CacheHandle>,
    pub health: Arc<Health>,
}

/// A SQL pool's connections at one moment.
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    /// Open connections.
    pub connections: u32,
    /// Open connections no call holds.
    pub idle: usize,
    /// Postgres connections held beside the pool for lone hot statements.
    pub lanes_connected: usize,
}

/// Every configured backend by name.
pub struct Backends {
    by_name: BTreeMap<String, Arc<Backend>>,
}

impl Backends {
    /// Builds clients without connecting (pool actors connect); fails only
    /// on configuration that cannot work (a malformed URL). `uses` says what
    /// each SQL backend serves beyond KeyValue: Reader collections, and the
    /// relays of its mailboxes (their cursors are made at migration).
    pub fn build(
        specs: &BTreeMap<String, BackendSpec>,
        uses: impl Fn(&str) -> SqlUses,
        clock: Clock,
    ) -> Result<Self, String> {
        let mut by_name = BTreeMap::new();
        for (name, spec) in specs {
            let url = spec.url.clone().unwrap_or_default();
            let client = match spec.kind {
                BackendKind::Memory => Some(Client::Memory(memory::MemoryBackend::new(
                    clock,
                    spec.cache.unwrap_or_default().bounds(),
                ))),
                BackendKind::Sqlite => {
                    let url = match &spec.path {
                        Some(path) => sqlite::url_for(path),
                        None => url,
                    };
                    let mut kv = sqlite::open(name, &url, &spec.pool)?;
                    kv.init_sql = spec.init_sql.clone();
                    kv.serve(uses(name));
                    kv.dir = spec
                        .path
                        .as_ref()
                        .and_then(|p| p.parent())
                        .filter(|d| !d.as_os_str().is_empty())
                        .map(|d| d.to_path_buf());
                    Some(Client::Sql(Arc::new(kv), None))
                }
                BackendKind::Postgres => {
                    let mut kv = postgres::open(name, &url, &spec.pool)?;
                    kv.init_sql = spec.init_sql.clone();
                    kv.serve(uses(name));
                    let queue = pg_queue::PgQueue::new(&kv);
                    Some(Client::Sql(Arc::new(kv), Some(Arc::new(queue))))
                }
                BackendKind::Redis => Some(Client::Redis(Arc::new(redis::RedisBackend::open(
                    name, &url, &spec.pool,
                )?))),
                BackendKind::Nats => Some(Client::Nats(Arc::new(nats::NatsBackend::open(
                    name, &url, &spec.pool,
                )?))),
                BackendKind::Kafka => Some(Client::Kafka(Arc::new(kafka::KafkaBackend::open(
                    name, &url, &spec.pool,
                )?))),
            };
            let kv = client.as_ref().and_then(Client::kv);
            let queue = client.as_ref().and_then(Client::queue);
            let pubsub = client.as_ref().and_then(Client::pubsub);
            let reader = client.as_ref().and_then(Client::reader);
            let transact = client.as_ref().and_then(Client::transact);
            let cache = client.as_ref().and_then(Client::cache);
            by_name.insert(
                name.clone(),
                Arc::new(Backend {
                    name: name.clone(),
                    kind: spec.kind,
                    spec: spec.pool.clone(),
                    client,
                    kv,
                    queue,
                    pubsub,
                    reader,
                    transact,
                    cache,
                    health: Arc::new(Health::new()),
                }),
            );
        }
        Ok(Backends { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Backend>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.by_name.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_that_prefix_each_other_never_share_a_broker_name() {
        // (namespace, name) pairs that a plain dotted join would merge.
        let pairs = [
            ("t", "x.a"),
            ("t.x", "a"),
            ("t", "x~a"),
            ("t.x.a", ""),
            ("t-3", "t.x.a"),
        ];
        let dotted: std::collections::BTreeSet<String> = pairs
            .iter()
            .map(|(ns, name)| format!("prism-ps.{}.{name}", ns_token(ns)))
            .collect();
        assert_eq!(dotted.len(), pairs.len(), "{dotted:?}");
        let kafka: std::collections::BTreeSet<String> = pairs
            .iter()
            .map(|(ns, name)| format!("{}{name}", kafka_ns_prefix("prism", ns)))
            .collect();
        assert_eq!(kafka.len(), pairs.len(), "{kafka:?}");
        assert_eq!(kafka_ns_prefix("prism", "orders"), "prism.orders.");
        assert_eq!(ns_token("orders"), "orders");
    }

    #[test]
    fn interface_names_round_trip() {
        for i in Interface::ALL {
            assert_eq!(Interface::parse(i.name()), Some(*i));
        }
        assert_eq!(Interface::parse("keyvalue_nope"), None);
    }

    #[test]
    fn keyvalue_backends_register_all_six_interfaces() {
        for kind in [
            BackendKind::Memory,
            BackendKind::Sqlite,
            BackendKind::Postgres,
            BackendKind::Redis,
        ] {
            for name in [
                "keyvalue_basic",
                "keyvalue_scan",
                "keyvalue_ttl",
                "keyvalue_batch",
                "keyvalue_cas",
                "keyvalue_transactional",
            ] {
                assert!(kind.has(Interface::parse(name).unwrap()), "{kind} {name}");
            }
        }
        assert!(!BackendKind::Kafka.has(Interface::KeyValueBasic));
        assert!(!BackendKind::Nats.has(Interface::KeyValueBasic));
    }

    #[test]
    fn matrix_lists_every_kind_and_interface() {
        let m = registry_matrix();
        for k in BackendKind::ALL {
            assert!(m.contains(k.name()), "{m}");
        }
        for i in Interface::ALL {
            assert!(m.contains(i.name()), "{m}");
        }
    }
}
