//! The Kafka backend via rdkafka: the queue interfaces (this file) and
//! PubSub (`kafka_pubsub.rs`).
//!
//! A topic is the Kafka topic `prism.<namespace>.<topic>` (created on first
//! publish with the config's partitions); publishing waits for the broker's
//! delivery ack. A consumer group is the Kafka group `prism.<namespace>.<group>`
//! with auto-commit off. Kafka knows offsets, not per-message acks, so the
//! gateway keeps a ledger per group: delivered messages wait there for
//! Acknowledge (redelivered after the visibility timeout, attempts counted;
//! the highest offset delivered per partition rides along as commit
//! metadata, so a gateway started after a crash counts on from there),
//! and a member commits the contiguous acknowledged prefix to Kafka. A group
//! that Kafka rebalances never hands one member a message another member
//! holds. Commit and Seek go through a member's consumer when one is
//! attached, else a standalone commit for the group. rdkafka calls that
//! block run on the blocking pool.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, Headers, Message as _, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
    ClientConfig, Offset, TopicPartitionList,
};

use super::queue::{
    bad_partition, check_positions, check_within_log, choose_partition, topic_not_found,
    ConsumerSpec, PartitionStats, PublishItem, Published, QueueBasic, QueueConsumer, QueueMessage,
    QueueVisibility, Start, StreamConsumerGroups, StreamReplay, TopicStats,
};
use super::PoolSpec;
use crate::error::Error;

pub(super) const META_TIMEOUT: Duration = Duration::from_secs(5);

fn kafka_topic(ns: &str, topic: &str) -> String {
    format!("{}{topic}", super::kafka_ns_prefix("prism", ns))
}

fn kafka_group(ns: &str, group: &str) -> String {
    format!("{}{group}", super::kafka_ns_prefix("prism", ns))
}

struct Held {
    member: u64,
    deadline_ms: u64,
    message: QueueMessage,
}

/// The gateway's view of one group's deliveries.
#[derive(Default)]
struct Ledger {
    held: BTreeMap<(i32, i64), Held>,
    /// Acknowledged, not yet committed to Kafka.
    acked: BTreeSet<(i32, i64)>,
    /// Next offset to commit per partition, as far as this gateway knows.
    committed: HashMap<i32, i64>,
    attempts: HashMap<(i32, i64), i32>,
    /// Per partition, the highest offset ever delivered to the group: kept
    /// with the group's committed offsets in Kafka (commit metadata), so a
    /// gateway started after a crash knows which messages it redelivers
    /// (their `attempt` counts on from 2).
    delivered: HashMap<i32, i64>,
    /// Positions advanced but not yet confirmed committed (no member to
    /// commit through, or the commit failed): the next commit carries them.
    unconfirmed: HashMap<i32, i64>,
    members: HashMap<u64, Arc<StreamConsumer>>,
    /// The group's commits go one at a time, each built from the ledger
    /// when its turn comes ([`commit_pending`]): an earlier, lower position
    /// can never land after a later one.
    commits: Arc<tokio::sync::Mutex<()>>,
}

impl Ledger {
    /// Notes where a partition's deliveries begin: the first offset this
    /// gateway receives in it is where the group stood (its committed
    /// offset, or where its start position put it), so the acknowledged
    /// prefix is counted from there.
    fn note_position(&mut self, (partition, offset): (i32, i64)) {
        self.committed.entry(partition).or_insert(offset);
    }

    /// The commit metadata for a partition: what was delivered so far.
    fn metadata(&self, partition: i32) -> String {
        self.delivered
            .get(&partition)
            .map_or_else(String::new, |d| format!("{DELIVERED_PREFIX}{d}"))
    }

    /// Attempts before this delivery of `key`: what this gateway counted,
    /// or 1 when an earlier one (a gateway that died) delivered it.
    fn attempts_before(&mut self, key: (i32, i64)) -> &mut i32 {
        let before = i32::from(self.delivered.get(&key.0).is_some_and(|d| key.1 <= *d));
        self.attempts.entry(key).or_insert(before)
    }

    /// What to commit now: positions not yet confirmed, the acknowledged
    /// prefix's advance, and the current position of each partition in
    /// `delivered_in` (to record its delivered mark) — per partition the
    /// furthest.
    fn pending(&mut self, delivered_in: &BTreeSet<i32>) -> Vec<(i32, i64)> {
        let mut out: BTreeMap<i32, i64> = self.unconfirmed.drain().collect();
        let advanced = self.advance();
        let current = delivered_in
            .iter()
            .filter_map(|p| Some((*p, *self.committed.get(p)?)));
        for (p, o) in advanced.into_iter().chain(current) {
            let at = out.entry(p).or_insert(o);
            *at = (*at).max(o);
        }
        out.into_iter().collect()
    }

    /// Positions whose commit could not be made: kept for the next one.
    fn unconfirm(&mut self, offsets: &[(i32, i64)]) {
        for &(p, o) in offsets {
            let at = self.unconfirmed.entry(p).or_insert(o);
            *at = (*at).max(o);
        }
    }

    fn done(&self, key: (i32, i64)) -> bool {
        self.acked.contains(&key) || self.committed.get(&key.0).is_some_and(|c| key.1 < *c)
    }

    /// Offsets to commit: per partition, past the contiguous acked prefix
    /// that starts where the group stood (see [`Ledger::note_position`]).
    fn advance(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        let partitions: BTreeSet<i32> = self.acked.iter().map(|k| k.0).collect();
        for p in partitions {
            // Without a known position nothing is committed: an acked
            // offset past unacknowledged ones must not move the group on.
            let Some(&start) = self.committed.get(&p) else {
                continue;
            };
            let mut next = start;
            while self.acked.remove(&(p, next)) {
                self.attempts.remove(&(p, next));
                next += 1;
            }
            if next != start {
                self.committed.insert(p, next);
                out.push((p, next));
            }
        }
        out
    }
}

/// Commits what the group has pending ([`Ledger::pending`]) through
/// `member` (synchronously, on the blocking pool), its turn taken in the
/// group's commit queue. Without a member, or when the commit fails, the
/// positions stay pending for the next commit; returns whether everything
/// pending was committed.
///
/// The work runs in a task of its own that the caller awaits: an
/// Acknowledge whose client goes away mid-commit must not give up its turn
/// (or its positions) while the commit is still in flight. The task ends
/// when the commit does (librdkafka bounds it).
async fn commit_pending(
    ledger: &Arc<Mutex<Ledger>>,
    topic_name: &str,
    member: Option<Arc<StreamConsumer>>,
    delivered_in: &BTreeSet<i32>,
) -> bool {
    // Nothing that could be pending: no task, no turn (every fetch asks).
    {
        let l = ledger.lock();
        if l.unconfirmed.is_empty() && l.acked.is_empty() && delivered_in.is_empty() {
            return true;
        }
    }
    let work = commit_in_turn(
        ledger.clone(),
        topic_name.to_string(),
        member,
        delivered_in.clone(),
    );
    tokio::spawn(work).await.unwrap_or(false)
}

async fn commit_in_turn(
    ledger: Arc<Mutex<Ledger>>,
    topic_name: String,
    member: Option<Arc<StreamConsumer>>,
    delivered_in: BTreeSet<i32>,
) -> bool {
    let (ledger, topic_name, delivered_in) = (&ledger, topic_name.as_str(), &delivered_in);
    let gate = ledger.lock().commits.clone();
    let _turn = gate.lock().await;
    let (offsets, tpl) = {
        let mut l = ledger.lock();
        let offsets = l.pending(delivered_in);
        let Some(_) = member.as_ref().filter(|_| !offsets.is_empty()) else {
            l.unconfirm(&offsets);
            return offsets.is_empty();
        };
        let mut tpl = TopicPartitionList::new();
        for &(p, o) in &offsets {
            if tpl
                .add_partition_offset(topic_name, p, Offset::Offset(o))
                .is_ok()
            {
                if let Some(mut e) = tpl.find_partition(topic_name, p) {
                    e.set_metadata(l.metadata(p));
                }
            }
        }
        (offsets, tpl)
    };
    let Some(member) = member else {
        return false;
    };
    match blocking(move || member.commit(&tpl, CommitMode::Sync)).await {
        Ok(Ok(())) => true,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.message,
                Ok(Ok(())) => String::new(),
            };
            tracing::warn!(topic = topic_name, error = %why, "kafka commit failed; kept for the next");
            ledger.lock().unconfirm(&offsets);
            false
        }
    }
}

/// Commit metadata: `prism-delivered:<offset>`, the highest offset
/// delivered to the group in that partition.
const DELIVERED_PREFIX: &str = "prism-delivered:";

/// The delivered offset a committed offset's metadata carries.
fn delivered_from(metadata: &str) -> Option<i64> {
    metadata.strip_prefix(DELIVERED_PREFIX)?.parse().ok()
}

/// The largest record the gateway's producers send (librdkafka's
/// `message.max.bytes`, set explicitly); brokers' default limit is about
/// the same (1 MiB).
pub const MAX_RECORD_BYTES: usize = 1_000_000;

/// What a record costs beyond its key, value and headers (batch and record
/// framing), counted generously.
const RECORD_OVERHEAD: usize = 256;

/// Why the brokers refused a record itself, or None for a condition of the
/// brokers (down, timed out, queue full) that may pass.
fn refusal(e: &KafkaError) -> Option<String> {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code()? {
        C::MessageSizeTooLarge | C::InvalidMessageSize => {
            Some("it is larger than the brokers accept".into())
        }
        C::InvalidMessage | C::InvalidRecord | C::BadMessage => Some(format!("{e}")),
        _ => None,
    }
}

/// Whether a relayed record of this message and headers fits the
/// producer's record limit (the mailbox id is its key as well).
pub fn check_record(message: &[u8], headers: &BTreeMap<String, String>) -> Result<(), Error> {
    let key = headers
        .get(super::relay::HEADER_MAILBOX)
        .map_or(0, String::len);
    let size = headers
        .iter()
        .fold(message.len() + key + RECORD_OVERHEAD, |n, (k, v)| {
            n.saturating_add(k.len() + v.len() + 8)
        });
    if size > MAX_RECORD_BYTES {
        return Err(super::relay::refused(format!(
            "the message and its metadata come to about {size} bytes as a Kafka record; the \
             relay's producer sends at most {MAX_RECORD_BYTES}"
        )));
    }
    Ok(())
}

/// The Kafka backend: Queue (this file) and PubSub (`kafka_pubsub.rs`).
pub struct KafkaBackend {
    pub name: String,
    brokers: String,
    spec: PoolSpec,
    clients: RwLock<Option<(FutureProducer, Arc<AdminClient<DefaultClientContext>>)>>,
    ledgers: DashMap<(String, String, String), Arc<Mutex<Ledger>>>,
    pub(super) round_robin: AtomicU64,
    known_topics: DashMap<String, i32>,
    members: AtomicU64,
    /// The outbox relays' producer: one request in flight per broker, so
    /// a retried batch can never overtake a later one.
    relay_producer: RwLock<Option<FutureProducer>>,
}

impl QueueVisibility for KafkaBackend {}

/// Runs an rdkafka call that blocks on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Error::internal("a blocking kafka call was cancelled"))
}

impl KafkaBackend {
    pub fn open(name: &str, brokers: &str, spec: &PoolSpec) -> Result<Self, String> {
        if brokers.trim().is_empty() {
            return Err(format!("backend `{name}`: kafka needs a broker list"));
        }
        Ok(KafkaBackend {
            name: name.to_string(),
            brokers: brokers.to_string(),
            spec: spec.clone(),
            clients: RwLock::new(None),
            ledgers: DashMap::new(),
            round_robin: AtomicU64::new(0),
            known_topics: DashMap::new(),
            members: AtomicU64::new(0),
            relay_producer: RwLock::new(None),
        })
    }

    pub(super) fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set(
                "socket.timeout.ms",
                self.spec.connect_timeout.as_millis().max(1000).to_string(),
            )
            // A publish the brokers cannot take answers UNAVAILABLE within
            // the connect timeout rather than waiting in librdkafka's queue.
            .set(
                "message.timeout.ms",
                self.spec.connect_timeout.as_millis().max(1000).to_string(),
            )
            .set("message.max.bytes", MAX_RECORD_BYTES.to_string())
            // librdkafka leaves Nagle on by default: a small produce or
            // fetch then waits out the peer's delayed ACK (40 ms on Linux).
            .set("socket.nagle.disable", "true")
            // Topics are created by Publish only: a metadata lookup or a
            // subscription must not create them as a side effect.
            .set("allow.auto.create.topics", "false");
        c
    }

    pub(super) fn unavailable(&self, e: impl std::fmt::Display) -> Error {
        tracing::warn!(backend = %self.name, error = %e, "kafka error");
        super::kv::unavailable(&self.name, "cannot reach the brokers")
    }

    /// A failed send: the broker refusing the record itself (INVALID_ARGUMENT
    /// with `reason`; sending it again fails again), or the brokers'
    /// condition (UNAVAILABLE).
    fn send_error(&self, e: KafkaError, reason: &'static str) -> Error {
        match refusal(&e) {
            Some(why) => Error::invalid_argument(
                reason,
                format!(
                    "the Kafka brokers of backend `{}` refused the record: {why}",
                    self.name
                ),
            ),
            None => self.unavailable(e),
        }
    }

    pub async fn connect(&self) -> Result<(), Error> {
        if self.clients.read().is_none() {
            let producer: FutureProducer =
                self.config().create().map_err(|e| self.unavailable(e))?;
            let admin: AdminClient<DefaultClientContext> =
                self.config().create().map_err(|e| self.unavailable(e))?;
            *self.clients.write() = Some((producer, Arc::new(admin)));
        }
        self.ping().await
    }

    pub fn is_connected(&self) -> bool {
        self.clients.read().is_some()
    }

    pub(super) fn producer(&self) -> Result<FutureProducer, Error> {
        self.clients
            .read()
            .as_ref()
            .map(|(p, _)| p.clone())
            .ok_or_else(|| super::kv::unavailable(&self.name, "not connected yet"))
    }

    /// A metadata round trip.
    pub async fn ping(&self) -> Result<(), Error> {
        let producer = self.producer()?;
        blocking(move || {
            producer
                .client()
                .fetch_metadata(None, META_TIMEOUT)
                .map(|_| ())
        })
        .await?
        .map_err(|e| self.unavailable(e))
    }

    fn relay_producer(&self) -> Result<FutureProducer, Error> {
        if let Some(p) = self.relay_producer.read().as_ref() {
            return Ok(p.clone());
        }
        let producer: FutureProducer = self
            .config()
            .set("max.in.flight.requests.per.connection", "1")
            .set("linger.ms", "1")
            .create()
            .map_err(|e| self.unavailable(e))?;
        *self.relay_producer.write() = Some(producer.clone());
        Ok(producer)
    }

    /// Publishes outbox rows to `topic` (created with one partition when
    /// missing), keyed by mailbox so a mailbox stays in one partition and in
    /// order; returns how many leading rows the broker acknowledged.
    pub async fn relay(
        &self,
        topic: &str,
        rows: &[super::transact::MailboxRow],
    ) -> (usize, Option<Error>) {
        let setup = async {
            let _connected = self.producer()?;
            self.ensure_topic(topic, 1).await?;
            self.relay_producer()
        };
        let producer = match setup.await {
            Ok(p) => p,
            Err(e) => return (0, Some(e)),
        };
        let sends = rows.iter().map(|row| {
            let producer = producer.clone();
            async move {
                let mut headers = OwnedHeaders::new();
                for (k, v) in super::relay::headers(row) {
                    headers = headers.insert(Header {
                        key: &k,
                        value: Some(v.as_bytes()),
                    });
                }
                let record = FutureRecord::<str, [u8]>::to(topic)
                    .key(row.mailbox.as_str())
                    .payload(&row.message)
                    .headers(headers);
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| self.send_error(e, super::relay::REFUSED))
            }
        });
        let results = futures::future::join_all(sends).await;
        match results.iter().position(Result::is_err) {
            None => (rows.len(), None),
            Some(i) => (i, results[i].clone().err()),
        }
    }

    /// The partition count of a topic, or None when it does not exist.
    pub(super) async fn partitions(&self, topic: &str) -> Result<Option<i32>, Error> {
        let producer = self.producer()?;
        let name = topic.to_string();
        let meta = blocking(move || producer.client().fetch_metadata(Some(&name), META_TIMEOUT))
            .await?
            .map_err(|e| self.unavailable(e))?;
        Ok(meta
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0))
    }

    pub(super) fn admin(&self) -> Result<Arc<AdminClient<DefaultClientContext>>, Error> {
        self.clients
            .read()
            .as_ref()
            .map(|(_, a)| a.clone())
            .ok_or_else(|| super::kv::unavailable(&self.name, "not connected yet"))
    }

    /// The partition count of a topic, creating it with `partitions` when
    /// missing; known topics are remembered (no metadata round trip).
    pub(super) async fn ensure_topic(&self, topic: &str, partitions: i32) -> Result<i32, Error> {
        if let Some(n) = self.known_topics.get(topic) {
            return Ok(*n);
        }
        let n = self.find_or_create_topic(topic, partitions).await?;
        self.known_topics.insert(topic.to_string(), n);
        Ok(n)
    }

    async fn find_or_create_topic(&self, topic: &str, partitions: i32) -> Result<i32, Error> {
        if let Some(n) = self.partitions(topic).await? {
            return Ok(n);
        }
        let admin = self.admin()?;
        let new = NewTopic::new(topic, partitions.max(1), TopicReplication::Fixed(1));
        // "Already exists" from a concurrent creator is fine.
        let _ = admin
            .create_topics(
                [&new],
                &AdminOptions::new().operation_timeout(Some(META_TIMEOUT)),
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        for _ in 0..50 {
            if let Some(n) = self.partitions(topic).await? {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(super::kv::unavailable(
            &self.name,
            "the topic was not created in time",
        ))
    }

    fn ledger(&self, ns: &str, topic: &str, group: &str) -> Arc<Mutex<Ledger>> {
        self.ledgers
            .entry((ns.to_string(), topic.to_string(), group.to_string()))
            .or_default()
            .clone()
    }

    /// Commits offsets for a group: through an attached member, else as a
    /// standalone consumer of the group.
    async fn commit_offsets(
        &self,
        ns: &str,
        topic: &str,
        group: &str,
        offsets: &[(i32, i64)],
        seek: bool,
    ) -> Result<(), Error> {
        let name = kafka_topic(ns, topic);
        let count = self
            .partitions(&name)
            .await?
            .ok_or_else(|| topic_not_found(topic))?;
        check_positions(topic, count, offsets)?;
        // Every offset is checked against its partition's high watermark
        // before anything moves.
        let producer = self.producer()?;
        let (marks_name, wanted) = (name.clone(), offsets.to_vec());
        let marks = blocking(move || {
            wanted
                .iter()
                .map(|&(p, _)| {
                    producer
                        .client()
                        .fetch_watermarks(&marks_name, p, META_TIMEOUT)
                        .map(|(_, high)| (p, high))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await?
        .map_err(|e| self.unavailable(e))?;
        let mut ends = vec![i64::MAX; count as usize];
        for (p, high) in marks {
            ends[p as usize] = high;
        }
        check_within_log(&ends, offsets)?;
        let ledger = self.ledger(ns, topic, group);
        let gate = ledger.lock().commits.clone();
        let _turn = gate.lock().await;
        let (tpl, members) = {
            let mut l = ledger.lock();
            let mut tpl = TopicPartitionList::new();
            for &(p, o) in offsets {
                l.committed.insert(p, o);
                l.unconfirmed.remove(&p);
                l.held.retain(|k, _| k.0 != p || (!seek && k.1 >= o));
                l.acked.retain(|k| k.0 != p || (!seek && k.1 >= o));
                l.attempts.retain(|k, _| k.0 != p || (!seek && k.1 >= o));
                if seek {
                    // Replayed messages are delivered afresh.
                    l.delivered.remove(&p);
                }
                let metadata = l.metadata(p);
                tpl.add_partition_offset(&name, p, Offset::Offset(o))
                    .map_err(|e| self.unavailable(e))?;
                if let Some(mut e) = tpl.find_partition(&name, p) {
                    e.set_metadata(metadata);
                }
            }
            let members: Vec<Arc<StreamConsumer>> = l.members.values().cloned().collect();
            (tpl, members)
        };
        let config = self.config();
        let group_id = kafka_group(ns, group);
        let topic_name = name.clone();
        let seek_offsets = offsets.to_vec();
        blocking(move || -> Result<(), rdkafka::error::KafkaError> {
            if let Some(member) = members.first() {
                if seek {
                    for m in &members {
                        for &(p, o) in &seek_offsets {
                            let _ =
                                m.seek(&topic_name, p, Offset::Offset(o), Duration::from_secs(2));
                        }
                    }
                }
                member.commit(&tpl, CommitMode::Sync)
            } else {
                let standalone: BaseConsumer = config
                    .clone()
                    .set("group.id", &group_id)
                    .set("enable.auto.commit", "false")
                    .create()?;
                standalone.commit(&tpl, CommitMode::Sync)
            }
        })
        .await?
        .map_err(|e| self.unavailable(e))
    }
}

#[async_trait]
impl QueueBasic for KafkaBackend {
    async fn publish(
        &self,
        ns: &str,
        topic: &str,
        partitions: i32,
        items: Vec<PublishItem>,
    ) -> Vec<Result<Published, Error>> {
        let name = kafka_topic(ns, topic);
        let setup = async {
            Ok::<_, Error>((
                self.producer()?,
                self.ensure_topic(&name, partitions).await?,
            ))
        };
        let (producer, count) = match setup.await {
            Ok(v) => v,
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        // Every record in flight at once; results keep the request order.
        let now = super::epoch_ms();
        let sends = items.iter().map(|item| {
            let rr = self
                .round_robin
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = choose_partition(item, count, rr);
            let producer = producer.clone();
            let name = name.clone();
            async move {
                if !(0..count).contains(&p) {
                    return Err(bad_partition(topic, p, count));
                }
                let mut headers = OwnedHeaders::new();
                for (k, v) in &item.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    });
                }
                let mut record = FutureRecord::<str, [u8]>::to(&name)
                    .payload(&item.payload)
                    .partition(p)
                    .timestamp(now)
                    .headers(headers);
                if let Some(key) = &item.partition_key {
                    record = record.key(key.as_str());
                }
                // Bounded by the connect timeout: with the brokers gone the
                // caller hears UNAVAILABLE then (the outcome is unknown, as
                // for any UNAVAILABLE publish), not at librdkafka's leisure.
                let limit = self.spec.connect_timeout.max(Duration::from_secs(1));
                match tokio::time::timeout(limit, producer.send(record, limit)).await {
                    Ok(Ok(delivery)) => Ok(Published {
                        partition: delivery.partition,
                        offset: delivery.offset,
                        timestamp_ms: now,
                    }),
                    Ok(Err((e, _))) => Err(self.send_error(e, "MESSAGE_REFUSED")),
                    Err(_) => {
                        Err(self.unavailable("no delivery report within the connect timeout"))
                    }
                }
            }
        });
        let results = futures::future::join_all(sends).await;
        results
    }

    async fn subscribe(
        &self,
        ns: &str,
        spec: ConsumerSpec,
    ) -> Result<Box<dyn QueueConsumer>, Error> {
        let name = kafka_topic(ns, &spec.topic);
        let count = self
            .partitions(&name)
            .await?
            .ok_or_else(|| topic_not_found(&spec.topic))?;
        let group_id = kafka_group(ns, &spec.group);
        let reset = match spec.start {
            Start::Latest => "latest",
            _ => "earliest",
        };
        let mut config = self.config();
        config
            .set("group.id", &group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", reset)
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500");
        let topic_name = name.clone();
        let start = spec.start;
        let consumer = blocking(
            move || -> Result<(StreamConsumer, Vec<(i32, i64)>), rdkafka::error::KafkaError> {
                let consumer: StreamConsumer = config.create()?;
                // A new group (nothing committed) starts where asked, fixed
                // now by a commit: "latest" is the end of the log as
                // Subscribe answers, not when the broker gets round to
                // assigning partitions (a message published in between
                // would be missed).
                if let Start::Offset(_) | Start::Timestamp(_) | Start::Latest = start {
                    let mut tpl = TopicPartitionList::new();
                    for p in 0..count {
                        tpl.add_partition(&topic_name, p);
                    }
                    let committed = consumer.committed_offsets(tpl, META_TIMEOUT)?;
                    let fresh = committed
                        .elements()
                        .iter()
                        .all(|e| !matches!(e.offset(), Offset::Offset(_)));
                    if fresh {
                        let positions = match start {
                            Start::Latest => {
                                let mut tpl = TopicPartitionList::new();
                                for p in 0..count {
                                    let (_, high) =
                                        consumer.fetch_watermarks(&topic_name, p, META_TIMEOUT)?;
                                    tpl.add_partition_offset(&topic_name, p, Offset::Offset(high))?;
                                }
                                tpl
                            }
                            Start::Offset(o) => {
                                let mut tpl = TopicPartitionList::new();
                                for p in 0..count {
                                    let (low, high) =
                                        consumer.fetch_watermarks(&topic_name, p, META_TIMEOUT)?;
                                    tpl.add_partition_offset(
                                        &topic_name,
                                        p,
                                        Offset::Offset(o.clamp(low, high)),
                                    )?;
                                }
                                tpl
                            }
                            Start::Timestamp(t) => {
                                // The timestamp goes in each partition's offset.
                                let mut tpl = TopicPartitionList::new();
                                for p in 0..count {
                                    tpl.add_partition_offset(&topic_name, p, Offset::Offset(t))?;
                                }
                                consumer.offsets_for_times(tpl, META_TIMEOUT)?
                            }
                            _ => {
                                unreachable!("only latest, offset and timestamp starts reach here")
                            }
                        };
                        let mut fixed = TopicPartitionList::new();
                        for e in positions.elements() {
                            let offset = match e.offset() {
                                Offset::Offset(o) => Offset::Offset(o),
                                _ => {
                                    let (_, high) = consumer.fetch_watermarks(
                                        &topic_name,
                                        e.partition(),
                                        META_TIMEOUT,
                                    )?;
                                    Offset::Offset(high)
                                }
                            };
                            fixed.add_partition_offset(&topic_name, e.partition(), offset)?;
                        }
                        consumer.commit(&fixed, CommitMode::Sync)?;
                    }
                }
                // What earlier gateways delivered (commit metadata).
                let mut tpl = TopicPartitionList::new();
                for p in 0..count {
                    tpl.add_partition(&topic_name, p);
                }
                let delivered: Vec<(i32, i64)> = consumer
                    .committed_offsets(tpl, META_TIMEOUT)?
                    .elements()
                    .iter()
                    .filter_map(|e| Some((e.partition(), delivered_from(e.metadata())?)))
                    .collect();
                consumer.subscribe(&[&topic_name])?;
                Ok((consumer, delivered))
            },
        )
        .await?
        .map_err(|e| self.unavailable(e))?;
        let (consumer, delivered) = consumer;
        let consumer = Arc::new(consumer);
        let member = self
            .members
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ledger = self.ledger(ns, &spec.topic, &spec.group);
        {
            let mut l = ledger.lock();
            l.members.insert(member, consumer.clone());
            for (p, d) in delivered {
                let known = l.delivered.entry(p).or_insert(d);
                *known = (*known).max(d);
            }
        }
        Ok(Box::new(KafkaConsumer {
            consumer: Some(consumer),
            ledger,
            member,
            topic_name: name,
            spec,
            backend: self.name.clone(),
        }))
    }

    async fn acknowledge(
        &self,
        ns: &str,
        topic: &str,
        group: &str,
        partition: i32,
        offset: i64,
    ) -> Result<bool, Error> {
        let Some(ledger) = self
            .ledgers
            .get(&(ns.to_string(), topic.to_string(), group.to_string()))
            .map(|l| l.clone())
        else {
            return Ok(false);
        };
        // The acknowledgement is durable before it is answered when it
        // completes the acknowledged prefix: the new position is committed
        // now (a gateway that dies later redelivers none of it). One past
        // an unacknowledged message waits in the ledger for the prefix; a
        // commit that fails is retried with the next (a gateway crash before
        // then redelivers those messages, counted as attempts).
        let member = {
            let mut l = ledger.lock();
            if l.held.remove(&(partition, offset)).is_none() {
                return Ok(false);
            }
            l.acked.insert((partition, offset));
            l.members.values().next().cloned()
        };
        let name = kafka_topic(ns, topic);
        commit_pending(&ledger, &name, member, &BTreeSet::new()).await;
        Ok(true)
    }

    async fn forget_group(&self, ns: &str, topic: &str, group: &str) {
        self.ledgers
            .remove(&(ns.to_string(), topic.to_string(), group.to_string()));
    }

    async fn topic_stats(&self, ns: &str, topic: &str) -> Result<TopicStats, Error> {
        let name = kafka_topic(ns, topic);
        let count = self
            .partitions(&name)
            .await?
            .ok_or_else(|| topic_not_found(topic))?;
        let producer = self.producer()?;
        let marks = blocking(move || {
            (0..count)
                .map(|p| {
                    producer
                        .client()
                        .fetch_watermarks(&name, p, META_TIMEOUT)
                        .map(|m| (p, m))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await?
        .map_err(|e| self.unavailable(e))?;
        Ok(TopicStats {
            partitions: marks
                .into_iter()
                .map(|(p, (low, high))| PartitionStats {
                    partition: p,
                    earliest: low,
                    latest: high,
                })
                .collect(),
        })
    }
}

#[async_trait]
impl StreamConsumerGroups for KafkaBackend {
    async fn commit(
        &self,
        ns: &str,
        topic: &str,
        group: &str,
        offsets: &[(i32, i64)],
    ) -> Result<Vec<(i32, i64)>, Error> {
        self.commit_offsets(ns, topic, group, offsets, false)
            .await?;
        Ok(offsets.to_vec())
    }
}

#[async_trait]
impl StreamReplay for KafkaBackend {
    async fn seek(
        &self,
        ns: &str,
        topic: &str,
        group: &str,
        positions: &[(i32, i64)],
    ) -> Result<(), Error> {
        self.commit_offsets(ns, topic, group, positions, true).await
    }
}

struct KafkaConsumer {
    consumer: Option<Arc<StreamConsumer>>,
    ledger: Arc<Mutex<Ledger>>,
    member: u64,
    topic_name: String,
    spec: ConsumerSpec,
    backend: String,
}

impl KafkaConsumer {
    fn unavailable(&self, e: impl std::fmt::Display) -> Error {
        tracing::warn!(backend = %self.backend, error = %e, "kafka error");
        super::kv::unavailable(&self.backend, "cannot reach the brokers")
    }

    fn now_ms() -> u64 {
        super::epoch_ms().max(0) as u64
    }

    /// Commits what is pending, recording that `delivered_in` delivered
    /// further (the delivered marks ride along as commit metadata). A
    /// failure is logged and kept for the next commit: the messages go out
    /// regardless.
    async fn commit(&self, consumer: &Arc<StreamConsumer>, delivered_in: &BTreeSet<i32>) {
        commit_pending(
            &self.ledger,
            &self.topic_name,
            Some(consumer.clone()),
            delivered_in,
        )
        .await;
    }

    fn redeliveries(&self, max: usize) -> Vec<QueueMessage> {
        let now = Self::now_ms();
        let deadline = now + self.spec.visibility_timeout.as_millis() as u64;
        let mut l = self.ledger.lock();
        let due: Vec<(i32, i64)> = l
            .held
            .iter()
            .filter(|(_, h)| h.deadline_ms <= now)
            .map(|(k, _)| *k)
            .take(max)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for key in due {
            let attempt = {
                let a = l.attempts_before(key);
                *a = (*a).max(1) + 1;
                *a
            };
            if let Some(h) = l.held.get_mut(&key) {
                h.member = self.member;
                h.deadline_ms = deadline;
                h.message.attempt = attempt;
                out.push(h.message.clone());
            }
        }
        out
    }
}

#[async_trait]
impl QueueConsumer for KafkaConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<QueueMessage>, Error> {
        let Some(consumer) = self.consumer.clone() else {
            return Ok(Vec::new());
        };
        self.commit(&consumer, &BTreeSet::new()).await;
        let mut out = self.redeliveries(max);
        let mut newly = BTreeSet::new();
        let until = tokio::time::Instant::now() + wait;
        while out.len() < max {
            let remaining = until.saturating_duration_since(tokio::time::Instant::now());
            let limit = if out.is_empty() {
                remaining
            } else {
                Duration::ZERO
            };
            let received =
                match tokio::time::timeout(limit.max(Duration::from_millis(1)), consumer.recv())
                    .await
                {
                    Err(_) => break,
                    Ok(Err(e)) => return Err(self.unavailable(e)),
                    Ok(Ok(m)) => m,
                };
            let key = (received.partition(), received.offset());
            let headers: HashMap<String, String> = received
                .headers()
                .map(|h| {
                    h.iter()
                        .filter_map(|hd| {
                            hd.value.map(|v| {
                                (hd.key.to_string(), String::from_utf8_lossy(v).into_owned())
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let message = QueueMessage {
                topic: self.spec.topic.clone(),
                partition: key.0,
                offset: key.1,
                payload: received.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                headers,
                timestamp_ms: received.timestamp().to_millis().unwrap_or(0),
                attempt: 1,
            };
            drop(received);
            let mut l = self.ledger.lock();
            l.note_position(key);
            // After a rebalance Kafka may hand over what another member
            // holds, or what was acknowledged but not yet committed.
            if l.done(key) || l.held.contains_key(&key) {
                continue;
            }
            let attempt = {
                let a = l.attempts_before(key);
                *a += 1;
                *a
            };
            // Kept with the group (commit metadata, below) before the
            // client sees it, so a crash after this counts it delivered.
            if l.delivered.get(&key.0).is_none_or(|d| key.1 > *d) {
                l.delivered.insert(key.0, key.1);
                newly.insert(key.0);
            }
            let message = QueueMessage { attempt, ..message };
            l.held.insert(
                key,
                Held {
                    member: self.member,
                    deadline_ms: Self::now_ms() + self.spec.visibility_timeout.as_millis() as u64,
                    message: message.clone(),
                },
            );
            out.push(message);
        }
        if !newly.is_empty() {
            self.commit(&consumer, &newly).await;
        }
        Ok(out)
    }

    async fn release(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        self.commit(&consumer, &BTreeSet::new()).await;
        {
            let mut l = self.ledger.lock();
            l.members.remove(&self.member);
            if l.members.is_empty() {
                // Kafka re-reads from the committed offset; attempts stay.
                l.held.clear();
            } else {
                for h in l.held.values_mut().filter(|h| h.member == self.member) {
                    h.deadline_ms = 0;
                }
            }
        }
        // Closing a consumer leaves the group, which may block.
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            let mut l = self.ledger.lock();
            l.members.remove(&self.member);
            for h in l.held.values_mut().filter(|h| h.member == self.member) {
                h.deadline_ms = 0;
            }
            drop(l);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn_blocking(move || drop(consumer));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_prefix_starts_where_the_group_stood() {
        let mut l = Ledger::default();
        for offset in 5..8 {
            l.note_position((0, offset));
        }
        // Only the last of three delivered is acknowledged: nothing moves.
        l.acked.insert((0, 7));
        assert!(l.advance().is_empty());
        assert!(!l.done((0, 5)) && !l.done((0, 6)));
        // The first two follow: all three are committed at once.
        l.acked.insert((0, 5));
        l.acked.insert((0, 6));
        assert_eq!(l.advance(), vec![(0, 8)]);
        // An acknowledgement in a partition never delivered moves nothing.
        l.acked.insert((1, 3));
        assert!(l.advance().is_empty());
    }

    #[test]
    fn what_an_earlier_gateway_delivered_counts_as_an_attempt() {
        let mut l = Ledger::default();
        // A new gateway reads the group's commit metadata.
        l.delivered
            .insert(0, delivered_from("prism-delivered:41").unwrap());
        assert_eq!(l.metadata(0), "prism-delivered:41");
        assert_eq!(delivered_from(""), None);
        assert_eq!(delivered_from("prism-delivered:x"), None);
        // Offsets up to 41 were delivered before: their next delivery is
        // the second; later ones are first deliveries.
        *l.attempts_before((0, 41)) += 1;
        *l.attempts_before((0, 42)) += 1;
        *l.attempts_before((1, 0)) += 1;
        assert_eq!(l.attempts[&(0, 41)], 2);
        assert_eq!(l.attempts[&(0, 42)], 1);
        assert_eq!(l.attempts[&(1, 0)], 1);
    }
}
