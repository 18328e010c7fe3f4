//! gRPC services, one file each. A service is a plain struct holding shared
//! state in `Arc`s; handlers check the session on the registry's hot path and
//! map errors through [`crate::error`] in one place.

use std::sync::Arc;

use tonic::Request;

use crate::{
    backends::{Backend, Backends},
    config::Pattern,
    error::{Error, ErrorKind},
    session::{SessionEntry, SessionRegistry},
};

pub mod admin;
pub mod config;
pub mod keyvalue;
pub mod pubsub;
pub mod queue;
pub mod reader;
pub mod session;
pub mod transact;

/// The header that may carry the session token instead of the field.
pub const SESSION_TOKEN_HEADER: &str = "x-session-token";

/// The session token of a request: the `session_token` field when set,
/// otherwise the `x-session-token` metadata header.
pub fn session_token<'a, T>(field: &'a str, request: &'a Request<T>) -> &'a str {
    if !field.is_empty() {
        return field;
    }
    request
        .metadata()
        .get(SESSION_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// An optional stream bound given as a duration (Subscribe's timeout or
/// max_duration): unset is `None`; zero or negative is INVALID_ARGUMENT.
pub fn optional_positive_duration(
    d: Option<prost_types::Duration>,
    reason: &'static str,
    what: &str,
) -> Result<Option<std::time::Duration>, Error> {
    match d {
        None => Ok(None),
        Some(d) => std::time::Duration::try_from(d)
            .ok()
            .filter(|d| !d.is_zero())
            .map(Some)
            .ok_or_else(|| {
                Error::invalid_argument(reason, format!("{what} must be positive when set"))
            }),
    }
}

/// An optional stream bound given as a count (max_messages): unset is
/// `None`; zero or negative is INVALID_ARGUMENT `INVALID_MAX_MESSAGES`.
pub fn optional_max_messages(n: Option<i32>) -> Result<Option<u64>, Error> {
    match n {
        Some(n) if n <= 0 => Err(Error::invalid_argument(
            "INVALID_MAX_MESSAGES",
            "max_messages must be positive when set",
        )),
        other => Ok(other.map(|n| n as u64)),
    }
}

/// The hot-path check every data RPC starts with: the session for `token`
/// (activity recorded), that its config serves `pattern`, its rate limit,
/// and its backend.
pub fn session_backend(
    registry: &SessionRegistry,
    backends: &Backends,
    token: &str,
    pattern: Pattern,
) -> Result<(Arc<SessionEntry>, Arc<Backend>), Error> {
    let entry = registry.authorize(token)?;
    if !entry.config.patterns.contains(&pattern) {
        return Err(Error::new(
            ErrorKind::FailedPrecondition,
            "PATTERN_NOT_IN_SESSION",
            format!(
                "this session's config `{}` does not serve the {pattern} pattern; open a session \
                 with a {pattern} config",
                entry.config.name
            ),
        )
        .with("config", entry.config.name.clone()));
    }
    entry.check_rate()?;
    let backend = backends
        .get(&entry.config.backend_name)
        .cloned()
        .ok_or_else(|| Error::internal("the session's backend is not configured"))?;
    Ok((entry, backend))
}
