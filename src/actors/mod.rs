//! The actor tree: lifecycle work (session expiry, supervision, and later
//! subscriptions, transactions, backend pools) runs in actix actors on a pool
//! of arbiters; the data path never waits on them.
//!
//! ```text
//! RootSupervisor
//!   +- NamespaceSupervisor (one per namespace)
//!   |    +- SessionActor (one per session with children; activated on demand)
//!   |         +- SubscriptionActor (one per Subscribe stream)
//!   |         +- TransactionActor (one per Transaction stream)
//!   +- BackendPoolActor (one per backend with a client)
//!   +- MailboxListenerActor (one per outbox relay)
//! ```
//!
//! The tree is real: handlers ask a session's actor to start its children,
//! and a child ends when it is told its session ended. Sessions are virtual
//! actors: an idle session is its registry entry and a slot in its
//! namespace's [`expiry`] schedule; its SessionActor is activated when it
//! starts a child and retired once it has none, so idle sessions cost no
//! actor, no timer and no supervision probe. Every kind of child
//! is supervised with the one primitive in [`supervision`]: progress checks
//! by probe, a frozen or dead child restarted onto the same handle, panics,
//! stalls and restarts counted, and a limit after which the supervisor
//! gives up and says why. Every actor answers [`Observe`] with an
//! [`ActorNode`].

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc,
};

use actix::{Arbiter, ArbiterHandle};
use tokio::sync::Notify;

pub mod backend_pool;
pub mod expiry;
pub mod mailbox;
pub mod namespace;
pub mod observe;
pub mod pubsub;
pub mod relay;
pub mod root;
pub mod session;
pub mod subscription;
pub mod supervision;
pub mod transaction;

pub use mailbox::Mailbox;
pub use namespace::{NamespaceSupervisor, SupervisorSettings};
pub use observe::{ActorKind, ActorNode, ActorStatus, Life, Observe, OBSERVE_TIMEOUT};
pub use root::{RootSupervisor, SupervisionFailure, Supervisors};
pub use session::SessionActor;
#[cfg(any(test, feature = "drills"))]
pub use supervision::Fault;

/// Arbiters (threads with their own event loop) that actors are placed on,
/// round-robin.
pub struct ArbiterPool {
    arbiters: Vec<Arbiter>,
    next: AtomicUsize,
}

impl ArbiterPool {
    /// `threads == 0` places every actor on the calling thread's arbiter
    /// (tests with paused time need that: one runtime, one clock).
    pub fn new(threads: usize) -> Self {
        ArbiterPool {
            arbiters: (0..threads).map(|_| Arbiter::new()).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn next(&self) -> ArbiterHandle {
        if self.arbiters.is_empty() {
            return Arbiter::current();
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
        self.arbiters[i].handle()
    }

    /// Asks the arbiter threads to stop once their current work is done;
    /// does not block.
    pub fn stop(&self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

/// Lets a supervisor end a child that can no longer process messages (one
/// stuck waiting): the child waits on the switch alongside its work.
#[derive(Default)]
pub struct KillSwitch {
    fired: AtomicBool,
    notify: Notify,
}

impl KillSwitch {
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    pub async fn fired(self: Arc<Self>) {
        loop {
            let notified = self.notify.notified();
            if self.is_fired() {
                return;
            }
            notified.await;
        }
    }
}
