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
//! [`TransactionShared`]. [`Transactions`] is the registry: it enforces the
//! per-session and per-namespace limits, grafts the actors under their
//! sessions in the tree, and restarts crashed ones.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use actix::{Actor, ActorContext, ArbiterHandle, AsyncContext, Context, Handler, WrapFuture};
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use super::{
    session::Vitals, subscription::Crash, ActorKind, ActorNode, ActorStatus, KillSwitch, Life,
    Mailbox, Observe,
};
use crate::{
    error::{Error, ErrorKind},
    session::{Clock, SessionEntry},
};

/// How often an actor checks its session.
const TICK: Duration = Duration::from_millis(200);

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
    pub restarts: AtomicU64,
    /// Fired to make the stream roll back; `why` says why.
    pub kill: Arc<KillSwitch>,
    why: Mutex<Option<String>>,
    /// Fired by the stream when it has ended (the actor then stops).
    ended: Arc<KillSwitch>,
    created: SystemTime,
    clock: Clock,
    vitals: Arc<Vitals>,
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
            restarts: AtomicU64::new(0),
            kill: Arc::default(),
            why: Mutex::new(None),
            ended: Arc::default(),
            created: SystemTime::now(),
            clock,
            vitals: Arc::default(),
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
        self.ended.fire();
    }

    pub fn is_ended(&self) -> bool {
        self.ended.is_fired()
    }

    fn check(&self) {
        self.vitals.beat(self.clock.now_ms());
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
}

impl Actor for TransactionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let ended = self.shared.ended.clone();
        ctx.spawn(
            async move { ended.fired().await }
                .into_actor(self)
                .map(|_, _, ctx: &mut Context<Self>| ctx.stop()),
        );
        ctx.run_interval(TICK, |act, _| act.shared.check());
        let left = self
            .shared
            .deadline_ms
            .saturating_sub(self.shared.clock.now_ms());
        ctx.run_later(Duration::from_millis(left), |act, _| act.shared.check());
    }
}

use actix::ActorFutureExt as _;

super::subscription::crash_drill!(TransactionActor, "transaction actor");

super::mailbox::counted!(TransactionActor: Observe);

impl Handler<Observe> for TransactionActor {
    type Result = ActorNode;

    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> ActorNode {
        self.shared.vitals.handled();
        observe(&self.shared, ActorStatus::Running)
    }
}

fn observe(shared: &TransactionShared, status: ActorStatus) -> ActorNode {
    ActorNode::leaf(
        ActorKind::Transaction,
        shared.id.clone(),
        shared.entry.id.clone(),
        status,
        Life {
            created: shared.created,
            vitals: &shared.vitals,
            clock: &shared.clock,
            restarts: shared.restarts.load(Ordering::Relaxed),
        },
        serde_json::json!({
            "backend": shared.backend,
            "isolation": shared.isolation,
            "writes": shared.writes.load(Ordering::Relaxed),
            "timeout_ms": shared.timeout.as_millis() as u64,
            "expires_in_ms": shared.deadline_ms.saturating_sub(shared.clock.now_ms()),
            "aborting": shared.abort_reason(),
        }),
    )
}

struct TransactionEntry {
    shared: Arc<TransactionShared>,
    addr: RwLock<Mailbox<TransactionActor>>,
}

impl TransactionEntry {
    fn spawn(
        shared: &Arc<TransactionShared>,
        arbiter: &ArbiterHandle,
    ) -> Mailbox<TransactionActor> {
        let actor_shared = shared.clone();
        let addr = TransactionActor::start_in_arbiter(arbiter, move |_| TransactionActor {
            shared: actor_shared,
        });
        Mailbox::new(addr, shared.vitals.clone())
    }
}

/// Open streaming transactions of the gateway.
#[derive(Default)]
pub struct Transactions {
    by_id: DashMap<String, Arc<TransactionEntry>>,
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

    pub fn start(&self, shared: Arc<TransactionShared>, arbiter: &ArbiterHandle) {
        let addr = TransactionEntry::spawn(&shared, arbiter);
        self.by_id.insert(
            shared.id.clone(),
            Arc::new(TransactionEntry {
                shared,
                addr: RwLock::new(addr),
            }),
        );
    }

    /// Forgets a transaction whose stream ended.
    pub fn remove(&self, id: &str) {
        if let Some((_, entry)) = self.by_id.remove(id) {
            entry.shared.finish();
        }
    }

    /// Open transactions in the gateway.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Makes a transaction's actor panic (supervision drills).
    pub fn crash(&self, id: &str) -> bool {
        match self.by_id.get(id) {
            Some(e) => {
                e.addr.read().do_send(Crash);
                true
            }
            None => false,
        }
    }

    /// Restarts crashed actors of transactions still open; run on the root
    /// supervisor's tick.
    pub fn supervise(&self, arbiter: impl Fn() -> ArbiterHandle) {
        for entry in self.by_id.iter() {
            let shared = &entry.shared;
            if shared.is_ended() || entry.addr.read().connected() {
                continue;
            }
            shared.restarts.fetch_add(1, Ordering::AcqRel);
            tracing::warn!(transaction = %shared.id, "restarting transaction actor");
            *entry.addr.write() = TransactionEntry::spawn(shared, &arbiter());
        }
    }

    /// Nodes for every open transaction, for grafting under sessions.
    pub async fn observe(&self) -> Vec<ActorNode> {
        let entries: Vec<_> = self.by_id.iter().map(|e| e.clone()).collect();
        let mut nodes = Vec::with_capacity(entries.len());
        for e in entries {
            let addr = e.addr.read().clone();
            nodes.push(
                addr.observe_or(|| observe(&e.shared, ActorStatus::Failed))
                    .await,
            );
        }
        nodes
    }
}
