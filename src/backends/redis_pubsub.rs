//! PubSub on Redis pub/sub: a topic is the channel
//! `prism-ps.<namespace>.<topic>`. An exact pattern SUBSCRIBEs; a wildcard
//! pattern PSUBSCRIBEs a glob that covers it (`*` and `>` become `*`, glob
//! characters in literal tokens are escaped, so `a*b` stays literal) and
//! the gateway keeps only what the pattern really matches (a Redis `*` also
//! spans dots). Each subscription has a connection of its own. Queue groups
//! are the gateway's: every member hears the event and the first to claim
//! it (`SET NX` on `prism:ps:claim:...`, kept a minute) delivers it.
//! At-most-once, as Redis pub/sub is.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;

use super::{
    pubsub::{
        short_hash, Event, EventSink, Forwarder, PubSubBasic, PubSubWildcards, SinkEnd, Subscriber,
        SubscriberSpec, Token,
    },
    redis::{glob_escape, RedisBackend},
};
use crate::error::Error;

impl PubSubWildcards for RedisBackend {}

/// How long a queue group's claim on an event is kept, ms.
const CLAIM_MS: u64 = 60_000;

fn channel(ns: &str, topic: &str) -> String {
    format!("prism-ps.{}.{topic}", super::ns_token(ns))
}

/// The glob covering a pattern (a superset; the gateway filters).
fn glob(ns: &str, spec: &SubscriberSpec) -> String {
    let tokens: Vec<String> = spec
        .pattern
        .tokens()
        .iter()
        .map(|t| match t {
            Token::Literal(l) => glob_escape(l),
            Token::One | Token::Rest => "*".to_string(),
        })
        .collect();
    format!("prism-ps.{}.{}", super::ns_token(ns), tokens.join("."))
}

#[async_trait]
impl PubSubBasic for RedisBackend {
    async fn publish(&self, ns: &str, _partitions: i32, event: &Event) -> Result<(), Error> {
        let mut conn = self.conn()?;
        redis::cmd("PUBLISH")
            .arg(channel(ns, &event.topic))
            .arg(event.encode())
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| self.redis_error(e))
    }

    async fn subscribe(
        &self,
        ns: &str,
        spec: &SubscriberSpec,
        sink: Arc<EventSink>,
    ) -> Result<Box<dyn Subscriber>, Error> {
        let client = self.client().clone();
        let claims = match &spec.queue_group {
            Some(group) => Some((
                self.conn()?,
                format!(
                    "prism:ps:claim:{ns}:{}:",
                    short_hash(&format!("{}\u{0}{group}", spec.pattern.as_str()))
                ),
            )),
            None => None,
        };
        let exact = (!spec.pattern.has_wildcards()).then(|| channel(ns, spec.pattern.as_str()));
        let glob = glob(ns, spec);
        let pattern = spec.pattern.clone();
        let lost = super::kv::unavailable(&self.name, "the server closed the subscription");
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        // The connection and its driver live on the gateway's runtime.
        let forwarder = Forwarder::spawn(&spec.runtime, |mut stop| async move {
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                match exact {
                    Some(channel) => pubsub.subscribe(channel).await?,
                    None => pubsub.psubscribe(glob).await?,
                }
                Ok::<_, redis::RedisError>(pubsub)
            }
            .await;
            let pubsub = match subscribed {
                Ok(pubsub) => {
                    let _ = ready_tx.send(Ok(()));
                    pubsub
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut messages = pubsub.into_on_message();
            let mut claims = claims;
            loop {
                let message = tokio::select! {
                    _ = &mut stop => break,
                    m = messages.next() => m,
                };
                let Some(message) = message else {
                    sink.end(SinkEnd::Failed(lost));
                    break;
                };
                let Some(event) = Event::decode(message.get_payload_bytes()) else {
                    continue;
                };
                if !pattern.matches(&event.topic) {
                    continue;
                }
                if let Some((conn, prefix)) = claims.as_mut() {
                    let won = redis::cmd("SET")
                        .arg(format!("{prefix}{}", event.id))
                        .arg(1)
                        .arg("NX")
                        .arg("PX")
                        .arg(CLAIM_MS)
                        .query_async::<Option<String>>(conn)
                        .await;
                    match won {
                        Ok(Some(_)) => {}
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "redis queue-group claim failed");
                            sink.end(SinkEnd::Failed(lost));
                            break;
                        }
                    }
                }
                if !sink.push(Arc::new(event)) {
                    break;
                }
            }
        });
        match ready_rx.await {
            Ok(Ok(())) => Ok(Box::new(forwarder)),
            Ok(Err(e)) => Err(self.redis_error(e)),
            Err(_) => Err(super::kv::unavailable(
                &self.name,
                "the subscription task ended early",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::pubsub::TopicPattern;

    fn spec(pattern: &str) -> SubscriberSpec {
        SubscriberSpec {
            id: "s".into(),
            pattern: TopicPattern::parse(pattern).unwrap(),
            queue_group: None,
            auto_acknowledge: false,
            since_ms: 0,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    #[tokio::test]
    async fn globs_cover_patterns_and_escape_literals() {
        assert_eq!(
            glob("ns", &spec("events.user.*")),
            "prism-ps.ns.events.user.*"
        );
        assert_eq!(glob("ns", &spec("events.>")), "prism-ps.ns.events.*");
        assert_eq!(
            glob("ns", &spec("a*b.[x]?.>")),
            r"prism-ps.ns.a\*b.\[x\]\?.*"
        );
    }
}
