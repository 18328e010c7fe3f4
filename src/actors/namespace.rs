//! NamespaceSupervisor: one per namespace, a child of the root. It keeps
//! its namespace's session deadlines (one timer over an
//! [`ExpirySchedule`], not one per session), activates a session's actor
//! when the session starts its first child and retires it once it has
//! none, and with the one supervision primitive checks every active
//! descendant on each tick — the activated sessions and the subscriptions
//! and transactions they started. An idle session costs it nothing per
//! tick. Its state lives in [`NamespaceShared`], outside the actor, so a
//! restarted supervisor adopts it as it is. It hears of every session that
//! ends (the registry's events) and stops that session's actor at once,
//! which tells the session's children.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime},
};

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, ResponseFuture, SpawnHandle,
    StreamHandler, WrapFuture,
};
use parking_lot::Mutex;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};

use super::{
    expiry::ExpirySchedule,
    mailbox::counted,
    session::{NewChild, SessionChildren, SessionEnv, StartChild, Starting},
    supervision::{ActorLife, CheckTiming, Child, Children, Supervised, Supervision, Vitals},
    ActorKind, ActorNode, ActorStatus, ArbiterPool, Observe,
};
use crate::{
    error::Error,
    session::{Clock, EndReason, SessionEntry, SessionEvent, SessionRegistry},
};

/// How soon an expiry the session store could not settle is tried again
/// (and at the soonest, one it settled as still open).
const RETRY_EXPIRY: Duration = Duration::from_secs(1);

/// Sessions expired in one turn of the supervisor; more due wait for its
/// next turn, so its other messages are not held up by a burst.
const EXPIRE_BATCH: usize = 1024;

/// Expiries a supervisor settles with the cluster's store at once.
const MAX_SETTLING: usize = 1024;

/// Ticks in a row a session's actor must have nothing to look after before
/// it is retired (so a session that starts a child now and then keeps its
/// actor, and an actor just activated is not retired before its first
/// message).
const IDLE_TICKS_BEFORE_RETIRING: u8 = 2;

/// What every namespace supervisor is started with (the root's settings).
#[derive(Clone)]
pub struct SupervisorSettings {
    pub registry: Arc<SessionRegistry>,
    pub pool: Arc<ArbiterPool>,
    pub interval: Duration,
    /// Restarts of a backend pool, relay or namespace supervisor before
    /// the root gives up on it (`server.max_restarts`).
    pub max_restarts: u32,
    /// Told when supervision itself fails; the gateway then stops.
    pub failure: Arc<super::root::SupervisionFailure>,
    /// Restarts by kind, counted as they happen.
    pub restarts: Arc<super::supervision::Restarts>,
}

/// A namespace: its sessions and what survives a restart of its supervisor.
pub struct NamespaceShared {
    pub name: String,
    id: String,
    created: SystemTime,
    clock: Clock,
    /// Session actor restarts before the session is ended
    /// (`namespaces.<ns>.session.max_restarts`).
    max_restarts: u32,
    /// Its sessions with an actor (those with children, or whose actor
    /// failed); their children are in the sessions' environment.
    pub sessions: Children<SessionEntry>,
    /// Every open session's deadline.
    expiry: Mutex<ExpirySchedule>,
    /// When the last counted check ran; kept outside the actor so a
    /// restarted supervisor does not judge its first tick.
    timing: Mutex<CheckTiming>,
}

impl NamespaceShared {
    pub fn new(name: &str, max_restarts: u32, settings: &SupervisorSettings) -> Self {
        NamespaceShared {
            name: name.to_string(),
            id: format!("namespace/{name}"),
            created: SystemTime::now(),
            clock: *settings.registry.clock(),
            max_restarts,
            sessions: Children::new(
                Arc::new(SessionEnv {
                    registry: settings.registry.clone(),
                    pool: settings.pool.clone(),
                    restarts: settings.restarts.clone(),
                    children: Mutex::default(),
                }),
                settings.restarts.clone(),
            ),
            expiry: Mutex::default(),
            timing: Mutex::new(CheckTiming::new(settings.interval)),
        }
    }

    /// Files a session under a deadline (the supervisor arms its timer).
    fn file(&self, at_ms: u64, entry: &Arc<SessionEntry>) {
        let open = entry.namespace_sessions.open.load(Ordering::Relaxed);
        self.expiry.lock().push(at_ms, entry, open);
    }

    /// This namespace's open sessions, from the registry.
    fn open_sessions(&self) -> Vec<Arc<SessionEntry>> {
        let mut open = self.env().registry.all();
        open.retain(|e| e.namespace() == self.name);
        open
    }

    /// The session's actor — activated if it has none, when `pool` is
    /// given — and a child on its way to it. Under the lock of the
    /// children map, which a retirement holds too: an actor is never
    /// retired between being found here and being sent the child.
    pub(super) fn activate(
        &self,
        entry: &Arc<SessionEntry>,
        pool: Option<&ArbiterPool>,
    ) -> Option<(Arc<Supervised<SessionEntry>>, Starting)> {
        let _children = self.env().children.lock();
        let session = match (self.sessions.get(&entry.id), pool) {
            (Some(session), _) => session,
            (None, Some(pool)) => self.sessions.start(entry.clone(), &pool.next()),
            (None, None) => return None,
        };
        Some((session, Starting::new(entry)))
    }

    /// Retires the actors of sessions that had nothing to look after for
    /// [`IDLE_TICKS_BEFORE_RETIRING`] ticks in a row: no child, none on
    /// its way, and a clean record (an actor that failed stays, so its
    /// restarts stay visible and count towards the limit).
    fn retire_idle(&self) {
        let env = self.env();
        for session in self.sessions.all() {
            let entry = &session.child;
            if entry.state().is_ended() || session.supervision() != Supervision::default() {
                continue;
            }
            let mut children = env.children.lock();
            let busy = entry.starting.load(Ordering::Acquire) != 0
                || children.get(&entry.id).is_some_and(|c| !c.is_empty());
            if busy {
                entry.idle_ticks.store(0, Ordering::Relaxed);
                continue;
            }
            if entry.idle_ticks.fetch_add(1, Ordering::Relaxed) + 1 >= IDLE_TICKS_BEFORE_RETIRING {
                children.remove(&entry.id);
                self.sessions.stop(&entry.id);
            }
        }
    }

    pub fn env(&self) -> &Arc<SessionEnv> {
        &self.sessions.env
    }

    /// Stops every session actor; used at shutdown after sessions ended.
    pub fn stop_all(&self) {
        self.sessions.stop_all();
        self.expiry.lock().clear();
    }

    /// One supervision pass over every descendant.
    fn supervise(&self, pool: &ArbiterPool) {
        let now = self.clock.now_ms();
        let Some(judge) = self.timing.lock().judge(now) else {
            return;
        };
        let arbiter = || pool.next();
        self.sessions.check_all(judge, self.max_restarts, &arbiter);
        self.retire_idle();
        let env = self.env();
        for children in env.all_children() {
            children.check_all(judge, self.max_restarts, &arbiter);
        }
        // Ended sessions' children leave once they have all finished.
        // Those whose session's actor could not tell them (it had failed)
        // are told here; telling twice is harmless.
        let ended: Vec<(String, Arc<SessionChildren>)> = env
            .children
            .lock()
            .iter()
            .filter(|(id, _)| env.registry.by_id(id).is_none())
            .map(|(id, c)| (id.clone(), c.clone()))
            .collect();
        for (id, children) in ended {
            if children.is_empty() {
                env.children.lock().remove(&id);
            } else {
                children.session_ended();
            }
        }
    }

    /// Its sessions' nodes, each with its children: those with an actor
    /// asked of it directly, not through the supervisor's mailbox (so a
    /// stuck supervisor does not hide its sessions), the idle ones read
    /// from their entries.
    pub async fn observe_sessions(&self) -> Vec<ActorNode> {
        let mut sessions = self.sessions.observe().await;
        let active: std::collections::HashSet<String> =
            sessions.iter().map(|s| s.id.clone()).collect();
        sessions.extend(
            self.open_sessions()
                .iter()
                .filter(|e| !active.contains(&e.id))
                .map(|e| super::session::observe_idle_session(e)),
        );
        sessions.sort_by(|a, b| a.id.cmp(&b.id));
        for session in &mut sessions {
            if let Some(children) = self.env().children_of(&session.id) {
                session.children = children.observe().await;
            }
        }
        sessions
    }

    fn node(&self, status: ActorStatus, vitals: &Vitals) -> ActorNode {
        ActorNode::leaf(
            ActorKind::NamespaceSupervisor,
            self.id.clone(),
            "root".to_string(),
            status,
            super::Life {
                created: self.created,
                vitals,
                clock: &self.clock,
                restarts: 0,
            },
            &NamespaceState {
                namespace: &self.name,
                sessions: self
                    .env()
                    .registry
                    .namespace(&self.name)
                    .map_or(0, |n| n.open.load(Ordering::Relaxed)),
                child_restarts: None,
            },
        )
    }
}

/// A namespace supervisor's observable state (`child_restarts` is added
/// by the root, which sees the sessions' nodes).
#[derive(serde::Serialize)]
pub struct NamespaceState<'a> {
    pub namespace: &'a str,
    pub sessions: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_restarts: Option<u64>,
}

pub struct NamespaceSupervisor {
    shared: Arc<NamespaceShared>,
    settings: Arc<SupervisorSettings>,
    life: ActorLife,
    /// The one expiry timer: when it fires, and its handle.
    wake: Option<(u64, SpawnHandle)>,
    /// Expiries being settled with the cluster's store.
    settling: usize,
}

impl NamespaceSupervisor {
    /// Arms the expiry timer for the earliest deadline filed, unless it is
    /// armed for that or earlier already.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        let Some(at) = self.shared.expiry.lock().earliest() else {
            return;
        };
        if let Some((armed, handle)) = self.wake {
            if armed <= at {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = at.saturating_sub(self.shared.clock.now_ms());
        let handle = ctx.run_later(Duration::from_millis(delay), |act, ctx| {
            act.wake = None;
            act.expire_due(ctx);
        });
        self.wake = Some((at, handle));
    }

    /// Ends the sessions whose deadline passed (a batch at a time); files
    /// again those whose deadline moved (the hot path only bumps an
    /// atomic). In a cluster the store decides (activity elsewhere may have
    /// moved the deadline); a session being settled stays filed a little
    /// later, so it is tried again if the answer never comes.
    fn expire_due(&mut self, ctx: &mut Context<Self>) {
        let now = self.shared.clock.now_ms();
        self.life.vitals.beat(now);
        let registry = self.settings.registry.clone();
        let cluster = registry.cluster().cloned();
        let room = if cluster.is_some() {
            MAX_SETTLING.saturating_sub(self.settling)
        } else {
            EXPIRE_BATCH
        };
        if room == 0 {
            // A settle's answer arms the timer again.
            return;
        }
        let due = self
            .shared
            .expiry
            .lock()
            .take_due(now, room.min(EXPIRE_BATCH));
        let retry_at = now.saturating_add(RETRY_EXPIRY.as_millis() as u64);
        for entry in due {
            if !entry.is_past_expiry(now) {
                self.shared.file(entry.expires_ms(), &entry);
                continue;
            }
            let Some(cluster) = cluster.clone() else {
                // Its actor, if it has one, stops on the Ended event.
                registry.end(&entry, EndReason::Expired);
                continue;
            };
            self.shared.file(retry_at, &entry);
            self.settling += 1;
            let registry = registry.clone();
            let settle = async move {
                let open = cluster.settle_expiry(&registry, &entry).await;
                (entry, open)
            };
            ctx.spawn(settle.into_actor(self).map(|(entry, open), act, ctx| {
                act.settling -= 1;
                match open {
                    // Still open: its deadline moved (never sooner than a
                    // retry, in case the store keeps it open a little).
                    Ok(true) => {
                        let soonest = act.shared.clock.now_ms()
                            .saturating_add(RETRY_EXPIRY.as_millis() as u64);
                        act.shared.file(entry.expires_ms().max(soonest), &entry);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e.message, session_id = %entry.id, namespace = %act.shared.name, "session expiry not settled; retrying");
                    }
                }
                act.arm(ctx);
            }));
        }
        self.arm(ctx);
    }
}

impl Actor for NamespaceSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.life.vitals.beat(self.shared.clock.now_ms());
        if self.life.restarted {
            // Sessions the old actor had taken from the schedule may be
            // lost with it: file every open session afresh.
            let open = self.shared.open_sessions();
            self.shared.expiry.lock().rebuild(open);
        }
        self.arm(ctx);
        ctx.add_stream(BroadcastStream::new(self.settings.registry.subscribe()));
        ctx.run_interval(self.settings.interval, |act, ctx| {
            act.shared.supervise(&act.settings.pool);
            // A timer lost with an earlier actor is armed again here.
            act.arm(ctx);
        });
    }
}

/// A session that ended anywhere (close, expiry on the hot path, shutdown)
/// has its actor stopped at once; the actor then tells its children.
impl StreamHandler<Result<SessionEvent, BroadcastStreamRecvError>> for NamespaceSupervisor {
    fn handle(
        &mut self,
        event: Result<SessionEvent, BroadcastStreamRecvError>,
        _: &mut Context<Self>,
    ) {
        // A lagged receiver missed some: the next check finds those.
        if let Ok(SessionEvent::Ended {
            session_id,
            namespace,
            ..
        }) = event
        {
            if namespace == self.shared.name {
                self.shared.sessions.stop(&session_id);
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // The registry lives as long as the gateway: nothing to do.
    }
}

super::supervision::supervised_actor!(NamespaceSupervisor);

/// Take on a session already in the registry: file its deadline. (Its
/// actor starts with its first child.)
#[derive(Message)]
#[rtype(result = "()")]
pub struct HostSession(pub Arc<SessionEntry>);

impl Handler<HostSession> for NamespaceSupervisor {
    type Result = ();

    fn handle(&mut self, HostSession(entry): HostSession, ctx: &mut Context<Self>) {
        self.life.vitals.handled();
        self.shared.file(entry.expires_ms(), &entry);
        self.arm(ctx);
    }
}

/// Start a child of a session: its actor is activated if it has none,
/// then asked to start the child (the answer comes once it has).
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct StartSessionChild(pub Arc<SessionEntry>, pub NewChild);

impl Handler<StartSessionChild> for NamespaceSupervisor {
    type Result = ResponseFuture<Result<(), Error>>;

    fn handle(
        &mut self,
        StartSessionChild(entry, child): StartSessionChild,
        _: &mut Context<Self>,
    ) -> Self::Result {
        self.life.vitals.handled();
        if let Some(e) = entry.ended_error() {
            return Box::pin(std::future::ready(Err(e)));
        }
        let Some((session, starting)) = self.shared.activate(&entry, Some(&self.settings.pool))
        else {
            return Box::pin(std::future::ready(Err(super::root::unavailable(
                "the session's actor",
            ))));
        };
        let request = session.mailbox().send(StartChild(child, starting));
        Box::pin(async move {
            request.await.unwrap_or_else(|_| {
                Err(entry
                    .ended_error()
                    .unwrap_or_else(|| super::root::unavailable("the session's actor")))
            })
        })
    }
}

/// A deliberate fault for a session's actor, activated for it if it has
/// none (supervision drills; tests only).
#[cfg(any(test, feature = "drills"))]
#[derive(Message)]
#[rtype(result = "()")]
pub struct DrillSession(pub Arc<SessionEntry>, pub super::Fault);

#[cfg(any(test, feature = "drills"))]
impl Handler<DrillSession> for NamespaceSupervisor {
    type Result = ();

    fn handle(&mut self, DrillSession(entry, fault): DrillSession, _: &mut Context<Self>) {
        self.life.vitals.handled();
        if entry.state().is_ended() {
            return;
        }
        if let Some((session, _starting)) = self.shared.activate(&entry, Some(&self.settings.pool))
        {
            session.mailbox().do_send(fault);
        }
    }
}

#[cfg(any(test, feature = "drills"))]
counted!(NamespaceSupervisor: DrillSession);

/// Stop a session's actor (the session has ended, or the gateway stops).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopSession(pub String);

impl Handler<StopSession> for NamespaceSupervisor {
    type Result = ();

    fn handle(&mut self, msg: StopSession, _: &mut Context<Self>) {
        self.life.vitals.handled();
        self.shared.sessions.stop(&msg.0);
    }
}

counted!(NamespaceSupervisor: HostSession, StartSessionChild, StopSession, Observe);

impl Handler<Observe> for NamespaceSupervisor {
    type Result = ActorNode;

    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> ActorNode {
        self.life.vitals.handled();
        self.shared.node(ActorStatus::Running, &self.life.vitals)
    }
}

impl Child for NamespaceShared {
    type Actor = NamespaceSupervisor;
    type Env = SupervisorSettings;
    type Key = String;
    const KIND: ActorKind = ActorKind::NamespaceSupervisor;

    fn key(self: &Arc<Self>) -> String {
        self.id.clone()
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn actor(self: &Arc<Self>, env: &Arc<SupervisorSettings>, life: ActorLife) -> Self::Actor {
        if life.restarted {
            tracing::warn!(namespace = %self.name, "namespace supervisor restarted; adopting its sessions");
        }
        NamespaceSupervisor {
            shared: self.clone(),
            settings: env.clone(),
            life,
            wake: None,
            settling: 0,
        }
    }

    fn clock(&self) -> Clock {
        self.clock
    }

    fn is_finished(&self) -> bool {
        false
    }

    fn node(&self, status: ActorStatus, vitals: &Vitals) -> ActorNode {
        NamespaceShared::node(self, status, vitals)
    }

    /// Without its supervisor a namespace's sessions are unsupervised: the
    /// gateway stops (an orchestrator restarts it) rather than serve so.
    fn give_up(&self, env: &Arc<SupervisorSettings>, why: &str) {
        env.failure
            .fail(format!("namespace supervisor `{}`: {why}", self.name));
    }

    fn restarted(&self, env: &Arc<SupervisorSettings>, restarts: u32) {
        env.registry
            .emit(SessionEvent::NamespaceSupervisorRestarted {
                namespace: self.name.clone(),
                restarts: u64::from(restarts),
            });
    }
}
