//! The Cache model (seed 002 §14): one trait per thin interface —
//! `cache_basic` (get, set with an optional expiry, delete, exists, many
//! gets) and `cache_counters` (atomic increment) — and the errors they
//! share. Counters are stored as decimal text on every backend, so a Get
//! of a counter reads the same everywhere.
//!
//! A backend's Cache capabilities are exactly the traits it implements:
//! [`cache_interfaces!`] builds its [`CacheHandle`] and interface list from
//! the one list of trait names.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use crate::error::{Error, ErrorKind};

/// A cache entry as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub value: Vec<u8>,
    /// Time left before expiry; `None` when it does not expire.
    pub ttl: Option<Duration>,
}

/// cache_basic: entries with an optional expiry.
#[async_trait]
pub trait CacheBasic: Send + Sync {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Cached>, Error>;
    /// Values of distinct keys, in their order.
    async fn get_multi(&self, ns: &str, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Error>;
    async fn exists(&self, ns: &str, key: &str) -> Result<bool, Error>;
    /// Stores `value`, replacing any entry and its expiry.
    async fn set(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), Error>;
    /// Whether there was an entry.
    async fn delete(&self, ns: &str, key: &str) -> Result<bool, Error>;
}

/// cache_counters: an increment that no other call interleaves with.
#[async_trait]
pub trait CacheCounters: Send + Sync {
    /// Adds `delta` to the counter under `key` (a missing one counts from
    /// 0, and expires after `ttl` when given); the new value.
    async fn increment(
        &self,
        ns: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, Error>;
}

/// A backend's Cache surface: basic always, counters where implemented.
#[derive(Clone)]
pub struct CacheHandle {
    pub basic: Arc<dyn CacheBasic>,
    pub counters: Option<Arc<dyn CacheCounters>>,
}

/// Declares which Cache traits a backend type implements, giving it
/// `CACHE_INTERFACES` and `cache_handle()`. Naming a trait the type does
/// not implement fails to compile.
#[macro_export]
macro_rules! cache_interfaces {
    ($ty:ty: basic $(, $iface:ident)*) => {
        impl $ty {
            pub const CACHE_INTERFACES: &'static [$crate::backends::Interface] = &[
                $crate::backends::Interface::CacheBasic,
                $($crate::cache_interfaces!(@interface $iface),)*
            ];

            pub fn cache_handle(self: &std::sync::Arc<Self>) -> $crate::backends::cache::CacheHandle {
                #[allow(unused_mut)]
                let mut handle = $crate::backends::cache::CacheHandle {
                    basic: self.clone(),
                    counters: None,
                };
                $(handle.$iface = Some(self.clone());)*
                handle
            }
        }
    };
    (@interface counters) => { $crate::backends::Interface::CacheCounters };
}

/// The value under `key` is not a counter (decimal text of an i64).
pub fn not_a_counter(key: &str) -> Error {
    Error::new(
        ErrorKind::FailedPrecondition,
        "NOT_A_COUNTER",
        format!(
            "the entry under `{key}` is not a counter (decimal text of a 64-bit integer); \
             Increment only counters, or Delete the entry first"
        ),
    )
    .with("key", key)
}

/// The increment would leave the signed 64-bit range.
pub fn counter_overflow(key: &str) -> Error {
    Error::new(
        ErrorKind::OutOfRange,
        "COUNTER_OVERFLOW",
        format!(
            "incrementing `{key}` by this delta would pass the range of a 64-bit signed integer; \
             nothing was changed"
        ),
    )
    .with("key", key)
}

/// The entry is larger than the cache holds.
pub fn entry_too_large(key: &str, max_entry_bytes: usize) -> Error {
    Error::new(
        ErrorKind::ResourceExhausted,
        "CACHE_ENTRY_TOO_LARGE",
        format!(
            "the entry under `{key}` is larger than the most this cache holds in one entry \
             ({max_entry_bytes} bytes with its key and {} bytes of bookkeeping: \
             backends.<name>.cache.max_bytes, or a sixteenth of it when the cache is split, \
             from 4,096 entries and 64 MiB up)",
            super::lru::ENTRY_OVERHEAD
        ),
    )
    .with("key", key)
    .with("limit", max_entry_bytes.to_string())
}

/// A counter's value from its stored text.
pub fn parse_counter(key: &str, stored: &[u8]) -> Result<i64, Error> {
    std::str::from_utf8(stored)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| not_a_counter(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_decimal_text() {
        assert_eq!(parse_counter("k", b"-42").unwrap(), -42);
        assert_eq!(
            parse_counter("k", b"9223372036854775807").unwrap(),
            i64::MAX
        );
        for bad in [&b"4 2"[..], b"", b"x", b"9223372036854775808", &[0xff]] {
            let e = parse_counter("k", bad).unwrap_err();
            assert_eq!(e.reason, "NOT_A_COUNTER");
        }
    }
}
