//! SessionActor: one per session. Owns the session's expiry timer and, in
//! later issues, its subscriptions and transactions; the session's state
//! lives in its [`SessionEntry`] so a restarted actor continues where the
//! old one stopped.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use actix::{
    fut::wrap_future, Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message,
};

use super::{ActorKind, ActorNode, ActorStatus, KillSwitch, Life, Observe};
use crate::session::{EndReason, SessionEntry, SessionRegistry};

/// Liveness numbers an actor shares with its supervisor, so a check needs no
/// message round trip (a stuck actor could not answer one).
#[derive(Default)]
pub struct Vitals {
    pub pulse: AtomicU64,
    pub last_progress_ms: AtomicU64,
    pub handled: AtomicU64,
    /// Messages sent to the actor and not yet taken (see [`super::mailbox`]).
    pub queued: AtomicU64,
}

impl Vitals {
    pub fn beat(&self, now_ms: u64) {
        self.pulse.fetch_add(1, Ordering::Relaxed);
        self.last_progress_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn handled(&self) {
        self.handled.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct SessionActor {
    entry: Arc<SessionEntry>,
    registry: Arc<SessionRegistry>,
    vitals: Arc<Vitals>,
    kill: Arc<KillSwitch>,
    created: SystemTime,
    restarts: u64,
}

impl SessionActor {
    pub fn new(
        entry: Arc<SessionEntry>,
        registry: Arc<SessionRegistry>,
        vitals: Arc<Vitals>,
        kill: Arc<KillSwitch>,
        restarts: u64,
    ) -> Self {
        SessionActor {
            entry,
            registry,
            vitals,
            kill,
            created: SystemTime::now(),
            restarts,
        }
    }

    fn beat(&self) {
        self.vitals.beat(self.registry.clock().now_ms());
    }

    /// Sleeps until the session's current deadline, then expires it unless
    /// activity moved the deadline (the hot path only bumps an atomic).
    fn schedule_expiry(&mut self, ctx: &mut Context<Self>) {
        let delay = self
            .entry
            .expires_ms()
            .saturating_sub(self.registry.clock().now_ms());
        ctx.run_later(Duration::from_millis(delay), |act, ctx| {
            act.beat();
            if act.entry.state().is_ended() {
                ctx.stop();
            } else if act.entry.is_past_expiry(act.registry.clock().now_ms()) {
                act.registry.end(&act.entry, EndReason::Expired);
                ctx.stop();
            } else {
                act.schedule_expiry(ctx);
            }
        });
    }
}

impl Actor for SessionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.beat();
        self.schedule_expiry(ctx);
    }
}

/// The supervisor's liveness probe, sent on every check: an actor that
/// handles it shows progress. (A probe per check, rather than a timer in
/// every actor, keeps idle sessions from costing CPU: 100,000 sessions with
/// their own pulse timers kept half a core busy doing nothing.)
#[derive(Message)]
#[rtype(result = "()")]
pub struct Pulse;

impl Handler<Pulse> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: Pulse, _: &mut Context<Self>) {
        self.beat();
    }
}

/// Stop the actor (its session has ended).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for SessionActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        self.vitals.handled();
        ctx.stop();
    }
}

/// Deliberate faults, for supervision tests and operators' fire drills.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub enum Fault {
    /// Panic inside the handler: the mailbox closes for good.
    Panic,
    /// Stop processing anything (as if stuck on a hung call) until the
    /// supervisor fires the kill switch.
    Stall,
}

impl Handler<Fault> for SessionActor {
    type Result = ();

    fn handle(&mut self, fault: Fault, ctx: &mut Context<Self>) {
        self.vitals.handled();
        tracing::warn!(session_id = %self.entry.id, ?fault, "injected fault");
        match fault {
            Fault::Panic => panic!("injected fault in session actor {}", self.entry.id),
            Fault::Stall => {
                let kill = self.kill.clone();
                ctx.wait(
                    wrap_future(kill.fired())
                        .map(|_, _: &mut Self, ctx: &mut Context<Self>| ctx.stop()),
                );
            }
        }
    }
}

super::mailbox::counted!(SessionActor: Pulse, Stop, Fault, Observe);

impl Handler<Observe> for SessionActor {
    type Result = ActorNode;

    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> ActorNode {
        self.vitals.handled();
        observe_session(
            &self.entry,
            &self.vitals,
            self.created,
            self.restarts,
            ActorStatus::Running,
        )
    }
}

/// A session's node; also used by the supervisor for a child that cannot
/// answer.
pub fn observe_session(
    entry: &SessionEntry,
    vitals: &Vitals,
    created: SystemTime,
    restarts: u64,
    status: ActorStatus,
) -> ActorNode {
    let clock = &entry.clock;
    ActorNode::leaf(
        ActorKind::Session,
        entry.id.clone(),
        format!("namespace/{}", entry.namespace()),
        status,
        Life {
            created,
            vitals,
            clock,
            restarts,
        },
        serde_json::json!({
            "namespace": entry.namespace(),
            "identity": entry.principal.identity,
            "config": entry.config.name,
            "backend": entry.config.backend_name,
            "state": entry.state(),
            "expires_at": humantime::format_rfc3339_millis(clock.wall_at(entry.expires_ms())).to_string(),
            "last_activity": humantime::format_rfc3339_millis(clock.wall_at(entry.last_activity_ms())).to_string(),
            "requests": entry.requests.load(Ordering::Relaxed),
            "active_streams": entry.active_streams.load(Ordering::Relaxed),
            "pending_operations": entry.pending_operations(),
        }),
    )
}
