//! One session's state, shared by the registry (hot path) and its
//! SessionActor (lifecycle). Everything that changes per request is an
//! atomic, so a data RPC never takes a lock or waits on a mailbox.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use dashmap::DashMap;
use tokio::sync::Notify;

use super::{clock::ms, rate::RateLimiter, token::TokenDigest, Clock};
use crate::{
    auth::Principal,
    config::{resolve::ResolvedConfig, NamespaceSpec, SessionPolicy},
    error::{Error, ErrorKind},
    proto::session::v1::SessionStatus,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum SessionState {
    Active,
    /// Closing: waiting for pending operations, accepting no new ones.
    Terminating,
    Closed,
    Expired,
}

impl SessionState {
    pub fn is_ended(self) -> bool {
        matches!(self, SessionState::Closed | SessionState::Expired)
    }

    fn from_u8(v: u8) -> Self {
        match v {
            ACTIVE => SessionState::Active,
            TERMINATING => SessionState::Terminating,
            EXPIRED => SessionState::Expired,
            _ => SessionState::Closed,
        }
    }

    fn byte(self) -> u8 {
        match self {
            SessionState::Active => ACTIVE,
            SessionState::Terminating => TERMINATING,
            SessionState::Closed => CLOSED,
            SessionState::Expired => EXPIRED,
        }
    }

    /// Moves `state` from `from` to `to`; false if it was not `from`.
    fn transition(state: &AtomicU8, from: SessionState, to: SessionState) -> bool {
        state
            .compare_exchange(from.byte(), to.byte(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Closed,
    Expired,
    /// Its actor kept failing and the supervisor gave up.
    Failed,
    Shutdown,
}

// The state byte of an entry. An ended session keeps *why* it ended in the
// same byte, so a stream that sees the end can name it without a lookup and
// without a second field that could disagree with the state.
const ACTIVE: u8 = 0;
const TERMINATING: u8 = 1;
const CLOSED: u8 = 2;
const EXPIRED: u8 = 3;
const FAILED: u8 = 4;
const SHUTDOWN: u8 = 5;

impl EndReason {
    fn byte(self) -> u8 {
        match self {
            EndReason::Closed => CLOSED,
            EndReason::Expired => EXPIRED,
            EndReason::Failed => FAILED,
            EndReason::Shutdown => SHUTDOWN,
        }
    }

    fn from_byte(v: u8) -> Option<Self> {
        match v {
            CLOSED => Some(EndReason::Closed),
            EXPIRED => Some(EndReason::Expired),
            FAILED => Some(EndReason::Failed),
            SHUTDOWN => Some(EndReason::Shutdown),
            _ => None,
        }
    }

    /// The error a call or stream of an ended session gets: one per reason,
    /// so clients can tell an expiry from a close or a failure.
    pub fn error(self, session_id: &str, at: std::time::SystemTime) -> Error {
        let (reason, message) = match self {
            EndReason::Expired => ("SESSION_EXPIRED", "session expired; create a new session"),
            EndReason::Closed => ("SESSION_CLOSED", "session was closed; create a new session"),
            EndReason::Failed => (
                "SESSION_FAILED",
                "session ended after repeated internal failures; create a new session",
            ),
            EndReason::Shutdown => (
                "SESSION_CLOSED",
                "session was closed by gateway shutdown; create a new session",
            ),
        };
        let key = if self == EndReason::Expired {
            "expired_at"
        } else {
            "closed_at"
        };
        let at = humantime::format_rfc3339_seconds(at);
        let e = Error::unauthenticated(reason, message);
        // (An end learnt from the cluster's store for a session never
        // active here carries no id.)
        let e = if session_id.is_empty() {
            e
        } else {
            e.with("session_id", session_id)
        };
        e.with(key, at.to_string())
    }
}

/// What every session of a namespace shares: the namespace's session
/// policy, and counters kept as things happen, so `/metrics` reads them
/// without visiting the sessions.
pub struct NamespaceSessions {
    /// The name, shared: also every call's metrics label (no copy per call).
    pub name: std::sync::Arc<str>,
    /// The namespace's rules (sessions, allowed patterns and backends,
    /// collections, Transact tables, PubSub buffers), read by the call gate
    /// through the session with no lookup; a config reload replaces them
    /// (see [`NamespaceSessions::spec`]).
    spec: arc_swap::ArcSwap<NamespaceSpec>,
    /// Open sessions (bounded by `policy.max_sessions`).
    pub open: AtomicUsize,
    /// Message bytes of data calls, open and ended sessions together.
    pub bytes_received: AtomicI64,
    pub bytes_sent: AtomicI64,
    /// Live Queue and PubSub subscriptions, and streaming transactions.
    pub subscriptions: AtomicI64,
    pub transactions: AtomicI64,
    /// Open sessions by principal identity (bounded by
    /// `session.max_sessions_per_principal`); a principal with none has no
    /// entry.
    pub by_principal: DashMap<String, usize>,
}

impl NamespaceSessions {
    pub fn new(name: &str, spec: NamespaceSpec) -> Self {
        NamespaceSessions {
            name: name.into(),
            spec: arc_swap::ArcSwap::from_pointee(spec),
            open: AtomicUsize::new(0),
            bytes_received: AtomicI64::new(0),
            bytes_sent: AtomicI64::new(0),
            subscriptions: AtomicI64::new(0),
            transactions: AtomicI64::new(0),
            by_principal: DashMap::new(),
        }
    }

    /// The namespace's rules as they are now. A call takes them once, when
    /// it is admitted, and keeps them to its end.
    pub fn spec(&self) -> Arc<NamespaceSpec> {
        self.spec.load_full()
    }

    /// New rules from a config reload: every session of the namespace
    /// follows them from its next call; none is dropped.
    pub fn replace_spec(&self, spec: NamespaceSpec) {
        self.spec.store(Arc::new(spec));
    }
}

impl crate::call::CallSession for SessionEntry {
    fn namespace_label(&self) -> &std::sync::Arc<str> {
        &self.namespace_sessions.name
    }

    fn session_ref(&self) -> crate::call::SessionRef {
        crate::call::SessionRef {
            namespace: self.namespace().to_string(),
            session_id: self.id.clone(),
            identity: self.principal.identity.clone(),
        }
    }
}

/// One live child counted in a namespace gauge (subscriptions or
/// transactions) until released — at its end, or when dropped unended.
pub struct Gauged {
    namespace: Arc<NamespaceSessions>,
    gauge: fn(&NamespaceSessions) -> &AtomicI64,
    released: std::sync::atomic::AtomicBool,
}

impl Gauged {
    pub fn new(
        namespace: Arc<NamespaceSessions>,
        gauge: fn(&NamespaceSessions) -> &AtomicI64,
    ) -> Self {
        gauge(&namespace).fetch_add(1, Ordering::Relaxed);
        Gauged {
            namespace,
            gauge,
            released: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Stops counting (once).
    pub fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            (self.gauge)(&self.namespace).fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Gauged {
    fn drop(&mut self) {
        self.release();
    }
}

pub struct SessionEntry {
    pub id: String,
    pub token_digest: TokenDigest,
    /// Shared with every session the same API key opened.
    pub principal: Arc<Principal>,
    pub config: Arc<ResolvedConfig>,
    pub client_id: String,
    pub client_version: String,
    pub metadata: HashMap<String, String>,
    /// Its namespace's policy and counters, shared by its sessions.
    pub namespace_sessions: Arc<NamespaceSessions>,
    pub clock: Clock,
    /// When the session was created (on whichever instance created it).
    pub created_at: std::time::SystemTime,
    /// No extension goes past this (created + max lifetime).
    pub hard_deadline_ms: u64,
    expires_ms: AtomicU64,
    last_activity_ms: AtomicU64,
    state: AtomicU8,
    pub requests: AtomicI64,
    pub bytes_sent: AtomicI64,
    pub bytes_received: AtomicI64,
    pub active_streams: AtomicI32,
    /// Operations (unary calls and streams) not yet finished.
    in_flight: AtomicI32,
    /// Woken when `in_flight` drops to zero, for a draining close.
    drained: Notify,
    /// The config's `rate_limit`, when it sets one.
    limiter: Option<Box<RateLimiter>>,
    /// Activity not yet written to a shared session store (only used with
    /// one; see `session::cluster`).
    pub(crate) unflushed: std::sync::atomic::AtomicBool,
    /// Children on their way to its actor, not yet filed among its
    /// children: the namespace supervisor does not retire the actor
    /// meanwhile (see `actors::session::Starting`).
    pub(crate) starting: AtomicU32,
    /// Supervisor ticks in a row its actor was found with nothing to look
    /// after (it is retired after a few).
    pub(crate) idle_ticks: AtomicU8,
    /// The deadline its namespace's expiry schedule filed it under last.
    pub(crate) filed_ms: AtomicU64,
}

impl SessionEntry {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        token_digest: TokenDigest,
        principal: Arc<Principal>,
        config: Arc<ResolvedConfig>,
        client_id: String,
        client_version: String,
        metadata: HashMap<String, String>,
        namespace_sessions: Arc<NamespaceSessions>,
        clock: Clock,
    ) -> Self {
        let spec = namespace_sessions.spec();
        let policy = &spec.session;
        let now = clock.now_ms();
        let hard = now.saturating_add(ms(policy.max_lifetime));
        let expires = now.saturating_add(ms(policy.idle_timeout)).min(hard);
        SessionEntry {
            id,
            token_digest,
            principal,
            client_id,
            client_version,
            metadata,
            namespace_sessions,
            clock,
            created_at: clock.wall_at(now),
            hard_deadline_ms: hard,
            expires_ms: AtomicU64::new(expires),
            last_activity_ms: AtomicU64::new(now),
            state: AtomicU8::new(ACTIVE),
            requests: AtomicI64::new(0),
            bytes_sent: AtomicI64::new(0),
            bytes_received: AtomicI64::new(0),
            active_streams: AtomicI32::new(0),
            in_flight: AtomicI32::new(0),
            drained: Notify::new(),
            limiter: RateLimiter::new(config.proto.rate_limit.as_ref(), now).map(Box::new),
            config,
            unflushed: std::sync::atomic::AtomicBool::new(false),
            starting: AtomicU32::new(0),
            idle_ticks: AtomicU8::new(0),
            filed_ms: AtomicU64::new(0),
        }
    }

    /// The same session as another instance created it: its creation time,
    /// maximum lifetime and current expiry come from the session store.
    pub fn restored(
        mut self,
        created_at: std::time::SystemTime,
        hard_deadline_ms: u64,
        expires_ms: u64,
    ) -> Self {
        self.created_at = created_at;
        self.hard_deadline_ms = hard_deadline_ms;
        *self.expires_ms.get_mut() = expires_ms.min(hard_deadline_ms);
        self
    }

    /// Moves the deadline to `expires_ms` (learnt from the session store:
    /// activity on another instance) unless it is already later.
    pub fn extend_to(&self, expires_ms: u64) {
        self.expires_ms
            .fetch_max(expires_ms.min(self.hard_deadline_ms), Ordering::AcqRel);
    }

    /// Counts a data call against the config's `rate_limit`:
    /// RESOURCE_EXHAUSTED `RATE_LIMITED` (with `retry_after_ms`) when the
    /// session's bucket is empty.
    pub fn check_rate(&self) -> Result<(), Error> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.take(self.clock.now_ms()).map_err(|wait_ms| {
            Error::new(
                ErrorKind::ResourceExhausted,
                "RATE_LIMITED",
                format!(
                    "this session's config `{}` allows {} requests per second; retry in {wait_ms} ms",
                    self.config.name,
                    self.config
                        .proto
                        .rate_limit
                        .as_ref()
                        .map_or(0, |r| r.requests_per_second)
                ),
            )
            .with("retry_after_ms", wait_ms.to_string())
        })
    }

    pub fn namespace(&self) -> &str {
        &self.principal.namespace
    }

    /// Its namespace's session policy, as it is now.
    pub fn policy(&self) -> SessionPolicy {
        self.namespace_sessions.spec.load().session
    }

    pub fn state(&self) -> SessionState {
        SessionState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn expires_ms(&self) -> u64 {
        self.expires_ms.load(Ordering::Acquire)
    }

    pub fn last_activity_ms(&self) -> u64 {
        self.last_activity_ms.load(Ordering::Acquire)
    }

    pub fn is_past_expiry(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_ms()
    }

    /// Records activity: a refresh by the idle timeout.
    pub fn touch(&self, now_ms: u64) {
        self.refresh(now_ms, Duration::ZERO);
    }

    /// Records activity and moves the deadline to now + `extension` (the
    /// idle timeout when zero), never past the maximum lifetime and never
    /// backwards. Returns the new expiry.
    pub fn refresh(&self, now_ms: u64, extension: Duration) -> u64 {
        let ext = if extension.is_zero() {
            self.policy().idle_timeout
        } else {
            extension
        };
        let target = now_ms.saturating_add(ms(ext)).min(self.hard_deadline_ms);
        self.last_activity_ms.fetch_max(now_ms, Ordering::AcqRel);
        self.expires_ms
            .fetch_max(target, Ordering::AcqRel)
            .max(target)
    }

    pub fn status(&self, now_ms: u64) -> SessionStatus {
        match self.state() {
            SessionState::Active => {
                if self.expires_ms().saturating_sub(now_ms) <= ms(self.policy().expiring_within) {
                    SessionStatus::Expiring
                } else {
                    SessionStatus::Active
                }
            }
            SessionState::Terminating => SessionStatus::Terminating,
            SessionState::Closed | SessionState::Expired => SessionStatus::Unspecified,
        }
    }

    /// Moves Active → Terminating; false if the session was not active.
    pub fn begin_terminating(&self) -> bool {
        SessionState::transition(&self.state, SessionState::Active, SessionState::Terminating)
    }

    /// Terminating → Active again (a non-forced close that could not drain).
    pub fn resume_active(&self) {
        SessionState::transition(&self.state, SessionState::Terminating, SessionState::Active);
    }

    /// Why the session ended; `None` while it is open.
    pub fn end_reason(&self) -> Option<EndReason> {
        EndReason::from_byte(self.state.load(Ordering::Acquire))
    }

    /// The error for a call or stream of this session once it has ended
    /// (`None` while it is open).
    pub fn ended_error(&self) -> Option<Error> {
        let reason = self.end_reason()?;
        Some(reason.error(&self.id, self.clock.wall_at(self.clock.now_ms())))
    }

    /// Marks the session ended; true only for the caller that ended it.
    pub(crate) fn mark_ended(&self, reason: EndReason) -> bool {
        loop {
            let current = self.state.load(Ordering::Acquire);
            if EndReason::from_byte(current).is_some() {
                return false;
            }
            if self
                .state
                .compare_exchange(current, reason.byte(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.drained.notify_waiters();
                return true;
            }
        }
    }

    /// Resolves once the session has ended (at once if it already has).
    pub async fn ended(&self) {
        loop {
            let notified = self.drained.notified();
            if self.state().is_ended() {
                return;
            }
            notified.await;
        }
    }

    pub fn pending_operations(&self) -> i32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counts one request and its sizes, on the session and its namespace.
    pub fn record_request(&self, received: usize, sent: usize) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(received as i64, Ordering::Relaxed);
        self.bytes_sent.fetch_add(sent as i64, Ordering::Relaxed);
        let ns = &self.namespace_sessions;
        ns.bytes_received
            .fetch_add(received as i64, Ordering::Relaxed);
        ns.bytes_sent.fetch_add(sent as i64, Ordering::Relaxed);
    }

    /// Counts bytes sent on a stream (the stream's request counted once).
    pub fn record_sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as i64, Ordering::Relaxed);
        self.namespace_sessions
            .bytes_sent
            .fetch_add(bytes as i64, Ordering::Relaxed);
    }

    /// Starts an operation that a draining close waits for. Refused once
    /// the session is terminating.
    pub fn begin_operation(self: &Arc<Self>, stream: bool) -> Result<OperationGuard, Error> {
        if self.state() != SessionState::Active {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                "SESSION_TERMINATING",
                "session is closing and accepts no new operations; open a new session",
            )
            .with("session_id", self.id.clone()));
        }
        if stream {
            let max = self.policy().max_streams_per_session;
            self.active_streams
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .map_err(|_| {
                    Error::new(
                        ErrorKind::ResourceExhausted,
                        "TOO_MANY_STREAMS",
                        format!(
                            "this session already has its maximum of {max} open streams; \
                             end one or open another session"
                        ),
                    )
                    .with("limit", "session.max_streams_per_session")
                })?;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(OperationGuard {
            entry: self.clone(),
            stream,
        })
    }

    /// Waits until no operation is pending, or `timeout` passes; returns the
    /// number still pending.
    pub async fn wait_drained(&self, timeout: Duration) -> i32 {
        let wait = async {
            loop {
                let notified = self.drained.notified();
                if self.pending_operations() == 0 || self.state().is_ended() {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        self.pending_operations()
    }
}

/// Held for the life of an operation; dropping it ends the operation.
pub struct OperationGuard {
    entry: Arc<SessionEntry>,
    stream: bool,
}

impl Drop for OperationGuard {
    fn drop(&mut self) {
        if self.stream {
            self.entry.active_streams.fetch_sub(1, Ordering::AcqRel);
        }
        if self.entry.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.entry.drained.notify_waiters();
        }
    }
}

/// A map or set key that is a session's id, read through its entry: maps
/// keyed by session id hold no copy of it (an idle session's memory counts,
/// see loadtest/README.md) and are still looked up with a `&str`.
#[derive(Clone)]
pub struct ById(pub Arc<SessionEntry>);

impl std::hash::Hash for ById {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes, so `Borrow<str>` lookups find it.
        self.0.id.as_str().hash(state)
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl std::borrow::Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}
