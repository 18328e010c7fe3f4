//! The abuse suite: what a hostile or buggy client holding a valid key (or
//! none) tries, and the rule that stops it. Each test names the behaviour
//! it keeps from regressing. (Checks that belong with a feature live with
//! it: a JWT that is not valid yet in `auth_jwt.rs`.)

mod common;

use common::{scrape_metrics, TestGateway};
use prism::runtime::block_on_multi_thread;
use tonic::{codegen::http::uri::PathAndQuery, Code};

/// One unary call with an empty message to any path.
async fn call_path(channel: tonic::transport::Channel, path: &str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(()),
        PathAndQuery::try_from(path).unwrap(),
        tonic_prost::ProstCodec::<(), ()>::default(),
    )
    .await
    .unwrap_err()
}

#[test]
fn made_up_method_paths_do_not_grow_the_metrics() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let before = scrape_metrics(gw.admin_addr).await;
        const CALLS: usize = 200;
        for i in 0..CALLS {
            let path = match i % 3 {
                0 => format!("/evil.Service{i}/Method{i}"),
                // A real service with a method it does not have.
                1 => format!("/prism.keyvalue.v1.KeyValueService/Nope{i}"),
                _ => format!("/x{i}"),
            };
            let status = call_path(gw.channel.clone(), &path).await;
            assert_eq!(status.code(), Code::Unimplemented, "{path}");
        }
        let after = scrape_metrics(gw.admin_addr).await;
        let unknown = "prism_requests_total{namespace=\"\",service=\"unknown\",method=\"unknown\",code=\"UNIMPLEMENTED\"}";
        assert_eq!(
            after.get(unknown).copied().unwrap_or(0.0)
                - before.get(unknown).copied().unwrap_or(0.0),
            CALLS as f64,
            "every made-up call is counted once, as unknown"
        );
        let new_series: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
        // The unknown counter and its histogram (14 buckets, +Inf, sum,
        // count) at most: nothing per path.
        assert!(new_series.len() <= 18, "{new_series:#?}");
        assert!(
            after
                .keys()
                .all(|k| !k.contains("evil") && !k.contains("Nope")),
            "a client-made name reached the metrics"
        );
        gw.stop().await;
    });
}

#[test]
fn the_admin_api_is_served_only_on_the_admin_listener_with_a_header_token() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        // Not on the public port, whatever the credentials.
        let mut public = prism::proto::admin::v1::admin_service_client::AdminServiceClient::new(
            gw.channel.clone(),
        );
        let mut req = tonic::Request::new(prism::proto::admin::v1::GetActorTreeRequest::default());
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", common::ADMIN_TOKEN).parse().unwrap(),
        );
        let err = public.get_actor_tree(req).await.unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

        // On the admin listener, the token in a URL is not read.
        for path in ["/metrics", "/admin/actors", "/readyz"] {
            let (status, _) = common::http(
                gw.admin_addr,
                "GET",
                &format!("{path}?token={}", common::ADMIN_TOKEN),
                &[],
            )
            .await;
            assert_eq!(status, 401, "{path}");
        }
        gw.stop().await;
    });
}

#[test]
fn connections_and_their_streams_are_bounded_and_others_keep_being_served() {
    use prism::proto::transact::v1::{
        transact_service_client::TransactServiceClient, TransactRequest,
    };
    use std::time::Duration;
    block_on_multi_thread(async {
        let mut config = common::test_config();
        config.server.connections.max_connections = 2;
        config.server.connections.max_concurrent_streams = 2;
        config.server.connections.handshake_timeout = Duration::from_millis(500);
        let gw = TestGateway::start_with(config).await;
        let connect = || {
            tonic::transport::Endpoint::from_shared(format!("http://{}", gw.addr))
                .unwrap()
                .connect_lazy()
        };
        // A call that is served answers at once (UNIMPLEMENTED).
        let served = |channel: tonic::transport::Channel, wait: u64| async move {
            tokio::time::timeout(Duration::from_millis(wait), call_path(channel, "/x/y"))
                .await
                .is_ok()
        };
        // A socket that never speaks takes the second place only until the
        // handshake timeout: then it is closed and the place is free.
        let mut silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let second = connect();
        assert!(served(second.clone(), 20_000).await);
        // The gateway spoke first (its HTTP/2 settings), then hung up.
        let mut heard = Vec::new();
        let closed = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::AsyncReadExt::read_to_end(&mut silent, &mut heard),
        )
        .await;
        assert!(closed.is_ok(), "the silent socket is closed");
        // Two streams that wait for Begin fill the second connection...
        let mut tx = TransactServiceClient::new(second.clone());
        let mut open = Vec::new();
        for _ in 0..2 {
            let stream = tx
                .transaction(futures::stream::pending::<TransactRequest>())
                .await
                .unwrap();
            open.push(stream);
        }
        // ...so a third call on it waits, while the first connection serves.
        assert!(
            !served(second.clone(), 300).await,
            "a third stream on a full connection"
        );
        assert!(served(gw.channel.clone(), 20_000).await);
        // A third connection waits for a place.
        let third = connect();
        assert!(!served(third.clone(), 300).await, "a third connection");
        // A stream ends: its connection has room again.
        open.pop();
        assert!(served(second.clone(), 20_000).await);
        // A connection closes: the waiting one is served.
        drop((open, tx, second));
        assert!(served(third, 20_000).await);
        gw.stop().await;
    });
}

mod policy {
    //! Namespace policy holds against inline configs, and the session limits.

    use std::collections::HashMap;

    use prism::{
        config::{GatewayConfig, Source},
        error::Service,
        proto::{
            config::v1::{self as cfg, AccessPattern},
            keyvalue::v1::{key_value_service_client::KeyValueServiceClient, GetRequest},
            reader::v1::{reader_service_client::ReaderServiceClient, GetRequest as RowRequest},
            session::v1::{create_session_request::Config, CreateSessionRequest},
            transact::v1::{
                transact_service_client::TransactServiceClient, DataWrite, MailboxWrite,
                ProcessMailboxRequest, ReadMailboxRequest, WriteRequest,
            },
        },
        runtime::block_on_multi_thread,
    };
    use tonic::Code;

    use super::common::{api_key_request, assert_error, inline_request, wait_until, TestGateway};

    const READER: &str = "abuse-reader-key";
    const WRITER: &str = "abuse-writer-key";

    fn gateway_config() -> GatewayConfig {
        let db =
            std::env::temp_dir().join(format!("prism-abuse-{}.db", super::common::kv::run_id()));
        let yaml = format!(
            r#"
server: {{ shutdown_grace: 5s, supervision_interval: 100ms, actor_threads: 2 }}
limits: {{ transaction_begin_timeout: 300ms, max_value_bytes: 65536, max_message_bytes: 200000 }}
backends:
  memory: {{ type: memory }}
  db:
    type: sqlite
    path: "{db}"
    init_sql:
      - "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, note TEXT)"
      - "CREATE TABLE IF NOT EXISTS secrets (id INTEGER PRIMARY KEY, note TEXT)"
namespaces:
  shop:
    allowed_backends: [memory, db]
    allowed_patterns: [key_value, queue, pubsub, reader, transact]
    session:
      max_streams_per_session: 2
      max_sessions: 10
      max_sessions_per_principal: 3
      max_metadata_entries: 4
      max_metadata_bytes: 64
      max_client_id_bytes: 16
    queue: {{ buffer: 64, buffer_bytes: 4096 }}
    api_keys:
      - {{ name: reader, sha256: "{reader}" }}
      - {{ name: writer, sha256: "{writer}", roles: [writer] }}
    collections:
      orders: {{ backend: db, table: orders }}
      secrets: {{ backend: db, table: secrets }}
    transact:
      tables:
        orders: {{ backend: db }}
        secrets: {{ backend: db }}
    rules:
      - {{ patterns: [key_value], backends: [memory], roles: [writer], rate_limit: {{ requests_per_second: 5, burst: 5 }} }}
      - {{ patterns: [queue], max_attempts: 3 }}
configs:
  kv-open: {{ namespace: shop, pattern: key_value, backend: memory }}
  orders-only: {{ namespace: shop, pattern: reader, backend: db, options: {{ collection: orders }} }}
"#,
            db = db.display(),
            reader = prism::auth::api_key_digest(READER),
            writer = prism::auth::api_key_digest(WRITER),
        );
        GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).unwrap()
    }

    /// The shared inline request, with backend options and a rate limit.
    fn inline(
        key: &str,
        pattern: AccessPattern,
        backend: &str,
        options: &[(&str, &str)],
        rate: Option<(i32, i32)>,
    ) -> CreateSessionRequest {
        let mut request = inline_request(key, pattern, backend);
        if let Some(Config::InlineConfig(config)) = &mut request.config {
            if let Some(b) = &mut config.backend {
                b.options = options
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            }
            config.rate_limit = rate.map(|(requests_per_second, burst)| cfg::RateLimitConfig {
                requests_per_second,
                burst,
            });
        }
        request
    }

    /// A session the request must open.
    async fn open(
        gw: &TestGateway,
        request: CreateSessionRequest,
    ) -> prism::proto::session::v1::CreateSessionResponse {
        gw.sessions()
            .create_session(request)
            .await
            .unwrap()
            .into_inner()
    }

    #[test]
    fn an_inline_config_cannot_escape_the_namespace_rules() {
        block_on_multi_thread(async {
            let gw = TestGateway::start_with(gateway_config()).await;
            let mut sessions = gw.sessions();

            // The rule needs `writer` for KeyValue on memory: inline and
            // named configs alike.
            for request in [
                inline(READER, AccessPattern::KeyValue, "memory", &[], None),
                api_key_request(READER, "kv-open"),
            ] {
                let err = sessions.create_session(request).await.unwrap_err();
                assert_error(
                    &err,
                    Code::PermissionDenied,
                    "ROLE_NOT_ALLOWED",
                    Service::Session,
                );
                assert!(err.message().contains("writer"), "{}", err.message());
            }

            // A writer gets the rule's rate, whatever the config asked for:
            // none, or more than the rule allows.
            for rate in [None, Some((10_000, 10_000))] {
                let session = sessions
                    .create_session(inline(WRITER, AccessPattern::KeyValue, "memory", &[], rate))
                    .await
                    .unwrap()
                    .into_inner();
                let shown = session.config.unwrap().rate_limit.unwrap();
                assert_eq!((shown.requests_per_second, shown.burst), (5, 5));
                let mut kv = KeyValueServiceClient::new(gw.channel.clone());
                let mut refused = 0;
                for _ in 0..20 {
                    let got = kv
                        .get(GetRequest {
                            session_token: session.session_token.clone(),
                            key: "k".into(),
                        })
                        .await;
                    if let Err(e) = got {
                        assert_error(
                            &e,
                            Code::ResourceExhausted,
                            "RATE_LIMITED",
                            Service::KeyValue,
                        );
                        refused += 1;
                    }
                }
                assert!(refused >= 10, "{refused} of 20 calls refused at 5/s");
            }

            // An option above the rule's cap is refused; left unset, the
            // default is lowered to the cap.
            let err = sessions
                .create_session(inline(
                    READER,
                    AccessPattern::Queue,
                    "memory",
                    &[("max_attempts", "10")],
                    None,
                ))
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::PermissionDenied,
                "OPTION_NOT_ALLOWED",
                Service::Session,
            );
            let capped = sessions
                .create_session(inline(READER, AccessPattern::Queue, "memory", &[], None))
                .await
                .unwrap()
                .into_inner();
            let entry = gw.gateway.registry.by_id(&capped.session_id).unwrap();
            assert_eq!(entry.config.options.max_attempts, 3);
            gw.stop().await;
        });
    }

    #[test]
    fn a_config_limited_to_a_collection_table_or_mailbox_touches_nothing_else() {
        block_on_multi_thread(async {
            let gw = TestGateway::start_with(gateway_config()).await;
            gw.wait_backend_up("db").await;
            let mut sessions = gw.sessions();

            let reader = sessions
                .create_session(api_key_request(READER, "orders-only"))
                .await
                .unwrap()
                .into_inner();
            let mut rows = ReaderServiceClient::new(gw.channel.clone());
            let get = |collection: &str| RowRequest {
                session_token: reader.session_token.clone(),
                collection: collection.to_string(),
                id: "1".into(),
                ..Default::default()
            };
            let err = rows.get(get("secrets")).await.unwrap_err();
            assert_error(
                &err,
                Code::PermissionDenied,
                "COLLECTION_NOT_ALLOWED",
                Service::Reader,
            );
            // Its own collection answers (no such row yet).
            let own = rows.get(get("orders")).await;
            assert!(
                own.as_ref()
                    .map_or_else(|e| e.code() == Code::NotFound, |_| true),
                "{own:?}"
            );

            let writer = sessions
                .create_session(inline(
                    WRITER,
                    AccessPattern::Transact,
                    "db",
                    &[("tables", "orders"), ("mailbox", "outbox")],
                    None,
                ))
                .await
                .unwrap()
                .into_inner();
            let mut tx = TransactServiceClient::new(gw.channel.clone());
            let row = |table: &str| DataWrite {
                table: table.to_string(),
                record: HashMap::from([(
                    "note".to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue("x".into())),
                    },
                )]),
                mode: 1,
                ..Default::default()
            };
            let mail = |mailbox: &str| MailboxWrite {
                mailbox_id: mailbox.to_string(),
                message: b"m".to_vec(),
                ..Default::default()
            };
            let write = |data: Option<DataWrite>, mailbox: Option<MailboxWrite>| WriteRequest {
                session_token: writer.session_token.clone(),
                data,
                mailbox,
                ..Default::default()
            };
            let err = tx
                .write(write(Some(row("secrets")), None))
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::PermissionDenied,
                "TABLE_NOT_ALLOWED",
                Service::Transact,
            );
            let err = tx
                .write(write(None, Some(mail("elsewhere"))))
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::PermissionDenied,
                "MAILBOX_NOT_ALLOWED",
                Service::Transact,
            );
            let written = tx
                .write(write(Some(row("orders")), Some(mail("outbox"))))
                .await
                .unwrap()
                .into_inner();
            let err = tx
                .read_mailbox(ReadMailboxRequest {
                    session_token: writer.session_token.clone(),
                    mailbox_id: "elsewhere".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::PermissionDenied,
                "MAILBOX_NOT_ALLOWED",
                Service::Transact,
            );

            // A message of another mailbox, written by an unlimited
            // session, cannot be processed through the limited one.
            let open = sessions
                .create_session(inline(WRITER, AccessPattern::Transact, "db", &[], None))
                .await
                .unwrap()
                .into_inner();
            let other = tx
                .write(WriteRequest {
                    session_token: open.session_token.clone(),
                    mailbox: Some(mail("elsewhere")),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let own_id = written.mailbox_result.unwrap().message_id;
            let other_id = other.mailbox_result.unwrap().message_id;
            let processed = tx
                .process_mailbox(ProcessMailboxRequest {
                    session_token: writer.session_token.clone(),
                    message_ids: vec![own_id, other_id.clone()],
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(processed.processed_count, 1);
            assert_eq!(processed.failed_ids, vec![other_id]);
            gw.stop().await;
        });
    }

    #[test]
    fn one_principal_cannot_take_the_namespace_and_client_strings_are_bounded() {
        block_on_multi_thread(async {
            let gw = TestGateway::start_with(gateway_config()).await;
            let mut sessions = gw.sessions();
            let open = || inline(READER, AccessPattern::Queue, "memory", &[], None);
            for _ in 0..3 {
                sessions.create_session(open()).await.unwrap();
            }
            let err = sessions.create_session(open()).await.unwrap_err();
            assert_error(
                &err,
                Code::ResourceExhausted,
                "TOO_MANY_SESSIONS_FOR_PRINCIPAL",
                Service::Session,
            );
            // Another principal still gets in.
            sessions
                .create_session(inline(WRITER, AccessPattern::Queue, "memory", &[], None))
                .await
                .unwrap();

            let writer = || inline(WRITER, AccessPattern::Queue, "memory", &[], None);
            let mut many = writer();
            many.metadata = (0..5).map(|i| (format!("k{i}"), "v".into())).collect();
            let mut large = writer();
            large.metadata = HashMap::from([("k".to_string(), "v".repeat(64))]);
            for request in [many, large] {
                let err = sessions.create_session(request).await.unwrap_err();
                assert_error(
                    &err,
                    Code::InvalidArgument,
                    "METADATA_TOO_LARGE",
                    Service::Session,
                );
            }
            let mut long_id = writer();
            long_id.client_id = "c".repeat(17);
            let err = sessions.create_session(long_id).await.unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "CLIENT_ID_TOO_LONG",
                Service::Session,
            );
            gw.stop().await;
        });
    }

    #[test]
    fn a_session_holds_only_so_many_streams() {
        block_on_multi_thread(async {
            let gw = TestGateway::start_with(gateway_config()).await;
            let session = open(
                &gw,
                inline(WRITER, AccessPattern::Pubsub, "memory", &[], None),
            )
            .await;
            let token = session.session_token;
            let first = gw.subscribe(&token, "a.>").await;
            let _second = gw.subscribe(&token, "b.>").await;
            let mut client =
                prism::proto::pubsub::v1::pub_sub_service_client::PubSubServiceClient::new(
                    gw.channel.clone(),
                );
            let third = || prism::proto::pubsub::v1::SubscribeRequest {
                session_token: token.clone(),
                topic_pattern: "c.>".into(),
                ..Default::default()
            };
            let err = client.subscribe(third()).await.unwrap_err();
            assert_error(
                &err,
                Code::ResourceExhausted,
                "TOO_MANY_STREAMS",
                Service::PubSub,
            );
            // One ends: there is room again.
            drop(first);
            let entry = gw.gateway.registry.by_id(&session.session_id).unwrap();
            wait_until("the ended stream is released", || async {
                entry
                    .active_streams
                    .load(std::sync::atomic::Ordering::Acquire)
                    < 2
            })
            .await;
            client.subscribe(third()).await.unwrap();
            gw.stop().await;
        });
    }

    #[test]
    fn a_transaction_stream_that_never_begins_is_ended() {
        block_on_multi_thread(async {
            let gw = TestGateway::start_with(gateway_config()).await;
            let mut tx = TransactServiceClient::new(gw.channel.clone());
            // Opened, and nothing sent: not even a session token.
            let mut stream = tx
                .transaction(futures::stream::pending::<
                    prism::proto::transact::v1::TransactRequest,
                >())
                .await
                .unwrap()
                .into_inner();
            let ended = tokio::time::timeout(std::time::Duration::from_secs(30), stream.message())
                .await
                .expect("the gateway ends the stream");
            let err = ended.unwrap_err();
            assert_error(
                &err,
                Code::DeadlineExceeded,
                "BEGIN_TIMEOUT",
                Service::Transact,
            );
            gw.stop().await;
        });
    }

    #[test]
    fn a_filter_never_binds_more_values_than_a_database_accepts() {
        use prism::proto::reader::v1::{
            composite_filter::LogicalOperator, field_filter::Operator, filter, CompositeFilter,
            FieldFilter, Filter, ReadRequest,
        };
        block_on_multi_thread(async {
            let gw = TestGateway::start_with(gateway_config()).await;
            gw.wait_backend_up("db").await;
            let session = open(&gw, api_key_request(READER, "orders-only")).await;
            let in_list = |from: i32| Filter {
                filter: Some(filter::Filter::Field(FieldFilter {
                    field: "id".into(),
                    op: Operator::In as i32,
                    value: Some(prost_types::Value {
                        kind: Some(prost_types::value::Kind::ListValue(
                            prost_types::ListValue {
                                values: (from..from + 1000)
                                    .map(|n| prost_types::Value {
                                        kind: Some(prost_types::value::Kind::NumberValue(
                                            f64::from(n),
                                        )),
                                    })
                                    .collect(),
                            },
                        )),
                    }),
                })),
            };
            // Eleven lists of 1,000: each allowed alone, too many together.
            let filter = Filter {
                filter: Some(filter::Filter::Composite(CompositeFilter {
                    op: LogicalOperator::Or as i32,
                    filters: (0..11).map(|i| in_list(i * 1000)).collect(),
                })),
            };
            let mut reader = ReaderServiceClient::new(gw.channel.clone());
            let err = reader
                .read(ReadRequest {
                    session_token: session.session_token.clone(),
                    collection: "orders".into(),
                    page_size: 10,
                    filter: Some(filter),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "FILTER_TOO_COMPLEX",
                Service::Reader,
            );
            // Ten lists are within the limit, and the database takes them.
            let filter = Filter {
                filter: Some(filter::Filter::Composite(CompositeFilter {
                    op: LogicalOperator::Or as i32,
                    filters: (0..10).map(|i| in_list(i * 1000)).collect(),
                })),
            };
            let mut pages = reader
                .read(ReadRequest {
                    session_token: session.session_token.clone(),
                    collection: "orders".into(),
                    page_size: 10,
                    filter: Some(filter),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let first = pages.message().await;
            assert!(first.is_ok(), "{first:?}");
            gw.stop().await;
        });
    }

    #[test]
    fn a_reply_no_client_could_receive_is_refused_before_it_is_built() {
        use prism::proto::keyvalue::v1::{BatchGetRequest, BatchSetRequest, Entry};
        block_on_multi_thread(async {
            let gw = TestGateway::start_with(gateway_config()).await;
            let session = open(
                &gw,
                inline(WRITER, AccessPattern::KeyValue, "memory", &[], None),
            )
            .await;
            let mut kv = KeyValueServiceClient::new(gw.channel.clone());
            // Four values of 60 KB, each within the limits, set two at a time.
            for pair in [["a", "b"], ["c", "d"]] {
                kv.batch_set(BatchSetRequest {
                    session_token: session.session_token.clone(),
                    entries: pair
                        .iter()
                        .map(|k| Entry {
                            key: k.to_string(),
                            value: vec![b'x'; 60_000],
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
            let get = |keys: &[&str]| BatchGetRequest {
                session_token: session.session_token.clone(),
                keys: keys.iter().map(|k| k.to_string()).collect(),
            };
            // Together they exceed limits.max_message_bytes (200,000).
            let err = kv.batch_get(get(&["a", "b", "c", "d"])).await.unwrap_err();
            assert_error(
                &err,
                Code::ResourceExhausted,
                "RESPONSE_TOO_LARGE",
                Service::KeyValue,
            );
            let some = kv.batch_get(get(&["a", "b"])).await.unwrap().into_inner();
            assert_eq!(some.items.len(), 2);
            gw.stop().await;
        });
    }

    #[test]
    fn a_stream_buffer_is_bounded_in_bytes_and_loses_nothing() {
        use prism::proto::queue::v1::{
            self as pb, queue_service_client::QueueServiceClient, subscribe_request::StartPosition,
        };
        block_on_multi_thread(async {
            let gw = TestGateway::start_with(gateway_config()).await;
            let session = open(
                &gw,
                inline(WRITER, AccessPattern::Queue, "memory", &[], None),
            )
            .await;
            let token = session.session_token;
            // A client whose HTTP/2 windows hold little, so that what it
            // does not read stays in the gateway.
            let channel = gw.narrow_channel(16 * 1024).await;
            let mut queue = QueueServiceClient::new(channel);
            // 200 messages of 1,000 bytes fit the 64-message buffer, not its
            // 4,096 bytes; the last, larger than the budget, travels alone.
            let mut sent = Vec::new();
            for i in 0..201u8 {
                let payload = vec![i; if i == 200 { 10_000 } else { 1_000 }];
                queue
                    .publish(pb::PublishRequest {
                        session_token: token.clone(),
                        topic: "big".into(),
                        payload: payload.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                sent.push(payload);
            }
            let mut stream = queue
                .subscribe(pb::SubscribeRequest {
                    session_token: token.clone(),
                    topic: "big".into(),
                    consumer_group: "slow".into(),
                    start_position: Some(StartPosition::Position(
                        pb::StartPosition::Earliest as i32,
                    )),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let next = async |stream: &mut tonic::Streaming<pb::Message>| {
                tokio::time::timeout(std::time::Duration::from_secs(20), stream.message())
                    .await
                    .expect("a message in time")
                    .unwrap()
                    .expect("the stream is open")
            };
            let mut received = vec![next(&mut stream).await.payload];
            // The client stops reading; the subscription fills its buffer
            // up to the byte budget and waits there.
            let state = async || {
                let tree = gw.gateway.observe().await.unwrap();
                let node = tree
                    .walk()
                    .into_iter()
                    .find(|n| n.state["topic"] == "big")
                    .cloned();
                node.map(|n| n.state).unwrap_or_default()
            };
            wait_until("the buffer fills to its byte budget", || async {
                state().await["buffered"].as_u64() == Some(3)
            })
            .await;
            let full = state().await;
            assert!(full["buffered_bytes"].as_u64().unwrap() <= 4096, "{full}");
            assert_eq!(full["buffer_bytes"], 4096, "{full}");
            while received.len() < sent.len() {
                received.push(next(&mut stream).await.payload);
            }
            // Compared by (first byte, length): each payload is one byte repeated.
            let brief = |all: &[Vec<u8>]| -> Vec<(u8, usize)> {
                all.iter().map(|p| (p[0], p.len())).collect()
            };
            assert_eq!(
                brief(&received),
                brief(&sent),
                "every message, in order, none lost"
            );
            let after = state().await;
            assert!(
                after["buffered_bytes_high_water"].as_u64().unwrap() <= 4096,
                "{after}"
            );
            gw.stop().await;
        });
    }
}
