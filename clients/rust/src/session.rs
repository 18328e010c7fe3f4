//! A session that looks after itself: opened with an API key, a JWT or a
//! client certificate and a named or inline configuration; kept alive by
//! heartbeats paced by the TTL the gateway returns; its token put on every
//! call; reopened when the gateway says the token no longer works (expiry,
//! a gateway restart), if the caller allows; every call retried by one
//! rule (`retry.rs`).

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use parking_lot::RwLock;
use prism_proto::{
    config::v1::ClientConfig,
    session::v1::{
        create_session_request::{Auth as WireAuth, Config as WireConfig},
        session_service_client::SessionServiceClient,
        CloseSessionRequest, CreateSessionRequest, CreateSessionResponse, HeartbeatRequest,
        MutualTlsAuth,
    },
};
use tonic::{metadata::MetadataValue, Code, Status};

use crate::{
    client::Client,
    error::{Error, Result, RpcError},
    retry::{Resend, RetryPolicy},
};

/// The metadata header the gateway reads a session token from.
const TOKEN_HEADER: &str = "x-session-token";

/// Heartbeats go out three times per TTL, so two can be lost before the
/// session expires; within these bounds.
const HEARTBEAT_MIN: Duration = Duration::from_millis(100);
const HEARTBEAT_MAX: Duration = Duration::from_secs(60);
/// The first wait after a heartbeat's retries are spent; doubles to
/// `HEARTBEAT_MAX`.
const HEARTBEAT_RETRY: Duration = Duration::from_secs(1);

/// How a session proves who opens it.
#[derive(Clone)]
pub enum Credentials {
    /// An API key of the namespace.
    ApiKey(String),
    /// A JWT from an issuer the namespace trusts.
    Jwt(String),
    /// A client certificate (PEM), the one the TLS connection presents.
    Certificate(Vec<u8>),
}

impl std::fmt::Debug for Credentials {
    /// Never prints a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::ApiKey(_) => "ApiKey(..)",
            Credentials::Jwt(_) => "Jwt(..)",
            Credentials::Certificate(_) => "Certificate(..)",
        })
    }
}

/// Chooses a session's credentials and configuration, then opens it.
#[derive(Debug)]
pub struct SessionBuilder {
    client: Client,
    credentials: Option<Credentials>,
    config: Option<WireConfig>,
    client_id: String,
    metadata: HashMap<String, String>,
    reopen: bool,
}

impl SessionBuilder {
    pub(crate) fn new(client: Client) -> Self {
        SessionBuilder {
            client,
            credentials: None,
            config: None,
            client_id: String::new(),
            metadata: HashMap::new(),
            reopen: true,
        }
    }

    /// Authenticate with an API key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::ApiKey(key.into()));
        self
    }

    /// Authenticate with a JWT.
    pub fn jwt(mut self, token: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Jwt(token.into()));
        self
    }

    /// Authenticate with the client certificate of this client's mTLS
    /// connection ([`Tls::identity`](crate::Tls::identity)).
    pub fn mtls(mut self) -> Self {
        self.credentials = self
            .client
            .settings
            .client_cert
            .clone()
            .map(Credentials::Certificate);
        self
    }

    /// Authenticate with these credentials.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Use the gateway's configuration of this name.
    pub fn config(mut self, name: impl Into<String>) -> Self {
        self.config = Some(WireConfig::ConfigName(name.into()));
        self
    }

    /// Use a configuration given here; the namespace's policy still bounds
    /// it (a client config can narrow the policy, never widen it).
    pub fn inline_config(mut self, config: ClientConfig) -> Self {
        self.config = Some(WireConfig::InlineConfig(config));
        self
    }

    /// Name this client in the gateway's session list and logs.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// Attach a metadata pair to the session.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Whether the session opens itself again, with the same credentials
    /// and configuration, when the gateway says its token no longer works
    /// (it expired, or a restarted gateway does not know it). Default
    /// true. A reopened session is a new session on the gateway:
    /// subscriptions and transactions of the old one are gone, and the
    /// calls that were open on it end with their error.
    pub fn reopen(mut self, allow: bool) -> Self {
        self.reopen = allow;
        self
    }

    /// Opens the session and starts keeping it alive.
    pub async fn open(self) -> Result<Session> {
        let credentials = self.credentials.ok_or_else(|| {
            Error::InvalidInput(
                "a session needs credentials: api_key, jwt, or mtls on a client with a TLS \
                 identity"
                    .into(),
            )
        })?;
        let config = self.config.ok_or_else(|| {
            Error::InvalidInput(
                "a session needs a configuration: config(name) or inline_config".into(),
            )
        })?;
        let request = CreateSessionRequest {
            auth: Some(match credentials {
                Credentials::ApiKey(k) => WireAuth::ApiKey(k),
                Credentials::Jwt(t) => WireAuth::JwtToken(t),
                Credentials::Certificate(c) => WireAuth::Mtls(MutualTlsAuth { client_cert: c }),
            }),
            config: Some(config),
            client_id: self.client_id,
            client_version: concat!("prism-client-rust/", env!("CARGO_PKG_VERSION")).into(),
            metadata: self.metadata,
        };
        let (current, first) = Current::opened(create(&self.client, &request).await?, 0);
        let shared = Arc::new(Shared {
            client: self.client,
            open: request,
            reopen: self.reopen,
            current: RwLock::new(current),
            reopening: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
        });
        let keeper = tokio::spawn(keep_alive(shared.clone(), first)).abort_handle();
        Ok(Session {
            inner: Arc::new(Inner { shared, keeper }),
        })
    }
}

/// An open session. Cheap to clone; clones share the session. Dropping the
/// last clone stops its heartbeats (the gateway then ends it when its idle
/// timeout passes); [`Session::close`] ends it at once.
#[derive(Debug, Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    /// The heartbeat task: it holds `shared`, never `Inner`, so dropping
    /// the last `Session` drops this and ends it.
    keeper: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// What the session's calls and its heartbeat task share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) client: Client,
    /// The request that opened the session, sent again to reopen it.
    open: CreateSessionRequest,
    reopen: bool,
    current: RwLock<Current>,
    /// Held while reopening, so calls that all find the token dead open
    /// one new session, not one each.
    reopening: tokio::sync::Mutex<()>,
    closed: AtomicBool,
}

/// The gateway's session this one currently is.
#[derive(Debug, Clone)]
struct Current {
    token: Arc<str>,
    id: String,
    /// How many times the session was reopened before this one.
    generation: u64,
    expires_at: Option<SystemTime>,
    config: Option<ClientConfig>,
    features: Vec<String>,
}

impl Session {
    /// Reads what the current gateway session is, without copying it all.
    fn read<T>(&self, f: impl FnOnce(&Current) -> T) -> T {
        f(&self.inner.shared.current.read())
    }

    /// The gateway's id of the session (changes when it is reopened).
    pub fn id(&self) -> String {
        self.read(|c| c.id.clone())
    }

    /// The current session token, for calls made with the generated stubs
    /// directly. It changes when the session reopens.
    pub fn token(&self) -> String {
        self.read(|c| c.token.to_string())
    }

    /// When the gateway will end the session unless it hears from it.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.read(|c| c.expires_at)
    }

    /// The configuration the gateway resolved for the session.
    pub fn config(&self) -> Option<ClientConfig> {
        self.read(|c| c.config.clone())
    }

    /// The features the gateway's backend for this session supports.
    pub fn features(&self) -> Vec<String> {
        self.read(|c| c.features.clone())
    }

    /// How many times the session has been reopened.
    pub fn reopened(&self) -> u64 {
        self.read(|c| c.generation)
    }

    /// Sends one heartbeat now and returns the time left before expiry.
    pub async fn heartbeat(&self) -> Result<Duration> {
        self.inner.shared.heartbeat().await
    }

    /// Ends the session on the gateway at once (its open subscriptions and
    /// transactions end with it) and stops its heartbeats; calls on it (and
    /// its clones) then fail with [`Error::Closed`].
    pub async fn close(&self) -> Result<()> {
        let shared = &self.inner.shared;
        // Not while a reopen is installing a new session: the one closed
        // must be the one the gateway has.
        let _turn = shared.reopening.lock().await;
        if shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.keeper.abort();
        let token = self.read(|c| c.token.clone());
        shared.close_on_gateway(&token).await
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }
}

impl Shared {
    /// A request carrying the session token, with the per-attempt deadline.
    pub(crate) fn request<T>(&self, token: &str, message: T) -> tonic::Request<T> {
        let mut request = self.stream_request(token, message);
        request.set_timeout(self.client.settings.call_timeout);
        request
    }

    /// A request carrying the session token and no deadline, for streams
    /// that last as long as the caller reads them.
    pub(crate) fn stream_request<T>(&self, token: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = MetadataValue::try_from(token) {
            request.metadata_mut().insert(TOKEN_HEADER, value);
        }
        request
    }

    /// Whether the session reopens itself when its token stops working.
    pub(crate) fn may_reopen(&self) -> bool {
        self.reopen && !self.closed.load(Ordering::Acquire)
    }

    /// The token to call with and the generation it belongs to.
    fn token(&self) -> Result<(Arc<str>, u64)> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let current = self.current.read();
        Ok((current.token.clone(), current.generation))
    }

    /// Runs one logical call: each attempt gets the current token; a dead
    /// token reopens the session (once per call, if allowed) and the call
    /// goes again on the new one; transient errors are retried as `resend`
    /// allows, with backoff.
    pub(crate) async fn call<T, F, Fut>(&self, resend: Resend, mut attempt: F) -> Result<T>
    where
        F: FnMut(Arc<str>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut backoff = self.client.settings.retry.start();
        let mut reopened = false;
        loop {
            let (token, generation) = self.token()?;
            let e = match attempt(token).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => RpcError::from_status(&status),
            };
            if e.is_session_lost() && self.reopen && !reopened {
                reopened = true;
                self.reopen(generation).await?;
                continue;
            }
            match backoff.next(e.retry_after).filter(|_| resend.allows(&e)) {
                Some(wait) => {
                    tracing::debug!(error = %e, ?wait, "prism call failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                None => return Err(e.into()),
            }
        }
    }

    /// Opens a new session in place of generation `seen`, unless another
    /// call already has. (Holding `reopening`, so `close` waits for it and
    /// then closes the new session.)
    async fn reopen(&self, seen: u64) -> Result<()> {
        let _turn = self.reopening.lock().await;
        if self.token()?.1 != seen {
            return Ok(());
        }
        let opened = create(&self.client, &self.open).await?;
        tracing::info!(session = %opened.session_id, "prism session reopened");
        *self.current.write() = Current::opened(opened, seen + 1).0;
        Ok(())
    }

    /// CloseSession for `token`, forced: the caller is done with it. A
    /// session the gateway no longer knows is closed as far as the caller
    /// is concerned.
    async fn close_on_gateway(&self, token: &str) -> Result<()> {
        let stub = SessionServiceClient::new(self.client.channel.clone());
        let closed = retrying(&self.client.settings.retry, Resend::Safe, || {
            let request = self.request(
                token,
                CloseSessionRequest {
                    session_token: String::new(),
                    force: true,
                },
            );
            let mut stub = stub.clone();
            async move { stub.close_session(request).await }
        })
        .await;
        match closed {
            Ok(r) if r.success => Ok(()),
            Ok(r) => Err(RpcError::local(
                Code::FailedPrecondition,
                format!("the gateway did not close the session: {}", r.message),
            )
            .into()),
            Err(e) if e.is_session_lost() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn heartbeat(&self) -> Result<Duration> {
        let stub = SessionServiceClient::new(self.client.channel.clone());
        let beat = self
            .call(Resend::Safe, |token| {
                let request = self.request(&token, HeartbeatRequest::default());
                let mut stub = stub.clone();
                async move { stub.heartbeat(request).await }
            })
            .await?;
        let ttl = beat
            .ttl
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(HEARTBEAT_MAX);
        self.current.write().expires_at = SystemTime::now().checked_add(ttl);
        Ok(ttl)
    }
}

/// Retries a call that carries no session token (opening, closing).
async fn retrying<T, F, Fut>(
    retry: &RetryPolicy,
    resend: Resend,
    mut attempt: F,
) -> Result<T, RpcError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut backoff = retry.start();
    loop {
        let e = match attempt().await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) => RpcError::from_status(&status),
        };
        match backoff.next(e.retry_after).filter(|_| resend.allows(&e)) {
            Some(wait) => tokio::time::sleep(wait).await,
            None => return Err(e),
        }
    }
}

/// CreateSession with the session's credentials and configuration. A retry
/// after a lost answer may leave a session the client never learns of; the
/// gateway ends it at its idle timeout.
async fn create(client: &Client, open: &CreateSessionRequest) -> Result<CreateSessionResponse> {
    let stub = SessionServiceClient::new(client.channel.clone());
    let timeout = client.settings.call_timeout;
    retrying(&client.settings.retry, Resend::Safe, || {
        let mut request = tonic::Request::new(open.clone());
        request.set_timeout(timeout);
        let mut stub = stub.clone();
        async move { stub.create_session(request).await }
    })
    .await
    .map_err(Error::from)
}

impl Current {
    /// The session `opened` is; and when to send its first heartbeat.
    fn opened(opened: CreateSessionResponse, generation: u64) -> (Current, Duration) {
        let expires_at = opened.expires_at.and_then(|t| SystemTime::try_from(t).ok());
        let ttl = expires_at
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or(HEARTBEAT_MAX);
        let current = Current {
            token: opened.session_token.into(),
            id: opened.session_id,
            generation,
            expires_at,
            config: opened.config,
            features: opened.supported_features,
        };
        (current, cadence(ttl))
    }
}

/// How often to heartbeat a session with `ttl` left.
fn cadence(ttl: Duration) -> Duration {
    (ttl / 3).clamp(HEARTBEAT_MIN, HEARTBEAT_MAX)
}

/// The heartbeat task of a session: ends when the session is dropped or
/// closed (its abort handle), or when the session is lost and may not
/// reopen.
async fn keep_alive(shared: Arc<Shared>, first: Duration) {
    let mut next = first;
    let mut failing = HEARTBEAT_RETRY;
    loop {
        tokio::time::sleep(next).await;
        match shared.heartbeat().await {
            Ok(ttl) => {
                next = cadence(ttl);
                failing = HEARTBEAT_RETRY;
            }
            Err(Error::Closed) => return,
            Err(Error::Rpc(e)) if e.is_session_lost() && !shared.reopen => {
                tracing::warn!(error = %e, "prism session lost; not allowed to reopen");
                return;
            }
            // The credentials no longer open a session (a revoked key, an
            // expired JWT): heartbeats cannot help; calls report it.
            Err(Error::Rpc(e))
                if matches!(e.code, Code::Unauthenticated | Code::PermissionDenied) =>
            {
                tracing::warn!(error = %e, "prism session cannot be reopened");
                return;
            }
            // Retries spent (the gateway down for long): keep trying, backing
            // off to a minute, so the session reopens when it is back.
            Err(e) => {
                tracing::warn!(error = %e, "prism session heartbeat failed");
                next = failing;
                failing = (failing * 2).min(HEARTBEAT_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_go_three_times_per_ttl_within_bounds() {
        assert_eq!(cadence(Duration::from_secs(30)), Duration::from_secs(10));
        assert_eq!(cadence(Duration::from_millis(60)), HEARTBEAT_MIN);
        assert_eq!(cadence(Duration::from_secs(24 * 3600)), HEARTBEAT_MAX);
    }

    #[test]
    fn credentials_never_print_their_secret() {
        let printed = format!("{:?}", Credentials::ApiKey("s3cret".into()));
        assert!(!printed.contains("s3cret"), "{printed}");
    }
}
