//! The admin listener (default 127.0.0.1:8981), apart from the public gRPC
//! port: the only place any admin surface is served. `/healthz` (the
//! process is alive), `/ready` (ready or not, no details: for Kubernetes
//! probes) and the static page are open; everything else needs
//! the admin token (`server.admin_token`) in a header — `Authorization:
//! Bearer <token>` or `X-Admin-Token: <token>` — never in the URL, where
//! proxies and logs would keep it:
//!
//! - `/readyz`: every supervisor runs and every backend with a client is up;
//!   names what is not
//! - `/metrics`: OpenMetrics text exposition ([`crate::metrics`])
//! - `/admin/`: a page that renders the tree and the main counters
//!   (everything served from the binary; it holds no data itself and asks
//!   for the token, which it keeps in the URL fragment and sends as a
//!   header)
//! - `/admin/actors`: the live actor tree as JSON; `namespace`, `kind`,
//!   `offset` and `limit` make it a flat page of matching nodes
//! - `/admin/actors/{id}`: one node with its children
//! - `POST /admin/sessions/{id}/close`: closes a session (audited)
//! - `POST /admin/reload`: rereads the config file and applies what can
//!   change live ([`crate::server::reload`]); the report as JSON, or 422
//!   with why the file was refused
//! - `prism.admin.v1.AdminService` over gRPC (HTTP/2 on the same port,
//!   [`grpc`])

use std::{future::Future, sync::Arc};

use axum::{
    extract::{Path, Query, Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::{
    actors::Supervisors, metrics, proto::admin::v1::admin_service_server::AdminServiceServer,
    session::Sessions,
};

pub mod grpc;
pub mod tree;

/// What the admin listener reads and does: the token it checks, the
/// counters `/metrics` renders, the actor tree it shows and the sessions
/// it may close.
pub struct AdminState {
    /// The running config: its `server.admin_token` (a reload may change
    /// it); `None` disables every protected endpoint.
    pub config: crate::config::LiveConfig,
    /// What `POST /admin/reload` runs.
    pub reloader: Arc<dyn Reload>,
    pub metrics: metrics::Exposition,
    /// The backends, for readiness.
    pub backends: Arc<crate::backends::Backends>,
    pub supervisors: Arc<Supervisors>,
    pub sessions: Arc<Sessions>,
    /// The caches in front of KeyValue, shown under their namespaces.
    pub kv_caches: Arc<crate::services::kv_cache::KvCaches>,
}

impl AdminState {
    /// The live actor tree, each namespace's node also showing its
    /// KeyValue caches (`state.kv_caches`: entries, bytes, hits, misses,
    /// evictions, invalidations).
    pub async fn tree(&self) -> Result<crate::actors::ActorNode, crate::error::Error> {
        let mut tree = self.supervisors.observe().await?;
        let figures = self.kv_caches.figures();
        if !figures.is_empty() {
            show_caches(&mut tree, &figures);
        }
        Ok(tree)
    }
}

fn show_caches(
    node: &mut crate::actors::ActorNode,
    figures: &[crate::services::kv_cache::CacheFigures],
) {
    if let Some(ns) = node.id.strip_prefix("namespace/") {
        let mine: Vec<_> = figures.iter().filter(|f| f.namespace == ns).collect();
        if let (false, Some(state)) = (mine.is_empty(), node.state.as_object_mut()) {
            state.insert(
                "kv_caches".to_string(),
                serde_json::to_value(mine).unwrap_or_default(),
            );
        }
        return;
    }
    for child in &mut node.children {
        show_caches(child, figures);
    }
}

/// A config reload, as the admin listener runs it: its report, or why the
/// file was refused (the gateway's `server::reload` implements
/// it; the admin listener does not reach into the server).
pub trait Reload: Send + Sync {
    fn reload(&self) -> futures::future::BoxFuture<'_, Result<ReloadReport, String>>;
}

/// What a reload did.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct ReloadReport {
    /// The config's source.
    pub source: String,
    /// What changed and is in use now (`configs`, `namespaces.orders`, ...).
    pub applied: Vec<String>,
    /// What changed in the file but keeps its running value until a
    /// restart (`server.listen`, `backends`, ...).
    pub restart_required: Vec<String>,
    /// What changed but could not be put in use, and why (TLS files that
    /// changed again while being loaded, say); the rest was applied.
    pub not_applied: Vec<String>,
}

/// The header (besides `Authorization: Bearer`) that may carry the token.
pub const TOKEN_HEADER: &str = "x-admin-token";

/// Checks an admin token against the configured one; `None` when it
/// matches, else why not (for a 401 or 403). Digests are compared, so the
/// comparison's timing says nothing about the token.
pub fn check_token(configured: Option<&str>, given: Option<&str>) -> Option<(StatusCode, String)> {
    let Some(configured) = configured else {
        return Some((
            StatusCode::FORBIDDEN,
            "admin endpoints are disabled: set server.admin_token".into(),
        ));
    };
    let Some(given) = given.filter(|g| !g.is_empty()) else {
        return Some((
            StatusCode::UNAUTHORIZED,
            "the admin token is missing: send Authorization: Bearer <token>".into(),
        ));
    };
    if Sha256::digest(given.as_bytes()) != Sha256::digest(configured.as_bytes()) {
        return Some((StatusCode::FORBIDDEN, "the admin token is wrong".into()));
    }
    None
}

/// The token a request carries in a header (a `token` query parameter is
/// not read: URLs end up in logs). gRPC metadata are headers too.
fn request_token(req: &Request) -> Option<String> {
    let headers = req.headers();
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim().to_string());
    }
    headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

async fn require_token(State(admin): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let given = request_token(&req);
    let refused = check_token(
        admin.config.load().server.admin_token.as_deref(),
        given.as_deref(),
    );
    match refused {
        None => next.run(req).await,
        Some((code, why)) => {
            tracing::warn!(path = %req.uri().path(), %why, "admin request refused");
            let grpc = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
            if !grpc {
                return (code, format!("{why}\n")).into_response();
            }
            // AdminService callers hear it as a gRPC status.
            let status = if code == StatusCode::UNAUTHORIZED {
                tonic::Status::unauthenticated(why)
            } else {
                tonic::Status::permission_denied(why)
            };
            status.into_http()
        }
    }
}

pub fn router(admin: Arc<AdminState>) -> Router {
    let grpc =
        tonic::service::Routes::new(AdminServiceServer::new(grpc::AdminApi::new(admin.clone())))
            .into_axum_router()
            .layer(middleware::from_fn_with_state(admin.clone(), require_token));
    let protected = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/actors", get(actors))
        .route("/admin/actors/{*id}", get(actor))
        .route("/admin/sessions/{id}/close", post(close_session))
        .route("/admin/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(admin.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/admin", get(page))
        .route("/admin/", get(page))
        .merge(protected)
        .with_state(admin)
        .merge(grpc)
}

/// Readiness for orchestrators (no token): the status of `/readyz` and
/// nothing else, so an open probe port tells nobody what is down.
async fn ready(state: State<Arc<AdminState>>) -> (StatusCode, &'static str) {
    match readyz(state).await.0 {
        StatusCode::OK => (StatusCode::OK, "ready\n"),
        code => (code, "not ready\n"),
    }
}

async fn readyz(State(admin): State<Arc<AdminState>>) -> (StatusCode, String) {
    let mut down = admin.supervisors.down_supervisors();
    down.extend(
        admin
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

/// The page that renders the tree (no external assets).
const PAGE: &str = include_str!("page.html");

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

async fn metrics(State(admin): State<Arc<AdminState>>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        admin.metrics.render(),
    )
        .into_response()
}

#[derive(Debug, Deserialize, Default)]
struct ActorsParams {
    namespace: Option<String>,
    kind: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

fn unavailable(e: crate::error::Error) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", e.message)).into_response()
}

async fn actors(State(admin): State<Arc<AdminState>>, Query(p): Query<ActorsParams>) -> Response {
    let tree = match admin.tree().await {
        Ok(t) => t,
        Err(e) => return unavailable(e),
    };
    let q = tree::TreeQuery {
        namespace: p.namespace,
        kind: p.kind,
        offset: p.offset.unwrap_or(0),
        limit: p.limit,
    };
    if !q.is_page() {
        return Json(serde_json::json!({ "tree": tree })).into_response();
    }
    let page = tree::page(tree, &q);
    Json(serde_json::json!({
        "total": page.total,
        "offset": q.offset,
        "nodes": page.nodes,
    }))
    .into_response()
}

async fn actor(State(admin): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    let tree = match admin.tree().await {
        Ok(t) => t,
        Err(e) => return unavailable(e),
    };
    match tree.find(&id) {
        Some(node) => Json(node.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no actor `{id}`\n")).into_response(),
    }
}

async fn close_session(State(admin): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    let Some(entry) = admin.sessions.registry().by_id(&id) else {
        return (StatusCode::NOT_FOUND, format!("no open session `{id}`\n")).into_response();
    };
    let closed = match admin.sessions.close(&entry, true).await {
        Ok(closed) => closed,
        Err(e) => {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", e.message)).into_response()
        }
    };
    tracing::info!(
        target: "prism::audit",
        event = "admin_close_session",
        session_id = %id,
        namespace = %entry.namespace(),
        success = closed.success,
        "session closed by an administrator"
    );
    Json(serde_json::json!({
        "session_id": id,
        "closed": closed.success,
    }))
    .into_response()
}

async fn reload(State(admin): State<Arc<AdminState>>) -> Response {
    match admin.reloader.reload().await {
        Ok(report) => Json(report).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "config reload refused; the running config stays");
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("config reload refused; the running config stays:\n{e}\n"),
            )
                .into_response()
        }
    }
}

pub async fn serve(
    listener: TcpListener,
    admin: Arc<AdminState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(admin))
        .with_graceful_shutdown(shutdown)
        .await
}
