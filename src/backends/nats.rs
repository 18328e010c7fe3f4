//! The NATS backend: JetStream for the queue interfaces (this file), core
//! NATS for PubSub (`nats_pubsub.rs`).
//!
//! A topic's partition is a stream of its own (`PRISM_<hash>_<p>`, subject
//! `prism.<namespace>.<topic>.<p>`), so a partition's offsets are its stream
//! sequence minus one and stay dense. A consumer group is a durable pull
//! consumer per partition stream with explicit acks, `ack_wait` = the
//! visibility timeout (JetStream redelivers, and counts the attempts) and a
//! start policy applied when the group is created. Messages in flight are
//! remembered by the gateway so Acknowledge can ack them by id. Commit and
//! Seek recreate the group's consumer at the offset (subscribers skip the
//! partition for the moment it is missing). Idle consumers poll.

use std::{collections::HashMap, str::FromStr, sync::Arc, time::Duration};

use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use dashmap::DashMap;
use futures::StreamExt;
use parking_lot::RwLock;
use sha2::{Digest, Sha256};

use super::queue::{
    bad_partition, check_positions, check_within_log, choose_partition, topic_not_found,
    ConsumerSpec, PartitionStats, PublishItem, Published, QueueBasic, QueueConsumer, QueueMessage,
    QueueVisibility, Start, StreamConsumerGroups, StreamReplay, TopicStats,
};
use super::PoolSpec;
use crate::error::Error;

/// How often an idle consumer asks for new messages.
const POLL: Duration = Duration::from_millis(50);

/// A delivered message awaiting acknowledgement, and which member has it.
type InFlight = DashMap<(String, String, String, i32, i64), (String, jetstream::Message)>;

/// The NATS backend: Queue on JetStream streams and durable consumers
/// (this file), PubSub on core NATS subjects (`nats_pubsub.rs`).
pub struct NatsBackend {
    pub name: String,
    url: String,
    spec: PoolSpec,
    conn: RwLock<Option<(async_nats::Client, jetstream::Context)>>,
    /// Subjects an outbox relay has made sure a stream captures.
    relay_subjects: dashmap::DashSet<String>,
    in_flight: Arc<InFlight>,
    round_robin: std::sync::atomic::AtomicU64,
}

impl QueueVisibility for NatsBackend {}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

fn stream_name(ns: &str, topic: &str, partition: i32) -> String {
    format!("PRISM_{}_{partition}", short_hash(&[ns, topic]))
}

fn subject(ns: &str, topic: &str, partition: i32) -> String {
    format!("prism.{}.{topic}.{partition}", super::ns_token(ns))
}

fn consumer_name(group: &str) -> String {
    format!("G_{}", short_hash(&[group]))
}

impl NatsBackend {
    pub fn open(name: &str, url: &str, spec: &PoolSpec) -> Result<Self, String> {
        if !(url.starts_with("nats://") || url.starts_with("tls://")) {
            return Err(format!(
                "backend `{name}`: nats url must start with nats:// or tls://"
            ));
        }
        Ok(NatsBackend {
            name: name.to_string(),
            url: url.to_string(),
            spec: spec.clone(),
            conn: RwLock::new(None),
            relay_subjects: dashmap::DashSet::new(),
            in_flight: Arc::default(),
            round_robin: Default::default(),
        })
    }

    /// Connects once; afterwards the client reconnects by itself.
    pub async fn connect(&self) -> Result<(), Error> {
        if self.conn.read().is_some() {
            return Ok(());
        }
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(self.spec.connect_timeout)
            .connect(self.url.as_str())
            .await
            .map_err(|e| self.unavailable(e))?;
        let js = jetstream::new(client.clone());
        *self.conn.write() = Some((client, js));
        Ok(())
    }

    pub fn is_connected(&self) -> bool {
        self.conn
            .read()
            .as_ref()
            .is_some_and(|(c, _)| c.connection_state() == async_nats::connection::State::Connected)
    }

    /// A JetStream round trip.
    /// A JetStream round trip: a stream lookup that JetStream answers with
    /// "not found" (the account-info call does not parse on every server).
    pub async fn ping(&self) -> Result<(), Error> {
        let js = self.js()?;
        match js.get_stream("PRISM_HEALTH_PROBE").await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(_)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// The JetStream context, while the client is connected: a call made
    /// while it reconnects is UNAVAILABLE at once instead of waiting in
    /// the client's buffer for the server to return.
    fn js(&self) -> Result<jetstream::Context, Error> {
        self.connected().map(|(_, js)| js)
    }

    fn connected(&self) -> Result<(async_nats::Client, jetstream::Context), Error> {
        let conn = self
            .conn
            .read()
            .clone()
            .ok_or_else(|| super::kv::unavailable(&self.name, "not connected yet"))?;
        match conn.0.connection_state() {
            async_nats::connection::State::Connected => Ok(conn),
            _ => Err(super::kv::unavailable(
                &self.name,
                "the connection to the server is lost; reconnecting",
            )),
        }
    }

    /// Publishes outbox rows to `subject` through JetStream, in order, each
    /// with `Nats-Msg-Id` set to its message id (the stream drops a resend
    /// inside its duplicate window); returns how many leading rows the
    /// server acknowledged. A stream capturing the subject is created when
    /// none does.
    pub async fn relay(
        &self,
        subject: &str,
        rows: &[super::transact::MailboxRow],
    ) -> (usize, Option<Error>) {
        let js = match self.js() {
            Ok(js) => js,
            Err(e) => return (0, Some(e)),
        };
        if !self.relay_subjects.contains(subject) {
            let created = js
                .get_or_create_stream(stream::Config {
                    name: format!("PRISM_RELAY_{}", short_hash(&[subject])),
                    subjects: vec![subject.to_string()],
                    description: Some("prism outbox relay".into()),
                    ..Default::default()
                })
                .await;
            match created {
                Ok(_) => {
                    self.relay_subjects.insert(subject.to_string());
                }
                // Another stream may already capture the subject: the
                // publish acks below tell.
                Err(e) => tracing::debug!(backend = %self.name, error = %e, "relay stream"),
            }
        }
        let mut acks = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let mut fields = super::relay::headers(row);
            fields.insert("Nats-Msg-Id".into(), row.message_id.clone());
            let headers = match self.message_headers(&row.message, &fields) {
                Ok(h) => h,
                // The rows before it go out; this one is refused.
                Err(e) => {
                    return match self.acknowledged(acks).await {
                        Ok(()) => (i, Some(e)),
                        Err((n, failed)) => (n, Some(failed)),
                    }
                }
            };
            let sent = js
                .publish_with_headers(subject.to_string(), headers, row.message.clone().into())
                .await;
            match sent {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    acks.clear();
                    return (0, Some(self.unavailable(e)));
                }
            }
        }
        match self.acknowledged(acks).await {
            Ok(()) => (rows.len(), None),
            Err((n, failed)) => (n, Some(failed)),
        }
    }

    /// Waits for JetStream's acknowledgements in order: Err carries how
    /// many came before the first that failed, and why.
    async fn acknowledged(
        &self,
        acks: Vec<async_nats::jetstream::context::PublishAckFuture>,
    ) -> Result<(), (usize, Error)> {
        for (i, ack) in acks.into_iter().enumerate() {
            if let Err(e) = ack.await {
                let failed = match ack_refusal(&e) {
                    Some(why) => super::relay::refused(format!(
                        "the NATS server of backend `{}` refused the message: {why}",
                        self.name
                    )),
                    None => self.unavailable(e),
                };
                return Err((i, failed));
            }
        }
        Ok(())
    }

    /// The NATS headers for a message, if the server could ever take it:
    /// header names and values it can carry, and a size within its
    /// `max_payload` (known once connected); else a refusal saying why.
    pub fn message_headers(
        &self,
        message: &[u8],
        headers: &std::collections::BTreeMap<String, String>,
    ) -> Result<async_nats::HeaderMap, Error> {
        let map = header_map(headers).map_err(super::relay::refused)?;
        if let Ok(client) = self.client() {
            let size = headers.iter().fold(message.len() + 14, |n, (k, v)| {
                n.saturating_add(k.len() + v.len() + 4)
            });
            let max = client.max_payload();
            if size > max {
                return Err(super::relay::refused(format!(
                    "the message and its headers come to {size} bytes; the NATS server of \
                     backend `{}` takes at most {max}",
                    self.name
                )));
            }
        }
        Ok(map)
    }

    /// The core NATS client (PubSub).
    pub(super) fn client(&self) -> Result<async_nats::Client, Error> {
        self.connected().map(|(c, _)| c)
    }

    pub(super) fn unavailable(&self, e: impl std::fmt::Display) -> Error {
        tracing::warn!(backend = %self.name, error = %e, "nats error");
        super::kv::unavailable(&self.name, "cannot reach the server")
    }

    /// The partition count of a topic, from its first stream's description.
    async fn partitions(
        &self,
        js: &jetstream::Context,
        ns: &str,
        topic: &str,
    ) -> Result<Option<i32>, Error> {
        match js.get_stream(stream_name(ns, topic, 0)).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(|e| self.unavailable(e))?;
                let count = info
                    .config
                    .description
                    .as_deref()
                    .and_then(|d| d.strip_prefix("prism partitions="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                Ok(Some(count))
            }
            // "stream not found" is a JetStream API error; anything else is
            // the connection.
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(_)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.unavailable(e)),
        }
    }

    async fn ensure_topic(
        &self,
        js: &jetstream::Context,
        ns: &str,
        topic: &str,
        partitions: i32,
    ) -> Result<i32, Error> {
        if let Some(count) = self.partitions(js, ns, topic).await? {
            return Ok(count);
        }
        let count = partitions.max(1);
        // Partition 0 last: its existence means the topic is complete.
        for p in (0..count).rev() {
            js.get_or_create_stream(stream::Config {
                name: stream_name(ns, topic, p),
                subjects: vec![subject(ns, topic, p)],
                description: Some(format!("prism partitions={count}")),
                ..Default::default()
            })
            .await
            .map_err(|e| self.unavailable(e))?;
        }
        Ok(self.partitions(js, ns, topic).await?.unwrap_or(count))
    }

    fn consumer_config(
        &self,
        group: &str,
        policy: jetstream::consumer::DeliverPolicy,
        spec_ack_wait: Duration,
        max_attempts: u32,
    ) -> pull::Config {
        pull::Config {
            durable_name: Some(consumer_name(group)),
            description: Some(format!("prism group {group}")),
            deliver_policy: policy,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: spec_ack_wait,
            max_deliver: if max_attempts == 0 {
                -1
            } else {
                i64::from(max_attempts)
            },
            ..Default::default()
        }
    }

    /// Recreates a group's consumer on one partition so it next delivers
    /// `offset` (Commit and Seek).
    async fn reposition(
        &self,
        ns: &str,
        topic: &str,
        group: &str,
        positions: &[(i32, i64)],
    ) -> Result<(), Error> {
        let js = self.js()?;
        let count = self
            .partitions(&js, ns, topic)
            .await?
            .ok_or_else(|| topic_not_found(topic))?;
        check_positions(topic, count, positions)?;
        // Every position is checked against its log's end before any moves.
        let mut ends = vec![i64::MAX; count as usize];
        for &(p, _) in positions {
            let mut stream = js
                .get_stream(stream_name(ns, topic, p))
                .await
                .map_err(|e| self.unavailable(e))?;
            let info = stream.info().await.map_err(|e| self.unavailable(e))?;
            ends[p as usize] = info.state.last_sequence as i64;
        }
        check_within_log(&ends, positions)?;
        for &(p, o) in positions {
            let stream = js
                .get_stream(stream_name(ns, topic, p))
                .await
                .map_err(|e| self.unavailable(e))?;
            let name = consumer_name(group);
            let (ack_wait, max_deliver) = match stream.get_consumer::<pull::Config>(&name).await {
                Ok(mut c) => {
                    let info = c.info().await.map_err(|e| self.unavailable(e))?;
                    (info.config.ack_wait, info.config.max_deliver)
                }
                Err(_) => (Duration::from_secs(30), -1),
            };
            let _ = stream.delete_consumer(&name).await;
            self.in_flight
                .retain(|k, _| !(k.0 == ns && k.1 == topic && k.2 == group && k.3 == p));
            let mut config = self.consumer_config(
                group,
                jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: o as u64 + 1,
                },
                ack_wait,
                0,
            );
            config.max_deliver = max_deliver;
            stream
                .create_consumer(config)
                .await
                .map_err(|e| self.unavailable(e))?;
        }
        Ok(())
    }
}

#[async_trait]
impl QueueBasic for NatsBackend {
    async fn publish(
        &self,
        ns: &str,
        topic: &str,
        partitions: i32,
        items: Vec<PublishItem>,
    ) -> Vec<Result<Published, Error>> {
        let js = match self.js() {
            Ok(js) => js,
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        let count = match self.ensure_topic(&js, ns, topic, partitions).await {
            Ok(c) => c,
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            let rr = self
                .round_robin
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = choose_partition(&item, count, rr);
            if !(0..count).contains(&p) {
                results.push(Err(bad_partition(topic, p, count)));
                continue;
            }
            let fields = item.headers.into_iter().collect();
            let headers = match self.message_headers(&item.payload, &fields) {
                Ok(h) => h,
                Err(e) => {
                    results.push(Err(Error::invalid_argument("MESSAGE_REFUSED", e.message)));
                    continue;
                }
            };
            let now = super::epoch_ms();
            let acked = async {
                js.publish_with_headers(subject(ns, topic, p), headers, item.payload.into())
                    .await?
                    .await
            }
            .await;
            results.push(match acked {
                Ok(ack) => Ok(Published {
                    partition: p,
                    offset: ack.sequence as i64 - 1,
                    timestamp_ms: now,
                }),
                Err(e) => Err(self.unavailable(e)),
            });
        }
        results
    }

    async fn subscribe(
        &self,
        ns: &str,
        spec: ConsumerSpec,
    ) -> Result<Box<dyn QueueConsumer>, Error> {
        let js = self.js()?;
        let count = self
            .partitions(&js, ns, &spec.topic)
            .await?
            .ok_or_else(|| topic_not_found(&spec.topic))?;
        let policy = match spec.start {
            Start::Earliest | Start::Committed => jetstream::consumer::DeliverPolicy::All,
            Start::Latest => jetstream::consumer::DeliverPolicy::New,
            Start::Offset(o) => jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: o.max(0) as u64 + 1,
            },
            Start::Timestamp(t) => jetstream::consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(t) * 1_000_000,
                )
                .map_err(|_| {
                    Error::invalid_argument("INVALID_TIMESTAMP", "start timestamp is out of range")
                })?,
            },
        };
        let name = consumer_name(&spec.group);
        for p in 0..count {
            let stream = js
                .get_stream(stream_name(ns, &spec.topic, p))
                .await
                .map_err(|e| self.unavailable(e))?;
            // A new group starts at the policy; an existing one goes on.
            if stream.get_consumer::<pull::Config>(&name).await.is_err() {
                stream
                    .create_consumer(self.consumer_config(
                        &spec.group,
                        policy,
                        spec.visibility_timeout,
                        spec.max_attempts,
                    ))
                    .await
                    .map_err(|e| self.unavailable(e))?;
            }
        }
        Ok(Box::new(NatsConsumer {
            js,
            ns: ns.to_string(),
            spec,
            partitions: count,
            member: hex::encode(rand::random::<[u8; 8]>()),
            in_flight: self.in_flight.clone(),
            next_partition: 0,
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
        let key = (
            ns.to_string(),
            topic.to_string(),
            group.to_string(),
            partition,
            offset,
        );
        let Some((_, (_, message))) = self.in_flight.remove(&key) else {
            return Ok(false);
        };
        message
            .double_ack()
            .await
            .map(|_| true)
            .map_err(|e| self.unavailable(e))
    }

    async fn forget_group(&self, ns: &str, topic: &str, group: &str) {
        let Ok(js) = self.js() else { return };
        let Ok(Some(count)) = self.partitions(&js, ns, topic).await else {
            return;
        };
        for p in 0..count {
            if let Ok(stream) = js.get_stream(stream_name(ns, topic, p)).await {
                let _ = stream.delete_consumer(&consumer_name(group)).await;
            }
        }
        self.in_flight
            .retain(|k, _| !(k.0 == ns && k.1 == topic && k.2 == group));
    }

    async fn topic_stats(&self, ns: &str, topic: &str) -> Result<TopicStats, Error> {
        let js = self.js()?;
        let count = self
            .partitions(&js, ns, topic)
            .await?
            .ok_or_else(|| topic_not_found(topic))?;
        let mut partitions = Vec::with_capacity(count as usize);
        for p in 0..count {
            let mut stream = js
                .get_stream(stream_name(ns, topic, p))
                .await
                .map_err(|e| self.unavailable(e))?;
            let state = &stream.info().await.map_err(|e| self.unavailable(e))?.state;
            let latest = state.last_sequence as i64;
            let earliest = if state.messages == 0 {
                latest
            } else {
                state.first_sequence as i64 - 1
            };
            partitions.push(PartitionStats {
                partition: p,
                earliest,
                latest,
            });
        }
        Ok(TopicStats { partitions })
    }
}

#[async_trait]
impl StreamReplay for NatsBackend {
    async fn seek(
        &self,
        ns: &str,
        topic: &str,
        group: &str,
        positions: &[(i32, i64)],
    ) -> Result<(), Error> {
        self.reposition(ns, topic, group, positions).await
    }
}

#[async_trait]
impl StreamConsumerGroups for NatsBackend {
    async fn commit(
        &self,
        ns: &str,
        topic: &str,
        group: &str,
        offsets: &[(i32, i64)],
    ) -> Result<Vec<(i32, i64)>, Error> {
        self.reposition(ns, topic, group, offsets).await?;
        Ok(offsets.to_vec())
    }
}

struct NatsConsumer {
    js: jetstream::Context,
    ns: String,
    spec: ConsumerSpec,
    partitions: i32,
    member: String,
    in_flight: Arc<InFlight>,
    next_partition: i32,
    backend: String,
}

impl NatsConsumer {
    fn unavailable(&self, e: impl std::fmt::Display) -> Error {
        tracing::warn!(backend = %self.backend, error = %e, "nats error");
        super::kv::unavailable(&self.backend, "cannot reach the server")
    }

    /// One pass over the partitions without waiting.
    async fn pull(&mut self, max: usize) -> Result<Vec<QueueMessage>, Error> {
        let mut out = Vec::new();
        for i in 0..self.partitions {
            if out.len() >= max {
                break;
            }
            let p = (self.next_partition + i) % self.partitions;
            let stream = self
                .js
                .get_stream(stream_name(&self.ns, &self.spec.topic, p))
                .await
                .map_err(|e| self.unavailable(e))?;
            // A Commit or Seek recreates the consumer: for that moment it is
            // missing, and this partition has nothing to give yet.
            let consumer: jetstream::consumer::PullConsumer =
                match stream.get_consumer(&consumer_name(&self.spec.group)).await {
                    Ok(c) => c,
                    // JetStream's "consumer not found" (10014).
                    Err(e) if e.to_string().contains("not found") => continue,
                    Err(e) => return Err(self.unavailable(e)),
                };
            let mut batch = consumer
                .fetch()
                .max_messages(max - out.len())
                .messages()
                .await
                .map_err(|e| self.unavailable(e))?;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| self.unavailable(e))?;
                let info = message.info().map_err(|e| self.unavailable(e))?;
                let offset = info.stream_sequence as i64 - 1;
                let attempt = info.delivered as i32;
                let published = info.published.unix_timestamp_nanos() / 1_000_000;
                let headers: HashMap<String, String> = message
                    .headers
                    .as_ref()
                    .map(|h| {
                        h.iter()
                            .filter_map(|(k, v)| {
                                v.first().map(|v| (k.to_string(), v.as_str().to_string()))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(QueueMessage {
                    topic: self.spec.topic.clone(),
                    partition: p,
                    offset,
                    payload: message.payload.to_vec(),
                    headers,
                    timestamp_ms: published as i64,
                    attempt,
                });
                self.in_flight.insert(
                    (
                        self.ns.clone(),
                        self.spec.topic.clone(),
                        self.spec.group.clone(),
                        p,
                        offset,
                    ),
                    (self.member.clone(), message),
                );
            }
        }
        self.next_partition = (self.next_partition + 1) % self.partitions.max(1);
        Ok(out)
    }
}

#[async_trait]
impl QueueConsumer for NatsConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<QueueMessage>, Error> {
        // Polled: wait for messages, bounded by `wait`.
        let until = tokio::time::Instant::now() + wait;
        loop {
            let batch = self.pull(max.max(1)).await?;
            let now = tokio::time::Instant::now();
            if !batch.is_empty() || now >= until {
                return Ok(batch);
            }
            tokio::time::sleep(POLL.min(until - now)).await;
        }
    }

    async fn release(&mut self) {
        // Hand this member's messages back now rather than after ack_wait.
        let mine: Vec<_> = self
            .in_flight
            .iter()
            .filter(|e| e.value().0 == self.member)
            .map(|e| e.key().clone())
            .collect();
        for key in mine {
            if let Some((_, (_, message))) = self.in_flight.remove(&key) {
                let _ = message.ack_with(jetstream::AckKind::Nak(None)).await;
            }
        }
    }
}

/// Client-given header pairs as NATS headers, or why NATS cannot carry
/// them (a name that is empty or has a control character, a space, a
/// non-ASCII character or ':'; a value with a line break).
pub(super) fn header_map<'a>(
    pairs: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<async_nats::HeaderMap, String> {
    let mut headers = async_nats::HeaderMap::new();
    for (k, v) in pairs {
        let name = async_nats::header::HeaderName::from_str(k)
            .ok()
            .filter(|_| !k.is_empty())
            .ok_or_else(|| {
                format!(
                    "`{}` cannot be a NATS header name (printable ASCII without ':' or spaces)",
                    k.escape_debug().take(64).collect::<String>()
                )
            })?;
        let value = async_nats::HeaderValue::from_str(v).map_err(|_| {
            format!(
                "the value of header `{}` has a line break, which NATS headers cannot carry",
                k.escape_debug().take(64).collect::<String>()
            )
        })?;
        headers.insert(name, value);
    }
    Ok(headers)
}

/// Why JetStream refused a message itself (larger than the stream or the
/// server takes), or None for the server's condition (down, timed out).
fn ack_refusal(e: &jetstream::context::PublishError) -> Option<String> {
    use std::error::Error as _;
    match e.kind() {
        jetstream::context::PublishErrorKind::MaxPayloadExceeded => Some(e.to_string()),
        jetstream::context::PublishErrorKind::Other => e
            .source()?
            .downcast_ref::<jetstream::Error>()
            .filter(|j| j.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
            .map(ToString::to_string),
        _ => None,
    }
}
