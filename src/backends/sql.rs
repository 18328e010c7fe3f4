//! The KeyValue engine shared by the SQLite and Postgres backends, over an
//! sqlx `AnyPool`. Keys are stored as bytes so ordering and prefix ranges are
//! bytewise on both databases; versions come from one counter per database
//! (a sequence in Postgres, a counter row in SQLite) and never repeat.
//!
//! Every write is one transaction: lock the keys (dialect-specific), replay
//! or refuse a known idempotency token, read current versions, check
//! preconditions, write, remember the token, commit. Expired rows are
//! invisible to reads and removed by [`SqlBackend::sweep`], which the pool actor
//! runs on a timer.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use sqlx::{any::AnyRow, AnyConnection, AnyPool, Row};

use super::{
    epoch_ms,
    kv::{
        self, check_preconditions, idempotency_reused, Action, Applied, Current, KeyValueBasic,
        KeyValueBatch, KeyValueCas, KeyValueScan, KeyValueTransactional, KeyValueTtl, Record,
        ScanItem, ScanPage, WriteBatch,
    },
    postgres, sqlite, PoolSpec,
};
use crate::error::{Error, ErrorKind};

/// Which SQL database the engine talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// The SQL backend, SQLite or Postgres, on one sqlx pool: KeyValue (this
/// file), Reader (`sql_reader.rs`) and Transact (`sql_transact.rs`).
/// Postgres's Queue is [`super::pg_queue::PgQueue`] on the same database.
pub struct SqlBackend {
    pub name: String,
    pub dialect: Dialect,
    pub pool: AnyPool,
    /// Directory to create before connecting (a SQLite file's parent).
    pub dir: Option<std::path::PathBuf>,
    /// Set once the schema exists; until then calls are UNAVAILABLE.
    migrated: AtomicBool,
    /// Reader collections' tables by collection and table, learned at
    /// connect or on first use (`sql_reader.rs`).
    pub(super) schemas: dashmap::DashMap<String, std::sync::Arc<super::reader::TableSchema>>,
    /// Statements run after the schema is created (the backend's `init_sql`).
    pub init_sql: Vec<String>,
    /// Reader collections on this backend: (collection, table, id column),
    /// learned at connect.
    pub collections: Vec<(String, String, String)>,
    /// The relays of this backend's mailboxes: their cursors are made at
    /// migration, before any client call (`sql_transact::start_cursor`).
    pub relays: Vec<super::transact::RelayId>,
    /// Bumped when a transaction that wrote a mailbox row commits, waking
    /// this process's relays at once (`sql_transact.rs`).
    pub(super) outbox_written: tokio::sync::watch::Sender<u64>,
    /// Postgres: where mailbox waiters LISTEN for commits of other
    /// gateways. SQLite has no notifications (waiters rely on polling).
    pub(super) listen_url: Option<String>,
    /// Places for open transactions (`pool.max_transactions`): fewer than
    /// the pool's connections, so other calls always find one.
    pub(super) transactions: Arc<tokio::sync::Semaphore>,
    transactions_cap: u32,
    /// How long a transaction, or a health check, waits for its place or
    /// connection.
    pub(super) wait: std::time::Duration,
    /// Health checks run on a connection of their own, never queued behind
    /// the pool's callers; dropped after a failure and made again.
    health: tokio::sync::Mutex<Option<AnyConnection>>,
    /// Postgres: connections held for lone statements on the hot paths
    /// (`sql_lanes.rs`); none on SQLite.
    pub lanes: Arc<super::sql_lanes::Lanes>,
    /// SQLite: this process's writers take turns here (see
    /// [`SqlBackend::write_turn`]); none on Postgres.
    writers: Option<Arc<tokio::sync::Mutex<()>>>,
    url: String,
}

const LIVE: &str = "(expires_at IS NULL OR expires_at > $3)";

impl SqlBackend {
    pub fn new(name: &str, dialect: Dialect, pool: AnyPool, url: &str, spec: &PoolSpec) -> Self {
        SqlBackend {
            transactions: Arc::new(tokio::sync::Semaphore::new(spec.transactions() as usize)),
            transactions_cap: spec.transactions(),
            wait: spec.connect_timeout,
            health: tokio::sync::Mutex::new(None),
            lanes: Arc::new(super::sql_lanes::Lanes::none()),
            writers: (dialect == Dialect::Sqlite).then(Arc::default),
            url: url.to_string(),
            name: name.to_string(),
            dialect,
            pool,
            dir: None,
            migrated: AtomicBool::new(false),
            schemas: dashmap::DashMap::new(),
            init_sql: Vec::new(),
            collections: Vec::new(),
            relays: Vec::new(),
            outbox_written: tokio::sync::watch::channel(0).0,
            listen_url: None,
        }
    }

    /// What the backend serves beyond KeyValue (set before it connects).
    pub fn serve(&mut self, uses: super::SqlUses) {
        self.collections = uses.collections;
        self.relays = uses.relays;
    }

    /// SQLite has one write lock, and a writer that finds it taken sleeps
    /// in SQLite's busy handler (1, 2, 5, … 100 ms at a time) instead of
    /// being woken when it is let go. This process's writers take their
    /// turn here first — in arrival order, woken the moment the writer
    /// before them ends — and hold it until they commit or roll back; the
    /// busy handler is left to writers of other processes. Waits as long
    /// as `busy_timeout` would. Nothing to wait for on Postgres.
    pub(super) async fn write_turn(
        &self,
    ) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>, Error> {
        let Some(writers) = &self.writers else {
            return Ok(None);
        };
        tokio::time::timeout(super::sqlite::BUSY_TIMEOUT, writers.clone().lock_owned())
            .await
            .map(Some)
            .map_err(|_| kv::unavailable(&self.name, "busy: another write held the database"))
    }

    /// A transaction that writes from its first statement, with its turn
    /// among this process's writers (taken after the connection: the
    /// order an open transaction takes them in).
    pub(super) async fn begin_write(
        &self,
    ) -> Result<
        (
            sqlx::Transaction<'static, sqlx::Any>,
            Option<tokio::sync::OwnedMutexGuard<()>>,
        ),
        Error,
    > {
        let tx = self.pool.begin().await.map_err(|e| self.db_error(e))?;
        Ok((tx, self.write_turn().await?))
    }

    /// The backend's cap on open transactions.
    pub fn transactions_allowed(&self) -> u32 {
        self.transactions_cap
    }

    pub fn is_migrated(&self) -> bool {
        self.migrated.load(Ordering::Acquire)
    }

    /// Creates the tables when missing; safe to run from several gateways.
    pub async fn migrate(&self) -> Result<(), Error> {
        if let Some(dir) = &self.dir {
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                kv::unavailable(&self.name, format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut tx = self.pool.begin().await.map_err(|e| self.db_error(e))?;
        let ddl = match self.dialect {
            Dialect::Postgres => postgres::DDL,
            Dialect::Sqlite => sqlite::DDL,
        };
        for statement in ddl
            .iter()
            .copied()
            .chain(self.init_sql.iter().map(String::as_str))
        {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_error(e))?;
        }
        for relay in &self.relays {
            super::sql_transact::start_cursor(&mut *tx, relay)
                .await
                .map_err(|e| self.db_error(e))?;
        }
        tx.commit().await.map_err(|e| self.db_error(e))?;
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    /// One health round trip on the health connection (made when missing),
    /// bounded by `connect_timeout`.
    pub async fn ping(&self) -> Result<(), Error> {
        use sqlx::Connection as _;
        let mut health = self.health.lock().await;
        let checked = tokio::time::timeout(self.wait, async {
            if health.is_none() {
                *health = Some(AnyConnection::connect(&self.url).await?);
            }
            match health.as_mut() {
                Some(conn) => sqlx::query("SELECT 1").execute(conn).await.map(|_| ()),
                None => Err(sqlx::Error::PoolClosed),
            }
        })
        .await;
        let failed = match checked {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => self.db_error(e),
            Err(_) => kv::unavailable(&self.name, "the health check timed out"),
        };
        *health = None;
        Err(failed)
    }

    /// Deletes expired keys and forgotten idempotency tokens.
    pub async fn sweep(&self) -> Result<u64, Error> {
        let now = epoch_ms();
        let _turn = self.write_turn().await?;
        let removed =
            sqlx::query("DELETE FROM prism_kv WHERE expires_at IS NOT NULL AND expires_at <= $1")
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(|e| self.db_error(e))?
                .rows_affected();
        for table in ["prism_kv_idempotency", "prism_transact_idempotency"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE expires_at <= $1"))
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(|e| self.db_error(e))?;
        }
        Ok(removed)
    }

    pub(super) fn ready(&self) -> Result<(), Error> {
        if self.is_migrated() {
            Ok(())
        } else {
            Err(kv::unavailable(&self.name, "not connected yet"))
        }
    }

    pub fn db_error(&self, e: sqlx::Error) -> Error {
        map_db_error(&self.name, self.dialect, e)
    }

    async fn fetch_record(
        &self,
        conn: &mut AnyConnection,
        ns: &str,
        key: &str,
        now: i64,
    ) -> Result<Option<Record>, Error> {
        let row = sqlx::query(&format!(
            "SELECT value, version, expires_at FROM prism_kv \
             WHERE namespace = $1 AND key = $2 AND {LIVE}"
        ))
        .bind(ns)
        .bind(key.as_bytes())
        .bind(now)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| self.db_error(e))?;
        row.map(|r| record_from_row(&r, now)).transpose()
    }

    async fn apply(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error> {
        self.ready()?;
        let now = epoch_ms();
        let (mut tx, _turn) = self.begin_write().await?;

        // Lock first: keys, and the token so concurrent retries serialise.
        let mut locks: Vec<String> = batch
            .ops
            .iter()
            .map(|op| format!("kv/{ns}/{}", op.key))
            .collect();
        if let Some(idem) = &batch.idempotency {
            locks.push(format!("idem/{ns}/{}", idem.id));
        }
        locks.sort();
        match self.dialect {
            Dialect::Postgres => postgres::lock(&mut tx, &locks).await,
            Dialect::Sqlite => sqlite::lock(&mut tx).await,
        }
        .map_err(|e| self.db_error(e))?;

        if let Some(idem) = &batch.idempotency {
            let known = sqlx::query(
                "SELECT fingerprint, outcome FROM prism_kv_idempotency \
                 WHERE namespace = $1 AND token = $2 AND expires_at > $3",
            )
            .bind(ns)
            .bind(&idem.id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
            if let Some(row) = known {
                let fingerprint: String = row.try_get(0).map_err(|e| self.db_error(e))?;
                if fingerprint != idem.fingerprint {
                    return Err(idempotency_reused(&idem.id));
                }
                let outcome: String = row.try_get(1).map_err(|e| self.db_error(e))?;
                return Applied::decode_replay(&outcome);
            }
        }

        let mut current = Vec::with_capacity(batch.ops.len());
        for op in &batch.ops {
            let version = self
                .fetch_record(&mut tx, ns, &op.key, now)
                .await?
                .map_or(0, |r| r.version);
            current.push(Current { version });
        }
        check_preconditions(&batch.ops, &current)?;

        let puts = batch
            .ops
            .iter()
            .filter(|op| matches!(op.action, Action::Put { .. }))
            .count();
        let mut versions = match self.dialect {
            Dialect::Postgres => postgres::allocate_versions(&mut tx, puts).await,
            Dialect::Sqlite => sqlite::allocate_versions(&mut tx, puts).await,
        }
        .map_err(|e| self.db_error(e))?
        .into_iter();

        let mut results = Vec::with_capacity(batch.ops.len());
        for (op, cur) in batch.ops.iter().zip(&current) {
            match &op.action {
                Action::Put { value, ttl } => {
                    let version = versions
                        .next()
                        .ok_or_else(|| Error::internal("version allocation came up short"))?;
                    sqlx::query(
                        "INSERT INTO prism_kv (namespace, key, value, version, expires_at) \
                         VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, \
                         version = excluded.version, expires_at = excluded.expires_at",
                    )
                    .bind(ns)
                    .bind(op.key.as_bytes())
                    .bind(value.as_slice())
                    .bind(version as i64)
                    .bind(ttl.map(|t| now.saturating_add(ttl_ms(t))))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.db_error(e))?;
                    results.push(version);
                }
                Action::Delete => {
                    sqlx::query("DELETE FROM prism_kv WHERE namespace = $1 AND key = $2")
                        .bind(ns)
                        .bind(op.key.as_bytes())
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| self.db_error(e))?;
                    results.push(u64::from(cur.version != 0));
                }
            }
        }

        if let Some(idem) = &batch.idempotency {
            sqlx::query(
                "INSERT INTO prism_kv_idempotency (namespace, token, fingerprint, outcome, expires_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (namespace, token) DO UPDATE SET fingerprint = excluded.fingerprint, \
                 outcome = excluded.outcome, expires_at = excluded.expires_at",
            )
            .bind(ns)
            .bind(&idem.id)
            .bind(&idem.fingerprint)
            .bind(Applied::encode(&results))
            .bind(now.saturating_add(ttl_ms(idem.retain)))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db_error(e))?;
        }
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(Applied {
            results,
            replayed: false,
        })
    }
}

/// Maps a database error to what the client may do about it; SQL text
/// and server messages stay in the log.
pub fn map_db_error(name: &str, dialect: Dialect, e: sqlx::Error) -> Error {
    use sqlx::Error as E;
    match &e {
        E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::Tls(_) | E::WorkerCrashed => {
            kv::unavailable(name, "cannot connect")
        }
        E::Database(db) => {
            let code = db.code().unwrap_or_default();
            let transient = match dialect {
                // connection exceptions, operator intervention, resources
                Dialect::Postgres => {
                    code.starts_with("08") || code.starts_with("57P") || code.starts_with("53")
                }
                // SQLITE_BUSY, SQLITE_LOCKED and their extended codes
                Dialect::Sqlite => matches!(code.as_ref(), "5" | "6" | "261" | "262" | "517"),
            };
            if transient {
                return kv::unavailable(name, "busy or restarting");
            }
            // (55P03: a row lock not granted within `lock_timeout`, as a
            // grouped Write's wait is bounded.)
            if matches!(code.as_ref(), "40001" | "40P01" | "55P03") {
                return Error::new(
                    ErrorKind::Aborted,
                    "WRITE_CONFLICT",
                    "the write conflicted with a concurrent one and was not applied; retry it",
                );
            }
            if let Some(e) = constraint_error(db.as_ref()) {
                return e;
            }
            if dialect == Dialect::Postgres && code == "42P10" {
                return Error::new(
                    ErrorKind::FailedPrecondition,
                    "NOT_A_UNIQUE_KEY",
                    "an upsert's id field must be the table's primary key or a unique column",
                );
            }
            if dialect == Dialect::Postgres && code == "57014" {
                return Error::new(
                    ErrorKind::DeadlineExceeded,
                    "TRANSACTION_TIMEOUT",
                    "a statement ran past the transaction's timeout; nothing was written",
                );
            }
            // data exceptions: a value that does not fit its column
            if dialect == Dialect::Postgres && code.starts_with("22") {
                return Error::invalid_argument(
                    "INVALID_VALUE",
                    "a value does not fit its column (out of range or badly formed); nothing \
                     was written",
                );
            }
            tracing::error!(backend = %name, error = %e, "database error");
            Error::internal(format!(
                "backend `{}` failed the operation; the gateway log has details",
                name
            ))
        }
        _ => {
            tracing::error!(backend = %name, error = %e, "database error");
            Error::internal(format!(
                "backend `{}` failed the operation; the gateway log has details",
                name
            ))
        }
    }
}

/// A table constraint that refused a write, as the client's error.
fn constraint_error(db: &dyn sqlx::error::DatabaseError) -> Option<Error> {
    use sqlx::error::ErrorKind as K;
    let (kind, what) = match db.kind() {
        K::UniqueViolation => (
            ErrorKind::AlreadyExists,
            "a row with this key already exists",
        ),
        K::ForeignKeyViolation => (ErrorKind::FailedPrecondition, "a referenced row is missing"),
        K::NotNullViolation => (ErrorKind::FailedPrecondition, "a required field is missing"),
        K::CheckViolation => (ErrorKind::FailedPrecondition, "a check constraint failed"),
        _ => return None,
    };
    let detail = match db.constraint() {
        Some(name) => format!("{what}: constraint `{name}`"),
        None => what.to_string(),
    };
    Some(super::transact::constraint_violation(kind, &detail))
}

fn ttl_ms(d: Duration) -> i64 {
    (d.as_millis().min(i64::MAX as u128) as i64).max(1)
}

fn record_from_row(row: &AnyRow, now: i64) -> Result<Record, Error> {
    let corrupt = |_| Error::internal("a stored row has an unexpected shape");
    let value: Vec<u8> = row.try_get(0).map_err(corrupt)?;
    let version: i64 = row.try_get(1).map_err(corrupt)?;
    let expires: Option<i64> = row.try_get(2).map_err(corrupt)?;
    Ok(Record {
        value,
        version: version as u64,
        ttl: expires.map(|e| Duration::from_millis(e.saturating_sub(now).max(0) as u64)),
    })
}

#[async_trait]
impl KeyValueBasic for SqlBackend {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Record>, Error> {
        self.ready()?;
        let mut conn = self.pool.acquire().await.map_err(|e| self.db_error(e))?;
        self.fetch_record(&mut conn, ns, key, epoch_ms()).await
    }

    async fn write(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error> {
        self.apply(ns, batch).await
    }
}

#[async_trait]
impl KeyValueScan for SqlBackend {
    async fn scan(
        &self,
        ns: &str,
        prefix: &str,
        cursor: &str,
        limit: usize,
        keys_only: bool,
    ) -> Result<ScanPage, Error> {
        self.ready()?;
        let after = kv::cursor_key(cursor)?;
        let end = kv::prefix_end(prefix.as_bytes());
        let columns = if keys_only {
            "key, version"
        } else {
            "key, version, value"
        };
        let mut sql =
            format!("SELECT {columns} FROM prism_kv WHERE namespace = $1 AND key >= $2 AND {LIVE}");
        let mut next = 4;
        if end.is_some() {
            sql.push_str(&format!(" AND key < ${next}"));
            next += 1;
        }
        if after.is_some() {
            sql.push_str(&format!(" AND key > ${next}"));
            next += 1;
        }
        sql.push_str(&format!(" ORDER BY key LIMIT ${next}"));
        let mut query = sqlx::query(&sql)
            .bind(ns)
            .bind(prefix.as_bytes())
            .bind(epoch_ms());
        if let Some(end) = end {
            query = query.bind(end);
        }
        if let Some(after) = after {
            query = query.bind(after.into_bytes());
        }
        let rows = query
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        let corrupt = |_| Error::internal("a stored row has an unexpected shape");
        let items = rows
            .iter()
            .map(|row| {
                let key: Vec<u8> = row.try_get(0).map_err(corrupt)?;
                let version: i64 = row.try_get(1).map_err(corrupt)?;
                let value: Vec<u8> = if keys_only {
                    Vec::new()
                } else {
                    row.try_get(2).map_err(corrupt)?
                };
                Ok(ScanItem {
                    cursor: kv::encode_cursor(&key),
                    key: String::from_utf8(key)
                        .map_err(|_| Error::internal("a stored key is not UTF-8"))?,
                    value,
                    version: version as u64,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(ScanPage { items })
    }

    async fn count(&self, ns: &str, prefix: &str) -> Result<u64, Error> {
        self.ready()?;
        let end = kv::prefix_end(prefix.as_bytes());
        let mut sql =
            format!("SELECT COUNT(*) FROM prism_kv WHERE namespace = $1 AND key >= $2 AND {LIVE}");
        if end.is_some() {
            sql.push_str(" AND key < $4");
        }
        let mut query = sqlx::query(&sql)
            .bind(ns)
            .bind(prefix.as_bytes())
            .bind(epoch_ms());
        if let Some(end) = end {
            query = query.bind(end);
        }
        let row = query
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.db_error(e))?;
        let n: i64 = row
            .try_get(0)
            .map_err(|_| Error::internal("count returned an unexpected shape"))?;
        Ok(n.max(0) as u64)
    }
}

#[async_trait]
impl KeyValueTtl for SqlBackend {
    async fn expire(&self, ns: &str, key: &str, ttl: Duration) -> Result<bool, Error> {
        self.ready()?;
        let now = epoch_ms();
        let done = sqlx::query(&format!(
            "UPDATE prism_kv SET expires_at = $4 WHERE namespace = $1 AND key = $2 AND {LIVE}"
        ))
        .bind(ns)
        .bind(key.as_bytes())
        .bind(now)
        .bind(now.saturating_add(ttl_ms(ttl)))
        .execute(&self.pool)
        .await
        .map_err(|e| self.db_error(e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn ttl(&self, ns: &str, key: &str) -> Result<Option<Option<Duration>>, Error> {
        Ok(self.get(ns, key).await?.map(|r| r.ttl))
    }

    async fn persist(&self, ns: &str, key: &str) -> Result<Option<bool>, Error> {
        self.ready()?;
        let now = epoch_ms();
        let (mut tx, _turn) = self.begin_write().await?;
        let Some(record) = self.fetch_record(&mut tx, ns, key, now).await? else {
            return Ok(None);
        };
        if record.ttl.is_some() {
            sqlx::query("UPDATE prism_kv SET expires_at = NULL WHERE namespace = $1 AND key = $2")
                .bind(ns)
                .bind(key.as_bytes())
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_error(e))?;
        }
        tx.commit().await.map_err(|e| self.db_error(e))?;
        Ok(Some(record.ttl.is_some()))
    }
}

#[async_trait]
impl KeyValueBatch for SqlBackend {
    async fn batch_get(&self, ns: &str, keys: &[String]) -> Result<Vec<Option<Record>>, Error> {
        self.ready()?;
        let now = epoch_ms();
        let mut conn = self.pool.acquire().await.map_err(|e| self.db_error(e))?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.fetch_record(&mut conn, ns, key, now).await?);
        }
        Ok(out)
    }

    async fn batch_write(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error> {
        self.apply(ns, batch).await
    }
}

#[async_trait]
impl KeyValueCas for SqlBackend {
    async fn compare_and_swap(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error> {
        self.apply(ns, batch).await
    }
}

#[async_trait]
impl KeyValueTransactional for SqlBackend {
    async fn transact(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error> {
        self.apply(ns, batch).await
    }
}
