//! NamespaceSupervisor: one per namespace, a child of the root. It starts
//! its namespace's SessionActors and, with the one supervision primitive,
//! checks every descendant on each tick — the sessions and the
//! subscriptions and transactions they started. Its children live in
//! [`NamespaceShared`], outside the actor, so a restarted supervisor adopts
//! them as they are. It hears of every session that ends (the registry's
//! events) and stops that session's actor at once, which tells the
//! session's children.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use actix::{Actor, AsyncContext, Context, Handler, Message, StreamHandler};
use parking_lot::Mutex;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};

use super::{
    mailbox::counted,
    session::{SessionChildren, SessionEnv},
    supervision::{ActorLife, CheckTiming, Child, Children, Vitals},
    ActorKind, ActorNode, ActorStatus, ArbiterPool, Observe,
};
use crate::session::{Clock, SessionEntry, SessionEvent, SessionRegistry};

/// What every namespace supervisor is started with (the root's settings).
#[derive(Clone)]
pub struct SupervisorSettings {
    pub registry: Arc<SessionRegistry>,
    pub pool: Arc<ArbiterPool>,
    pub interval: Duration,
    /// Restarts of a backend pool, relay or namespace supervisor before
    /// the root gives up on it (`server.max_restarts`).
    pub max_restarts: u32,
    /// Told when supervision itself fails; the gateway then stops.
    pub failure: Arc<super::root::SupervisionFailure>,
    /// Restarts by kind, counted as they happen.
    pub restarts: Arc<super::supervision::Restarts>,
}

/// A namespace: its sessions and what survives a restart of its supervisor.
pub struct NamespaceShared {
    pub name: String,
    id: String,
    created: SystemTime,
    clock: Clock,
    /// Session actor restarts before the session is ended
    /// (`namespaces.<ns>.session.max_restarts`).
    max_restarts: u32,
    /// Its sessions; their children are in the sessions' environment.
    pub sessions: Children<SessionEntry>,
    /// When the last counted check ran; kept outside the actor so a
    /// restarted supervisor does not judge its first tick.
    timing: Mutex<CheckTiming>,
}

impl NamespaceShared {
    pub fn new(name: &str, max_restarts: u32, settings: &SupervisorSettings) -> Self {
        NamespaceShared {
            name: name.to_string(),
            id: format!("namespace/{name}"),
            created: SystemTime::now(),
            clock: *settings.registry.clock(),
            max_restarts,
            sessions: Children::new(
                Arc::new(SessionEnv {
                    registry: settings.registry.clone(),
                    pool: settings.pool.clone(),
                    restarts: settings.restarts.clone(),
                    children: Mutex::default(),
                }),
                settings.restarts.clone(),
            ),
            timing: Mutex::new(CheckTiming::new(settings.interval)),
        }
    }

    pub fn env(&self) -> &Arc<SessionEnv> {
        &self.sessions.env
    }

    /// Stops every session actor; used at shutdown after sessions ended.
    pub fn stop_all(&self) {
        self.sessions.stop_all();
    }

    /// One supervision pass over every descendant.
    fn supervise(&self, pool: &ArbiterPool) {
        let now = self.clock.now_ms();
        let Some(judge) = self.timing.lock().judge(now) else {
            return;
        };
        let arbiter = || pool.next();
        self.sessions.check_all(judge, self.max_restarts, &arbiter);
        let env = self.env();
        for children in env.all_children() {
            children.check_all(judge, self.max_restarts, &arbiter);
        }
        // Ended sessions' children leave once they have all finished.
        // Those whose session's actor could not tell them (it had failed)
        // are told here; telling twice is harmless.
        let ended: Vec<(String, Arc<SessionChildren>)> = env
            .children
            .lock()
            .iter()
            .filter(|(id, _)| env.registry.by_id(id).is_none())
            .map(|(id, c)| (id.clone(), c.clone()))
            .collect();
        for (id, children) in ended {
            if children.is_empty() {
                env.children.lock().remove(&id);
            } else {
                children.session_ended();
            }
        }
    }

    /// Its sessions' nodes, each with its children. Asked of the actors
    /// directly, not through the supervisor's mailbox, so a stuck
    /// supervisor does not hide its sessions.
    pub async fn observe_sessions(&self) -> Vec<ActorNode> {
        let mut sessions = self.sessions.observe().await;
        for session in &mut sessions {
            if let Some(children) = self.env().children_of(&session.id) {
                session.children = children.observe().await;
            }
        }
        sessions
    }

    fn node(&self, status: ActorStatus, vitals: &Vitals) -> ActorNode {
        ActorNode::leaf(
            ActorKind::NamespaceSupervisor,
            self.id.clone(),
            "root".to_string(),
            status,
            super::Life {
                created: self.created,
                vitals,
                clock: &self.clock,
                restarts: 0,
            },
            &NamespaceState {
                namespace: &self.name,
                sessions: self.sessions.len(),
                child_restarts: None,
            },
        )
    }
}

/// A namespace supervisor's observable state (`child_restarts` is added
/// by the root, which sees the sessions' nodes).
#[derive(serde::Serialize)]
pub struct NamespaceState<'a> {
    pub namespace: &'a str,
    pub sessions: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_restarts: Option<u64>,
}

pub struct NamespaceSupervisor {
    shared: Arc<NamespaceShared>,
    settings: Arc<SupervisorSettings>,
    life: ActorLife,
}

impl Actor for NamespaceSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.life.vitals.beat(self.shared.clock.now_ms());
        ctx.add_stream(BroadcastStream::new(self.settings.registry.subscribe()));
        ctx.run_interval(self.settings.interval, |act, _| {
            act.shared.supervise(&act.settings.pool)
        });
    }
}

/// A session that ended anywhere (close, expiry on the hot path, shutdown)
/// has its actor stopped at once; the actor then tells its children.
impl StreamHandler<Result<SessionEvent, BroadcastStreamRecvError>> for NamespaceSupervisor {
    fn handle(
        &mut self,
        event: Result<SessionEvent, BroadcastStreamRecvError>,
        _: &mut Context<Self>,
    ) {
        // A lagged receiver missed some: the next check finds those.
        if let Ok(SessionEvent::Ended {
            session_id,
            namespace,
            ..
        }) = event
        {
            if namespace == self.shared.name {
                self.shared.sessions.stop(&session_id);
            }
        }
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // The registry lives as long as the gateway: nothing to do.
    }
}

super::supervision::supervised_actor!(NamespaceSupervisor);

/// Start the actor of a session already in the registry.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartSession(pub Arc<SessionEntry>);

impl Handler<StartSession> for NamespaceSupervisor {
    type Result = ();

    fn handle(&mut self, msg: StartSession, _: &mut Context<Self>) {
        self.life.vitals.handled();
        self.shared
            .sessions
            .start(msg.0, &self.settings.pool.next());
    }
}

/// Stop a session's actor (the session has ended, or the gateway stops).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopSession(pub String);

impl Handler<StopSession> for NamespaceSupervisor {
    type Result = ();

    fn handle(&mut self, msg: StopSession, _: &mut Context<Self>) {
        self.life.vitals.handled();
        self.shared.sessions.stop(&msg.0);
    }
}

counted!(NamespaceSupervisor: StartSession, StopSession, Observe);

impl Handler<Observe> for NamespaceSupervisor {
    type Result = ActorNode;

    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> ActorNode {
        self.life.vitals.handled();
        self.shared.node(ActorStatus::Running, &self.life.vitals)
    }
}

impl Child for NamespaceShared {
    type Actor = NamespaceSupervisor;
    type Env = SupervisorSettings;
    type Key = String;
    const KIND: ActorKind = ActorKind::NamespaceSupervisor;

    fn key(self: &Arc<Self>) -> String {
        self.id.clone()
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn actor(self: &Arc<Self>, env: &Arc<SupervisorSettings>, life: ActorLife) -> Self::Actor {
        if life.restarted {
            tracing::warn!(namespace = %self.name, "namespace supervisor restarted; adopting its sessions");
        }
        NamespaceSupervisor {
            shared: self.clone(),
            settings: env.clone(),
            life,
        }
    }

    fn clock(&self) -> Clock {
        self.clock
    }

    fn is_finished(&self) -> bool {
        false
    }

    fn node(&self, status: ActorStatus, vitals: &Vitals) -> ActorNode {
        NamespaceShared::node(self, status, vitals)
    }

    /// Without its supervisor a namespace's sessions are unsupervised: the
    /// gateway stops (an orchestrator restarts it) rather than serve so.
    fn give_up(&self, env: &Arc<SupervisorSettings>, why: &str) {
        env.failure
            .fail(format!("namespace supervisor `{}`: {why}", self.name));
    }

    fn restarted(&self, env: &Arc<SupervisorSettings>, restarts: u32) {
        env.registry
            .emit(SessionEvent::NamespaceSupervisorRestarted {
                namespace: self.name.clone(),
                restarts: u64::from(restarts),
            });
    }
}
