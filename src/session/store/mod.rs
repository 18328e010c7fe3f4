//! Where sessions live when several gateways serve them as one: a store the
//! operator already runs (Redis or Postgres). The store is the truth for a
//! session's existence, expiry and end; each instance keeps the sessions it
//! has seen in its registry (see `session::cluster`) and asks the store only
//! on first sight of a token, to write activity behind, and to end one.
//!
//! One instance needs none of this: `sessions.store: in_process` (the
//! default) keeps sessions in the registry alone.

mod postgres;
mod redis;

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::{token::TokenDigest, EndReason};
use crate::{auth::AuthMethod, error::Error};

pub use crate::config::sessions::{StoreConfig, StoreKind};

/// What the store keeps of a session: enough for any instance to serve it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSession {
    pub id: String,
    pub namespace: String,
    pub identity: String,
    pub roles: Vec<String>,
    pub method: AuthMethod,
    pub config: StoredConfig,
    pub client_id: String,
    pub client_version: String,
    pub metadata: HashMap<String, String>,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// No expiry goes past this (ms since the Unix epoch).
    pub hard_ms: u64,
}

/// The client config a session was opened with: a named config is looked up
/// again by name; an inline one is resolved again from its protobuf (so the
/// namespace's current rules narrow it on every instance).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredConfig {
    Named(String),
    /// `prism.config.v1.ClientConfig`, base64.
    Inline(String),
}

/// Where a session stands in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Open until `expires_ms` (ms since the Unix epoch), unless activity
    /// moves it.
    Open {
        expires_ms: u64,
    },
    Ended {
        reason: EndReason,
        at_ms: u64,
    },
    /// Not in the store: never created, or ended longer ago than
    /// `keep_ended`.
    Unknown,
}

/// A session's cluster-wide limits, checked by the store as it admits one.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_sessions: usize,
    pub max_per_principal: usize,
}

/// Why the store refused a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    NamespaceFull,
    PrincipalFull,
}

/// An end somewhere in the cluster, as the store announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndNotice {
    pub digest: TokenDigest,
    pub reason: EndReason,
    pub at_ms: u64,
}

impl EndNotice {
    /// `<digest hex>:<reason>:<ms>`, the notification payload.
    pub fn encode(&self) -> String {
        format!(
            "{}:{}:{}",
            hex::encode(self.digest),
            reason_code(self.reason),
            self.at_ms
        )
    }

    pub fn decode(payload: &str) -> Option<EndNotice> {
        let mut parts = payload.split(':');
        let digest = hex::decode(parts.next()?).ok()?.try_into().ok()?;
        let reason = reason_from_code(parts.next()?.parse().ok()?)?;
        let at_ms = parts.next()?.parse().ok()?;
        Some(EndNotice {
            digest,
            reason,
            at_ms,
        })
    }
}

/// A session the store expired in a sweep: the instance that swept writes
/// its audit record.
#[derive(Debug, Clone)]
pub struct Swept {
    pub digest: TokenDigest,
    pub id: String,
    pub namespace: String,
    pub identity: String,
}

/// How an end request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndOutcome {
    /// The session's standing after the request.
    pub standing: Standing,
    /// Whether this request ended it (it then writes the audit record).
    pub ended_here: bool,
}

/// The store's reason codes (stable: other instances read them).
pub fn reason_code(reason: EndReason) -> i16 {
    match reason {
        EndReason::Closed => 1,
        EndReason::Expired => 2,
        EndReason::Failed => 3,
        EndReason::Shutdown => 4,
    }
}

pub fn reason_from_code(code: i16) -> Option<EndReason> {
    Some(match code {
        1 => EndReason::Closed,
        2 => EndReason::Expired,
        3 => EndReason::Failed,
        4 => EndReason::Shutdown,
        _ => return None,
    })
}

/// A shared session store. Every operation is bounded by the configured
/// timeout and fails UNAVAILABLE `SESSION_STORE_UNAVAILABLE`.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync {
    /// Adds a session unless its namespace or principal holds its limit
    /// already (open sessions, cluster-wide; a session past its expiry by
    /// more than `grace_ms` no longer counts).
    async fn create(
        &self,
        digest: &TokenDigest,
        session: &StoredSession,
        expires_ms: u64,
        limits: Limits,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<Admission, Error>;

    /// A session and where it stands.
    async fn load(&self, digest: &TokenDigest) -> Result<Option<(StoredSession, Standing)>, Error>;

    /// Moves each session's expiry to at least the given time (never back,
    /// never past its maximum lifetime); returns each one's standing after,
    /// in order.
    async fn extend(&self, updates: &[(TokenDigest, u64)]) -> Result<Vec<Standing>, Error>;

    /// Where each session stands, in order.
    async fn standings(&self, digests: &[TokenDigest]) -> Result<Vec<Standing>, Error>;

    /// Ends an open session and announces it to every instance. With
    /// `grace_ms` (an expiry) only if its expiry passed that long ago or it
    /// reached its maximum lifetime.
    async fn end(
        &self,
        digest: &TokenDigest,
        reason: EndReason,
        now_ms: u64,
        grace_ms: Option<u64>,
    ) -> Result<EndOutcome, Error>;

    /// Expires (and announces) open sessions whose expiry passed `grace_ms`
    /// ago, a bounded batch per call; forgets sessions that ended more than
    /// `keep_ms` ago.
    async fn sweep(&self, now_ms: u64, grace_ms: u64, keep_ms: u64) -> Result<Vec<Swept>, Error>;

    /// Ends anywhere in the cluster as they are announced. The stream ends
    /// when the link breaks: announcements may have been missed since.
    async fn listen(&self) -> Result<BoxStream<'static, EndNotice>, Error> {
        use futures::StreamExt as _;
        Ok(self
            .hear(Topic::SessionEnds)
            .await?
            .filter_map(|payload| async move { EndNotice::decode(&payload) })
            .boxed())
    }

    /// Tells every instance hearing `topic` (this one too) `payload`, at
    /// most [`MAX_BROADCAST_BYTES`]: what changed, for their caches.
    async fn broadcast(&self, topic: Topic, payload: &str) -> Result<(), Error>;

    /// What is broadcast on `topic` from now on. The stream ends when the
    /// link breaks: broadcasts may have been missed since.
    async fn hear(&self, topic: Topic) -> Result<BoxStream<'static, String>, Error>;
}

/// What instances tell each other through the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// Sessions ended (closed, expired, failed): [`EndNotice`]s, published
    /// by the store's own end and sweep operations.
    SessionEnds,
    /// Keys written through a KeyValue config with a cache.
    KvCache,
}

/// The largest broadcast payload (Postgres NOTIFY takes under 8000 bytes).
pub const MAX_BROADCAST_BYTES: usize = 7000;

/// The configured store; `None` for `in_process`.
pub fn open(config: &StoreConfig) -> Result<Option<Arc<dyn SessionStore>>, String> {
    let url = || {
        config
            .url
            .clone()
            .ok_or_else(|| "sessions.url is required with a shared session store".to_string())
    };
    Ok(match config.store {
        StoreKind::InProcess => None,
        StoreKind::Postgres => Some(Arc::new(postgres::PgSessionStore::new(
            &url()?,
            config.timeout,
        )?)),
        StoreKind::Redis => Some(Arc::new(redis::RedisSessionStore::new(
            &url()?,
            config.timeout,
            config.keep_ended,
        )?)),
    })
}

/// UNAVAILABLE `SESSION_STORE_UNAVAILABLE`: the store did not answer.
pub fn unavailable(what: impl std::fmt::Display) -> Error {
    Error::new(
        crate::error::ErrorKind::Unavailable,
        "SESSION_STORE_UNAVAILABLE",
        format!("the session store is unavailable: {what}; retry shortly"),
    )
    .with("retry_after_ms", "500")
}

/// Runs one store operation within `limit`.
pub(crate) async fn bounded<T, E: std::fmt::Display>(
    limit: Duration,
    op: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, op).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable(format!(
            "no answer within {}",
            humantime::format_duration(limit)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_end_notice_survives_its_payload() {
        let notice = EndNotice {
            digest: [7; 32],
            reason: EndReason::Expired,
            at_ms: 1_700_000_000_123,
        };
        assert_eq!(EndNotice::decode(&notice.encode()), Some(notice));
        assert_eq!(EndNotice::decode("zz:1:2"), None);
        assert_eq!(
            EndNotice::decode(&format!("{}:9:1", hex::encode([1u8; 32]))),
            None
        );
    }

    #[test]
    fn every_reason_has_a_stable_code() {
        for reason in [
            EndReason::Closed,
            EndReason::Expired,
            EndReason::Failed,
            EndReason::Shutdown,
        ] {
            assert_eq!(reason_from_code(reason_code(reason)), Some(reason));
        }
    }
}
