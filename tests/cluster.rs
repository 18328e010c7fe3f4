//! Several gateways as one (`sessions.store: redis | postgres`): a token
//! from any instance works on every instance; Heartbeat, Refresh and Close
//! on one are seen by all; expiry happens once; session limits count
//! cluster-wide; an instance that stops leaves its sessions to the others.
//! Each scenario runs on both stores, against the machine's Redis and
//! Postgres, in a namespace of its own.

mod common;

use std::time::Duration;

use tokio::time::Instant;

use common::{assert_error, kv::Kv, TestGateway, TEST_KEY};
use prism::{
    config::{GatewayConfig, Source},
    error::Service,
    proto::{
        config::v1::AccessPattern,
        session::v1::{
            CloseSessionRequest, GetSessionRequest, HeartbeatRequest, RefreshSessionRequest,
        },
    },
    runtime::block_on_multi_thread,
};
use tonic::Code;

const STORES: [&str; 2] = ["postgres", "redis"];

fn store_url(store: &str) -> String {
    match store {
        "postgres" => common::kv::database_url(),
        _ => common::kv::redis_url(),
    }
}

/// One instance's config: namespace `ns` on a shared Redis KeyValue
/// backend, sessions in `store`, its audit log in `audit`.
fn config(store: &str, ns: &str, idle: &str, audit: &std::path::Path) -> GatewayConfig {
    let yaml = format!(
        r#"
server:
  shutdown_grace: 2s
  supervision_interval: 100ms
  actor_threads: 2
sessions:
  store: {store}
  url: "{url}"
  flush_interval: 100ms
backends:
  kv: {{ type: redis, url: "{redis}" }}
  pg: {{ type: postgres, url: "{pg}" }}
namespaces:
  {ns}:
    allowed_backends: [kv, pg]
    allowed_patterns: [key_value, queue]
    session:
      idle_timeout: {idle}
      max_lifetime: 1h
      max_sessions_per_principal: 3
      close_drain_timeout: 1s
    api_keys:
      - {{ name: test, sha256: "{key}" }}
configs:
  kv-{ns}: {{ namespace: {ns}, pattern: key_value, backend: kv }}
  q-{ns}: {{ namespace: {ns}, pattern: queue, backend: pg, options: {{ visibility_timeout: 500ms }} }}
audit: {{ sink: file, path: "{audit}" }}
"#,
        url = store_url(store),
        redis = common::kv::redis_url(),
        pg = common::kv::database_url(),
        key = prism::auth::api_key_digest(TEST_KEY),
        audit = audit.display(),
    );
    GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).expect("config parses")
}

struct Cluster {
    ns: String,
    gateways: Vec<TestGateway>,
    audits: Vec<std::path::PathBuf>,
}

impl Cluster {
    async fn start(store: &str, n: usize, idle: &str) -> Cluster {
        let ns = format!("c{}", common::kv::run_id());
        let dir = std::env::temp_dir().join(format!("prism-cluster-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut gateways = Vec::new();
        let mut audits = Vec::new();
        for i in 0..n {
            let audit = dir.join(format!("audit-{i}.jsonl"));
            gateways.push(TestGateway::start_with(config(store, &ns, idle, &audit)).await);
            audits.push(audit);
        }
        Cluster {
            ns,
            gateways,
            audits,
        }
    }

    fn config_name(&self) -> String {
        format!("kv-{}", self.ns)
    }

    /// A session opened on instance `i`: its token.
    async fn open(&self, i: usize) -> Result<String, tonic::Status> {
        Ok(self.gateways[i]
            .sessions()
            .create_session(common::api_key_request(TEST_KEY, &self.config_name()))
            .await?
            .into_inner()
            .session_token)
    }

    fn kv(&self, i: usize, token: &str) -> Kv {
        Kv {
            client: common::kv::kv_client(self.gateways[i].channel.clone()),
            token: token.to_string(),
            backend: format!("instance {i}"),
        }
    }

    async fn get_session(
        &self,
        i: usize,
        token: &str,
    ) -> Result<prism::proto::session::v1::GetSessionResponse, tonic::Status> {
        self.gateways[i]
            .sessions()
            .get_session(GetSessionRequest {
                session_token: token.to_string(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Audit records of `event` for session `id`, on every instance.
    async fn audited(&self, event: &str, id: &str) -> usize {
        let mut n = 0;
        for (g, path) in self.gateways.iter().zip(&self.audits) {
            g.gateway.audit.wait_written(Duration::from_secs(5)).await;
            let text = std::fs::read_to_string(path).unwrap_or_default();
            n += text
                .lines()
                .filter(|l| l.contains(&format!("\"event\":\"{event}\"")) && l.contains(id))
                .count();
        }
        n
    }

    async fn stop(self) {
        for g in self.gateways {
            g.stop().await;
        }
        if let Some(dir) = self.audits.first().and_then(|p| p.parent()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn millis(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

#[test]
fn a_session_opened_on_one_instance_is_served_and_ended_on_every_instance() {
    block_on_multi_thread(async {
        for store in STORES {
            let c = Cluster::start(store, 3, "10m").await;
            let token = c.open(0).await.expect("session on instance 0");

            // Data calls on the others, no new session needed.
            c.kv(1, &token)
                .set("k", b"from-1")
                .await
                .expect("set on instance 1");
            let got = c.kv(2, &token).get("k").await.expect("get on instance 2");
            assert_eq!(got.value, b"from-1", "{store}");
            c.kv(0, &token).get("k").await.expect("get on instance 0");

            // Heartbeat on 1 and Refresh on 2 are what GetSession on 0 shows.
            let before = millis(&c.get_session(0, &token).await.unwrap().expires_at.unwrap());
            let hb = c.gateways[1]
                .sessions()
                .heartbeat(HeartbeatRequest {
                    session_token: token.clone(),
                })
                .await
                .expect("heartbeat on instance 1")
                .into_inner();
            assert!(common::kv::ms(&hb.ttl.unwrap()) > 9 * 60_000, "{store}");
            let refreshed = c.gateways[2]
                .sessions()
                .refresh_session(RefreshSessionRequest {
                    session_token: token.clone(),
                    extension: Some(common::kv::dur(30 * 60_000)),
                })
                .await
                .expect("refresh on instance 2")
                .into_inner();
            let refreshed = millis(&refreshed.new_expires_at.unwrap());
            assert!(
                refreshed >= before + 19 * 60_000,
                "{store}: refresh moved the expiry"
            );
            let seen = millis(&c.get_session(0, &token).await.unwrap().expires_at.unwrap());
            assert_eq!(
                seen, refreshed,
                "{store}: instance 0 sees the refresh from instance 2"
            );

            // An inline config travels too.
            let inline = c.gateways[2]
                .sessions()
                .create_session(common::inline_request(
                    TEST_KEY,
                    AccessPattern::KeyValue,
                    "kv",
                ))
                .await
                .expect("inline session")
                .into_inner()
                .session_token;
            c.kv(0, &inline)
                .get("k")
                .await
                .expect("inline session on instance 0");

            // Close on 1: refused everywhere, each instance saying why.
            let closed_at = Instant::now();
            let closed = c.gateways[1]
                .sessions()
                .close_session(CloseSessionRequest {
                    session_token: token.clone(),
                    force: false,
                })
                .await
                .expect("close on instance 1")
                .into_inner();
            assert!(closed.success, "{store}: {}", closed.message);
            for i in [0, 2] {
                common::wait_until("the close reaches every instance", || async {
                    c.kv(i, &token).get("k").await.is_err()
                })
                .await;
                let e = c.kv(i, &token).get("k").await.unwrap_err();
                assert_error(
                    &e,
                    Code::Unauthenticated,
                    "SESSION_CLOSED",
                    Service::KeyValue,
                );
            }
            println!(
                "{store}: a close on one instance refused on the other two after {:?}",
                closed_at.elapsed()
            );
            // A token never opened is unknown everywhere.
            let e = c.kv(2, "prism_not-a-token").get("k").await.unwrap_err();
            assert_error(
                &e,
                Code::Unauthenticated,
                "INVALID_SESSION_TOKEN",
                Service::KeyValue,
            );

            // An instance that stops leaves its sessions to the others.
            let mut c = c;
            let stopping = c.gateways.remove(0);
            c.audits.remove(0);
            stopping.stop().await;
            c.kv(0, &inline)
                .get("k")
                .await
                .expect("the inline session outlives instance 0");
            c.kv(1, &inline)
                .get("k")
                .await
                .expect("and is served by another");
            c.stop().await;
        }
    });
}

#[test]
fn session_limits_count_every_instance() {
    block_on_multi_thread(async {
        for store in STORES {
            let c = Cluster::start(store, 2, "10m").await;
            let first = c.open(0).await.unwrap();
            c.open(0).await.unwrap();
            c.open(1).await.unwrap();
            // Three held across the cluster: the fourth is refused anywhere.
            for i in [0, 1] {
                let e = c.open(i).await.unwrap_err();
                assert_error(
                    &e,
                    Code::ResourceExhausted,
                    "TOO_MANY_SESSIONS_FOR_PRINCIPAL",
                    Service::Session,
                );
            }
            // Closing one (on the other instance) makes room.
            c.gateways[1]
                .sessions()
                .close_session(CloseSessionRequest {
                    session_token: first,
                    force: true,
                })
                .await
                .unwrap();
            c.open(1).await.expect("room after a close");
            c.stop().await;
        }
    });
}

#[test]
fn activity_anywhere_keeps_a_session_and_its_expiry_happens_once() {
    block_on_multi_thread(async {
        for store in STORES {
            let c = Cluster::start(store, 2, "1s").await;
            let busy = c.open(0).await.unwrap();
            let idle = c.open(0).await.unwrap();
            let idle_id = c.get_session(0, &idle).await.unwrap().session_id;
            c.kv(0, &busy).set("k", b"v").await.unwrap();
            // Instance 1 activates both; then only `busy` is used, on 1.
            c.kv(1, &idle).get("k").await.unwrap();
            let until = Instant::now() + Duration::from_millis(2500);
            while Instant::now() < until {
                c.kv(1, &busy).get("k").await.expect("busy session in use");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Instance 0 saw nothing for longer than the idle timeout, yet
            // the store knows the session was used.
            c.kv(0, &busy)
                .get("k")
                .await
                .expect("activity on instance 1 kept the session open on instance 0");

            // The idle one expired, refused by both, recorded once.
            for i in [0, 1] {
                common::wait_until("the idle session expires", || async {
                    c.kv(i, &idle).get("k").await.is_err()
                })
                .await;
                let e = c.kv(i, &idle).get("k").await.unwrap_err();
                assert_error(
                    &e,
                    Code::Unauthenticated,
                    "SESSION_EXPIRED",
                    Service::KeyValue,
                );
            }
            // The instance whose request ended it writes the record; then
            // another sweep on every instance finds nothing more to expire.
            common::wait_until("the expiry is audited", || async {
                c.audited("session.expire", &idle_id).await >= 1
            })
            .await;
            for g in &c.gateways {
                let registry = &g.gateway.registry;
                registry.cluster().unwrap().sweep(registry).await;
            }
            assert_eq!(
                c.audited("session.expire", &idle_id).await,
                1,
                "{store}: one instance expired the session"
            );
            assert_eq!(c.audited("session.create", &idle_id).await, 1, "{store}");
            c.stop().await;
        }
    });
}

#[test]
fn an_acknowledgement_reaching_another_instance_fails_clearly_and_the_message_comes_again() {
    use prism::proto::queue::v1::{
        self as q, queue_service_client::QueueServiceClient, StartPosition,
    };
    block_on_multi_thread(async {
        let c = Cluster::start("postgres", 2, "10m").await;
        let token = c.gateways[0]
            .sessions()
            .create_session(common::api_key_request(TEST_KEY, &format!("q-{}", c.ns)))
            .await
            .unwrap()
            .into_inner()
            .session_token;
        for g in &c.gateways {
            g.wait_backend_up("pg").await;
        }
        let queue = |i: usize| QueueServiceClient::new(c.gateways[i].channel.clone());
        queue(1)
            .publish(q::PublishRequest {
                session_token: token.clone(),
                topic: "work".into(),
                payload: b"m1".to_vec(),
                ..Default::default()
            })
            .await
            .expect("publish on instance 1");
        let mut stream = queue(0)
            .subscribe(q::SubscribeRequest {
                session_token: token.clone(),
                topic: "work".into(),
                consumer_group: "g".into(),
                start_position: Some(q::subscribe_request::StartPosition::Position(
                    StartPosition::Earliest as i32,
                )),
                ..Default::default()
            })
            .await
            .expect("subscribe on instance 0")
            .into_inner();
        let first = next_message(&mut stream).await;
        assert_eq!(first.payload, b"m1");

        // Instance 1 did not deliver it: a clear refusal, not a silent one.
        let e = queue(1)
            .acknowledge(q::AcknowledgeRequest {
                session_token: token.clone(),
                message_ids: vec![first.message_id.clone()],
            })
            .await
            .unwrap_err();
        assert_error(
            &e,
            Code::FailedPrecondition,
            "NOT_DELIVERED_HERE",
            Service::Queue,
        );

        // Unacknowledged, it comes again; acknowledged where it was
        // delivered, it is done.
        let again = next_message(&mut stream).await;
        assert_eq!(again.message_id, first.message_id);
        assert!(again.attempt.unwrap_or(1) >= 2, "{again:?}");
        let acked = queue(0)
            .acknowledge(q::AcknowledgeRequest {
                session_token: token.clone(),
                message_ids: vec![again.message_id.clone()],
            })
            .await
            .expect("acknowledge on the delivering instance")
            .into_inner();
        assert_eq!(acked.acknowledged_count, 1);
        drop(stream);
        c.stop().await;
    });
}

async fn next_message(
    stream: &mut tonic::Streaming<prism::proto::queue::v1::Message>,
) -> prism::proto::queue::v1::Message {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("a message in time")
        .expect("the stream is healthy")
        .expect("the stream goes on")
}
