//! The session store on Redis: a hash per session (`prism:session:<digest>`),
//! sorted sets by expiry for the cluster-wide counts (per namespace and per
//! principal) and for the expiry sweep, every change in one Lua script so
//! it is atomic, ends announced on the `prism:sessions:ended` channel.
//!
//! Scripts name keys they derive from a session's fields, which a single
//! Redis server (or a primary with replicas) allows; Redis Cluster does not.

use std::time::Duration;

use futures::{stream::BoxStream, StreamExt};
use redis::{aio::ConnectionManager, Script};
use tokio::sync::OnceCell;

use super::{
    bounded, reason_code, reason_from_code, Admission, EndOutcome, Limits, SessionStore, Standing,
    StoredSession, Swept, Topic,
};
use crate::{
    error::Error,
    session::{token::TokenDigest, EndReason},
};

const CHANNEL: &str = "prism:sessions:ended";

/// The Redis channel of a topic.
fn channel(topic: Topic) -> &'static str {
    match topic {
        Topic::SessionEnds => CHANNEL,
        Topic::KvCache => "prism:kv_cache",
    }
}

/// Sessions expired per sweep, at most.
const SWEEP_BATCH: u32 = 500;

/// Admits a session under the namespace's and the principal's limits.
/// KEYS: session hash, namespace set, principal set, expiry set.
/// ARGV: digest, record, id, namespace, identity, expires, hard, counted
/// from (expires at or after), max per namespace, max per principal, keep.
const CREATE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[8])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[9]) then return 1 end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[10]) then return 2 end
redis.call('HSET', KEYS[1], 'rec', ARGV[2], 'id', ARGV[3], 'ns', ARGV[4], 'who', ARGV[5],
  'exp', ARGV[6], 'hard', ARGV[7])
redis.call('PEXPIREAT', KEYS[1], fmt(tonumber(ARGV[7]) + tonumber(ARGV[11])))
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
return 0
";

/// Shared by the scripts below: where a session stands, as three numbers
/// (0 open: expires; 1 ended: reason, at; 2 unknown), and its index keys.
const PRELUDE: &str = r"
local function hash(d) return 'prism:session:' .. d end
local function unindex(d, ns, who)
  redis.call('ZREM', 'prism:sessions:ns:' .. ns, d)
  redis.call('ZREM', 'prism:sessions:who:' .. ns .. ':' .. who, d)
  redis.call('ZREM', 'prism:sessions:expiry', d)
end
local function fmt(n) return string.format('%.0f', n) end
";

/// Moves expiries forward. ARGV: digest, until, digest, until, …
const EXTEND: &str = r"
local out = {}
for i = 1, #ARGV, 2 do
  local d = ARGV[i]
  local v = redis.call('HMGET', hash(d), 'exp', 'hard', 'ended', 'ended_ms', 'ns', 'who')
  if not v[1] then
    table.insert(out, 2); table.insert(out, 0); table.insert(out, 0)
  elseif v[3] then
    table.insert(out, 1); table.insert(out, tonumber(v[3])); table.insert(out, tonumber(v[4]))
  else
    local exp = math.max(tonumber(v[1]), math.min(tonumber(ARGV[i + 1]), tonumber(v[2])))
    if exp > tonumber(v[1]) then
      redis.call('HSET', hash(d), 'exp', fmt(exp))
      redis.call('ZADD', 'prism:sessions:ns:' .. v[5], fmt(exp), d)
      redis.call('ZADD', 'prism:sessions:who:' .. v[5] .. ':' .. v[6], fmt(exp), d)
      redis.call('ZADD', 'prism:sessions:expiry', fmt(exp), d)
    end
    table.insert(out, 0); table.insert(out, exp); table.insert(out, 0)
  end
end
return out
";

/// Where sessions stand. ARGV: digests.
const STANDINGS: &str = r"
local out = {}
for i = 1, #ARGV do
  local v = redis.call('HMGET', hash(ARGV[i]), 'exp', 'ended', 'ended_ms')
  if not v[1] then
    table.insert(out, 2); table.insert(out, 0); table.insert(out, 0)
  elseif v[2] then
    table.insert(out, 1); table.insert(out, tonumber(v[2])); table.insert(out, tonumber(v[3]))
  else
    table.insert(out, 0); table.insert(out, tonumber(v[1])); table.insert(out, 0)
  end
end
return out
";

/// Ends an open session. ARGV: digest, reason, now, grace (-1: none), keep,
/// channel. Answers a standing and 1 when this call ended it.
const END: &str = r"
local d = ARGV[1]
local v = redis.call('HMGET', hash(d), 'exp', 'hard', 'ended', 'ended_ms', 'ns', 'who')
if not v[1] then return {2, 0, 0, 0} end
if v[3] then return {1, tonumber(v[3]), tonumber(v[4]), 0} end
local now = tonumber(ARGV[3])
local grace = tonumber(ARGV[4])
if grace >= 0 and tonumber(v[1]) + grace > now and tonumber(v[2]) > now then
  return {0, tonumber(v[1]), 0, 0}
end
redis.call('HSET', hash(d), 'ended', ARGV[2], 'ended_ms', ARGV[3])
redis.call('PEXPIRE', hash(d), ARGV[5])
unindex(d, v[5], v[6])
redis.call('PUBLISH', ARGV[6], d .. ':' .. ARGV[2] .. ':' .. ARGV[3])
return {1, tonumber(ARGV[2]), now, 1}
";

/// Expires sessions whose expiry passed the grace. ARGV: now, grace, keep,
/// channel, batch, the expired reason code. Answers digest, id, namespace,
/// identity for each.
const SWEEP: &str = r"
local now = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', 'prism:sessions:expiry', '-inf', fmt(now - tonumber(ARGV[2])),
  'LIMIT', 0, tonumber(ARGV[5]))
local out = {}
for _, d in ipairs(due) do
  local v = redis.call('HMGET', hash(d), 'ended', 'ns', 'who', 'id')
  redis.call('ZREM', 'prism:sessions:expiry', d)
  if v[2] and not v[1] then
    redis.call('HSET', hash(d), 'ended', ARGV[6], 'ended_ms', ARGV[1])
    redis.call('PEXPIRE', hash(d), ARGV[3])
    unindex(d, v[2], v[3])
    redis.call('PUBLISH', ARGV[4], d .. ':' .. ARGV[6] .. ':' .. ARGV[1])
    table.insert(out, d); table.insert(out, v[4]); table.insert(out, v[2]); table.insert(out, v[3])
  end
end
return out
";

pub struct RedisSessionStore {
    client: redis::Client,
    timeout: Duration,
    keep: Duration,
    manager: OnceCell<ConnectionManager>,
    create: Script,
    extend: Script,
    standings: Script,
    end: Script,
    sweep: Script,
}

impl RedisSessionStore {
    pub fn new(url: &str, timeout: Duration, keep: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url)
            .map_err(|e| format!("sessions.url: invalid redis url: {e}"))?;
        let with_prelude = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Ok(RedisSessionStore {
            client,
            timeout,
            keep,
            manager: OnceCell::new(),
            create: with_prelude(CREATE),
            extend: with_prelude(EXTEND),
            standings: with_prelude(STANDINGS),
            end: with_prelude(END),
            sweep: with_prelude(SWEEP),
        })
    }

    /// The connection (made on first use; it reconnects by itself after).
    async fn conn(&self) -> Result<ConnectionManager, Error> {
        self.manager
            .get_or_try_init(|| {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                bounded(
                    self.timeout,
                    ConnectionManager::new_with_config(self.client.clone(), config),
                )
            })
            .await
            .cloned()
    }

    fn keep_ms(&self) -> u64 {
        crate::clock::ms(self.keep)
    }
}

/// Standings from the scripts' triples.
fn standings(reply: &[i64]) -> Vec<Standing> {
    reply
        .chunks_exact(3)
        .map(|t| match t[0] {
            0 => Standing::Open {
                expires_ms: t[1].max(0) as u64,
            },
            1 => match i16::try_from(t[1]).ok().and_then(reason_from_code) {
                Some(reason) => Standing::Ended {
                    reason,
                    at_ms: t[2].max(0) as u64,
                },
                None => Standing::Unknown,
            },
            _ => Standing::Unknown,
        })
        .collect()
}

#[async_trait::async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(
        &self,
        digest: &TokenDigest,
        session: &StoredSession,
        expires_ms: u64,
        limits: Limits,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<Admission, Error> {
        let mut conn = self.conn().await?;
        let record = serde_json::to_string(session)
            .map_err(|e| Error::internal(format!("session record: {e}")))?;
        let d = hex::encode(digest);
        let mut invocation = self.create.prepare_invoke();
        invocation
            .key(format!("prism:session:{d}"))
            .key(format!("prism:sessions:ns:{}", session.namespace))
            .key(format!(
                "prism:sessions:who:{}:{}",
                session.namespace, session.identity
            ))
            .key("prism:sessions:expiry")
            .arg(&d)
            .arg(record)
            .arg(&session.id)
            .arg(&session.namespace)
            .arg(&session.identity)
            .arg(expires_ms)
            .arg(session.hard_ms)
            .arg(now_ms.saturating_sub(grace_ms))
            .arg(limits.max_sessions)
            .arg(limits.max_per_principal)
            .arg(self.keep_ms());
        let answer: i64 = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(match answer {
            0 => Admission::Admitted,
            1 => Admission::NamespaceFull,
            _ => Admission::PrincipalFull,
        })
    }

    async fn load(&self, digest: &TokenDigest) -> Result<Option<(StoredSession, Standing)>, Error> {
        let mut conn = self.conn().await?;
        let (record, exp, ended, ended_ms): (
            Option<String>,
            Option<u64>,
            Option<i16>,
            Option<u64>,
        ) = bounded(
            self.timeout,
            redis::cmd("HMGET")
                .arg(format!("prism:session:{}", hex::encode(digest)))
                .arg("rec")
                .arg("exp")
                .arg("ended")
                .arg("ended_ms")
                .query_async(&mut conn),
        )
        .await?;
        let (Some(record), Some(exp)) = (record, exp) else {
            return Ok(None);
        };
        let session: StoredSession = serde_json::from_str(&record)
            .map_err(|e| Error::internal(format!("stored session record: {e}")))?;
        let standing = match ended.and_then(reason_from_code) {
            Some(reason) => Standing::Ended {
                reason,
                at_ms: ended_ms.unwrap_or(0),
            },
            None => Standing::Open { expires_ms: exp },
        };
        Ok(Some((session, standing)))
    }

    async fn extend(&self, updates: &[(TokenDigest, u64)]) -> Result<Vec<Standing>, Error> {
        let mut conn = self.conn().await?;
        let mut invocation = self.extend.prepare_invoke();
        for (digest, until) in updates {
            invocation.arg(hex::encode(digest)).arg(*until);
        }
        let reply: Vec<i64> = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(standings(&reply))
    }

    async fn standings(&self, digests: &[TokenDigest]) -> Result<Vec<Standing>, Error> {
        let mut conn = self.conn().await?;
        let mut invocation = self.standings.prepare_invoke();
        for digest in digests {
            invocation.arg(hex::encode(digest));
        }
        let reply: Vec<i64> = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(standings(&reply))
    }

    async fn end(
        &self,
        digest: &TokenDigest,
        reason: EndReason,
        now_ms: u64,
        grace_ms: Option<u64>,
    ) -> Result<EndOutcome, Error> {
        let mut conn = self.conn().await?;
        let mut invocation = self.end.prepare_invoke();
        invocation
            .arg(hex::encode(digest))
            .arg(reason_code(reason))
            .arg(now_ms)
            .arg(grace_ms.map_or(-1, |g| i64::try_from(g).unwrap_or(i64::MAX)))
            .arg(self.keep_ms())
            .arg(CHANNEL);
        let reply: Vec<i64> = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(EndOutcome {
            standing: standings(&reply)
                .first()
                .copied()
                .unwrap_or(Standing::Unknown),
            ended_here: reply.get(3) == Some(&1),
        })
    }

    async fn sweep(&self, now_ms: u64, grace_ms: u64, _keep_ms: u64) -> Result<Vec<Swept>, Error> {
        // Ended sessions leave by their keys' own expiry (`keep_ended`).
        let mut conn = self.conn().await?;
        let mut invocation = self.sweep.prepare_invoke();
        invocation
            .arg(now_ms)
            .arg(grace_ms)
            .arg(self.keep_ms())
            .arg(CHANNEL)
            .arg(SWEEP_BATCH)
            .arg(reason_code(EndReason::Expired));
        let reply: Vec<String> = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(reply
            .chunks_exact(4)
            .filter_map(|s| {
                Some(Swept {
                    digest: hex::decode(&s[0]).ok()?.try_into().ok()?,
                    id: s[1].clone(),
                    namespace: s[2].clone(),
                    identity: s[3].clone(),
                })
            })
            .collect())
    }

    async fn broadcast(&self, topic: Topic, payload: &str) -> Result<(), Error> {
        let mut conn = self.conn().await?;
        bounded(
            self.timeout,
            redis::cmd("PUBLISH")
                .arg(channel(topic))
                .arg(payload)
                .query_async::<i64>(&mut conn),
        )
        .await
        .map(|_| ())
    }

    async fn hear(&self, topic: Topic) -> Result<BoxStream<'static, String>, Error> {
        let pubsub = bounded(self.timeout, async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(channel(topic)).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await?;
        Ok(pubsub
            .into_on_message()
            .filter_map(|m| async move { m.get_payload::<String>().ok() })
            .boxed())
    }
}
