//! Fault tests: private backend servers (a Postgres cluster made with
//! initdb, redis-server, nats-server with JetStream, a nisshi broker; see
//! `common::servers`) and the gateway itself are killed with SIGKILL at
//! chosen moments and started again. Each test asserts what a data gateway
//! owes its clients — acknowledged writes lost: 0; messages lost: 0;
//! redeliveries carry a growing `attempt`; every failure meanwhile is
//! `UNAVAILABLE`, never `INTERNAL`; service resumes with no gateway restart —
//! and prints its figures on a `FAULT` line (the README's table). Only
//! processes these tests started are killed: the gateway-kill test keeps
//! its queues on the machine's shared services and never stops them.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{
    api_key_request,
    kv::{database_url, kv_config, redis_url, run_id, Harness, Kv},
    servers::{Kind, Server},
    wait_until, TestGateway, TEST_KEY,
};
use parking_lot::Mutex;
use prism::{
    backends::HealthState,
    config::{GatewayConfig, Source},
    proto::{
        keyvalue::v1 as kvpb,
        queue::v1::{self as qpb, queue_service_client::QueueServiceClient},
    },
    runtime::block_on_multi_thread,
};
use tokio::time::Instant;
use tonic::{transport::Channel, Code, Status};

/// Writers stop after this many writes each, whatever happens.
const MAX_WRITES_PER_WRITER: usize = 20_000;
const WRITERS: usize = 4;

/// The ErrorInfo reason of a status.
fn reason(status: &Status) -> String {
    tonic_types::StatusExt::get_details_error_info(status)
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// Clients writing distinct keys (the value is the key) until told to
/// stop: what was acknowledged, and every error seen.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<Vec<Status>>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Writers {
    fn start(kv: &Kv) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let (kv, stop, acked, errors) =
                (kv.clone(), stop.clone(), acked.clone(), errors.clone());
            tasks.spawn(async move {
                for i in 0..MAX_WRITES_PER_WRITER {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let key = format!("w{w}-{i}");
                    match kv.set(&key, key.as_bytes()).await {
                        Ok(_) => acked.lock().push(key),
                        Err(e) => {
                            errors.lock().push(e);
                            // Paces the loop while the backend is down.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            });
        }
        Writers {
            stop,
            acked,
            errors,
            tasks,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().len()
    }

    async fn wait_acked(&self, n: usize) {
        wait_until(&format!("{n} writes acknowledged"), || async {
            self.acked() >= n
        })
        .await;
    }

    /// Stops the writers: what they had acknowledged, and their errors.
    async fn finish(mut self) -> (Vec<String>, Vec<Status>) {
        self.stop.store(true, Ordering::Release);
        while let Some(r) = self.tasks.join_next().await {
            r.unwrap();
        }
        let acked = std::mem::take(&mut *self.acked.lock());
        let errors = std::mem::take(&mut *self.errors.lock());
        (acked, errors)
    }
}

/// How the gateway behaved while a backend was down and as it came back.
struct Outage {
    /// From the kill to the first call answered UNAVAILABLE.
    first_failure: Duration,
    /// Calls refused while the backend was known down: slowest answer.
    refused_max: Duration,
    /// From the server accepting connections again to the first success.
    recovery: Duration,
}

/// Kills `server` under `kv`'s writers, watches the calls fail and the
/// service resume once it is back.
async fn outage(h: &Harness, kv: &Kv, server: &mut Server, backend: &str) -> Outage {
    let killed = Instant::now();
    server.kill9().await;
    let first_failure = loop {
        let started = Instant::now();
        match kv.set("probe", b"p").await {
            Err(e) if e.code() == Code::Unavailable => break started.duration_since(killed),
            other => {
                assert!(killed.elapsed() < Duration::from_secs(30), "{other:?}");
            }
        }
    };
    h.wait_health(backend, HealthState::Down).await;
    // Once the gateway knows, calls are refused at the gate.
    let mut refused_max = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let e = kv
            .set("probe", b"p")
            .await
            .expect_err("the backend is down");
        refused_max = refused_max.max(started.elapsed());
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert_eq!(reason(&e), "BACKEND_DOWN", "{e:?}");
        let retry = tonic_types::StatusExt::get_details_retry_info(&e);
        assert!(retry.is_some_and(|r| r.retry_delay.is_some()), "{e:?}");
    }
    server.restart().await;
    let back = Instant::now();
    wait_until("the service resumes with no gateway restart", || async {
        kv.set("probe", b"p").await.is_ok()
    })
    .await;
    Outage {
        first_failure,
        refused_max,
        recovery: back.elapsed(),
    }
}

/// Every acknowledged key reads back with its value: the ones that do not.
async fn lost(kv: &Kv, acked: &[String]) -> Vec<String> {
    let mut missing = Vec::new();
    for key in acked {
        if kv.value(key).await.as_deref() != Some(key.as_bytes()) {
            missing.push(key.clone());
        }
    }
    missing
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// KeyValue writes under a backend crash: nothing acknowledged is lost,
/// every failure is UNAVAILABLE, service resumes.
async fn kv_crash(kind: Kind, backend: &str) {
    let mut server = Server::start(kind).await;
    let (pg, redis) = match kind {
        Kind::Postgres => (server.url(), redis_url()),
        _ => (database_url(), server.url()),
    };
    let h = Harness::start_with(kv_config(&run_id(), &pg, &redis)).await;
    let kv = h.client(backend).await;
    let writers = Writers::start(&kv);
    writers.wait_acked(500).await;
    let o = outage(&h, &kv, &mut server, backend).await;
    let resumed = writers.acked();
    writers.wait_acked(resumed + 500).await;
    let (acked, errors) = writers.finish().await;

    let not_unavailable: Vec<&Status> = errors
        .iter()
        .filter(|e| e.code() != Code::Unavailable)
        .collect();
    assert!(not_unavailable.is_empty(), "{not_unavailable:?}");
    let missing = lost(&kv, &acked).await;
    println!(
        "FAULT kv/{backend} killed: {} writes acknowledged, {} lost; {} failed calls, all \
         UNAVAILABLE; first failure {}; refused while down in at most {}; first success {} \
         after the server was back",
        acked.len(),
        missing.len(),
        errors.len(),
        ms(o.first_failure),
        ms(o.refused_max),
        ms(o.recovery),
    );
    assert!(missing.is_empty(), "acknowledged and lost: {missing:?}");
    h.stop().await;
}

#[test]
fn postgres_killed_under_writes_loses_nothing_acknowledged() {
    block_on_multi_thread(kv_crash(Kind::Postgres, "postgres"));
}

#[test]
fn redis_with_an_fsynced_aof_killed_under_writes_loses_nothing_acknowledged() {
    block_on_multi_thread(kv_crash(Kind::RedisDurable, "redis"));
}

#[test]
fn versions_keep_growing_across_a_redis_restart_that_lost_everything() {
    block_on_multi_thread(async {
        let mut server = Server::start(Kind::RedisVolatile).await;
        let h = Harness::start_with(kv_config(&run_id(), &database_url(), &server.url())).await;
        let kv = h.client("redis").await;
        let before = kv.set("k", b"before").await.unwrap().version;
        server.kill9().await;
        server.restart().await;
        wait_until("redis serves again", || async {
            kv.set("probe", b"p").await.is_ok()
        })
        .await;
        assert_eq!(kv.value("k").await, None, "the restart lost the data");
        let after = kv.set("k", b"after").await.unwrap().version;
        assert!(
            after > before,
            "version {after} after the loss, {before} before"
        );
        // A CompareAndSwap holding the old version never matches.
        let stale = kv
            .client
            .clone()
            .compare_and_swap(kvpb::CompareAndSwapRequest {
                session_token: kv.token.clone(),
                key: "k".into(),
                expected_version: before,
                value: b"stale".to_vec(),
                ..Default::default()
            })
            .await
            .expect_err("the old version is gone");
        assert_eq!(stale.code(), Code::Aborted);
        assert_eq!(reason(&stale), "PRECONDITION_FAILED");
        assert_eq!(kv.value("k").await.as_deref(), Some(&b"after"[..]));
        h.stop().await;
    });
}

// ---- Queue: at-least-once under broker and gateway kills -------------------

/// A gateway config with one Queue config `q` on a backend `kind` at `url`.
fn queue_yaml(ns: &str, kind: &str, url: &str) -> String {
    format!(
        r#"
server: {{ shutdown_grace: 5s, supervision_interval: 100ms, actor_threads: 2 }}
backends:
  q: {{ type: {kind}, url: "{url}", pool: {pool} }}
namespaces:
  {ns}:
    allowed_backends: [q]
    allowed_patterns: [queue]
    api_keys: [{{ name: test, sha256: "{key}" }}]
configs:
  q:
    namespace: {ns}
    pattern: queue
    backend: q
    options: {{ visibility_timeout: 2s, max_attempts: "100" }}
"#,
        pool = common::kv::FAST_POOL,
        key = prism::auth::api_key_digest(TEST_KEY),
    )
}

/// A Queue session on a gateway at `channel`.
struct Q {
    client: QueueServiceClient<Channel>,
    token: String,
}

impl Q {
    async fn open(channel: Channel) -> Q {
        let mut sessions =
            prism::proto::session::v1::session_service_client::SessionServiceClient::new(
                channel.clone(),
            );
        let token = sessions
            .create_session(api_key_request(TEST_KEY, "q"))
            .await
            .unwrap()
            .into_inner()
            .session_token;
        Q {
            client: QueueServiceClient::new(channel),
            token,
        }
    }

    /// Publishes `m0`..`m{n-1}`; each Publish answered is acknowledged.
    async fn publish(&self, n: usize) {
        for i in 0..n {
            let r = self
                .client
                .clone()
                .publish(qpb::PublishRequest {
                    session_token: self.token.clone(),
                    topic: "jobs".into(),
                    payload: format!("m{i}").into_bytes(),
                    ..Default::default()
                })
                .await;
            assert!(r.is_ok(), "publish m{i}: {r:?}");
        }
    }

    /// Subscribes the group, retrying (bounded) as the gateway's RetryInfo
    /// says while the backend is still coming back.
    async fn subscribe(&self) -> tonic::Streaming<qpb::Message> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self
                .client
                .clone()
                .subscribe(qpb::SubscribeRequest {
                    session_token: self.token.clone(),
                    topic: "jobs".into(),
                    consumer_group: "workers".into(),
                    start_position: Some(qpb::subscribe_request::StartPosition::Position(
                        qpb::StartPosition::Earliest as i32,
                    )),
                    ..Default::default()
                })
                .await;
            match answer {
                Ok(stream) => return stream.into_inner(),
                Err(e) if e.code() == Code::Unavailable && Instant::now() < deadline => {
                    let wait = tonic_types::StatusExt::get_details_retry_info(&e)
                        .and_then(|r| r.retry_delay)
                        .unwrap_or(Duration::from_millis(100));
                    tokio::time::sleep(wait).await;
                }
                Err(e) => panic!("subscribe: {e:?}"),
            }
        }
    }

    async fn ack(&self, ids: Vec<String>) {
        let r = self
            .client
            .clone()
            .acknowledge(qpb::AcknowledgeRequest {
                session_token: self.token.clone(),
                message_ids: ids,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.failed_ids.is_empty(), "{r:?}");
    }
}

/// With the backend just killed, a Publish answers UNAVAILABLE (never
/// hangs to the client's deadline, never INTERNAL); prints how long it took.
async fn publish_while_down(channel: &Channel, backend: &str) {
    let q = Q::open(channel.clone()).await;
    let started = Instant::now();
    let e = q
        .client
        .clone()
        .publish(qpb::PublishRequest {
            session_token: q.token.clone(),
            topic: "jobs".into(),
            payload: b"during the outage".to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("the backend is down");
    let took = started.elapsed();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    println!(
        "FAULT queue/{backend}: the first Publish after the kill answered UNAVAILABLE in {}",
        ms(took)
    );
}

/// Takes `n` messages from `stream` (bounded): payload → attempt.
async fn take(stream: &mut tonic::Streaming<qpb::Message>, n: usize) -> Vec<qpb::Message> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while out.len() < n {
            match stream.message().await {
                Ok(Some(m)) => out.push(m),
                other => panic!("the stream ended after {} messages: {other:?}", out.len()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} messages in time", out.len()));
    out
}

/// Whether redeliveries after a fault can show a growing `attempt`.
#[derive(Clone, Copy)]
enum Attempts {
    /// They must: the count survived the fault.
    Counted,
    /// The test broker cannot keep what the gateway records (why).
    NotKept(&'static str),
}

/// After a fault: a new subscriber of the group receives every message
/// not acknowledged before it (lost = 0), those delivered before with a
/// greater attempt. Returns (redelivered, acknowledged ones seen again).
async fn after_fault(
    q: &Q,
    total: usize,
    acked: &BTreeSet<String>,
    held: &BTreeSet<String>,
    counted: Attempts,
) -> (usize, usize) {
    let mut stream = q.subscribe().await;
    let mut pending: BTreeSet<String> = (0..total)
        .map(|i| format!("m{i}"))
        .filter(|m| !acked.contains(m))
        .collect();
    let mut attempts: BTreeMap<String, i32> = BTreeMap::new();
    let mut acked_again = 0;
    tokio::time::timeout(Duration::from_secs(90), async {
        while !pending.is_empty() {
            let m = match stream.message().await {
                Ok(Some(m)) => m,
                other => panic!("the stream ended with {} pending: {other:?}", pending.len()),
            };
            let payload = String::from_utf8(m.payload.clone()).unwrap();
            if acked.contains(&payload) {
                acked_again += 1;
            }
            pending.remove(&payload);
            attempts.insert(payload, m.attempt.unwrap_or(1));
            q.ack(vec![m.message_id]).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("lost: {} never redelivered", pending.len()));
    if let Attempts::Counted = counted {
        for m in held {
            if let Some(a) = attempts.get(m) {
                assert!(*a >= 2, "{m} was delivered before; attempt {a}");
            }
        }
    }
    let redelivered = held.iter().filter(|m| attempts.contains_key(*m)).count();
    (redelivered, acked_again)
}

/// Whether acknowledged messages must stay acknowledged across the fault.
#[derive(Clone, Copy)]
enum Acks {
    /// They must: the gateway answered Acknowledge only once it was
    /// durable, and the store keeps what it confirmed.
    Kept,
    /// The broker itself may forget recent acknowledgements when killed
    /// (why): what comes back is broker-level redelivery, counted apart.
    BrokerMayForget(&'static str),
}

/// Publishes 100, takes 40 and acknowledges the first 20, then `fault`;
/// afterwards the group gets every unacknowledged message.
async fn queue_fault<F, Fut>(label: &str, channel: Channel, counted: Attempts, acks: Acks, fault: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Channel>,
{
    const TOTAL: usize = 100;
    let q = Q::open(channel).await;
    q.publish(TOTAL).await;
    let mut stream = q.subscribe().await;
    let got = take(&mut stream, 40).await;
    let ids: Vec<String> = got[..20].iter().map(|m| m.message_id.clone()).collect();
    q.ack(ids).await;
    let payload = |m: &qpb::Message| String::from_utf8(m.payload.clone()).unwrap();
    let acked: BTreeSet<String> = got[..20].iter().map(payload).collect();
    let held: BTreeSet<String> = got[20..].iter().map(payload).collect();
    let channel = fault().await;
    drop(stream);
    let q = Q::open(channel).await;
    let (redelivered, acked_again) = after_fault(&q, TOTAL, &acked, &held, counted).await;
    let attempts = match counted {
        Attempts::Counted => "attempt >= 2".to_string(),
        Attempts::NotKept(why) => format!("attempt not carried: {why}"),
    };
    let again = match acks {
        Acks::Kept => format!("{acked_again}"),
        Acks::BrokerMayForget(why) => format!("{acked_again} (broker-level: {why})"),
    };
    println!(
        "FAULT queue/{label}: {TOTAL} published, 20 acknowledged, 20 held; lost 0; the 20 held \
         redelivered: {redelivered} ({attempts}); acknowledged seen again: {again}"
    );
    if let Acks::Kept = acks {
        // An acknowledgement answered is durable: nothing acknowledged
        // comes back.
        assert_eq!(
            acked_again, 0,
            "{label}: acknowledged messages were delivered again"
        );
    }
}

/// A Queue on `kind` served by the private `server`: the server is killed
/// under a subscriber holding messages (a Publish meanwhile must answer
/// UNAVAILABLE) and started again.
async fn broker_fault(kind: &str, mut server: Server, counted: Attempts, acks: Acks) {
    let ns = format!("f{}", run_id());
    let yaml = queue_yaml(&ns, kind, &server.url());
    let config = GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).unwrap();
    let gw = TestGateway::start_with(config).await;
    gw.wait_backend_up("q").await;
    let channel = gw.channel.clone();
    let label = format!("{kind}, its server killed");
    queue_fault(&label, channel.clone(), counted, acks, || async {
        server.kill9().await;
        publish_while_down(&channel, kind).await;
        server.restart().await;
        channel
    })
    .await;
    gw.stop().await;
    common::forget_queue_namespaces(&[ns]).await;
}

#[test]
fn a_nats_queue_loses_nothing_when_the_broker_is_killed() {
    block_on_multi_thread(async {
        // nats-server writes a consumer's acknowledgement state to its store
        // in the background: a SIGKILL right after may forget recent acks.
        // The delivery counts are part of that state: a held message may
        // come back counted as a first delivery (seen once in CI).
        let why = "nats-server flushes consumer state in the background";
        let server = Server::start(Kind::Nats).await;
        broker_fault(
            "nats",
            server,
            Attempts::NotKept(why),
            Acks::BrokerMayForget(why),
        )
        .await;
    });
}

#[test]
fn a_postgres_queue_loses_nothing_when_the_database_is_killed() {
    block_on_multi_thread(async {
        let server = Server::start(Kind::Postgres).await;
        broker_fault("postgres", server, Attempts::Counted, Acks::Kept).await;
    });
}

#[test]
fn a_kafka_queue_loses_nothing_when_the_broker_is_killed() {
    block_on_multi_thread(async {
        // nisshi keeps its log in a private Postgres, so a killed broker
        // restarts with it.
        let store = Server::start(Kind::Postgres).await;
        broker_fault(
            "kafka",
            Server::start_nisshi(&store.url()).await,
            Attempts::Counted,
            Acks::Kept,
        )
        .await;
    });
}

/// `prism serve` on a config file as a child process, and a channel to it
/// once namespace `ns` is served (its backend connected).
async fn serve(path: &std::path::Path, ns: &str) -> (tokio::process::Child, Channel) {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let (child, addr) = common::spawn_serve(&["--config".as_ref(), path.as_os_str()], &[]).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: prism::server::namespace_health_name(ns),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(update) = watch.message().await.unwrap() {
            if update.status == ServingStatus::Serving as i32 {
                return;
            }
        }
        panic!("the health watch ended");
    })
    .await
    .expect("the namespace is served in time");
    (child, channel)
}

/// Every Queue backend that outlives the gateway: the gateway is killed
/// with SIGKILL while a subscriber holds messages, and started again.
#[test]
fn every_durable_queue_backend_loses_nothing_when_the_gateway_is_killed() {
    block_on_multi_thread(async {
        let nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let kafka = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        for (kind, url) in [
            ("postgres", database_url()),
            ("nats", nats),
            ("kafka", kafka),
        ] {
            let ns = format!("f{}", run_id());
            let path = std::env::temp_dir().join(format!("prism-fault-{ns}.yaml"));
            std::fs::write(&path, queue_yaml(&ns, kind, &url)).unwrap();
            let (mut first, channel) = serve(&path, &ns).await;
            let label = format!("{kind}, gateway killed");
            let second = Arc::new(Mutex::new(None));
            let keep = second.clone();
            let (again, ns_again) = (path.clone(), ns.clone());
            // Kafka keeps what a gateway delivered in its commit metadata;
            // nisshi 0.8.1 stores that metadata but answers OffsetFetch
            // without it, so a new gateway cannot see it there.
            let counted = match kind {
                "kafka" => Attempts::NotKept("nisshi returns no commit metadata"),
                _ => Attempts::Counted,
            };
            queue_fault(&label, channel, counted, Acks::Kept, || async move {
                first.kill().await.unwrap();
                let (child, channel) = serve(&again, &ns_again).await;
                *keep.lock() = Some(child);
                channel
            })
            .await;
            drop(second);
            let _ = std::fs::remove_file(&path);
            common::forget_queue_namespaces(&[ns]).await;
        }
    });
}
