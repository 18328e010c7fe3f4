//! The Postgres backend: an sqlx pool (connected lazily, so the gateway
//! starts while Postgres is down) serving the shared SQL KeyValue engine.
//! Postgres-specific parts: the schema, per-key advisory locks (they also
//! cover keys that do not exist yet, which row locks cannot) and a sequence
//! for versions.

use std::time::Duration;

use sqlx::{any::AnyPoolOptions, Any, Connection, Row, Transaction};

use super::sql::{Dialect, SqlBackend};
use super::PoolSpec;

pub const DDL: &[&str] = &[
    // Serialises concurrent migrations from several gateways.
    "SELECT pg_advisory_xact_lock(7236402883619143)",
    "CREATE TABLE IF NOT EXISTS prism_kv (
        namespace TEXT NOT NULL,
        key BYTEA NOT NULL,
        value BYTEA NOT NULL,
        version BIGINT NOT NULL,
        expires_at BIGINT,
        PRIMARY KEY (namespace, key))",
    "CREATE INDEX IF NOT EXISTS prism_kv_expiry ON prism_kv (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS prism_kv_idempotency (
        namespace TEXT NOT NULL,
        token TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        outcome TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (namespace, token))",
    "CREATE SEQUENCE IF NOT EXISTS prism_kv_version",
    // Transact: the outbox (see `sql_transact.rs`).
    "CREATE TABLE IF NOT EXISTS prism_mailbox (
        namespace TEXT NOT NULL,
        mailbox_id TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        message_id TEXT NOT NULL UNIQUE,
        message BYTEA NOT NULL,
        metadata TEXT NOT NULL,
        message_type TEXT,
        priority BIGINT,
        created_at BIGINT NOT NULL,
        processed_at BIGINT,
        PRIMARY KEY (namespace, mailbox_id, sequence))",
    "CREATE INDEX IF NOT EXISTS prism_mailbox_pending ON prism_mailbox (namespace, mailbox_id, sequence) WHERE processed_at IS NULL",
    "CREATE TABLE IF NOT EXISTS prism_mailbox_sequence (
        namespace TEXT NOT NULL,
        mailbox_id TEXT NOT NULL,
        last_sequence BIGINT NOT NULL,
        PRIMARY KEY (namespace, mailbox_id))",
    // Each relay's own progress through its mailbox, and the rows it moved
    // aside (see `sql_transact.rs`).
    "CREATE TABLE IF NOT EXISTS prism_relay_cursor (
        namespace TEXT NOT NULL,
        relay TEXT NOT NULL,
        mailbox_id TEXT NOT NULL,
        through BIGINT NOT NULL,
        attempts BIGINT NOT NULL,
        last_error TEXT,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (namespace, relay, mailbox_id))",
    "CREATE TABLE IF NOT EXISTS prism_mailbox_dead_letter (
        namespace TEXT NOT NULL,
        mailbox_id TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        relay TEXT NOT NULL,
        message_id TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        error TEXT NOT NULL,
        dead_at BIGINT NOT NULL,
        PRIMARY KEY (namespace, mailbox_id, sequence, relay))",
    "CREATE TABLE IF NOT EXISTS prism_transact_idempotency (
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        response BYTEA NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (namespace, key))",
];

/// A pooled connection idle this long is pinged before it is used.
pub(super) const PING_IDLE: Duration = Duration::from_secs(1);

/// A pool that connects on first use; the pool actor runs migrations and
/// health checks.
pub fn open(name: &str, url: &str, pool: &PoolSpec) -> Result<SqlBackend, String> {
    sqlx::any::install_default_drivers();
    let spec = pool;
    let pool = AnyPoolOptions::new()
        .max_connections(pool.max_connections)
        .min_connections(0)
        .acquire_timeout(pool.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        // A connection back from use a moment ago is taken as it is; one
        // that sat idle is pinged first (a restarted server or a dropped
        // link shows there, and the pool opens another). Pinging every
        // one cost each call a round trip.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_lazy(url)
        .map_err(|e| format!("backend `{name}`: invalid postgres url: {e}"))?;
    let mut backend = SqlBackend::new(name, Dialect::Postgres, pool, url, spec);
    backend.listen_url = Some(url.to_string());
    backend.lanes = std::sync::Arc::new(super::sql_lanes::Lanes::new(
        spec.statement_lanes,
        url,
        spec.connect_timeout,
    ));
    Ok(backend)
}

/// Takes transaction-scoped advisory locks, in sorted order (no deadlocks).
pub async fn lock(tx: &mut Transaction<'static, Any>, names: &[String]) -> Result<(), sqlx::Error> {
    for name in names {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(name.as_str())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

pub async fn allocate_versions(
    tx: &mut Transaction<'static, Any>,
    n: usize,
) -> Result<Vec<u64>, sqlx::Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query("SELECT nextval('prism_kv_version') FROM generate_series(1, $1::int)")
        .bind(n as i32)
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|r| r.try_get::<i64, _>(0).map(|v| v as u64))
        .collect()
}
