//! Transact: a row change and an outbox message committed together.
//! [`Transact::write`] sends one [`Change`] as one transaction, with an
//! idempotency key made once per write so its retries apply it once;
//! [`Transact::begin`] opens a transaction over the bidirectional stream
//! for several changes, committed or rolled back as one (dropped
//! unfinished, it rolls back). Also the mailbox: read and mark processed.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::{channel::mpsc, SinkExt, Stream};
use prism_proto::transact::v1::{
    self as pb, data_write::WriteMode, transact_request::Request as In,
    transact_response::Response as Out, transact_service_client::TransactServiceClient,
    transaction_options::IsolationLevel,
};
use prost_types::Value;
use tonic::{transport::Channel, Code, Streaming};

use crate::{
    error::{Error, Result, RpcError},
    idempotency,
    pieces::{is_partial, joined},
    resume::{resuming, Opening, Resumable},
    retry::Resend,
    session::Session,
};

pub use pb::{MailboxMessage, WriteResponse};

/// The Transact API of a session: [`Session::transact`].
#[derive(Debug, Clone)]
pub struct Transact {
    session: Session,
    stub: TransactServiceClient<Channel>,
}

/// One row change and, optionally, the outbox message committed with it.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a change does nothing until written"]
pub struct Change {
    data: pb::DataWrite,
    mailbox: Option<pb::MailboxWrite>,
}

impl Change {
    fn new(table: &str, mode: WriteMode) -> Change {
        Change {
            data: pb::DataWrite {
                table: table.to_string(),
                record: HashMap::new(),
                mode: mode as i32,
                id_field: None,
            },
            mailbox: None,
        }
    }

    /// Inserts a row into `table`.
    pub fn insert(table: &str) -> Change {
        Self::new(table, WriteMode::Insert)
    }

    /// Updates the row of `table` whose id the record carries.
    pub fn update(table: &str) -> Change {
        Self::new(table, WriteMode::Update)
    }

    /// Inserts the row, or updates it when its id exists.
    pub fn upsert(table: &str) -> Change {
        Self::new(table, WriteMode::Upsert)
    }

    /// Deletes the row of `table` whose id the record carries.
    pub fn delete(table: &str) -> Change {
        Self::new(table, WriteMode::Delete)
    }

    /// Sets a column of the record.
    pub fn field(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.data.record.insert(name.to_string(), value.into());
        self
    }

    /// The column that identifies the row (default: the table's id).
    pub fn id_field(mut self, name: &str) -> Self {
        self.data.id_field = Some(name.to_string());
        self
    }

    /// Commits `message` to `mailbox` with the change: the relay delivers
    /// it once the transaction commits, never if it does not.
    pub fn message(mut self, mailbox: &str, message: impl Into<Vec<u8>>) -> Self {
        self.mailbox = Some(pb::MailboxWrite {
            mailbox_id: mailbox.to_string(),
            message: message.into(),
            metadata: HashMap::new(),
            message_type: None,
            priority: None,
        });
        self
    }

    /// Adds metadata to the message (after [`Change::message`]).
    pub fn message_metadata(mut self, key: &str, value: &str) -> Self {
        if let Some(m) = self.mailbox.as_mut() {
            m.metadata.insert(key.to_string(), value.to_string());
        }
        self
    }

    /// Names the message's type (after [`Change::message`]).
    pub fn message_type(mut self, kind: &str) -> Self {
        if let Some(m) = self.mailbox.as_mut() {
            m.message_type = Some(kind.to_string());
        }
        self
    }

    fn request(self, options: Option<pb::TransactionOptions>) -> pb::WriteRequest {
        pb::WriteRequest {
            session_token: String::new(),
            data: Some(self.data),
            mailbox: self.mailbox,
            options,
        }
    }
}

/// How a transaction runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The isolation level (default: the backend's).
    pub isolation: Option<Isolation>,
    /// How long the transaction may stay open (default, or zero: the
    /// namespace's).
    pub timeout: Option<Duration>,
}

/// Transaction isolation levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Each statement sees what was committed before it.
    ReadCommitted,
    /// Every statement sees the snapshot the first one saw.
    RepeatableRead,
    /// As if the transactions ran one at a time.
    Serializable,
}

impl Options {
    fn wire(self, idempotency_key: Option<String>) -> Result<pb::TransactionOptions> {
        let timeout_ms = match self.timeout {
            None => 0,
            // Rounded up: under a millisecond is not "the default" (0).
            Some(d) => {
                i32::try_from(d.as_millis().max(u128::from(!d.is_zero()))).map_err(|_| {
                    Error::InvalidInput(format!("transaction timeout {d:?} is too long"))
                })?
            }
        };
        Ok(pb::TransactionOptions {
            isolation: match self.isolation {
                None => IsolationLevel::Unspecified,
                Some(Isolation::ReadCommitted) => IsolationLevel::ReadCommitted,
                Some(Isolation::RepeatableRead) => IsolationLevel::RepeatableRead,
                Some(Isolation::Serializable) => IsolationLevel::Serializable,
            } as i32,
            timeout_ms,
            idempotent: idempotency_key.is_some(),
            idempotency_key,
        })
    }
}

impl Session {
    /// The Transact API over this session.
    pub fn transact(&self) -> Transact {
        Transact {
            stub: TransactServiceClient::new(self.shared().client.channel.clone()),
            session: self.clone(),
        }
    }
}

impl Transact {
    /// Commits `change` (and its message) as one transaction. Retried
    /// safely: the write carries an idempotency key, so a retry returns the
    /// first outcome instead of writing twice.
    pub async fn write(&self, change: Change) -> Result<WriteResponse> {
        self.write_with(change, Options::default()).await
    }

    /// [`Transact::write`] with options.
    pub async fn write_with(&self, change: Change, options: Options) -> Result<WriteResponse> {
        let options = options.wire(Some(idempotency::new_id()))?;
        let request = change.request(Some(options));
        unary!(self, Resend::Safe, write, request)
    }

    /// Opens a transaction for several changes. Opening is retried; the
    /// changes in it are not (the gateway cannot deduplicate them), so a
    /// failed transaction is the caller's to run again.
    pub async fn begin(&self) -> Result<Transaction> {
        self.begin_with(Options::default()).await
    }

    /// [`Transact::begin`] with options.
    pub async fn begin_with(&self, options: Options) -> Result<Transaction> {
        let options = options.wire(None)?;
        let shared = self.session.shared();
        shared
            .call(Resend::Safe, |token| {
                let (mut to_gateway, requests) = mpsc::channel(4);
                let request = shared.stream_request(&token, requests);
                let mut stub = self.stub.clone();
                let begin = pb::TransactRequest {
                    request: Some(In::Begin(pb::BeginTransaction {
                        session_token: String::new(),
                        options: Some(options.clone()),
                    })),
                };
                async move {
                    to_gateway
                        .send(begin)
                        .await
                        .map_err(|_| tonic::Status::cancelled("transaction stream closed"))?;
                    let mut responses = stub.transaction(request).await?.into_inner();
                    let started = match next(&mut responses).await.map_err(Failed::status)? {
                        Out::Started(s) => s,
                        other => return Err(unexpected(&other)),
                    };
                    Ok(tonic::Response::new(Transaction {
                        id: started.transaction_id,
                        to_gateway,
                        responses,
                    }))
                }
            })
            .await
    }

    /// The messages of `mailbox`, oldest first, after `since_sequence`
    /// (all when `None`); `unprocessed_only` skips those marked processed.
    pub fn read_mailbox(
        &self,
        mailbox: &str,
        since_sequence: Option<i64>,
        unprocessed_only: bool,
    ) -> impl Stream<Item = Result<MailboxMessage>> + Send + 'static {
        let position = Sequence {
            stub: self.stub.clone(),
            mailbox: mailbox.to_string(),
            after: since_sequence,
            unprocessed_only,
        };
        joined(resuming(self.session.clone(), position))
    }

    /// Marks mailbox messages processed; returns the ids that could not be.
    pub async fn process_mailbox(
        &self,
        message_ids: impl IntoIterator<Item = String>,
    ) -> Result<Vec<String>> {
        let request = pb::ProcessMailboxRequest {
            session_token: String::new(),
            message_ids: message_ids.into_iter().collect(),
        };
        let processed = unary!(self, Resend::Safe, process_mailbox, request)?;
        Ok(processed.failed_ids)
    }
}

/// An open transaction on its stream. Dropped before [`commit`] or
/// [`rollback`], it rolls back (the gateway sees the stream end).
///
/// [`commit`]: Transaction::commit
/// [`rollback`]: Transaction::rollback
#[derive(Debug)]
#[must_use = "a transaction rolls back unless committed"]
pub struct Transaction {
    id: String,
    to_gateway: mpsc::Sender<pb::TransactRequest>,
    responses: Streaming<pb::TransactResponse>,
}

impl Transaction {
    /// The gateway's id of the transaction.
    pub fn id(&self) -> &str {
        &self.id
    }

    async fn exchange(&mut self, request: In) -> Result<Out, Failed> {
        self.to_gateway
            .send(pb::TransactRequest {
                request: Some(request),
            })
            .await
            // Never sent: the stream had already ended.
            .map_err(|_| Failed::Answered(tonic::Status::aborted(ENDED)))?;
        next(&mut self.responses).await
    }

    /// Applies `change` inside the transaction. An error rolls the whole
    /// transaction back.
    pub async fn write(&mut self, change: Change) -> Result<WriteResponse> {
        match self.exchange(In::Write(change.request(None))).await? {
            Out::WriteResult(w) => Ok(w),
            other => Err(not_open(&other)),
        }
    }

    /// Commits every change; returns how many there were. When the answer
    /// is lost (the stream or the gateway failed after the commit was
    /// sent), fails with [`Error::OutcomeUnknown`]: the transaction may
    /// have committed.
    pub async fn commit(mut self) -> Result<i32> {
        match self.exchange(In::Commit(pb::CommitTransaction {})).await {
            Ok(Out::Committed(c)) => Ok(c.write_count),
            Ok(other) => Err(not_open(&other)),
            Err(Failed::Lost(status)) => Err(Error::OutcomeUnknown(Box::new(
                RpcError::from_status(&status),
            ))),
            Err(answered) => Err(answered.into()),
        }
    }

    /// Rolls every change back.
    pub async fn rollback(mut self, reason: &str) -> Result<()> {
        let rollback = In::Rollback(pb::RollbackTransaction {
            reason: reason.to_string(),
        });
        match self.exchange(rollback).await? {
            Out::RolledBack(_) => Ok(()),
            other => Err(not_open(&other)),
        }
    }
}

const ENDED: &str = "the transaction has ended; open a new one";

/// A response that is not the answer asked for: the gateway rolled the
/// transaction back on its own (its timeout, the session ending), or
/// something unexpected.
fn not_open(response: &Out) -> Error {
    match response {
        Out::RolledBack(r) => RpcError::local(
            Code::Aborted,
            format!("the gateway rolled the transaction back: {}", r.reason),
        )
        .into(),
        other => unexpected(other).into(),
    }
}

/// Why a transaction stream gave no response: the gateway answered with
/// an error (the outcome is known), or the stream failed (it is not).
enum Failed {
    Answered(tonic::Status),
    Lost(tonic::Status),
}

impl Failed {
    fn status(self) -> tonic::Status {
        match self {
            Failed::Answered(s) | Failed::Lost(s) => s,
        }
    }
}

impl From<Failed> for Error {
    fn from(f: Failed) -> Self {
        f.status().into()
    }
}

/// The next response of a transaction stream; a TransactionError becomes
/// the status it names, and a stream that ends says so.
async fn next(responses: &mut Streaming<pb::TransactResponse>) -> Result<Out, Failed> {
    match responses.message().await {
        Err(status) => Err(Failed::Lost(status)),
        Ok(None) => Err(Failed::Lost(tonic::Status::aborted(
            "the gateway ended the transaction stream",
        ))),
        Ok(Some(pb::TransactResponse {
            response: Some(Out::Error(e)),
        })) => Err(Failed::Answered(in_band(&e))),
        Ok(Some(pb::TransactResponse { response: Some(r) })) => Ok(r),
        Ok(Some(_)) => Err(Failed::Answered(tonic::Status::internal(
            "an empty TransactResponse",
        ))),
    }
}

/// A TransactionError (`code`: the gRPC code's name; `message`: "text
/// (REASON)") as the status it stands for, with its reason as ErrorInfo.
fn in_band(e: &pb::TransactionError) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let code = CODES
        .iter()
        .find(|(name, _)| *name == e.code)
        .map_or(Code::Unknown, |(_, c)| *c);
    let (message, reason) = match e.message.rsplit_once(" (") {
        Some((text, reason)) if reason.ends_with(')') => {
            (text.to_string(), reason.trim_end_matches(')').to_string())
        }
        _ => (e.message.clone(), String::new()),
    };
    if reason.is_empty() {
        return tonic::Status::new(code, message);
    }
    let details = ErrorDetails::with_error_info(reason, "prism.transact.v1", HashMap::new());
    tonic::Status::with_error_details(code, message, details)
}

const CODES: [(&str, Code); 16] = [
    ("CANCELLED", Code::Cancelled),
    ("UNKNOWN", Code::Unknown),
    ("INVALID_ARGUMENT", Code::InvalidArgument),
    ("DEADLINE_EXCEEDED", Code::DeadlineExceeded),
    ("NOT_FOUND", Code::NotFound),
    ("ALREADY_EXISTS", Code::AlreadyExists),
    ("PERMISSION_DENIED", Code::PermissionDenied),
    ("RESOURCE_EXHAUSTED", Code::ResourceExhausted),
    ("FAILED_PRECONDITION", Code::FailedPrecondition),
    ("ABORTED", Code::Aborted),
    ("OUT_OF_RANGE", Code::OutOfRange),
    ("UNIMPLEMENTED", Code::Unimplemented),
    ("INTERNAL", Code::Internal),
    ("UNAVAILABLE", Code::Unavailable),
    ("DATA_LOSS", Code::DataLoss),
    ("UNAUTHENTICATED", Code::Unauthenticated),
];

fn unexpected(response: &Out) -> tonic::Status {
    tonic::Status::internal(format!("unexpected transaction response: {response:?}"))
}

/// A mailbox read's position: the last sequence received.
#[derive(Debug, Clone)]
struct Sequence {
    stub: TransactServiceClient<Channel>,
    mailbox: String,
    after: Option<i64>,
    unprocessed_only: bool,
}

impl Resumable for Sequence {
    type Item = MailboxMessage;

    fn open(&self, session: &Session, token: Arc<str>) -> Opening<MailboxMessage> {
        let request = session.shared().stream_request(
            &token,
            pb::ReadMailboxRequest {
                session_token: String::new(),
                mailbox_id: self.mailbox.clone(),
                since_sequence: self.after,
                limit: None,
                unprocessed_only: Some(self.unprocessed_only),
            },
        );
        let mut stub = self.stub.clone();
        Box::pin(async move { stub.read_mailbox(request).await })
    }

    fn seen(&mut self, message: &MailboxMessage) {
        // Past a message only at its last piece: a resumed stream reads an
        // interrupted one again from its first.
        if !is_partial(&message.metadata) {
            self.after = Some(message.sequence);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    #[test]
    fn in_band_errors_become_statuses_with_their_reason() {
        let status = in_band(&pb::TransactionError {
            code: "FAILED_PRECONDITION".into(),
            message: "row 7 does not exist (ROW_NOT_FOUND)".into(),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "row 7 does not exist");
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "ROW_NOT_FOUND"
        );
        let bare = in_band(&pb::TransactionError {
            code: "NOPE".into(),
            message: "odd".into(),
        });
        assert_eq!((bare.code(), bare.message()), (Code::Unknown, "odd"));
    }
}
