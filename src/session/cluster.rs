//! Sessions shared by the instances of a cluster (virtual actors, as in
//! Orleans). The session store is the truth; each instance's registry holds
//! an *activation* of each session it has seen:
//!
//! - **first sight** of a token loads the session from the store and hands
//!   it to its namespace supervisor here ([`Cluster::activate`]); afterwards every call is served
//!   from the registry with no store round trip;
//! - **activity** is written behind: a call only marks its session, and
//!   every `sessions.flush_interval` one batch moves the store's expiries
//!   forward and reads back what the other instances did (a session ended
//!   elsewhere ends here too). Heartbeat, Refresh and GetSession write and
//!   read through at once;
//! - **ends** (close, expiry, failure) are decided by the store, atomically,
//!   so each happens once cluster-wide, and announced to every instance,
//!   which drops its activation. An instance that lost the announcement
//!   link asks the store about every activation each flush interval until
//!   it listens again;
//! - **expiry** is the store's: an instance whose local deadline passed
//!   asks the store, which expires the session only if no instance moved
//!   its expiry (with one flush interval of grace for activity not yet
//!   written); sessions no instance holds are expired by a sweep every
//!   instance runs (the store's conditional update lets one win);
//! - **limits** (`max_sessions`, `max_sessions_per_principal`) are counted
//!   by the store as it admits a session, cluster-wide.

use crate::call::CallSession as _;
use std::{
    sync::{atomic::Ordering, Arc, Weak},
    time::{Duration, SystemTime},
};

use base64::Engine as _;
use dashmap::DashMap;
use futures::StreamExt;
use parking_lot::Mutex;
use prost::Message as _;

use super::{
    entry::NamespaceSessions,
    lifecycle::SessionHost,
    store::{
        Admission, EndNotice, Limits, SessionStore, Standing, StoreConfig, StoredConfig,
        StoredSession,
    },
    token::TokenDigest,
    EndReason, SessionEntry, SessionRegistry,
};
use crate::{
    auth::Principal,
    config::{resolve, resolve::NamedConfigs, LiveConfig},
    error::Error,
    proto::config::v1::ClientConfig,
};

/// Sessions per store request when many are flushed or checked at once.
const BATCH: usize = 1000;

/// Unknown tokens remembered at most (a client sending made-up tokens
/// costs one store lookup per token, not one per call).
const MAX_UNKNOWN: usize = 100_000;

/// How long an unknown token is remembered.
const UNKNOWN_FOR: Duration = Duration::from_secs(600);

pub struct Cluster {
    store: Arc<dyn SessionStore>,
    settings: StoreConfig,
    host: Arc<dyn SessionHost>,
    config: LiveConfig,
    named: Arc<NamedConfigs>,
    /// Sessions with activity not yet written to the store.
    unflushed: Mutex<Vec<Arc<SessionEntry>>>,
    /// Tokens the store did not know, with when it said so (local ms).
    unknown: DashMap<TokenDigest, u64>,
    /// The flusher and the listener; ended by [`Cluster::stop`] (or when
    /// the registry they serve is gone).
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The runtime the tasks and store requests run on (set by `start`).
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
    /// Store lookups of tokens seen for the first time, at once.
    activations: tokio::sync::Semaphore,
}

/// Tokens loaded from the store at once, at most.
const MAX_ACTIVATIONS: usize = 64;

impl Cluster {
    pub fn new(
        store: Arc<dyn SessionStore>,
        settings: StoreConfig,
        host: Arc<dyn SessionHost>,
        config: LiveConfig,
        named: Arc<NamedConfigs>,
    ) -> Self {
        Cluster {
            store,
            settings,
            host,
            config,
            named,
            unflushed: Mutex::new(Vec::new()),
            unknown: DashMap::new(),
            tasks: Mutex::new(Vec::new()),
            runtime: std::sync::OnceLock::new(),
            activations: tokio::sync::Semaphore::new(MAX_ACTIVATIONS),
        }
    }

    fn grace_ms(&self) -> u64 {
        crate::clock::ms(self.settings.flush_interval)
    }

    /// Starts the flusher (activity, sweep) and the listener (ends
    /// elsewhere) on the current runtime.
    pub fn start(self: &Arc<Self>, registry: &Arc<SessionRegistry>) {
        let _ = self.runtime.set(tokio::runtime::Handle::current());
        let every = self.settings.flush_interval;
        let (cluster, registry) = (Arc::downgrade(self), Arc::downgrade(registry));
        let flusher = {
            let (cluster, registry) = (cluster.clone(), registry.clone());
            restarting("flusher", every, move || {
                let (cluster, registry) = (cluster.clone(), registry.clone());
                async move {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let (Some(cluster), Some(registry)) =
                            (cluster.upgrade(), registry.upgrade())
                        else {
                            return;
                        };
                        cluster.flush(&registry).await;
                        cluster.sweep(&registry).await;
                    }
                }
            })
        };
        let listener = restarting("listener", every, move || {
            listen(cluster.clone(), registry.clone(), every)
        });
        self.tasks.lock().extend([flusher, listener]);
    }

    /// Ends the background tasks.
    pub fn stop(&self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }

    /// Records that a session was used here: written behind.
    pub fn note_activity(&self, entry: &Arc<SessionEntry>) {
        if !entry.unflushed.load(Ordering::Relaxed) && !entry.unflushed.swap(true, Ordering::AcqRel)
        {
            self.unflushed.lock().push(entry.clone());
        }
    }

    /// Admits a new session in the store (cluster-wide limits), then here.
    pub async fn create(
        &self,
        registry: &SessionRegistry,
        entry: &Arc<SessionEntry>,
        config: StoredConfig,
    ) -> Result<(), Error> {
        let clock = registry.clock();
        let now = clock.now_ms();
        let stored = StoredSession {
            id: entry.id.clone(),
            namespace: entry.namespace().to_string(),
            identity: entry.principal.identity.clone(),
            roles: entry.principal.roles.clone(),
            method: entry.principal.method,
            config,
            client_id: entry.client_id.clone(),
            client_version: entry.client_version.clone(),
            metadata: entry.metadata.clone(),
            created_ms: crate::clock::epoch_ms(entry.created_at),
            hard_ms: clock.epoch_ms(entry.hard_deadline_ms),
        };
        let policy = entry.policy();
        let limits = Limits {
            max_sessions: policy.max_sessions,
            max_per_principal: policy.max_sessions_per_principal,
        };
        let admission = self
            .store
            .create(
                &entry.token_digest,
                &stored,
                clock.epoch_ms(entry.expires_ms()),
                limits,
                clock.epoch_ms(now),
                self.grace_ms(),
            )
            .await?;
        match admission {
            Admission::Admitted => {
                // (A new token has no tombstone to refuse it.)
                let _ = registry.adopt(entry.clone());
                registry.created(entry);
                Ok(())
            }
            Admission::NamespaceFull => Err(super::registry::too_many_sessions(
                entry.namespace(),
                limits.max_sessions,
            )),
            Admission::PrincipalFull => Err(super::registry::too_many_for_principal(
                entry.namespace(),
                limits.max_per_principal,
            )),
        }
    }

    /// First sight of a token here: the session from the store, activated
    /// (held and hosted here) unless the store says it ended or never was.
    pub async fn activate(
        &self,
        registry: &SessionRegistry,
        digest: TokenDigest,
    ) -> Result<Arc<SessionEntry>, Error> {
        let now = registry.clock().now_ms();
        if self
            .unknown
            .get(&digest)
            .is_some_and(|at| now.saturating_sub(*at) < crate::clock::ms(UNKNOWN_FOR))
        {
            return Err(registry.ended_error(&digest));
        }
        // Lookups at once are bounded: a flood of tokens waits here (up to
        // the store timeout) rather than taking every store connection.
        let _permit = tokio::time::timeout(self.settings.timeout, self.activations.acquire())
            .await
            .map_err(|_| super::store::unavailable("too many sessions are being loaded at once"))?
            .map_err(|_| Error::internal("activation gate closed"))?;
        if let Some(entry) = registry.by_token(&digest) {
            // Another call activated it while this one waited.
            return Ok(entry);
        }
        let Some((stored, standing)) = self.store.load(&digest).await? else {
            if self.unknown.len() < MAX_UNKNOWN {
                self.unknown.insert(digest, now);
            }
            return Err(registry.ended_error(&digest));
        };
        let expires_ms = match standing {
            Standing::Open { expires_ms } => expires_ms,
            Standing::Ended { reason, at_ms } => {
                registry.tombstone(
                    digest,
                    &stored.id,
                    reason,
                    registry.clock().from_epoch_ms(at_ms),
                );
                return Err(registry.ended_error(&digest));
            }
            Standing::Unknown => return Err(registry.ended_error(&digest)),
        };
        let entry = Arc::new(self.restore(registry, digest, stored, expires_ms)?);
        let Some((entry, fresh)) = registry.adopt(entry) else {
            // It ended here while being loaded.
            return Err(registry.ended_error(&digest));
        };
        if fresh {
            if let Err(e) = self.host.host_session(entry.clone()).await {
                // Not served here; the next call tries again.
                registry.forget(&entry);
                return Err(e);
            }
            tracing::debug!(session_id = %entry.id, namespace = entry.namespace(), "session activated");
        }
        Ok(entry)
    }

    /// A stored session as an entry of this instance.
    fn restore(
        &self,
        registry: &SessionRegistry,
        digest: TokenDigest,
        stored: StoredSession,
        expires_ms: u64,
    ) -> Result<SessionEntry, Error> {
        let namespace: Arc<NamespaceSessions> = registry.namespace(&stored.namespace)?.clone();
        let config = match &stored.config {
            StoredConfig::Named(name) => self.named.get(name)?,
            StoredConfig::Inline(encoded) => {
                let inline = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .ok()
                    .and_then(|bytes| ClientConfig::decode(bytes.as_slice()).ok())
                    .ok_or_else(|| Error::internal("stored inline config does not decode"))?;
                Arc::new(resolve::resolve_inline(
                    &self.config.load(),
                    &stored.namespace,
                    &inline,
                )?)
            }
        };
        let principal = Arc::new(Principal {
            identity: stored.identity,
            namespace: stored.namespace,
            roles: stored.roles,
            method: stored.method,
        });
        let clock = *registry.clock();
        Ok(SessionEntry::new(
            stored.id,
            digest,
            principal,
            config,
            stored.client_id,
            stored.client_version,
            stored.metadata,
            namespace,
            clock,
        )
        .restored(
            SystemTime::UNIX_EPOCH + Duration::from_millis(stored.created_ms),
            clock.from_epoch_ms(stored.hard_ms),
            clock.from_epoch_ms(expires_ms),
        ))
    }

    /// The local deadline of an activation passed: the store decides
    /// whether the session expired (activity elsewhere may have moved it).
    /// Answers whether it is still open.
    pub async fn settle_expiry(
        &self,
        registry: &SessionRegistry,
        entry: &Arc<SessionEntry>,
    ) -> Result<bool, Error> {
        let outcome = self
            .end_in_store(registry, entry, EndReason::Expired, Some(self.grace_ms()))
            .await?;
        Ok(self.apply(registry, entry, outcome.standing))
    }

    /// Ends a session in the store (once, cluster-wide), then here.
    pub async fn end(
        &self,
        registry: &SessionRegistry,
        entry: &Arc<SessionEntry>,
        reason: EndReason,
    ) -> Result<(), Error> {
        let outcome = self.end_in_store(registry, entry, reason, None).await?;
        self.apply(registry, entry, outcome.standing);
        Ok(())
    }

    /// Asks the store to end a session. The request that ends it writes the
    /// audit record, in a task of its own so that a caller going away
    /// (a cancelled call, a stopped actor) cannot lose it; the task ends
    /// with the store's answer (bounded by `sessions.timeout`).
    async fn end_in_store(
        &self,
        registry: &SessionRegistry,
        entry: &Arc<SessionEntry>,
        reason: EndReason,
        grace_ms: Option<u64>,
    ) -> Result<super::store::EndOutcome, Error> {
        let clock = registry.clock();
        let (store, digest, now) = (
            self.store.clone(),
            entry.token_digest,
            clock.epoch_ms(clock.now_ms()),
        );
        let (audit, session) = (registry.audit_log(), entry.session_ref());
        // On the gateway's runtime, where the store's connections live,
        // whoever asks (a handler, or a session actor on its own thread).
        let runtime = self
            .runtime
            .get()
            .cloned()
            .unwrap_or_else(tokio::runtime::Handle::current);
        runtime
            .spawn(async move {
                let outcome = store.end(&digest, reason, now, grace_ms).await;
                if let (Ok(o), Some(audit)) = (&outcome, audit) {
                    if o.ended_here {
                        audit.session(super::registry::end_event(reason), &session);
                    }
                }
                outcome
            })
            .await
            .map_err(|e| Error::internal(format!("session end task: {e}")))?
    }

    /// Writes this session's expiry through and reads back where it
    /// stands (Heartbeat, Refresh, GetSession). Answers whether it is open.
    pub async fn sync(
        &self,
        registry: &SessionRegistry,
        entry: &Arc<SessionEntry>,
    ) -> Result<bool, Error> {
        let clock = registry.clock();
        let standing = self
            .store
            .extend(&[(entry.token_digest, clock.epoch_ms(entry.expires_ms()))])
            .await?
            .first()
            .copied()
            .unwrap_or(Standing::Unknown);
        Ok(self.apply(registry, entry, standing))
    }

    /// Brings activations in line with the store's standings (in order).
    fn apply_all(
        &self,
        registry: &SessionRegistry,
        entries: &[Arc<SessionEntry>],
        standings: Vec<Standing>,
    ) {
        for (entry, standing) in entries.iter().zip(standings) {
            self.apply(registry, entry, standing);
        }
    }

    /// Brings an activation in line with the store; true while it is open.
    fn apply(
        &self,
        registry: &SessionRegistry,
        entry: &Arc<SessionEntry>,
        standing: Standing,
    ) -> bool {
        let clock = registry.clock();
        match standing {
            Standing::Open { expires_ms } => {
                let now = clock.now_ms();
                let until = clock.from_epoch_ms(expires_ms);
                // Within the grace: activity elsewhere may not be written
                // yet, so the store keeps it open until the grace is over.
                entry.extend_to(if until <= now {
                    until.saturating_add(self.grace_ms())
                } else {
                    until
                });
                true
            }
            Standing::Ended { reason, .. } => {
                // Audited by the request that ended it (`end_in_store`).
                self.drop_activation(registry, entry, reason);
                false
            }
            Standing::Unknown => {
                self.drop_activation(registry, entry, EndReason::Closed);
                false
            }
        }
    }

    /// Ends this instance's activation of a session ended in the store
    /// (no audit record: the request that ended it wrote one) and stops its
    /// actor.
    fn drop_activation(&self, registry: &SessionRegistry, entry: &SessionEntry, reason: EndReason) {
        if registry.end_quietly(entry, reason) {
            self.host.stop_session(entry.namespace(), &entry.id);
        }
    }

    /// An end announced by the store. A session not active here gets a
    /// tombstone all the same, so an activation under way cannot bring it
    /// back.
    fn learn(&self, registry: &SessionRegistry, notice: EndNotice) {
        match registry.by_token(&notice.digest) {
            Some(entry) => {
                self.drop_activation(registry, &entry, notice.reason);
            }
            None => registry.tombstone(
                notice.digest,
                "",
                notice.reason,
                registry.clock().from_epoch_ms(notice.at_ms),
            ),
        }
    }

    /// Writes the activity of the marked sessions and applies what the
    /// store answers.
    pub async fn flush(&self, registry: &SessionRegistry) {
        let marked = std::mem::take(&mut *self.unflushed.lock());
        if marked.is_empty() {
            return;
        }
        for entry in &marked {
            entry.unflushed.store(false, Ordering::Release);
        }
        let open: Vec<Arc<SessionEntry>> = marked
            .into_iter()
            .filter(|e| !e.state().is_ended())
            .collect();
        let clock = registry.clock();
        for chunk in open.chunks(BATCH) {
            let updates: Vec<(TokenDigest, u64)> = chunk
                .iter()
                .map(|e| (e.token_digest, clock.epoch_ms(e.expires_ms())))
                .collect();
            match self.store.extend(&updates).await {
                Ok(standings) => self.apply_all(registry, chunk, standings),
                Err(e) => {
                    tracing::warn!(error = %e.message, sessions = chunk.len(), "session activity not written; retrying");
                    for entry in chunk {
                        self.note_activity(entry);
                    }
                }
            }
        }
    }

    /// Asks the store about every activation (the announcement link was
    /// down, so ends may have been missed).
    async fn revalidate(&self, registry: &SessionRegistry) {
        let all = registry.all();
        for chunk in all.chunks(BATCH) {
            let digests: Vec<TokenDigest> = chunk.iter().map(|e| e.token_digest).collect();
            match self.store.standings(&digests).await {
                Ok(standings) => self.apply_all(registry, chunk, standings),
                Err(e) => {
                    tracing::warn!(error = %e.message, "could not check sessions against the store");
                    return;
                }
            }
        }
    }

    /// Expires what no instance expired (one instance wins each session and
    /// writes its audit record); forgets old unknown tokens.
    pub async fn sweep(&self, registry: &SessionRegistry) {
        let clock = registry.clock();
        let now = clock.now_ms();
        let swept = self
            .store
            .sweep(
                clock.epoch_ms(now),
                self.grace_ms(),
                crate::clock::ms(self.settings.keep_ended),
            )
            .await;
        match swept {
            Ok(swept) => {
                for s in swept {
                    match registry.by_token(&s.digest) {
                        Some(entry) => {
                            self.drop_activation(registry, &entry, EndReason::Expired);
                        }
                        None => registry.tombstone(s.digest, &s.id, EndReason::Expired, now),
                    }
                    // This sweep ended it: its audit record is written here.
                    registry.audit().session(
                        "session.expire",
                        &crate::call::SessionRef {
                            namespace: s.namespace,
                            session_id: s.id,
                            identity: s.identity,
                        },
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e.message, "session expiry sweep failed"),
        }
        let cutoff = now.saturating_sub(crate::clock::ms(UNKNOWN_FOR));
        self.unknown.retain(|_, at| *at >= cutoff);
    }

    /// Shutdown of this instance: activity written, activations dropped
    /// (the sessions stay open for the other instances).
    pub async fn leave(&self, registry: &SessionRegistry) -> usize {
        // Stopped first, so a batch the flusher had taken is not cut off
        // half written: what it held is marked again and written here.
        self.stop();
        self.flush(registry).await;
        registry
            .all()
            .iter()
            .filter(|entry| registry.end_quietly(entry, EndReason::Shutdown))
            .count()
    }
}

/// Runs a background task of the cluster, started again (after `pause`)
/// if it panics: without the flusher or the listener, activity would stop
/// reaching the store and ends would stop reaching this instance, silently.
/// It ends when the task returns (its cluster or registry is gone) or is
/// aborted by [`Cluster::stop`].
fn restarting<F, Fut>(name: &'static str, pause: Duration, task: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use futures::FutureExt as _;
    tokio::spawn(async move {
        while std::panic::AssertUnwindSafe(task())
            .catch_unwind()
            .await
            .is_err()
        {
            tracing::error!(
                task = name,
                "session store task panicked; starting it again"
            );
            tokio::time::sleep(pause).await;
        }
    })
}

/// The listener: applies ends as the store announces them; while the link
/// is down, checks every activation each interval.
async fn listen(cluster: Weak<Cluster>, registry: Weak<SessionRegistry>, every: Duration) {
    let mut listened = false;
    loop {
        let (Some(c), Some(r)) = (cluster.upgrade(), registry.upgrade()) else {
            return;
        };
        let feed = c.store.listen().await;
        drop((c, r));
        match feed {
            Ok(mut feed) => {
                if listened {
                    // Ends announced while we were not listening are lost:
                    // ask about everything once.
                    if let (Some(c), Some(r)) = (cluster.upgrade(), registry.upgrade()) {
                        c.revalidate(&r).await;
                    }
                }
                listened = true;
                while let Some(notice) = feed.next().await {
                    let (Some(c), Some(r)) = (cluster.upgrade(), registry.upgrade()) else {
                        return;
                    };
                    c.learn(&r, notice);
                }
                tracing::warn!("session store announcements lost; listening again");
            }
            Err(e) => tracing::warn!(error = %e.message, "cannot listen to the session store"),
        }
        tokio::time::sleep(every).await;
        if let (Some(c), Some(r)) = (cluster.upgrade(), registry.upgrade()) {
            c.revalidate(&r).await;
        }
    }
}

/// How a new session's config is kept in the store.
pub fn stored_config(choice: &super::lifecycle::ConfigChoice<'_>) -> StoredConfig {
    match choice {
        super::lifecycle::ConfigChoice::Named(name) => StoredConfig::Named(name.to_string()),
        super::lifecycle::ConfigChoice::Inline(inline) => StoredConfig::Inline(
            base64::engine::general_purpose::STANDARD.encode(inline.encode_to_vec()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_background_task_that_panics_is_started_again() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let task = restarting("test", Duration::from_secs(1), move || {
            let runs = counted.clone();
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("injected");
                }
            }
        });
        task.await.expect("the task ends once it returns");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "two panics, then a clean end"
        );
    }
}
