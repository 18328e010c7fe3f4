//! The cache in front of KeyValue (`cache: { enabled: true, ... }` on a
//! named config), over the machine's Postgres: reads are served from it
//! (a write that bypasses the gateway is not seen until the ttl), every
//! write through the gateway — through any config of the namespace —
//! drops or (write-through) replaces the key, its figures are in
//! `/metrics` and the admin tree, and across a cluster a write on one
//! instance reaches the other's cache as soon as the announcement is heard.

mod common;

use std::time::Duration;

use common::{
    assert_error,
    kv::Kv,
    servers::{Kind, Server},
    TestGateway, TEST_KEY,
};
use prism::{
    config::{GatewayConfig, Source},
    error::Service,
    proto::config::v1 as cfg,
};
use tonic::Code;

/// Namespace `ns` on Postgres: `cached` (look-aside), `through`
/// (write-through), `plain` (no cache); sessions in `store` (its kind and
/// URL) when given.
fn config(ns: &str, store: Option<(&str, String)>) -> GatewayConfig {
    let sessions = match store {
        None => String::new(),
        Some((store, url)) => format!(
            "sessions: {{ store: {store}, url: \"{url}\", flush_interval: 100ms, timeout: 500ms }}"
        ),
    };
    let yaml = format!(
        r#"
server: {{ shutdown_grace: 2s, supervision_interval: 100ms, actor_threads: 2, admin_token: "{admin}" }}
{sessions}
backends:
  pg: {{ type: postgres, url: "{pg}" }}
namespaces:
  {ns}:
    allowed_backends: [pg]
    allowed_patterns: [key_value]
    api_keys: [{{ name: test, sha256: "{key}" }}]
configs:
  cached: {{ namespace: {ns}, pattern: key_value, backend: pg, cache: {{ enabled: true, ttl: 1h, max_entries: 1000, max_bytes: 1048576 }} }}
  through: {{ namespace: {ns}, pattern: key_value, backend: pg, cache: {{ enabled: true, strategy: write_through, ttl: 1h }} }}
  plain: {{ namespace: {ns}, pattern: key_value, backend: pg }}
"#,
        pg = common::kv::database_url(),
        key = prism::auth::api_key_digest(TEST_KEY),
        admin = common::ADMIN_TOKEN,
    );
    GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).expect("config parses")
}

fn store_url(store: &str) -> String {
    match store {
        "postgres" => common::kv::database_url(),
        _ => common::kv::redis_url(),
    }
}

/// A gateway on `config`, once its Postgres backend is up.
async fn start(config: GatewayConfig) -> TestGateway {
    let gw = TestGateway::start_with(config).await;
    let mut health = gw
        .gateway
        .backends
        .get("pg")
        .expect("pg")
        .health
        .subscribe();
    tokio::time::timeout(
        Duration::from_secs(30),
        health.wait_for(|s| *s == prism::backends::HealthState::Up),
    )
    .await
    .expect("Postgres comes up")
    .expect("the pool actor runs");
    gw
}

async fn kv(gw: &TestGateway, config: &str) -> Kv {
    let token = gw
        .sessions()
        .create_session(common::api_key_request(TEST_KEY, config))
        .await
        .unwrap_or_else(|e| panic!("session for {config}: {e:?}"))
        .into_inner()
        .session_token;
    Kv {
        client: common::kv::kv_client(gw.channel.clone()),
        token,
        backend: config.to_string(),
    }
}

/// Writes `value` under `key` straight into Postgres, as a program that
/// bypasses the gateway would.
async fn bypass(pool: &sqlx::AnyPool, ns: &str, key: &str, value: &[u8]) {
    let updated = sqlx::query("UPDATE prism_kv SET value = $1 WHERE namespace = $2 AND key = $3")
        .bind(value.to_vec())
        .bind(ns)
        .bind(key.as_bytes().to_vec())
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 1);
}

async fn forget(pool: &sqlx::AnyPool, ns: &str) {
    sqlx::query("DELETE FROM prism_kv WHERE namespace = $1")
        .bind(ns)
        .execute(pool)
        .await
        .unwrap();
}

fn figures(gw: &TestGateway, config: &str) -> prism::services::kv_cache::CacheFigures {
    gw.gateway
        .kv_caches
        .figures()
        .into_iter()
        .find(|f| f.config == config)
        .unwrap_or_else(|| panic!("no cache for {config}"))
}

#[test]
fn reads_are_served_from_the_cache_and_gateway_writes_reach_it() {
    prism::runtime::block_on_multi_thread(async {
        let ns = format!("kc{}", common::kv::run_id());
        let pool = common::outbox::pg().await;
        let gw = start(config(&ns, None)).await;
        let cached = kv(&gw, "cached").await;
        let through = kv(&gw, "through").await;
        let plain = kv(&gw, "plain").await;

        // Look-aside: the first read fills, the next is served from the
        // cache — so a write that bypasses the gateway is not seen.
        let v1 = cached.set("k", b"v1").await.unwrap().version;
        assert_eq!(cached.value("k").await.unwrap(), b"v1");
        bypass(&pool, &ns, "k", b"bypassed").await;
        let hit = cached.get("k").await.unwrap();
        assert_eq!((hit.value.as_slice(), hit.version), (&b"v1"[..], v1));
        let f = figures(&gw, "cached");
        assert_eq!((f.lru.hits, f.lru.misses, f.lru.entries), (1, 1, 1));

        // A write through another config of the namespace drops the key:
        // the next read goes to the backend.
        plain.set("k", b"v2").await.unwrap();
        assert_eq!(cached.value("k").await.unwrap(), b"v2");
        plain.delete("k").await.unwrap();
        assert_eq!(cached.value("k").await, None);
        // A key that is not found is not cached.
        plain.set("k", b"v3").await.unwrap();
        assert_eq!(cached.value("k").await.unwrap(), b"v3");

        // Write-through: the written value is in the cache at once.
        let v4 = through.set("w", b"v4").await.unwrap().version;
        let before = figures(&gw, "through").lru.hits;
        let got = through.get("w").await.unwrap();
        assert_eq!((got.value.as_slice(), got.version), (&b"v4"[..], v4));
        assert_eq!(figures(&gw, "through").lru.hits, before + 1);
        // ... and in no other config's cache it would be stale in.
        assert_eq!(cached.value("w").await.unwrap(), b"v4");

        // Batch reads mix hits and misses; batch writes and transactions
        // invalidate every key they touch.
        plain.set("x", b"x1").await.unwrap();
        let items = cached
            .client
            .clone()
            .batch_get(prism::proto::keyvalue::v1::BatchGetRequest {
                session_token: cached.token.clone(),
                keys: vec!["w".into(), "x".into(), "missing".into()],
            })
            .await
            .unwrap()
            .into_inner()
            .items;
        let seen: Vec<_> = items
            .iter()
            .map(|i| (i.found, i.value.as_slice()))
            .collect();
        assert_eq!(
            seen,
            vec![(true, &b"v4"[..]), (true, &b"x1"[..]), (false, &b""[..])]
        );
        plain
            .client
            .clone()
            .batch_set(prism::proto::keyvalue::v1::BatchSetRequest {
                session_token: plain.token.clone(),
                entries: vec![
                    prism::proto::keyvalue::v1::Entry {
                        key: "w".into(),
                        value: b"w2".to_vec(),
                        ttl: None,
                    },
                    prism::proto::keyvalue::v1::Entry {
                        key: "x".into(),
                        value: b"x2".to_vec(),
                        ttl: None,
                    },
                ],
                idempotency_token: None,
            })
            .await
            .unwrap();
        assert_eq!(cached.value("w").await.unwrap(), b"w2");
        assert_eq!(cached.value("x").await.unwrap(), b"x2");
        // Expire changes what Get answers (the ttl): it invalidates too.
        plain
            .client
            .clone()
            .expire(prism::proto::keyvalue::v1::ExpireRequest {
                session_token: plain.token.clone(),
                key: "x".into(),
                ttl: Some(common::kv::dur(600_000)),
            })
            .await
            .unwrap();
        assert!(cached.get("x").await.unwrap().ttl.is_some());

        // The figures are in /metrics and the admin tree.
        let metrics = common::scrape_metrics(gw.admin_addr).await;
        let labels =
            format!(r#"{{config="cached",namespace="{ns}",backend="pg",strategy="look_aside"}}"#);
        let hits = metrics[&format!("prism_kv_cache_hits_total{labels}")];
        assert!(hits >= 2.0, "{hits}");
        assert!(metrics[&format!("prism_kv_cache_invalidations_total{labels}")] >= 4.0);
        assert!(metrics.contains_key(&format!("prism_kv_cache_entries{labels}")));
        let (status, body) = common::http(
            gw.admin_addr,
            "GET",
            "/admin/actors",
            &[("X-Admin-Token", common::ADMIN_TOKEN)],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let tree: serde_json::Value = serde_json::from_str(&body).unwrap();
        let node = tree["tree"]["children"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == format!("namespace/{ns}"))
            .unwrap_or_else(|| panic!("no namespace node in {body}"));
        let caches = node["state"]["kv_caches"].as_array().expect("kv_caches");
        assert!(
            caches
                .iter()
                .any(|c| c["config"] == "cached" && c["hits"].as_u64() >= Some(2)),
            "{caches:?}"
        );

        gw.stop().await;
        forget(&pool, &ns).await;
    });
}

#[test]
fn a_client_cannot_turn_a_cache_on_inline() {
    prism::runtime::block_on_multi_thread(async {
        let ns = format!("kc{}", common::kv::run_id());
        let gw = start(config(&ns, None)).await;
        let mut request = common::api_key_request(TEST_KEY, "");
        request.config = Some(
            prism::proto::session::v1::create_session_request::Config::InlineConfig(
                cfg::ClientConfig {
                    pattern: cfg::AccessPattern::KeyValue as i32,
                    backend: Some(cfg::BackendConfig {
                        name: "pg".into(),
                        ..Default::default()
                    }),
                    cache: Some(cfg::CacheConfig {
                        enabled: true,
                        max_entries: 1_000_000,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        );
        let err = gw.sessions().create_session(request).await.unwrap_err();
        assert_error(
            &err,
            Code::PermissionDenied,
            "CACHE_NOT_ALLOWED_INLINE",
            Service::Session,
        );
        gw.stop().await;
    });
}

/// Two instances sharing sessions (and announcements) in `store`.
async fn two_instances_agree(store: &str) {
    let ns = format!("kc{}", common::kv::run_id());
    let pool = common::outbox::pg().await;
    let a = start(config(&ns, Some((store, store_url(store))))).await;
    let b = start(config(&ns, Some((store, store_url(store))))).await;
    for gw in [&a, &b] {
        common::wait_until("the instance hears cache announcements", || async {
            gw.gateway.kv_caches.hearing()
        })
        .await;
    }
    let on_a = kv(&a, "cached").await;
    let on_b = kv(&b, "cached").await;
    on_a.set("k", b"v1").await.unwrap();
    assert_eq!(on_a.value("k").await.unwrap(), b"v1");
    // A is serving from its cache now: a bypassing write is not seen.
    bypass(&pool, &ns, "k", b"bypassed").await;
    assert_eq!(on_a.value("k").await.unwrap(), b"v1");

    // A write on B: once A has heard it, A's next read is the new value.
    let heard = figures(&a, "cached").invalidations;
    on_b.set("k", b"v2").await.unwrap();
    let written = tokio::time::Instant::now();
    common::wait_until("instance A hears B's write", || async {
        figures(&a, "cached").invalidations > heard
    })
    .await;
    println!(
        "{store}: B's write reached A's cache within {:?} of its reply",
        written.elapsed()
    );
    assert_eq!(on_a.value("k").await.unwrap(), b"v2");
    // Write-through on B replaces B's entry; A drops its own.
    let on_b_through = kv(&b, "through").await;
    let on_a_through = kv(&a, "through").await;
    assert_eq!(on_a_through.value("k").await.unwrap(), b"v2");
    let heard = figures(&a, "through").invalidations;
    on_b_through.set("k", b"v3").await.unwrap();
    common::wait_until("instance A hears B's write-through", || async {
        figures(&a, "through").invalidations > heard
    })
    .await;
    assert_eq!(on_a_through.value("k").await.unwrap(), b"v3");
    assert_eq!(on_a.value("k").await.unwrap(), b"v3");

    a.stop().await;
    b.stop().await;
    forget(&pool, &ns).await;
}

#[test]
fn a_write_on_one_instance_reaches_the_caches_of_the_others() {
    prism::runtime::block_on_multi_thread(async {
        for store in ["redis", "postgres"] {
            tokio::time::timeout(Duration::from_secs(120), two_instances_agree(store))
                .await
                .unwrap_or_else(|_| panic!("{store}: timed out"));
        }
    });
}

#[test]
fn an_instance_that_cannot_hear_the_others_serves_nothing_from_its_caches() {
    prism::runtime::block_on_multi_thread(async {
        let ns = format!("kc{}", common::kv::run_id());
        let pool = common::outbox::pg().await;
        // Durable, so the session outlives the restart.
        let mut store = Server::start(Kind::RedisDurable).await;
        let gw = start(config(&ns, Some(("redis", store.url())))).await;
        let hearing = || async { gw.gateway.kv_caches.hearing() };
        common::wait_until("the instance hears announcements", hearing).await;
        let cached = kv(&gw, "cached").await;
        cached.set("k", b"v1").await.unwrap();
        assert_eq!(cached.value("k").await.unwrap(), b"v1");
        bypass(&pool, &ns, "k", b"bypassed").await;
        assert_eq!(
            cached.value("k").await.unwrap(),
            b"v1",
            "served from the cache"
        );

        // The store goes: writes elsewhere could not be heard, so the cache
        // is emptied and bypassed — reads are the backend's.
        store.kill9().await;
        common::wait_until("the instance stops hearing", || async {
            !gw.gateway.kv_caches.hearing()
        })
        .await;
        assert_eq!(cached.value("k").await.unwrap(), b"bypassed");
        assert_eq!(figures(&gw, "cached").lru.entries, 0);
        // A write still applies; the announcement it could not make is
        // counted.
        cached.set("k", b"v2").await.unwrap();
        assert_eq!(
            gw.gateway
                .kv_caches
                .unannounced
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(cached.value("k").await.unwrap(), b"v2");
        assert_eq!(figures(&gw, "cached").lru.entries, 0, "nothing filled");

        // Back: the cache starts empty and fills again.
        store.restart().await;
        common::wait_until("the instance hears again", hearing).await;
        assert_eq!(cached.value("k").await.unwrap(), b"v2");
        assert_eq!(figures(&gw, "cached").lru.entries, 1);
        bypass(&pool, &ns, "k", b"bypassed again").await;
        assert_eq!(
            cached.value("k").await.unwrap(),
            b"v2",
            "served from the cache"
        );

        gw.stop().await;
        forget(&pool, &ns).await;
    });
}
