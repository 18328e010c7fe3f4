//! An open transaction on the SQL backends (Postgres and SQLite): data
//! writes on configured tables, built from the learned schema (identifiers
//! quoted, values bound), mailbox rows numbered by their mailbox's counter,
//! idempotency records, and savepoints for group commit. A group of Writes
//! applied together ([`OpenTransaction::write_all`]) costs a few statements
//! on Postgres whatever its size: one multi-row INSERT per run of inserts
//! into one table, one statement for a mailbox's counter and rows (SQLite:
//! a statement per data row, two for a mailbox's).

use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock},
    time::Duration,
};

use async_trait::async_trait;
use prost_types::{value::Kind as V, Value};
use sqlx::{any::AnyRow, Any, Row, Transaction};

use super::{
    epoch_ms, kv, postgres,
    reader::{value_param, Column, Kind, Param, ReaderPaged, TableSchema},
    sql::{Dialect, SqlBackend},
    sql_reader::{decode, quote, read_expr, Sql},
    sql_transact::NOTIFY_CHANNEL,
    sqlite,
    transact::{
        row_not_found, DataOp, Isolation, MailboxOp, OpenTransaction, WriteMode, WriteOp,
        WriteOutcome,
    },
};
use crate::error::{Error, ErrorKind};

impl SqlBackend {
    /// A Transact table's schema (learned once, like a Reader collection's).
    pub(super) async fn table_schema(
        &self,
        table: &str,
        id: &str,
    ) -> Result<Arc<TableSchema>, Error> {
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

/// An open transaction on a pooled connection.
pub(super) struct SqlTransaction {
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
    /// SQLite: its turn among this process's writers, held from the lock
    /// to the end (declared after `tx`, so let go after it).
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// Its place among the backend's open transactions.
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl SqlTransaction {
    /// Opens a transaction on a connection of `kv`'s pool, holding `place`
    /// among its open transactions. On Postgres the isolation level, the
    /// statement timeout and the lock wait are set with the BEGIN.
    pub(super) async fn begin(
        kv: Arc<SqlBackend>,
        ns: &str,
        isolation: Isolation,
        timeout: Duration,
        lock_wait: Option<Duration>,
        place: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Self, Error> {
        let tx = match kv.dialect {
            // BEGIN and the settings in one round trip (the simple query
            // protocol: nothing to prepare, several statements at once).
            Dialect::Postgres => {
                let level = match isolation {
                    Isolation::Default => "",
                    Isolation::ReadCommitted => " ISOLATION LEVEL READ COMMITTED",
                    Isolation::RepeatableRead => " ISOLATION LEVEL REPEATABLE READ",
                    Isolation::Serializable => " ISOLATION LEVEL SERIALIZABLE",
                };
                let ms = |d: Duration| d.as_millis().clamp(1, i32::MAX as u128);
                let mut begin = format!(
                    "BEGIN{level}; SET LOCAL statement_timeout = {}",
                    ms(timeout)
                );
                if let Some(wait) = lock_wait {
                    begin.push_str(&format!("; SET LOCAL lock_timeout = {}", ms(wait)));
                }
                kv.pool.begin_with(begin).await
            }
            // SQLite takes the write lock at the transaction's first
            // statement (`SqlTransaction::lock`), not at BEGIN: a stream
            // that began and waits holds no lock. It has no lock wait of
            // its own beyond `busy_timeout`.
            Dialect::Sqlite => kv.pool.begin().await,
        }
        .map_err(|e| kv.db_error(e))?;
        Ok(SqlTransaction {
            locked: kv.dialect != Dialect::Sqlite,
            _turn: None,
            kv,
            tx,
            ns: ns.to_string(),
            notified: Vec::new(),
            notified_at_savepoint: 0,
            _place: place,
        })
    }

    fn err(&self, e: sqlx::Error) -> Error {
        self.kv.db_error(e)
    }

    /// SQLite: takes the database write lock before the transaction's
    /// first statement (a deferred transaction that read first could not
    /// upgrade while another writer holds it); waits out `busy_timeout`.
    async fn lock(&mut self) -> Result<(), Error> {
        if !self.locked {
            let turn = self.kv.write_turn().await?;
            sqlite::lock(&mut self.tx)
                .await
                .map_err(|e| self.kv.db_error(e))?;
            self._turn = turn;
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
        let fields = bind_fields(&mut sql, &schema, op)?;
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
                let ret = returning(dialect, &schema, &fields);
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
                let generated = match rows.first() {
                    Some(row) => generated(row, &schema, &ret).map_err(|e| self.kv.db_error(e))?,
                    None => BTreeMap::new(),
                };
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

    /// Inserts of one shape (see [`same_insert`]) in one multi-row INSERT:
    /// each row's read-back columns come back in the order of the VALUES
    /// list (the order the executor inserts and returns them in; a plain
    /// INSERT ... VALUES has no other).
    async fn insert_run(&mut self, ops: &[&DataOp]) -> Result<Vec<WriteOutcome>, Error> {
        let first = ops[0];
        let schema = self.kv.table_schema(&first.table, &first.table_id).await?;
        let dialect = self.kv.dialect;
        let mut sql = Sql::new(dialect);
        let mut values = Vec::with_capacity(ops.len());
        let mut columns = Vec::new();
        for op in ops {
            let fields = bind_fields(&mut sql, &schema, op)?;
            let phs: Vec<&str> = fields.iter().map(|(_, ph)| ph.as_str()).collect();
            values.push(format!("({})", phs.join(", ")));
            if columns.is_empty() {
                columns = fields;
            }
        }
        let names: Vec<String> = columns
            .iter()
            .map(|(i, _)| quote(&schema.columns[*i].name))
            .collect();
        sql.text = format!(
            "INSERT INTO {} ({}) VALUES {}",
            quote(&first.table),
            names.join(", "),
            values.join(", ")
        );
        let ret = returning(dialect, &schema, &columns);
        let one = WriteOutcome {
            rows_affected: 1,
            ..Default::default()
        };
        if ret.is_empty() {
            self.execute(&sql).await?;
            return Ok(vec![one; ops.len()]);
        }
        let list: Vec<&str> = ret.iter().map(|(_, e)| e.as_str()).collect();
        sql.text = format!("{} RETURNING {}", sql.text, list.join(", "));
        let rows = sql
            .query()
            .fetch_all(&mut *self.tx)
            .await
            .map_err(|e| self.kv.db_error(e))?;
        if rows.len() != ops.len() {
            return Err(Error::internal(format!(
                "a multi-row insert returned {} rows for {}",
                rows.len(),
                ops.len()
            )));
        }
        rows.iter()
            .map(|row| {
                Ok(WriteOutcome {
                    generated: generated(row, &schema, &ret).map_err(|e| self.kv.db_error(e))?,
                    ..one.clone()
                })
            })
            .collect()
    }

    /// Appends `messages` to one mailbox in order: the counter moves by
    /// their number once, and they take the sequences it passed over. On
    /// Postgres the counter, the rows and the relays' wake-up (once per
    /// mailbox and transaction) are one statement; SQLite (no INSERT in a
    /// WITH) takes two. Returns each message's (id, sequence).
    async fn append(
        &mut self,
        mailbox: &str,
        messages: &[&MailboxOp],
    ) -> Result<Vec<(String, i64)>, Error> {
        let n = messages.len() as i64;
        let ids: Vec<String> = messages
            .iter()
            .map(|_| format!("msg-{}", hex::encode(rand::random::<[u8; 12]>())))
            .collect();
        let notify =
            self.kv.dialect == Dialect::Postgres && !self.notified.iter().any(|m| m == mailbox);
        let created = epoch_ms();
        let last: i64 = if self.kv.dialect == Dialect::Postgres {
            // The messages as one JSON array, so the statement's text is
            // the same whatever their number: prepared once per connection.
            let rows: Vec<serde_json::Value> = messages
                .iter()
                .zip(&ids)
                .enumerate()
                .map(|(k, (m, id))| {
                    serde_json::json!({
                        "n": k + 1,
                        "id": id,
                        "msg": hex::encode(&m.message),
                        "meta": metadata_json(m),
                        "mt": m.message_type,
                        "pr": m.priority,
                    })
                })
                .collect();
            let (text, notice) = if notify {
                (&*APPEND_AND_NOTIFY, Some(format!("{}/{mailbox}", self.ns)))
            } else {
                (&*APPEND, None)
            };
            let mut q = sqlx::query(text.as_str())
                .bind(self.ns.as_str())
                .bind(mailbox)
                .bind(n)
                .bind(created)
                .bind(serde_json::Value::Array(rows).to_string());
            if let Some(payload) = notice {
                q = q.bind(NOTIFY_CHANNEL).bind(payload);
            }
            let row = q
                .fetch_one(&mut *self.tx)
                .await
                .map_err(|e| self.kv.db_error(e))?;
            row.try_get(0).map_err(|e| self.kv.db_error(e))?
        } else {
            // (offset, id, message, metadata, type, priority) per message; the
            // placeholders after the first `before` ones.
            let rows = |before: usize| {
                (0..messages.len())
                    .map(|k| {
                        let p = before + 6 * k;
                        format!(
                            "(${}, ${}, ${}, ${}, ${}, ${})",
                            p + 1,
                            p + 2,
                            p + 3,
                            p + 4,
                            p + 5,
                            p + 6
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let row = sqlx::query(COUNTER)
                .bind(self.ns.as_str())
                .bind(mailbox)
                .bind(n)
                .fetch_one(&mut *self.tx)
                .await
                .map_err(|e| self.kv.db_error(e))?;
            let last: i64 = row.try_get(0).map_err(|e| self.kv.db_error(e))?;
            // SQLite names a VALUES list's columns column1, column2, ...
            let text = format!(
                "{INSERT_MAILBOX} SELECT $1, $2, $3 + column1, column2, column3, column4, column5, \
                 column6, $4 FROM (VALUES {})",
                rows(4)
            );
            let mut q = sqlx::query(&text)
                .bind(self.ns.as_str())
                .bind(mailbox)
                .bind(last - n)
                .bind(created);
            for (k, (m, id)) in messages.iter().zip(&ids).enumerate() {
                q = q
                    .bind(k as i64 + 1)
                    .bind(id.as_str())
                    .bind(m.message.as_slice())
                    .bind(metadata_json(m))
                    .bind(m.message_type.as_deref())
                    .bind(m.priority.map(i64::from));
            }
            q.execute(&mut *self.tx)
                .await
                .map_err(|e| self.kv.db_error(e))?;
            last
        };
        if !self.notified.iter().any(|m| m == mailbox) {
            self.notified.push(mailbox.to_string());
        }
        Ok(ids
            .into_iter()
            .enumerate()
            .map(|(k, id)| (id, last - n + k as i64 + 1))
            .collect())
    }
}

/// Moves a mailbox's counter by $3 (made at $3 for a new mailbox).
const COUNTER: &str = "INSERT INTO prism_mailbox_sequence (namespace, mailbox_id, last_sequence) \
                       VALUES ($1, $2, $3) ON CONFLICT (namespace, mailbox_id) DO UPDATE SET \
                       last_sequence = prism_mailbox_sequence.last_sequence + \
                       excluded.last_sequence RETURNING last_sequence";

const INSERT_MAILBOX: &str = "INSERT INTO prism_mailbox (namespace, mailbox_id, sequence, \
                              message_id, message, metadata, message_type, priority, created_at)";

/// Postgres: the counter and the rows in one statement. $1 namespace, $2
/// mailbox, $3 how many, $4 created_at, $5 the rows as a JSON array of
/// {n (1-based), id, msg (hex), meta, mt, pr}; returns the last sequence.
static APPEND: LazyLock<String> = LazyLock::new(|| append_sql(false));

/// [`APPEND`], and `pg_notify($6, $7)` (the relays' wake-up) in the same
/// statement.
static APPEND_AND_NOTIFY: LazyLock<String> = LazyLock::new(|| append_sql(true));

fn append_sql(notify: bool) -> String {
    let (notice, from) = if notify {
        (", notice AS (SELECT pg_notify($6, $7))", ", notice")
    } else {
        ("", "")
    };
    format!(
        "WITH seq AS ({COUNTER}), ins AS ({INSERT_MAILBOX} SELECT $1, $2, \
         seq.last_sequence - $3 + v.n, v.id, decode(v.msg, 'hex'), v.meta, v.mt, v.pr, $4 \
         FROM seq, jsonb_to_recordset(CAST($5 AS JSONB)) AS v (n BIGINT, id TEXT, msg TEXT, \
         meta TEXT, mt TEXT, pr BIGINT) RETURNING 1){notice} \
         SELECT seq.last_sequence FROM seq{from}"
    )
}

/// Bound parameters per statement, at most (SQLite's default limit is
/// 32,766; Postgres's 65,535).
const MAX_PARAMS: usize = 30_000;

/// A message's metadata as stored (a JSON object).
fn metadata_json(m: &MailboxOp) -> String {
    serde_json::to_string(&m.metadata).unwrap_or_else(|_| "{}".into())
}

/// Whether two data writes can share one multi-row INSERT: both insert
/// into the same table with the same fields (and at least one).
fn same_insert(a: &DataOp, b: &DataOp) -> bool {
    a.mode == WriteMode::Insert
        && b.mode == WriteMode::Insert
        && a.table == b.table
        && a.table_id == b.table_id
        && !a.record.is_empty()
        && a.record.keys().eq(b.record.keys())
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
        let mut outcomes = self.write_all(&[op]).await?;
        Ok(outcomes.pop().unwrap_or_default())
    }

    async fn write_all(&mut self, ops: &[&WriteOp]) -> Result<Vec<WriteOutcome>, Error> {
        self.lock().await?;
        let mut outcomes = vec![WriteOutcome::default(); ops.len()];
        let mut i = 0;
        while i < ops.len() {
            let Some(first) = &ops[i].data else {
                i += 1;
                continue;
            };
            // A run of inserts of one shape, within the bound parameters a
            // statement may carry. Postgres returns a multi-row INSERT's
            // rows in VALUES order; SQLite says its RETURNING order is
            // arbitrary (and has no round trips to save): a run of one there.
            let batches = self.kv.dialect == Dialect::Postgres;
            let mut params = first.record.len();
            let mut end = i + 1;
            while let Some(next) = ops.get(end).and_then(|o| o.data.as_ref()) {
                if !batches || !same_insert(first, next) || params + next.record.len() > MAX_PARAMS
                {
                    break;
                }
                params += next.record.len();
                end += 1;
            }
            if end - i > 1 {
                let run: Vec<&DataOp> =
                    ops[i..end].iter().filter_map(|o| o.data.as_ref()).collect();
                let done = self.insert_run(&run).await?;
                for (slot, outcome) in outcomes[i..end].iter_mut().zip(done) {
                    *slot = outcome;
                }
            } else {
                outcomes[i] = self.data(first).await?;
            }
            i = end;
        }
        // Each mailbox's messages in one append, in the order given.
        let mut mailboxes: Vec<&str> = Vec::new();
        for op in ops {
            if let Some(m) = &op.mailbox {
                if !mailboxes.contains(&m.mailbox.as_str()) {
                    mailboxes.push(&m.mailbox);
                }
            }
        }
        for mailbox in mailboxes {
            let at: Vec<usize> = (0..ops.len())
                .filter(|&k| {
                    ops[k]
                        .mailbox
                        .as_ref()
                        .is_some_and(|m| m.mailbox == mailbox)
                })
                .collect();
            for chunk in at.chunks(MAX_PARAMS / 6) {
                let messages: Vec<&MailboxOp> = chunk
                    .iter()
                    .filter_map(|&k| ops[k].mailbox.as_ref())
                    .collect();
                let placed = self.append(mailbox, &messages).await?;
                for (&k, row) in chunk.iter().zip(placed) {
                    outcomes[k].mailbox = Some(row);
                }
            }
        }
        Ok(outcomes)
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

    async fn commit(self: Box<Self>) -> Result<(), Error> {
        let SqlTransaction {
            kv,
            tx,
            notified,
            _turn,
            ..
        } = *self;
        tx.commit().await.map_err(|e| kv.db_error(e))?;
        drop(_turn);
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

/// Every field of `op` as (column index, bound placeholder or NULL).
fn bind_fields(
    sql: &mut Sql,
    schema: &TableSchema,
    op: &DataOp,
) -> Result<Vec<(usize, String)>, Error> {
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
    Ok(fields)
}

/// The columns a write did not set, to read back as stored (ids,
/// defaults): (column index, expression).
fn returning(
    dialect: Dialect,
    schema: &TableSchema,
    set: &[(usize, String)],
) -> Vec<(usize, String)> {
    (0..schema.columns.len())
        .filter(|i| !set.iter().any(|(s, _)| s == i))
        .map(|i| {
            let c = &schema.columns[i];
            let expr = read_expr(dialect, c, &schema.sql_types[i]);
            (i, format!("{expr} AS prism_c{i}"))
        })
        .collect()
}

/// The read-back columns of one returned row, NULLs left out.
fn generated(
    row: &AnyRow,
    schema: &TableSchema,
    ret: &[(usize, String)],
) -> Result<BTreeMap<String, Value>, sqlx::Error> {
    let mut generated = BTreeMap::new();
    for (n, (i, _)) in ret.iter().enumerate() {
        let c = &schema.columns[*i];
        let v = decode(row, n, c.kind)?;
        if !matches!(v.kind, Some(V::NullValue(_))) {
            generated.insert(c.name.clone(), v);
        }
    }
    Ok(generated)
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
