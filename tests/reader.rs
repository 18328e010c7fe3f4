//! Reader acceptance tests: the same suite on SQLite and Postgres (real
//! servers). Each test creates its own 1,000-row table, checks results
//! against the same query run directly in SQL, and drops the table.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::{api_key_request, assert_error, TestGateway, OTHER_KEY, TEST_KEY};
use futures::StreamExt;
use prism::{
    config::{GatewayConfig, Source},
    error::Service,
    proto::reader::v1::{
        self as pb, composite_filter::LogicalOperator as L, field_filter::Operator as O,
        reader_service_client::ReaderServiceClient, sort::Direction,
    },
    runtime::block_on_multi_thread,
};
use prost_types::{value::Kind as V, ListValue, Value};
use sqlx::{AnyPool, Row};
use tonic::{transport::Channel, Code};

const BACKENDS: [&str; 2] = ["sqlite", "postgres"];
const ROWS: i64 = 1000;

struct Fixture {
    gw: TestGateway,
    table: String,
    pools: HashMap<&'static str, AnyPool>,
    sqlite_path: std::path::PathBuf,
}

fn ddl(backend: &str, table: &str) -> String {
    let (float, boolean, ts) = match backend {
        "postgres" => ("DOUBLE PRECISION", "BOOLEAN", "TIMESTAMPTZ"),
        _ => ("REAL", "BOOLEAN", "TIMESTAMP"),
    };
    format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL, \
         score INTEGER NOT NULL, price {float} NOT NULL, active {boolean} NOT NULL, note TEXT, \
         created_at {ts} NOT NULL)"
    )
}

fn created_at(id: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(1_767_225_600 + id * 60).unwrap();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn insert(pool: &AnyPool, backend: &str, table: &str, id: i64) {
    let note = match id % 5 {
        0 => None,
        1 => Some(format!("50% off_{id}")),
        2 => Some(format!("it's {id}")),
        _ => Some(format!("plain {id}")),
    };
    let ts = match backend {
        "postgres" => "CAST($8 AS TIMESTAMPTZ)",
        _ => "$8",
    };
    let active = match backend {
        "postgres" => "$6",
        _ => "CAST($6 AS INTEGER)",
    };
    sqlx::query(&format!(
        "INSERT INTO {table} (id, name, category, score, price, active, note, created_at) \
         VALUES ($1, $2, $3, $4, $5, {active}, $7, {ts})"
    ))
    .bind(id)
    .bind(format!("item-{id:04}"))
    .bind(["a", "b", "c", "d"][(id.rem_euclid(4)) as usize])
    .bind(((id * 37).rem_euclid(101)) as i32)
    .bind((id.rem_euclid(50)) as f64 + 0.25)
    .bind(id % 3 == 0)
    .bind(note)
    .bind(created_at(id))
    .execute(pool)
    .await
    .unwrap();
}

impl Fixture {
    async fn start() -> Fixture {
        let run = common::kv::run_id();
        let table = format!("prism_rt_{run}");
        let sqlite_path = std::env::temp_dir().join(format!("prism-reader-{run}.db"));
        sqlx::any::install_default_drivers();
        let mut pools = HashMap::new();
        for b in BACKENDS {
            let url = match b {
                "postgres" => common::kv::database_url(),
                _ => format!("sqlite://{}?mode=rwc", sqlite_path.display()),
            };
            let pool = AnyPool::connect(&url).await.unwrap();
            sqlx::query(&ddl(b, &table)).execute(&pool).await.unwrap();
            for id in 1..=ROWS {
                insert(&pool, b, &table, id).await;
            }
            pools.insert(b, pool);
        }
        let yaml = format!(
            r#"
server: {{ shutdown_grace: 5s, supervision_interval: 100ms, actor_threads: 2, cursor_secret: test-secret }}
backends:
  sqlite: {{ type: sqlite, path: "{sqlite}" }}
  postgres: {{ type: postgres, url: "{pg}", pool: {pool} }}
namespaces:
  r{run}:
    allowed_backends: [sqlite, postgres]
    allowed_patterns: [reader]
    api_keys: [{{ name: test, sha256: "{key}" }}]
    collections:
      items_sqlite: {{ backend: sqlite, table: {table}, max_page_size: 500 }}
      items_postgres: {{ backend: postgres, table: {table}, max_page_size: 500 }}
      small_sqlite: {{ backend: sqlite, table: {table}, max_page_bytes: 2048 }}
      small_postgres: {{ backend: postgres, table: {table}, max_page_bytes: 2048 }}
  o{run}:
    allowed_backends: [sqlite, postgres]
    allowed_patterns: [reader]
    api_keys: [{{ name: other, sha256: "{other}" }}]
    collections:
      mine_sqlite: {{ backend: sqlite, table: {table} }}
configs:
  sqlite: {{ namespace: r{run}, pattern: reader, backend: sqlite }}
  postgres: {{ namespace: r{run}, pattern: reader, backend: postgres }}
  other: {{ namespace: o{run}, pattern: reader, backend: sqlite }}
"#,
            sqlite = sqlite_path.display(),
            pg = common::kv::database_url(),
            pool = common::kv::FAST_POOL,
            key = prism::auth::api_key_digest(TEST_KEY),
            other = prism::auth::api_key_digest(OTHER_KEY),
        );
        let config = GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).unwrap();
        let gw = TestGateway::start_with(config).await;
        Fixture {
            gw,
            table,
            pools,
            sqlite_path,
        }
    }

    async fn client(&self, b: &str) -> R {
        let s = self
            .gw
            .sessions()
            .create_session(api_key_request(TEST_KEY, b))
            .await
            .unwrap()
            .into_inner();
        R {
            client: ReaderServiceClient::new(self.gw.channel.clone()),
            token: s.session_token,
            collection: format!("items_{b}"),
        }
    }

    /// Ids the same WHERE clause selects, run directly in SQL, by id.
    async fn direct(&self, b: &str, where_sql: &str) -> Vec<i64> {
        sqlx::query(&format!(
            "SELECT id FROM {} WHERE {where_sql} ORDER BY id",
            self.table
        ))
        .fetch_all(&self.pools[b])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<i64, _>(0))
        .collect()
    }

    async fn count_rows(&self, b: &str) -> i64 {
        sqlx::query(&format!("SELECT COUNT(*) FROM {}", self.table))
            .fetch_one(&self.pools[b])
            .await
            .unwrap()
            .get::<i64, _>(0)
    }

    async fn finish(self) {
        self.gw.stop().await;
        for (_, pool) in self.pools {
            let _ = sqlx::query(&format!("DROP TABLE {}", self.table))
                .execute(&pool)
                .await;
            pool.close().await;
        }
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.sqlite_path.display()));
        }
    }
}

struct R {
    client: ReaderServiceClient<Channel>,
    token: String,
    collection: String,
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

fn field(name: &str, op: O, value: Value) -> pb::Filter {
    pb::Filter {
        filter: Some(pb::filter::Filter::Field(pb::FieldFilter {
            field: name.into(),
            op: op as i32,
            value: Some(value),
        })),
    }
}

fn composite(op: L, filters: Vec<pb::Filter>) -> pb::Filter {
    pb::Filter {
        filter: Some(pb::filter::Filter::Composite(pb::CompositeFilter {
            op: op as i32,
            filters,
        })),
    }
}

fn sort(name: &str, desc: bool) -> pb::Sort {
    pb::Sort {
        field: name.into(),
        direction: if desc {
            Direction::Desc
        } else {
            Direction::Asc
        } as i32,
    }
}

fn id_of(row: &pb::Row) -> i64 {
    match row.fields["id"].kind {
        Some(V::NumberValue(n)) => n as i64,
        ref other => panic!("id is {other:?}"),
    }
}

impl R {
    fn read_request(
        &self,
        size: i32,
        sort: Vec<pb::Sort>,
        cursor: Option<String>,
    ) -> pb::ReadRequest {
        pb::ReadRequest {
            session_token: self.token.clone(),
            collection: self.collection.clone(),
            page_size: size,
            cursor,
            sort,
            ..Default::default()
        }
    }

    async fn pages(&self, req: pb::ReadRequest) -> Result<Vec<pb::Page>, tonic::Status> {
        let mut stream = self.client.clone().read(req).await?.into_inner();
        let mut out = Vec::new();
        while let Some(page) = stream.message().await? {
            out.push(page);
        }
        Ok(out)
    }

    async fn query(&self, filter: pb::Filter) -> Vec<i64> {
        let stream = self
            .client
            .clone()
            .query(pb::QueryRequest {
                session_token: self.token.clone(),
                collection: self.collection.clone(),
                filter: Some(filter),
                fields: vec!["id".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        stream.map(|r| id_of(&r.unwrap())).collect().await
    }

    async fn count(&self, filter: Option<pb::Filter>) -> i64 {
        self.client
            .clone()
            .count(pb::CountRequest {
                session_token: self.token.clone(),
                collection: self.collection.clone(),
                filter,
            })
            .await
            .unwrap()
            .into_inner()
            .count
    }
}

fn ids(pages: &[pb::Page]) -> Vec<i64> {
    pages
        .iter()
        .flat_map(|p| p.rows.iter().map(id_of))
        .collect()
}

#[test]
fn read_pages_every_row_once_in_order_and_resumes_from_a_cursor() {
    block_on_multi_thread(async {
        let f = Fixture::start().await;
        for b in BACKENDS {
            let r = f.client(b).await;
            let pages = r.pages(r.read_request(100, vec![], None)).await.unwrap();
            assert_eq!(pages.len(), 10, "{b}");
            assert_eq!(ids(&pages), (1..=ROWS).collect::<Vec<_>>(), "{b}");
            for (n, p) in pages.iter().enumerate() {
                let last = n == 9;
                assert_eq!(p.has_more, !last, "{b}: page {n}");
                assert_eq!(p.next_cursor.is_some(), !last, "{b}: page {n}");
                let meta = p.metadata.unwrap();
                assert_eq!(
                    (meta.row_count, meta.page_number),
                    (100, n as i32 + 1),
                    "{b}"
                );
            }
            // Resume from page 3's cursor in a new stream.
            let resumed = r
                .pages(r.read_request(100, vec![], pages[2].next_cursor.clone()))
                .await
                .unwrap();
            assert_eq!(ids(&resumed), (301..=ROWS).collect::<Vec<_>>(), "{b}");
            assert_eq!(resumed[0].metadata.unwrap().page_number, 4, "{b}");
        }
        f.finish().await;
    });
}

#[test]
fn descending_and_multi_column_sorts_match_sql() {
    block_on_multi_thread(async {
        let f = Fixture::start().await;
        for b in BACKENDS {
            let r = f.client(b).await;
            for (sorts, order_sql) in [
                (vec![sort("score", true)], "score DESC, id DESC"),
                (
                    vec![sort("category", false), sort("price", true)],
                    "category ASC, price DESC, id DESC",
                ),
                (vec![sort("created_at", true)], "created_at DESC, id DESC"),
                (
                    vec![sort("price", false), sort("score", false)],
                    "price ASC, score ASC, id ASC",
                ),
                (vec![sort("id", true)], "id DESC"),
            ] {
                let pages = r.pages(r.read_request(70, sorts, None)).await.unwrap();
                let want: Vec<i64> =
                    sqlx::query(&format!("SELECT id FROM {} ORDER BY {order_sql}", f.table))
                        .fetch_all(&f.pools[b])
                        .await
                        .unwrap()
                        .iter()
                        .map(|row| row.get::<i64, _>(0))
                        .collect();
                assert_eq!(ids(&pages), want, "{b}: {order_sql}");
            }
        }
        f.finish().await;
    });
}

#[test]
fn rows_inserted_during_paging_are_neither_duplicated_nor_skipped() {
    block_on_multi_thread(async {
        let f = Fixture::start().await;
        for b in BACKENDS {
            let r = f.client(b).await;
            let mut stream = r
                .client
                .clone()
                .read(r.read_request(100, vec![], None))
                .await
                .unwrap()
                .into_inner();
            let first = stream.message().await.unwrap().unwrap();
            drop(stream);
            // Behind the cursor, and ahead of it.
            insert(&f.pools[b], b, &f.table, -5).await;
            insert(&f.pools[b], b, &f.table, 1001).await;
            insert(&f.pools[b], b, &f.table, 1002).await;
            let rest = r
                .pages(r.read_request(100, vec![], first.next_cursor.clone()))
                .await
                .unwrap();
            let mut all = ids(std::slice::from_ref(&first));
            all.extend(ids(&rest));
            let unique: BTreeSet<i64> = all.iter().copied().collect();
            assert_eq!(unique.len(), all.len(), "{b}: no duplicates");
            assert_eq!(
                all,
                (1..=1002).collect::<Vec<_>>(),
                "{b}: none skipped; -5 was behind"
            );
        }
        f.finish().await;
    });
}

#[test]
fn every_operator_and_nesting_matches_sql() {
    block_on_multi_thread(async {
        let f = Fixture::start().await;
        for b in BACKENDS {
            let r = f.client(b).await;
            let t = if b == "postgres" { "TRUE" } else { "1" };
            let cases: Vec<(pb::Filter, String)> = vec![
                (field("score", O::Equals, num(50.0)), "score = 50".into()),
                (
                    field("score", O::NotEquals, num(50.0)),
                    "score <> 50".into(),
                ),
                (
                    field("score", O::GreaterThan, num(90.0)),
                    "score > 90".into(),
                ),
                (
                    field("score", O::GreaterThanOrEquals, num(90.0)),
                    "score >= 90".into(),
                ),
                (field("price", O::LessThan, num(3.0)), "price < 3.0".into()),
                (
                    field("price", O::LessThanOrEquals, num(3.25)),
                    "price <= 3.25".into(),
                ),
                (
                    field(
                        "category",
                        O::In,
                        Value {
                            kind: Some(V::ListValue(ListValue {
                                values: vec![text("a"), text("c")],
                            })),
                        },
                    ),
                    "category IN ('a', 'c')".into(),
                ),
                (
                    field(
                        "category",
                        O::NotIn,
                        Value {
                            kind: Some(V::ListValue(ListValue {
                                values: vec![text("a")],
                            })),
                        },
                    ),
                    "category NOT IN ('a')".into(),
                ),
                (
                    field("name", O::Contains, text("-01")),
                    "name LIKE '%-01%'".into(),
                ),
                (
                    field("name", O::StartsWith, text("item-09")),
                    "name LIKE 'item-09%'".into(),
                ),
                (
                    field("name", O::EndsWith, text("7")),
                    "name LIKE '%7'".into(),
                ),
                // `%` and `_` are literal, quotes are just characters.
                (
                    field("note", O::Contains, text("50% off_")),
                    "note LIKE '%50\\% off\\_%' ESCAPE '\\'".into(),
                ),
                (
                    field("note", O::Contains, text("it's")),
                    "note LIKE '%it''s%'".into(),
                ),
                (
                    field("note", O::Contains, text("%")),
                    "note LIKE '%\\%%' ESCAPE '\\'".into(),
                ),
                (
                    field(
                        "note",
                        O::Equals,
                        Value {
                            kind: Some(V::NullValue(0)),
                        },
                    ),
                    "note IS NULL".into(),
                ),
                (
                    field(
                        "active",
                        O::Equals,
                        Value {
                            kind: Some(V::BoolValue(true)),
                        },
                    ),
                    format!("active = {t}"),
                ),
                (
                    field("created_at", O::GreaterThan, text(&created_at(990))),
                    "id > 990".into(),
                ),
                (
                    composite(
                        L::And,
                        vec![
                            field("category", O::Equals, text("b")),
                            composite(
                                L::Or,
                                vec![
                                    field("score", O::LessThan, num(10.0)),
                                    composite(
                                        L::Not,
                                        vec![field("price", O::GreaterThan, num(5.0))],
                                    ),
                                ],
                            ),
                        ],
                    ),
                    "category = 'b' AND (score < 10 OR NOT (price > 5.0))".into(),
                ),
                (composite(L::Or, vec![]), "1 = 0".into()),
                (composite(L::And, vec![]), "1 = 1".into()),
            ];
            for (filter, where_sql) in cases {
                let want = f.direct(b, &where_sql).await;
                assert_eq!(r.query(filter.clone()).await, want, "{b}: {where_sql}");
                assert_eq!(
                    r.count(Some(filter)).await,
                    want.len() as i64,
                    "{b}: count {where_sql}"
                );
            }
            assert_eq!(r.count(None).await, ROWS, "{b}");
        }
        f.finish().await;
    });
}

#[test]
fn projection_get_and_query_limits() {
    block_on_multi_thread(async {
        let f = Fixture::start().await;
        for b in BACKENDS {
            let r = f.client(b).await;
            let mut req = r.read_request(10, vec![], None);
            req.fields = vec!["id".into(), "name".into()];
            let mut stream = r.client.clone().read(req).await.unwrap().into_inner();
            let page = stream.message().await.unwrap().unwrap();
            let keys: BTreeSet<&str> = page.rows[0].fields.keys().map(String::as_str).collect();
            assert_eq!(keys, BTreeSet::from(["id", "name"]), "{b}");

            let got = r
                .client
                .clone()
                .get(pb::GetRequest {
                    session_token: r.token.clone(),
                    collection: r.collection.clone(),
                    id: "42".into(),
                    fields: vec![],
                })
                .await
                .unwrap()
                .into_inner();
            assert!(got.found, "{b}");
            let row = got.row.unwrap();
            assert_eq!(row.fields["name"], text("item-0042"), "{b}");
            assert_eq!(row.fields["price"], num(42.25), "{b}");
            assert_eq!(
                row.fields["active"],
                Value {
                    kind: Some(V::BoolValue(true))
                },
                "{b}"
            );
            // Postgres renders timestamps itself (microseconds, UTC); SQLite
            // returns the stored RFC 3339 text.
            let want_ts = match b {
                "postgres" => created_at(42).replace('Z', ".000000Z"),
                _ => created_at(42),
            };
            assert_eq!(row.fields["created_at"], text(&want_ts), "{b}");
            let missing = r
                .client
                .clone()
                .get(pb::GetRequest {
                    session_token: r.token.clone(),
                    collection: r.collection.clone(),
                    id: "99999".into(),
                    fields: vec![],
                })
                .await
                .unwrap()
                .into_inner();
            assert!(!missing.found && missing.row.is_none(), "{b}");

            let limited = r
                .client
                .clone()
                .query(pb::QueryRequest {
                    session_token: r.token.clone(),
                    collection: r.collection.clone(),
                    filter: Some(field("category", O::Equals, text("a"))),
                    sort: vec![sort("id", false)],
                    limit: Some(5),
                    offset: Some(3),
                    fields: vec!["id".into()],
                })
                .await
                .unwrap()
                .into_inner();
            let got: Vec<i64> = limited.map(|r| id_of(&r.unwrap())).collect().await;
            assert_eq!(
                got,
                vec![16, 20, 24, 28, 32],
                "{b}: offset 3, limit 5 of category a"
            );
        }
        f.finish().await;
    });
}

#[test]
fn hostile_input_gets_clear_errors_and_leaves_the_table_intact() {
    block_on_multi_thread(async {
        let f = Fixture::start().await;
        for b in BACKENDS {
            let r = f.client(b).await;
            let evil = "id; DROP TABLE x";
            let mut req = r.read_request(10, vec![sort(evil, false)], None);
            let err = r.pages(req.clone()).await.unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "UNKNOWN_FIELD",
                Service::Reader,
            );
            req.sort.clear();
            req.fields = vec![evil.into()];
            let err = r.pages(req.clone()).await.unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "UNKNOWN_FIELD",
                Service::Reader,
            );
            req.fields.clear();
            req.filter = Some(field(evil, O::Equals, num(1.0)));
            let err = r.pages(req.clone()).await.unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "UNKNOWN_FIELD",
                Service::Reader,
            );
            assert!(
                err.message().contains("id; DROP TABLE x"),
                "{}",
                err.message()
            );

            // Quotes and SQL in values are only values.
            let n = r
                .count(Some(field("name", O::Equals, text("x' OR '1'='1"))))
                .await;
            assert_eq!(n, 0, "{b}");
            // A string against an integer column.
            req.filter = Some(field("score", O::Equals, text("10")));
            let err = r.pages(req.clone()).await.unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "TYPE_MISMATCH",
                Service::Reader,
            );
            assert!(err.message().contains("score"), "{}", err.message());
            req.filter = None;

            // Cursors: tampered, or from another query.
            let first = r.pages(r.read_request(400, vec![], None)).await.unwrap();
            let cursor = first[0].next_cursor.clone().unwrap();
            let mut tampered = cursor.clone().into_bytes();
            tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
            let err = r
                .pages(r.read_request(400, vec![], Some(String::from_utf8(tampered).unwrap())))
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "INVALID_CURSOR",
                Service::Reader,
            );
            let err = r
                .pages(r.read_request(400, vec![sort("score", false)], Some(cursor)))
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "INVALID_CURSOR",
                Service::Reader,
            );
            let err = r
                .pages(r.read_request(400, vec![], Some("garbage".into())))
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "INVALID_CURSOR",
                Service::Reader,
            );

            // Page sizes: 0 is the default (100), a huge one is capped (500).
            let pages = r.pages(r.read_request(0, vec![], None)).await.unwrap();
            assert_eq!(pages[0].rows.len(), 100, "{b}");
            let pages = r
                .pages(r.read_request(1_000_000, vec![], None))
                .await
                .unwrap();
            assert_eq!(pages[0].rows.len(), 500, "{b}");
            let err = r.pages(r.read_request(-1, vec![], None)).await.unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "INVALID_PAGE_SIZE",
                Service::Reader,
            );

            // Another namespace's collection, or one on another backend.
            let mut req = r.read_request(10, vec![], None);
            req.collection = "mine_sqlite".into();
            let err = r.pages(req.clone()).await.unwrap_err();
            assert_error(
                &err,
                Code::NotFound,
                "COLLECTION_NOT_FOUND",
                Service::Reader,
            );
            req.collection = if b == "sqlite" {
                "items_postgres"
            } else {
                "items_sqlite"
            }
            .into();
            let err = r.pages(req).await.unwrap_err();
            assert_eq!(err.code(), Code::NotFound, "{b}");

            assert_eq!(f.count_rows(b).await, ROWS, "{b}: the table is intact");
        }
        f.finish().await;
    });
}

#[test]
fn closing_the_session_ends_a_read_at_its_next_page() {
    block_on_multi_thread(async {
        let f = Fixture::start().await;
        for b in BACKENDS {
            let r = f.client(b).await;
            // A 64 KiB window: the gateway runs ahead by a few pages only.
            let narrow = f.gw.narrow_channel(65_535).await;
            let mut stream = ReaderServiceClient::new(narrow)
                .read(r.read_request(10, vec![], None))
                .await
                .unwrap()
                .into_inner();
            assert!(stream.message().await.unwrap().is_some(), "{b}");
            f.gw.sessions()
                .close_session(prism::proto::session::v1::CloseSessionRequest {
                    session_token: r.token.clone(),
                    force: true,
                })
                .await
                .unwrap();
            let mut pages = 1;
            let err = loop {
                match stream.message().await {
                    Ok(Some(_)) => pages += 1,
                    Ok(None) => panic!("{b}: all {pages} pages came after the session closed"),
                    Err(status) => break status,
                }
            };
            assert!(pages < 100, "{b}");
            assert_error(
                &err,
                Code::Unauthenticated,
                "SESSION_CLOSED",
                Service::Reader,
            );
        }
        f.finish().await;
    });
}

#[test]
fn pages_stop_at_the_byte_budget_and_still_cover_every_row() {
    block_on_multi_thread(async {
        let f = Fixture::start().await;
        for b in BACKENDS {
            let mut r = f.client(b).await;
            r.collection = format!("small_{b}");
            let pages = r.pages(r.read_request(100, vec![], None)).await.unwrap();
            let first = &pages[0];
            assert!(
                (1..100).contains(&first.rows.len()) && first.has_more,
                "{b}: 2 KiB holds fewer than 100 rows ({})",
                first.rows.len()
            );
            assert!(
                first
                    .rows
                    .iter()
                    .map(prost::Message::encoded_len)
                    .sum::<usize>()
                    <= 2048,
                "{b}"
            );
            assert_eq!(ids(&pages), (1..=ROWS).collect::<Vec<_>>(), "{b}");
        }
        f.finish().await;
    });
}
