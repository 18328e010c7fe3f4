//! The PubSub model every PubSub backend shares (seed 002 §4): events on
//! dot-separated topics, subscriptions by topic pattern, queue groups, and
//! one trait per thin interface:
//!
//! - `pubsub_basic` ([`PubSubBasic`]): publish, and subscribe to an exact
//!   topic, alone or in a queue group;
//! - `pubsub_wildcards` ([`PubSubWildcards`]): patterns with `*` (exactly one
//!   token) and `>` (one or more trailing tokens), NATS semantics, the same
//!   on every backend;
//! - `pubsub_persistent` ([`PubSubPersistent`]): the backend stores events,
//!   and a queue group resumes where it left off.
//!
//! A backend delivers into an [`EventSink`], the subscription's bounded
//! buffer: push-only backends apply its overflow policy, pull backends wait
//! for room. Events travel on NATS, Redis and Kafka encoded as
//! `prism.pubsub.v1.Event`, so metadata and binary payloads round-trip.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
};

use async_trait::async_trait;
use parking_lot::Mutex;
use prost::Message as _;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::error::{Error, ErrorKind};

/// Longest topic or pattern accepted, in bytes.
pub const MAX_TOPIC_BYTES: usize = 200;

/// One published event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub metadata: HashMap<String, String>,
    /// Wall-clock publish time, ms since the Unix epoch.
    pub timestamp_ms: i64,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
}

/// An event as the brokers carry it: the backends' own format, field for
/// field compatible with `prism.pubsub.v1.Event` (same tags), so events
/// written by earlier gateways still decode.
#[derive(Clone, PartialEq, prost::Message)]
struct WireEvent {
    #[prost(string, tag = "1")]
    event_id: String,
    #[prost(string, tag = "2")]
    topic: String,
    #[prost(bytes = "vec", tag = "3")]
    payload: Vec<u8>,
    #[prost(map = "string, string", tag = "4")]
    metadata: HashMap<String, String>,
    #[prost(message, optional, tag = "5")]
    timestamp: Option<prost_types::Timestamp>,
    #[prost(string, optional, tag = "6")]
    correlation_id: Option<String>,
    #[prost(string, optional, tag = "7")]
    reply_to: Option<String>,
}

impl Event {
    /// The bytes carried by NATS, Redis and Kafka.
    pub fn encode(&self) -> Vec<u8> {
        WireEvent {
            event_id: self.id.clone(),
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            metadata: self.metadata.clone(),
            timestamp: Some(crate::backends::timestamp_ms(self.timestamp_ms)),
            correlation_id: self.correlation_id.clone(),
            reply_to: self.reply_to.clone(),
        }
        .encode_to_vec()
    }

    /// Decodes what [`Event::encode`] wrote; `None` for anything else on the
    /// channel (another producer's bytes are skipped, not delivered).
    pub fn decode(bytes: &[u8]) -> Option<Event> {
        let e = WireEvent::decode(bytes).ok()?;
        if e.event_id.is_empty() || e.topic.is_empty() {
            return None;
        }
        let ts = e.timestamp.unwrap_or_default();
        Some(Event {
            id: e.event_id,
            topic: e.topic,
            payload: e.payload,
            metadata: e.metadata,
            timestamp_ms: ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000,
            correlation_id: e.correlation_id,
            reply_to: e.reply_to,
        })
    }
}

// ---- topics and patterns ----------------------------------------------------

fn check_tokens(what: &'static str, reason: &'static str, raw: &str) -> Result<(), Error> {
    let bad = |why: String| {
        Err(Error::invalid_argument(reason, format!("{what} `{raw}`: {why}")).with(what, raw))
    };
    if raw.is_empty() {
        return bad("must not be empty".into());
    }
    if raw.len() > MAX_TOPIC_BYTES {
        return bad(format!("longer than {MAX_TOPIC_BYTES} bytes"));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must not contain whitespace or control characters".into());
    }
    if raw.split('.').any(str::is_empty) {
        return bad("tokens between dots must not be empty".into());
    }
    Ok(())
}

/// A topic events are published to: dot-separated, non-empty tokens, no
/// wildcard tokens.
pub fn check_topic(topic: &str) -> Result<(), Error> {
    check_tokens("topic", "INVALID_TOPIC", topic)?;
    if topic.split('.').any(|t| t == "*" || t == ">") {
        return Err(Error::invalid_argument(
            "INVALID_TOPIC",
            format!("topic `{topic}`: `*` and `>` are wildcards, for subscriptions only"),
        )
        .with("topic", topic));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Token {
    Literal(String),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more trailing tokens.
    Rest,
}

/// A subscription's topic pattern. `*` and `>` are wildcards only as whole
/// tokens: `a*b` is the literal token `a*b` on every backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicPattern {
    raw: String,
    tokens: Vec<Token>,
}

impl TopicPattern {
    pub fn parse(raw: &str) -> Result<TopicPattern, Error> {
        check_tokens("topic_pattern", "INVALID_TOPIC_PATTERN", raw)?;
        let parts: Vec<&str> = raw.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            tokens.push(match *part {
                "*" => Token::One,
                ">" if i + 1 == parts.len() => Token::Rest,
                ">" => {
                    return Err(Error::invalid_argument(
                        "INVALID_TOPIC_PATTERN",
                        format!("topic_pattern `{raw}`: `>` may only be the last token"),
                    )
                    .with("topic_pattern", raw))
                }
                literal => Token::Literal(literal.to_string()),
            });
        }
        Ok(TopicPattern {
            raw: raw.to_string(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    pub fn has_wildcards(&self) -> bool {
        self.tokens.iter().any(|t| !matches!(t, Token::Literal(_)))
    }

    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for token in &self.tokens {
            match (token, parts.next()) {
                (_, None) => return false,
                (Token::Rest, Some(_)) => return true,
                (Token::One, Some(_)) => {}
                (Token::Literal(l), Some(p)) => {
                    if l != p {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

/// Values filed by topic pattern; `matching` walks a topic's tokens once,
/// whatever the number of patterns (the memory backend's router, and the
/// gateway's count of a publish's subscribers).
pub struct Trie<T> {
    root: Node<T>,
    len: usize,
}

struct Node<T> {
    literal: HashMap<String, Node<T>>,
    one: Option<Box<Node<T>>>,
    /// Values whose pattern ends here.
    here: Vec<(u64, T)>,
    /// Values whose pattern ends here with `>`.
    rest: Vec<(u64, T)>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            literal: HashMap::new(),
            one: None,
            here: Vec::new(),
            rest: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.one.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }
}

impl<T> Default for Trie<T> {
    fn default() -> Self {
        Trie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T: Clone> Trie<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Files `value` under `pattern` with a caller-chosen unique key.
    pub fn insert(&mut self, pattern: &TopicPattern, key: u64, value: T) {
        let mut node = &mut self.root;
        for token in pattern.tokens() {
            node = match token {
                Token::Literal(l) => node.literal.entry(l.clone()).or_default(),
                Token::One => node.one.get_or_insert_with(Box::default),
                Token::Rest => {
                    node.rest.push((key, value));
                    self.len += 1;
                    return;
                }
            };
        }
        node.here.push((key, value));
        self.len += 1;
    }

    /// Removes what was filed under `pattern` with `key`; prunes empty nodes.
    pub fn remove(&mut self, pattern: &TopicPattern, key: u64) -> Option<T> {
        fn walk<T>(node: &mut Node<T>, tokens: &[Token], key: u64) -> Option<T> {
            let take = |list: &mut Vec<(u64, T)>| {
                let i = list.iter().position(|(k, _)| *k == key)?;
                Some(list.swap_remove(i).1)
            };
            match tokens.split_first() {
                None => take(&mut node.here),
                Some((Token::Rest, _)) => take(&mut node.rest),
                Some((Token::One, rest)) => {
                    let child = node.one.as_mut()?;
                    let found = walk(child, rest, key);
                    if child.is_empty() {
                        node.one = None;
                    }
                    found
                }
                Some((Token::Literal(l), rest)) => {
                    let child = node.literal.get_mut(l)?;
                    let found = walk(child, rest, key);
                    if child.is_empty() {
                        node.literal.remove(l);
                    }
                    found
                }
            }
        }
        let found = walk(&mut self.root, pattern.tokens(), key);
        if found.is_some() {
            self.len -= 1;
        }
        found
    }

    /// Every value whose pattern matches `topic`.
    pub fn matching(&self, topic: &str) -> Vec<T> {
        fn walk<T: Clone>(node: &Node<T>, parts: &[&str], out: &mut Vec<T>) {
            let Some((first, rest)) = parts.split_first() else {
                out.extend(node.here.iter().map(|(_, v)| v.clone()));
                return;
            };
            out.extend(node.rest.iter().map(|(_, v)| v.clone()));
            if let Some(child) = node.literal.get(*first) {
                walk(child, rest, out);
            }
            if let Some(child) = &node.one {
                walk(child, rest, out);
            }
        }
        let parts: Vec<&str> = topic.split('.').collect();
        let mut out = Vec::new();
        walk(&self.root, &parts, &mut out);
        out
    }
}

// ---- the subscription buffer ------------------------------------------------

/// What a push-only backend does when a subscription's buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Drop the oldest buffered event and count it.
    #[default]
    DropOldest,
    /// End the stream with RESOURCE_EXHAUSTED after what is buffered.
    EndStream,
}

impl Overflow {
    pub fn name(self) -> &'static str {
        match self {
            Overflow::DropOldest => "drop_oldest",
            Overflow::EndStream => "end_stream",
        }
    }
}

/// Why a sink stopped taking events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkEnd {
    /// A normal end (max_messages, max_duration, Unsubscribe, client gone).
    Done(&'static str),
    /// An end the client hears about as an error after the buffered events.
    Failed(Error),
}

struct SinkState {
    /// Each event with its [`Event::size`], counted once on the way in.
    events: VecDeque<(Arc<Event>, usize)>,
    /// What the buffered events hold, by [`Event::size`].
    bytes: usize,
    end: Option<SinkEnd>,
}

impl SinkState {
    /// Whether `incoming` more bytes would overfill a buffer of `capacity`
    /// events and `max_bytes` (an empty buffer always takes one event).
    fn full(&self, capacity: usize, max_bytes: usize, incoming: usize) -> bool {
        !self.events.is_empty()
            && (self.events.len() >= capacity || self.bytes.saturating_add(incoming) > max_bytes)
    }

    fn pop(&mut self) -> Option<Arc<Event>> {
        let (e, size) = self.events.pop_front()?;
        self.bytes = self.bytes.saturating_sub(size);
        Some(e)
    }
}

impl Event {
    /// About what the event holds in memory: payload, topic, ids and
    /// metadata.
    pub fn size(&self) -> usize {
        self.payload.len()
            + self.topic.len()
            + self.id.len()
            + self
                .metadata
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.correlation_id.as_ref().map_or(0, String::len)
            + self.reply_to.as_ref().map_or(0, String::len)
    }
}

/// A subscription's bounded buffer between its backend and its gRPC stream.
pub struct EventSink {
    capacity: usize,
    /// Bytes the buffer may hold (see [`Event::size`]).
    max_bytes: usize,
    overflow: Overflow,
    state: Mutex<SinkState>,
    /// Wakes the stream when an event arrives or the sink ends.
    readable: Notify,
    /// Wakes a pull backend when room frees up or the sink ends.
    writable: Notify,
    /// Wakes whoever waits for the end.
    closed: Notify,
    /// Events accepted into the buffer.
    pub received: AtomicU64,
    /// Events taken by the stream.
    pub taken: AtomicU64,
    /// Events dropped by the drop-oldest policy.
    pub dropped: AtomicU64,
    pub high_water: AtomicUsize,
}

impl EventSink {
    /// A buffer of at most `capacity` events and `max_bytes` bytes.
    pub fn new(capacity: usize, max_bytes: usize, overflow: Overflow) -> Self {
        EventSink {
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            overflow,
            state: Mutex::new(SinkState {
                events: VecDeque::new(),
                bytes: 0,
                end: None,
            }),
            readable: Notify::new(),
            writable: Notify::new(),
            closed: Notify::new(),
            received: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            high_water: AtomicUsize::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn overflow(&self) -> Overflow {
        self.overflow
    }

    pub fn len(&self) -> usize {
        self.state.lock().events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_ended(&self) -> bool {
        self.state.lock().end.is_some()
    }

    pub fn end_reason(&self) -> Option<SinkEnd> {
        self.state.lock().end.clone()
    }

    /// Offers an event (push backends). Returns false once the sink has
    /// ended: the backend should stop delivering.
    pub fn push(&self, event: Arc<Event>) -> bool {
        let size = event.size();
        {
            let mut s = self.state.lock();
            if s.end.is_some() {
                return false;
            }
            while s.full(self.capacity, self.max_bytes, size) {
                match self.overflow {
                    Overflow::DropOldest => {
                        s.pop();
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Overflow::EndStream => {
                        s.end = Some(SinkEnd::Failed(
                            Error::new(
                                ErrorKind::ResourceExhausted,
                                "SUBSCRIBER_TOO_SLOW",
                                format!(
                                    "the subscription's buffer ({} events, {} bytes) is full and \
                                     the namespace's overflow policy is end_stream; read faster \
                                     or subscribe again",
                                    self.capacity, self.max_bytes
                                ),
                            )
                            .with("buffer", self.capacity.to_string())
                            .with("buffer_bytes", self.max_bytes.to_string()),
                        ));
                        drop(s);
                        self.wake();
                        return false;
                    }
                }
            }
            s.bytes += size;
            s.events.push_back((event, size));
            self.high_water.fetch_max(s.events.len(), Ordering::Relaxed);
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        self.readable.notify_one();
        true
    }

    /// Waits until the buffer has room (pull backends: backpressure, never
    /// a drop). Returns false once the sink has ended.
    pub async fn room(&self) -> bool {
        loop {
            let notified = self.writable.notified();
            {
                let s = self.state.lock();
                if s.end.is_some() {
                    return false;
                }
                // Room for at least a small event; a large one may still
                // wait in the backend's hands, never beyond one buffer.
                if !s.full(self.capacity, self.max_bytes, 0) {
                    return true;
                }
            }
            notified.await;
        }
    }

    /// The next event, or the end: `Ok(None)` for a normal end, `Err` for a
    /// failure, each only after every buffered event was taken.
    pub async fn next(&self) -> Result<Option<Arc<Event>>, Error> {
        loop {
            let notified = self.readable.notified();
            {
                let mut s = self.state.lock();
                if let Some(e) = s.pop() {
                    drop(s);
                    self.taken.fetch_add(1, Ordering::Relaxed);
                    self.writable.notify_one();
                    return Ok(Some(e));
                }
                match &s.end {
                    Some(SinkEnd::Done(_)) => return Ok(None),
                    Some(SinkEnd::Failed(e)) => return Err(e.clone()),
                    None => {}
                }
            }
            notified.await;
        }
    }

    /// Returns once the sink has ended.
    pub async fn ended(&self) {
        loop {
            let notified = self.closed.notified();
            if self.is_ended() {
                return;
            }
            notified.await;
        }
    }

    /// Ends the sink (first reason wins); buffered events are still taken.
    pub fn end(&self, reason: SinkEnd) {
        {
            let mut s = self.state.lock();
            if s.end.is_none() {
                s.end = Some(reason);
            }
        }
        self.wake();
    }

    /// Ends the sink and discards what it buffered (the reader is gone).
    pub fn abandon(&self, why: &'static str) {
        {
            let mut s = self.state.lock();
            s.events.clear();
            s.bytes = 0;
            if s.end.is_none() {
                s.end = Some(SinkEnd::Done(why));
            }
        }
        self.wake();
    }

    fn wake(&self) {
        self.readable.notify_waiters();
        self.readable.notify_one();
        self.writable.notify_waiters();
        self.writable.notify_one();
        self.closed.notify_waiters();
    }
}

// ---- the interfaces ---------------------------------------------------------

/// What a subscription asks of its backend.
#[derive(Debug, Clone)]
pub struct SubscriberSpec {
    /// The subscription's id (unique in the gateway).
    pub id: String,
    pub pattern: TopicPattern,
    pub queue_group: Option<String>,
    /// Backends with acks (Kafka): commit on delivery into the buffer rather
    /// than once the stream has taken the event.
    pub auto_acknowledge: bool,
    /// Wall-clock ms the subscription began; events published before it are
    /// not delivered.
    pub since_ms: i64,
    /// The gateway's main runtime, where forwarding tasks run (not the
    /// actor's arbiter).
    pub runtime: tokio::runtime::Handle,
}

/// A backend subscription served by a forwarding task on the gateway's
/// runtime. The task gets a stop signal; released, the forwarder signals it
/// and waits (bounded) for it to leave the backend cleanly; dropped, it
/// only signals.
pub struct Forwarder {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Forwarder {
    /// Starts `forward(stop)` on `runtime`; it must return soon after
    /// `stop` resolves.
    pub fn spawn<F, Fut>(runtime: &tokio::runtime::Handle, forward: F) -> Forwarder
    where
        F: FnOnce(tokio::sync::oneshot::Receiver<()>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        Forwarder {
            stop: Some(stop),
            task: Some(runtime.spawn(forward(stopped))),
        }
    }
}

#[async_trait]
impl Subscriber for Forwarder {
    async fn release(mut self: Box<Self>) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(std::time::Duration::from_secs(10), &mut task)
                .await
                .is_err()
            {
                tracing::warn!("a pubsub forwarding task did not stop in time; aborting it");
                task.abort();
            }
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A backend subscription in place; stops delivering when released or
/// dropped.
#[async_trait]
pub trait Subscriber: Send + Sync {
    /// Leaves the backend (unsubscribes, leaves the group) and ends any task
    /// the subscription runs.
    async fn release(self: Box<Self>);
}

/// pubsub_basic.
#[async_trait]
pub trait PubSubBasic: Send + Sync {
    /// Publishes one event; a backend that creates topics (Kafka) creates
    /// a missing one with `partitions`.
    async fn publish(&self, ns: &str, partitions: i32, event: &Event) -> Result<(), Error>;

    /// Subscribes: once this returns, every matching event published later
    /// (and not taken by another member of the queue group) reaches `sink`.
    async fn subscribe(
        &self,
        ns: &str,
        spec: &SubscriberSpec,
        sink: Arc<EventSink>,
    ) -> Result<Box<dyn Subscriber>, Error>;
}

/// pubsub_wildcards: `*` and `>` patterns (the same semantics everywhere).
pub trait PubSubWildcards: PubSubBasic {}

/// pubsub_persistent: events are stored by the backend; a queue group
/// resumes at what it has not consumed.
pub trait PubSubPersistent: PubSubBasic {}

/// A backend's PubSub surface: the basic interface and the optional ones.
#[derive(Clone)]
pub struct PubSubHandle {
    pub basic: Arc<dyn PubSubBasic>,
    pub wildcards: Option<Arc<dyn PubSubWildcards>>,
    pub persistent: Option<Arc<dyn PubSubPersistent>>,
}

/// Declares a PubSub backend's interfaces: its registry entry and its
/// [`PubSubHandle`] come from this one list.
#[macro_export]
macro_rules! pubsub_interfaces {
    ($ty:ty: basic $(, $iface:ident)*) => {
        impl $ty {
            pub const PUBSUB_INTERFACES: &'static [$crate::backends::Interface] = &[
                $crate::backends::Interface::PubSubBasic,
                $($crate::pubsub_interfaces!(@interface $iface),)*
            ];

            pub fn pubsub_handle(
                self: &std::sync::Arc<Self>,
            ) -> $crate::backends::pubsub::PubSubHandle {
                #[allow(unused_mut)]
                let mut handle = $crate::backends::pubsub::PubSubHandle {
                    basic: self.clone(),
                    wildcards: None,
                    persistent: None,
                };
                $(handle.$iface = Some(self.clone());)*
                handle
            }
        }
    };
    (@interface wildcards) => { $crate::backends::Interface::PubSubWildcards };
    (@interface persistent) => { $crate::backends::Interface::PubSubPersistent };
}

/// FNV-1a of a string, hex: short stable names for patterns in backends.
pub fn short_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TopicPattern {
        TopicPattern::parse(s).unwrap()
    }

    #[test]
    fn wildcards_follow_nats_semantics() {
        assert!(p("events.user.*").matches("events.user.created"));
        assert!(!p("events.user.*").matches("events.user.a.b"));
        assert!(!p("events.user.*").matches("events.user"));
        assert!(p("events.>").matches("events.user.created"));
        assert!(p("events.>").matches("events.user.a.b"));
        assert!(!p("events.>").matches("events"));
        assert!(p("*.user.>").matches("x.user.y"));
        assert!(p("a*b").matches("a*b"));
        assert!(!p("a*b").matches("axb"));
        assert!(!p("a*b").has_wildcards());
    }

    #[test]
    fn bad_patterns_and_topics_are_refused() {
        for bad in ["", "a..b", ".a", "a.", "a.>.b", "a b", "a\tb"] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["a.*", "a.>", "", "a..b", "x y"] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic(&"a".repeat(MAX_TOPIC_BYTES + 1)).is_err());
        assert!(check_topic("a*b.c?d.[e]").is_ok());
    }

    #[test]
    fn the_trie_agrees_with_matches() {
        let patterns = [
            "a.b.c", "a.*.c", "a.>", "*.b.>", ">", "a.b", "*", "a.b.c.d", "x.*",
        ];
        let mut trie = Trie::default();
        for (i, s) in patterns.iter().enumerate() {
            trie.insert(&p(s), i as u64, *s);
        }
        for topic in ["a.b.c", "a.b", "a", "a.x.c", "q.b.z.z", "x.y", "a.b.c.d"] {
            let mut got = trie.matching(topic);
            got.sort();
            let mut want: Vec<&str> = patterns
                .iter()
                .copied()
                .filter(|s| p(s).matches(topic))
                .collect();
            want.sort();
            assert_eq!(got, want, "{topic}");
        }
        for (i, s) in patterns.iter().enumerate() {
            assert_eq!(trie.remove(&p(s), i as u64), Some(*s));
        }
        assert!(trie.is_empty());
        assert!(trie.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn events_round_trip_through_their_encoding() {
        let e = Event {
            id: "ev-1".into(),
            topic: "a.b".into(),
            payload: vec![0, 255, 1],
            metadata: HashMap::from([("k".into(), "v".into())]),
            timestamp_ms: 1_700_000_000_123,
            correlation_id: Some("c".into()),
            reply_to: Some("r.x".into()),
        };
        assert_eq!(Event::decode(&e.encode()), Some(e));
        assert_eq!(Event::decode(b"not an event"), None);
    }

    #[tokio::test]
    async fn drop_oldest_counts_and_end_stream_fails_after_the_buffer() {
        let ev = |i: u8| {
            Arc::new(Event {
                id: format!("{i}"),
                topic: "t".into(),
                payload: vec![i],
                metadata: HashMap::new(),
                timestamp_ms: 0,
                correlation_id: None,
                reply_to: None,
            })
        };
        let sink = EventSink::new(2, usize::MAX, Overflow::DropOldest);
        for i in 0..5 {
            assert!(sink.push(ev(i)));
        }
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(sink.next().await.unwrap().unwrap().payload, vec![3]);
        assert_eq!(sink.next().await.unwrap().unwrap().payload, vec![4]);

        let sink = EventSink::new(2, usize::MAX, Overflow::EndStream);
        assert!(sink.push(ev(0)) && sink.push(ev(1)));
        assert!(!sink.push(ev(2)), "the third overflows");
        assert!(sink.next().await.unwrap().is_some());
        assert!(sink.next().await.unwrap().is_some());
        let err = sink.next().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::ResourceExhausted);
        assert!(!sink.room().await, "an ended sink has no room");
    }

    #[tokio::test]
    async fn a_buffer_is_bounded_in_bytes_as_well_as_events() {
        let ev = |n: usize| {
            Arc::new(Event {
                id: String::new(),
                topic: "t".into(),
                payload: vec![0; n],
                metadata: HashMap::new(),
                timestamp_ms: 0,
                correlation_id: None,
                reply_to: None,
            })
        };
        // 100 events may wait, but only 1,000 bytes.
        let sink = EventSink::new(100, 1000, Overflow::DropOldest);
        for _ in 0..5 {
            assert!(sink.push(ev(399)));
        }
        assert_eq!(sink.len(), 2, "two 400-byte events fit in 1,000 bytes");
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 3);
        // One event larger than the whole buffer is still taken, alone.
        assert!(sink.push(ev(5000)));
        assert_eq!(sink.len(), 1);
        assert_eq!(sink.next().await.unwrap().unwrap().payload.len(), 5000);

        let sink = EventSink::new(100, 1000, Overflow::EndStream);
        assert!(sink.push(ev(599)));
        assert!(!sink.push(ev(599)), "over the bytes: the stream ends");
        assert!(sink.next().await.unwrap().is_some());
        let err = sink.next().await.unwrap_err();
        assert_eq!(err.reason, "SUBSCRIBER_TOO_SLOW");
    }
}
