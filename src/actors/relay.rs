//! MailboxListenerActor: one per configured outbox relay. It reads a
//! mailbox's rows after its own cursor in sequence order, publishes them
//! to the relay's broker destination, and moves the cursor only once the
//! broker acknowledged them — so a crash between the two sends rows again
//! (consumers dedupe by mailbox id and sequence) but never skips one. The
//! cursor is the relay's alone (`prism_relay_cursor`): a client marking
//! rows processed with ProcessMailbox never hides one from it. A row the
//! broker keeps refusing is moved aside after `max_attempts`
//! (`prism_mailbox_dead_letter`, shown by ReadMailbox, the actor tree and
//! `/metrics`) so the rows after it flow on. In a cluster every gateway
//! runs the actor but only the one holding the relay's lease
//! (`TransactOutbox::relay_lease`: a Postgres advisory lock on a
//! connection of its own) publishes; the others stand by and take over at
//! their next round once that gateway's connection is gone.
//!
//! Rounds never overlap: a wake-up during a round asks for another round
//! after it. Wake-ups come from the backend's mailbox waiter
//! (`TransactOutbox::mailbox_waiter`: a commit in this process at once,
//! and on Postgres a commit in any gateway by LISTEN/NOTIFY) and from the
//! poll interval (the fallback, and the only signal for other writers on
//! SQLite). While the lease is kept the relay trusts the cursor it last
//! wrote (nobody else moves it), so a round costs its read, its publish
//! and its advance. The actor opens no connection of its own. A failed round backs off
//! exponentially up to `max_backoff`; the backend I/O runs on the main
//! runtime in tasks the actor owns.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};
use parking_lot::Mutex;

use super::{
    mailbox::counted,
    supervision::{ActorLife, Child, Vitals},
    ActorKind, ActorNode, ActorStatus, Life, Mailbox, Observe,
};
use crate::{
    backends::{
        relay::{self, RelaySink},
        transact::{
            Held, Lag, MailboxQuery, MailboxRow, MailboxWake, RelayCursor, RelayId, RelayLease,
            TransactOutbox,
        },
        Backends, Health,
    },
    config::{GatewayConfig, RelaySpec},
    error::Error,
    session::Clock,
};

/// The first wait after a failed round; doubles up to `max_backoff`.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);

/// How often a relay draining a backlog counts what is left.
const LAG_EVERY: Duration = Duration::from_secs(1);
/// How long a retired relay's round in flight may take to end before its
/// lease is left to go with its connection.
const RETIRE_WAIT: Duration = Duration::from_secs(5);

/// What a relay has done, for the actor tree.
#[derive(Debug, Default, Clone)]
struct Progress {
    status: &'static str,
    relayed: u64,
    last_sequence: Option<i64>,
    rounds: u64,
    failures_in_a_row: u32,
    last_error: Option<String>,
    backoff_ms: u64,
    lag: Lag,
    notifications: u64,
    /// Every row up to this sequence was published or moved aside.
    through: i64,
    dead_lettered: u64,
    last_dead_letter: Option<DeadLetterState>,
}

/// The last row a relay moved aside, for the actor tree.
#[derive(Debug, Clone, serde::Serialize)]
struct DeadLetterState {
    sequence: i64,
    message_id: String,
    attempts: u32,
    error: String,
}

/// A relay's configuration and progress, shared by its actor and the tasks
/// it owns; it outlives restarts of the actor.
pub struct RelayShared {
    pub name: String,
    pub namespace: String,
    pub spec: RelaySpec,
    outbox: Arc<dyn TransactOutbox>,
    /// How its cursor is keyed.
    key: RelayId,
    /// Held by the one gateway of a cluster that runs this relay.
    lease: tokio::sync::Mutex<Box<dyn RelayLease>>,
    /// The cursor as this gateway last read or wrote it, while it keeps
    /// the lease.
    cursor: Mutex<Option<RelayCursor>>,
    /// When a backlog was last counted.
    lag_counted: Mutex<Option<tokio::time::Instant>>,
    sink: Arc<dyn RelaySink>,
    source_health: Arc<Health>,
    progress: Mutex<Progress>,
    clock: Clock,
    created: SystemTime,
    /// `relay/<namespace>/<name>`.
    id: String,
}

impl RelayShared {
    /// Its mailbox's unprocessed rows and the age of the oldest, as the
    /// last round saw them.
    pub fn lag(&self) -> (u64, Option<Duration>) {
        let lag = self.progress.lock().lag;
        let now = crate::backends::epoch_ms();
        let age = lag
            .oldest_created_ms
            .map(|c| Duration::from_millis((now - c).max(0) as u64));
        (lag.unprocessed, age)
    }

    /// `relay/<namespace>/<name>`: its id in the actor tree.
    pub fn child_id(&self) -> &str {
        &self.id
    }

    /// After its actor was stopped (a config reload removed or changed
    /// it): waits, bounded, for the round in flight to end, then lets the
    /// lease go, so the relay that replaces it takes over at once.
    pub async fn retire(&self) {
        match tokio::time::timeout(RETIRE_WAIT, self.lease.lock()).await {
            Ok(mut lease) => lease.release(),
            // The round's connection goes with the last handle on it.
            Err(_) => {
                tracing::warn!(relay = %self.id, "a retired relay's round did not end in time")
            }
        }
        self.progress.lock().status = "stopped";
    }

    /// Lets the relay's lease go, unless a round is using it (the round
    /// then ends with it; a failed or given-up relay must not keep other
    /// gateways from relaying).
    fn release_lease(&self) {
        if let Ok(mut lease) = self.lease.try_lock() {
            lease.release();
        }
    }

    /// Whether this relay's destination could ever take the message.
    pub fn check(&self, message: &[u8], headers: &BTreeMap<String, String>) -> Result<(), Error> {
        self.sink.check(message, headers)
    }

    /// Rows this relay moved aside since the gateway started.
    pub fn dead_lettered(&self) -> u64 {
        self.progress.lock().dead_lettered
    }

    /// One round: read a batch after the relay's cursor, publish it, move
    /// the cursor past what the broker acknowledged. A row the broker
    /// refuses (too large, malformed) is tried `max_attempts` times and
    /// then moved aside, so the rows after it flow on; a row the
    /// destination could never take is moved aside at once. Only the
    /// gateway holding the relay's lease does any of this; the others stand
    /// by and ask again each round.
    async fn round(self: Arc<Self>) -> Result<Round, Error> {
        let round = self.clone().relay_batch().await;
        if !matches!(round, Ok(Round::More | Round::Done)) {
            // Standing by or failed: the cursor is read again from the
            // database once the lease is (re)taken.
            *self.cursor.lock() = None;
        }
        round
    }

    async fn relay_batch(self: Arc<Self>) -> Result<Round, Error> {
        // While the lease is kept the cursor is this gateway's alone, so
        // the one it last wrote is current: the lease check and the read
        // of the next batch then go out together.
        let known = *self.cursor.lock();
        let (held, read) = match known {
            Some(cursor) => {
                let (held, rows) = tokio::join!(
                    async { self.lease.lock().await.hold().await },
                    self.read_after(cursor.through)
                );
                (held?, Some((cursor, rows)))
            }
            None => (self.lease.lock().await.hold().await?, None),
        };
        let (cursor, rows) = match (held, read) {
            (Held::No, _) => return Ok(Round::Standby),
            (Held::Kept, Some((cursor, rows))) => (cursor, rows?),
            _ => {
                let cursor = self.outbox.relay_cursor(&self.key).await?;
                (cursor, self.read_after(cursor.through).await?)
            }
        };
        let (ns, mailbox) = (&self.namespace, &self.spec.mailbox);
        let batch = self.spec.batch_size;
        // A row the destination can never take ends the batch before it.
        let never = rows.iter().enumerate().find_map(|(i, row)| {
            self.sink
                .check(&row.message, &relay::headers(row))
                .err()
                .map(|e| (i, e))
        });
        let sendable = never.as_ref().map_or(rows.len(), |(i, _)| *i);
        let (sent, failed) = if sendable == 0 {
            (0, None)
        } else {
            self.sink.publish(&rows[..sendable]).await
        };
        let mut through = cursor.through;
        let mut attempts = cursor.attempts;
        if sent > 0 {
            through = rows[sent - 1].sequence;
            attempts = 0;
            self.outbox.advance_relay(&self.key, through).await?;
            let mut p = self.progress.lock();
            p.relayed += sent as u64;
            p.last_sequence = Some(through);
        }
        let mut more = rows.len() == batch;
        let stopped = match failed {
            Some(e) => Some((e, false)),
            None => never.filter(|_| sent == sendable).map(|(_, e)| (e, true)),
        };
        let result = match stopped {
            None => Ok(()),
            Some((e, _)) if !relay::is_refused(&e) => Err(e),
            Some((e, never)) => {
                let row = &rows[sent];
                let attempts = if never { attempts } else { attempts + 1 };
                if never || attempts >= self.spec.max_attempts {
                    self.outbox
                        .dead_letter(&self.key, row, attempts, &e.message)
                        .await?;
                    through = row.sequence;
                    tracing::warn!(
                        relay = %self.name,
                        mailbox = %mailbox,
                        sequence = row.sequence,
                        attempts,
                        error = %e.message,
                        "relay moved a row aside (dead letter)"
                    );
                    let mut p = self.progress.lock();
                    p.dead_lettered += 1;
                    p.last_dead_letter = Some(DeadLetterState {
                        sequence: row.sequence,
                        message_id: row.message_id.clone(),
                        attempts,
                        error: e.message.clone(),
                    });
                    more = true;
                    Ok(())
                } else {
                    let at = RelayCursor { through, attempts };
                    self.outbox.relay_refused(&self.key, at, &e.message).await?;
                    Err(e)
                }
            }
        };
        self.progress.lock().through = through;
        if result.is_ok() {
            let attempts = if through == cursor.through {
                cursor.attempts
            } else {
                0
            };
            *self.cursor.lock() = Some(RelayCursor { through, attempts });
        }
        let caught_up = rows.len() < batch && rows.last().is_none_or(|r| r.sequence == through);
        if result.is_ok() && caught_up {
            // Every row there was at the read went out: no backlog as of
            // then (rows committed since wake the relay again).
            self.progress.lock().lag = Lag::default();
        } else if result.is_err() || self.lag_due() {
            if let Ok(lag) = self.outbox.lag(ns, mailbox, through).await {
                self.progress.lock().lag = lag;
            }
        }
        result.map(|()| if more { Round::More } else { Round::Done })
    }

    /// The rows after `through`, a batch at most.
    async fn read_after(&self, through: i64) -> Result<Vec<MailboxRow>, Error> {
        self.outbox
            .read_mailbox(
                &self.namespace,
                &MailboxQuery {
                    mailbox: self.spec.mailbox.clone(),
                    after: through,
                    limit: self.spec.batch_size,
                    unprocessed_only: false,
                    with_dead_letters: false,
                },
            )
            .await
    }

    /// Whether a backlog being drained should be counted again (at most
    /// every [`LAG_EVERY`]: counting a long backlog costs the database).
    fn lag_due(&self) -> bool {
        let now = tokio::time::Instant::now();
        let mut last = self.lag_counted.lock();
        if last.is_some_and(|t| now.duration_since(t) < LAG_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Wakes the actor whenever its mailbox's waiter says rows may be
    /// waiting, until the actor drops the task.
    async fn waker(self: Arc<Self>, addr: Mailbox<MailboxListenerActor>) {
        let mut waiter = self
            .outbox
            .mailbox_waiter(&self.namespace, &self.spec.mailbox);
        loop {
            if waiter.next().await == MailboxWake::Notified {
                self.progress.lock().notifications += 1;
            }
            addr.do_send(Wake);
        }
    }
}

/// How a round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// A full batch went out: more may be waiting.
    More,
    Done,
    /// Another gateway holds the relay's lease.
    Standby,
}

/// Look for rows now.
#[derive(Message)]
#[rtype(result = "()")]
struct Wake;

/// A scheduled retry after a failed round.
#[derive(Message)]
#[rtype(result = "()")]
struct Retry;

/// Aborts the task when dropped: the actor owns the tasks it started.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct MailboxListenerActor {
    shared: Arc<RelayShared>,
    life: ActorLife,
    runtime: tokio::runtime::Handle,
    running: bool,
    again: bool,
    backing_off: bool,
    waker: Option<AbortOnDrop>,
}

impl MailboxListenerActor {
    fn start_round(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            self.again = true;
            return;
        }
        if self.backing_off {
            return;
        }
        // Until the mailbox's backend is up (schema created, reachable)
        // there is nothing to read; the poll interval tries again.
        if !self.shared.source_health.is_up() {
            self.shared.progress.lock().status = "waiting_for_backend";
            return;
        }
        self.running = true;
        self.again = false;
        self.shared.progress.lock().status = "relaying";
        let work = self.shared.clone().round();
        let mut task = RoundTask(Some(self.runtime.spawn(work)));
        let work = async move {
            match task.0.take() {
                Some(handle) => handle
                    .await
                    .unwrap_or_else(|_| Err(Error::internal("the relay round was cancelled"))),
                None => Err(Error::internal("the relay round was not started")),
            }
        };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            act.running = false;
            act.life.vitals.beat(act.shared.clock.now_ms());
            let mut p = act.shared.progress.lock();
            p.rounds += 1;
            match result {
                Ok(round) => {
                    p.failures_in_a_row = 0;
                    p.backoff_ms = 0;
                    p.last_error = None;
                    p.status = match round {
                        Round::Standby => "standby",
                        Round::More | Round::Done => "idle",
                    };
                    drop(p);
                    if round == Round::More || act.again {
                        act.start_round(ctx);
                    }
                }
                Err(e) => {
                    p.failures_in_a_row += 1;
                    let n = p.failures_in_a_row;
                    let delay = backoff(act.shared.spec.max_backoff, n);
                    p.backoff_ms = delay.as_millis() as u64;
                    p.status = "backing_off";
                    p.last_error = Some(e.message.clone());
                    drop(p);
                    if e.kind == crate::error::ErrorKind::Unavailable {
                        act.shared.source_health.suspect();
                    }
                    // A gateway that cannot relay lets another try while it
                    // backs off (it may retake the lease after).
                    act.shared.release_lease();
                    tracing::warn!(
                        relay = %act.shared.name,
                        error = %e.message,
                        retry_in = %humantime::format_duration(delay),
                        "relay round failed"
                    );
                    act.backing_off = true;
                    ctx.notify_later(Retry, delay);
                }
            }
        }));
    }
}

/// The round's task, aborted if the actor stops while it runs.
struct RoundTask(Option<tokio::task::JoinHandle<Result<Round, Error>>>);

impl Drop for RoundTask {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

fn backoff(max: Duration, failures: u32) -> Duration {
    BACKOFF_INITIAL
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(max.max(BACKOFF_INITIAL))
}

impl Actor for MailboxListenerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.life.vitals.beat(self.shared.clock.now_ms());
        let mailbox = Mailbox::new(ctx.address(), self.life.vitals.clone());
        let waker = self.shared.clone().waker(mailbox);
        self.waker = Some(AbortOnDrop(self.runtime.spawn(waker)));
        ctx.run_interval(self.shared.spec.poll_interval, |act, ctx| {
            act.start_round(ctx);
        });
        self.start_round(ctx);
    }
}

impl Handler<Wake> for MailboxListenerActor {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        self.life.vitals.handled();
        self.start_round(ctx);
    }
}

impl Handler<Retry> for MailboxListenerActor {
    type Result = ();

    fn handle(&mut self, _: Retry, ctx: &mut Context<Self>) {
        self.life.vitals.handled();
        self.backing_off = false;
        self.start_round(ctx);
    }
}

super::supervision::supervised_actor!(MailboxListenerActor);
counted!(MailboxListenerActor: Wake, Observe);

impl Handler<Observe> for MailboxListenerActor {
    type Result = ActorNode;

    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> ActorNode {
        self.life.vitals.handled();
        observe(&self.shared, ActorStatus::Running, &self.life.vitals)
    }
}

/// A relay's observable state.
#[derive(serde::Serialize)]
struct RelayState<'a> {
    namespace: &'a str,
    mailbox: &'a str,
    backend: &'a str,
    target: String,
    status: &'static str,
    relayed: u64,
    last_sequence: Option<i64>,
    rounds: u64,
    failures_in_a_row: u32,
    backoff_ms: u64,
    last_error: Option<String>,
    notifications: u64,
    through: i64,
    max_attempts: u32,
    dead_lettered: u64,
    last_dead_letter: Option<DeadLetterState>,
    lag: LagState,
}

#[derive(serde::Serialize)]
struct LagState {
    unprocessed: u64,
    oldest_unprocessed_age_ms: Option<i64>,
}

fn observe(shared: &RelayShared, status: ActorStatus, vitals: &Vitals) -> ActorNode {
    let p = shared.progress.lock().clone();
    let now = crate::backends::epoch_ms();
    ActorNode::leaf(
        ActorKind::MailboxListener,
        shared.id.clone(),
        "root".into(),
        status,
        Life {
            created: shared.created,
            vitals,
            clock: &shared.clock,
            restarts: 0,
        },
        &RelayState {
            namespace: &shared.namespace,
            mailbox: &shared.spec.mailbox,
            backend: &shared.spec.backend,
            target: shared.spec.to.describe(),
            status: p.status,
            relayed: p.relayed,
            last_sequence: p.last_sequence,
            rounds: p.rounds,
            failures_in_a_row: p.failures_in_a_row,
            backoff_ms: p.backoff_ms,
            last_error: p.last_error,
            notifications: p.notifications,
            through: p.through,
            max_attempts: shared.spec.max_attempts,
            dead_lettered: p.dead_lettered,
            last_dead_letter: p.last_dead_letter,
            lag: LagState {
                unprocessed: p.lag.unprocessed,
                oldest_unprocessed_age_ms: p.lag.oldest_created_ms.map(|c| (now - c).max(0)),
            },
        },
    )
}

impl Child for RelayShared {
    type Actor = MailboxListenerActor;
    /// The gateway's main runtime: relay I/O runs there.
    type Env = tokio::runtime::Handle;
    type Key = String;
    const KIND: ActorKind = ActorKind::MailboxListener;

    fn key(self: &Arc<Self>) -> String {
        self.id.clone()
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn actor(
        self: &Arc<Self>,
        runtime: &Arc<tokio::runtime::Handle>,
        life: ActorLife,
    ) -> MailboxListenerActor {
        MailboxListenerActor {
            shared: self.clone(),
            life,
            runtime: (**runtime).clone(),
            running: false,
            again: false,
            backing_off: false,
            waker: None,
        }
    }

    fn clock(&self) -> Clock {
        self.clock
    }

    fn is_finished(&self) -> bool {
        false
    }

    fn node(&self, status: ActorStatus, vitals: &Vitals) -> ActorNode {
        observe(self, status, vitals)
    }

    /// The mailbox is no longer relayed; the node says why (rows wait in
    /// the mailbox, nothing is lost; a gateway restart resumes).
    fn give_up(&self, _: &Arc<tokio::runtime::Handle>, why: &str) {
        self.release_lease();
        let mut p = self.progress.lock();
        p.status = "stopped";
        p.last_error = Some(format!("the relay's actor kept failing: {why}"));
    }
}

/// One relay per configured `relays` entry, not yet started (building one
/// connects nothing: its lease and sink connect on its first round).
pub fn configured(
    config: &GatewayConfig,
    backends: &Backends,
    clock: Clock,
) -> Result<Vec<Arc<RelayShared>>, String> {
    let mut out = Vec::new();
    for (ns, spec) in &config.namespaces {
        for (name, relay) in &spec.relays {
            out.push(build(ns, name, relay, backends, clock)?);
        }
    }
    Ok(out)
}

fn build(
    ns: &str,
    name: &str,
    relay: &RelaySpec,
    backends: &Backends,
    clock: Clock,
) -> Result<Arc<RelayShared>, String> {
    let source = backends
        .get(&relay.backend)
        .ok_or_else(|| format!("relay `{name}`: backend `{}` is missing", relay.backend))?;
    let outbox = source
        .transact
        .clone()
        .ok_or_else(|| format!("relay `{name}`: backend `{}` has no mailbox", relay.backend))?;
    let key = RelayId {
        namespace: ns.to_string(),
        name: name.to_string(),
        mailbox: relay.mailbox.clone(),
    };
    Ok(Arc::new(RelayShared {
        lease: tokio::sync::Mutex::new(outbox.relay_lease(&key)),
        cursor: Mutex::default(),
        lag_counted: Mutex::default(),
        id: format!("relay/{ns}/{name}"),
        name: name.to_string(),
        namespace: ns.to_string(),
        spec: relay.clone(),
        outbox,
        key,
        sink: relay::sink(&relay.to, ns, backends)?,
        source_health: source.health.clone(),
        progress: Mutex::new(Progress {
            status: "starting",
            ..Default::default()
        }),
        clock,
        created: SystemTime::now(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let max = Duration::from_secs(1);
        assert_eq!(backoff(max, 1), Duration::from_millis(100));
        assert_eq!(backoff(max, 2), Duration::from_millis(200));
        assert_eq!(backoff(max, 4), Duration::from_millis(800));
        assert_eq!(backoff(max, 5), Duration::from_secs(1));
        assert_eq!(backoff(max, 60), Duration::from_secs(1));
    }
}
