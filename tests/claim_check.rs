//! Claim check: payloads above a namespace's threshold go to an object
//! store (S3 on a moto server this test starts on a free loopback port, or
//! a local directory) and come back whole, in pieces, to subscribers; the
//! objects go after acknowledgement or retention.

mod common;

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use common::{api_key_request, assert_error, wait_until, TestGateway};
use prism::{
    backends::blob::Blobs,
    config::{GatewayConfig, Source},
    error::Service,
    proto::{
        pubsub::v1::{self as ps, pub_sub_service_client::PubSubServiceClient},
        queue::v1::{self as q, queue_service_client::QueueServiceClient},
        transact::v1::{self as tx, transact_service_client::TransactServiceClient},
    },
    runtime::block_on_multi_thread,
};
use tokio::process::{Child, Command};
use tonic::{transport::Channel, Code, Streaming};

const MIB: usize = 1024 * 1024;
const BIG: usize = 64 * MIB;

/// An S3 server (moto) on a free loopback port, killed (by its PID) when
/// dropped.
struct Moto {
    port: u16,
    _child: Child,
}

impl Moto {
    async fn start(bucket: &str) -> Moto {
        let port = common::free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("moto is installed (pip install 'moto[server]'; scripts/test.sh does)");
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_until("moto accepts connections", || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        let (status, body) = common::http(addr, "PUT", &format!("/{bucket}"), &[]).await;
        assert_eq!(status, 200, "creating bucket {bucket}: {body}");
        Moto {
            port,
            _child: child,
        }
    }
}

/// Files anywhere under `dir` (none when it is missing).
fn files_under(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                files_under(&path)
            } else {
                1
            }
        })
        .sum()
}

/// Bytes no two runs share and no pattern repeats in (a xorshift stream).
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

struct Fixture {
    gw: TestGateway,
    run: String,
    dir: std::path::PathBuf,
    _moto: Moto,
}

const KEYS: [(&str, &str); 6] = [
    ("cq", "cq-key"),
    ("cp", "cp-key"),
    ("cl", "cl-key"),
    ("cltx", "cl-key"),
    ("cm", "cm-key"),
    ("plain", "plain-key"),
];

impl Fixture {
    async fn start() -> Fixture {
        let run = common::kv::run_id();
        let moto = Moto::start("claims").await;
        let dir = std::env::temp_dir().join(format!("prism-claims-{run}"));
        let key = |k| prism::auth::api_key_digest(k);
        let yaml = format!(
            r#"
server: {{ shutdown_grace: 5s, supervision_interval: 100ms, actor_threads: 2, admin_token: {admin} }}
backends:
  memory: {{ type: memory }}
  kafka: {{ type: kafka, url: "{kafka}", pool: {pool} }}
  nats: {{ type: nats, url: "{nats}", pool: {pool} }}
  sqlite: {{ type: sqlite, path: "{dir}/mailbox.db", pool: {pool} }}
object_stores:
  s3: {{ type: s3, bucket: claims, endpoint: "http://127.0.0.1:{port}", region: us-east-1,
         access_key_id: test, secret_access_key: test, allow_http: true }}
  local: {{ type: local, path: "{dir}/objects" }}
namespaces:
  cq{run}:
    allowed_backends: [kafka]
    allowed_patterns: [queue]
    api_keys: [{{ name: t, sha256: "{cq}" }}]
    claim_check: {{ store: s3, threshold: 262144, retention: 1h, delete_on_ack: true }}
  cp{run}:
    allowed_backends: [nats]
    allowed_patterns: [pubsub]
    api_keys: [{{ name: t, sha256: "{cp}" }}]
    claim_check: {{ store: s3, threshold: 262144, retention: 5s }}
  cl{run}:
    allowed_backends: [memory, sqlite]
    allowed_patterns: [queue, transact]
    api_keys: [{{ name: t, sha256: "{cl}" }}]
    claim_check: {{ store: local, threshold: 65536, chunk_size: 1048576,
                    max_object_bytes: 8388608, retention: 1h, delete_on_ack: true,
                    max_uploads: 1 }}
  cm{run}:
    allowed_backends: [sqlite, kafka]
    allowed_patterns: [transact]
    api_keys: [{{ name: t, sha256: "{cm}" }}]
    claim_check: {{ store: local, threshold: 65536, retention: 3s }}
    relays:
      raw:
        backend: sqlite
        mailbox: raw
        to: {{ kafka: {{ backend: kafka, topic: prism-claims-raw-{run} }} }}
  plain{run}:
    allowed_backends: [memory]
    allowed_patterns: [queue]
    api_keys: [{{ name: t, sha256: "{plain}" }}]
configs:
  cq: {{ namespace: cq{run}, pattern: queue, backend: kafka, options: {{ partitions: "1", visibility_timeout: 120s }} }}
  cp: {{ namespace: cp{run}, pattern: pubsub, backend: nats }}
  cl: {{ namespace: cl{run}, pattern: queue, backend: memory, options: {{ visibility_timeout: 120s }} }}
  cm: {{ namespace: cm{run}, pattern: transact, backend: sqlite }}
  cltx: {{ namespace: cl{run}, pattern: transact, backend: sqlite }}
  plain: {{ namespace: plain{run}, pattern: queue, backend: memory }}
"#,
            kafka = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
            nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
            pool = common::kv::FAST_POOL,
            dir = dir.display(),
            port = moto.port,
            cq = key(KEYS[0].1),
            cp = key(KEYS[1].1),
            cl = key(KEYS[2].1),
            cm = key(KEYS[4].1),
            plain = key(KEYS[5].1),
            admin = common::ADMIN_TOKEN,
        );
        std::fs::create_dir_all(&dir).unwrap();
        let config = GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).unwrap();
        let report = prism::config::validate::validate(&config);
        assert!(!report.has_failures(), "{}", report.text());
        let gw = TestGateway::start_with(config).await;
        Fixture {
            gw,
            run,
            dir,
            _moto: moto,
        }
    }

    /// A session on config `name` (its namespace's key).
    async fn session(&self, name: &str) -> String {
        let backend = match name {
            "cq" => "kafka",
            "cp" => "nats",
            "cm" | "cltx" => "sqlite",
            _ => "memory",
        };
        self.gw.wait_backend_up(backend).await;
        let key = KEYS.iter().find(|(n, _)| *n == name).unwrap().1;
        self.gw
            .sessions()
            .create_session(api_key_request(key, name))
            .await
            .unwrap()
            .into_inner()
            .session_token
    }

    fn store(&self, name: &str) -> &Blobs {
        self.gw.gateway.claim_checks.store(name).unwrap()
    }

    /// The objects stored for namespace `<prefix><run>`.
    async fn objects(&self, store: &str, prefix: &str) -> Vec<String> {
        let later = SystemTime::now() + Duration::from_secs(3600);
        self.store(store)
            .older_than(&format!("{prefix}{}", self.run), later)
            .await
            .unwrap()
    }

    async fn finish(self) {
        let namespaces: Vec<String> = self
            .gw
            .gateway
            .config
            .load()
            .namespaces
            .keys()
            .cloned()
            .collect();
        self.gw.stop().await;
        common::forget_queue_namespaces(&namespaces).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The pieces of a PublishStream: `start` with the first MiB, then a MiB
/// at a time.
fn queue_pieces(token: &str, topic: &str, body: &[u8]) -> Vec<q::PublishStreamRequest> {
    use q::publish_stream_request::Part;
    let mut chunks = body.chunks(MIB);
    let mut out = vec![q::PublishStreamRequest {
        part: Some(Part::Start(q::PublishRequest {
            session_token: token.into(),
            topic: topic.into(),
            payload: chunks.next().unwrap_or_default().to_vec(),
            headers: [("kind".to_string(), "big".to_string())].into(),
            ..Default::default()
        })),
    }];
    out.extend(chunks.map(|c| q::PublishStreamRequest {
        part: Some(Part::Payload(c.to_vec())),
    }));
    out
}

/// Where a piece stands: (index, count, total size), from its
/// `prism-chunk` headers (taken out); `None` for a whole message.
fn chunk(headers: &mut HashMap<String, String>) -> Option<(u32, u32, u64)> {
    let at = headers.remove("prism-chunk")?;
    let total = headers
        .remove("prism-chunk-total-size")
        .expect("a total size");
    let (index, count) = at.split_once('/').expect("index/count");
    Some((
        index.parse().unwrap(),
        count.parse().unwrap(),
        total.parse().unwrap(),
    ))
}

/// One whole Queue message off the stream, joined from its pieces (each
/// checked against the one before), and how many pieces it came in.
async fn whole_message(s: &mut Streaming<q::Message>) -> (q::Message, usize) {
    let mut first: Option<q::Message> = None;
    let mut pieces = 0;
    loop {
        let mut m = tokio::time::timeout(Duration::from_secs(60), s.message())
            .await
            .expect("a piece in time")
            .expect("the stream carries on")
            .expect("the stream is open");
        pieces += 1;
        let Some((index, count, total)) = chunk(&mut m.headers) else {
            assert!(first.is_none(), "a whole message in the middle of pieces");
            return (m, 1);
        };
        assert_eq!(index as usize, pieces - 1, "pieces in order");
        match &mut first {
            None => first = Some(m),
            Some(f) => {
                assert_eq!(m.message_id, f.message_id, "pieces of one message");
                assert!(m.headers.is_empty(), "headers ride on the first piece only");
                f.payload.extend_from_slice(&m.payload);
            }
        }
        if index + 1 == count {
            let whole = first.take().unwrap();
            assert_eq!(whole.payload.len() as u64, total);
            return (whole, pieces);
        }
    }
}

#[test]
fn sixty_four_mib_cross_a_kafka_queue_and_a_nats_pubsub_byte_for_byte() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        let body = payload(BIG, 0x5eed_0001);

        // Kafka queue (nisshi): published in pieces, stored on S3.
        let token = fx.session("cq").await;
        let mut queue = QueueServiceClient::new(fx.gw.channel.clone());
        let published = queue
            .publish_stream(futures::stream::iter(queue_pieces(&token, "blobs", &body)))
            .await
            .expect("a 64 MiB payload is published")
            .into_inner();
        let mut sub = queue
            .subscribe(q::SubscribeRequest {
                session_token: token.clone(),
                topic: "blobs".into(),
                consumer_group: "readers".into(),
                start_position: Some(q::subscribe_request::StartPosition::Position(
                    q::StartPosition::Earliest as i32,
                )),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let stored = fx.objects("s3", "cq").await;
        assert_eq!(stored.len(), 1, "the payload is one object: {stored:?}");
        let (message, pieces) = whole_message(&mut sub).await;
        assert_eq!(message.message_id, published.message_id);
        assert_eq!(pieces, 64, "delivered in 1 MiB pieces");
        assert!(message.payload == body, "the payload arrives byte for byte");
        assert_eq!(message.headers.get("kind").map(String::as_str), Some("big"));
        assert!(
            !message.headers.keys().any(|k| k.starts_with("prism-claim")),
            "the reference is the gateway's: {:?}",
            message.headers
        );
        assert!(fx.store("s3").exists(&stored[0]).await.unwrap());
        let acked = queue
            .acknowledge(q::AcknowledgeRequest {
                session_token: token.clone(),
                message_ids: vec![message.message_id.clone()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(acked.acknowledged_count, 1, "{acked:?}");
        assert!(
            !fx.store("s3").exists(&stored[0]).await.unwrap(),
            "the object is deleted once its message is acknowledged"
        );

        // NATS PubSub: the subscriber gets the same bytes; the object goes
        // after the namespace's 5 s retention.
        let token = fx.session("cp").await;
        let mut pubsub = PubSubServiceClient::new(fx.gw.channel.clone());
        let mut events = pubsub
            .subscribe(ps::SubscribeRequest {
                session_token: token.clone(),
                topic_pattern: "blobs".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        use ps::publish_stream_request::Part;
        let mut chunks = body.chunks(4 * MIB);
        let mut parts = vec![ps::PublishStreamRequest {
            part: Some(Part::Start(ps::PublishRequest {
                session_token: token.clone(),
                topic: "blobs".into(),
                payload: chunks.next().unwrap().to_vec(),
                ..Default::default()
            })),
        }];
        parts.extend(chunks.map(|c| ps::PublishStreamRequest {
            part: Some(Part::Payload(c.to_vec())),
        }));
        let sent = pubsub
            .publish_stream(futures::stream::iter(parts))
            .await
            .expect("a 64 MiB event is published")
            .into_inner();
        let mut got = Vec::with_capacity(BIG);
        loop {
            let mut e = tokio::time::timeout(Duration::from_secs(60), events.message())
                .await
                .expect("a piece in time")
                .unwrap()
                .expect("the stream is open");
            assert_eq!(e.event_id, sent.event_id);
            got.extend_from_slice(&e.payload);
            let (index, count, _) = chunk(&mut e.metadata).expect("a 64 MiB event comes in pieces");
            if index + 1 == count {
                break;
            }
        }
        assert!(got == body, "the event's payload arrives byte for byte");
        assert_eq!(fx.objects("s3", "cp").await.len(), 1);
        wait_until("the event's object is gone after its retention", || async {
            fx.objects("s3", "cp").await.is_empty()
        })
        .await;
        fx.finish().await;
    })
}

#[test]
fn small_payloads_stay_inline_and_large_ones_go_through_a_local_store() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        let token = fx.session("cl").await;
        let mut queue = QueueServiceClient::new(fx.gw.channel.clone());
        let publisher = queue.clone();
        let publish = |payload: Vec<u8>, headers: Vec<(&str, &str)>| {
            let mut queue = publisher.clone();
            let token = token.clone();
            let headers = headers
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            async move {
                queue
                    .publish(q::PublishRequest {
                        session_token: token,
                        topic: "t".into(),
                        payload,
                        headers,
                        ..Default::default()
                    })
                    .await
            }
        };

        // Under the threshold: inline, nothing stored.
        let small = payload(1000, 7);
        publish(small.clone(), vec![]).await.unwrap();
        let mut sub = queue
            .subscribe(q::SubscribeRequest {
                session_token: token.clone(),
                topic: "t".into(),
                consumer_group: "g".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let (m, pieces) = whole_message(&mut sub).await;
        assert_eq!((m.payload == small, pieces), (true, 1));
        assert!(fx.objects("local", "cl").await.is_empty());

        // A client may not forge a reference.
        let forged = publish(small.clone(), vec![("prism-claim-check", "local/x")])
            .await
            .unwrap_err();
        assert_error(
            &forged,
            Code::InvalidArgument,
            "RESERVED_HEADER",
            Service::Queue,
        );

        // 2.5 MiB in one Publish: stored, delivered in three pieces, deleted
        // on acknowledgement.
        let large = payload(5 * MIB / 2, 8);
        publish(large.clone(), vec![]).await.unwrap();
        let stored = fx.objects("local", "cl").await;
        assert_eq!(stored.len(), 1);
        let (m, pieces) = whole_message(&mut sub).await;
        assert_eq!((m.payload == large, pieces), (true, 3));
        queue
            .acknowledge(q::AcknowledgeRequest {
                session_token: token.clone(),
                message_ids: vec![m.message_id],
            })
            .await
            .unwrap();
        assert!(fx.objects("local", "cl").await.is_empty());
        let metrics = common::scrape_metrics(fx.gw.admin_addr).await;
        assert_eq!(
            metrics.get("prism_claim_check_deleted_on_ack_total"),
            Some(&1.0)
        );
        assert_eq!(metrics.get("prism_claim_check_stored_total"), Some(&1.0));

        // Over max_object_bytes (8 MiB): refused, nothing left behind.
        let huge = payload(9 * MIB, 9);
        let refused = queue
            .publish_stream(futures::stream::iter(queue_pieces(&token, "t", &huge)))
            .await
            .unwrap_err();
        assert_error(
            &refused,
            Code::ResourceExhausted,
            "PAYLOAD_TOO_LARGE",
            Service::Queue,
        );
        assert!(fx.objects("local", "cl").await.is_empty());

        // A stream the client abandons midway publishes nothing and leaves
        // nothing stored.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut pieces = queue_pieces(&token, "t", &payload(4 * MIB, 10)).into_iter();
        for _ in 0..3 {
            tx.send(pieces.next().unwrap()).await.unwrap();
        }
        let call = tokio::spawn({
            let mut queue = queue.clone();
            async move {
                queue
                    .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
            }
        });
        let staged = fx.dir.join("objects").join(format!("cl{}", fx.run));
        wait_until("the upload has begun (its staging file)", || async {
            files_under(&staged) > 0
        })
        .await;
        // The namespace's one upload slot (max_uploads: 1) is taken.
        let busy = queue
            .publish_stream(futures::stream::iter(queue_pieces(&token, "t", &large)))
            .await
            .unwrap_err();
        assert_error(
            &busy,
            Code::ResourceExhausted,
            "CLAIM_CHECK_UPLOADS_BUSY",
            Service::Queue,
        );
        call.abort();
        drop(tx);
        wait_until("the abandoned upload is cleaned up", || async {
            files_under(&staged) == 0
        })
        .await;
        let next = tokio::time::timeout(Duration::from_millis(300), sub.message()).await;
        assert!(next.is_err(), "nothing was published: {next:?}");
        // Aborted, the upload gave its slot back.
        wait_until("the upload slot is free again", || async {
            let mut queue = queue.clone();
            let sent = queue
                .publish_stream(futures::stream::iter(queue_pieces(&token, "t", &large)))
                .await;
            match sent {
                Ok(_) => true,
                Err(e) if e.message().contains("max_uploads") => false,
                Err(e) => panic!("{e:?}"),
            }
        })
        .await;
        let (m, _) = whole_message(&mut sub).await;
        assert!(m.payload == large);

        // Without a claim check, PublishStream holds at most max_value_bytes.
        let token = fx.session("plain").await;
        let refused = queue
            .publish_stream(futures::stream::iter(queue_pieces(
                &token,
                "t",
                &payload(5 * MIB, 11),
            )))
            .await
            .unwrap_err();
        assert_error(
            &refused,
            Code::ResourceExhausted,
            "PAYLOAD_TOO_LARGE",
            Service::Queue,
        );
        let fits = queue
            .publish_stream(futures::stream::iter(queue_pieces(
                &token,
                "t",
                &payload(3 * MIB, 12),
            )))
            .await;
        assert!(fits.is_ok(), "{fits:?}");
        fx.finish().await;
    })
}

#[test]
fn a_large_mailbox_message_is_read_back_whole_and_its_loss_is_said() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        let token = fx.session("cm").await;
        let mut transact = TransactServiceClient::new(fx.gw.channel.clone());
        let message = payload(3 * MIB, 13);
        transact
            .write(tx::WriteRequest {
                session_token: token.clone(),
                mailbox: Some(tx::MailboxWrite {
                    mailbox_id: "out".into(),
                    message: message.clone(),
                    metadata: [("k".to_string(), "v".to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(fx.objects("local", "cm").await.len(), 1);
        let read = |transact: &mut TransactServiceClient<Channel>| {
            let mut transact = transact.clone();
            let token = token.clone();
            async move {
                let mut s = transact
                    .read_mailbox(tx::ReadMailboxRequest {
                        session_token: token,
                        mailbox_id: "out".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let mut items = Vec::new();
                loop {
                    match s.message().await {
                        Ok(Some(m)) => items.push(Ok(m)),
                        Ok(None) => return items,
                        Err(e) => {
                            items.push(Err(e));
                            return items;
                        }
                    }
                }
            }
        };
        let items = read(&mut transact).await;
        let pieces: Vec<tx::MailboxMessage> = items.into_iter().map(Result::unwrap).collect();
        assert_eq!(pieces.len(), 3, "1 MiB pieces");
        assert_eq!(pieces[0].metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(
            pieces[2].metadata.get("prism-chunk").map(String::as_str),
            Some("2/3")
        );
        let joined: Vec<u8> = pieces.iter().flat_map(|p| p.message.clone()).collect();
        assert!(joined == message, "the message is read back byte for byte");

        // A mailbox relayed to a Kafka topic keeps its messages whole: its
        // readers outside the gateway could not resolve a claim check.
        let relayed = payload(100 * 1024, 14);
        transact
            .write(tx::WriteRequest {
                session_token: token.clone(),
                mailbox: Some(tx::MailboxWrite {
                    mailbox_id: "raw".into(),
                    message: relayed.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            fx.objects("local", "cm").await.len(),
            1,
            "nothing more stored"
        );
        let rows = transact
            .read_mailbox(tx::ReadMailboxRequest {
                session_token: token.clone(),
                mailbox_id: "raw".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .expect("the row");
        assert!(rows.message == relayed);
        assert!(!rows.metadata.keys().any(|k| k.starts_with("prism-c")));

        // After its retention the object is gone: reading says so, never a
        // quietly short message.
        wait_until("the mailbox object is gone after its retention", || async {
            fx.objects("local", "cm").await.is_empty()
        })
        .await;
        let items = read(&mut transact).await;
        let e = items
            .into_iter()
            .find_map(Result::err)
            .expect("the stream ends with an error");
        assert_error(
            &e,
            Code::DataLoss,
            "CLAIM_CHECK_OBJECT_MISSING",
            Service::Transact,
        );
        fx.finish().await;
    })
}

/// The next answer of a Transaction stream.
async fn next(responses: &mut Streaming<tx::TransactResponse>) -> tx::transact_response::Response {
    tokio::time::timeout(Duration::from_secs(30), responses.message())
        .await
        .expect("an answer in time")
        .unwrap()
        .and_then(|r| r.response)
        .expect("a response")
}

#[test]
fn a_rolled_back_transaction_leaves_no_stored_message() {
    block_on_multi_thread(async {
        use tx::{transact_request::Request as In, transact_response::Response as Out};
        let fx = Fixture::start().await;
        let token = fx.session("cltx").await;
        let mut transact = TransactServiceClient::new(fx.gw.channel.clone());
        let (send, requests) = tokio::sync::mpsc::channel(4);
        let mut responses = transact
            .transaction(tokio_stream::wrappers::ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        let begin = In::Begin(tx::BeginTransaction {
            session_token: token.clone(),
            options: None,
        });
        send.send(tx::TransactRequest {
            request: Some(begin),
        })
        .await
        .unwrap();
        assert!(matches!(next(&mut responses).await, Out::Started(_)));
        let write = In::Write(tx::WriteRequest {
            mailbox: Some(tx::MailboxWrite {
                mailbox_id: "out".into(),
                message: payload(2 * MIB, 15),
                ..Default::default()
            }),
            ..Default::default()
        });
        send.send(tx::TransactRequest {
            request: Some(write),
        })
        .await
        .unwrap();
        assert!(matches!(next(&mut responses).await, Out::WriteResult(_)));
        assert_eq!(
            fx.objects("local", "cl").await.len(),
            1,
            "stored for the write"
        );
        let rollback = In::Rollback(tx::RollbackTransaction {
            reason: "changed my mind".into(),
        });
        send.send(tx::TransactRequest {
            request: Some(rollback),
        })
        .await
        .unwrap();
        assert!(matches!(next(&mut responses).await, Out::RolledBack(_)));
        // Retention here is an hour: only the rollback can delete it.
        wait_until("the rolled-back message's object is deleted", || async {
            fx.objects("local", "cl").await.is_empty()
        })
        .await;
        fx.finish().await;
    })
}
