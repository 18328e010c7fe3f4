//! The one capability table: which thin interfaces each backend type
//! serves, declared here and nowhere else. Each line names the traits a
//! type implements; the macros fail to compile when a line names a trait
//! the type does not implement, and build the handles services call
//! through, so a backend can only be registered for what it serves.
//! [`BackendKind::implements`] reads the table: config validation and
//! `prism registry backends` tell the truth about this build.

use super::{
    kafka::KafkaBackend,
    memory::{MemoryCache, MemoryKv, MemoryPubSub, MemoryQueue},
    nats::NatsBackend,
    pg_queue::PgQueue,
    redis::RedisBackend,
    sql::SqlBackend,
    BackendKind, Interface,
};

// memory: `MemoryBackend` is these four stores.
crate::kv_interfaces!(MemoryKv: basic, scan, ttl, batch, cas, transactional);
crate::queue_interfaces!(MemoryQueue: basic, visibility, groups, replay);
crate::pubsub_interfaces!(MemoryPubSub: basic, wildcards);
crate::cache_interfaces!(MemoryCache: basic, counters);

// sqlite and postgres: the SQL backend; Postgres adds its table queue.
crate::kv_interfaces!(SqlBackend: basic, scan, ttl, batch, cas, transactional);
crate::reader_interfaces!(SqlBackend: paged, query);
impl SqlBackend {
    pub const TRANSACT_INTERFACES: &'static [Interface] = &[Interface::TransactOutbox];
}
crate::queue_interfaces!(PgQueue: basic, visibility, dead_letter, groups, replay);

// redis
crate::kv_interfaces!(RedisBackend: basic, scan, ttl, batch, cas, transactional);
crate::pubsub_interfaces!(RedisBackend: basic, wildcards);
crate::cache_interfaces!(RedisBackend: basic, counters);

// nats (JetStream for Queue, core subjects for PubSub)
crate::queue_interfaces!(NatsBackend: basic, visibility, groups, replay);
crate::pubsub_interfaces!(NatsBackend: basic, wildcards);

// kafka
crate::queue_interfaces!(KafkaBackend: basic, visibility, groups, replay);
crate::pubsub_interfaces!(KafkaBackend: basic, wildcards, persistent);

impl BackendKind {
    /// The interfaces this kind implements in this build, from the table
    /// above: what `prism validate` checks configs against and `prism
    /// registry backends` prints.
    pub fn implements(self) -> &'static [Interface] {
        static MEMORY: std::sync::LazyLock<Vec<Interface>> = std::sync::LazyLock::new(|| {
            [
                MemoryKv::KV_INTERFACES,
                MemoryQueue::QUEUE_INTERFACES,
                MemoryPubSub::PUBSUB_INTERFACES,
                MemoryCache::CACHE_INTERFACES,
            ]
            .concat()
        });
        static POSTGRES: std::sync::LazyLock<Vec<Interface>> = std::sync::LazyLock::new(|| {
            [
                SqlBackend::KV_INTERFACES,
                PgQueue::QUEUE_INTERFACES,
                SqlBackend::READER_INTERFACES,
                SqlBackend::TRANSACT_INTERFACES,
            ]
            .concat()
        });
        static REDIS: std::sync::LazyLock<Vec<Interface>> = std::sync::LazyLock::new(|| {
            [
                RedisBackend::KV_INTERFACES,
                RedisBackend::PUBSUB_INTERFACES,
                RedisBackend::CACHE_INTERFACES,
            ]
            .concat()
        });
        static NATS: std::sync::LazyLock<Vec<Interface>> = std::sync::LazyLock::new(|| {
            [
                NatsBackend::QUEUE_INTERFACES,
                NatsBackend::PUBSUB_INTERFACES,
            ]
            .concat()
        });
        static KAFKA: std::sync::LazyLock<Vec<Interface>> = std::sync::LazyLock::new(|| {
            [
                KafkaBackend::QUEUE_INTERFACES,
                KafkaBackend::PUBSUB_INTERFACES,
            ]
            .concat()
        });
        static SQLITE: std::sync::LazyLock<Vec<Interface>> = std::sync::LazyLock::new(|| {
            [
                SqlBackend::KV_INTERFACES,
                SqlBackend::READER_INTERFACES,
                SqlBackend::TRANSACT_INTERFACES,
            ]
            .concat()
        });
        match self {
            BackendKind::Memory => &MEMORY,
            BackendKind::Postgres => &POSTGRES,
            BackendKind::Sqlite => &SQLITE,
            BackendKind::Redis => &REDIS,
            BackendKind::Nats => &NATS,
            BackendKind::Kafka => &KAFKA,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{
        backends::{Backend, BackendSpec, Backends},
        clock::Clock,
    };

    /// The interfaces a built backend's handles actually serve.
    fn served(b: &Backend) -> BTreeSet<Interface> {
        let mut out = BTreeSet::new();
        let mut add = |present: bool, i: Interface| {
            if present {
                out.insert(i);
            }
        };
        if let Some(kv) = &b.kv {
            add(true, Interface::KeyValueBasic);
            add(kv.scan.is_some(), Interface::KeyValueScan);
            add(kv.ttl.is_some(), Interface::KeyValueTtl);
            add(kv.batch.is_some(), Interface::KeyValueBatch);
            add(kv.cas.is_some(), Interface::KeyValueCas);
            add(kv.transactional.is_some(), Interface::KeyValueTransactional);
        }
        if let Some(q) = &b.queue {
            add(true, Interface::QueueBasic);
            add(q.visibility.is_some(), Interface::QueueVisibility);
            add(q.dead_letter.is_some(), Interface::QueueDeadLetter);
            add(q.groups.is_some(), Interface::StreamConsumerGroups);
            add(q.replay.is_some(), Interface::StreamReplay);
        }
        if let Some(p) = &b.pubsub {
            add(true, Interface::PubSubBasic);
            add(p.wildcards.is_some(), Interface::PubSubWildcards);
            add(p.persistent.is_some(), Interface::PubSubPersistent);
        }
        if let Some(r) = &b.reader {
            add(true, Interface::ReaderPaged);
            add(r.query.is_some(), Interface::ReaderQuery);
        }
        add(b.transact.is_some(), Interface::TransactOutbox);
        if let Some(c) = &b.cache {
            add(true, Interface::CacheBasic);
            add(c.counters.is_some(), Interface::CacheCounters);
        }
        out
    }

    #[tokio::test]
    async fn every_kind_serves_exactly_what_the_table_declares() {
        let dir = std::env::temp_dir().join(format!("prism-capabilities-{}", std::process::id()));
        let yaml = format!(
            r#"
memory: {{ type: memory }}
sqlite: {{ type: sqlite, path: {db} }}
postgres: {{ type: postgres, url: "postgres://postgres@127.0.0.1:5432/test" }}
redis: {{ type: redis, url: "redis://127.0.0.1:6379" }}
nats: {{ type: nats, url: "nats://127.0.0.1:4222" }}
kafka: {{ type: kafka, url: "127.0.0.1:9092" }}
"#,
            db = dir.join("c.db").display()
        );
        let specs: std::collections::BTreeMap<String, BackendSpec> =
            yaml_serde::from_str(&yaml).unwrap();
        // Building makes clients and handles without connecting.
        let backends = Backends::build(&specs, |_| Default::default(), Clock::new()).unwrap();
        for kind in BackendKind::ALL {
            let backend = backends.get(kind.name()).unwrap();
            let declared: BTreeSet<Interface> = kind.implements().iter().copied().collect();
            assert_eq!(served(backend), declared, "{kind}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
