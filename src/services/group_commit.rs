//! Group commit for Transact Writes. Writes to one mailbox are serialized by
//! its sequence counter row, which a writing transaction holds until it
//! commits: one commit (one fsync) per Write bounded a mailbox at about a
//! thousand Writes a second. Here Writes to the same mailbox that arrive
//! while one group commits join the next group: one database transaction,
//! a savepoint per Write (a Write that fails is undone alone and gets its
//! own error), the counter taken once, one commit for all. A lone Write is
//! a group of one; the group grows with the load.
//!
//! Each group runs in a task of its mailbox (backend, namespace, mailbox),
//! which ends after it has been idle a while; there are at most
//! [`MAX_GROUPS`] at once, past which Writes commit on their own. Only
//! single Writes at the default or read-committed isolation are grouped.
//! A Write whose deadline passed while it waited is answered
//! DEADLINE_EXCEEDED without being applied; once applied, its caller waits
//! for the group's commit (bounded by the group's latest deadline), so an
//! answer never says "failed" for a Write that committed, or the reverse.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use dashmap::DashMap;
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use crate::{
    backends::transact::{Isolation, OpenTransaction, TransactOutbox, WriteOp},
    error::Error,
    proto::transact::v1 as pb,
};

/// Writes in one group, at most. Each Write is a subtransaction; Postgres
/// keeps 64 of a transaction's subtransaction ids in shared memory and past
/// that every snapshot taken meanwhile (anyone's) looks them up on disk.
const MAX_GROUP: usize = 64;

/// Mailboxes with a group task at once, at most.
pub const MAX_GROUPS: usize = 1024;

/// Writes waiting for a mailbox's next group, at most (then callers wait).
const QUEUE: usize = 1024;

/// A Write of a group that waits longer than this for a row lock fails
/// alone (`lock_timeout` on Postgres) instead of holding the group.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// A mailbox's task ends after this long without a Write.
const IDLE: Duration = Duration::from_secs(10);

/// One Write waiting for its group.
pub struct Pending {
    pub op: WriteOp,
    /// The idempotency key and the Write's fingerprint.
    pub idempotency: Option<(String, String)>,
    pub window: Duration,
    pub deadline: Instant,
    reply: oneshot::Sender<Result<pb::WriteResponse, Error>>,
}

type Key = (String, String, String);

/// The group tasks of one TransactService.
#[derive(Default)]
pub struct GroupCommit {
    groups: Arc<DashMap<Key, mpsc::Sender<Pending>>>,
}

impl GroupCommit {
    /// Whether a Write with these options may join a group.
    /// (The group's transaction runs at the server's default isolation,
    /// so only Writes that asked for nothing else join.)
    pub fn groups(isolation: Isolation, op: &WriteOp) -> bool {
        op.mailbox.is_some() && isolation == Isolation::Default
    }

    /// Applies `op` in its mailbox's next group. `Err(op)` when it cannot
    /// be grouped now (too many mailboxes have groups, or the mailbox's task
    /// just ended): the caller commits it on its own.
    #[allow(clippy::too_many_arguments)]
    pub async fn write(
        &self,
        outbox: &Arc<dyn TransactOutbox>,
        backend: &str,
        ns: &str,
        op: WriteOp,
        idempotency: Option<(String, String)>,
        window: Duration,
        timeout: Duration,
    ) -> Result<Result<pb::WriteResponse, Error>, WriteOp> {
        let Some(mailbox) = op.mailbox.as_ref().map(|m| m.mailbox.clone()) else {
            return Err(op);
        };
        let key = (backend.to_string(), ns.to_string(), mailbox);
        let sender = match self.groups.get(&key) {
            Some(s) => s.clone(),
            None => {
                if self.groups.len() >= MAX_GROUPS {
                    return Err(op);
                }
                self.groups
                    .entry(key.clone())
                    .or_insert_with(|| self.spawn(key.clone(), outbox.clone(), timeout))
                    .clone()
            }
        };
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            op,
            idempotency,
            window,
            deadline: Instant::now() + timeout,
            reply,
        };
        // A full queue waits (backpressure); a closed one means the task
        // ended as we came: commit alone.
        // Bounded like a lone Write's wait for a connection.
        let deadline = pending.deadline;
        match tokio::time::timeout_at(deadline, sender.send(pending)).await {
            Ok(Ok(())) => {}
            Ok(Err(returned)) => return Err(returned.0.op),
            Err(_) => return Ok(Err(super::transact::timed_out(timeout))),
        }
        Ok(answer.await.unwrap_or_else(|_| {
            Err(Error::internal(
                "the group commit task ended before answering",
            ))
        }))
    }

    fn spawn(
        &self,
        key: Key,
        outbox: Arc<dyn TransactOutbox>,
        timeout: Duration,
    ) -> mpsc::Sender<Pending> {
        let (tx, mut rx) = mpsc::channel::<Pending>(QUEUE);
        let groups = Arc::downgrade(&self.groups);
        let ns = key.1.clone();
        // Owned by its channel: it ends when idle, or when the service (and
        // with it every sender) is gone.
        tokio::spawn(async move {
            loop {
                let first = match tokio::time::timeout(IDLE, rx.recv()).await {
                    Ok(Some(p)) => p,
                    Ok(None) => return,
                    Err(_) => {
                        // Idle: leave the map first, then answer whatever
                        // raced in before the channel closes.
                        if let Some(groups) = groups.upgrade() {
                            groups.remove(&key);
                        }
                        rx.close();
                        let mut rest = Vec::new();
                        while let Ok(p) = rx.try_recv() {
                            rest.push(p);
                        }
                        if !rest.is_empty() {
                            commit_group(&outbox, &ns, timeout, rest).await;
                        }
                        return;
                    }
                };
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(p) => group.push(p),
                        Err(_) => break,
                    }
                }
                commit_group(&outbox, &ns, timeout, group).await;
            }
        });
        tx
    }
}

/// Runs one group: a savepoint per Write, one commit. Every Write of the
/// group is answered, whatever fails.
async fn commit_group(
    outbox: &Arc<dyn TransactOutbox>,
    ns: &str,
    timeout: Duration,
    group: Vec<Pending>,
) {
    let now = Instant::now();
    // Writes whose caller gave up are not applied (a lone Write's
    // transaction would have been dropped with its call).
    let (live, late): (Vec<Pending>, Vec<Pending>) = group
        .into_iter()
        .filter(|p| !p.reply.is_closed())
        .partition(|p| p.deadline > now);
    for p in late {
        let _ = p.reply.send(Err(super::transact::timed_out(timeout)));
    }
    let Some(until) = live.iter().map(|p| p.deadline).max() else {
        return;
    };
    let mut waiting: VecDeque<Pending> = live.into();
    // The Write being applied, kept out here so a failure or the deadline
    // still finds it to answer.
    let mut current: Option<Pending> = None;
    let mut applied = Vec::with_capacity(waiting.len());
    let run = async {
        let mut tx = outbox
            .begin(ns, Isolation::Default, until.saturating_duration_since(now))
            .await?;
        tx.limit_lock_waits(LOCK_WAIT).await?;
        while let Some(next) = waiting.pop_front() {
            if next.reply.is_closed() {
                continue;
            }
            let p = current.insert(next);
            tx.savepoint().await?;
            match apply(&mut *tx, p).await {
                Ok(response) => {
                    if let Some(p) = current.take() {
                        applied.push((p.reply, response));
                    }
                }
                Err(e) => {
                    tx.rollback_to().await?;
                    if let Some(p) = current.take() {
                        let _ = p.reply.send(Err(e));
                    }
                }
            }
        }
        Ok::<_, Error>(tx)
    };
    // Bounded by the group's latest deadline; past it, or when the
    // transaction itself fails, nothing of the group commits.
    let outcome = match tokio::time::timeout_at(until, run).await {
        Ok(Ok(tx)) => tx.commit().await,
        Ok(Err(e)) => Err(e),
        Err(_) => Err(super::transact::timed_out(timeout)),
    };
    let failed = match outcome {
        Ok(()) => {
            for (reply, response) in applied {
                let _ = reply.send(Ok(response));
            }
            return;
        }
        Err(e) => e,
    };
    for reply in applied
        .into_iter()
        .map(|(reply, _)| reply)
        .chain(current.into_iter().chain(waiting).map(|p| p.reply))
    {
        let _ = reply.send(Err(failed.clone()));
    }
}

async fn apply(tx: &mut dyn OpenTransaction, p: &Pending) -> Result<pb::WriteResponse, Error> {
    super::transact::apply_write(tx, &p.op, p.idempotency.as_ref(), p.window)
        .await
        .map(|(_, response)| response)
}
