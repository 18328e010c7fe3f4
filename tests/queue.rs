//! Queue acceptance tests. Each runs against every backend that implements
//! the interface it exercises (memory, Postgres, NATS JetStream, Kafka);
//! a backend without it is printed as skipped.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{api_key_request, assert_error, wait_until, TestGateway, TEST_KEY};
use prism::{
    backends::{BackendKind, Interface},
    config::{GatewayConfig, Source},
    error::Service,
    proto::queue::v1::{
        self as pb, queue_service_client::QueueServiceClient,
        subscribe_request::StartPosition as Sp,
    },
    runtime::block_on_multi_thread,
};
use tonic::{transport::Channel, Code, Streaming};

const BACKENDS: [(&str, BackendKind); 4] = [
    ("memory", BackendKind::Memory),
    ("postgres", BackendKind::Postgres),
    ("nats", BackendKind::Nats),
    ("kafka", BackendKind::Kafka),
];

/// The key of namespace `<ns>.x`, whose name the test namespace prefixes.
const ISO_KEY: &str = "iso-key";

fn kafka_brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_string())
}

/// Every queue backend in a fresh namespace, so topics are new each run.
fn config() -> GatewayConfig {
    let ns = format!("q{}", common::kv::run_id());
    let mut configs = String::new();
    for (name, _) in BACKENDS {
        configs.push_str(&format!(
            "  {name}:\n    namespace: {ns}\n    pattern: queue\n    backend: {name}\n    \
             options: {{ partitions: \"3\", visibility_timeout: 60s }}\n  \
             {name}-hasty:\n    namespace: {ns}\n    pattern: queue\n    backend: {name}\n    \
             options: {{ partitions: \"3\", visibility_timeout: 400ms, max_attempts: \"3\" }}\n  \
             {name}-isox:\n    namespace: {ns}.x\n    pattern: queue\n    backend: {name}\n"
        ));
    }
    let yaml = format!(
        r#"
server: {{ shutdown_grace: 5s, supervision_interval: 100ms, actor_threads: 2 }}
backends:
  memory: {{ type: memory }}
  postgres: {{ type: postgres, url: "{pg}", pool: {pool} }}
  nats: {{ type: nats, url: "{nats}", pool: {pool} }}
  kafka: {{ type: kafka, url: "{kafka}", pool: {pool} }}
  redis: {{ type: redis, url: "{redis}", pool: {pool} }}
namespaces:
  {ns}:
    allowed_backends: [memory, postgres, nats, kafka, redis]
    allowed_patterns: [queue]
    api_keys: [{{ name: test, sha256: "{key}" }}]
  {ns}.x:
    allowed_backends: [memory, postgres, nats, kafka, redis]
    allowed_patterns: [queue]
    api_keys: [{{ name: iso, sha256: "{iso_key}" }}]
configs:
{configs}
"#,
        pg = common::kv::database_url(),
        nats = nats_url(),
        kafka = kafka_brokers(),
        redis = common::kv::redis_url(),
        pool = common::kv::FAST_POOL,
        key = prism::auth::api_key_digest(TEST_KEY),
        iso_key = prism::auth::api_key_digest(ISO_KEY),
    );
    GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).unwrap()
}

/// Stops the gateway and deletes what the test left on the shared servers.
async fn finish(gw: TestGateway) {
    let namespaces: Vec<String> = gw
        .gateway
        .config
        .load()
        .namespaces
        .keys()
        .cloned()
        .collect();
    gw.stop().await;
    common::forget_queue_namespaces(&namespaces).await;
}

/// The backends to run against; prints why the others are skipped.
fn backends(interface: Interface) -> Vec<&'static str> {
    BACKENDS
        .iter()
        .filter(|(name, k)| {
            let has = k.has(interface);
            if !has {
                println!("skipping {name}: the {k} backend does not implement {interface}");
            }
            has
        })
        .map(|(n, _)| *n)
        .collect()
}

#[derive(Clone)]
struct Q {
    client: QueueServiceClient<Channel>,
    token: String,
    name: String,
}

async fn open(gw: &TestGateway, config: &str) -> Q {
    open_as(gw, TEST_KEY, config).await
}

async fn open_as(gw: &TestGateway, key: &str, config: &str) -> Q {
    // Configs are named after their backends; wait for it to be up.
    gw.wait_backend_up(config.split('-').next().unwrap_or(config))
        .await;
    let s = gw
        .sessions()
        .create_session(api_key_request(key, config))
        .await
        .unwrap()
        .into_inner();
    Q {
        client: QueueServiceClient::new(gw.channel.clone()),
        token: s.session_token,
        name: config.to_string(),
    }
}

/// A session whose visibility timeout is 400ms and max_attempts 3, for
/// the tests of redelivery: every other test opens the `{backend}` config,
/// whose 60s visibility timeout outlasts any test, so a slow machine cannot
/// turn a late delivery into a redelivery.
async fn open_hasty(gw: &TestGateway, backend: &str) -> Q {
    let mut q = open(gw, backend).await;
    let s = gw
        .sessions()
        .create_session(api_key_request(TEST_KEY, &format!("{backend}-hasty")))
        .await
        .unwrap()
        .into_inner();
    q.token = s.session_token;
    q
}

impl Q {
    async fn publish(&self, topic: &str, payload: &[u8], key: Option<&str>) -> pb::PublishResponse {
        self.client
            .clone()
            .publish(pb::PublishRequest {
                session_token: self.token.clone(),
                topic: topic.into(),
                payload: payload.to_vec(),
                partition_key: key.map(str::to_string),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{}: publish: {e:?}", self.name))
            .into_inner()
    }

    /// `n` messages "0".."n-1" on partition 0 of topic `log`, in order.
    async fn publish_log(&self, n: usize) {
        for i in 0..n {
            self.client
                .clone()
                .publish(pb::PublishRequest {
                    session_token: self.token.clone(),
                    topic: "log".into(),
                    payload: format!("{i}").into_bytes(),
                    partition: Some(0),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("{}: publish: {e:?}", self.name));
        }
    }

    async fn publish_n(&self, topic: &str, n: usize) {
        for i in 0..n {
            self.publish(topic, format!("m{i}").as_bytes(), None).await;
        }
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        start: Option<pb::subscribe_request::StartPosition>,
        max: Option<i32>,
    ) -> Streaming<pb::Message> {
        self.client
            .clone()
            .subscribe(pb::SubscribeRequest {
                session_token: self.token.clone(),
                topic: topic.into(),
                consumer_group: group.into(),
                start_position: start,
                max_messages: max,
                timeout: None,
            })
            .await
            .unwrap_or_else(|e| panic!("{}: subscribe: {e:?}", self.name))
            .into_inner()
    }

    async fn ack(&self, ids: Vec<String>) -> pb::AcknowledgeResponse {
        self.client
            .clone()
            .acknowledge(pb::AcknowledgeRequest {
                session_token: self.token.clone(),
                message_ids: ids,
            })
            .await
            .unwrap()
            .into_inner()
    }
}

fn earliest() -> Option<pb::subscribe_request::StartPosition> {
    Some(Sp::Position(pb::StartPosition::Earliest as i32))
}

/// Every message until the stream ends (bounded).
async fn drain(mut s: Streaming<pb::Message>) -> Vec<pb::Message> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(m) = s.message().await.unwrap() {
            out.push(m);
        }
    })
    .await
    .expect("stream ends in time");
    out
}

async fn next(s: &mut Streaming<pb::Message>) -> pb::Message {
    tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("a message in time")
        .unwrap()
        .expect("stream still open")
}

#[test]
fn publish_then_subscribe_from_earliest_and_topic_info() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends(Interface::QueueBasic) {
            let q = open(&gw, b).await;
            let first = q.publish("orders", b"a", None).await;
            assert_eq!(
                first.message_id,
                format!("orders/{}/{}", first.partition, first.offset)
            );
            q.publish_n("orders", 4).await;
            let got = drain(q.subscribe("orders", "", earliest(), Some(5)).await).await;
            assert_eq!(got.len(), 5, "{b}: max_messages ends the stream");
            assert!(
                got.iter()
                    .any(|m| m.message_id == first.message_id && m.payload == b"a"),
                "{b}: ids are stable"
            );
            assert!(
                got.iter()
                    .all(|m| m.attempt == Some(1) && m.topic == "orders"),
                "{b}"
            );

            let info = q
                .client
                .clone()
                .get_topic_info(pb::GetTopicInfoRequest {
                    session_token: q.token.clone(),
                    topic: "orders".into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(info.partition_count, 3, "{b}");
            assert_eq!(info.message_count, 5, "{b}");
            assert_eq!(
                info.partitions.iter().map(|p| p.message_count).sum::<i64>(),
                5,
                "{b}"
            );
        }
        finish(gw).await;
    });
}

#[test]
fn namespaces_whose_names_prefix_each_other_are_isolated_on_every_backend() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends(Interface::QueueBasic) {
            // `<ns>` + `x.a` and `<ns>.x` + `a` would meet on one broker
            // name if names were joined with dots.
            let outer = open(&gw, b).await;
            let inner = open_as(&gw, ISO_KEY, &format!("{b}-isox")).await;
            outer.publish("x.a", b"outer", None).await;
            inner.publish("a", b"inner", None).await;
            for (q, topic, payload) in [(&outer, "x.a", b"outer"), (&inner, "a", b"inner")] {
                let info = q
                    .client
                    .clone()
                    .get_topic_info(pb::GetTopicInfoRequest {
                        session_token: q.token.clone(),
                        topic: topic.into(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(info.message_count, 1, "{b}: {topic}");
                let got = drain(q.subscribe(topic, "", earliest(), Some(1)).await).await;
                assert_eq!(got.len(), 1, "{b}: {topic}");
                assert_eq!(got[0].payload, payload.to_vec(), "{b}: {topic}");
            }
        }
        finish(gw).await;
    });
}

/// Every partition's offsets, from (partition, offset) pairs: each must
/// be exactly 0..n, in no particular order of arrival.
fn assert_dense(published: &[(i32, i64)]) {
    let mut by_partition = std::collections::BTreeMap::<i32, Vec<i64>>::new();
    for (p, o) in published {
        by_partition.entry(*p).or_default().push(*o);
    }
    for (p, mut offsets) in by_partition {
        offsets.sort_unstable();
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, expected, "partition {p}");
    }
}

/// Postgres: concurrent single and batch publishers get dense offsets per
/// partition with no deadlock between batches, and a partition counter
/// row lost under a topic with messages is rebuilt after its last one.
#[test]
fn postgres_offsets_stay_dense_under_concurrent_publishers_and_a_lost_counter() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        let ns = gw
            .gateway
            .config
            .load()
            .namespaces
            .keys()
            .find(|n| !n.ends_with(".x"))
            .unwrap()
            .clone();
        let q = open(&gw, "postgres").await;
        let one = q.publish("dense", b"first", None).await;
        let mut published = vec![(one.partition, one.offset)];
        let singles = (0..8).map(|w| {
            let q = q.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..25 {
                    let r = q
                        .publish("dense", format!("{w}-{i}").as_bytes(), None)
                        .await;
                    out.push((r.partition, r.offset));
                }
                out
            })
        });
        let batches = (0..4).map(|_| {
            let q = q.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in 0..5 {
                    let r = q
                        .client
                        .clone()
                        .publish_batch(pb::PublishBatchRequest {
                            session_token: q.token.clone(),
                            topic: "dense".into(),
                            messages: (0..12)
                                .map(|i| pb::BatchMessage {
                                    payload: vec![i],
                                    ..Default::default()
                                })
                                .collect(),
                        })
                        .await
                        .expect("no batch fails (no deadlock between batches)")
                        .into_inner();
                    assert_eq!(r.success_count, 12, "{r:?}");
                    out.extend(r.results.iter().map(|m| (m.partition, m.offset)));
                }
                out
            })
        });
        let tasks: Vec<_> = singles.chain(batches).collect();
        for t in tasks {
            published.extend(t.await.unwrap());
        }
        assert_eq!(published.len(), 1 + 8 * 25 + 4 * 5 * 12);
        assert_dense(&published);

        // The counter rows go (by hand, say) while messages stay: the next
        // publishes go on after each partition's last message.
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&common::kv::database_url())
            .await
            .unwrap();
        sqlx::query("DELETE FROM prism_queue_partitions WHERE namespace = $1 AND topic = 'dense'")
            .bind(ns.as_str())
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        for i in 0..6 {
            let r = q
                .publish("dense", format!("after-{i}").as_bytes(), None)
                .await;
            published.push((r.partition, r.offset));
        }
        assert_dense(&published);
        finish(gw).await;
    });
}

#[test]
fn batches_report_each_message() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends(Interface::QueueBasic) {
            let q = open(&gw, b).await;
            let too_big = vec![0u8; 4 * 1024 * 1024 + 1];
            let r = q
                .client
                .clone()
                .publish_batch(pb::PublishBatchRequest {
                    session_token: q.token.clone(),
                    topic: "batch".into(),
                    messages: vec![
                        pb::BatchMessage {
                            payload: b"one".to_vec(),
                            ..Default::default()
                        },
                        pb::BatchMessage {
                            payload: too_big,
                            ..Default::default()
                        },
                        pb::BatchMessage {
                            payload: b"three".to_vec(),
                            ..Default::default()
                        },
                    ],
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!((r.success_count, r.failure_count), (2, 1), "{b}");
            assert_eq!(r.results.len(), 3, "{b}");
            assert!(
                r.results[1].message_id.is_empty() && r.results[1].offset == -1,
                "{b}"
            );
            assert!(
                !r.results[0].message_id.is_empty() && !r.results[2].message_id.is_empty(),
                "{b}"
            );
        }
        finish(gw).await;
    });
}

#[test]
fn order_is_kept_within_a_partition() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends(Interface::QueueBasic) {
            let q = open(&gw, b).await;
            for i in 0..30 {
                q.publish(
                    "ordered",
                    format!("{i}").as_bytes(),
                    Some(&format!("user-{}", i % 3)),
                )
                .await;
            }
            let got = drain(q.subscribe("ordered", "", earliest(), Some(30)).await).await;
            assert_eq!(got.len(), 30, "{b}");
            for p in 0..3 {
                let offsets: Vec<i64> = got
                    .iter()
                    .filter(|m| m.partition == p)
                    .map(|m| m.offset)
                    .collect();
                let mut sorted = offsets.clone();
                sorted.sort();
                assert_eq!(offsets, sorted, "{b}: partition {p} in offset order");
            }
            for key in 0..3 {
                let values: Vec<i32> = got
                    .iter()
                    .map(|m| {
                        String::from_utf8(m.payload.clone())
                            .unwrap()
                            .parse::<i32>()
                            .unwrap()
                    })
                    .filter(|v| v % 3 == key)
                    .collect();
                let mut sorted = values.clone();
                sorted.sort();
                assert_eq!(values, sorted, "{b}: one key's messages stay in order");
            }
        }
        finish(gw).await;
    });
}

#[test]
fn a_group_shares_the_work_between_subscribers() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends(Interface::StreamConsumerGroups) {
            let q = open(&gw, b).await;
            q.publish_n("jobs", 1).await; // creates the topic
            let mut a = q.subscribe("jobs", "workers", earliest(), None).await;
            let mut c = q.subscribe("jobs", "workers", None, None).await;
            q.publish_n("jobs", 59).await;
            let mut seen: Vec<String> = Vec::new();
            let (mut from_a, mut from_c) = (0, 0);
            while seen.len() < 60 {
                tokio::select! {
                    m = next(&mut a) => { from_a += 1; q.ack(vec![m.message_id.clone()]).await; seen.push(m.message_id); }
                    m = next(&mut c) => { from_c += 1; q.ack(vec![m.message_id.clone()]).await; seen.push(m.message_id); }
                }
            }
            let distinct: BTreeSet<&String> = seen.iter().collect();
            assert_eq!(distinct.len(), 60, "{b}: none twice while both ack");
            assert!(
                from_a > 0 && from_c > 0,
                "{b}: both got some ({from_a}/{from_c})"
            );
        }
        finish(gw).await;
    });
}

#[test]
fn unacknowledged_messages_are_redelivered_with_the_attempt_counted() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends(Interface::QueueVisibility) {
            let q = open_hasty(&gw, b).await;
            q.publish("retry", b"x", None).await;
            // After the visibility timeout (400ms here), on the same stream.
            let mut s = q.subscribe("retry", "g1", earliest(), None).await;
            let first = next(&mut s).await;
            assert_eq!(first.attempt, Some(1), "{b}");
            let again = next(&mut s).await;
            assert_eq!(again.message_id, first.message_id, "{b}");
            assert_eq!(again.attempt, Some(2), "{b}");
            assert_eq!(
                q.ack(vec![again.message_id.clone()])
                    .await
                    .acknowledged_count,
                1,
                "{b}"
            );
            drop(s);

            // After the subscriber goes away.
            let got = drain(q.subscribe("retry", "g2", earliest(), Some(1)).await).await;
            assert_eq!(got[0].attempt, Some(1), "{b}");
            let got = drain(q.subscribe("retry", "g2", None, Some(1)).await).await;
            assert_eq!(got[0].message_id, first.message_id, "{b}");
            assert_eq!(
                got[0].attempt,
                Some(2),
                "{b}: redelivered to the next subscriber"
            );

            let ack = q.ack(vec!["retry/0/999".into(), "garbage".into()]).await;
            assert_eq!(ack.acknowledged_count, 0, "{b}");
            assert_eq!(ack.failed_ids.len(), 2, "{b}");
        }
        finish(gw).await;
    });
}

#[test]
fn commit_then_resubscribe_resumes_after_the_commit() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends(Interface::StreamConsumerGroups) {
            let q = open(&gw, b).await;
            q.publish_log(10).await;
            let first = drain(q.subscribe("log", "readers", earliest(), Some(5)).await).await;
            assert_eq!(
                first.iter().map(|m| m.offset).collect::<Vec<_>>(),
                vec![0, 1, 2, 3, 4],
                "{b}"
            );
            let committed = q
                .client
                .clone()
                .commit(pb::CommitRequest {
                    session_token: q.token.clone(),
                    topic: "log".into(),
                    consumer_group: "readers".into(),
                    offsets: vec![pb::PartitionOffset {
                        partition: 0,
                        offset: 5,
                    }],
                })
                .await
                .unwrap()
                .into_inner();
            assert!(committed.success, "{b}");
            let resumed = drain(
                q.subscribe(
                    "log",
                    "readers",
                    Some(Sp::Position(pb::StartPosition::Committed as i32)),
                    Some(5),
                )
                .await,
            )
            .await;
            assert_eq!(
                resumed.iter().map(|m| m.offset).collect::<Vec<_>>(),
                vec![5, 6, 7, 8, 9],
                "{b}"
            );
        }
        finish(gw).await;
    });
}

#[test]
fn commit_and_seek_refuse_positions_past_the_end_of_the_log() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends(Interface::StreamConsumerGroups) {
            let q = open(&gw, b).await;
            q.publish_log(2).await;
            let commit = |offset: i64| pb::CommitRequest {
                session_token: q.token.clone(),
                topic: "log".into(),
                consumer_group: "parkers".into(),
                offsets: vec![pb::PartitionOffset {
                    partition: 0,
                    offset,
                }],
            };
            // Past the end: the group would skip every future message.
            let err = q.client.clone().commit(commit(i64::MAX)).await.unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "OFFSET_OUT_OF_RANGE",
                Service::Queue,
            );
            // Up to the end is fine: everything read.
            let done = q
                .client
                .clone()
                .commit(commit(2))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(done.committed[0].offset, 2, "{b}");
            if BACKENDS
                .iter()
                .any(|(n, k)| *n == b && k.has(Interface::StreamReplay))
            {
                let err = q
                    .client
                    .clone()
                    .seek(pb::SeekRequest {
                        session_token: q.token.clone(),
                        topic: "log".into(),
                        consumer_group: "parkers".into(),
                        positions: vec![pb::PartitionOffset {
                            partition: 0,
                            offset: 3,
                        }],
                    })
                    .await
                    .unwrap_err();
                assert_error(
                    &err,
                    Code::InvalidArgument,
                    "OFFSET_OUT_OF_RANGE",
                    Service::Queue,
                );
            }
        }
        finish(gw).await;
    });
}

#[test]
fn seek_replays_from_an_offset() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends(Interface::StreamReplay) {
            let q = open(&gw, b).await;
            q.publish_log(10).await;
            let first = drain(q.subscribe("log", "readers", earliest(), Some(5)).await).await;
            assert_eq!(first.len(), 5, "{b}");
            // A subscriber takes (and acknowledges) everything; then the
            // group is moved back to offset 2 while it is attached.
            let mut s = q.subscribe("log", "readers", None, None).await;
            let mut seen = BTreeSet::new();
            while seen.len() < 10 {
                let m = next(&mut s).await;
                q.ack(vec![m.message_id.clone()]).await;
                seen.insert(m.offset);
            }
            q.client
                .clone()
                .seek(pb::SeekRequest {
                    session_token: q.token.clone(),
                    topic: "log".into(),
                    consumer_group: "readers".into(),
                    positions: vec![pb::PartitionOffset {
                        partition: 0,
                        offset: 2,
                    }],
                })
                .await
                .unwrap();
            // Everything was acknowledged: what comes now is the replay.
            let replayed: Vec<i64> = {
                let mut out = Vec::new();
                while out.len() < 8 {
                    let m = next(&mut s).await;
                    q.ack(vec![m.message_id.clone()]).await;
                    out.push(m.offset);
                }
                out
            };
            assert_eq!(
                replayed,
                (2..10).collect::<Vec<i64>>(),
                "{b}: seek replays from there"
            );

            // A subscription starting at an offset.
            let from7 = drain(q.subscribe("log", "", Some(Sp::Offset(7)), Some(3)).await).await;
            assert_eq!(
                from7.iter().map(|m| m.offset).collect::<Vec<_>>(),
                vec![7, 8, 9],
                "{b}"
            );
        }
        finish(gw).await;
    });
}

#[test]
fn timeout_ends_the_stream_and_bad_requests_are_clear() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends(Interface::QueueBasic) {
            let q = open(&gw, b).await;
            q.publish("quiet", b"x", None).await;
            let s = q
                .client
                .clone()
                .subscribe(pb::SubscribeRequest {
                    session_token: q.token.clone(),
                    topic: "quiet".into(),
                    timeout: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 300_000_000,
                    }),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(
                drain(s).await.is_empty(),
                "{b}: latest, nothing new, ends at the timeout"
            );

            let err = q
                .client
                .clone()
                .subscribe(pb::SubscribeRequest {
                    session_token: q.token.clone(),
                    topic: "no-such-topic".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_error(&err, Code::NotFound, "TOPIC_NOT_FOUND", Service::Queue);
            let err = q
                .client
                .clone()
                .publish(pb::PublishRequest {
                    session_token: q.token.clone(),
                    topic: "bad topic/name".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_error(&err, Code::InvalidArgument, "INVALID_TOPIC", Service::Queue);
            let err = q
                .client
                .clone()
                .publish(pb::PublishRequest {
                    session_token: q.token.clone(),
                    topic: "quiet".into(),
                    partition: Some(7),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "INVALID_PARTITION",
                Service::Queue,
            );
            let err = q
                .client
                .clone()
                .get_topic_info(pb::GetTopicInfoRequest {
                    session_token: q.token.clone(),
                    topic: "no-such-topic".into(),
                })
                .await
                .unwrap_err();
            assert_error(&err, Code::NotFound, "TOPIC_NOT_FOUND", Service::Queue);
        }
        finish(gw).await;
    });
}

#[test]
fn a_slow_subscriber_keeps_the_buffer_bounded_and_gets_everything() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends(Interface::QueueBasic) {
            let q = open(&gw, b).await;
            q.publish("firehose", b"first", None).await;
            let mut s = q.subscribe("firehose", "slow", earliest(), None).await;
            let publisher = {
                let q = q.clone();
                tokio::spawn(async move {
                    for chunk in 0..100 {
                        let messages = (0..100)
                            .map(|i| pb::BatchMessage {
                                payload: format!("{chunk}-{i}").into_bytes(),
                                ..Default::default()
                            })
                            .collect();
                        q.client
                            .clone()
                            .publish_batch(pb::PublishBatchRequest {
                                session_token: q.token.clone(),
                                topic: "firehose".into(),
                                messages,
                            })
                            .await
                            .unwrap();
                    }
                })
            };
            let mut received = BTreeSet::new();
            let mut max_buffered = 0u64;
            let mut unacked = Vec::new();
            while received.len() < 10_001 {
                let m = next(&mut s).await;
                unacked.push(m.message_id.clone());
                received.insert(m.message_id);
                if unacked.len() == 100 {
                    q.ack(std::mem::take(&mut unacked)).await;
                }
                if received.len() % 500 == 0 {
                    // Read slowly, and look at the actor's buffer meanwhile.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let tree = gw.gateway.observe().await.unwrap();
                    for node in tree.walk() {
                        if node.state["topic"] == "firehose" {
                            max_buffered =
                                max_buffered.max(node.state["buffered"].as_u64().unwrap());
                            assert!(
                                node.state["buffered_high_water"].as_u64().unwrap() <= 64,
                                "{b}: {}",
                                node.state
                            );
                        }
                    }
                }
            }
            publisher.await.unwrap();
            assert_eq!(received.len(), 10_001, "{b}: everything arrived");
            assert!(max_buffered <= 64, "{b}");
        }
        finish(gw).await;
    });
}

#[test]
fn a_crashed_subscription_restarts_and_loses_no_committed_message() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends(Interface::StreamConsumerGroups) {
            // A topic per backend: the previous backend's subscription,
            // whose stream was just dropped, may still be in the tree.
            let topic = format!("durable-{b}");
            let q = open_hasty(&gw, b).await;
            q.publish_n(&topic, 300).await;
            let mut s = q.subscribe(&topic, "survivors", earliest(), None).await;
            let mut seen = BTreeSet::new();
            for _ in 0..30 {
                let m = next(&mut s).await;
                q.ack(vec![m.message_id.clone()]).await;
                seen.insert(m.message_id);
            }
            let tree = gw.gateway.observe().await.unwrap();
            let sub = tree
                .walk()
                .into_iter()
                .find(|n| n.state["topic"] == topic.as_str())
                .expect("the subscription is in the actor tree")
                .id
                .clone();
            gw.gateway.drill(&sub, prism::actors::Fault::Panic).unwrap();
            // Wait (bounded) for the supervisor to restart it.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let tree = gw.gateway.observe().await.unwrap();
                let node = tree.find(&sub).expect("still supervised");
                if node.restarts >= 1 && node.status == prism::actors::ActorStatus::Running {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{b}: never restarted: {node:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Messages published after the restart can only come from the
            // restarted actor; the stream goes on and every message arrives
            // (some maybe twice).
            q.publish_n(&topic, 50).await;
            while seen.len() < 350 {
                let m = next(&mut s).await;
                q.ack(vec![m.message_id.clone()]).await;
                seen.insert(m.message_id);
            }
        }
        finish(gw).await;
    });
}

#[test]
fn the_embedded_orders_queue_config_works_out_of_the_box() {
    block_on_multi_thread(async {
        let db = std::env::temp_dir().join(format!("prism-embedded-{}.db", rand::random::<u64>()));
        let db_path = db.display().to_string();
        let env = [("PRISM_SQLITE_PATH", db_path.as_str())];
        let gw = TestGateway::start_with(GatewayConfig::embedded(&env).unwrap()).await;
        let s = gw
            .sessions()
            .create_session(api_key_request("prism-dev-key", "orders-queue"))
            .await
            .unwrap()
            .into_inner();
        let q = Q {
            client: QueueServiceClient::new(gw.channel.clone()),
            token: s.session_token,
            name: "orders-queue".into(),
        };
        let sent = q.publish("orders", b"order-1", Some("customer-9")).await;
        let got = drain(q.subscribe("orders", "billing", earliest(), Some(1)).await).await;
        assert_eq!(got[0].message_id, sent.message_id);
        assert_eq!(q.ack(vec![sent.message_id]).await.acknowledged_count, 1);
        finish(gw).await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = tokio::fs::remove_file(format!("{db_path}{suffix}")).await;
        }
    });
}

#[test]
fn messages_out_of_attempts_move_to_the_dead_letter_topic() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends(Interface::QueueDeadLetter) {
            let q = open_hasty(&gw, b).await;
            let sent = q.publish("fragile", b"poison", None).await;
            // max_attempts 3, visibility 400ms: three deliveries, no ack.
            let mut s = q.subscribe("fragile", "handlers", earliest(), None).await;
            for attempt in 1..=3 {
                let m = next(&mut s).await;
                assert_eq!(
                    (m.message_id.as_str(), m.attempt),
                    (sent.message_id.as_str(), Some(attempt)),
                    "{b}"
                );
            }
            // The next claim after the third visibility timeout moves it.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let info = q
                    .client
                    .clone()
                    .get_topic_info(pb::GetTopicInfoRequest {
                        session_token: q.token.clone(),
                        topic: "fragile.dead-letter".into(),
                    })
                    .await;
                if info.is_ok_and(|i| i.into_inner().message_count == 1) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{b}: never dead-lettered"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            drop(s);
            let dead = drain(
                q.subscribe("fragile.dead-letter", "", earliest(), Some(1))
                    .await,
            )
            .await;
            assert_eq!(dead[0].payload, b"poison", "{b}");
            assert_eq!(
                dead[0].headers.get("x-prism-dead-letter-from"),
                Some(&sent.message_id),
                "{b}"
            );
            assert_eq!(
                dead[0].headers.get("x-prism-attempts").map(String::as_str),
                Some("3"),
                "{b}"
            );
        }
        finish(gw).await;
    });
}

#[test]
fn a_queue_session_on_a_backend_without_queue_interfaces_is_refused() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        let err = gw
            .sessions()
            .create_session(common::inline_request(
                TEST_KEY,
                prism::proto::config::v1::AccessPattern::Queue,
                "redis",
            ))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unimplemented,
            "MISSING_INTERFACE",
            Service::Session,
        );
        assert!(
            err.message().contains("redis") && err.message().contains("queue_basic"),
            "{}",
            err.message()
        );
        finish(gw).await;
    });
}

#[test]
fn a_timestamp_start_skips_older_messages() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends(Interface::StreamReplay) {
            let q = open(&gw, b).await;
            for i in 0..3 {
                q.publish("timed", format!("old-{i}").as_bytes(), Some("k"))
                    .await;
            }
            // Publish times are milliseconds: step past the last old one.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let since = std::time::SystemTime::now();
            tokio::time::sleep(Duration::from_millis(20)).await;
            for i in 0..3 {
                q.publish("timed", format!("new-{i}").as_bytes(), Some("k"))
                    .await;
            }
            let got = drain(
                q.subscribe("timed", "", Some(Sp::Timestamp(since.into())), Some(3))
                    .await,
            )
            .await;
            let payloads: Vec<String> = got
                .iter()
                .map(|m| String::from_utf8(m.payload.clone()).unwrap())
                .collect();
            assert_eq!(payloads, vec!["new-0", "new-1", "new-2"], "{b}");
        }
        finish(gw).await;
    });
}

#[test]
fn closing_the_session_or_dropping_the_stream_stops_the_subscription() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        let subscriptions = |tree: &prism::actors::ActorNode| {
            tree.walk()
                .into_iter()
                .filter(|n| n.kind == prism::actors::ActorKind::Subscription)
                .count()
        };
        // Waits (bounded) until the tree holds `n` subscriptions.
        let wait_for = |n: usize| {
            let gw = &gw;
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                loop {
                    let tree = gw.gateway.observe().await.unwrap();
                    if subscriptions(&tree) == n {
                        return;
                    }
                    assert!(tokio::time::Instant::now() < deadline, "{tree:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        for b in backends(Interface::QueueBasic) {
            let q = open(&gw, b).await;
            q.publish("lifecycle", b"x", None).await;
            let dropped = q.subscribe("lifecycle", "", earliest(), None).await;
            let mut kept = q.subscribe("lifecycle", "", earliest(), None).await;
            wait_for(2).await;
            drop(dropped);
            wait_for(1).await;

            gw.sessions()
                .close_session(prism::proto::session::v1::CloseSessionRequest {
                    session_token: q.token.clone(),
                    force: true,
                })
                .await
                .unwrap();
            let ended = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match kept.message().await {
                        Ok(Some(_)) => continue,
                        other => return other,
                    }
                }
            })
            .await
            .expect("the stream ends");
            if let Err(status) = ended {
                assert_eq!(status.code(), Code::Unauthenticated, "{b}: {status:?}");
            }
            wait_for(0).await;
        }
        finish(gw).await;
    });
}

#[test]
fn an_out_of_order_acknowledgement_never_skips_what_was_not_acknowledged() {
    block_on_multi_thread(async {
        let shared = config();
        let gw = TestGateway::start_with(shared.clone()).await;
        // A second gateway on the same brokers and namespace: it has
        // delivered nothing of the group before, as after a restart.
        let other = TestGateway::start_with(shared).await;
        for b in backends(Interface::StreamConsumerGroups) {
            let q = open(&gw, b).await;
            // The group's earlier messages, consumed and committed.
            for payload in [b"a", b"b"] {
                q.publish("out-of-order", payload, Some("one")).await;
            }
            let mut stream = q.subscribe("out-of-order", "ooo", None, None).await;
            let (_, last) = (next(&mut stream).await, next(&mut stream).await);
            drop(stream);
            wait_until("the first subscription has ended", || async {
                let tree = gw.gateway.observe().await.unwrap();
                !tree
                    .walk()
                    .iter()
                    .any(|n| n.kind == prism::actors::ActorKind::Subscription)
            })
            .await;
            q.client
                .clone()
                .commit(pb::CommitRequest {
                    session_token: q.token.clone(),
                    topic: "out-of-order".into(),
                    consumer_group: "ooo".into(),
                    offsets: vec![pb::PartitionOffset {
                        partition: last.partition,
                        offset: last.offset + 1,
                    }],
                })
                .await
                .unwrap_or_else(|e| panic!("{b}: commit: {e:?}"));
            // Memory is not shared between gateways: it stays on the first.
            let q = if b == "memory" {
                q
            } else {
                open(&other, b).await
            };
            for payload in [b"0", b"1", b"2"] {
                q.publish("out-of-order", payload, Some("one")).await;
            }
            let mut stream = q.subscribe("out-of-order", "ooo", None, None).await;
            let mut first = Vec::new();
            for _ in 0..3 {
                first.push(next(&mut stream).await);
            }
            // A broker may redeliver out of order (NATS after a member left).
            first.sort_by(|x, y| x.payload.cmp(&y.payload));
            let payloads: Vec<&[u8]> = first.iter().map(|m| m.payload.as_slice()).collect();
            assert_eq!(payloads, [b"0", b"1", b"2"], "{b}");
            // Only the last published is acknowledged; the subscriber leaves.
            let acked = q.ack(vec![first[2].message_id.clone()]).await;
            assert_eq!(acked.acknowledged_count, 1, "{b}");
            drop(stream);
            // The subscriber is gone (its consumer released) before the
            // group comes back.
            let served_by = if b == "memory" { &gw } else { &other };
            wait_until("the subscription has ended", || async {
                let tree = served_by.gateway.observe().await.unwrap();
                !tree
                    .walk()
                    .iter()
                    .any(|n| n.kind == prism::actors::ActorKind::Subscription)
            })
            .await;
            // The group comes back: the first two again, attempt counted,
            // and never the acknowledged one.
            let mut stream = q.subscribe("out-of-order", "ooo", None, None).await;
            let mut again = Vec::new();
            while again.len() < 2 {
                let m = next(&mut stream).await;
                assert_ne!(m.payload, b"2", "{b}: the acknowledged message came back");
                assert!(m.attempt.unwrap_or(1) >= 2, "{b}: attempt {:?}", m.attempt);
                q.ack(vec![m.message_id.clone()]).await;
                again.push(m.payload);
            }
            again.sort();
            assert_eq!(again, [b"0".to_vec(), b"1".to_vec()], "{b}");
            // What comes next is new, not the acknowledged third.
            q.publish("out-of-order", b"3", Some("one")).await;
            let m = next(&mut stream).await;
            assert_eq!(m.payload, b"3", "{b}");
        }
        finish(other).await;
        finish(gw).await;
    });
}

/// A subscription ended with its session while it waits on a fetch must
/// release its consumer, not drop it: what it held goes back to the group
/// at once, not after the (60 s) visibility timeout. Kafka is left out: a
/// new member waits for the group to rebalance, which says nothing here.
#[test]
fn a_subscription_ended_with_its_session_hands_back_what_it_held() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends(Interface::StreamConsumerGroups)
            .into_iter()
            .filter(|b| *b != "kafka")
        {
            let first = open(&gw, b).await;
            first.publish("held", b"unacknowledged", None).await;
            let mut stream = first.subscribe("held", "workers", earliest(), None).await;
            let held = next(&mut stream).await;
            assert_eq!(held.payload, b"unacknowledged", "{b}");
            gw.sessions()
                .close_session(prism::proto::session::v1::CloseSessionRequest {
                    session_token: first.token.clone(),
                    force: true,
                })
                .await
                .unwrap();
            assert!(
                stream.message().await.is_err(),
                "{b}: ends with the session"
            );
            let second = open(&gw, b).await;
            let mut stream = second.subscribe("held", "workers", earliest(), None).await;
            let again = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .unwrap_or_else(|_| panic!("{b}: the held message comes back at once"))
                .unwrap()
                .unwrap();
            assert_eq!(again.payload, b"unacknowledged", "{b}");
        }
        finish(gw).await;
    });
}

#[test]
fn headers_nats_cannot_carry_are_refused_and_the_gateway_goes_on() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        let q = open(&gw, "nats").await;
        let bad = [
            [("bad key".to_string(), "v".to_string())],
            [("colon:key".to_string(), "v".to_string())],
            [("key".to_string(), "line\r\nbreak".to_string())],
        ];
        for headers in bad {
            let e = q
                .client
                .clone()
                .publish(pb::PublishRequest {
                    session_token: q.token.clone(),
                    topic: "headers".into(),
                    payload: b"x".to_vec(),
                    headers: headers.clone().into(),
                    ..Default::default()
                })
                .await
                .expect_err("NATS cannot carry the header");
            assert_error(&e, Code::InvalidArgument, "MESSAGE_REFUSED", Service::Queue);
        }
        // Nothing broke: the same session publishes and reads back.
        q.publish("headers", b"fine", None).await;
        let got = drain(q.subscribe("headers", "", earliest(), Some(1)).await).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload, b"fine");
        finish(gw).await;
    });
}

#[test]
fn a_subscription_at_latest_gets_what_is_published_once_it_answered() {
    block_on_multi_thread(async {
        let gw = TestGateway::start_with(config()).await;
        for b in backends(Interface::QueueBasic) {
            let q = open(&gw, b).await;
            q.publish("latest", b"before", None).await;
            for i in 0..3 {
                let latest = Some(Sp::Position(pb::StartPosition::Latest as i32));
                let mut s = q.subscribe("latest", "", latest, Some(1)).await;
                let payload = format!("after-{i}");
                q.publish("latest", payload.as_bytes(), None).await;
                let got = tokio::time::timeout(Duration::from_secs(20), s.message())
                    .await
                    .unwrap_or_else(|_| panic!("{b}: the message published after Subscribe"));
                let got = got.unwrap().expect("the stream is open");
                assert_eq!(got.payload, payload.as_bytes(), "{b}");
            }
        }
        finish(gw).await;
    });
}

/// A Postgres backend's statement lanes (the connections a lone Publish or
/// Reader page runs on, beside the pool): a database error keeps the
/// lane's connection; a connection the server ended is dropped and made
/// again on next use; a statement cancelled half way leaves the
/// connection to settle, and the next statement on it gets its own rows.
#[test]
fn postgres_statement_lanes_recover_from_a_lost_connection_and_a_cancelled_statement() {
    use prism::backends::sql_lanes::Lanes;
    use sqlx::Row as _;
    block_on_multi_thread(async {
        sqlx::any::install_default_drivers();
        let url = common::kv::database_url();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .expect("Postgres is reachable");
        let lanes = Lanes::new(1, &url, Duration::from_secs(5));
        let one = |sql: &'static str| sqlx::query(sql);
        // The backend process that serves the next statement (a lane's,
        // or the pool's when the lane is busy).
        let pid = || async {
            let rows = lanes
                .fetch_all(&pool, one("SELECT pg_backend_pid()"))
                .await
                .unwrap();
            rows[0].get::<i32, _>(0)
        };

        let first = pid().await;
        assert_eq!(lanes.connected(), 1, "the lane connected on first use");

        // Refused by the database: the connection stays.
        assert!(lanes
            .fetch_all(&pool, one("SELECT no_such_column"))
            .await
            .is_err());
        let same = pid().await;
        assert_eq!(same, first, "a statement error keeps the connection");

        // Cancelled half way (a long statement, and one that will fail):
        // the next call neither waits for the rest of it nor gets its
        // answer; the lane connects afresh. The outer bound is far below
        // the cancelled statement's 30 s, so waiting for it would fail.
        for doomed in [
            "SELECT 1 FROM pg_sleep(30)",
            "SELECT 1 / length(pg_sleep(0.5)::text)",
        ] {
            let before = pid().await;
            let cancelled = lanes.fetch_all(&pool, one(doomed));
            assert!(tokio::time::timeout(Duration::from_millis(50), cancelled)
                .await
                .is_err());
            let next = lanes.fetch_all(&pool, one("SELECT 7::BIGINT, pg_backend_pid()"));
            let rows = tokio::time::timeout(Duration::from_secs(10), next)
                .await
                .expect("the next call does not wait for the cancelled statement")
                .expect("and does not get its error");
            assert_eq!(rows[0].get::<i64, _>(0), 7, "its own rows");
            assert_ne!(rows[0].get::<i32, _>(1), before, "on a fresh connection");
            assert_eq!(lanes.connected(), 1, "the cancelled one was let go");
        }
        let first = pid().await;

        // The server ends the lane's connection: the statement that meets
        // it fails, the lane drops it and connects again.
        let ended: bool = sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(first)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        assert!(ended);
        let met = lanes.fetch_all(&pool, one("SELECT pg_backend_pid()")).await;
        assert!(
            met.is_err(),
            "the lost connection shows on the statement that meets it"
        );
        assert_eq!(lanes.connected(), 0, "and the lane dropped it");
        let again = pid().await;
        assert_ne!(again, first, "the lane connected again");

        // While the lane is busy, the pool serves.
        let held = lanes.fetch_all(&pool, one("SELECT 1 FROM pg_sleep(0.2)"));
        let beside = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            pid().await
        };
        let (held, beside) = tokio::join!(held, beside);
        held.unwrap();
        assert_ne!(beside, again, "a busy lane sends the call to the pool");
    });
}
