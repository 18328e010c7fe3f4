//! PubSub on core NATS: a topic is the subject `prism-ps.<namespace>.<topic>`
//! and a pattern subscribes natively (`*` and `>` are NATS's own wildcards;
//! a queue group is a NATS queue group). At-most-once: core NATS stores
//! nothing, and a subscriber that falls behind loses events by the
//! namespace's overflow policy. Publish returns once the server has the
//! event (a flush), Subscribe once the server has the subscription.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;

use super::{
    nats::NatsBackend,
    pubsub::{
        Event, EventSink, Forwarder, PubSubBasic, PubSubWildcards, SinkEnd, Subscriber,
        SubscriberSpec,
    },
};
use crate::error::Error;

impl PubSubWildcards for NatsBackend {}

fn subject(ns: &str, topic: &str) -> String {
    format!("prism-ps.{}.{topic}", super::ns_token(ns))
}

#[async_trait]
impl PubSubBasic for NatsBackend {
    async fn publish(&self, ns: &str, _partitions: i32, event: &Event) -> Result<(), Error> {
        let client = self.client()?;
        client
            .publish(subject(ns, &event.topic), event.encode().into())
            .await
            .map_err(|e| self.unavailable(e))?;
        client.flush().await.map_err(|e| self.unavailable(e))
    }

    async fn subscribe(
        &self,
        ns: &str,
        spec: &SubscriberSpec,
        sink: Arc<EventSink>,
    ) -> Result<Box<dyn Subscriber>, Error> {
        let client = self.client()?;
        let subject = subject(ns, spec.pattern.as_str());
        let mut subscription = match &spec.queue_group {
            Some(group) => client.queue_subscribe(subject, group.clone()).await,
            None => client.subscribe(subject).await,
        }
        .map_err(|e| self.unavailable(e))?;
        client.flush().await.map_err(|e| self.unavailable(e))?;
        let pattern = spec.pattern.clone();
        let lost = super::kv::unavailable(&self.name, "the server closed the subscription");
        Ok(Box::new(Forwarder::spawn(
            &spec.runtime,
            |mut stop| async move {
                loop {
                    let message = tokio::select! {
                        _ = &mut stop => break,
                        m = subscription.next() => m,
                    };
                    let Some(message) = message else {
                        sink.end(SinkEnd::Failed(lost));
                        break;
                    };
                    // Anything else on the subject is not ours to deliver.
                    let Some(event) = Event::decode(&message.payload) else {
                        continue;
                    };
                    if pattern.matches(&event.topic) && !sink.push(Arc::new(event)) {
                        break;
                    }
                }
                let _ = subscription.unsubscribe().await;
            },
        )))
    }
}
