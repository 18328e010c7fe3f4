//! The queue model every Queue backend shares (seed 002 §3): topics of
//! partitions with offsets, consumer groups, at-least-once delivery with
//! per-message acknowledgement, and one trait per thin interface:
//!
//! - `queue_basic` ([`QueueBasic`]): publish, subscribe (a [`QueueConsumer`]),
//!   acknowledge, topic info;
//! - `queue_visibility` ([`QueueVisibility`]): a delivered message that is not
//!   acknowledged within the visibility timeout is delivered again, with its
//!   attempt counted;
//! - `stream_consumer_groups` ([`StreamConsumerGroups`]): groups sharing the
//!   work, and explicit commits;
//! - `stream_replay` ([`StreamReplay`]): seek, and starting at an offset or
//!   a timestamp.
//!
//! Offsets count from 0 per partition. A committed offset is the offset of
//! the next message the group will consume (Kafka's convention), and
//! acknowledging advances it over the contiguous acknowledged prefix.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;

use crate::error::{Error, ErrorKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
    /// Wall-clock publish time, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// Deliveries so far, this one included (1 = first delivery).
    pub attempt: i32,
}

impl QueueMessage {
    pub fn id(&self) -> String {
        message_id(&self.topic, self.partition, self.offset)
    }
}

/// A message's id: stable between publisher and subscriber.
pub fn message_id(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}/{partition}/{offset}")
}

/// Parses a message id back into (topic, partition, offset).
pub fn parse_message_id(id: &str) -> Option<(&str, i32, i64)> {
    let (rest, offset) = id.rsplit_once('/')?;
    let (topic, partition) = rest.rsplit_once('/')?;
    Some((topic, partition.parse().ok()?, offset.parse().ok()?))
}

#[derive(Debug, Clone, Default)]
pub struct PublishItem {
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
    pub partition_key: Option<String>,
    pub partition: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
}

/// Where a new group starts. An existing group goes on where it is, its
/// unacknowledged messages delivered again; Seek moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
    Committed,
    /// The same offset in every partition (clamped to what is retained).
    Offset(i64),
    /// The first message at or after this wall-clock time, ms.
    Timestamp(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStats {
    pub partition: i32,
    pub earliest: i64,
    /// The next offset to be written (high watermark).
    pub latest: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStats {
    pub partitions: Vec<PartitionStats>,
}

/// What a subscription asks of its backend.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub topic: String,
    /// The group's name; the service names a subscription's private group
    /// `~<subscription id>` and drops it with `forget_group` when it ends.
    pub group: String,
    pub start: Start,
    pub visibility_timeout: Duration,
    /// Deliveries before a message is dead-lettered (backends with
    /// queue_dead_letter); 0 = never.
    pub max_attempts: u32,
}

/// One member of a consumer group, owned by a SubscriptionActor.
#[async_trait]
pub trait QueueConsumer: Send {
    /// Up to `max` messages: redeliveries first, then new ones. Waits at
    /// most `wait` for something to arrive; an empty batch is normal.
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<QueueMessage>, Error>;

    /// Leaves the group: what this member holds unacknowledged goes back to
    /// the group for redelivery at once (otherwise it would after the
    /// visibility timeout).
    async fn release(&mut self);
}

/// queue_basic.
#[async_trait]
pub trait QueueBasic: Send + Sync {
    /// Appends messages; creates the topic (with `partitions`) when missing.
    /// One result per item, in order.
    async fn publish(
        &self,
        ns: &str,
        topic: &str,
        partitions: i32,
        items: Vec<PublishItem>,
    ) -> Vec<Result<Published, Error>>;

    /// Joins (or creates) a consumer group.
    async fn subscribe(
        &self,
        ns: &str,
        spec: ConsumerSpec,
    ) -> Result<Box<dyn QueueConsumer>, Error>;

    /// Acknowledges one delivered message of `group`; false when it was not
    /// awaiting acknowledgement there.
    async fn acknowledge(
        &self,
        ns: &str,
        topic: &str,
        group: &str,
        partition: i32,
        offset: i64,
    ) -> Result<bool, Error>;

    /// Drops a subscription's own group (named `~…`) once it has ended.
    async fn forget_group(&self, ns: &str, topic: &str, group: &str);

    async fn topic_stats(&self, ns: &str, topic: &str) -> Result<TopicStats, Error>;
}

/// queue_visibility: unacknowledged deliveries come back after the
/// visibility timeout. A marker: the consumer implements the behaviour.
pub trait QueueVisibility: Send + Sync {}

/// queue_dead_letter: a message delivered `max_attempts` times without an
/// acknowledgement moves to the topic `<topic>.dead-letter`. A marker.
pub trait QueueDeadLetter: Send + Sync {}

/// The dead-letter topic of a topic.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dead-letter")
}

/// stream_consumer_groups: explicit commits.
#[async_trait]
pub trait StreamConsumerGroups: Send + Sync {
    /// Sets committed offsets; returns them as stored.
    async fn commit(
        &self,
        ns: &str,
        topic: &str,
        group: &str,
        offsets: &[(i32, i64)],
    ) -> Result<Vec<(i32, i64)>, Error>;
}

/// stream_replay: moving a group's position. A seek sets both where the
/// group reads next and its committed offset.
#[async_trait]
pub trait StreamReplay: Send + Sync {
    async fn seek(
        &self,
        ns: &str,
        topic: &str,
        group: &str,
        positions: &[(i32, i64)],
    ) -> Result<(), Error>;
}

/// A backend's Queue surface.
#[derive(Clone)]
pub struct QueueHandle {
    pub basic: Arc<dyn QueueBasic>,
    pub visibility: Option<Arc<dyn QueueVisibility>>,
    pub dead_letter: Option<Arc<dyn QueueDeadLetter>>,
    pub groups: Option<Arc<dyn StreamConsumerGroups>>,
    pub replay: Option<Arc<dyn StreamReplay>>,
}

/// Declares which Queue traits a backend type implements, giving it
/// `QUEUE_INTERFACES` and `queue_handle()`.
#[macro_export]
macro_rules! queue_interfaces {
    ($ty:ty: basic $(, $iface:ident)*) => {
        impl $ty {
            pub const QUEUE_INTERFACES: &'static [$crate::backends::Interface] = &[
                $crate::backends::Interface::QueueBasic,
                $($crate::queue_interfaces!(@interface $iface),)*
            ];

            pub fn queue_handle(self: &std::sync::Arc<Self>) -> $crate::backends::queue::QueueHandle {
                #[allow(unused_mut)]
                let mut handle = $crate::backends::queue::QueueHandle {
                    basic: self.clone(),
                    visibility: None,
                    dead_letter: None,
                    groups: None,
                    replay: None,
                };
                $(handle.$iface = Some(self.clone());)*
                handle
            }
        }
    };
    (@interface visibility) => { $crate::backends::Interface::QueueVisibility };
    (@interface dead_letter) => { $crate::backends::Interface::QueueDeadLetter };
    (@interface groups) => { $crate::backends::Interface::StreamConsumerGroups };
    (@interface replay) => { $crate::backends::Interface::StreamReplay };
}

/// Topic names: 1 to 200 of `A-Z a-z 0-9 . _ -`.
pub fn check_topic(topic: &str) -> Result<(), Error> {
    let ok = !topic.is_empty()
        && topic.len() <= 200
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_argument(
            "INVALID_TOPIC",
            format!("topic `{topic}` is not valid; topics are 1 to 200 of A-Z a-z 0-9 . _ -"),
        )
        .with("topic", topic))
    }
}

pub fn topic_not_found(topic: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        "TOPIC_NOT_FOUND",
        format!("topic `{topic}` does not exist; publish to it first (topics are created on first publish)"),
    )
    .with("topic", topic)
}

pub fn bad_partition(topic: &str, partition: i32, count: i32) -> Error {
    Error::invalid_argument(
        "INVALID_PARTITION",
        format!(
            "topic `{topic}` has partitions 0 to {}; partition {partition} does not exist",
            count - 1
        ),
    )
    .with("topic", topic)
}

/// Checks (partition, offset) pairs against a topic's partition count.
pub fn check_positions(topic: &str, count: i32, positions: &[(i32, i64)]) -> Result<(), Error> {
    for &(p, o) in positions {
        if !(0..count).contains(&p) {
            return Err(bad_partition(topic, p, count));
        }
        if o < 0 {
            return Err(Error::invalid_argument(
                "INVALID_OFFSET",
                format!("offset {o} for partition {p} is negative"),
            ));
        }
    }
    Ok(())
}

/// Refuses a position past the end of its partition's log: `ends[p]` is
/// the next offset to be written, the furthest a group may commit or seek
/// to. INVALID_ARGUMENT `OFFSET_OUT_OF_RANGE` — never a group silently
/// parked beyond every future message. Call after [`check_positions`].
pub fn check_within_log(ends: &[i64], positions: &[(i32, i64)]) -> Result<(), Error> {
    for &(p, o) in positions {
        let Some(&latest) = usize::try_from(p).ok().and_then(|i| ends.get(i)) else {
            continue;
        };
        if o > latest {
            return Err(Error::invalid_argument(
                "OFFSET_OUT_OF_RANGE",
                format!(
                    "offset {o} for partition {p} is past the end of its log (the next offset \
                     is {latest})"
                ),
            )
            .with("partition", p.to_string())
            .with("latest", latest.to_string()));
        }
    }
    Ok(())
}

/// The partition for a message: explicit, by key hash, or round-robin.
pub fn choose_partition(item: &PublishItem, count: i32, round_robin: u64) -> i32 {
    if let Some(p) = item.partition {
        return p;
    }
    match &item.partition_key {
        Some(key) => {
            // FNV-1a: stable across processes and versions.
            let mut h: u64 = 0xcbf29ce484222325;
            for b in key.as_bytes() {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x100000001b3);
            }
            (h % count as u64) as i32
        }
        None => (round_robin % count as u64) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_round_trip() {
        let id = message_id("orders.eu", 2, 41);
        assert_eq!(parse_message_id(&id), Some(("orders.eu", 2, 41)));
        assert_eq!(parse_message_id("nonsense"), None);
    }

    #[test]
    fn keyed_messages_stay_on_one_partition() {
        let item = PublishItem {
            partition_key: Some("user-7".into()),
            ..Default::default()
        };
        let p = choose_partition(&item, 4, 0);
        for rr in 1..10 {
            assert_eq!(choose_partition(&item, 4, rr), p);
        }
        assert_eq!(choose_partition(&PublishItem::default(), 4, 6), 2);
    }

    #[test]
    fn topic_names_are_checked() {
        assert!(check_topic("orders.created-v1").is_ok());
        for bad in ["", "a/b", "spaces here", &"x".repeat(201)] {
            assert!(check_topic(bad).is_err(), "{bad}");
        }
    }
}
