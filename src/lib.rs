//! Prism: a data access gateway. Applications talk to one gRPC endpoint, open
//! a session (API key, JWT or mTLS; a named or inline client configuration),
//! then use stable APIs without knowing which backend serves them.
//!
//! # Layout
//!
//! - [`cli`]: `prism serve | validate | registry`; `main.rs` only calls it.
//! - [`server`]: [`server::Gateway`] (shared state, actor tree) and
//!   [`server::run`], which serves already-bound listeners until a shutdown
//!   future resolves, then drains.
//! - [`runtime`]: the actix System on a tokio multi-thread runtime.
//! - [`clock`]: the gateway's monotonic clock (tokio time, so tests pause
//!   it), shared by sessions, actors and backends.
//! - [`config`]: the YAML schema, environment overrides, validation
//!   (`prism validate`) and resolving client configs against namespace
//!   policy.
//! - [`auth`]: API keys (stored as SHA-256), JWT (HS256, RS256), mTLS.
//! - [`session`]: the session registry — the hot path every RPC checks in
//!   O(1) — and the lifecycle operations.
//! - [`actors`]: RootSupervisor → NamespaceSupervisor → SessionActor →
//!   the session's subscriptions and transactions, plus a pool actor per
//!   backend and a listener per outbox relay; one supervision primitive
//!   for all of them ([`actors::supervision`]), observable state.
//! - [`gate`]: the one call gate every data RPC passes (token, authorize,
//!   pattern, policy, rate limit, backend, operation guard; failing-backend
//!   report and byte accounting on the way out; the session-ended error).
//! - [`services`]: one file per gRPC service.
//! - [`backends`]: backend kinds and the thin interfaces they implement.
//! - [`error`]: the one error type and its mapping to `tonic::Status`.
//! - [`audit`]: the audit log (session events, data calls; PII masked).
//! - [`proto`]: the wire contract, code generated from `proto/` in its own
//!   crate (`prism-proto`) that the load runner shares.
//! - [`telemetry`]: the per-call span, `traceparent`, logs, OTLP export.
//! - [`call`]: what the call being served is about (its session and
//!   resource), carried from where it is learned up to the call layer.
//! - [`admin`]: the admin HTTP listener (`/healthz`, `/readyz`, `/metrics`,
//!   `/admin/actors`); [`metrics`]: the Prometheus counters and exposition.
//!
//! The `prism-loadtest` runner (ghz-format scenarios, ghz reports, no-op
//! and direct-backend baselines, footprint) is its own workspace crate in
//! `loadtest/`; it talks to the gateway only over the wire.
//!
//! `docs/architecture.md` follows a unary call and a Subscribe stream
//! through these modules.
//!
//! The rule that shapes it: a data RPC never waits on an actor mailbox.
//! Lifecycle (create, expiry, close, supervision) is message-driven; the hot
//! path reads atomics in a DashMap.

pub mod actors;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod backends;
pub mod call;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod gate;
pub mod metrics;
pub mod runtime;
pub mod server;
pub mod services;
pub mod session;
pub mod telemetry;

/// The wire contract (the `prism-proto` crate), at its old path.
pub use prism_proto as proto;
