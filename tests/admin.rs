//! The admin surface: the token guards every admin endpoint but /healthz;
//! the live actor tree over HTTP and gRPC shows a session and its
//! subscription while the stream is open and drops them after; a restarted
//! actor shows its restart and a stuck one the messages waiting for it; an
//! administrator can close a session.

mod common;

use common::{
    http, parse_exposition,
    servers::{Kind, Server},
    wait_until, TestGateway, ADMIN_TOKEN,
};
use prism::{
    actors::Fault,
    proto::admin::v1::{self as admin, admin_service_client::AdminServiceClient},
    runtime::block_on_multi_thread,
};
use tonic::Code;

fn bearer() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

async fn get_json(gw: &TestGateway, path: &str) -> serde_json::Value {
    let (status, body) = http(gw.admin_addr, "GET", path, &[("Authorization", &bearer())]).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The ids of a JSON tree's nodes, depth first.
fn ids(node: &serde_json::Value, out: &mut Vec<String>) {
    out.push(node["id"].as_str().unwrap().to_string());
    for c in node["children"].as_array().unwrap() {
        ids(c, out);
    }
}

#[test]
fn admin_endpoints_refuse_a_missing_or_wrong_token() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let (status, _) = http(gw.admin_addr, "GET", "/healthz", &[]).await;
        assert_eq!(status, 200, "healthz is open");
        // The probe path answers without a token and says nothing more.
        let (status, body) = http(gw.admin_addr, "GET", "/ready", &[]).await;
        assert!(
            (status == 200 && body == "ready\n") || (status == 503 && body == "not ready\n"),
            "/ready: {status} {body:?}"
        );
        for path in ["/readyz", "/admin/actors", "/admin/actors/root"] {
            let (status, body) = http(gw.admin_addr, "GET", path, &[]).await;
            assert_eq!(status, 401, "{path}: {body}");
            let (status, body) = http(
                gw.admin_addr,
                "GET",
                path,
                &[("Authorization", "Bearer not-the-token")],
            )
            .await;
            assert_eq!(status, 403, "{path}: {body}");
            let (status, body) = http(
                gw.admin_addr,
                "GET",
                path,
                &[("X-Admin-Token", ADMIN_TOKEN)],
            )
            .await;
            // Readiness may still be waiting for backends: a 503, not a refusal.
            let answered = status == 200 || (path == "/readyz" && status == 503);
            assert!(answered, "{path}: {status} {body}");
        }
        let (status, _) = http(gw.admin_addr, "POST", "/admin/sessions/sess-x/close", &[]).await;
        assert_eq!(status, 401);

        let mut client = AdminServiceClient::new(gw.admin_channel().await);
        let err = client
            .get_actor_tree(admin::GetActorTreeRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let mut req = tonic::Request::new(admin::GetActorTreeRequest::default());
        req.metadata_mut()
            .insert("authorization", "Bearer wrong".parse().unwrap());
        assert_eq!(
            client.get_actor_tree(req).await.unwrap_err().code(),
            Code::PermissionDenied
        );
        gw.stop().await;
    });
}

#[test]
fn the_tree_shows_a_session_and_its_subscription_while_the_stream_is_open() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let session = gw
            .open_inline(prism::proto::config::v1::AccessPattern::Pubsub, "memory")
            .await;
        // An idle session is listed, without an actor.
        let node = get_json(&gw, &format!("/admin/actors/{}", session.session_id)).await;
        assert_eq!(node["status"], "idle", "{node}");
        let stream = gw.subscribe(&session.session_token, "admin.>").await;

        let tree = get_json(&gw, "/admin/actors").await;
        let mut all = Vec::new();
        ids(&tree["tree"], &mut all);
        assert!(all.contains(&session.session_id), "{all:?}");
        let node = get_json(&gw, &format!("/admin/actors/{}", session.session_id)).await;
        assert_eq!(node["kind"], "session");
        assert_eq!(node["status"], "running", "activated for its child: {node}");
        let children = node["children"].as_array().unwrap();
        assert_eq!(children.len(), 1, "{node}");
        let sub = &children[0];
        assert_eq!(sub["kind"], "pub_sub_subscription");
        assert_eq!(sub["parent"], session.session_id.as_str());
        assert_eq!(sub["state"]["topic_pattern"], "admin.>");
        let sub_id = sub["id"].as_str().unwrap().to_string();

        // Filters: this namespace's subscriptions, as a flat page.
        let page = get_json(
            &gw,
            "/admin/actors?namespace=default&kind=pub_sub_subscription",
        )
        .await;
        assert_eq!(page["total"], 1, "{page}");
        assert_eq!(page["nodes"][0]["id"], sub_id.as_str());
        let page = get_json(&gw, "/admin/actors?kind=session&limit=1").await;
        assert_eq!(page["nodes"].as_array().unwrap().len(), 1, "{page}");

        // The same over gRPC, on the admin listener.
        let mut client = AdminServiceClient::new(gw.admin_channel().await);
        let mut req = tonic::Request::new(admin::GetActorRequest {
            id: session.session_id.clone(),
        });
        req.metadata_mut()
            .insert("authorization", bearer().parse().unwrap());
        let node = client.get_actor(req).await.unwrap().into_inner();
        assert_eq!(node.kind, "session");
        assert_eq!(node.children[0].id, sub_id);

        // The stream ends: the subscription leaves the tree.
        drop(stream);
        wait_until("the subscription leaves the tree", || async {
            let (status, _) = http(
                gw.admin_addr,
                "GET",
                &format!("/admin/actors/{sub_id}"),
                &[("Authorization", &bearer())],
            )
            .await;
            status == 404
        })
        .await;
        // With no child left, its actor is retired: idle again.
        wait_until("the session's actor is retired", || async {
            let node = get_json(&gw, &format!("/admin/actors/{}", session.session_id)).await;
            node["status"] == "idle"
        })
        .await;

        // An administrator closes the session: it leaves the tree too.
        let (status, body) = http(
            gw.admin_addr,
            "POST",
            &format!("/admin/sessions/{}/close", session.session_id),
            &[("Authorization", &bearer())],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let closed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(closed["closed"], true);
        wait_until("the session leaves the tree", || async {
            let (status, _) = http(
                gw.admin_addr,
                "GET",
                &format!("/admin/actors/{}", session.session_id),
                &[("Authorization", &bearer())],
            )
            .await;
            status == 404
        })
        .await;
        gw.stop().await;
    });
}

#[test]
fn a_restarted_actor_shows_its_restart() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let session = gw
            .open_inline(prism::proto::config::v1::AccessPattern::Pubsub, "memory")
            .await;
        let _stream = gw.subscribe(&session.session_token, "crash.me").await;
        let page = get_json(&gw, "/admin/actors?kind=pub_sub_subscription").await;
        let id = page["nodes"][0]["id"].as_str().unwrap().to_string();
        assert_eq!(page["nodes"][0]["restarts"], 0);
        gw.gateway.drill(&id, prism::actors::Fault::Panic).unwrap();
        wait_until("the supervisor restarts the actor", || async {
            let node = get_json(&gw, &format!("/admin/actors/{id}")).await;
            node["restarts"] == 1 && node["status"] == "running"
        })
        .await;
        gw.stop().await;
    });
}

#[test]
fn a_stuck_actor_shows_the_messages_waiting_in_its_mailbox() {
    block_on_multi_thread(async {
        let mut config = common::test_config();
        // Slow supervision: the stalled actor is not restarted meanwhile.
        config.server.supervision_interval = std::time::Duration::from_secs(600);
        let gw = TestGateway::start_with(config).await;
        let session = gw.open("user-profiles").await;
        let id = session.session_id;
        let node = get_json(&gw, &format!("/admin/actors/{id}")).await;
        assert_eq!(node["mailbox_depth"], 0, "an idle actor: {node}");

        // The first stall is taken and blocks the actor; three more wait.
        for _ in 0..4 {
            gw.gateway.drill(&id, Fault::Stall).unwrap();
        }
        // Observing asks the actor too: that request waits behind them, and
        // the node is described from the actor's saved state.
        let node = get_json(&gw, &format!("/admin/actors/{id}")).await;
        assert_eq!(node["status"], "failed", "{node}");
        assert_eq!(node["mailbox_depth"], 4, "{node}");
        let ns = get_json(&gw, "/admin/actors/namespace/default").await;
        assert_eq!(ns["status"], "running", "{ns}");
        assert_eq!(ns["mailbox_depth"], 0, "{ns}");
        gw.stop().await;
    });
}

#[test]
fn readyz_fails_while_a_backend_is_down_and_recovers() {
    block_on_multi_thread(async {
        let mut redis = Server::start(Kind::RedisVolatile).await;
        let yaml = format!(
            r#"
server: {{ admin_token: {ADMIN_TOKEN}, supervision_interval: 100ms, actor_threads: 2 }}
backends:
  cache: {{ type: redis, url: "{url}", pool: {pool} }}
namespaces:
  ready:
    allowed_backends: [cache]
    allowed_patterns: [key_value]
"#,
            url = redis.url(),
            pool = common::kv::FAST_POOL
        );
        let config = prism::config::GatewayConfig::from_yaml(
            &yaml,
            &prism::config::Source::Inline,
            &[("_", "_"); 0],
        )
        .unwrap();
        let gw = TestGateway::start_with(config).await;
        gw.wait_backend_up("cache").await;
        let readyz = || async {
            http(
                gw.admin_addr,
                "GET",
                "/readyz",
                &[("Authorization", &bearer())],
            )
            .await
        };
        assert_eq!(readyz().await.0, 200);

        redis.kill9().await;
        wait_until("readyz reports the backend down", || async {
            let (status, body) = readyz().await;
            status == 503 && body.contains("backend cache")
        })
        .await;

        redis.restart().await;
        wait_until("readyz recovers", || async { readyz().await.0 == 200 }).await;
        gw.stop().await;
    });
}

#[test]
fn metrics_move_with_calls_and_parse_as_prometheus_text() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let scrape = || async {
            let (status, body) = http(
                gw.admin_addr,
                "GET",
                "/metrics",
                &[("Authorization", &bearer())],
            )
            .await;
            assert_eq!(status, 200, "{body}");
            parse_exposition(&body)
        };
        let ok_set = "prism_requests_total{namespace=\"default\",service=\"prism.keyvalue.v1.KeyValueService\",method=\"Set\",code=\"OK\"}";
        let denied = "prism_requests_total{namespace=\"\",service=\"prism.keyvalue.v1.KeyValueService\",method=\"Get\",code=\"UNAUTHENTICATED\"}";
        let before = scrape().await;
        let session = gw
            .open_inline(prism::proto::config::v1::AccessPattern::KeyValue, "memory")
            .await;
        let mut kv =
            prism::proto::keyvalue::v1::key_value_service_client::KeyValueServiceClient::new(
                gw.channel.clone(),
            );
        for i in 0..3 {
            kv.set(prism::proto::keyvalue::v1::SetRequest {
                session_token: session.session_token.clone(),
                key: format!("k{i}"),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let err = kv
            .get(prism::proto::keyvalue::v1::GetRequest {
                session_token: "bogus".into(),
                key: "k0".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);

        let after = scrape().await;
        let delta =
            |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
        assert_eq!(delta(ok_set), 3.0, "{after:?}");
        assert_eq!(delta(denied), 1.0);
        let count = ok_set.replace(
            "prism_requests_total",
            "prism_request_duration_seconds_count",
        );
        assert_eq!(delta(&count), 3.0);
        let inf = ok_set
            .replace(
                "prism_requests_total",
                "prism_request_duration_seconds_bucket",
            )
            .replace("{namespace=", "{le=\"+Inf\",namespace=");
        assert_eq!(delta(&inf), 3.0);
        assert!(after["prism_sessions_active{namespace=\"default\"}"] >= 1.0);
        assert!(after["prism_bytes_received_total{namespace=\"default\"}"] > 0.0);
        assert!(after.contains_key("prism_backend_up{backend=\"memory\",type=\"memory\"}"));
        gw.stop().await;
    });
}
