//! PubSub on Kafka: a topic is the Kafka topic `prism-ps.<namespace>.<topic>`
//! (characters Kafka does not allow in names are escaped as `_XX`), created
//! on first publish with the config's `partitions`; events go round robin
//! over partitions. A pattern is a regex subscription over topic names, so
//! topics created later are picked up (metadata refreshed every 500ms).
//!
//! A queue group is the Kafka consumer group
//! `prism-ps.<namespace>.<group>.<pattern hash>`: Kafka splits partitions
//! between members and the group resumes where it left off (events are
//! stored: `pubsub_persistent`). Its offsets are committed once the stream
//! has taken an event, or as soon as it is buffered with
//! `auto_acknowledge`. A subscription outside a group has a private group,
//! commits nothing and is deleted when it ends. A new group starts at the
//! end of the topics that exist, and at the start of topics created later;
//! a private one also skips events published before it subscribed.
//!
//! Kafka is a pull backend: a full buffer makes the consumer wait, it never
//! drops. rdkafka calls that block run on the blocking pool.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use rdkafka::{
    admin::AdminOptions,
    client::ClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    message::Message as _,
    producer::{FutureRecord, Producer as _},
    ClientConfig, Offset, TopicPartitionList,
};
use tokio::sync::Notify;

use super::{
    kafka::{blocking, KafkaBackend, META_TIMEOUT},
    pubsub::{
        short_hash, Event, EventSink, Forwarder, PubSubBasic, PubSubPersistent, PubSubWildcards,
        SinkEnd, Subscriber, SubscriberSpec, Token, TopicPattern,
    },
};
use crate::error::Error;

impl PubSubWildcards for KafkaBackend {}
impl PubSubPersistent for KafkaBackend {}

/// Longest Kafka topic name.
const MAX_KAFKA_TOPIC: usize = 249;
/// How long Subscribe waits for the group to hand this member partitions.
const ASSIGN_WAIT: Duration = Duration::from_secs(20);
/// How often an idle forwarder commits what the stream has taken.
const IDLE_STEP: Duration = Duration::from_millis(200);

/// Escapes a token for a Kafka topic name: `[A-Za-z0-9-]` stay, every other
/// byte is `_XX`.
fn escape(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

fn unescape(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn prefix(ns: &str) -> String {
    super::kafka_ns_prefix("prism-ps", ns)
}

fn kafka_topic(ns: &str, topic: &str) -> Result<String, Error> {
    let escaped: Vec<String> = topic.split('.').map(escape).collect();
    let name = format!("{}{}", prefix(ns), escaped.join("."));
    if name.len() > MAX_KAFKA_TOPIC {
        return Err(Error::invalid_argument(
            "INVALID_TOPIC",
            format!(
                "topic `{topic}` is too long for Kafka once namespaced and escaped ({} of {MAX_KAFKA_TOPIC} characters)",
                name.len()
            ),
        )
        .with("topic", topic));
    }
    Ok(name)
}

/// The Prism topic of a Kafka topic name in the namespace, if it is one.
fn prism_topic(ns: &str, name: &str) -> Option<String> {
    let rest = name.strip_prefix(&prefix(ns))?;
    let tokens: Option<Vec<String>> = rest.split('.').map(unescape).collect();
    Some(tokens?.join("."))
}

/// The regex librdkafka matches topic names with.
fn topic_regex(ns: &str, pattern: &TopicPattern) -> String {
    let tokens: Vec<String> = pattern
        .tokens()
        .iter()
        .map(|t| match t {
            // Escaped tokens hold only [A-Za-z0-9_-]: nothing to quote.
            Token::Literal(l) => escape(l),
            Token::One => "[^.]+".to_string(),
            Token::Rest => ".+".to_string(),
        })
        .collect();
    format!("^{}{}$", prefix(ns).replace('.', "\\."), tokens.join("\\."))
}

/// Whether the group has handed this member its partitions yet.
#[derive(Default)]
struct Assigned {
    done: AtomicBool,
    notify: Notify,
}

impl Assigned {
    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.done.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// Tells Subscribe when the group has handed this member its partitions.
struct AssignContext(Arc<Assigned>);

impl ClientContext for AssignContext {}

impl ConsumerContext for AssignContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.0.done.store(true, Ordering::Release);
            self.0.notify.notify_waiters();
        }
    }
}

type PsConsumer = StreamConsumer<AssignContext>;

/// Offsets of events handed to the sink, waiting for the stream to take
/// them before they are committed.
struct Pending {
    /// (sequence of the push, partition key, next offset)
    queue: VecDeque<(u64, (String, i32), i64)>,
    pushed: u64,
}

impl Pending {
    /// Offsets to commit now that the stream has taken `taken` events.
    fn due(&mut self, taken: u64) -> HashMap<(String, i32), i64> {
        let mut out = HashMap::new();
        while self.queue.front().is_some_and(|(seq, ..)| *seq < taken) {
            if let Some((_, tp, next)) = self.queue.pop_front() {
                out.insert(tp, next);
            }
        }
        out
    }
}

fn commit(consumer: &PsConsumer, offsets: HashMap<(String, i32), i64>) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, p), next) in offsets {
        let _ = tpl.add_partition_offset(&topic, p, Offset::Offset(next));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(error = %e, "kafka pubsub commit deferred");
    }
}

impl KafkaBackend {
    /// Existing Kafka topics (and partition counts) the pattern matches.
    async fn matching_topics(
        &self,
        ns: &str,
        pattern: &TopicPattern,
    ) -> Result<Vec<(String, i32)>, Error> {
        let producer = self.producer()?;
        let meta = blocking(move || producer.client().fetch_metadata(None, META_TIMEOUT))
            .await?
            .map_err(|e| self.unavailable(e))?;
        Ok(meta
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .filter(|t| prism_topic(ns, t.name()).is_some_and(|topic| pattern.matches(&topic)))
            .map(|t| (t.name().to_string(), t.partitions().len() as i32))
            .collect())
    }
}

#[async_trait]
impl PubSubBasic for KafkaBackend {
    async fn publish(&self, ns: &str, partitions: i32, event: &Event) -> Result<(), Error> {
        let name = kafka_topic(ns, &event.topic)?;
        let producer = self.producer()?;
        let count = self.ensure_topic(&name, partitions).await?;
        let partition = (self.round_robin.fetch_add(1, Ordering::Relaxed) % count as u64) as i32;
        let payload = event.encode();
        let record = FutureRecord::<str, [u8]>::to(&name)
            .payload(&payload)
            .partition(partition)
            .timestamp(event.timestamp_ms);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(e, _)| self.unavailable(e))
    }

    async fn subscribe(
        &self,
        ns: &str,
        spec: &SubscriberSpec,
        sink: Arc<EventSink>,
    ) -> Result<Box<dyn Subscriber>, Error> {
        let group_id = match &spec.queue_group {
            Some(group) => format!(
                "{}{group}.{}",
                prefix(ns),
                short_hash(spec.pattern.as_str())
            ),
            None => format!("{}~{}", prefix(ns), spec.id),
        };
        let existing = self.matching_topics(ns, &spec.pattern).await?;
        let mut config: ClientConfig = self.config();
        config
            .set("group.id", &group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("topic.metadata.refresh.interval.ms", "500")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500");
        let regex = topic_regex(ns, &spec.pattern);
        let assigned = Arc::new(Assigned::default());
        let consumer = {
            let context = AssignContext(assigned.clone());
            let existing = existing.clone();
            blocking(move || -> Result<PsConsumer, rdkafka::error::KafkaError> {
                let consumer: PsConsumer = config.create_with_context(context)?;
                // A new group starts at the end of what exists.
                let mut tpl = TopicPartitionList::new();
                for (name, count) in &existing {
                    for p in 0..*count {
                        tpl.add_partition(name, p);
                    }
                }
                if tpl.count() > 0 {
                    let committed = consumer.committed_offsets(tpl, META_TIMEOUT)?;
                    let fresh = committed
                        .elements()
                        .iter()
                        .all(|e| !matches!(e.offset(), Offset::Offset(_)));
                    if fresh {
                        let mut ends = TopicPartitionList::new();
                        for (name, count) in &existing {
                            for p in 0..*count {
                                let (_, high) = consumer.fetch_watermarks(name, p, META_TIMEOUT)?;
                                ends.add_partition_offset(name, p, Offset::Offset(high))?;
                            }
                        }
                        consumer.commit(&ends, CommitMode::Sync)?;
                    }
                }
                consumer.subscribe(&[&regex])?;
                Ok(consumer)
            })
            .await?
            .map_err(|e| self.unavailable(e))?
        };
        let pattern = spec.pattern.clone();
        let since_ms = spec.queue_group.is_none().then_some(spec.since_ms);
        let commits = spec.queue_group.is_some();
        let auto_ack = spec.auto_acknowledge;
        let ns_owned = ns.to_string();
        let admin = self.admin()?;
        let lost = super::kv::unavailable(&self.name, "the brokers ended the subscription");
        // The forwarder owns the consumer: it alone drops it, off the async
        // threads (closing a consumer blocks).
        let forwarder = {
            let group_id = group_id.clone();
            Forwarder::spawn(&spec.runtime, move |mut stop| async move {
                let mut pending = Pending {
                    queue: VecDeque::new(),
                    pushed: 0,
                };
                loop {
                    if commits && !auto_ack {
                        commit(&consumer, pending.due(sink.taken.load(Ordering::Relaxed)));
                    }
                    let room = tokio::select! {
                        _ = &mut stop => break,
                        room = sink.room() => room,
                    };
                    if !room {
                        break;
                    }
                    let received = tokio::select! {
                        _ = &mut stop => break,
                        r = tokio::time::timeout(IDLE_STEP, consumer.recv()) => r,
                    };
                    let message = match received {
                        Err(_) => continue,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "kafka pubsub consumer error");
                            if matches!(e, rdkafka::error::KafkaError::MessageConsumption(_)) {
                                continue;
                            }
                            sink.end(SinkEnd::Failed(lost));
                            break;
                        }
                        Ok(Ok(m)) => m,
                    };
                    let tp = (message.topic().to_string(), message.partition());
                    let next = message.offset() + 1;
                    let event = message.payload().and_then(Event::decode);
                    drop(message);
                    let Some(event) = event else { continue };
                    let wanted = pattern.matches(&event.topic)
                        && prism_topic(&ns_owned, &tp.0).as_deref() == Some(event.topic.as_str())
                        && since_ms.is_none_or(|since| event.timestamp_ms >= since);
                    if !wanted {
                        continue;
                    }
                    if !sink.push(Arc::new(event)) {
                        break;
                    }
                    if commits {
                        if auto_ack {
                            commit(&consumer, HashMap::from([(tp, next)]));
                        } else {
                            pending.queue.push_back((pending.pushed, tp, next));
                        }
                    }
                    pending.pushed += 1;
                }
                if commits && !auto_ack {
                    commit(&consumer, pending.due(sink.taken.load(Ordering::Relaxed)));
                }
                // Leaving the group blocks; a private group is then deleted.
                let _ = tokio::task::spawn_blocking(move || {
                    consumer.unsubscribe();
                    drop(consumer);
                })
                .await;
                if !commits {
                    let _ = admin
                        .delete_groups(
                            &[&group_id],
                            &AdminOptions::new().operation_timeout(Some(META_TIMEOUT)),
                        )
                        .await;
                }
            })
        };
        // Once partitions are assigned, events published from now on are
        // this member's or another member's; with no topic yet there is
        // nothing to wait for.
        if !existing.is_empty()
            && tokio::time::timeout(ASSIGN_WAIT, assigned.wait())
                .await
                .is_err()
        {
            tracing::warn!(group = %group_id, "kafka group assigned no partitions in time");
        }
        Ok(Box::new(forwarder))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_escape_round_trip_and_regexes_follow_patterns() {
        let name = kafka_topic("ns", "a*b.user_1.x y").unwrap();
        assert_eq!(name, "prism-ps.ns.a_2Ab.user_5F1.x_20y");
        assert_eq!(prism_topic("ns", &name).as_deref(), Some("a*b.user_1.x y"));
        assert_eq!(prism_topic("other", &name), None);
        let p = TopicPattern::parse("events.user.*").unwrap();
        assert_eq!(
            topic_regex("ns", &p),
            r"^prism-ps\.ns\.events\.user\.[^.]+$"
        );
        let p = TopicPattern::parse("a*b.>").unwrap();
        assert_eq!(topic_regex("ns", &p), r"^prism-ps\.ns\.a_2Ab\..+$");
        assert!(kafka_topic("ns", &"x".repeat(300)).is_err());
    }
}
