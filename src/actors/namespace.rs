//! NamespaceSupervisor: starts, watches and restarts the SessionActors of one
//! namespace. Its children live in [`NamespaceShared`], outside the actor, so
//! a restarted supervisor adopts them as they are.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use actix::{Actor, Addr, AsyncContext, Context, Handler, Message, ResponseFuture};
use parking_lot::{Mutex, RwLock};

use super::{
    mailbox::counted,
    session::{observe_session, Pulse, Stop, Vitals},
    ActorKind, ActorNode, ActorStatus, ArbiterPool, Fault, KillSwitch, Mailbox, Observe,
    SessionActor,
};
use crate::{
    error::{Error, ErrorKind},
    session::{entry::ById, Clock, EndReason, SessionEntry, SessionEvent, SessionRegistry},
};

/// Consecutive checks without a pulse before a child counts as stuck. Each
/// check sends every child a [`Pulse`] that it answers by beating, so three
/// silent checks mean it has taken none of three probes over several
/// intervals, not a scheduling hiccup.
const SILENT_CHECKS_BEFORE_RESTART: u32 = 3;

struct ChildSlot {
    addr: Mailbox<SessionActor>,
    entry: Arc<SessionEntry>,
    kill: Arc<KillSwitch>,
    created: SystemTime,
    last_seen_pulse: u64,
    silent_checks: u32,
    restarts: u32,
}

impl ChildSlot {
    /// Stops the actor: a Stop message for a running one, the kill switch
    /// for one stuck in a wait (it takes no messages).
    fn stop(&self) {
        self.kill.fire();
        self.addr.do_send(Stop);
    }
}

/// What survives a supervisor restart.
pub struct NamespaceShared {
    pub name: String,
    created: SystemTime,
    clock: Clock,
    /// Child restarts performed by this namespace's supervisor.
    pub child_restarts: AtomicU64,
    vitals: Arc<Vitals>,
    /// Held only briefly and never across an await.
    children: Mutex<HashMap<ById, ChildSlot>>,
}

/// How the rest of the gateway reaches a namespace's supervisor; the address
/// is swapped when the supervisor is restarted.
pub struct NamespaceHandle {
    pub shared: Arc<NamespaceShared>,
    addr: RwLock<Mailbox<NamespaceSupervisor>>,
    /// Restarts of the supervisor itself.
    pub restarts: AtomicU64,
}

impl NamespaceHandle {
    pub fn addr(&self) -> Mailbox<NamespaceSupervisor> {
        self.addr.read().clone()
    }

    pub(crate) fn replace(&self, addr: Addr<NamespaceSupervisor>) {
        *self.addr.write() = Mailbox::new(addr, self.shared.vitals.clone());
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
pub struct SupervisorSettings {
    pub registry: Arc<SessionRegistry>,
    pub pool: Arc<ArbiterPool>,
    pub interval: Duration,
    /// Subscription actors, restarted by the root on its tick.
    pub subscriptions: Arc<super::subscription::Subscriptions>,
}

pub struct NamespaceSupervisor {
    shared: Arc<NamespaceShared>,
    settings: SupervisorSettings,
    /// When the last counted check ran (session clock, ms).
    last_check_ms: Option<u64>,
}

impl NamespaceSupervisor {
    pub fn spawn(name: &str, settings: SupervisorSettings) -> NamespaceHandle {
        let shared = Arc::new(NamespaceShared {
            name: name.to_string(),
            created: SystemTime::now(),
            clock: *settings.registry.clock(),
            child_restarts: AtomicU64::new(0),
            vitals: Arc::default(),
            children: Mutex::new(HashMap::new()),
        });
        let addr = Mailbox::new(
            Self::start_with(shared.clone(), settings),
            shared.vitals.clone(),
        );
        NamespaceHandle {
            shared,
            addr: RwLock::new(addr),
            restarts: AtomicU64::new(0),
        }
    }

    pub(crate) fn start_with(
        shared: Arc<NamespaceShared>,
        settings: SupervisorSettings,
    ) -> Addr<Self> {
        let arbiter = settings.pool.next();
        NamespaceSupervisor::start_in_arbiter(&arbiter, move |_| NamespaceSupervisor {
            shared,
            settings,
            last_check_ms: None,
        })
    }

    fn start_child(&self, entry: Arc<SessionEntry>, restarts: u32) -> ChildSlot {
        let vitals = Arc::new(Vitals::default());
        let kill = Arc::new(KillSwitch::default());
        let actor = SessionActor::new(
            entry.clone(),
            self.settings.registry.clone(),
            vitals.clone(),
            kill.clone(),
            restarts as u64,
        );
        let addr = SessionActor::start_in_arbiter(&self.settings.pool.next(), move |_| actor);
        ChildSlot {
            addr: Mailbox::new(addr, vitals),
            entry,
            kill,
            created: SystemTime::now(),
            last_seen_pulse: 0,
            silent_checks: 0,
            restarts,
        }
    }

    /// One supervision pass: drop children whose session ended, restart
    /// dead or stuck ones.
    fn supervise(&mut self) {
        let registry = &self.settings.registry;
        let now = registry.clock().now_ms();
        self.shared.vitals.beat(now);
        // A check only judges progress when the supervisor itself ran on
        // time: ticks bunched after a clock jump or a stall of this arbiter
        // say nothing about the children, so they only reset the baseline.
        let interval = crate::session::clock::ms(self.settings.interval).max(1);
        let judge = match self.last_check_ms {
            Some(last) if now.saturating_sub(last) < interval / 2 => return,
            Some(last) => now.saturating_sub(last) <= 3 * interval,
            None => false,
        };
        self.last_check_ms = Some(now);
        let mut to_restart = Vec::new();
        {
            let mut children = self.shared.children.lock();
            children.retain(|_, slot| {
                if slot.entry.state().is_ended() {
                    slot.stop();
                    return false;
                }
                true
            });
            for (id, slot) in children.iter_mut() {
                if !slot.addr.connected() {
                    to_restart.push((id.0.id.clone(), "mailbox closed"));
                    continue;
                }
                let pulse = slot.addr.vitals().pulse.load(Ordering::Relaxed);
                if !judge {
                    slot.last_seen_pulse = pulse;
                    slot.silent_checks = 0;
                } else if pulse == slot.last_seen_pulse {
                    slot.silent_checks += 1;
                    if slot.silent_checks >= SILENT_CHECKS_BEFORE_RESTART {
                        to_restart.push((id.0.id.clone(), "no progress"));
                    }
                } else {
                    slot.last_seen_pulse = pulse;
                    slot.silent_checks = 0;
                }
                // The probe the next check looks for.
                slot.addr.do_send(Pulse);
            }
        }
        for (id, why) in to_restart {
            self.restart(&id, why);
        }
    }

    fn restart(&mut self, id: &str, why: &str) {
        let Some(old) = self.shared.children.lock().remove(id) else {
            return;
        };
        old.stop();
        let restarts = old.restarts + 1;
        let namespace = self.shared.name.clone();
        if restarts > old.entry.policy.max_restarts {
            tracing::error!(session_id = %id, %namespace, restarts, why, "session actor keeps failing; closing the session");
            self.settings.registry.end(&old.entry, EndReason::Failed);
            return;
        }
        tracing::warn!(session_id = %id, %namespace, restarts, why, "restarting session actor");
        let key = ById(old.entry.clone());
        let slot = self.start_child(old.entry, restarts);
        self.shared.children.lock().insert(key, slot);
        self.shared.child_restarts.fetch_add(1, Ordering::Relaxed);
        self.settings.registry.emit(SessionEvent::ActorRestarted {
            session_id: id.to_string(),
            namespace,
            restarts,
        });
    }
}

impl Actor for NamespaceSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.shared
            .vitals
            .beat(self.settings.registry.clock().now_ms());
        ctx.run_interval(self.settings.interval, |act, _| act.supervise());
    }
}

/// Start the actor of a session already in the registry.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartSession(pub Arc<SessionEntry>);

impl Handler<StartSession> for NamespaceSupervisor {
    type Result = ();

    fn handle(&mut self, msg: StartSession, _: &mut Context<Self>) {
        self.shared.vitals.handled();
        let key = ById(msg.0.clone());
        let slot = self.start_child(msg.0, 0);
        self.shared.children.lock().insert(key, slot);
    }
}

/// Stop a session's actor (the session has ended, or the gateway stops).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopSession(pub String);

impl Handler<StopSession> for NamespaceSupervisor {
    type Result = ();

    fn handle(&mut self, msg: StopSession, _: &mut Context<Self>) {
        self.shared.vitals.handled();
        if let Some(slot) = self.shared.children.lock().remove(msg.0.as_str()) {
            slot.stop();
        }
    }
}

/// Deliver a fault to one session's actor.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct InjectFault {
    pub session_id: String,
    pub fault: Fault,
}

impl Handler<InjectFault> for NamespaceSupervisor {
    type Result = Result<(), Error>;

    fn handle(&mut self, msg: InjectFault, _: &mut Context<Self>) -> Self::Result {
        self.shared.vitals.handled();
        let children = self.shared.children.lock();
        let slot = children.get(msg.session_id.as_str()).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                "ACTOR_NOT_FOUND",
                format!("no actor for session {}", msg.session_id),
            )
        })?;
        slot.addr.do_send(msg.fault);
        Ok(())
    }
}

/// A deliberate panic in the supervisor itself; its children live on and
/// the root restarts it. (The root watches supervisors for a closed mailbox
/// only, so there is no stall drill here.)
#[derive(Message)]
#[rtype(result = "()")]
pub struct CrashSupervisor;

impl Handler<CrashSupervisor> for NamespaceSupervisor {
    type Result = ();

    fn handle(&mut self, _: CrashSupervisor, _: &mut Context<Self>) {
        self.shared.vitals.handled();
        tracing::warn!(namespace = %self.shared.name, "injected crash of namespace supervisor");
        panic!(
            "injected crash of namespace supervisor {}",
            self.shared.name
        );
    }
}

counted!(NamespaceSupervisor: StartSession, StopSession, InjectFault, CrashSupervisor, Observe);

impl Handler<Observe> for NamespaceSupervisor {
    type Result = ResponseFuture<ActorNode>;

    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> Self::Result {
        self.shared.vitals.handled();
        observe_namespace(self.shared.clone(), 0, ActorStatus::Running)
    }
}

/// The namespace's node with every child's; a child that cannot answer is
/// described from its saved state.
pub(crate) fn observe_namespace(
    shared: Arc<NamespaceShared>,
    restarts: u64,
    status: ActorStatus,
) -> ResponseFuture<ActorNode> {
    let children: Vec<_> = shared
        .children
        .lock()
        .values()
        .map(|s| {
            (
                s.addr.clone(),
                s.entry.clone(),
                s.addr.vitals().clone(),
                s.created,
                s.restarts,
            )
        })
        .collect();
    Box::pin(async move {
        // Asked all at once, so stuck children cost one timeout, not one each.
        let answers = children.into_iter().map(
            |(addr, entry, vitals, created, child_restarts)| async move {
                addr.observe_or(|| {
                    observe_session(
                        &entry,
                        &vitals,
                        created,
                        child_restarts as u64,
                        ActorStatus::Failed,
                    )
                })
                .await
            },
        );
        let mut nodes = futures::future::join_all(answers).await;
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let last_progress = shared
            .clock
            .wall_at(shared.vitals.last_progress_ms.load(Ordering::Relaxed));
        ActorNode {
            kind: ActorKind::NamespaceSupervisor,
            id: format!("namespace/{}", shared.name),
            parent: Some("root".to_string()),
            status,
            created: shared.created,
            last_progress,
            messages_handled: shared.vitals.handled.load(Ordering::Relaxed),
            mailbox_depth: shared.vitals.queued.load(Ordering::Relaxed),
            restarts,
            state: serde_json::json!({
                "namespace": shared.name,
                "sessions": nodes.len(),
                "child_restarts": shared.child_restarts.load(Ordering::Relaxed),
            }),
            children: nodes,
        }
    })
}

impl NamespaceShared {
    /// Stops every child; used at shutdown.
    pub fn stop_all(&self) {
        for (_, slot) in self.children.lock().drain() {
            slot.stop();
        }
    }
}
