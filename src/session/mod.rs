//! Sessions: the hot-path registry every RPC consults, the entries it holds,
//! and the lifecycle operations (create, heartbeat, refresh, close) the
//! SessionService exposes.

pub mod clock;
pub mod entry;
pub mod lifecycle;
pub mod rate;
pub mod registry;
pub mod token;

pub use clock::Clock;
pub use entry::{EndReason, Gauged, NamespaceSessions, OperationGuard, SessionEntry, SessionState};
pub use lifecycle::Sessions;
pub use registry::{SessionEvent, SessionRegistry};
