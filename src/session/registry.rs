//! The session registry: token digest → entry in a DashMap, so every RPC
//! checks its token in O(1) without touching an actor. Ended sessions leave a
//! tombstone for a while so clients learn *why* a token stopped working.

use crate::call::CallSession as _;
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use dashmap::{DashMap, DashSet};
use tokio::sync::broadcast;

use super::{
    clock::ms,
    entry::{ById, EndReason, NamespaceSessions},
    token, Clock, SessionEntry,
};
use crate::{
    config::NamespaceSpec,
    error::{Error, ErrorKind},
};

/// A lifecycle event of a session or of the actors that supervise it, for
/// tests, the audit log and the admin view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    Created {
        session_id: String,
        namespace: String,
    },
    Ended {
        session_id: String,
        namespace: String,
        reason: EndReason,
    },
    ActorRestarted {
        session_id: String,
        namespace: String,
        restarts: u32,
    },
    NamespaceSupervisorRestarted {
        namespace: String,
        restarts: u64,
    },
}

/// What [`SessionRegistry::authorize_here`] found.
pub enum Local {
    /// A live session, its use recorded.
    Live(Arc<SessionEntry>),
    /// Only the cluster's store can tell: the token's digest and the entry
    /// held here, if any.
    AskStore(token::TokenDigest, Option<Arc<SessionEntry>>),
}

/// Tombstones kept at most; see `SessionRegistry::ended`.
const MAX_TOMBSTONES: usize = 100_000;

/// How often tombstones are pruned, at most.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

struct Tombstone {
    session_id: String,
    reason: EndReason,
    ended_ms: u64,
}

pub struct SessionRegistry {
    clock: Clock,
    by_token: DashMap<token::TokenDigest, Arc<SessionEntry>>,
    by_id: DashSet<ById>,
    /// Recently ended sessions, pruned after `tombstone_ttl` and capped at
    /// `MAX_TOMBSTONES` so churn cannot grow memory without bound (past the
    /// cap a dead token reads as unknown rather than closed).
    ended: DashMap<token::TokenDigest, Tombstone>,
    tombstone_ttl: Duration,
    last_prune_ms: AtomicU64,
    /// Each namespace's policy and counters, shared with its sessions.
    namespaces: HashMap<String, Arc<NamespaceSessions>>,
    /// The audit log (session events); set once at start.
    audit: std::sync::OnceLock<Arc<crate::audit::Audit>>,
    /// The shared session store and what serves it, when this instance is
    /// one of a cluster; set once at start.
    cluster: std::sync::OnceLock<Arc<super::cluster::Cluster>>,
    events: broadcast::Sender<SessionEvent>,
}

impl SessionRegistry {
    pub fn new<'a>(
        clock: Clock,
        namespaces: impl IntoIterator<Item = (&'a String, &'a NamespaceSpec)>,
    ) -> Self {
        let (events, _) = broadcast::channel(1024);
        SessionRegistry {
            clock,
            by_token: DashMap::new(),
            by_id: DashSet::new(),
            ended: DashMap::new(),
            tombstone_ttl: Duration::from_secs(3600),
            last_prune_ms: AtomicU64::new(0),
            namespaces: namespaces
                .into_iter()
                .map(|(n, p)| (n.clone(), Arc::new(NamespaceSessions::new(n, p.clone()))))
                .collect(),
            audit: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
            events,
        }
    }

    /// Attaches the audit log (once; later calls are ignored).
    pub fn set_audit(&self, audit: Arc<crate::audit::Audit>) {
        let _ = self.audit.set(audit);
    }

    /// Makes this registry one instance of a cluster (once; later calls are
    /// ignored).
    pub fn join(&self, cluster: Arc<super::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// The cluster this instance serves in, if any.
    pub fn cluster(&self) -> Option<&Arc<super::cluster::Cluster>> {
        self.cluster.get()
    }

    /// The audit log (a disabled one until set).
    pub fn audit(&self) -> &crate::audit::Audit {
        static NONE: std::sync::LazyLock<crate::audit::Audit> =
            std::sync::LazyLock::new(|| crate::audit::Audit::disabled(&Default::default()));
        self.audit.get().map_or(&NONE, |a| a.as_ref())
    }

    /// Writes a session event's audit record (nothing is built when the
    /// audit log is off).
    pub fn audit_session(&self, event: &'static str, entry: &SessionEntry) {
        let audit = self.audit();
        if audit.is_enabled() {
            audit.session(event, &entry.session_ref());
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }

    pub(crate) fn emit(&self, event: SessionEvent) {
        // Nobody listening is fine: events are advisory.
        let _ = self.events.send(event);
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// A namespace's policy and counters, shared with its sessions.
    pub fn namespace(&self, name: &str) -> Result<&Arc<NamespaceSessions>, Error> {
        self.namespaces
            .get(name)
            .ok_or_else(|| Error::internal("session namespace is not configured"))
    }

    /// Adds a session unless its namespace is at `max_sessions` or its
    /// principal at `max_sessions_per_principal`.
    pub fn insert(&self, entry: Arc<SessionEntry>) -> Result<(), Error> {
        let ns = &entry.namespace_sessions;
        let policy = entry.policy();
        let max = policy.max_sessions;
        ns.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| too_many_sessions(entry.namespace(), max))?;
        let per_principal = policy.max_sessions_per_principal;
        let admitted = {
            let mut held = ns
                .by_principal
                .entry(entry.principal.identity.clone())
                .or_insert(0);
            let admitted = *held < per_principal;
            if admitted {
                *held += 1;
            }
            admitted
        };
        if !admitted {
            ns.open.fetch_sub(1, Ordering::AcqRel);
            return Err(too_many_for_principal(entry.namespace(), per_principal));
        }
        self.by_token.insert(entry.token_digest, entry.clone());
        self.by_id.insert(ById(entry.clone()));
        self.created(&entry);
        Ok(())
    }

    /// The audit record and event of a new session.
    pub(crate) fn created(&self, entry: &SessionEntry) {
        self.audit_session("session.create", entry);
        self.emit(SessionEvent::Created {
            session_id: entry.id.clone(),
            namespace: entry.namespace().to_string(),
        });
    }

    /// Holds a session the cluster's store admitted (limits are the
    /// store's, cluster-wide). If this instance holds it already (two calls
    /// activating one token at once), answers that one and false.
    ///
    /// A token with a tombstone here ended while it was being loaded: it is
    /// not brought back (`None`).
    pub fn adopt(&self, entry: Arc<SessionEntry>) -> Option<(Arc<SessionEntry>, bool)> {
        if self.ended.contains_key(&entry.token_digest) {
            return None;
        }
        match self.by_token.entry(entry.token_digest) {
            dashmap::Entry::Occupied(held) => Some((held.get().clone(), false)),
            dashmap::Entry::Vacant(slot) => {
                slot.insert(entry.clone());
                let ns = &entry.namespace_sessions;
                ns.open.fetch_add(1, Ordering::AcqRel);
                *ns.by_principal
                    .entry(entry.principal.identity.clone())
                    .or_insert(0) += 1;
                self.by_id.insert(ById(entry.clone()));
                // An end that raced the insert left its tombstone first.
                if self.ended.contains_key(&entry.token_digest) {
                    self.forget(&entry);
                    return None;
                }
                Some((entry, true))
            }
        }
    }

    /// Drops an activation that never served (it could not be hosted, or
    /// it lost a race with an end): no tombstone, no audit record, so the
    /// token is looked up in the store again next time.
    pub fn forget(&self, entry: &SessionEntry) {
        if !entry.mark_ended(EndReason::Failed) {
            return;
        }
        self.by_token.remove(&entry.token_digest);
        self.by_id.remove(entry.id.as_str());
        self.release_counts(entry);
    }

    fn release_counts(&self, entry: &SessionEntry) {
        entry.namespace_sessions.open.fetch_sub(1, Ordering::AcqRel);
        entry.namespace_sessions.by_principal.remove_if_mut(
            &entry.principal.identity,
            |_, held| {
                *held = held.saturating_sub(1);
                *held == 0
            },
        );
    }

    /// The session held here for a token digest.
    pub fn by_token(&self, digest: &token::TokenDigest) -> Option<Arc<SessionEntry>> {
        self.by_token.get(digest).map(|e| e.value().clone())
    }

    /// Remembers why a token stopped working (an end learnt from the
    /// cluster's store), bounded like every tombstone.
    pub fn tombstone(
        &self,
        digest: token::TokenDigest,
        session_id: &str,
        reason: EndReason,
        ended_ms: u64,
    ) {
        let tombstone = Tombstone {
            session_id: session_id.to_string(),
            reason,
            ended_ms,
        };
        self.put_tombstone(digest, tombstone, false);
    }

    /// Keeps a tombstone (within `MAX_TOMBSTONES`); `replace` when this
    /// instance knows the end first-hand, so an announced one (which may
    /// lack the session id) gives way to it.
    fn put_tombstone(&self, digest: token::TokenDigest, tombstone: Tombstone, replace: bool) {
        if self.ended.len() < MAX_TOMBSTONES && (replace || !self.ended.contains_key(&digest)) {
            self.ended.insert(digest, tombstone);
        }
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<SessionEntry>> {
        self.by_id.get(id).map(|e| e.key().0.clone())
    }

    /// The hot path: the live session for `token`, with activity recorded.
    /// A session past its expiry is expired here even if its namespace's
    /// expiry timer has not fired yet. In a cluster, a token first seen here is
    /// activated from the store, and an expiry is the store's to decide.
    pub async fn authorize(&self, token: &str) -> Result<Arc<SessionEntry>, Error> {
        let (digest, held) = match self.authorize_here(token)? {
            Local::Live(entry) => return Ok(entry),
            Local::AskStore(digest, held) => (digest, held),
        };
        let Some(cluster) = self.cluster.get() else {
            return Err(self.ended_error(&digest));
        };
        let entry = match held {
            Some(entry) => entry,
            None => cluster.activate(self, digest).await?,
        };
        if entry.state().is_ended()
            || (entry.is_past_expiry(self.clock.now_ms())
                && !cluster.settle_expiry(self, &entry).await?)
        {
            return Err(self.ended_error(&digest));
        }
        self.used(&entry, self.clock.now_ms());
        Ok(entry)
    }

    /// What this instance alone can say about a token, with no await: the
    /// whole check for one instance, and for a session active here in a
    /// cluster. `AskStore` when only the cluster's store can tell (a token
    /// first seen here, or a deadline another instance may have moved).
    pub fn authorize_here(&self, token: &str) -> Result<Local, Error> {
        if token.is_empty() {
            return Err(Error::unauthenticated(
                "MISSING_SESSION_TOKEN",
                "no session token; send it in `session_token` or the `x-session-token` header",
            ));
        }
        let digest = token::digest(token);
        let Some(entry) = self.by_token.get(&digest).map(|e| e.value().clone()) else {
            if self.cluster.get().is_some()
                && !self.ended.contains_key(&digest)
                && token::well_formed(token)
            {
                return Ok(Local::AskStore(digest, None));
            }
            return Err(self.ended_error(&digest));
        };
        if entry.state().is_ended() {
            return Err(self.ended_error(&digest));
        }
        let now = self.clock.now_ms();
        if entry.is_past_expiry(now) {
            if self.cluster.get().is_some() {
                return Ok(Local::AskStore(digest, Some(entry)));
            }
            self.end(&entry, EndReason::Expired);
            return Err(self.ended_error(&digest));
        }
        self.used(&entry, now);
        Ok(Local::Live(entry))
    }

    /// Records a call's use of its session.
    fn used(&self, entry: &Arc<SessionEntry>, now_ms: u64) {
        entry.touch(now_ms);
        if let Some(cluster) = self.cluster.get() {
            cluster.note_activity(entry);
        }
        crate::call::note_session(
            entry,
            entry.namespace(),
            &entry.id,
            &entry.config.backend_name,
        );
    }

    /// Why a token does not work: its tombstone's reason, else unknown.
    pub(crate) fn ended_error(&self, digest: &token::TokenDigest) -> Error {
        match self.ended.get(digest) {
            Some(t) => t
                .reason
                .error(&t.session_id, self.clock.wall_at(t.ended_ms)),
            None => Error::unauthenticated(
                "INVALID_SESSION_TOKEN",
                "session token is not valid; create a session with CreateSession",
            ),
        }
    }

    /// Ends a session: it disappears from the hot path at once and leaves a
    /// tombstone. Returns false if it had already ended.
    pub fn end(&self, entry: &SessionEntry, reason: EndReason) -> bool {
        self.end_here(entry, reason, true)
    }

    /// Ends this instance's activation of a session another instance (or
    /// the store) ended: no audit record, which the ending instance wrote.
    pub fn end_quietly(&self, entry: &SessionEntry, reason: EndReason) -> bool {
        self.end_here(entry, reason, false)
    }

    fn end_here(&self, entry: &SessionEntry, reason: EndReason, audit: bool) -> bool {
        if !entry.mark_ended(reason) {
            return false;
        }
        let now = self.clock.now_ms();
        // The tombstone goes in before the entry leaves, so a concurrent
        // call never sees neither and reports an unknown token.
        let tombstone = Tombstone {
            session_id: entry.id.clone(),
            reason,
            ended_ms: now,
        };
        self.put_tombstone(entry.token_digest, tombstone, true);
        self.by_token.remove(&entry.token_digest);
        self.by_id.remove(entry.id.as_str());
        self.release_counts(entry);
        tracing::info!(session_id = %entry.id, namespace = entry.namespace(), ?reason, audit, "session ended");
        if audit {
            self.audit_end(entry, reason);
        }
        self.emit(SessionEvent::Ended {
            session_id: entry.id.clone(),
            namespace: entry.namespace().to_string(),
            reason,
        });
        true
    }

    /// The audit record of a session's end.
    fn audit_end(&self, entry: &SessionEntry, reason: EndReason) {
        self.audit_session(end_event(reason), entry);
    }

    /// The audit log itself, when one is attached.
    pub(crate) fn audit_log(&self) -> Option<Arc<crate::audit::Audit>> {
        self.audit.get().cloned()
    }

    /// Drops tombstones older than their retention; called from supervisor
    /// ticks, does the work at most every `PRUNE_EVERY`.
    pub fn prune_tombstones(&self) {
        let now = self.clock.now_ms();
        let last = self.last_prune_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < ms(PRUNE_EVERY) && last != 0 {
            return;
        }
        self.last_prune_ms.store(now.max(1), Ordering::Relaxed);
        let cutoff = now.saturating_sub(ms(self.tombstone_ttl));
        self.ended.retain(|_, t| t.ended_ms >= cutoff);
    }

    /// Every namespace's counters.
    pub fn namespaces(&self) -> impl Iterator<Item = &Arc<NamespaceSessions>> {
        self.namespaces.values()
    }

    /// Every open session.
    pub fn all(&self) -> Vec<Arc<SessionEntry>> {
        self.by_id.iter().map(|e| e.key().0.clone()).collect()
    }
}

/// RESOURCE_EXHAUSTED `TOO_MANY_SESSIONS`: the namespace holds its maximum.
pub(crate) fn too_many_sessions(namespace: &str, max: usize) -> Error {
    Error::new(
        ErrorKind::ResourceExhausted,
        "TOO_MANY_SESSIONS",
        format!("namespace `{namespace}` already has its maximum of {max} sessions; close unused sessions"),
    )
    .with("limit", "session.max_sessions")
}

/// RESOURCE_EXHAUSTED `TOO_MANY_SESSIONS_FOR_PRINCIPAL`.
pub(crate) fn too_many_for_principal(namespace: &str, max: usize) -> Error {
    Error::new(
        ErrorKind::ResourceExhausted,
        "TOO_MANY_SESSIONS_FOR_PRINCIPAL",
        format!(
            "these credentials already hold their maximum of {max} sessions in namespace `{namespace}`; close unused sessions"
        ),
    )
    .with("limit", "session.max_sessions_per_principal")
}

/// The audit event of a session's end.
pub(crate) fn end_event(reason: EndReason) -> &'static str {
    match reason {
        EndReason::Closed => "session.close",
        EndReason::Expired => "session.expire",
        EndReason::Failed => "session.fail",
        EndReason::Shutdown => "session.shutdown",
    }
}
