//! Three `prism serve` processes behind Debian's HAProxy (HTTP/2, each
//! request balanced on its own), sessions in Postgres: clients of the Rust
//! SDK (`prism-client`) open sessions and drive KeyValue, Queue and
//! Transact (with an outbox relayed to NATS) through the balancer while one
//! gateway is killed with SIGKILL. The callers write no retry code: every
//! call succeeds, every session survives without reopening, nothing
//! acknowledged is lost, no Transact write applies twice and no relayed row
//! reaches NATS twice.

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
    outbox::{capture, cleanup, create_table, nats_url, pg},
    TEST_KEY,
};
use futures::StreamExt;
use prism::{
    proto::session::v1::session_service_client::SessionServiceClient,
    runtime::block_on_multi_thread,
};
use prism_client::{transact::Change, Client, Session};
use sqlx::Row;
use tonic::transport::Endpoint;

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
/// request, quick health checks, and a request retried on another server
/// when the connection failed (it never reached a gateway) or the server
/// closed without answering (it may have: HAProxy's own retry is then
/// at-least-once, which is why the SDK's writes carry idempotency tokens).
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

async fn open(client: &Client, config: &str) -> Session {
    client
        .session()
        .api_key(TEST_KEY)
        .config(config)
        .open()
        .await
        .expect("session through the balancer")
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

        let client = Client::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("the SDK connects to the balancer");
        let done = Arc::new(AtomicU64::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..WORKERS {
            let (client, done, table) = (client.clone(), done.clone(), table.clone());
            workers.spawn(async move {
                let kv = open(&client, "kv").await;
                let queue = open(&client, "queue").await;
                let tx = open(&client, "tx").await;
                let (kvc, qc, txc) = (kv.kv(), queue.queue(), tx.transact());
                let mut acked = (Vec::new(), Vec::new(), Vec::new());
                for i in 0..ROUNDS {
                    let key = format!("w{w}-{i}");
                    // No retry code here: the SDK retries (KeyValue and
                    // Transact writes with an idempotency token made once
                    // per write; Publish only when it was not applied).
                    kvc.set(&key, key.clone().into_bytes())
                        .await
                        .unwrap_or_else(|e| panic!("KeyValue Set {key}: {e:?}"));
                    acked.0.push(key.clone());
                    qc.publish("work", key.clone().into_bytes())
                        .await
                        .unwrap_or_else(|e| panic!("Queue Publish {key}: {e:?}"));
                    acked.1.push(key.clone());
                    let change = Change::insert(&table)
                        .field("customer", key.clone())
                        .message("orders", key.clone().into_bytes());
                    txc.write(change)
                        .await
                        .unwrap_or_else(|e| panic!("Transact Write {key}: {e:?}"));
                    acked.2.push(key);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                ([kv, queue, tx], acked)
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
        let mut sessions = Vec::new();
        while let Some(r) = workers.join_next().await {
            let (opened, (k, p, t)) = r.expect("a worker finished every call");
            sessions.extend(opened);
            kv_keys.extend(k);
            published.extend(p);
            written.extend(t);
        }
        let total = WORKERS * ROUNDS;
        assert_eq!(written.len() as u64, total);
        println!("{} calls through the balancer, all answered", 3 * total);

        // Sessions opened before the kill still work, wherever they land,
        // and none had to reopen: they live in Postgres, not in a gateway.
        for session in &sessions {
            assert_eq!(session.reopened(), 0, "session {} reopened", session.id());
        }
        let kvc = sessions[0].kv();
        for session in sessions.iter().step_by(3) {
            for _ in 0..GATEWAYS {
                session
                    .kv()
                    .get("w0-0")
                    .await
                    .expect("a session from before the kill");
            }
        }
        // Every acknowledged KeyValue write reads back.
        for key in &kv_keys {
            let got = kvc.get(key).await.expect("KeyValue Get").map(|v| v.value);
            assert_eq!(
                got.as_deref(),
                Some(key.as_bytes()),
                "acknowledged Set of {key} lost"
            );
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
