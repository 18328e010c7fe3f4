//! Session expiry under paused tokio time: actors share the test's thread
//! and clock (`actor_threads: 0`), so minutes pass without sleeping.

mod common;

use std::time::Duration;

use prism::{
    config::{GatewayConfig, Source},
    error::Service,
    proto::session::v1::{
        session_service_server::SessionService, GetSessionRequest, HeartbeatRequest, SessionStatus,
    },
    runtime::block_on_current_thread,
    server::Gateway,
    services::session::SessionApi,
    session::{EndReason, SessionEvent},
};
use tonic::{Code, Request};

fn config() -> GatewayConfig {
    let yaml = common::test_config_yaml()
        .replace("actor_threads: 2", "actor_threads: 0")
        .replace("supervision_interval: 100ms", "supervision_interval: 1s")
        .replace(
            "idle_timeout: 10m\n      max_lifetime: 1h\n      expiring_within: 1m",
            "idle_timeout: 30s\n      max_lifetime: 2m\n      expiring_within: 10s",
        );
    GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).unwrap()
}

#[test]
fn idle_sessions_expire_and_heartbeats_extend_up_to_max_lifetime() {
    block_on_current_thread(async {
        tokio::time::pause();
        let gateway = Gateway::start(config()).unwrap();
        let api = SessionApi::new(gateway.sessions.clone());
        let mut events = gateway.registry.subscribe();

        let created = api
            .create_session(Request::new(common::api_key_request(
                common::TEST_KEY,
                "user-profiles",
            )))
            .await
            .unwrap()
            .into_inner();
        let token = created.session_token.clone();
        let heartbeat = |token: String| {
            let api = &api;
            async move {
                api.heartbeat(Request::new(HeartbeatRequest {
                    session_token: token,
                }))
                .await
            }
        };

        // Heartbeats every 25s keep a 30s idle timeout from firing...
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(25)).await;
            let hb = heartbeat(token.clone()).await.unwrap().into_inner();
            assert_eq!(hb.status, SessionStatus::Active as i32);
            assert_eq!(hb.ttl.unwrap().seconds, 30);
        }
        // ...but not past the 2m maximum lifetime: at 100s, 20s remain.
        tokio::time::advance(Duration::from_secs(25)).await;
        let hb = heartbeat(token.clone()).await.unwrap().into_inner();
        assert_eq!(hb.status, SessionStatus::Active as i32);
        assert_eq!(hb.ttl.unwrap().seconds, 20, "capped at max lifetime");
        // At 110s, 10s remain: within expiring_within.
        tokio::time::advance(Duration::from_secs(10)).await;
        let hb = heartbeat(token.clone()).await.unwrap().into_inner();
        assert_eq!(hb.status, SessionStatus::Expiring as i32);
        assert_eq!(hb.ttl.unwrap().seconds, 10);

        // The actor's timer expires it at the hard deadline; no call needed.
        let ended = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let SessionEvent::Ended { reason, .. } = events.recv().await.unwrap() {
                    return reason;
                }
            }
        })
        .await
        .expect("expired by the actor timer");
        assert_eq!(ended, EndReason::Expired);
        let err = heartbeat(token).await.unwrap_err();
        common::assert_error(
            &err,
            Code::Unauthenticated,
            "SESSION_EXPIRED",
            Service::Session,
        );
        assert!(tonic_types::StatusExt::get_details_error_info(&err)
            .unwrap()
            .metadata
            .contains_key("expired_at"));

        // An idle session expires after its idle timeout.
        let idle = api
            .create_session(Request::new(common::api_key_request(
                common::TEST_KEY,
                "user-profiles",
            )))
            .await
            .unwrap()
            .into_inner();
        tokio::time::advance(Duration::from_secs(29)).await;
        api.get_session(Request::new(GetSessionRequest {
            session_token: idle.session_token.clone(),
        }))
        .await
        .expect("alive at 29s");
        tokio::time::advance(Duration::from_secs(31)).await;
        let err = api
            .get_session(Request::new(GetSessionRequest {
                session_token: idle.session_token,
            }))
            .await
            .unwrap_err();
        common::assert_error(
            &err,
            Code::Unauthenticated,
            "SESSION_EXPIRED",
            Service::Session,
        );
        assert!(gateway.registry.is_empty());
    });
}
