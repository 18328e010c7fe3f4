//! `transact_outbox` on the SQL backends (SQLite and Postgres): the mailbox
//! tables `prism_mailbox` (rows) and `prism_mailbox_sequence` (one counter
//! row per mailbox, locked by the writing transaction until it ends, so
//! sequences commit in order), mailbox reads and marks, relay cursors and
//! leases, and the waiters that wake relays. The writes themselves are in
//! [`super::sql_write`].
//!
//! Postgres transactions run at the requested isolation with a statement
//! timeout, and `pg_notify('prism_mailbox', '<ns>/<mailbox>')` wakes relays
//! in every gateway at commit. SQLite takes the database write lock at a
//! transaction's first statement (not at BEGIN, so a stream that began and
//! waits blocks no writer): every transaction is serializable whatever was
//! asked. Open transactions per backend are capped below the pool's size
//! (`pool.max_transactions`) so other calls find a connection (when the
//! pool has more than one).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use sqlx::{any::AnyRow, Any, Row};

use super::{
    epoch_ms, kv,
    sql::SqlBackend,
    sql_write::SqlTransaction,
    transact::{
        DeadLetterNote, Held, Isolation, Lag, MailboxQuery, MailboxRow, MailboxWaiter, MailboxWake,
        OpenTransaction, RelayCursor, RelayId, RelayLease, TransactOutbox,
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
        lock_wait: Option<Duration>,
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
        let tx =
            SqlTransaction::begin(kv.clone(), ns, isolation, timeout, lock_wait, place).await?;
        Ok(Box::new(tx))
    }

    async fn read_mailbox(&self, ns: &str, q: &MailboxQuery) -> Result<Vec<MailboxRow>, Error> {
        let kv = &self.0;
        kv.ready()?;
        let pending = if q.unprocessed_only {
            " AND processed_at IS NULL"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {MAILBOX_COLUMNS} FROM prism_mailbox \
             WHERE namespace = $1 AND mailbox_id = $2 AND sequence > $3{pending} \
             ORDER BY sequence LIMIT $4"
        );
        let query = sqlx::query(&sql)
            .bind(ns)
            .bind(q.mailbox.as_str())
            .bind(q.after)
            .bind(i64::try_from(q.limit).unwrap_or(i64::MAX));
        let rows = kv
            .lanes
            .fetch_all(&kv.pool, query)
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
        let (mut tx, _turn) = kv.begin_write().await?;
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
        let _turn = kv.write_turn().await?;
        kv.lanes
            .fetch_all(&kv.pool, advance(relay, through))
            .await
            .map(|_| ())
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
        let _turn = kv.write_turn().await?;
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
        let (mut tx, _turn) = kv.begin_write().await?;
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
        advance(relay, row.sequence)
            .execute(&mut *tx)
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
            None => Box::<OneHost>::default(),
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
fn advance<'q>(
    relay: &'q RelayId,
    through: i64,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(
        "UPDATE prism_relay_cursor SET through = $4, attempts = 0, last_error = NULL, \
         updated_at = $5 WHERE namespace = $1 AND relay = $2 AND mailbox_id = $3 AND through < $4",
    )
    .bind(relay.namespace.as_str())
    .bind(relay.name.as_str())
    .bind(relay.mailbox.as_str())
    .bind(through)
    .bind(epoch_ms())
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
    async fn try_hold(&mut self) -> Result<Held, sqlx::Error> {
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
            return Ok(Held::No);
        };
        if self.held {
            // Still ours while the connection lives.
            sqlx::query("SELECT 1").execute(&mut *conn).await?;
            return Ok(Held::Kept);
        }
        let taken: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(self.key.as_str())
                .fetch_one(&mut *conn)
                .await?;
        self.held = taken;
        Ok(if taken { Held::Taken } else { Held::No })
    }
}

#[async_trait]
impl RelayLease for PgRelayLease {
    fn release(&mut self) {
        // Closing the connection ends the session and its lock.
        self.conn = None;
        self.held = false;
    }

    async fn hold(&mut self) -> Result<Held, Error> {
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

/// A SQLite relay's lease: the file is one host's, so always held (taken
/// at the first round, and again after a failed round let it go).
#[derive(Default)]
struct OneHost {
    held: bool,
}

#[async_trait]
impl RelayLease for OneHost {
    fn release(&mut self) {
        self.held = false;
    }

    async fn hold(&mut self) -> Result<Held, Error> {
        Ok(if std::mem::replace(&mut self.held, true) {
            Held::Kept
        } else {
            Held::Taken
        })
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
