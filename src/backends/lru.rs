//! A bounded map with per-entry expiry and least-recently-used eviction:
//! the store of the memory cache backend and of the KeyValue cache front.
//!
//! Bounded by entries and by bytes (key + value + a fixed overhead per
//! entry); when an insert would pass either bound, the least recently used
//! entries go first. Expired entries are dropped when met, when pushed out
//! (counted as expired), and by [`Lru::sweep`], which the memory backend's
//! pool actor calls for its Cache store and the KeyValue caches' sweeper
//! for theirs.
//! Bounds from 4,096 entries and 64 MiB up are split evenly over 16
//! shards, each with its own lock, so concurrent calls on different keys
//! rarely meet; the bounds hold for the sum, and the largest entry is a
//! shard's share of the bytes. No lock is held beyond one method call
//! (nothing here awaits).

use std::{
    hash::{BuildHasher, RandomState},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use hashlink::LinkedHashMap;
use parking_lot::Mutex;

use crate::clock::Clock;

/// Bytes counted per entry beyond its key and value (links, hash slot,
/// expiry).
pub const ENTRY_OVERHEAD: usize = 64;

/// Shards a large cache is split into.
const SHARDS: usize = 16;

/// How much a cache may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max_entries: usize,
    pub max_bytes: usize,
}

/// What a cached value weighs, in bytes.
pub trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for Vec<u8> {
    fn weight(&self) -> usize {
        self.len()
    }
}

/// An entry too large for the cache's byte bound (per shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    /// The largest entry (key + value + overhead) this cache holds.
    pub max_entry_bytes: usize,
}

struct Slot<V> {
    value: V,
    /// Clock ms at which the entry expires.
    expires_ms: Option<u64>,
    bytes: usize,
}

impl<V> Slot<V> {
    fn live(&self, now: u64) -> bool {
        self.expires_ms.is_none_or(|e| e > now)
    }

    fn ttl(&self, now: u64) -> Option<Duration> {
        self.expires_ms
            .map(|e| Duration::from_millis(e.saturating_sub(now)))
    }
}

struct Shard<V> {
    map: LinkedHashMap<String, Slot<V>>,
    bytes: usize,
}

impl<V> Shard<V> {
    fn remove(&mut self, key: &str) -> Option<Slot<V>> {
        let slot = self.map.remove(key)?;
        self.bytes -= slot.bytes;
        Some(slot)
    }
}

/// What happened to a cache since it was made.
#[derive(Debug, Default)]
struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Entries pushed out to make room.
    pub evictions: AtomicU64,
    /// Entries dropped because their time was up.
    pub expirations: AtomicU64,
}

/// A cache's figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    pub entries: u64,
    pub bytes: u64,
    pub max_entries: u64,
    pub max_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub expirations: u64,
}

/// The bounded map (see the module's notes).
pub struct Lru<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    per_shard: Bounds,
    bounds: Bounds,
    hasher: RandomState,
    clock: Clock,
    counters: Counters,
}

impl<V: Clone + Weigh> Lru<V> {
    pub fn new(bounds: Bounds, clock: Clock) -> Self {
        // Split only when each shard still holds a useful share: 256
        // entries, and 4 MiB (the largest entry a shard takes is its share).
        let shards = if bounds.max_entries >= SHARDS * 256 && bounds.max_bytes >= SHARDS << 22 {
            SHARDS
        } else {
            1
        };
        let per_shard = Bounds {
            max_entries: bounds.max_entries / shards,
            max_bytes: bounds.max_bytes / shards,
        };
        Lru {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        map: LinkedHashMap::new(),
                        bytes: 0,
                    })
                })
                .collect(),
            per_shard,
            bounds,
            hasher: RandomState::new(),
            clock,
            counters: Counters::default(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard<V>> {
        let at = (self.hasher.hash_one(key) as usize) % self.shards.len();
        &self.shards[at]
    }

    /// The live value under `key` and its time left, marked as just used.
    pub fn get(&self, key: &str) -> Option<(V, Option<Duration>)> {
        let now = self.clock.now_ms();
        let mut shard = self.shard(key).lock();
        let found = match shard.map.get(key) {
            Some(slot) if slot.live(now) => Some((slot.value.clone(), slot.ttl(now))),
            Some(_) => {
                shard.remove(key);
                self.counters.expirations.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => None,
        };
        match &found {
            Some(_) => {
                shard.map.to_back(key);
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
            }
        }
        found
    }

    /// Whether a live entry is under `key` (its recency unchanged).
    pub fn contains(&self, key: &str) -> bool {
        let now = self.clock.now_ms();
        self.shard(key)
            .lock()
            .map
            .get(key)
            .is_some_and(|s| s.live(now))
    }

    /// Stores `value` under `key`, expiring after `ttl` (`None`: only
    /// evicted or removed), pushing out the least recently used entries
    /// as the bounds need.
    pub fn insert(&self, key: &str, value: V, ttl: Option<Duration>) -> Result<(), TooLarge> {
        self.insert_if(key, value, ttl, |_| true).map(|_| ())
    }

    /// [`Lru::insert`], only if `keep` says so of the live entry now
    /// under `key` (`None`: there is none), decided under the key's lock;
    /// whether it stored.
    pub fn insert_if(
        &self,
        key: &str,
        value: V,
        ttl: Option<Duration>,
        keep: impl FnOnce(Option<&V>) -> bool,
    ) -> Result<bool, TooLarge> {
        let now = self.clock.now_ms();
        let bytes = self.check_size(key, &value)?;
        let mut shard = self.shard(key).lock();
        let current = shard.map.get(key).filter(|s| s.live(now));
        if !keep(current.map(|s| &s.value)) {
            return Ok(false);
        }
        self.put(
            &mut shard,
            now,
            key,
            value,
            crate::clock::deadline(now, ttl),
            bytes,
        );
        Ok(true)
    }

    fn check_size(&self, key: &str, value: &V) -> Result<usize, TooLarge> {
        let bytes = key.len() + value.weight() + ENTRY_OVERHEAD;
        if bytes > self.per_shard.max_bytes || self.per_shard.max_entries == 0 {
            return Err(TooLarge {
                max_entry_bytes: self.per_shard.max_bytes,
            });
        }
        Ok(bytes)
    }

    /// Stores under the shard's lock, making room first: least recently
    /// used out (an expired entry pushed out counts as expired).
    fn put(
        &self,
        shard: &mut Shard<V>,
        now: u64,
        key: &str,
        value: V,
        expires_ms: Option<u64>,
        bytes: usize,
    ) {
        shard.remove(key);
        while shard.map.len() + 1 > self.per_shard.max_entries
            || shard.bytes + bytes > self.per_shard.max_bytes
        {
            let Some((_, old)) = shard.map.pop_front() else {
                break;
            };
            shard.bytes -= old.bytes;
            let counter = if old.live(now) {
                &self.counters.evictions
            } else {
                &self.counters.expirations
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        shard.bytes += bytes;
        shard.map.insert(
            key.to_string(),
            Slot {
                value,
                expires_ms,
                bytes,
            },
        );
    }

    /// Replaces the entry under `key` with what `f` makes of the live
    /// value (`None` when there is none), in one step under the key's
    /// lock: an increment no other call can interleave with. A new entry
    /// expires after `ttl`; a replaced one keeps its expiry.
    pub fn update<R, E>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        f: impl FnOnce(Option<&V>) -> Result<(V, R), E>,
        too_large: impl FnOnce(TooLarge) -> E,
    ) -> Result<R, E> {
        let now = self.clock.now_ms();
        let mut shard = self.shard(key).lock();
        let current = shard.map.get(key).filter(|s| s.live(now));
        let expires_ms = match current {
            Some(slot) => slot.expires_ms,
            None => crate::clock::deadline(now, ttl),
        };
        let (value, out) = f(current.map(|s| &s.value))?;
        let bytes = self.check_size(key, &value).map_err(too_large)?;
        self.put(&mut shard, now, key, value, expires_ms, bytes);
        Ok(out)
    }

    /// Removes the entry under `key`; whether a live one was there.
    pub fn remove(&self, key: &str) -> bool {
        let now = self.clock.now_ms();
        self.shard(key)
            .lock()
            .remove(key)
            .is_some_and(|s| s.live(now))
    }

    /// Removes every entry (freed after each shard's lock is let go).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let old = {
                let mut shard = shard.lock();
                shard.bytes = 0;
                std::mem::take(&mut shard.map)
            };
            drop(old);
        }
    }

    /// Drops every expired entry; how many.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_ms();
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let mut freed = 0;
            shard.map.retain(|_, slot| {
                let live = slot.live(now);
                if !live {
                    freed += slot.bytes;
                    dropped += 1;
                }
                live
            });
            shard.bytes -= freed;
        }
        self.counters
            .expirations
            .fetch_add(dropped as u64, Ordering::Relaxed);
        dropped
    }

    pub fn snapshot(&self) -> Snapshot {
        let (mut entries, mut bytes) = (0, 0);
        for shard in self.shards.iter() {
            let shard = shard.lock();
            entries += shard.map.len() as u64;
            bytes += shard.bytes as u64;
        }
        let c = &self.counters;
        Snapshot {
            entries,
            bytes,
            max_entries: self.bounds.max_entries as u64,
            max_bytes: self.bounds.max_bytes as u64,
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            expirations: c.expirations.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lru(max_entries: usize, max_bytes: usize) -> Lru<Vec<u8>> {
        Lru::new(
            Bounds {
                max_entries,
                max_bytes,
            },
            Clock::new(),
        )
    }

    #[tokio::test]
    async fn the_least_recently_used_entry_goes_first() {
        let cache = lru(3, 1 << 20);
        for k in ["a", "b", "c"] {
            cache.insert(k, vec![1], None).unwrap();
        }
        // `a` is used, so `b` is now the oldest.
        assert!(cache.get("a").is_some());
        cache.insert("d", vec![1], None).unwrap();
        assert!(cache.get("b").is_none());
        for k in ["a", "c", "d"] {
            assert!(cache.get(k).is_some(), "{k}");
        }
        let s = cache.snapshot();
        assert_eq!((s.entries, s.evictions), (3, 1));
    }

    #[tokio::test]
    async fn the_byte_bound_holds_and_counts_keys_and_overhead() {
        let entry = 1 + 100 + ENTRY_OVERHEAD;
        let cache = lru(1000, entry * 4);
        for k in 0..10u8 {
            cache.insert(&k.to_string(), vec![0; 100], None).unwrap();
        }
        let s = cache.snapshot();
        assert_eq!(s.entries, 4);
        assert_eq!(s.bytes, (entry * 4) as u64);
        assert_eq!(s.evictions, 6);
        // Replacing a key does not count it twice.
        cache.insert("9", vec![0; 100], None).unwrap();
        assert_eq!(cache.snapshot().bytes, (entry * 4) as u64);
        // An entry larger than the whole bound is refused, not half-stored.
        let err = cache.insert("big", vec![0; entry * 4], None).unwrap_err();
        assert_eq!(err.max_entry_bytes, entry * 4);
        assert_eq!(cache.snapshot().entries, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_on_read_and_by_sweep() {
        let cache = lru(100, 1 << 20);
        cache
            .insert("short", vec![1], Some(Duration::from_secs(1)))
            .unwrap();
        cache
            .insert("other", vec![1], Some(Duration::from_secs(1)))
            .unwrap();
        cache.insert("long", vec![1], None).unwrap();
        let (_, ttl) = cache.get("short").unwrap();
        assert_eq!(ttl, Some(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(cache.get("short").is_none());
        assert!(!cache.contains("other"));
        assert_eq!(cache.sweep(), 1);
        let s = cache.snapshot();
        assert_eq!((s.entries, s.expirations), (1, 2));
        assert_eq!(cache.get("long").unwrap().1, None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_is_one_step_and_keeps_the_expiry() {
        let cache = lru(100, 1 << 20);
        let add = |by: u8| {
            cache.update(
                "n",
                Some(Duration::from_secs(10)),
                |v| {
                    let n = v.map_or(0, |v| v[0]) + by;
                    Ok::<_, ()>((vec![n], n))
                },
                |_| (),
            )
        };
        assert_eq!(add(2), Ok(2));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(add(3), Ok(5));
        // The window started with the first update.
        assert_eq!(cache.get("n").unwrap().1, Some(Duration::from_secs(6)));
        let failed = cache.update("n", None, |_| Err::<(Vec<u8>, ()), _>("no"), |_| "big");
        assert_eq!(failed, Err("no"));
        assert_eq!(cache.get("n").unwrap().0, vec![5]);
    }

    #[tokio::test]
    async fn large_bounds_are_sharded_and_still_hold() {
        let cache = lru(SHARDS * 256, 64 << 20);
        assert_eq!(cache.shards.len(), SHARDS);
        for k in 0..(SHARDS * 256 * 3) {
            cache.insert(&k.to_string(), vec![1], None).unwrap();
        }
        let s = cache.snapshot();
        assert!(s.entries <= (SHARDS * 256) as u64, "{s:?}");
        assert_eq!(s.entries + s.evictions, (SHARDS * 256 * 3) as u64);
        assert!(cache.remove("0") || !cache.contains("0"));
        cache.clear();
        assert_eq!(cache.snapshot().entries, 0);
    }
}
