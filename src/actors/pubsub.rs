//! PubSubSubscriptionActor: one per PubSub Subscribe stream, a child of its
//! session. It owns the backend subscription: it subscribes when started,
//! and releases it as soon as the subscription's [`EventSink`] ends
//! (Unsubscribe, max_messages, the client going away, an overflow with the
//! end_stream policy), at max_duration, or when the session ends.
//!
//! Events do not pass through the actor: the backend pushes into the sink
//! and the gRPC stream takes from it (the hot-path rule). The actor's
//! observable state is the sink's: buffered, dropped, overflow policy.
//! Its session's actor starts it and tells it when the session ends; its
//! supervisor restarts a crashed or frozen actor from [`PubSubShared`] (a
//! restarted actor subscribes again; at-most-once backends lose what was
//! published in between). [`PubSubSubscriptions`] is an index: Unsubscribe
//! and ListSubscriptions read it, Publish counts subscribers with it.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, WrapFuture};
use dashmap::DashMap;
use parking_lot::RwLock;
use tokio::sync::watch;

use super::{
    mailbox::counted,
    session::SessionEnded,
    supervision::{ActorLife, Child, Vitals},
    ActorKind, ActorNode, ActorStatus, Life, Observe,
};
use crate::{
    backends::pubsub::{EventSink, PubSubHandle, SinkEnd, Subscriber, SubscriberSpec, Trie},
    error::Error,
    proto::pubsub::v1 as pb,
    session::{Clock, Gauged, SessionEntry},
};

/// How long an ended subscription stays listed (inactive).
const ENDED_RETENTION_MS: u64 = 60_000;

/// The outcome of subscribing at the backend, as the Subscribe call waits
/// for it: `None` while pending.
pub type Ready = Option<Result<(), Error>>;

/// Everything a PubSub subscription is, apart from its actor.
pub struct PubSubShared {
    pub entry: Arc<SessionEntry>,
    /// The backend's configured name (subscriber counts are per backend).
    pub backend: String,
    pub pubsub: PubSubHandle,
    pub spec: SubscriberSpec,
    pub sink: Arc<EventSink>,
    pub max_messages: Option<u64>,
    /// Session-clock ms at which the stream ends.
    pub deadline_ms: Option<u64>,
    /// Session-clock ms the subscription ended; 0 while active.
    ended_ms: AtomicU64,
    /// Counted in its namespace's live subscriptions until it ends.
    gauge: Gauged,
    subscriber: tokio::sync::Mutex<Option<Box<dyn Subscriber>>>,
    ready: watch::Sender<Ready>,
    created: SystemTime,
    clock: Clock,
}

impl PubSubShared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        entry: Arc<SessionEntry>,
        backend: String,
        pubsub: PubSubHandle,
        spec: SubscriberSpec,
        sink: Arc<EventSink>,
        max_messages: Option<u64>,
        max_duration: Option<Duration>,
        clock: Clock,
    ) -> Self {
        let gauge = Gauged::new(entry.namespace_sessions.clone(), |n| &n.subscriptions);
        PubSubShared {
            entry,
            backend,
            pubsub,
            spec,
            sink,
            max_messages,
            deadline_ms: max_duration.map(|d| clock.now_ms().saturating_add(crate::clock::ms(d))),
            ended_ms: AtomicU64::new(0),
            gauge,
            subscriber: tokio::sync::Mutex::new(None),
            ready: watch::channel(None).0,
            created: SystemTime::now(),
            clock,
        }
    }

    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// Still delivering, as a client sees it: ended as soon as its sink
    /// is (Unsubscribe), not only once the actor has finished.
    pub fn is_live(&self) -> bool {
        self.is_active() && !self.sink.is_ended()
    }

    pub fn is_active(&self) -> bool {
        self.ended_ms.load(Ordering::Acquire) == 0
    }

    /// Waits for the backend subscription to be in place (or to fail).
    pub async fn ready(&self) -> Result<(), Error> {
        let mut rx = self.ready.subscribe();
        let outcome = rx.wait_for(Option::is_some).await;
        match outcome.as_deref() {
            Ok(Some(result)) => result.clone(),
            _ => Err(Error::internal("the subscription ended before it started")),
        }
    }

    /// Why the subscription should end now, if it should.
    fn why_end(&self) -> Option<SinkEnd> {
        if let Some(end) = self.sink.end_reason() {
            return Some(end);
        }
        if self.entry.state().is_ended() {
            // The gate's stream tells the client why.
            return Some(SinkEnd::Done("session ended"));
        }
        if self.deadline_ms.is_some_and(|d| self.clock.now_ms() >= d) {
            return Some(SinkEnd::Done("max_duration reached"));
        }
        None
    }

    pub fn to_proto(&self) -> pb::Subscription {
        pb::Subscription {
            subscription_id: self.spec.id.clone(),
            topic_pattern: self.spec.pattern.as_str().to_string(),
            queue_group: self.spec.queue_group.clone(),
            created_at: Some(self.created.into()),
            messages_received: self.sink.received.load(Ordering::Relaxed) as i64,
            active: self.is_live(),
        }
    }
}

pub struct PubSubSubscriptionActor {
    shared: Arc<PubSubShared>,
    life: ActorLife,
}

impl PubSubSubscriptionActor {
    fn finish(&mut self, ctx: &mut Context<Self>, end: SinkEnd) {
        let shared = self.shared.clone();
        if shared
            .ended_ms
            .compare_exchange(
                0,
                shared.clock.now_ms().max(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return;
        }
        tracing::debug!(subscription = %shared.id(), ?end, "pubsub subscription ends");
        shared.gauge.release();
        shared.sink.end(end);
        ctx.spawn(
            async move {
                if let Some(subscriber) = shared.subscriber.lock().await.take() {
                    subscriber.release().await;
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        );
    }

    fn check(&mut self, ctx: &mut Context<Self>) {
        self.life.vitals.beat(self.shared.clock.now_ms());
        if let Some(end) = self.shared.why_end() {
            self.finish(ctx, end);
        }
    }
}

impl Actor for PubSubSubscriptionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Its session may have ended before it (re)started.
        if self.shared.entry.state().is_ended() {
            return self.check(ctx);
        }
        let shared = self.shared.clone();
        let restarted = self.life.restarted;
        ctx.spawn(
            async move {
                let mut slot = shared.subscriber.lock().await;
                if let Some(old) = slot.take() {
                    old.release().await;
                }
                let result = shared
                    .pubsub
                    .basic
                    .subscribe(shared.entry.namespace(), &shared.spec, shared.sink.clone())
                    .await;
                match result {
                    Ok(subscriber) => {
                        *slot = Some(subscriber);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            .into_actor(self)
            .map(move |result: Result<(), Error>, act, ctx| {
                if restarted {
                    tracing::info!(subscription = %act.shared.id(), "pubsub subscription resubscribed");
                }
                act.shared.ready.send_replace(Some(result.clone()));
                if let Err(e) = result {
                    return act.finish(ctx, SinkEnd::Failed(e));
                }
                // Ends when the sink ends, at max_duration, or when told
                // the session ended: nothing polls.
                let sink = act.shared.sink.clone();
                ctx.spawn(
                    async move { sink.ended().await }
                        .into_actor(act)
                        .map(|_, act, ctx| act.check(ctx)),
                );
                if let Some(deadline) = act.shared.deadline_ms {
                    let left = deadline.saturating_sub(act.shared.clock.now_ms());
                    ctx.run_later(Duration::from_millis(left), |act, ctx| act.check(ctx));
                }
            }),
        );
    }
}

super::supervision::supervised_actor!(PubSubSubscriptionActor);
counted!(PubSubSubscriptionActor: Observe, SessionEnded);

impl Handler<SessionEnded> for PubSubSubscriptionActor {
    type Result = ();

    fn handle(&mut self, _: SessionEnded, ctx: &mut Context<Self>) {
        self.life.vitals.handled();
        self.check(ctx);
    }
}

impl Handler<Observe> for PubSubSubscriptionActor {
    type Result = ActorNode;

    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> ActorNode {
        self.life.vitals.handled();
        observe(&self.shared, ActorStatus::Running, &self.life.vitals)
    }
}

/// A PubSub subscription actor's observable state: its sink's numbers.
#[derive(serde::Serialize)]
struct PubSubState<'a> {
    topic_pattern: &'a str,
    queue_group: Option<&'a str>,
    backend: &'a str,
    received: u64,
    delivered: u64,
    buffered: usize,
    buffered_high_water: usize,
    buffer_capacity: usize,
    overflow_policy: &'static str,
    dropped: u64,
    max_messages: Option<u64>,
    active: bool,
}

fn observe(shared: &PubSubShared, status: ActorStatus, vitals: &Vitals) -> ActorNode {
    let sink = &shared.sink;
    ActorNode::leaf(
        ActorKind::PubSubSubscription,
        shared.spec.id.clone(),
        shared.entry.id.clone(),
        status,
        Life {
            created: shared.created,
            vitals,
            clock: &shared.clock,
            restarts: 0,
        },
        &PubSubState {
            topic_pattern: shared.spec.pattern.as_str(),
            queue_group: shared.spec.queue_group.as_deref(),
            backend: &shared.backend,
            received: sink.received.load(Ordering::Relaxed),
            delivered: sink.taken.load(Ordering::Relaxed),
            buffered: sink.len(),
            buffered_high_water: sink.high_water.load(Ordering::Relaxed),
            buffer_capacity: sink.capacity(),
            overflow_policy: sink.overflow().name(),
            dropped: sink.dropped.load(Ordering::Relaxed),
            max_messages: shared.max_messages,
            active: shared.is_active(),
        },
    )
}

impl Child for PubSubShared {
    type Actor = PubSubSubscriptionActor;
    type Env = ();
    type Key = String;
    const KIND: ActorKind = ActorKind::PubSubSubscription;

    fn key(self: &Arc<Self>) -> String {
        self.spec.id.clone()
    }

    fn id(&self) -> &str {
        &self.spec.id
    }

    fn actor(self: &Arc<Self>, _: &Arc<()>, life: ActorLife) -> PubSubSubscriptionActor {
        PubSubSubscriptionActor {
            shared: self.clone(),
            life,
        }
    }

    fn clock(&self) -> Clock {
        self.clock
    }

    fn is_finished(&self) -> bool {
        !self.is_active()
    }

    fn node(&self, status: ActorStatus, vitals: &Vitals) -> ActorNode {
        observe(self, status, vitals)
    }

    fn give_up(&self, _: &Arc<()>, why: &str) {
        self.ended_ms
            .compare_exchange(
                0,
                self.clock.now_ms().max(1),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .ok();
        let e = Error::new(
            crate::error::ErrorKind::Unavailable,
            "SUBSCRIPTION_FAILED",
            format!("the subscription's actor kept failing ({why}); subscribe again"),
        );
        self.gauge.release();
        self.ready.send_replace(Some(Err(e.clone())));
        self.sink.end(SinkEnd::Failed(e));
    }
}

/// A subscription in the index, with its key in the subscriber-count trie.
pub struct PubSubEntry {
    pub shared: Arc<PubSubShared>,
    key: u64,
}

/// A counted subscriber: for queue-group members the group (a group counts
/// once), and its sink (an ended one no longer counts).
type Counted = (Option<Arc<str>>, Arc<EventSink>);

/// Every PubSub subscription of the gateway, live and recently ended.
#[derive(Default)]
pub struct PubSubSubscriptions {
    by_id: DashMap<String, Arc<PubSubEntry>>,
    /// Active subscriptions by (namespace, backend), filed by pattern.
    counting: RwLock<HashMap<(String, String), Trie<Counted>>>,
    keys: AtomicU64,
}

impl PubSubSubscriptions {
    /// Files a new subscription (its session's actor starts it; the caller
    /// waits on [`PubSubShared::ready`]).
    pub fn record(&self, shared: Arc<PubSubShared>) {
        let key = self.keys.fetch_add(1, Ordering::Relaxed);
        let group = shared
            .spec
            .queue_group
            .as_ref()
            .map(|g| Arc::<str>::from(format!("{}\u{0}{g}", shared.spec.pattern.as_str())));
        self.counting
            .write()
            .entry((shared.entry.namespace().to_string(), shared.backend.clone()))
            .or_default()
            .insert(&shared.spec.pattern, key, (group, shared.sink.clone()));
        self.by_id.insert(
            shared.spec.id.clone(),
            Arc::new(PubSubEntry { shared, key }),
        );
    }

    pub fn get(&self, id: &str) -> Option<Arc<PubSubEntry>> {
        self.by_id.get(id).map(|e| e.clone())
    }

    /// A session's subscriptions, oldest first.
    pub fn for_session(&self, session_id: &str) -> Vec<Arc<PubSubShared>> {
        let mut out: Vec<Arc<PubSubShared>> = self
            .by_id
            .iter()
            .filter(|e| e.shared.entry.id == session_id)
            .map(|e| e.shared.clone())
            .collect();
        out.sort_by_key(|s| s.created);
        out
    }

    /// How many of this gateway's active subscriptions on the namespace's
    /// backend an event on `topic` reaches: each subscription outside a
    /// queue group, and each queue group once.
    pub fn count(&self, ns: &str, backend: &str, topic: &str) -> usize {
        let counting = self.counting.read();
        let Some(trie) = counting.get(&(ns.to_string(), backend.to_string())) else {
            return 0;
        };
        let mut groups = HashSet::new();
        trie.matching(topic)
            .into_iter()
            .filter(|(group, sink)| {
                !sink.is_ended() && group.as_ref().is_none_or(|g| groups.insert(g.clone()))
            })
            .count()
    }

    fn uncount(&self, entry: &PubSubEntry) {
        let mut counting = self.counting.write();
        let key = (
            entry.shared.entry.namespace().to_string(),
            entry.shared.backend.clone(),
        );
        if let Some(trie) = counting.get_mut(&key) {
            if trie.remove(&entry.shared.spec.pattern, entry.key).is_some() && trie.is_empty() {
                counting.remove(&key);
            }
        }
    }

    /// Stops counting ended subscriptions and forgets them after a while
    /// (ListSubscriptions shows them as inactive meanwhile).
    pub fn prune(&self, now_ms: u64) {
        self.by_id.retain(|_, entry| {
            let shared = &entry.shared;
            let ended_ms = shared.ended_ms.load(Ordering::Acquire);
            if ended_ms != 0 || shared.entry.state().is_ended() {
                self.uncount(entry);
                return ended_ms != 0
                    && !shared.entry.state().is_ended()
                    && now_ms.saturating_sub(ended_ms) < ENDED_RETENTION_MS;
            }
            true
        });
    }
}
