//! Sessions: the hot-path registry every RPC consults, the entries it holds,
//! and the lifecycle operations (create, heartbeat, refresh, close) the
//! SessionService exposes.

pub mod cluster;
pub mod entry;
pub mod lifecycle;
pub mod rate;
pub mod registry;
pub mod store;
pub mod token;

/// The clock lives below sessions (backends use it too); reachable here as
/// before.
pub use crate::clock::{self, Clock};
pub use entry::{EndReason, Gauged, NamespaceSessions, OperationGuard, SessionEntry, SessionState};
pub use lifecycle::{SessionHost, Sessions};
pub use registry::{SessionEvent, SessionRegistry};
