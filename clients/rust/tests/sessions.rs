//! Sessions against a real gateway: opening, errors, heartbeats,
//! reopening, retries, and a gateway restart in the middle of calls.

mod common;

use std::time::Duration;

use common::*;
use prism_client::{Client, Code, Error, RetryPolicy};
use prism_proto::session::v1::{session_service_client::SessionServiceClient, CloseSessionRequest};
use tokio::net::TcpListener;

#[test]
fn bad_input_is_refused_with_the_gateways_reason() {
    run(async {
        let (gw, addr) = Served::on_free_port().await;
        let client = client(addr).await;
        let wrong = client
            .session()
            .api_key("not-a-key")
            .config("kv")
            .open()
            .await
            .expect_err("a wrong key is refused");
        assert_eq!(wrong.code(), Code::Unauthenticated);
        assert_eq!(wrong.reason(), Some("INVALID_API_KEY"));
        let rpc = wrong.rpc().expect("the gateway's error");
        assert_eq!(rpc.domain.as_deref(), Some("prism.session.v1"));

        let missing = client
            .session()
            .config("kv")
            .open()
            .await
            .expect_err("no key");
        assert!(matches!(missing, Error::InvalidInput(_)), "{missing:?}");

        let kv = client
            .session()
            .api_key(KEY)
            .config("kv")
            .open()
            .await
            .unwrap()
            .kv();
        let too_long = kv
            .set_with_ttl("k", b"v".to_vec(), Duration::MAX)
            .await
            .expect_err("a TTL the wire cannot carry");
        assert!(matches!(too_long, Error::InvalidInput(_)), "{too_long:?}");
        let empty = kv.get("").await.expect_err("an empty key");
        assert_eq!(empty.code(), Code::InvalidArgument);
        assert!(empty.reason().is_some());
        gw.stop().await;
    });
}

#[test]
fn heartbeats_keep_an_idle_session_alive_past_its_idle_timeout() {
    run(async {
        let (gw, addr) = Served::on_free_port().await;
        let session = client(addr)
            .await
            .session()
            .api_key(SHORT_KEY)
            .config("short")
            .reopen(false)
            .open()
            .await
            .unwrap();
        let first_expiry = session.expires_at().expect("an expiry");
        // Idle (no calls) until well past the expiry the session opened
        // with: only heartbeats (every ~200 ms) can have kept it.
        let past = first_expiry
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            + Duration::from_millis(900);
        tokio::time::sleep(past).await;
        assert!(session.expires_at().unwrap() > first_expiry);
        session
            .kv()
            .set("still", b"here".to_vec())
            .await
            .expect("the session lives");
        assert_eq!(session.reopened(), 0);

        // Dropped: the heartbeats stop and the gateway ends it.
        let token = session.token();
        let id = session.id();
        drop(session);
        let mut sessions = SessionServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let gone = sessions
            .get_session(prism_proto::session::v1::GetSessionRequest {
                session_token: token,
            })
            .await
            .expect_err(&format!("{id} expired once nobody kept it"));
        assert_eq!(gone.code(), tonic::Code::Unauthenticated);
        gw.stop().await;
    });
}

#[test]
fn a_lost_session_reopens_only_when_allowed() {
    run(async {
        let (gw, addr) = Served::on_free_port().await;
        let client = client(addr).await;
        let sessions = SessionServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let close_behind = |token: String| {
            let mut sessions = sessions.clone();
            async move {
                sessions
                    .close_session(CloseSessionRequest {
                        session_token: token,
                        force: true,
                    })
                    .await
                    .expect("closed from outside");
            }
        };

        let keeps = client
            .session()
            .api_key(KEY)
            .config("kv")
            .open()
            .await
            .unwrap();
        let first = keeps.id();
        close_behind(keeps.token()).await;
        keeps
            .kv()
            .set("a", b"1".to_vec())
            .await
            .expect("reopened and done");
        assert_eq!(keeps.reopened(), 1);
        assert_ne!(keeps.id(), first);

        let strict = client
            .session()
            .api_key(KEY)
            .config("kv")
            .reopen(false)
            .open()
            .await
            .unwrap();
        close_behind(strict.token()).await;
        let lost = strict.kv().get("a").await.expect_err("not reopened");
        assert_eq!(lost.code(), Code::Unauthenticated);
        assert_eq!(lost.reason(), Some("SESSION_CLOSED"));
        assert_eq!(strict.reopened(), 0);
        gw.stop().await;
    });
}

#[test]
fn rate_limited_calls_wait_as_the_gateway_asks_and_succeed() {
    run(async {
        let (gw, addr) = Served::on_free_port().await;
        let kv = open(addr, "limited").await.kv();
        // 5 calls/s with a burst of 1: most of these are refused at first
        // with RATE_LIMITED and a RetryInfo delay, then retried.
        for i in 0..6 {
            kv.set(&format!("k{i}"), b"v".to_vec())
                .await
                .expect("retried until let through");
        }
        assert_eq!(kv.count("k").await.unwrap(), 6);

        let impatient = Client::builder(format!("http://{addr}"))
            .retry(RetryPolicy::none())
            .connect()
            .await
            .unwrap()
            .session()
            .api_key(KEY)
            .config("limited")
            .open()
            .await
            .unwrap()
            .kv();
        let mut refused = None;
        for _ in 0..4 {
            if let Err(e) = impatient.exists("k0").await {
                refused = Some(e);
                break;
            }
        }
        let refused = refused.expect("without retries the limit shows");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.rpc().unwrap().retry_after.is_some(), "{refused:?}");
        gw.stop().await;
    });
}

#[test]
fn a_session_survives_a_gateway_restart_mid_call() {
    run(async {
        let (gw, addr) = Served::on_free_port().await;
        let session = open(addr, "kv").await;
        let kv = session.kv();
        kv.set("before", b"1".to_vec()).await.unwrap();
        gw.stop().await;

        // The write starts while nothing listens (connection refused), and
        // completes once a new gateway, which never heard of the session,
        // is up on the same address.
        let write = tokio::spawn({
            let kv = kv.clone();
            async move { kv.set("after", b"2".to_vec()).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!write.is_finished(), "the write waits for the gateway");
        let listener = TcpListener::bind(addr)
            .await
            .expect("the address is free again");
        let gw = Served::start(listener).await;
        write
            .await
            .unwrap()
            .expect("the write went through after the restart");
        assert_eq!(session.reopened(), 1);
        assert_eq!(
            kv.get("after").await.unwrap().map(|v| v.value),
            Some(b"2".to_vec())
        );
        gw.stop().await;
    });
}

#[test]
fn a_publish_that_never_reached_the_gateway_is_resent_after_a_restart() {
    run(async {
        let (gw, addr) = Served::on_free_port().await;
        let queue = open(addr, "jobs").await.queue();
        queue.publish("jobs.a", b"first".to_vec()).await.unwrap();
        gw.stop().await;

        // Publish cannot be deduplicated, so it is resent only because the
        // connection was refused: the gateway never saw it.
        let publish = tokio::spawn({
            let queue = queue.clone();
            async move { queue.publish("jobs.a", b"second".to_vec()).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!publish.is_finished(), "the publish waits for the gateway");
        let gw = Served::start(TcpListener::bind(addr).await.unwrap()).await;
        let receipt = publish
            .await
            .unwrap()
            .expect("resent once the gateway is back");
        // A new gateway's memory queue: the resent message is its first.
        assert_eq!(receipt.offset, 0);
        gw.stop().await;
    });
}

fn fixture(name: &str) -> String {
    format!("{}/../../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn a_session_opens_with_the_client_certificate_of_an_mtls_connection() {
    let yaml = config_yaml().replace(
        "server:\n",
        &format!(
            "server:\n  tls:\n    cert_file: {}\n    key_file: {}\n    client_ca_file: {}\n",
            fixture("server.pem"),
            fixture("server.key"),
            fixture("ca.pem")
        ),
    ) + "auth:\n  mtls:\n    identities:\n      orders-client: { namespace: default, roles: [admin] }\n";
    let read = |name: &str| std::fs::read(fixture(name)).expect("a test fixture");
    run(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gw = Served::start_with(listener, parse(&yaml)).await;
        let tls = prism_client::Tls::new()
            .ca(read("ca.pem"))
            .identity(read("client.pem"), read("client.key"))
            .domain("localhost");
        let client = Client::builder(addr.to_string())
            .tls(tls)
            .connect()
            .await
            .expect("an mTLS connection");
        let session = client
            .session()
            .mtls()
            .config("kv")
            .open()
            .await
            .expect("mTLS session");
        session.kv().set("tls", b"yes".to_vec()).await.unwrap();

        // Plain TLS, no certificate: the mtls credentials are missing.
        let plain = Client::builder(addr.to_string())
            .tls(
                prism_client::Tls::new()
                    .ca(read("ca.pem"))
                    .domain("localhost"),
            )
            .connect()
            .await
            .expect("a TLS connection");
        let missing = plain
            .session()
            .mtls()
            .config("kv")
            .open()
            .await
            .expect_err("no certificate");
        assert!(matches!(missing, Error::InvalidInput(_)), "{missing:?}");
        gw.stop().await;
    });
}

#[test]
fn sessions_open_with_a_jwt_and_with_an_inline_config() {
    use prism_proto::config::v1::{
        AccessPattern, BackendConfig, BackendType, ClientConfig, ConsistencyConfig,
        ConsistencyLevel,
    };
    const SECRET: &str = "client-test-hs256-secret-long-enough-0123456789";
    let yaml = config_yaml()
        + &format!(
            "auth:\n  jwt:\n    - issuer: https://issuer.test\n      audience: prism\n      \
             algorithm: HS256\n      secret: {SECRET}\n      namespace_claim: ns\n"
        );
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let claims = serde_json::json!({
        "iss": "https://issuer.test", "aud": "prism", "sub": "ada", "exp": exp,
        "ns": "default", "roles": ["admin"],
    });
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    run(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gw = Served::start_with(listener, parse(&yaml)).await;
        let client = client(addr).await;

        let with_jwt = client
            .session()
            .jwt(jwt)
            .config("kv")
            .open()
            .await
            .expect("JWT session");
        with_jwt.kv().set("jwt", b"ok".to_vec()).await.unwrap();

        let inline = ClientConfig {
            pattern: AccessPattern::KeyValue as i32,
            backend: Some(BackendConfig {
                r#type: BackendType::Memory as i32,
                ..Default::default()
            }),
            consistency: Some(ConsistencyConfig {
                level: ConsistencyLevel::Eventual as i32,
                max_staleness: None,
            }),
            ..Default::default()
        };
        let session = client
            .session()
            .api_key(KEY)
            .inline_config(inline)
            .open()
            .await
            .expect("inline config session");
        assert_eq!(session.config().expect("resolved").namespace, "default");
        assert_eq!(
            session.kv().get("jwt").await.unwrap().map(|v| v.value),
            Some(b"ok".to_vec())
        );
        gw.stop().await;
    });
}
