//! TransactionActor: one per Transact `Transaction` stream, a child of its
//! session. It decides when the transaction must end: at its timeout, when
//! the session ends, or when the gateway asks; it then fires the
//! transaction's [`KillSwitch`] and the stream rolls the database
//! transaction back. It also stops when the stream ends (commit, rollback,
//! error, or the client going away) and shows the transaction in the actor
//! tree while it is open.
//!
//! The database transaction itself is driven by the gRPC stream on the
//! tokio runtime that owns the pool's connections, never through the
//! actor's mailbox (the hot-path rule); the actor and the stream share
//! [`TransactionShared`]. Its session's actor starts it and tells it when
//! the session ends; its supervisor restarts a crashed or frozen actor.
//! [`Transactions`] enforces the per-session and per-namespace limits.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, WrapFuture};
use parking_lot::Mutex;

use super::{
    session::SessionEnded,
    supervision::{ActorLife, Child, Vitals},
    ActorKind, ActorNode, ActorStatus, KillSwitch, Life, Observe,
};
use crate::{
    error::{Error, ErrorKind},
    session::{Clock, Gauged, SessionEntry},
};

/// Everything a streaming transaction is, apart from its actor and its
/// database connection.
pub struct TransactionShared {
    pub id: String,
    pub entry: Arc<SessionEntry>,
    pub backend: String,
    pub isolation: &'static str,
    /// Session-clock ms at which the transaction times out.
    pub deadline_ms: u64,
    pub timeout: Duration,
    /// Writes applied so far.
    pub writes: AtomicU64,
    /// Fired to make the stream roll back; `why` says why.
    pub kill: Arc<KillSwitch>,
    why: Mutex<Option<String>>,
    /// Fired by the stream when it has ended (the actor then stops).
    ended: Arc<KillSwitch>,
    /// Counted in its namespace's open transactions until it ends.
    gauge: Gauged,
    created: SystemTime,
    clock: Clock,
}

impl TransactionShared {
    pub fn new(
        id: String,
        entry: Arc<SessionEntry>,
        backend: String,
        isolation: &'static str,
        timeout: Duration,
        clock: Clock,
    ) -> Self {
        let gauge = Gauged::new(entry.namespace_sessions.clone(), |n| &n.transactions);
        TransactionShared {
            id,
            entry,
            backend,
            isolation,
            deadline_ms: clock
                .now_ms()
                .saturating_add(timeout.as_millis().min(u64::MAX as u128) as u64),
            timeout,
            writes: AtomicU64::new(0),
            kill: Arc::default(),
            why: Mutex::new(None),
            ended: Arc::default(),
            gauge,
            created: SystemTime::now(),
            clock,
        }
    }

    /// Asks the stream to roll back, once; the first reason wins.
    pub fn abort(&self, why: impl Into<String>) {
        let mut slot = self.why.lock();
        if slot.is_none() {
            *slot = Some(why.into());
        }
        drop(slot);
        self.kill.fire();
    }

    /// Why the transaction was aborted, if it was.
    pub fn abort_reason(&self) -> Option<String> {
        self.why.lock().clone()
    }

    /// The stream has ended; the actor stops.
    pub fn finish(&self) {
        self.gauge.release();
        self.ended.fire();
    }

    pub fn is_ended(&self) -> bool {
        self.ended.is_fired()
    }

    fn check(&self) {
        if let Some(ended) = self.entry.ended_error() {
            self.abort(format!(
                "the session ended: {} ({})",
                ended.message, ended.reason
            ));
        } else if self.clock.now_ms() >= self.deadline_ms {
            self.abort(format!(
                "the transaction timed out after {} ms",
                self.timeout.as_millis()
            ));
        }
    }
}

pub struct TransactionActor {
    shared: Arc<TransactionShared>,
    life: ActorLife,
}

impl Actor for TransactionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Its session may have ended before it started.
        self.shared.check();
        let ended = self.shared.ended.clone();
        ctx.spawn(
            async move { ended.fired().await }
                .into_actor(self)
                .map(|_, _, ctx: &mut Context<Self>| ctx.stop()),
        );
        // Its timeout ends it by itself, its session's end by message.
        let left = self
            .shared
            .deadline_ms
            .saturating_sub(self.shared.clock.now_ms());
        ctx.run_later(Duration::from_millis(left), |act, _| act.shared.check());
    }
}

use actix::ActorFutureExt as _;

super::supervision::supervised_actor!(TransactionActor);
super::mailbox::counted!(TransactionActor: Observe, SessionEnded);

impl Handler<SessionEnded> for TransactionActor {
    type Result = ();

    fn handle(&mut self, _: SessionEnded, _: &mut Context<Self>) {
        self.life.vitals.handled();
        self.shared.check();
    }
}

impl Handler<Observe> for TransactionActor {
    type Result = ActorNode;

    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> ActorNode {
        self.life.vitals.handled();
        observe(&self.shared, ActorStatus::Running, &self.life.vitals)
    }
}

/// A transaction actor's observable state.
#[derive(serde::Serialize)]
struct TransactionState<'a> {
    backend: &'a str,
    isolation: &'static str,
    writes: u64,
    timeout_ms: u64,
    expires_in_ms: u64,
    aborting: Option<String>,
}

fn observe(shared: &TransactionShared, status: ActorStatus, vitals: &Vitals) -> ActorNode {
    ActorNode::leaf(
        ActorKind::Transaction,
        shared.id.clone(),
        shared.entry.id.clone(),
        status,
        Life {
            created: shared.created,
            vitals,
            clock: &shared.clock,
            restarts: 0,
        },
        &TransactionState {
            backend: &shared.backend,
            isolation: shared.isolation,
            writes: shared.writes.load(Ordering::Relaxed),
            timeout_ms: shared.timeout.as_millis() as u64,
            expires_in_ms: shared.deadline_ms.saturating_sub(shared.clock.now_ms()),
            aborting: shared.abort_reason(),
        },
    )
}

impl Child for TransactionShared {
    type Actor = TransactionActor;
    type Env = ();
    type Key = String;
    const KIND: ActorKind = ActorKind::Transaction;

    fn key(self: &Arc<Self>) -> String {
        self.id.clone()
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn actor(self: &Arc<Self>, _: &Arc<()>, life: ActorLife) -> TransactionActor {
        TransactionActor {
            shared: self.clone(),
            life,
        }
    }

    fn clock(&self) -> Clock {
        self.clock
    }

    fn is_finished(&self) -> bool {
        self.is_ended()
    }

    fn node(&self, status: ActorStatus, vitals: &Vitals) -> ActorNode {
        observe(self, status, vitals)
    }

    /// Without its actor nothing would end it at its timeout: roll it back.
    fn give_up(&self, _: &Arc<()>, why: &str) {
        self.abort(format!(
            "the gateway could not keep watching the transaction ({why})"
        ));
    }
}

/// Open streaming transactions of the gateway.
#[derive(Default)]
pub struct Transactions {
    /// Open transactions by namespace and by session.
    open: Mutex<(HashMap<String, usize>, HashMap<String, usize>)>,
}

/// A place taken under the limits; given back when dropped.
pub struct Slot {
    registry: Arc<Transactions>,
    namespace: String,
    session: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.registry.open.lock();
        let (by_ns, by_session) = &mut *open;
        for (map, key) in [(by_ns, &self.namespace), (by_session, &self.session)] {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }
}

impl Transactions {
    /// Takes a place for a new transaction of `entry`'s session, or
    /// RESOURCE_EXHAUSTED naming the limit.
    pub fn reserve(
        self: &Arc<Self>,
        entry: &SessionEntry,
        per_session: usize,
        per_namespace: usize,
    ) -> Result<Slot, Error> {
        let ns = entry.namespace().to_string();
        let mut open = self.open.lock();
        let in_ns = open.0.get(&ns).copied().unwrap_or(0);
        let in_session = open.1.get(&entry.id).copied().unwrap_or(0);
        let full = |what: &str, n: usize| {
            Error::new(
                ErrorKind::ResourceExhausted,
                "TOO_MANY_TRANSACTIONS",
                format!(
                    "{what} already has {n} open transactions, its limit; commit or roll one back \
                     first"
                ),
            )
        };
        if in_session >= per_session {
            return Err(full("this session", per_session));
        }
        if in_ns >= per_namespace {
            return Err(full("this namespace", per_namespace));
        }
        *open.0.entry(ns.clone()).or_default() += 1;
        *open.1.entry(entry.id.clone()).or_default() += 1;
        Ok(Slot {
            registry: self.clone(),
            namespace: ns,
            session: entry.id.clone(),
        })
    }
}
