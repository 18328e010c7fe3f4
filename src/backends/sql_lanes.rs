//! Statement lanes: a few Postgres connections held outside the pool for
//! lone autocommit statements on the hot paths (a Queue Publish to a known
//! topic, a Reader page or count). sqlx gives a pooled connection back with
//! a ping (one more round trip, and a wake-up of the Postgres backend, per
//! call); a lane keeps its connection, so such a statement costs its own
//! round trip only.
//!
//! A call takes a lane only if one is free at once, else the pool serves
//! it as before. A lane connects on first use (within `connect_timeout`;
//! after a failed connect it is passed over for a second) and drops its
//! connection after a failure of the connection itself, to connect again
//! on its next use. A statement cancelled half way (the client gave up)
//! costs its lane the connection: the next call on the lane connects
//! afresh rather than wait for, or be handed, the rest of the cancelled
//! statement's answer. Lanes serve single statements only, never a
//! transaction.
//!
//! `pool.statement_lanes` (Postgres; default 4, 0 turns them off): they are
//! connections beside the pool's `max_connections`.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use sqlx::{
    any::{AnyArguments, AnyRow},
    postgres::{PgDatabaseError, PgSeverity},
    query::Query,
    Any, AnyConnection, AnyPool, Connection as _,
};
use tokio::{
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use super::postgres::PING_IDLE;

/// Most lanes a backend may hold.
pub const MAX_LANES: u32 = 64;

/// How long a lane that could not connect is passed over (its calls go to
/// the pool meanwhile).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A backend's lanes.
pub struct Lanes {
    lanes: Box<[Mutex<Slot>]>,
    next: AtomicUsize,
    /// Lanes holding a connection (what `/metrics` shows).
    open: AtomicUsize,
    url: String,
    connect_timeout: Duration,
}

/// One lane: its connection, if made, and when it last served.
#[derive(Default)]
struct Slot {
    conn: Option<AnyConnection>,
    used: Option<Instant>,
    /// Set while a statement (or its connect or ping) runs; still set
    /// when a lane is taken means that statement was cancelled half way,
    /// and its connection still owes its answer: the connection is
    /// dropped rather than make the next call wait for, or be handed,
    /// what was left of it.
    in_flight: bool,
    /// After a failed connect, the lane is passed over until then.
    retry_at: Option<Instant>,
}

/// A lane taken for one statement; given back when dropped.
pub struct Lane<'a> {
    slot: MutexGuard<'a, Slot>,
    lanes: &'a Lanes,
}

impl Lanes {
    pub fn new(count: u32, url: &str, connect_timeout: Duration) -> Self {
        Lanes {
            lanes: (0..count.min(MAX_LANES))
                .map(|_| Mutex::new(Slot::default()))
                .collect(),
            next: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            url: url.to_string(),
            connect_timeout,
        }
    }

    /// No lanes (SQLite, or turned off).
    pub fn none() -> Self {
        Lanes::new(0, "", Duration::ZERO)
    }

    /// A lane free right now (and not resting after a failed connect),
    /// trying each once from the next in turn.
    pub fn take(&self) -> Option<Lane<'_>> {
        let n = self.lanes.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        (0..n).find_map(|i| {
            let mut slot = self.lanes[(start + i) % n].try_lock().ok()?;
            if slot.retry_at.is_some_and(|t| t > now) {
                return None;
            }
            let cancelled = std::mem::take(&mut slot.in_flight);
            let mut lane = Lane { slot, lanes: self };
            if cancelled {
                lane.drop_connection();
            }
            Some(lane)
        })
    }

    /// Lanes holding a connection now.
    pub fn connected(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Lanes configured.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Runs `query` to its end on a free lane, else on `pool`; its rows.
    /// A lane that cannot connect leaves the call to the pool.
    pub async fn fetch_all<'q>(
        &self,
        pool: &AnyPool,
        query: Query<'q, Any, AnyArguments<'q>>,
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        if let Some(mut lane) = self.take() {
            lane.slot.in_flight = true;
            match lane.connection().await {
                Ok(conn) => {
                    let rows = query.fetch_all(conn).await;
                    lane.settle(&rows);
                    return rows;
                }
                Err(e) => {
                    lane.slot.in_flight = false;
                    lane.slot.retry_at = Some(Instant::now() + RETRY_AFTER);
                    tracing::debug!(error = %e, "a statement lane cannot connect; the pool serves")
                }
            }
        }
        query.fetch_all(pool).await
    }
}

impl Lane<'_> {
    /// The lane's connection, made first if it has none; one that sat
    /// idle for [`PING_IDLE`] is pinged first (a restarted server or a
    /// dropped link shows there, and the lane connects again).
    async fn connection(&mut self) -> Result<&mut AnyConnection, sqlx::Error> {
        let stale = self.slot.used.is_some_and(|t| t.elapsed() >= PING_IDLE);
        if let (true, Some(conn)) = (stale, self.slot.conn.as_mut()) {
            if conn.ping().await.is_err() {
                self.drop_connection();
            }
        }
        if self.slot.conn.is_none() {
            let made = tokio::time::timeout(
                self.lanes.connect_timeout,
                AnyConnection::connect(&self.lanes.url),
            )
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
            self.slot.conn = Some(made);
            self.lanes.open.fetch_add(1, Ordering::Relaxed);
        }
        self.slot.used = Some(Instant::now());
        self.slot.conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// After a statement that ran to its end: a failure of the
    /// connection itself drops it — an I/O or protocol failure, or the
    /// server's word that it is ending the session (severity FATAL or
    /// PANIC, SQLSTATE class 57P or 08). A statement the database refused,
    /// or a value that did not decode, leaves it.
    fn settle<T>(&mut self, result: &Result<T, sqlx::Error>) {
        self.slot.in_flight = false;
        let lost = match result {
            Ok(_) => false,
            Err(sqlx::Error::Database(e)) => {
                let fatal = e.try_downcast_ref::<PgDatabaseError>().is_some_and(|pg| {
                    matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic)
                });
                fatal
                    || e.code()
                        .is_some_and(|c| c.starts_with("57P") || c.starts_with("08"))
            }
            Err(
                sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::Decode(_)
                | sqlx::Error::ColumnNotFound(_)
                | sqlx::Error::ColumnIndexOutOfBounds { .. }
                | sqlx::Error::TypeNotFound { .. }
                | sqlx::Error::RowNotFound,
            ) => false,
            Err(_) => true,
        };
        if lost {
            self.drop_connection();
        }
    }

    fn drop_connection(&mut self) {
        if self.slot.conn.take().is_some() {
            self.lanes.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lanes_are_taken_only_when_free_and_none_means_the_pool() {
        assert!(Lanes::none().take().is_none());
        let lanes = Lanes::new(2, "postgres://unused", Duration::from_secs(1));
        let first = lanes.take().expect("a free lane");
        let second = lanes.take().expect("the other lane");
        assert!(lanes.take().is_none(), "both busy: the pool serves");
        drop(first);
        assert!(lanes.take().is_some(), "a lane given back is free again");
        drop(second);
        assert_eq!(lanes.connected(), 0, "no lane connects before it is used");
        assert_eq!(
            Lanes::new(1_000, "", Duration::ZERO).lanes.len(),
            MAX_LANES as usize
        );
    }
}
