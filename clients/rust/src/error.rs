//! What a call can fail with: the gateway's answer (gRPC code plus its
//! `google.rpc.ErrorInfo` reason and metadata), a connection that could not
//! be made, input refused before it was sent, or a closed session.

use std::{collections::HashMap, fmt, time::Duration};

pub use tonic::Code;
use tonic_types::StatusExt;

/// A call's outcome when it is not a success.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The gateway (or the connection to it) answered with a gRPC error.
    Rpc(Box<RpcError>),
    /// The endpoint could not be reached or its TLS settings are wrong.
    Connect(tonic::transport::Error),
    /// Input this client refuses before sending it (a duration the wire
    /// cannot carry, a session with no credentials, ...).
    InvalidInput(String),
    /// The session was closed by [`Session::close`](crate::Session::close).
    Closed,
    /// A transaction's commit was sent but its answer never came (the
    /// stream or the gateway failed): it may or may not have committed.
    /// Check before running it again.
    OutcomeUnknown(Box<RpcError>),
    /// The gateway did not acknowledge these messages (delivered to an
    /// earlier session — one since reopened — or already acknowledged).
    NotAcknowledged(Vec<String>),
}

/// A gRPC error, with what the gateway said about it in `ErrorInfo`.
#[derive(Debug, Clone)]
pub struct RpcError {
    /// The gRPC status code.
    pub code: Code,
    /// The gateway's message: lowercase, says what to fix.
    pub message: String,
    /// `ErrorInfo.reason` (`SESSION_EXPIRED`, `RATE_LIMITED`, ...); `None`
    /// when the error did not come from the gateway itself (a transport
    /// failure, a proxy).
    pub reason: Option<String>,
    /// `ErrorInfo.domain`: the API that answered (`prism.keyvalue.v1`, ...).
    pub domain: Option<String>,
    /// `ErrorInfo.metadata`: the facts behind the error (limits, names).
    pub metadata: HashMap<String, String>,
    /// How long the gateway asked the client to wait (`RetryInfo`).
    pub retry_after: Option<Duration>,
    /// Whether the request is known not to have reached the gateway (the
    /// connection was refused, or HTTP/2 refused the stream), so even a
    /// write without an idempotency token is safe to send again.
    pub not_sent: bool,
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The reasons a gateway gives when a session token no longer works; a
/// session allowed to reopen itself does so on these.
const SESSION_LOST: [&str; 4] = [
    "SESSION_EXPIRED",
    "SESSION_CLOSED",
    "SESSION_FAILED",
    // A gateway that restarted without a shared session store has never
    // heard of the token.
    "INVALID_SESSION_TOKEN",
];

/// `RESOURCE_EXHAUSTED` reasons no retry can cure: the request or its
/// answer is over a size limit, or a stream was ended for falling behind.
const TOO_LARGE: [&str; 3] = [
    "PAYLOAD_TOO_LARGE",
    "RESPONSE_TOO_LARGE",
    "SUBSCRIBER_TOO_SLOW",
];

impl RpcError {
    /// Reads a status: its code and message, and the ErrorInfo and
    /// RetryInfo details the gateway attaches.
    pub fn from_status(status: &tonic::Status) -> RpcError {
        let details = status.get_error_details();
        let info = details.error_info();
        RpcError {
            code: status.code(),
            message: status.message().to_string(),
            reason: info.map(|i| i.reason.clone()),
            domain: info.map(|i| i.domain.clone()),
            metadata: info.map(|i| i.metadata.clone()).unwrap_or_default(),
            retry_after: details.retry_info().and_then(|r| r.retry_delay),
            not_sent: not_sent(status),
        }
    }

    /// An error this client makes itself (no ErrorInfo).
    pub(crate) fn local(code: Code, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            reason: None,
            domain: None,
            metadata: HashMap::new(),
            retry_after: None,
            not_sent: false,
        }
    }

    /// Whether the session's token no longer works (expired, closed,
    /// failed, or unknown to the gateway).
    pub fn is_session_lost(&self) -> bool {
        self.code == Code::Unauthenticated
            && self
                .reason
                .as_deref()
                .is_some_and(|r| SESSION_LOST.contains(&r))
    }

    /// Whether a retry may succeed: the gateway or the path to it is
    /// briefly unable (`UNAVAILABLE`; or `CANCELLED` or `UNKNOWN` without
    /// the gateway's ErrorInfo, which every error of the gateway carries:
    /// the connection closed under the call, or a proxy cut the stream
    /// short, as when a gateway behind it is killed), or the caller is over
    /// a limit that frees up (`RESOURCE_EXHAUSTED`: a rate, a count of open
    /// things), not one its request can never fit (a size). Only calls
    /// safe to repeat are retried on it; whether this one was applied is
    /// unknown.
    pub fn is_transient(&self) -> bool {
        match self.code {
            Code::Unavailable => true,
            Code::Cancelled | Code::Unknown => self.reason.is_none(),
            Code::ResourceExhausted => !self
                .reason
                .as_deref()
                .is_some_and(|r| TOO_LARGE.contains(&r)),
            _ => false,
        }
    }

    /// One metadata value of the gateway's ErrorInfo.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }
}

/// True when the status says the request never reached a server: the TCP
/// connection was refused, or the server refused the HTTP/2 stream (which
/// HTTP/2 guarantees it did not process, as a gateway draining for shutdown
/// does).
fn not_sent(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return true;
            }
        }
        source = e.source();
    }
    false
}

impl Error {
    /// The gRPC code: the gateway's, or the one that best describes a
    /// local failure.
    pub fn code(&self) -> Code {
        match self {
            Error::Rpc(e) => e.code,
            Error::Connect(_) => Code::Unavailable,
            Error::InvalidInput(_) => Code::InvalidArgument,
            Error::Closed => Code::FailedPrecondition,
            Error::OutcomeUnknown(e) => e.code,
            Error::NotAcknowledged(_) => Code::FailedPrecondition,
        }
    }

    /// The gateway's `ErrorInfo.reason`, when it gave one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Error::Rpc(e) | Error::OutcomeUnknown(e) => e.reason.as_deref(),
            _ => None,
        }
    }

    /// The gateway's error, when there is one.
    pub fn rpc(&self) -> Option<&RpcError> {
        match self {
            Error::Rpc(e) | Error::OutcomeUnknown(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        RpcError::from_status(&status).into()
    }
}

impl From<RpcError> for Error {
    fn from(e: RpcError) -> Self {
        Error::Rpc(Box::new(e))
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        Error::Connect(e)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)?;
        if let Some(reason) = &self.reason {
            write!(f, " ({reason})")?;
        }
        Ok(())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Rpc(e) => e.fmt(f),
            Error::Connect(e) => write!(f, "cannot connect to the gateway: {e}"),
            Error::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Error::Closed => f.write_str("the session is closed"),
            Error::OutcomeUnknown(e) => write!(f, "commit outcome unknown: {e}"),
            Error::NotAcknowledged(ids) => write!(f, "not acknowledged: {}", ids.join(", ")),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect(e) => Some(e),
            _ => None,
        }
    }
}

impl std::error::Error for RpcError {}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    #[test]
    fn reads_error_info_and_retry_info() {
        let mut details = ErrorDetails::with_error_info(
            "RATE_LIMITED",
            "prism.keyvalue.v1",
            [("limit".to_string(), "100".to_string())],
        );
        details.set_retry_info(Some(Duration::from_millis(250)));
        let status = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "over the rate limit",
            details,
        );
        let e = RpcError::from_status(&status);
        assert_eq!(e.reason.as_deref(), Some("RATE_LIMITED"));
        assert_eq!(e.domain.as_deref(), Some("prism.keyvalue.v1"));
        assert_eq!(e.meta("limit"), Some("100"));
        assert_eq!(e.retry_after, Some(Duration::from_millis(250)));
        assert!(e.is_transient());
        assert!(!e.is_session_lost());
        assert!(!e.not_sent);
    }

    #[test]
    fn a_lost_session_is_told_by_code_and_reason() {
        let lost = |code, reason: &str| {
            RpcError::from_status(&tonic::Status::with_error_details(
                code,
                "x",
                ErrorDetails::with_error_info(reason, "prism.session.v1", []),
            ))
            .is_session_lost()
        };
        assert!(lost(Code::Unauthenticated, "SESSION_EXPIRED"));
        assert!(lost(Code::Unauthenticated, "INVALID_SESSION_TOKEN"));
        assert!(!lost(Code::Unauthenticated, "INVALID_API_KEY"));
        assert!(!lost(Code::PermissionDenied, "SESSION_EXPIRED"));
    }

    #[test]
    fn a_connection_closed_under_a_call_is_transient_but_not_unsent() {
        let closed = RpcError::from_status(&tonic::Status::cancelled("operation was canceled"));
        assert!(closed.is_transient() && !closed.not_sent);
        let cut = RpcError::from_status(&tonic::Status::unknown(
            "protocol error: missing grpc-status trailer",
        ));
        assert!(cut.is_transient() && !cut.not_sent);
        let answered = RpcError::from_status(&tonic::Status::with_error_details(
            Code::Cancelled,
            "x",
            ErrorDetails::with_error_info("SOMETHING", "prism.keyvalue.v1", []),
        ));
        assert!(!answered.is_transient());
    }

    #[test]
    fn a_refused_connection_was_not_sent() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let status = tonic::Status::from_error(Box::new(refused));
        assert!(RpcError::from_status(&status).not_sent);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let status = tonic::Status::from_error(Box::new(reset));
        assert!(!RpcError::from_status(&status).not_sent);
    }
}
