//! PubSub acceptance tests, against every backend with PubSub in this build
//! (memory, NATS, Redis, Kafka) on real servers. Each test publishes to a
//! fresh namespace. Topics a wildcard subscription should see are created
//! first (a warm-up publish nobody receives), so Kafka's regex subscription
//! finds them when it starts.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use common::{api_key_request, assert_error, TestGateway, OTHER_KEY, TEST_KEY};
use prism::{
    backends::{BackendKind, Interface},
    config::{GatewayConfig, Source},
    error::Service,
    proto::pubsub::v1::{self as pb, pub_sub_service_client::PubSubServiceClient},
    runtime::block_on_multi_thread,
};
use tonic::{transport::Channel, Code, Status, Streaming};

const BACKENDS: [(&str, BackendKind); 4] = [
    ("memory", BackendKind::Memory),
    ("nats", BackendKind::Nats),
    ("redis", BackendKind::Redis),
    ("kafka", BackendKind::Kafka),
];

/// The backends that push (no backpressure; the overflow policy applies).
const PUSH_BACKENDS: [&str; 3] = ["memory", "nats", "redis"];

const THIRD_KEY: &str = "third-key";
/// Keys of namespaces `iso<run>` and `iso<run>.x`, whose names prefix each
/// other.
const ISO_KEY: &str = "iso-key";
const ISO_X_KEY: &str = "iso-x-key";

/// Namespaces `ps<run>` (test-key), `psdrop<run>` (other-key; buffer 8,
/// drop_oldest) and `psend<run>` (third-key; buffer 8, end_stream); per
/// backend, configs `<backend>`, `<backend>-drop`, `<backend>-end`.
fn config() -> GatewayConfig {
    let run = common::kv::run_id();
    let mut configs = String::new();
    for (name, _) in BACKENDS {
        for (suffix, ns) in [
            ("", "ps"),
            ("-drop", "psdrop"),
            ("-end", "psend"),
            ("-iso", "iso"),
        ] {
            configs.push_str(&format!(
                "  {name}{suffix}:\n    namespace: {ns}{run}\n    pattern: pubsub\n    \
                 backend: {name}\n    options: {{ partitions: \"4\" }}\n"
            ));
        }
        configs.push_str(&format!(
            "  {name}-isox:\n    namespace: iso{run}.x\n    pattern: pubsub\n    backend: {name}\n"
        ));
    }
    let namespace = |prefix: &str, key: &str, pubsub: &str| {
        format!(
            "  {prefix}{run}:\n    allowed_backends: [memory, nats, redis, kafka, postgres]\n    \
             allowed_patterns: [pubsub]\n    api_keys: [{{ name: k, sha256: \"{}\" }}]\n    \
             pubsub: {pubsub}\n",
            prism::auth::api_key_digest(key)
        )
    };
    let yaml = format!(
        r#"
server: {{ shutdown_grace: 5s, supervision_interval: 100ms, actor_threads: 2 }}
backends:
  memory: {{ type: memory }}
  nats: {{ type: nats, url: "{nats}", pool: {pool} }}
  kafka: {{ type: kafka, url: "{kafka}", pool: {pool} }}
  redis: {{ type: redis, url: "{redis}", pool: {pool} }}
  postgres: {{ type: postgres, url: "{pg}", pool: {pool} }}
namespaces:
{ns}{drop}{end}{iso}{iso_x}
configs:
{configs}
"#,
        nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
        kafka = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        redis = common::kv::redis_url(),
        pg = common::kv::database_url(),
        pool = common::kv::FAST_POOL,
        ns = namespace("ps", TEST_KEY, "{ buffer: 256 }"),
        drop = namespace("psdrop", OTHER_KEY, "{ buffer: 8, overflow: drop_oldest }"),
        end = namespace("psend", THIRD_KEY, "{ buffer: 8, overflow: end_stream }"),
        iso = namespace("iso", ISO_KEY, "{ buffer: 256 }"),
        iso_x = namespace("iso", ISO_X_KEY, "{ buffer: 256 }").replacen(
            &format!("iso{run}:"),
            &format!("iso{run}.x:"),
            1
        ),
    );
    GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).unwrap()
}

fn backends() -> Vec<&'static str> {
    BACKENDS
        .iter()
        .filter(|(name, k)| {
            let has = k.has(Interface::PubSubWildcards);
            if !has {
                println!("skipping {name}: the {k} backend does not implement pubsub_wildcards");
            }
            has
        })
        .map(|(n, _)| *n)
        .collect()
}

#[derive(Clone)]
struct P {
    client: PubSubServiceClient<Channel>,
    /// Where Subscribe goes (usually `client`).
    streams: PubSubServiceClient<Channel>,
    token: String,
    name: String,
}

struct Sub {
    id: String,
    stream: Streaming<pb::Event>,
}

async fn open_as(gw: &TestGateway, key: &str, config: &str) -> P {
    // Configs are named `<backend>` or `<backend>-<policy>`.
    gw.wait_backend_up(config.split('-').next().unwrap()).await;
    let s = gw
        .sessions()
        .create_session(api_key_request(key, config))
        .await
        .unwrap_or_else(|e| panic!("{config}: session: {e:?}"))
        .into_inner();
    P {
        client: PubSubServiceClient::new(gw.channel.clone()),
        streams: PubSubServiceClient::new(gw.channel.clone()),
        token: s.session_token,
        name: config.to_string(),
    }
}

/// A session whose streams use a connection of their own with 64 KiB
/// HTTP/2 windows (hyper's default stream window is 2 MiB): a client that
/// stops reading backs the subscription up after a few events, and its
/// unary calls still get through on the shared connection.
async fn open_narrow(gw: &TestGateway, key: &str, config: &str) -> P {
    let mut p = open_as(gw, key, config).await;
    let channel = gw.narrow_channel(65_535).await;
    p.streams = PubSubServiceClient::new(channel);
    p
}

async fn open(gw: &TestGateway, backend: &str) -> P {
    open_as(gw, TEST_KEY, backend).await
}

fn request(topic: &str, payload: &[u8]) -> pb::PublishRequest {
    pb::PublishRequest {
        topic: topic.into(),
        payload: payload.to_vec(),
        ..Default::default()
    }
}

impl P {
    async fn send(&self, mut req: pb::PublishRequest) -> Result<pb::PublishResponse, Status> {
        req.session_token = self.token.clone();
        self.client
            .clone()
            .publish(req)
            .await
            .map(|r| r.into_inner())
    }

    async fn publish(&self, topic: &str, payload: &[u8]) -> pb::PublishResponse {
        self.send(request(topic, payload))
            .await
            .unwrap_or_else(|e| panic!("{}: publish {topic}: {e:?}", self.name))
    }

    /// Creates the topics (Kafka) before anyone subscribes.
    async fn warm(&self, topics: &[&str]) {
        for t in topics {
            self.publish(t, b"warm-up").await;
        }
    }

    async fn try_subscribe(&self, req: pb::SubscribeRequest) -> Result<Sub, Status> {
        let before: BTreeSet<String> = self
            .list()
            .await
            .into_iter()
            .map(|s| s.subscription_id)
            .collect();
        let stream = self
            .streams
            .clone()
            .subscribe(pb::SubscribeRequest {
                session_token: self.token.clone(),
                ..req
            })
            .await?
            .into_inner();
        let id = self
            .list()
            .await
            .into_iter()
            .map(|s| s.subscription_id)
            .find(|id| !before.contains(id))
            .expect("the new subscription is listed");
        Ok(Sub { id, stream })
    }

    async fn subscribe_with(
        &self,
        pattern: &str,
        group: Option<&str>,
        options: Option<pb::SubscriptionOptions>,
    ) -> Sub {
        self.try_subscribe(pb::SubscribeRequest {
            topic_pattern: pattern.into(),
            queue_group: group.map(str::to_string),
            options,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{}: subscribe {pattern}: {e:?}", self.name))
    }

    async fn subscribe(&self, pattern: &str) -> Sub {
        self.subscribe_with(pattern, None, None).await
    }

    async fn list(&self) -> Vec<pb::Subscription> {
        self.client
            .clone()
            .list_subscriptions(pb::ListSubscriptionsRequest {
                session_token: self.token.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .subscriptions
    }

    async fn unsubscribe(&self, id: &str) -> Result<bool, Status> {
        self.client
            .clone()
            .unsubscribe(pb::UnsubscribeRequest {
                session_token: self.token.clone(),
                subscription_id: id.into(),
            })
            .await
            .map(|r| r.into_inner().success)
    }
}

impl Sub {
    async fn next(&mut self) -> pb::Event {
        tokio::time::timeout(Duration::from_secs(20), self.stream.message())
            .await
            .expect("an event in time")
            .expect("no stream error")
            .expect("stream still open")
    }

    async fn take(&mut self, n: usize) -> Vec<pb::Event> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next().await);
        }
        out
    }

    /// Everything left until the stream ends (bounded).
    async fn rest(mut self) -> Vec<pb::Event> {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(e) = self.stream.message().await.expect("no stream error") {
                out.push(e);
            }
        })
        .await
        .expect("stream ends in time");
        out
    }
}

/// Unsubscribes and returns what the stream still delivers before it ends.
async fn close(p: &P, sub: Sub) -> Vec<pb::Event> {
    assert!(p.unsubscribe(&sub.id).await.unwrap(), "{}", p.name);
    sub.rest().await
}

fn topics(events: &[pb::Event]) -> BTreeSet<String> {
    events.iter().map(|e| e.topic.clone()).collect()
}

/// A subscription's observable state in the actor tree.
async fn state(gw: &TestGateway, id: &str) -> serde_json::Value {
    let tree = gw.gateway.observe().await.unwrap();
    tree.find(id)
        .unwrap_or_else(|| panic!("{id} is in the actor tree"))
        .state
        .clone()
}

async fn finish(gw: TestGateway) {
    gw.stop().await;
}

#[test]
fn patterns_route_the_same_on_every_backend() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        let all = [
            "other.user.created",
            "events.user.a.b",
            "events.order.created",
            "events.user.created",
        ];
        for b in backends() {
            let p = open(&gw, b).await;
            p.warm(&all).await;
            let mut subs = Vec::new();
            for pattern in [
                "events.user.created",
                "events.user.*",
                "events.>",
                "*.user.*",
            ] {
                subs.push((pattern, p.subscribe(pattern).await));
            }
            let mut counts = BTreeMap::new();
            // What no pattern should see first, what all see last.
            for t in all {
                counts.insert(t, p.publish(t, t.as_bytes()).await.subscriber_count);
            }
            assert_eq!(
                counts,
                BTreeMap::from([
                    ("events.order.created", 1),
                    ("events.user.a.b", 1),
                    ("events.user.created", 4),
                    ("other.user.created", 1),
                ]),
                "{b}: subscriber_count"
            );
            let want: [(&str, &[&str]); 4] = [
                ("events.user.created", &["events.user.created"]),
                ("events.user.*", &["events.user.created"]),
                (
                    "events.>",
                    &[
                        "events.user.a.b",
                        "events.order.created",
                        "events.user.created",
                    ],
                ),
                ("*.user.*", &["other.user.created", "events.user.created"]),
            ];
            for ((pattern, mut sub), (_, expected)) in subs.into_iter().zip(want) {
                let mut got = sub.take(expected.len()).await;
                got.extend(close(&p, sub).await);
                assert_eq!(
                    topics(&got),
                    expected.iter().map(|s| s.to_string()).collect(),
                    "{b}: {pattern}"
                );
                assert_eq!(got.len(), expected.len(), "{b}: {pattern}: no duplicates");
                assert!(got.iter().all(|e| e.payload == e.topic.as_bytes()), "{b}");
            }
        }
        finish(gw).await;
    });
}

#[test]
fn namespaces_whose_names_prefix_each_other_are_isolated_on_every_backend() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends() {
            // `iso<run>` + `x.a` and `iso<run>.x` + `a` would meet on one
            // broker name if names were joined with dots.
            let outer = open_as(&gw, ISO_KEY, &format!("{b}-iso")).await;
            let inner = open_as(&gw, ISO_X_KEY, &format!("{b}-isox")).await;
            outer.warm(&["x.a"]).await;
            inner.warm(&["a"]).await;
            let mut outer_sub = outer.subscribe(">").await;
            let mut inner_sub = inner.subscribe(">").await;
            assert_eq!(
                outer.publish("x.a", b"outer").await.subscriber_count,
                1,
                "{b}"
            );
            assert_eq!(
                inner.publish("a", b"inner").await.subscriber_count,
                1,
                "{b}"
            );
            let mut got_outer = outer_sub.take(1).await;
            let mut got_inner = inner_sub.take(1).await;
            got_outer.extend(close(&outer, outer_sub).await);
            got_inner.extend(close(&inner, inner_sub).await);
            let seen = |events: &[pb::Event]| -> Vec<(String, Vec<u8>)> {
                events
                    .iter()
                    .map(|e| (e.topic.clone(), e.payload.clone()))
                    .collect()
            };
            assert_eq!(
                seen(&got_outer),
                [("x.a".to_string(), b"outer".to_vec())],
                "{b}"
            );
            assert_eq!(
                seen(&got_inner),
                [("a".to_string(), b"inner".to_vec())],
                "{b}"
            );
        }
        finish(gw).await;
    });
}

#[test]
fn glob_characters_in_literal_tokens_are_not_wildcards() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        let negatives = ["lit.axb", "lit.qz", "lit.a", "x.axb"];
        let positives = ["lit.a*b", "lit.q?", "lit.[ab]"];
        for b in backends() {
            let p = open(&gw, b).await;
            p.warm(&negatives).await;
            p.warm(&positives).await;
            let mut subs = Vec::new();
            for (pattern, expected) in [
                ("lit.a*b", vec!["lit.a*b"]),
                ("lit.q?", vec!["lit.q?"]),
                ("lit.[ab]", vec!["lit.[ab]"]),
                ("*.a*b", vec!["lit.a*b"]),
            ] {
                subs.push((pattern, expected, p.subscribe(pattern).await));
            }
            for t in negatives.iter().chain(&positives) {
                p.publish(t, b"x").await;
            }
            for (pattern, expected, mut sub) in subs {
                let mut got = sub.take(expected.len()).await;
                got.extend(close(&p, sub).await);
                assert_eq!(
                    got.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>(),
                    expected,
                    "{b}: {pattern} is literal"
                );
            }
        }
        finish(gw).await;
    });
}

#[test]
fn fan_out_reaches_every_subscriber_and_counts_them() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends() {
            let p = open(&gw, b).await;
            p.warm(&["fan.news"]).await;
            let mut subs = Vec::new();
            for _ in 0..3 {
                subs.push(p.subscribe("fan.news").await);
            }
            for i in 0..10 {
                let r = p.publish("fan.news", format!("{i}").as_bytes()).await;
                assert_eq!(r.subscriber_count, 3, "{b}");
            }
            for mut sub in subs {
                let got: BTreeSet<Vec<u8>> =
                    sub.take(10).await.into_iter().map(|e| e.payload).collect();
                assert_eq!(got.len(), 10, "{b}: every event, once");
                assert_eq!(close(&p, sub).await.len(), 0, "{b}: nothing more");
            }
        }
        finish(gw).await;
    });
}

#[test]
fn a_queue_group_splits_the_events_and_outsiders_get_them_all() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends() {
            let p = open(&gw, b).await;
            p.warm(&["jobs.run"]).await;
            let mut a = p.subscribe_with("jobs.>", Some("workers"), None).await;
            let mut c = p.subscribe_with("jobs.>", Some("workers"), None).await;
            let mut outsider = p.subscribe("jobs.>").await;
            for i in 0..100 {
                let r = p.publish("jobs.run", format!("{i}").as_bytes()).await;
                assert_eq!(r.subscriber_count, 2, "{b}: the group counts once");
            }
            let mut per_member = [Vec::new(), Vec::new()];
            let mut seen = BTreeSet::new();
            tokio::time::timeout(Duration::from_secs(30), async {
                while seen.len() < 100 {
                    tokio::select! {
                        e = a.next() => { seen.insert(e.payload.clone()); per_member[0].push(e.payload); }
                        e = c.next() => { seen.insert(e.payload.clone()); per_member[1].push(e.payload); }
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{b}: the group got {} of 100", seen.len()));
            per_member[0].extend(close(&p, a).await.into_iter().map(|e| e.payload));
            per_member[1].extend(close(&p, c).await.into_iter().map(|e| e.payload));
            let total = per_member[0].len() + per_member[1].len();
            println!(
                "{b}: members took {} and {}",
                per_member[0].len(),
                per_member[1].len()
            );
            assert_eq!(total, 100, "{b}: each event to exactly one member");
            if b != "redis" {
                // Redis members race for a claim; the others share out.
                assert!(
                    per_member.iter().all(|m| !m.is_empty()),
                    "{b}: both members work"
                );
            }
            let all: BTreeSet<Vec<u8>> = outsider
                .take(100)
                .await
                .into_iter()
                .map(|e| e.payload)
                .collect();
            assert_eq!(all.len(), 100, "{b}: the outsider gets every event");
            assert!(close(&p, outsider).await.is_empty(), "{b}");
        }
        finish(gw).await;
    });
}

#[test]
fn unsubscribe_stops_delivery_and_list_reflects_it() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends() {
            let p = open(&gw, b).await;
            p.warm(&["life.x"]).await;
            let mut alone = p.subscribe("life.x").await;
            let mut grouped = p.subscribe_with("life.>", Some("g"), None).await;
            let listed = p.list().await;
            assert_eq!(listed.len(), 2, "{b}");
            let by_id: HashMap<&str, &pb::Subscription> = listed
                .iter()
                .map(|s| (s.subscription_id.as_str(), s))
                .collect();
            let s = by_id[alone.id.as_str()];
            assert_eq!(
                (s.topic_pattern.as_str(), s.queue_group.as_deref(), s.active),
                ("life.x", None, true),
                "{b}"
            );
            assert!(s.created_at.is_some(), "{b}");
            let s = by_id[grouped.id.as_str()];
            assert_eq!(
                (s.topic_pattern.as_str(), s.queue_group.as_deref()),
                ("life.>", Some("g")),
                "{b}"
            );

            assert_eq!(p.publish("life.x", b"1").await.subscriber_count, 2, "{b}");
            alone.next().await;
            grouped.next().await;
            let listed = p.list().await;
            assert!(
                listed.iter().all(|s| s.messages_received == 1),
                "{b}: {listed:?}"
            );

            assert!(p.unsubscribe(&alone.id).await.unwrap(), "{b}");
            assert!(alone.rest().await.is_empty(), "{b}: the stream ends");
            assert_eq!(p.publish("life.x", b"2").await.subscriber_count, 1, "{b}");
            assert_eq!(grouped.next().await.payload, b"2", "{b}");
            let listed = p.list().await;
            let active: Vec<bool> = listed.iter().map(|s| s.active).collect();
            assert_eq!(active, vec![false, true], "{b}: oldest first");
            assert!(
                !p.unsubscribe(&listed[0].subscription_id).await.unwrap(),
                "{b}: already ended"
            );

            let err = p.unsubscribe("psub-nope").await.unwrap_err();
            assert_error(
                &err,
                Code::NotFound,
                "SUBSCRIPTION_NOT_FOUND",
                Service::PubSub,
            );
            // Another session cannot see or end this one's subscriptions.
            let other = open(&gw, b).await;
            assert!(other.list().await.is_empty(), "{b}");
            let err = other.unsubscribe(&grouped.id).await.unwrap_err();
            assert_eq!(err.code(), Code::NotFound, "{b}");
            assert!(close(&p, grouped).await.is_empty(), "{b}");
        }
        finish(gw).await;
    });
}

#[test]
fn binary_payloads_metadata_and_request_reply_round_trip() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends() {
            let p = open(&gw, b).await;
            let inbox = "rpc.replies.client-1";
            p.warm(&["rpc.echo", inbox]).await;
            let mut server = p.subscribe("rpc.echo").await;
            let mut replies = p.subscribe(inbox).await;
            let responder = {
                let p = p.clone();
                tokio::spawn(async move {
                    let req = server.next().await;
                    let reversed: Vec<u8> = req.payload.iter().rev().copied().collect();
                    p.send(pb::PublishRequest {
                        topic: req.reply_to.clone().expect("reply_to"),
                        payload: reversed,
                        correlation_id: req.correlation_id.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                    (req, server)
                })
            };
            let payload: Vec<u8> = (0..=255u8).collect();
            let metadata = HashMap::from([
                (
                    "content-type".to_string(),
                    "application/octet-stream".to_string(),
                ),
                ("trace".to_string(), "t-1 ü".to_string()),
            ]);
            let sent = p
                .send(pb::PublishRequest {
                    topic: "rpc.echo".into(),
                    payload: payload.clone(),
                    metadata: metadata.clone(),
                    correlation_id: Some("corr-1".into()),
                    reply_to: Some(inbox.into()),
                    ..Default::default()
                })
                .await
                .unwrap();
            let reply = replies.next().await;
            let (req, server) = responder.await.unwrap();
            assert_eq!(req.event_id, sent.event_id, "{b}");
            assert_eq!(req.timestamp, sent.published_at, "{b}");
            assert_eq!(req.payload, payload, "{b}");
            assert_eq!(req.metadata, metadata, "{b}");
            assert_eq!(req.topic, "rpc.echo", "{b}");
            assert_eq!(req.subscription_id, server.id, "{b}");
            assert_eq!(reply.correlation_id.as_deref(), Some("corr-1"), "{b}");
            assert_eq!(reply.topic, inbox, "{b}");
            assert_eq!(
                reply.payload,
                payload.iter().rev().copied().collect::<Vec<_>>(),
                "{b}"
            );
            assert_eq!(reply.subscription_id, replies.id, "{b}");
            close(&p, server).await;
            close(&p, replies).await;
        }
        finish(gw).await;
    });
}

/// Publishes `n` 4 KiB events numbered in their first bytes: more than a
/// narrow connection's windows hold, so a subscriber that does not read
/// backs up.
async fn flood(p: &P, topic: &str, n: u32) {
    for i in 0..n {
        let mut payload = vec![0u8; 4096];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        p.publish(topic, &payload).await;
    }
}

fn number(e: &pb::Event) -> u32 {
    u32::from_be_bytes(e.payload[..4].try_into().unwrap())
}

#[test]
fn a_stalled_subscriber_meets_the_overflow_policy() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        const N: u32 = 300;
        for b in backends() {
            // drop_oldest: nothing is lost silently; the newest survive.
            let p = open_narrow(&gw, OTHER_KEY, &format!("{b}-drop")).await;
            p.warm(&["flood.x"]).await;
            let mut sub = p.subscribe("flood.x").await;
            flood(&p, "flood.x", N).await;
            // Wait (bounded) until the subscription has seen every event.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            let pushes = PUSH_BACKENDS.contains(&b);
            if pushes {
                loop {
                    let s = state(&gw, &sub.id).await;
                    if s["received"].as_u64() == Some(u64::from(N)) {
                        assert_eq!(s["overflow_policy"], "drop_oldest", "{b}");
                        assert!(s["buffered"].as_u64().unwrap() <= 8, "{b}: {s}");
                        break;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "{b}: {s}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let dropped = state(&gw, &sub.id).await["dropped"].as_u64().unwrap() as u32;
            let got = sub.take((N - dropped) as usize).await;
            let numbers: Vec<u32> = got.iter().map(number).collect();
            let mut sorted = numbers.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), numbers.len(), "{b}: no duplicates");
            if pushes {
                assert!(dropped > 0, "{b}: the stalled subscriber overflowed");
                assert_eq!(numbers.last(), Some(&(N - 1)), "{b}: the newest is kept");
                assert_eq!(numbers, sorted, "{b}: in order");
            } else {
                assert_eq!(dropped, 0, "{b}: a pull backend waits instead");
                let s = state(&gw, &sub.id).await;
                assert!(s["buffered_high_water"].as_u64().unwrap() <= 8, "{b}: {s}");
            }
            assert_eq!(
                numbers.len() as u32 + dropped,
                N,
                "{b}: delivered + dropped"
            );
            close(&p, sub).await;

            // end_stream: what was buffered, then RESOURCE_EXHAUSTED.
            if !pushes {
                continue;
            }
            let p = open_narrow(&gw, THIRD_KEY, &format!("{b}-end")).await;
            let mut sub = p.subscribe("flood.y").await;
            flood(&p, "flood.y", N).await;
            let mut delivered = 0;
            let status = tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    match sub.stream.message().await {
                        Ok(Some(_)) => delivered += 1,
                        Ok(None) => panic!("{b}: the stream ended without an error"),
                        Err(status) => return status,
                    }
                }
            })
            .await
            .expect("the stream fails in time");
            assert_error(
                &status,
                Code::ResourceExhausted,
                "SUBSCRIBER_TOO_SLOW",
                Service::PubSub,
            );
            assert!(delivered < N, "{b}: {delivered}");
        }
        finish(gw).await;
    });
}

#[test]
fn max_messages_max_duration_and_session_close_end_the_stream() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in ["memory", "nats"] {
            let p = open(&gw, b).await;
            let sub = p
                .subscribe_with(
                    "ends.x",
                    None,
                    Some(pb::SubscriptionOptions {
                        max_messages: Some(2),
                        ..Default::default()
                    }),
                )
                .await;
            for i in 0..3 {
                p.publish("ends.x", &[i]).await;
            }
            let got = sub.rest().await;
            assert_eq!(
                got.iter().map(|e| e.payload[0]).collect::<Vec<_>>(),
                vec![0, 1],
                "{b}"
            );

            let quiet = p
                .subscribe_with(
                    "ends.quiet",
                    None,
                    Some(pb::SubscriptionOptions {
                        max_duration: Some(prost_types::Duration {
                            seconds: 0,
                            nanos: 300_000_000,
                        }),
                        ..Default::default()
                    }),
                )
                .await;
            assert!(quiet.rest().await.is_empty(), "{b}: ends at max_duration");

            let mut held = p.subscribe("ends.z").await;
            gw.sessions()
                .close_session(prism::proto::session::v1::CloseSessionRequest {
                    session_token: p.token.clone(),
                    force: true,
                })
                .await
                .unwrap();
            let end = tokio::time::timeout(Duration::from_secs(10), held.stream.message())
                .await
                .expect("the stream ends");
            match end {
                Ok(None) => {}
                Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{b}"),
                Ok(Some(e)) => panic!("{b}: unexpected {e:?}"),
            }
            // Every subscription actor of the session is gone (bounded wait).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let tree = gw.gateway.observe().await.unwrap();
                let left = tree
                    .walk()
                    .into_iter()
                    .filter(|n| n.kind == prism::actors::ActorKind::PubSubSubscription)
                    .count();
                if left == 0 {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{tree:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        finish(gw).await;
    });
}

#[test]
fn bad_requests_are_clear() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        let p = open(&gw, "memory").await;
        for pattern in ["", "a..b", "a.>.b", "a b", ".a"] {
            let err = p
                .try_subscribe(pb::SubscribeRequest {
                    topic_pattern: pattern.into(),
                    ..Default::default()
                })
                .await
                .err()
                .unwrap();
            assert_error(
                &err,
                Code::InvalidArgument,
                "INVALID_TOPIC_PATTERN",
                Service::PubSub,
            );
        }
        for topic in ["a.*", "a.>", "", "a..b"] {
            let err = p.send(request(topic, b"x")).await.unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "INVALID_TOPIC",
                Service::PubSub,
            );
        }
        let err = p
            .send(pb::PublishRequest {
                reply_to: Some("inbox.*".into()),
                ..request("a.b", b"x")
            })
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::InvalidArgument,
            "INVALID_REPLY_TO",
            Service::PubSub,
        );
        let err = p
            .try_subscribe(pb::SubscribeRequest {
                topic_pattern: "a.b".into(),
                queue_group: Some("bad group".into()),
                ..Default::default()
            })
            .await
            .err()
            .unwrap();
        assert_error(
            &err,
            Code::InvalidArgument,
            "INVALID_QUEUE_GROUP",
            Service::PubSub,
        );
        let err = p
            .try_subscribe(pb::SubscribeRequest {
                topic_pattern: "a.b".into(),
                options: Some(pb::SubscriptionOptions {
                    max_messages: Some(0),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .err()
            .unwrap();
        assert_error(
            &err,
            Code::InvalidArgument,
            "INVALID_MAX_MESSAGES",
            Service::PubSub,
        );
        let err = PubSubServiceClient::new(gw.channel.clone())
            .publish(pb::PublishRequest {
                session_token: "nope".into(),
                ..request("a.b", b"x")
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);

        // A PubSub session on a backend without PubSub is refused up front.
        let err = gw
            .sessions()
            .create_session(common::inline_request(
                TEST_KEY,
                prism::proto::config::v1::AccessPattern::Pubsub,
                "postgres",
            ))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unimplemented,
            "MISSING_INTERFACE",
            Service::Session,
        );
        assert!(err.message().contains("pubsub_basic"), "{}", err.message());
        finish(gw).await;
    });
}

#[test]
fn a_crashed_pubsub_subscription_resubscribes_on_the_same_stream() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in ["memory", "nats", "redis"] {
            let p = open(&gw, b).await;
            let mut sub = p.subscribe("crash.x").await;
            p.publish("crash.x", b"before").await;
            assert_eq!(sub.next().await.payload, b"before", "{b}");
            gw.gateway
                .drill(&sub.id, prism::actors::Fault::Panic)
                .unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let tree = gw.gateway.observe().await.unwrap();
                let node = tree.find(&sub.id).expect("still supervised");
                if node.restarts >= 1 && node.status == prism::actors::ActorStatus::Running {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{b}: never restarted: {node:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Resubscribed: publish until an event gets through (bounded),
            // then every later one does.
            let mut n = 0u8;
            let first = tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    n += 1;
                    p.publish("crash.x", &[n]).await;
                    if let Ok(Ok(Some(e))) =
                        tokio::time::timeout(Duration::from_millis(200), sub.stream.message()).await
                    {
                        return e;
                    }
                }
            })
            .await
            .expect("delivery resumes");
            p.publish("crash.x", b"after").await;
            let mut rest = Vec::new();
            loop {
                let e = sub.next().await;
                if e.payload == b"after" {
                    break;
                }
                rest.push(e);
            }
            assert!(first.payload.len() == 1, "{b}");
            close(&p, sub).await;
        }
        finish(gw).await;
    });
}
