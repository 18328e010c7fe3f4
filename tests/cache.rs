//! The Cache service (`prism.cache.v1.CacheService`) on the memory backend
//! and on the machine's Redis: every RPC, expiry, atomic counters, the
//! config's default ttl, namespace isolation, the memory backend's bounds
//! (entries and bytes, least recently used out, counted in `/metrics`),
//! and the errors a client can cause.

mod common;

use std::time::Duration;

use common::{assert_error, TestGateway, OTHER_KEY, TEST_KEY};
use prism::{
    config::{GatewayConfig, Source},
    error::Service,
    proto::cache::v1::{self as pb, cache_service_client::CacheServiceClient},
};
use tonic::{transport::Channel, Code, Status};

/// Namespaces `ca<run>` and `ca<run>.o`; per backend `<b>` (default ttl
/// 1h), plus `kv` (a KeyValue config) and `tiny` (a memory backend that
/// holds 3 entries).
fn config(run: &str) -> GatewayConfig {
    let ns = format!("ca{run}");
    let yaml = format!(
        r#"
server: {{ shutdown_grace: 2s, supervision_interval: 100ms, actor_threads: 2, admin_token: "{admin}" }}
backends:
  memory: {{ type: memory }}
  redis: {{ type: redis, url: "{redis}" }}
  tiny: {{ type: memory, cache: {{ max_entries: 3, max_bytes: 4096 }} }}
namespaces:
  {ns}:
    allowed_backends: [memory, redis, tiny]
    allowed_patterns: [cache, key_value]
    api_keys: [{{ name: test, sha256: "{test}" }}]
  {ns}.o:
    allowed_backends: [memory, redis]
    allowed_patterns: [cache]
    api_keys: [{{ name: other, sha256: "{other}" }}]
configs:
  memory: {{ namespace: {ns}, pattern: cache, backend: memory, cache: {{ ttl: 1h }} }}
  redis: {{ namespace: {ns}, pattern: cache, backend: redis, cache: {{ ttl: 1h }} }}
  memory-none: {{ namespace: {ns}, pattern: cache, backend: memory }}
  memory-other: {{ namespace: {ns}.o, pattern: cache, backend: memory }}
  redis-other: {{ namespace: {ns}.o, pattern: cache, backend: redis }}
  tiny: {{ namespace: {ns}, pattern: cache, backend: tiny }}
  kv: {{ namespace: {ns}, pattern: key_value, backend: memory }}
"#,
        redis = common::kv::redis_url(),
        test = prism::auth::api_key_digest(TEST_KEY),
        other = prism::auth::api_key_digest(OTHER_KEY),
        admin = common::ADMIN_TOKEN,
    );
    GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).expect("config parses")
}

const BACKENDS: [&str; 2] = ["memory", "redis"];

#[derive(Clone)]
struct Cache {
    client: CacheServiceClient<Channel>,
    token: String,
    name: String,
}

impl Cache {
    async fn open(gw: &TestGateway, key: &str, config: &str) -> Cache {
        let token = gw
            .sessions()
            .create_session(common::api_key_request(key, config))
            .await
            .unwrap_or_else(|e| panic!("session for {config}: {e:?}"))
            .into_inner()
            .session_token;
        Cache {
            client: CacheServiceClient::new(gw.channel.clone()),
            token,
            name: config.to_string(),
        }
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), Status> {
        self.client
            .clone()
            .set(pb::SetRequest {
                session_token: self.token.clone(),
                key: key.into(),
                value: value.to_vec(),
                ttl: ttl.map(|t| t.try_into().unwrap()),
            })
            .await
            .map(|_| ())
    }

    async fn get(&self, key: &str) -> pb::GetResponse {
        self.client
            .clone()
            .get(pb::GetRequest {
                session_token: self.token.clone(),
                key: key.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{}: get {key}: {e:?}", self.name))
            .into_inner()
    }

    async fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, Status> {
        self.client
            .clone()
            .increment(pb::IncrementRequest {
                session_token: self.token.clone(),
                key: key.into(),
                delta,
                ttl: ttl.map(|t| t.try_into().unwrap()),
            })
            .await
            .map(|r| r.into_inner().value)
    }

    async fn exists(&self, key: &str) -> bool {
        self.client
            .clone()
            .exists(pb::ExistsRequest {
                session_token: self.token.clone(),
                key: key.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{}: exists {key}: {e:?}", self.name))
            .into_inner()
            .exists
    }

    async fn delete(&self, key: &str) -> bool {
        self.client
            .clone()
            .delete(pb::DeleteRequest {
                session_token: self.token.clone(),
                key: key.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{}: delete {key}: {e:?}", self.name))
            .into_inner()
            .deleted
    }
}

fn secs(d: &Option<prost_types::Duration>) -> Option<i64> {
    d.as_ref().map(|d| d.seconds)
}

#[test]
fn every_rpc_works_on_memory_and_redis() {
    prism::runtime::block_on_multi_thread(async {
        let gw = TestGateway::start_with(config(&common::kv::run_id())).await;
        for backend in BACKENDS {
            let c = Cache::open(&gw, TEST_KEY, backend).await;
            let other = Cache::open(&gw, OTHER_KEY, &format!("{backend}-other")).await;

            // Set / Get / Exists / Delete, and the config's default ttl.
            c.set("user:1", b"alice", None).await.unwrap();
            let got = c.get("user:1").await;
            assert!(got.found, "{backend}");
            assert_eq!(got.value, b"alice", "{backend}");
            let ttl = secs(&got.ttl).unwrap_or_else(|| panic!("{backend}: default ttl"));
            assert!((3500..=3600).contains(&ttl), "{backend}: {ttl}");
            assert!(c.exists("user:1").await, "{backend}");
            // Another namespace sees nothing.
            assert!(!other.get("user:1").await.found, "{backend}");
            assert!(!other.exists("user:1").await, "{backend}");
            assert!(!other.delete("user:1").await, "{backend}");
            assert!(c.delete("user:1").await, "{backend}");
            assert!(!c.delete("user:1").await, "{backend}");
            assert!(!c.get("user:1").await.found, "{backend}");

            // A given ttl wins over the default; SetEx needs one.
            c.set("short", b"x", Some(Duration::from_secs(30)))
                .await
                .unwrap();
            assert!(secs(&c.get("short").await.ttl).unwrap() <= 30, "{backend}");
            let err = c
                .client
                .clone()
                .set_ex(pb::SetExRequest {
                    session_token: c.token.clone(),
                    key: "k".into(),
                    value: b"v".to_vec(),
                    ttl: None,
                })
                .await
                .unwrap_err();
            assert_error(&err, Code::InvalidArgument, "INVALID_TTL", Service::Cache);
            c.client
                .clone()
                .set_ex(pb::SetExRequest {
                    session_token: c.token.clone(),
                    key: "fleeting".into(),
                    value: b"v".to_vec(),
                    ttl: Some(Duration::from_millis(150).try_into().unwrap()),
                })
                .await
                .unwrap();
            assert!(c.get("fleeting").await.found, "{backend}");
            common::wait_until("the SetEx entry expires", || async {
                !c.get("fleeting").await.found
            })
            .await;

            // GetMulti: request order, found flags.
            c.set("a", b"1", None).await.unwrap();
            c.set("c", b"3", None).await.unwrap();
            let got = c
                .client
                .clone()
                .get_multi(pb::GetMultiRequest {
                    session_token: c.token.clone(),
                    keys: vec!["c".into(), "b".into(), "a".into()],
                })
                .await
                .unwrap()
                .into_inner()
                .entries;
            let seen: Vec<_> = got
                .iter()
                .map(|e| (e.key.as_str(), e.found, e.value.as_slice()))
                .collect();
            assert_eq!(
                seen,
                vec![
                    ("c", true, &b"3"[..]),
                    ("b", false, &b""[..]),
                    ("a", true, &b"1"[..])
                ],
                "{backend}"
            );
            let err = c
                .client
                .clone()
                .get_multi(pb::GetMultiRequest {
                    session_token: c.token.clone(),
                    keys: vec!["a".into(), "a".into()],
                })
                .await
                .unwrap_err();
            assert_error(&err, Code::InvalidArgument, "DUPLICATE_KEY", Service::Cache);

            // Counters: from zero, by any delta, decimal text, with a window
            // that starts at creation.
            assert_eq!(c.incr("hits", 5, None).await.unwrap(), 5, "{backend}");
            assert_eq!(c.incr("hits", -2, None).await.unwrap(), 3, "{backend}");
            assert_eq!(c.get("hits").await.value, b"3", "{backend}");
            let window = Some(Duration::from_secs(60));
            assert_eq!(c.incr("rate", 1, window).await.unwrap(), 1);
            let first = secs(&c.get("rate").await.ttl).unwrap();
            assert!(first <= 60, "{backend}: {first}");
            c.incr("rate", 1, Some(Duration::from_secs(3600)))
                .await
                .unwrap();
            let kept = secs(&c.get("rate").await.ttl).unwrap();
            assert!(
                kept <= 60,
                "{backend}: an existing counter keeps its window: {kept}"
            );

            // Errors: not a counter, overflow (nothing changes), bad keys.
            c.set("text", b"abc", None).await.unwrap();
            let err = c.incr("text", 1, None).await.unwrap_err();
            assert_error(
                &err,
                Code::FailedPrecondition,
                "NOT_A_COUNTER",
                Service::Cache,
            );
            c.set("max", i64::MAX.to_string().as_bytes(), None)
                .await
                .unwrap();
            let err = c.incr("max", 1, None).await.unwrap_err();
            assert_error(&err, Code::OutOfRange, "COUNTER_OVERFLOW", Service::Cache);
            assert_eq!(c.get("max").await.value, i64::MAX.to_string().as_bytes());
            let err = c.set("", b"v", None).await.unwrap_err();
            assert_error(&err, Code::InvalidArgument, "INVALID_KEY", Service::Cache);
            let err = c.set("neg", b"v", Some(Duration::ZERO)).await.unwrap_err();
            assert_error(&err, Code::InvalidArgument, "INVALID_TTL", Service::Cache);
            let err = c.set("big", &vec![0u8; 5 << 20], None).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{backend}: {err:?}");

            for key in ["short", "a", "c", "hits", "rate", "text", "max"] {
                c.delete(key).await;
            }
        }
        gw.stop().await;
    });
}

#[test]
fn concurrent_increments_lose_nothing() {
    prism::runtime::block_on_multi_thread(async {
        let gw = TestGateway::start_with(config(&common::kv::run_id())).await;
        for backend in BACKENDS {
            let c = Cache::open(&gw, TEST_KEY, backend).await;
            let tasks: Vec<_> = (0..4)
                .map(|_| {
                    let c = c.clone();
                    tokio::spawn(async move {
                        for _ in 0..50 {
                            c.incr("together", 1, None).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(c.get("together").await.value, b"200", "{backend}");
            c.delete("together").await;
        }
        gw.stop().await;
    });
}

#[test]
fn a_memory_cache_holds_its_bounds_and_counts_evictions() {
    prism::runtime::block_on_multi_thread(async {
        let gw = TestGateway::start_with(config(&common::kv::run_id())).await;
        let c = Cache::open(&gw, TEST_KEY, "tiny").await;
        for k in ["k1", "k2", "k3"] {
            c.set(k, b"v", None).await.unwrap();
        }
        // k1 is used, so k2 is the least recently used when k4 comes.
        assert!(c.get("k1").await.found);
        c.set("k4", b"v", None).await.unwrap();
        assert!(!c.get("k2").await.found);
        for k in ["k1", "k3", "k4"] {
            assert!(c.get(k).await.found, "{k}");
        }
        // An entry larger than the backend's byte bound is refused whole.
        let err = c.set("huge", &vec![0u8; 8192], None).await.unwrap_err();
        assert_error(
            &err,
            Code::ResourceExhausted,
            "CACHE_ENTRY_TOO_LARGE",
            Service::Cache,
        );
        let metrics = common::scrape_metrics(gw.admin_addr).await;
        let tiny = r#"{backend="tiny",type="memory"}"#;
        assert_eq!(metrics[&format!("prism_cache_entries{tiny}")], 3.0);
        assert_eq!(metrics[&format!("prism_cache_evictions_total{tiny}")], 1.0);
        // No entry config: a Set without ttl never expires.
        let none = Cache::open(&gw, TEST_KEY, "memory-none").await;
        none.set("forever", b"v", None).await.unwrap();
        assert_eq!(none.get("forever").await.ttl, None);
        gw.stop().await;
    });
}

#[test]
fn a_session_of_another_pattern_cannot_use_the_cache() {
    prism::runtime::block_on_multi_thread(async {
        let gw = TestGateway::start_with(config(&common::kv::run_id())).await;
        let kv = Cache::open(&gw, TEST_KEY, "kv").await;
        let err = kv.set("k", b"v", None).await.unwrap_err();
        assert_error(
            &err,
            Code::FailedPrecondition,
            "PATTERN_NOT_IN_SESSION",
            Service::Cache,
        );
        let mut anonymous = CacheServiceClient::new(gw.channel.clone());
        let err = anonymous
            .get(pb::GetRequest {
                session_token: "nope".into(),
                key: "k".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        gw.stop().await;
    });
}
