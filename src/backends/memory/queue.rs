//! The in-memory queue: per topic, partitions holding an append-only log,
//! and consumer groups whose members compete for messages (each message
//! goes to one member of a group; every group sees every message).
//!
//! A group keeps, per partition, a claim cursor, a committed offset and the
//! acknowledged offsets above it; claimed messages wait for acknowledgement
//! with a visibility deadline (gateway clock, so paused-time tests drive
//! it), after which any member may get them again with the attempt counted.
//! A member that leaves hands its unacknowledged messages back to the group.
//! A start position places a new group; an existing group goes on where it
//! is (Seek moves it). The log is kept whole (no retention yet). One mutex per topic,
//! never held across an `.await`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::{
    backends::queue::{
        bad_partition, check_positions, check_within_log, choose_partition, topic_not_found,
        ConsumerSpec, PartitionStats, PublishItem, Published, QueueBasic, QueueConsumer,
        QueueMessage, QueueVisibility, Start, StreamConsumerGroups, StreamReplay, TopicStats,
    },
    clock::{ms, Clock},
    error::Error,
};

struct Stored {
    payload: Vec<u8>,
    headers: HashMap<String, String>,
    timestamp_ms: i64,
}

struct Pending {
    member: u64,
    deadline_ms: u64,
}

struct Group {
    members: usize,
    /// Next offset to claim, per partition.
    cursor: Vec<i64>,
    /// Next offset the group will consume after a restart, per partition.
    committed: Vec<i64>,
    /// Acknowledged offsets at or above `committed`.
    acked: Vec<BTreeSet<i64>>,
    pending: BTreeMap<(i32, i64), Pending>,
    redeliver: VecDeque<(i32, i64)>,
    /// Deliveries so far of messages not yet acknowledged.
    attempts: HashMap<(i32, i64), i32>,
}

impl Group {
    fn new(partitions: usize) -> Self {
        Group {
            members: 0,
            cursor: vec![0; partitions],
            committed: vec![0; partitions],
            acked: vec![BTreeSet::new(); partitions],
            pending: BTreeMap::new(),
            redeliver: VecDeque::new(),
            attempts: HashMap::new(),
        }
    }

    fn is_done(&self, p: i32, o: i64) -> bool {
        o < self.committed[p as usize] || self.acked[p as usize].contains(&o)
    }

    /// Moves `committed` over the contiguous acknowledged prefix.
    fn advance(&mut self, p: usize) {
        while self.acked[p].remove(&self.committed[p]) {
            self.committed[p] += 1;
        }
    }

    /// Forgets per-message state below the committed offsets.
    fn forget_committed(&mut self) {
        let committed = self.committed.clone();
        let below = |&(p, o): &(i32, i64)| o < committed[p as usize];
        self.pending.retain(|k, _| !below(k));
        self.redeliver.retain(|k| !below(k));
        self.attempts.retain(|k, _| !below(k));
        for (p, set) in self.acked.iter_mut().enumerate() {
            set.retain(|o| *o >= committed[p]);
        }
    }
}

struct Topic {
    logs: Vec<Vec<Stored>>,
    groups: HashMap<String, Group>,
    next_member: u64,
}

struct TopicState {
    name: String,
    inner: Mutex<Topic>,
    /// Woken on every publish, seek and release.
    arrived: Notify,
}

pub struct MemoryQueue {
    clock: Clock,
    topics: DashMap<(String, String), Arc<TopicState>>,
    round_robin: AtomicU64,
}

impl MemoryQueue {
    pub fn new(clock: Clock) -> Self {
        MemoryQueue {
            clock,
            topics: DashMap::new(),
            round_robin: AtomicU64::new(0),
        }
    }

    fn topic(&self, ns: &str, topic: &str) -> Result<Arc<TopicState>, Error> {
        self.topics
            .get(&(ns.to_string(), topic.to_string()))
            .map(|t| t.clone())
            .ok_or_else(|| topic_not_found(topic))
    }

    /// Messages held, for pool stats.
    pub fn len(&self) -> usize {
        self.topics
            .iter()
            .map(|t| t.inner.lock().logs.iter().map(Vec::len).sum::<usize>())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn position(topic: &Topic, group: &Group, start: Start) -> Vec<i64> {
    topic
        .logs
        .iter()
        .enumerate()
        .map(|(p, log)| {
            let end = log.len() as i64;
            match start {
                Start::Earliest => 0,
                Start::Latest => end,
                Start::Committed => group.committed[p],
                Start::Offset(o) => o.clamp(0, end),
                Start::Timestamp(t) => log
                    .iter()
                    .position(|m| m.timestamp_ms >= t)
                    .map_or(end, |i| i as i64),
            }
        })
        .collect()
}

#[async_trait]
impl QueueBasic for MemoryQueue {
    async fn publish(
        &self,
        ns: &str,
        topic: &str,
        partitions: i32,
        items: Vec<PublishItem>,
    ) -> Vec<Result<Published, Error>> {
        let state = self
            .topics
            .entry((ns.to_string(), topic.to_string()))
            .or_insert_with(|| {
                Arc::new(TopicState {
                    name: topic.to_string(),
                    inner: Mutex::new(Topic {
                        logs: (0..partitions.max(1)).map(|_| Vec::new()).collect(),
                        groups: HashMap::new(),
                        next_member: 0,
                    }),
                    arrived: Notify::new(),
                })
            })
            .clone();
        let now = crate::backends::epoch_ms();
        let results: Vec<_> = {
            let mut inner = state.inner.lock();
            let count = inner.logs.len() as i32;
            items
                .into_iter()
                .map(|item| {
                    let rr = self.round_robin.fetch_add(1, Ordering::Relaxed);
                    let p = choose_partition(&item, count, rr);
                    if !(0..count).contains(&p) {
                        return Err(bad_partition(topic, p, count));
                    }
                    let log = &mut inner.logs[p as usize];
                    log.push(Stored {
                        payload: item.payload,
                        headers: item.headers,
                        timestamp_ms: now,
                    });
                    Ok(Published {
                        partition: p,
                        offset: log.len() as i64 - 1,
                        timestamp_ms: now,
                    })
                })
                .collect()
        };
        state.arrived.notify_waiters();
        results
    }

    async fn subscribe(
        &self,
        ns: &str,
        spec: ConsumerSpec,
    ) -> Result<Box<dyn QueueConsumer>, Error> {
        let state = self.topic(ns, &spec.topic)?;
        let (group, member) = {
            let mut inner = state.inner.lock();
            let partitions = inner.logs.len();
            let member = inner.next_member;
            inner.next_member += 1;
            // A start position places a new group; an existing one goes on
            // where it is (what departed members held comes back first).
            if !inner.groups.contains_key(&spec.group) {
                let mut group = Group::new(partitions);
                group.cursor = position(&inner, &group, spec.start);
                inner.groups.insert(spec.group.clone(), group);
            }
            if let Some(group) = inner.groups.get_mut(&spec.group) {
                group.members += 1;
            }
            (spec.group.clone(), member)
        };
        Ok(Box::new(MemoryConsumer {
            state,
            clock: self.clock,
            group,
            member,
            visibility: spec.visibility_timeout,
            next_partition: 0,
            released: false,
        }))
    }

    async fn acknowledge(
        &self,
        ns: &str,
        topic: &str,
        group: &str,
        partition: i32,
        offset: i64,
    ) -> Result<bool, Error> {
        let state = self.topic(ns, topic)?;
        let mut inner = state.inner.lock();
        let partitions = inner.logs.len() as i32;
        let Some(g) = inner.groups.get_mut(group) else {
            return Ok(false);
        };
        if !(0..partitions).contains(&partition)
            || offset >= g.cursor[partition as usize]
            || g.is_done(partition, offset)
        {
            return Ok(false);
        }
        let key = (partition, offset);
        g.pending.remove(&key);
        g.redeliver.retain(|k| *k != key);
        g.attempts.remove(&key);
        g.acked[partition as usize].insert(offset);
        g.advance(partition as usize);
        Ok(true)
    }

    async fn forget_group(&self, ns: &str, topic: &str, group: &str) {
        if let Ok(state) = self.topic(ns, topic) {
            let mut inner = state.inner.lock();
            if inner.groups.get(group).is_some_and(|g| g.members == 0) {
                inner.groups.remove(group);
            }
        }
    }

    async fn topic_stats(&self, ns: &str, topic: &str) -> Result<TopicStats, Error> {
        let state = self.topic(ns, topic)?;
        let inner = state.inner.lock();
        Ok(TopicStats {
            partitions: inner
                .logs
                .iter()
                .enumerate()
                .map(|(p, log)| PartitionStats {
                    partition: p as i32,
                    earliest: 0,
                    latest: log.len() as i64,
                })
                .collect(),
        })
    }
}

impl QueueVisibility for MemoryQueue {}

fn missing_group(topic: &str, group: &str) -> Error {
    Error::new(
        crate::error::ErrorKind::NotFound,
        "GROUP_NOT_FOUND",
        format!("consumer group `{group}` has never subscribed to topic `{topic}`"),
    )
    .with("consumer_group", group)
}

#[async_trait]
impl StreamConsumerGroups for MemoryQueue {
    async fn commit(
        &self,
        ns: &str,
        topic: &str,
        group: &str,
        offsets: &[(i32, i64)],
    ) -> Result<Vec<(i32, i64)>, Error> {
        let state = self.topic(ns, topic)?;
        let mut inner = state.inner.lock();
        let count = inner.logs.len();
        check_positions(&state.name, count as i32, offsets)?;
        let ends: Vec<i64> = inner.logs.iter().map(|l| l.len() as i64).collect();
        check_within_log(&ends, offsets)?;
        let g = inner
            .groups
            .entry(group.to_string())
            .or_insert_with(|| Group::new(count));
        let mut stored = Vec::with_capacity(offsets.len());
        for &(p, o) in offsets {
            g.committed[p as usize] = o;
            g.advance(p as usize);
            stored.push((p, g.committed[p as usize]));
        }
        g.forget_committed();
        Ok(stored)
    }
}

#[async_trait]
impl StreamReplay for MemoryQueue {
    async fn seek(
        &self,
        ns: &str,
        topic: &str,
        group: &str,
        positions: &[(i32, i64)],
    ) -> Result<(), Error> {
        let state = self.topic(ns, topic)?;
        {
            let mut inner = state.inner.lock();
            let count = inner.logs.len();
            check_positions(&state.name, count as i32, positions)?;
            let ends: Vec<i64> = inner.logs.iter().map(|l| l.len() as i64).collect();
            check_within_log(&ends, positions)?;
            let g = inner
                .groups
                .get_mut(group)
                .ok_or_else(|| missing_group(topic, group))?;
            for &(p, o) in positions {
                // The group consumes from `o` again: position and commit.
                g.cursor[p as usize] = o;
                g.committed[p as usize] = o;
                g.pending.retain(|k, _| k.0 != p);
                g.redeliver.retain(|k| k.0 != p);
                g.attempts.retain(|k, _| k.0 != p);
                g.acked[p as usize].clear();
            }
        }
        state.arrived.notify_waiters();
        Ok(())
    }
}

struct MemoryConsumer {
    state: Arc<TopicState>,
    clock: Clock,
    group: String,
    member: u64,
    visibility: Duration,
    next_partition: usize,
    released: bool,
}

impl MemoryConsumer {
    /// Claims up to `max` messages; also returns the soonest visibility
    /// deadline among pending messages, to wake for.
    fn claim(&mut self, max: usize) -> (Vec<QueueMessage>, Option<u64>) {
        let now = self.clock.now_ms();
        let deadline = now.saturating_add(ms(self.visibility));
        let mut inner = self.state.inner.lock();
        let topic = &mut *inner;
        let Some(g) = topic.groups.get_mut(&self.group) else {
            return (Vec::new(), None);
        };
        // Deliveries whose visibility timeout passed go back to the group.
        let expired: Vec<(i32, i64)> = g
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_ms <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            g.pending.remove(&k);
            g.redeliver.push_back(k);
        }
        let mut out = Vec::new();
        let (name, member) = (self.state.name.clone(), self.member);
        let logs = &topic.logs;
        let deliver = |out: &mut Vec<QueueMessage>, g: &mut Group, (p, o): (i32, i64)| {
            let attempt = g.attempts.entry((p, o)).or_insert(0);
            *attempt += 1;
            let stored = &logs[p as usize][o as usize];
            out.push(QueueMessage {
                topic: name.clone(),
                partition: p,
                offset: o,
                payload: stored.payload.clone(),
                headers: stored.headers.clone(),
                timestamp_ms: stored.timestamp_ms,
                attempt: *attempt,
            });
            g.pending.insert(
                (p, o),
                Pending {
                    member,
                    deadline_ms: deadline,
                },
            );
        };
        while out.len() < max {
            let Some(k) = g.redeliver.pop_front() else {
                break;
            };
            if !g.is_done(k.0, k.1) {
                deliver(&mut out, g, k);
            }
        }
        let partitions = logs.len();
        let mut idle = 0;
        while out.len() < max && idle < partitions {
            let p = self.next_partition % partitions;
            self.next_partition = self.next_partition.wrapping_add(1);
            let o = g.cursor[p];
            if o < logs[p].len() as i64 {
                g.cursor[p] += 1;
                if !g.is_done(p as i32, o) {
                    deliver(&mut out, g, (p as i32, o));
                }
                idle = 0;
            } else {
                idle += 1;
            }
        }
        let soonest = g.pending.values().map(|p| p.deadline_ms).min();
        (out, soonest)
    }
}

#[async_trait]
impl QueueConsumer for MemoryConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<QueueMessage>, Error> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let state = self.state.clone();
            let notified = state.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (batch, soonest) = self.claim(max.max(1));
            if !batch.is_empty() {
                return Ok(batch);
            }
            let now = tokio::time::Instant::now();
            if now >= until {
                return Ok(batch);
            }
            let mut wake = until;
            if let Some(deadline) = soonest {
                let in_ms = deadline.saturating_sub(self.clock.now_ms());
                wake = wake.min(now + Duration::from_millis(in_ms));
            }
            let _ = tokio::time::timeout_at(wake, notified).await;
        }
    }

    async fn release(&mut self) {
        self.release_now();
    }
}

impl MemoryConsumer {
    fn release_now(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        {
            let mut inner = self.state.inner.lock();
            if let Some(g) = inner.groups.get_mut(&self.group) {
                let mine: Vec<(i32, i64)> = g
                    .pending
                    .iter()
                    .filter(|(_, p)| p.member == self.member)
                    .map(|(k, _)| *k)
                    .collect();
                for k in mine {
                    g.pending.remove(&k);
                    g.redeliver.push_back(k);
                }
                g.members = g.members.saturating_sub(1);
            }
        }
        self.state.arrived.notify_waiters();
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        self.release_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(group: &str, start: Start) -> ConsumerSpec {
        ConsumerSpec {
            topic: "t".into(),
            group: group.into(),
            start,
            visibility_timeout: Duration::from_secs(30),
            max_attempts: 0,
        }
    }

    async fn publish(q: &MemoryQueue, n: usize) {
        let items = (0..n)
            .map(|i| PublishItem {
                payload: vec![i as u8],
                partition: Some(0),
                ..Default::default()
            })
            .collect();
        for r in q.publish("ns", "t", 1, items).await {
            r.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unacknowledged_messages_come_back_after_the_visibility_timeout() {
        let q = MemoryQueue::new(Clock::new());
        publish(&q, 2).await;
        let mut c = q.subscribe("ns", spec("g", Start::Earliest)).await.unwrap();
        let first = c.fetch(10, Duration::ZERO).await.unwrap();
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|m| m.attempt == 1));
        assert!(q.acknowledge("ns", "t", "g", 0, 0).await.unwrap());
        assert!(c.fetch(10, Duration::ZERO).await.unwrap().is_empty());

        tokio::time::advance(Duration::from_secs(31)).await;
        let again = c.fetch(10, Duration::ZERO).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].offset, again[0].attempt), (1, 2));
        assert!(q.acknowledge("ns", "t", "g", 0, 1).await.unwrap());
        assert!(
            !q.acknowledge("ns", "t", "g", 0, 1).await.unwrap(),
            "only once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_leaving_member_hands_its_messages_back() {
        let q = MemoryQueue::new(Clock::new());
        publish(&q, 3).await;
        let mut a = q.subscribe("ns", spec("g", Start::Earliest)).await.unwrap();
        let mut b = q.subscribe("ns", spec("g", Start::Latest)).await.unwrap();
        assert_eq!(a.fetch(2, Duration::ZERO).await.unwrap().len(), 2);
        drop(a);
        let got = b.fetch(10, Duration::ZERO).await.unwrap();
        let mut seen: Vec<(i64, i32)> = got.iter().map(|m| (m.offset, m.attempt)).collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![(0, 2), (1, 2), (2, 1)],
            "joined at the group's position"
        );
    }
}
