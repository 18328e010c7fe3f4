//! SessionService over real gRPC: the whole lifecycle, tokens, credentials,
//! inline configs, rate limits, close semantics, supervision and shutdown.

mod common;

use std::time::Duration;

use common::*;
use prism::{
    actors::{ActorKind, ActorStatus, Fault},
    error::Service,
    proto::{
        config::v1::{self as cfg, AccessPattern, BackendConfig, BackendType, ClientConfig},
        keyvalue::v1::{key_value_service_client::KeyValueServiceClient, GetRequest},
        session::v1::{
            create_session_request::{Auth, Config},
            CloseSessionRequest, CreateSessionRequest, GetSessionRequest, HeartbeatRequest,
            RefreshSessionRequest, SessionStatus,
        },
    },
    runtime::block_on_multi_thread,
    session::{EndReason, SessionEvent, SessionState},
};
use tonic::Code;

fn ts_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

#[test]
fn session_lifecycle_create_heartbeat_get_refresh_close() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let mut client = gw.sessions();

        let created = gw.open("user-profiles").await;
        assert!(created.session_token.starts_with("prism_"));
        assert!(
            created.session_token.len() >= 49,
            "at least 256 bits of token"
        );
        assert!(created.session_id.starts_with("sess-"));
        let created_at = ts_ms(created.created_at.as_ref().unwrap());
        let expires_at = ts_ms(created.expires_at.as_ref().unwrap());
        assert!(
            (expires_at - created_at - 600_000).abs() < 1_000,
            "idle timeout of 10m"
        );
        let config = created.config.as_ref().expect("resolved config");
        assert_eq!(config.name, "user-profiles");
        assert_eq!(config.namespace, "default");
        assert_eq!(config.pattern, AccessPattern::KeyValue as i32);
        let backend = config.backend.as_ref().unwrap();
        assert_eq!(backend.r#type, BackendType::Memory as i32);
        assert_eq!(backend.name, "memory");
        assert!(created
            .supported_features
            .contains(&"session.v1".to_string()));

        // The token works in the field and in the x-session-token header.
        let token = created.session_token.clone();
        let hb = client
            .heartbeat(HeartbeatRequest {
                session_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hb.status, SessionStatus::Active as i32);
        let ttl = hb.ttl.unwrap();
        assert!((590..=600).contains(&ttl.seconds), "ttl {ttl:?}");
        let hb = client
            .heartbeat(with_token_header(HeartbeatRequest::default(), &token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hb.status, SessionStatus::Active as i32);

        let got = client
            .get_session(GetSessionRequest {
                session_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.session_id, created.session_id);
        assert_eq!(got.status, SessionStatus::Active as i32);
        assert_eq!(got.config.unwrap().name, "user-profiles");
        let metrics = got.metrics.unwrap();
        assert_eq!(
            metrics.requests_processed, 4,
            "create, two heartbeats, this get"
        );
        assert!(metrics.bytes_received > 0 && metrics.bytes_sent > 0);
        assert_eq!(metrics.active_streams, 0);
        assert!(ts_ms(got.last_activity.as_ref().unwrap()) >= created_at);

        let refreshed = client
            .refresh_session(RefreshSessionRequest {
                session_token: token.clone(),
                extension: Some(prost_types::Duration {
                    seconds: 1800,
                    nanos: 0,
                }),
            })
            .await
            .unwrap()
            .into_inner();
        let new_expiry = ts_ms(refreshed.new_expires_at.as_ref().unwrap());
        assert!(
            (new_expiry - created_at - 1_800_000).abs() < 2_000,
            "extended to 30m"
        );

        let closed = client
            .close_session(CloseSessionRequest {
                session_token: token.clone(),
                force: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(closed.success, "{closed:?}");
        assert_eq!(closed.pending_operations, 0);

        let err = client
            .heartbeat(HeartbeatRequest {
                session_token: token.clone(),
            })
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "SESSION_CLOSED",
            Service::Session,
        );
        let info = tonic_types::StatusExt::get_details_error_info(&err).unwrap();
        assert_eq!(info.metadata.get("session_id"), Some(&created.session_id));
        gw.stop().await;
    });
}

#[test]
fn refresh_is_bounded_by_max_lifetime() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let created = gw.open("user-profiles").await;
        let created_at = ts_ms(created.created_at.as_ref().unwrap());
        let refreshed = gw
            .sessions()
            .refresh_session(RefreshSessionRequest {
                session_token: created.session_token.clone(),
                extension: Some(prost_types::Duration {
                    seconds: 10 * 3600,
                    nanos: 0,
                }),
            })
            .await
            .unwrap()
            .into_inner();
        let new_expiry = ts_ms(refreshed.new_expires_at.as_ref().unwrap());
        assert!(
            (new_expiry - created_at - 3_600_000).abs() < 1_000,
            "capped at max_lifetime 1h"
        );

        let err = gw
            .sessions()
            .refresh_session(RefreshSessionRequest {
                session_token: created.session_token,
                extension: Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                }),
            })
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::InvalidArgument,
            "INVALID_EXTENSION",
            Service::Session,
        );
        gw.stop().await;
    });
}

#[test]
fn bad_and_unknown_tokens_are_unauthenticated() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let mut client = gw.sessions();
        let err = client
            .heartbeat(HeartbeatRequest::default())
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "MISSING_SESSION_TOKEN",
            Service::Session,
        );
        for bad in [
            "garbage",
            "prism_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "' or 1=1 --",
        ] {
            let err = client
                .get_session(GetSessionRequest {
                    session_token: bad.to_string(),
                })
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::Unauthenticated,
                "INVALID_SESSION_TOKEN",
                Service::Session,
            );
        }
        gw.stop().await;
    });
}

#[test]
fn credentials_are_checked() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let mut client = gw.sessions();

        let err = client
            .create_session(api_key_request("not-a-key", "user-profiles"))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "INVALID_API_KEY",
            Service::Session,
        );

        let err = client
            .create_session(CreateSessionRequest {
                config: Some(Config::ConfigName("user-profiles".into())),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "MISSING_CREDENTIALS",
            Service::Session,
        );

        let err = client
            .create_session(CreateSessionRequest {
                auth: Some(Auth::ApiKey(TEST_KEY.into())),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::InvalidArgument,
            "MISSING_CONFIG",
            Service::Session,
        );

        let err = client
            .create_session(api_key_request(TEST_KEY, "no-such-config"))
            .await
            .unwrap_err();
        assert_error(&err, Code::NotFound, "CONFIG_NOT_FOUND", Service::Session);

        // mTLS needs a TLS connection with a verified client certificate.
        let err = client
            .create_session(CreateSessionRequest {
                auth: Some(Auth::Mtls(prism::proto::session::v1::MutualTlsAuth {
                    client_cert: vec![1, 2, 3],
                })),
                config: Some(Config::ConfigName("user-profiles".into())),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "MTLS_NOT_CONFIGURED",
            Service::Session,
        );
        gw.stop().await;
    });
}

#[test]
fn credentials_of_another_namespace_are_denied() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let mut client = gw.sessions();
        // A valid key of namespace `other` asking for a config of `default`.
        let err = client
            .create_session(api_key_request(OTHER_KEY, "user-profiles"))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::PermissionDenied,
            "NAMESPACE_MISMATCH",
            Service::Session,
        );

        // The same key with an inline config naming `default`.
        let err = client
            .create_session(CreateSessionRequest {
                auth: Some(Auth::ApiKey(OTHER_KEY.into())),
                config: Some(Config::InlineConfig(ClientConfig {
                    pattern: AccessPattern::KeyValue as i32,
                    namespace: "default".into(),
                    backend: Some(BackendConfig {
                        r#type: BackendType::Memory as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::PermissionDenied,
            "NAMESPACE_MISMATCH",
            Service::Session,
        );

        // Its own config works, and roles gate configs within a namespace.
        let ok = client
            .create_session(api_key_request(OTHER_KEY, "other-kv"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.config.unwrap().namespace, "other");
        gw.open("admins-only").await;
        let err = client
            .create_session(api_key_request(TEST_KEY, "writers-only"))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::PermissionDenied,
            "ROLE_NOT_ALLOWED",
            Service::Session,
        );
        gw.stop().await;
    });
}

fn inline(
    pattern: AccessPattern,
    backend: BackendType,
    interfaces: &[&str],
) -> CreateSessionRequest {
    CreateSessionRequest {
        auth: Some(Auth::ApiKey(TEST_KEY.into())),
        config: Some(Config::InlineConfig(ClientConfig {
            pattern: pattern as i32,
            backend: Some(BackendConfig {
                r#type: backend as i32,
                required_interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            consistency: Some(cfg::ConsistencyConfig {
                level: cfg::ConsistencyLevel::Eventual as i32,
                max_staleness: None,
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[test]
fn inline_configs_are_validated_against_policy_and_interfaces() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let mut client = gw.sessions();

        let ok = client
            .create_session(inline(AccessPattern::KeyValue, BackendType::Memory, &[]))
            .await
            .unwrap()
            .into_inner();
        let config = ok.config.unwrap();
        assert_eq!(config.namespace, "default");
        assert_eq!(config.name, "inline");
        assert_eq!(
            config.backend.unwrap().name,
            "memory",
            "type resolved to the configured backend"
        );

        // Kafka has no key-value TTL: rejected, naming backend and interface.
        let err = client
            .create_session(inline(
                AccessPattern::KeyValue,
                BackendType::Kafka,
                &["keyvalue_ttl"],
            ))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unimplemented,
            "MISSING_INTERFACE",
            Service::Session,
        );
        assert!(
            err.message().contains("events-kafka") && err.message().contains("keyvalue_ttl"),
            "{}",
            err.message()
        );

        let err = client
            .create_session(inline(
                AccessPattern::KeyValue,
                BackendType::Memory,
                &["keyvalue_nonsense"],
            ))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::InvalidArgument,
            "UNKNOWN_INTERFACE",
            Service::Session,
        );

        let err = client
            .create_session(inline(AccessPattern::KeyValue, BackendType::Postgres, &[]))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::FailedPrecondition,
            "BACKEND_NOT_CONFIGURED",
            Service::Session,
        );

        let err = client
            .create_session(inline(AccessPattern::Unspecified, BackendType::Memory, &[]))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::InvalidArgument,
            "INVALID_CONFIG",
            Service::Session,
        );

        // Options are parsed and range-checked when the config is resolved.
        let with_option = |name: &str, value: &str| {
            let mut req = inline(AccessPattern::Queue, BackendType::Memory, &[]);
            if let Some(Config::InlineConfig(c)) = req.config.as_mut() {
                let backend = c.backend.as_mut().unwrap();
                backend.options.insert(name.into(), value.into());
            }
            req
        };
        client
            .create_session(with_option("visibility_timeout", "2s"))
            .await
            .expect("a valid option is accepted");
        for (name, value) in [
            ("partitions", "0"),
            ("max_attempts", "lots"),
            ("colour", "red"),
        ] {
            let err = client
                .create_session(with_option(name, value))
                .await
                .unwrap_err();
            assert_error(
                &err,
                Code::InvalidArgument,
                "INVALID_CONFIG",
                Service::Session,
            );
            assert!(
                err.message()
                    .contains(&format!("inline_config.backend.options.{name}")),
                "{}",
                err.message()
            );
        }

        // Namespace `other` may only use key_value on memory.
        let mut req = inline(AccessPattern::Queue, BackendType::Memory, &[]);
        req.auth = Some(Auth::ApiKey(OTHER_KEY.into()));
        let err = client.create_session(req).await.unwrap_err();
        assert_error(
            &err,
            Code::PermissionDenied,
            "PATTERN_NOT_ALLOWED",
            Service::Session,
        );
        gw.stop().await;
    });
}

#[test]
fn a_rate_limit_holds_each_session_to_its_budget() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let mut client = gw.sessions();
        let limited = |rps: i32, burst: i32| {
            let mut req = inline(AccessPattern::KeyValue, BackendType::Memory, &[]);
            if let Some(Config::InlineConfig(c)) = req.config.as_mut() {
                c.rate_limit = Some(cfg::RateLimitConfig {
                    requests_per_second: rps,
                    burst,
                });
            }
            req
        };
        let mut kv = KeyValueServiceClient::new(gw.channel.clone());
        let get = |token: &str| GetRequest {
            session_token: token.to_string(),
            key: "k".into(),
        };

        // One request a second after a burst of three: calls made at once
        // get the burst (plus a token per second the machine took), then a
        // refusal that says how long to wait.
        let started = tokio::time::Instant::now();
        let a = client
            .create_session(limited(1, 3))
            .await
            .unwrap()
            .into_inner();
        let mut allowed = 0;
        let err = loop {
            match kv.get(get(&a.session_token)).await {
                Ok(_) => allowed += 1,
                Err(e) => break e,
            }
            assert!(allowed <= 10, "never limited");
        };
        let slack = started.elapsed().as_secs();
        assert!((3..=3 + slack).contains(&allowed), "{allowed} allowed");
        assert_error(
            &err,
            Code::ResourceExhausted,
            "RATE_LIMITED",
            Service::KeyValue,
        );
        let info = tonic_types::StatusExt::get_details_error_info(&err).unwrap();
        let wait: u64 = info.metadata["retry_after_ms"].parse().unwrap();
        assert!((1..=1000).contains(&wait), "{wait}");

        // Each session has its own budget; a config without a limit has none.
        let b = client
            .create_session(limited(1, 3))
            .await
            .unwrap()
            .into_inner();
        kv.get(get(&b.session_token)).await.unwrap();
        let free = client
            .create_session(inline(AccessPattern::KeyValue, BackendType::Memory, &[]))
            .await
            .unwrap()
            .into_inner();
        for _ in 0..50 {
            kv.get(get(&free.session_token)).await.unwrap();
        }

        // Only the operator turns a cache on (a named config): asking for
        // one inline is refused, not ignored.
        let mut cached = inline(AccessPattern::KeyValue, BackendType::Memory, &[]);
        if let Some(Config::InlineConfig(c)) = cached.config.as_mut() {
            c.cache = Some(cfg::CacheConfig {
                enabled: true,
                ..Default::default()
            });
        }
        let err = client.create_session(cached).await.unwrap_err();
        assert_error(
            &err,
            Code::PermissionDenied,
            "CACHE_NOT_ALLOWED_INLINE",
            Service::Session,
        );
        let err = client.create_session(limited(-5, 0)).await.unwrap_err();
        assert_error(
            &err,
            Code::InvalidArgument,
            "INVALID_CONFIG",
            Service::Session,
        );
        gw.stop().await;
    });
}

#[test]
fn close_with_and_without_force() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let mut client = gw.sessions();

        // Namespace `other` drains for 100ms: a pending operation keeps the
        // session open and is reported.
        let created = client
            .create_session(api_key_request(OTHER_KEY, "other-kv"))
            .await
            .unwrap()
            .into_inner();
        let entry = gw.gateway.registry.by_id(&created.session_id).unwrap();
        let guard = entry.begin_operation(false).unwrap();
        let closed = client
            .close_session(CloseSessionRequest {
                session_token: created.session_token.clone(),
                force: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!closed.success);
        assert_eq!(closed.pending_operations, 1);
        assert!(closed.message.contains("force"), "{}", closed.message);
        let hb = client
            .heartbeat(HeartbeatRequest {
                session_token: created.session_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            hb.status,
            SessionStatus::Active as i32,
            "still open after a refused close"
        );

        let closed = client
            .close_session(CloseSessionRequest {
                session_token: created.session_token.clone(),
                force: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(closed.success);
        assert_eq!(
            closed.pending_operations, 1,
            "the cancelled operation is reported"
        );
        drop(guard);
        let err = client
            .heartbeat(HeartbeatRequest {
                session_token: created.session_token,
            })
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "SESSION_CLOSED",
            Service::Session,
        );

        // Namespace `default` drains for 10s: the close waits for the
        // operation to finish, refusing new ones meanwhile.
        let created = gw.open("user-profiles").await;
        let entry = gw.gateway.registry.by_id(&created.session_id).unwrap();
        let guard = entry.begin_operation(false).unwrap();
        let mut closer = gw.sessions();
        let token = created.session_token.clone();
        let close = tokio::spawn(async move {
            closer
                .close_session(CloseSessionRequest {
                    session_token: token,
                    force: false,
                })
                .await
        });
        wait_for_state(&entry, SessionState::Terminating).await;
        let hb = client
            .heartbeat(HeartbeatRequest {
                session_token: created.session_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hb.status, SessionStatus::Terminating as i32);
        let refused = entry
            .begin_operation(false)
            .err()
            .expect("no new operations while closing");
        assert_eq!(refused.reason, "SESSION_TERMINATING");
        drop(guard);
        let closed = close.await.unwrap().unwrap().into_inner();
        assert!(closed.success);
        assert_eq!(closed.pending_operations, 0);
        gw.stop().await;
    });
}

async fn wait_for_state(entry: &prism::session::SessionEntry, state: SessionState) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while entry.state() != state {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("state reached in time");
}

#[test]
fn killed_session_actor_is_restarted_and_session_keeps_working() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let mut client = gw.sessions();
        let created = gw.open("user-profiles").await;
        let id = created.session_id.clone();
        let mut events = gw.gateway.registry.subscribe();

        gw.gateway.drill(&id, Fault::Panic).unwrap();
        let event = TestGateway::wait_event(
            &mut events,
            |e| matches!(e, SessionEvent::ActorRestarted { session_id, .. } if *session_id == id),
        )
        .await;
        assert_eq!(
            event,
            SessionEvent::ActorRestarted {
                session_id: id.clone(),
                namespace: "default".into(),
                restarts: 1
            }
        );

        let hb = client
            .heartbeat(HeartbeatRequest {
                session_token: created.session_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hb.status, SessionStatus::Active as i32);
        let tree = gw.gateway.observe().await.unwrap();
        let node = tree.find(&id).expect("session in the actor tree");
        assert_eq!(node.kind, ActorKind::Session);
        assert_eq!(node.status, ActorStatus::Running);
        assert_eq!(node.restarts, 1);
        assert_eq!(node.parent.as_deref(), Some("namespace/default"));

        // A stuck actor (no progress) is restarted too.
        gw.gateway.drill(&id, Fault::Stall).unwrap();
        TestGateway::wait_event(&mut events, |e| {
            matches!(e, SessionEvent::ActorRestarted { restarts: 2, .. })
        })
        .await;
        let tree = gw.gateway.observe().await.unwrap();
        assert_eq!(tree.find(&id).unwrap().restarts, 2);
        let ns = tree.find("namespace/default").unwrap();
        assert_eq!(ns.state["child_restarts"], 2);

        // The session still works and closes normally.
        let closed = client
            .close_session(CloseSessionRequest {
                session_token: created.session_token,
                force: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(closed.success);
        gw.stop().await;
    });
}

#[test]
fn a_dead_namespace_supervisor_is_restarted_and_adopts_its_sessions() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let created = gw.open("user-profiles").await;
        let id = created.session_id.clone();
        let mut events = gw.gateway.registry.subscribe();

        gw.gateway.drill("namespace/default", Fault::Panic).unwrap();
        let event = TestGateway::wait_event(&mut events, |e| {
            matches!(e, SessionEvent::NamespaceSupervisorRestarted { .. })
        })
        .await;
        assert_eq!(
            event,
            SessionEvent::NamespaceSupervisorRestarted {
                namespace: "default".into(),
                restarts: 1
            }
        );

        // The session kept working throughout, and the new supervisor
        // supervises it: a crash of its actor is repaired.
        gw.sessions()
            .heartbeat(HeartbeatRequest {
                session_token: created.session_token.clone(),
            })
            .await
            .unwrap();
        gw.gateway.drill(&id, Fault::Panic).unwrap();
        TestGateway::wait_event(
            &mut events,
            |e| matches!(e, SessionEvent::ActorRestarted { session_id, .. } if *session_id == id),
        )
        .await;
        let tree = gw.gateway.observe().await.unwrap();
        let ns = tree.find("namespace/default").unwrap();
        assert_eq!(ns.restarts, 1);
        assert_eq!(ns.status, ActorStatus::Running);
        assert_eq!(tree.find(&id).unwrap().restarts, 1);
        gw.stop().await;
    });
}

#[test]
fn a_session_actor_that_keeps_failing_ends_its_session() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let created = gw.open("user-profiles").await;
        let id = created.session_id.clone();
        let mut events = gw.gateway.registry.subscribe();
        // max_restarts is 3 in the test config: the fourth failure is final.
        for restarts in 1..=3u32 {
            gw.gateway.drill(&id, Fault::Panic).unwrap();
            TestGateway::wait_event(
                &mut events,
                |e| matches!(e, SessionEvent::ActorRestarted { restarts: r, .. } if *r == restarts),
            )
            .await;
        }
        gw.gateway.drill(&id, Fault::Panic).unwrap();
        let ended =
            TestGateway::wait_event(&mut events, |e| matches!(e, SessionEvent::Ended { .. })).await;
        assert!(
            matches!(
                ended,
                SessionEvent::Ended {
                    reason: EndReason::Failed,
                    ..
                }
            ),
            "{ended:?}"
        );
        let err = gw
            .sessions()
            .heartbeat(HeartbeatRequest {
                session_token: created.session_token,
            })
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "SESSION_FAILED",
            Service::Session,
        );
        gw.stop().await;
    });
}

#[test]
fn actor_tree_shows_sessions_while_open() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let a = gw.open("user-profiles").await;
        let b = gw
            .sessions()
            .create_session(api_key_request(OTHER_KEY, "other-kv"))
            .await
            .unwrap()
            .into_inner();

        let tree = gw.gateway.observe().await.unwrap();
        assert_eq!(tree.kind, ActorKind::Root);
        let children: Vec<&str> = tree.children.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(
            children,
            vec![
                "namespace/default",
                "namespace/other",
                "backend/events-kafka",
                "backend/local-sqlite",
                "backend/memory"
            ],
            "namespace supervisors, then a pool actor per backend with a client"
        );
        let pool = tree.find("backend/memory").unwrap();
        assert_eq!(pool.kind, ActorKind::BackendPool);
        assert_eq!(pool.state["type"], "memory");
        let session = tree.find(&a.session_id).unwrap();
        assert_eq!(session.state["namespace"], "default");
        assert_eq!(session.state["config"], "user-profiles");
        assert_eq!(session.state["identity"], "api-key:test");
        assert!(tree.find(&b.session_id).is_some());
        let json = serde_json::to_value(&tree).unwrap();
        assert_eq!(json["children"][0]["kind"], "namespace_supervisor");

        gw.sessions()
            .close_session(CloseSessionRequest {
                session_token: a.session_token,
                force: true,
            })
            .await
            .unwrap();
        let tree = gw.gateway.observe().await.unwrap();
        assert!(
            tree.find(&a.session_id).is_none(),
            "closed session leaves the tree"
        );
        assert!(tree.find(&b.session_id).is_some());
        gw.stop().await;
    });
}

#[test]
fn shutdown_drains_in_flight_calls_and_closes_sessions() {
    block_on_multi_thread(async {
        let mut gw = TestGateway::start().await;
        let created = gw.open("user-profiles").await;
        let idle = gw.open("user-profiles").await;
        let entry = gw.gateway.registry.by_id(&created.session_id).unwrap();
        let mut events = gw.gateway.registry.subscribe();

        // An in-flight call: a draining close waiting on a pending operation.
        let guard = entry.begin_operation(false).unwrap();
        let mut closer = gw.sessions();
        let token = created.session_token.clone();
        let in_flight = tokio::spawn(async move {
            closer
                .close_session(CloseSessionRequest {
                    session_token: token,
                    force: false,
                })
                .await
        });
        wait_for_state(&entry, SessionState::Terminating).await;

        let server = gw.begin_shutdown();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !server.is_finished(),
            "the server waits for the in-flight call"
        );
        drop(guard);
        let closed = in_flight
            .await
            .unwrap()
            .expect("in-flight call completes, not cancelled")
            .into_inner();
        assert!(closed.success);
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server stops within the grace")
            .unwrap()
            .expect("clean stop");

        let ended = TestGateway::wait_event(&mut events, |e| matches!(e, SessionEvent::Ended { session_id, .. } if *session_id == idle.session_id)).await;
        assert!(matches!(
            ended,
            SessionEvent::Ended {
                reason: EndReason::Shutdown,
                ..
            }
        ));
        assert!(gw.gateway.registry.is_empty());
        assert!(
            tokio::net::TcpStream::connect(gw.addr).await.is_err(),
            "no longer accepting"
        );
    });
}
