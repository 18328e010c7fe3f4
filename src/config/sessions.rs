//! `sessions:`: where sessions live. In this process (one instance, the
//! default) or in a store the instances of a cluster share (see
//! `session::cluster`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `sessions:` in the gateway config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `in_process` (one instance), `redis` or `postgres` (a cluster).
    pub store: StoreKind,
    /// The store's URL (`redis://…` or `postgres://…`).
    pub url: Option<String>,
    /// How often an instance writes its sessions' activity to the store and
    /// reads back what other instances did. It bounds how long an instance
    /// may miss an end it was not told about (when the store's
    /// notification link is down) and is the grace an idle session gets
    /// past its idle timeout before the store expires it (activity on
    /// another instance may not be written yet).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Bounds every store operation (connect included): past it a call that
    /// needs the store fails UNAVAILABLE `SESSION_STORE_UNAVAILABLE`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long an ended session stays in the store, so every instance can
    /// say why its token stopped working.
    #[serde(with = "humantime_serde")]
    pub keep_ended: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            store: StoreKind::InProcess,
            url: None,
            flush_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            keep_ended: Duration::from_secs(3600),
        }
    }
}

impl StoreConfig {
    /// Whether sessions are shared between instances.
    pub fn is_shared(&self) -> bool {
        self.store != StoreKind::InProcess
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    InProcess,
    Redis,
    Postgres,
}
