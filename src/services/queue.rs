//! `prism.queue.v1.QueueService` (seed 002 §3): publish on the data path,
//! Subscribe as a SubscriptionActor per stream, Acknowledge/Commit/Seek and
//! GetTopicInfo straight to the session's backend. A call needing an
//! interface the backend lacks is UNIMPLEMENTED naming both.

use std::{sync::Arc, time::Duration};

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{
    claim_check::{self, ClaimChecks, Payload, Reference, Release},
    optional_max_messages, optional_positive_duration,
};
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
    config::Pattern,
    error::{Error, ErrorKind, Service},
    gate::{self, Gate, GateState, GatedStream, Kind},
    proto::queue::v1::{
        self as pb, publish_stream_request, queue_service_server::QueueService, subscribe_request,
    },
};

type Call = gate::Call<QueueHandle>;

/// The longest Subscribe waits for the backend to position its consumer.
const POSITION_WAIT: Duration = Duration::from_secs(30);

pub struct QueueApi {
    gate: Gate<QueueHandle>,
    subscriptions: Arc<Subscriptions>,
    supervisors: Arc<Supervisors>,
    /// Payloads above a namespace's threshold, kept in its object store.
    claims: Arc<ClaimChecks>,
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
        claims: Arc<ClaimChecks>,
    ) -> Self {
        QueueApi {
            gate: gates.gate(Service::Queue, Pattern::Queue, Interface::QueueBasic, |b| {
                b.queue.as_ref()
            }),
            subscriptions,
            supervisors,
            claims,
        }
    }

    /// Publishes one message; a payload stored for it goes if it was not
    /// published.
    async fn publish_one(
        &self,
        call: &Call,
        topic: &str,
        item: PublishItem,
        stored: Option<Reference>,
    ) -> Result<pb::PublishResponse, Error> {
        let result = call
            .handle
            .basic
            .publish(
                call.ns(),
                topic,
                call.entry.config.options.partitions,
                vec![item],
            )
            .await
            .pop()
            .ok_or_else(|| Error::internal("the backend returned no publish result"))
            .and_then(|r| r);
        self.claims.discard_failed(&result, stored.as_ref()).await;
        Ok(published(topic, &result?))
    }
}

/// A message as it goes to the backend: its payload, or the headers naming
/// where the claim check stored it.
fn item(
    payload: Payload,
    headers: std::collections::HashMap<String, String>,
    partition_key: Option<String>,
    partition: Option<i32>,
) -> (PublishItem, Option<Reference>) {
    let mut item = PublishItem {
        payload: Vec::new(),
        headers,
        partition_key,
        partition,
    };
    let stored = payload.attach(&mut item.payload, &mut item.headers);
    (item, stored)
}

/// A payload sent whole must fit `limits.max_value_bytes`.
fn check_payload(call: &Call, payload: &[u8]) -> Result<(), Error> {
    let max = call.limits().max_value_bytes;
    if payload.len() > max {
        return Err(Error::invalid_argument(
            "PAYLOAD_TOO_LARGE",
            format!(
                "payload is {} bytes; the limit is {} bytes (limits.max_value_bytes); send \
                 larger ones with PublishStream to a namespace with a claim_check",
                payload.len(),
                max
            ),
        ));
    }
    Ok(())
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
                claim_check::check_reserved(req.headers.keys())?;
                check_payload(call, &req.payload)?;
                let payload = self
                    .claims
                    .check_in(call.ns(), call.policy(), req.payload, Release::Ack)
                    .await?;
                let (item, stored) = item(payload, req.headers, req.partition_key, req.partition);
                self.publish_one(call, &req.topic, item, stored).await
            })
            .await
    }

    async fn publish_stream(
        &self,
        request: Request<Streaming<pb::PublishStreamRequest>>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        claim_check::publish_stream(
            &self.gate,
            request,
            start,
            piece,
            async |call, start, rest| {
                crate::call::note_resource(&start.topic);
                check_topic(&start.topic)?;
                claim_check::check_reserved(start.headers.keys())?;
                let payload = self
                    .claims
                    .receive(
                        call.ns(),
                        call.policy(),
                        start.payload,
                        rest,
                        call.limits().max_value_bytes,
                        Release::Ack,
                    )
                    .await?;
                let (item, stored) =
                    item(payload, start.headers, start.partition_key, start.partition);
                self.publish_one(call, &start.topic, item, stored).await
            },
        )
        .await
    }

    async fn publish_batch(
        &self,
        request: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchResponse>, Status> {
        self.gate
            .unary(request, async |call, req| {
                check_topic(&req.topic)?;
                let max = call.limits().max_batch_ops;
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
                let mut stored = Vec::new();
                for m in req.messages {
                    let pb::BatchMessage {
                        payload,
                        headers,
                        partition_key,
                    } = m;
                    let checked = async {
                        claim_check::check_reserved(headers.keys())?;
                        check_payload(call, &payload)?;
                        self.claims
                            .check_in(call.ns(), call.policy(), payload, Release::Ack)
                            .await
                    };
                    match checked.await {
                        Ok(payload) => {
                            results.push(None);
                            let (one, reference) = item(payload, headers, partition_key, None);
                            items.push(one);
                            stored.push(reference);
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
                let mut stored = stored.into_iter();
                let mut response = pb::PublishBatchResponse::default();
                for slot in results {
                    let outcome = match slot {
                        Some(failed) => failed,
                        None => {
                            let outcome = outcomes
                                .next()
                                .unwrap_or_else(|| Err(Error::internal("missing publish result")));
                            if let (Err(e), Some(Some(r))) = (&outcome, stored.next()) {
                                self.claims.discard(&r, e).await;
                            }
                            outcome
                        }
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
        // A claim-checked message becomes its payload here, after the
        // buffer (which holds only the reference), a piece at a time as the
        // client takes them.
        let ending = shared.clone();
        let (claims, chunk) = (self.claims.clone(), ClaimChecks::chunk_size(call.policy()));
        let (session, ns) = (call.entry.id.clone(), call.ns().to_string());
        let messages = ReceiverStream::new(rx)
            .map(move |buffered| {
                let _ = &forget;
                buffered.item
            })
            .chain(futures::stream::iter(std::iter::from_fn(move || {
                ending.take_ending().map(Err)
            })))
            .flat_map(move |item| claims.expand(item, &ns, chunk, Some(&session)));
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
                                self.claims
                                    .acknowledged(&call.entry.id, call.ns(), id)
                                    .await;
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

/// A PublishStream message's `start` (`None`: not one).
fn start(m: pb::PublishStreamRequest) -> Option<pb::PublishRequest> {
    match m.part {
        Some(publish_stream_request::Part::Start(start)) => Some(start),
        _ => None,
    }
}

/// A later PublishStream message's payload piece (`None`: not a piece).
fn piece(m: pb::PublishStreamRequest) -> Option<Vec<u8>> {
    match m.part {
        Some(publish_stream_request::Part::Payload(piece)) => Some(piece),
        _ => None,
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
