//! Prometheus metrics: a tower layer on the gRPC server counts every call
//! and its duration by namespace, service, method and status code; the rest
//! (sessions, subscriptions, transactions, restarts, pools, traffic, relay
//! lag) comes from counters the gateway keeps as things happen, read when
//! `/metrics` is scraped — no actor is asked and no session visited, so a
//! scrape costs the same with 100 sessions as with 100,000.
//!
//! Every label value comes from a closed set — the methods this binary
//! serves (any other path counts as `unknown`), the configured namespaces,
//! the status codes — so the number of series is bounded by the
//! configuration, never by what clients send.
//!
//! The namespace of a call is learned where the session is checked and
//! carried to the layer in its [`crate::call`] slot, so no handler has to
//! report it.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, LazyLock,
    },
    task::{Context, Poll},
    time::Duration,
};

use dashmap::DashMap;
use futures::future::BoxFuture;
use tonic::codegen::http;

use crate::{
    actors::{relay::RelayShared, supervision::Restarts},
    backends::Backends,
    call::{CallInfo, SessionRef},
    session::SessionRegistry,
};

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Services whose calls are data operations (audited).
const DATA_SERVICES: [&str; 5] = [
    "prism.keyvalue.v1.",
    "prism.queue.v1.",
    "prism.pubsub.v1.",
    "prism.reader.v1.",
    "prism.transact.v1.",
];

/// The label value of a path this gateway does not serve.
const UNKNOWN: &str = "unknown";

/// The gRPC methods this gateway serves, by request path
/// (`/package.Service/Method`) — Prism's packages, health and reflection —
/// with their service and method names: the only label values a call can
/// have. Built once from the descriptor sets compiled into the binary.
static METHODS: LazyLock<HashMap<String, (&'static str, &'static str)>> = LazyLock::new(|| {
    use prost::Message as _;
    let mut out = HashMap::new();
    for encoded in [
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
            continue;
        };
        for file in &set.file {
            for service in &file.service {
                let name = format!("{}.{}", file.package(), service.name());
                // Leaked once, for a set fixed at build time.
                let name: &'static str = Box::leak(name.into_boxed_str());
                for method in &service.method {
                    let m: &'static str = Box::leak(method.name().to_string().into_boxed_str());
                    out.insert(format!("/{name}/{m}"), (name, m));
                }
            }
        }
    }
    out
});

/// The (service, method) labels of a request path; `unknown` for both when
/// the gateway serves no such method, so made-up paths cannot grow the
/// series, the spans or the logs.
pub fn method_labels(path: &str) -> (&'static str, &'static str) {
    METHODS.get(path).copied().unwrap_or((UNKNOWN, UNKNOWN))
}

/// The namespace label of a call no session was found for.
static NO_NAMESPACE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct CallKey {
    /// A configured namespace (learned from the session), or empty.
    namespace: Arc<str>,
    service: &'static str,
    method: &'static str,
    code: &'static str,
}

#[derive(Default)]
struct CallStats {
    count: AtomicU64,
    sum_micros: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
}

/// The gateway's call counters.
#[derive(Default)]
pub struct Metrics {
    calls: DashMap<CallKey, Arc<CallStats>>,
}

impl Metrics {
    fn observe(&self, key: CallKey, elapsed: Duration) {
        // A series seen before (nearly every call) takes a shard's read
        // lock only.
        let seen = self.calls.get(&key).map(|s| s.value().clone());
        let stats = seen.unwrap_or_else(|| self.calls.entry(key).or_default().clone());
        stats.count.fetch_add(1, Ordering::Relaxed);
        stats
            .sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            stats.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn render_calls(&self, out: &mut String) {
        let mut calls: Vec<(CallKey, Arc<CallStats>)> = self
            .calls
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        calls.sort_by(|a, b| a.0.cmp(&b.0));
        header(
            out,
            "prism_requests_total",
            "counter",
            "gRPC calls by namespace, service, method and status code.",
        );
        for (k, s) in &calls {
            let _ = writeln!(
                out,
                "prism_requests_total{} {}",
                call_labels(k, None),
                s.count.load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "prism_request_duration_seconds",
            "histogram",
            "gRPC call duration (to the response headers for streams).",
        );
        for (k, s) in &calls {
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += s.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "prism_request_duration_seconds_bucket{} {cumulative}",
                    call_labels(k, Some(&bound.to_string()))
                );
            }
            let count = s.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "prism_request_duration_seconds_bucket{} {count}",
                call_labels(k, Some("+Inf"))
            );
            let _ = writeln!(
                out,
                "prism_request_duration_seconds_sum{} {}",
                call_labels(k, None),
                s.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "prism_request_duration_seconds_count{} {count}",
                call_labels(k, None)
            );
        }
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn call_labels(k: &CallKey, le: Option<&str>) -> String {
    let mut pairs = vec![
        ("namespace", &*k.namespace),
        ("service", k.service),
        ("method", k.method),
        ("code", k.code),
    ];
    if let Some(le) = le {
        pairs.push(("le", le));
    }
    labels(&pairs)
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One gauge or counter family from (labels, value) samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    header(out, name, kind, help);
    for (l, v) in samples {
        let _ = writeln!(out, "{name}{l} {v}");
    }
}

/// What `/metrics` reads: counters kept as things happen, nothing else.
pub struct Sources {
    /// Calls by namespace, service, method and code.
    pub calls: Arc<Metrics>,
    /// Per-namespace session, subscription, transaction and byte counters.
    pub registry: Arc<SessionRegistry>,
    /// Actor restarts by kind.
    pub restarts: Arc<Restarts>,
    /// Backend health and pool sizes.
    pub backends: Arc<Backends>,
    /// The outbox relays (fixed when the gateway starts), for their lag.
    pub relays: Vec<Arc<RelayShared>>,
}

/// The whole exposition: call counters, then the gateway's counters.
pub fn render(sources: &Sources) -> String {
    let mut out = String::new();
    sources.calls.render_calls(&mut out);

    // Gauges from counters kept as things happen: a scrape costs the same
    // with 100 sessions as with 100,000 (no actor is asked, nothing walks
    // the sessions).
    let namespaces: Vec<_> = sources.registry.namespaces().collect();
    let by_ns = |value: &dyn Fn(&crate::session::NamespaceSessions) -> f64| -> Vec<(String, f64)> {
        let mut samples: Vec<(String, f64)> = namespaces
            .iter()
            .map(|n| (labels(&[("namespace", &n.name)]), value(n)))
            .collect();
        samples.sort_by(|a, b| a.0.cmp(&b.0));
        samples
    };
    family(
        &mut out,
        "prism_sessions_active",
        "gauge",
        "Open sessions.",
        &by_ns(&|n| n.open.load(Ordering::Relaxed) as f64),
    );
    family(
        &mut out,
        "prism_subscriptions_active",
        "gauge",
        "Open Queue and PubSub subscription streams.",
        &by_ns(&|n| n.subscriptions.load(Ordering::Relaxed) as f64),
    );
    family(
        &mut out,
        "prism_transactions_active",
        "gauge",
        "Open streaming transactions.",
        &by_ns(&|n| n.transactions.load(Ordering::Relaxed) as f64),
    );
    let restarts: Vec<(String, f64)> = sources
        .restarts
        .by_kind()
        .map(|(kind, n)| (labels(&[("kind", kind.name())]), n as f64))
        .collect();
    family(
        &mut out,
        "prism_actor_restarts_total",
        "counter",
        "Actor restarts by kind since the gateway started.",
        &restarts,
    );

    let mut up = Vec::new();
    let mut size = Vec::new();
    let mut idle = Vec::new();
    let mut lanes = Vec::new();
    let mut failures = Vec::new();
    for b in sources.backends.iter().filter(|b| b.client.is_some()) {
        let l = labels(&[("backend", &b.name), ("type", b.kind.name())]);
        up.push((l.clone(), f64::from(u8::from(b.health.is_up()))));
        failures.push((l.clone(), b.health.failures.load(Ordering::Relaxed) as f64));
        if let Some(client) = &b.client {
            let stats = client.stats();
            if let (Some(c), Some(i)) = (stats["connections"].as_f64(), stats["idle"].as_f64()) {
                size.push((l.clone(), c));
                idle.push((l.clone(), (c - i).max(0.0)));
            }
            if let Some(n) = stats["statement_lanes_connected"].as_f64() {
                lanes.push((l.clone(), n));
            }
        }
    }
    family(
        &mut out,
        "prism_backend_up",
        "gauge",
        "1 when the backend's last check passed.",
        &up,
    );
    family(
        &mut out,
        "prism_backend_errors_total",
        "counter",
        "Failed health checks and connects.",
        &failures,
    );
    family(
        &mut out,
        "prism_backend_pool_connections",
        "gauge",
        "Open connections of SQL pools.",
        &size,
    );
    family(
        &mut out,
        "prism_backend_pool_in_use",
        "gauge",
        "Connections of SQL pools in use.",
        &idle,
    );
    family(
        &mut out,
        "prism_backend_statement_lanes_connected",
        "gauge",
        "Postgres connections held beside the pool for lone hot statements (pool.statement_lanes).",
        &lanes,
    );

    let received = by_ns(&|n| n.bytes_received.load(Ordering::Relaxed) as f64);
    let sent = by_ns(&|n| n.bytes_sent.load(Ordering::Relaxed) as f64);
    let mut lag = Vec::new();
    let mut lag_age = Vec::new();
    let mut dead = Vec::new();
    for relay in &sources.relays {
        let l = labels(&[("namespace", &relay.namespace), ("relay", &relay.name)]);
        let (rows, age) = relay.lag();
        lag.push((l.clone(), rows as f64));
        dead.push((l.clone(), relay.dead_lettered() as f64));
        lag_age.push((l, age.map_or(0.0, |a| a.as_secs_f64())));
    }
    family(
        &mut out,
        "prism_bytes_received_total",
        "counter",
        "Request message bytes of data calls.",
        &received,
    );
    family(
        &mut out,
        "prism_bytes_sent_total",
        "counter",
        "Response message bytes of data calls.",
        &sent,
    );
    family(
        &mut out,
        "prism_relay_lag_messages",
        "gauge",
        "Rows of each relay's mailbox it has yet to publish.",
        &lag,
    );
    family(
        &mut out,
        "prism_relay_lag_seconds",
        "gauge",
        "Age of the oldest row each relay has yet to publish.",
        &lag_age,
    );
    family(
        &mut out,
        "prism_relay_dead_lettered_total",
        "counter",
        "Rows each relay moved aside (the broker kept refusing them) since the gateway started.",
        &dead,
    );
    out
}

/// The tower layer around the gRPC server: counts every call, runs it in
/// its `rpc` span ([`crate::telemetry::rpc_span`]) and audits data calls.
#[derive(Clone)]
pub struct MetricsLayer {
    pub metrics: Arc<Metrics>,
    pub audit: Arc<crate::audit::Audit>,
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
            audit: self.audit.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    audit: Arc<crate::audit::Audit>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (service, method) = method_labels(req.uri().path());
        let metrics = self.metrics.clone();
        // Only an audited call keeps what it was about.
        let audit = (self.audit.is_enabled()
            && DATA_SERVICES.iter().any(|s| service.starts_with(s)))
        .then(|| self.audit.clone());
        let info = Arc::new(CallInfo::new(audit.is_some()));
        let span = crate::telemetry::rpc_span(service, method, req.headers());
        let call = crate::call::scope(
            info.clone(),
            tracing::Instrument::instrument(self.inner.call(req), span),
        );
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let result = call.await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("OK", |c| crate::error::code_name(tonic::Code::from(c))),
                Err(_) => "UNKNOWN",
            };
            let session = info.session();
            if let Some(audit) = audit {
                let SessionRef {
                    namespace,
                    session_id,
                    identity,
                } = session.map(|s| s.session_ref()).unwrap_or_default();
                audit.record(crate::audit::Record {
                    event: "data",
                    session_id,
                    identity,
                    namespace,
                    operation: format!("{service}/{method}"),
                    resource: info.resource().unwrap_or_default().to_string(),
                    outcome: if code == "OK" {
                        "ok".into()
                    } else {
                        code.into()
                    },
                    ..Default::default()
                });
            }
            let key = CallKey {
                namespace: session
                    .map_or_else(|| NO_NAMESPACE.clone(), |s| s.namespace_label().clone()),
                service,
                method,
                code,
            };
            metrics.observe(key, started.elapsed());
            result
        })
    }
}
