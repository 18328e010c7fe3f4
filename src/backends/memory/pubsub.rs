//! In-memory PubSub: a token trie of subscriptions per namespace. Publish
//! walks the trie once and pushes the event (shared, not copied) into every
//! matching subscription's buffer; a queue group's members take turns.
//! At-most-once: nothing is stored, and a full buffer applies its overflow
//! policy.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use async_trait::async_trait;
use parking_lot::RwLock;

use crate::{
    backends::pubsub::{
        Event, EventSink, PubSubBasic, PubSubWildcards, Subscriber, SubscriberSpec, TopicPattern,
        Trie,
    },
    error::Error,
};

#[derive(Clone)]
struct Member {
    key: u64,
    /// (pattern, group) for queue-group members.
    group: Option<Arc<str>>,
    sink: Arc<EventSink>,
}

#[derive(Default)]
struct Namespace {
    trie: Trie<Member>,
}

#[derive(Default)]
struct Router {
    namespaces: RwLock<HashMap<String, Namespace>>,
    keys: AtomicU64,
    /// Turn counters of queue groups, by (namespace, pattern and group).
    turns: dashmap::DashMap<(String, Arc<str>), AtomicU64>,
}

impl Router {
    fn remove(&self, ns: &str, pattern: &TopicPattern, key: u64) {
        let mut namespaces = self.namespaces.write();
        if let Some(n) = namespaces.get_mut(ns) {
            n.trie.remove(pattern, key);
            if n.trie.is_empty() {
                namespaces.remove(ns);
                self.turns.retain(|(n, _), _| n != ns);
            }
        }
    }
}

#[derive(Default)]
pub struct MemoryPubSub {
    router: Arc<Router>,
}

impl PubSubWildcards for MemoryPubSub {}

impl MemoryPubSub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscriptions in place, over every namespace.
    pub fn subscriptions(&self) -> usize {
        let namespaces = self.router.namespaces.read();
        namespaces.values().map(|n| n.trie.len()).sum()
    }
}

#[async_trait]
impl PubSubBasic for MemoryPubSub {
    async fn publish(&self, ns: &str, _partitions: i32, event: &Event) -> Result<(), Error> {
        let router = &self.router;
        let members = match router.namespaces.read().get(ns) {
            Some(n) => n.trie.matching(&event.topic),
            None => return Ok(()),
        };
        let event = Arc::new(event.clone());
        let mut groups: HashMap<Arc<str>, Vec<&Member>> = HashMap::new();
        for m in &members {
            match &m.group {
                None => {
                    m.sink.push(event.clone());
                }
                Some(g) => groups.entry(g.clone()).or_default().push(m),
            }
        }
        for (group, mut members) in groups {
            // Members in a stable order, so turns go round them all.
            members.sort_by_key(|m| m.key);
            let turn = router
                .turns
                .entry((ns.to_string(), group))
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
            let first = (turn % members.len() as u64) as usize;
            // The first member whose buffer still takes events gets it.
            for i in 0..members.len() {
                if members[(first + i) % members.len()]
                    .sink
                    .push(event.clone())
                {
                    break;
                }
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        ns: &str,
        spec: &SubscriberSpec,
        sink: Arc<EventSink>,
    ) -> Result<Box<dyn Subscriber>, Error> {
        let key = self.router.keys.fetch_add(1, Ordering::Relaxed);
        let group = spec
            .queue_group
            .as_ref()
            .map(|g| Arc::<str>::from(format!("{}\u{0}{g}", spec.pattern.as_str())));
        self.router
            .namespaces
            .write()
            .entry(ns.to_string())
            .or_default()
            .trie
            .insert(&spec.pattern, key, Member { key, group, sink });
        Ok(Box::new(MemorySubscriber {
            router: self.router.clone(),
            ns: ns.to_string(),
            pattern: spec.pattern.clone(),
            key,
        }))
    }
}

/// Removes its trie entry when released or dropped.
struct MemorySubscriber {
    router: Arc<Router>,
    ns: String,
    pattern: TopicPattern,
    key: u64,
}

#[async_trait]
impl Subscriber for MemorySubscriber {
    async fn release(self: Box<Self>) {}
}

impl Drop for MemorySubscriber {
    fn drop(&mut self) {
        self.router.remove(&self.ns, &self.pattern, self.key);
    }
}
