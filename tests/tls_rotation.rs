//! TLS material rotates without a restart and without dropping anyone:
//! the server certificate, its key and the client CA sit in a directory
//! swapped by a symlink, as Kubernetes mounts a secret. Under a load of
//! calls on a connection made before the swap, the files change; the
//! gateway notices them on its own, the old connection keeps working with
//! no failed call, new connections get the new certificate and mTLS checks
//! client certificates against the new CA. A set of files that does not
//! load is refused and the running material stays.
//!
//! The certificates are made here (rcgen), so their keys never sit in the
//! tree.

mod common;

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{kv::kv_client, *};
use prism::{
    config::{GatewayConfig, Source},
    proto::{
        keyvalue::v1 as kv,
        session::v1::{
            create_session_request::{Auth, Config},
            session_service_client::SessionServiceClient,
            CreateSessionRequest, MutualTlsAuth,
        },
    },
    runtime::block_on_multi_thread,
    server::tls::TlsReload,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A CA that signs leaf certificates.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate, key) PEM of a leaf named `cn`, valid for localhost.
    fn leaf(&self, cn: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// One generation of the gateway's TLS files, written into `dir/name/`.
fn write_generation(dir: &Path, name: &str, server: &Ca, client_ca: &Ca) {
    let generation = dir.join(name);
    std::fs::create_dir_all(&generation).unwrap();
    let (cert, key) = server.leaf("prism-gateway");
    std::fs::write(generation.join("server.pem"), cert).unwrap();
    std::fs::write(generation.join("server.key"), key).unwrap();
    std::fs::write(generation.join("client-ca.pem"), &client_ca.pem).unwrap();
}

/// Points `dir/current` at `dir/name` in one step (a rename over the old
/// link), so the gateway never sees half of a generation.
fn swap_to(dir: &Path, name: &str) {
    let tmp = dir.join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(dir.join(name), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("current")).unwrap();
}

fn config(dir: &Path) -> GatewayConfig {
    let current = dir.join("current");
    let yaml = test_config_yaml().replace(
        "server:\n",
        &format!(
            "server:\n  tls:\n    cert_file: {}\n    key_file: {}\n    client_ca_file: {}\n    watch_interval: 50ms\n",
            current.join("server.pem").display(),
            current.join("server.key").display(),
            current.join("client-ca.pem").display(),
        ),
    ) + "  mtls:\n    identities:\n      orders-client: { namespace: default, roles: [admin] }\n";
    GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).unwrap()
}

fn trusting(ca: &Ca, client: Option<(String, String)>) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(&ca.pem));
    match client {
        Some((cert, key)) => tls.identity(Identity::from_pem(cert, key)),
        None => tls,
    }
}

async fn try_connect(gw: &TestGateway, tls: ClientTlsConfig) -> Result<(), String> {
    let channel = Endpoint::from_shared(format!("https://{}", gw.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    // A client certificate is checked during the handshake; a call makes
    // sure the connection really is up.
    SessionServiceClient::new(channel)
        .create_session(api_key_request(TEST_KEY, "user-profiles"))
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

fn mtls_session() -> CreateSessionRequest {
    CreateSessionRequest {
        auth: Some(Auth::Mtls(MutualTlsAuth {
            client_cert: Vec::new(),
        })),
        config: Some(Config::ConfigName("user-profiles".into())),
        ..Default::default()
    }
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "prism-tls-rotation-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

#[test]
fn a_rotated_certificate_reaches_new_connections_and_drops_none() {
    block_on_multi_thread(async {
        let dir = scratch_dir();
        let (old_server, old_clients) = (Ca::new("server CA 1"), Ca::new("client CA 1"));
        let (new_server, new_clients) = (Ca::new("server CA 2"), Ca::new("client CA 2"));
        write_generation(&dir, "v1", &old_server, &old_clients);
        write_generation(&dir, "v2", &new_server, &new_clients);
        swap_to(&dir, "v1");

        let old_client = old_clients.leaf("orders-client");
        let gw = TestGateway::start_tls(
            config(&dir),
            trusting(&old_server, Some(old_client.clone())),
        )
        .await;
        let material = gw.gateway.tls.clone().expect("tls material");
        let mut replaced = material.subscribe();

        // The load: calls on the connection made before the rotation.
        let token = gw
            .sessions()
            .create_session(mtls_session())
            .await
            .expect("an mTLS session on the first certificate")
            .into_inner()
            .session_token;
        let done = Arc::new(AtomicU64::new(0));
        let (progress, mut progressed) = tokio::sync::watch::channel(0u64);
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = tokio::task::JoinSet::new();
        for worker in 0..4 {
            let mut client = kv_client(gw.channel.clone());
            let (token, done, progress, stop) =
                (token.clone(), done.clone(), progress.clone(), stop.clone());
            load.spawn(async move {
                let mut failures = Vec::new();
                // Bounded in count; the test stops it long before.
                for i in 0..200_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let set = kv::SetRequest {
                        session_token: token.clone(),
                        key: format!("rotation-{worker}-{}", i % 16),
                        value: b"v".to_vec(),
                        ..Default::default()
                    };
                    if let Err(e) = client.set(set).await {
                        failures.push(e.to_string());
                    }
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    progress.send_replace(n);
                }
                failures
            });
        }
        progressed.wait_for(|n| *n >= 200).await.unwrap();

        // Rotate under the load; the gateway finds the change itself.
        swap_to(&dir, "v2");
        tokio::time::timeout(Duration::from_secs(30), replaced.changed())
            .await
            .expect("the rotated files are picked up")
            .unwrap();
        let at_rotation = done.load(Ordering::Relaxed);
        progressed
            .wait_for(|n| *n >= at_rotation + 400)
            .await
            .unwrap();

        // New connections: the new certificate, the new client CA.
        let new_client = new_clients.leaf("orders-client");
        try_connect(&gw, trusting(&new_server, Some(new_client.clone())))
            .await
            .expect("a client trusting the new server CA, with a new client certificate");
        let refused = try_connect(&gw, trusting(&old_server, None))
            .await
            .expect_err("a client trusting only the old CA reached the rotated listener");
        assert!(refused.contains("UnknownIssuer"), "{refused}");
        let refused = try_connect(&gw, trusting(&new_server, Some(old_clients.leaf("x"))))
            .await
            .expect_err("a client certificate of the old client CA was accepted after rotation");
        // The server's alert (`UnknownCA`) when the client reads it first;
        // a write into the closed connection when it does not. Either way
        // the connection failed, not a call on it.
        assert!(
            refused.contains("UnknownCA") || refused.contains("transport error"),
            "{refused}"
        );
        let channel = gw
            .connect_tls(trusting(&new_server, Some(new_client)))
            .await;
        let session = SessionServiceClient::new(channel)
            .create_session(mtls_session())
            .await
            .expect("mTLS on the new client CA")
            .into_inner();
        let entry = gw.gateway.registry.by_id(&session.session_id).unwrap();
        assert_eq!(entry.principal.identity, "mtls:orders-client");

        stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        while let Some(worker) = load.join_next().await {
            failures.extend(worker.unwrap());
        }
        assert!(
            failures.is_empty(),
            "calls on the old connection failed during rotation: {failures:?}"
        );
        println!(
            "{} calls on the pre-rotation connection, {} after the swap, none failed",
            done.load(Ordering::Relaxed),
            done.load(Ordering::Relaxed) - at_rotation
        );

        // A key that does not match its certificate is refused; what runs
        // stays.
        let (cert, _) = new_server.leaf("prism-gateway");
        let (_, other_key) = new_server.leaf("prism-gateway");
        let broken = dir.join("v3");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join("server.pem"), cert).unwrap();
        std::fs::write(broken.join("server.key"), other_key).unwrap();
        std::fs::write(broken.join("client-ca.pem"), &new_clients.pem).unwrap();
        swap_to(&dir, "v3");
        let err = material.reload(None).await.unwrap_err();
        assert!(err.contains("cert_file and key_file"), "{err}");
        try_connect(&gw, trusting(&new_server, None))
            .await
            .expect("the running material still serves");
        swap_to(&dir, "v2");
        assert_eq!(material.reload(None).await, Ok(TlsReload::Unchanged));

        gw.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    });
}
