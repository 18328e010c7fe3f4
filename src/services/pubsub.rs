//! `prism.pubsub.v1.PubSubService` (seed 002 §4): Publish straight to the
//! session's backend; Subscribe as a PubSubSubscriptionActor per stream,
//! answered once the backend subscription is in place (so every event
//! published after the call returns is delivered); Unsubscribe and
//! ListSubscriptions from the gateway's registry. Patterns with `*` or `>`
//! need `pubsub_wildcards`; a backend without it is UNIMPLEMENTED.

use std::{sync::Arc, time::Duration};

use futures::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};

use super::{
    claim_check::{self, ClaimChecks, Payload, Release},
    optional_max_messages, optional_positive_duration,
};
use crate::{
    actors::{
        pubsub::{PubSubShared, PubSubSubscriptions},
        session::NewChild,
        Supervisors,
    },
    backends::{
        epoch_ms, missing_interface,
        pubsub::{
            check_topic, Event, EventSink, PubSubHandle, SinkEnd, SubscriberSpec, TopicPattern,
        },
        Interface,
    },
    config::Pattern,
    error::{Error, ErrorKind, Service},
    gate::{self, Gate, GateState, GatedStream, Kind},
    proto::pubsub::v1::{
        self as pb, pub_sub_service_server::PubSubService, publish_stream_request,
    },
};

/// Most metadata a published event may carry, keys and values together.
const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Longest correlation id.
const MAX_CORRELATION_BYTES: usize = 256;
/// How long Subscribe waits for the backend subscription to be in place.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(30);

pub struct PubSubApi {
    gate: Gate<PubSubHandle>,
    subscriptions: Arc<crate::actors::subscription::Subscriptions>,
    supervisors: Arc<Supervisors>,
    /// Payloads above a namespace's threshold, kept in its object store.
    claims: Arc<ClaimChecks>,
}

type Call = gate::Call<PubSubHandle>;

gate::session_token_field!(
    pb::PublishRequest,
    pb::SubscribeRequest,
    pb::UnsubscribeRequest,
    pb::ListSubscriptionsRequest,
);

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

/// Ends the subscription's sink when the client drops the stream.
struct Abandon(Arc<EventSink>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.abandon("client went away");
    }
}

/// An event as a subscriber receives it.
fn event_to_proto(e: &Event, subscription_id: &str) -> pb::Event {
    pb::Event {
        event_id: e.id.clone(),
        topic: e.topic.clone(),
        payload: e.payload.clone(),
        metadata: e.metadata.clone(),
        timestamp: Some(crate::backends::timestamp_ms(e.timestamp_ms)),
        correlation_id: e.correlation_id.clone(),
        reply_to: e.reply_to.clone(),
        subscription_id: subscription_id.to_string(),
    }
}

/// A subscription's events: from its sink until the sink ends or
/// `max_messages` were sent.
fn events(
    shared: Arc<PubSubShared>,
) -> impl futures::Stream<Item = Result<pb::Event, Error>> + Send + 'static {
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
    futures::stream::unfold(state, |mut st| async move {
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
                Some((Ok(event_to_proto(&event, st.shared.id())), st))
            }
            Ok(None) => None,
            Err(e) => {
                st.failed = true;
                Some((Err(e), st))
            }
        }
    })
}

impl PubSubApi {
    pub fn new(
        gates: &GateState,
        subscriptions: Arc<crate::actors::subscription::Subscriptions>,
        supervisors: Arc<Supervisors>,
        claims: Arc<ClaimChecks>,
    ) -> Self {
        PubSubApi {
            gate: gates.gate(
                Service::PubSub,
                Pattern::Pubsub,
                Interface::PubSubBasic,
                |b| b.pubsub.as_ref(),
            ),
            subscriptions,
            supervisors,
            claims,
        }
    }

    /// The gateway's PubSub subscriptions.
    fn subs(&self) -> &PubSubSubscriptions {
        &self.subscriptions.pubsub
    }

    /// The event a request publishes; `max` bounds its payload (None: sent
    /// in pieces, bounded as it arrives).
    fn event(&self, req: pb::PublishRequest, max: Option<usize>) -> Result<Event, Error> {
        check_topic(&req.topic)?;
        claim_check::check_reserved(req.metadata.keys())?;
        if let Some(max) = max.filter(|max| req.payload.len() > *max) {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                "PAYLOAD_TOO_LARGE",
                format!(
                    "payload of {} bytes exceeds the limit of {} bytes",
                    req.payload.len(),
                    max
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

    /// Publishes `event` with `payload` (or the headers naming where it
    /// was stored, deleted again if the event was not published).
    async fn publish_event(
        &self,
        call: &Call,
        mut event: Event,
        payload: Payload,
    ) -> Result<pb::PublishResponse, Error> {
        let stored = payload.attach(&mut event.payload, &mut event.metadata);
        let count = self
            .subs()
            .count(call.ns(), &call.backend.name, &event.topic);
        let partitions = call.entry.config.options.partitions;
        let sent = call
            .handle
            .basic
            .publish(call.ns(), partitions, &event)
            .await;
        self.claims.discard_failed(&sent, stored.as_ref()).await;
        sent?;
        Ok(pb::PublishResponse {
            event_id: event.id,
            published_at: Some(crate::backends::timestamp_ms(event.timestamp_ms)),
            subscriber_count: count.min(i32::MAX as usize) as i32,
        })
    }

    fn spec(&self, call: &Call, req: &pb::SubscribeRequest) -> Result<SubscriberSpec, Error> {
        let pattern = TopicPattern::parse(&req.topic_pattern)?;
        if pattern.has_wildcards() && call.handle.wildcards.is_none() {
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
        self.gate
            .unary(request, async |call, req| {
                crate::call::note_resource(&req.topic);
                let mut event = self.event(req, Some(call.limits().max_message_bytes))?;
                let payload = std::mem::take(&mut event.payload);
                let payload = self
                    .claims
                    .check_in(call.ns(), call.policy(), payload, Release::Retention)
                    .await?;
                self.publish_event(call, event, payload).await
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
                let mut event = self.event(start, None)?;
                let payload = self
                    .claims
                    .receive(
                        call.ns(),
                        call.policy(),
                        std::mem::take(&mut event.payload),
                        rest,
                        call.limits().max_message_bytes,
                        Release::Retention,
                    )
                    .await?;
                self.publish_event(call, event, payload).await
            },
        )
        .await
    }

    type SubscribeStream = GatedStream<pb::Event>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let call = self.gate.open(&request, Kind::Stream).await?;
        let req = request.into_inner();
        crate::call::note_resource(&req.topic_pattern);
        let checked = (|| {
            let spec = self.spec(&call, &req)?;
            let options = req.options.unwrap_or_default();
            let max_messages = optional_max_messages(options.max_messages)?;
            let max_duration = optional_positive_duration(
                options.max_duration,
                "INVALID_MAX_DURATION",
                "max_duration",
            )?;
            Ok((spec, max_messages, max_duration))
        })();
        let (spec, max_messages, max_duration) = checked.map_err(|e| call.fail(e))?;
        let policy = &call.policy().pubsub;
        let sink = Arc::new(EventSink::new(
            policy.buffer,
            policy.buffer_bytes,
            policy.overflow,
        ));
        let shared = Arc::new(PubSubShared::new(
            call.entry.clone(),
            call.backend.name.clone(),
            call.handle.clone(),
            spec,
            sink.clone(),
            max_messages,
            max_duration,
            *self.gate.registry().clock(),
        ));
        self.supervisors
            .start_child(&call.entry, NewChild::PubSub(shared.clone()))
            .await
            .map_err(|e| call.fail(e))?;
        self.subs().record(shared.clone());
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
            return Err(call.fail(e));
        }
        // A claim-checked event becomes its payload here, a piece at a time
        // as the client takes them.
        let (claims, chunk) = (self.claims.clone(), ClaimChecks::chunk_size(call.policy()));
        let ns = call.ns().to_string();
        let events = events(shared).flat_map(move |item| claims.expand(item, &ns, chunk, None));
        Ok(Response::new(call.stream(events)))
    }

    async fn unsubscribe(
        &self,
        request: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        let call = self.gate.open(&request, Kind::Unary).await?;
        let req = request.into_inner();
        let entry = self
            .subs()
            .get(&req.subscription_id)
            .filter(|e| e.shared.entry.id == call.entry.id)
            .ok_or_else(|| {
                call.fail(
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
        let was_active = entry.shared.is_live();
        entry.shared.sink.end(SinkEnd::Done("unsubscribed"));
        Ok(call.reply(pb::UnsubscribeResponse {
            success: was_active,
        }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let call = self.gate.open(&request, Kind::Unary).await?;
        let subscriptions = self
            .subs()
            .for_session(&call.entry.id)
            .iter()
            .map(|s| s.to_proto())
            .collect();
        Ok(call.reply(pb::ListSubscriptionsResponse { subscriptions }))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// The brokers' event bytes stay those of `prism.pubsub.v1.Event`, so
    /// gateways of either format read each other's events.
    #[test]
    fn broker_events_are_wire_compatible_with_the_api_event() {
        let e = Event {
            id: "ev-1".into(),
            topic: "a.b".into(),
            payload: vec![0, 255, 1],
            metadata: [("k".to_string(), "v".to_string())].into(),
            timestamp_ms: 1_767_225_600_123,
            correlation_id: Some("c-1".into()),
            reply_to: Some("r.x".into()),
        };
        let api = pb::Event::decode(e.encode().as_slice()).unwrap();
        assert_eq!(api, event_to_proto(&e, ""));
        assert_eq!(
            Event::decode(&event_to_proto(&e, "sub-1").encode_to_vec()),
            Some(e)
        );
    }
}
