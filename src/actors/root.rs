//! RootSupervisor: restarts a dead NamespaceSupervisor (its children survive
//! in shared state), prunes session tombstones, and answers for the whole
//! tree. [`Supervisors`] is the handle the services use.

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc},
    time::SystemTime,
};

use actix::{Actor, AsyncContext, Context, Handler, ResponseFuture};

use super::{
    backend_pool::PoolHandle,
    namespace::{
        observe_namespace, CrashSupervisor, InjectFault, StartSession, StopSession,
        SupervisorSettings,
    },
    relay::RelayHandle,
    session::Vitals,
    ActorKind, ActorNode, ActorStatus, Fault, Mailbox, NamespaceHandle, NamespaceSupervisor,
    Observe, OBSERVE_TIMEOUT,
};
use crate::{
    backends::Backends,
    error::{Error, ErrorKind},
    session::{SessionEntry, SessionEvent},
};

pub struct RootSupervisor {
    namespaces: Vec<Arc<NamespaceHandle>>,
    pools: Vec<Arc<PoolHandle>>,
    relays: Vec<Arc<RelayHandle>>,
    settings: SupervisorSettings,
    vitals: Arc<Vitals>,
    created: SystemTime,
}

impl RootSupervisor {
    fn supervise(&mut self) {
        self.vitals.beat(self.settings.registry.clock().now_ms());
        self.settings.registry.prune_tombstones();
        let pool = self.settings.pool.clone();
        let now = self.settings.registry.clock().now_ms();
        self.settings.subscriptions.supervise(now, || pool.next());
        for handle in &self.namespaces {
            if !handle.addr().connected() {
                tracing::warn!(namespace = %handle.shared.name, "restarting namespace supervisor");
                let addr =
                    NamespaceSupervisor::start_with(handle.shared.clone(), self.settings.clone());
                handle.replace(addr);
                self.settings
                    .registry
                    .emit(SessionEvent::NamespaceSupervisorRestarted {
                        namespace: handle.shared.name.clone(),
                        restarts: handle.restarts.load(Ordering::Relaxed),
                    });
            }
        }
        for pool in &self.pools {
            if !pool.addr().connected() {
                tracing::warn!(backend = %pool.backend.name, "restarting backend pool actor");
                pool.restart(*self.settings.registry.clock(), &self.settings.pool.next());
            }
        }
        for relay in &self.relays {
            relay.supervise(&self.settings.pool.next());
        }
    }
}

impl Actor for RootSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.vitals.beat(self.settings.registry.clock().now_ms());
        ctx.run_interval(self.settings.interval, |act, _| act.supervise());
    }
}

super::mailbox::counted!(RootSupervisor: Observe);

impl Handler<Observe> for RootSupervisor {
    type Result = ResponseFuture<ActorNode>;

    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> Self::Result {
        self.vitals.handled();
        let namespaces = self.namespaces.clone();
        let pools = self.pools.clone();
        let relays = self.relays.clone();
        let vitals = self.vitals.clone();
        let created = self.created;
        let clock = *self.settings.registry.clock();
        Box::pin(async move {
            let mut children = Vec::with_capacity(namespaces.len());
            for handle in namespaces {
                let restarts = handle.restarts.load(Ordering::Relaxed);
                let answer =
                    tokio::time::timeout(2 * OBSERVE_TIMEOUT, handle.addr().send(Observe)).await;
                children.push(match answer {
                    Ok(Ok(mut node)) => {
                        node.restarts = restarts;
                        node
                    }
                    _ => {
                        observe_namespace(handle.shared.clone(), restarts, ActorStatus::Failed)
                            .await
                    }
                });
            }
            let namespace_count = children.len();
            for pool in pools {
                let mut node = pool.addr().observe_or(|| pool.failed_node(&clock)).await;
                node.restarts = pool.restarts.load(Ordering::Relaxed);
                children.push(node);
            }
            let pool_count = children.len() - namespace_count;
            for relay in relays {
                children.push(relay.observe().await);
            }
            ActorNode {
                kind: ActorKind::Root,
                id: "root".to_string(),
                parent: None,
                status: ActorStatus::Running,
                created,
                last_progress: clock.wall_at(vitals.last_progress_ms.load(Ordering::Relaxed)),
                messages_handled: vitals.handled.load(Ordering::Relaxed),
                mailbox_depth: vitals.queued.load(Ordering::Relaxed),
                restarts: 0,
                state: serde_json::json!({
                    "namespaces": namespace_count,
                    "backend_pools": pool_count,
                    "mailbox_listeners": children.len() - namespace_count - pool_count,
                }),
                children,
            }
        })
    }
}

/// The services' handle on the actor tree.
pub struct Supervisors {
    root: Mailbox<RootSupervisor>,
    subscriptions: Arc<super::subscription::Subscriptions>,
    namespaces: BTreeMap<String, Arc<NamespaceHandle>>,
    pools: Vec<Arc<PoolHandle>>,
}

fn unavailable(what: &str) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "SUPERVISOR_UNAVAILABLE",
        format!("{what} is restarting; retry shortly"),
    )
}

impl Supervisors {
    /// Starts the tree; must run inside the actix system.
    pub fn start<'a>(
        namespaces: impl IntoIterator<Item = &'a String>,
        backends: &Backends,
        relays: Vec<Arc<RelayHandle>>,
        settings: SupervisorSettings,
    ) -> Self {
        let namespaces: BTreeMap<String, Arc<NamespaceHandle>> = namespaces
            .into_iter()
            .map(|n| {
                (
                    n.clone(),
                    Arc::new(NamespaceSupervisor::spawn(n, settings.clone())),
                )
            })
            .collect();
        let pools: Vec<Arc<PoolHandle>> = backends
            .iter()
            .filter(|b| b.client.is_some())
            .map(|b| {
                Arc::new(PoolHandle::start(
                    b.clone(),
                    *settings.registry.clock(),
                    &settings.pool.next(),
                ))
            })
            .collect();
        let vitals = Arc::new(Vitals::default());
        let root = RootSupervisor {
            namespaces: namespaces.values().cloned().collect(),
            pools: pools.clone(),
            relays,
            settings: settings.clone(),
            vitals: vitals.clone(),
            created: SystemTime::now(),
        };
        let root = Mailbox::new(
            RootSupervisor::start_in_arbiter(&settings.pool.next(), move |_| root),
            vitals,
        );
        Supervisors {
            root,
            subscriptions: settings.subscriptions.clone(),
            namespaces,
            pools,
        }
    }

    fn namespace(&self, name: &str) -> Result<&NamespaceHandle, Error> {
        self.namespaces
            .get(name)
            .map(|h| h.as_ref())
            .ok_or_else(|| Error::internal(format!("no supervisor for namespace {name}")))
    }

    pub async fn start_session(&self, entry: Arc<SessionEntry>) -> Result<(), Error> {
        let handle = self.namespace(entry.namespace())?;
        handle
            .addr()
            .send(StartSession(entry))
            .await
            .map_err(|_| unavailable("the namespace supervisor"))
    }

    /// Fire-and-forget: the session has already left the registry.
    pub fn stop_session(&self, namespace: &str, session_id: &str) {
        if let Ok(handle) = self.namespace(namespace) {
            handle.addr().do_send(StopSession(session_id.to_string()));
        }
    }

    /// Makes a namespace's supervisor panic; fire and forget, since it
    /// never answers.
    pub fn crash_supervisor(&self, namespace: &str) -> Result<(), Error> {
        self.namespace(namespace)?.addr().do_send(CrashSupervisor);
        Ok(())
    }

    pub async fn inject_fault(
        &self,
        namespace: &str,
        session_id: &str,
        fault: Fault,
    ) -> Result<(), Error> {
        let handle = self.namespace(namespace)?;
        handle
            .addr()
            .send(InjectFault {
                session_id: session_id.to_string(),
                fault,
            })
            .await
            .map_err(|_| unavailable("the namespace supervisor"))?
    }

    /// The live actor tree.
    /// The live actor tree; subscriptions appear under their sessions.
    pub async fn observe(&self) -> Result<ActorNode, Error> {
        let mut tree = self
            .root
            .send(Observe)
            .await
            .map_err(|_| unavailable("the root supervisor"))?;
        let mut children = self.subscriptions.observe().await;
        children.extend(self.subscriptions.transactions.observe().await);
        for node in children {
            let parent = node.parent.clone().unwrap_or_default();
            if let Some(session) = find_mut(&mut tree, &parent) {
                session.children.push(node);
            }
        }
        Ok(tree)
    }

    /// Supervisors whose mailbox is closed (empty when all run).
    pub fn down_supervisors(&self) -> Vec<String> {
        let mut down: Vec<String> = self
            .namespaces
            .values()
            .filter(|h| !h.addr().connected())
            .map(|h| format!("namespace/{}", h.shared.name))
            .collect();
        down.extend(
            self.pools
                .iter()
                .filter(|p| !p.addr().connected())
                .map(|p| format!("backend/{}", p.backend.name)),
        );
        if !self.root.connected() {
            down.push("root".to_string());
        }
        down
    }

    /// Stops every session actor; used at shutdown after sessions ended.
    pub fn stop_all_sessions(&self) {
        for handle in self.namespaces.values() {
            handle.shared.stop_all();
        }
    }
}

fn find_mut<'a>(node: &'a mut ActorNode, id: &str) -> Option<&'a mut ActorNode> {
    if node.id == id {
        return Some(node);
    }
    node.children.iter_mut().find_map(|c| find_mut(c, id))
}
