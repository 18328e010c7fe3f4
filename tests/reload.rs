//! Config reload without a restart: through the admin endpoint and SIGHUP,
//! a changed file's live parts (API keys, named configs, limits, namespace
//! rules, outbox relays, the admin token) are in use at once while open
//! sessions go on; what cannot change live (a listen address, backends) is
//! reported and keeps running; a file that does not load or validate is
//! refused and the running config stays. Instances of a cluster are
//! reloaded one by one.

mod common;

use std::path::{Path, PathBuf};

use common::{
    api_key_request, assert_error, http, kv::Kv, test_config_yaml, TestGateway, ADMIN_TOKEN,
    TEST_KEY,
};
use prism::{
    error::Service,
    proto::config::v1::{config_service_client::ConfigServiceClient, ListConfigsRequest},
    runtime::block_on_multi_thread,
};
use tonic::Code;

const NEW_KEY: &str = "reloaded-key";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "prism-reload-{name}-{}-{}",
        std::process::id(),
        common::kv::run_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("prism.yaml")
}

/// `yaml` with a second API key in `default`, a named config
/// `reloaded-kv`, `max_key_bytes: 16` and another admin token.
fn changed(yaml: &str) -> String {
    yaml.replace(
        "      - { name: test, sha256:",
        &format!(
            "      - {{ name: reloaded, sha256: \"{}\" }}\n      - {{ name: test, sha256:",
            prism::auth::api_key_digest(NEW_KEY)
        ),
    )
    .replace(
        "configs:\n",
        "configs:\n  reloaded-kv: { namespace: default, pattern: key_value, backend: memory }\n",
    )
    .replace(
        &format!("admin_token: {ADMIN_TOKEN}"),
        "admin_token: rotated-admin-token\nlimits:\n  max_key_bytes: 16",
    )
}

/// Writes `yaml` to `file`, then reloads `gw` through the admin endpoint.
async fn rewrite(gw: &TestGateway, file: &Path, yaml: &str, token: &str) -> (u16, String) {
    std::fs::write(file, yaml).unwrap();
    reload(gw, token).await
}

async fn reload(gw: &TestGateway, token: &str) -> (u16, String) {
    http(
        gw.admin_addr,
        "POST",
        "/admin/reload",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await
}

async fn kv(gw: &TestGateway, key: &str, config: &str) -> Result<Kv, tonic::Status> {
    let token = gw
        .sessions()
        .create_session(api_key_request(key, config))
        .await?
        .into_inner()
        .session_token;
    Ok(Kv {
        client: common::kv::kv_client(gw.channel.clone()),
        token,
        backend: config.into(),
    })
}

#[test]
fn the_admin_endpoint_applies_live_changes_and_keeps_sessions() {
    block_on_multi_thread(async {
        let file = scratch("admin");
        let yaml = test_config_yaml();
        assert!(yaml.contains("      - { name: test, sha256:"), "{yaml}");
        std::fs::write(&file, &yaml).unwrap();
        let gw = TestGateway::start_from_file(&file).await;
        let listen = gw.gateway.config.load().server.listen;

        let before = kv(&gw, TEST_KEY, "user-profiles").await.unwrap();
        before.set("a-key-longer-than-sixteen", b"v").await.unwrap();
        let err = kv(&gw, NEW_KEY, "user-profiles").await.err().unwrap();
        assert_error(
            &err,
            Code::Unauthenticated,
            "INVALID_API_KEY",
            Service::Session,
        );

        // A changed file, and an address that cannot change live.
        let moved = changed(&yaml).replace(
            "  shutdown_grace: 5s",
            "  shutdown_grace: 5s\n  listen: 127.0.0.1:1",
        );
        let (status, body) = rewrite(&gw, &file, &moved, ADMIN_TOKEN).await;
        assert_eq!(status, 200, "{body}");
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        let listed = |what: &str| -> Vec<String> {
            report[what]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        for applied in [
            "server.admin_token",
            "limits",
            "configs",
            "namespaces.default",
        ] {
            assert!(listed("applied").contains(&applied.to_string()), "{body}");
        }
        assert_eq!(
            listed("restart_required"),
            vec!["server (listen)"],
            "{body}"
        );

        // The session opened before goes on, under the new limit.
        before
            .set("short", b"v")
            .await
            .expect("the old session still works");
        let err = before
            .set("a-key-longer-than-sixteen", b"v")
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::InvalidArgument,
            "KEY_TOO_LARGE",
            Service::KeyValue,
        );
        // The new key and the new named config.
        let after = kv(&gw, NEW_KEY, "reloaded-kv")
            .await
            .expect("new key, new config");
        after.set("k", b"v").await.unwrap();
        let names: Vec<String> = ConfigServiceClient::new(gw.channel.clone())
            .list_configs(ListConfigsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .configs
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert!(names.contains(&"reloaded-kv".to_string()), "{names:?}");
        // The admin token rotated; the listen address did not move.
        let (status, _) = http(
            gw.admin_addr,
            "GET",
            "/readyz",
            &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        )
        .await;
        assert_eq!(status, 403);
        assert_eq!(gw.gateway.config.load().server.listen, listen);

        // A file that does not parse, then one that does not validate:
        // refused, and what runs stays.
        let (status, body) = rewrite(&gw, &file, "server: [", "rotated-admin-token").await;
        assert_eq!(status, 422, "{body}");
        assert!(body.contains("running config stays"), "{body}");
        let broken = changed(&yaml).replace(
            "allowed_backends: [memory]",
            "allowed_backends: [no-such-backend]",
        );
        let (status, body) = rewrite(&gw, &file, &broken, "rotated-admin-token").await;
        assert_eq!(status, 422, "{body}");
        assert!(body.contains("no-such-backend"), "{body}");
        kv(&gw, NEW_KEY, "reloaded-kv")
            .await
            .expect("the running config still has the new key");
        kv(&gw, common::OTHER_KEY, "other-kv")
            .await
            .expect("and the namespace the refused file broke");

        // Back to the first file: the key it lacks opens no new session,
        // the session that key opened runs on.
        let (status, body) = rewrite(&gw, &file, &yaml, "rotated-admin-token").await;
        assert_eq!(status, 200, "{body}");
        let err = kv(&gw, NEW_KEY, "user-profiles").await.err().unwrap();
        assert_error(
            &err,
            Code::Unauthenticated,
            "INVALID_API_KEY",
            Service::Session,
        );
        after
            .set("k", b"v2")
            .await
            .expect("its open session runs on");

        gw.stop().await;
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    });
}

#[test]
fn a_gateway_from_an_inline_config_refuses_to_reload() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let (status, body) = reload(&gw, ADMIN_TOKEN).await;
        assert_eq!(status, 422, "{body}");
        assert!(body.contains("inline config"), "{body}");
        gw.stop().await;
    });
}

/// Waits (bounded) for a log line containing `needle`.
async fn logged(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>, needle: &str) -> String {
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.recv().await {
            if line.contains(needle) {
                return line;
            }
        }
        panic!("the gateway's log ended before `{needle}`");
    })
    .await
    .unwrap_or_else(|_| panic!("no `{needle}` in the gateway's log"))
}

#[test]
fn sighup_reloads_the_running_binary() {
    block_on_multi_thread(async {
        let file = scratch("sighup");
        let yaml = test_config_yaml();
        std::fs::write(&file, &yaml).unwrap();
        // RUST_LOG empty: the file's `server.log_level` (absent: info) rules.
        let (child, addr, mut log) = common::spawn_serve_logged(
            &["--config".as_ref(), file.as_os_str()],
            &[("RUST_LOG", "".as_ref())],
        )
        .await;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let sessions_channel = channel.clone();
        let mut sessions =
            prism::proto::session::v1::session_service_client::SessionServiceClient::new(channel);
        let opened = sessions
            .create_session(api_key_request(TEST_KEY, "user-profiles"))
            .await
            .expect("a session before the reload");
        let err = sessions
            .create_session(api_key_request(NEW_KEY, "user-profiles"))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "INVALID_API_KEY",
            Service::Session,
        );

        let debug = changed(&yaml).replace(
            "  shutdown_grace: 5s",
            "  shutdown_grace: 5s\n  log_level: info,prism=debug",
        );
        std::fs::write(&file, debug).unwrap();
        hangup(&child);
        let line = logged(&mut log, "config reloaded").await;
        assert!(
            line.contains("configs") && line.contains("server.log_level"),
            "{line}"
        );
        // Debug lines now: a PubSub subscription's end is logged at debug.
        let pubsub = sessions
            .create_session(common::inline_request(
                NEW_KEY,
                prism::proto::config::v1::AccessPattern::Pubsub,
                "memory",
            ))
            .await
            .unwrap()
            .into_inner()
            .session_token;
        let stream = prism::proto::pubsub::v1::pub_sub_service_client::PubSubServiceClient::new(
            sessions_channel.clone(),
        )
        .subscribe(prism::proto::pubsub::v1::SubscribeRequest {
            session_token: pubsub,
            topic_pattern: "reload.debug".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        drop(stream);
        logged(&mut log, "pubsub subscription ends").await;
        sessions
            .create_session(api_key_request(NEW_KEY, "reloaded-kv"))
            .await
            .expect("the new key and config after SIGHUP");
        let token = opened.into_inner().session_token;
        sessions
            .heartbeat(prism::proto::session::v1::HeartbeatRequest {
                session_token: token,
            })
            .await
            .expect("the session opened before is still open");

        // A broken file on SIGHUP: logged, the gateway serves on.
        std::fs::write(&file, "namespaces: {").unwrap();
        hangup(&child);
        logged(&mut log, "config reload refused").await;
        sessions
            .create_session(api_key_request(NEW_KEY, "reloaded-kv"))
            .await
            .expect("the running config stays");
        drop(child);
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    });
}

/// SIGHUP to the child this test started (by its PID, never by name).
fn hangup(child: &tokio::process::Child) {
    let pid = child.id().expect("the gateway runs");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// One cluster instance's config: sessions in the machine's Redis.
fn cluster_yaml(ns: &str, extra_config: bool) -> String {
    let extra = if extra_config {
        format!("  added-{ns}: {{ namespace: {ns}, pattern: key_value, backend: mem }}\n")
    } else {
        String::new()
    };
    format!(
        r#"
server:
  shutdown_grace: 2s
  supervision_interval: 100ms
  actor_threads: 2
  admin_token: {ADMIN_TOKEN}
sessions:
  store: redis
  url: "{redis}"
  flush_interval: 100ms
backends:
  mem: {{ type: memory }}
namespaces:
  {ns}:
    allowed_backends: [mem]
    allowed_patterns: [key_value]
    api_keys:
      - {{ name: test, sha256: "{key}" }}
configs:
  kv-{ns}: {{ namespace: {ns}, pattern: key_value, backend: mem }}
{extra}"#,
        redis = common::kv::redis_url(),
        key = prism::auth::api_key_digest(TEST_KEY),
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_cluster_reloads_one_instance_at_a_time() {
    block_on_multi_thread(async {
        let ns = format!("r{}", common::kv::run_id());
        let files = [scratch("cluster-a"), scratch("cluster-b")];
        for f in &files {
            write(f, &cluster_yaml(&ns, false));
        }
        let a = TestGateway::start_from_file(&files[0]).await;
        let b = TestGateway::start_from_file(&files[1]).await;
        let session = kv(&a, TEST_KEY, &format!("kv-{ns}")).await.unwrap();
        session.set("before", b"v").await.unwrap();
        let added = format!("added-{ns}");

        // Instance a first: it serves the new config, b does not yet, and
        // the session opened on a works on both throughout.
        for f in &files {
            write(f, &cluster_yaml(&ns, true));
        }
        let (status, body) = reload(&a, ADMIN_TOKEN).await;
        assert_eq!(status, 200, "{body}");
        kv(&a, TEST_KEY, &added)
            .await
            .expect("a has the new config");
        let err = kv(&b, TEST_KEY, &added).await.err().unwrap();
        assert_error(&err, Code::NotFound, "CONFIG_NOT_FOUND", Service::Session);
        let on_b = Kv {
            client: common::kv::kv_client(b.channel.clone()),
            token: session.token.clone(),
            backend: session.backend.clone(),
        };
        on_b.set("between", b"v").await.expect("a's session on b");

        // Then b.
        let (status, body) = reload(&b, ADMIN_TOKEN).await;
        assert_eq!(status, 200, "{body}");
        kv(&b, TEST_KEY, &added)
            .await
            .expect("b has the new config");
        session.set("after", b"v").await.unwrap();
        on_b.set("after", b"v").await.unwrap();

        a.stop().await;
        b.stop().await;
        for f in &files {
            let _ = std::fs::remove_dir_all(f.parent().unwrap());
        }
    });
}

#[test]
fn a_narrowed_namespace_reaches_open_sessions_at_their_next_call() {
    block_on_multi_thread(async {
        let file = scratch("narrow");
        let yaml = test_config_yaml();
        std::fs::write(&file, &yaml).unwrap();
        let gw = TestGateway::start_from_file(&file).await;
        let open = kv(&gw, common::OTHER_KEY, "other-kv").await.unwrap();
        open.set("k", b"v").await.unwrap();

        // Namespace `other` no longer allows KeyValue (nor the named
        // config the session was opened with).
        let narrowed = yaml
            .replace(
                "    allowed_backends: [memory]\n    allowed_patterns: [key_value]",
                "    allowed_backends: [memory]\n    allowed_patterns: [queue]",
            )
            .replace(
                "  other-kv: { namespace: other, pattern: key_value, backend: memory }\n",
                "",
            );
        assert_ne!(narrowed, yaml);
        let (status, body) = rewrite(&gw, &file, &narrowed, ADMIN_TOKEN).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("namespaces.other"), "{body}");
        let err = open.set("k", b"v2").await.unwrap_err();
        assert_error(
            &err,
            Code::PermissionDenied,
            "PATTERN_NOT_ALLOWED",
            Service::KeyValue,
        );

        // Widened again: the same session goes on.
        let (status, body) = rewrite(&gw, &file, &yaml, ADMIN_TOKEN).await;
        assert_eq!(status, 200, "{body}");
        open.set("k", b"v3").await.expect("allowed again");
        gw.stop().await;
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    });
}

/// The embedded default with its SQLite file in `dir`; with or without its
/// `order-events` relay.
fn default_yaml(dir: &Path, relay: bool) -> String {
    let yaml = prism::config::EMBEDDED_DEFAULT.replace(
        "${PRISM_SQLITE_PATH:-prism-data/orders.db}",
        &dir.join("orders.db").display().to_string(),
    );
    if relay {
        return yaml;
    }
    let start = yaml.find("    relays:\n").expect("the default has relays");
    let end = start + yaml[start..].find("    api_keys:").unwrap();
    format!("{}{}", &yaml[..start], &yaml[end..])
}

#[test]
fn relays_start_and_stop_on_reload() {
    use futures::StreamExt;
    use prism::proto::{pubsub::v1 as ps, transact::v1 as tx};
    block_on_multi_thread(async {
        let file = scratch("relays");
        let dir = file.parent().unwrap().to_path_buf();
        write(&file, &default_yaml(&dir, false));
        let gw = TestGateway::start_from_file(&file).await;
        gw.wait_backend_up("orders-sqlite").await;
        assert!(gw.gateway.supervisors.relays().is_empty());
        let token = |config: &'static str| {
            let mut sessions = gw.sessions();
            async move {
                sessions
                    .create_session(api_key_request("prism-dev-key", config))
                    .await
                    .unwrap()
                    .into_inner()
                    .session_token
            }
        };
        let mut events = ps::pub_sub_service_client::PubSubServiceClient::new(gw.channel.clone())
            .subscribe(ps::SubscribeRequest {
                session_token: token("events").await,
                topic_pattern: "events.orders".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        // A mailbox message while no relay runs: it waits in the mailbox.
        let written = tx::transact_service_client::TransactServiceClient::new(gw.channel.clone())
            .write(tx::WriteRequest {
                session_token: token("orders-db").await,
                mailbox: Some(tx::MailboxWrite {
                    mailbox_id: "order-events".into(),
                    message: b"written before the relay".to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let sequence = written.mailbox_result.unwrap().sequence;

        // The relay added: it starts before the first unprocessed row.
        write(&file, &default_yaml(&dir, true));
        let (status, body) = reload(&gw, "prism-dev-admin").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("relay/default/order-events (started)"),
            "{body}"
        );
        let event = tokio::time::timeout(std::time::Duration::from_secs(20), events.next())
            .await
            .expect("the added relay publishes the waiting message")
            .unwrap()
            .unwrap();
        assert_eq!(event.payload, b"written before the relay");
        assert_eq!(event.metadata["prism-sequence"], sequence.to_string());

        // Removed again: stopped and gone from the tree.
        write(&file, &default_yaml(&dir, false));
        let (status, body) = reload(&gw, "prism-dev-admin").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("relay/default/order-events (stopped)"),
            "{body}"
        );
        assert!(gw.gateway.supervisors.relays().is_empty());
        let tree = gw.gateway.observe().await.unwrap();
        assert!(tree.find("relay/default/order-events").is_none());
        gw.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    });
}
