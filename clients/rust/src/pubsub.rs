//! PubSub: publish events to topics and subscribe to topic patterns. A
//! subscription is a `Stream` that resubscribes after a transient failure
//! or a reopened session; PubSub is at-most-once, so events published
//! while it resubscribes are not seen. Publish carries no idempotency
//! token on the wire, so it is resent only when it was refused before
//! anything happened.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::Stream;
use prism_proto::pubsub::v1::{
    self as pb, pub_sub_service_client::PubSubServiceClient, publish_stream_request::Part,
};
use tonic::{transport::Channel, Code};

use crate::{
    error::Result,
    kv::wire_duration,
    pieces::{in_pieces, is_partial, joined, PIECE_BYTES},
    resume::{resuming, Opening, Resumable},
    retry::Resend,
    session::Session,
};

pub use pb::Event;

/// The PubSub API of a session: [`Session::pubsub`].
#[derive(Debug, Clone)]
pub struct PubSub {
    session: Session,
    stub: PubSubServiceClient<Channel>,
}

/// An event to publish: payload, metadata, and request-reply fields.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    /// The event's bytes.
    pub payload: Vec<u8>,
    /// Metadata delivered with the event.
    pub metadata: HashMap<String, String>,
    /// Ties a reply to its request.
    pub correlation_id: Option<String>,
    /// Where a reply should go.
    pub reply_to: Option<String>,
}

impl From<Vec<u8>> for Outgoing {
    fn from(payload: Vec<u8>) -> Self {
        Outgoing {
            payload,
            ..Default::default()
        }
    }
}

impl From<&[u8]> for Outgoing {
    fn from(payload: &[u8]) -> Self {
        payload.to_vec().into()
    }
}

/// What the gateway said about a published event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event's id.
    pub event_id: String,
    /// How many subscribers it was delivered to (where the backend knows).
    pub subscriber_count: i32,
}

/// What to subscribe to and for how long.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Subscribers in the same queue group share the events between them.
    pub queue_group: Option<String>,
    /// End after this many events.
    pub max_messages: Option<u32>,
    /// End after this long.
    pub max_duration: Option<Duration>,
}

impl Session {
    /// The PubSub API over this session.
    pub fn pubsub(&self) -> PubSub {
        PubSub {
            stub: PubSubServiceClient::new(self.shared().client.channel.clone()),
            session: self.clone(),
        }
    }
}

impl PubSub {
    /// Publishes `event` (bytes, or an [`Outgoing`]) to `topic`.
    /// A payload over 1 MiB goes in pieces over `PublishStream` (the
    /// namespace's claim check keeps it in its object store; a gateway
    /// without that RPC gets it in one request).
    pub async fn publish(&self, topic: &str, event: impl Into<Outgoing>) -> Result<Published> {
        let event = event.into();
        if event.payload.len() > PIECE_BYTES {
            let pieces = in_pieces(
                &event.payload,
                |first| pb::PublishStreamRequest {
                    part: Some(Part::Start(pb::PublishRequest {
                        session_token: String::new(),
                        topic: topic.to_string(),
                        payload: first,
                        metadata: event.metadata.clone(),
                        correlation_id: event.correlation_id.clone(),
                        reply_to: event.reply_to.clone(),
                    })),
                },
                |piece| pb::PublishStreamRequest {
                    part: Some(Part::Payload(piece)),
                },
            );
            match unary!(stream self, Resend::OnlyIfNotApplied, publish_stream, pieces) {
                Err(e) if e.code() == Code::Unimplemented => {}
                Err(e) => return Err(e),
                Ok(published) => {
                    return Ok(Published {
                        event_id: published.event_id,
                        subscriber_count: published.subscriber_count,
                    })
                }
            }
        }
        let request = pb::PublishRequest {
            session_token: String::new(),
            topic: topic.to_string(),
            payload: event.payload,
            metadata: event.metadata,
            correlation_id: event.correlation_id,
            reply_to: event.reply_to,
        };
        let published = unary!(self, Resend::OnlyIfNotApplied, publish, request)?;
        Ok(Published {
            event_id: published.event_id,
            subscriber_count: published.subscriber_count,
        })
    }

    /// Events on topics matching `pattern` (`events.user.*`, `events.>`),
    /// until the stream is dropped.
    pub fn subscribe(&self, pattern: &str) -> impl Stream<Item = Result<Event>> + Send + 'static {
        self.subscribe_with(pattern, SubscribeOptions::default())
    }

    /// Events on topics matching `pattern`, with options.
    pub fn subscribe_with(
        &self,
        pattern: &str,
        options: SubscribeOptions,
    ) -> impl Stream<Item = Result<Event>> + Send + 'static {
        let position = Wanted {
            stub: self.stub.clone(),
            pattern: pattern.to_string(),
            // A duration too long for the wire is no limit at all.
            deadline: options
                .max_duration
                .and_then(|d| tokio::time::Instant::now().checked_add(d)),
            options,
            received: 0,
        };
        joined(resuming(self.session.clone(), position))
    }
}

/// A subscription's position: the events it still wants.
#[derive(Debug, Clone)]
struct Wanted {
    stub: PubSubServiceClient<Channel>,
    pattern: String,
    options: SubscribeOptions,
    /// When `max_duration` runs out, kept across resubscriptions.
    deadline: Option<tokio::time::Instant>,
    received: u32,
}

impl Resumable for Wanted {
    type Item = Event;
    fn open(&self, session: &Session, token: Arc<str>) -> Opening<Event> {
        let max_messages = self.options.max_messages.map(|m| {
            // Checked: at most `m`, which fits; never 0, which would mean
            // "no limit" to nobody.
            i32::try_from(m.saturating_sub(self.received).max(1)).unwrap_or(i32::MAX)
        });
        let request = session.shared().stream_request(
            &token,
            pb::SubscribeRequest {
                session_token: String::new(),
                topic_pattern: self.pattern.clone(),
                queue_group: self.options.queue_group.clone(),
                options: Some(pb::SubscriptionOptions {
                    auto_acknowledge: true,
                    max_messages,
                    max_duration: self.deadline.and_then(|at| {
                        let left = at.saturating_duration_since(tokio::time::Instant::now());
                        wire_duration(left.max(Duration::from_millis(1)), "max_duration").ok()
                    }),
                }),
            },
        );
        let mut stub = self.stub.clone();
        Box::pin(async move { stub.subscribe(request).await })
    }

    fn finished(&self) -> bool {
        self.options
            .max_messages
            .is_some_and(|m| self.received >= m)
    }

    fn seen(&mut self, event: &Event) {
        // An event counts once, at its last piece.
        if !is_partial(&event.metadata) {
            self.received = self.received.saturating_add(1);
        }
    }
}
