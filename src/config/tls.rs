//! The gRPC listener's TLS files (`server.tls`) read into a rustls server
//! config: shared by `prism validate`, the start and every reload
//! ([`crate::server::tls`]).

use std::sync::Arc;

use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};

use super::TlsSpec;

/// The bytes of the three files, as last read.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    /// Sizes only: the key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("cert_bytes", &self.cert.len())
            .field("key_bytes", &self.key.len())
            .field("client_ca_bytes", &self.client_ca.as_ref().map(Vec::len))
            .finish()
    }
}

impl TlsFiles {
    /// Reads the files (small; callers on async workers go through
    /// [`TlsFiles::read_off_worker`]). They are read twice and must agree,
    /// so a rotation that swaps them while they are read (one file of the
    /// old set, two of the new) is never taken for a set: it is an error,
    /// and the next look finds the new set whole.
    pub fn read(spec: &TlsSpec) -> Result<TlsFiles, String> {
        let first = Self::read_once(spec)?;
        if Self::read_once(spec)? != first {
            return Err(
                "the tls files changed while they were read; they are read again at the next look"
                    .into(),
            );
        }
        Ok(first)
    }

    fn read_once(spec: &TlsSpec) -> Result<TlsFiles, String> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
        };
        Ok(TlsFiles {
            cert: read(&spec.cert_file)?,
            key: read(&spec.key_file)?,
            client_ca: spec.client_ca_file.as_deref().map(read).transpose()?,
        })
    }

    pub async fn read_off_worker(spec: &TlsSpec) -> Result<TlsFiles, String> {
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || TlsFiles::read(&spec))
            .await
            .map_err(|e| format!("reading the tls files: {e}"))?
    }
}

/// The rustls config of the files' content: the certificate chain and
/// its key; with a client CA, client certificates are optional (API-key
/// and JWT clients connect without one) but one that is presented must
/// verify. Speaks HTTP/2 only, as gRPC does.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cert_file: {e}"))?;
    if chain.is_empty() {
        return Err("cert_file: no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| format!("key_file: {e}"))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(pem) {
                let ca = ca.map_err(|e| format!("client_ca_file: {e}"))?;
                roots.add(ca).map_err(|e| format!("client_ca_file: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("cert_file and key_file: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Checks that a TLS spec's files load as a server config (for
/// `prism validate`; reads the files where it is called).
pub fn check(spec: &TlsSpec) -> Result<(), String> {
    server_config(&TlsFiles::read(spec)?).map(|_| ())
}
