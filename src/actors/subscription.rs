//! SubscriptionActor: one per Subscribe stream, a child of its session. It
//! pulls from the backend only while the stream's buffer has room, in
//! messages and in bytes, and only as many messages as that room holds
//! (demand-driven backpressure: a slow client slows consumption and memory
//! stays bounded; nothing is dropped). Fetched messages wait in the actor
//! until they fit, a bounded wait at a time, so the actor keeps checking
//! its end conditions however slowly the client reads. It ends the stream
//! on `max_messages`, `timeout`, the client going away or the session
//! ending, and then releases its backend consumer (what it held
//! unacknowledged, pending messages included, goes back to the group).
//!
//! Its state lives in [`SubscriptionShared`], outside the actor: its
//! supervisor restarts a crashed or frozen actor from it, rejoining the
//! group at its committed position, on the same client stream. Its
//! session's actor starts it and tells it when the session ends.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture,
};
use dashmap::DashMap;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{
    mailbox::counted,
    session::SessionEnded,
    supervision::{ActorLife, Child, Vitals},
    ActorKind, ActorNode, ActorStatus, Life, Observe,
};
use crate::{
    backends::queue::{ConsumerSpec, QueueConsumer, QueueHandle, QueueMessage, Start},
    error::Error,
    proto::queue::v1 as pb,
    session::{Clock, Gauged, SessionEntry},
};

/// Most messages fetched from the backend at once.
const FETCH_BATCH: usize = 64;
/// Longest a pump step waits (for room, or for messages) before it checks
/// the end conditions again.
const STEP_WAIT: Duration = Duration::from_millis(200);

/// What a Subscribe stream's buffer carries: a message (or the stream's
/// ending error) and, for a message, its share of the buffer's byte budget,
/// given back when the client's stream takes it out.
pub struct Buffered {
    pub item: Result<pb::Message, Error>,
    _bytes: Option<OwnedSemaphorePermit>,
}

pub type MessageSender = mpsc::Sender<Buffered>;

/// A stream buffer's bound in bytes, as permits of a semaphore: each
/// buffered message holds its encoded size (at most the whole budget, so
/// one message larger than the budget still travels, alone).
pub struct ByteBudget {
    permits: Arc<Semaphore>,
    capacity: usize,
    high_water: AtomicUsize,
}

impl ByteBudget {
    /// `capacity` is at most `config::validate::MAX_BUFFER_BYTES`.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        ByteBudget {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            high_water: AtomicUsize::new(0),
        }
    }

    /// Bytes buffered now.
    pub fn used(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    /// The most bytes ever buffered at once.
    pub fn high_water(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
    }

    /// Bytes free now.
    fn free(&self) -> usize {
        self.permits.available_permits()
    }

    /// What `message` costs: its encoded size, at most the whole budget.
    fn cost(&self, message: &pb::Message) -> u32 {
        let cost = message.encoded_len().clamp(1, self.capacity);
        u32::try_from(cost).unwrap_or(u32::MAX)
    }

    /// Waits until `cost` bytes are free and takes them (cancel-safe: a
    /// wait given up takes nothing).
    async fn take(&self, cost: u32) -> Option<OwnedSemaphorePermit> {
        let held = self.permits.clone().acquire_many_owned(cost).await.ok();
        self.high_water.fetch_max(self.used(), Ordering::Relaxed);
        held
    }
}

/// Messages fetched but not yet in the stream's buffer: the pump hands them
/// over as room appears, a wait at a time, so the actor is never stuck
/// behind a client that stopped reading.
type Pending = VecDeque<pb::Message>;

/// Encoded size a message is assumed to have before any was seen.
const ASSUMED_MESSAGE_BYTES: usize = 1024;

/// Everything a subscription is, apart from its actor.
pub struct SubscriptionShared {
    pub id: String,
    pub entry: Arc<SessionEntry>,
    pub queue: QueueHandle,
    pub spec: ConsumerSpec,
    /// Slots in the stream's buffer.
    pub capacity: usize,
    /// Bytes the stream's buffer may hold.
    pub bytes: ByteBudget,
    pub max_messages: Option<u64>,
    /// Session-clock ms at which the stream ends.
    pub deadline_ms: Option<u64>,
    pub delivered: AtomicU64,
    /// The most messages ever waiting in the buffer at once.
    pub buffered_high_water: AtomicUsize,
    ended: AtomicBool,
    /// Counted in its namespace's live subscriptions until it ends.
    gauge: Gauged,
    tx: Mutex<Option<MessageSender>>,
    /// Why the subscription failed, for the client once it has taken what
    /// was buffered (never lost to a full buffer).
    ending: Mutex<Option<Error>>,
    /// Told once the backend has positioned the consumer (or failed to):
    /// Subscribe answers only then, so a message published after the call
    /// returns is never before a LATEST start.
    positioned: Mutex<Option<oneshot::Sender<Result<(), Error>>>>,
    created: SystemTime,
    clock: Clock,
    /// The gateway's main runtime, where the backend's connections live:
    /// the actor's backend I/O runs there (see [`on_runtime`]).
    runtime: tokio::runtime::Handle,
}

/// Runs a backend call on the main runtime and waits for it. An arbiter
/// that stops mid-call (at shutdown) then drops only the wait, never a
/// pooled connection outside a runtime; the call itself still finishes.
fn on_runtime<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> impl std::future::Future<Output = Result<T, Error>> {
    let task = runtime.spawn(work);
    async move {
        task.await
            .map_err(|_| Error::internal("a subscription's backend call was cancelled"))
    }
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
        buffer_bytes: usize,
        max_messages: Option<u64>,
        timeout: Option<Duration>,
        clock: Clock,
    ) -> Self {
        let gauge = Gauged::new(entry.namespace_sessions.clone(), |n| &n.subscriptions);
        SubscriptionShared {
            id,
            deadline_ms: timeout.map(|t| clock.now_ms().saturating_add(crate::clock::ms(t))),
            entry,
            queue,
            spec,
            capacity,
            bytes: ByteBudget::new(buffer_bytes),
            max_messages,
            delivered: AtomicU64::new(0),
            buffered_high_water: AtomicUsize::new(0),
            ended: AtomicBool::new(false),
            gauge,
            tx: Mutex::new(Some(tx)),
            ending: Mutex::new(None),
            positioned: Mutex::new(None),
            created: SystemTime::now(),
            clock,
            // Built by the Subscribe handler, on the main runtime.
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Resolves once the consumer is positioned, with the error if the
    /// backend refused the subscription (closed if the subscription ended
    /// first).
    pub fn positioned(&self) -> oneshot::Receiver<Result<(), Error>> {
        let (tx, rx) = oneshot::channel();
        *self.positioned.lock() = Some(tx);
        rx
    }

    fn tell_positioned(&self, result: Result<(), Error>) {
        if let Some(tx) = self.positioned.lock().take() {
            let _ = tx.send(result);
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

    /// Ends the subscription for good: the stream closes once drained,
    /// with `error` after the last buffered message if there is one.
    fn end(&self, error: Option<Error>) {
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        self.gauge.release();
        *self.ending.lock() = error;
        self.tx.lock().take();
        // A Subscribe still waiting for the position answers now: the
        // stream tells why it ended.
        self.positioned.lock().take();
    }

    /// The error the subscription ended with, once (the client's stream
    /// asks when it has taken everything buffered).
    pub fn take_ending(&self) -> Option<Error> {
        self.ending.lock().take()
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

enum Step {
    /// Nothing moved: no room, or no messages.
    Idle,
    /// Messages went into the stream's buffer: how many, and their bytes.
    Delivered(usize, usize),
    Failed(Error),
}

pub struct SubscriptionActor {
    shared: Arc<SubscriptionShared>,
    consumer: Option<Box<dyn QueueConsumer>>,
    pending: Pending,
    /// Recent messages' average encoded size: a fetch asks for as many as
    /// the free bytes hold, so what waits in `pending` stays near the
    /// budget too.
    average_bytes: usize,
    /// A subscribe or a fetch is in flight and owns the consumer: the
    /// subscription may not end (its consumer would be dropped unreleased)
    /// until it returns, which pumps again.
    busy: bool,
    /// Its vitals, kill switch, and whether it was restarted (then it
    /// rejoins at the committed position).
    life: ActorLife,
}

impl SubscriptionActor {
    fn finish(&mut self, ctx: &mut Context<Self>, why: &str, error: Option<Error>) {
        tracing::debug!(subscription = %self.shared.id, why, "subscription ends");
        self.shared.end(error);
        let consumer = self.consumer.take();
        let shared = self.shared.clone();
        let release = on_runtime(&self.shared.runtime, async move {
            if let Some(mut consumer) = consumer {
                consumer.release().await;
            }
            if shared.spec.group.starts_with('~') {
                let ns = shared.entry.namespace();
                let (topic, group) = (&shared.spec.topic, &shared.spec.group);
                shared.queue.basic.forget_group(ns, topic, group).await;
            }
        });
        ctx.spawn(release.into_actor(self).map(|_, _, ctx| ctx.stop()));
    }
}

impl Actor for SubscriptionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let shared = self.shared.clone();
        let mut spec = shared.spec.clone();
        if self.life.restarted {
            spec.start = Start::Committed;
        }
        self.busy = true;
        // The timeout, if any, ends the stream by itself.
        if let Some(deadline) = shared.deadline_ms {
            let left = deadline.saturating_sub(shared.clock.now_ms());
            ctx.notify_later(Pump, Duration::from_millis(left));
        }
        let runtime = shared.runtime.clone();
        let subscribe = on_runtime(&runtime, async move {
            shared
                .queue
                .basic
                .subscribe(shared.entry.namespace(), spec)
                .await
        });
        ctx.spawn(subscribe.into_actor(self).map(|result, act, ctx| {
            act.busy = false;
            match result.and_then(|r| r) {
                Ok(consumer) => {
                    act.consumer = Some(consumer);
                    act.shared.tell_positioned(Ok(()));
                    ctx.notify(Pump);
                }
                Err(e) => {
                    act.shared.tell_positioned(Err(e.clone()));
                    act.finish(ctx, "subscribe failed", Some(e))
                }
            }
        }));
    }
}

impl Handler<Pump> for SubscriptionActor {
    type Result = ();

    fn handle(&mut self, _: Pump, ctx: &mut Context<Self>) {
        let shared = self.shared.clone();
        self.life.vitals.beat(shared.clock.now_ms());
        self.life.vitals.handled();
        if self.busy {
            return;
        }
        if let Some((why, error)) = shared.why_end() {
            return self.finish(ctx, why, error);
        }
        let (Some(mut consumer), Some(tx)) = (self.consumer.take(), shared.sender()) else {
            return;
        };
        let remaining = shared.max_messages.map_or(usize::MAX, |m| {
            usize::try_from(m.saturating_sub(shared.delivered.load(Ordering::Acquire)))
                .unwrap_or(usize::MAX)
        });
        let (pending, average) = (std::mem::take(&mut self.pending), self.average_bytes);
        let budget = shared.clone();
        let step = async move {
            let bytes = &budget.bytes;
            let mut pending = pending;
            if pending.is_empty() {
                // Backpressure: fetch only once the buffer has room, and only
                // as many messages as its free slots and bytes hold.
                let slots = match tokio::time::timeout(STEP_WAIT, tx.reserve()).await {
                    Ok(Ok(permit)) => {
                        drop(permit);
                        tx.capacity()
                    }
                    Ok(Err(_)) | Err(_) => return (consumer, pending, Step::Idle),
                };
                let fit = bytes.free() / average.max(1);
                let want = slots.min(fit).min(FETCH_BATCH).min(remaining).max(1);
                match consumer.fetch(want, STEP_WAIT).await {
                    Ok(batch) => pending.extend(batch.into_iter().map(to_proto)),
                    Err(e) => return (consumer, pending, Step::Failed(e)),
                }
            }
            let (sent, sent_bytes) = hand_over(&tx, bytes, &mut pending).await;
            let step = if sent == 0 {
                Step::Idle
            } else {
                Step::Delivered(sent, sent_bytes)
            };
            (consumer, pending, step)
        };
        self.busy = true;
        let step = on_runtime(&shared.runtime, step);
        ctx.spawn(step.into_actor(self).map(|outcome, act, ctx| {
            act.busy = false;
            let (consumer, pending, step) = match outcome {
                Ok(done) => done,
                Err(e) => return act.finish(ctx, "backend call cancelled", Some(e)),
            };
            act.consumer = Some(consumer);
            act.pending = pending;
            let shared = &act.shared;
            shared
                .buffered_high_water
                .fetch_max(shared.buffered(), Ordering::Relaxed);
            match step {
                Step::Idle => ctx.notify(Pump),
                Step::Delivered(n, bytes) => {
                    shared.delivered.fetch_add(n as u64, Ordering::AcqRel);
                    // A moving average, so one odd message moves it little.
                    let recent = (bytes / n).max(1);
                    act.average_bytes = (act.average_bytes.saturating_mul(3) + recent) / 4;
                    ctx.notify(Pump);
                }
                Step::Failed(e) => act.finish(ctx, "backend failed", Some(e)),
            }
        }));
    }
}

/// Moves pending messages into the stream's buffer while it has room, in
/// slots and in bytes, waiting at most [`STEP_WAIT`] for each; what does
/// not fit stays pending. Returns how many moved, and their bytes.
async fn hand_over(
    tx: &MessageSender,
    bytes: &ByteBudget,
    pending: &mut Pending,
) -> (usize, usize) {
    let (mut sent, mut sent_bytes) = (0, 0);
    while let Some(message) = pending.pop_front() {
        let cost = bytes.cost(&message);
        // Bytes first, then a slot: a slot is never held while its message
        // waits for bytes, so `buffered` counts only messages in the buffer
        // (`buffered_bytes` may count one still waiting for its slot).
        let moved = tokio::time::timeout(STEP_WAIT, async {
            let held = bytes.take(cost).await;
            let slot = tx.reserve().await.ok()?;
            Some((slot, held))
        })
        .await;
        match moved {
            Ok(Some((slot, held))) => {
                slot.send(Buffered {
                    item: Ok(message),
                    _bytes: held,
                });
                sent += 1;
                sent_bytes += cost as usize;
            }
            // The client went away: the subscription ends on its next pump.
            Ok(None) => break,
            Err(_) => {
                pending.push_front(message);
                break;
            }
        }
    }
    (sent, sent_bytes)
}

super::supervision::supervised_actor!(SubscriptionActor);
counted!(SubscriptionActor: Observe, SessionEnded);

/// The session ended: the next pump ends the stream (at once when no
/// fetch is in flight; else when it returns).
impl Handler<SessionEnded> for SubscriptionActor {
    type Result = ();

    fn handle(&mut self, _: SessionEnded, ctx: &mut Context<Self>) {
        self.life.vitals.handled();
        ctx.notify(Pump);
    }
}

impl Handler<Observe> for SubscriptionActor {
    type Result = ActorNode;

    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> ActorNode {
        self.life.vitals.handled();
        observe_subscription(&self.shared, ActorStatus::Running, &self.life.vitals)
    }
}

/// A Queue subscription actor's observable state.
#[derive(serde::Serialize)]
struct SubscriptionState<'a> {
    topic: &'a str,
    consumer_group: &'a str,
    delivered: u64,
    buffered: usize,
    buffered_high_water: usize,
    buffer_capacity: usize,
    buffered_bytes: usize,
    buffered_bytes_high_water: usize,
    buffer_bytes: usize,
    max_messages: Option<u64>,
    ended: bool,
}

fn observe_subscription(
    shared: &SubscriptionShared,
    status: ActorStatus,
    vitals: &Vitals,
) -> ActorNode {
    ActorNode::leaf(
        ActorKind::Subscription,
        shared.id.clone(),
        shared.entry.id.clone(),
        status,
        Life {
            created: shared.created,
            vitals,
            clock: &shared.clock,
            restarts: 0,
        },
        &SubscriptionState {
            topic: &shared.spec.topic,
            consumer_group: &shared.spec.group,
            delivered: shared.delivered.load(Ordering::Relaxed),
            buffered: shared.buffered(),
            buffered_high_water: shared.buffered_high_water.load(Ordering::Relaxed),
            buffer_capacity: shared.capacity,
            buffered_bytes: shared.bytes.used(),
            buffered_bytes_high_water: shared.bytes.high_water(),
            buffer_bytes: shared.bytes.capacity,
            max_messages: shared.max_messages,
            ended: shared.is_ended(),
        },
    )
}

impl Child for SubscriptionShared {
    type Actor = SubscriptionActor;
    type Env = ();
    type Key = String;
    const KIND: ActorKind = ActorKind::Subscription;

    fn key(self: &Arc<Self>) -> String {
        self.id.clone()
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn actor(self: &Arc<Self>, _: &Arc<()>, life: ActorLife) -> SubscriptionActor {
        SubscriptionActor {
            shared: self.clone(),
            consumer: None,
            pending: Pending::new(),
            average_bytes: ASSUMED_MESSAGE_BYTES,
            busy: false,
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
        observe_subscription(self, status, vitals)
    }

    fn give_up(&self, _: &Arc<()>, why: &str) {
        self.end(Some(Error::new(
            crate::error::ErrorKind::Unavailable,
            "SUBSCRIPTION_FAILED",
            format!("the subscription's actor kept failing ({why}); subscribe again"),
        )));
    }
}

/// The gateway's indexes over its sessions' children (the actors
/// themselves belong to their sessions): the (topic, group) pairs each
/// session has consumed (for Acknowledge), the PubSub subscriptions (for
/// subscriber counts and listing) and the open transactions (for limits).
pub struct Subscriptions {
    groups: DashMap<String, (Arc<SessionEntry>, Vec<TopicGroup>)>,
    pub pubsub: super::pubsub::PubSubSubscriptions,
    /// Open streaming transactions, counted against their limits.
    pub transactions: Arc<super::transaction::Transactions>,
}

/// A (topic, consumer group) pair.
type TopicGroup = (String, String);

/// (topic, group) pairs a session's Acknowledge looks in, the latest kept.
const GROUPS_PER_SESSION: usize = 1024;

impl Default for Subscriptions {
    fn default() -> Self {
        Self::new()
    }
}

impl Subscriptions {
    pub fn new() -> Self {
        Subscriptions {
            groups: DashMap::new(),
            pubsub: Default::default(),
            transactions: Default::default(),
        }
    }

    /// Notes the (topic, group) a new subscription consumes. A session
    /// keeps the latest [`GROUPS_PER_SESSION`]; a private group is
    /// forgotten when its stream ends (see [`Subscriptions::forget`]).
    pub fn record(&self, shared: &SubscriptionShared) {
        let mut seen = self
            .groups
            .entry(shared.entry.id.clone())
            .or_insert_with(|| (shared.entry.clone(), Vec::new()));
        let pair = (shared.spec.topic.clone(), shared.spec.group.clone());
        seen.1.retain(|p| *p != pair);
        seen.1.push(pair);
        if seen.1.len() > GROUPS_PER_SESSION {
            seen.1.remove(0);
        }
    }

    /// Forgets a (topic, group) of a session: a private group whose stream
    /// ended can take no more acknowledgements.
    pub fn forget(&self, session_id: &str, topic: &str, group: &str) {
        if let Some(mut seen) = self.groups.get_mut(session_id) {
            seen.1.retain(|(t, g)| t != topic || g != group);
        }
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

    /// Forgets what ended sessions consumed and PubSub subscriptions that
    /// ended a while ago; run on the root supervisor's tick.
    pub fn prune(&self, now_ms: u64) {
        self.pubsub.prune(now_ms);
        self.groups
            .retain(|_, (entry, _)| !entry.state().is_ended());
    }
}
