//! JWT authentication over gRPC: HS256 and RS256; valid, expired, not yet
//! valid, wrong audience, bad signature, unknown issuer, missing namespace
//! claim.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use prism::{
    error::Service,
    proto::session::v1::{
        create_session_request::{Auth, Config},
        CreateSessionRequest,
    },
    runtime::block_on_multi_thread,
};
use serde_json::json;
use tonic::Code;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hs256(claims: serde_json::Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn rs256(claims: serde_json::Value, private_key: &str) -> String {
    let pem = std::fs::read(format!(
        "{}/tests/fixtures/{private_key}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

fn request(jwt: String) -> CreateSessionRequest {
    CreateSessionRequest {
        auth: Some(Auth::JwtToken(jwt)),
        config: Some(Config::ConfigName("user-profiles".into())),
        ..Default::default()
    }
}

#[test]
fn jwt_hs256_and_rs256() {
    block_on_multi_thread(async {
        let gw = TestGateway::start().await;
        let mut client = gw.sessions();
        let valid = json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now() + 300, "ns": "default", "roles": ["admin"] });

        let ok = client
            .create_session(request(hs256(valid.clone(), HS256_SECRET)))
            .await
            .unwrap()
            .into_inner();
        let entry = gw.gateway.registry.by_id(&ok.session_id).unwrap();
        assert_eq!(entry.principal.identity, "jwt:alice");
        assert_eq!(entry.principal.namespace, "default");
        assert_eq!(entry.principal.roles, vec!["admin".to_string()]);

        let mut expired = valid.clone();
        expired["exp"] = json!(now() - 3600);
        let err = client
            .create_session(request(hs256(expired, HS256_SECRET)))
            .await
            .unwrap_err();
        assert_error(&err, Code::Unauthenticated, "JWT_EXPIRED", Service::Session);

        // Not valid for another hour: refused (the test issuer has no leeway).
        let mut early = valid.clone();
        early["nbf"] = json!(now() + 3600);
        let err = client
            .create_session(request(hs256(early, HS256_SECRET)))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "JWT_NOT_YET_VALID",
            Service::Session,
        );
        // Valid from a second ago: accepted.
        let mut started = valid.clone();
        started["nbf"] = json!(now() - 1);
        client
            .create_session(request(hs256(started, HS256_SECRET)))
            .await
            .unwrap();

        let mut wrong_aud = valid.clone();
        wrong_aud["aud"] = json!("someone-else");
        let err = client
            .create_session(request(hs256(wrong_aud, HS256_SECRET)))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "JWT_INVALID_AUDIENCE",
            Service::Session,
        );

        let err = client
            .create_session(request(hs256(
                valid.clone(),
                "a-different-secret-of-sufficient-length",
            )))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "JWT_INVALID_SIGNATURE",
            Service::Session,
        );

        let mut unknown_issuer = valid.clone();
        unknown_issuer["iss"] = json!("https://evil.test");
        let err = client
            .create_session(request(hs256(unknown_issuer, HS256_SECRET)))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "JWT_UNKNOWN_ISSUER",
            Service::Session,
        );

        let err = client
            .create_session(request("not.a.jwt".into()))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "JWT_MALFORMED",
            Service::Session,
        );

        // A valid token for another namespace cannot open a config of `default`.
        let mut other_ns = valid.clone();
        other_ns["ns"] = json!("other");
        let err = client
            .create_session(request(hs256(other_ns, HS256_SECRET)))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::PermissionDenied,
            "NAMESPACE_MISMATCH",
            Service::Session,
        );

        let mut no_ns = valid.clone();
        no_ns.as_object_mut().unwrap().remove("ns");
        let err = client
            .create_session(request(hs256(no_ns, HS256_SECRET)))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::PermissionDenied,
            "JWT_NO_NAMESPACE",
            Service::Session,
        );

        // RS256: the RS issuer reads the namespace from the default `namespace` claim.
        let rs_claims = json!({ "iss": RS_ISSUER, "aud": AUDIENCE, "sub": "svc", "exp": now() + 300, "namespace": "default", "roles": "reader writer" });
        let ok = client
            .create_session(request(rs256(rs_claims.clone(), "jwt_rs256_private.pem")))
            .await
            .unwrap()
            .into_inner();
        let entry = gw.gateway.registry.by_id(&ok.session_id).unwrap();
        assert_eq!(
            entry.principal.roles,
            vec!["reader".to_string(), "writer".to_string()]
        );

        // The RS issuer may name only `default`.
        let mut elsewhere = rs_claims.clone();
        elsewhere["namespace"] = json!("other");
        let err = client
            .create_session(request(rs256(elsewhere, "jwt_rs256_private.pem")))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::PermissionDenied,
            "JWT_NAMESPACE_NOT_ALLOWED",
            Service::Session,
        );

        let err = client
            .create_session(request(rs256(
                rs_claims.clone(),
                "jwt_rs256_other_private.pem",
            )))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "JWT_INVALID_SIGNATURE",
            Service::Session,
        );

        // An HS256 token presented as the RS256 issuer's is refused.
        let err = client
            .create_session(request(hs256(rs_claims, HS256_SECRET)))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "JWT_INVALID_ALGORITHM",
            Service::Session,
        );
        gw.stop().await;
    });
}
