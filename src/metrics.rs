//! Prometheus metrics, kept and exposed with the `prometheus-client`
//! library (OpenMetrics text). A tower layer on the gRPC server counts
//! every call and its duration by namespace, service, method and status
//! code; the rest (sessions, subscriptions, transactions, restarts, pools,
//! traffic, relay lag) is read at scrape time by a collector from counters
//! the gateway keeps as things happen — no actor is asked and no session
//! visited, so a scrape costs the same with 100 sessions as with 100,000.
//!
//! Every label set is a typed struct whose values come from a closed set —
//! the methods this binary serves (any other path counts as `unknown`), the
//! configured namespaces, backends and relays, the status codes, the actor
//! kinds — so the number of series is bounded by the configuration, never
//! by what clients send.
//!
//! The namespace of a call is learned where the session is checked and
//! carried to the layer in its [`crate::call`] slot, so no handler has to
//! report it.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc, LazyLock},
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::Histogram,
        MetricType,
    },
    registry::Registry,
};
use tonic::codegen::http;

use crate::{
    actors::Supervisors,
    backends::{lru::Snapshot, Backends},
    call::{CallInfo, SessionRef},
    services::kv_cache::{CacheFigures, KvCaches},
    session::SessionRegistry,
};

/// The content type of [`Exposition::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Services whose calls are data operations (audited).
const DATA_SERVICES: [&str; 6] = [
    "prism.cache.v1.",
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

/// The labels of one call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabels {
    /// A configured namespace (learned from the session), or empty.
    namespace: Arc<str>,
    service: &'static str,
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: Arc<str>,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
    r#type: &'static str,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct KvCacheLabels {
    config: String,
    namespace: String,
    backend: String,
    strategy: &'static str,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct RelayLabels {
    namespace: String,
    relay: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The gateway's call counters, written by [`MetricsLayer`].
#[derive(Clone)]
pub struct Metrics {
    requests: Family<CallLabels, Counter>,
    durations: Family<CallLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
        }
    }
}

impl Metrics {
    fn observe(&self, labels: &CallLabels, elapsed: Duration) {
        self.requests.get_or_create(labels).inc();
        self.durations
            .get_or_create(labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// What `/metrics` reads: counters kept as things happen, nothing else.
#[derive(Clone)]
pub struct Sources {
    /// Calls by namespace, service, method and code.
    pub calls: Arc<Metrics>,
    /// Per-namespace session, subscription, transaction and byte counters.
    pub registry: Arc<SessionRegistry>,
    /// Actor restarts by kind, and the outbox relays for their lag.
    pub supervisors: Arc<Supervisors>,
    /// Backend health and pool sizes, and the memory backends' caches.
    pub backends: Arc<Backends>,
    /// The caches in front of KeyValue.
    pub kv_caches: Arc<KvCaches>,
    /// The claim check's object store traffic.
    pub claim_checks: Arc<crate::services::claim_check::ClaimChecks>,
}

/// The registry `/metrics` encodes: the call families and a collector of
/// the gateway's counters.
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    pub fn new(sources: Sources) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "prism_requests",
            "gRPC calls by namespace, service, method and status code.",
            sources.calls.requests.clone(),
        );
        registry.register(
            "prism_request_duration_seconds",
            "gRPC call duration (to the response headers for streams), by namespace, service, method and status code.",
            sources.calls.durations.clone(),
        );
        registry.register_collector(Box::new(Live(sources)));
        Exposition { registry }
    }

    /// The whole exposition, OpenMetrics text ending in `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, and every label value is a
        // string or a known name.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding /metrics failed");
        }
        out
    }
}

/// Reads the gateway's counters at each scrape.
struct Live(Sources);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

/// One family of constant samples.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let sources = &self.0;
        // Per namespace: as many as configured, whatever the sessions.
        let mut namespaces: Vec<_> = sources.registry.namespaces().collect();
        namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        let by_ns = |value: fn(&crate::session::NamespaceSessions) -> i64| {
            namespaces.iter().map(move |n| {
                let labels = NamespaceLabels {
                    namespace: n.name.clone(),
                };
                (labels, value(n))
            })
        };
        let gauges = |v: fn(&crate::session::NamespaceSessions) -> i64| {
            by_ns(v).map(|(l, v)| (l, ConstGauge::new(v)))
        };
        let counters = |v: fn(&crate::session::NamespaceSessions) -> i64| {
            by_ns(v).map(|(l, v)| (l, ConstCounter::new(u64::try_from(v).unwrap_or(0))))
        };
        family(
            &mut encoder,
            "prism_sessions_active",
            "Open sessions.",
            MetricType::Gauge,
            gauges(|n| i64::try_from(n.open.load(Ordering::Relaxed)).unwrap_or(i64::MAX)),
        )?;
        family(
            &mut encoder,
            "prism_subscriptions_active",
            "Open Queue and PubSub subscription streams.",
            MetricType::Gauge,
            gauges(|n| n.subscriptions.load(Ordering::Relaxed)),
        )?;
        family(
            &mut encoder,
            "prism_transactions_active",
            "Open streaming transactions.",
            MetricType::Gauge,
            gauges(|n| n.transactions.load(Ordering::Relaxed)),
        )?;
        family(
            &mut encoder,
            "prism_bytes_received",
            "Request message bytes of data calls.",
            MetricType::Counter,
            counters(|n| n.bytes_received.load(Ordering::Relaxed)),
        )?;
        family(
            &mut encoder,
            "prism_bytes_sent",
            "Response message bytes of data calls.",
            MetricType::Counter,
            counters(|n| n.bytes_sent.load(Ordering::Relaxed)),
        )?;
        family(
            &mut encoder,
            "prism_actor_restarts",
            "Actor restarts by kind since the gateway started.",
            MetricType::Counter,
            sources
                .supervisors
                .restarts()
                .by_kind()
                .map(|(kind, n)| (KindLabels { kind: kind.name() }, ConstCounter::new(n))),
        )?;

        let backends: Vec<_> = sources
            .backends
            .iter()
            .filter_map(|b| {
                let client = b.client.as_ref()?;
                let labels = BackendLabels {
                    backend: b.name.clone(),
                    r#type: b.kind.name(),
                };
                Some((b, labels, client.pool_stats()))
            })
            .collect();
        family(
            &mut encoder,
            "prism_backend_up",
            "1 when the backend's last check passed.",
            MetricType::Gauge,
            backends
                .iter()
                .map(|(b, l, _)| (l.clone(), ConstGauge::new(i64::from(b.health.is_up())))),
        )?;
        family(
            &mut encoder,
            "prism_backend_errors",
            "Failed health checks and connects.",
            MetricType::Counter,
            backends.iter().map(|(b, l, _)| {
                let failures = b.health.failures.load(Ordering::Relaxed);
                (l.clone(), ConstCounter::new(failures))
            }),
        )?;
        let pools = || {
            backends
                .iter()
                .filter_map(|(_, l, stats)| Some((l.clone(), (*stats)?)))
        };
        family(
            &mut encoder,
            "prism_backend_pool_connections",
            "Open connections of SQL pools.",
            MetricType::Gauge,
            pools().map(|(l, s)| (l, ConstGauge::new(i64::from(s.connections)))),
        )?;
        family(
            &mut encoder,
            "prism_backend_pool_in_use",
            "Connections of SQL pools in use.",
            MetricType::Gauge,
            pools().map(|(l, s)| {
                let in_use = usize::try_from(s.connections)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(s.idle);
                (l, ConstGauge::new(in_use))
            }),
        )?;
        family(
            &mut encoder,
            "prism_backend_statement_lanes_connected",
            "Postgres connections held beside the pool for lone hot statements (pool.statement_lanes).",
            MetricType::Gauge,
            pools().map(|(l, s)| (l, ConstGauge::new(s.lanes_connected))),
        )?;

        let running = sources.supervisors.relays();
        let relays: Vec<_> = running
            .iter()
            .map(|r| {
                let labels = RelayLabels {
                    namespace: r.namespace.clone(),
                    relay: r.name.clone(),
                };
                (labels, r)
            })
            .collect();
        family(
            &mut encoder,
            "prism_relay_lag_messages",
            "Rows of each relay's mailbox it has yet to publish.",
            MetricType::Gauge,
            relays.iter().map(|(l, r)| {
                let rows = i64::try_from(r.lag().0).unwrap_or(i64::MAX);
                (l.clone(), ConstGauge::new(rows))
            }),
        )?;
        family(
            &mut encoder,
            "prism_relay_lag_seconds",
            "Age of the oldest row each relay has yet to publish.",
            MetricType::Gauge,
            relays.iter().map(|(l, r)| {
                let age = r.lag().1.map_or(0.0, |a| a.as_secs_f64());
                (l.clone(), ConstGauge::new(age))
            }),
        )?;
        family(
            &mut encoder,
            "prism_relay_dead_lettered",
            "Rows each relay moved aside (the broker kept refusing them) since the gateway started.",
            MetricType::Counter,
            relays
                .iter()
                .map(|(l, r)| (l.clone(), ConstCounter::new(r.dead_lettered()))),
        )?;
        self.encode_caches(&mut encoder)?;
        self.encode_claim_checks(&mut encoder)
    }
}

impl Live {
    /// The claim check's figures (one sample each, no labels).
    fn encode_claim_checks(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let claims = &self.0.claim_checks;
        let f = &claims.figures;
        for (name, help, value) in [
            (
                "prism_claim_check_stored",
                "Payloads kept in an object store by the claim check (above their namespace's threshold).",
                &f.stored,
            ),
            (
                "prism_claim_check_stored_bytes",
                "Bytes of the payloads the claim check kept in object stores.",
                &f.stored_bytes,
            ),
            (
                "prism_claim_check_fetched",
                "Stored payloads read back to deliver their message.",
                &f.fetched,
            ),
            (
                "prism_claim_check_deleted_on_ack",
                "Stored payloads deleted when their Queue message was acknowledged.",
                &f.deleted_on_ack,
            ),
            (
                "prism_claim_check_deleted_by_retention",
                "Stored payloads deleted by the sweeper once older than their namespace's retention.",
                &f.deleted_by_retention,
            ),
            (
                "prism_claim_check_discarded",
                "Stored payloads deleted because their message was not published or written.",
                &f.discarded,
            ),
            (
                "prism_claim_check_failures",
                "Object store calls of the claim check that failed (the call's error says which).",
                &*f.failures,
            ),
            (
                "prism_claim_check_untracked",
                "Delivered Queue payloads not remembered for deletion on acknowledgement (too many unacknowledged); their retention deletes them.",
                &f.untracked,
            ),
        ] {
            ConstCounter::new(value.load(Ordering::Relaxed)).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        ConstGauge::new(i64::try_from(claims.tracked()).unwrap_or(i64::MAX)).encode(
            encoder.encode_descriptor(
                "prism_claim_check_tracked",
                "Delivered Queue payloads awaiting their acknowledgement to be deleted.",
                None,
                MetricType::Gauge,
            )?,
        )?;
        Ok(())
    }

    /// The KeyValue caches by config, and the memory backends' Cache
    /// stores by backend.
    fn encode_caches(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let sources = &self.0;
        let caches: Vec<_> = sources
            .kv_caches
            .figures()
            .into_iter()
            .map(|f| {
                let labels = KvCacheLabels {
                    config: f.config.clone(),
                    namespace: f.namespace.clone(),
                    backend: f.backend.clone(),
                    strategy: f.strategy,
                };
                (labels, f)
            })
            .collect();
        let counter = |encoder: &mut DescriptorEncoder, name, help, v: fn(&CacheFigures) -> u64| {
            family(
                encoder,
                name,
                help,
                MetricType::Counter,
                caches
                    .iter()
                    .map(|(l, f)| (l.clone(), ConstCounter::new(v(f)))),
            )
        };
        counter(
            encoder,
            "prism_kv_cache_hits",
            "KeyValue reads served from the config's cache.",
            |f| f.lru.hits,
        )?;
        counter(
            encoder,
            "prism_kv_cache_misses",
            "KeyValue reads the config's cache could not serve (read from the backend).",
            |f| f.lru.misses,
        )?;
        counter(
            encoder,
            "prism_kv_cache_evictions",
            "Entries pushed out of a KeyValue cache to stay within max_entries and max_bytes.",
            |f| f.lru.evictions,
        )?;
        counter(
            encoder,
            "prism_kv_cache_expirations",
            "Entries of a KeyValue cache dropped when their ttl was up.",
            |f| f.lru.expirations,
        )?;
        counter(
            encoder,
            "prism_kv_cache_invalidations",
            "Keys dropped from a KeyValue cache because they were written, here or on another instance.",
            |f| f.invalidations,
        )?;
        let gauge = |encoder: &mut DescriptorEncoder, name, help, v: fn(&CacheFigures) -> u64| {
            family(
                encoder,
                name,
                help,
                MetricType::Gauge,
                caches.iter().map(|(l, f)| {
                    (
                        l.clone(),
                        ConstGauge::new(i64::try_from(v(f)).unwrap_or(i64::MAX)),
                    )
                }),
            )
        };
        gauge(
            encoder,
            "prism_kv_cache_entries",
            "Entries in a KeyValue cache.",
            |f| f.lru.entries,
        )?;
        gauge(
            encoder,
            "prism_kv_cache_bytes",
            "Bytes a KeyValue cache holds (keys, values and 64 bytes per entry).",
            |f| f.lru.bytes,
        )?;
        // One sample, no labels (a family's label set, even empty, would be
        // written as `{}`).
        ConstCounter::new(sources.kv_caches.unannounced.load(Ordering::Relaxed)).encode(
            encoder.encode_descriptor(
                "prism_kv_cache_unannounced",
                "KeyValue writes to a cached namespace the other instances could not be told of (the session store did not answer).",
                None,
                MetricType::Counter,
            )?,
        )?;

        let stores: Vec<_> = sources
            .backends
            .iter()
            .filter_map(|b| {
                let snapshot = b.client.as_ref()?.cache_figures()?;
                let labels = BackendLabels {
                    backend: b.name.clone(),
                    r#type: b.kind.name(),
                };
                Some((labels, snapshot))
            })
            .collect();
        let store_gauge = |encoder: &mut DescriptorEncoder, name, help, v: fn(&Snapshot) -> u64| {
            family(
                encoder,
                name,
                help,
                MetricType::Gauge,
                stores.iter().map(|(l, s)| {
                    (
                        l.clone(),
                        ConstGauge::new(i64::try_from(v(s)).unwrap_or(i64::MAX)),
                    )
                }),
            )
        };
        store_gauge(
            encoder,
            "prism_cache_entries",
            "Entries of the Cache service held by a memory backend.",
            |s| s.entries,
        )?;
        store_gauge(
            encoder,
            "prism_cache_bytes",
            "Bytes of the Cache service held by a memory backend (keys, values and 64 bytes per entry).",
            |s| s.bytes,
        )?;
        family(
            encoder,
            "prism_cache_evictions",
            "Entries a memory backend's cache pushed out to stay within its bounds.",
            MetricType::Counter,
            stores
                .iter()
                .map(|(l, s)| (l.clone(), ConstCounter::new(s.evictions))),
        )?;
        Ok(())
    }
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
            let labels = CallLabels {
                namespace: session
                    .map_or_else(|| NO_NAMESPACE.clone(), |s| s.namespace_label().clone()),
                service,
                method,
                code,
            };
            metrics.observe(&labels, started.elapsed());
            result
        })
    }
}
