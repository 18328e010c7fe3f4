//! What a backend is configured with: its kind and address, and how its
//! pool actor manages connections (the `backends:` section of the config).

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::BackendKind;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    #[serde(rename = "type")]
    pub kind: BackendKind,
    /// Connection address (postgres://, redis://, nats://, kafka host:port list).
    pub url: Option<String>,
    /// File path (sqlite).
    pub path: Option<PathBuf>,
    /// Connections, health checks and reconnection.
    #[serde(default)]
    pub pool: PoolSpec,
    /// SQL statements run at connect, after Prism's own tables (e.g. to
    /// create a collection's table; make them idempotent).
    #[serde(default)]
    pub init_sql: Vec<String>,
    /// What the memory backend's Cache entries may hold, all namespaces
    /// together (other kinds are bounded by their server: Redis by its
    /// `maxmemory`).
    pub cache: Option<CacheBoundsSpec>,
}

/// `backends.<name>.cache`: the memory backend's Cache bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheBoundsSpec {
    pub max_entries: usize,
    /// Keys, values and 64 bytes of bookkeeping per entry.
    pub max_bytes: usize,
}

impl Default for CacheBoundsSpec {
    fn default() -> Self {
        CacheBoundsSpec {
            max_entries: 100_000,
            max_bytes: 64 << 20,
        }
    }
}

impl CacheBoundsSpec {
    pub fn bounds(self) -> super::lru::Bounds {
        super::lru::Bounds {
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
        }
    }
}

/// How a backend's pool actor manages its connections.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSpec {
    /// Most connections (SQL backends).
    pub max_connections: u32,
    /// How long a connection attempt, or a wait for a pooled connection,
    /// may take before the call fails UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often a healthy backend is checked.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// First delay before reconnecting a failed backend; doubles per
    /// failure up to `backoff_max`.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// How often expired keys are deleted (SQL and memory backends).
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Transactions open at once on a SQL backend (each holds a pooled
    /// connection while open); by default a quarter of `max_connections`
    /// (at least one) stays free for every other call. A transaction that
    /// finds none free within `connect_timeout` is RESOURCE_EXHAUSTED.
    pub max_transactions: Option<u32>,
    /// Postgres: connections held beside the pool for lone statements on
    /// the hot paths (a Queue Publish to a known topic, a Reader page), so
    /// they skip the ping sqlx sends when a pooled connection comes back
    /// (`sql_lanes.rs`); 0 turns them off. At most 64.
    pub statement_lanes: u32,
}

impl PoolSpec {
    /// The transaction cap: `max_transactions`, or `max_connections`
    /// less a quarter (at least one kept back when there are two or more).
    pub fn transactions(&self) -> u32 {
        self.max_transactions.unwrap_or_else(|| {
            let kept = (self.max_connections / 4).max(1);
            self.max_connections.saturating_sub(kept).max(1)
        })
    }
}

impl Default for PoolSpec {
    fn default() -> Self {
        PoolSpec {
            max_connections: 10,
            connect_timeout: Duration::from_secs(3),
            health_interval: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            sweep_interval: Duration::from_secs(30),
            max_transactions: None,
            statement_lanes: 4,
        }
    }
}
