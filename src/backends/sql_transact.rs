//! `transact_outbox` on the SQL backends (SQLite and Postgres): data writes
//! on configured tables, built from the learned schema (identifiers quoted,
//! values bound), and the mailbox tables `prism_mailbox` (rows) and
//! `prism_mailbox_sequence` (one counter row per mailbox, locked by the
//! writing transaction until it ends, so sequences commit in order).
//!
//! Postgres transactions run at the requested isolation with a statement
//! timeout, and `pg_notify('prism_mailbox', '<ns>/<mailbox>')` wakes relays
//! in every gateway at commit. SQLite takes the database write lock at a
//! transaction's first statement (not at BEGIN, so a stream that began and
//! waits blocks no writer): every transaction is serializable whatever was
//! asked. Open transactions per backend are capped below the pool's size
//! (`pool.max_transactions`) so other calls find a connection (when the
//! pool has more than one).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use prost_types::{value::Kind as V, Value};
use sqlx::{any::AnyRow, Any, Row, Transaction};

use super::{
    epoch_ms, kv, postgres,
    reader::{value_param, Column, Kind, Param, ReaderPaged, TableSchema},
    sql::{Dialect, SqlBackend},
    sql_reader::{decode, quote, read_expr, Sql},
    sqlite,
    transact::{
        row_not_found, DataOp, DeadLetterNote, Isolation, Lag, MailboxOp, MailboxQuery, MailboxRow,
        MailboxWaiter, MailboxWake, OpenTransaction, RelayCursor, RelayId, RelayLease,
        TransactOutbox, WriteMode, WriteOp, WriteOutcome,
    },
};
use crate::error::{Error, ErrorKind};

/// The channel relays LISTEN on; the payload is `<namespace>/<mailbox>`.
pub const NOTIFY_CHANNEL: &str = "prism_mailbox";

const MAILBOX_COLUMNS: &str = "message_id, mailbox_id, sequence, message, metadata, message_type, \
                               priority, created_at, processed_at";

impl SqlBackend {
    pub fn transact_handle(self: &Arc<Self>) -> Arc<dyn TransactOutbox> {
        Arc::new(SqlOutbox(self.clone()))
    }

    /// A Transact table's schema (learned once, like a Reader collection's).
    async fn table_schema(&self, table: &str, id: &str) -> Result<Arc<TableSchema>, Error> {
        self.schema(&format!("transact:{table}"), table, id)
            .await
            .map_err(|e| {
                if e.reason == "COLLECTION_TABLE_MISSING" {
                    Error::new(
                        ErrorKind::FailedPrecondition,
                        "TABLE_MISSING",
                        format!(
                            "table `{table}` (or its column `{id}`) does not exist on backend \
                             `{}`; create it",
                            self.name
                        ),
                    )
                    .with("table", table)
                } else {
                    e
                }
            })
    }
}

/// The Transact surface of one SQL backend.
pub struct SqlOutbox(Arc<SqlBackend>);

fn corrupt(_: sqlx::Error) -> Error {
    Error::internal("a stored mailbox row has an unexpected shape")
}

fn mailbox_row(r: &AnyRow) -> Result<MailboxRow, Error> {
    let metadata: String = r.try_get(4).map_err(corrupt)?;
    Ok(MailboxRow {
        message_id: r.try_get(0).map_err(corrupt)?,
        mailbox: r.try_get(1).map_err(corrupt)?,
        sequence: r.try_get(2).map_err(corrupt)?,
        message: r.try_get(3).map_err(corrupt)?,
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        message_type: r.try_get(5).map_err(corrupt)?,
        priority: r
            .try_get::<Option<i64>, _>(6)
            .map_err(corrupt)?
            .map(|p| p as i32),
        created_ms: r.try_get(7).map_err(corrupt)?,
        processed_ms: r.try_get(8).map_err(corrupt)?,
        dead_letters: Vec::new(),
    })
}

#[async_trait]
impl TransactOutbox for SqlOutbox {
    async fn begin(
        &self,
        ns: &str,
        isolation: Isolation,
        timeout: Duration,
    ) -> Result<Box<dyn OpenTransaction>, Error> {
        let kv = &self.0;
        kv.ready()?;
        let place = tokio::time::timeout(kv.wait, kv.transactions.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::ResourceExhausted,
                    "TRANSACTIONS_EXHAUSTED",
                    format!(
                        "backend `{}` has as many transactions open as it allows \
                         (pool.max_transactions, {}); none ended within {}; retry later",
                        kv.name,
                        kv.transactions_allowed(),
                        humantime::format_duration(kv.wait)
                    ),
                )
                .with("backend", kv.name.as_str())
            })?;
        let mut tx = kv.pool.begin().await.map_err(|e| kv.db_error(e))?;
        match kv.dialect {
            Dialect::Postgres => {
                let level = match isolation {
                    Isolation::Default => None,
                    Isolation::ReadCommitted => Some("READ COMMITTED"),
                    Isolation::RepeatableRead => Some("REPEATABLE READ"),
                    Isolation::Serializable => Some("SERIALIZABLE"),
                };
                if let Some(level) = level {
                    sqlx::query(&format!("SET TRANSACTION ISOLATION LEVEL {level}"))
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| kv.db_error(e))?;
                }
                let ms = timeout.as_millis().clamp(1, i32::MAX as u128);
                sqlx::query(&format!("SET LOCAL statement_timeout = {ms}"))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| kv.db_error(e))?;
            }
            // SQLite takes the write lock at the transaction's first
            // statement (`SqlTransaction::lock`), not at BEGIN: a stream
            // that began and waits holds no lock.
            Dialect::Sqlite => {}
        }
        Ok(Box::new(SqlTransaction {
            kv: kv.clone(),
            tx,
            ns: ns.to_string(),
            notified: Vec::new(),
            notified_at_savepoint: 0,
            locked: kv.dialect != Dialect::Sqlite,
            _place: place,
        }))
    }

    async fn read_mailbox(&self, ns: &str, q: &MailboxQuery) -> Result<Vec<MailboxRow>, Error> {
        let kv = &self.0;
        kv.ready()?;
        let pending = if q.unprocessed_only {
            " AND processed_at IS NULL"
        } else {
            ""
        };
        let rows = sqlx::query(&format!(
            "SELECT {MAILBOX_COLUMNS} FROM prism_mailbox \
             WHERE namespace = $1 AND mailbox_id = $2 AND sequence > $3{pending} \
             ORDER BY sequence LIMIT $4"
        ))
        .bind(ns)
        .bind(q.mailbox.as_str())
        .bind(q.after)
        .bind(q.limit.min(i64::MAX as usize) as i64)
        .fetch_all(&kv.pool)
        .await
        .map_err(|e| kv.db_error(e))?;
        let mut rows = rows
            .iter()
            .map(mailbox_row)
            .collect::<Result<Vec<_>, _>>()?;
        if q.with_dead_letters {
            self.note_dead_letters(ns, &q.mailbox, &mut rows).await?;
        }
        Ok(rows)
    }

    async fn process(
        &self,
        ns: &str,
        mailbox: Option<&str>,
        message_ids: &[String],
    ) -> Result<Vec<String>, Error> {
        let kv = &self.0;
        kv.ready()?;
        let now = epoch_ms();
        let mut tx = kv.pool.begin().await.map_err(|e| kv.db_error(e))?;
        let mut unknown = Vec::new();
        let sql = match mailbox {
            None => {
                "UPDATE prism_mailbox SET processed_at = COALESCE(processed_at, $3) \
                 WHERE namespace = $1 AND message_id = $2"
            }
            Some(_) => {
                "UPDATE prism_mailbox SET processed_at = COALESCE(processed_at, $3) \
                 WHERE namespace = $1 AND message_id = $2 AND mailbox_id = $4"
            }
        };
        for id in message_ids {
            let mut query = sqlx::query(sql).bind(ns).bind(id.as_str()).bind(now);
            if let Some(mailbox) = mailbox {
                query = query.bind(mailbox);
            }
            let found = query
                .execute(&mut *tx)
                .await
                .map_err(|e| kv.db_error(e))?
                .rows_affected();
            if found == 0 {
                unknown.push(id.clone());
            }
        }
        tx.commit().await.map_err(|e| kv.db_error(e))?;
        Ok(unknown)
    }

    async fn relay_cursor(&self, relay: &RelayId) -> Result<RelayCursor, Error> {
        let kv = &self.0;
        kv.ready()?;
        let read = || {
            sqlx::query(
                "SELECT through, attempts FROM prism_relay_cursor \
                 WHERE namespace = $1 AND relay = $2 AND mailbox_id = $3",
            )
            .bind(relay.namespace.as_str())
            .bind(relay.name.as_str())
            .bind(relay.mailbox.as_str())
        };
        let mut row = read()
            .fetch_optional(&kv.pool)
            .await
            .map_err(|e| kv.db_error(e))?;
        if row.is_none() {
            start_cursor(&kv.pool, relay)
                .await
                .map_err(|e| kv.db_error(e))?;
            row = read()
                .fetch_optional(&kv.pool)
                .await
                .map_err(|e| kv.db_error(e))?;
        }
        let row = row.ok_or_else(|| Error::internal("a relay cursor vanished as it was made"))?;
        Ok(RelayCursor {
            through: row.try_get(0).map_err(corrupt)?,
            attempts: u32::try_from(row.try_get::<i64, _>(1).map_err(corrupt)?).unwrap_or(u32::MAX),
        })
    }

    async fn advance_relay(&self, relay: &RelayId, through: i64) -> Result<(), Error> {
        let kv = &self.0;
        kv.ready()?;
        advance(&kv.pool, relay, through)
            .await
            .map_err(|e| kv.db_error(e))
    }

    async fn relay_refused(
        &self,
        relay: &RelayId,
        cursor: RelayCursor,
        error: &str,
    ) -> Result<(), Error> {
        let kv = &self.0;
        kv.ready()?;
        sqlx::query(
            "UPDATE prism_relay_cursor SET attempts = $5, last_error = $6, updated_at = $7 \
             WHERE namespace = $1 AND relay = $2 AND mailbox_id = $3 AND through = $4",
        )
        .bind(relay.namespace.as_str())
        .bind(relay.name.as_str())
        .bind(relay.mailbox.as_str())
        .bind(cursor.through)
        .bind(i64::from(cursor.attempts))
        .bind(error)
        .bind(epoch_ms())
        .execute(&kv.pool)
        .await
        .map_err(|e| kv.db_error(e))?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        relay: &RelayId,
        row: &MailboxRow,
        attempts: u32,
        error: &str,
    ) -> Result<(), Error> {
        let kv = &self.0;
        kv.ready()?;
        let mut tx = kv.pool.begin().await.map_err(|e| kv.db_error(e))?;
        sqlx::query(
            "INSERT INTO prism_mailbox_dead_letter \
               (namespace, mailbox_id, sequence, relay, message_id, attempts, error, dead_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (namespace, mailbox_id, sequence, relay) DO NOTHING",
        )
        .bind(relay.namespace.as_str())
        .bind(row.mailbox.as_str())
        .bind(row.sequence)
        .bind(relay.name.as_str())
        .bind(row.message_id.as_str())
        .bind(i64::from(attempts))
        .bind(error)
        .bind(epoch_ms())
        .execute(&mut *tx)
        .await
        .map_err(|e| kv.db_error(e))?;
        advance(&mut *tx, relay, row.sequence)
            .await
            .map_err(|e| kv.db_error(e))?;
        tx.commit().await.map_err(|e| kv.db_error(e))
    }

    async fn lag(&self, ns: &str, mailbox: &str, after: i64) -> Result<Lag, Error> {
        let kv = &self.0;
        kv.ready()?;
        let row = sqlx::query(
            "SELECT COUNT(*), MIN(created_at) FROM prism_mailbox \
             WHERE namespace = $1 AND mailbox_id = $2 AND sequence > $3",
        )
        .bind(ns)
        .bind(mailbox)
        .bind(after)
        .fetch_one(&kv.pool)
        .await
        .map_err(|e| kv.db_error(e))?;
        Ok(Lag {
            unprocessed: row.try_get::<i64, _>(0).map_err(corrupt)?.max(0) as u64,
            oldest_created_ms: row.try_get(1).map_err(corrupt)?,
        })
    }

    fn relay_lease(&self, relay: &RelayId) -> Box<dyn RelayLease> {
        match &self.0.listen_url {
            Some(url) => Box::new(PgRelayLease {
                url: url.clone(),
                key: format!(
                    "prism-relay/{}/{}/{}",
                    relay.namespace, relay.name, relay.mailbox
                ),
                wait: self.0.wait,
                conn: None,
                held: false,
                backend: self.0.name.clone(),
            }),
            None => Box::new(OneHost),
        }
    }

    fn mailbox_waiter(&self, namespace: &str, mailbox: &str) -> Box<dyn MailboxWaiter> {
        let written = self.0.outbox_written.subscribe();
        Box::new(SqlMailboxWaiter {
            key: format!("{namespace}/{mailbox}"),
            written,
            listen_url: self.0.listen_url.clone(),
            listener: None,
            retry_at: None,
        })
    }
}

/// Moves a relay's cursor forward to `through` (never back) and clears
/// the next row's failed attempts.
async fn advance<'e, E>(db: E, relay: &RelayId, through: i64) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    sqlx::query(
        "UPDATE prism_relay_cursor SET through = $4, attempts = 0, last_error = NULL, \
         updated_at = $5 WHERE namespace = $1 AND relay = $2 AND mailbox_id = $3 AND through < $4",
    )
    .bind(relay.namespace.as_str())
    .bind(relay.name.as_str())
    .bind(relay.mailbox.as_str())
    .bind(through)
    .bind(epoch_ms())
    .execute(db)
    .await
    .map(|_| ())
}

/// Makes a relay's cursor if it has none. A new relay starts before its
/// mailbox's first unprocessed row — where a relay of an earlier version
/// (which marked rows processed as it published them) stopped; on a
/// mailbox with none, after its last row. Cursors are made when the
/// backend is migrated, before any client can mark a row processed, so
/// clients never move where a relay starts.
pub(super) async fn start_cursor<'e, E>(db: E, relay: &RelayId) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    sqlx::query(
        "INSERT INTO prism_relay_cursor \
           (namespace, relay, mailbox_id, through, attempts, updated_at) \
         SELECT $1, $2, $3, COALESCE( \
             (SELECT MIN(sequence) - 1 FROM prism_mailbox \
              WHERE namespace = $1 AND mailbox_id = $3 AND processed_at IS NULL), \
             (SELECT MAX(sequence) FROM prism_mailbox \
              WHERE namespace = $1 AND mailbox_id = $3), \
             0), 0, $4 \
         ON CONFLICT (namespace, relay, mailbox_id) DO NOTHING",
    )
    .bind(relay.namespace.as_str())
    .bind(relay.name.as_str())
    .bind(relay.mailbox.as_str())
    .bind(epoch_ms())
    .execute(db)
    .await
    .map(|_| ())
}

impl SqlOutbox {
    /// Attaches to each row the relays that moved it aside.
    async fn note_dead_letters(
        &self,
        ns: &str,
        mailbox: &str,
        rows: &mut [MailboxRow],
    ) -> Result<(), Error> {
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Ok(());
        };
        let kv = &self.0;
        let notes = sqlx::query(
            "SELECT sequence, relay, attempts, error FROM prism_mailbox_dead_letter \
             WHERE namespace = $1 AND mailbox_id = $2 AND sequence BETWEEN $3 AND $4 \
             ORDER BY sequence, relay",
        )
        .bind(ns)
        .bind(mailbox)
        .bind(first.sequence)
        .bind(last.sequence)
        .fetch_all(&kv.pool)
        .await
        .map_err(|e| kv.db_error(e))?;
        for n in &notes {
            let sequence: i64 = n.try_get(0).map_err(corrupt)?;
            if let Ok(i) = rows.binary_search_by_key(&sequence, |r| r.sequence) {
                rows[i].dead_letters.push(DeadLetterNote {
                    relay: n.try_get(1).map_err(corrupt)?,
                    attempts: u32::try_from(n.try_get::<i64, _>(2).map_err(corrupt)?)
                        .unwrap_or(u32::MAX),
                    error: n.try_get(3).map_err(corrupt)?,
                });
            }
        }
        Ok(())
    }
}

/// A relay's lease on Postgres: `pg_try_advisory_lock` on a connection of
/// its own, kept while held (see [`RelayLease`]).
struct PgRelayLease {
    url: String,
    /// `prism-relay/<namespace>/<relay>/<mailbox>`, hashed by the server.
    key: String,
    /// Bounds each step (connect, query) by the pool's connect timeout.
    wait: Duration,
    conn: Option<sqlx::postgres::PgConnection>,
    held: bool,
    backend: String,
}

impl PgRelayLease {
    async fn try_hold(&mut self) -> Result<bool, sqlx::Error> {
        use sqlx::Connection as _;
        if self.conn.is_none() {
            self.held = false;
            let mut conn = sqlx::postgres::PgConnection::connect(&self.url).await?;
            // A gateway whose host dies sends no FIN: the server drops its
            // session (and the lock) once keepalives go unanswered, about
            // 11 s, not the kernel's default two hours.
            for set in [
                "SET tcp_keepalives_idle = 5",
                "SET tcp_keepalives_interval = 2",
                "SET tcp_keepalives_count = 3",
                "SET tcp_user_timeout = 10000",
            ] {
                // (Best effort: an older server lacks tcp_user_timeout.)
                if let Err(e) = sqlx::query(set).execute(&mut conn).await {
                    tracing::debug!(error = %e, set, "relay lease connection setting");
                }
            }
            self.conn = Some(conn);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(false);
        };
        if self.held {
            // Still ours while the connection lives.
            sqlx::query("SELECT 1").execute(&mut *conn).await?;
            return Ok(true);
        }
        let taken: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(self.key.as_str())
                .fetch_one(&mut *conn)
                .await?;
        self.held = taken;
        Ok(taken)
    }
}

#[async_trait]
impl RelayLease for PgRelayLease {
    fn release(&mut self) {
        // Closing the connection ends the session and its lock.
        self.conn = None;
        self.held = false;
    }

    async fn hold(&mut self) -> Result<bool, Error> {
        match tokio::time::timeout(self.wait, self.try_hold()).await {
            Ok(Ok(held)) => Ok(held),
            failed => {
                // The connection (and any lock it held) is gone: the next
                // round starts over.
                self.conn = None;
                self.held = false;
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                Err(kv::unavailable(
                    &self.backend,
                    format!("the relay lease connection failed: {why}"),
                ))
            }
        }
    }
}

/// A SQLite relay's lease: the file is one host's, so always held.
struct OneHost;

#[async_trait]
impl RelayLease for OneHost {
    fn release(&mut self) {}

    async fn hold(&mut self) -> Result<bool, Error> {
        Ok(true)
    }
}

/// How long a lost notification connection waits before connecting again.
const RELISTEN_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// [`MailboxWaiter`] on SQL: the in-process commit mark, and on Postgres a
/// dedicated `LISTEN prism_mailbox` connection (kept across waits, so no
/// notification is lost between them).
struct SqlMailboxWaiter {
    /// `<namespace>/<mailbox>`, the notifications' payload.
    key: String,
    written: tokio::sync::watch::Receiver<u64>,
    listen_url: Option<String>,
    listener: Option<sqlx::postgres::PgListener>,
    /// When to try listening again after the connection was lost.
    retry_at: Option<tokio::time::Instant>,
}

impl SqlMailboxWaiter {
    async fn listen(url: &str) -> Option<sqlx::postgres::PgListener> {
        let mut l = sqlx::postgres::PgListener::connect(url).await.ok()?;
        l.listen(NOTIFY_CHANNEL).await.ok()?;
        Some(l)
    }
}

#[async_trait]
impl MailboxWaiter for SqlMailboxWaiter {
    async fn next(&mut self) -> MailboxWake {
        loop {
            if self.listener.is_none() {
                if let Some(url) = self.listen_url.clone() {
                    let due = self
                        .retry_at
                        .is_none_or(|t| tokio::time::Instant::now() >= t);
                    if due {
                        self.listener = Self::listen(&url).await;
                        if self.listener.is_some() {
                            self.retry_at = None;
                            return MailboxWake::Listening;
                        }
                        self.retry_at = Some(tokio::time::Instant::now() + RELISTEN_AFTER);
                    }
                }
            }
            let retry_at = self.retry_at;
            let notified = async {
                match self.listener.as_mut() {
                    Some(l) => Some(l.recv().await),
                    None => {
                        match retry_at {
                            Some(t) => tokio::time::sleep_until(t).await,
                            None => std::future::pending().await,
                        }
                        None
                    }
                }
            };
            tokio::select! {
                changed = self.written.changed() => {
                    if changed.is_err() {
                        // The backend is gone: nothing will commit again.
                        std::future::pending::<()>().await;
                    }
                    return MailboxWake::Committed;
                }
                n = notified => match n {
                    Some(Ok(n)) if n.payload() == self.key => return MailboxWake::Notified,
                    Some(Ok(_)) | None => {}
                    Some(Err(e)) => {
                        tracing::debug!(mailbox = %self.key, error = %e, "listen connection lost");
                        self.listener = None;
                        self.retry_at = Some(tokio::time::Instant::now() + RELISTEN_AFTER);
                    }
                },
            }
        }
    }
}

/// An open transaction on a pooled connection.
struct SqlTransaction {
    kv: Arc<SqlBackend>,
    tx: Transaction<'static, Any>,
    ns: String,
    /// Mailboxes notified in this transaction (once each).
    notified: Vec<String>,
    /// How many were notified at the latest savepoint: a rollback to it
    /// takes the later notifications back, so they are sent again.
    notified_at_savepoint: usize,
    /// SQLite: whether this transaction holds the write lock yet.
    locked: bool,
    /// Its place among the backend's open transactions.
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl SqlTransaction {
    fn err(&self, e: sqlx::Error) -> Error {
        self.kv.db_error(e)
    }

    /// SQLite: takes the database write lock before the transaction's
    /// first statement (a deferred transaction that read first could not
    /// upgrade while another writer holds it); waits out `busy_timeout`.
    async fn lock(&mut self) -> Result<(), Error> {
        if !self.locked {
            sqlite::lock(&mut self.tx)
                .await
                .map_err(|e| self.kv.db_error(e))?;
            self.locked = true;
        }
        Ok(())
    }

    /// Runs a fixed statement in the transaction.
    async fn statement(&mut self, sql: &'static str) -> Result<(), Error> {
        sqlx::query(sql)
            .execute(&mut *self.tx)
            .await
            .map(|_| ())
            .map_err(|e| self.kv.db_error(e))
    }

    /// Runs a built statement in the transaction; rows affected.
    async fn execute(&mut self, sql: &Sql) -> Result<u64, Error> {
        sql.query()
            .execute(&mut *self.tx)
            .await
            .map(|r| r.rows_affected())
            .map_err(|e| self.kv.db_error(e))
    }

    async fn data(&mut self, op: &DataOp) -> Result<WriteOutcome, Error> {
        let schema = self.kv.table_schema(&op.table, &op.table_id).await?;
        // The request's id_field, or the table's id.
        let id_idx = schema.column(&op.id)?;
        let dialect = self.kv.dialect;
        let mut sql = Sql::new(dialect);
        let table = quote(&op.table);
        let id_col = &schema.columns[id_idx];
        // Every field as (column index, bound placeholder or NULL).
        let mut fields = Vec::with_capacity(op.record.len());
        for (name, value) in &op.record {
            let i = schema.column(name)?;
            let c = &schema.columns[i];
            let ph = match write_param(c, value)? {
                Some(p) => sql.param(c, p),
                None => "NULL".to_string(),
            };
            fields.push((i, ph));
        }
        let id_ph = || {
            fields
                .iter()
                .find(|(i, _)| *i == id_idx)
                .map(|(_, ph)| ph.clone())
                .ok_or_else(|| {
                    Error::invalid_argument(
                        "MISSING_ID",
                        format!(
                            "this write mode finds its row by `{}`; put it in the record",
                            id_col.name
                        ),
                    )
                    .with("field", id_col.name.clone())
                })
        };
        let assignments = |excluded: bool| {
            fields
                .iter()
                .filter(|(i, _)| *i != id_idx)
                .map(|(i, ph)| {
                    let c = quote(&schema.columns[*i].name);
                    if excluded {
                        format!("{c} = excluded.{c}")
                    } else {
                        format!("{c} = {ph}")
                    }
                })
                .collect::<Vec<_>>()
        };
        let returning = || {
            let set: Vec<usize> = fields.iter().map(|(i, _)| *i).collect();
            let exprs: Vec<(usize, String)> = (0..schema.columns.len())
                .filter(|i| !set.contains(i))
                .map(|i| {
                    let c = &schema.columns[i];
                    (
                        i,
                        format!(
                            "{} AS prism_c{i}",
                            read_expr(dialect, c, &schema.sql_types[i])
                        ),
                    )
                })
                .collect();
            exprs
        };
        let insert = |sql_text: &mut String| {
            let cols: Vec<String> = fields
                .iter()
                .map(|(i, _)| quote(&schema.columns[*i].name))
                .collect();
            let vals: Vec<&str> = fields.iter().map(|(_, ph)| ph.as_str()).collect();
            if cols.is_empty() {
                *sql_text = format!("INSERT INTO {table} DEFAULT VALUES");
            } else {
                *sql_text = format!(
                    "INSERT INTO {table} ({}) VALUES ({})",
                    cols.join(", "),
                    vals.join(", ")
                );
            }
        };
        let generated = match op.mode {
            WriteMode::Insert | WriteMode::Upsert => {
                let mut text = String::new();
                insert(&mut text);
                if op.mode == WriteMode::Upsert {
                    id_ph()?;
                    let set = assignments(true);
                    if set.is_empty() {
                        text.push_str(&format!(
                            " ON CONFLICT ({}) DO NOTHING",
                            quote(&id_col.name)
                        ));
                    } else {
                        text.push_str(&format!(
                            " ON CONFLICT ({}) DO UPDATE SET {}",
                            quote(&id_col.name),
                            set.join(", ")
                        ));
                    }
                }
                let ret = returning();
                if ret.is_empty() {
                    sql.text = text;
                    let n = self.execute(&sql).await?;
                    return Ok(WriteOutcome {
                        rows_affected: n as i64,
                        ..Default::default()
                    });
                }
                let list: Vec<&str> = ret.iter().map(|(_, e)| e.as_str()).collect();
                sql.text = format!("{text} RETURNING {}", list.join(", "));
                let rows = sql
                    .query()
                    .fetch_all(&mut *self.tx)
                    .await
                    .map_err(|e| self.kv.db_error(e))?;
                let mut generated = BTreeMap::new();
                if let Some(row) = rows.first() {
                    for (n, (i, _)) in ret.iter().enumerate() {
                        let c = &schema.columns[*i];
                        let v = decode(row, n, c.kind).map_err(|e| self.kv.db_error(e))?;
                        if !matches!(v.kind, Some(V::NullValue(_))) {
                            generated.insert(c.name.clone(), v);
                        }
                    }
                }
                return Ok(WriteOutcome {
                    rows_affected: rows.len() as i64,
                    generated,
                    mailbox: None,
                });
            }
            WriteMode::Update => {
                let id = id_ph()?;
                let set = assignments(false);
                if set.is_empty() {
                    return Err(Error::invalid_argument(
                        "NOTHING_TO_UPDATE",
                        "an update needs at least one field besides the id",
                    ));
                }
                sql.text = format!(
                    "UPDATE {table} SET {} WHERE {} = {id}",
                    set.join(", "),
                    quote(&id_col.name)
                );
                BTreeMap::new()
            }
            WriteMode::Delete => {
                let id = id_ph()?;
                if fields.len() > 1 {
                    return Err(Error::invalid_argument(
                        "DELETE_TAKES_ID_ONLY",
                        format!("a delete's record holds only `{}`", id_col.name),
                    ));
                }
                sql.text = format!("DELETE FROM {table} WHERE {} = {id}", quote(&id_col.name));
                BTreeMap::new()
            }
        };
        let n = self.execute(&sql).await?;
        if n == 0 {
            return Err(row_not_found(&op.table, &id_col.name));
        }
        Ok(WriteOutcome {
            rows_affected: n as i64,
            generated,
            mailbox: None,
        })
    }

    async fn mailbox(&mut self, op: &MailboxOp) -> Result<(String, i64), Error> {
        let message_id = format!("msg-{}", hex::encode(rand::random::<[u8; 12]>()));
        let metadata = serde_json::to_string(&op.metadata).unwrap_or_else(|_| "{}".into());
        let sequence = if self.kv.dialect == Dialect::Postgres {
            // The counter and the row in one statement: one round trip
            // fewer per Write, which is what a group of Writes queues on.
            let row = sqlx::query(
                "WITH seq AS (INSERT INTO prism_mailbox_sequence (namespace, mailbox_id, \
                 last_sequence) VALUES ($1, $2, 1) ON CONFLICT (namespace, mailbox_id) \
                 DO UPDATE SET last_sequence = prism_mailbox_sequence.last_sequence + 1 \
                 RETURNING last_sequence) \
                 INSERT INTO prism_mailbox (namespace, mailbox_id, sequence, message_id, message, \
                 metadata, message_type, priority, created_at) \
                 SELECT $1, $2, last_sequence, $3, $4, $5, $6, $7, $8 FROM seq RETURNING sequence",
            )
            .bind(self.ns.as_str())
            .bind(op.mailbox.as_str())
            .bind(message_id.as_str())
            .bind(op.message.as_slice())
            .bind(metadata)
            .bind(op.message_type.as_deref())
            .bind(op.priority.map(i64::from))
            .bind(epoch_ms())
            .fetch_one(&mut *self.tx)
            .await
            .map_err(|e| self.kv.db_error(e))?;
            row.try_get::<i64, _>(0).map_err(|e| self.kv.db_error(e))?
        } else {
            self.mailbox_in_two(op, &message_id, metadata).await?
        };
        if self.kv.dialect == Dialect::Postgres && !self.notified.contains(&op.mailbox) {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(format!("{}/{}", self.ns, op.mailbox))
                .execute(&mut *self.tx)
                .await
                .map_err(|e| self.kv.db_error(e))?;
        }
        if !self.notified.contains(&op.mailbox) {
            self.notified.push(op.mailbox.clone());
        }
        Ok((message_id, sequence))
    }

    /// SQLite (no INSERT in a WITH): the counter, then the row.
    async fn mailbox_in_two(
        &mut self,
        op: &MailboxOp,
        message_id: &str,
        metadata: String,
    ) -> Result<i64, Error> {
        let row = sqlx::query(
            "INSERT INTO prism_mailbox_sequence (namespace, mailbox_id, last_sequence) \
             VALUES ($1, $2, 1) ON CONFLICT (namespace, mailbox_id) \
             DO UPDATE SET last_sequence = prism_mailbox_sequence.last_sequence + 1 \
             RETURNING last_sequence",
        )
        .bind(self.ns.as_str())
        .bind(op.mailbox.as_str())
        .fetch_one(&mut *self.tx)
        .await
        .map_err(|e| self.kv.db_error(e))?;
        let sequence: i64 = row.try_get(0).map_err(|e| self.kv.db_error(e))?;
        sqlx::query(
            "INSERT INTO prism_mailbox (namespace, mailbox_id, sequence, message_id, message, \
             metadata, message_type, priority, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(self.ns.as_str())
        .bind(op.mailbox.as_str())
        .bind(sequence)
        .bind(message_id)
        .bind(op.message.as_slice())
        .bind(metadata)
        .bind(op.message_type.as_deref())
        .bind(op.priority.map(i64::from))
        .bind(epoch_ms())
        .execute(&mut *self.tx)
        .await
        .map_err(|e| self.kv.db_error(e))?;
        Ok(sequence)
    }
}

#[async_trait]
impl OpenTransaction for SqlTransaction {
    async fn replay(&mut self, key: &str, fingerprint: &str) -> Result<Option<Vec<u8>>, Error> {
        self.lock().await?;
        if self.kv.dialect == Dialect::Postgres {
            let lock = [format!("txidem/{}/{key}", self.ns)];
            postgres::lock(&mut self.tx, &lock)
                .await
                .map_err(|e| self.kv.db_error(e))?;
        }
        let row = sqlx::query(
            "SELECT fingerprint, response FROM prism_transact_idempotency \
             WHERE namespace = $1 AND key = $2 AND expires_at > $3",
        )
        .bind(self.ns.as_str())
        .bind(key)
        .bind(epoch_ms())
        .fetch_optional(&mut *self.tx)
        .await
        .map_err(|e| self.kv.db_error(e))?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get(0).map_err(|e| self.err(e))?;
        if stored != fingerprint {
            return Err(kv::idempotency_reused(key));
        }
        Ok(Some(row.try_get(1).map_err(|e| self.err(e))?))
    }

    async fn write(&mut self, op: &WriteOp) -> Result<WriteOutcome, Error> {
        self.lock().await?;
        let mut outcome = match &op.data {
            Some(data) => self.data(data).await?,
            None => WriteOutcome::default(),
        };
        if let Some(mailbox) = &op.mailbox {
            outcome.mailbox = Some(self.mailbox(mailbox).await?);
        }
        Ok(outcome)
    }

    async fn remember(
        &mut self,
        key: &str,
        fingerprint: &str,
        response: &[u8],
        window: Duration,
    ) -> Result<(), Error> {
        let expires = epoch_ms().saturating_add(window.as_millis().min(i64::MAX as u128) as i64);
        sqlx::query(
            "INSERT INTO prism_transact_idempotency (namespace, key, fingerprint, response, \
             expires_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (namespace, key) DO UPDATE SET \
             fingerprint = excluded.fingerprint, response = excluded.response, \
             expires_at = excluded.expires_at",
        )
        .bind(self.ns.as_str())
        .bind(key)
        .bind(fingerprint)
        .bind(response)
        .bind(expires)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| self.kv.db_error(e))?;
        Ok(())
    }

    async fn savepoint(&mut self) -> Result<(), Error> {
        self.lock().await?;
        self.statement("SAVEPOINT prism_write").await?;
        self.notified_at_savepoint = self.notified.len();
        Ok(())
    }

    async fn rollback_to(&mut self) -> Result<(), Error> {
        self.statement("ROLLBACK TO SAVEPOINT prism_write").await?;
        // Postgres drops a NOTIFY sent after the savepoint with it.
        self.notified.truncate(self.notified_at_savepoint);
        Ok(())
    }

    async fn limit_lock_waits(&mut self, wait: Duration) -> Result<(), Error> {
        if self.kv.dialect != Dialect::Postgres {
            return Ok(());
        }
        let ms = wait.as_millis().clamp(1, i32::MAX as u128);
        sqlx::query(&format!("SET LOCAL lock_timeout = {ms}"))
            .execute(&mut *self.tx)
            .await
            .map(|_| ())
            .map_err(|e| self.kv.db_error(e))
    }

    async fn commit(self: Box<Self>) -> Result<(), Error> {
        let SqlTransaction {
            kv, tx, notified, ..
        } = *self;
        tx.commit().await.map_err(|e| kv.db_error(e))?;
        if !notified.is_empty() {
            kv.outbox_written.send_modify(|v| *v = v.wrapping_add(1));
        }
        Ok(())
    }

    async fn rollback(self: Box<Self>) -> Result<(), Error> {
        let kv = self.kv.clone();
        self.tx.rollback().await.map_err(|e| kv.db_error(e))
    }
}

/// The parameter storing `value` in column `c`; `None` stores NULL.
fn write_param(c: &Column, value: &Value) -> Result<Option<Param>, Error> {
    match (&value.kind, c.kind) {
        (None | Some(V::NullValue(_)), _) => Ok(None),
        (Some(V::StructValue(_) | V::ListValue(_)), Kind::Json) => {
            Ok(Some(Param::Text(value_json(value).to_string())))
        }
        (Some(V::NumberValue(_) | V::BoolValue(_)), Kind::Json) => {
            Ok(Some(Param::Text(value_json(value).to_string())))
        }
        (Some(V::StringValue(s)), Kind::Json) => Ok(Some(Param::Text(
            serde_json::Value::String(s.clone()).to_string(),
        ))),
        (_, Kind::Bytes) => Err(Error::invalid_argument(
            "UNSUPPORTED_FIELD_TYPE",
            format!(
                "field `{}` is a bytes column; Transact writes numbers, strings, booleans, \
                 timestamps and JSON",
                c.name
            ),
        )
        .with("field", c.name.clone())),
        _ => value_param(c, value, "stored in it").map(Some),
    }
}

fn value_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(V::NullValue(_)) => serde_json::Value::Null,
        Some(V::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(V::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(V::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(V::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), value_json(v)))
                .collect(),
        ),
        Some(V::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_json).collect())
        }
    }
}
