//! The SQLite backend: a file database (created when missing) in WAL mode,
//! serving the shared SQL KeyValue engine. SQLite-specific parts: the
//! schema, taking the write lock first in every write transaction (so
//! concurrent writers wait on the busy timeout instead of failing), and a
//! counter row for versions.

use std::path::Path;

use sqlx::{any::AnyPoolOptions, Any, Executor, Row, Transaction};

use super::sql::{Dialect, SqlBackend};
use super::PoolSpec;

pub const DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS prism_kv (
        namespace TEXT NOT NULL,
        key BLOB NOT NULL,
        value BLOB NOT NULL,
        version INTEGER NOT NULL,
        expires_at INTEGER,
        PRIMARY KEY (namespace, key))",
    "CREATE INDEX IF NOT EXISTS prism_kv_expiry ON prism_kv (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS prism_kv_idempotency (
        namespace TEXT NOT NULL,
        token TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        outcome TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, token))",
    "CREATE TABLE IF NOT EXISTS prism_kv_counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO prism_kv_counter (name, value) VALUES ('version', 0)",
    // Transact: the outbox (see `sql_transact.rs`).
    "CREATE TABLE IF NOT EXISTS prism_mailbox (
        namespace TEXT NOT NULL,
        mailbox_id TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        message_id TEXT NOT NULL UNIQUE,
        message BLOB NOT NULL,
        metadata TEXT NOT NULL,
        message_type TEXT,
        priority INTEGER,
        created_at INTEGER NOT NULL,
        processed_at INTEGER,
        PRIMARY KEY (namespace, mailbox_id, sequence))",
    "CREATE INDEX IF NOT EXISTS prism_mailbox_pending ON prism_mailbox (namespace, mailbox_id, sequence) WHERE processed_at IS NULL",
    "CREATE TABLE IF NOT EXISTS prism_mailbox_sequence (
        namespace TEXT NOT NULL,
        mailbox_id TEXT NOT NULL,
        last_sequence INTEGER NOT NULL,
        PRIMARY KEY (namespace, mailbox_id))",
    // Each relay's own progress through its mailbox, and the rows it moved
    // aside (see `sql_transact.rs`).
    "CREATE TABLE IF NOT EXISTS prism_relay_cursor (
        namespace TEXT NOT NULL,
        relay TEXT NOT NULL,
        mailbox_id TEXT NOT NULL,
        through INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, relay, mailbox_id))",
    "CREATE TABLE IF NOT EXISTS prism_mailbox_dead_letter (
        namespace TEXT NOT NULL,
        mailbox_id TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        relay TEXT NOT NULL,
        message_id TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT NOT NULL,
        dead_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, mailbox_id, sequence, relay))",
    "CREATE TABLE IF NOT EXISTS prism_transact_idempotency (
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        response BLOB NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, key))",
];

/// The sqlx URL for a database file, created when missing.
pub fn url_for(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// How long a writer waits for the database's write lock (SQLite's
/// `busy_timeout`, and the turn among this process's writers).
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub fn open(name: &str, url: &str, pool: &PoolSpec) -> Result<SqlBackend, String> {
    sqlx::any::install_default_drivers();
    let spec = pool;
    let pool = AnyPoolOptions::new()
        .max_connections(pool.max_connections)
        .min_connections(0)
        .acquire_timeout(pool.connect_timeout)
        // A file on this host: a connection cannot go stale in the pool.
        .test_before_acquire(false)
        .after_connect(|conn, _| {
            Box::pin(async move {
                let pragmas = format!(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = {}",
                    BUSY_TIMEOUT.as_millis()
                );
                conn.execute(pragmas.as_str()).await?;
                Ok(())
            })
        })
        .connect_lazy(url)
        .map_err(|e| format!("backend `{name}`: invalid sqlite url: {e}"))?;
    Ok(SqlBackend::new(name, Dialect::Sqlite, pool, url, spec))
}

/// Takes the database write lock now: a deferred transaction that read
/// first could not upgrade while another writer holds it.
pub async fn lock(tx: &mut Transaction<'static, Any>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE prism_kv_counter SET value = value WHERE name = 'version'")
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

pub async fn allocate_versions(
    tx: &mut Transaction<'static, Any>,
    n: usize,
) -> Result<Vec<u64>, sqlx::Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let row = sqlx::query(
        "UPDATE prism_kv_counter SET value = value + $1 WHERE name = 'version' RETURNING value",
    )
    .bind(n as i64)
    .fetch_one(&mut **tx)
    .await?;
    let last: i64 = row.try_get(0)?;
    let last = last as u64;
    Ok((last + 1 - n as u64..=last).collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::ErrorKind;

    #[tokio::test(start_paused = true)]
    async fn writers_take_turns_and_one_kept_waiting_past_busy_timeout_is_unavailable() {
        // (Taking turns opens nothing: the pool connects lazily.)
        let url = url_for(Path::new("/nonexistent/turns.db"));
        let backend = std::sync::Arc::new(open("turns", &url, &PoolSpec::default()).unwrap());

        let first = backend.write_turn().await.unwrap();
        assert!(first.is_some(), "a SQLite writer takes a turn");
        // A second writer waits for the first, as long as busy_timeout.
        let waited = tokio::time::Instant::now();
        let e = backend.write_turn().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert_eq!(waited.elapsed(), BUSY_TIMEOUT);
        // A waiting writer goes the moment the one before it is done.
        let waiting = tokio::spawn({
            let backend = backend.clone();
            async move { backend.write_turn().await.map(|t| t.is_some()) }
        });
        tokio::time::sleep(BUSY_TIMEOUT / 2).await;
        let released = tokio::time::Instant::now();
        drop(first);
        assert!(waiting.await.unwrap().unwrap());
        assert_eq!(released.elapsed(), Duration::ZERO);
    }
}
