//! The call gate, seen from a client: every service's stream holds its
//! session open against a non-forced close (and is counted in
//! `GetSession.active_streams`), and a session's end reaches an open stream
//! of every service as that end's own error — `SESSION_EXPIRED`,
//! `SESSION_CLOSED` or `SESSION_FAILED` — never as a quiet end.
//!
//! One test per service and end, so a failure names both. Everything runs on
//! the memory and SQLite backends.

mod common;

use std::time::Duration;

use common::{api_key_request, assert_error, TestGateway, TEST_KEY};
use prism::{
    config::{GatewayConfig, Source},
    error::Service,
    proto::{
        keyvalue::v1::{self as kv, key_value_service_client::KeyValueServiceClient},
        pubsub::v1::{self as ps, pub_sub_service_client::PubSubServiceClient},
        queue::v1::{self as q, queue_service_client::QueueServiceClient},
        reader::v1::{self as rd, reader_service_client::ReaderServiceClient},
        session::v1::{CloseSessionRequest, GetSessionRequest},
        transact::v1::{
            self as tx, transact_request::Request as In, transact_response::Response as Out,
            transact_service_client::TransactServiceClient,
        },
    },
    runtime::block_on_multi_thread,
    session::EndReason,
};
use tokio::sync::mpsc;
use tonic::{transport::Channel, Code, Status};

/// Rows of the SQLite table Reader pages through: enough, at 300 bytes
/// each, that a client reading nothing holds the stream mid-way.
const ROWS: usize = 2000;
/// Keys a Scan walks, 4 KiB each, for the same reason.
const KEYS: usize = 300;

fn config(sqlite: &std::path::Path) -> GatewayConfig {
    let yaml = format!(
        r#"
server:
  shutdown_grace: 5s
  supervision_interval: 100ms
  actor_threads: 2
backends:
  memory: {{ type: memory }}
  rows-sqlite:
    type: sqlite
    path: {path}
    init_sql:
      - CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, body TEXT NOT NULL)
      - >-
        WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < {ROWS})
        INSERT OR IGNORE INTO items (id, body) SELECT x, printf('%0300d', x) FROM n
namespaces:
  default:
    allowed_backends: [memory, rows-sqlite]
    allowed_patterns: [key_value, queue, pubsub, reader, transact]
    session:
      idle_timeout: 10m
      max_lifetime: 1h
      close_drain_timeout: 300ms
    collections:
      items: {{ backend: rows-sqlite, table: items, id: id, default_page_size: 10, max_page_size: 10 }}
    transact:
      tables:
        items: {{ backend: rows-sqlite, id: id }}
    api_keys:
      - {{ name: test, sha256: "{key}", roles: [admin] }}
configs:
  kv: {{ namespace: default, pattern: key_value, backend: memory }}
  queue: {{ namespace: default, pattern: queue, backend: memory }}
  pubsub: {{ namespace: default, pattern: pubsub, backend: memory }}
  rows: {{ namespace: default, pattern: reader, also: [transact], backend: rows-sqlite }}
"#,
        path = sqlite.display(),
        key = prism::auth::api_key_digest(TEST_KEY),
    );
    GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).expect("config parses")
}

/// A gateway, one session of the named config, and a client channel whose
/// flow-control windows are the protocol's minimum, so a stream the test
/// does not read stays open.
struct Fixture {
    gw: TestGateway,
    token: String,
    session_id: String,
    narrow: Channel,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Fixture {
    async fn start(config_name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!(
            "prism-gate-{}",
            hex::encode(rand::random::<[u8; 8]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let gw = TestGateway::start_with(config(&dir.join("rows.db"))).await;
        gw.wait_backend_up("rows-sqlite").await;
        let created = gw
            .sessions()
            .create_session(api_key_request(TEST_KEY, config_name))
            .await
            .expect("create session")
            .into_inner();
        let narrow = gw.narrow_channel(65_535).await;
        Fixture {
            gw,
            token: created.session_token,
            session_id: created.session_id,
            narrow,
            _dir: TempDir(dir),
        }
    }

    async fn active_streams(&self) -> i32 {
        self.gw
            .sessions()
            .get_session(GetSessionRequest {
                session_token: self.token.clone(),
            })
            .await
            .expect("get session")
            .into_inner()
            .metrics
            .expect("session metrics")
            .active_streams
    }

    /// Ends the session for `reason` as the expiry timer, a close or the
    /// supervisor giving up would.
    fn end(&self, reason: EndReason) {
        let entry = self
            .gw
            .gateway
            .registry
            .by_id(&self.session_id)
            .expect("session is open");
        assert!(self.gw.gateway.registry.end(&entry, reason));
    }
}

/// An open stream of one service, read one item at a time.
enum Open {
    Scan(tonic::Streaming<kv::ScanResponse>),
    Subscribe(tonic::Streaming<q::Message>),
    Events(tonic::Streaming<ps::Event>),
    Read(tonic::Streaming<rd::Page>),
    Transaction {
        /// Held so the client's side of the stream stays open.
        _requests: mpsc::Sender<tx::TransactRequest>,
        responses: tonic::Streaming<tx::TransactResponse>,
    },
}

impl Open {
    /// Reads until the stream fails; panics if it ends quietly. A
    /// Transaction stream answers `rolled_back` before it fails.
    async fn until_error(&mut self) -> Status {
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let next = match self {
                    Open::Scan(s) => s.message().await.map(|m| m.map(|_| ())),
                    Open::Subscribe(s) => s.message().await.map(|m| m.map(|_| ())),
                    Open::Events(s) => s.message().await.map(|m| m.map(|_| ())),
                    Open::Read(s) => s.message().await.map(|m| m.map(|_| ())),
                    Open::Transaction { responses: s, .. } => match s.message().await {
                        Ok(Some(tx::TransactResponse {
                            response: Some(Out::RolledBack(r)),
                        })) => {
                            assert!(r.reason.contains("session"), "{}", r.reason);
                            Ok(Some(()))
                        }
                        other => other.map(|m| m.map(|_| ())),
                    },
                };
                match next {
                    Ok(Some(())) => continue,
                    Ok(None) => panic!("the stream ended without saying why"),
                    Err(status) => return status,
                }
            }
        })
        .await;
        ended.expect("the stream fails in time")
    }
}

#[derive(Clone, Copy)]
enum Api {
    KeyValue,
    Queue,
    PubSub,
    Reader,
    Transact,
}

impl Api {
    fn config(self) -> &'static str {
        match self {
            Api::KeyValue => "kv",
            Api::Queue => "queue",
            Api::PubSub => "pubsub",
            Api::Reader | Api::Transact => "rows",
        }
    }

    fn service(self) -> Service {
        match self {
            Api::KeyValue => Service::KeyValue,
            Api::Queue => Service::Queue,
            Api::PubSub => Service::PubSub,
            Api::Reader => Service::Reader,
            Api::Transact => Service::Transact,
        }
    }

    /// Opens a stream of this service that stays open while unread.
    async fn open(self, f: &Fixture) -> Open {
        let token = f.token.clone();
        match self {
            Api::KeyValue => {
                let mut client = KeyValueServiceClient::new(f.gw.channel.clone());
                for i in 0..KEYS {
                    client
                        .set(kv::SetRequest {
                            session_token: token.clone(),
                            key: format!("k{i:04}"),
                            value: vec![b'v'; 4096],
                            ..Default::default()
                        })
                        .await
                        .expect("set");
                }
                let stream = KeyValueServiceClient::new(f.narrow.clone())
                    .scan(kv::ScanRequest {
                        session_token: token,
                        prefix: "k".into(),
                        limit: KEYS as u32,
                        ..Default::default()
                    })
                    .await
                    .expect("scan")
                    .into_inner();
                Open::Scan(stream)
            }
            Api::Queue => {
                QueueServiceClient::new(f.gw.channel.clone())
                    .publish(q::PublishRequest {
                        session_token: token.clone(),
                        topic: "gate".into(),
                        payload: b"first".to_vec(),
                        ..Default::default()
                    })
                    .await
                    .expect("publish");
                let stream = QueueServiceClient::new(f.narrow.clone())
                    .subscribe(q::SubscribeRequest {
                        session_token: token,
                        topic: "gate".into(),
                        ..Default::default()
                    })
                    .await
                    .expect("subscribe")
                    .into_inner();
                Open::Subscribe(stream)
            }
            Api::PubSub => {
                let stream = PubSubServiceClient::new(f.narrow.clone())
                    .subscribe(ps::SubscribeRequest {
                        session_token: token,
                        topic_pattern: "gate".into(),
                        ..Default::default()
                    })
                    .await
                    .expect("subscribe")
                    .into_inner();
                Open::Events(stream)
            }
            Api::Reader => {
                let stream = ReaderServiceClient::new(f.narrow.clone())
                    .read(rd::ReadRequest {
                        session_token: token,
                        collection: "items".into(),
                        page_size: 10,
                        ..Default::default()
                    })
                    .await
                    .expect("read")
                    .into_inner();
                Open::Read(stream)
            }
            Api::Transact => {
                let (requests, rx) = mpsc::channel(4);
                requests
                    .send(tx::TransactRequest {
                        request: Some(In::Begin(tx::BeginTransaction {
                            session_token: token,
                            options: None,
                        })),
                    })
                    .await
                    .unwrap();
                let mut responses = TransactServiceClient::new(f.narrow.clone())
                    .transaction(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .expect("transaction")
                    .into_inner();
                match responses.message().await.expect("begin answered") {
                    Some(tx::TransactResponse {
                        response: Some(Out::Started(_)),
                    }) => {}
                    other => panic!("expected started, got {other:?}"),
                }
                Open::Transaction {
                    _requests: requests,
                    responses,
                }
            }
        }
    }
}

/// A non-forced close of a session with one open stream of `api` waits its
/// drain timeout, keeps the session and reports the stream; once the stream
/// is gone the close succeeds.
async fn close_waits_for_the_stream(api: Api) {
    let f = Fixture::start(api.config()).await;
    let open = api.open(&f).await;
    assert_eq!(f.active_streams().await, 1, "the stream is counted");
    let refused =
        f.gw.sessions()
            .close_session(CloseSessionRequest {
                session_token: f.token.clone(),
                force: false,
            })
            .await
            .expect("close answers")
            .into_inner();
    assert!(!refused.success, "a close does not cut an open stream");
    assert_eq!(refused.pending_operations, 1);
    assert_eq!(f.active_streams().await, 1, "the session is still open");
    drop(open);
    let entry = f.gw.gateway.registry.by_id(&f.session_id).unwrap();
    assert_eq!(
        entry.wait_drained(Duration::from_secs(20)).await,
        0,
        "the stream's operation ends with the stream"
    );
    let closed =
        f.gw.sessions()
            .close_session(CloseSessionRequest {
                session_token: f.token.clone(),
                force: false,
            })
            .await
            .expect("close answers")
            .into_inner();
    assert!(closed.success, "{}", closed.message);
    assert_eq!(closed.pending_operations, 0);
    f.gw.stop().await;
}

/// A session ended for `reason` under an open stream of `api`: the stream
/// fails with that end's error, in the service's domain.
async fn end_reaches_the_stream(api: Api, reason: EndReason, expected: &str) {
    let f = Fixture::start(api.config()).await;
    let mut open = api.open(&f).await;
    f.end(reason);
    let status = open.until_error().await;
    assert_error(&status, Code::Unauthenticated, expected, api.service());
    f.gw.stop().await;
}

macro_rules! per_service {
    ($($api:ident: $close:ident, $expired:ident, $closed:ident, $failed:ident;)*) => {$(
        #[test]
        fn $close() {
            block_on_multi_thread(close_waits_for_the_stream(Api::$api));
        }

        #[test]
        fn $expired() {
            block_on_multi_thread(end_reaches_the_stream(
                Api::$api,
                EndReason::Expired,
                "SESSION_EXPIRED",
            ));
        }

        #[test]
        fn $closed() {
            block_on_multi_thread(end_reaches_the_stream(
                Api::$api,
                EndReason::Closed,
                "SESSION_CLOSED",
            ));
        }

        #[test]
        fn $failed() {
            block_on_multi_thread(end_reaches_the_stream(
                Api::$api,
                EndReason::Failed,
                "SESSION_FAILED",
            ));
        }
    )*};
}

per_service! {
    KeyValue: close_waits_for_a_scan, expiry_ends_a_scan, close_ends_a_scan, failure_ends_a_scan;
    Queue: close_waits_for_a_queue_subscription, expiry_ends_a_queue_subscription,
        close_ends_a_queue_subscription, failure_ends_a_queue_subscription;
    PubSub: close_waits_for_a_pubsub_subscription, expiry_ends_a_pubsub_subscription,
        close_ends_a_pubsub_subscription, failure_ends_a_pubsub_subscription;
    Reader: close_waits_for_a_read, expiry_ends_a_read, close_ends_a_read, failure_ends_a_read;
    Transact: close_waits_for_a_transaction, expiry_ends_a_transaction,
        close_ends_a_transaction, failure_ends_a_transaction;
}
