//! The admin HTTP listener (default 127.0.0.1:8981), apart from gRPC:
//! `/healthz` (the process is alive) and `/readyz` (every supervisor runs and
//! every backend with a client is up).

use std::{future::Future, sync::Arc};

use axum::{extract::State, http::StatusCode, routing::get, Router};
use tokio::net::TcpListener;

use crate::server::Gateway;

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(gateway)
}

async fn readyz(State(gateway): State<Arc<Gateway>>) -> (StatusCode, String) {
    let mut down = gateway.supervisors.down_supervisors();
    down.extend(
        gateway
            .backends
            .iter()
            .filter(|b| b.client.is_some() && !b.health.is_up())
            .map(|b| format!("backend {} ({:?})", b.name, b.health.state())),
    );
    if down.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", down.join(", ")),
        )
    }
}

pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(gateway))
        .with_graceful_shutdown(shutdown)
        .await
}
