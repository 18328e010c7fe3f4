//! RootSupervisor: the top of the tree. With the one supervision primitive
//! it checks the namespace supervisors, the backend pool actors and the
//! outbox relays on every tick; it also prunes session tombstones and the
//! indexes over sessions' children. If the root itself dies the gateway
//! must not go on serving unsupervised: [`SupervisionFailure`] tells
//! `server::run`, which stops and returns an error (the process exits
//! non-zero, and an orchestrator restarts it). [`Supervisors`] is the
//! handle the services use.

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc},
    time::SystemTime,
};

use actix::{Actor, AsyncContext, Context, Handler, ResponseFuture};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{
    backend_pool::PoolShared,
    namespace::{HostSession, NamespaceShared, StartSessionChild, StopSession, SupervisorSettings},
    relay::RelayShared,
    session::{NewChild, SessionChildren, StartChild},
    subscription::Subscriptions,
    supervision::{CheckTiming, Children, Supervised, Vitals},
    ActorKind, ActorNode, ActorStatus, Life, Mailbox, Observe,
};
use crate::{
    backends::Backends,
    error::{Error, ErrorKind},
    session::{SessionEntry, SessionHost, SessionRegistry},
};

/// Set when supervision itself failed (the root died, or a namespace
/// supervisor could not be kept running); `server::run` waits on it.
#[derive(Default)]
pub struct SupervisionFailure {
    why: Mutex<Option<String>>,
    notify: Notify,
    /// The gateway is stopping: actors ending now is expected.
    stopping: std::sync::atomic::AtomicBool,
}

impl SupervisionFailure {
    pub fn fail(&self, why: String) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        let mut slot = self.why.lock();
        if slot.is_none() {
            tracing::error!(why, "supervision failed; the gateway stops");
            *slot = Some(why);
        }
        drop(slot);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// Resolves with the reason once supervision failed.
    pub async fn failed(&self) -> String {
        loop {
            let notified = self.notify.notified();
            if let Some(why) = self.why.lock().clone() {
                return why;
            }
            notified.await;
        }
    }

    /// The gateway is shutting down; later failures are not failures.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }
}

/// Held by the root actor: dropped when it stops for any reason, including
/// a panic (the arbiter drops a panicked actor's context).
struct RootAlive(Arc<SupervisionFailure>);

impl Drop for RootAlive {
    fn drop(&mut self) {
        self.0.fail("the root supervisor stopped".to_string());
    }
}

/// What the root watches.
pub struct Tree {
    pub namespaces: Children<NamespaceShared>,
    pub pools: Children<PoolShared>,
    pub relays: Children<RelayShared>,
    /// Indexes over sessions' children, pruned on the root's tick.
    pub subscriptions: Arc<Subscriptions>,
    settings: Arc<SupervisorSettings>,
    timing: Mutex<CheckTiming>,
    vitals: Arc<Vitals>,
    created: SystemTime,
}

impl Tree {
    fn supervise(&self) {
        let registry = &self.settings.registry;
        let now = registry.clock().now_ms();
        self.vitals.beat(now);
        registry.prune_tombstones();
        self.subscriptions.prune(now);
        let Some(judge) = self.timing.lock().judge(now) else {
            return;
        };
        let pool = &self.settings.pool;
        let arbiter = || pool.next();
        let max = self.settings.max_restarts;
        self.namespaces.check_all(judge, max, &arbiter);
        self.pools.check_all(judge, max, &arbiter);
        self.relays.check_all(judge, max, &arbiter);
    }

    async fn observe(&self) -> ActorNode {
        let mut namespaces = self.namespaces.observe().await;
        for node in &mut namespaces {
            if let Some(ns) = self.namespaces.get(&node.id) {
                node.children = ns.child.observe_sessions().await;
                let state = super::namespace::NamespaceState {
                    namespace: &ns.child.name,
                    sessions: node.children.len(),
                    child_restarts: Some(node.children.iter().map(|s| s.restarts).sum()),
                };
                node.state = serde_json::to_value(&state).unwrap_or_default();
            }
        }
        let pools = self.pools.observe().await;
        let relays = self.relays.observe().await;
        let state = RootState {
            namespaces: namespaces.len(),
            backend_pools: pools.len(),
            mailbox_listeners: relays.len(),
        };
        let clock = self.settings.registry.clock();
        let mut node = ActorNode::leaf(
            ActorKind::Root,
            "root".to_string(),
            String::new(),
            ActorStatus::Running,
            Life {
                created: self.created,
                vitals: &self.vitals,
                clock,
                restarts: 0,
            },
            &state,
        );
        node.parent = None;
        node.children = namespaces.into_iter().chain(pools).chain(relays).collect();
        node
    }
}

/// The root's observable state.
#[derive(serde::Serialize)]
struct RootState {
    namespaces: usize,
    backend_pools: usize,
    mailbox_listeners: usize,
}

pub struct RootSupervisor {
    tree: Arc<Tree>,
    _alive: RootAlive,
}

impl Actor for RootSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.tree
            .vitals
            .beat(self.tree.settings.registry.clock().now_ms());
        ctx.run_interval(self.tree.settings.interval, |act, _| act.tree.supervise());
    }
}

super::mailbox::counted!(RootSupervisor: Observe);

impl Handler<Observe> for RootSupervisor {
    type Result = ResponseFuture<ActorNode>;

    fn handle(&mut self, _: Observe, _: &mut Context<Self>) -> Self::Result {
        self.tree.vitals.handled();
        let tree = self.tree.clone();
        Box::pin(async move { tree.observe().await })
    }
}

#[cfg(any(test, feature = "drills"))]
impl Handler<super::Fault> for RootSupervisor {
    type Result = ();

    fn handle(&mut self, fault: super::Fault, _: &mut Context<Self>) {
        panic!("injected {fault:?} in the root supervisor");
    }
}

#[cfg(any(test, feature = "drills"))]
super::mailbox::counted!(RootSupervisor: super::Fault);

/// The services' handle on the actor tree.
pub struct Supervisors {
    root: Mailbox<RootSupervisor>,
    tree: Arc<Tree>,
    /// The relays running now (a config reload changes them), read by
    /// every Transact Write and each scrape without visiting the tree.
    relays: arc_swap::ArcSwap<Vec<Arc<RelayShared>>>,
    by_name: BTreeMap<String, Arc<Supervised<NamespaceShared>>>,
    pub failure: Arc<SupervisionFailure>,
}

/// What [`Supervisors::apply_relays`] did, by relay id.
#[derive(Debug, Default)]
pub struct RelayChanges {
    pub started: Vec<String>,
    pub stopped: Vec<String>,
}

/// How long a call waits for an actor to start a session or a child.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) fn unavailable(what: &str) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "SUPERVISOR_UNAVAILABLE",
        format!("{what} is restarting; retry shortly"),
    )
}

#[async_trait::async_trait]
impl SessionHost for Supervisors {
    async fn host_session(&self, entry: Arc<SessionEntry>) -> Result<(), Error> {
        let handle = self.namespace(entry.namespace())?;
        // Bounded: a stuck supervisor is restarted by the root meanwhile.
        tokio::time::timeout(START_TIMEOUT, handle.mailbox().send(HostSession(entry)))
            .await
            .map_err(|_| unavailable("the namespace supervisor"))?
            .map_err(|_| unavailable("the namespace supervisor"))
    }

    /// Fire-and-forget: the session has already left the registry.
    fn stop_session(&self, namespace: &str, session_id: &str) {
        if let Ok(handle) = self.namespace(namespace) {
            handle
                .mailbox()
                .do_send(StopSession(session_id.to_string()));
        }
    }

    fn stop_all_sessions(&self) {
        self.failure.stopping();
        for handle in self.by_name.values() {
            handle.child.stop_all();
        }
    }
}

impl Supervisors {
    /// Starts the tree; must run inside the actix system, on the gateway's
    /// main runtime (pools and relays do their I/O there).
    pub fn start<'a>(
        namespaces: impl IntoIterator<Item = (&'a String, u32)>,
        backends: &Backends,
        relays: Vec<Arc<RelayShared>>,
        subscriptions: Arc<Subscriptions>,
        settings: SupervisorSettings,
    ) -> Self {
        let settings = Arc::new(settings);
        let clock = *settings.registry.clock();
        let tree = Arc::new(Tree {
            namespaces: Children::new(settings.clone(), settings.restarts.clone()),
            pools: Children::new(Arc::new(()), settings.restarts.clone()),
            relays: Children::new(
                Arc::new(tokio::runtime::Handle::current()),
                settings.restarts.clone(),
            ),
            subscriptions,
            timing: Mutex::new(CheckTiming::new(settings.interval)),
            vitals: Arc::default(),
            created: SystemTime::now(),
            settings: settings.clone(),
        });
        let by_name = namespaces
            .into_iter()
            .map(|(name, max_restarts)| {
                let shared = Arc::new(NamespaceShared::new(name, max_restarts, &settings));
                (
                    name.clone(),
                    tree.namespaces.start(shared, &settings.pool.next()),
                )
            })
            .collect();
        for backend in backends.iter().filter(|b| b.client.is_some()) {
            tree.pools.start(
                Arc::new(PoolShared::new(backend.clone(), clock)),
                &settings.pool.next(),
            );
        }
        for relay in &relays {
            tree.relays.start(relay.clone(), &settings.pool.next());
        }
        let failure = settings.failure.clone();
        let root = RootSupervisor {
            tree: tree.clone(),
            _alive: RootAlive(failure.clone()),
        };
        let root = Mailbox::new(
            RootSupervisor::start_in_arbiter(&settings.pool.next(), move |_| root),
            tree.vitals.clone(),
        );
        Supervisors {
            root,
            tree,
            relays: arc_swap::ArcSwap::from_pointee(relays),
            by_name,
            failure,
        }
    }

    fn namespace(&self, name: &str) -> Result<&Arc<Supervised<NamespaceShared>>, Error> {
        self.by_name
            .get(name)
            .ok_or_else(|| Error::internal(format!("no supervisor for namespace {name}")))
    }

    pub fn registry(&self) -> &Arc<SessionRegistry> {
        &self.tree.settings.registry
    }

    /// Asks a session's actor to start one of its children, and waits
    /// until it has: straight to the actor when the session has one, else
    /// through its namespace supervisor, which activates it.
    pub async fn start_child(
        &self,
        entry: &Arc<SessionEntry>,
        child: NewChild,
    ) -> Result<(), Error> {
        let namespace = self.namespace(entry.namespace())?;
        let failed = || {
            entry
                .ended_error()
                .unwrap_or_else(|| unavailable("the session's actor"))
        };
        // Bounded: a stuck supervisor or session actor is restarted
        // meanwhile.
        if let Some((session, starting)) = namespace.child.activate(entry, None) {
            let sent = session.mailbox().send(StartChild(child.clone(), starting));
            match tokio::time::timeout(START_TIMEOUT, sent).await {
                Ok(Ok(started)) => return started,
                Err(_) => return Err(failed()),
                // The actor stopped (retired, or it failed) before taking
                // the child: its supervisor starts one for it.
                Ok(Err(_)) => {}
            }
        }
        let started = tokio::time::timeout(
            START_TIMEOUT,
            namespace
                .mailbox()
                .send(StartSessionChild(entry.clone(), child)),
        )
        .await
        .ok()
        .and_then(Result::ok);
        started.ok_or_else(failed)?
    }

    /// A session's children, if it has any.
    pub fn children_of(&self, entry: &SessionEntry) -> Option<Arc<SessionChildren>> {
        self.namespace(entry.namespace())
            .ok()?
            .child
            .env()
            .children_of(&entry.id)
    }

    /// The live actor tree.
    pub async fn observe(&self) -> Result<ActorNode, Error> {
        self.root
            .send(Observe)
            .await
            .map_err(|_| unavailable("the root supervisor"))
    }

    /// Supervisors whose mailbox is closed (empty when all run).
    pub fn down_supervisors(&self) -> Vec<String> {
        let mut down: Vec<String> = self
            .tree
            .namespaces
            .all()
            .iter()
            .filter(|h| !h.mailbox().connected())
            .map(|h| format!("namespace/{}", h.child.name))
            .collect();
        down.extend(
            self.tree
                .pools
                .all()
                .iter()
                .filter(|p| !p.mailbox().connected())
                .map(|p| format!("backend/{}", p.child.backend.name)),
        );
        if !self.root.connected() {
            down.push("root".to_string());
        }
        down.sort();
        down
    }

    /// Restarts by kind since the gateway started.
    pub fn restarts(&self) -> &Arc<super::supervision::Restarts> {
        &self.tree.settings.restarts
    }

    /// The outbox relays running now.
    pub fn relays(&self) -> Arc<Vec<Arc<RelayShared>>> {
        self.relays.load_full()
    }

    /// Runs `wanted` as the outbox relays (a config reload): a relay whose
    /// spec is unchanged runs on untouched; a removed or changed one is
    /// stopped and its lease let go (another gateway of a cluster, or its
    /// replacement, takes over where its cursor stands); a new or changed
    /// one starts. A new relay starts before its mailbox's first
    /// unprocessed row. Returns the ids started and stopped.
    pub async fn apply_relays(&self, wanted: Vec<Arc<RelayShared>>) -> RelayChanges {
        let running = self.relays.load_full();
        let mut next = Vec::new();
        let mut changes = RelayChanges::default();
        let mut starting = Vec::new();
        for relay in wanted {
            match running.iter().find(|r| r.child_id() == relay.child_id()) {
                Some(same) if same.spec == relay.spec => next.push(same.clone()),
                _ => starting.push(relay),
            }
        }
        for old in running.iter() {
            if !next.iter().any(|r| Arc::ptr_eq(r, old)) {
                self.tree.relays.stop(old.child_id());
                old.retire().await;
                changes.stopped.push(old.child_id().to_string());
            }
        }
        for relay in starting {
            self.tree
                .relays
                .start(relay.clone(), &self.tree.settings.pool.next());
            changes.started.push(relay.child_id().to_string());
            next.push(relay);
        }
        self.relays.store(Arc::new(next));
        changes
    }

    /// Delivers a deliberate fault to the actor with this id: a session, a
    /// subscription, a transaction, `namespace/<ns>`, `backend/<name>`,
    /// `relay/<ns>/<name>` or `root` (supervision drills; tests only).
    #[cfg(any(test, feature = "drills"))]
    pub fn drill(&self, id: &str, fault: super::Fault) -> Result<(), Error> {
        if id == "root" {
            self.root.do_send(fault);
            return Ok(());
        }
        if let Some(n) = self.tree.namespaces.get(id) {
            n.mailbox().do_send(fault);
            return Ok(());
        }
        if let Some(p) = self.tree.pools.get(id) {
            p.mailbox().do_send(fault);
            return Ok(());
        }
        if let Some(r) = self.tree.relays.get(id) {
            r.mailbox().do_send(fault);
            return Ok(());
        }
        if let Some(entry) = self.registry().by_id(id) {
            // Its actor, activated if the session is idle.
            let namespace = self.namespace(entry.namespace())?;
            namespace
                .mailbox()
                .do_send(super::namespace::DrillSession(entry, fault));
            return Ok(());
        }
        for namespace in self.by_name.values() {
            if let Some(s) = namespace.child.sessions.get(id) {
                s.mailbox().do_send(fault);
                return Ok(());
            }
            for children in namespace.child.env().all_children() {
                if let Some(c) = children.queue.get(id) {
                    c.mailbox().do_send(fault);
                    return Ok(());
                }
                if let Some(c) = children.pubsub.get(id) {
                    c.mailbox().do_send(fault);
                    return Ok(());
                }
                if let Some(c) = children.transactions.get(id) {
                    c.mailbox().do_send(fault);
                    return Ok(());
                }
            }
        }
        Err(Error::new(
            ErrorKind::NotFound,
            "ACTOR_NOT_FOUND",
            format!("no live actor `{id}`"),
        ))
    }
}
