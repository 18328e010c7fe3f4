//! The in-memory backend: a product feature (the embedded default runs on
//! it), not a test double. `kv` is its key-value store; `queue` its
//! partitioned log with consumer groups; `pubsub` its topic-pattern router;
//! `cache` its bounded LRU cache.

mod cache;
mod kv;
pub mod pubsub;
pub mod queue;

pub use cache::MemoryCache;
pub use kv::MemoryKv;
pub use pubsub::MemoryPubSub;
pub use queue::MemoryQueue;

use std::sync::Arc;

use crate::{backends::lru::Bounds, clock::Clock};

/// The memory backend: its key-value store, its queue, its PubSub router
/// and its cache, each serving its own thin interfaces.
#[derive(Clone)]
pub struct MemoryBackend {
    pub kv: Arc<MemoryKv>,
    pub queue: Arc<MemoryQueue>,
    pub pubsub: Arc<MemoryPubSub>,
    pub cache: Arc<MemoryCache>,
}

impl MemoryBackend {
    pub fn new(clock: Clock, cache: Bounds) -> Self {
        MemoryBackend {
            cache: Arc::new(MemoryCache::new(cache, clock)),
            kv: Arc::new(MemoryKv::new(clock)),
            queue: Arc::new(MemoryQueue::new(clock)),
            pubsub: Arc::new(MemoryPubSub::new()),
        }
    }
}
