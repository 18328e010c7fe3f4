//! A namespace's session deadlines, in one schedule its supervisor keeps:
//! one timer per namespace instead of one per session, so an idle session
//! costs a heap slot (16 bytes), not an actor and a timer.
//!
//! Deadlines are kept lazily. The hot path only moves a session's expiry
//! forward (an atomic in its entry); when the deadline it was filed under
//! comes, the supervisor reads the current one and files the session again
//! if it moved. A session is due only under the deadline it was filed
//! under last (its entry remembers it), so filing it again — a retry, a
//! rebuild — leaves no duplicate that would fire twice. The heap holds
//! sessions weakly: a closed session's entry is freed at once and its slot
//! leaves at its deadline, or earlier when slots outnumber open sessions
//! (see [`ExpirySchedule::push`]).

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    sync::{atomic::Ordering, Arc, Weak},
};

use crate::session::SessionEntry;

/// What the schedule needs of a session.
pub trait Expiring {
    /// Its deadline now (it only moves forward).
    fn expires_ms(&self) -> u64;
    fn is_ended(&self) -> bool;
    /// The deadline it was filed under last.
    fn filed_ms(&self) -> u64;
    fn set_filed_ms(&self, at_ms: u64);
}

impl Expiring for SessionEntry {
    fn expires_ms(&self) -> u64 {
        SessionEntry::expires_ms(self)
    }

    fn is_ended(&self) -> bool {
        self.state().is_ended()
    }

    fn filed_ms(&self) -> u64 {
        self.filed_ms.load(Ordering::Acquire)
    }

    fn set_filed_ms(&self, at_ms: u64) {
        self.filed_ms.store(at_ms, Ordering::Release);
    }
}

/// A session filed under a deadline.
struct Due<T> {
    at_ms: u64,
    entry: Weak<T>,
}

impl<T: Expiring> Due<T> {
    /// The session, if it is open and this is its latest filing.
    fn live(&self) -> Option<Arc<T>> {
        self.entry
            .upgrade()
            .filter(|e| !e.is_ended() && e.filed_ms() == self.at_ms)
    }
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

/// Slots the schedule may hold beyond twice the open sessions before it
/// sweeps out the dead ones.
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
    /// Files `entry` under `at_ms` (any earlier filing of it no longer
    /// counts). Slots of closed or refiled sessions stay until their
    /// deadline comes; when the schedule holds more than twice the `open`
    /// sessions (plus some slack) it drops them, so churn cannot grow it:
    /// amortized O(1) per push.
    pub fn push(&mut self, at_ms: u64, entry: &Arc<T>, open: usize) {
        entry.set_filed_ms(at_ms);
        self.heap.push(Reverse(Due {
            at_ms,
            entry: Arc::downgrade(entry),
        }));
        if self.heap.len() > open.saturating_mul(2).saturating_add(SWEEP_SLACK) {
            self.heap.retain(|d| d.0.live().is_some());
        }
    }

    /// The earliest deadline filed.
    pub fn earliest(&self) -> Option<u64> {
        self.heap.peek().map(|d| d.0.at_ms)
    }

    /// Takes up to `max` sessions filed under a deadline at or before
    /// `now_ms` that are still open (the caller checks whether their
    /// deadline moved), skipping dead slots.
    pub fn take_due(&mut self, now_ms: u64, max: usize) -> Vec<Arc<T>> {
        let mut due = Vec::new();
        while due.len() < max && self.heap.peek().is_some_and(|d| d.0.at_ms <= now_ms) {
            let Some(Reverse(d)) = self.heap.pop() else {
                break;
            };
            if let Some(entry) = d.live() {
                due.push(entry);
            }
        }
        due
    }

    /// Files every given session afresh under its current deadline (a
    /// restarted supervisor does, in case its old actor took some due
    /// sessions with it).
    pub fn rebuild(&mut self, open: impl IntoIterator<Item = Arc<T>>) {
        self.heap = open
            .into_iter()
            .map(|entry| {
                let at_ms = entry.expires_ms();
                entry.set_filed_ms(at_ms);
                Reverse(Due {
                    at_ms,
                    entry: Arc::downgrade(&entry),
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
    use std::sync::atomic::{AtomicBool, AtomicU64};

    use super::*;

    #[derive(Default)]
    struct Toy {
        expires: AtomicU64,
        filed: AtomicU64,
        ended: AtomicBool,
    }

    impl Expiring for Toy {
        fn expires_ms(&self) -> u64 {
            self.expires.load(Ordering::Relaxed)
        }

        fn is_ended(&self) -> bool {
            self.ended.load(Ordering::Relaxed)
        }

        fn filed_ms(&self) -> u64 {
            self.filed.load(Ordering::Relaxed)
        }

        fn set_filed_ms(&self, at_ms: u64) {
            self.filed.store(at_ms, Ordering::Relaxed);
        }
    }

    fn toy(expires: u64) -> Arc<Toy> {
        Arc::new(Toy {
            expires: AtomicU64::new(expires),
            ..Default::default()
        })
    }

    #[test]
    fn sessions_come_due_in_deadline_order_and_ended_ones_are_skipped() {
        let (a, b, c) = (toy(300), toy(100), toy(200));
        let mut schedule = ExpirySchedule::default();
        for s in [&a, &b, &c] {
            schedule.push(s.expires_ms(), s, 3);
        }
        assert_eq!(schedule.earliest(), Some(100));
        assert!(schedule.take_due(99, usize::MAX).is_empty());
        c.ended.store(true, Ordering::Relaxed);
        let due = schedule.take_due(250, usize::MAX);
        assert_eq!(due.len(), 1, "b is due; c ended");
        assert!(Arc::ptr_eq(&due[0], &b));
        assert_eq!(schedule.earliest(), Some(300));
        // A rebuild files each under its deadline now.
        a.expires.store(50, Ordering::Relaxed);
        schedule.rebuild([a.clone()]);
        assert_eq!(schedule.earliest(), Some(50));
        assert_eq!(schedule.take_due(u64::MAX, usize::MAX).len(), 1);
        assert!(schedule.is_empty());
    }

    #[test]
    fn a_session_filed_again_comes_due_once_under_its_latest_deadline() {
        let a = toy(100);
        let mut schedule = ExpirySchedule::default();
        schedule.push(100, &a, 1);
        // Filed again (a retry, say): the first slot no longer counts.
        schedule.push(150, &a, 1);
        assert!(schedule.take_due(120, usize::MAX).is_empty());
        assert_eq!(schedule.take_due(150, usize::MAX).len(), 1);
        assert!(schedule.is_empty());
    }

    #[test]
    fn due_sessions_are_taken_in_bounded_batches() {
        let mut schedule = ExpirySchedule::default();
        let all: Vec<_> = (0..10).map(|_| toy(5)).collect();
        for s in &all {
            schedule.push(5, s, all.len());
        }
        assert_eq!(schedule.take_due(5, 4).len(), 4);
        assert_eq!(schedule.take_due(5, 4).len(), 4);
        assert_eq!(schedule.take_due(5, 4).len(), 2);
    }

    #[test]
    fn closed_sessions_are_freed_and_churn_does_not_grow_the_schedule() {
        let mut schedule = ExpirySchedule::default();
        let kept = toy(3_600_000);
        schedule.push(3_600_000, &kept, 1);
        // Sessions opened and closed long before their deadline.
        let mut last = Weak::new();
        for _ in 0..10_000 {
            let s = toy(3_600_000);
            schedule.push(3_600_000, &s, 1);
            last = Arc::downgrade(&s);
        }
        assert!(
            last.upgrade().is_none(),
            "the schedule holds no session alive"
        );
        assert!(
            schedule.len() <= 2 + SWEEP_SLACK + 1,
            "{} slots for one open session",
            schedule.len()
        );
        assert_eq!(
            schedule.take_due(u64::MAX, usize::MAX).len(),
            1,
            "the open one stays"
        );
    }
}
