//! gRPC services, one file each. A service is a plain struct holding shared
//! state in `Arc`s; handlers check the session on the registry's hot path and
//! map errors through [`crate::error`] in one place.

use tonic::Request;

pub mod config;
pub mod session;

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
