//! `prism.queue.v1.QueueService` (seed 002 §3): publish on the data path,
//! Subscribe as a SubscriptionActor per stream, Acknowledge/Commit/Seek and
//! GetTopicInfo straight to the session's backend. A call needing an
//! interface the backend lacks is UNIMPLEMENTED naming both.

use std::{sync::Arc, time::Duration};

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{optional_max_messages, optional_positive_duration};
use crate::{
    actors::{
        session::NewChild,
        subscription::{SubscriptionShared, Subscriptions},
        Supervisors,
    },
    backends::{
        queue::{
            self, check_topic, message_id, parse_message_id, ConsumerSpec, PublishItem,
            QueueHandle, Start,
        },
        Interface,
    },
    config::{LiveConfig, Pattern},
    error::{Error, ErrorKind, Service},
    gate::{self, Gate, GateState, GatedStream, Kind},
    proto::queue::v1::{self as pb, queue_service_server::QueueService, subscribe_request},
};

/// The longest Subscribe waits for the backend to position its consumer.
const POSITION_WAIT: Duration = Duration::from_secs(30);

pub struct QueueApi {
    gate: Gate<QueueHandle>,
    subscriptions: Arc<Subscriptions>,
    supervisors: Arc<Supervisors>,
    /// The running config, for `limits` (a reload changes them).
    config: LiveConfig,
}

gate::session_token_field!(
    pb::PublishRequest,
    pb::PublishBatchRequest,
    pb::SubscribeRequest,
    pb::AcknowledgeRequest,
    pb::CommitRequest,
    pb::SeekRequest,
    pb::GetTopicInfoRequest,
);

fn check_group(group: &str) -> Result<(), Error> {
    if group.is_empty() {
        return Ok(());
    }
    check_topic(group).map_err(|_| {
        Error::invalid_argument(
            "INVALID_CONSUMER_GROUP",
            format!("consumer group `{group}` is not valid; use 1 to 200 of A-Z a-z 0-9 . _ -"),
        )
    })
}

fn published(topic: &str, p: &queue::Published) -> pb::PublishResponse {
    pb::PublishResponse {
        message_id: message_id(topic, p.partition, p.offset),
        offset: p.offset,
        partition: p.partition,
        timestamp: Some(crate::backends::timestamp_ms(p.timestamp_ms)),
    }
}

fn offsets(list: &[pb::PartitionOffset]) -> Result<Vec<(i32, i64)>, Error> {
    if list.is_empty() {
        return Err(Error::invalid_argument(
            "EMPTY_OFFSETS",
            "no partition offsets given; list at least one {partition, offset}",
        ));
    }
    Ok(list.iter().map(|po| (po.partition, po.offset)).collect())
}

impl QueueApi {
    pub fn new(
        gates: &GateState,
        subscriptions: Arc<Subscriptions>,
        supervisors: Arc<Supervisors>,
        config: LiveConfig,
    ) -> Self {
        QueueApi {
            gate: gates.gate(Service::Queue, Pattern::Queue, Interface::QueueBasic, |b| {
                b.queue.as_ref()
            }),
            subscriptions,
            supervisors,
            config,
        }
    }

    fn check_payload(&self, payload: &[u8]) -> Result<(), Error> {
        let max = self.config.load().limits.max_value_bytes;
        if payload.len() > max {
            return Err(Error::invalid_argument(
                "PAYLOAD_TOO_LARGE",
                format!(
                    "payload is {} bytes; the limit is {} bytes (limits.max_value_bytes)",
                    payload.len(),
                    max
                ),
            ));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl QueueService for QueueApi {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                crate::call::note_resource(&req.topic);
                check_topic(&req.topic)?;
                self.check_payload(&req.payload)?;
                let item = PublishItem {
                    payload: req.payload.clone(),
                    headers: req.headers.clone(),
                    partition_key: req.partition_key.clone(),
                    partition: req.partition,
                };
                let result = call
                    .handle
                    .basic
                    .publish(
                        call.ns(),
                        &req.topic,
                        call.entry.config.options.partitions,
                        vec![item],
                    )
                    .await
                    .pop()
                    .ok_or_else(|| Error::internal("the backend returned no publish result"))??;
                Ok(published(&req.topic, &result))
            })
            .await
    }

    async fn publish_batch(
        &self,
        request: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                check_topic(&req.topic)?;
                let max = self.config.load().limits.max_batch_ops;
                if req.messages.is_empty() || req.messages.len() > max {
                    return Err(Error::invalid_argument(
                        "BATCH_TOO_LARGE",
                        format!(
                        "a batch holds 1 to {} messages (limits.max_batch_ops); this one has {}",
                        max,
                        req.messages.len()
                    ),
                    ));
                }
                // Oversized payloads fail on their own; the rest are published.
                let mut results: Vec<Option<Result<queue::Published, Error>>> = Vec::new();
                let mut items = Vec::new();
                for m in &req.messages {
                    match self.check_payload(&m.payload) {
                        Ok(()) => {
                            results.push(None);
                            items.push(PublishItem {
                                payload: m.payload.clone(),
                                headers: m.headers.clone(),
                                partition_key: m.partition_key.clone(),
                                partition: None,
                            });
                        }
                        Err(e) => results.push(Some(Err(e))),
                    }
                }
                let mut outcomes = call
                    .handle
                    .basic
                    .publish(
                        call.ns(),
                        &req.topic,
                        call.entry.config.options.partitions,
                        items,
                    )
                    .await
                    .into_iter();
                let mut response = pb::PublishBatchResponse::default();
                for slot in results {
                    let outcome = match slot {
                        Some(failed) => failed,
                        None => outcomes
                            .next()
                            .unwrap_or_else(|| Err(Error::internal("missing publish result"))),
                    };
                    match outcome {
                        Ok(p) => {
                            response.success_count += 1;
                            response.results.push(published(&req.topic, &p));
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "batch message failed");
                            response.failure_count += 1;
                            // A failed message has no id or offset.
                            response.results.push(pb::PublishResponse {
                                message_id: String::new(),
                                offset: -1,
                                partition: -1,
                                timestamp: None,
                            });
                        }
                    }
                }
                Ok(response)
            })
            .await
    }

    type SubscribeStream = GatedStream<pb::Message>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let call = self.gate.open(&request, Kind::Stream).await?;
        let req = request.into_inner();
        let run = || -> Result<(ConsumerSpec, Option<u64>, Option<Duration>), Error> {
            check_topic(&req.topic)?;
            check_group(&req.consumer_group)?;
            if !req.consumer_group.is_empty() {
                call.need(Interface::StreamConsumerGroups, |q| q.groups.as_ref())?;
            }
            let start = match req.start_position {
                Some(subscribe_request::StartPosition::Offset(o)) => {
                    call.need(Interface::StreamReplay, |q| q.replay.as_ref())?;
                    if o < 0 {
                        return Err(Error::invalid_argument(
                            "INVALID_OFFSET",
                            "start offset must not be negative",
                        ));
                    }
                    Start::Offset(o)
                }
                Some(subscribe_request::StartPosition::Timestamp(t)) => {
                    call.need(Interface::StreamReplay, |q| q.replay.as_ref())?;
                    // At or after 1970, nanos in range, milliseconds in i64.
                    let ms = (t.seconds >= 0 && (0..1_000_000_000).contains(&t.nanos))
                        .then(|| t.seconds.checked_mul(1000))
                        .flatten()
                        .and_then(|ms| ms.checked_add(i64::from(t.nanos) / 1_000_000))
                        .ok_or_else(|| {
                            Error::invalid_argument(
                                "INVALID_TIMESTAMP",
                                "start timestamp must be a valid time at or after 1970-01-01",
                            )
                        })?;
                    Start::Timestamp(ms)
                }
                Some(subscribe_request::StartPosition::Position(p)) => {
                    match pb::StartPosition::try_from(p) {
                        Ok(pb::StartPosition::Earliest) => Start::Earliest,
                        Ok(pb::StartPosition::Latest) => Start::Latest,
                        Ok(pb::StartPosition::Committed) => Start::Committed,
                        Ok(pb::StartPosition::Unspecified) | Err(_) => default_start(&req),
                    }
                }
                None => default_start(&req),
            };
            let max = optional_max_messages(req.max_messages)?;
            let timeout = optional_positive_duration(req.timeout, "INVALID_TIMEOUT", "timeout")?;
            Ok((
                ConsumerSpec {
                    topic: req.topic.clone(),
                    group: req.consumer_group.clone(),
                    start,
                    visibility_timeout: call.entry.config.options.visibility_timeout,
                    max_attempts: call.entry.config.options.max_attempts,
                },
                max,
                timeout,
            ))
        };
        let (mut spec, max, timeout) = run().map_err(|e| call.fail(e))?;
        // Unknown topics fail the call itself, not the stream.
        call.handle
            .basic
            .topic_stats(call.ns(), &spec.topic)
            .await
            .map_err(|e| call.fail(e))?;
        let id = format!("sub-{}", hex::encode(rand::random::<[u8; 8]>()));
        let private = spec.group.is_empty();
        if private {
            spec.group = format!("~{id}");
        }
        let (topic, group) = (spec.topic.clone(), spec.group.clone());
        let buffer = call.policy().queue.clone();
        let (tx, rx) = mpsc::channel(buffer.buffer);
        let shared = Arc::new(SubscriptionShared::new(
            id,
            call.entry.clone(),
            call.handle.clone(),
            spec,
            tx,
            buffer.buffer,
            buffer.buffer_bytes,
            max,
            timeout,
            *self.gate.registry().clock(),
        ));
        self.subscriptions.record(&shared);
        let positioned = shared.positioned();
        self.supervisors
            .start_child(&call.entry, NewChild::Queue(shared.clone()))
            .await
            .map_err(|e| call.fail(e))?;
        // Answer once the consumer stands where it was asked to start, so a
        // message published after this call returns is delivered; a backend
        // that refused the subscription fails the call itself. (If the
        // subscription went away first, the stream says why.)
        // (Bounded: a backend that neither positions nor fails in time gets
        // the stream answered anyway; the actor goes on.)
        if let Ok(Ok(Err(e))) = tokio::time::timeout(POSITION_WAIT, positioned).await {
            return Err(call.fail(e));
        }
        // A private group takes no acknowledgements once its stream is gone.
        let forget = private.then(|| Forget {
            subscriptions: self.subscriptions.clone(),
            session: call.entry.id.clone(),
            topic: topic.clone(),
            group: group.clone(),
        });
        // Taking a message out of the buffer gives its bytes back; after the
        // last one, the error the subscription failed with, if it did.
        let ending = shared.clone();
        let messages = ReceiverStream::new(rx)
            .map(move |buffered| {
                let _ = &forget;
                buffered.item
            })
            .chain(futures::stream::iter(std::iter::from_fn(move || {
                ending.take_ending().map(Err)
            })));
        Ok(Response::new(call.stream(messages)))
    }

    async fn acknowledge(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                if req.message_ids.is_empty() {
                    return Err(Error::invalid_argument(
                        "EMPTY_ACKNOWLEDGE",
                        "no message ids given",
                    ));
                }
                let mut response = pb::AcknowledgeResponse::default();
                // Ids of topics this session never consumed on this
                // instance: in a cluster, delivered by another instance.
                let mut not_here = Vec::new();
                for id in &req.message_ids {
                    let mut acked = false;
                    if let Some((topic, p, o)) = parse_message_id(id) {
                        let groups = self.subscriptions.groups_for(&call.entry.id, topic);
                        if groups.is_empty() {
                            not_here.push(id.as_str());
                        }
                        for group in groups {
                            if call
                                .handle
                                .basic
                                .acknowledge(call.ns(), topic, &group, p, o)
                                .await?
                            {
                                acked = true;
                                break;
                            }
                        }
                    }
                    if acked {
                        response.acknowledged_count += 1;
                    } else {
                        response.failed_ids.push(id.clone());
                    }
                }
                if response.acknowledged_count == 0
                    && !not_here.is_empty()
                    && self.gate.registry().cluster().is_some()
                {
                    return Err(not_delivered_here(&not_here));
                }
                Ok(response)
            })
            .await
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let groups = call.need(Interface::StreamConsumerGroups, |q| q.groups.as_ref())?;
                check_topic(&req.topic)?;
                require_group(&req.consumer_group)?;
                let offsets = offsets(&req.offsets)?;
                let stored = groups
                    .commit(call.ns(), &req.topic, &req.consumer_group, &offsets)
                    .await?;
                Ok(pb::CommitResponse {
                    success: true,
                    committed: stored
                        .into_iter()
                        .map(|(partition, offset)| pb::PartitionOffset { partition, offset })
                        .collect(),
                })
            })
            .await
    }

    async fn seek(
        &self,
        request: Request<pb::SeekRequest>,
    ) -> Result<Response<pb::SeekResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                let replay = call.need(Interface::StreamReplay, |q| q.replay.as_ref())?;
                check_topic(&req.topic)?;
                require_group(&req.consumer_group)?;
                let positions = offsets(&req.positions)?;
                replay
                    .seek(call.ns(), &req.topic, &req.consumer_group, &positions)
                    .await?;
                Ok(pb::SeekResponse { success: true })
            })
            .await
    }

    async fn get_topic_info(
        &self,
        request: Request<pb::GetTopicInfoRequest>,
    ) -> Result<Response<pb::GetTopicInfoResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                check_topic(&req.topic)?;
                let stats = call.handle.basic.topic_stats(call.ns(), &req.topic).await?;
                let partitions: Vec<pb::PartitionInfo> = stats
                    .partitions
                    .iter()
                    .map(|p| pb::PartitionInfo {
                        partition: p.partition,
                        earliest_offset: p.earliest,
                        latest_offset: p.latest,
                        message_count: p.latest - p.earliest,
                    })
                    .collect();
                Ok(pb::GetTopicInfoResponse {
                    topic: req.topic.clone(),
                    partition_count: partitions.len() as i32,
                    message_count: partitions.iter().map(|p| p.message_count).sum(),
                    partitions,
                })
            })
            .await
    }
}

/// Forgets a private group's (topic, group) when its stream is dropped.
struct Forget {
    subscriptions: Arc<Subscriptions>,
    session: String,
    topic: String,
    group: String,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.subscriptions
            .forget(&self.session, &self.topic, &self.group);
    }
}

/// Without a start position: a named group resumes where it committed (a
/// new group from the beginning); a private subscription sees new messages.
fn default_start(req: &pb::SubscribeRequest) -> Start {
    if req.consumer_group.is_empty() {
        Start::Latest
    } else {
        Start::Committed
    }
}

fn require_group(group: &str) -> Result<(), Error> {
    if group.is_empty() {
        return Err(Error::invalid_argument(
            "INVALID_CONSUMER_GROUP",
            "consumer_group is required for Commit and Seek",
        ));
    }
    check_group(group)
}

/// FAILED_PRECONDITION `NOT_DELIVERED_HERE`: in a cluster, an acknowledgement
/// reached an instance where this session has no subscription to the
/// message's topic. Nothing is lost: unacknowledged, the message is
/// delivered again.
fn not_delivered_here(ids: &[&str]) -> Error {
    Error::new(
        ErrorKind::FailedPrecondition,
        "NOT_DELIVERED_HERE",
        "this gateway instance did not deliver these messages (another instance of the \
         cluster holds the subscription); acknowledge over the connection that carries the \
         Subscribe stream, or the messages are delivered again after the ack timeout",
    )
    .with(
        "message_ids",
        ids.iter().take(10).copied().collect::<Vec<_>>().join(","),
    )
}
