//! Where an outbox relay publishes mailbox rows: a Kafka topic, a NATS
//! subject (through JetStream, so the broker acknowledges), or a Prism
//! PubSub topic. Every relayed message carries its mailbox id, sequence and
//! message id (headers or metadata) so consumers can drop the duplicates
//! that at-least-once delivery allows.
//!
//! [`RelaySink::publish`] sends rows in sequence order and reports how many
//! of them, from the first, the broker acknowledged: the relay marks exactly
//! those processed and sends the rest again later.

use std::{collections::BTreeMap, sync::Arc};

use async_trait::async_trait;
use serde::Deserialize;

use super::{pubsub::PubSubHandle, transact::MailboxRow, Backends};
use crate::error::Error;

/// Header / metadata keys every relayed message carries.
pub const HEADER_MAILBOX: &str = "prism-mailbox-id";
pub const HEADER_SEQUENCE: &str = "prism-sequence";
pub const HEADER_MESSAGE_ID: &str = "prism-message-id";
pub const HEADER_MESSAGE_TYPE: &str = "prism-message-type";

/// ReadMailbox metadata on a row a relay moved aside: the relays, their
/// attempts and their errors (comma-separated when several gave up).
pub const DEAD_LETTER_RELAY: &str = "prism-dead-letter-relay";
pub const DEAD_LETTER_ATTEMPTS: &str = "prism-dead-letter-attempts";
pub const DEAD_LETTER_ERROR: &str = "prism-dead-letter-error";

/// The reason of an error that says the broker refused a message itself
/// (too large, malformed): sending it again fails again. Anything else
/// (the broker down, a timeout) is the broker's condition, not the row's.
pub const REFUSED: &str = "RELAY_REFUSED";

/// The broker refused this message itself.
pub fn refused(why: impl Into<String>) -> Error {
    Error::invalid_argument(REFUSED, why)
}

/// Whether an error is the message's own fault (see [`REFUSED`]).
pub fn is_refused(e: &Error) -> bool {
    e.reason == REFUSED
}

/// A row's headers: its own metadata, then Prism's keys (which win).
pub fn headers(row: &MailboxRow) -> BTreeMap<String, String> {
    let mut h = row.metadata.clone();
    h.insert(HEADER_MAILBOX.into(), row.mailbox.clone());
    h.insert(HEADER_SEQUENCE.into(), row.sequence.to_string());
    h.insert(HEADER_MESSAGE_ID.into(), row.message_id.clone());
    if let Some(t) = &row.message_type {
        h.insert(HEADER_MESSAGE_TYPE.into(), t.clone());
    }
    h
}

/// One relay destination.
#[async_trait]
pub trait RelaySink: Send + Sync {
    /// Publishes `rows` in order; returns how many leading rows the broker
    /// acknowledged, and the error that stopped the rest.
    async fn publish(&self, rows: &[MailboxRow]) -> (usize, Option<Error>);

    /// Whether the destination could ever take this message (its size, its
    /// headers); a [`refused`] error says why not. Checked when a Write
    /// adds a row to a relayed mailbox, and again before a relay sends one
    /// written earlier.
    fn check(&self, message: &[u8], headers: &BTreeMap<String, String>) -> Result<(), Error> {
        let _ = (message, headers);
        Ok(())
    }
}

/// The headers a Write's row will carry when relayed: its metadata and
/// Prism's keys, with the longest values they can take (for size checks).
pub fn planned_headers(
    mailbox: &str,
    metadata: &BTreeMap<String, String>,
    message_type: Option<&str>,
) -> BTreeMap<String, String> {
    headers(&MailboxRow {
        // As long as the ids the SQL outbox gives (`msg-` and 24 hex digits).
        message_id: format!("msg-{}", "0".repeat(24)),
        mailbox: mailbox.to_string(),
        sequence: i64::MAX,
        message: Vec::new(),
        metadata: metadata.clone(),
        message_type: message_type.map(str::to_string),
        priority: None,
        created_ms: 0,
        processed_ms: None,
        dead_letters: Vec::new(),
    })
}

/// A Prism PubSub topic in the relay's namespace.
struct PubSubSink {
    pubsub: PubSubHandle,
    namespace: String,
    topic: String,
}

#[async_trait]
impl RelaySink for PubSubSink {
    async fn publish(&self, rows: &[MailboxRow]) -> (usize, Option<Error>) {
        for (i, row) in rows.iter().enumerate() {
            let event = super::pubsub::Event {
                id: row.message_id.clone(),
                topic: self.topic.clone(),
                payload: row.message.clone(),
                metadata: headers(row).into_iter().collect(),
                timestamp_ms: super::epoch_ms(),
                correlation_id: None,
                reply_to: None,
            };
            if let Err(e) = self.pubsub.basic.publish(&self.namespace, 1, &event).await {
                return (i, Some(e));
            }
        }
        (rows.len(), None)
    }
}

struct KafkaSink {
    kafka: Arc<super::kafka::KafkaBackend>,
    topic: String,
}

#[async_trait]
impl RelaySink for KafkaSink {
    async fn publish(&self, rows: &[MailboxRow]) -> (usize, Option<Error>) {
        self.kafka.relay(&self.topic, rows).await
    }

    fn check(&self, message: &[u8], headers: &BTreeMap<String, String>) -> Result<(), Error> {
        super::kafka::check_record(message, headers)
    }
}

struct NatsSink {
    nats: Arc<super::nats::NatsBackend>,
    subject: String,
}

#[async_trait]
impl RelaySink for NatsSink {
    async fn publish(&self, rows: &[MailboxRow]) -> (usize, Option<Error>) {
        self.nats.relay(&self.subject, rows).await
    }

    /// As published: with `Nats-Msg-Id` (the message id) added.
    fn check(&self, message: &[u8], headers: &BTreeMap<String, String>) -> Result<(), Error> {
        let mut sent = headers.clone();
        let id = headers.get(HEADER_MESSAGE_ID).cloned().unwrap_or_default();
        sent.insert("Nats-Msg-Id".into(), id);
        self.nats.message_headers(message, &sent).map(|_| ())
    }
}

/// Where a relay publishes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum RelayTarget {
    /// A Prism PubSub topic of the namespace, on a pubsub backend.
    Pubsub { backend: String, topic: String },
    /// A Kafka topic (created when missing), acknowledged by the broker.
    Kafka { backend: String, topic: String },
    /// A NATS subject, published through JetStream (a stream capturing the
    /// subject is created when missing) so the broker acknowledges it.
    Nats { backend: String, subject: String },
}

impl RelayTarget {
    pub fn backend(&self) -> &str {
        match self {
            RelayTarget::Pubsub { backend, .. }
            | RelayTarget::Kafka { backend, .. }
            | RelayTarget::Nats { backend, .. } => backend,
        }
    }

    /// `kind:destination`, for logs and the actor tree.
    pub fn describe(&self) -> String {
        match self {
            RelayTarget::Pubsub { topic, .. } => format!("pubsub:{topic}"),
            RelayTarget::Kafka { topic, .. } => format!("kafka:{topic}"),
            RelayTarget::Nats { subject, .. } => format!("nats:{subject}"),
        }
    }
}

/// The sink for a configured target (validation checked the kinds).
pub fn sink(
    target: &RelayTarget,
    namespace: &str,
    backends: &Backends,
) -> Result<Arc<dyn RelaySink>, String> {
    let backend = backends.get(target.backend()).ok_or_else(|| {
        format!(
            "relay target backend `{}` is not configured",
            target.backend()
        )
    })?;
    let wrong = || {
        format!(
            "relay target backend `{}` ({}) cannot take {}",
            backend.name,
            backend.kind,
            target.describe()
        )
    };
    Ok(match (target, &backend.client) {
        (RelayTarget::Pubsub { topic, .. }, _) => Arc::new(PubSubSink {
            pubsub: backend.pubsub.clone().ok_or_else(wrong)?,
            namespace: namespace.to_string(),
            topic: topic.clone(),
        }),
        (RelayTarget::Kafka { topic, .. }, Some(super::Client::Kafka(k))) => Arc::new(KafkaSink {
            kafka: k.clone(),
            topic: topic.clone(),
        }),
        (RelayTarget::Nats { subject, .. }, Some(super::Client::Nats(n))) => Arc::new(NatsSink {
            nats: n.clone(),
            subject: subject.clone(),
        }),
        _ => return Err(wrong()),
    })
}
