//! The cache in front of KeyValue: a named config with `cache.enabled` has
//! its own bounded [`Lru`] of the records its sessions read, served without
//! asking the backend until the entry's `ttl` is up.
//!
//! Consistency, per strategy:
//!
//! - **look_aside**: a Get that misses reads the backend and fills the
//!   cache; every write through the gateway to the config's backend and
//!   namespace — through any config, on any instance — drops the written
//!   keys from it.
//! - **write_through**: the same, and a write through this instance also
//!   puts the written value (with its new version) in this instance's
//!   caches; other instances drop the key.
//!
//! A fill never puts back a value older than a write: each key hashes to
//! a stripe whose epoch every invalidation moves on, a Get takes the epoch
//! before reading the backend, and the fill (under the entry's lock)
//! stores only if the epoch did not move. Write-through puts keep the
//! newest version. A key that is not found is not cached.
//!
//! Across a cluster, a write is announced on the session store
//! ([`Topic::KvCache`]) before the call answers; each instance drops the
//! keys as it hears them. A read elsewhere can so be stale for the time
//! the announcement takes to arrive, and never for longer than `ttl`
//! (writes that bypass the gateway are bounded by `ttl` alone). An
//! instance that is not hearing announcements (link lost, not yet
//! subscribed) neither serves from nor fills its caches, and empties them
//! when it hears again.

use std::{
    collections::BTreeMap,
    hash::{BuildHasher, RandomState},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Weak,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use futures::StreamExt as _;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{
    backends::{
        kv::Record,
        lru::{Bounds, Lru, Snapshot, Weigh},
    },
    clock::{ms, Clock},
    config::{
        resolve::{ByName, KvCacheSettings, ResolvedConfig},
        CacheStrategy,
    },
    session::store::{SessionStore, Topic, MAX_BROADCAST_BYTES},
};

/// Invalidation stripes per cache.
const STRIPES: usize = 1024;

/// Writes to cached namespaces running at once in tasks of their own
/// (a write whose client went away runs on to tell the caches); more wait
/// for one to end.
pub const MAX_DETACHED_WRITES: usize = 1024;

/// The wait before subscribing again after the link to the store broke.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

/// A cached record.
struct Entry {
    value: Vec<u8>,
    version: u64,
    /// Clock ms at which the record expires on the backend.
    expires_ms: Option<u64>,
}

impl Weigh for Arc<Entry> {
    fn weight(&self) -> usize {
        self.value.len() + 16
    }
}

/// Where a key's invalidations stood when a read began.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    stripe: usize,
    epoch: u64,
}

/// One config's cache.
pub struct KvCache {
    pub config: String,
    pub backend: String,
    pub namespace: String,
    pub settings: KvCacheSettings,
    lru: Lru<Arc<Entry>>,
    stripes: Box<[AtomicU64]>,
    hasher: RandomState,
    clock: Clock,
    /// Keys dropped because they were written (here or elsewhere).
    invalidations: AtomicU64,
}

impl KvCache {
    fn new(config: &ResolvedConfig, settings: KvCacheSettings, clock: Clock) -> Self {
        KvCache {
            config: config.name.clone(),
            backend: config.backend_name.clone(),
            namespace: config.namespace.clone(),
            settings,
            lru: Lru::new(
                Bounds {
                    max_entries: settings.max_entries,
                    max_bytes: settings.max_bytes,
                },
                clock,
            ),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
            clock,
            invalidations: AtomicU64::new(0),
        }
    }

    fn stripe(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) % STRIPES
    }

    /// The cached record under `key`, if any.
    pub fn get(&self, key: &str) -> Option<Record> {
        let (entry, _) = self.lru.get(key)?;
        let now = self.clock.now_ms();
        Some(Record {
            value: entry.value.clone(),
            version: entry.version,
            ttl: entry
                .expires_ms
                .map(|e| Duration::from_millis(e.saturating_sub(now))),
        })
    }

    /// Whether a record is cached under `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.lru.contains(key)
    }

    /// Taken before reading the backend for a fill.
    pub fn ticket(&self, key: &str) -> Ticket {
        let stripe = self.stripe(key);
        Ticket {
            stripe,
            epoch: self.stripes[stripe].load(Ordering::Acquire),
        }
    }

    /// Caches what the backend returned, unless the key was invalidated
    /// since `ticket` was taken or a newer version is cached.
    /// Whether it was stored.
    pub fn fill(&self, key: &str, ticket: Ticket, record: &Record) -> bool {
        let stripe = &self.stripes[ticket.stripe];
        self.store(key, record, |current| {
            stripe.load(Ordering::Acquire) == ticket.epoch
                && current.is_none_or(|c| c.version < record.version)
        })
    }

    /// Puts a value just written through this instance (write-through),
    /// if no other write of the key ended since `ticket` was taken before
    /// the write began (else the key is dropped: which write is the newer
    /// one only the backend knows); then the epoch moves on, so no older
    /// fill stores after it.
    fn put(&self, key: &str, ticket: Ticket, record: &Record) {
        if self.fill(key, ticket, record) {
            self.bump(key);
        } else {
            self.invalidate(key);
        }
    }

    /// Whether the record was stored (`keep` agreed and it fits).
    fn store(
        &self,
        key: &str,
        record: &Record,
        keep: impl FnOnce(Option<&Arc<Entry>>) -> bool,
    ) -> bool {
        let now = self.clock.now_ms();
        let ttl = match record.ttl {
            Some(left) if left < self.settings.ttl => left,
            _ => self.settings.ttl,
        };
        let entry = Arc::new(Entry {
            value: record.value.clone(),
            version: record.version,
            expires_ms: record.ttl.map(|t| now.saturating_add(ms(t))),
        });
        // Too large for this cache: served uncached.
        self.lru
            .insert_if(key, entry, Some(ttl), keep)
            .unwrap_or(false)
    }

    fn bump(&self, key: &str) {
        self.stripes[self.stripe(key)].fetch_add(1, Ordering::AcqRel);
    }

    /// Drops `key`: first the stripe moves on (a fill in flight will not
    /// store), then the entry goes.
    fn invalidate(&self, key: &str) {
        self.bump(key);
        self.lru.remove(key);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    fn clear(&self) {
        for s in self.stripes.iter() {
            s.fetch_add(1, Ordering::AcqRel);
        }
        self.lru.clear();
    }

    pub fn snapshot(&self) -> CacheFigures {
        CacheFigures {
            config: self.config.clone(),
            backend: self.backend.clone(),
            namespace: self.namespace.clone(),
            strategy: self.settings.strategy.name(),
            ttl_ms: ms(self.settings.ttl),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            lru: self.lru.snapshot(),
        }
    }
}

/// A cache's figures for `/metrics` and the admin view.
#[derive(Debug, Clone, Serialize)]
pub struct CacheFigures {
    pub config: String,
    pub backend: String,
    pub namespace: String,
    pub strategy: &'static str,
    pub ttl_ms: u64,
    pub invalidations: u64,
    #[serde(flatten)]
    pub lru: Snapshot,
}

/// What a write did to a key, for the caches.
pub enum Change {
    /// The key now holds this record (write-through caches keep it).
    Put { key: String, record: Record },
    /// The key changed in a way only the backend knows (deleted, its
    /// expiry moved, a retried write, a failed or unknown outcome).
    Gone(String),
}

impl Change {
    fn key(&self) -> &str {
        match self {
            Change::Put { key, .. } | Change::Gone(key) => key,
        }
    }
}

/// A write about to run on a backend and namespace some caches hold:
/// each cache with the tickets of the keys, taken before the write.
pub struct Pending {
    backend: String,
    namespace: String,
    caches: Vec<(Arc<KvCache>, Vec<Ticket>)>,
}

impl Pending {
    /// Whether a cache would keep written values (write-through).
    pub fn wants_values(&self) -> bool {
        self.caches
            .iter()
            .any(|(c, _)| c.settings.strategy == CacheStrategy::WriteThrough)
    }
}

/// An announcement between instances: keys of a backend and namespace
/// that changed, or all of them (`keys` empty).
#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    /// The instance that wrote (it dropped the keys already).
    o: String,
    b: String,
    n: String,
    k: Vec<String>,
}

/// Bytes of `s` as a JSON string, quotes included.
fn json_len(s: &str) -> usize {
    serde_json::to_string(s).map_or(s.len() * 6 + 2, |j| j.len())
}

/// `keys` split into announcements of at most [`MAX_BROADCAST_BYTES`]
/// given `fixed` bytes of names (as JSON strings) per announcement; a key
/// too long for one makes a single empty one ("everything here changed").
fn pieces(fixed: usize, keys: Vec<String>) -> Vec<Vec<String>> {
    // The field names, braces, colons and commas.
    let base = fixed + 32;
    let mut out: Vec<Vec<String>> = vec![Vec::new()];
    let mut size = base;
    for key in keys {
        let cost = json_len(&key) + 1;
        if base + cost > MAX_BROADCAST_BYTES {
            return vec![Vec::new()];
        }
        if size + cost > MAX_BROADCAST_BYTES {
            out.push(Vec::new());
            size = base;
        }
        size += cost;
        out.last_mut().expect("one piece at least").push(key);
    }
    out
}

/// Every KeyValue cache of this instance, by config name.
pub struct KvCaches {
    by_config: ArcSwap<BTreeMap<String, Arc<KvCache>>>,
    clock: Clock,
    /// This instance, in its announcements.
    origin: String,
    /// Where writes are announced, in a cluster.
    store: Mutex<Option<Arc<dyn SessionStore>>>,
    /// False while an instance of a cluster does not hear announcements.
    hearing: AtomicBool,
    /// The task hearing announcements; ended by [`KvCaches::stop`].
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The task dropping expired entries; ended by [`KvCaches::stop`].
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Announcements that could not be sent (the store did not answer).
    pub unannounced: AtomicU64,
    /// Room for writes in tasks of their own ([`MAX_DETACHED_WRITES`]).
    detached: Arc<tokio::sync::Semaphore>,
}

impl KvCaches {
    pub fn new(clock: Clock) -> Self {
        KvCaches {
            by_config: ArcSwap::default(),
            clock,
            origin: format!("{:016x}", rand::random::<u64>()),
            store: Mutex::new(None),
            hearing: AtomicBool::new(true),
            listener: Mutex::new(None),
            sweeper: Mutex::new(None),
            unannounced: AtomicU64::new(0),
            detached: Arc::new(tokio::sync::Semaphore::new(MAX_DETACHED_WRITES)),
        }
    }

    /// A place for one more write in a task of its own (waits while
    /// [`MAX_DETACHED_WRITES`] run).
    pub async fn detached(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.detached.clone().acquire_owned().await.ok()
    }

    /// Makes the caches of `configs` (at start, and after a reload: a
    /// config whose cache, backend and namespace are unchanged keeps its
    /// entries; a changed one starts empty).
    pub fn sync(&self, configs: &ByName) {
        let old = self.by_config.load_full();
        let next = configs
            .iter()
            .filter_map(|(name, config)| {
                let settings = config.kv_cache?;
                let kept = old.get(name).filter(|c| {
                    c.settings == settings
                        && c.backend == config.backend_name
                        && c.namespace == config.namespace
                });
                let cache = match kept {
                    Some(c) => c.clone(),
                    None => Arc::new(KvCache::new(config, settings, self.clock)),
                };
                Some((name.clone(), cache))
            })
            .collect();
        self.by_config.store(Arc::new(next));
    }

    /// The cache a session's config reads through, when it has one and
    /// this instance may serve from it.
    pub fn of(&self, config: &ResolvedConfig) -> Option<Arc<KvCache>> {
        config.kv_cache?;
        if !self.hearing.load(Ordering::Acquire) {
            return None;
        }
        self.by_config
            .load()
            .get(&config.name)
            .filter(|c| c.backend == config.backend_name && c.namespace == config.namespace)
            .cloned()
    }

    /// Whether a cache of this instance holds keys of `backend` in `ns`.
    pub fn watch(&self, backend: &str, ns: &str) -> bool {
        self.by_config
            .load()
            .values()
            .any(|c| c.backend == backend && c.namespace == ns)
    }

    fn on(&self, backend: &str, ns: &str) -> Vec<Arc<KvCache>> {
        self.by_config
            .load()
            .values()
            .filter(|c| c.backend == backend && c.namespace == ns)
            .cloned()
            .collect()
    }

    /// Before a write of `keys` to `backend` in `ns`: `None` when no
    /// cache here holds that backend and namespace (nothing to tell).
    pub fn prepare<'k>(
        &self,
        backend: &str,
        ns: &str,
        keys: impl Iterator<Item = &'k str> + Clone,
    ) -> Option<Pending> {
        let caches = self.on(backend, ns);
        if caches.is_empty() {
            return None;
        }
        let caches = caches
            .into_iter()
            .map(|c| {
                let tickets = keys.clone().map(|k| c.ticket(k)).collect();
                (c, tickets)
            })
            .collect();
        Some(Pending {
            backend: backend.to_string(),
            namespace: ns.to_string(),
            caches,
        })
    }

    /// A write that found no cache when it began: if a reload added one
    /// meanwhile, [`KvCaches::wrote`] still drops and announces its keys.
    pub fn unprepared(backend: &str, ns: &str) -> Pending {
        Pending {
            backend: backend.to_string(),
            namespace: ns.to_string(),
            caches: Vec::new(),
        }
    }

    /// After the write `pending` was taken for, whatever its outcome (the
    /// changes in the order of the prepared keys): this instance's caches
    /// drop (or, write-through, take) the keys — a cache a reload put in
    /// place since the write began drops them too — and in a cluster the
    /// others are told before the call answers.
    pub async fn wrote(&self, pending: Pending, changes: Vec<Change>) {
        for (cache, tickets) in &pending.caches {
            debug_assert_eq!(tickets.len(), changes.len());
            for (change, ticket) in changes.iter().zip(tickets) {
                match change {
                    Change::Put { key, record }
                        if cache.settings.strategy == CacheStrategy::WriteThrough =>
                    {
                        cache.put(key, *ticket, record)
                    }
                    other => cache.invalidate(other.key()),
                }
            }
        }
        let now = self.on(&pending.backend, &pending.namespace);
        let newer = now
            .iter()
            .filter(|c| !pending.caches.iter().any(|(p, _)| Arc::ptr_eq(p, c)));
        for cache in newer {
            for change in &changes {
                cache.invalidate(change.key());
            }
        }
        if pending.caches.is_empty() && now.is_empty() {
            return;
        }
        let store = self.store.lock().clone();
        if let Some(store) = store {
            let keys = changes.into_iter().map(|c| match c {
                Change::Put { key, .. } | Change::Gone(key) => key,
            });
            self.announce(
                &*store,
                &pending.backend,
                &pending.namespace,
                keys.collect(),
            )
            .await;
        }
    }

    /// Tells the other instances, in announcements that fit the store's
    /// limit. After one fails (the store is not answering) the rest are
    /// not tried: one failure is counted and the call goes on.
    async fn announce(&self, store: &dyn SessionStore, backend: &str, ns: &str, keys: Vec<String>) {
        let fixed = json_len(backend) + json_len(ns) + json_len(&self.origin);
        for k in pieces(fixed, keys) {
            let payload = Announcement {
                o: self.origin.clone(),
                b: backend.to_string(),
                n: ns.to_string(),
                k,
            };
            let Ok(text) = serde_json::to_string(&payload) else {
                continue;
            };
            if let Err(e) = store.broadcast(Topic::KvCache, &text).await {
                self.unannounced.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    backend, namespace = ns, error = %e.message,
                    "cannot announce a KeyValue write to the other instances; their caches \
                     may serve the old value until its ttl is up"
                );
                return;
            }
        }
    }

    /// Applies an announcement from another instance.
    fn heard(&self, text: &str) {
        let Ok(a) = serde_json::from_str::<Announcement>(text) else {
            tracing::warn!("ignoring a malformed KeyValue cache announcement");
            return;
        };
        if a.o == self.origin {
            return;
        }
        for cache in self.on(&a.b, &a.n) {
            if a.k.is_empty() {
                cache.clear();
            } else {
                for key in &a.k {
                    cache.invalidate(key);
                }
            }
        }
    }

    fn clear_all(&self) {
        for cache in self.by_config.load().values() {
            cache.clear();
        }
    }

    /// Joins a cluster: writes are announced on `store`, and a task hears
    /// the other instances' (on the current runtime). Until it hears, the
    /// caches are not used.
    pub fn start(self: &Arc<Self>, store: Arc<dyn SessionStore>) {
        self.hearing.store(false, Ordering::Release);
        *self.store.lock() = Some(store.clone());
        let me = Arc::downgrade(self);
        let task = tokio::spawn(hear(me, store));
        if let Some(old) = self.listener.lock().replace(task) {
            old.abort();
        }
    }

    /// Whether this instance serves from its caches: always alone; in a
    /// cluster, while it hears the others' writes.
    pub fn hearing(&self) -> bool {
        self.hearing.load(Ordering::Acquire)
    }

    /// Drops expired entries every `every` (on a blocking thread: a cache
    /// may hold millions), so the figures count live entries; on the
    /// current runtime.
    pub fn sweep_every(self: &Arc<Self>, every: Duration) {
        let me = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(caches) = me.upgrade() else {
                    return;
                };
                let _ = tokio::task::spawn_blocking(move || caches.sweep()).await;
            }
        });
        if let Some(old) = self.sweeper.lock().replace(task) {
            old.abort();
        }
    }

    /// Drops every cache's expired entries; how many.
    pub fn sweep(&self) -> usize {
        self.by_config.load().values().map(|c| c.lru.sweep()).sum()
    }

    /// Ends the listener and the sweeper.
    pub fn stop(&self) {
        for task in [self.listener.lock().take(), self.sweeper.lock().take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }

    /// Every cache's figures, by config name.
    pub fn figures(&self) -> Vec<CacheFigures> {
        self.by_config
            .load()
            .values()
            .map(|c| c.snapshot())
            .collect()
    }
}

impl Drop for KvCaches {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Empties every cache on a blocking thread (a cache may hold millions of
/// entries); the caches back.
async fn clear_all(c: Arc<KvCaches>) -> Arc<KvCaches> {
    let back = c.clone();
    let _ = tokio::task::spawn_blocking(move || c.clear_all()).await;
    back
}

/// Hears announcements until the caches are gone; while the link is down,
/// the caches are empty and unused.
async fn hear(caches: Weak<KvCaches>, store: Arc<dyn SessionStore>) {
    loop {
        let feed = store.hear(Topic::KvCache).await;
        let Some(c) = caches.upgrade() else {
            return;
        };
        match feed {
            Ok(mut feed) => {
                let c = clear_all(c).await;
                c.hearing.store(true, Ordering::Release);
                drop(c);
                while let Some(text) = feed.next().await {
                    let Some(c) = caches.upgrade() else {
                        return;
                    };
                    // A "clear everything" frees every entry: off the
                    // async workers.
                    let _ = tokio::task::spawn_blocking(move || c.heard(&text)).await;
                }
                let Some(c) = caches.upgrade() else {
                    return;
                };
                c.hearing.store(false, Ordering::Release);
                drop(clear_all(c).await);
                tracing::warn!(
                    "KeyValue cache announcements lost; caches are bypassed until heard again"
                );
            }
            Err(e) => {
                drop(c);
                tracing::warn!(error = %e.message, "cannot hear KeyValue cache announcements")
            }
        }
        tokio::time::sleep(RESUBSCRIBE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(strategy: CacheStrategy) -> KvCache {
        let settings = KvCacheSettings {
            strategy,
            ttl: Duration::from_secs(60),
            max_entries: 100,
            max_bytes: 1 << 20,
        };
        KvCache {
            config: "c".into(),
            backend: "b".into(),
            namespace: "n".into(),
            settings,
            lru: Lru::new(
                Bounds {
                    max_entries: 100,
                    max_bytes: 1 << 20,
                },
                Clock::new(),
            ),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
            clock: Clock::new(),
            invalidations: AtomicU64::new(0),
        }
    }

    fn record(value: &str, version: u64) -> Record {
        Record {
            value: value.into(),
            version,
            ttl: None,
        }
    }

    #[tokio::test]
    async fn a_fill_that_raced_a_write_is_not_stored() {
        let c = cache(CacheStrategy::LookAside);
        let ticket = c.ticket("k");
        // The backend answered v1; meanwhile a write invalidated the key.
        c.invalidate("k");
        c.fill("k", ticket, &record("old", 1));
        assert!(c.get("k").is_none());
        // A read that began after the write fills.
        let ticket = c.ticket("k");
        c.fill("k", ticket, &record("new", 2));
        assert_eq!(c.get("k").unwrap().value, b"new");
    }

    #[tokio::test]
    async fn write_through_keeps_the_newest_version() {
        let c = cache(CacheStrategy::WriteThrough);
        let (t1, t2) = (c.ticket("k"), c.ticket("k"));
        c.put("k", t2, &record("v2", 2));
        assert_eq!(c.get("k").unwrap().version, 2);
        // The other write ended after v2 was put: which is newer only the
        // backend knows, so the key goes.
        c.put("k", t1, &record("v1", 1));
        assert!(c.get("k").is_none());
        let t = c.ticket("k");
        c.put("k", t, &record("v2", 2));
        // A fill of an older version does not replace it either.
        let t = c.ticket("k");
        c.fill("k", t, &record("v1", 1));
        assert_eq!(c.get("k").unwrap().version, 2);
        // A delete that ended before a put of an earlier write: not cached.
        let before_put = c.ticket("gone");
        c.invalidate("gone");
        c.put("gone", before_put, &record("v7", 7));
        assert!(c.get("gone").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_drops_expired_entries() {
        let caches = Arc::new(KvCaches::new(Clock::new()));
        let configs = named("1m");
        caches.sync(&configs);
        let cache = caches.of(&configs["c"]).unwrap();
        let t = cache.ticket("k");
        cache.fill("k", t, &record("v", 1));
        caches.sweep_every(Duration::from_secs(30));
        assert_eq!(caches.figures()[0].lru.entries, 1);
        tokio::time::advance(Duration::from_secs(61)).await;
        // The sweep runs on a blocking thread: wait for its count.
        for _ in 0..100 {
            if caches.figures()[0].lru.entries == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        let f = &caches.figures()[0];
        assert_eq!((f.lru.entries, f.lru.expirations), (0, 1));
        caches.stop();
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_lives_no_longer_than_the_record_or_the_ttl() {
        let c = cache(CacheStrategy::LookAside);
        let t = c.ticket("short");
        let mut r = record("v", 1);
        r.ttl = Some(Duration::from_secs(5));
        c.fill("short", t, &r);
        let t = c.ticket("long");
        c.fill("long", t, &record("v", 1));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.get("short").unwrap().ttl, Some(Duration::from_secs(3)));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(c.get("short").is_none());
        assert!(c.get("long").is_some());
        tokio::time::advance(Duration::from_secs(55)).await;
        assert!(c.get("long").is_none());
    }

    fn named(ttl: &str) -> ByName {
        let yaml = format!(
            "backends: {{ m: {{ type: memory }} }}\n\
             namespaces: {{ n: {{ allowed_backends: [m], allowed_patterns: [key_value] }} }}\n\
             configs: {{ c: {{ namespace: n, pattern: key_value, backend: m, \
             cache: {{ enabled: true, ttl: {ttl} }} }} }}\n"
        );
        let cfg = crate::config::GatewayConfig::from_yaml(
            &yaml,
            &crate::config::Source::Inline,
            &[("X", "x"); 0],
        )
        .unwrap();
        crate::config::resolve::NamedConfigs::resolve(&cfg).unwrap()
    }

    #[tokio::test]
    async fn a_cache_a_reload_put_in_place_mid_write_drops_the_written_keys() {
        let caches = KvCaches::new(Clock::new());
        caches.sync(&named("1m"));
        let pending = caches.prepare("m", "n", ["k"].into_iter()).unwrap();
        // The reload changes the cache's ttl: a new, empty cache; a read
        // on it fills the value from before the write.
        let configs = named("2m");
        caches.sync(&configs);
        let cache = caches.of(&configs["c"]).unwrap();
        let t = cache.ticket("k");
        cache.fill("k", t, &record("old", 1));
        caches.wrote(pending, vec![Change::Gone("k".into())]).await;
        assert!(cache.get("k").is_none());
        // A write that began with no cache at all does the same.
        let t = cache.ticket("k");
        cache.fill("k", t, &record("old", 1));
        caches
            .wrote(
                KvCaches::unprepared("m", "n"),
                vec![Change::Gone("k".into())],
            )
            .await;
        assert!(cache.get("k").is_none());
    }

    #[test]
    fn announcements_fit_the_store_and_a_huge_key_means_everything() {
        let keys: Vec<String> = (0..50).map(|i| format!("{i:\u{1}>200}")).collect();
        let fixed = json_len(&"o".repeat(16)) + json_len(&"b".repeat(7)) + json_len(&"n".repeat(7));
        let pieces = pieces(fixed, keys.clone());
        assert!(pieces.len() > 1);
        assert_eq!(pieces.concat(), keys);
        for k in pieces {
            let text = serde_json::to_string(&Announcement {
                o: "o".repeat(16),
                b: "b".repeat(7),
                n: "n".repeat(7),
                k,
            })
            .unwrap();
            assert!(text.len() <= MAX_BROADCAST_BYTES, "{}", text.len());
        }
        let huge = super::pieces(fixed, vec!["a".into(), "x".repeat(MAX_BROADCAST_BYTES)]);
        assert_eq!(huge, vec![Vec::<String>::new()]);
        // Plain 1 KiB keys share an announcement (six of them fit).
        let plain: Vec<String> = (0..12).map(|i| format!("{i:x>1024}")).collect();
        assert_eq!(super::pieces(fixed, plain).len(), 2);
    }
}
