//! `prism.queue.v1.QueueService` (seed 002 §3): publish on the data path,
//! Subscribe as a SubscriptionActor per stream, Acknowledge/Commit/Seek and
//! GetTopicInfo straight to the session's backend. A call needing an
//! interface the backend lacks is UNIMPLEMENTED naming both.

use std::{sync::Arc, time::Duration};

use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{optional_max_messages, optional_positive_duration, session_backend, session_token};
use crate::{
    actors::{
        subscription::{SubscriptionShared, Subscriptions},
        ArbiterPool,
    },
    backends::{
        missing_interface,
        queue::{
            self, check_topic, message_id, parse_message_id, ConsumerSpec, PublishItem,
            QueueHandle, Start,
        },
        Backend, Backends, Interface,
    },
    config::{Limits, Pattern},
    error::{Error, ErrorKind, Service},
    proto::queue::v1::{self as pb, queue_service_server::QueueService, subscribe_request},
    session::{SessionEntry, SessionRegistry},
};

/// Messages buffered per Subscribe stream.
const STREAM_BUFFER: usize = 64;
/// Default visibility timeout when the config sets none.
const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);

pub struct QueueApi {
    registry: Arc<SessionRegistry>,
    backends: Arc<Backends>,
    subscriptions: Arc<Subscriptions>,
    pool: Arc<ArbiterPool>,
    limits: Limits,
}

struct Call {
    entry: Arc<SessionEntry>,
    backend: Arc<Backend>,
    queue: QueueHandle,
}

fn status(e: Error) -> Status {
    e.to_status(Service::Queue)
}

fn missing(backend: &Backend, interface: Interface) -> Error {
    missing_interface(&backend.name, backend.kind, interface)
}

impl Call {
    fn ns(&self) -> &str {
        self.entry.namespace()
    }

    fn need<T: ?Sized>(
        &self,
        interface: Interface,
        pick: impl FnOnce(&QueueHandle) -> Option<&Arc<T>>,
    ) -> Result<Arc<T>, Error> {
        pick(&self.queue)
            .cloned()
            .ok_or_else(|| missing(&self.backend, interface))
    }

    /// A config option of the session's backend config, parsed.
    fn option<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, Error> {
        let Some(raw) = self
            .entry
            .config
            .proto
            .backend
            .as_ref()
            .and_then(|b| b.options.get(name))
        else {
            return Ok(None);
        };
        raw.parse().map(Some).map_err(|_| {
            Error::new(
                ErrorKind::FailedPrecondition,
                "INVALID_CONFIG",
                format!("config option `{name}` = `{raw}` is not valid; fix the config"),
            )
        })
    }

    fn partitions(&self) -> Result<i32, Error> {
        Ok(self
            .option::<i32>("partitions")?
            .unwrap_or(1)
            .clamp(1, 1024))
    }

    fn visibility(&self) -> Result<Duration, Error> {
        match self
            .entry
            .config
            .proto
            .backend
            .as_ref()
            .and_then(|b| b.options.get("visibility_timeout"))
        {
            None => Ok(DEFAULT_VISIBILITY),
            Some(raw) => humantime::parse_duration(raw).map_err(|_| {
                Error::new(
                    ErrorKind::FailedPrecondition,
                    "INVALID_CONFIG",
                    format!("config option `visibility_timeout` = `{raw}` is not a duration"),
                )
            }),
        }
    }
}

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
        registry: Arc<SessionRegistry>,
        backends: Arc<Backends>,
        subscriptions: Arc<Subscriptions>,
        pool: Arc<ArbiterPool>,
        limits: Limits,
    ) -> Self {
        QueueApi {
            registry,
            backends,
            subscriptions,
            pool,
            limits,
        }
    }

    fn authorize(&self, token: &str) -> Result<Call, Error> {
        let (entry, backend) =
            session_backend(&self.registry, &self.backends, token, Pattern::Queue)?;
        let queue = backend
            .queue
            .clone()
            .ok_or_else(|| missing(&backend, Interface::QueueBasic))?;
        Ok(Call {
            entry,
            backend,
            queue,
        })
    }

    async fn unary<Req, Resp>(
        &self,
        request: Request<Req>,
        token: fn(&Req) -> &str,
        body: impl AsyncFnOnce(&Call, &Req) -> Result<Resp, Error>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message,
        Resp: prost::Message,
    {
        let call = self
            .authorize(session_token(token(request.get_ref()), &request))
            .map_err(status)?;
        let _guard = call.entry.begin_operation(false).map_err(status)?;
        let req = request.into_inner();
        let response = body(&call, &req).await.map_err(|e| {
            if e.kind == ErrorKind::Unavailable {
                call.backend.health.suspect();
            }
            status(e)
        })?;
        call.entry
            .record_request(req.encoded_len(), response.encoded_len());
        Ok(Response::new(response))
    }

    fn check_payload(&self, payload: &[u8]) -> Result<(), Error> {
        if payload.len() > self.limits.max_value_bytes {
            return Err(Error::invalid_argument(
                "PAYLOAD_TOO_LARGE",
                format!(
                    "payload is {} bytes; the limit is {} bytes (limits.max_value_bytes)",
                    payload.len(),
                    self.limits.max_value_bytes
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
        self.unary(
            request,
            |r| &r.session_token,
            async |call, req| {
                crate::metrics::note_resource(&req.topic);
                check_topic(&req.topic)?;
                self.check_payload(&req.payload)?;
                let item = PublishItem {
                    payload: req.payload.clone(),
                    headers: req.headers.clone(),
                    partition_key: req.partition_key.clone(),
                    partition: req.partition,
                };
                let result = call
                    .queue
                    .basic
                    .publish(call.ns(), &req.topic, call.partitions()?, vec![item])
                    .await
                    .pop()
                    .ok_or_else(|| Error::internal("the backend returned no publish result"))??;
                Ok(published(&req.topic, &result))
            },
        )
        .await
    }

    async fn publish_batch(
        &self,
        request: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchResponse>, Status> {
        self.unary(
            request,
            |r| &r.session_token,
            async |call, req| {
                check_topic(&req.topic)?;
                if req.messages.is_empty() || req.messages.len() > self.limits.max_batch_ops {
                    return Err(Error::invalid_argument(
                        "BATCH_TOO_LARGE",
                        format!(
                        "a batch holds 1 to {} messages (limits.max_batch_ops); this one has {}",
                        self.limits.max_batch_ops,
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
                    .queue
                    .basic
                    .publish(call.ns(), &req.topic, call.partitions()?, items)
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
            },
        )
        .await
    }

    type SubscribeStream = ReceiverStream<Result<pb::Message, Status>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let call = self
            .authorize(session_token(&request.get_ref().session_token, &request))
            .map_err(status)?;
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
                    Start::Timestamp(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
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
                    visibility_timeout: call.visibility()?,
                    max_attempts: call.option::<u32>("max_attempts")?.unwrap_or(5),
                },
                max,
                timeout,
            ))
        };
        let (mut spec, max, timeout) = run().map_err(status)?;
        // Unknown topics fail the call itself, not the stream.
        call.queue
            .basic
            .topic_stats(call.ns(), &spec.topic)
            .await
            .map_err(status)?;
        let guard = call.entry.begin_operation(true).map_err(status)?;
        let id = format!("sub-{}", hex::encode(rand::random::<[u8; 8]>()));
        if spec.group.is_empty() {
            spec.group = format!("~{id}");
        }
        call.entry.record_request(req.encoded_len(), 0);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let shared = Arc::new(SubscriptionShared::new(
            id,
            call.entry.clone(),
            call.queue.clone(),
            spec,
            tx,
            STREAM_BUFFER,
            max,
            timeout,
            guard,
            *self.registry.clock(),
        ));
        self.subscriptions.start(shared, &self.pool.next());
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn acknowledge(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        self.unary(
            request,
            |r| &r.session_token,
            async |call, req| {
                if req.message_ids.is_empty() {
                    return Err(Error::invalid_argument(
                        "EMPTY_ACKNOWLEDGE",
                        "no message ids given",
                    ));
                }
                let mut response = pb::AcknowledgeResponse::default();
                for id in &req.message_ids {
                    let mut acked = false;
                    if let Some((topic, p, o)) = parse_message_id(id) {
                        for group in self.subscriptions.groups_for(&call.entry.id, topic) {
                            if call
                                .queue
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
                Ok(response)
            },
        )
        .await
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        self.unary(
            request,
            |r| &r.session_token,
            async |call, req| {
                let groups = call.need(Interface::StreamConsumerGroups, |q| q.groups.as_ref())?;
                check_topic(&req.topic)?;
                require_group(&req.consumer_group)?;
                let stored = groups
                    .commit(
                        call.ns(),
                        &req.topic,
                        &req.consumer_group,
                        &offsets(&req.offsets)?,
                    )
                    .await?;
                Ok(pb::CommitResponse {
                    success: true,
                    committed: stored
                        .into_iter()
                        .map(|(partition, offset)| pb::PartitionOffset { partition, offset })
                        .collect(),
                })
            },
        )
        .await
    }

    async fn seek(
        &self,
        request: Request<pb::SeekRequest>,
    ) -> Result<Response<pb::SeekResponse>, Status> {
        self.unary(
            request,
            |r| &r.session_token,
            async |call, req| {
                let replay = call.need(Interface::StreamReplay, |q| q.replay.as_ref())?;
                check_topic(&req.topic)?;
                require_group(&req.consumer_group)?;
                replay
                    .seek(
                        call.ns(),
                        &req.topic,
                        &req.consumer_group,
                        &offsets(&req.positions)?,
                    )
                    .await?;
                Ok(pb::SeekResponse { success: true })
            },
        )
        .await
    }

    async fn get_topic_info(
        &self,
        request: Request<pb::GetTopicInfoRequest>,
    ) -> Result<Response<pb::GetTopicInfoResponse>, Status> {
        self.unary(
            request,
            |r| &r.session_token,
            async |call, req| {
                check_topic(&req.topic)?;
                let stats = call.queue.basic.topic_stats(call.ns(), &req.topic).await?;
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
            },
        )
        .await
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
