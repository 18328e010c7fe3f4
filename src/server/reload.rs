//! Config reload without a restart (SIGHUP, or `POST /admin/reload` on the
//! admin listener): the file the gateway started from is read and
//! validated again; what can change while sessions run is put in use, what
//! cannot is reported and left as it runs, and a file that does not load
//! or validate is refused with the running config untouched.
//!
//! Live: named configs, API keys, JWT issuers, mTLS identities and a
//! namespace's `rules` (sessions opened from then on; open ones keep what
//! they were opened with), a namespace's allowed patterns and backends,
//! session limits and Queue/PubSub/Transact policy (every session, from
//! its next call), outbox relays (added, removed, changed), the gateway's
//! `limits` (but `max_message_bytes`), the admin token, the log level, and
//! the TLS files. Fixed until a restart: listen addresses and the rest of
//! `server`, backends, the set of namespaces, a namespace's collections,
//! Transact tables and `session.max_restarts`, the session store and the
//! audit sink.
//!
//! A reload is planned and built in full before anything changes (the
//! file and the next config validated, TLS and JWT key files included; the
//! credentials built, the named configs resolved, the relays built, the
//! log filter parsed); only then is each cell replaced, the credentials
//! last. The log filter and the TLS material follow; should either fail
//! then, it is reported as not applied and the rest stays. Reloads take
//! turns.

use std::sync::Arc;

use crate::{
    actors::Supervisors,
    admin::ReloadReport,
    auth::{Authenticator, Credentials},
    backends::Backends,
    config::{resolve::NamedConfigs, Env, GatewayConfig, LiveConfig, NamespaceSpec, Source},
    session::SessionRegistry,
};

use super::tls::{TlsMaterial, TlsReload};

/// Where the running config came from, so a reload reads the same place,
/// and the command-line addresses that override it.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The file, the embedded default (the environment read again), or
    /// an inline config (nothing to reread: reload is refused).
    pub source: Source,
    /// `--listen` / `--admin-listen`, which outrank the file.
    pub listen: Option<std::net::SocketAddr>,
    pub admin_listen: Option<std::net::SocketAddr>,
}

impl Origin {
    /// A config given as a value: there is no file to reread.
    pub fn inline() -> Origin {
        Origin {
            source: Source::Inline,
            listen: None,
            admin_listen: None,
        }
    }

    /// Reads and validates the config again (blocking: files).
    fn read(&self, env: &dyn Env) -> Result<GatewayConfig, String> {
        let path =
            match &self.source {
                Source::File(path) => Some(path.as_path()),
                Source::Embedded => None,
                Source::Inline => return Err(
                    "this gateway was started from an inline config; there is no file to reload"
                        .into(),
                ),
            };
        let mut config = GatewayConfig::load_validated(path, env).map_err(|e| e.to_string())?;
        if let Some(addr) = self.listen {
            config.server.listen = addr;
        }
        if let Some(addr) = self.admin_listen {
            config.server.admin_listen = addr;
        }
        Ok(config)
    }
}

impl crate::admin::Reload for Reloader {
    fn reload(&self) -> futures::future::BoxFuture<'_, Result<ReloadReport, String>> {
        Box::pin(Reloader::reload(self))
    }
}

/// The cells a reload replaces, and where the config came from.
pub struct Reloader {
    pub(super) origin: Origin,
    pub(super) config: LiveConfig,
    pub(super) named: Arc<NamedConfigs>,
    pub(super) auth: Arc<Authenticator>,
    pub(super) registry: Arc<SessionRegistry>,
    pub(super) supervisors: Arc<Supervisors>,
    pub(super) backends: Arc<Backends>,
    pub(super) tls: Option<Arc<TlsMaterial>>,
    pub(super) kv_caches: Arc<crate::services::kv_cache::KvCaches>,
    /// Held through a reload: reloads take turns.
    pub(super) turn: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// Rereads the config and applies what can change live; on error
    /// nothing changed.
    pub async fn reload(&self) -> Result<ReloadReport, String> {
        let _turn = self.turn.lock().await;
        let running = self.config.load_full();
        let origin = self.origin.clone();
        let backends = self.backends.clone();
        let clock = *self.registry.clock();
        // Everything that can fail, before anything changes, off the async
        // workers (files are read: the config, JWT keys, TLS files).
        let prepared = tokio::task::spawn_blocking(move || {
            let file = origin.read(&crate::config::ProcessEnv)?;
            let (next, report) = plan(&running, file);
            // What runs on must still agree with what changed (a config
            // naming a backend the file adds, say); this also loads the TLS
            // files.
            let checked = crate::config::validate::validate(&next);
            if checked.has_failures() {
                return Err(format!(
                    "the reloadable part of the new config does not fit the running one:\n{}",
                    checked.failures_text()
                ));
            }
            Ok(Prepared {
                credentials: Credentials::new(&next)?,
                named: NamedConfigs::resolve(&next).map_err(|e| e.message)?,
                relays: crate::actors::relay::configured(&next, &backends, clock)?,
                filter: (next.server.log_level != running.server.log_level)
                    .then(|| crate::telemetry::log_filter(next.server.log_level.as_deref()))
                    .transpose()?,
                next,
                report,
            })
        })
        .await
        .map_err(|e| format!("reading the config: {e}"))??;
        let Prepared {
            next,
            mut report,
            credentials,
            named,
            relays,
            filter,
        } = prepared;
        report.source = self.origin.source.to_string();

        // Commit: what sessions are opened against first, the credentials
        // that let new ones in last, so no CreateSession pairs a new key
        // with old rules.
        // Caches first: a session opened on a new config finds its cache.
        self.kv_caches.sync(&named);
        self.named.replace(named);
        for (name, spec) in &next.namespaces {
            if let Ok(namespace) = self.registry.namespace(name) {
                namespace.replace_spec(spec.clone());
            }
        }
        let relays = self.supervisors.apply_relays(relays).await;
        for id in &relays.stopped {
            report.applied.push(format!("{id} (stopped)"));
        }
        for id in &relays.started {
            report.applied.push(format!("{id} (started)"));
        }
        let tls = next.server.tls.clone();
        self.config.store(Arc::new(next));
        self.auth.replace(credentials);

        // What is outside the config proper; a failure here is logged and
        // reported, the rest stays applied.
        if let Some(filter) = filter {
            match crate::telemetry::replace_log_filter(filter) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!("no subscriber of this process to give the new log level")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the new log level was not applied");
                    report.not_applied.push(format!("server.log_level: {e}"));
                }
            }
        }
        if let (Some(material), Some(spec)) = (&self.tls, &tls) {
            match material.reload(Some(spec)).await {
                Ok(TlsReload::Replaced) => {
                    report.applied.push("server.tls (certificate files)".into())
                }
                Ok(TlsReload::Unchanged) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the tls files do not load; the running material stays");
                    report.not_applied.push(format!("server.tls: {e}"));
                }
            }
        }
        tracing::info!(
            applied = ?report.applied,
            restart_required = ?report.restart_required,
            not_applied = ?report.not_applied,
            "config reloaded"
        );
        Ok(report)
    }
}

/// A reload, planned and built, not yet applied.
struct Prepared {
    next: GatewayConfig,
    report: ReloadReport,
    credentials: Credentials,
    named: crate::config::resolve::ByName,
    relays: Vec<Arc<crate::actors::relay::RelayShared>>,
    filter: Option<tracing_subscriber::EnvFilter>,
}

/// The config to run with after a reload from `file`: `file`'s live parts,
/// `running`'s for the rest; and what changed on each side.
fn plan(running: &GatewayConfig, file: GatewayConfig) -> (GatewayConfig, ReloadReport) {
    // Every section is classified below: a new one fails to compile here
    // until it is.
    let GatewayConfig {
        server: _,
        backends: _,
        namespaces: _,
        configs: _,
        auth: _,
        limits: _,
        audit: _,
        sessions: _,
        object_stores: _,
    } = running;
    let mut report = ReloadReport::default();
    let mut next = file;

    // `server`: the admin token, the log level and the TLS file paths are
    // live; everything else waits for a restart.
    let mut server = running.server.clone();
    for (what, changed) in [
        (
            "server.admin_token",
            next.server.admin_token != server.admin_token,
        ),
        (
            "server.log_level",
            next.server.log_level != server.log_level,
        ),
    ] {
        if changed {
            report.applied.push(what.into());
        }
    }
    server.admin_token = next.server.admin_token.clone();
    server.log_level = next.server.log_level.clone();
    match (&mut server.tls, &next.server.tls) {
        (Some(running_tls), Some(file_tls)) => {
            let interval = running_tls.watch_interval;
            if file_tls.watch_interval != interval {
                report
                    .restart_required
                    .push("server.tls.watch_interval".into());
            }
            *running_tls = file_tls.clone();
            running_tls.watch_interval = interval;
        }
        (None, None) => {}
        _ => report
            .restart_required
            .push("server.tls (turning TLS on or off)".into()),
    }
    let mut compared = next.server.clone();
    compared.admin_token = server.admin_token.clone();
    compared.log_level = server.log_level.clone();
    compared.tls = server.tls.clone();
    if compared != server {
        report.restart_required.push(format!(
            "server ({})",
            server_differences(&server, &compared).join(", ")
        ));
    }
    next.server = server;

    // Whole sections fixed at start.
    macro_rules! fixed {
        ($($field:ident),*) => {$(
            if next.$field != running.$field {
                report.restart_required.push(stringify!($field).into());
                next.$field = running.$field.clone();
            }
        )*};
    }
    fixed!(backends, sessions, audit, object_stores);

    if next.limits.max_message_bytes != running.limits.max_message_bytes {
        report
            .restart_required
            .push("limits.max_message_bytes".into());
        next.limits.max_message_bytes = running.limits.max_message_bytes;
    }
    if next.limits != running.limits {
        report.applied.push("limits".into());
    }
    if next.configs != running.configs {
        report.applied.push("configs".into());
    }
    if next.auth != running.auth {
        report.applied.push("auth".into());
    }

    // Namespaces: the set is fixed; each one's rules are live but for what
    // was built from them at start.
    let mut namespaces = running.namespaces.clone();
    for name in next.namespaces.keys() {
        if !running.namespaces.contains_key(name) {
            report
                .restart_required
                .push(format!("namespaces.{name} (a new namespace)"));
        }
    }
    for (name, running_spec) in &running.namespaces {
        let Some(file_spec) = next.namespaces.get(name) else {
            report
                .restart_required
                .push(format!("namespaces.{name} (removing a namespace)"));
            continue;
        };
        let (spec, fixed) = namespace_plan(running_spec, file_spec);
        for field in fixed {
            report
                .restart_required
                .push(format!("namespaces.{name}.{field}"));
        }
        if spec != *running_spec {
            report.applied.push(format!("namespaces.{name}"));
        }
        namespaces.insert(name.clone(), spec);
    }
    next.namespaces = namespaces;
    (next, report)
}

/// A namespace's next rules: the file's, but for what the gateway built
/// from them at start (schemas, tables, the supervisor's restart budget),
/// which keep their running value; those are named.
fn namespace_plan(running: &NamespaceSpec, file: &NamespaceSpec) -> (NamespaceSpec, Vec<String>) {
    // Live unless listed below: read through the namespace's cell or at
    // CreateSession. A new field fails to compile here until it is
    // classified.
    let NamespaceSpec {
        description: _,
        allowed_backends: _,
        allowed_patterns: _,
        session: _,
        api_keys: _,
        queue: _,
        pubsub: _,
        collections: _,
        transact: _,
        relays: _,
        rules: _,
        // Read per call and by the sweeper's next pass (the stores it
        // names are fixed at start).
        claim_check: _,
    } = running;
    let mut next = file.clone();
    let mut fixed = Vec::new();
    if next.collections != running.collections {
        fixed.push("collections".to_string());
        next.collections = running.collections.clone();
    }
    if next.transact.tables != running.transact.tables {
        fixed.push("transact.tables".to_string());
        next.transact.tables = running.transact.tables.clone();
    }
    if next.session.max_restarts != running.session.max_restarts {
        fixed.push("session.max_restarts".to_string());
        next.session.max_restarts = running.session.max_restarts;
    }
    (next, fixed)
}

/// The `server` fields that differ (for the report).
fn server_differences(
    a: &crate::config::ServerConfig,
    b: &crate::config::ServerConfig,
) -> Vec<String> {
    // The live fields are compared equal by the caller; every other one is
    // listed below (a new field fails to compile here until it is).
    let crate::config::ServerConfig {
        listen: _,
        admin_listen: _,
        shutdown_grace: _,
        actor_threads: _,
        supervision_interval: _,
        max_restarts: _,
        tls: _,
        cursor_secret: _,
        admin_token: _,
        otlp_endpoint: _,
        connections: _,
        log_level: _,
    } = a;
    let mut out = Vec::new();
    macro_rules! field {
        ($($f:ident),*) => {$(
            if a.$f != b.$f {
                out.push(stringify!($f).to_string());
            }
        )*};
    }
    field!(
        listen,
        admin_listen,
        shutdown_grace,
        actor_threads,
        supervision_interval,
        max_restarts,
        cursor_secret,
        otlp_endpoint,
        connections
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
server:
  listen: 127.0.0.1:8980
  admin_token: one
backends:
  mem: { type: memory }
namespaces:
  default:
    allowed_backends: [mem]
    allowed_patterns: [keyvalue]
    session: { max_sessions: 10 }
configs:
  kv: { namespace: default, pattern: keyvalue, backend: mem }
"#;

    fn parse(yaml: &str) -> GatewayConfig {
        GatewayConfig::from_yaml(yaml, &Source::Inline, &[("_", "_"); 0]).unwrap()
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let (next, report) = plan(&parse(BASE), parse(BASE));
        assert_eq!(next, parse(BASE));
        assert!(report.applied.is_empty() && report.restart_required.is_empty());
    }

    #[test]
    fn live_parts_apply_and_fixed_parts_are_reported_and_kept() {
        let file = BASE
            .replace("127.0.0.1:8980", "127.0.0.1:9999")
            .replace("admin_token: one", "admin_token: two")
            .replace("max_sessions: 10", "max_sessions: 20")
            .replace(
                "mem: { type: memory }",
                "mem: { type: memory }\n  other: { type: memory }",
            );
        let running = parse(BASE);
        let (next, report) = plan(&running, parse(&file));
        assert_eq!(next.server.listen, running.server.listen);
        assert_eq!(next.server.admin_token.as_deref(), Some("two"));
        assert_eq!(next.namespaces["default"].session.max_sessions, 20);
        assert_eq!(next.backends, running.backends);
        assert_eq!(
            report.applied,
            vec!["server.admin_token", "namespaces.default"]
        );
        assert_eq!(report.restart_required, vec!["server (listen)", "backends"]);
    }

    #[test]
    fn what_was_built_at_start_keeps_its_running_value() {
        let tls = |every: &str| {
            format!(
                "  tls: {{ cert_file: a.pem, key_file: a.key, watch_interval: {every} }}\n  admin_token: one"
            )
        };
        let running = parse(&BASE.replace("  admin_token: one", &tls("10s")));
        let file = BASE
            .replace("  admin_token: one", &tls("1s").replace("a.pem", "b.pem"))
            .replace(
                "    session: { max_sessions: 10 }",
                "    session: { max_sessions: 10, max_restarts: 9 }\n    collections: { c: { backend: mem, table: t } }",
            );
        let (next, report) = plan(&running, parse(&file));
        let tls = next.server.tls.unwrap();
        assert_eq!(tls.cert_file.to_str(), Some("b.pem"), "paths are live");
        assert_eq!(tls.watch_interval, std::time::Duration::from_secs(10));
        assert_eq!(next.namespaces["default"], running.namespaces["default"]);
        assert_eq!(
            report.restart_required,
            vec![
                "server.tls.watch_interval",
                "namespaces.default.collections",
                "namespaces.default.session.max_restarts"
            ]
        );
        assert!(report.applied.is_empty(), "{:?}", report.applied);

        let (_, report) = plan(&running, parse(BASE));
        assert_eq!(
            report.restart_required,
            vec!["server.tls (turning TLS on or off)"]
        );
    }
}
