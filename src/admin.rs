//! The admin HTTP listener (default 127.0.0.1:8981), apart from gRPC:
//! `/healthz` (the process is alive) and `/readyz` (every supervisor runs).

use std::{future::Future, sync::Arc};

use axum::{extract::State, http::StatusCode, routing::get, Router};
use tokio::net::TcpListener;

use crate::actors::Supervisors;

pub fn router(supervisors: Arc<Supervisors>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(supervisors)
}

async fn readyz(State(supervisors): State<Arc<Supervisors>>) -> (StatusCode, String) {
    let down = supervisors.down_supervisors();
    if down.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {} restarting\n", down.join(", ")),
        )
    }
}

pub async fn serve(
    listener: TcpListener,
    supervisors: Arc<Supervisors>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(supervisors))
        .with_graceful_shutdown(shutdown)
        .await
}
