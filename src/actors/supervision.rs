//! The one supervision primitive, for every kind of child: sessions,
//! Queue and PubSub subscriptions, transactions, backend pools, relays and
//! the namespace supervisors themselves.
//!
//! A child's state lives outside its actor (the [`Child`] value), so a
//! restart starts a fresh actor on the same state and swaps it into the
//! same [`Supervised`] handle: whoever holds the handle keeps reaching the
//! child. On every check the supervisor
//!
//! - forgets a child that has finished (and stops its actor),
//! - restarts one whose mailbox closed (its actor panicked): a *panic*,
//! - restarts one that took none of its last three probes although the
//!   supervisor itself ran on time (its actor is frozen): a *stall* — the
//!   frozen actor's kill switch is fired so it lets go of what it holds,
//! - probes the others with a [`Pulse`], which a running actor answers by
//!   beating,
//!
//! and counts panics, stalls and restarts in the child's observable state.
//! After `max_restarts` restarts without a recovery in between (a child
//! that ran well for [`RECOVERED_AFTER_CHECKS`] checks starts afresh) it
//! gives up: the child is told why ([`Child::give_up`]) and stays listed,
//! unchecked, with the reason in its node.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use actix::{dev::ToEnvelope, Actor, ArbiterHandle, Context, Handler, Message};
use parking_lot::Mutex;
use serde::Serialize;

use super::{mailbox::Counted, ActorKind, ActorNode, ActorStatus, KillSwitch, Mailbox, Observe};
use crate::session::Clock;

/// Consecutive checks without a pulse before a child counts as frozen. Each
/// check sends every child a [`Pulse`] that it answers by beating, so three
/// silent checks mean it has taken none of three probes over several
/// intervals, not a scheduling hiccup.
pub const SILENT_CHECKS_BEFORE_RESTART: u32 = 3;

/// On-time checks with progress after which a child counts as recovered:
/// its earlier restarts no longer count towards the limit, so a
/// long-lived child that fails now and then is not given up on.
pub const RECOVERED_AFTER_CHECKS: u32 = 10;

/// Liveness numbers an actor shares with its supervisor, so a check needs no
/// message round trip (a frozen actor could not answer one).
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

/// The supervisor's liveness probe, sent on every check: an actor that
/// handles it shows progress. (A probe per check, rather than a timer in
/// every actor, keeps idle actors from costing CPU: 100,000 session actors
/// with their own pulse timers kept half a core busy doing nothing. Idle
/// sessions now have no actor at all.)
#[derive(Message)]
#[rtype(result = "()")]
pub struct Pulse;

/// Stop the actor: its child finished, or the supervisor replaces it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// What a kind of child gives the supervision primitive.
pub trait Child: Send + Sync + 'static {
    type Actor: Actor<Context = Context<Self::Actor>>
        + Send
        + Handler<Counted<Pulse>>
        + Handler<Counted<Stop>>
        + Handler<Counted<Observe>>;
    /// What every actor of this kind is started with besides its child
    /// (shared by all children of a supervisor, so a child stays small).
    type Env: Send + Sync + 'static;
    /// How a supervisor files it: by id, borrowed as a `str`.
    type Key: std::hash::Hash + Eq + std::borrow::Borrow<str> + Clone + Send + Sync + 'static;

    /// Its kind, for the tree and the restart counters.
    const KIND: ActorKind;

    fn key(self: &Arc<Self>) -> Self::Key;

    /// The child's id in the tree and in logs.
    fn id(&self) -> &str;

    /// A fresh actor for the child's saved state.
    fn actor(self: &Arc<Self>, env: &Arc<Self::Env>, life: ActorLife) -> Self::Actor;

    /// The clock the child's progress is timed by.
    fn clock(&self) -> Clock;

    /// Finished for good: the supervisor stops watching it.
    fn is_finished(&self) -> bool;

    /// Whether the supervisor stops the actor of a finished child. A child
    /// that finishes on its own (a subscription releasing its consumer)
    /// stops by itself and must not be cut short.
    const STOP_WHEN_FINISHED: bool = false;

    /// Its node, described from saved state (its actor cannot answer).
    fn node(&self, status: ActorStatus, vitals: &Vitals) -> ActorNode;

    /// Too many restarts: end the child, saying why.
    fn give_up(&self, env: &Arc<Self::Env>, why: &str);

    /// Its actor was just restarted (for the `restarts`th time).
    fn restarted(&self, _env: &Arc<Self::Env>, _restarts: u32) {}
}

/// What an actor is started with by its supervisor.
pub struct ActorLife {
    /// The child's liveness numbers, the same for every incarnation.
    pub vitals: Arc<Vitals>,
    /// Fired when the supervisor ends the actor; a stuck actor must stop.
    pub kill: Arc<KillSwitch>,
    /// Started again after a failure.
    pub restarted: bool,
    /// The clock its beats are timed by.
    pub clock: Clock,
}

/// Restarts by kind of actor since the gateway started, counted as they
/// happen (`/metrics` reads them; a restarted actor that later ends still
/// counts).
#[derive(Default)]
pub struct Restarts([AtomicU64; ActorKind::ALL.len()]);

impl Restarts {
    fn add(&self, kind: ActorKind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// (kind, restarts) for every kind.
    pub fn by_kind(&self) -> impl Iterator<Item = (ActorKind, u64)> + '_ {
        ActorKind::ALL
            .iter()
            .map(|k| (*k, self.0[*k as usize].load(Ordering::Relaxed)))
    }
}

/// What supervising a child has taken, shown in its node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Supervision {
    /// Its actor panicked (its mailbox closed).
    pub panics: u32,
    /// Its actor stopped taking probes while the supervisor ran on time.
    pub stalls: u32,
    pub restarts: u32,
    /// Why the supervisor gave up on it, if it did.
    pub gave_up: Option<Box<str>>,
}

/// The mutable part of a supervised child.
struct Slot<A: Actor> {
    /// Shared by every incarnation of the child's actor.
    vitals: Arc<Vitals>,
    mailbox: Mailbox<A>,
    kill: Arc<KillSwitch>,
    /// The pulse count the last judged check saw.
    last_pulse: u64,
    silent_checks: u32,
    /// Restarts since the child last counted as recovered.
    recent_restarts: u32,
    /// Judged checks with progress in a row.
    healthy_checks: u32,
    supervision: Supervision,
}

/// A supervised child: its state and the actor currently serving it. The
/// handle stays the same across restarts.
pub struct Supervised<C: Child> {
    pub child: Arc<C>,
    slot: Mutex<Slot<C::Actor>>,
}

/// What one check did to a child.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Running,
    Restarted(&'static str),
    GaveUp,
    /// It finished; the supervisor forgets it.
    Finished,
}

impl<C: Child> Supervised<C>
where
    <C::Actor as Actor>::Context: ToEnvelope<C::Actor, Counted<Pulse>>
        + ToEnvelope<C::Actor, Counted<Stop>>
        + ToEnvelope<C::Actor, Counted<Observe>>,
{
    /// Starts the child's first actor on `arbiter`.
    pub fn start(child: Arc<C>, env: &Arc<C::Env>, arbiter: &ArbiterHandle) -> Self {
        let vitals = Arc::new(Vitals::default());
        let (mailbox, kill) = Self::spawn(&child, env, &vitals, arbiter, false);
        Supervised {
            child,
            slot: Mutex::new(Slot {
                vitals,
                mailbox,
                kill,
                last_pulse: 0,
                silent_checks: 0,
                recent_restarts: 0,
                healthy_checks: 0,
                supervision: Supervision::default(),
            }),
        }
    }

    fn spawn(
        child: &Arc<C>,
        env: &Arc<C::Env>,
        vitals: &Arc<Vitals>,
        arbiter: &ArbiterHandle,
        restarted: bool,
    ) -> (Mailbox<C::Actor>, Arc<KillSwitch>) {
        let kill = Arc::new(KillSwitch::default());
        let actor = child.actor(
            env,
            ActorLife {
                vitals: vitals.clone(),
                kill: kill.clone(),
                restarted,
                clock: child.clock(),
            },
        );
        let addr = C::Actor::start_in_arbiter(arbiter, move |_| actor);
        (Mailbox::new(addr, vitals.clone()), kill)
    }

    /// The actor serving the child now.
    pub fn mailbox(&self) -> Mailbox<C::Actor> {
        self.slot.lock().mailbox.clone()
    }

    pub fn supervision(&self) -> Supervision {
        self.slot.lock().supervision.clone()
    }

    pub fn vitals(&self) -> Arc<Vitals> {
        self.slot.lock().vitals.clone()
    }

    /// Stops the actor: a Stop message for a running one, the kill switch
    /// for one stuck in a wait (it takes no messages).
    pub fn stop(&self) {
        let slot = self.slot.lock();
        slot.kill.fire();
        slot.mailbox.do_send(Stop);
    }

    /// One check. `judge`: the supervisor ran on time, so silence counts.
    pub fn check(
        &self,
        env: &Arc<C::Env>,
        restarts_by_kind: &Restarts,
        judge: bool,
        max_restarts: u32,
        arbiter: impl FnOnce() -> ArbiterHandle,
    ) -> Verdict {
        if self.child.is_finished() {
            if C::STOP_WHEN_FINISHED {
                self.stop();
            }
            return Verdict::Finished;
        }
        let mut slot = self.slot.lock();
        if slot.supervision.gave_up.is_some() {
            return Verdict::GaveUp;
        }
        let failure = if !slot.mailbox.connected() {
            slot.supervision.panics += 1;
            Some("its actor panicked")
        } else {
            let pulse = slot.vitals.pulse.load(Ordering::Relaxed);
            if !judge || pulse != slot.last_pulse {
                if judge {
                    slot.healthy_checks += 1;
                    if slot.healthy_checks >= RECOVERED_AFTER_CHECKS {
                        slot.recent_restarts = 0;
                    }
                }
                slot.last_pulse = pulse;
                slot.silent_checks = 0;
                None
            } else {
                slot.silent_checks += 1;
                (slot.silent_checks >= SILENT_CHECKS_BEFORE_RESTART).then(|| {
                    slot.supervision.stalls += 1;
                    "its actor stopped making progress"
                })
            }
        };
        let Some(why) = failure else {
            // The probe the next check looks for.
            slot.mailbox.do_send(Pulse);
            return Verdict::Running;
        };
        slot.kill.fire();
        slot.mailbox.do_send(Stop);
        slot.silent_checks = 0;
        slot.healthy_checks = 0;
        if slot.recent_restarts >= max_restarts {
            let reason = format!(
                "{why} and it was already restarted {} times without recovering (the limit)",
                slot.recent_restarts
            );
            tracing::error!(
                child = self.child.id(),
                reason,
                "giving up on a failing actor"
            );
            slot.supervision.gave_up = Some(reason.clone().into());
            drop(slot);
            self.child.give_up(env, &reason);
            return Verdict::GaveUp;
        }
        slot.supervision.restarts += 1;
        slot.recent_restarts += 1;
        restarts_by_kind.add(C::KIND);
        tracing::warn!(
            child = self.child.id(),
            why,
            restarts = slot.supervision.restarts,
            "restarting actor"
        );
        let (mailbox, kill) = Self::spawn(&self.child, env, &slot.vitals, &arbiter(), true);
        slot.mailbox = mailbox;
        slot.kill = kill;
        slot.last_pulse = slot.vitals.pulse.load(Ordering::Relaxed);
        let restarts = slot.supervision.restarts;
        drop(slot);
        self.child.restarted(env, restarts);
        Verdict::Restarted(why)
    }

    /// The child's node: asked of its actor, or described from saved state
    /// as failed when the actor cannot answer in time.
    pub async fn observe(&self) -> ActorNode {
        let (mailbox, supervision, vitals) = {
            let slot = self.slot.lock();
            (
                slot.mailbox.clone(),
                slot.supervision.clone(),
                slot.vitals.clone(),
            )
        };
        let mut node = mailbox
            .observe_or(|| self.child.node(ActorStatus::Failed, &vitals))
            .await;
        node.restarts = u64::from(supervision.restarts);
        node.supervision = supervision;
        node
    }
}

/// A supervisor's children of one kind, by id, and what their actors are
/// started with.
pub struct Children<C: Child> {
    pub env: Arc<C::Env>,
    by_id: Mutex<HashMap<C::Key, Arc<Supervised<C>>>>,
    /// The gateway's restart counters.
    restarts: Arc<Restarts>,
}

impl<C: Child> Children<C>
where
    <C::Actor as Actor>::Context: ToEnvelope<C::Actor, Counted<Pulse>>
        + ToEnvelope<C::Actor, Counted<Stop>>
        + ToEnvelope<C::Actor, Counted<Observe>>,
{
    pub fn new(env: Arc<C::Env>, restarts: Arc<Restarts>) -> Self {
        Children {
            env,
            by_id: Mutex::new(HashMap::new()),
            restarts,
        }
    }

    /// Starts `child` and files it under its key.
    pub fn start(&self, child: Arc<C>, arbiter: &ArbiterHandle) -> Arc<Supervised<C>> {
        let key = child.key();
        let supervised = Arc::new(Supervised::start(child, &self.env, arbiter));
        self.by_id.lock().insert(key, supervised.clone());
        supervised
    }

    pub fn get(&self, id: &str) -> Option<Arc<Supervised<C>>> {
        self.by_id.lock().get(id).cloned()
    }

    /// Stops and forgets one child.
    pub fn stop(&self, id: &str) -> Option<Arc<Supervised<C>>> {
        let removed = self.by_id.lock().remove(id);
        if let Some(child) = &removed {
            child.stop();
        }
        removed
    }

    /// Every child, in no particular order.
    pub fn all(&self) -> Vec<Arc<Supervised<C>>> {
        self.by_id.lock().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.by_id.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.lock().is_empty()
    }

    /// Checks every child (see [`Supervised::check`]); forgets the finished
    /// (a given-up child stays listed with its reason). Returns how many
    /// were restarted.
    pub fn check_all(
        &self,
        judge: bool,
        max_restarts: u32,
        arbiter: &impl Fn() -> ArbiterHandle,
    ) -> usize {
        let mut restarted = 0;
        // Checked outside the map's lock: a check may start an actor, and
        // giving up may end a session, which takes it out of this map.
        for child in self.all() {
            match child.check(&self.env, &self.restarts, judge, max_restarts, arbiter) {
                Verdict::Running | Verdict::GaveUp => {}
                Verdict::Restarted(_) => restarted += 1,
                Verdict::Finished => {
                    let mut by_id = self.by_id.lock();
                    let id = child.child.id();
                    if by_id.get(id).is_some_and(|c| Arc::ptr_eq(c, &child)) {
                        by_id.remove(id);
                    }
                }
            }
        }
        restarted
    }

    /// Stops and forgets every child.
    pub fn stop_all(&self) {
        let children: Vec<_> = self.by_id.lock().drain().map(|(_, c)| c).collect();
        for child in children {
            child.stop();
        }
    }

    /// Every child's node, asked all at once (so stuck children cost one
    /// timeout, not one each), sorted by id.
    pub async fn observe(&self) -> Vec<ActorNode> {
        let children = self.all();
        let mut nodes = futures::future::join_all(children.iter().map(|c| c.observe())).await;
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes
    }
}

/// The handlers every supervised actor needs: a [`Pulse`] beats, a
/// [`Stop`] stops, and (for tests) a [`Fault`] drill. The actor keeps its
/// [`ActorLife`] in a field named `life`. One macro, since a blanket impl
/// of actix's `Handler` is ruled out by the orphan rule.
macro_rules! supervised_actor {
    ($actor:ty) => {
        impl actix::Handler<$crate::actors::supervision::Pulse> for $actor {
            type Result = ();

            fn handle(&mut self, _: $crate::actors::supervision::Pulse, _: &mut actix::Context<Self>) {
                self.life.vitals.beat(self.life.clock.now_ms());
            }
        }

        impl actix::Handler<$crate::actors::supervision::Stop> for $actor {
            type Result = ();

            fn handle(&mut self, _: $crate::actors::supervision::Stop, ctx: &mut actix::Context<Self>) {
                self.life.vitals.handled();
                actix::ActorContext::stop(ctx);
            }
        }

        $crate::actors::mailbox::counted!(
            $actor: $crate::actors::supervision::Pulse,
            $crate::actors::supervision::Stop
        );

        #[cfg(any(test, feature = "drills"))]
        impl actix::Handler<$crate::actors::supervision::Fault> for $actor {
            type Result = ();

            fn handle(
                &mut self,
                fault: $crate::actors::supervision::Fault,
                ctx: &mut actix::Context<Self>,
            ) {
                use actix::{ActorFutureExt as _, AsyncContext as _};
                self.life.vitals.handled();
                tracing::warn!(actor = stringify!($actor), ?fault, "injected fault");
                match fault {
                    $crate::actors::supervision::Fault::Panic => {
                        panic!(concat!("injected fault in ", stringify!($actor)))
                    }
                    $crate::actors::supervision::Fault::Stall => {
                        let kill = self.life.kill.clone();
                        ctx.wait(actix::fut::wrap_future(kill.fired()).map(
                            |_, _: &mut Self, ctx: &mut actix::Context<Self>| {
                                actix::ActorContext::stop(ctx)
                            },
                        ));
                    }
                }
            }
        }

        #[cfg(any(test, feature = "drills"))]
        $crate::actors::mailbox::counted!($actor: $crate::actors::supervision::Fault);
    };
}
pub(crate) use supervised_actor;

/// Deliberate faults, for supervision tests: compiled only for tests.
#[cfg(any(test, feature = "drills"))]
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub enum Fault {
    /// Panic inside the handler: the mailbox closes for good.
    Panic,
    /// Stop processing anything (as if stuck on a hung call) until the
    /// supervisor fires the kill switch.
    Stall,
}

/// When a supervisor's check judges progress: only when it ran on time.
/// Ticks bunched after a clock jump or a stall of its arbiter say nothing
/// about the children, so they only reset the baseline.
pub struct CheckTiming {
    interval_ms: u64,
    last_check_ms: Option<u64>,
}

impl CheckTiming {
    pub fn new(interval: std::time::Duration) -> Self {
        CheckTiming {
            interval_ms: crate::session::clock::ms(interval).max(1),
            last_check_ms: None,
        }
    }

    /// `None`: skip this tick (it came too soon after the last one);
    /// otherwise whether silence counts.
    pub fn judge(&mut self, now_ms: u64) -> Option<bool> {
        let judge = match self.last_check_ms {
            Some(last) if now_ms.saturating_sub(last) < self.interval_ms / 2 => return None,
            Some(last) => now_ms.saturating_sub(last) <= 3 * self.interval_ms,
            None => false,
        };
        self.last_check_ms = Some(now_ms);
        Some(judge)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use actix::{Arbiter, Context};

    use super::*;
    use crate::actors::{mailbox::counted, ActorKind, Life};

    /// A child with nothing to do but be supervised.
    struct Toy {
        clock: Clock,
        gave_up: Mutex<Option<String>>,
    }

    struct ToyActor {
        life: ActorLife,
    }

    impl Actor for ToyActor {
        type Context = Context<Self>;
    }

    supervised_actor!(ToyActor);
    counted!(ToyActor: Observe);

    impl Handler<Observe> for ToyActor {
        type Result = ActorNode;

        fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> ActorNode {
            toy_node(ActorStatus::Running, &self.life.vitals, &self.life.clock)
        }
    }

    fn toy_node(status: ActorStatus, vitals: &Vitals, clock: &Clock) -> ActorNode {
        ActorNode::leaf(
            ActorKind::Session,
            "toy".into(),
            "root".into(),
            status,
            Life {
                created: SystemTime::UNIX_EPOCH,
                vitals,
                clock,
                restarts: 0,
            },
            &serde_json::json!({}),
        )
    }

    impl Child for Toy {
        type Actor = ToyActor;
        type Env = ();
        type Key = String;
        const KIND: ActorKind = ActorKind::Session;

        fn key(self: &Arc<Self>) -> String {
            "toy".into()
        }

        fn id(&self) -> &str {
            "toy"
        }

        fn actor(self: &Arc<Self>, _: &Arc<()>, life: ActorLife) -> ToyActor {
            ToyActor { life }
        }

        fn clock(&self) -> Clock {
            self.clock
        }

        fn is_finished(&self) -> bool {
            false
        }

        fn node(&self, status: ActorStatus, vitals: &Vitals) -> ActorNode {
            toy_node(status, vitals, &self.clock)
        }

        fn give_up(&self, _: &Arc<()>, why: &str) {
            *self.gave_up.lock() = Some(why.to_string());
        }
    }

    fn toy() -> (Supervised<Toy>, Arc<()>) {
        let env = Arc::new(());
        let child = Arc::new(Toy {
            clock: Clock::new(),
            gave_up: Mutex::new(None),
        });
        (Supervised::start(child, &env, &Arbiter::current()), env)
    }

    /// Lets the actors on this thread (the test's arbiter) take what was
    /// sent to them.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    async fn panicked(toy: &Supervised<Toy>) {
        toy.mailbox().do_send(Fault::Panic);
        tokio::time::timeout(Duration::from_secs(5), async {
            while toy.mailbox().connected() {
                settle().await;
            }
        })
        .await
        .expect("the mailbox closes after the panic");
    }

    #[actix_rt::test]
    async fn a_running_child_answers_probes_and_is_left_alone() {
        let (toy, env) = toy();
        for _ in 0..5 {
            assert_eq!(
                toy.check(&env, &Restarts::default(), true, 3, Arbiter::current),
                Verdict::Running
            );
            settle().await;
        }
        assert_eq!(toy.supervision(), Supervision::default());
        assert!(toy.vitals().pulse.load(Ordering::Relaxed) >= 4);
    }

    #[actix_rt::test]
    async fn a_panicked_child_is_restarted_onto_the_same_handle() {
        let (toy, env) = toy();
        let before = toy.vitals();
        panicked(&toy).await;
        assert_eq!(
            toy.check(&env, &Restarts::default(), true, 3, Arbiter::current),
            Verdict::Restarted("its actor panicked")
        );
        assert!(toy.mailbox().connected());
        assert!(Arc::ptr_eq(&before, &toy.vitals()), "the same vitals");
        let s = toy.supervision();
        assert_eq!((s.panics, s.stalls, s.restarts), (1, 0, 1));
        let node = toy.observe().await;
        assert_eq!(node.status, ActorStatus::Running);
        assert_eq!(node.restarts, 1);
        assert_eq!(node.supervision.panics, 1);
    }

    #[actix_rt::test]
    async fn a_frozen_child_is_restarted_after_three_silent_checks() {
        let (toy, env) = toy();
        toy.mailbox().do_send(Fault::Stall);
        settle().await;
        let old = toy.mailbox();
        for _ in 0..SILENT_CHECKS_BEFORE_RESTART - 1 {
            assert_eq!(
                toy.check(&env, &Restarts::default(), true, 3, Arbiter::current),
                Verdict::Running
            );
            settle().await;
        }
        assert_eq!(
            toy.check(&env, &Restarts::default(), true, 3, Arbiter::current),
            Verdict::Restarted("its actor stopped making progress")
        );
        settle().await;
        assert!(
            !old.connected(),
            "the frozen actor was ended by its kill switch"
        );
        let s = toy.supervision();
        assert_eq!((s.panics, s.stalls, s.restarts), (0, 1, 1));
        // The new actor answers its probes.
        assert_eq!(
            toy.check(&env, &Restarts::default(), true, 3, Arbiter::current),
            Verdict::Running
        );
    }

    #[actix_rt::test]
    async fn silence_does_not_count_when_the_supervisor_ran_late() {
        let (toy, env) = toy();
        toy.mailbox().do_send(Fault::Stall);
        settle().await;
        for _ in 0..5 {
            assert_eq!(
                toy.check(&env, &Restarts::default(), false, 3, Arbiter::current),
                Verdict::Running
            );
        }
        assert_eq!(toy.supervision().stalls, 0);
        toy.stop();
    }

    #[actix_rt::test]
    async fn after_the_limit_the_supervisor_gives_up_and_says_why() {
        let (toy, env) = toy();
        panicked(&toy).await;
        assert!(matches!(
            toy.check(&env, &Restarts::default(), true, 1, Arbiter::current),
            Verdict::Restarted(_)
        ));
        panicked(&toy).await;
        assert_eq!(
            toy.check(&env, &Restarts::default(), true, 1, Arbiter::current),
            Verdict::GaveUp
        );
        let why = toy
            .child
            .gave_up
            .lock()
            .clone()
            .expect("the child was told");
        assert!(why.contains("panicked") && why.contains("1 times"), "{why}");
        assert_eq!(
            toy.check(&env, &Restarts::default(), true, 1, Arbiter::current),
            Verdict::GaveUp,
            "given up for good"
        );
        assert_eq!(toy.supervision().gave_up.as_deref(), Some(why.as_str()));
    }

    #[actix_rt::test]
    async fn a_child_that_recovered_starts_its_restart_count_afresh() {
        let (toy, env) = toy();
        let restarts = Restarts::default();
        panicked(&toy).await;
        assert!(matches!(
            toy.check(&env, &restarts, true, 1, Arbiter::current),
            Verdict::Restarted(_)
        ));
        for _ in 0..=RECOVERED_AFTER_CHECKS {
            settle().await;
            assert_eq!(
                toy.check(&env, &restarts, true, 1, Arbiter::current),
                Verdict::Running
            );
        }
        settle().await;
        panicked(&toy).await;
        assert!(
            matches!(
                toy.check(&env, &restarts, true, 1, Arbiter::current),
                Verdict::Restarted(_)
            ),
            "a recovered child is restarted again, not given up on"
        );
        assert_eq!(toy.supervision().restarts, 2);
    }

    #[test]
    fn checks_bunched_after_a_stall_only_reset_the_baseline() {
        let mut timing = CheckTiming::new(Duration::from_millis(100));
        assert_eq!(
            timing.judge(1_000),
            Some(false),
            "the first check sets the baseline"
        );
        assert_eq!(timing.judge(1_100), Some(true));
        assert_eq!(timing.judge(1_120), None, "too soon after the last one");
        assert_eq!(
            timing.judge(2_000),
            Some(false),
            "the supervisor itself ran late"
        );
        assert_eq!(timing.judge(2_100), Some(true));
    }
}
