//! SessionActor: a session's actor while it has children, a child of its
//! namespace's supervisor. It starts the session's children — Queue and
//! PubSub subscriptions and streaming transactions — when a handler asks
//! it to, and when the session ends it tells each of them. Sessions are
//! virtual actors: an idle session has no actor (its expiry is kept in its
//! namespace's schedule, `actors::expiry`); the supervisor activates one
//! for the first child and retires it once it has none. The session's
//! state lives in its [`SessionEntry`] and its children in
//! [`SessionChildren`], both outside the actor, so a restarted or
//! reactivated actor continues where the old one stopped.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
};

use actix::{Actor, Context, Handler, Message};
use parking_lot::Mutex;

use super::{
    pubsub::PubSubShared,
    subscription::SubscriptionShared,
    supervision::{ActorLife, Child, Children, Restarts, Vitals},
    transaction::TransactionShared,
    ActorKind, ActorNode, ActorStatus, ArbiterPool, Life, Observe,
};
use crate::session::{entry::ById, Clock, EndReason, SessionEntry, SessionEvent, SessionRegistry};

/// What every session actor of a namespace is started with.
pub struct SessionEnv {
    pub registry: Arc<SessionRegistry>,
    pub pool: Arc<ArbiterPool>,
    /// The gateway's restart counters, for the sessions' children.
    pub restarts: Arc<Restarts>,
    /// The children of the sessions that have any, by session id (an idle
    /// session has none and costs nothing here).
    pub children: Mutex<HashMap<String, Arc<SessionChildren>>>,
}

impl SessionEnv {
    /// A session's children, if it has any.
    pub fn children_of(&self, session_id: &str) -> Option<Arc<SessionChildren>> {
        self.children.lock().get(session_id).cloned()
    }

    /// Every session's children.
    pub fn all_children(&self) -> Vec<Arc<SessionChildren>> {
        self.children.lock().values().cloned().collect()
    }

    /// Tells the children of an ended session. Each finishes on its own
    /// (it releases what it holds and stops); they stay supervised until
    /// they have, so one that was stuck when told is restarted and, seeing
    /// its session ended, finishes too.
    pub fn end_children(&self, entry: &SessionEntry) {
        if let Some(children) = self.children_of(&entry.id) {
            children.session_ended();
        }
    }
}

/// A session's subscriptions and transactions: the actors its SessionActor
/// started, supervised by the namespace's supervisor with the one
/// supervision primitive.
pub struct SessionChildren {
    pub queue: Children<SubscriptionShared>,
    pub pubsub: Children<PubSubShared>,
    pub transactions: Children<TransactionShared>,
}

impl SessionChildren {
    fn new(restarts: &Arc<Restarts>) -> Self {
        SessionChildren {
            queue: Children::new(Arc::new(()), restarts.clone()),
            pubsub: Children::new(Arc::new(()), restarts.clone()),
            transactions: Children::new(Arc::new(()), restarts.clone()),
        }
    }

    /// Tells every child that its session ended.
    pub(crate) fn session_ended(&self) {
        for c in self.queue.all() {
            c.mailbox().do_send(SessionEnded);
        }
        for c in self.pubsub.all() {
            c.mailbox().do_send(SessionEnded);
        }
        for c in self.transactions.all() {
            c.mailbox().do_send(SessionEnded);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.pubsub.is_empty() && self.transactions.is_empty()
    }

    /// One supervision pass over every child.
    pub fn check_all(
        &self,
        judge: bool,
        max_restarts: u32,
        arbiter: &impl Fn() -> actix::ArbiterHandle,
    ) -> usize {
        self.queue.check_all(judge, max_restarts, arbiter)
            + self.pubsub.check_all(judge, max_restarts, arbiter)
            + self.transactions.check_all(judge, max_restarts, arbiter)
    }

    /// Every child's node.
    pub async fn observe(&self) -> Vec<ActorNode> {
        let mut nodes = self.queue.observe().await;
        nodes.extend(self.pubsub.observe().await);
        nodes.extend(self.transactions.observe().await);
        nodes
    }
}

/// Told to a session's children when it ends: they end too (each reads
/// why from the session's entry).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct SessionEnded;

/// A child a handler asks the session's actor to start.
#[derive(Clone)]
pub enum NewChild {
    Queue(Arc<SubscriptionShared>),
    PubSub(Arc<PubSubShared>),
    Transaction(Arc<TransactionShared>),
}

/// Start a child of this session (the answer comes once it is started).
#[derive(Message)]
#[rtype(result = "Result<(), crate::error::Error>")]
pub struct StartChild(pub NewChild, pub Starting);

/// A child on its way to its session's actor, counted in the session's
/// entry until the actor has filed it among the session's children (or
/// the message was dropped): the namespace supervisor does not retire a
/// session's actor while one is on its way. Made only under the lock of
/// the sessions' children map, the lock a retirement holds (see
/// `NamespaceShared::activate`).
pub struct Starting(Arc<SessionEntry>);

impl Starting {
    pub(super) fn new(entry: &Arc<SessionEntry>) -> Self {
        entry.starting.fetch_add(1, Ordering::AcqRel);
        entry.idle_ticks.store(0, Ordering::Relaxed);
        Starting(entry.clone())
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.0.starting.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct SessionActor {
    entry: Arc<SessionEntry>,
    env: Arc<SessionEnv>,
    life: ActorLife,
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.life.vitals.beat(self.env.registry.clock().now_ms());
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        // Stopped because the session ended (not replaced by a restart):
        // its children end with it.
        if self.entry.state().is_ended() {
            self.env.end_children(&self.entry);
        }
    }
}

super::supervision::supervised_actor!(SessionActor);
super::mailbox::counted!(SessionActor: StartChild, Observe);

impl Handler<StartChild> for SessionActor {
    type Result = Result<(), crate::error::Error>;

    fn handle(
        &mut self,
        StartChild(child, starting): StartChild,
        _: &mut Context<Self>,
    ) -> Self::Result {
        self.life.vitals.handled();
        if let Some(e) = self.entry.ended_error() {
            return Err(e);
        }
        let arbiter = self.env.pool.next();
        // Filed under the map's lock, and only then no longer counted as
        // on its way: the supervisor retires an actor only when it finds
        // neither (see `NamespaceShared::retire_idle`).
        let mut all = self.env.children.lock();
        let children = all
            .entry(self.entry.id.clone())
            .or_insert_with(|| Arc::new(SessionChildren::new(&self.env.restarts)));
        match child {
            NewChild::Queue(shared) => {
                children.queue.start(shared, &arbiter);
            }
            NewChild::PubSub(shared) => {
                children.pubsub.start(shared, &arbiter);
            }
            NewChild::Transaction(shared) => {
                children.transactions.start(shared, &arbiter);
            }
        }
        drop(all);
        drop(starting);
        Ok(())
    }
}

impl Handler<Observe> for SessionActor {
    type Result = ActorNode;

    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> ActorNode {
        self.life.vitals.handled();
        observe_session(&self.entry, ActorStatus::Running, &self.life.vitals)
    }
}

/// A session actor's observable state.
#[derive(serde::Serialize)]
struct SessionNodeState<'a> {
    namespace: &'a str,
    identity: &'a str,
    config: &'a str,
    backend: &'a str,
    state: crate::session::SessionState,
    expires_at: String,
    last_activity: String,
    requests: i64,
    active_streams: i32,
    pending_operations: i32,
}

/// A session's node (without its children); also used for one whose actor
/// cannot answer.
pub fn observe_session(entry: &SessionEntry, status: ActorStatus, vitals: &Vitals) -> ActorNode {
    let clock = &entry.clock;
    ActorNode::leaf(
        ActorKind::Session,
        entry.id.clone(),
        format!("namespace/{}", entry.namespace()),
        status,
        Life {
            created: entry.created_at,
            vitals,
            clock,
            restarts: 0,
        },
        &SessionNodeState {
            namespace: entry.namespace(),
            identity: &entry.principal.identity,
            config: &entry.config.name,
            backend: &entry.config.backend_name,
            state: entry.state(),
            expires_at: humantime::format_rfc3339_millis(clock.wall_at(entry.expires_ms()))
                .to_string(),
            last_activity: humantime::format_rfc3339_millis(
                clock.wall_at(entry.last_activity_ms()),
            )
            .to_string(),
            requests: entry.requests.load(Ordering::Relaxed),
            active_streams: entry.active_streams.load(Ordering::Relaxed),
            pending_operations: entry.pending_operations(),
        },
    )
}

/// The node of a session without an actor (idle: it has no children), read
/// from its entry; its last progress is its last activity.
pub fn observe_idle_session(entry: &SessionEntry) -> ActorNode {
    let vitals = Vitals::default();
    vitals
        .last_progress_ms
        .store(entry.last_activity_ms(), Ordering::Relaxed);
    observe_session(entry, ActorStatus::Idle, &vitals)
}

impl Child for SessionEntry {
    type Actor = SessionActor;
    type Env = SessionEnv;
    type Key = ById;
    const KIND: ActorKind = ActorKind::Session;

    fn key(self: &Arc<Self>) -> ById {
        ById(self.clone())
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn actor(self: &Arc<Self>, env: &Arc<SessionEnv>, life: ActorLife) -> SessionActor {
        SessionActor {
            entry: self.clone(),
            env: env.clone(),
            life,
        }
    }

    fn clock(&self) -> Clock {
        self.clock
    }

    fn is_finished(&self) -> bool {
        self.state().is_ended()
    }

    /// An ended session's actor has nothing left to do: stop it.
    const STOP_WHEN_FINISHED: bool = true;

    fn node(&self, status: ActorStatus, vitals: &Vitals) -> ActorNode {
        observe_session(self, status, vitals)
    }

    /// The actor kept failing: the session ends, and its children with it.
    fn give_up(&self, env: &Arc<SessionEnv>, _why: &str) {
        // In a cluster the store ends it everywhere (and audits); the
        // local end follows at once either way.
        if let (Some(cluster), Some(entry)) = (
            env.registry.cluster().cloned(),
            env.registry.by_id(&self.id),
        ) {
            let registry = env.registry.clone();
            actix::spawn(async move {
                if let Err(e) = cluster.end(&registry, &entry, EndReason::Failed).await {
                    tracing::warn!(error = %e.message, session_id = %entry.id, "failed session left to expire in the store");
                }
            });
            env.registry.end_quietly(self, EndReason::Failed);
        } else {
            env.registry.end(self, EndReason::Failed);
        }
        env.end_children(self);
    }

    fn restarted(&self, env: &Arc<SessionEnv>, restarts: u32) {
        env.registry.emit(SessionEvent::ActorRestarted {
            session_id: self.id.clone(),
            namespace: self.namespace().to_string(),
            restarts,
        });
    }
}
