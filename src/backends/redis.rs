//! The Redis backend: a connection manager (multiplexed, reconnecting)
//! shared by every call, all six KeyValue interfaces (this file) and
//! PubSub (`redis_pubsub.rs`).
//!
//! Layout: a key is a hash `prism:kv:<namespace>:<key>` with fields `v`
//! (value) and `ver` (version); versions come from one counter
//! (`prism:kvmeta:version`), never below the Redis server's clock in
//! microseconds — so they keep growing even across a restart that lost the
//! counter (a Redis without persistence), and a CompareAndSwap can never
//! match a version handed out before the loss; idempotency outcomes live in
//! `prism:kvidem:<namespace>:<token>` with an expiry. Every write — Set,
//! Delete, CompareAndSwap, batches, transactions — is one Lua script, so
//! preconditions, writes and the idempotency record apply atomically.
//! Scans use SCAN (never KEYS); their order is Redis's, not lexicographic.

use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use redis::{aio::ConnectionManager, AsyncCommands, Script, Value};

use super::kv::{
    self, conflict, idempotency_reused, Action, Applied, KeyValueBasic, KeyValueBatch, KeyValueCas,
    KeyValueScan, KeyValueTransactional, KeyValueTtl, Precondition, Record, ScanItem, ScanPage,
    WriteBatch,
};
use super::PoolSpec;
use crate::error::Error;

const VERSION_KEY: &str = "prism:kvmeta:version";

/// KEYS: the ops' keys, then the idempotency key, then the version counter.
/// ARGV: op count, fingerprint ('' = none), retain ms, then per op: action
/// (P/D), value, ttl ms (0 = none), condition (''/V/E), condition value.
const WRITE_SCRIPT: &str = r#"
local n = tonumber(ARGV[1])
local idem = KEYS[n + 1]
local fp = ARGV[2]
if fp ~= '' then
  local prev = redis.call('HMGET', idem, 'fp', 'res')
  if prev[1] then
    if prev[1] ~= fp then return {'REUSED'} end
    return {'REPLAY', prev[2]}
  end
end
for i = 1, n do
  local base = 3 + (i - 1) * 5
  local kind = ARGV[base + 4]
  if kind ~= '' then
    local cur = tonumber(redis.call('HGET', KEYS[i], 'ver') or '0')
    local want = ARGV[base + 5]
    local ok
    if kind == 'V' then ok = (cur == tonumber(want)) else ok = ((cur ~= 0) == (want == '1')) end
    if not ok then return {'CONFLICT', tostring(i - 1), string.format('%d', cur)} end
  end
end
local res = {}
local now = redis.call('TIME')
local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
for i = 1, n do
  local base = 3 + (i - 1) * 5
  if ARGV[base + 1] == 'P' then
    local v = redis.call('INCR', KEYS[n + 2])
    if v < floor then
      v = floor
      redis.call('SET', KEYS[n + 2], string.format('%d', v))
    end
    redis.call('DEL', KEYS[i])
    redis.call('HSET', KEYS[i], 'v', ARGV[base + 2], 'ver', string.format('%d', v))
    local ttl = tonumber(ARGV[base + 3])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) end
    res[i] = string.format('%d', v)
  else
    res[i] = tostring(redis.call('DEL', KEYS[i]))
  end
end
local joined = table.concat(res, ',')
if fp ~= '' then
  redis.call('HSET', idem, 'fp', fp, 'res', joined)
  redis.call('PEXPIRE', idem, tonumber(ARGV[3]))
end
return {'OK', joined}
"#;

/// The Redis backend: KeyValue (this file) and PubSub (`redis_pubsub.rs`).
pub struct RedisBackend {
    pub name: String,
    client: redis::Client,
    spec: PoolSpec,
    manager: RwLock<Option<ConnectionManager>>,
    write: Script,
}

fn data_prefix(ns: &str) -> String {
    format!("prism:kv:{ns}:")
}

fn data_key(ns: &str, key: &str) -> String {
    format!("prism:kv:{ns}:{key}")
}

/// Escapes glob characters (SCAN MATCH, PSUBSCRIBE).
pub(super) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A key's remaining time from `PTTL` (negative: none, or no key).
pub(super) fn ttl_from_pttl(pttl: i64) -> Option<Duration> {
    (pttl >= 0).then(|| Duration::from_millis(pttl as u64))
}

/// Milliseconds for `PX`/`PEXPIRE`, which take 1 to `i64::MAX`.
pub(super) fn px(ttl: Duration) -> i64 {
    ttl.as_millis().clamp(1, i64::MAX as u128) as i64
}

/// A condition that passes: the server unreachable, timing out, still
/// loading its dataset, failing over (MASTERDOWN, READONLY, TRYAGAIN,
/// CLUSTERDOWN) — UNAVAILABLE, so the client retries; anything else is the
/// operation's own failure.
fn transient(e: &redis::RedisError) -> bool {
    use redis::RetryMethod as R;
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(e.retry_method(), R::WaitAndRetry | R::RefreshSlotsAndRetry)
}

impl RedisBackend {
    pub fn open(name: &str, url: &str, spec: &PoolSpec) -> Result<Self, String> {
        let client = redis::Client::open(url)
            .map_err(|e| format!("backend `{name}`: invalid redis url: {e}"))?;
        Ok(RedisBackend {
            name: name.to_string(),
            client,
            spec: spec.clone(),
            manager: RwLock::new(None),
            write: Script::new(WRITE_SCRIPT),
        })
    }

    /// Establishes the connection manager (the pool actor calls this until
    /// it succeeds; afterwards the manager reconnects by itself).
    pub async fn connect(&self) -> Result<(), Error> {
        if self.manager.read().is_some() {
            return Ok(());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.spec.connect_timeout))
            .set_response_timeout(Some(self.spec.connect_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_with_config(self.client.clone(), config)
            .await
            .map_err(|e| self.redis_error(e))?;
        *self.manager.write() = Some(manager);
        Ok(())
    }

    pub fn is_connected(&self) -> bool {
        self.manager.read().is_some()
    }

    /// The client, for connections of their own (PubSub subscriptions).
    pub(super) fn client(&self) -> &redis::Client {
        &self.client
    }

    pub(super) fn conn(&self) -> Result<ConnectionManager, Error> {
        self.manager
            .read()
            .clone()
            .ok_or_else(|| kv::unavailable(&self.name, "not connected yet"))
    }

    pub async fn ping(&self) -> Result<(), Error> {
        let mut conn = self.conn()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| self.redis_error(e))
    }

    pub fn redis_error(&self, e: redis::RedisError) -> Error {
        if transient(&e) {
            return kv::unavailable(
                &self.name,
                "cannot reach the server, or it cannot serve yet",
            );
        }
        tracing::error!(backend = %self.name, error = %e, "redis error");
        Error::internal(format!(
            "backend `{}` failed the operation; the gateway log has details",
            self.name
        ))
    }

    async fn apply(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error> {
        let mut conn = self.conn()?;
        let mut invocation = self.write.prepare_invoke();
        for op in &batch.ops {
            invocation.key(data_key(ns, &op.key));
        }
        let idem_id = batch.idempotency.as_ref().map(|i| i.id.clone());
        invocation.key(format!(
            "prism:kvidem:{ns}:{}",
            idem_id.as_deref().unwrap_or("")
        ));
        invocation.key(VERSION_KEY);
        invocation.arg(batch.ops.len());
        match &batch.idempotency {
            Some(i) => invocation
                .arg(&i.fingerprint)
                .arg(i.retain.as_millis().max(1) as u64),
            None => invocation.arg("").arg(0),
        };
        for op in &batch.ops {
            match &op.action {
                Action::Put { value, ttl } => {
                    let ttl_ms = ttl.map_or(0, |t| t.as_millis().max(1) as u64);
                    invocation.arg("P").arg(value.as_slice()).arg(ttl_ms)
                }
                Action::Delete => invocation.arg("D").arg("").arg(0),
            };
            match op.precondition {
                None => invocation.arg("").arg(""),
                Some(Precondition::Version(v)) => invocation.arg("V").arg(v),
                Some(Precondition::Exists(e)) => invocation.arg("E").arg(if e { "1" } else { "0" }),
            };
        }
        let reply: Vec<String> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        match reply.first().map(String::as_str) {
            Some("OK") => {
                let mut applied = Applied::decode_replay(reply.get(1).map_or("", |s| s))?;
                applied.replayed = false;
                Ok(applied)
            }
            Some("REPLAY") => Applied::decode_replay(reply.get(1).map_or("", |s| s)),
            Some("REUSED") => Err(idempotency_reused(idem_id.as_deref().unwrap_or(""))),
            Some("CONFLICT") => {
                let index: usize = reply.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let current: u64 = reply.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
                let op = batch
                    .ops
                    .get(index)
                    .ok_or_else(|| Error::internal("write script named an unknown operation"))?;
                let precondition = op
                    .precondition
                    .ok_or_else(|| Error::internal("write script failed an unconditional op"))?;
                Err(conflict(index, &op.key, precondition, current))
            }
            _ => Err(Error::internal("write script returned an unexpected reply")),
        }
    }

    /// Values, versions and TTLs of keys, in one atomic round trip.
    async fn fetch(&self, ns: &str, keys: &[String]) -> Result<Vec<Option<Record>>, Error> {
        let mut conn = self.conn()?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in keys {
            let k = data_key(ns, key);
            pipe.cmd("HMGET").arg(&k).arg("v").arg("ver");
            pipe.cmd("PTTL").arg(&k);
        }
        let replies: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        let mut out = Vec::with_capacity(keys.len());
        for pair in replies.chunks(2) {
            let shape = |_| Error::internal("redis returned an unexpected reply shape");
            let fields: (Option<Vec<u8>>, Option<u64>) =
                redis::from_redis_value(pair[0].clone()).map_err(shape)?;
            let pttl: i64 = redis::from_redis_value(pair[1].clone()).map_err(shape)?;
            out.push(match fields {
                (Some(value), Some(version)) => Some(Record {
                    value,
                    version,
                    ttl: ttl_from_pttl(pttl),
                }),
                _ => None,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl KeyValueBasic for RedisBackend {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Record>, Error> {
        Ok(self
            .fetch(ns, std::slice::from_ref(&key.to_string()))
            .await?
            .pop()
            .flatten())
    }

    async fn write(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error> {
        self.apply(ns, batch).await
    }
}

/// A scan position: the SCAN cursor of a batch and the last key returned
/// from it (keys of a batch are returned in sorted order).
fn encode_position(scan_cursor: u64, key: &str) -> String {
    kv::encode_cursor(format!("{scan_cursor}\n{key}").as_bytes())
}

fn decode_position(cursor: &str) -> Result<(u64, Option<String>), Error> {
    if cursor.is_empty() {
        return Ok((0, None));
    }
    let raw = String::from_utf8(kv::decode_cursor(cursor)?).map_err(|_| kv::invalid_cursor())?;
    let (scan, key) = raw.split_once('\n').ok_or_else(kv::invalid_cursor)?;
    let scan = scan.parse().map_err(|_| kv::invalid_cursor())?;
    Ok((scan, Some(key.to_string())))
}

#[async_trait]
impl KeyValueScan for RedisBackend {
    async fn scan(
        &self,
        ns: &str,
        prefix: &str,
        cursor: &str,
        limit: usize,
        keys_only: bool,
    ) -> Result<ScanPage, Error> {
        let (mut scan_cursor, mut after) = decode_position(cursor)?;
        let mut conn = self.conn()?;
        let strip = data_prefix(ns);
        let pattern = format!("{strip}{}*", glob_escape(prefix));
        let mut items = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(scan_cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(512)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis_error(e))?;
            let mut keys: Vec<String> = batch
                .iter()
                .filter_map(|k| k.strip_prefix(&strip).map(str::to_string))
                .filter(|k| after.as_deref().is_none_or(|a| k.as_str() > a))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            after = None;
            let records = self.fetch(ns, &keys).await?;
            for (key, record) in keys.into_iter().zip(records) {
                if items.len() == limit {
                    return Ok(ScanPage { items });
                }
                if let Some(r) = record {
                    items.push(ScanItem {
                        cursor: encode_position(scan_cursor, &key),
                        key,
                        value: if keys_only { Vec::new() } else { r.value },
                        version: r.version,
                    });
                }
            }
            if next == 0 || items.len() == limit {
                return Ok(ScanPage { items });
            }
            scan_cursor = next;
        }
    }

    async fn count(&self, ns: &str, prefix: &str) -> Result<u64, Error> {
        let mut conn = self.conn()?;
        let pattern = format!("{}{}*", data_prefix(ns), glob_escape(prefix));
        let mut scan_cursor = 0u64;
        let mut seen = std::collections::HashSet::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(scan_cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis_error(e))?;
            // SCAN may return a key twice across batches.
            seen.extend(batch);
            if next == 0 {
                return Ok(seen.len() as u64);
            }
            scan_cursor = next;
        }
    }
}

#[async_trait]
impl KeyValueTtl for RedisBackend {
    async fn expire(&self, ns: &str, key: &str, ttl: Duration) -> Result<bool, Error> {
        let mut conn = self.conn()?;
        conn.pexpire(data_key(ns, key), px(ttl))
            .await
            .map_err(|e| self.redis_error(e))
    }

    async fn ttl(&self, ns: &str, key: &str) -> Result<Option<Option<Duration>>, Error> {
        let mut conn = self.conn()?;
        let pttl: i64 = conn
            .pttl(data_key(ns, key))
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(match pttl {
            -2 => None,
            other => Some(ttl_from_pttl(other)),
        })
    }

    async fn persist(&self, ns: &str, key: &str) -> Result<Option<bool>, Error> {
        let mut conn = self.conn()?;
        let k = data_key(ns, key);
        let (exists, removed): (bool, bool) = redis::pipe()
            .atomic()
            .exists(&k)
            .persist(&k)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(exists.then_some(removed))
    }
}

#[async_trait]
impl KeyValueBatch for RedisBackend {
    async fn batch_get(&self, ns: &str, keys: &[String]) -> Result<Vec<Option<Record>>, Error> {
        self.fetch(ns, keys).await
    }

    async fn batch_write(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error> {
        self.apply(ns, batch).await
    }
}

#[async_trait]
impl KeyValueCas for RedisBackend {
    async fn compare_and_swap(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error> {
        self.apply(ns, batch).await
    }
}

#[async_trait]
impl KeyValueTransactional for RedisBackend {
    async fn transact(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error> {
        self.apply(ns, batch).await
    }
}

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    #[test]
    fn passing_server_conditions_are_transient_and_others_are_not() {
        for kind in [
            ServerErrorKind::BusyLoading,
            ServerErrorKind::MasterDown,
            ServerErrorKind::ReadOnly,
            ServerErrorKind::TryAgain,
            ServerErrorKind::ClusterDown,
        ] {
            let e = RedisError::from((ErrorKind::Server(kind), "passing"));
            assert!(super::transient(&e), "{kind:?}");
        }
        for kind in [ServerErrorKind::ResponseError, ServerErrorKind::NoScript] {
            let e = RedisError::from((ErrorKind::Server(kind), "the operation's own"));
            assert!(!super::transient(&e), "{kind:?}");
        }
    }

    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn positions_round_trip() {
        let c = encode_position(42, "user/7");
        assert_eq!(decode_position(&c).unwrap(), (42, Some("user/7".into())));
        assert_eq!(decode_position("").unwrap(), (0, None));
        assert!(decode_position(&kv::encode_cursor(b"nonsense")).is_err());
    }
}
