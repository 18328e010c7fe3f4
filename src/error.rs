//! The one error type of the gateway and its single mapping to `tonic::Status`
//! with `google.rpc.ErrorInfo` details.

use std::fmt;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// What went wrong, in terms a client can act on; the gRPC code follows the
/// spec's table (seed 002 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    Unauthenticated,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Unavailable,
    DeadlineExceeded,
    /// Acknowledged data that can no longer be read (a claim-check object
    /// gone).
    DataLoss,
    Internal,
}

impl ErrorKind {
    pub fn code(self) -> Code {
        match self {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::Aborted => Code::Aborted,
            ErrorKind::OutOfRange => Code::OutOfRange,
            ErrorKind::Unimplemented => Code::Unimplemented,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorKind::DataLoss => Code::DataLoss,
            ErrorKind::Internal => Code::Internal,
        }
    }
}

/// An error with a machine-readable `reason` (ErrorInfo), a lowercase message
/// that says what to fix, and metadata that never carries secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub reason: &'static str,
    pub message: String,
    pub metadata: Vec<(&'static str, String)>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, reason: &'static str, message: impl Into<String>) -> Self {
        Error {
            kind,
            reason,
            message: message.into(),
            metadata: Vec::new(),
        }
    }

    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.metadata.push((key, value.into()));
        self
    }

    pub fn invalid_argument(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, reason, message)
    }

    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, reason, message)
    }

    pub fn permission_denied(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, reason, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, "INTERNAL", message)
    }

    /// The status a client sees, with `google.rpc.ErrorInfo` in domain
    /// `prism.<service>.v1`.
    pub fn to_status(&self, service: Service) -> Status {
        let metadata: std::collections::HashMap<String, String> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let retry = metadata
            .get("retry_after_ms")
            .and_then(|ms| ms.parse().ok())
            .map(std::time::Duration::from_millis);
        let mut details = ErrorDetails::with_error_info(self.reason, service.domain(), metadata);
        // `retry_after_ms` is also said the standard way (RetryInfo).
        if retry.is_some() {
            details.set_retry_info(retry);
        }
        Status::with_error_details(self.kind.code(), self.message.clone(), details)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The API an error is reported from; names the ErrorInfo domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Session,
    Config,
    KeyValue,
    Queue,
    PubSub,
    Reader,
    Transact,
    Cache,
}

impl Service {
    pub fn domain(self) -> &'static str {
        match self {
            Service::Session => "prism.session.v1",
            Service::Config => "prism.config.v1",
            Service::KeyValue => "prism.keyvalue.v1",
            Service::Queue => "prism.queue.v1",
            Service::PubSub => "prism.pubsub.v1",
            Service::Reader => "prism.reader.v1",
            Service::Transact => "prism.transact.v1",
            Service::Cache => "prism.cache.v1",
        }
    }
}

/// Shorthand for handlers: `result.map_err(status(Service::Session))`.
pub fn status(service: Service) -> impl Fn(Error) -> Status {
    move |e| e.to_status(service)
}

/// The canonical name of a gRPC code (`INVALID_ARGUMENT`), as
/// TransactionError and the metrics' `code` label carry it.
pub fn code_name(code: tonic::Code) -> &'static str {
    {
        use tonic::Code as C;
        match code {
            C::Ok => "OK",
            C::Cancelled => "CANCELLED",
            C::Unknown => "UNKNOWN",
            C::InvalidArgument => "INVALID_ARGUMENT",
            C::DeadlineExceeded => "DEADLINE_EXCEEDED",
            C::NotFound => "NOT_FOUND",
            C::AlreadyExists => "ALREADY_EXISTS",
            C::PermissionDenied => "PERMISSION_DENIED",
            C::ResourceExhausted => "RESOURCE_EXHAUSTED",
            C::FailedPrecondition => "FAILED_PRECONDITION",
            C::Aborted => "ABORTED",
            C::OutOfRange => "OUT_OF_RANGE",
            C::Unimplemented => "UNIMPLEMENTED",
            C::Internal => "INTERNAL",
            C::Unavailable => "UNAVAILABLE",
            C::DataLoss => "DATA_LOSS",
            C::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_error_info() {
        let err =
            Error::unauthenticated("SESSION_EXPIRED", "session expired; create a new session")
                .with("session_id", "sess-1");
        let status = err.to_status(Service::Session);
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "session expired; create a new session");
        let info = status
            .get_details_error_info()
            .expect("error info attached");
        assert_eq!(info.reason, "SESSION_EXPIRED");
        assert_eq!(info.domain, "prism.session.v1");
        assert_eq!(
            info.metadata.get("session_id").map(String::as_str),
            Some("sess-1")
        );
    }
}
