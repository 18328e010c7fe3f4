//! Observable state: every actor describes itself as an [`ActorNode`], and
//! the admin view is the tree of those nodes.

use std::time::{Duration, SystemTime};

use actix::{Message, MessageResponse};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    Root,
    NamespaceSupervisor,
    Session,
    BackendPool,
    Subscription,
    PubSubSubscription,
    Transaction,
    MailboxListener,
}

impl ActorKind {
    pub const ALL: [ActorKind; 8] = [
        ActorKind::Root,
        ActorKind::NamespaceSupervisor,
        ActorKind::Session,
        ActorKind::BackendPool,
        ActorKind::Subscription,
        ActorKind::PubSubSubscription,
        ActorKind::Transaction,
        ActorKind::MailboxListener,
    ];

    /// The kind as the admin API and metrics name it (`session`,
    /// `mailbox_listener`, ...), the same as its JSON form.
    pub fn name(self) -> &'static str {
        match self {
            ActorKind::Root => "root",
            ActorKind::NamespaceSupervisor => "namespace_supervisor",
            ActorKind::Session => "session",
            ActorKind::BackendPool => "backend_pool",
            ActorKind::Subscription => "subscription",
            ActorKind::PubSubSubscription => "pub_sub_subscription",
            ActorKind::Transaction => "transaction",
            ActorKind::MailboxListener => "mailbox_listener",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorStatus {
    Running,
    /// No actor runs, and none is needed: a session with no children is
    /// served from its registry entry until it starts one.
    Idle,
    /// Its mailbox is closed or it stopped making progress; the supervisor
    /// restarts it on its next check.
    Failed,
}

#[derive(Debug, Clone, Serialize, MessageResponse)]
pub struct ActorNode {
    pub kind: ActorKind,
    pub id: String,
    pub parent: Option<String>,
    pub status: ActorStatus,
    #[serde(with = "humantime_serde")]
    pub created: SystemTime,
    #[serde(with = "humantime_serde")]
    pub last_progress: SystemTime,
    pub messages_handled: u64,
    /// Messages waiting in its mailbox.
    pub mailbox_depth: u64,
    pub restarts: u64,
    /// Panics, stalls and restarts its supervisor saw, and whether it gave up.
    pub supervision: super::supervision::Supervision,
    /// Kind-specific state (a session's expiry, a pool's connections, ...).
    pub state: serde_json::Value,
    pub children: Vec<ActorNode>,
}

/// What every node says about its actor's life.
pub struct Life<'a> {
    pub created: SystemTime,
    pub vitals: &'a super::supervision::Vitals,
    pub clock: &'a crate::session::Clock,
    pub restarts: u64,
}

impl ActorNode {
    /// A childless node of `parent`, its progress and handled count read
    /// from the actor's vitals.
    pub fn leaf(
        kind: ActorKind,
        id: String,
        parent: String,
        status: ActorStatus,
        life: Life<'_>,
        state: &impl Serialize,
    ) -> Self {
        use std::sync::atomic::Ordering;
        ActorNode {
            kind,
            id,
            parent: Some(parent),
            status,
            created: life.created,
            last_progress: life
                .clock
                .wall_at(life.vitals.last_progress_ms.load(Ordering::Relaxed)),
            messages_handled: life.vitals.handled.load(Ordering::Relaxed),
            mailbox_depth: life.vitals.queued.load(Ordering::Relaxed),
            restarts: life.restarts,
            supervision: Default::default(),
            // Each kind's state is a typed struct; the tree carries it as
            // JSON for the admin view.
            state: serde_json::to_value(state).unwrap_or_default(),
            children: Vec::new(),
        }
    }

    /// Every node of the tree, depth first.
    pub fn walk(&self) -> Vec<&ActorNode> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }

    pub fn find(&self, id: &str) -> Option<&ActorNode> {
        self.walk().into_iter().find(|n| n.id == id)
    }
}

/// How long a parent waits for a child's observation before describing it
/// from saved state as failed (the root waits twice that for a namespace,
/// which waits for its children).
pub const OBSERVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Ask an actor (and, for supervisors, its children) for its state.
#[derive(Message)]
#[rtype(result = "ActorNode")]
pub struct Observe;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_the_json_names() {
        for kind in ActorKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
    }
}
