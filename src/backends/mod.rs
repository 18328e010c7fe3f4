//! Backends and their thin interfaces (seeds 003/004).
//!
//! A backend's capabilities are the interfaces it implements in code, never
//! flags in config. A backend appears in [`BackendKind::implements`] with an
//! interface only once that interface's trait is implemented for it and served
//! end to end, so `prism registry backends` and config validation always tell
//! the truth about this build. The backend modules themselves (memory, sqlite,
//! postgres, redis, kafka, nats) arrive with the data APIs that use them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::proto::config::v1 as pb;

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

    /// The interfaces this kind implements in this build. Empty until the
    /// first data API (KeyValue) lands.
    pub fn implements(self) -> &'static [Interface] {
        match self {
            BackendKind::Memory
            | BackendKind::Sqlite
            | BackendKind::Postgres
            | BackendKind::Redis
            | BackendKind::Kafka
            | BackendKind::Nats => &[],
        }
    }

    pub fn has(self, interface: Interface) -> bool {
        self.implements().contains(&interface)
    }

    pub fn to_proto(self) -> pb::BackendType {
        match self {
            BackendKind::Memory => pb::BackendType::Memory,
            BackendKind::Sqlite => pb::BackendType::Sqlite,
            BackendKind::Postgres => pb::BackendType::Postgres,
            BackendKind::Redis => pb::BackendType::Redis,
            BackendKind::Kafka => pb::BackendType::Kafka,
            BackendKind::Nats => pb::BackendType::Nats,
        }
    }

    pub fn from_proto(t: pb::BackendType) -> Option<Self> {
        Some(match t {
            pb::BackendType::Unspecified => return None,
            pb::BackendType::Memory => BackendKind::Memory,
            pb::BackendType::Sqlite => BackendKind::Sqlite,
            pb::BackendType::Postgres => BackendKind::Postgres,
            pb::BackendType::Redis => BackendKind::Redis,
            pb::BackendType::Kafka => BackendKind::Kafka,
            pb::BackendType::Nats => BackendKind::Nats,
        })
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
    let total: usize = BackendKind::ALL.iter().map(|k| k.implements().len()).sum();
    if total == 0 {
        out.push_str(
            "\nno backend implements a data interface in this build yet: interfaces are \
             registered as each data API (keyvalue, queue, pubsub, reader, transact) lands\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_round_trip() {
        for i in Interface::ALL {
            assert_eq!(Interface::parse(i.name()), Some(*i));
        }
        assert_eq!(Interface::parse("keyvalue_nope"), None);
    }

    #[test]
    fn backend_kinds_round_trip_through_proto() {
        for k in BackendKind::ALL {
            assert_eq!(BackendKind::from_proto(k.to_proto()), Some(k));
        }
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
