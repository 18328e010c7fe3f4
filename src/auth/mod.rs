//! Authentication: API keys, JWT and mTLS client certificates, each turned
//! into a [`Principal`] (identity, namespace, roles).
//!
//! Nothing secret is kept in memory in plain text: API keys are compared by
//! SHA-256 digest, JWT secrets live only inside the verifier's key.

use std::{collections::HashMap, sync::Arc};

use sha2::{Digest, Sha256};

use crate::{config::GatewayConfig, error::Error};

pub mod jwt;
pub mod mtls;

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    ApiKey,
    Jwt,
    Mtls,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who: API key name, JWT `sub`, or certificate common name.
    pub identity: String,
    pub namespace: String,
    pub roles: Vec<String>,
    pub method: AuthMethod,
}

/// Shared by every session the key opens.
struct ApiKeyEntry {
    principal: Arc<Principal>,
}

/// Verifies credentials against the configuration; a config reload
/// replaces what it knows ([`Authenticator::replace`]) for sessions opened
/// from then on.
pub struct Authenticator {
    current: arc_swap::ArcSwap<Credentials>,
}

/// What one configuration accepts.
pub struct Credentials {
    /// SHA-256 of the key → owner; a lookup by digest reveals nothing about
    /// the stored keys.
    api_keys: HashMap<[u8; 32], ApiKeyEntry>,
    jwt: Vec<jwt::JwtVerifier>,
    mtls: Option<mtls::MtlsIdentities>,
}

impl Authenticator {
    pub fn new(cfg: &GatewayConfig) -> Result<Self, String> {
        Ok(Authenticator {
            current: arc_swap::ArcSwap::from_pointee(Credentials::new(cfg)?),
        })
    }

    /// Puts reloaded credentials in use: a removed key opens no new
    /// session (sessions it opened run on until they end).
    pub fn replace(&self, credentials: Credentials) {
        self.current.store(Arc::new(credentials));
    }

    pub fn api_key(&self, key: &str) -> Result<Arc<Principal>, Error> {
        self.current.load().api_key(key)
    }

    pub fn jwt(&self, token: &str) -> Result<Arc<Principal>, Error> {
        self.current.load().jwt(token)
    }

    /// `presented` is the certificate the client put in the request (may be
    /// empty); `transport_leaf` is the verified certificate of the TLS
    /// connection. Only the latter proves anything.
    pub fn mtls(
        &self,
        presented: &[u8],
        transport_leaf: Option<&[u8]>,
    ) -> Result<Arc<Principal>, Error> {
        self.current.load().mtls(presented, transport_leaf)
    }
}

impl Credentials {
    /// The API keys, JWT issuers (whose key files are read here) and mTLS
    /// identities of `cfg`.
    pub fn new(cfg: &GatewayConfig) -> Result<Self, String> {
        let mut api_keys = HashMap::new();
        for (ns, spec) in &cfg.namespaces {
            for key in &spec.api_keys {
                let digest: [u8; 32] = hex::decode(&key.sha256)
                    .ok()
                    .and_then(|d| d.try_into().ok())
                    .ok_or_else(|| {
                        format!(
                            "namespace {ns}: api key `{}` sha256 is not 64 hex digits",
                            key.name
                        )
                    })?;
                api_keys.insert(
                    digest,
                    ApiKeyEntry {
                        principal: Arc::new(Principal {
                            identity: format!("api-key:{}", key.name),
                            namespace: ns.clone(),
                            roles: key.roles.clone(),
                            method: AuthMethod::ApiKey,
                        }),
                    },
                );
            }
        }
        let jwt = cfg
            .auth
            .jwt
            .iter()
            .map(jwt::JwtVerifier::new)
            .collect::<Result<Vec<_>, _>>()?;
        let mtls = cfg.auth.mtls.as_ref().map(mtls::MtlsIdentities::new);
        Ok(Credentials {
            api_keys,
            jwt,
            mtls,
        })
    }

    fn api_key(&self, key: &str) -> Result<Arc<Principal>, Error> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let entry = self.api_keys.get(&digest).ok_or_else(|| {
            Error::unauthenticated(
                "INVALID_API_KEY",
                "api key is not recognised; check the key or ask the operator for one",
            )
        })?;
        Ok(entry.principal.clone())
    }

    fn jwt(&self, token: &str) -> Result<Arc<Principal>, Error> {
        jwt::verify(&self.jwt, token).map(Arc::new)
    }

    fn mtls(
        &self,
        presented: &[u8],
        transport_leaf: Option<&[u8]>,
    ) -> Result<Arc<Principal>, Error> {
        let identities = self.mtls.as_ref().ok_or_else(|| {
            Error::unauthenticated(
                "MTLS_NOT_CONFIGURED",
                "mtls authentication is not configured on this gateway; use an api key or jwt",
            )
        })?;
        identities
            .authenticate(presented, transport_leaf)
            .map(Arc::new)
    }
}

/// Hex SHA-256 of an API key, as configuration stores it.
pub fn api_key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    #[test]
    fn api_keys_are_matched_by_digest() {
        let yaml = format!(
            "namespaces:\n  a:\n    allowed_backends: []\n    allowed_patterns: [queue]\n    api_keys: [{{ name: k1, sha256: \"{}\", roles: [writer] }}]\n",
            api_key_digest("secret-one")
        );
        let cfg = GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("_", "_"); 0]).unwrap();
        let auth = Authenticator::new(&cfg).unwrap();
        let p = auth.api_key("secret-one").unwrap();
        assert_eq!(p.namespace, "a");
        assert_eq!(p.roles, vec!["writer".to_string()]);
        assert_eq!(
            auth.api_key("secret-two").unwrap_err().reason,
            "INVALID_API_KEY"
        );
    }
}
