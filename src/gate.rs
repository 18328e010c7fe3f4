//! The call gate: the one path every data RPC of KeyValue, Queue, PubSub,
//! Reader and Transact passes before its service sees the request, unary and
//! streaming alike. In one fixed order it checks
//!
//! 1. the session token (the request's `session_token` field, else the
//!    `x-session-token` header),
//! 2. authorize: a live session for it (activity recorded; an ended one is
//!    refused with the one "session ended" error),
//! 3. pattern: the session's config serves this service's pattern,
//! 4. policy: the namespace's rules still allow that pattern and backend,
//! 5. rate limit: the config's `rate_limit` bucket,
//! 6. backend: the session's backend and the interface the service needs,
//! 7. operation guard: counted for a draining close and, for streams, in
//!    `GetSession.active_streams`,
//!
//! and on the way out it reports a failing backend to its pool actor and
//! accounts the bytes of the request and of every reply or streamed item.
//! Services hold only what is theirs: request validation, the backend call
//! and the reply.
//!
//! A gated stream ([`Call::stream`]) also owns how a stream ends when its
//! session does: the client gets the session's end error
//! (`SESSION_EXPIRED`, `SESSION_CLOSED` or `SESSION_FAILED`), never a quiet
//! end of stream.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::{Stream, StreamExt};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::{
    backends::{missing_interface, Backend, Backends, Interface},
    config::{Limits, LiveConfig, NamespaceSpec, Pattern},
    error::{Error, ErrorKind, Service},
    session::{OperationGuard, SessionEntry, SessionRegistry},
};

/// The header that may carry the session token instead of the field.
pub const SESSION_TOKEN_HEADER: &str = "x-session-token";

/// Requests that carry a `session_token` field.
pub trait SessionToken {
    fn session_token(&self) -> &str;
}

/// Implements [`SessionToken`] for generated request types.
macro_rules! session_token_field {
    ($($t:ty),* $(,)?) => {
        $(impl $crate::gate::SessionToken for $t {
            fn session_token(&self) -> &str {
                &self.session_token
            }
        })*
    };
}
pub(crate) use session_token_field;

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

/// What the gate shares between the services: built once at start.
#[derive(Clone)]
pub struct GateState {
    registry: Arc<SessionRegistry>,
    backends: Arc<Backends>,
    /// The running config, for the `limits` a call is held to.
    config: LiveConfig,
}

impl GateState {
    pub fn new(
        registry: Arc<SessionRegistry>,
        backends: Arc<Backends>,
        config: LiveConfig,
    ) -> Self {
        GateState {
            registry,
            backends,
            config,
        }
    }

    pub fn registry(&self) -> &Arc<SessionRegistry> {
        &self.registry
    }

    /// The gate of one service: its error domain, the pattern it serves,
    /// the interface every one of its calls needs and where a backend
    /// keeps the handle for it.
    pub fn gate<H: Clone>(
        &self,
        service: Service,
        pattern: Pattern,
        interface: Interface,
        pick: fn(&Backend) -> Option<&H>,
    ) -> Gate<H> {
        Gate {
            state: self.clone(),
            service,
            pattern,
            interface,
            pick,
        }
    }
}

/// Whether a call is a unary call or opens a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unary,
    Stream,
}

/// One service's gate.
pub struct Gate<H> {
    state: GateState,
    service: Service,
    pattern: Pattern,
    interface: Interface,
    pick: fn(&Backend) -> Option<&H>,
}

impl<H: Clone> Gate<H> {
    pub fn service(&self) -> Service {
        self.service
    }

    pub fn registry(&self) -> &Arc<SessionRegistry> {
        &self.state.registry
    }

    /// Admits a request (token from its field or header).
    pub async fn open<T: Message + SessionToken>(
        &self,
        request: &Request<T>,
        kind: Kind,
    ) -> Result<Call<H>, Status> {
        let token = session_token(request.get_ref().session_token(), request);
        self.admit(token, kind, request.get_ref().encoded_len())
            .await
            .map_err(|e| e.to_status(self.service))
    }

    /// Admits a client stream by the session token of its first message
    /// (`field`), else the header's (`header`, read before the request was
    /// taken apart); `received` is the first message's size. It counts as
    /// one of the session's streams (`max_streams_per_session`).
    pub async fn open_client_stream(
        &self,
        field: &str,
        header: &str,
        received: usize,
    ) -> Result<Call<H>, Status> {
        let token = if field.is_empty() { header } else { field };
        self.admit(token, Kind::Stream, received)
            .await
            .map_err(|e| e.to_status(self.service))
    }

    /// Admits a call by its token; `received` is the request's size. Every
    /// step of the gate, in order (see the module's doc).
    pub async fn admit(&self, token: &str, kind: Kind, received: usize) -> Result<Call<H>, Error> {
        let entry = self.state.registry.authorize(token).await?;
        let pattern = self.pattern;
        if !entry.config.patterns.contains(&pattern) {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                "PATTERN_NOT_IN_SESSION",
                format!(
                    "this session's config `{}` does not serve the {pattern} pattern; open a \
                     session with a {pattern} config",
                    entry.config.name
                ),
            )
            .with("config", entry.config.name.clone()));
        }
        let policy = entry.namespace_sessions.spec();
        self.check_policy(&entry, &policy)?;
        entry.check_rate()?;
        let backend = self
            .state
            .backends
            .get(&entry.config.backend_name)
            .cloned()
            .ok_or_else(|| Error::internal("the session's backend is not configured"))?;
        let handle = (self.pick)(&backend)
            .cloned()
            .ok_or_else(|| missing_interface(&backend.name, backend.kind, self.interface))?;
        if let Some(down) = backend.health.refusal(&backend.name) {
            return Err(down);
        }
        let guard = entry.begin_operation(kind == Kind::Stream)?;
        Ok(Call {
            entry,
            policy,
            limits: self.state.config.load().limits,
            backend,
            handle,
            service: self.service,
            received,
            _guard: guard,
        })
    }

    /// The namespace's rules must still allow the session's pattern and
    /// backend: a config can narrow the namespace, never widen it. Read
    /// through the session (no lookup on the hot path).
    fn check_policy(&self, entry: &SessionEntry, policy: &NamespaceSpec) -> Result<(), Error> {
        if !policy.allowed_patterns.contains(&self.pattern) {
            return Err(Error::permission_denied(
                "PATTERN_NOT_ALLOWED",
                format!(
                    "namespace `{}` does not allow the {} pattern",
                    entry.namespace(),
                    self.pattern
                ),
            ));
        }
        if !policy
            .allowed_backends
            .iter()
            .any(|b| *b == entry.config.backend_name)
        {
            return Err(Error::permission_denied(
                "BACKEND_NOT_ALLOWED",
                format!(
                    "namespace `{}` does not allow backend `{}`",
                    entry.namespace(),
                    entry.config.backend_name
                ),
            ));
        }
        Ok(())
    }

    /// A whole unary call: admit, run `body`, then report and account.
    pub async fn unary<Req, Resp>(
        &self,
        request: Request<Req>,
        body: impl AsyncFnOnce(&Call<H>, Req) -> Result<Resp, Error>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Message + SessionToken,
        Resp: Message,
    {
        let call = self.open(&request, Kind::Unary).await?;
        let result = body(&call, request.into_inner()).await;
        call.finish(result)
    }
}

/// An admitted call: its session, backend, namespace rules and the
/// service's handle on the backend. Holding it keeps the operation open.
pub struct Call<H> {
    pub entry: Arc<SessionEntry>,
    policy: Arc<NamespaceSpec>,
    /// The configured `limits` when the call was admitted.
    limits: Limits,
    pub backend: Arc<Backend>,
    /// The service's handle on the backend.
    pub handle: H,
    service: Service,
    /// Encoded size of the request, accounted when the call answers.
    received: usize,
    _guard: OperationGuard,
}

impl<H> Call<H> {
    pub fn ns(&self) -> &str {
        self.entry.namespace()
    }

    /// The session's namespace's rules, as they were when the call was
    /// admitted (a config reload in between does not change them under a
    /// running call).
    pub fn policy(&self) -> &NamespaceSpec {
        &self.policy
    }

    /// Bytes of a client stream's later messages, accounted with the
    /// request.
    pub fn add_received(&mut self, bytes: usize) {
        self.received = self.received.saturating_add(bytes);
    }

    /// The `limits` the call is held to, as they were when it was admitted
    /// (one read of the running config per call, whatever it checks).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A further interface the call needs, or UNIMPLEMENTED naming it.
    pub fn need<T: ?Sized>(
        &self,
        interface: Interface,
        pick: impl FnOnce(&H) -> Option<&Arc<T>>,
    ) -> Result<Arc<T>, Error> {
        require(&self.handle, &self.backend, interface, pick)
    }

    /// Maps a failure for the client; a backend that failed is reported to
    /// its pool actor (fire and forget).
    pub fn fail(&self, e: Error) -> Status {
        report(&self.backend, &e);
        e.to_status(self.service)
    }

    /// The answer of a unary call, its bytes accounted.
    pub fn reply<R: Message>(self, response: R) -> Response<R> {
        self.entry
            .record_request(self.received, response.encoded_len());
        Response::new(response)
    }

    /// Ends a unary call with its outcome: the reply accounted, or the
    /// failure reported and mapped.
    pub fn finish<R: Message>(self, result: Result<R, Error>) -> Result<Response<R>, Status> {
        match result {
            Ok(response) => Ok(self.reply(response)),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Counts bytes sent on a stream this call serves.
    pub fn sent(&self, bytes: usize) {
        self.entry.record_sent(bytes);
    }

    /// The error for this call's session once it has ended.
    pub fn ended(&self) -> Option<Status> {
        self.entry.ended_error().map(|e| e.to_status(self.service))
    }

    /// Serves `items` as this call's stream: the request counts once, each
    /// item's bytes as it is sent, a failing backend is reported, and when
    /// the session ends the client gets the end error in place of the next
    /// item (never a quiet end). The operation stays open until the stream
    /// ends or the client goes away.
    pub fn stream<T, S>(self, items: S) -> GatedStream<T>
    where
        H: Send + Sync + 'static,
        T: Message + 'static,
        S: Stream<Item = Result<T, Error>> + Send + 'static,
    {
        self.entry.record_request(self.received, 0);
        GatedStream {
            items: items.boxed(),
            session_end: None,
            call: Box::new(self),
            done: false,
        }
    }
}

/// Picks an interface from a backend's handle, or says which is missing.
fn require<H, T: ?Sized>(
    handle: &H,
    backend: &Backend,
    interface: Interface,
    pick: impl FnOnce(&H) -> Option<&Arc<T>>,
) -> Result<Arc<T>, Error> {
    pick(handle)
        .cloned()
        .ok_or_else(|| missing_interface(&backend.name, backend.kind, interface))
}

fn report(backend: &Backend, e: &Error) {
    if e.kind == ErrorKind::Unavailable {
        backend.health.suspect();
    }
}

/// The part of a [`Call`] its stream keeps, whatever the service's handle.
trait StreamCall: Send + Sync {
    fn entry(&self) -> &Arc<SessionEntry>;
    fn fail(&self, e: Error) -> Status;
    fn ended(&self) -> Option<Status>;
}

impl<H: Send + Sync> StreamCall for Call<H> {
    fn entry(&self) -> &Arc<SessionEntry> {
        &self.entry
    }

    fn fail(&self, e: Error) -> Status {
        Call::fail(self, e)
    }

    fn ended(&self) -> Option<Status> {
        Call::ended(self)
    }
}

/// A stream served through the gate; see [`Call::stream`].
pub struct GatedStream<T> {
    items: futures::stream::BoxStream<'static, Result<T, Error>>,
    /// Resolves when the session ends; made when the stream first waits.
    session_end: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    call: Box<dyn StreamCall>,
    done: bool,
}

impl<T> GatedStream<T> {
    fn end_with(&mut self, status: Status) -> Poll<Option<Result<T, Status>>> {
        self.done = true;
        Poll::Ready(Some(Err(status)))
    }
}

impl<T: Message> Stream for GatedStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(ended) = self.call.ended() {
            return self.end_with(ended);
        }
        match self.items.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(item))) => {
                self.call.entry().record_sent(item.encoded_len());
                Poll::Ready(Some(Ok(item)))
            }
            Poll::Ready(Some(Err(e))) => {
                // An error the session's end caused reads as that end.
                let status = self.call.ended().unwrap_or_else(|| self.call.fail(e));
                self.end_with(status)
            }
            Poll::Ready(None) => match self.call.ended() {
                Some(ended) => self.end_with(ended),
                None => {
                    self.done = true;
                    Poll::Ready(None)
                }
            },
            Poll::Pending => {
                let this = &mut *self;
                let end = this.session_end.get_or_insert_with(|| {
                    let entry = this.call.entry().clone();
                    Box::pin(async move { entry.ended().await })
                });
                match end.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.session_end = None;
                        match this.call.ended() {
                            Some(ended) => this.end_with(ended),
                            None => {
                                cx.waker().wake_by_ref();
                                Poll::Pending
                            }
                        }
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        backends::{memory::MemoryKv, BackendKind, Health, PoolSpec},
        session::Clock,
    };

    #[test]
    fn a_missing_interface_is_unimplemented_naming_it_and_the_backend() {
        let memory = Arc::new(MemoryKv::new(Clock::new()));
        let mut kv = memory.kv_handle();
        kv.ttl = None;
        let backend = Backend {
            name: "cache".into(),
            kind: BackendKind::Memory,
            spec: PoolSpec::default(),
            client: None,
            kv: Some(kv.clone()),
            queue: None,
            pubsub: None,
            reader: None,
            transact: None,
            cache: None,
            health: Arc::new(Health::new()),
        };
        assert!(require(&kv, &backend, Interface::KeyValueScan, |k| k.scan.as_ref()).is_ok());
        let err = require(&kv, &backend, Interface::KeyValueTtl, |k| k.ttl.as_ref())
            .err()
            .unwrap();
        assert_eq!(err.kind, ErrorKind::Unimplemented);
        assert_eq!(err.reason, "MISSING_INTERFACE");
        assert!(err.message.contains("cache") && err.message.contains("keyvalue_ttl"));
        assert!(err
            .metadata
            .contains(&("interface", "keyvalue_ttl".to_string())));
        assert!(err.metadata.contains(&("backend", "cache".to_string())));
    }
}
