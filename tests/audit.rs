//! The audit log: session events (create, refresh, close, authentication
//! failure) and data calls' outcomes reach the configured file as JSON
//! lines, with the fields marked PII masked.

mod common;

use common::{test_config_yaml, wait_until, TestGateway};
use prism::{
    config::{GatewayConfig, Source},
    proto::{
        keyvalue::v1::{key_value_service_client::KeyValueServiceClient, GetRequest, SetRequest},
        session::v1::{CloseSessionRequest, RefreshSessionRequest},
    },
    runtime::block_on_multi_thread,
};
use tonic::Code;

fn read_records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each audit line is JSON"))
        .collect()
}

/// The audit's pseudonym key in these tests.
const PSEUDONYM_KEY: &str = "audit-test-key-0123456789";

#[test]
fn session_events_and_data_calls_are_audited_with_pii_masked() {
    block_on_multi_thread(async {
        let dir = std::env::temp_dir().join(format!("prism-audit-{}", common::kv::run_id()));
        let path = dir.join("audit.log");
        let yaml = format!(
            "{}\naudit:\n  sink: file\n  path: {}\n  pii_fields: [identity]\n  pseudonym_key: {PSEUDONYM_KEY}\n",
            test_config_yaml(),
            path.display()
        );
        let config = GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).unwrap();
        let gw = TestGateway::start_with(config).await;
        let mut sessions = gw.sessions();

        let created = gw
            .open_inline(prism::proto::config::v1::AccessPattern::KeyValue, "memory")
            .await;
        let denied = sessions
            .create_session(common::api_key_request("wrong-key", "user-profiles"))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::Unauthenticated);
        let mut kv = KeyValueServiceClient::new(gw.channel.clone());
        kv.set(SetRequest {
            session_token: created.session_token.clone(),
            key: "audited/1".into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        let missing_key = kv
            .get(GetRequest {
                session_token: created.session_token.clone(),
                key: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing_key.code(), Code::InvalidArgument);
        sessions
            .refresh_session(RefreshSessionRequest {
                session_token: created.session_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        sessions
            .close_session(CloseSessionRequest {
                session_token: created.session_token.clone(),
                force: true,
            })
            .await
            .unwrap();

        let id = created.session_id.as_str();
        let has = |records: &[serde_json::Value], event: &str| {
            records.iter().any(|r| r["event"] == event)
        };
        wait_until("the audit records are written", || async {
            let records = read_records(&path);
            [
                "session.create",
                "session.auth_failure",
                "data",
                "session.refresh",
                "session.close",
            ]
            .iter()
            .all(|e| has(&records, e))
        })
        .await;
        let records = read_records(&path);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("api-key:test"),
            "identity not masked:\n{text}"
        );
        let masked = prism::audit::pseudonym(PSEUDONYM_KEY.as_bytes(), "api-key:test");

        let create = records
            .iter()
            .find(|r| r["event"] == "session.create")
            .unwrap();
        assert_eq!(create["session_id"], id);
        assert_eq!(create["identity"], masked.as_str());
        assert_eq!(create["namespace"], "default");
        assert_eq!(create["outcome"], "ok");
        assert!(create["time"].as_str().unwrap().ends_with('Z'), "{create}");

        let failure = records
            .iter()
            .find(|r| r["event"] == "session.auth_failure")
            .unwrap();
        assert_eq!(failure["outcome"], "INVALID_API_KEY", "{failure}");

        let set = records
            .iter()
            .find(|r| {
                r["event"] == "data" && r["operation"] == "prism.keyvalue.v1.KeyValueService/Set"
            })
            .unwrap_or_else(|| panic!("no Set record in {records:#?}"));
        assert_eq!(set["session_id"], id);
        assert_eq!(set["identity"], masked.as_str());
        assert_eq!(set["resource"], "audited/1");
        assert_eq!(set["outcome"], "ok");
        let get = records
            .iter()
            .find(|r| {
                r["event"] == "data" && r["operation"] == "prism.keyvalue.v1.KeyValueService/Get"
            })
            .unwrap();
        assert_eq!(get["outcome"], "INVALID_ARGUMENT");

        let close = records
            .iter()
            .find(|r| r["event"] == "session.close")
            .unwrap();
        assert_eq!(close["session_id"], id);

        // A session still open at shutdown is recorded before stop returns.
        let open = gw
            .open_inline(prism::proto::config::v1::AccessPattern::KeyValue, "memory")
            .await;
        gw.stop().await;
        let records = read_records(&path);
        assert!(
            records
                .iter()
                .any(|r| r["event"] == "session.shutdown" && r["session_id"] == open.session_id),
            "{records:#?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}
