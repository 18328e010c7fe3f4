//! The Transact model (seed 002 §6, the two-table flow of seed 000): a data
//! row and a mailbox row commit together or not at all. Each mailbox has a
//! sequence that increases by one per message; the sequence counter's row is
//! locked by the inserting transaction until it ends, so sequences become
//! visible in order with no gaps — which lets a relay publish a mailbox in
//! sequence order without ever skipping a row committed late.
//!
//! - `transact_outbox` ([`TransactOutbox`]): transactions with data and
//!   mailbox writes, idempotency records, mailbox reads and marks.

use std::{collections::BTreeMap, time::Duration};

use async_trait::async_trait;
use prost_types::Value;

use crate::error::{Error, ErrorKind};

/// What a DataWrite does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    Insert,
    Update,
    Upsert,
    Delete,
}

/// A checked DataWrite: the table is one the namespace allows and `id` is
/// the key column (the request's `id_field` or the table's configured id).
#[derive(Debug, Clone)]
pub struct DataOp {
    pub table: String,
    /// The table's configured id column.
    pub table_id: String,
    pub id: String,
    pub mode: WriteMode,
    pub record: BTreeMap<String, Value>,
}

/// A checked MailboxWrite.
#[derive(Debug, Clone)]
pub struct MailboxOp {
    pub mailbox: String,
    pub message: Vec<u8>,
    pub metadata: BTreeMap<String, String>,
    pub message_type: Option<String>,
    pub priority: Option<i32>,
}

/// One write of a transaction: a data row, a mailbox row, or both.
#[derive(Debug, Clone)]
pub struct WriteOp {
    pub data: Option<DataOp>,
    pub mailbox: Option<MailboxOp>,
}

/// What a write did.
#[derive(Debug, Clone, Default)]
pub struct WriteOutcome {
    pub rows_affected: i64,
    /// Columns the request did not set, as stored (ids, defaults).
    pub generated: BTreeMap<String, Value>,
    /// The mailbox row: (message id, sequence).
    pub mailbox: Option<(String, i64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// The database's default (READ COMMITTED on Postgres).
    Default,
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

/// Which mailbox rows to read.
#[derive(Debug, Clone)]
pub struct MailboxQuery {
    pub mailbox: String,
    /// Rows with a greater sequence.
    pub after: i64,
    pub limit: usize,
    pub unprocessed_only: bool,
    /// Note on each row the relays that moved it aside (client reads).
    pub with_dead_letters: bool,
}

/// A stored mailbox row.
#[derive(Debug, Clone)]
pub struct MailboxRow {
    pub message_id: String,
    pub mailbox: String,
    pub sequence: i64,
    pub message: Vec<u8>,
    pub metadata: BTreeMap<String, String>,
    pub message_type: Option<String>,
    pub priority: Option<i32>,
    pub created_ms: i64,
    pub processed_ms: Option<i64>,
    /// The relays that gave up on this row (read by clients, never sent).
    pub dead_letters: Vec<DeadLetterNote>,
}

/// A relay that moved a row aside, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterNote {
    pub relay: String,
    pub attempts: u32,
    pub error: String,
}

/// A configured relay, as its cursor is keyed: namespace, relay name and
/// the mailbox it relays (a relay pointed at another mailbox starts a new
/// cursor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayId {
    pub namespace: String,
    pub name: String,
    pub mailbox: String,
}

/// Where a relay stands in its mailbox: its own progress, apart from the
/// `processed` mark clients set with ProcessMailbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCursor {
    /// Every row up to this sequence was published or moved aside.
    pub through: i64,
    /// Failed attempts at the next row that were that row's own fault.
    pub attempts: u32,
}

/// A relay's backlog: rows after its cursor and the oldest one's creation
/// time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    pub unprocessed: u64,
    pub oldest_created_ms: Option<i64>,
}

/// transact_outbox.
#[async_trait]
pub trait TransactOutbox: Send + Sync {
    /// Opens a database transaction at `isolation`; each statement is
    /// bounded by `timeout` where the database can enforce it, and with
    /// `lock_wait` each wait for a row lock too: in a group of Writes, one
    /// that waits on a row another transaction holds fails alone rather
    /// than holding the group, and its mailbox, until the group's deadline.
    async fn begin(
        &self,
        ns: &str,
        isolation: Isolation,
        timeout: Duration,
        lock_wait: Option<Duration>,
    ) -> Result<Box<dyn OpenTransaction>, Error>;

    /// Mailbox rows in sequence order.
    async fn read_mailbox(&self, ns: &str, q: &MailboxQuery) -> Result<Vec<MailboxRow>, Error>;

    /// Marks the rows with these message ids processed (already processed
    /// ones stay as they are); returns the ids that are not in the
    /// namespace's mailboxes — or, with `mailbox`, not in that one.
    async fn process(
        &self,
        ns: &str,
        mailbox: Option<&str>,
        message_ids: &[String],
    ) -> Result<Vec<String>, Error>;

    /// Where a relay stands in its mailbox. A relay's cursor is made when
    /// its backend is migrated (see [`RelayId`]); one seen for the first
    /// time here starts at the same place.
    async fn relay_cursor(&self, relay: &RelayId) -> Result<RelayCursor, Error>;

    /// Records that the relay published every row up to `through` (its
    /// cursor never moves back); the next row has had no failed attempt.
    async fn advance_relay(&self, relay: &RelayId, through: i64) -> Result<(), Error>;

    /// Records a failed attempt at the row after `cursor.through` that was
    /// the row's own fault (the broker refused it).
    async fn relay_refused(
        &self,
        relay: &RelayId,
        cursor: RelayCursor,
        error: &str,
    ) -> Result<(), Error>;

    /// Moves a row aside for good: records it as a dead letter of the relay
    /// and advances the relay past it, in one transaction.
    async fn dead_letter(
        &self,
        relay: &RelayId,
        row: &MailboxRow,
        attempts: u32,
        error: &str,
    ) -> Result<(), Error>;

    /// The rows of `mailbox` after sequence `after`: how many, and the
    /// oldest one's creation time.
    async fn lag(&self, ns: &str, mailbox: &str, after: i64) -> Result<Lag, Error>;

    /// Waits for new rows in one mailbox (see [`MailboxWaiter`]).
    fn mailbox_waiter(&self, namespace: &str, mailbox: &str) -> Box<dyn MailboxWaiter>;

    /// The lease that lets one gateway of a cluster run a relay (see
    /// [`RelayLease`]).
    fn relay_lease(&self, relay: &RelayId) -> Box<dyn RelayLease>;
}

/// Exactly one gateway runs a relay: the one holding its lease. On
/// Postgres the lease is a session advisory lock held on a connection of
/// its own — released by the server the moment that gateway's connection
/// ends, however it ends (a crash included), so another takes over at its
/// next round. A SQLite file is one host's: its relays need no lease.
#[async_trait]
pub trait RelayLease: Send {
    /// Whether this gateway holds the lease now: takes it when free,
    /// checks it is still held when already taken.
    async fn hold(&mut self) -> Result<Held, Error>;

    /// Lets the lease go (another gateway may take it at once).
    fn release(&mut self);
}

/// What [`RelayLease::hold`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Another gateway holds the lease.
    No,
    /// Taken just now: whatever this gateway knew of the relay's cursor
    /// may be stale (another gateway may have moved it meanwhile).
    Taken,
    /// Held without a break since it was taken: nobody else moved the
    /// cursor.
    Kept,
}

/// Why a [`MailboxWaiter`] woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxWake {
    /// A transaction that wrote a mailbox committed in this process.
    Committed,
    /// The database notified a commit to this mailbox (another gateway's
    /// on Postgres).
    Notified,
    /// The notification connection was (re)established: one may have been
    /// missed meanwhile, so look.
    Listening,
}

/// Waits for rows to relay from one mailbox. Commits in this process wake
/// it at once; on Postgres, so do other gateways' commits (LISTEN/NOTIFY);
/// anything else is found by the relay's own poll interval.
#[async_trait]
pub trait MailboxWaiter: Send {
    async fn next(&mut self) -> MailboxWake;
}

/// One open database transaction. Dropping it rolls it back.
#[async_trait]
pub trait OpenTransaction: Send {
    /// Takes the idempotency key for this transaction (concurrent retries
    /// wait) and returns the stored response of an earlier write with the
    /// same key; the same key with different content is INVALID_ARGUMENT.
    async fn replay(&mut self, key: &str, fingerprint: &str) -> Result<Option<Vec<u8>>, Error>;

    async fn write(&mut self, op: &WriteOp) -> Result<WriteOutcome, Error>;

    /// Applies `ops` in order, as one unit and in as few statements as the
    /// database allows (group commit's first attempt). On an error the
    /// transaction may hold part of them and must be rolled back: which
    /// Write failed is not known.
    async fn write_all(&mut self, ops: &[&WriteOp]) -> Result<Vec<WriteOutcome>, Error>;

    /// Stores the response for the key, kept for `window`.
    async fn remember(
        &mut self,
        key: &str,
        fingerprint: &str,
        response: &[u8],
        window: Duration,
    ) -> Result<(), Error>;

    /// Marks a point the transaction can return to ([`Self::rollback_to`]):
    /// several Writes share one transaction (group commit) and a failing
    /// one is undone alone. A new mark hides the one before (none is
    /// released: one round trip fewer per Write; the commit ends them all).
    async fn savepoint(&mut self) -> Result<(), Error>;

    /// Undoes what was done since the latest mark (and clears a failed
    /// statement).
    async fn rollback_to(&mut self) -> Result<(), Error>;

    async fn commit(self: Box<Self>) -> Result<(), Error>;

    async fn rollback(self: Box<Self>) -> Result<(), Error>;
}

/// A row a write needed that is not there (UPDATE or DELETE by id).
pub fn row_not_found(table: &str, id: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        "ROW_NOT_FOUND",
        format!(
            "table `{table}` has no row with `{id}` equal to the record's value; nothing was \
             written"
        ),
    )
    .with("table", table)
}

/// A constraint of the data table refused the write.
pub fn constraint_violation(kind: ErrorKind, detail: &str) -> Error {
    Error::new(
        kind,
        "CONSTRAINT_VIOLATION",
        format!("the write violates a constraint of the table ({detail}); nothing was written"),
    )
}
