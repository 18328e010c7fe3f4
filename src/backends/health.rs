//! A backend's health as its pool actor last saw it, readable without locks
//! by the data path and the admin view, with a watch channel that the
//! readiness reporter follows. While a backend is known down, calls on it
//! are refused at the gate at once ([`Health::refusal`]).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::watch;

use crate::error::{Error, ErrorKind};

/// The shortest retry delay a refusal suggests.
const MIN_RETRY_MS: u64 = 50;

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

/// Asks whoever checks the backend (its pool actor) to check it now; must
/// not block (it sends a message).
pub type Checker = Box<dyn Fn() + Send + Sync>;

pub struct Health {
    state: AtomicU8,
    checker: RwLock<Option<Checker>>,
    last_error: Mutex<Option<String>>,
    pub checks: AtomicU64,
    pub failures: AtomicU64,
    /// Times the backend came back after being down.
    pub recoveries: AtomicU64,
    /// While down: when (epoch ms) the pool actor checks again.
    next_check_ms: AtomicU64,
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
            next_check_ms: AtomicU64::new(0),
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

    /// Registers what answers [`Health::suspect`] (the pool actor).
    pub fn set_checker(&self, checker: Checker) {
        *self.checker.write() = Some(checker);
    }

    /// A call saw the backend fail: ask for a check now (fire and forget;
    /// the call never waits on the actor).
    pub fn suspect(&self) {
        if let Some(checker) = self.checker.read().as_ref() {
            checker();
        }
    }

    pub fn mark_up(&self) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let before = self.set(HealthState::Up);
        if before == HealthState::Down {
            self.recoveries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The backend failed its check; the pool actor checks again in
    /// `retry_in`.
    pub fn mark_down(&self, error: String, retry_in: std::time::Duration) {
        let at = crate::backends::epoch_ms().max(0) as u64;
        self.next_check_ms.store(
            at.saturating_add(crate::clock::ms(retry_in)),
            Ordering::Relaxed,
        );
        self.checks.fetch_add(1, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(error);
        self.set(HealthState::Down);
    }

    /// While the backend is known down, the answer for a call on it: at
    /// once UNAVAILABLE, with the last check's error and when to retry
    /// (the pool actor's next check), rather than waiting out a connect
    /// timeout per call.
    pub fn refusal(&self, backend: &str) -> Option<Error> {
        if self.state() != HealthState::Down {
            return None;
        }
        let now = crate::backends::epoch_ms().max(0) as u64;
        let wait = self
            .next_check_ms
            .load(Ordering::Relaxed)
            .saturating_sub(now)
            .max(MIN_RETRY_MS);
        let why = self
            .last_error()
            .unwrap_or_else(|| "its check failed".into());
        Some(
            Error::new(
                ErrorKind::Unavailable,
                "BACKEND_DOWN",
                format!("backend `{backend}` is down ({why}); retry in {wait} ms"),
            )
            .with("backend", backend)
            .with("retry_after_ms", wait.to_string()),
        )
    }

    fn set(&self, state: HealthState) -> HealthState {
        let before = HealthState::from_u8(self.state.swap(state as u8, Ordering::AcqRel));
        if before != state {
            self.changed.send_replace(state);
        }
        before
    }
}
