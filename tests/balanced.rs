//! Three `prism serve` processes behind Debian's HAProxy (HTTP/2, each
//! request balanced on its own), sessions in Postgres: clients open sessions
//! and drive KeyValue, Queue and Transact (with an outbox relayed to NATS)
//! through the balancer while one gateway is killed with SIGKILL. Every call
//! succeeds after at most one retry, sessions survive, nothing acknowledged
//! is lost and no relayed row reaches NATS twice.

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{
    api_key_request,
    outbox::{capture, cleanup, create_table, customer_write, nats_url, pg},
    TEST_KEY,
};
use futures::StreamExt;
use prism::{
    proto::{
        keyvalue::v1::{self as kv, key_value_service_client::KeyValueServiceClient},
        queue::v1::{self as q, queue_service_client::QueueServiceClient},
        session::v1::session_service_client::SessionServiceClient,
        transact::v1::{self as tx, transact_service_client::TransactServiceClient},
    },
    runtime::block_on_multi_thread,
};
use sqlx::Row;
use tonic::transport::{Channel, Endpoint};

const GATEWAYS: usize = 3;
const WORKERS: u64 = 6;
/// Operations each worker runs (one of each API per round).
const ROUNDS: u64 = 60;

fn config(run: &str, table: &str, subject: &str) -> String {
    format!(
        r#"
server: {{ shutdown_grace: 2s, supervision_interval: 100ms, actor_threads: 1 }}
sessions: {{ store: postgres, url: "{pg}", flush_interval: 200ms }}
backends:
  postgres: {{ type: postgres, url: "{pg}", pool: {pool} }}
  nats: {{ type: nats, url: "{nats}" }}
namespaces:
  b{run}:
    allowed_backends: [postgres, nats]
    allowed_patterns: [key_value, queue, transact]
    api_keys: [{{ name: test, sha256: "{key}" }}]
    transact:
      tables:
        {table}: {{ backend: postgres }}
    relays:
      out:
        backend: postgres
        mailbox: orders
        to: {{ nats: {{ backend: nats, subject: {subject} }} }}
        poll_interval: 200ms
        batch_size: 20
        max_backoff: 500ms
configs:
  kv: {{ namespace: b{run}, pattern: key_value, backend: postgres }}
  queue: {{ namespace: b{run}, pattern: queue, backend: postgres }}
  tx: {{ namespace: b{run}, pattern: transact, backend: postgres }}
"#,
        pg = common::kv::database_url(),
        pool = common::kv::FAST_POOL,
        nats = nats_url(),
        key = prism::auth::api_key_digest(TEST_KEY),
    )
}

/// HAProxy in front of `servers`: HTTP/2 both sides, round robin per
/// request, quick health checks, and a failed connection retried on
/// another server (which never reached a gateway, so it is safe).
fn haproxy_config(port: u16, servers: &[String]) -> String {
    let mut cfg = format!(
        "global\n  maxconn 2000\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  \
         retries 3\n  option redispatch 1\n  retry-on conn-failure empty-response\n\
         frontend grpc\n  bind 127.0.0.1:{port} proto h2\n  default_backend gateways\n\
         backend gateways\n  balance roundrobin\n"
    );
    for (i, addr) in servers.iter().enumerate() {
        cfg.push_str(&format!(
            "  server g{i} {addr} proto h2 check inter 100ms fall 2 rise 2\n"
        ));
    }
    cfg
}

/// Runs `call` once, and once more if it fails; counts the retries.
async fn at_most_one_retry<T, F, Fut>(retried: &AtomicU64, what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    match call().await {
        Ok(v) => v,
        Err(first) => {
            retried.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            call().await.unwrap_or_else(|second| {
                panic!("{what} failed twice through the balancer: {first:?}, then {second:?}")
            })
        }
    }
}

async fn open(channel: &Channel, config: &str) -> String {
    SessionServiceClient::new(channel.clone())
        .create_session(api_key_request(TEST_KEY, config))
        .await
        .expect("session through the balancer")
        .into_inner()
        .session_token
}

#[test]
fn three_gateways_behind_haproxy_lose_nothing_when_one_is_killed() {
    block_on_multi_thread(async {
        let run = common::kv::run_id();
        let ns = format!("b{run}");
        let table = format!("prism_bal_{run}");
        let subject = format!("prism.bal.{run}");
        let stream_name = format!("BAL_{run}");
        let dir = std::env::temp_dir().join(format!("prism-balanced-{run}"));
        std::fs::create_dir_all(&dir).unwrap();

        let pool = pg().await;
        create_table(&pool, &table).await;
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        capture(&js, &stream_name, &subject).await;

        let config_path = dir.join("prism.yaml");
        std::fs::write(&config_path, config(&run, &table, &subject)).unwrap();
        let mut gateways = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..GATEWAYS {
            let (child, addr) =
                common::spawn_serve(&["--config".as_ref(), config_path.as_os_str()], &[]).await;
            gateways.push(child);
            addrs.push(addr);
        }
        let port = common::free_port();
        let haproxy_path = dir.join("haproxy.cfg");
        std::fs::write(&haproxy_path, haproxy_config(port, &addrs)).unwrap();
        let haproxy_bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("haproxy is installed (scripts/test.sh installs it)");
        let _haproxy = tokio::process::Command::new(haproxy_bin)
            .args(["-db", "-f"])
            .arg(&haproxy_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy starts");
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10));
        let channel = {
            let mut tries = 0;
            loop {
                match channel.connect().await {
                    Ok(c) => break c,
                    Err(e) if tries < 100 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("haproxy does not answer: {e}"),
                }
            }
        };
        // Every gateway healthy behind the balancer before the load starts.
        common::wait_until("a session opens through the balancer", || async {
            SessionServiceClient::new(channel.clone())
                .create_session(api_key_request(TEST_KEY, "kv"))
                .await
                .is_ok()
        })
        .await;

        let retried = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..WORKERS {
            let (channel, retried, done, table) = (
                channel.clone(),
                retried.clone(),
                done.clone(),
                table.clone(),
            );
            workers.spawn(async move {
                let kv_token = open(&channel, "kv").await;
                let q_token = open(&channel, "queue").await;
                let tx_token = open(&channel, "tx").await;
                let kvc = KeyValueServiceClient::new(channel.clone());
                let qc = QueueServiceClient::new(channel.clone());
                let txc = TransactServiceClient::new(channel.clone());
                let mut acked = (Vec::new(), Vec::new(), Vec::new());
                for i in 0..ROUNDS {
                    let key = format!("w{w}-{i}");
                    at_most_one_retry(&retried, "KeyValue Set", || {
                        let mut c = kvc.clone();
                        let request = kv::SetRequest {
                            session_token: kv_token.clone(),
                            key: key.clone(),
                            value: key.clone().into_bytes(),
                            ..Default::default()
                        };
                        async move { c.set(request).await }
                    })
                    .await;
                    acked.0.push(key.clone());
                    at_most_one_retry(&retried, "Queue Publish", || {
                        let mut c = qc.clone();
                        let request = q::PublishRequest {
                            session_token: q_token.clone(),
                            topic: "work".into(),
                            payload: key.clone().into_bytes(),
                            ..Default::default()
                        };
                        async move { c.publish(request).await }
                    })
                    .await;
                    acked.1.push(key.clone());
                    at_most_one_retry(&retried, "Transact Write", || {
                        let mut c = txc.clone();
                        let mut request = customer_write(
                            &tx_token,
                            &table,
                            &key,
                            "orders",
                            key.clone().into_bytes(),
                        );
                        // A retry of a write that did commit answers the
                        // first response instead of writing again.
                        request.options = Some(tx::TransactionOptions {
                            idempotent: true,
                            idempotency_key: Some(format!("{key}-write")),
                            ..Default::default()
                        });
                        async move { c.write(request).await }
                    })
                    .await;
                    acked.2.push(key);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                (kv_token, acked)
            });
        }

        // Kill one gateway once a third of the load has run.
        common::wait_until("a third of the load ran", || async {
            done.load(Ordering::Relaxed) >= WORKERS * ROUNDS / 3
        })
        .await;
        let victim = &mut gateways[1];
        victim.start_kill().expect("SIGKILL the gateway");
        victim.wait().await.unwrap();
        killed.store(true, Ordering::Relaxed);
        println!(
            "killed gateway 1 after {} of {} rounds",
            done.load(Ordering::Relaxed),
            WORKERS * ROUNDS
        );

        let mut kv_keys = Vec::new();
        let mut published = Vec::new();
        let mut written = Vec::new();
        let mut tokens = Vec::new();
        while let Some(r) = workers.join_next().await {
            let (token, (k, p, t)) = r.expect("a worker finished every call");
            tokens.push(token);
            kv_keys.extend(k);
            published.extend(p);
            written.extend(t);
        }
        let total = WORKERS * ROUNDS;
        assert_eq!(written.len() as u64, total);
        println!(
            "{} calls through the balancer, {} needed one retry, none more",
            3 * total,
            retried.load(Ordering::Relaxed)
        );

        // Sessions opened before the kill still work, wherever they land.
        let kvc = KeyValueServiceClient::new(channel.clone());
        for token in &tokens {
            for _ in 0..GATEWAYS {
                at_most_one_retry(&retried, "KeyValue Get after the kill", || {
                    let mut c = kvc.clone();
                    let request = kv::GetRequest {
                        session_token: token.clone(),
                        key: "w0-0".into(),
                    };
                    async move { c.get(request).await }
                })
                .await;
            }
        }
        // Every acknowledged KeyValue write reads back.
        for key in &kv_keys {
            let got = at_most_one_retry(&retried, "KeyValue Get", || {
                let mut c = kvc.clone();
                let request = kv::GetRequest {
                    session_token: tokens[0].clone(),
                    key: key.clone(),
                };
                async move { c.get(request).await }
            })
            .await
            .into_inner();
            assert_eq!(got.value, key.as_bytes(), "acknowledged Set of {key} lost");
        }
        // Every acknowledged Publish is in the topic.
        let in_topic: HashSet<Vec<u8>> = sqlx::query(
            "SELECT payload FROM prism_queue_messages WHERE namespace = $1 AND topic = 'work'",
        )
        .bind(ns.as_str())
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<Vec<u8>, _>(0))
        .collect();
        let lost: Vec<&String> = published
            .iter()
            .filter(|k| !in_topic.contains(k.as_bytes()))
            .collect();
        assert!(lost.is_empty(), "acknowledged publishes lost: {lost:?}");
        // Every acknowledged Transact write is in its table exactly once...
        let rows: BTreeMap<String, i64> = sqlx::query(&format!(
            "SELECT customer, COUNT(*) FROM {table} GROUP BY customer"
        ))
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect();
        for key in &written {
            assert_eq!(
                rows.get(key),
                Some(&1),
                "Transact write {key}: rows {:?}",
                rows.get(key)
            );
        }
        // ...and its outbox message reaches NATS once.
        common::wait_until("every mailbox row is relayed", || async {
            let mut s = js.get_stream(&stream_name).await.unwrap();
            s.info().await.unwrap().state.messages >= total
        })
        .await;
        let stream = js.get_stream(&stream_name).await.unwrap();
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer
            .fetch()
            .max_messages(total as usize + 100)
            .messages()
            .await
            .unwrap();
        let mut relayed: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
        while let Some(m) = tokio::time::timeout(Duration::from_secs(2), messages.next())
            .await
            .ok()
            .flatten()
        {
            *relayed.entry(m.unwrap().payload.to_vec()).or_default() += 1;
        }
        let twice: Vec<_> = relayed.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "relayed more than once: {twice:?}");
        for key in &written {
            assert_eq!(
                relayed.get(key.as_bytes()),
                Some(&1),
                "outbox row {key} relayed"
            );
        }
        assert!(killed.load(Ordering::Relaxed));

        drop(gateways);
        let _ = js.delete_stream(&stream_name).await;
        cleanup(&pool, &table, &ns).await;
        for t in [
            "prism_queue_messages",
            "prism_queue_topics",
            "prism_queue_partitions",
            "prism_kv",
        ] {
            let _ = sqlx::query(&format!("DELETE FROM {t} WHERE namespace = $1"))
                .bind(ns.as_str())
                .execute(&pool)
                .await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}
