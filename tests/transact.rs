//! Transact acceptance tests: the same suite on SQLite and Postgres (real
//! servers). Each fixture creates its own table and namespace, checks what
//! the gateway says against the database itself, and drops the table.

mod common;

use std::{collections::HashMap, time::Duration};

use common::{api_key_request, assert_error, TestGateway, TEST_KEY};
use futures::StreamExt;
use prism::{
    actors::ActorKind,
    config::{GatewayConfig, Source},
    error::Service,
    proto::transact::v1::{
        self as pb, data_write::WriteMode, transact_request::Request as In,
        transact_response::Response as Out, transact_service_client::TransactServiceClient,
        transaction_options::IsolationLevel,
    },
    runtime::block_on_multi_thread,
};
use prost_types::{value::Kind as V, Value};
use sqlx::{AnyPool, Row};
use tokio::sync::mpsc;
use tonic::{transport::Channel, Code, Streaming};

const BACKENDS: [&str; 2] = ["sqlite", "postgres"];
const MAILBOX: &str = "order-events";

struct Fixture {
    gw: TestGateway,
    /// The table on each backend (a Transact table lives on one backend).
    tables: HashMap<&'static str, String>,
    ns: String,
    pools: HashMap<&'static str, AnyPool>,
    sqlite_path: std::path::PathBuf,
}

fn ddl(backend: &str, table: &str) -> String {
    let (id, float) = match backend {
        "postgres" => ("BIGSERIAL PRIMARY KEY", "DOUBLE PRECISION"),
        _ => ("INTEGER PRIMARY KEY", "REAL"),
    };
    format!(
        "CREATE TABLE {table} (id {id}, customer TEXT NOT NULL, status TEXT NOT NULL DEFAULT \
         'new', amount {float} NOT NULL CHECK (amount >= 0), code TEXT UNIQUE)"
    )
}

fn num(n: f64) -> Value {
    Value {
        kind: Some(V::NumberValue(n)),
    }
}

fn text(s: &str) -> Value {
    Value {
        kind: Some(V::StringValue(s.into())),
    }
}

fn record(fields: &[(&str, Value)]) -> HashMap<String, Value> {
    fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

impl Fixture {
    async fn start() -> Fixture {
        Self::start_with("").await
    }

    /// `transact_extra` is added under the namespace's `transact:` block.
    async fn start_with(transact_extra: &str) -> Fixture {
        Self::start_tuned(transact_extra, common::kv::FAST_POOL).await
    }

    /// As [`Fixture::start_with`], both backends on pool settings `pool`.
    async fn start_tuned(transact_extra: &str, pool: &str) -> Fixture {
        let run = common::kv::run_id();
        let tables: HashMap<&str, String> = BACKENDS
            .iter()
            .map(|b| (*b, format!("prism_tx_{}_{run}", &b[..2])))
            .collect();
        let sqlite_path = std::env::temp_dir().join(format!("prism-transact-{run}.db"));
        sqlx::any::install_default_drivers();
        let mut pools = HashMap::new();
        for b in BACKENDS {
            let url = match b {
                "postgres" => common::kv::database_url(),
                _ => format!("sqlite://{}?mode=rwc", sqlite_path.display()),
            };
            let pool = AnyPool::connect(&url).await.unwrap();
            sqlx::query(&ddl(b, &tables[b]))
                .execute(&pool)
                .await
                .unwrap();
            pools.insert(b, pool);
        }
        let ns = format!("t{run}");
        let yaml = format!(
            r#"
server: {{ shutdown_grace: 5s, supervision_interval: 100ms, actor_threads: 2 }}
backends:
  sqlite: {{ type: sqlite, path: "{sqlite}", pool: {pool} }}
  postgres: {{ type: postgres, url: "{pg}", pool: {pool} }}
namespaces:
  {ns}:
    allowed_backends: [sqlite, postgres]
    allowed_patterns: [transact]
    api_keys: [{{ name: test, sha256: "{key}" }}]
    transact:
      tables:
        {sqlite_table}: {{ backend: sqlite }}
        {pg_table}: {{ backend: postgres, id: id }}
      max_open_per_session: 2
      {transact_extra}
configs:
  sqlite: {{ namespace: {ns}, pattern: transact, backend: sqlite }}
  postgres: {{ namespace: {ns}, pattern: transact, backend: postgres }}
"#,
            sqlite = sqlite_path.display(),
            pg = common::kv::database_url(),
            key = prism::auth::api_key_digest(TEST_KEY),
            sqlite_table = tables["sqlite"],
            pg_table = tables["postgres"],
        );
        let config = GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).unwrap();
        let gw = TestGateway::start_with(config).await;
        gw.wait_backend_up("sqlite").await;
        gw.wait_backend_up("postgres").await;
        Fixture {
            gw,
            tables,
            ns,
            pools,
            sqlite_path,
        }
    }

    async fn client(&self, b: &str) -> T {
        let s = self
            .gw
            .sessions()
            .create_session(api_key_request(TEST_KEY, b))
            .await
            .unwrap()
            .into_inner();
        T {
            client: TransactServiceClient::new(self.gw.channel.clone()),
            token: s.session_token,
            table: self.tables[b].clone(),
        }
    }

    async fn count(&self, b: &str, where_sql: &str) -> i64 {
        sqlx::query(&format!(
            "SELECT COUNT(*) FROM {} WHERE {where_sql}",
            self.tables[b]
        ))
        .fetch_one(&self.pools[b])
        .await
        .unwrap()
        .get::<i64, _>(0)
    }

    /// The namespace's mailbox rows as (sequence, message), by sequence.
    async fn mailbox(&self, b: &str) -> Vec<(i64, Vec<u8>)> {
        sqlx::query(
            "SELECT sequence, message FROM prism_mailbox WHERE namespace = $1 AND mailbox_id = $2 \
             ORDER BY sequence",
        )
        .bind(self.ns.as_str())
        .bind(MAILBOX)
        .fetch_all(&self.pools[b])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<i64, _>(0), r.get::<Vec<u8>, _>(1)))
        .collect()
    }

    async fn finish(self) {
        self.gw.stop().await;
        for (b, pool) in self.pools {
            let _ = sqlx::query(&format!("DROP TABLE {}", self.tables[b]))
                .execute(&pool)
                .await;
            let _ = sqlx::query("DELETE FROM prism_mailbox WHERE namespace = $1")
                .bind(self.ns.as_str())
                .execute(&pool)
                .await;
            pool.close().await;
        }
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.sqlite_path.display()));
        }
    }
}

struct T {
    client: TransactServiceClient<Channel>,
    token: String,
    table: String,
}

impl T {
    fn write_request(
        &self,
        mode: WriteMode,
        fields: &[(&str, Value)],
        message: Option<&str>,
    ) -> pb::WriteRequest {
        pb::WriteRequest {
            session_token: self.token.clone(),
            data: Some(pb::DataWrite {
                table: self.table.clone(),
                record: record(fields),
                mode: mode as i32,
                id_field: None,
            }),
            mailbox: message.map(|m| pb::MailboxWrite {
                mailbox_id: MAILBOX.into(),
                message: m.as_bytes().to_vec(),
                metadata: [("kind".to_string(), "test".to_string())].into(),
                message_type: Some("order.changed".into()),
                priority: Some(1),
            }),
            options: None,
        }
    }

    async fn write(
        &mut self,
        mode: WriteMode,
        fields: &[(&str, Value)],
        message: Option<&str>,
    ) -> Result<pb::WriteResponse, tonic::Status> {
        let req = self.write_request(mode, fields, message);
        self.client.write(req).await.map(|r| r.into_inner())
    }

    /// Inserts a row for `customer` (amount 1) with mailbox message `message`.
    async fn insert(&mut self, customer: &str, message: &str) -> pb::WriteResponse {
        self.write(
            WriteMode::Insert,
            &[("customer", text(customer)), ("amount", num(1.0))],
            Some(message),
        )
        .await
        .unwrap()
    }

    async fn read_mailbox(
        &mut self,
        since: Option<i64>,
        limit: Option<i32>,
        unprocessed_only: bool,
    ) -> Vec<pb::MailboxMessage> {
        let mut stream = self
            .client
            .read_mailbox(pb::ReadMailboxRequest {
                session_token: self.token.clone(),
                mailbox_id: MAILBOX.into(),
                since_sequence: since,
                limit,
                unprocessed_only: Some(unprocessed_only),
            })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = stream.next().await {
            out.push(m.unwrap());
        }
        out
    }

    /// Opens a Transaction stream: the sender and the responses.
    async fn open_stream(
        &mut self,
    ) -> (
        mpsc::Sender<pb::TransactRequest>,
        Streaming<pb::TransactResponse>,
    ) {
        let (tx, rx) = mpsc::channel(16);
        let responses = self
            .client
            .transaction(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        (tx, responses)
    }

    fn begin(&self, timeout_ms: i32) -> pb::TransactRequest {
        pb::TransactRequest {
            request: Some(In::Begin(pb::BeginTransaction {
                session_token: self.token.clone(),
                options: Some(pb::TransactionOptions {
                    timeout_ms,
                    ..Default::default()
                }),
            })),
        }
    }

    fn streamed_write(&self, customer: &str, message: &str) -> pb::TransactRequest {
        let mut w = self.write_request(
            WriteMode::Insert,
            &[("customer", text(customer)), ("amount", num(1.0))],
            Some(message),
        );
        w.session_token.clear();
        pb::TransactRequest {
            request: Some(In::Write(w)),
        }
    }
}

fn commit() -> pb::TransactRequest {
    pb::TransactRequest {
        request: Some(In::Commit(pb::CommitTransaction {})),
    }
}

async fn next(responses: &mut Streaming<pb::TransactResponse>) -> Out {
    tokio::time::timeout(Duration::from_secs(20), responses.next())
        .await
        .expect("a response in time")
        .expect("the stream is open")
        .expect("no transport error")
        .response
        .expect("a response")
}

/// Begins a transaction on a new stream and returns it with its id.
async fn begun(
    t: &mut T,
    timeout_ms: i32,
) -> (
    mpsc::Sender<pb::TransactRequest>,
    Streaming<pb::TransactResponse>,
    String,
) {
    let (tx, mut rx) = t.open_stream().await;
    tx.send(t.begin(timeout_ms)).await.unwrap();
    let id = match next(&mut rx).await {
        Out::Started(s) => s.transaction_id,
        other => panic!("expected started, got {other:?}"),
    };
    (tx, rx, id)
}

#[test]
fn write_commits_the_data_row_and_the_mailbox_row_together() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        for b in BACKENDS {
            let mut t = fx.client(b).await;
            let first = t
                .write(
                    WriteMode::Insert,
                    &[("customer", text("alice")), ("amount", num(42.5))],
                    Some("created alice"),
                )
                .await
                .unwrap();
            assert!(first.committed, "{b}");
            assert!(first.transaction_id.starts_with("tx-"), "{b}");
            let data = first.data_result.unwrap();
            assert_eq!(data.rows_affected, 1, "{b}");
            // The database generated the id and the default status.
            let id = match data.generated_values["id"].kind {
                Some(V::NumberValue(n)) => n as i64,
                ref other => panic!("{b}: generated id {other:?}"),
            };
            assert_eq!(data.generated_values["status"], text("new"), "{b}");
            let mailbox = first.mailbox_result.unwrap();
            assert_eq!(mailbox.sequence, 1, "{b}");
            assert!(mailbox.message_id.starts_with("msg-"), "{b}");

            let second = t
                .write(
                    WriteMode::Insert,
                    &[("customer", text("bob")), ("amount", num(7.0))],
                    Some("created bob"),
                )
                .await
                .unwrap();
            assert_eq!(second.mailbox_result.unwrap().sequence, 2, "{b}");

            assert_eq!(
                fx.count(
                    b,
                    &format!("id = {id} AND customer = 'alice' AND amount = 42.5")
                )
                .await,
                1,
                "{b}"
            );
            assert_eq!(
                fx.mailbox(b).await,
                vec![(1, b"created alice".to_vec()), (2, b"created bob".to_vec())],
                "{b}"
            );
            let read = t.read_mailbox(None, None, false).await;
            assert_eq!(read.len(), 2, "{b}");
            assert_eq!(read[0].message_id, mailbox.message_id, "{b}");
            assert_eq!(read[0].message_type.as_deref(), Some("order.changed"));
            assert_eq!(read[0].metadata["kind"], "test");
            assert!(!read[0].processed);
        }
        fx.finish().await;
    });
}

#[test]
fn a_failing_data_write_leaves_no_mailbox_row_and_no_gap() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        for b in BACKENDS {
            let mut t = fx.client(b).await;
            t.write(
                WriteMode::Insert,
                &[
                    ("id", num(1.0)),
                    ("customer", text("a")),
                    ("amount", num(1.0)),
                ],
                Some("one"),
            )
            .await
            .unwrap();
            // Duplicate key, a check constraint, a missing NOT NULL field.
            let dup = t
                .write(
                    WriteMode::Insert,
                    &[
                        ("id", num(1.0)),
                        ("customer", text("b")),
                        ("amount", num(1.0)),
                    ],
                    Some("dup"),
                )
                .await
                .unwrap_err();
            assert_error(
                &dup,
                Code::AlreadyExists,
                "CONSTRAINT_VIOLATION",
                Service::Transact,
            );
            let negative = t
                .write(
                    WriteMode::Insert,
                    &[("customer", text("c")), ("amount", num(-5.0))],
                    Some("negative"),
                )
                .await
                .unwrap_err();
            assert_error(
                &negative,
                Code::FailedPrecondition,
                "CONSTRAINT_VIOLATION",
                Service::Transact,
            );
            let missing = t
                .write(WriteMode::Insert, &[("amount", num(5.0))], Some("missing"))
                .await
                .unwrap_err();
            assert_error(
                &missing,
                Code::FailedPrecondition,
                "CONSTRAINT_VIOLATION",
                Service::Transact,
            );
            assert_eq!(fx.count(b, "1 = 1").await, 1, "{b}");
            assert_eq!(fx.mailbox(b).await, vec![(1, b"one".to_vec())], "{b}");
            // The failed writes used no sequence number.
            let next = t.insert("d", "two").await;
            assert_eq!(next.mailbox_result.unwrap().sequence, 2, "{b}");
        }
        fx.finish().await;
    });
}

#[test]
fn every_write_mode_applies_and_reports_rows_affected() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        for b in BACKENDS {
            let mut t = fx.client(b).await;
            let row = |id: f64, customer: &str, amount: f64| {
                vec![
                    ("id", num(id)),
                    ("customer", text(customer)),
                    ("amount", num(amount)),
                ]
            };
            let affected = |r: pb::WriteResponse| r.data_result.unwrap().rows_affected;
            let r = t
                .write(WriteMode::Insert, &row(10.0, "ann", 1.0), None)
                .await;
            assert_eq!(affected(r.unwrap()), 1, "{b} insert");
            let r = t
                .write(
                    WriteMode::Update,
                    &[("id", num(10.0)), ("status", text("paid"))],
                    Some("paid"),
                )
                .await;
            assert_eq!(affected(r.unwrap()), 1, "{b} update");
            assert_eq!(fx.count(b, "id = 10 AND status = 'paid'").await, 1, "{b}");
            let r = t
                .write(WriteMode::Upsert, &row(10.0, "ann", 9.0), None)
                .await;
            assert!(affected(r.unwrap()) >= 1, "{b} upsert existing");
            assert_eq!(fx.count(b, "id = 10 AND amount = 9").await, 1, "{b}");
            let r = t
                .write(WriteMode::Upsert, &row(11.0, "ben", 3.0), None)
                .await;
            assert_eq!(affected(r.unwrap()), 1, "{b} upsert new");
            assert_eq!(fx.count(b, "id = 11 AND customer = 'ben'").await, 1, "{b}");
            let r = t
                .write(WriteMode::Delete, &[("id", num(11.0))], Some("deleted"))
                .await;
            assert_eq!(affected(r.unwrap()), 1, "{b} delete");
            assert_eq!(fx.count(b, "id = 11").await, 0, "{b}");

            // Another unique column finds the row when named as id_field.
            let mut by_code = t.write_request(
                WriteMode::Update,
                &[("code", text("A-10")), ("status", text("shipped"))],
                None,
            );
            sqlx::query(&format!(
                "UPDATE {} SET code = 'A-10' WHERE id = 10",
                fx.tables[b]
            ))
            .execute(&fx.pools[b])
            .await
            .unwrap();
            by_code.data.as_mut().unwrap().id_field = Some("code".into());
            let r = t.client.write(by_code.clone()).await.unwrap().into_inner();
            assert_eq!(affected(r), 1, "{b} update by code");
            assert_eq!(
                fx.count(b, "id = 10 AND status = 'shipped'").await,
                1,
                "{b}"
            );
            by_code.data.as_mut().unwrap().id_field = Some("nope".into());
            let err = t.client.write(by_code).await.unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "UNKNOWN_FIELD",
                Service::Transact,
            );

            // A missing row: nothing written, not even the mailbox row.
            let before = fx.mailbox(b).await.len();
            let err = t
                .write(
                    WriteMode::Update,
                    &[("id", num(999.0)), ("status", text("x"))],
                    Some("ghost"),
                )
                .await
                .unwrap_err();
            assert_error(&err, Code::NotFound, "ROW_NOT_FOUND", Service::Transact);
            let err = t
                .write(WriteMode::Delete, &[("id", num(999.0))], Some("ghost"))
                .await
                .unwrap_err();
            assert_error(&err, Code::NotFound, "ROW_NOT_FOUND", Service::Transact);
            assert_eq!(fx.mailbox(b).await.len(), before, "{b}");
            // UPDATE needs the id.
            let err = t
                .write(WriteMode::Update, &[("status", text("x"))], None)
                .await
                .unwrap_err();
            assert_error(&err, Code::InvalidArgument, "MISSING_ID", Service::Transact);
        }
        fx.finish().await;
    });
}

#[test]
fn an_idempotent_retry_returns_the_first_response_and_writes_once() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        for b in BACKENDS {
            let mut t = fx.client(b).await;
            let key = format!("order-{b}");
            let mut req = t.write_request(
                WriteMode::Insert,
                &[("customer", text("zed")), ("amount", num(3.0))],
                Some("zed"),
            );
            req.options = Some(pb::TransactionOptions {
                isolation: IsolationLevel::Serializable as i32,
                idempotent: true,
                idempotency_key: Some(key.clone()),
                ..Default::default()
            });
            let first = t.client.write(req.clone()).await.unwrap().into_inner();
            let again = t.client.write(req.clone()).await.unwrap().into_inner();
            assert_eq!(again.transaction_id, first.transaction_id, "{b}");
            assert_eq!(again.mailbox_result, first.mailbox_result, "{b}");
            assert_eq!(again.data_result, first.data_result, "{b}");
            assert_eq!(fx.count(b, "customer = 'zed'").await, 1, "{b}");
            assert_eq!(fx.mailbox(b).await.len(), 1, "{b}");

            // The same key for different content is refused.
            let mut other = req.clone();
            other.mailbox.as_mut().unwrap().message = b"different".to_vec();
            let err = t.client.write(other).await.unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "IDEMPOTENCY_TOKEN_REUSED",
                Service::Transact,
            );
            // idempotent needs a key.
            let mut keyless = req.clone();
            keyless.options.as_mut().unwrap().idempotency_key = None;
            let err = t.client.write(keyless).await.unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "IDEMPOTENCY_KEY_REQUIRED",
                Service::Transact,
            );
        }
        fx.finish().await;
    });
}

#[test]
fn a_streaming_transaction_of_ten_writes_commits_atomically() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        for b in BACKENDS {
            let mut t = fx.client(b).await;
            let (tx, mut rx, id) = begun(&mut t, 0).await;
            for i in 0..10 {
                tx.send(t.streamed_write(&format!("s{i}"), &format!("m{i}")))
                    .await
                    .unwrap();
                match next(&mut rx).await {
                    Out::WriteResult(w) => {
                        assert_eq!(w.transaction_id, id, "{b}");
                        assert!(!w.committed, "{b}");
                        assert_eq!(w.mailbox_result.unwrap().sequence, i + 1, "{b}");
                    }
                    other => panic!("{b}: expected write_result, got {other:?}"),
                }
            }
            // Nothing is visible before the commit.
            assert_eq!(fx.count(b, "customer LIKE 's%'").await, 0, "{b}");
            assert!(fx.mailbox(b).await.is_empty(), "{b}");
            tx.send(commit()).await.unwrap();
            match next(&mut rx).await {
                Out::Committed(c) => {
                    assert!(c.success);
                    assert_eq!(c.write_count, 10, "{b}");
                }
                other => panic!("{b}: expected committed, got {other:?}"),
            }
            assert_eq!(fx.count(b, "customer LIKE 's%'").await, 10, "{b}");
            let seqs: Vec<i64> = fx.mailbox(b).await.into_iter().map(|(s, _)| s).collect();
            assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "{b}");

            // A message after the commit is an error.
            tx.send(t.streamed_write("late", "late")).await.unwrap();
            match next(&mut rx).await {
                Out::Error(e) => {
                    assert_eq!(e.code, "FAILED_PRECONDITION", "{b}");
                    assert!(
                        e.message.contains("TRANSACTION_ENDED"),
                        "{b}: {}",
                        e.message
                    );
                }
                other => panic!("{b}: expected error, got {other:?}"),
            }
            assert_eq!(fx.count(b, "customer = 'late'").await, 0, "{b}");
        }
        fx.finish().await;
    });
}

#[test]
fn rollback_leaves_nothing() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        for b in BACKENDS {
            let mut t = fx.client(b).await;
            let (tx, mut rx, _) = begun(&mut t, 0).await;
            for i in 0..3 {
                tx.send(t.streamed_write(&format!("r{i}"), "r"))
                    .await
                    .unwrap();
                assert!(matches!(next(&mut rx).await, Out::WriteResult(_)), "{b}");
            }
            tx.send(pb::TransactRequest {
                request: Some(In::Rollback(pb::RollbackTransaction {
                    reason: "changed my mind".into(),
                })),
            })
            .await
            .unwrap();
            match next(&mut rx).await {
                Out::RolledBack(r) => assert_eq!(r.reason, "changed my mind", "{b}"),
                other => panic!("{b}: expected rolled_back, got {other:?}"),
            }
            assert_eq!(fx.count(b, "1 = 1").await, 0, "{b}");
            assert!(fx.mailbox(b).await.is_empty(), "{b}");
            // The sequence counter rolled back too.
            let w = t.insert("after", "after").await;
            assert_eq!(w.mailbox_result.unwrap().sequence, 1, "{b}");
        }
        fx.finish().await;
    });
}

/// Waits (bounded) until the actor tree has no Transaction node.
async fn wait_no_transaction(gw: &TestGateway) {
    common::wait_until("the transaction actor leaves the tree", || async {
        let tree = gw.gateway.observe().await.unwrap();
        !tree.walk().iter().any(|n| n.kind == ActorKind::Transaction)
    })
    .await;
}

#[test]
fn client_disconnect_mid_transaction_rolls_back_and_ends_the_actor() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        for b in BACKENDS {
            let mut t = fx.client(b).await;
            let session = fx
                .gw
                .gateway
                .registry
                .authorize(&t.token)
                .await
                .unwrap()
                .id
                .clone();
            let (tx, mut rx, id) = begun(&mut t, 0).await;
            for i in 0..2 {
                tx.send(t.streamed_write(&format!("d{i}"), "d"))
                    .await
                    .unwrap();
                assert!(matches!(next(&mut rx).await, Out::WriteResult(_)), "{b}");
            }
            // The transaction is a child of its session in the tree.
            let tree = fx.gw.gateway.observe().await.unwrap();
            let node = tree.find(&id).expect("the transaction is in the tree");
            assert_eq!(node.kind, ActorKind::Transaction);
            assert_eq!(node.parent.as_deref(), Some(session.as_str()));
            assert_eq!(node.state["writes"], 2);
            let parent = tree.find(&session).unwrap();
            assert!(parent.children.iter().any(|c| c.id == id), "{b}");

            // The client goes away without a word.
            drop(tx);
            drop(rx);
            wait_no_transaction(&fx.gw).await;
            assert_eq!(fx.count(b, "1 = 1").await, 0, "{b}");
            assert!(fx.mailbox(b).await.is_empty(), "{b}");
            // The database is free for the next writer.
            t.insert("next", "next").await;
            assert_eq!(fx.count(b, "1 = 1").await, 1, "{b}");
            sqlx::query(&format!("DELETE FROM {}", fx.tables[b]))
                .execute(&fx.pools[b])
                .await
                .unwrap();
            sqlx::query("DELETE FROM prism_mailbox WHERE namespace = $1")
                .bind(fx.ns.as_str())
                .execute(&fx.pools[b])
                .await
                .unwrap();
        }
        fx.finish().await;
    });
}

#[test]
fn the_timeout_and_a_closed_session_roll_back() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        for b in BACKENDS {
            let mut t = fx.client(b).await;
            let (tx, mut rx, _) = begun(&mut t, 300).await;
            tx.send(t.streamed_write("late1", "x")).await.unwrap();
            assert!(matches!(next(&mut rx).await, Out::WriteResult(_)), "{b}");
            // No commit: the actor's timeout ends it.
            match next(&mut rx).await {
                Out::RolledBack(r) => assert!(r.reason.contains("timed out"), "{b}: {}", r.reason),
                other => panic!("{b}: expected rolled_back, got {other:?}"),
            }
            assert!(rx.next().await.is_none(), "{b}: the stream ends");
            wait_no_transaction(&fx.gw).await;
            assert_eq!(fx.count(b, "1 = 1").await, 0, "{b}");

            let (tx, mut rx, _) = begun(&mut t, 0).await;
            tx.send(t.streamed_write("closed1", "x")).await.unwrap();
            assert!(matches!(next(&mut rx).await, Out::WriteResult(_)), "{b}");
            fx.gw
                .sessions()
                .close_session(prism::proto::session::v1::CloseSessionRequest {
                    session_token: t.token.clone(),
                    force: true,
                })
                .await
                .unwrap();
            match next(&mut rx).await {
                Out::RolledBack(r) => assert!(r.reason.contains("session"), "{b}: {}", r.reason),
                other => panic!("{b}: expected rolled_back, got {other:?}"),
            }
            wait_no_transaction(&fx.gw).await;
            assert_eq!(fx.count(b, "1 = 1").await, 0, "{b}");
            assert!(fx.mailbox(b).await.is_empty(), "{b}");
        }
        fx.finish().await;
    });
}

#[test]
fn read_mailbox_and_process_mailbox_as_specified() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        for b in BACKENDS {
            let mut t = fx.client(b).await;
            for i in 1..=5 {
                t.insert(&format!("c{i}"), &format!("m{i}")).await;
            }
            let all = t.read_mailbox(None, None, false).await;
            let seqs: Vec<i64> = all.iter().map(|m| m.sequence).collect();
            assert_eq!(seqs, vec![1, 2, 3, 4, 5], "{b}");
            assert_eq!(all[2].message, b"m3", "{b}");
            let page = t.read_mailbox(Some(2), Some(2), false).await;
            let seqs: Vec<i64> = page.iter().map(|m| m.sequence).collect();
            assert_eq!(seqs, vec![3, 4], "{b}");

            let processed = t
                .client
                .process_mailbox(pb::ProcessMailboxRequest {
                    session_token: t.token.clone(),
                    message_ids: vec![all[2].message_id.clone(), "msg-unknown".into()],
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(processed.processed_count, 1, "{b}");
            assert_eq!(processed.failed_ids, vec!["msg-unknown".to_string()], "{b}");

            let pending = t.read_mailbox(None, None, true).await;
            let seqs: Vec<i64> = pending.iter().map(|m| m.sequence).collect();
            assert_eq!(seqs, vec![1, 2, 4, 5], "{b}");
            let again = t.read_mailbox(Some(2), Some(1), false).await;
            assert!(again[0].processed, "{b}");
            assert!(again[0].processed_at.is_some(), "{b}");

            let err = t
                .client
                .read_mailbox(pb::ReadMailboxRequest {
                    session_token: t.token.clone(),
                    mailbox_id: MAILBOX.into(),
                    limit: Some(0),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "INVALID_LIMIT",
                Service::Transact,
            );
        }
        fx.finish().await;
    });
}

#[test]
fn bad_requests_get_clear_errors() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        for b in BACKENDS {
            let mut t = fx.client(b).await;
            let mut req = t.write_request(WriteMode::Insert, &[("customer", text("x"))], None);
            req.data.as_mut().unwrap().table = "not_a_table".into();
            let err = t.client.write(req).await.unwrap_err();
            assert_error(&err, Code::NotFound, "TABLE_NOT_FOUND", Service::Transact);

            let err = t
                .write(WriteMode::Insert, &[("nope", text("x"))], None)
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "UNKNOWN_FIELD",
                Service::Transact,
            );
            let err = t
                .write(
                    WriteMode::Insert,
                    &[("customer", text("x")), ("amount", text("lots"))],
                    None,
                )
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "TYPE_MISMATCH",
                Service::Transact,
            );
            let err = t
                .client
                .write(pb::WriteRequest {
                    session_token: t.token.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "EMPTY_WRITE",
                Service::Transact,
            );
            let mut req = t.write_request(WriteMode::Unspecified, &[("customer", text("x"))], None);
            req.options = None;
            let err = t.client.write(req).await.unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "INVALID_WRITE_MODE",
                Service::Transact,
            );
            let err = t
                .client
                .write(pb::WriteRequest {
                    session_token: "bogus".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated);

            // A stream must begin with Begin.
            let (tx, mut rx) = t.open_stream().await;
            tx.send(commit()).await.unwrap();
            match next(&mut rx).await {
                Out::Error(e) => assert!(e.message.contains("BEGIN_FIRST"), "{}", e.message),
                other => panic!("{b}: expected error, got {other:?}"),
            }
            // At most two open transactions per session (the fixture's limit).
            let (_tx1, _rx1, _) = begun(&mut t, 0).await;
            if b == "postgres" {
                let (_tx2, _rx2, _) = begun(&mut t, 0).await;
                let (tx3, mut rx3) = t.open_stream().await;
                tx3.send(t.begin(0)).await.unwrap();
                match next(&mut rx3).await {
                    Out::Error(e) => {
                        assert_eq!(e.code, "RESOURCE_EXHAUSTED");
                        assert!(e.message.contains("TOO_MANY_TRANSACTIONS"), "{}", e.message);
                    }
                    other => panic!("expected error, got {other:?}"),
                }
            }
        }
        fx.finish().await;
    });
}

#[test]
fn a_serialization_failure_is_aborted_and_retryable() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        let mut t = fx.client("postgres").await;
        let serializable = |t: &T| pb::TransactRequest {
            request: Some(In::Begin(pb::BeginTransaction {
                session_token: t.token.clone(),
                options: Some(pb::TransactionOptions {
                    isolation: IsolationLevel::Serializable as i32,
                    ..Default::default()
                }),
            })),
        };
        let (tx1, mut rx1) = t.open_stream().await;
        tx1.send(serializable(&t)).await.unwrap();
        assert!(matches!(next(&mut rx1).await, Out::Started(_)));
        let (tx2, mut rx2) = t.open_stream().await;
        tx2.send(serializable(&t)).await.unwrap();
        assert!(matches!(next(&mut rx2).await, Out::Started(_)));
        // The second takes its snapshot (a data-only write) before the
        // first commits its mailbox row; its own mailbox write then updates
        // the counter row the first changed since: a serialization failure.
        let mut data_only = t.streamed_write("second-a", "unused");
        if let Some(In::Write(w)) = data_only.request.as_mut() {
            w.mailbox = None;
        }
        tx2.send(data_only).await.unwrap();
        assert!(matches!(next(&mut rx2).await, Out::WriteResult(_)));
        tx1.send(t.streamed_write("first", "1")).await.unwrap();
        assert!(matches!(next(&mut rx1).await, Out::WriteResult(_)));
        tx1.send(commit()).await.unwrap();
        assert!(matches!(next(&mut rx1).await, Out::Committed(_)));
        tx2.send(t.streamed_write("second", "2")).await.unwrap();
        match next(&mut rx2).await {
            Out::Error(e) => {
                assert_eq!(e.code, "ABORTED", "{}", e.message);
                assert!(e.message.contains("WRITE_CONFLICT"), "{}", e.message);
            }
            other => panic!("expected error, got {other:?}"),
        }
        assert_eq!(fx.count("postgres", "1 = 1").await, 1);
        assert_eq!(fx.mailbox("postgres").await, vec![(1, b"1".to_vec())]);
        drop((tx1, rx1, tx2, rx2));
        fx.finish().await;
    });
}

#[test]
fn open_transactions_never_take_every_connection() {
    block_on_multi_thread(async {
        // Four connections: three transactions at most, one kept back.
        let pool = common::kv::FAST_POOL.replace(" }", ", max_connections: 4 }");
        let f = Fixture::start_tuned("", &pool).await;
        for b in BACKENDS {
            let mut holders = Vec::new();
            let mut streams = Vec::new();
            for _ in 0..2 {
                let mut t = f.client(b).await;
                for _ in 0..2 {
                    if streams.len() < 3 {
                        streams.push(begun(&mut t, 60_000).await);
                    }
                }
                holders.push(t);
            }
            // A fourth transaction waits for a place, then is refused.
            let mut t = f.client(b).await;
            let (tx, mut rx) = t.open_stream().await;
            tx.send(t.begin(60_000)).await.unwrap();
            match next(&mut rx).await {
                Out::Error(e) => {
                    assert_eq!(e.code, "RESOURCE_EXHAUSTED", "{b}");
                    assert!(e.message.contains("TRANSACTIONS_EXHAUSTED"), "{b}: {e:?}");
                }
                other => panic!("{b}: expected no place, got {other:?}"),
            }
            // Everything else on the backend is served, and its health
            // check is not queued behind the transactions.
            assert!(t.read_mailbox(None, None, false).await.len() < 1_000, "{b}");
            let health = f.gw.gateway.backends.get(b).unwrap().health.clone();
            assert!(health.is_up(), "{b}: the backend looks down");
            // One ends; a new transaction finds its place.
            let (tx1, mut rx1, _) = streams.remove(0);
            tx1.send(commit()).await.unwrap();
            assert!(matches!(next(&mut rx1).await, Out::Committed(_)), "{b}");
            let (tx2, mut rx2, _) = begun(&mut holders[0], 60_000).await;
            tx2.send(commit()).await.unwrap();
            assert!(matches!(next(&mut rx2).await, Out::Committed(_)), "{b}");
            drop(streams);
            wait_no_transaction(&f.gw).await;
        }
        f.finish().await;
    });
}

#[test]
fn a_sqlite_transaction_that_began_and_waits_blocks_no_writer() {
    block_on_multi_thread(async {
        let f = Fixture::start().await;
        let mut t = f.client("sqlite").await;
        let (tx, mut rx, _) = begun(&mut t, 60_000).await;
        // Another writer goes ahead at once (it would wait out SQLite's
        // busy timeout and fail if BEGIN had taken the write lock).
        let mut other = f.client("sqlite").await;
        let written = tokio::time::timeout(Duration::from_secs(4), other.insert("bob", "b"))
            .await
            .expect("the write does not wait for the idle transaction");
        assert!(written.mailbox_result.is_some());
        // The waiting transaction then writes and commits after it.
        tx.send(t.streamed_write("carol", "c")).await.unwrap();
        assert!(matches!(next(&mut rx).await, Out::WriteResult(_)));
        tx.send(commit()).await.unwrap();
        assert!(matches!(next(&mut rx).await, Out::Committed(_)));
        let sequences: Vec<i64> = f.mailbox("sqlite").await.iter().map(|m| m.0).collect();
        assert_eq!(sequences, vec![1, 2]);
        f.finish().await;
    });
}

/// Concurrent Writes to one mailbox share transactions (group commit): a
/// Write a constraint refuses is undone alone, the others commit, and the
/// mailbox's sequences still run 1, 2, 3, … with no gap; two Writes with one
/// idempotency key in flight together are applied once.
#[test]
fn concurrent_writes_to_one_mailbox_commit_together_and_fail_alone() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        for b in BACKENDS {
            let t = fx.client(b).await;
            let mut calls = Vec::new();
            for i in 0..40 {
                let amount = if i % 4 == 3 { -1.0 } else { 1.0 };
                let req = t.write_request(
                    WriteMode::Insert,
                    &[
                        ("customer", text(&format!("g{i}"))),
                        ("amount", num(amount)),
                    ],
                    Some(&format!("g{i}")),
                );
                let mut client = t.client.clone();
                calls.push(async move { (i, client.write(req).await) });
            }
            let mut twice = Vec::new();
            for _ in 0..2 {
                let mut req = t.write_request(
                    WriteMode::Insert,
                    &[("customer", text("once")), ("amount", num(1.0))],
                    Some("once"),
                );
                req.options = Some(pb::TransactionOptions {
                    idempotent: true,
                    idempotency_key: Some(format!("once-{b}")),
                    ..Default::default()
                });
                let mut client = t.client.clone();
                twice.push(async move { client.write(req).await.map(|r| r.into_inner()) });
            }
            let (results, once) = tokio::join!(
                futures::future::join_all(calls),
                futures::future::join_all(twice)
            );
            for (i, r) in &results {
                if i % 4 == 3 {
                    let e = r.as_ref().unwrap_err();
                    assert_error(
                        e,
                        Code::FailedPrecondition,
                        "CONSTRAINT_VIOLATION",
                        Service::Transact,
                    );
                } else {
                    assert!(r.is_ok(), "{b}: write {i}: {r:?}");
                }
            }
            let once: Vec<pb::WriteResponse> = once.into_iter().map(Result::unwrap).collect();
            assert_eq!(
                once[0], once[1],
                "{b}: the second answers the first's response"
            );
            assert_eq!(fx.count(b, "customer LIKE 'g%'").await, 30, "{b}");
            assert_eq!(fx.count(b, "customer = 'once'").await, 1, "{b}");
            let sequences: Vec<i64> = fx.mailbox(b).await.iter().map(|(s, _)| *s).collect();
            assert_eq!(
                sequences,
                (1..=31).collect::<Vec<i64>>(),
                "{b}: no gap, no repeat"
            );
        }
        fx.finish().await;
    });
}

/// Writes applied together (one multi-row insert, one mailbox statement)
/// are each answered with their own row: the generated id a response
/// carries is the row holding that Write's fields, its sequence the
/// mailbox row holding its message, with the defaults read back.
#[test]
fn grouped_writes_are_each_answered_with_their_own_row_and_message() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        for b in BACKENDS {
            let t = fx.client(b).await;
            let calls = (0..48).map(|i| {
                let req = t.write_request(
                    WriteMode::Insert,
                    &[("customer", text(&format!("own{i}"))), ("amount", num(1.0))],
                    Some(&format!("message {i}")),
                );
                let mut client = t.client.clone();
                async move { (i, client.write(req).await.map(|r| r.into_inner())) }
            });
            let results = futures::future::join_all(calls).await;
            let stored: HashMap<i64, Vec<u8>> = fx.mailbox(b).await.into_iter().collect();
            let mut ids = std::collections::HashSet::new();
            for (i, r) in results {
                let r = r.unwrap_or_else(|e| panic!("{b}: write {i}: {e:?}"));
                let data = r.data_result.expect("a data result");
                assert_eq!(data.rows_affected, 1, "{b}: write {i}");
                let id = match data.generated_values["id"].kind {
                    Some(V::NumberValue(n)) => n as i64,
                    ref other => panic!("{b}: an id, got {other:?}"),
                };
                assert_eq!(
                    data.generated_values["status"].kind,
                    Some(V::StringValue("new".into())),
                    "{b}: the default is read back"
                );
                assert_eq!(
                    fx.count(b, &format!("id = {id} AND customer = 'own{i}'"))
                        .await,
                    1,
                    "{b}: write {i}'s id names its own row"
                );
                let sequence = r.mailbox_result.expect("a mailbox result").sequence;
                assert_eq!(
                    stored.get(&sequence).map(Vec::as_slice),
                    Some(format!("message {i}").as_bytes()),
                    "{b}: write {i}'s sequence names its own message"
                );
                assert!(ids.insert(id), "{b}: ids differ");
            }
            assert_eq!(stored.len(), 48, "{b}");
        }
        fx.finish().await;
    });
}

/// A grouped Write that waits on a row another transaction holds gives up
/// after the group's lock wait (ABORTED `WRITE_CONFLICT`, retry) and fails
/// alone: the Writes grouped with it commit.
#[test]
fn a_grouped_write_waiting_on_a_locked_row_fails_alone() {
    block_on_multi_thread(async {
        let fx = Fixture::start().await;
        let b = "postgres";
        let mut t = fx.client(b).await;
        let first = t.insert("locked", "m0").await;
        let id = match first.data_result.unwrap().generated_values["id"].kind {
            Some(V::NumberValue(n)) => n,
            ref other => panic!("an id, got {other:?}"),
        };
        // A Transaction stream updates the row and keeps its lock.
        let (stream, mut rx, _) = begun(&mut t, 30_000).await;
        let mut update = t.write_request(
            WriteMode::Update,
            &[("id", num(id)), ("amount", num(2.0))],
            None,
        );
        update.session_token.clear();
        stream
            .send(pb::TransactRequest {
                request: Some(In::Write(update)),
            })
            .await
            .unwrap();
        assert!(matches!(next(&mut rx).await, Out::WriteResult(_)));

        let blocked = t.write_request(
            WriteMode::Update,
            &[("id", num(id)), ("amount", num(3.0))],
            Some("blocked"),
        );
        let mut requests = vec![blocked];
        for i in 0..5 {
            requests.push(t.write_request(
                WriteMode::Insert,
                &[
                    ("customer", text(&format!("free{i}"))),
                    ("amount", num(1.0)),
                ],
                Some(&format!("free{i}")),
            ));
        }
        let calls = requests.into_iter().map(|req| {
            let mut client = t.client.clone();
            async move { client.write(req).await }
        });
        let results = futures::future::join_all(calls).await;
        let e = results[0].as_ref().unwrap_err();
        assert_error(e, Code::Aborted, "WRITE_CONFLICT", Service::Transact);
        for r in &results[1..] {
            assert!(r.is_ok(), "{r:?}");
        }
        assert_eq!(fx.count(b, "customer LIKE 'free%'").await, 5);
        stream.send(commit()).await.unwrap();
        assert!(matches!(next(&mut rx).await, Out::Committed(_)));
        assert_eq!(fx.count(b, "customer = 'locked' AND amount = 2").await, 1);
        fx.finish().await;
    });
}
