//! The one supervision primitive, seen from outside: a frozen Queue
//! subscription, backend pool actor and outbox relay are each found by
//! their supervisor's progress check, restarted onto the same handle (the
//! client's stream, the backend, the mailbox), counted as a stall, and
//! work afterwards; and a gateway whose root supervisor dies stops with an
//! error instead of serving unsupervised.
//!
//! Runs on the embedded default config (memory and SQLite only).

mod common;

use std::time::Duration;

use common::{api_key_request, wait_until, TestGateway};
use futures::StreamExt;
use prism::{
    actors::{ActorNode, ActorStatus, Fault},
    config::{GatewayConfig, Source},
    proto::{
        pubsub::v1 as ps,
        queue::v1::{self as q, queue_service_client::QueueServiceClient},
        transact::v1 as tx,
    },
    runtime::block_on_multi_thread,
    server::ServeError,
};
use prost_types::{value::Kind as V, Value};

struct Fixture {
    gw: TestGateway,
    dir: std::path::PathBuf,
}

impl Fixture {
    async fn start() -> Fixture {
        Self::start_tuned(|_| {}).await
    }

    /// The embedded default, changed by `tune` first.
    async fn start_tuned(tune: impl FnOnce(&mut GatewayConfig)) -> Fixture {
        let dir = std::env::temp_dir().join(format!(
            "prism-supervision-{}",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        let db = dir.join("orders.db").to_string_lossy().to_string();
        let mut config = GatewayConfig::from_yaml(
            prism::config::EMBEDDED_DEFAULT,
            &Source::Embedded,
            &[("PRISM_SQLITE_PATH", db.as_str())],
        )
        .unwrap();
        config.server.supervision_interval = Duration::from_millis(100);
        tune(&mut config);
        let gw = TestGateway::start_with(config).await;
        gw.wait_backend_up("orders-sqlite").await;
        Fixture { gw, dir }
    }

    async fn token(&self, config: &str) -> String {
        self.gw
            .sessions()
            .create_session(api_key_request("prism-dev-key", config))
            .await
            .unwrap()
            .into_inner()
            .session_token
    }

    async fn node(&self, id: &str) -> ActorNode {
        let tree = self.gw.gateway.observe().await.unwrap();
        tree.find(id)
            .unwrap_or_else(|| panic!("no node {id}"))
            .clone()
    }

    /// The id of the (one) Queue subscription in the tree.
    async fn subscription_id(&self) -> String {
        let tree = self.gw.gateway.observe().await.unwrap();
        tree.walk()
            .into_iter()
            .find(|n| n.kind == prism::actors::ActorKind::Subscription)
            .expect("the subscription's node")
            .id
            .clone()
    }

    /// Freezes the actor `id` and waits until its supervisor has restarted
    /// it once for the stall; returns its node then.
    async fn freeze_and_wait_restart(&self, id: &str) -> ActorNode {
        assert_eq!(self.node(id).await.supervision.stalls, 0);
        self.gw.gateway.drill(id, Fault::Stall).unwrap();
        wait_until("the frozen actor is restarted", || async {
            let node = self.node(id).await;
            node.supervision.stalls == 1 && node.status == ActorStatus::Running
        })
        .await;
        let node = self.node(id).await;
        assert_eq!(node.restarts, 1, "{node:?}");
        assert_eq!(node.supervision.restarts, 1);
        assert_eq!(node.supervision.panics, 0);
        node
    }

    /// One sample of `/metrics`, e.g. `prism_sessions_active{namespace="default"}`.
    fn metric(&self, sample: &str) -> f64 {
        let text = self.gw.gateway.exposition().render();
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
    }

    async fn stop(self) {
        self.gw.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_subscription_given_up_with_a_full_buffer_still_ends_with_its_error() {
    block_on_multi_thread(async {
        let f = Fixture::start_tuned(|config| {
            let ns = config.namespaces.get_mut("default").unwrap();
            ns.session.max_restarts = 0;
            ns.queue.buffer = 2;
        })
        .await;
        let token = f.token("orders-queue").await;
        let mut queue = QueueServiceClient::new(f.gw.channel.clone());
        for i in 0..200u8 {
            queue
                .publish(q::PublishRequest {
                    session_token: token.clone(),
                    topic: "full".into(),
                    payload: vec![i; 1000],
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        // A client whose HTTP/2 windows hold little, and which stops reading.
        let narrow = f.gw.narrow_channel(16 * 1024).await;
        let mut stream = QueueServiceClient::new(narrow)
            .subscribe(q::SubscribeRequest {
                session_token: token.clone(),
                topic: "full".into(),
                consumer_group: "stalled".into(),
                start_position: Some(q::subscribe_request::StartPosition::Position(
                    q::StartPosition::Earliest as i32,
                )),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let id = f.subscription_id().await;
        wait_until("the stream's buffer is full", || async {
            f.node(&id).await.state["buffered"] == 2
        })
        .await;
        // With no restarts allowed, the first panic makes the supervisor
        // give up on the subscription while its buffer is full.
        f.gw.gateway.drill(&id, Fault::Panic).unwrap();
        wait_until("the supervisor gives up (the node may be gone)", || async {
            let tree = f.gw.gateway.observe().await.unwrap();
            tree.find(&id)
                .is_none_or(|n| n.supervision.gave_up.is_some())
        })
        .await;
        let mut received = 0;
        let ended = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => received += 1,
                    Ok(None) => return None,
                    Err(status) => return Some(status),
                }
            }
        })
        .await
        .expect("the stream ends in time");
        let status = ended.expect("the stream ends with an error, not quietly");
        common::assert_error(
            &status,
            tonic::Code::Unavailable,
            "SUBSCRIPTION_FAILED",
            prism::error::Service::Queue,
        );
        assert!(
            received >= 2,
            "the buffered messages come first ({received})"
        );
        f.stop().await;
    });
}

#[test]
fn a_frozen_queue_subscription_is_restarted_on_the_same_stream() {
    block_on_multi_thread(async {
        let f = Fixture::start().await;
        let token = f.token("orders-queue").await;
        let mut queue = QueueServiceClient::new(f.gw.channel.clone());
        let publisher = queue.clone();
        let publish = |payload: &'static [u8]| {
            let mut queue = publisher.clone();
            let token = token.clone();
            async move {
                queue
                    .publish(q::PublishRequest {
                        session_token: token,
                        topic: "jobs".into(),
                        payload: payload.to_vec(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        };
        publish(b"before").await;
        let mut stream = queue
            .subscribe(q::SubscribeRequest {
                session_token: token.clone(),
                topic: "jobs".into(),
                consumer_group: "workers".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.payload, b"before");
        queue
            .acknowledge(q::AcknowledgeRequest {
                session_token: token.clone(),
                message_ids: vec![first.message_id],
            })
            .await
            .unwrap();
        let id = f.subscription_id().await;

        let live = "prism_subscriptions_active{namespace=\"default\"}";
        let restarts = "prism_actor_restarts_total{kind=\"subscription\"}";
        assert_eq!(f.metric(live), 1.0);
        assert_eq!(f.metric(restarts), 0.0);

        f.freeze_and_wait_restart(&id).await;
        publish(b"after").await;
        let next = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("the restarted subscription delivers in time")
            .unwrap()
            .unwrap();
        assert_eq!(next.payload, b"after");
        assert_eq!(f.metric(restarts), 1.0, "counted as it happened");
        assert_eq!(f.metric(live), 1.0, "the same subscription");

        // The session ends: its subscription is told, ends, and leaves the gauge.
        f.gw.sessions()
            .close_session(prism::proto::session::v1::CloseSessionRequest {
                session_token: token,
                force: true,
            })
            .await
            .unwrap();
        assert!(
            stream.message().await.is_err(),
            "the stream ends with the session's error"
        );
        wait_until("the subscription leaves the gauge", || async {
            f.metric(live) == 0.0
        })
        .await;
        assert_eq!(f.metric(restarts), 1.0, "restarts stay counted");
        f.stop().await;
    });
}

#[test]
fn a_frozen_backend_pool_actor_is_restarted_and_checks_again() {
    block_on_multi_thread(async {
        let f = Fixture::start().await;
        let id = "backend/orders-sqlite";
        let checks = |node: &ActorNode| node.state["checks"].as_u64().unwrap();
        let before = checks(&f.node(id).await);
        let node = f.freeze_and_wait_restart(id).await;
        // The new actor checks the backend as soon as it starts.
        wait_until("the restarted pool actor checks the backend", || async {
            checks(&f.node(id).await) > before
        })
        .await;
        assert_eq!(node.state["health"], "up", "{node:?}");
        assert!(f
            .gw
            .gateway
            .backends
            .get("orders-sqlite")
            .unwrap()
            .health
            .is_up());
        f.stop().await;
    });
}

#[test]
fn a_frozen_relay_is_restarted_and_relays_again() {
    block_on_multi_thread(async {
        let f = Fixture::start().await;
        let id = "relay/default/order-events";
        f.freeze_and_wait_restart(id).await;

        let events = f.token("events").await;
        let mut stream = ps::pub_sub_service_client::PubSubServiceClient::new(f.gw.channel.clone())
            .subscribe(ps::SubscribeRequest {
                session_token: events,
                topic_pattern: "events.orders".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let text = |s: &str| Value {
            kind: Some(V::StringValue(s.into())),
        };
        tx::transact_service_client::TransactServiceClient::new(f.gw.channel.clone())
            .write(tx::WriteRequest {
                session_token: f.token("orders-db").await,
                data: Some(tx::DataWrite {
                    table: "orders".into(),
                    record: [
                        ("customer".to_string(), text("dora")),
                        ("status".to_string(), text("pending")),
                        (
                            "amount".to_string(),
                            Value {
                                kind: Some(V::NumberValue(3.0)),
                            },
                        ),
                        ("created_at".to_string(), text("2026-11-29T10:00:00Z")),
                    ]
                    .into(),
                    mode: tx::data_write::WriteMode::Insert as i32,
                    id_field: None,
                }),
                mailbox: Some(tx::MailboxWrite {
                    mailbox_id: "order-events".into(),
                    message: b"after the restart".to_vec(),
                    ..Default::default()
                }),
                options: None,
            })
            .await
            .unwrap();
        let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("the restarted relay publishes in time")
            .unwrap()
            .unwrap();
        assert_eq!(event.payload, b"after the restart");
        f.stop().await;
    });
}

#[test]
fn a_gateway_whose_root_supervisor_dies_stops_with_an_error() {
    block_on_multi_thread(async {
        let f = Fixture::start().await;
        f.gw.gateway.drill("root", Fault::Panic).unwrap();
        match f.gw.stopped().await {
            Err(ServeError::Supervision(why)) => {
                assert!(why.contains("root supervisor"), "{why}")
            }
            other => panic!("expected a supervision failure, got {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&f.dir);
    });
}
