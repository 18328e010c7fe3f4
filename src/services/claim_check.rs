//! The claim check: a Queue, PubSub or Transact mailbox payload above its
//! namespace's `claim_check.threshold` is kept in an object store and the
//! message travels with its key in the `prism-claim-check*` headers (so it
//! stays under the broker's message limit). On the way out the gateway
//! reads the object back and the subscriber gets the payload whole, or in
//! pieces of `chunk_size` when it is larger: consecutive messages with the
//! same id, the `prism-chunk` header saying `<index>/<count>` and
//! `prism-chunk-total-size` the whole length (headers, not new fields, so a
//! client generated from the spec can join them). It never sees the
//! `prism-claim-check*` headers. Objects go when a Queue
//! message is acknowledged (`delete_on_ack`) and, whatever became of their
//! message, after `retention` (a sweeper).
//!
//! Only the gateway writes these headers: a client's header or metadata key
//! starting `prism-claim-check` is refused.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use futures::{
    future::{BoxFuture, Either},
    stream::BoxStream,
    StreamExt as _,
};
use tokio::sync::Semaphore;

use crate::{
    backends::blob::{Blobs, Held},
    clock::Clock,
    config::{
        claim_check::{ClaimCheckPolicy, DEFAULT_CHUNK_BYTES},
        GatewayConfig, LiveConfig, NamespaceSpec,
    },
    error::{Error, ErrorKind},
    gate::{self, Call, Gate, SessionToken},
    proto::{pubsub::v1 as pubsub_pb, queue::v1 as queue_pb, transact::v1 as transact_pb},
};

/// The header naming the stored payload: `<store>/<key>`.
pub const CLAIM_HEADER: &str = "prism-claim-check";
/// The stored payload's length in bytes.
pub const SIZE_HEADER: &str = "prism-claim-check-size";
/// When the object goes: `ack` (a Queue message's acknowledgement) or
/// `retention`.
pub const RELEASE_HEADER: &str = "prism-claim-check-release";
/// On each piece of a payload delivered in pieces: `<index>/<count>`.
pub const CHUNK_HEADER: &str = "prism-chunk";
/// On each piece: the whole payload's length in bytes.
pub const CHUNK_TOTAL_HEADER: &str = "prism-chunk-total-size";
/// Key prefixes clients may not set.
const RESERVED_PREFIXES: [&str; 2] = ["prism-claim-check", "prism-chunk"];
/// Most delivered-but-unacknowledged Queue payloads remembered for deletion
/// on acknowledgement; beyond it they go after their retention.
pub const MAX_TRACKED: usize = 100_000;
/// How long a delivery is remembered for deletion on acknowledgement.
const TRACK_FOR: Duration = Duration::from_secs(3600);
/// How long a PublishStream may take to send its first message (it is not
/// yet admitted: no session counts it).
const START_WAIT: Duration = Duration::from_secs(30);

/// When a stored payload may be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Once its Queue message is acknowledged (or after retention).
    Ack,
    /// After retention only.
    Retention,
}

/// A stored payload, as its message's headers name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub store: String,
    pub key: String,
    pub size: u64,
    pub release: Release,
}

impl Reference {
    /// Writes the reference into a message's headers.
    pub fn add_to(&self, headers: &mut impl Extend<(String, String)>) {
        headers.extend([
            (
                CLAIM_HEADER.to_string(),
                format!("{}/{}", self.store, self.key),
            ),
            (SIZE_HEADER.to_string(), self.size.to_string()),
            (
                RELEASE_HEADER.to_string(),
                match self.release {
                    Release::Ack => "ack",
                    Release::Retention => "retention",
                }
                .to_string(),
            ),
        ]);
    }

    /// Takes the reference out of a delivered message's headers: `None`
    /// when there is none, an error when it is malformed.
    pub fn take_from(headers: &mut HashMap<String, String>) -> Option<Result<Reference, Error>> {
        let claim = headers.remove(CLAIM_HEADER)?;
        let size = headers.remove(SIZE_HEADER);
        let release = headers.remove(RELEASE_HEADER);
        let parsed = (|| {
            let (store, key) = claim.split_once('/')?;
            let size = size?.parse().ok()?;
            let release = match release.as_deref() {
                Some("ack") => Release::Ack,
                _ => Release::Retention,
            };
            Some(Reference {
                store: store.to_string(),
                key: key.to_string(),
                size,
                release,
            })
        })();
        Some(parsed.ok_or_else(|| {
            Error::new(
                ErrorKind::DataLoss,
                "CLAIM_CHECK_MALFORMED",
                format!("a message's claim check `{claim}` cannot be read"),
            )
        }))
    }
}

/// Refuses client header or metadata keys the claim check reserves.
pub fn check_reserved<'a>(keys: impl IntoIterator<Item = &'a String>) -> Result<(), Error> {
    let reserved = |k: &&String| RESERVED_PREFIXES.iter().any(|p| k.starts_with(p));
    match keys.into_iter().find(reserved) {
        None => Ok(()),
        Some(k) => Err(Error::invalid_argument(
            "RESERVED_HEADER",
            format!(
                "header `{k}` is reserved: keys starting `prism-claim-check` or `prism-chunk` \
                 are the gateway's"
            ),
        )
        .with("header", k.clone())),
    }
}

/// A PublishStream's later messages as payload pieces.
pub type Pieces<'a> = BoxStream<'a, Result<Vec<u8>, Error>>;

/// A PublishStream call, whatever its service: its first message (`start`
/// takes it out; within [`START_WAIT`]) admits it by its session token,
/// else the header's; the later ones reach `body` as payload pieces
/// (`piece` takes each out), their bytes accounted with the call.
pub async fn publish_stream<H, T, S, R>(
    gate: &Gate<H>,
    request: tonic::Request<tonic::Streaming<T>>,
    start: fn(T) -> Option<S>,
    piece: fn(T) -> Option<Vec<u8>>,
    body: impl AsyncFnOnce(&Call<H>, S, Pieces<'_>) -> Result<R, Error>,
) -> Result<tonic::Response<R>, tonic::Status>
where
    H: Clone,
    T: Send + 'static,
    S: prost::Message + SessionToken,
    R: prost::Message,
{
    let header = gate::session_token("", &request).to_string();
    let mut inbound = request.into_inner();
    let first = tokio::time::timeout(START_WAIT, inbound.message())
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::DeadlineExceeded,
                "PUBLISH_STREAM_START",
                format!(
                    "no first message within {}s of opening PublishStream",
                    START_WAIT.as_secs()
                ),
            )
            .to_status(gate.service())
        })??;
    let start = first.and_then(start).ok_or_else(|| {
        Error::invalid_argument(
            "PUBLISH_STREAM_START",
            "the first message of PublishStream must be `start` (topic, headers and the \
             payload's first piece); later ones carry `payload` pieces",
        )
        .to_status(gate.service())
    })?;
    let mut call = gate
        .open_client_stream(start.session_token(), &header, start.encoded_len())
        .await?;
    let received = AtomicUsize::new(0);
    let pieces = inbound
        .map(|m| match m.map(piece) {
            Ok(Some(piece)) => {
                received.fetch_add(piece.len(), Ordering::Relaxed);
                Ok(piece)
            }
            Ok(None) => Err(Error::invalid_argument(
                "PUBLISH_STREAM_START",
                "only the first message of PublishStream is `start`; later ones carry `payload`",
            )),
            Err(status) => Err(Error::new(
                ErrorKind::Aborted,
                "PUBLISH_STREAM_BROKEN",
                format!(
                    "the PublishStream broke before it ended ({}); nothing was published",
                    status.message()
                ),
            )),
        })
        .boxed();
    let result = body(&call, start, pieces).await;
    call.add_received(received.into_inner());
    call.finish(result)
}

/// A payload as it goes to the broker: itself, or a reference to it.
pub enum Payload {
    Inline(Vec<u8>),
    Stored(Reference),
}

impl Payload {
    /// Puts itself into a message: the payload, or (the payload left
    /// empty) the reference into its headers, which it returns.
    pub fn attach(
        self,
        payload: &mut Vec<u8>,
        headers: &mut impl Extend<(String, String)>,
    ) -> Option<Reference> {
        match self {
            Payload::Inline(p) => {
                *payload = p;
                None
            }
            Payload::Stored(r) => {
                r.add_to(headers);
                Some(r)
            }
        }
    }
}

/// What a delivered message becomes: itself, or its stored payload's pieces.
pub type Expanded<M> = Either<
    futures::stream::Once<futures::future::Ready<Result<M, Error>>>,
    BoxStream<'static, Result<M, Error>>,
>;

/// What the claim check has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct Figures {
    pub stored: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub fetched: AtomicU64,
    pub deleted_on_ack: AtomicU64,
    pub deleted_by_retention: AtomicU64,
    pub discarded: AtomicU64,
    /// Counted by the stores themselves (every failed call).
    pub failures: Arc<AtomicU64>,
    pub untracked: AtomicU64,
}

/// The gateway's object stores and what it remembers of delivered payloads.
pub struct ClaimChecks {
    stores: BTreeMap<String, Arc<Blobs>>,
    config: LiveConfig,
    clock: Clock,
    /// Queue payloads delivered and not yet acknowledged: (session, message
    /// id) → reference and when it was delivered (clock ms).
    delivered: DashMap<(String, String), (Reference, u64)>,
    /// Stored payloads whose writes were rolled back, for the sweeper task
    /// to delete at once (it is told).
    discards: parking_lot::Mutex<Vec<Reference>>,
    discarding: Arc<tokio::sync::Notify>,
    /// Each namespace's bound on uploads at once (`max_uploads`), with the
    /// capacity it was made with.
    uploads: DashMap<String, (usize, Arc<Semaphore>)>,
    pub figures: Figures,
    sweeper: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ClaimChecks {
    /// Opens every configured object store.
    pub fn open(config: &GatewayConfig, live: LiveConfig, clock: Clock) -> Result<Self, String> {
        let figures = Figures::default();
        let stores = config
            .object_stores
            .iter()
            .map(|(name, spec)| {
                let blobs = Blobs::open(name, spec, figures.failures.clone())?;
                Ok((name.clone(), Arc::new(blobs)))
            })
            .collect::<Result<_, String>>()?;
        Ok(ClaimChecks {
            stores,
            config: live,
            clock,
            delivered: DashMap::new(),
            discards: parking_lot::Mutex::new(Vec::new()),
            discarding: Arc::default(),
            uploads: DashMap::new(),
            figures,
            sweeper: parking_lot::Mutex::new(None),
        })
    }

    /// The store `name`.
    pub fn store(&self, name: &str) -> Result<&Arc<Blobs>, Error> {
        self.stores.get(name).ok_or_else(|| {
            Error::new(
                ErrorKind::FailedPrecondition,
                "OBJECT_STORE_UNKNOWN",
                format!("object store `{name}` is not configured on this gateway"),
            )
            .with("object_store", name)
        })
    }

    /// The largest piece a namespace's subscribers get of a stored payload.
    pub fn chunk_size(spec: &NamespaceSpec) -> usize {
        spec.claim_check
            .as_ref()
            .map_or(DEFAULT_CHUNK_BYTES, |p| p.chunk_size)
    }

    /// A new object's key: under its namespace, so retention sweeps by
    /// prefix.
    fn new_key(ns: &str) -> String {
        format!("{ns}/{}", hex::encode(rand::random::<[u8; 16]>()))
    }

    /// A payload sent whole: stored when it is above the namespace's
    /// threshold, else left as it is.
    pub async fn check_in(
        &self,
        ns: &str,
        spec: &NamespaceSpec,
        payload: Vec<u8>,
        release: Release,
    ) -> Result<Payload, Error> {
        let Some(policy) = spec
            .claim_check
            .as_ref()
            .filter(|p| payload.len() > p.threshold)
        else {
            return Ok(Payload::Inline(payload));
        };
        let store = self.store(&policy.store)?;
        let key = Self::new_key(ns);
        let size = payload.len() as u64;
        if size > policy.max_object_bytes {
            return Err(too_large(policy.max_object_bytes));
        }
        store.put(&key, payload).await?;
        Ok(Payload::Stored(self.stored(policy, key, size, release)))
    }

    fn stored(
        &self,
        policy: &ClaimCheckPolicy,
        key: String,
        size: u64,
        release: Release,
    ) -> Reference {
        self.figures.stored.fetch_add(1, Ordering::Relaxed);
        self.figures.stored_bytes.fetch_add(size, Ordering::Relaxed);
        Reference {
            store: policy.store.clone(),
            key,
            size,
            release: if policy.delete_on_ack {
                release
            } else {
                Release::Retention
            },
        }
    }

    /// One of the namespace's `max_uploads` (as the running config says:
    /// calls admitted before a reload agree with those after), or
    /// RESOURCE_EXHAUSTED.
    fn upload_slot(&self, ns: &str) -> Result<Held, Error> {
        let max = self
            .config
            .load()
            .namespaces
            .get(ns)
            .and_then(|spec| spec.claim_check.as_ref())
            .map_or(0, |p| p.max_uploads);
        let semaphore = {
            let mut slot = self
                .uploads
                .entry(ns.to_string())
                .or_insert_with(|| (max, Arc::new(Semaphore::new(max))));
            // A reload changed the bound: uploads running keep their old
            // slots, new ones count against the new bound.
            if slot.0 != max {
                *slot = (max, Arc::new(Semaphore::new(max)));
            }
            slot.1.clone()
        };
        semaphore.try_acquire_owned().map_err(|_| {
            Error::new(
                ErrorKind::ResourceExhausted,
                "CLAIM_CHECK_UPLOADS_BUSY",
                format!(
                    "namespace `{ns}` already has its {max} uploads to the object store running \
                     (claim_check.max_uploads); retry when one ends"
                ),
            )
            .with("limit", "claim_check.max_uploads")
        })
    }

    /// A payload sent in pieces (PublishStream): held in memory up to the
    /// threshold, streamed to the store beyond it. Without a claim check,
    /// at most `inline_max` bytes are taken. A broken or oversized stream
    /// leaves nothing stored.
    pub async fn receive(
        &self,
        ns: &str,
        spec: &NamespaceSpec,
        first: Vec<u8>,
        mut rest: Pieces<'_>,
        inline_max: usize,
        release: Release,
    ) -> Result<Payload, Error> {
        let mut held = first;
        let Some(policy) = spec.claim_check.as_ref() else {
            while held.len() <= inline_max {
                match rest.next().await {
                    None => return Ok(Payload::Inline(held)),
                    Some(piece) => held.extend_from_slice(&piece?),
                }
            }
            return Err(inline_too_large(inline_max));
        };
        while held.len() <= policy.threshold {
            match rest.next().await {
                None => return Ok(Payload::Inline(held)),
                Some(piece) => held.extend_from_slice(&piece?),
            }
        }
        let store = self.store(&policy.store)?;
        let slot = self.upload_slot(ns)?;
        let key = Self::new_key(ns);
        let mut upload = store.upload(&key).await?;
        upload.hold(slot);
        let mut written = 0u64;
        let sent = async {
            let mut piece = held;
            loop {
                written += piece.len() as u64;
                if written > policy.max_object_bytes {
                    return Err(too_large(policy.max_object_bytes));
                }
                upload.write(&piece).await?;
                match rest.next().await {
                    None => return Ok(()),
                    Some(next) => piece = next?,
                }
            }
        }
        .await;
        match sent {
            Ok(()) => {
                upload.finish().await?;
                Ok(Payload::Stored(self.stored(policy, key, written, release)))
            }
            Err(e) => {
                upload.abort().await;
                Err(e)
            }
        }
    }

    /// Deletes what was stored for a publish or write that failed (see
    /// [`ClaimChecks::discard`]).
    pub async fn discard_failed<T>(&self, result: &Result<T, Error>, stored: Option<&Reference>) {
        if let (Err(e), Some(r)) = (result, stored) {
            self.discard(r, e).await;
        }
    }

    /// Deletes a stored payload whose message failed with `why` — unless
    /// the failure leaves it unknown whether the message went out after all
    /// (a timeout, a lost connection): then the payload stays for its
    /// retention, so no published message ever names a missing object.
    pub async fn discard(&self, reference: &Reference, why: &Error) {
        if ambiguous(why) {
            return;
        }
        self.figures.discarded.fetch_add(1, Ordering::Relaxed);
        self.delete(reference).await;
    }

    /// Deletes, soon and off the caller's path, stored payloads of writes
    /// that were rolled back (a transaction dropped without commit).
    pub fn discard_later(&self, references: Vec<Reference>) {
        self.discards.lock().extend(references);
        self.discarding.notify_one();
    }

    async fn discard_pending(&self) {
        let pending = std::mem::take(&mut *self.discards.lock());
        for r in pending {
            self.figures.discarded.fetch_add(1, Ordering::Relaxed);
            self.delete(&r).await;
        }
    }

    async fn delete(&self, reference: &Reference) -> bool {
        let Ok(store) = self.store(&reference.store) else {
            return false;
        };
        match store.delete(&reference.key).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "a claim-check object was not deleted; its retention will");
                false
            }
        }
    }

    /// The pieces a message delivered to namespace `ns` becomes: itself
    /// when it carries no reference; else its payload read back from the
    /// store, whole when it fits `chunk_size`, else in pieces. Only objects
    /// of `ns` are read (a reference names its namespace first). `track` (a
    /// Queue subscriber's session) remembers the delivery for deletion on
    /// acknowledgement.
    pub fn expand<M: Claimed>(
        self: &Arc<Self>,
        item: Result<M, Error>,
        ns: &str,
        chunk: usize,
        track: Option<&str>,
    ) -> Expanded<M> {
        let one = |item| Either::Left(futures::stream::once(futures::future::ready(item)));
        let mut message = match item {
            Ok(m) => m,
            Err(e) => return one(Err(e)),
        };
        let reference = match Reference::take_from(message.headers_mut()) {
            None => return one(Ok(message)),
            Some(Err(e)) => return one(Err(e)),
            Some(Ok(r)) if r.key.strip_prefix(ns).is_some_and(|k| k.starts_with('/')) => r,
            Some(Ok(r)) => {
                let e = Error::new(
                    ErrorKind::PermissionDenied,
                    "CLAIM_CHECK_FOREIGN",
                    format!(
                        "message `{}` names object `{}`, which is not namespace `{ns}`'s; it is \
                         not delivered (only the gateway writes claim checks)",
                        message.id(),
                        r.key
                    ),
                )
                .with("message_id", message.id());
                return one(Err(e));
            }
        };
        if let (Some(session), Release::Ack) = (track, reference.release) {
            self.track(session, message.id(), &reference);
        }
        let this = self.clone();
        futures::stream::once(async move { this.pieces(message, reference, chunk).await })
            .flatten()
            .boxed()
            .right_stream()
    }

    async fn pieces<M: Claimed>(
        self: Arc<Self>,
        message: M,
        reference: Reference,
        chunk: usize,
    ) -> BoxStream<'static, Result<M, Error>> {
        let opened = match self.store(&reference.store) {
            Ok(store) => store.read(&reference.key).await,
            Err(e) => Err(e),
        };
        let (size, bytes) = match opened {
            Ok(o) => o,
            Err(e) => {
                let e = e.with("message_id", message.id());
                return futures::stream::once(async { Err(e) }).boxed();
            }
        };
        if size != reference.size {
            let e = changed(message.id(), reference.size);
            return futures::stream::once(async { Err(e) }).boxed();
        }
        self.figures.fetched.fetch_add(1, Ordering::Relaxed);
        let count = size.div_ceil(chunk as u64).max(1);
        let Ok(count) = u32::try_from(count) else {
            return futures::stream::once(async {
                Err(Error::internal("a stored payload has too many pieces"))
            })
            .boxed();
        };
        struct State<M> {
            message: M,
            bytes: BoxStream<'static, Result<Bytes, Error>>,
            held: BytesMut,
            index: u32,
            done: bool,
        }
        let state = State {
            message,
            bytes,
            held: BytesMut::new(),
            index: 0,
            done: false,
        };
        let whole = count == 1;
        futures::stream::unfold(state, move |mut st| async move {
            if st.done || st.index >= count {
                return None;
            }
            // Fill one piece (the last may be shorter).
            let want = if st.index + 1 == count {
                (size - u64::from(st.index) * chunk as u64) as usize
            } else {
                chunk
            };
            while st.held.len() < want {
                match st.bytes.next().await {
                    Some(Ok(b)) => {
                        st.held.extend_from_slice(&b);
                    }
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                    None => break,
                }
            }
            if st.held.len() < want || (st.index + 1 == count && st.held.len() > want) {
                st.done = true;
                let e = changed(st.message.id(), size);
                return Some((Err(e), st));
            }
            let payload = st.held.split_to(want).to_vec();
            let mut out = st.message.piece(st.index == 0);
            let chunk = Chunk {
                index: st.index,
                count,
                total_size: size,
            };
            out.set_payload(payload, (!whole).then_some(chunk));
            st.index += 1;
            Some((Ok(out), st))
        })
        .boxed()
    }

    fn track(&self, session: &str, message_id: &str, reference: &Reference) {
        let key = (session.to_string(), message_id.to_string());
        if self.delivered.len() >= MAX_TRACKED && !self.delivered.contains_key(&key) {
            self.figures.untracked.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.delivered
            .insert(key, (reference.clone(), self.clock.now_ms()));
    }

    /// A Queue message of namespace `ns` was acknowledged: its stored
    /// payload, if this gateway delivered one to the session, is deleted —
    /// when the namespace's claim check (as it is now) says
    /// `delete_on_ack`.
    pub async fn acknowledged(&self, session: &str, ns: &str, message_id: &str) {
        let key = (session.to_string(), message_id.to_string());
        let Some((_, (reference, _))) = self.delivered.remove(&key) else {
            return;
        };
        let delete = self
            .config
            .load()
            .namespaces
            .get(ns)
            .and_then(|spec| spec.claim_check.as_ref())
            .is_some_and(|p| p.delete_on_ack);
        if delete && self.delete(&reference).await {
            self.figures.deleted_on_ack.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Deletes what outlived its namespace's retention, and forgets old
    /// deliveries.
    pub async fn sweep(&self) {
        let now = self.clock.now_ms();
        let keep = crate::clock::ms(TRACK_FOR);
        self.delivered
            .retain(|_, (_, at)| now.saturating_sub(*at) < keep);
        let config = self.config.load_full();
        for (ns, spec) in &config.namespaces {
            let Some(policy) = &spec.claim_check else {
                continue;
            };
            let Ok(store) = self.store(&policy.store) else {
                continue;
            };
            let before = SystemTime::now()
                .checked_sub(policy.retention)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let old = match store.older_than(ns, before).await {
                Ok(old) => old,
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "claim-check sweep could not list");
                    continue;
                }
            };
            for key in old {
                match store.delete(&key).await {
                    Ok(()) => {
                        self.figures
                            .deleted_by_retention
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claim-check sweep could not delete");
                    }
                }
            }
        }
    }

    /// Sweeps every `every` until [`ClaimChecks::stop`]; an upload dropped
    /// unfinished is aborted as soon as it is (its store tells).
    pub fn sweep_every(self: &Arc<Self>, every: Duration) {
        let this = Arc::downgrade(self);
        let stores: Vec<Arc<Blobs>> = self.stores.values().cloned().collect();
        if stores.is_empty() {
            return;
        }
        let discarding = self.discarding.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // A retention pass may take a while (listing, deleting); an
            // abandoned upload is aborted meanwhile, not after it.
            let mut sweeping: Option<BoxFuture<'static, ()>> = None;
            loop {
                let abandoned =
                    futures::future::select_all(stores.iter().map(|b| Box::pin(b.abandoned())));
                let idle = sweeping.is_none();
                let pass = async {
                    match sweeping.as_mut() {
                        Some(pass) => pass.await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = abandoned => {
                        for b in &stores {
                            b.clean_abandoned().await;
                        }
                    }
                    _ = discarding.notified() => {
                        let Some(this) = this.upgrade() else { return };
                        this.discard_pending().await;
                    }
                    _ = pass => sweeping = None,
                    _ = tick.tick(), if idle => {
                        let Some(this) = this.upgrade() else { return };
                        sweeping = Some(Box::pin(async move { this.sweep().await }));
                    }
                }
            }
        });
        if let Some(old) = self.sweeper.lock().replace(task) {
            old.abort();
        }
    }

    pub fn stop(&self) {
        if let Some(task) = self.sweeper.lock().take() {
            task.abort();
        }
    }

    /// How often to sweep for a config: a quarter of the shortest
    /// retention, between 1 second and 5 minutes (a minute while no
    /// namespace has a claim check: a reload may add one); never without
    /// object stores. Set at start.
    pub fn sweep_interval(config: &GatewayConfig) -> Option<Duration> {
        if config.object_stores.is_empty() {
            return None;
        }
        let shortest = config
            .namespaces
            .values()
            .filter_map(|ns| ns.claim_check.as_ref())
            .map(|p| p.retention / 4)
            .min()
            .unwrap_or(Duration::from_secs(60));
        Some(shortest.clamp(Duration::from_secs(1), Duration::from_secs(300)))
    }

    /// Deliveries remembered for deletion on acknowledgement.
    pub fn tracked(&self) -> usize {
        self.delivered.len()
    }
}

impl Drop for ClaimChecks {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a failure leaves it unknown if the write or publish happened
/// after all (a timeout, a lost connection, a cut-short call).
pub fn ambiguous(e: &Error) -> bool {
    matches!(
        e.kind,
        ErrorKind::Unavailable
            | ErrorKind::DeadlineExceeded
            | ErrorKind::Aborted
            | ErrorKind::Internal
    )
}

/// DATA_LOSS: a stored payload is not what its message names.
fn changed(message_id: &str, size: u64) -> Error {
    Error::new(
        ErrorKind::DataLoss,
        "CLAIM_CHECK_OBJECT_CHANGED",
        format!("the stored payload of message `{message_id}` is not the {size} bytes its message names"),
    )
    .with("message_id", message_id)
}

fn too_large(limit: u64) -> Error {
    Error::new(
        ErrorKind::ResourceExhausted,
        "PAYLOAD_TOO_LARGE",
        format!("the payload exceeds {limit} bytes (claim_check.max_object_bytes); nothing was published"),
    )
    .with("limit", limit.to_string())
}

fn inline_too_large(limit: usize) -> Error {
    Error::new(
        ErrorKind::ResourceExhausted,
        "PAYLOAD_TOO_LARGE",
        format!(
            "the payload exceeds {limit} bytes and this namespace has no claim_check to keep \
             larger ones; nothing was published"
        ),
    )
    .with("limit", limit.to_string())
}

/// Where a piece stands in its payload.
#[derive(Debug, Clone, Copy)]
pub struct Chunk {
    pub index: u32,
    pub count: u32,
    pub total_size: u64,
}

/// A delivered message type that can carry a claim check.
pub trait Claimed: Clone + Send + 'static {
    fn id(&self) -> &str;
    fn headers_mut(&mut self) -> &mut HashMap<String, String>;
    fn payload_mut(&mut self) -> &mut Vec<u8>;

    /// A copy to carry a piece (the message carried a reference, so no
    /// payload): with the headers when `first`, else its identity only.
    fn piece(&self, first: bool) -> Self {
        let mut piece = self.clone();
        if !first {
            piece.headers_mut().clear();
        }
        piece
    }

    fn set_payload(&mut self, payload: Vec<u8>, chunk: Option<Chunk>) {
        *self.payload_mut() = payload;
        if let Some(c) = chunk {
            let headers = self.headers_mut();
            headers.insert(CHUNK_HEADER.into(), format!("{}/{}", c.index, c.count));
            headers.insert(CHUNK_TOTAL_HEADER.into(), c.total_size.to_string());
        }
    }
}

/// Implements [`Claimed`] from a message type's id, headers and payload
/// fields.
macro_rules! claimed {
    ($t:ty, $id:ident, $headers:ident, $payload:ident) => {
        impl Claimed for $t {
            fn id(&self) -> &str {
                &self.$id
            }
            fn headers_mut(&mut self) -> &mut HashMap<String, String> {
                &mut self.$headers
            }
            fn payload_mut(&mut self) -> &mut Vec<u8> {
                &mut self.$payload
            }
        }
    };
}

claimed!(queue_pb::Message, message_id, headers, payload);
claimed!(pubsub_pb::Event, event_id, metadata, payload);
claimed!(transact_pb::MailboxMessage, message_id, metadata, message);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    fn claims(dir: &std::path::Path) -> Arc<ClaimChecks> {
        let yaml = format!(
            "object_stores:\n  files: {{ type: local, path: {} }}\nnamespaces:\n  ns:\n    \
             allowed_backends: []\n    allowed_patterns: []\n    claim_check: {{ store: files, \
             threshold: 10, chunk_size: 65536 }}\n",
            dir.display()
        );
        let config = GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("X", "x"); 0]).unwrap();
        let live: LiveConfig = Arc::new(arc_swap::ArcSwap::from_pointee(config.clone()));
        Arc::new(ClaimChecks::open(&config, live, Clock::new()).unwrap())
    }

    fn message(headers: HashMap<String, String>) -> queue_pb::Message {
        queue_pb::Message {
            message_id: "t/0/7".into(),
            headers,
            ..Default::default()
        }
    }

    async fn pieces_of(
        claims: &Arc<ClaimChecks>,
        ns: &str,
        m: queue_pb::Message,
    ) -> Vec<Result<queue_pb::Message, Error>> {
        claims.expand(Ok(m), ns, 65536, None).collect().await
    }

    #[tokio::test]
    async fn stored_payloads_come_back_in_exact_pieces_and_only_to_their_namespace() {
        let dir = std::env::temp_dir().join(format!("prism-claims-unit-{}", std::process::id()));
        let claims = claims(&dir);
        let config = claims.config.load_full();
        let spec = &config.namespaces["ns"];
        for (size, pieces) in [(11, 1), (65536, 1), (65537, 2), (3 * 65536, 3)] {
            let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let Payload::Stored(r) = claims
                .check_in("ns", spec, body.clone(), Release::Retention)
                .await
                .unwrap()
            else {
                panic!("{size} bytes are above the threshold");
            };
            let mut headers = HashMap::new();
            r.add_to(&mut headers);
            let got = pieces_of(&claims, "ns", message(headers.clone())).await;
            assert_eq!(got.len(), pieces, "{size} bytes");
            let mut joined = Vec::new();
            for (i, piece) in got.into_iter().enumerate() {
                let piece = piece.unwrap();
                assert_eq!(piece.message_id, "t/0/7");
                let at = piece.headers.get(CHUNK_HEADER).cloned();
                if pieces == 1 {
                    assert_eq!(at, None, "a payload that fits comes whole");
                } else {
                    assert_eq!(at, Some(format!("{i}/{pieces}")));
                }
                joined.extend(piece.payload);
            }
            assert!(joined == body, "{size} bytes come back byte for byte");

            // Another namespace's messages cannot name this object.
            let foreign = pieces_of(&claims, "other", message(headers.clone())).await;
            assert!(
                matches!(&foreign[..], [Err(e)] if e.reason == "CLAIM_CHECK_FOREIGN"),
                "{foreign:?}"
            );
            // Gone, the payload is a loss said out loud.
            claims.store("files").unwrap().delete(&r.key).await.unwrap();
            let lost = pieces_of(&claims, "ns", message(headers)).await;
            assert!(
                matches!(&lost[..], [Err(e)] if e.reason == "CLAIM_CHECK_OBJECT_MISSING"),
                "{lost:?}"
            );
        }
        let inline = claims
            .check_in("ns", spec, vec![1; 10], Release::Ack)
            .await
            .unwrap();
        assert!(matches!(inline, Payload::Inline(p) if p.len() == 10));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn references_round_trip_through_headers_and_clients_cannot_forge_them() {
        let r = Reference {
            store: "s3".into(),
            key: "orders/abc".into(),
            size: 5 << 20,
            release: Release::Ack,
        };
        let mut headers = HashMap::from([("k".to_string(), "v".to_string())]);
        r.add_to(&mut headers);
        assert!(check_reserved(headers.keys()).is_err());
        assert_eq!(Reference::take_from(&mut headers), Some(Ok(r)));
        assert_eq!(headers.len(), 1);
        assert!(check_reserved(headers.keys()).is_ok());
        assert_eq!(Reference::take_from(&mut headers), None);
        let mut bad = HashMap::from([(CLAIM_HEADER.to_string(), "nokey".to_string())]);
        let e = Reference::take_from(&mut bad).unwrap().unwrap_err();
        assert_eq!(e.reason, "CLAIM_CHECK_MALFORMED");
    }
}
