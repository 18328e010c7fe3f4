//! mTLS: the verified client certificate of the TLS connection names the
//! caller; the certificate bytes in the request prove nothing on their own.

mod common;

use common::*;
use prism::{
    config::{GatewayConfig, Source},
    error::Service,
    proto::session::v1::{
        create_session_request::{Auth, Config},
        session_service_client::SessionServiceClient,
        CreateSessionRequest, MutualTlsAuth,
    },
    runtime::block_on_multi_thread,
};
use tonic::{
    transport::{Certificate, ClientTlsConfig, Identity},
    Code,
};

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn config() -> GatewayConfig {
    let yaml = test_config_yaml().replace(
        "server:\n",
        &format!(
            "server:\n  tls:\n    cert_file: {}\n    key_file: {}\n    client_ca_file: {}\n",
            fixture("server.pem"),
            fixture("server.key"),
            fixture("ca.pem")
        ),
    )
        + "  mtls:\n    identities:\n      orders-client: { namespace: default, roles: [admin] }\n";
    GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).unwrap()
}

fn client_tls(identity: Option<(&str, &str)>) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(read("ca.pem")));
    match identity {
        Some((cert, key)) => tls.identity(Identity::from_pem(read(cert), read(key))),
        None => tls,
    }
}

fn mtls_request(presented: Vec<u8>) -> CreateSessionRequest {
    CreateSessionRequest {
        auth: Some(Auth::Mtls(MutualTlsAuth {
            client_cert: presented,
        })),
        config: Some(Config::ConfigName("user-profiles".into())),
        ..Default::default()
    }
}

#[test]
fn mtls_identity_comes_from_the_verified_connection() {
    block_on_multi_thread(async {
        let gw =
            TestGateway::start_tls(config(), client_tls(Some(("client.pem", "client.key")))).await;
        let mut client = gw.sessions();

        let ok = client
            .create_session(mtls_request(Vec::new()))
            .await
            .unwrap()
            .into_inner();
        let entry = gw.gateway.registry.by_id(&ok.session_id).unwrap();
        assert_eq!(entry.principal.identity, "mtls:orders-client");
        assert_eq!(entry.principal.namespace, "default");

        // Presenting the connection's own certificate (PEM) is fine...
        client
            .create_session(mtls_request(read("client.pem")))
            .await
            .unwrap();
        // ...presenting another one is not.
        let err = client
            .create_session(mtls_request(read("stranger.pem")))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "MTLS_CERT_MISMATCH",
            Service::Session,
        );

        // A certificate the CA signed but no namespace maps.
        let stranger = gw
            .connect_tls(client_tls(Some(("stranger.pem", "stranger.key"))))
            .await;
        let err = SessionServiceClient::new(stranger)
            .create_session(mtls_request(Vec::new()))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::PermissionDenied,
            "MTLS_UNKNOWN_IDENTITY",
            Service::Session,
        );

        // TLS without a client certificate: API keys work, mTLS does not.
        let anonymous = gw.connect_tls(client_tls(None)).await;
        let mut anonymous = SessionServiceClient::new(anonymous);
        anonymous
            .create_session(api_key_request(TEST_KEY, "user-profiles"))
            .await
            .unwrap();
        let err = anonymous
            .create_session(mtls_request(read("client.pem")))
            .await
            .unwrap_err();
        assert_error(
            &err,
            Code::Unauthenticated,
            "MTLS_NO_CLIENT_CERT",
            Service::Session,
        );
        gw.stop().await;
    });
}
