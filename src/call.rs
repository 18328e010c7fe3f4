//! What the gRPC call being served is about: its session (namespace, id,
//! identity, backend) and the key, topic, collection or table it touches.
//! Learned low down — where the session token is checked and where a
//! request is read — and carried in a task-local slot up to the call layer
//! (`metrics::MetricsLayer`), which labels the call's metrics and
//! writes its audit record; the session is also recorded on the call's
//! `rpc` span. Nothing here knows the modules that fill it in.

use std::{
    future::Future,
    sync::{Arc, OnceLock},
};

/// Which session, whose and where: what a call's metrics and audit
/// records (and a session event's audit record) say about it.
#[derive(Debug, Clone, Default)]
pub struct SessionRef {
    /// The namespace the session belongs to.
    pub namespace: String,
    /// Its public id (never the token).
    pub session_id: String,
    /// Who opened it (API key name, JWT subject or certificate subject).
    pub identity: String,
}

/// A call's session as the call layer reads it, straight from the session
/// (nothing is copied on the hot path; the record is made only when an
/// audit record is written).
pub trait CallSession: Send + Sync {
    /// The namespace, shared: the call's metrics label.
    fn namespace_label(&self) -> &Arc<str>;
    /// Who and where, for an audit record.
    fn session_ref(&self) -> SessionRef;
}

/// What the call layer learns about a call while it runs.
#[derive(Default)]
pub struct CallInfo {
    session: OnceLock<Arc<dyn CallSession>>,
    resource: OnceLock<String>,
    /// Whether the call is audited: what it is about is kept only then.
    audited: bool,
}

impl CallInfo {
    pub fn new(audited: bool) -> Self {
        CallInfo {
            audited,
            ..Default::default()
        }
    }

    /// The call's session, once it was checked.
    pub fn session(&self) -> Option<&Arc<dyn CallSession>> {
        self.session.get()
    }

    /// What the call is about, once a service noted it (audited calls).
    pub fn resource(&self) -> Option<&str> {
        self.resource.get().map(String::as_str)
    }
}

tokio::task_local! {
    static CALL: Arc<CallInfo>;
}

/// Runs `call` with `info` as its slot.
pub fn scope<F: Future>(info: Arc<CallInfo>, call: F) -> impl Future<Output = F::Output> {
    CALL.scope(info, call)
}

/// Records the session of the call being served (first one wins) in the
/// slot, and its namespace, id and backend on the current span; outside a
/// call only the span is touched.
pub fn note_session(
    session: &Arc<impl CallSession + 'static>,
    namespace: &str,
    session_id: &str,
    backend: &str,
) {
    // The `rpc` span is an INFO span: below that level there is none.
    if tracing::level_enabled!(tracing::Level::INFO) {
        let span = tracing::Span::current();
        span.record("namespace", namespace);
        span.record("session_id", session_id);
        span.record("backend", backend);
    }
    let _ = CALL.try_with(|call| {
        let _ = call.session.set(session.clone());
    });
}

/// Records what the call is about, for its audit record (first one wins;
/// at most 256 characters); nothing when the call is not audited.
pub fn note_resource(resource: &str) {
    let _ = CALL.try_with(|call| {
        if call.audited {
            let _ = call.resource.set(resource.chars().take(256).collect());
        }
    });
}
