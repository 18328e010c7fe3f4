//! Rust client for the Prism data access gateway.
//!
//! It solves what every caller of the generated stubs would otherwise
//! write by hand:
//! - **Sessions that look after themselves**: opened with an API key, a JWT
//!   or a client certificate and a named or inline configuration; kept
//!   alive by heartbeats paced by the TTL the gateway returns; the token put
//!   on every call; reopened when the gateway says the token no longer
//!   works (it expired, or the gateway restarted), if you allow it.
//! - **Safe retries**: `UNAVAILABLE` and `RESOURCE_EXHAUSTED` are retried
//!   with exponential backoff and full jitter, never sooner than the
//!   gateway's `RetryInfo`; every write carries an idempotency token made
//!   once per logical write, so a retry is never applied twice. Writes the
//!   gateway cannot deduplicate (Queue and PubSub Publish) are resent only
//!   when they were refused before anything happened.
//! - **Typed errors**: [`Error`] carries the gateway's `ErrorInfo` reason
//!   and metadata.
//!
//! ```no_run
//! # async fn demo() -> prism_client::Result<()> {
//! use prism_client::Client;
//!
//! let client = Client::connect("http://127.0.0.1:8980").await?;
//! let session = client
//!     .session()
//!     .api_key("prism-dev-key")
//!     .config("user-profiles")
//!     .open()
//!     .await?;
//! let kv = session.kv();
//! kv.set("user/42", b"ada".to_vec()).await?;
//! assert_eq!(kv.get("user/42").await?.map(|v| v.value), Some(b"ada".to_vec()));
//! session.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `client`: the connection (TLS, mTLS, keepalive, deadlines) shared by
//!   sessions.
//! - `session`: opening, heartbeats, reopening, and the one call loop every
//!   API goes through.
//! - `retry`: backoff and which calls may be resent.
//! - `idempotency`: identities of logical writes.
//! - `resume`: server streams opened again where they got to after a
//!   failure.
//! - `pieces`: large payloads delivered in pieces, joined again.
//! - `error`: the error type.
//! - `kv`, `queue`, `pubsub`, `reader`, `transact`: one module per API.
//!
//! # Compatibility
//! This crate speaks the `v1` packages of the wire contract
//! (`prism.*.v1`), which the gateway keeps backward compatible: any
//! gateway that serves `v1` works with any `0.x` release of this crate.

#![deny(missing_docs)]

/// One call of an API handle (a struct with `session` and `stub`): `$rpc`
/// with `$message` on a clone of the stub, carrying the session's token,
/// through the session's retry and reopen rules (`$resend`). The message,
/// its idempotency token included, is made once and cloned per attempt.
/// `unary!(stream ...)` sends a client stream of `$message` (a `Vec` of its
/// messages, sent again whole on a retry) with no deadline: a large
/// payload takes the time it takes (the connection's keepalive notices a
/// dead gateway).
macro_rules! unary {
    ($api:expr, $resend:expr, $rpc:ident, $message:expr) => {
        unary!(@call $api, $resend, $rpc, $message, request, |m| m)
    };
    (stream $api:expr, $resend:expr, $rpc:ident, $message:expr) => {
        unary!(@call $api, $resend, $rpc, $message, stream_request, futures::stream::iter)
    };
    (@call $api:expr, $resend:expr, $rpc:ident, $message:expr, $request:ident, $send:expr) => {{
        let shared = $api.session.shared();
        let message = $message;
        shared
            .call($resend, |token| {
                let request = shared.$request(&token, ($send)(message.clone()));
                let mut stub = $api.stub.clone();
                async move { stub.$rpc(request).await }
            })
            .await
    }};
}

mod client;
mod error;
mod idempotency;
pub mod kv;
mod pieces;
pub mod pubsub;
pub mod queue;
pub mod reader;
mod resume;
mod retry;
mod session;
pub mod transact;

pub use client::{Client, ClientBuilder, Tls};
pub use error::{Code, Error, Result, RpcError};
pub use kv::KeyValue;
pub use prism_proto as proto;
pub use pubsub::PubSub;
pub use queue::Queue;
pub use reader::{Filter, Reader};
pub use retry::RetryPolicy;
pub use session::{Credentials, Session, SessionBuilder};
pub use transact::{Change, Transact};
