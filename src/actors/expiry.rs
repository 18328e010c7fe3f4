//! A namespace's session deadlines, in one schedule its supervisor keeps:
//! one timer per namespace instead of one per session, so an idle session
//! costs a heap slot (16 bytes), not an actor and a timer.
//!
//! Deadlines are kept lazily. The hot path only moves a session's expiry
//! forward (an atomic in its entry); when the deadline it was filed under
//! comes, the supervisor reads the current one and files the session again
//! if it moved. Ended sessions leave at their deadline, or earlier when
//! they outnumber the open ones (see [`ExpirySchedule::push`]).

use std::{cmp::Reverse, collections::BinaryHeap, sync::Arc};

use crate::session::SessionEntry;

/// What the schedule needs of a session.
pub trait Expiring {
    /// Its deadline now (it only moves forward).
    fn expires_ms(&self) -> u64;
    fn is_ended(&self) -> bool;
}

impl Expiring for SessionEntry {
    fn expires_ms(&self) -> u64 {
        SessionEntry::expires_ms(self)
    }

    fn is_ended(&self) -> bool {
        self.state().is_ended()
    }
}

/// A session filed under the deadline it had then.
struct Due<T> {
    at_ms: u64,
    entry: Arc<T>,
}

impl<T> PartialEq for Due<T> {
    fn eq(&self, other: &Self) -> bool {
        self.at_ms == other.at_ms
    }
}

impl<T> Eq for Due<T> {}

impl<T> PartialOrd for Due<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Due<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at_ms.cmp(&other.at_ms)
    }
}

/// Ended sessions the schedule may hold before it sweeps them out, beyond
/// as many as it holds open ones.
const SWEEP_SLACK: usize = 1024;

pub struct ExpirySchedule<T = SessionEntry> {
    heap: BinaryHeap<Reverse<Due<T>>>,
}

impl<T> Default for ExpirySchedule<T> {
    fn default() -> Self {
        ExpirySchedule {
            heap: BinaryHeap::new(),
        }
    }
}

impl<T: Expiring> ExpirySchedule<T> {
    /// Files `entry` under `at_ms`. Sessions that end early (closed) stay
    /// until their deadline comes; when the schedule holds more than twice
    /// the `open` sessions (plus some slack) it drops the ended ones, so
    /// churn cannot grow it: amortized O(1) per push.
    pub fn push(&mut self, at_ms: u64, entry: Arc<T>, open: usize) {
        self.heap.push(Reverse(Due { at_ms, entry }));
        if self.heap.len() > open.saturating_mul(2).saturating_add(SWEEP_SLACK) {
            self.heap.retain(|d| !d.0.entry.is_ended());
        }
    }

    /// The earliest deadline filed.
    pub fn earliest(&self) -> Option<u64> {
        self.heap.peek().map(|d| d.0.at_ms)
    }

    /// Takes every session filed under a deadline at or before `now_ms`
    /// that is still open (the caller checks whether its deadline moved).
    pub fn take_due(&mut self, now_ms: u64) -> Vec<Arc<T>> {
        let mut due = Vec::new();
        while self.heap.peek().is_some_and(|d| d.0.at_ms <= now_ms) {
            let Some(Reverse(d)) = self.heap.pop() else {
                break;
            };
            if !d.entry.is_ended() {
                due.push(d.entry);
            }
        }
        due
    }

    /// Files every given session afresh, under its current deadline (a
    /// restarted supervisor does, in case an expiry it was settling was
    /// lost with its old actor).
    pub fn rebuild(&mut self, open: impl IntoIterator<Item = Arc<T>>) {
        self.heap = open
            .into_iter()
            .map(|entry| {
                Reverse(Due {
                    at_ms: entry.expires_ms(),
                    entry,
                })
            })
            .collect();
    }

    pub fn clear(&mut self) {
        self.heap = BinaryHeap::new();
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::*;

    #[derive(Default)]
    struct Toy {
        expires: AtomicU64,
        ended: AtomicBool,
    }

    impl Expiring for Toy {
        fn expires_ms(&self) -> u64 {
            self.expires.load(Ordering::Relaxed)
        }

        fn is_ended(&self) -> bool {
            self.ended.load(Ordering::Relaxed)
        }
    }

    fn toy(expires: u64) -> Arc<Toy> {
        Arc::new(Toy {
            expires: AtomicU64::new(expires),
            ended: AtomicBool::new(false),
        })
    }

    #[test]
    fn sessions_come_due_in_deadline_order_and_ended_ones_are_skipped() {
        let (a, b, c) = (toy(300), toy(100), toy(200));
        let mut schedule = ExpirySchedule::default();
        for s in [&a, &b, &c] {
            schedule.push(s.expires_ms(), s.clone(), 3);
        }
        assert_eq!(schedule.earliest(), Some(100));
        assert!(schedule.take_due(99).is_empty());
        c.ended.store(true, Ordering::Relaxed);
        let due = schedule.take_due(250);
        assert_eq!(due.len(), 1, "b is due; c ended");
        assert!(Arc::ptr_eq(&due[0], &b));
        assert_eq!(schedule.earliest(), Some(300));
        // A rebuild files each under its deadline now.
        a.expires.store(50, Ordering::Relaxed);
        schedule.rebuild([a.clone()]);
        assert_eq!(schedule.earliest(), Some(50));
        assert_eq!(schedule.take_due(u64::MAX).len(), 1);
        assert!(schedule.is_empty());
    }

    #[test]
    fn churn_does_not_grow_the_schedule_past_twice_the_open_sessions() {
        let mut schedule = ExpirySchedule::default();
        schedule.push(3_600_000, toy(3_600_000), 1);
        // Sessions opened and closed long before their deadline: one
        // stays open all along.
        for _ in 0..10_000 {
            let s = toy(3_600_000);
            schedule.push(3_600_000, s.clone(), 2);
            s.ended.store(true, Ordering::Relaxed);
        }
        assert!(
            schedule.len() <= 4 + SWEEP_SLACK,
            "{} filed for one open session",
            schedule.len()
        );
        assert_eq!(schedule.take_due(u64::MAX).len(), 1, "the open one stays");
    }
}
