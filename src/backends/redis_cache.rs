//! The Redis backend's Cache: plain strings under
//! `prism:cache:<namespace>:<key>`, expiry by Redis (`PX`), bounded by the
//! server's own `maxmemory` and eviction policy. A Get reads the value and
//! its time left in one MULTI; an Increment with a ttl is `SET 0 NX PX`
//! then `INCRBY` in one MULTI, so a new counter gets its window and an
//! existing one keeps its own, and no other client interleaves.

use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands as _;

use super::{
    cache::{counter_overflow, not_a_counter, CacheBasic, CacheCounters, Cached},
    redis::{px, ttl_from_pttl, RedisBackend},
};
use crate::error::Error;

fn cache_key(ns: &str, key: &str) -> String {
    format!("prism:cache:{ns}:{key}")
}

#[async_trait]
impl CacheBasic for RedisBackend {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Cached>, Error> {
        let mut conn = self.conn()?;
        let k = cache_key(ns, key);
        let (value, pttl): (Option<Vec<u8>>, i64) = redis::pipe()
            .atomic()
            .get(&k)
            .pttl(&k)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(value.map(|value| Cached {
            value,
            ttl: ttl_from_pttl(pttl),
        }))
    }

    async fn get_multi(&self, ns: &str, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let mut conn = self.conn()?;
        let ks: Vec<String> = keys.iter().map(|k| cache_key(ns, k)).collect();
        redis::cmd("MGET")
            .arg(&ks)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))
    }

    async fn exists(&self, ns: &str, key: &str) -> Result<bool, Error> {
        let mut conn = self.conn()?;
        conn.exists(cache_key(ns, key))
            .await
            .map_err(|e| self.redis_error(e))
    }

    async fn set(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        let mut conn = self.conn()?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(cache_key(ns, key)).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(px(ttl));
        }
        cmd.query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))
    }

    async fn delete(&self, ns: &str, key: &str) -> Result<bool, Error> {
        let mut conn = self.conn()?;
        let removed: u64 = conn
            .del(cache_key(ns, key))
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(removed > 0)
    }
}

#[async_trait]
impl CacheCounters for RedisBackend {
    async fn increment(
        &self,
        ns: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, Error> {
        let mut conn = self.conn()?;
        let k = cache_key(ns, key);
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(ttl) = ttl {
            pipe.cmd("SET")
                .arg(&k)
                .arg(0)
                .arg("NX")
                .arg("PX")
                .arg(px(ttl))
                .ignore();
        }
        pipe.cmd("INCRBY").arg(&k).arg(delta);
        let reply: Result<(i64,), redis::RedisError> = pipe.query_async(&mut conn).await;
        match reply {
            Ok((value,)) => Ok(value),
            Err(e) => {
                // Inside MULTI the server's words are in the error's text
                // (`detail()` is empty for a failed EXEC item).
                let text = e.to_string().to_ascii_lowercase();
                if text.contains("would overflow") {
                    Err(counter_overflow(key))
                } else if text.contains("not an integer") {
                    Err(not_a_counter(key))
                } else {
                    Err(self.redis_error(e))
                }
            }
        }
    }
}
