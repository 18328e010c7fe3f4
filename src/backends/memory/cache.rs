//! The memory backend's cache: every namespace's entries in one bounded
//! [`Lru`] (`backends.<name>.cache.max_entries` / `max_bytes`), so the
//! gateway's memory for cache entries has one ceiling however many
//! namespaces use it; the least recently used entry goes first, whichever
//! namespace it belongs to. Both Cache interfaces; an increment runs under
//! the key's shard lock, so no other call on the key interleaves.

use std::time::Duration;

use async_trait::async_trait;

use crate::{
    backends::{
        cache::{
            counter_overflow, entry_too_large, parse_counter, CacheBasic, CacheCounters, Cached,
        },
        lru::{Bounds, Lru, Snapshot},
    },
    clock::Clock,
    error::Error,
};

pub struct MemoryCache {
    lru: Lru<Vec<u8>>,
}

/// One map for every namespace: the namespace (which never holds a NUL)
/// and the key, NUL between.
fn entry_key(ns: &str, key: &str) -> String {
    let mut k = String::with_capacity(ns.len() + 1 + key.len());
    k.push_str(ns);
    k.push('\0');
    k.push_str(key);
    k
}

impl MemoryCache {
    pub fn new(bounds: Bounds, clock: Clock) -> Self {
        MemoryCache {
            lru: Lru::new(bounds, clock),
        }
    }

    pub fn sweep(&self) -> usize {
        self.lru.sweep()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.lru.snapshot()
    }
}

#[async_trait]
impl CacheBasic for MemoryCache {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Cached>, Error> {
        Ok(self
            .lru
            .get(&entry_key(ns, key))
            .map(|(value, ttl)| Cached { value, ttl }))
    }

    async fn get_multi(&self, ns: &str, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        Ok(keys
            .iter()
            .map(|k| self.lru.get(&entry_key(ns, k)).map(|(v, _)| v))
            .collect())
    }

    async fn exists(&self, ns: &str, key: &str) -> Result<bool, Error> {
        Ok(self.lru.contains(&entry_key(ns, key)))
    }

    async fn set(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        self.lru
            .insert(&entry_key(ns, key), value, ttl)
            .map_err(|e| entry_too_large(key, e.max_entry_bytes))
    }

    async fn delete(&self, ns: &str, key: &str) -> Result<bool, Error> {
        Ok(self.lru.remove(&entry_key(ns, key)))
    }
}

#[async_trait]
impl CacheCounters for MemoryCache {
    async fn increment(
        &self,
        ns: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, Error> {
        self.lru.update(
            &entry_key(ns, key),
            ttl,
            |current| {
                let now = current.map_or(Ok(0), |v| parse_counter(key, v))?;
                let next = now
                    .checked_add(delta)
                    .ok_or_else(|| counter_overflow(key))?;
                Ok((next.to_string().into_bytes(), next))
            },
            |e| entry_too_large(key, e.max_entry_bytes),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> MemoryCache {
        MemoryCache::new(
            Bounds {
                max_entries: 100,
                max_bytes: 1 << 20,
            },
            Clock::new(),
        )
    }

    #[tokio::test]
    async fn namespaces_never_see_each_others_entries() {
        let c = cache();
        c.set("a", "k", b"1".to_vec(), None).await.unwrap();
        assert_eq!(c.get("b", "k").await.unwrap(), None);
        assert_eq!(c.get("a", "k").await.unwrap().unwrap().value, b"1");
        assert!(!c.exists("b", "k").await.unwrap());
        assert!(!c.delete("b", "k").await.unwrap());
        assert!(c.delete("a", "k").await.unwrap());
    }

    #[tokio::test]
    async fn increments_count_from_zero_and_refuse_what_is_not_a_counter() {
        let c = cache();
        assert_eq!(c.increment("n", "hits", 5, None).await.unwrap(), 5);
        assert_eq!(c.increment("n", "hits", -7, None).await.unwrap(), -2);
        assert_eq!(c.get("n", "hits").await.unwrap().unwrap().value, b"-2");
        c.set("n", "text", b"abc".to_vec(), None).await.unwrap();
        let e = c.increment("n", "text", 1, None).await.unwrap_err();
        assert_eq!(e.reason, "NOT_A_COUNTER");
        c.set("n", "max", i64::MAX.to_string().into_bytes(), None)
            .await
            .unwrap();
        let e = c.increment("n", "max", 1, None).await.unwrap_err();
        assert_eq!(e.reason, "COUNTER_OVERFLOW");
        // Nothing changed on failure.
        assert_eq!(
            c.get("n", "max").await.unwrap().unwrap().value,
            i64::MAX.to_string().into_bytes()
        );
    }

    #[tokio::test]
    async fn concurrent_increments_lose_nothing() {
        let c = std::sync::Arc::new(cache());
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move {
                    for _ in 0..250 {
                        c.increment("n", "k", 1, None).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(c.get("n", "k").await.unwrap().unwrap().value, b"2000");
    }
}
