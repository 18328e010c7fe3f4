//! The checks KeyValue and Cache share on what a client sends: keys,
//! values, batches of keys, a reply's size and expiries, each against the
//! configured `limits` with the error that names the limit.

use std::{collections::HashSet, time::Duration};

use crate::{
    config::Limits,
    error::{Error, ErrorKind},
};

/// The longest expiry accepted.
use crate::config::resolve::MAX_TTL;

pub fn check_key(limits: &Limits, key: &str) -> Result<(), Error> {
    crate::call::note_resource(key);
    if key.is_empty() {
        return Err(Error::invalid_argument(
            "INVALID_KEY",
            "key is empty; keys are 1 or more bytes of UTF-8",
        ));
    }
    let max = limits.max_key_bytes;
    if key.len() > max {
        return Err(Error::invalid_argument(
            "KEY_TOO_LARGE",
            format!(
                "key is {} bytes; the limit is {} bytes (limits.max_key_bytes)",
                key.len(),
                max
            ),
        )
        .with("limit", max.to_string()));
    }
    Ok(())
}

pub fn check_value(limits: &Limits, key: &str, value: &[u8]) -> Result<(), Error> {
    let max = limits.max_value_bytes;
    if value.len() > max {
        return Err(Error::invalid_argument(
            "VALUE_TOO_LARGE",
            format!(
                "value for key `{key}` is {} bytes; the limit is {} bytes \
                 (limits.max_value_bytes)",
                value.len(),
                max
            ),
        )
        .with("key", key)
        .with("limit", max.to_string()));
    }
    Ok(())
}

/// A batch's size, and that its keys are valid and distinct.
pub fn check_keys<'a>(
    limits: &Limits,
    keys: impl ExactSizeIterator<Item = &'a str>,
) -> Result<(), Error> {
    if keys.len() == 0 {
        return Err(Error::invalid_argument(
            "EMPTY_BATCH",
            "the batch is empty; send at least one key",
        ));
    }
    let max = limits.max_batch_ops;
    if keys.len() > max {
        return Err(Error::invalid_argument(
            "BATCH_TOO_LARGE",
            format!(
                "the batch has {} operations; the limit is {} (limits.max_batch_ops)",
                keys.len(),
                max
            ),
        ));
    }
    let mut seen = HashSet::new();
    for key in keys {
        check_key(limits, key)?;
        if !seen.insert(key) {
            return Err(Error::invalid_argument(
                "DUPLICATE_KEY",
                format!("key `{key}` appears twice in the batch; each key may appear once"),
            )
            .with("key", key));
        }
    }
    Ok(())
}

/// A many-key reply is sized before it is built, from each entry's key and
/// value lengths: one that no client could receive is refused, not encoded.
pub fn check_reply(
    limits: &Limits,
    entries: impl Iterator<Item = (usize, usize)>,
) -> Result<(), Error> {
    // 16 bytes of framing per entry, on top of its key and value.
    let bytes: usize = entries.map(|(key, value)| key + value + 16).sum();
    let max = limits.max_message_bytes;
    if bytes > max {
        return Err(Error::new(
            ErrorKind::ResourceExhausted,
            "RESPONSE_TOO_LARGE",
            format!(
                "the values of these keys add up to more than {max} bytes \
                 (limits.max_message_bytes); ask for fewer keys at once"
            ),
        )
        .with("limit", max.to_string()));
    }
    Ok(())
}

/// An expiry a call must give; `hint` says what to do instead.
pub fn required_ttl(ttl: Option<&prost_types::Duration>, hint: &str) -> Result<Duration, Error> {
    let ttl = ttl.ok_or_else(|| {
        Error::invalid_argument(
            "INVALID_TTL",
            format!("ttl is required (at least 1ms); {hint}"),
        )
    })?;
    positive_duration(ttl)
}

/// An expiry from the wire: at least 1ms, at most 100 years.
pub fn positive_duration(d: &prost_types::Duration) -> Result<Duration, Error> {
    let invalid = || {
        Error::invalid_argument(
            "INVALID_TTL",
            "ttl must be a positive duration of at least 1ms and at most 100 years",
        )
    };
    let d = super::duration(d).ok_or_else(invalid)?;
    if d < Duration::from_millis(1) || d > MAX_TTL {
        return Err(invalid());
    }
    Ok(d)
}
