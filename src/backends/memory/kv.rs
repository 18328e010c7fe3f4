//! The in-memory key-value store: a DashMap per namespace with TTL expiry, all six
//! KeyValue interfaces. A product feature (the embedded default runs on it),
//! not a test double: expiry is enforced on read and swept by its pool actor,
//! multi-key batches are atomic, and versions never repeat.
//!
//! Concurrency: single-key calls share a namespace's gate (read side) and
//! rely on the DashMap shard lock for the key; multi-key batches take the
//! gate exclusively, so no reader sees half a batch. No lock is held across
//! an `.await` (every method body is synchronous).
//!
//! Each namespace also keeps its keys in order (a `BTreeSet` beside the
//! map), so a Scan page costs its own size plus a lookup, not a walk over
//! the namespace. The index is changed only under the key's map entry
//! (a new key, a removed one); a scan reads it in short batches and looks
//! each key up after letting go of it, so the two locks are never taken in
//! opposite orders.

use std::{
    collections::BTreeSet,
    ops::Bound,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use dashmap::{mapref::entry::Entry as MapEntry, DashMap};
use parking_lot::RwLock;

use crate::backends::kv::{
    self, check_preconditions, idempotency_reused, Action, Applied, Current, KeyValueBasic,
    KeyValueBatch, KeyValueCas, KeyValueScan, KeyValueTransactional, KeyValueTtl, Record, ScanItem,
    ScanPage, WriteBatch,
};
use crate::{
    clock::{ms, Clock},
    error::Error,
};

struct Stored {
    value: Vec<u8>,
    version: u64,
    /// Clock milliseconds at which the key expires.
    expires_ms: Option<u64>,
}

impl Stored {
    fn live(&self, now: u64) -> bool {
        self.expires_ms.is_none_or(|e| e > now)
    }

    fn record(&self, now: u64) -> Record {
        Record {
            value: self.value.clone(),
            version: self.version,
            ttl: self
                .expires_ms
                .map(|e| Duration::from_millis(e.saturating_sub(now))),
        }
    }
}

#[derive(Default)]
struct Space {
    map: DashMap<String, Stored>,
    /// The map's keys in order (see the module's notes).
    index: RwLock<BTreeSet<String>>,
    /// Read: single-key calls. Write: multi-key batches.
    gate: RwLock<()>,
}

impl Space {
    /// Stores `stored` under `key`, filing a new key in the index while
    /// the key's entry is held.
    fn put(&self, key: &str, stored: Stored) {
        match self.map.entry(key.to_string()) {
            MapEntry::Occupied(mut e) => {
                e.insert(stored);
            }
            MapEntry::Vacant(e) => {
                self.index.write().insert(key.to_string());
                e.insert(stored);
            }
        }
    }

    /// Removes `key`; returns what it held.
    fn remove(&self, key: &str) -> Option<Stored> {
        match self.map.entry(key.to_string()) {
            MapEntry::Occupied(e) => {
                self.index.write().remove(key);
                Some(e.remove())
            }
            MapEntry::Vacant(_) => None,
        }
    }

    /// Up to `limit` live keys starting with `prefix`, after `after`, in
    /// order.
    fn keys_from(&self, prefix: &str, after: Option<&str>, limit: usize, now: u64) -> Vec<String> {
        /// Keys taken from the index at a time, its lock let go between.
        const BATCH: usize = 256;
        let mut out = Vec::new();
        let mut from = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        while out.len() < limit {
            let batch: Vec<String> = {
                let index = self.index.read();
                let range = (from.as_ref().map(String::as_str), Bound::Unbounded);
                index
                    .range::<str, _>(range)
                    .take_while(|k| k.starts_with(prefix))
                    .take(BATCH)
                    .cloned()
                    .collect()
            };
            let Some(last) = batch.last() else {
                break;
            };
            from = Bound::Excluded(last.clone());
            let full = batch.len() == BATCH;
            for key in batch {
                if out.len() == limit {
                    break;
                }
                if self.map.get(&key).is_some_and(|s| s.live(now)) {
                    out.push(key);
                }
            }
            if !full {
                break;
            }
        }
        out
    }
}

struct Remembered {
    fingerprint: String,
    outcome: Vec<u64>,
    until_ms: u64,
}

pub struct MemoryKv {
    clock: Clock,
    spaces: DashMap<String, Arc<Space>>,
    version: AtomicU64,
    idempotency: DashMap<(String, String), Remembered>,
}

impl MemoryKv {
    pub fn new(clock: Clock) -> Self {
        MemoryKv {
            clock,
            spaces: DashMap::new(),
            version: AtomicU64::new(0),
            idempotency: DashMap::new(),
        }
    }

    fn space(&self, ns: &str) -> Arc<Space> {
        if let Some(s) = self.spaces.get(ns) {
            return s.clone();
        }
        self.spaces.entry(ns.to_string()).or_default().clone()
    }

    fn read(&self, ns: &str, key: &str) -> Option<Record> {
        let space = self.space(ns);
        let _gate = space.gate.read();
        let now = self.clock.now_ms();
        space
            .map
            .get(key)
            .filter(|s| s.live(now))
            .map(|s| s.record(now))
    }

    /// Applies a batch atomically, honouring its idempotency token.
    fn apply(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error> {
        let Some(idem) = batch.idempotency.clone() else {
            return self.apply_ops(ns, &batch);
        };
        let now = self.clock.now_ms();
        // The entry's shard lock makes check-apply-remember one step for
        // concurrent retries of the same token.
        match self.idempotency.entry((ns.to_string(), idem.id.clone())) {
            MapEntry::Occupied(e) if e.get().until_ms > now => {
                if e.get().fingerprint != idem.fingerprint {
                    return Err(idempotency_reused(&idem.id));
                }
                Ok(Applied {
                    results: e.get().outcome.clone(),
                    replayed: true,
                })
            }
            entry => {
                let applied = self.apply_ops(ns, &batch)?;
                let remembered = Remembered {
                    fingerprint: idem.fingerprint,
                    outcome: applied.results.clone(),
                    until_ms: now.saturating_add(ms(idem.retain)),
                };
                match entry {
                    MapEntry::Occupied(mut e) => {
                        e.insert(remembered);
                    }
                    MapEntry::Vacant(e) => {
                        e.insert(remembered);
                    }
                }
                Ok(applied)
            }
        }
    }

    fn apply_ops(&self, ns: &str, batch: &WriteBatch) -> Result<Applied, Error> {
        let space = self.space(ns);
        let _gate = if batch.ops.len() > 1 {
            Gate::Exclusive(space.gate.write())
        } else {
            Gate::Shared(space.gate.read())
        };
        let now = self.clock.now_ms();
        if batch.ops.len() == 1 && batch.ops[0].precondition.is_some() {
            // A single conditional write must check and write under the
            // key's own lock, or two racing swaps could both pass.
            return self.apply_single_conditional(&space, batch, now);
        }
        let current: Vec<Current> = batch
            .ops
            .iter()
            .map(|op| Current {
                version: space
                    .map
                    .get(&op.key)
                    .filter(|s| s.live(now))
                    .map_or(0, |s| s.version),
            })
            .collect();
        check_preconditions(&batch.ops, &current)?;
        let mut results = Vec::with_capacity(batch.ops.len());
        for op in &batch.ops {
            results.push(self.write_one(&space, &op.key, &op.action, now));
        }
        Ok(Applied {
            results,
            replayed: false,
        })
    }

    fn apply_single_conditional(
        &self,
        space: &Space,
        batch: &WriteBatch,
        now: u64,
    ) -> Result<Applied, Error> {
        let op = &batch.ops[0];
        let entry = space.map.entry(op.key.clone());
        let version = match &entry {
            MapEntry::Occupied(e) if e.get().live(now) => e.get().version,
            _ => 0,
        };
        check_preconditions(std::slice::from_ref(op), &[Current { version }])?;
        let result = match (&op.action, entry) {
            (Action::Put { value, ttl }, entry) => {
                let v = self.next_version();
                let stored = Stored {
                    value: value.clone(),
                    version: v,
                    expires_ms: crate::clock::deadline(now, *ttl),
                };
                match entry {
                    MapEntry::Occupied(mut e) => {
                        e.insert(stored);
                    }
                    MapEntry::Vacant(e) => {
                        space.index.write().insert(op.key.clone());
                        e.insert(stored);
                    }
                }
                v
            }
            (Action::Delete, MapEntry::Occupied(e)) => {
                let existed = e.get().live(now);
                space.index.write().remove(&op.key);
                e.remove();
                u64::from(existed)
            }
            (Action::Delete, MapEntry::Vacant(_)) => 0,
        };
        Ok(Applied {
            results: vec![result],
            replayed: false,
        })
    }

    /// The next version: one more than the last, and never below the clock
    /// in microseconds, so a gateway restarted (its data gone) never hands
    /// out a version a client saw before.
    fn next_version(&self) -> u64 {
        let floor = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let previous = self
            .version
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_add(1).max(floor))
            })
            .unwrap_or_else(|v| v);
        previous.saturating_add(1).max(floor)
    }

    fn write_one(&self, space: &Space, key: &str, action: &Action, now: u64) -> u64 {
        match action {
            Action::Put { value, ttl } => {
                let v = self.next_version();
                space.put(
                    key,
                    Stored {
                        value: value.clone(),
                        version: v,
                        expires_ms: crate::clock::deadline(now, *ttl),
                    },
                );
                v
            }
            Action::Delete => space.remove(key).map_or(0, |s| u64::from(s.live(now))),
        }
    }

    /// Drops expired keys and forgotten idempotency tokens; run by the pool
    /// actor. Returns how many keys were removed.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_ms();
        let mut removed = 0;
        for space in self.spaces.iter() {
            let before = space.map.len();
            space.map.retain(|key, s| {
                let live = s.live(now);
                if !live {
                    space.index.write().remove(key);
                }
                live
            });
            removed += before.saturating_sub(space.map.len());
        }
        self.idempotency.retain(|_, r| r.until_ms > now);
        removed
    }

    /// Keys stored (live or not yet swept), for pool stats.
    pub fn len(&self) -> usize {
        self.spaces.iter().map(|s| s.map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

enum Gate<'a> {
    Shared(#[allow(dead_code)] parking_lot::RwLockReadGuard<'a, ()>),
    Exclusive(#[allow(dead_code)] parking_lot::RwLockWriteGuard<'a, ()>),
}

/// Runs a walk over a namespace's keys on tokio's blocking pool, so the
/// async workers keep serving other calls meanwhile.
async fn off_workers<T: Send + 'static>(
    walk: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(walk)
        .await
        .map_err(|e| Error::internal(format!("a key walk failed: {e}")))
}

#[async_trait]
impl KeyValueBasic for MemoryKv {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Record>, Error> {
        Ok(self.read(ns, key))
    }

    async fn write(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error> {
        self.apply(ns, batch)
    }
}

#[async_trait]
impl KeyValueScan for MemoryKv {
    async fn scan(
        &self,
        ns: &str,
        prefix: &str,
        cursor: &str,
        limit: usize,
        keys_only: bool,
    ) -> Result<ScanPage, Error> {
        let after = kv::cursor_key(cursor)?;
        let space = self.space(ns);
        let now = self.clock.now_ms();
        let prefix = prefix.to_string();
        // From the ordered index: the page's keys and a lookup each. On the
        // blocking pool all the same, so a large page never holds an async
        // worker. A page is not a snapshot across concurrent batches: each
        // key is read as it is.
        off_workers(move || {
            let items = space
                .keys_from(&prefix, after.as_deref(), limit, now)
                .into_iter()
                .filter_map(|key| {
                    let stored = space.map.get(&key)?;
                    Some(ScanItem {
                        cursor: kv::encode_cursor(key.as_bytes()),
                        value: if keys_only {
                            Vec::new()
                        } else {
                            stored.value.clone()
                        },
                        version: stored.version,
                        key,
                    })
                })
                .collect();
            ScanPage { items }
        })
        .await
    }

    async fn count(&self, ns: &str, prefix: &str) -> Result<u64, Error> {
        let space = self.space(ns);
        let now = self.clock.now_ms();
        let prefix = prefix.to_string();
        // A walk over the whole namespace: on the blocking pool (see scan).
        off_workers(move || {
            space
                .map
                .iter()
                .filter(|e| e.key().starts_with(&prefix) && e.value().live(now))
                .count() as u64
        })
        .await
    }
}

#[async_trait]
impl KeyValueTtl for MemoryKv {
    async fn expire(&self, ns: &str, key: &str, ttl: Duration) -> Result<bool, Error> {
        let space = self.space(ns);
        let _gate = space.gate.read();
        let now = self.clock.now_ms();
        let found = match space.map.get_mut(key) {
            Some(mut s) if s.live(now) => {
                s.expires_ms = crate::clock::deadline(now, Some(ttl));
                true
            }
            _ => false,
        };
        Ok(found)
    }

    async fn ttl(&self, ns: &str, key: &str) -> Result<Option<Option<Duration>>, Error> {
        Ok(self.read(ns, key).map(|r| r.ttl))
    }

    async fn persist(&self, ns: &str, key: &str) -> Result<Option<bool>, Error> {
        let space = self.space(ns);
        let _gate = space.gate.read();
        let now = self.clock.now_ms();
        let had = match space.map.get_mut(key) {
            Some(mut s) if s.live(now) => Some(s.expires_ms.take().is_some()),
            _ => None,
        };
        Ok(had)
    }
}

#[async_trait]
impl KeyValueBatch for MemoryKv {
    async fn batch_get(&self, ns: &str, keys: &[String]) -> Result<Vec<Option<Record>>, Error> {
        let space = self.space(ns);
        let _gate = space.gate.read();
        let now = self.clock.now_ms();
        Ok(keys
            .iter()
            .map(|k| {
                space
                    .map
                    .get(k)
                    .filter(|s| s.live(now))
                    .map(|s| s.record(now))
            })
            .collect())
    }

    async fn batch_write(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error> {
        self.apply(ns, batch)
    }
}

#[async_trait]
impl KeyValueCas for MemoryKv {
    async fn compare_and_swap(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error> {
        self.apply(ns, batch)
    }
}

#[async_trait]
impl KeyValueTransactional for MemoryKv {
    async fn transact(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error> {
        self.apply(ns, batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::kv::WriteOp;

    fn set(key: &str, ttl: Option<Duration>) -> WriteBatch {
        WriteBatch::single(
            WriteOp {
                key: key.into(),
                action: Action::Put {
                    value: b"v".to_vec(),
                    ttl,
                },
                precondition: None,
            },
            None,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn keys_expire_on_the_clock_and_are_swept() {
        let kv = MemoryKv::new(Clock::new());
        kv.write("ns", set("short", Some(Duration::from_secs(10))))
            .await
            .unwrap();
        kv.write("ns", set("kept", None)).await.unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        let left = kv.get("ns", "short").await.unwrap().unwrap().ttl.unwrap();
        assert_eq!(left, Duration::from_secs(1));
        assert_eq!(kv.len(), 2);

        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            kv.get("ns", "short").await.unwrap().is_none(),
            "expired on read"
        );
        assert_eq!(kv.count("ns", "").await.unwrap(), 1);
        assert_eq!(kv.sweep(), 1, "the sweeper removes it");
        assert_eq!(kv.len(), 1);
        assert!(kv.get("ns", "kept").await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn scans_page_through_the_ordered_index_skipping_dead_keys() {
        let kv = MemoryKv::new(Clock::new());
        // 1,000 keys under `p/` (more than one index batch), others around.
        for i in 0..1000 {
            kv.write("ns", set(&format!("p/{i:04}"), None))
                .await
                .unwrap();
        }
        for key in ["o", "p", "q/1"] {
            kv.write("ns", set(key, None)).await.unwrap();
        }
        // Dead keys: deleted, and expired but not swept yet.
        let delete = WriteBatch::single(
            WriteOp {
                key: "p/0001".into(),
                action: Action::Delete,
                precondition: None,
            },
            None,
        );
        kv.write("ns", delete).await.unwrap();
        for i in 2..300 {
            kv.write(
                "ns",
                set(&format!("p/{i:04}"), Some(Duration::from_secs(1))),
            )
            .await
            .unwrap();
        }
        tokio::time::advance(Duration::from_secs(2)).await;

        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = kv.scan("ns", "p/", &cursor, 100, true).await.unwrap();
            let Some(last) = page.items.last() else { break };
            cursor = last.cursor.clone();
            seen.extend(page.items.into_iter().map(|i| i.key));
        }
        let expected: Vec<String> = std::iter::once(0)
            .chain(300..1000)
            .map(|i| format!("p/{i:04}"))
            .collect();
        assert_eq!(seen, expected, "every live key once, in order");
        assert_eq!(kv.sweep(), 298);
        assert_eq!(
            kv.space("ns").index.read().len(),
            kv.len(),
            "the index follows the map"
        );
    }
}
