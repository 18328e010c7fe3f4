//! mTLS: the verified client certificate of the TLS connection names the
//! caller; its subject common name maps to a namespace and roles.

use std::collections::BTreeMap;

use x509_parser::prelude::{FromDer, X509Certificate};

use super::{AuthMethod, Principal};
use crate::{
    config::{MtlsIdentity, MtlsSpec},
    error::Error,
};

pub struct MtlsIdentities {
    identities: BTreeMap<String, MtlsIdentity>,
}

impl MtlsIdentities {
    pub fn new(spec: &MtlsSpec) -> Self {
        MtlsIdentities {
            identities: spec.identities.clone(),
        }
    }

    pub fn authenticate(
        &self,
        presented: &[u8],
        transport_leaf: Option<&[u8]>,
    ) -> Result<Principal, Error> {
        let leaf = transport_leaf.ok_or_else(|| {
            Error::unauthenticated(
                "MTLS_NO_CLIENT_CERT",
                "mtls authentication needs a tls connection with a client certificate",
            )
        })?;
        // The certificate in the request proves nothing by itself; when sent
        // it must be the one the connection was verified with.
        if !presented.is_empty()
            && presented != leaf
            && pem_to_der(presented).as_deref() != Some(leaf)
        {
            return Err(Error::unauthenticated(
                "MTLS_CERT_MISMATCH",
                "mtls.client_cert differs from the certificate of the tls connection",
            ));
        }
        let common_name = subject_common_name(leaf).ok_or_else(|| {
            Error::unauthenticated(
                "MTLS_BAD_CERT",
                "client certificate has no readable subject common name",
            )
        })?;
        let identity = self.identities.get(&common_name).ok_or_else(|| {
            Error::permission_denied(
                "MTLS_UNKNOWN_IDENTITY",
                format!("client certificate `{common_name}` is not mapped to a namespace"),
            )
        })?;
        Ok(Principal {
            identity: format!("mtls:{common_name}"),
            namespace: identity.namespace.clone(),
            roles: identity.roles.clone(),
            method: AuthMethod::Mtls,
        })
    }
}

fn pem_to_der(bytes: &[u8]) -> Option<Vec<u8>> {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    let first = CertificateDer::pem_slice_iter(bytes).next()?;
    first.ok().map(|c| c.to_vec())
}

fn subject_common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}
