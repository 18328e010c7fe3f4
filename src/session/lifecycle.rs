//! Session lifecycle operations behind SessionService: authenticate, resolve
//! the client config, register the session and hand it to its namespace's
//! supervisor; heartbeat, refresh and close.

use std::{collections::HashMap, sync::Arc, time::Duration};

use super::{token, EndReason, SessionEntry, SessionRegistry};
use crate::{
    auth::{Authenticator, Principal},
    config::{
        resolve::{self, NamedConfigs},
        LiveConfig, SessionPolicy,
    },
    error::Error,
    proto::config::v1::ClientConfig,
};

/// How a client proves who it is.
pub enum Credentials<'a> {
    ApiKey(&'a str),
    Jwt(&'a str),
    /// The certificate in the request and the verified one of the connection.
    Mtls {
        presented: &'a [u8],
        transport_leaf: Option<&'a [u8]>,
    },
}

/// Which client configuration a session uses.
pub enum ConfigChoice<'a> {
    Named(&'a str),
    Inline(&'a ClientConfig),
}

pub struct NewSession<'a> {
    pub credentials: Option<Credentials<'a>>,
    pub config: Option<ConfigChoice<'a>>,
    pub client_id: String,
    pub client_version: String,
    pub metadata: HashMap<String, String>,
}

/// What a session keeps of the client's own strings is bounded by its
/// namespace's policy: INVALID_ARGUMENT naming the limit otherwise.
fn check_client_fields(
    policy: &SessionPolicy,
    client_id: &str,
    client_version: &str,
    metadata: &HashMap<String, String>,
) -> Result<(), Error> {
    let too_large = |reason: &'static str, limit: &'static str, message: String| {
        Error::invalid_argument(reason, message).with("limit", limit)
    };
    for (field, value) in [("client_id", client_id), ("client_version", client_version)] {
        if value.len() > policy.max_client_id_bytes {
            return Err(too_large(
                "CLIENT_ID_TOO_LONG",
                "session.max_client_id_bytes",
                format!(
                    "{field} has {} bytes; at most {} are allowed",
                    value.len(),
                    policy.max_client_id_bytes
                ),
            ));
        }
    }
    if metadata.len() > policy.max_metadata_entries {
        return Err(too_large(
            "METADATA_TOO_LARGE",
            "session.max_metadata_entries",
            format!(
                "metadata has {} entries; at most {} are allowed",
                metadata.len(),
                policy.max_metadata_entries
            ),
        ));
    }
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > policy.max_metadata_bytes {
        return Err(too_large(
            "METADATA_TOO_LARGE",
            "session.max_metadata_bytes",
            format!(
                "metadata has {bytes} bytes of keys and values; at most {} are allowed",
                policy.max_metadata_bytes
            ),
        ));
    }
    Ok(())
}

/// Outcome of CloseSession.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub success: bool,
    pub message: String,
    pub pending_operations: i32,
}

/// Where sessions are looked after. The actor tree implements it
/// (`actors::Supervisors`); the lifecycle only hands sessions over and
/// asks for their actors to stop, so the session layer sits below the
/// actors that serve it.
#[async_trait::async_trait]
pub trait SessionHost: Send + Sync {
    /// Hands a session to its namespace supervisor, which keeps its
    /// deadline (its actor starts with its first child).
    async fn host_session(&self, entry: Arc<SessionEntry>) -> Result<(), Error>;
    /// Stops a session's actor; the session has already left the registry.
    fn stop_session(&self, namespace: &str, session_id: &str);
    /// Stops every session actor (shutdown, after every session ended).
    fn stop_all_sessions(&self);
}

pub struct Sessions {
    config: LiveConfig,
    named: Arc<NamedConfigs>,
    auth: Arc<Authenticator>,
    registry: Arc<SessionRegistry>,
    host: Arc<dyn SessionHost>,
}

impl Sessions {
    /// The sessions of this instance; with a shared `store`, this instance
    /// joins the cluster that shares it (its background work starts on the
    /// current runtime).
    pub fn new(
        config: LiveConfig,
        named: Arc<NamedConfigs>,
        auth: Arc<Authenticator>,
        registry: Arc<SessionRegistry>,
        host: Arc<dyn SessionHost>,
        store: Option<Arc<dyn super::store::SessionStore>>,
    ) -> Self {
        if let Some(store) = store {
            let cluster = Arc::new(super::cluster::Cluster::new(
                store,
                config.load().sessions.clone(),
                host.clone(),
                config.clone(),
                named.clone(),
            ));
            registry.join(cluster.clone());
            cluster.start(&registry);
        }
        Sessions {
            config,
            named,
            auth,
            registry,
            host,
        }
    }

    pub fn registry(&self) -> &Arc<SessionRegistry> {
        &self.registry
    }

    fn authenticate(&self, credentials: Option<Credentials<'_>>) -> Result<Arc<Principal>, Error> {
        let principal = match credentials {
            Some(Credentials::ApiKey(key)) => self.auth.api_key(key)?,
            Some(Credentials::Jwt(jwt)) => self.auth.jwt(jwt)?,
            Some(Credentials::Mtls {
                presented,
                transport_leaf,
            }) => self.auth.mtls(presented, transport_leaf)?,
            None => {
                return Err(Error::unauthenticated(
                    "MISSING_CREDENTIALS",
                    "no credentials: set api_key, jwt_token or mtls in CreateSessionRequest",
                ))
            }
        };
        if !self
            .config
            .load()
            .namespaces
            .contains_key(&principal.namespace)
        {
            return Err(Error::permission_denied(
                "NAMESPACE_NOT_FOUND",
                format!(
                    "credentials name namespace `{}`, which is not configured",
                    principal.namespace
                ),
            ));
        }
        Ok(principal)
    }

    /// Creates a session: the returned token is the only copy there is.
    pub async fn create(
        &self,
        request: NewSession<'_>,
    ) -> Result<(String, Arc<SessionEntry>), Error> {
        let principal = match self.authenticate(request.credentials) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(reason = e.reason, "session authentication failed");
                self.registry.audit().record(crate::audit::Record {
                    event: "session.auth_failure",
                    outcome: e.reason.to_string(),
                    ..Default::default()
                });
                return Err(e);
            }
        };
        let stored_config = request
            .config
            .as_ref()
            .filter(|_| self.registry.cluster().is_some())
            .map(super::cluster::stored_config);
        let resolved = match request.config {
            Some(ConfigChoice::Named(name)) => {
                let resolved = self.named.get(name)?;
                if resolved.namespace != principal.namespace {
                    return Err(Error::permission_denied(
                        "NAMESPACE_MISMATCH",
                        format!(
                            "config `{name}` belongs to namespace `{}`; these credentials are for `{}`",
                            resolved.namespace, principal.namespace
                        ),
                    ));
                }
                resolved
            }
            Some(ConfigChoice::Inline(inline)) => Arc::new(resolve::resolve_inline(
                &self.config.load(),
                &principal.namespace,
                inline,
            )?),
            None => {
                return Err(Error::invalid_argument(
                    "MISSING_CONFIG",
                    "no client config: set config_name or inline_config in CreateSessionRequest",
                ))
            }
        };
        if let Some(needed) = resolved.missing_roles(&principal.roles) {
            return Err(Error::permission_denied(
                "ROLE_NOT_ALLOWED",
                format!(
                    "config `{}` needs one of the roles: {}",
                    resolved.name,
                    needed.join(", ")
                ),
            ));
        }
        let namespace = self.registry.namespace(&principal.namespace)?.clone();
        check_client_fields(
            &namespace.spec().session,
            &request.client_id,
            &request.client_version,
            &request.metadata,
        )?;
        let (token, digest) = token::new_token();
        let entry = Arc::new(SessionEntry::new(
            token::new_session_id(),
            digest,
            principal,
            resolved,
            request.client_id,
            request.client_version,
            request.metadata,
            namespace,
            *self.registry.clock(),
        ));
        match (self.registry.cluster(), stored_config) {
            (Some(cluster), Some(stored)) => cluster.create(&self.registry, &entry, stored).await?,
            _ => self.registry.insert(entry.clone())?,
        }
        if let Err(e) = self.host.host_session(entry.clone()).await {
            if let Err(lost) = self.end(&entry, EndReason::Failed).await {
                tracing::warn!(error = %lost.message, session_id = %entry.id, "a session whose actor did not start is left to expire in the store");
            }
            return Err(e);
        }
        tracing::info!(
            session_id = %entry.id,
            namespace = entry.namespace(),
            identity = %self.registry.audit().identity(&entry.principal.identity),
            config = %entry.config.name,
            "session created"
        );
        Ok((token, entry))
    }

    /// Closes a session. Without `force`, new operations are refused and the
    /// close waits (up to the namespace's drain timeout) for pending ones;
    /// if some remain, the session stays open and the count is reported.
    /// In a cluster the close waits for this instance's operations; the
    /// other instances cancel theirs when the end reaches them.
    pub async fn close(&self, entry: &Arc<SessionEntry>, force: bool) -> Result<Closed, Error> {
        if force {
            let pending = entry.pending_operations();
            self.end(entry, EndReason::Closed).await?;
            let message = if pending == 0 {
                "session closed".to_string()
            } else {
                format!("session closed; {pending} pending operations were cancelled")
            };
            return Ok(Closed {
                success: true,
                message,
                pending_operations: pending,
            });
        }
        entry.begin_terminating();
        let pending = entry.wait_drained(entry.policy().close_drain_timeout).await;
        if entry.state().is_ended() {
            // A forced close, expiry or shutdown ended it while we waited.
            return Ok(Closed {
                success: true,
                message: "session was closed while draining".to_string(),
                pending_operations: pending,
            });
        }
        if pending > 0 {
            entry.resume_active();
            return Ok(Closed {
                success: false,
                message: format!(
                    "{pending} operations still pending after {}; retry later or close with force",
                    humantime::format_duration(entry.policy().close_drain_timeout)
                ),
                pending_operations: pending,
            });
        }
        if let Err(e) = self.end(entry, EndReason::Closed).await {
            entry.resume_active();
            return Err(e);
        }
        Ok(Closed {
            success: true,
            message: "session closed".to_string(),
            pending_operations: 0,
        })
    }

    /// Ends a session: in a cluster in the store first (so every instance
    /// refuses it), then here; the store being unavailable leaves it open.
    async fn end(&self, entry: &Arc<SessionEntry>, reason: EndReason) -> Result<(), Error> {
        if let Some(cluster) = self.registry.cluster() {
            return cluster.end(&self.registry, entry, reason).await;
        }
        if self.registry.end(entry, reason) {
            self.host.stop_session(entry.namespace(), &entry.id);
        }
        Ok(())
    }

    /// In a cluster, writes the session's expiry to the store and reads
    /// back where it stands (Heartbeat, Refresh and GetSession are seen by
    /// every instance at once); an end found there is this call's error.
    pub async fn sync(&self, entry: &Arc<SessionEntry>) -> Result<(), Error> {
        let Some(cluster) = self.registry.cluster() else {
            return Ok(());
        };
        if cluster.sync(&self.registry, entry).await? {
            Ok(())
        } else {
            Err(entry
                .ended_error()
                .unwrap_or_else(|| self.registry.ended_error(&entry.token_digest)))
        }
    }

    /// Extends a session; the new expiry never passes its maximum lifetime.
    pub async fn refresh(
        &self,
        entry: &Arc<SessionEntry>,
        extension: Option<prost_types::Duration>,
    ) -> Result<u64, Error> {
        let extension = match extension {
            None => Duration::ZERO,
            Some(d) if d.seconds < 0 || d.nanos < 0 => {
                return Err(Error::invalid_argument(
                    "INVALID_EXTENSION",
                    "extension must not be negative",
                ))
            }
            Some(d) => Duration::new(d.seconds as u64, d.nanos as u32),
        };
        let expires = entry.refresh(self.registry.clock().now_ms(), extension);
        self.sync(entry).await?;
        self.registry.audit_session("session.refresh", entry);
        Ok(expires.max(entry.expires_ms()))
    }

    /// Ends every session (gateway shutdown). In a cluster the sessions stay
    /// open for the other instances: activity is written, activations
    /// dropped.
    pub async fn close_all(&self) -> usize {
        if let Some(cluster) = self.registry.cluster() {
            let left = cluster.leave(&self.registry).await;
            self.host.stop_all_sessions();
            return left;
        }
        let closed = self
            .registry
            .all()
            .iter()
            .filter(|entry| self.registry.end(entry, EndReason::Shutdown))
            .count();
        self.host.stop_all_sessions();
        closed
    }

    /// Names of features every session has, before its backend's interfaces.
    pub fn base_features() -> &'static [&'static str] {
        &[
            "session.v1",
            "config.v1",
            "grpc.health.v1",
            "grpc.reflection.v1",
            "x-session-token",
        ]
    }
}
