//! SubscriptionActor: one per Subscribe stream, a child of its session. It
//! pulls from the backend only while the stream's bounded buffer has room
//! (demand-driven backpressure: a slow client slows consumption and memory
//! stays bounded), ends the stream on `max_messages`, `timeout`, the client
//! going away or the session ending, and then releases its backend consumer
//! (what it held unacknowledged goes back to the group).
//!
//! Its state lives in [`SubscriptionShared`], outside the actor: the root
//! supervisor restarts a crashed actor from it, rejoining the group at its
//! committed position, on the same client stream.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use actix::{
    Actor, ActorContext, ActorFutureExt, ArbiterHandle, AsyncContext, Context, Handler, Message,
    WrapFuture,
};
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;

use super::{
    mailbox::counted, session::Vitals, ActorKind, ActorNode, ActorStatus, Life, Mailbox, Observe,
};
use crate::{
    backends::queue::{ConsumerSpec, QueueConsumer, QueueHandle, QueueMessage, Start},
    error::Error,
    proto::queue::v1 as pb,
    session::{Clock, SessionEntry},
};

/// Most messages fetched from the backend at once.
const FETCH_BATCH: usize = 64;
/// Longest a pump step waits (for room, or for messages) before it checks
/// the end conditions again.
const STEP_WAIT: Duration = Duration::from_millis(200);

pub type MessageSender = mpsc::Sender<Result<pb::Message, Error>>;

/// Everything a subscription is, apart from its actor.
pub struct SubscriptionShared {
    pub id: String,
    pub entry: Arc<SessionEntry>,
    pub queue: QueueHandle,
    pub spec: ConsumerSpec,
    /// Slots in the stream's buffer.
    pub capacity: usize,
    pub max_messages: Option<u64>,
    /// Session-clock ms at which the stream ends.
    pub deadline_ms: Option<u64>,
    pub delivered: AtomicU64,
    /// The most messages ever waiting in the buffer at once.
    pub buffered_high_water: AtomicUsize,
    pub restarts: AtomicU64,
    ended: AtomicBool,
    tx: Mutex<Option<MessageSender>>,
    created: SystemTime,
    clock: Clock,
    vitals: Arc<Vitals>,
}

impl SubscriptionShared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        entry: Arc<SessionEntry>,
        queue: QueueHandle,
        spec: ConsumerSpec,
        tx: MessageSender,
        capacity: usize,
        max_messages: Option<u64>,
        timeout: Option<Duration>,
        clock: Clock,
    ) -> Self {
        SubscriptionShared {
            id,
            deadline_ms: timeout.map(|t| clock.now_ms().saturating_add(t.as_millis() as u64)),
            entry,
            queue,
            spec,
            capacity,
            max_messages,
            delivered: AtomicU64::new(0),
            buffered_high_water: AtomicUsize::new(0),
            restarts: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            tx: Mutex::new(Some(tx)),
            created: SystemTime::now(),
            clock,
            vitals: Arc::default(),
        }
    }

    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Messages in the stream's buffer now.
    pub fn buffered(&self) -> usize {
        self.tx
            .lock()
            .as_ref()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }

    fn sender(&self) -> Option<MessageSender> {
        self.tx.lock().clone()
    }

    /// Ends the subscription for good: the stream closes once drained.
    fn end(&self, error: Option<Error>) {
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(tx) = self.tx.lock().take() {
            if let Some(error) = error {
                let _ = tx.try_send(Err(error));
            }
        }
    }

    /// Why the subscription should end now, if it should. When the session
    /// ended, the gate's stream tells the client so.
    fn why_end(&self) -> Option<(&'static str, Option<Error>)> {
        if self.entry.state().is_ended() {
            return Some(("session ended", None));
        }
        if self
            .max_messages
            .is_some_and(|max| self.delivered.load(Ordering::Acquire) >= max)
        {
            return Some(("max_messages reached", None));
        }
        if self.deadline_ms.is_some_and(|d| self.clock.now_ms() >= d) {
            return Some(("timeout reached", None));
        }
        if self.sender().is_none_or(|tx| tx.is_closed()) {
            return Some(("client went away", None));
        }
        None
    }
}

pub fn to_proto(m: QueueMessage) -> pb::Message {
    pb::Message {
        message_id: m.id(),
        topic: m.topic,
        partition: m.partition,
        offset: m.offset,
        payload: m.payload,
        headers: m.headers,
        timestamp: Some(crate::backends::timestamp_ms(m.timestamp_ms)),
        producer_id: None,
        attempt: Some(m.attempt),
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Pump;

/// Makes the actor panic (supervision drills).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash;

/// Lets an actor take [`Crash`]: it panics, closing its mailbox, as a real
/// fault would.
macro_rules! crash_drill {
    ($actor:ty, $what:literal) => {
        impl actix::Handler<$crate::actors::subscription::Crash> for $actor {
            type Result = ();

            fn handle(&mut self, _: $crate::actors::subscription::Crash, _: &mut Self::Context) {
                panic!(concat!("deliberate ", $what, " crash (supervision drill)"));
            }
        }
        $crate::actors::mailbox::counted!($actor: $crate::actors::subscription::Crash);
    };
}
pub(crate) use crash_drill;

enum Step {
    Idle,
    Delivered(usize),
    Failed(Error),
}

pub struct SubscriptionActor {
    shared: Arc<SubscriptionShared>,
    consumer: Option<Box<dyn QueueConsumer>>,
    /// Restarted by the supervisor: rejoin at the committed position.
    restarted: bool,
}

impl SubscriptionActor {
    fn finish(&mut self, ctx: &mut Context<Self>, why: &str, error: Option<Error>) {
        tracing::debug!(subscription = %self.shared.id, why, "subscription ends");
        self.shared.end(error);
        let consumer = self.consumer.take();
        let shared = self.shared.clone();
        ctx.spawn(
            async move {
                if let Some(mut consumer) = consumer {
                    consumer.release().await;
                }
                if shared.spec.group.starts_with('~') {
                    let ns = shared.entry.namespace();
                    let (topic, group) = (&shared.spec.topic, &shared.spec.group);
                    shared.queue.basic.forget_group(ns, topic, group).await;
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        );
    }
}

impl Actor for SubscriptionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let shared = self.shared.clone();
        let mut spec = shared.spec.clone();
        if self.restarted {
            spec.start = Start::Committed;
        }
        ctx.spawn(
            async move {
                shared
                    .queue
                    .basic
                    .subscribe(shared.entry.namespace(), spec)
                    .await
            }
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok(consumer) => {
                    act.consumer = Some(consumer);
                    ctx.notify(Pump);
                }
                Err(e) => act.finish(ctx, "subscribe failed", Some(e)),
            }),
        );
    }
}

impl Handler<Pump> for SubscriptionActor {
    type Result = ();

    fn handle(&mut self, _: Pump, ctx: &mut Context<Self>) {
        let shared = self.shared.clone();
        shared.vitals.beat(shared.clock.now_ms());
        shared.vitals.handled();
        if let Some((why, error)) = shared.why_end() {
            return self.finish(ctx, why, error);
        }
        let (Some(mut consumer), Some(tx)) = (self.consumer.take(), shared.sender()) else {
            return;
        };
        let remaining = shared.max_messages.map_or(usize::MAX, |m| {
            m.saturating_sub(shared.delivered.load(Ordering::Acquire)) as usize
        });
        let step = async move {
            // Backpressure: fetch only once the buffer has room, and only as
            // much as fits.
            let permit = match tokio::time::timeout(STEP_WAIT, tx.reserve()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) | Err(_) => return (consumer, Step::Idle),
            };
            let room = 1 + tx.capacity();
            let want = room.min(FETCH_BATCH).min(remaining).max(1);
            match consumer.fetch(want, STEP_WAIT).await {
                Ok(batch) if batch.is_empty() => (consumer, Step::Idle),
                Ok(batch) => {
                    let n = batch.len();
                    let mut messages = batch.into_iter().map(to_proto);
                    if let Some(first) = messages.next() {
                        permit.send(Ok(first));
                    }
                    for m in messages {
                        // Room was counted above; waiting here is backpressure
                        // too, never a drop.
                        if tx.send(Ok(m)).await.is_err() {
                            break;
                        }
                    }
                    (consumer, Step::Delivered(n))
                }
                Err(e) => (consumer, Step::Failed(e)),
            }
        };
        ctx.spawn(step.into_actor(self).map(|(consumer, step), act, ctx| {
            act.consumer = Some(consumer);
            let shared = &act.shared;
            shared
                .buffered_high_water
                .fetch_max(shared.buffered(), Ordering::Relaxed);
            match step {
                Step::Idle => ctx.notify(Pump),
                Step::Delivered(n) => {
                    shared.delivered.fetch_add(n as u64, Ordering::AcqRel);
                    ctx.notify(Pump);
                }
                Step::Failed(e) => act.finish(ctx, "backend failed", Some(e)),
            }
        }));
    }
}

crash_drill!(SubscriptionActor, "subscription");
counted!(SubscriptionActor: Observe);

impl Handler<Observe> for SubscriptionActor {
    type Result = ActorNode;

    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> ActorNode {
        self.shared.vitals.handled();
        observe_subscription(&self.shared, ActorStatus::Running)
    }
}

fn observe_subscription(shared: &SubscriptionShared, status: ActorStatus) -> ActorNode {
    ActorNode::leaf(
        ActorKind::Subscription,
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
            "topic": shared.spec.topic,
            "consumer_group": shared.spec.group,
            "delivered": shared.delivered.load(Ordering::Relaxed),
            "buffered": shared.buffered(),
            "buffered_high_water": shared.buffered_high_water.load(Ordering::Relaxed),
            "buffer_capacity": shared.capacity,
            "max_messages": shared.max_messages,
            "ended": shared.is_ended(),
        }),
    )
}

/// A subscription's actor address, replaced when it is restarted.
pub struct SubscriptionHandle {
    pub shared: Arc<SubscriptionShared>,
    addr: RwLock<Mailbox<SubscriptionActor>>,
}

impl SubscriptionHandle {
    pub fn addr(&self) -> Mailbox<SubscriptionActor> {
        self.addr.read().clone()
    }

    /// `restarted`: rejoin at the committed position.
    fn spawn(
        shared: &Arc<SubscriptionShared>,
        arbiter: &ArbiterHandle,
        restarted: bool,
    ) -> Mailbox<SubscriptionActor> {
        let actor_shared = shared.clone();
        let addr = SubscriptionActor::start_in_arbiter(arbiter, move |_| SubscriptionActor {
            shared: actor_shared,
            consumer: None,
            restarted,
        });
        Mailbox::new(addr, shared.vitals.clone())
    }
}

/// Every live Queue subscription, and which (topic, group) pairs each
/// session has subscribed to (for Acknowledge); and the PubSub ones.
pub struct Subscriptions {
    by_id: DashMap<String, Arc<SubscriptionHandle>>,
    groups: DashMap<String, (Arc<SessionEntry>, Vec<TopicGroup>)>,
    pub pubsub: super::pubsub::PubSubSubscriptions,
    /// Open streaming transactions (also session children).
    pub transactions: Arc<super::transaction::Transactions>,
}

/// A (topic, consumer group) pair.
type TopicGroup = (String, String);

impl Default for Subscriptions {
    fn default() -> Self {
        Self::new()
    }
}

impl Subscriptions {
    pub fn new() -> Self {
        Subscriptions {
            by_id: DashMap::new(),
            groups: DashMap::new(),
            pubsub: Default::default(),
            transactions: Default::default(),
        }
    }

    pub fn start(&self, shared: Arc<SubscriptionShared>, arbiter: &ArbiterHandle) {
        {
            let mut seen = self
                .groups
                .entry(shared.entry.id.clone())
                .or_insert_with(|| (shared.entry.clone(), Vec::new()));
            let pair = (shared.spec.topic.clone(), shared.spec.group.clone());
            if !seen.1.contains(&pair) {
                seen.1.push(pair);
            }
        }
        let addr = SubscriptionHandle::spawn(&shared, arbiter, false);
        self.by_id.insert(
            shared.id.clone(),
            Arc::new(SubscriptionHandle {
                shared,
                addr: RwLock::new(addr),
            }),
        );
    }

    /// The groups a session has consumed `topic` with.
    pub fn groups_for(&self, session_id: &str, topic: &str) -> Vec<String> {
        self.groups
            .get(session_id)
            .map(|seen| {
                seen.1
                    .iter()
                    .filter(|(t, _)| t == topic)
                    .map(|(_, g)| g.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn get(&self, id: &str) -> Option<Arc<SubscriptionHandle>> {
        self.by_id.get(id).map(|h| h.clone())
    }

    pub fn for_session(&self, session_id: &str) -> Vec<Arc<SubscriptionHandle>> {
        self.by_id
            .iter()
            .filter(|h| h.shared.entry.id == session_id)
            .map(|h| h.clone())
            .collect()
    }

    /// Restarts crashed subscriptions (Queue ones from the committed
    /// position) and forgets ended ones; run on the root supervisor's tick.
    pub fn supervise(&self, now_ms: u64, arbiter: impl Fn() -> ArbiterHandle) {
        self.pubsub.supervise(now_ms, &arbiter);
        self.transactions.supervise(&arbiter);
        self.by_id.retain(|_, handle| {
            let shared = &handle.shared;
            if shared.is_ended() {
                return false;
            }
            if !handle.addr().connected() {
                shared.restarts.fetch_add(1, Ordering::AcqRel);
                tracing::warn!(subscription = %shared.id, "restarting subscription actor");
                *handle.addr.write() = SubscriptionHandle::spawn(shared, &arbiter(), true);
            }
            true
        });
        self.groups
            .retain(|_, (entry, _)| !entry.state().is_ended());
    }

    /// Nodes for every subscription, for grafting under their sessions.
    pub async fn observe(&self) -> Vec<ActorNode> {
        let handles: Vec<_> = self.by_id.iter().map(|h| h.clone()).collect();
        let mut nodes = self.pubsub.observe().await;
        for h in handles {
            let addr = h.addr();
            nodes.push(
                addr.observe_or(|| observe_subscription(&h.shared, ActorStatus::Failed))
                    .await,
            );
        }
        nodes
    }
}
