//! The in-memory backend: a product feature (the embedded default runs on
//! it), not a test double. `kv` is its key-value store; `queue` its
//! partitioned log with consumer groups; `pubsub` its topic-pattern router.

mod kv;
pub mod pubsub;
pub mod queue;

pub use kv::MemoryKv;
pub use pubsub::MemoryPubSub;
pub use queue::MemoryQueue;
