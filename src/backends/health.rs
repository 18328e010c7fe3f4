//! A backend's health as its pool actor last saw it, readable without locks
//! by the data path and the admin view, with a watch channel that the
//! readiness reporter follows.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use actix::Message;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::watch;

use crate::actors::mailbox::CountedRecipient;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum HealthState {
    /// Not connected yet.
    Connecting = 0,
    Up = 1,
    Down = 2,
}

impl HealthState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => HealthState::Connecting,
            1 => HealthState::Up,
            _ => HealthState::Down,
        }
    }
}

/// Asks the pool actor to check its backend now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckNow;

pub struct Health {
    state: AtomicU8,
    checker: RwLock<Option<CountedRecipient<CheckNow>>>,
    last_error: Mutex<Option<String>>,
    pub checks: AtomicU64,
    pub failures: AtomicU64,
    /// Times the backend came back after being down.
    pub recoveries: AtomicU64,
    changed: watch::Sender<HealthState>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Health {
            state: AtomicU8::new(HealthState::Connecting as u8),
            checker: RwLock::new(None),
            last_error: Mutex::new(None),
            checks: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            changed: watch::channel(HealthState::Connecting).0,
        }
    }

    pub fn state(&self) -> HealthState {
        HealthState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn is_up(&self) -> bool {
        self.state() == HealthState::Up
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    /// Follows state changes.
    pub fn subscribe(&self) -> watch::Receiver<HealthState> {
        self.changed.subscribe()
    }

    /// Registers the pool actor that answers [`Health::suspect`].
    pub fn set_checker(&self, checker: CountedRecipient<CheckNow>) {
        *self.checker.write() = Some(checker);
    }

    /// A call saw the backend fail: ask the pool actor to check it now
    /// (fire and forget; the call never waits on the actor).
    pub fn suspect(&self) {
        if let Some(checker) = self.checker.read().as_ref() {
            checker.do_send(CheckNow);
        }
    }

    pub fn mark_up(&self) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let before = self.set(HealthState::Up);
        if before == HealthState::Down {
            self.recoveries.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn mark_down(&self, error: String) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(error);
        self.set(HealthState::Down);
    }

    fn set(&self, state: HealthState) -> HealthState {
        let before = HealthState::from_u8(self.state.swap(state as u8, Ordering::AcqRel));
        if before != state {
            self.changed.send_replace(state);
        }
        before
    }
}
