//! `prism.transact.v1.TransactService` (seed 002 §6): Write commits a data
//! row and a mailbox row in one database transaction (idempotent retries
//! replay the first response); Transaction streams Begin, writes and
//! Commit/Rollback over one open transaction whose lifecycle is a
//! TransactionActor; ReadMailbox streams mailbox rows in sequence order;
//! ProcessMailbox marks rows processed.
//!
//! Tables are the namespace's `transact.tables` on the session's backend;
//! columns come from the learned schema and values are always bound.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use prost::Message as _;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, Streaming};

use super::{
    claim_check::{self, ClaimChecks, Reference, Release},
    group_commit::GroupCommit,
};
use crate::{
    actors::{
        relay::RelayShared,
        session::NewChild,
        transaction::{Slot, TransactionShared, Transactions},
        Supervisors,
    },
    backends::{
        epoch_ms,
        relay::{self, RelayTarget},
        timestamp_ms,
        transact::{
            DataOp, Isolation, MailboxOp, MailboxQuery, MailboxRow, OpenTransaction,
            TransactOutbox, WriteMode, WriteOp, WriteOutcome,
        },
        Interface,
    },
    config::{Pattern, TransactPolicy},
    error::{Error, ErrorKind, Service},
    gate::{self, Gate, GateState, GatedStream, Kind},
    proto::transact::v1::{
        self as pb, data_write::WriteMode as PbMode, transact_request::Request as In,
        transact_response::Response as Out, transact_service_server::TransactService,
        transaction_options::IsolationLevel as PbIsolation,
    },
    session::Clock,
};

/// Most message ids one ProcessMailbox may name.
const MAX_PROCESS_IDS: usize = 1000;
/// Rows ReadMailbox fetches per round trip.
const MAILBOX_CHUNK: usize = 256;

struct Inner {
    gate: Gate<Arc<dyn TransactOutbox>>,
    transactions: Arc<Transactions>,
    supervisors: Arc<Supervisors>,
    clock: Clock,
    /// The running config, for `limits.transaction_begin_timeout`: how
    /// long a Transaction stream may wait for its BeginTransaction.
    config: crate::config::LiveConfig,
    /// Single Writes to one mailbox share transactions.
    groups: super::group_commit::GroupCommit,
    /// Mailbox messages above a namespace's threshold, kept in its object
    /// store.
    claims: Arc<ClaimChecks>,
}

#[derive(Clone)]
pub struct TransactApi {
    inner: Arc<Inner>,
}

type Call = gate::Call<Arc<dyn TransactOutbox>>;

gate::session_token_field!(
    pb::WriteRequest,
    pb::ReadMailboxRequest,
    pb::ProcessMailboxRequest,
);

impl Call {
    /// The namespace's Transact rules.
    fn transact(&self) -> &TransactPolicy {
        &self.policy().transact
    }
}

impl TransactApi {
    /// Applies one Write: with other Writes to its mailbox in one
    /// transaction when it can (group commit), else on its own.
    async fn apply(
        &self,
        call: &Call,
        op: WriteOp,
        o: &Options,
        idempotency: Option<(String, String)>,
    ) -> Result<pb::WriteResponse, Error> {
        if !GroupCommit::groups(o.isolation, &op) {
            return write_once(call, &op, o, idempotency).await;
        }
        let grouped = self
            .inner
            .groups
            .write(
                &call.handle,
                &call.backend.name,
                call.ns(),
                op,
                idempotency.clone(),
                call.transact().idempotency_window,
                o.timeout,
            )
            .await;
        match grouped {
            Ok(result) => result,
            Err(op) => write_once(call, &op, o, idempotency).await,
        }
    }

    pub fn new(
        gates: &GateState,
        transactions: Arc<Transactions>,
        supervisors: Arc<Supervisors>,
        config: crate::config::LiveConfig,
        claims: Arc<ClaimChecks>,
    ) -> Self {
        TransactApi {
            inner: Arc::new(Inner {
                clock: *gates.registry().clock(),
                gate: gates.gate(
                    Service::Transact,
                    Pattern::Transact,
                    Interface::TransactOutbox,
                    |b| b.transact.as_ref(),
                ),
                transactions,
                supervisors,
                config,
                groups: Default::default(),
                claims,
            }),
        }
    }
}

/// A request's transaction options, checked.
struct Options {
    isolation: Isolation,
    timeout: Duration,
    idempotency_key: Option<String>,
}

fn options(o: Option<&pb::TransactionOptions>, policy: &TransactPolicy) -> Result<Options, Error> {
    let Some(o) = o else {
        return Ok(Options {
            isolation: Isolation::Default,
            timeout: policy.default_timeout,
            idempotency_key: None,
        });
    };
    let isolation = match PbIsolation::try_from(o.isolation) {
        Ok(PbIsolation::Unspecified) => Isolation::Default,
        Ok(PbIsolation::ReadCommitted) => Isolation::ReadCommitted,
        Ok(PbIsolation::RepeatableRead) => Isolation::RepeatableRead,
        Ok(PbIsolation::Serializable) => Isolation::Serializable,
        Err(_) => {
            return Err(Error::invalid_argument(
                "INVALID_ISOLATION",
                format!("isolation {} is not a known level", o.isolation),
            ))
        }
    };
    let timeout = match o.timeout_ms {
        0 => policy.default_timeout,
        ms if ms < 0 => {
            return Err(Error::invalid_argument(
                "INVALID_TIMEOUT",
                "timeout_ms must not be negative (0 takes the namespace's default)",
            ))
        }
        ms => Duration::from_millis(ms as u64),
    };
    if timeout > policy.max_timeout {
        return Err(Error::invalid_argument(
            "INVALID_TIMEOUT",
            format!(
                "timeout_ms may be at most {} in this namespace",
                policy.max_timeout.as_millis()
            ),
        ));
    }
    let key = o.idempotency_key.clone().filter(|k| !k.is_empty());
    if o.idempotent && key.is_none() {
        return Err(Error::invalid_argument(
            "IDEMPOTENCY_KEY_REQUIRED",
            "an idempotent write needs an idempotency_key that stays the same across retries",
        ));
    }
    if key.as_ref().is_some_and(|k| k.len() > 256) {
        return Err(Error::invalid_argument(
            "INVALID_IDEMPOTENCY_KEY",
            "idempotency_key may be at most 256 bytes",
        ));
    }
    Ok(Options {
        isolation,
        timeout,
        idempotency_key: key,
    })
}

fn isolation_name(i: Isolation) -> &'static str {
    match i {
        Isolation::Default => "default",
        Isolation::ReadCommitted => "read_committed",
        Isolation::RepeatableRead => "repeatable_read",
        Isolation::Serializable => "serializable",
    }
}

/// The write a request asks for, checked against the namespace's tables.
fn write_op(call: &Call, w: &pb::WriteRequest) -> Result<WriteOp, Error> {
    if let Some(resource) = w
        .data
        .as_ref()
        .map(|d| d.table.as_str())
        .or(w.mailbox.as_ref().map(|m| m.mailbox_id.as_str()))
    {
        crate::call::note_resource(resource);
    }
    let options = &call.entry.config.options;
    let data = match &w.data {
        None => None,
        Some(d) => {
            options.allow_table(&d.table)?;
            let spec = call
                .transact()
                .tables
                .get(&d.table)
                .filter(|t| t.backend == call.backend.name)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        "TABLE_NOT_FOUND",
                        format!(
                            "this session's namespace allows no Transact writes to table `{}` on \
                             its backend; the namespace's `transact.tables` lists those it does",
                            d.table.chars().take(64).collect::<String>()
                        ),
                    )
                    .with("table", d.table.chars().take(64).collect::<String>())
                })?;
            let mode = match PbMode::try_from(d.mode) {
                Ok(PbMode::Insert) => WriteMode::Insert,
                Ok(PbMode::Update) => WriteMode::Update,
                Ok(PbMode::Upsert) => WriteMode::Upsert,
                Ok(PbMode::Delete) => WriteMode::Delete,
                Ok(PbMode::Unspecified) | Err(_) => {
                    return Err(Error::invalid_argument(
                        "INVALID_WRITE_MODE",
                        "data.mode must be INSERT, UPDATE, UPSERT or DELETE",
                    ))
                }
            };
            Some(DataOp {
                table: d.table.clone(),
                table_id: spec.id.clone(),
                id: d
                    .id_field
                    .clone()
                    .filter(|f| !f.is_empty())
                    .unwrap_or_else(|| spec.id.clone()),
                mode,
                record: d
                    .record
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            })
        }
    };
    let mailbox = match &w.mailbox {
        None => None,
        Some(m) => {
            if m.mailbox_id.is_empty() || m.mailbox_id.len() > 255 {
                return Err(Error::invalid_argument(
                    "INVALID_MAILBOX",
                    "mailbox.mailbox_id must be 1 to 255 bytes",
                ));
            }
            options.allow_mailbox(&m.mailbox_id)?;
            claim_check::check_reserved(m.metadata.keys())?;
            Some(MailboxOp {
                mailbox: m.mailbox_id.clone(),
                message: m.message.clone(),
                metadata: m
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                message_type: m.message_type.clone(),
                priority: m.priority,
            })
        }
    };
    if data.is_none() && mailbox.is_none() {
        return Err(Error::invalid_argument(
            "EMPTY_WRITE",
            "a write needs `data`, `mailbox` or both",
        ));
    }
    Ok(WriteOp { data, mailbox })
}

impl Inner {
    /// A checked write made ready to apply: its mailbox message stored when
    /// the namespace's claim check asks (the row then names it), and
    /// refused if a relay of its mailbox could never publish it. Returns
    /// the stored payload's reference, to delete if the write fails.
    async fn check_in(&self, call: &Call, op: &mut WriteOp) -> Result<Option<Reference>, Error> {
        let Some(m) = op.mailbox.as_mut() else {
            return Ok(None);
        };
        let relays = self.supervisors.relays();
        // A relay to a Kafka topic or NATS subject hands messages to readers
        // outside the gateway, which could not resolve a claim check: such
        // a mailbox keeps its messages whole (held to the relay's limit).
        let leaves_gateway = relays.iter().any(|r| {
            r.namespace == call.ns()
                && r.spec.backend == call.backend.name
                && r.spec.mailbox == m.mailbox
                && !matches!(r.spec.to, RelayTarget::Pubsub { .. })
        });
        if leaves_gateway {
            relayable(call, &relays, m)?;
            return Ok(None);
        }
        let message = std::mem::take(&mut m.message);
        let stored = self
            .claims
            .check_in(call.ns(), call.policy(), message, Release::Retention)
            .await?
            .attach(&mut m.message, &mut m.metadata);
        let relayed = relayable(call, &relays, m);
        self.claims.discard_failed(&relayed, stored.as_ref()).await;
        relayed.map(|()| stored)
    }
}

/// Refuses a mailbox message that a relay of its mailbox could never
/// publish (too large for the destination, metadata its headers cannot
/// carry): written, it would only be moved aside later.
fn relayable(call: &Call, relays: &[Arc<RelayShared>], op: &MailboxOp) -> Result<(), Error> {
    let mut headers = None;
    for r in relays.iter().filter(|r| {
        r.namespace == call.ns()
            && r.spec.backend == call.backend.name
            && r.spec.mailbox == op.mailbox
    }) {
        let headers = headers.get_or_insert_with(|| {
            relay::planned_headers(&op.mailbox, &op.metadata, op.message_type.as_deref())
        });
        r.check(&op.message, headers).map_err(|e| {
            Error::invalid_argument(
                "MAILBOX_MESSAGE_UNRELAYABLE",
                format!(
                    "mailbox `{}` is relayed by `{}` to {}, which could never take this message: \
                     {}; nothing was written",
                    op.mailbox,
                    r.name,
                    r.spec.to.describe(),
                    e.message
                ),
            )
            .with("relay", r.name.as_str())
        })?;
    }
    Ok(())
}

/// What an idempotency key stands for: the write's content, in a stable
/// order (protobuf maps are unordered).
fn fingerprint(op: &WriteOp) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    if let Some(d) = &op.data {
        field(b"data");
        field(d.table.as_bytes());
        field(d.id.as_bytes());
        field(&[d.mode as u8]);
        for (k, v) in &d.record {
            field(k.as_bytes());
            field(&v.encode_to_vec());
        }
    }
    if let Some(m) = &op.mailbox {
        field(b"mailbox");
        field(m.mailbox.as_bytes());
        field(&m.message);
        for (k, v) in &m.metadata {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        field(m.message_type.as_deref().unwrap_or("\u{0}").as_bytes());
        field(&m.priority.map_or(i64::MIN, i64::from).to_le_bytes());
    }
    hex::encode(h.finalize())
}

fn response(transaction_id: &str, committed: bool, outcome: WriteOutcome) -> pb::WriteResponse {
    pb::WriteResponse {
        transaction_id: transaction_id.to_string(),
        committed,
        data_result: Some(pb::DataWriteResult {
            rows_affected: outcome.rows_affected,
            generated_values: outcome.generated.into_iter().collect(),
        }),
        mailbox_result: outcome
            .mailbox
            .map(|(message_id, sequence)| pb::MailboxWriteResult {
                message_id,
                sequence,
            }),
        timestamp: Some(timestamp_ms(epoch_ms())),
    }
}

/// The response to a Write applied now.
pub(crate) fn applied(outcome: WriteOutcome) -> pb::WriteResponse {
    response(&new_transaction_id(), true, outcome)
}

/// The stored response of an earlier Write with the same idempotency key.
pub(crate) fn replayed(stored: &[u8]) -> Result<pb::WriteResponse, Error> {
    pb::WriteResponse::decode(stored)
        .map_err(|_| Error::internal("a stored idempotent response is unreadable"))
}

fn new_transaction_id() -> String {
    format!("tx-{}", hex::encode(rand::random::<[u8; 12]>()))
}

pub(crate) fn timed_out(timeout: Duration) -> Error {
    Error::new(
        ErrorKind::DeadlineExceeded,
        "TRANSACTION_TIMEOUT",
        format!(
            "the transaction did not finish within {} ms and was rolled back; retry, or raise \
             timeout_ms",
            timeout.as_millis()
        ),
    )
}

/// Write: begin, replay or apply, remember, commit. Everything before the
/// commit is bounded by the timeout; an error or the timeout drops the
/// transaction, which rolls it back.
/// `idempotency`: the request's key and what it stands for (the write as
/// the client sent it).
async fn write_once(
    call: &Call,
    op: &WriteOp,
    o: &Options,
    idempotency: Option<(String, String)>,
) -> Result<pb::WriteResponse, Error> {
    let window = call.transact().idempotency_window;
    let work = async {
        let mut tx = call
            .handle
            .begin(call.ns(), o.isolation, o.timeout, None)
            .await?;
        let (wrote, response) = apply_write(&mut *tx, op, idempotency.as_ref(), window).await?;
        if !wrote {
            tx.rollback().await?;
            return Ok((None, response));
        }
        Ok((Some(tx), response))
    };
    let (tx, response) = tokio::time::timeout(o.timeout, work)
        .await
        .map_err(|_| timed_out(o.timeout))??;
    if let Some(tx) = tx {
        tx.commit().await?;
    }
    Ok(response)
}

/// One Write in an open transaction: the stored response of an earlier
/// Write with the same idempotency key (and `false`: nothing written), or
/// the Write applied and its response remembered under the key.
pub(crate) async fn apply_write(
    tx: &mut dyn OpenTransaction,
    op: &WriteOp,
    idempotency: Option<&(String, String)>,
    window: Duration,
) -> Result<(bool, pb::WriteResponse), Error> {
    if let Some((key, fp)) = idempotency {
        if let Some(stored) = tx.replay(key, fp).await? {
            return replayed(&stored).map(|r| (false, r));
        }
    }
    let response = applied(tx.write(op).await?);
    if let Some((key, fp)) = idempotency {
        tx.remember(key, fp, &response.encode_to_vec(), window)
            .await?;
    }
    Ok((true, response))
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl TransactService for TransactApi {
    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let call = self.inner.gate.open(&request, Kind::Unary).await?;
        let req = request.into_inner();
        let result = async {
            let mut op = write_op(&call, &req)?;
            let o = options(req.options.as_ref(), call.transact())?;
            // The key stands for the write as sent, before a claim check
            // replaces its message by a reference.
            let idempotency = o.idempotency_key.clone().map(|key| (key, fingerprint(&op)));
            let stored = self.inner.check_in(&call, &mut op).await?;
            let result = self.apply(&call, op, &o, idempotency).await;
            self.inner
                .claims
                .discard_failed(&result, stored.as_ref())
                .await;
            result
        }
        .await;
        call.finish(result)
    }

    type TransactionStream = Boxed<pb::TransactResponse>;

    async fn transaction(
        &self,
        request: Request<Streaming<pb::TransactRequest>>,
    ) -> Result<Response<Self::TransactionStream>, Status> {
        let header = gate::session_token("", &request).to_string();
        let driver = Driver {
            api: self.inner.clone(),
            inbound: request.into_inner(),
            header,
            phase: Phase::AwaitBegin,
            session: None,
        };
        let stream = futures::stream::unfold(driver, |mut d| async move {
            let item = d.step().await?;
            if let (Some(entry), Ok(response)) = (&d.session, &item) {
                entry.record_sent(response.encoded_len());
            }
            Some((item, d))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type ReadMailboxStream = GatedStream<pb::MailboxMessage>;

    async fn read_mailbox(
        &self,
        request: Request<pb::ReadMailboxRequest>,
    ) -> Result<Response<Self::ReadMailboxStream>, Status> {
        let call = self.inner.gate.open(&request, Kind::Stream).await?;
        let req = request.into_inner();
        if req.mailbox_id.is_empty() {
            return Err(call.fail(Error::invalid_argument(
                "INVALID_MAILBOX",
                "mailbox_id is required",
            )));
        }
        if let Err(e) = call.entry.config.options.allow_mailbox(&req.mailbox_id) {
            return Err(call.fail(e));
        }
        let since = match req.since_sequence {
            None => 0,
            Some(n) if n >= 0 => n,
            Some(_) => {
                return Err(call.fail(Error::invalid_argument(
                    "INVALID_SEQUENCE",
                    "since_sequence must not be negative",
                )))
            }
        };
        let limit = match req.limit {
            None => usize::MAX,
            Some(n) if n > 0 => n as usize,
            Some(_) => {
                return Err(call.fail(Error::invalid_argument(
                    "INVALID_LIMIT",
                    "limit must be positive when set",
                )))
            }
        };
        let source = MailboxReader {
            outbox: call.handle.clone(),
            ns: call.ns().to_string(),
            query: MailboxQuery {
                mailbox: req.mailbox_id,
                after: since,
                limit: 0,
                unprocessed_only: req.unprocessed_only.unwrap_or(false),
                with_dead_letters: true,
            },
        };
        // A claim-checked message becomes its payload here, a piece at a
        // time as the client takes them.
        let (claims, chunk, ns) = (
            self.inner.claims.clone(),
            ClaimChecks::chunk_size(call.policy()),
            call.ns().to_string(),
        );
        let stream = super::chunked(source, limit, MAILBOX_CHUNK)
            .map(|r| r.map(mailbox_message))
            .flat_map(move |item| claims.expand(item, &ns, chunk, None));
        Ok(Response::new(call.stream(stream)))
    }

    async fn process_mailbox(
        &self,
        request: Request<pb::ProcessMailboxRequest>,
    ) -> Result<Response<pb::ProcessMailboxResponse>, Status> {
        let call = self.inner.gate.open(&request, Kind::Unary).await?;
        let req = request.into_inner();
        let result = async {
            if req.message_ids.len() > MAX_PROCESS_IDS {
                return Err(Error::invalid_argument(
                    "TOO_MANY_IDS",
                    format!("name at most {MAX_PROCESS_IDS} message ids per call"),
                ));
            }
            let mut ids = req.message_ids;
            ids.sort();
            ids.dedup();
            let mailbox = call.entry.config.options.mailbox.as_deref();
            let failed = call.handle.process(call.ns(), mailbox, &ids).await?;
            Ok(pb::ProcessMailboxResponse {
                processed_count: (ids.len() - failed.len()) as i32,
                failed_ids: failed,
            })
        }
        .await;
        call.finish(result)
    }
}

/// What ReadMailbox streams: a mailbox in sequence order, read a chunk at
/// a time (see [`super::chunked`]).
struct MailboxReader {
    outbox: Arc<dyn TransactOutbox>,
    ns: String,
    query: MailboxQuery,
}

#[tonic::async_trait]
impl super::Chunks for MailboxReader {
    type Item = MailboxRow;

    async fn next_chunk(&mut self, want: usize) -> Result<Vec<MailboxRow>, Error> {
        self.query.limit = want;
        let rows = self.outbox.read_mailbox(&self.ns, &self.query).await?;
        if let Some(last) = rows.last() {
            self.query.after = last.sequence;
        }
        Ok(rows)
    }
}

/// A stored row for ReadMailbox. A row a relay moved aside carries, in its
/// metadata, which relays gave up on it, after how many attempts and why
/// (`prism-dead-letter-*`; the wire contract has no field for it).
pub fn mailbox_message(row: MailboxRow) -> pb::MailboxMessage {
    let mut metadata: std::collections::HashMap<String, String> =
        row.metadata.into_iter().collect();
    if !row.dead_letters.is_empty() {
        let join = |f: &dyn Fn(&crate::backends::transact::DeadLetterNote) -> String| {
            row.dead_letters
                .iter()
                .map(f)
                .collect::<Vec<_>>()
                .join(", ")
        };
        metadata.insert(relay::DEAD_LETTER_RELAY.into(), join(&|n| n.relay.clone()));
        metadata.insert(
            relay::DEAD_LETTER_ATTEMPTS.into(),
            join(&|n| n.attempts.to_string()),
        );
        metadata.insert(relay::DEAD_LETTER_ERROR.into(), join(&|n| n.error.clone()));
    }
    pb::MailboxMessage {
        message_id: row.message_id,
        mailbox_id: row.mailbox,
        sequence: row.sequence,
        message: row.message,
        metadata,
        message_type: row.message_type,
        created_at: Some(timestamp_ms(row.created_ms)),
        processed: row.processed_ms.is_some(),
        processed_at: row.processed_ms.map(timestamp_ms),
    }
}

/// A streaming transaction while it is open.
struct Open {
    call: Call,
    tx: Option<Box<dyn OpenTransaction>>,
    shared: Arc<TransactionShared>,
    _slot: Slot,
    /// Mailbox messages its writes stored (claim check): deleted unless
    /// the transaction commits.
    stored: Vec<Reference>,
    claims: Arc<ClaimChecks>,
}

impl Drop for Open {
    fn drop(&mut self) {
        // Dropping `tx` without commit rolls the transaction back.
        self.shared.finish();
        if !self.stored.is_empty() {
            self.claims.discard_later(std::mem::take(&mut self.stored));
        }
    }
}

enum Phase {
    AwaitBegin,
    Open(Box<Open>),
    /// Committed or rolled back at the client's request: one more message
    /// is answered with an error.
    Finished,
    /// The session ended under an open transaction: after its rollback the
    /// stream ends with the session's end error.
    SessionEnded(Status),
    Closed,
}

/// One Transaction stream: reads the client's messages and answers each.
struct Driver {
    api: Arc<Inner>,
    inbound: Streaming<pb::TransactRequest>,
    header: String,
    phase: Phase,
    /// The session, once Begin admitted the stream: what it sends counts.
    session: Option<Arc<crate::session::SessionEntry>>,
}

fn out(r: Out) -> Option<Result<pb::TransactResponse, Status>> {
    Some(Ok(pb::TransactResponse { response: Some(r) }))
}

fn error_message(e: &Error) -> Out {
    Out::Error(pb::TransactionError {
        code: crate::error::code_name(e.kind.code()).to_string(),
        message: format!("{} ({})", e.message, e.reason),
    })
}

fn protocol(reason: &'static str, message: &str) -> Error {
    Error::new(ErrorKind::FailedPrecondition, reason, message)
}

impl Driver {
    /// The next response, or `None` to end the stream.
    async fn step(&mut self) -> Option<Result<pb::TransactResponse, Status>> {
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Closed => None,
            Phase::SessionEnded(status) => Some(Err(status)),
            Phase::Finished => match self.inbound.next().await {
                Some(Ok(_)) => out(error_message(&protocol(
                    "TRANSACTION_ENDED",
                    "this stream's transaction has ended; open a new Transaction stream",
                ))),
                _ => None,
            },
            Phase::AwaitBegin => {
                let begin_timeout = self.api.config.load().limits.transaction_begin_timeout;
                match tokio::time::timeout(begin_timeout, self.inbound.next()).await {
                    Ok(Some(Ok(pb::TransactRequest {
                        request: Some(In::Begin(begin)),
                    }))) => match self.begin(begin).await {
                        Ok((open, started)) => {
                            self.phase = Phase::Open(Box::new(open));
                            out(started)
                        }
                        Err(e) => out(error_message(&e)),
                    },
                    Ok(Some(Ok(_))) => out(error_message(&protocol(
                        "BEGIN_FIRST",
                        "a Transaction stream starts with a BeginTransaction message",
                    ))),
                    Ok(_) => None,
                    // A stream that never begins holds nothing for long.
                    Err(_) => Some(Err(Error::new(
                        ErrorKind::DeadlineExceeded,
                        "BEGIN_TIMEOUT",
                        format!(
                            "no BeginTransaction within {}; send it first",
                            humantime::format_duration(begin_timeout)
                        ),
                    )
                    .with("limit", "limits.transaction_begin_timeout")
                    .to_status(Service::Transact))),
                }
            }
            Phase::Open(mut open) => {
                let kill = open.shared.kill.clone();
                let next = tokio::select! {
                    biased;
                    _ = kill.clone().fired() => None,
                    next = self.inbound.next() => Some(next),
                };
                let Some(next) = next else {
                    return self.aborted(open).await;
                };
                match next {
                    Some(Ok(pb::TransactRequest {
                        request: Some(In::Write(w)),
                    })) => {
                        let result = tokio::select! {
                            biased;
                            _ = kill.fired() => None,
                            r = write_in(&self.api, &mut open, &w) => Some(r),
                        };
                        match result {
                            None => self.aborted(open).await,
                            Some(Ok(response)) => {
                                self.phase = Phase::Open(open);
                                out(Out::WriteResult(response))
                            }
                            Some(Err(e)) => {
                                if let Some(tx) = open.tx.take() {
                                    let _ = tx.rollback().await;
                                }
                                out(error_message(&e))
                            }
                        }
                    }
                    Some(Ok(pb::TransactRequest {
                        request: Some(In::Commit(_)),
                    })) => {
                        let writes = open
                            .shared
                            .writes
                            .load(std::sync::atomic::Ordering::Acquire);
                        let tx = open.tx.take()?;
                        let committed = tx.commit().await;
                        // Committed, or perhaps committed: the rows may name
                        // their stored messages, which stay.
                        if committed.as_ref().is_ok()
                            || committed.as_ref().is_err_and(claim_check::ambiguous)
                        {
                            open.stored.clear();
                        }
                        match committed {
                            Ok(()) => {
                                self.phase = Phase::Finished;
                                out(Out::Committed(pb::TransactionCommitted {
                                    success: true,
                                    write_count: writes.min(i32::MAX as u64) as i32,
                                }))
                            }
                            Err(e) => out(error_message(&e)),
                        }
                    }
                    Some(Ok(pb::TransactRequest {
                        request: Some(In::Rollback(r)),
                    })) => {
                        let tx = open.tx.take()?;
                        match tx.rollback().await {
                            Ok(()) => {
                                self.phase = Phase::Finished;
                                out(Out::RolledBack(pb::TransactionRolledBack {
                                    reason: r.reason,
                                }))
                            }
                            Err(e) => out(error_message(&e)),
                        }
                    }
                    Some(Ok(_)) => {
                        drop(open);
                        out(error_message(&protocol(
                            "ALREADY_BEGUN",
                            "this stream's transaction has begun; send writes, then Commit or \
                             Rollback (the transaction was rolled back)",
                        )))
                    }
                    // The client went away, or closed its side without
                    // committing: roll back.
                    None => {
                        let tx = open.tx.take()?;
                        let _ = tx.rollback().await;
                        out(Out::RolledBack(pb::TransactionRolledBack {
                            reason: "the client ended the stream before committing".into(),
                        }))
                    }
                    Some(Err(_)) => None,
                }
            }
        }
    }

    /// The actor fired the kill switch: roll back and say why.
    async fn aborted(
        &mut self,
        mut open: Box<Open>,
    ) -> Option<Result<pb::TransactResponse, Status>> {
        let reason = open
            .shared
            .abort_reason()
            .unwrap_or_else(|| "the gateway ended the transaction".into());
        if let Some(tx) = open.tx.take() {
            // A write cut short leaves the connection mid-statement; drop
            // it rather than wait (the pool discards or rolls it back).
            drop(tx);
        }
        if let Some(ended) = open.call.ended() {
            self.phase = Phase::SessionEnded(ended);
        }
        out(Out::RolledBack(pb::TransactionRolledBack { reason }))
    }

    async fn begin(&mut self, begin: pb::BeginTransaction) -> Result<(Open, Out), Error> {
        let token = if begin.session_token.is_empty() {
            self.header.clone()
        } else {
            begin.session_token.clone()
        };
        let call = self
            .api
            .gate
            .admit(&token, Kind::Stream, begin.encoded_len())
            .await?;
        self.session = Some(call.entry.clone());
        let o = options(begin.options.as_ref(), call.transact())?;
        if o.idempotency_key.is_some() {
            return Err(Error::invalid_argument(
                "IDEMPOTENCY_NOT_STREAMED",
                "idempotency keys apply to Write; a streaming transaction is retried by running \
                 it again",
            ));
        }
        let slot = self.api.transactions.reserve(
            &call.entry,
            call.transact().max_open_per_session,
            call.transact().max_open_per_namespace,
        )?;
        call.entry.record_request(begin.encoded_len(), 0);
        let id = new_transaction_id();
        let shared = Arc::new(TransactionShared::new(
            id.clone(),
            call.entry.clone(),
            call.backend.name.clone(),
            isolation_name(o.isolation),
            o.timeout,
            self.api.clock,
        ));
        // The actor first: no database transaction is held while its
        // session's actor is asked; a failure ends the actor's watch.
        let started = self
            .api
            .supervisors
            .start_child(&call.entry, NewChild::Transaction(shared.clone()))
            .await;
        if let Err(e) = started {
            shared.finish();
            return Err(e);
        }
        let tx = tokio::time::timeout(
            o.timeout,
            call.handle.begin(call.ns(), o.isolation, o.timeout, None),
        )
        .await
        .map_err(|_| timed_out(o.timeout));
        let tx = match tx.and_then(|r| r) {
            Ok(tx) => tx,
            Err(e) => {
                shared.finish();
                return Err(e);
            }
        };
        // Dropping `open` rolls the transaction back and ends the actor.
        let open = Open {
            call,
            tx: Some(tx),
            shared,
            _slot: slot,
            stored: Vec::new(),
            claims: self.api.claims.clone(),
        };
        let started = Out::Started(pb::TransactionStarted {
            transaction_id: id,
            started_at: Some(timestamp_ms(epoch_ms())),
        });
        Ok((open, started))
    }
}

/// One write inside a streaming transaction.
async fn write_in(
    api: &Inner,
    open: &mut Open,
    w: &pb::WriteRequest,
) -> Result<pb::WriteResponse, Error> {
    if let Some(ended) = open.call.entry.ended_error() {
        return Err(ended);
    }
    // A write may only name the stream's session; naming it counts as the
    // session's activity (and finds it expired if it is).
    let same_session = !w.session_token.is_empty()
        && api
            .gate
            .registry()
            .authorize(&w.session_token)
            .await
            .is_ok_and(|e| e.id == open.call.entry.id);
    if !w.session_token.is_empty() && !same_session {
        return Err(Error::invalid_argument(
            "SESSION_MISMATCH",
            "a write in a Transaction stream belongs to the session that began it",
        ));
    }
    if w.options.is_some() {
        return Err(Error::invalid_argument(
            "OPTIONS_AT_BEGIN",
            "a streaming transaction takes its options at BeginTransaction, not per write",
        ));
    }
    open.call.entry.record_request(w.encoded_len(), 0);
    let mut op = write_op(&open.call, w)?;
    let stored = api.check_in(&open.call, &mut op).await?;
    let tx = open
        .tx
        .as_mut()
        .ok_or_else(|| Error::internal("the transaction is no longer open"))?;
    let outcome = tx.write(&op).await;
    api.claims.discard_failed(&outcome, stored.as_ref()).await;
    let outcome = outcome?;
    open.stored.extend(stored);
    open.shared
        .writes
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    Ok(response(&open.shared.id, false, outcome))
}
