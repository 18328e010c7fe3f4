//! The gateway: [`Gateway::start`] builds the shared state and the actor tree;
//! [`run`] serves gRPC (and the admin listener) on already-bound listeners
//! until the shutdown future resolves, then drains and closes sessions.

mod connections;
pub mod reload;
pub mod tls;

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};
use tonic::transport::Server;

use crate::{
    actors::{
        subscription::Subscriptions, ActorNode, ArbiterPool, SupervisionFailure,
        SupervisorSettings, Supervisors,
    },
    auth::Authenticator,
    backends::Backends,
    config::{resolve::NamedConfigs, GatewayConfig, LiveConfig},
    error::Error,
    proto,
    services::{
        cache::CacheApi, config::ConfigApi, keyvalue::KeyValueApi, pubsub::PubSubApi,
        queue::QueueApi, reader::ReaderApi, session::SessionApi, transact::TransactApi,
    },
    session::{Clock, SessionRegistry, Sessions},
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("tls setup failed: {0}")]
    Tls(String),
    #[error("grpc server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("admin listener failed: {0}")]
    Admin(std::io::Error),
    #[error("supervision failed: {0}")]
    Supervision(String),
}

/// Everything a running gateway shares between its services and actors.
/// How often the KeyValue caches drop their expired entries.
const KV_CACHE_SWEEP: Duration = Duration::from_secs(30);

pub struct Gateway {
    /// The running config (a reload replaces it with what it applied);
    /// the services read `limits` and the admin listener its token here.
    pub config: LiveConfig,
    pub named: Arc<NamedConfigs>,
    pub registry: Arc<SessionRegistry>,
    pub sessions: Arc<Sessions>,
    pub supervisors: Arc<Supervisors>,
    pub backends: Arc<Backends>,
    pub subscriptions: Arc<Subscriptions>,
    /// gRPC call counters (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The audit log.
    pub audit: Arc<crate::audit::Audit>,
    /// The gRPC listener's TLS material, when `server.tls` is set.
    pub tls: Option<Arc<tls::TlsMaterial>>,
    /// Rereads the config and applies what can change live.
    pub reloader: Arc<reload::Reloader>,
    /// The caches in front of KeyValue, by named config.
    pub kv_caches: Arc<crate::services::kv_cache::KvCaches>,
    /// The object stores of the claim check and what it tracks.
    pub claim_checks: Arc<crate::services::claim_check::ClaimChecks>,
    pool: Arc<ArbiterPool>,
}

impl Gateway {
    /// Builds the gateway and starts the actor tree. Must be called inside an
    /// actix System (see [`crate::runtime`]); the config must have passed
    /// validation.
    pub fn start(config: GatewayConfig) -> Result<Gateway, ServeError> {
        Self::start_from(config, reload::Origin::inline())
    }

    /// [`Gateway::start`], for a config read from `origin`, which a reload
    /// reads again.
    pub fn start_from(
        config: GatewayConfig,
        origin: reload::Origin,
    ) -> Result<Gateway, ServeError> {
        let live: LiveConfig = Arc::new(arc_swap::ArcSwap::from_pointee(config));
        let config = live.load_full();
        let tls = match &config.server.tls {
            Some(spec) => Some(Arc::new(
                tls::TlsMaterial::load(spec).map_err(ServeError::Tls)?,
            )),
            None => None,
        };
        let auth = Arc::new(Authenticator::new(&config).map_err(ServeError::Config)?);
        let named = Arc::new(
            NamedConfigs::resolve_all(&config).map_err(|e| ServeError::Config(e.message))?,
        );
        let clock = Clock::new();
        let registry = Arc::new(SessionRegistry::new(clock, config.namespaces.iter()));
        let audit = Arc::new(crate::audit::Audit::open(&config.audit).map_err(ServeError::Config)?);
        registry.set_audit(audit.clone());
        let backends = Arc::new(
            Backends::build(&config.backends, |name| config.sql_uses(name), clock)
                .map_err(ServeError::Config)?,
        );
        let threads = config
            .server
            .actor_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let pool = Arc::new(ArbiterPool::new(threads));
        let subscriptions = Arc::new(Subscriptions::new());
        let settings = SupervisorSettings {
            registry: registry.clone(),
            pool: pool.clone(),
            interval: config.server.supervision_interval,
            max_restarts: config.server.max_restarts,
            failure: Arc::new(SupervisionFailure::default()),
            restarts: Arc::default(),
        };
        let relays = crate::actors::relay::configured(&config, &backends, clock)
            .map_err(ServeError::Config)?;
        let supervisors = Arc::new(Supervisors::start(
            config
                .namespaces
                .iter()
                .map(|(name, ns)| (name, ns.session.max_restarts)),
            &backends,
            relays,
            subscriptions.clone(),
            settings,
        ));
        let store = crate::session::store::open(&config.sessions).map_err(ServeError::Config)?;
        let kv_caches = Arc::new(crate::services::kv_cache::KvCaches::new(clock));
        kv_caches.sync(&named.all());
        kv_caches.sweep_every(KV_CACHE_SWEEP);
        if let Some(store) = &store {
            kv_caches.start(store.clone());
        }
        let claim_checks = Arc::new(
            crate::services::claim_check::ClaimChecks::open(&config, live.clone(), clock)
                .map_err(ServeError::Config)?,
        );
        if let Some(every) = crate::services::claim_check::ClaimChecks::sweep_interval(&config) {
            claim_checks.sweep_every(every);
        }
        let sessions = Arc::new(Sessions::new(
            live.clone(),
            named.clone(),
            auth.clone(),
            registry.clone(),
            supervisors.clone(),
            store,
        ));
        let reloader = Arc::new(reload::Reloader {
            origin,
            config: live.clone(),
            named: named.clone(),
            auth,
            registry: registry.clone(),
            supervisors: supervisors.clone(),
            backends: backends.clone(),
            tls: tls.clone(),
            kv_caches: kv_caches.clone(),
            turn: tokio::sync::Mutex::new(()),
        });
        Ok(Gateway {
            config: live,
            named: named.clone(),
            registry,
            sessions,
            supervisors,
            backends,
            subscriptions,
            metrics: Arc::default(),
            audit,
            tls,
            reloader,
            kv_caches,
            claim_checks,
            pool,
        })
    }

    /// Whether every backend a namespace may use is up (backends with no
    /// client in this build do not count).
    pub fn namespace_ready(&self, namespace: &str) -> bool {
        self.config
            .load()
            .namespaces
            .get(namespace)
            .is_some_and(|ns| {
                ns.allowed_backends.iter().all(|name| {
                    self.backends
                        .get(name)
                        .is_none_or(|b| b.client.is_none() || b.health.is_up())
                })
            })
    }

    /// What `/metrics` exposes.
    pub fn exposition(&self) -> crate::metrics::Exposition {
        crate::metrics::Exposition::new(crate::metrics::Sources {
            calls: self.metrics.clone(),
            registry: self.registry.clone(),
            supervisors: self.supervisors.clone(),
            backends: self.backends.clone(),
            kv_caches: self.kv_caches.clone(),
            claim_checks: self.claim_checks.clone(),
        })
    }

    /// What the admin listener reads and does.
    pub fn admin_state(&self) -> crate::admin::AdminState {
        crate::admin::AdminState {
            config: self.config.clone(),
            reloader: self.reloader.clone(),
            metrics: self.exposition(),
            backends: self.backends.clone(),
            supervisors: self.supervisors.clone(),
            sessions: self.sessions.clone(),
            kv_caches: self.kv_caches.clone(),
        }
    }

    /// The live actor tree.
    pub async fn observe(&self) -> Result<ActorNode, Error> {
        self.supervisors.observe().await
    }

    /// Delivers a deliberate fault to the actor with this id (supervision
    /// drills; compiled for tests only).
    #[cfg(any(test, feature = "drills"))]
    pub fn drill(&self, actor_id: &str, fault: crate::actors::Fault) -> Result<(), Error> {
        self.supervisors.drill(actor_id, fault)
    }
}

/// Listeners bound by the caller (tests bind `127.0.0.1:0`).
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: Option<TcpListener>,
}

/// Serves until `shutdown` resolves; then stops accepting, lets in-flight
/// calls finish within `server.shutdown_grace`, closes every session and
/// stops the actors.
pub async fn run(
    gateway: Arc<Gateway>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Settings read once, at start (a reload reports their changes as
    // needing a restart).
    let config = gateway.config.load_full();
    let (stop_tx, stop_rx) = watch::channel(false);
    let signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stopped| *stopped).await;
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    use proto::{
        cache::v1::cache_service_server::CacheServiceServer,
        config::v1::config_service_server::ConfigServiceServer,
        keyvalue::v1::key_value_service_server::KeyValueServiceServer,
        pubsub::v1::pub_sub_service_server::PubSubServiceServer,
        queue::v1::queue_service_server::QueueServiceServer,
        reader::v1::reader_service_server::ReaderServiceServer,
        session::v1::session_service_server::SessionServiceServer,
        transact::v1::transact_service_server::TransactServiceServer,
    };
    health_reporter
        .set_serving::<SessionServiceServer<SessionApi>>()
        .await;
    health_reporter
        .set_serving::<ConfigServiceServer<ConfigApi>>()
        .await;
    health_reporter
        .set_serving::<KeyValueServiceServer<KeyValueApi>>()
        .await;
    health_reporter
        .set_serving::<QueueServiceServer<QueueApi>>()
        .await;
    health_reporter
        .set_serving::<PubSubServiceServer<PubSubApi>>()
        .await;
    health_reporter
        .set_serving::<ReaderServiceServer<ReaderApi>>()
        .await;
    health_reporter
        .set_serving::<TransactServiceServer<TransactApi>>()
        .await;
    health_reporter
        .set_serving::<CacheServiceServer<CacheApi>>()
        .await;
    let readiness = tokio::spawn(report_readiness(
        gateway.clone(),
        health_reporter.clone(),
        signal(stop_rx.clone()),
    ));

    // Both reflection versions: ghz and older grpcurl speak only v1alpha.
    // They list what this port serves; AdminService (in the same
    // descriptors) lives on the admin listener.
    use tonic::server::NamedService as _;
    let public = [
        SessionServiceServer::<SessionApi>::NAME,
        ConfigServiceServer::<ConfigApi>::NAME,
        KeyValueServiceServer::<KeyValueApi>::NAME,
        QueueServiceServer::<QueueApi>::NAME,
        PubSubServiceServer::<PubSubApi>::NAME,
        ReaderServiceServer::<ReaderApi>::NAME,
        TransactServiceServer::<TransactApi>::NAME,
        CacheServiceServer::<CacheApi>::NAME,
        "grpc.health.v1.Health",
    ];
    let reflection = || {
        public.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(*name),
        )
    };
    let reflection_error = |e| ServeError::Config(format!("reflection: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;

    let limits = &config.server.connections;
    let mut builder = Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout));
    if let Some(age) = limits.max_age {
        builder = builder
            .max_connection_age(age)
            .max_connection_age_grace(config.server.shutdown_grace);
    }
    let mut builder = builder.layer(crate::metrics::MetricsLayer {
        metrics: gateway.metrics.clone(),
        audit: gateway.audit.clone(),
    });
    let gates = crate::gate::GateState::new(
        gateway.registry.clone(),
        gateway.backends.clone(),
        gateway.config.clone(),
    );
    // Data services take messages up to limits.max_message_bytes each way.
    let max = config.limits.max_message_bytes;
    macro_rules! sized {
        ($service:expr) => {
            $service
                .max_decoding_message_size(max)
                .max_encoding_message_size(max)
        };
    }
    let router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(SessionServiceServer::new(SessionApi::new(
            gateway.sessions.clone(),
        )))
        .add_service(ConfigServiceServer::new(ConfigApi::new(
            gateway.named.clone(),
        )))
        .add_service(sized!(KeyValueServiceServer::new(KeyValueApi::new(
            &gates,
            gateway.kv_caches.clone(),
        ))))
        .add_service(sized!(QueueServiceServer::new(QueueApi::new(
            &gates,
            gateway.subscriptions.clone(),
            gateway.supervisors.clone(),
            gateway.claim_checks.clone(),
        ))))
        .add_service(sized!(PubSubServiceServer::new(PubSubApi::new(
            &gates,
            gateway.subscriptions.clone(),
            gateway.supervisors.clone(),
            gateway.claim_checks.clone(),
        ))))
        .add_service(sized!(ReaderServiceServer::new(ReaderApi::new(
            &gates, &config
        ))))
        .add_service(sized!(TransactServiceServer::new(TransactApi::new(
            &gates,
            gateway.subscriptions.transactions.clone(),
            gateway.supervisors.clone(),
            gateway.config.clone(),
            gateway.claim_checks.clone(),
        ))))
        .add_service(sized!(CacheServiceServer::new(CacheApi::new(&gates))));

    let grpc_addr = listeners.grpc.local_addr().ok();
    let incoming = connections::incoming(listeners.grpc, limits);
    let mut tls_watch = None;
    let mut grpc = match &gateway.tls {
        Some(material) => {
            let every = config
                .server
                .tls
                .as_ref()
                .map_or(Duration::ZERO, |t| t.watch_interval);
            if !every.is_zero() {
                tls_watch = Some(tokio::spawn(material.clone().watch(every)));
            }
            let incoming = tls::incoming(incoming, material.clone(), limits.handshake_timeout);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, signal(stop_rx.clone())))
        }
        None => {
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, signal(stop_rx.clone())))
        }
    };
    if let Some(addr) = grpc_addr {
        tracing::info!(%addr, "grpc listening");
    }

    let admin = listeners.admin.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "admin listening");
        }
        tokio::spawn(crate::admin::serve(
            listener,
            Arc::new(gateway.admin_state()),
            signal(stop_rx.clone()),
        ))
    });

    let grace = config.server.shutdown_grace;
    let failure = gateway.supervisors.failure.clone();
    let mut supervision_failed = None;
    let mut result = tokio::select! {
        served = &mut grpc => Some(served),
        _ = shutdown => None,
        // Serving without supervision is worse than stopping: the process
        // exits non-zero and an orchestrator restarts it.
        why = failure.failed() => {
            supervision_failed = Some(why);
            None
        }
    };
    if result.is_none() {
        tracing::info!(grace = %humantime::format_duration(grace), "shutting down: draining in-flight calls");
        health_reporter
            .set_not_serving::<SessionServiceServer<SessionApi>>()
            .await;
        health_reporter
            .set_not_serving::<ConfigServiceServer<ConfigApi>>()
            .await;
        health_reporter
            .set_not_serving::<KeyValueServiceServer<KeyValueApi>>()
            .await;
        health_reporter
            .set_not_serving::<QueueServiceServer<QueueApi>>()
            .await;
        health_reporter
            .set_not_serving::<PubSubServiceServer<PubSubApi>>()
            .await;
        health_reporter
            .set_not_serving::<ReaderServiceServer<ReaderApi>>()
            .await;
        health_reporter
            .set_not_serving::<TransactServiceServer<TransactApi>>()
            .await;
        health_reporter
            .set_not_serving::<CacheServiceServer<CacheApi>>()
            .await;
        let _ = stop_tx.send(true);
        result = match tokio::time::timeout(grace, &mut grpc).await {
            Ok(served) => Some(served),
            Err(_) => {
                tracing::warn!("in-flight calls outlived the shutdown grace; dropping them");
                grpc.abort();
                None
            }
        };
    }
    let _ = stop_tx.send(true);
    if let Some(watch) = tls_watch {
        watch.abort();
        let _ = watch.await;
    }
    let _ = readiness.await;
    if let Some(admin) = admin {
        match tokio::time::timeout(Duration::from_secs(5), admin).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "admin listener failed"),
            Ok(_) => {}
            Err(_) => tracing::warn!("admin listener did not stop in time"),
        }
    }
    gateway.supervisors.failure.stopping();
    let closed = gateway.sessions.close_all().await;
    gateway.pool.stop();
    gateway.kv_caches.stop();
    gateway.claim_checks.stop();
    // The shutdown's session records reach the audit sink before we return.
    let unwritten = gateway.audit.wait_written(Duration::from_secs(5)).await;
    if unwritten > 0 {
        tracing::error!(unwritten, "audit records were not written before shutdown");
    }
    tracing::info!(closed_sessions = closed, "gateway stopped");
    if let Some(why) = supervision_failed {
        return Err(ServeError::Supervision(why));
    }
    match result {
        Some(Ok(Ok(()))) | None => Ok(()),
        Some(Ok(Err(e))) => Err(ServeError::Transport(e)),
        Some(Err(join)) => Err(ServeError::Config(format!(
            "grpc server task failed: {join}"
        ))),
    }
}

/// The gRPC health service name that reports a namespace's readiness.
pub fn namespace_health_name(namespace: &str) -> String {
    format!("prism.namespace.{namespace}")
}

/// Keeps `prism.namespace.<name>` health statuses in step with the backends
/// each namespace uses, until `stop` resolves.
async fn report_readiness(
    gateway: Arc<Gateway>,
    reporter: tonic_health::server::HealthReporter,
    stop: impl Future<Output = ()>,
) {
    use tonic_health::ServingStatus;
    let mut receivers: Vec<_> = gateway
        .backends
        .iter()
        .filter(|b| b.client.is_some())
        .map(|b| b.health.subscribe())
        .collect();
    tokio::pin!(stop);
    loop {
        for namespace in gateway.config.load_full().namespaces.keys() {
            let status = if gateway.namespace_ready(namespace) {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter
                .set_service_status(namespace_health_name(namespace), status)
                .await;
        }
        if receivers.is_empty() {
            stop.await;
            return;
        }
        let changed =
            futures::future::select_all(receivers.iter_mut().map(|r| Box::pin(r.changed())));
        tokio::select! {
            (result, _, _) = changed => {
                if result.is_err() {
                    return;
                }
            }
            _ = &mut stop => return,
        }
    }
}
