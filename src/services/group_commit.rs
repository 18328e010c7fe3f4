//! Group commit for Transact Writes. Writes to one mailbox are serialized by
//! its sequence counter row, which a writing transaction holds until it
//! commits: one commit (one fsync) per Write bounded a mailbox at about a
//! thousand Writes a second. Here Writes to the same mailbox that arrive
//! while one group commits join the next group: one database transaction,
//! the counter taken once, one commit for all. A lone Write is a group of
//! one; the group grows with the load.
//!
//! A group is first applied all together (`OpenTransaction::write_all`:
//! on Postgres its inserts into one table are one multi-row statement, its
//! mailbox rows and counter one more, so a group costs about the round
//! trips of a lone Write, and the counter row is locked only from that last
//! statement to the commit). When a statement of that attempt fails it is
//! rolled back and the group runs again one Write at a time, a savepoint
//! each: a Write that fails is undone alone and gets its own error.
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
use futures::{stream::FuturesUnordered, StreamExt};
use tokio::{
    sync::{mpsc, oneshot, RwLock},
    time::Instant,
};

use crate::{
    backends::transact::{Isolation, OpenTransaction, TransactOutbox, WriteOp},
    error::{Error, ErrorKind},
    proto::transact::v1 as pb,
};
use prost::Message as _;

/// Writes in one group, at most. Each Write is a subtransaction; Postgres
/// keeps 64 of a transaction's subtransaction ids in shared memory and past
/// that every snapshot taken meanwhile (anyone's) looks them up on disk.
const MAX_GROUP: usize = 64;

/// Groups of one mailbox in flight at once. The next group's data rows go
/// in while the one before commits; its mailbox rows wait for that commit
/// (the counter row's lock), so sequences still commit in sequence order
/// (which of two groups in flight takes the lower ones is not fixed).
const IN_FLIGHT: usize = 2;

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
            let turns = RwLock::new(());
            let mut running = FuturesUnordered::new();
            loop {
                tokio::select! {
                    biased;
                    Some(()) = running.next(), if !running.is_empty() => {}
                    next = tokio::time::timeout(IDLE, rx.recv()), if running.len() < IN_FLIGHT => {
                        match next {
                            Ok(Some(first)) => {
                                let mut group = vec![first];
                                while group.len() < MAX_GROUP {
                                    match rx.try_recv() {
                                        Ok(p) => group.push(p),
                                        Err(_) => break,
                                    }
                                }
                                running.push(commit_group(&outbox, &ns, &turns, timeout, group));
                            }
                            Ok(None) => {
                                while running.next().await.is_some() {}
                                return;
                            }
                            Err(_) if !running.is_empty() => {}
                            Err(_) => {
                                // Idle: leave the map first, then answer
                                // whatever raced in before the channel closes.
                                if let Some(groups) = groups.upgrade() {
                                    groups.remove(&key);
                                }
                                rx.close();
                                let mut rest = Vec::new();
                                while let Ok(p) = rx.try_recv() {
                                    rest.push(p);
                                }
                                if !rest.is_empty() {
                                    commit_group(&outbox, &ns, &turns, timeout, rest).await;
                                }
                                return;
                            }
                        }
                    }
                }
            }
        });
        tx
    }
}

/// Runs one group: first all its Writes together; when that fails, one
/// by one with a savepoint each. Every Write of the group is answered,
/// whatever fails.
///
/// Groups tried together run side by side: each takes the counter row last
/// (after its data rows), so none holds it while waiting for another lock.
/// One by one, a group takes the counter at its first Write and other locks
/// after it; it runs alone (`turns`), or two such groups could each hold
/// what the other waits for.
async fn commit_group(
    outbox: &Arc<dyn TransactOutbox>,
    ns: &str,
    turns: &RwLock<()>,
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
    let side_by_side = turns.read().await;
    let first = together(outbox, ns, timeout, until, &live).await;
    drop(side_by_side);
    match first {
        Together::Committed(responses) => {
            for (p, response) in live.into_iter().zip(responses) {
                let _ = p.reply.send(Ok(response));
            }
        }
        Together::Failed(e) => {
            for p in live {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
        Together::OneByOne => {
            let _alone = turns.write().await;
            one_by_one(outbox, ns, timeout, until, live).await
        }
    }
}

/// How a group's first attempt ended.
enum Together {
    /// Every Write committed; their responses, in the group's order.
    Committed(Vec<pb::WriteResponse>),
    /// The transaction itself failed (it could not begin or commit, or the
    /// group's deadline passed): no Write of the group was applied.
    Failed(Error),
    /// A statement failed, perhaps for one Write's own fault: nothing was
    /// applied; try them one by one.
    OneByOne,
}

/// The group's Writes in one go: their idempotency keys looked up, their
/// rows in a few statements (`write_all`), their responses remembered,
/// one commit. The common case, and the cheap one: a group costs about as
/// many round trips as a lone Write.
async fn together(
    outbox: &Arc<dyn TransactOutbox>,
    ns: &str,
    timeout: Duration,
    until: Instant,
    group: &[Pending],
) -> Together {
    // The same key twice in a group: the second must see the first's
    // response, which only the one-by-one path stores in between.
    let mut keys: Vec<&str> = group
        .iter()
        .filter_map(|p| p.idempotency.as_ref().map(|(k, _)| k.as_str()))
        .collect();
    keys.sort_unstable();
    if keys.windows(2).any(|w| w[0] == w[1]) {
        return Together::OneByOne;
    }
    let wait = until.saturating_duration_since(Instant::now());
    let mut tx = match outbox
        .begin(ns, Isolation::Default, wait, Some(LOCK_WAIT))
        .await
    {
        Ok(tx) => tx,
        Err(e) => return Together::Failed(e),
    };
    let work = async {
        let mut responses: Vec<Option<pb::WriteResponse>> = vec![None; group.len()];
        // Keys are locked in sorted order, as everywhere: two groups in
        // flight never each hold a key the other waits for.
        let mut keyed: Vec<(usize, &(String, String))> = group
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.idempotency.as_ref().map(|k| (i, k)))
            .collect();
        keyed.sort_unstable_by(|a, b| a.1 .0.cmp(&b.1 .0));
        for (i, (key, fp)) in keyed {
            if let Some(stored) = tx.replay(key, fp).await? {
                responses[i] = Some(super::transact::replayed(&stored)?);
            }
        }
        let fresh: Vec<usize> = (0..group.len())
            .filter(|&i| responses[i].is_none())
            .collect();
        let ops: Vec<&WriteOp> = fresh.iter().map(|&i| &group[i].op).collect();
        let outcomes = tx.write_all(&ops).await?;
        for (&i, outcome) in fresh.iter().zip(outcomes) {
            let response = super::transact::applied(outcome);
            if let Some((key, fp)) = &group[i].idempotency {
                tx.remember(key, fp, &response.encode_to_vec(), group[i].window)
                    .await?;
            }
            responses[i] = Some(response);
        }
        Ok::<_, Error>(responses.into_iter().flatten().collect::<Vec<_>>())
    };
    match tokio::time::timeout_at(until, work).await {
        Ok(Ok(responses)) => match tx.commit().await {
            Ok(()) => Together::Committed(responses),
            Err(e) => Together::Failed(e),
        },
        Ok(Err(e)) => {
            let _ = tx.rollback().await;
            // A lone Write's error is its own — unless it waited on a lock
            // the mailbox's other group held (the counter, until its
            // commit): one by one runs alone, so that wait is gone. In a
            // group, whatever it was, the one-by-one attempt meets it again
            // and answers each Write for itself.
            let waited = matches!(e.kind, ErrorKind::Aborted | ErrorKind::Unavailable);
            if group.len() == 1 && !waited {
                Together::Failed(e)
            } else {
                Together::OneByOne
            }
        }
        Err(_) => Together::Failed(super::transact::timed_out(timeout)),
    }
}

/// The group's Writes one by one in one transaction, a savepoint each: a
/// Write that fails is undone alone and gets its own error; the rest
/// commit together.
async fn one_by_one(
    outbox: &Arc<dyn TransactOutbox>,
    ns: &str,
    timeout: Duration,
    until: Instant,
    live: Vec<Pending>,
) {
    let mut waiting: VecDeque<Pending> = live.into();
    // The Write being applied, kept out here so a failure or the deadline
    // still finds it to answer.
    let mut current: Option<Pending> = None;
    let mut applied = Vec::with_capacity(waiting.len());
    let run = async {
        let wait = until.saturating_duration_since(Instant::now());
        let mut tx = outbox
            .begin(ns, Isolation::Default, wait, Some(LOCK_WAIT))
            .await?;
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
