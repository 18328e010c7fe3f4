//! `prism.pubsub.v1.PubSubService` (seed 002 §4): Publish straight to the
//! session's backend; Subscribe as a PubSubSubscriptionActor per stream,
//! answered once the backend subscription is in place (so every event
//! published after the call returns is delivered); Unsubscribe and
//! ListSubscriptions from the gateway's registry. Patterns with `*` or `>`
//! need `pubsub_wildcards`; a backend without it is UNIMPLEMENTED.

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use prost::Message as _;
use tonic::{Request, Response, Status};

use super::{optional_max_messages, optional_positive_duration, session_backend, session_token};
use crate::{
    actors::{
        pubsub::{PubSubShared, PubSubSubscriptions},
        ArbiterPool,
    },
    backends::{
        epoch_ms, missing_interface,
        pubsub::{
            check_topic, Event, EventSink, PubSubHandle, SinkEnd, SubscriberSpec, TopicPattern,
        },
        Backend, Backends, Interface,
    },
    config::{Limits, Pattern, PubSubPolicy},
    error::{Error, ErrorKind, Service},
    proto::pubsub::v1::{self as pb, pub_sub_service_server::PubSubService},
    session::{SessionEntry, SessionRegistry},
};

/// Most metadata a published event may carry, keys and values together.
const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Longest correlation id.
const MAX_CORRELATION_BYTES: usize = 256;
/// How long Subscribe waits for the backend subscription to be in place.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(30);

pub struct PubSubApi {
    registry: Arc<SessionRegistry>,
    backends: Arc<Backends>,
    subscriptions: Arc<crate::actors::subscription::Subscriptions>,
    pool: Arc<ArbiterPool>,
    limits: Limits,
    policies: HashMap<String, PubSubPolicy>,
}

struct Call {
    entry: Arc<SessionEntry>,
    backend: Arc<Backend>,
    pubsub: PubSubHandle,
}

fn status(e: Error) -> Status {
    e.to_status(Service::PubSub)
}

impl Call {
    fn ns(&self) -> &str {
        self.entry.namespace()
    }

    /// Partitions of topics the backend creates (Kafka), from the config.
    fn partitions(&self) -> Result<i32, Error> {
        let raw = self
            .entry
            .config
            .proto
            .backend
            .as_ref()
            .and_then(|b| b.options.get("partitions"));
        match raw {
            None => Ok(1),
            Some(raw) => raw.parse::<i32>().map(|p| p.clamp(1, 1024)).map_err(|_| {
                Error::new(
                    ErrorKind::FailedPrecondition,
                    "INVALID_CONFIG",
                    format!("config option `partitions` = `{raw}` is not a number"),
                )
            }),
        }
    }
}

fn check_group(group: &str) -> Result<(), Error> {
    let ok = (1..=100).contains(&group.len())
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_argument(
            "INVALID_QUEUE_GROUP",
            format!("queue group `{group}` is not valid; use 1 to 100 of A-Z a-z 0-9 . _ -"),
        ))
    }
}

/// Ends the subscription's sink when the client drops the stream.
struct Abandon(Arc<EventSink>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.abandon("client went away");
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// The gRPC stream of a subscription: events from its sink until the sink
/// ends or `max_messages` were sent.
fn event_stream(shared: Arc<PubSubShared>) -> EventStream {
    struct State {
        shared: Arc<PubSubShared>,
        left: Option<u64>,
        failed: bool,
        _abandon: Abandon,
    }
    let state = State {
        left: shared.max_messages,
        failed: false,
        _abandon: Abandon(shared.sink.clone()),
        shared,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        if st.failed {
            return None;
        }
        if st.left == Some(0) {
            st.shared.sink.end(SinkEnd::Done("max_messages reached"));
            return None;
        }
        match st.shared.sink.next().await {
            Ok(Some(event)) => {
                st.left = st.left.map(|n| n - 1);
                let event = event.to_proto(st.shared.id());
                st.shared.entry.record_request(0, event.encoded_len());
                Some((Ok(event), st))
            }
            Ok(None) => None,
            Err(e) => {
                st.failed = true;
                Some((Err(status(e)), st))
            }
        }
    }))
}

impl PubSubApi {
    pub fn new(
        registry: Arc<SessionRegistry>,
        backends: Arc<Backends>,
        subscriptions: Arc<crate::actors::subscription::Subscriptions>,
        pool: Arc<ArbiterPool>,
        limits: Limits,
        policies: HashMap<String, PubSubPolicy>,
    ) -> Self {
        PubSubApi {
            registry,
            backends,
            subscriptions,
            pool,
            limits,
            policies,
        }
    }

    /// The gateway's PubSub subscriptions.
    fn subs(&self) -> &PubSubSubscriptions {
        &self.subscriptions.pubsub
    }

    fn authorize(&self, token: &str) -> Result<Call, Error> {
        let (entry, backend) =
            session_backend(&self.registry, &self.backends, token, Pattern::Pubsub)?;
        let pubsub = backend.pubsub.clone().ok_or_else(|| {
            missing_interface(&backend.name, backend.kind, Interface::PubSubBasic)
        })?;
        Ok(Call {
            entry,
            backend,
            pubsub,
        })
    }

    /// The hot-path check of a request, by its token field or header.
    fn call<T>(&self, request: &Request<T>, field: fn(&T) -> &String) -> Result<Call, Status> {
        self.authorize(session_token(field(request.get_ref()), request))
            .map_err(status)
    }

    fn event(&self, req: pb::PublishRequest) -> Result<Event, Error> {
        check_topic(&req.topic)?;
        if req.payload.len() > self.limits.max_message_bytes {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                "PAYLOAD_TOO_LARGE",
                format!(
                    "payload of {} bytes exceeds the limit of {} bytes",
                    req.payload.len(),
                    self.limits.max_message_bytes
                ),
            ));
        }
        let metadata_bytes: usize = req.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if metadata_bytes > MAX_METADATA_BYTES || req.metadata.keys().any(String::is_empty) {
            return Err(Error::invalid_argument(
                "INVALID_METADATA",
                format!(
                    "metadata keys must not be empty and keys and values together must stay \
                     within {MAX_METADATA_BYTES} bytes"
                ),
            ));
        }
        if let Some(reply_to) = &req.reply_to {
            check_topic(reply_to).map_err(|e| {
                Error::invalid_argument("INVALID_REPLY_TO", format!("reply_to: {}", e.message))
            })?;
        }
        if req
            .correlation_id
            .as_ref()
            .is_some_and(|c| c.len() > MAX_CORRELATION_BYTES)
        {
            return Err(Error::invalid_argument(
                "INVALID_CORRELATION_ID",
                format!("correlation_id is longer than {MAX_CORRELATION_BYTES} bytes"),
            ));
        }
        Ok(Event {
            id: format!("ev-{}", hex::encode(rand::random::<[u8; 12]>())),
            topic: req.topic,
            payload: req.payload,
            metadata: req.metadata,
            timestamp_ms: epoch_ms(),
            correlation_id: req.correlation_id,
            reply_to: req.reply_to,
        })
    }

    fn spec(&self, call: &Call, req: &pb::SubscribeRequest) -> Result<SubscriberSpec, Error> {
        let pattern = TopicPattern::parse(&req.topic_pattern)?;
        if pattern.has_wildcards() && call.pubsub.wildcards.is_none() {
            return Err(missing_interface(
                &call.backend.name,
                call.backend.kind,
                Interface::PubSubWildcards,
            ));
        }
        let queue_group = req.queue_group.clone().filter(|g| !g.is_empty());
        if let Some(g) = &queue_group {
            check_group(g)?;
        }
        let options = req.options.unwrap_or_default();
        Ok(SubscriberSpec {
            id: format!("psub-{}", hex::encode(rand::random::<[u8; 8]>())),
            pattern,
            queue_group,
            auto_acknowledge: options.auto_acknowledge,
            since_ms: epoch_ms(),
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

#[tonic::async_trait]
impl PubSubService for PubSubApi {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let call = self.call(&request, |r| &r.session_token)?;
        let req = request.into_inner();
        crate::metrics::note_resource(&req.topic);
        let received = req.encoded_len();
        let guard = call.entry.begin_operation(false).map_err(status)?;
        let partitions = call.partitions().map_err(status)?;
        let event = self.event(req).map_err(status)?;
        let count = self
            .subs()
            .count(call.ns(), &call.backend.name, &event.topic);
        let result = call
            .pubsub
            .basic
            .publish(call.ns(), partitions, &event)
            .await;
        drop(guard);
        if let Err(e) = &result {
            if e.kind == ErrorKind::Unavailable {
                call.backend.health.suspect();
            }
        }
        result.map_err(status)?;
        let response = pb::PublishResponse {
            event_id: event.id,
            published_at: Some(crate::backends::timestamp_ms(event.timestamp_ms)),
            subscriber_count: count.min(i32::MAX as usize) as i32,
        };
        call.entry.record_request(received, response.encoded_len());
        Ok(Response::new(response))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let call = self.call(&request, |r| &r.session_token)?;
        let req = request.into_inner();
        crate::metrics::note_resource(&req.topic_pattern);
        let spec = self.spec(&call, &req).map_err(status)?;
        let options = req.options.unwrap_or_default();
        let max_messages = optional_max_messages(options.max_messages).map_err(status)?;
        let max_duration = optional_positive_duration(
            options.max_duration,
            "INVALID_MAX_DURATION",
            "max_duration",
        )
        .map_err(status)?;
        let policy = self.policies.get(call.ns()).cloned().unwrap_or_default();
        let guard = call.entry.begin_operation(true).map_err(status)?;
        call.entry.record_request(req.encoded_len(), 0);
        let sink = Arc::new(EventSink::new(policy.buffer, policy.overflow));
        let shared = Arc::new(PubSubShared::new(
            call.entry.clone(),
            call.backend.name.clone(),
            call.pubsub.clone(),
            spec,
            sink.clone(),
            max_messages,
            max_duration,
            guard,
            *self.registry.clock(),
        ));
        self.subs().start(shared.clone(), &self.pool.next());
        let ready = tokio::time::timeout(SUBSCRIBE_WAIT, shared.ready()).await;
        let outcome = match ready {
            Ok(result) => result,
            Err(_) => Err(crate::backends::kv::unavailable(
                &call.backend.name,
                "the subscription was not in place in time",
            )),
        };
        if let Err(e) = outcome {
            sink.end(SinkEnd::Failed(e.clone()));
            if e.kind == ErrorKind::Unavailable {
                call.backend.health.suspect();
            }
            return Err(status(e));
        }
        Ok(Response::new(event_stream(shared)))
    }

    async fn unsubscribe(
        &self,
        request: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        let call = self.call(&request, |r| &r.session_token)?;
        let req = request.into_inner();
        let entry = self
            .subs()
            .get(&req.subscription_id)
            .filter(|e| e.shared.entry.id == call.entry.id)
            .ok_or_else(|| {
                status(
                    Error::new(
                        ErrorKind::NotFound,
                        "SUBSCRIPTION_NOT_FOUND",
                        format!(
                            "this session has no subscription `{}`; ListSubscriptions shows its \
                             subscriptions",
                            req.subscription_id
                        ),
                    )
                    .with("subscription_id", req.subscription_id.clone()),
                )
            })?;
        let was_active = entry.shared.is_active() && !entry.shared.sink.is_ended();
        entry.shared.sink.end(SinkEnd::Done("unsubscribed"));
        Ok(Response::new(pb::UnsubscribeResponse {
            success: was_active,
        }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let call = self.call(&request, |r| &r.session_token)?;
        let subscriptions = self
            .subs()
            .for_session(&call.entry.id)
            .iter()
            .map(|s| s.to_proto())
            .collect();
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions,
        }))
    }
}
