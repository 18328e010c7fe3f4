//! Queue: publish messages to topics; subscribe as a `Stream` of
//! deliveries that are acknowledged one by one or in batches. A consumer
//! group's subscription that fails transiently resubscribes from the
//! group's committed position, so unacknowledged messages come again
//! (at-least-once); a private subscription (no group) has no position the
//! gateway keeps, so once it has received anything its stream ends with
//! the error instead. Publish carries no idempotency token on the wire, so it
//! is resent only when it was refused before anything happened.

use std::{collections::HashMap, sync::Arc};

use futures::{Stream, TryStreamExt};
use prism_proto::queue::v1::{
    self as pb, publish_stream_request::Part, queue_service_client::QueueServiceClient,
    subscribe_request::StartPosition,
};
use tonic::{transport::Channel, Code};

use crate::{
    error::{Error, Result},
    pieces::{in_pieces, is_partial, joined, PIECE_BYTES},
    resume::{resuming, Opening, Resumable},
    retry::Resend,
    session::Session,
};

pub use pb::{Message, PublishResponse as Receipt, StartPosition as Start};

/// The Queue API of a session: [`Session::queue`].
#[derive(Debug, Clone)]
pub struct Queue {
    session: Session,
    stub: QueueServiceClient<Channel>,
}

/// A message to publish.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    /// The message's bytes.
    pub payload: Vec<u8>,
    /// Headers delivered with it.
    pub headers: HashMap<String, String>,
    /// Messages with one key stay in one partition, in order.
    pub partition_key: Option<String>,
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

/// A delivered message and the means to acknowledge it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    queue: Queue,
}

impl Delivery {
    /// Acknowledges this message: it will not be delivered again. Fails
    /// with [`Error::NotAcknowledged`](crate::Error::NotAcknowledged) when
    /// the gateway could not (the message came to a session since reopened,
    /// or was acknowledged already).
    pub async fn ack(&self) -> Result<()> {
        let failed = self
            .queue
            .acknowledge([self.message.message_id.clone()])
            .await?;
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::NotAcknowledged(failed))
        }
    }
}

/// Where a subscription starts and which group it belongs to.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Subscribers of one group share the messages and its committed
    /// position; empty: a private subscription.
    pub consumer_group: String,
    /// Where to start; default: a group where it committed, a private
    /// subscription at new messages.
    pub start: Option<Start>,
    /// Start at this offset instead.
    pub offset: Option<i64>,
    /// End after this many messages.
    pub max_messages: Option<u32>,
}

impl Session {
    /// The Queue API over this session.
    pub fn queue(&self) -> Queue {
        Queue {
            stub: QueueServiceClient::new(self.shared().client.channel.clone()),
            session: self.clone(),
        }
    }
}

impl Queue {
    /// Publishes `message` (bytes, or an [`Outgoing`]) to `topic`.
    /// A payload over 1 MiB goes in pieces over `PublishStream` (the
    /// namespace's claim check keeps it in its object store; a gateway
    /// without that RPC gets it in one request).
    pub async fn publish(&self, topic: &str, message: impl Into<Outgoing>) -> Result<Receipt> {
        let message = message.into();
        if message.payload.len() > PIECE_BYTES {
            let pieces = in_pieces(
                &message.payload,
                |first| pb::PublishStreamRequest {
                    part: Some(Part::Start(pb::PublishRequest {
                        session_token: String::new(),
                        topic: topic.to_string(),
                        payload: first,
                        headers: message.headers.clone(),
                        partition_key: message.partition_key.clone(),
                        partition: None,
                    })),
                },
                |piece| pb::PublishStreamRequest {
                    part: Some(Part::Payload(piece)),
                },
            );
            match unary!(stream self, Resend::OnlyIfNotApplied, publish_stream, pieces) {
                Err(e) if e.code() == Code::Unimplemented => {}
                sent => return sent,
            }
        }
        let request = pb::PublishRequest {
            session_token: String::new(),
            topic: topic.to_string(),
            payload: message.payload,
            headers: message.headers,
            partition_key: message.partition_key,
            partition: None,
        };
        unary!(self, Resend::OnlyIfNotApplied, publish, request)
    }

    /// Publishes `messages` to `topic` in one call; a receipt per message,
    /// in order.
    pub async fn publish_batch(
        &self,
        topic: &str,
        messages: impl IntoIterator<Item = impl Into<Outgoing>>,
    ) -> Result<pb::PublishBatchResponse> {
        let request = pb::PublishBatchRequest {
            session_token: String::new(),
            topic: topic.to_string(),
            messages: messages
                .into_iter()
                .map(|m| {
                    let m = m.into();
                    pb::BatchMessage {
                        payload: m.payload,
                        headers: m.headers,
                        partition_key: m.partition_key,
                    }
                })
                .collect(),
        };
        unary!(self, Resend::OnlyIfNotApplied, publish_batch, request)
    }

    /// Acknowledges messages by id; returns the ids the gateway could not
    /// acknowledge.
    pub async fn acknowledge(
        &self,
        message_ids: impl IntoIterator<Item = String>,
    ) -> Result<Vec<String>> {
        let request = pb::AcknowledgeRequest {
            session_token: String::new(),
            message_ids: message_ids.into_iter().collect(),
        };
        let acked = unary!(self, Resend::Safe, acknowledge, request)?;
        Ok(acked.failed_ids)
    }

    /// Commits a consumer group's position on `topic`: `offsets` are
    /// `(partition, next offset to read)`.
    pub async fn commit(
        &self,
        topic: &str,
        consumer_group: &str,
        offsets: impl IntoIterator<Item = (i32, i64)>,
    ) -> Result<pb::CommitResponse> {
        let request = pb::CommitRequest {
            session_token: String::new(),
            topic: topic.to_string(),
            consumer_group: consumer_group.to_string(),
            offsets: offsets
                .into_iter()
                .map(|(partition, offset)| pb::PartitionOffset { partition, offset })
                .collect(),
        };
        unary!(self, Resend::Safe, commit, request)
    }

    /// The deliveries of `topic` for `options`, until the stream is
    /// dropped; acknowledge each with [`Delivery::ack`].
    pub fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> impl Stream<Item = Result<Delivery>> + Send + 'static {
        let position = Position {
            stub: self.stub.clone(),
            topic: topic.to_string(),
            options,
            received: 0,
        };
        let queue = self.clone();
        joined(resuming(self.session.clone(), position)).map_ok(move |message| Delivery {
            message,
            queue: queue.clone(),
        })
    }
}

/// A subscription's position: where to resume after a failure.
#[derive(Debug, Clone)]
struct Position {
    stub: QueueServiceClient<Channel>,
    topic: String,
    options: SubscribeOptions,
    received: u32,
}

impl Resumable for Position {
    type Item = Message;
    fn open(&self, session: &Session, token: Arc<str>) -> Opening<Message> {
        let o = &self.options;
        let start = match (self.received, o.consumer_group.is_empty()) {
            // A group resumes where it committed: unacknowledged messages
            // are delivered again.
            (1.., false) => Some(StartPosition::Position(Start::Committed as i32)),
            _ => match (o.offset, o.start) {
                (Some(offset), _) => Some(StartPosition::Offset(offset)),
                (None, Some(start)) => Some(StartPosition::Position(start as i32)),
                (None, None) => None,
            },
        };
        let max_messages = o
            .max_messages
            .map(|m| i32::try_from(m.saturating_sub(self.received).max(1)).unwrap_or(i32::MAX));
        let request = session.shared().stream_request(
            &token,
            pb::SubscribeRequest {
                session_token: String::new(),
                topic: self.topic.clone(),
                consumer_group: o.consumer_group.clone(),
                start_position: start,
                max_messages,
                timeout: None,
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

    fn seen(&mut self, message: &Message) {
        // A message counts once, at its last piece.
        if !is_partial(&message.headers) {
            self.received = self.received.saturating_add(1);
        }
    }

    /// A private subscription has no position the gateway keeps (one
    /// offset cannot say where each partition was), so once it has
    /// received anything its stream ends with the error.
    fn resumable(&self) -> bool {
        !self.options.consumer_group.is_empty() || self.received == 0
    }
}
