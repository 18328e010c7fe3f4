//! BackendPoolActor: one per configured backend with a client. It connects
//! (schema, connection manager), health-checks on a timer, reconnects with
//! capped exponential backoff after a failure, sweeps expired keys, and
//! publishes the result in the backend's [`Health`], which drives readiness.
//! The data path never waits on it: calls use the backend's cloned client,
//! and only tell the actor (fire and forget) when they saw the backend fail.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime},
};

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};

use super::{
    mailbox::counted,
    supervision::{ActorLife, Child, Vitals},
    ActorKind, ActorNode, ActorStatus, Life, Mailbox, Observe,
};
use crate::{
    backends::{Backend, HealthState},
    session::{clock::ms, Clock},
};

/// A call saw the backend fail: check it now (see
/// [`crate::backends::Health::suspect`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckNow;

/// The next scheduled check; stale generations are ignored, so a check
/// asked for early replaces the scheduled one instead of doubling it.
#[derive(Message)]
#[rtype(result = "()")]
struct Tick(u64);

pub struct BackendPoolActor {
    pool: Arc<PoolShared>,
    backend: Arc<Backend>,
    clock: Clock,
    life: ActorLife,
    generation: u64,
    checking: bool,
    consecutive_failures: u32,
    next_check_ms: u64,
    last_sweep_ms: Option<u64>,
    swept: u64,
}

impl BackendPoolActor {
    /// Delay before the next attempt after `failures` failures in a row.
    pub fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(20);
        initial.saturating_mul(factor).min(max)
    }

    fn schedule(&mut self, ctx: &mut Context<Self>, delay: Duration) {
        self.generation += 1;
        self.next_check_ms = self.clock.now_ms().saturating_add(ms(delay));
        ctx.notify_later(Tick(self.generation), delay);
    }

    fn check(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.backend.client.clone() else {
            return;
        };
        self.checking = true;
        let spec = self.backend.spec.clone();
        let now = self.clock.now_ms();
        let sweep_due = self.backend.health.is_up()
            && self
                .last_sweep_ms
                .is_none_or(|t| now.saturating_sub(t) >= ms(spec.sweep_interval));
        // Bounded: a hung server cannot stall the actor.
        let limit = spec.connect_timeout.saturating_mul(2);
        let work = async move {
            let connected = tokio::time::timeout(limit, client.connect())
                .await
                .map_err(|_| "health check timed out".to_string())
                .and_then(|r| r.map_err(|e| e.message));
            let swept = if connected.is_ok() && sweep_due {
                tokio::time::timeout(limit, client.sweep()).await.ok()
            } else {
                None
            };
            (connected, swept)
        };
        // Owned by this check: dropping it (the actor stopped) aborts it.
        let mut task = AbortOnDrop(self.pool.runtime.spawn(work));
        let work = async move {
            match (&mut task.0).await {
                Ok(outcome) => outcome,
                Err(_) => (Err("health check was cancelled".to_string()), None),
            }
        };
        ctx.spawn(work.into_actor(self).map(move |(connected, swept), act, ctx| {
            act.checking = false;
            act.life.vitals.beat(act.clock.now_ms());
            if let Some(result) = swept {
                act.last_sweep_ms = Some(now);
                match result {
                    Ok(n) => act.swept += n,
                    Err(e) => tracing::warn!(backend = %act.backend.name, error = %e, "sweep failed"),
                }
            }
            let health = &act.backend.health;
            match connected {
                Ok(()) => {
                    if health.state() != HealthState::Up {
                        tracing::info!(backend = %act.backend.name, "backend is up");
                    }
                    health.mark_up();
                    act.consecutive_failures = 0;
                    act.schedule(ctx, spec.health_interval);
                }
                Err(error) => {
                    act.consecutive_failures += 1;
                    let delay = Self::backoff(
                        spec.backoff_initial,
                        spec.backoff_max,
                        act.consecutive_failures,
                    );
                    tracing::warn!(
                        backend = %act.backend.name,
                        %error,
                        retry_in = %humantime::format_duration(delay),
                        "backend check failed"
                    );
                    health.mark_down(error, delay);
                    act.schedule(ctx, delay);
                }
            }
        }));
    }
}

impl Actor for BackendPoolActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.life.vitals.beat(self.clock.now_ms());
        let checker = Mailbox::new(ctx.address(), self.life.vitals.clone()).recipient();
        self.backend
            .health
            .set_checker(Box::new(move || checker.do_send(CheckNow)));
        self.check(ctx);
    }
}

impl Handler<Tick> for BackendPoolActor {
    type Result = ();

    fn handle(&mut self, Tick(generation): Tick, ctx: &mut Context<Self>) {
        self.life.vitals.handled();
        if generation == self.generation && !self.checking {
            self.check(ctx);
        }
    }
}

impl Handler<CheckNow> for BackendPoolActor {
    type Result = ();

    /// A call saw the backend fail: check now rather than at the next tick,
    /// unless a check is running or the backend is already known down (its
    /// backoff schedule stands).
    fn handle(&mut self, _: CheckNow, ctx: &mut Context<Self>) {
        self.life.vitals.handled();
        if !self.checking && self.backend.health.state() == HealthState::Up {
            self.generation += 1;
            self.check(ctx);
        }
    }
}

super::supervision::supervised_actor!(BackendPoolActor);
counted!(BackendPoolActor: CheckNow, Observe);

impl Handler<Observe> for BackendPoolActor {
    type Result = ActorNode;

    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> ActorNode {
        self.life.vitals.handled();
        observe_pool(
            &self.pool,
            &self.life.vitals,
            ActorStatus::Running,
            Some(self),
        )
    }
}

/// A pool actor's observable state. The actor's own numbers are absent
/// when it cannot answer.
#[derive(serde::Serialize)]
struct PoolState<'a> {
    backend: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    health: HealthState,
    last_error: Option<String>,
    checks: u64,
    failures: u64,
    recoveries: u64,
    consecutive_failures: Option<u32>,
    next_check_in_ms: Option<u64>,
    expired_keys_swept: Option<u64>,
    pool: Option<serde_json::Value>,
}

fn observe_pool(
    pool: &PoolShared,
    vitals: &Vitals,
    status: ActorStatus,
    actor: Option<&BackendPoolActor>,
) -> ActorNode {
    let backend = &pool.backend;
    let clock = &pool.clock;
    let created = pool.created;
    let health = &backend.health;
    let now = clock.now_ms();
    ActorNode::leaf(
        ActorKind::BackendPool,
        format!("backend/{}", backend.name),
        "root".to_string(),
        status,
        Life {
            created,
            vitals,
            clock,
            restarts: 0,
        },
        &PoolState {
            backend: &backend.name,
            kind: backend.kind.name(),
            health: health.state(),
            last_error: health.last_error(),
            checks: health.checks.load(Ordering::Relaxed),
            failures: health.failures.load(Ordering::Relaxed),
            recoveries: health.recoveries.load(Ordering::Relaxed),
            consecutive_failures: actor.map(|a| a.consecutive_failures),
            next_check_in_ms: actor.map(|a| a.next_check_ms.saturating_sub(now)),
            expired_keys_swept: actor.map(|a| a.swept),
            pool: backend.client.as_ref().map(|c| c.stats()),
        },
    )
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A backend as a supervised child: what its pool actor works on.
pub struct PoolShared {
    pub backend: Arc<Backend>,
    /// The gateway's main runtime: backend I/O runs there, so no client
    /// connection is ever dropped on an arbiter that is shutting down.
    runtime: tokio::runtime::Handle,
    clock: Clock,
    created: SystemTime,
    /// `backend/<name>`.
    id: String,
}

impl PoolShared {
    /// Must be called on the gateway's main runtime.
    pub fn new(backend: Arc<Backend>, clock: Clock) -> Self {
        PoolShared {
            id: format!("backend/{}", backend.name),
            backend,
            runtime: tokio::runtime::Handle::current(),
            clock,
            created: SystemTime::now(),
        }
    }
}

impl Child for PoolShared {
    type Actor = BackendPoolActor;
    type Env = ();
    type Key = String;
    const KIND: ActorKind = ActorKind::BackendPool;

    fn key(self: &Arc<Self>) -> String {
        self.id.clone()
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn actor(self: &Arc<Self>, _: &Arc<()>, life: ActorLife) -> BackendPoolActor {
        BackendPoolActor {
            pool: self.clone(),
            backend: self.backend.clone(),
            clock: self.clock,
            life,
            generation: 0,
            checking: false,
            consecutive_failures: 0,
            next_check_ms: 0,
            last_sweep_ms: None,
            swept: 0,
        }
    }

    fn clock(&self) -> Clock {
        self.clock
    }

    fn is_finished(&self) -> bool {
        false
    }

    fn node(&self, status: ActorStatus, vitals: &Vitals) -> ActorNode {
        observe_pool(self, vitals, status, None)
    }

    /// Nothing checks the backend any more: it is marked down, so
    /// readiness fails and an orchestrator replaces the gateway.
    fn give_up(&self, _: &Arc<()>, why: &str) {
        self.backend.health.mark_down(
            format!("the backend's pool actor kept failing: {why}"),
            std::time::Duration::from_secs(60),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b =
            |n| BackendPoolActor::backoff(Duration::from_millis(100), Duration::from_secs(1), n);
        assert_eq!(b(1), Duration::from_millis(100));
        assert_eq!(b(2), Duration::from_millis(200));
        assert_eq!(b(4), Duration::from_millis(800));
        assert_eq!(b(5), Duration::from_secs(1));
        assert_eq!(b(60), Duration::from_secs(1));
    }
}
