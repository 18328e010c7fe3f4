//! The key-value model every backend shares: one trait per thin interface
//! (seed 004), the write batch that Set, Delete, CompareAndSwap, the batch
//! calls and transactions all reduce to, and the precondition check that the
//! memory and SQL backends run (Redis runs the same rules in Lua).
//!
//! A backend's KeyValue capabilities are exactly the traits it implements:
//! [`kv_interfaces!`] builds its [`KvHandle`] and its interface list from the
//! one list of trait names, so the registry cannot claim what the code lacks.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use crate::error::{Error, ErrorKind};

/// A stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub value: Vec<u8>,
    pub version: u64,
    /// Time left before expiry; `None` when the key does not expire.
    pub ttl: Option<Duration>,
}

/// What a write does to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Put {
        value: Vec<u8>,
        ttl: Option<Duration>,
    },
    Delete,
}

/// A condition on a key's state before the batch applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The current version; 0 = the key must not exist.
    Version(u64),
    /// Whether the key must exist.
    Exists(bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOp {
    pub key: String,
    pub action: Action,
    pub precondition: Option<Precondition>,
}

/// A retry guard: the client's token id and a fingerprint of the request it
/// guards, so a reused id with another request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub id: String,
    pub fingerprint: String,
    /// How long the backend remembers the outcome.
    pub retain: Duration,
}

/// Writes applied together, all or none. Keys are distinct (checked by the
/// service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
    pub idempotency: Option<Idempotency>,
}

impl WriteBatch {
    pub fn single(op: WriteOp, idempotency: Option<Idempotency>) -> Self {
        WriteBatch {
            ops: vec![op],
            idempotency,
        }
    }
}

/// The outcome of a batch: per op, the new version of a put, or 1/0 for a
/// delete that did / did not find its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub results: Vec<u64>,
    /// The batch was a retry of one already applied; nothing was written.
    pub replayed: bool,
}

impl Applied {
    /// Outcomes as stored with an idempotency token.
    pub fn encode(results: &[u64]) -> String {
        results
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn decode_replay(text: &str) -> Result<Applied, Error> {
        let results = if text.is_empty() {
            Vec::new()
        } else {
            text.split(',')
                .map(|v| v.parse::<u64>())
                .collect::<Result<_, _>>()
                .map_err(|_| Error::internal("stored idempotent outcome is corrupt"))?
        };
        Ok(Applied {
            results,
            replayed: true,
        })
    }
}

/// One page of a scan, in the backend's order.
#[derive(Debug, Clone, Default)]
pub struct ScanPage {
    pub items: Vec<ScanItem>,
}

#[derive(Debug, Clone)]
pub struct ScanItem {
    pub key: String,
    /// Empty when only keys were asked for.
    pub value: Vec<u8>,
    pub version: u64,
    /// Opaque position to resume after this item.
    pub cursor: String,
}

/// What a key looks like before a batch, for precondition checks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Current {
    /// 0 when the key does not exist (versions start at 1).
    pub version: u64,
}

/// Checks every precondition against the state before the batch; the first
/// failure aborts the whole batch.
pub fn check_preconditions(ops: &[WriteOp], current: &[Current]) -> Result<(), Error> {
    for (index, (op, cur)) in ops.iter().zip(current).enumerate() {
        if let Some(p) = op.precondition {
            let holds = match p {
                Precondition::Version(v) => cur.version == v,
                Precondition::Exists(e) => (cur.version != 0) == e,
            };
            if !holds {
                return Err(conflict(index, &op.key, p, cur.version));
            }
        }
    }
    Ok(())
}

/// The ABORTED error for a failed precondition, with the key's current
/// version so the client can retry a compare-and-swap.
pub fn conflict(index: usize, key: &str, p: Precondition, current_version: u64) -> Error {
    let wanted = match p {
        Precondition::Version(0) => "not to exist".to_string(),
        Precondition::Version(v) => format!("to be at version {v}"),
        Precondition::Exists(true) => "to exist".to_string(),
        Precondition::Exists(false) => "not to exist".to_string(),
    };
    let now = if current_version == 0 {
        "it does not exist".to_string()
    } else {
        format!("it is at version {current_version}")
    };
    Error::new(
        ErrorKind::Aborted,
        "PRECONDITION_FAILED",
        format!(
            "operation {index} expected key `{key}` {wanted} but {now}; nothing was written. \
             read the key again and retry"
        ),
    )
    .with("key", key)
    .with("operation_index", index.to_string())
    .with("current_version", current_version.to_string())
}

/// A reused idempotency id with a different request.
pub fn idempotency_reused(id: &str) -> Error {
    Error::invalid_argument(
        "IDEMPOTENCY_TOKEN_REUSED",
        format!(
            "idempotency token `{id}` was already used for a different request; generate a new \
             token for each distinct write"
        ),
    )
    .with("idempotency_token", id)
}

/// A backend that cannot be reached.
pub fn unavailable(backend: &str, detail: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "BACKEND_UNAVAILABLE",
        format!("backend `{backend}` is unavailable ({detail}); retry with backoff"),
    )
    .with("backend", backend)
    .with("retry_after_ms", UNAVAILABLE_RETRY_MS.to_string())
}

/// The first retry delay an UNAVAILABLE backend error suggests.
pub const UNAVAILABLE_RETRY_MS: u64 = 200;

// ---- the thin interfaces ---------------------------------------------------

/// keyvalue_basic: get, exists and single-key writes.
#[async_trait]
pub trait KeyValueBasic: Send + Sync {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Record>, Error>;
    async fn exists(&self, ns: &str, key: &str) -> Result<bool, Error> {
        Ok(self.get(ns, key).await?.is_some())
    }
    /// Applies a batch of one op (Set or Delete).
    async fn write(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error>;
}

/// keyvalue_scan: prefix scans with a resumable cursor, and counts.
#[async_trait]
pub trait KeyValueScan: Send + Sync {
    async fn scan(
        &self,
        ns: &str,
        prefix: &str,
        cursor: &str,
        limit: usize,
        keys_only: bool,
    ) -> Result<ScanPage, Error>;
    async fn count(&self, ns: &str, prefix: &str) -> Result<u64, Error>;
}

/// keyvalue_ttl: expiry on write (a put's ttl), Expire, GetTTL, Persist.
#[async_trait]
pub trait KeyValueTtl: Send + Sync {
    /// False when the key does not exist.
    async fn expire(&self, ns: &str, key: &str, ttl: Duration) -> Result<bool, Error>;
    /// `None` when the key does not exist; `Some(None)` when it never expires.
    async fn ttl(&self, ns: &str, key: &str) -> Result<Option<Option<Duration>>, Error>;
    /// `None` when the key does not exist; otherwise whether it had a TTL.
    async fn persist(&self, ns: &str, key: &str) -> Result<Option<bool>, Error>;
}

/// keyvalue_batch: many keys in one call.
#[async_trait]
pub trait KeyValueBatch: Send + Sync {
    async fn batch_get(&self, ns: &str, keys: &[String]) -> Result<Vec<Option<Record>>, Error>;
    async fn batch_write(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error>;
}

/// keyvalue_cas: a put that applies only at the expected version.
#[async_trait]
pub trait KeyValueCas: Send + Sync {
    async fn compare_and_swap(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error>;
}

/// keyvalue_transactional: writes with preconditions, all or none.
#[async_trait]
pub trait KeyValueTransactional: Send + Sync {
    async fn transact(&self, ns: &str, batch: WriteBatch) -> Result<Applied, Error>;
}

/// A backend's KeyValue surface: basic always, the rest where implemented.
#[derive(Clone)]
pub struct KvHandle {
    pub basic: Arc<dyn KeyValueBasic>,
    pub scan: Option<Arc<dyn KeyValueScan>>,
    pub ttl: Option<Arc<dyn KeyValueTtl>>,
    pub batch: Option<Arc<dyn KeyValueBatch>>,
    pub cas: Option<Arc<dyn KeyValueCas>>,
    pub transactional: Option<Arc<dyn KeyValueTransactional>>,
}

/// Declares which KeyValue traits a backend type implements, giving it
/// `KV_INTERFACES` and `kv_handle()`. Naming a trait the type does not
/// implement fails to compile.
#[macro_export]
macro_rules! kv_interfaces {
    ($ty:ty: basic $(, $iface:ident)*) => {
        impl $ty {
            pub const KV_INTERFACES: &'static [$crate::backends::Interface] = &[
                $crate::backends::Interface::KeyValueBasic,
                $($crate::kv_interfaces!(@interface $iface),)*
            ];

            pub fn kv_handle(self: &std::sync::Arc<Self>) -> $crate::backends::kv::KvHandle {
                #[allow(unused_mut)]
                let mut handle = $crate::backends::kv::KvHandle {
                    basic: self.clone(),
                    scan: None,
                    ttl: None,
                    batch: None,
                    cas: None,
                    transactional: None,
                };
                $(handle.$iface = Some(self.clone());)*
                handle
            }
        }
    };
    (@interface scan) => { $crate::backends::Interface::KeyValueScan };
    (@interface ttl) => { $crate::backends::Interface::KeyValueTtl };
    (@interface batch) => { $crate::backends::Interface::KeyValueBatch };
    (@interface cas) => { $crate::backends::Interface::KeyValueCas };
    (@interface transactional) => { $crate::backends::Interface::KeyValueTransactional };
}

// ---- cursors and prefixes ---------------------------------------------------

/// Cursors are opaque to clients: URL-safe base64 of the backend's position.
pub fn encode_cursor(position: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(position)
}

pub fn decode_cursor(cursor: &str) -> Result<Vec<u8>, Error> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| invalid_cursor())
}

/// For backends whose cursor is the last key returned: `None` = start.
pub fn cursor_key(cursor: &str) -> Result<Option<String>, Error> {
    if cursor.is_empty() {
        return Ok(None);
    }
    String::from_utf8(decode_cursor(cursor)?)
        .map(Some)
        .map_err(|_| invalid_cursor())
}

pub fn invalid_cursor() -> Error {
    Error::invalid_argument(
        "INVALID_CURSOR",
        "cursor is not one this gateway issued; pass the `cursor` of a scan item unchanged",
    )
}

/// The smallest byte string greater than every string with this prefix, or
/// `None` when there is none (empty prefix or all 0xFF).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, p: Option<Precondition>) -> WriteOp {
        WriteOp {
            key: key.into(),
            action: Action::Put {
                value: vec![1],
                ttl: None,
            },
            precondition: p,
        }
    }

    #[test]
    fn preconditions_check_against_the_state_before_the_batch() {
        let ops = [
            put("a", Some(Precondition::Version(3))),
            put("b", Some(Precondition::Exists(false))),
        ];
        assert!(check_preconditions(&ops, &[Current { version: 3 }, Current::default()]).is_ok());
        let err = check_preconditions(&ops, &[Current { version: 3 }, Current { version: 9 }])
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Aborted);
        assert!(err.metadata.contains(&("current_version", "9".to_string())));
        assert!(err.metadata.contains(&("operation_index", "1".to_string())));
    }

    #[test]
    fn prefix_end_is_the_next_string() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xFF]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn outcomes_round_trip() {
        let text = Applied::encode(&[5, 0, 1]);
        assert_eq!(
            Applied::decode_replay(&text).unwrap().results,
            vec![5, 0, 1]
        );
        assert!(Applied::decode_replay("").unwrap().results.is_empty());
        assert!(Applied::decode_replay("x").is_err());
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = encode_cursor(b"key/1");
        assert_eq!(decode_cursor(&c).unwrap(), b"key/1");
        assert!(decode_cursor("not base64!").is_err());
    }
}
