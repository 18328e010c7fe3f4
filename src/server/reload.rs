//! Config reload without a restart (SIGHUP, or `POST /admin/reload` on the
//! admin listener): the file the gateway started from is read and
//! validated again; what can change while sessions run is put in use, what
//! cannot is reported and left as it runs, and a file that does not load
//! or validate is refused with the running config untouched.
//!
//! Live: named configs (sessions opened from then on), API keys, JWT
//! issuers and mTLS identities (new sessions; open ones run on), each
//! namespace's rules and session limits (every session, from its next
//! call), the gateway's `limits` (but `max_message_bytes`), the admin
//! token, the log level, and the TLS files. Fixed until a restart: listen
//! addresses and the rest of `server`, backends, the set of namespaces, a
//! namespace's collections, Transact tables, relays and
//! `session.max_restarts`, the session store and the audit sink.
//!
//! A reload is planned in full before anything changes (the credentials
//! built, the named configs resolved, the log filter parsed, the TLS files
//! loaded); only then is each cell replaced. Reloads take turns.

use std::sync::Arc;

use serde::Serialize;

use crate::{
    auth::{Authenticator, Credentials},
    config::{
        resolve::NamedConfigs, Env, GatewayConfig, LiveConfig, LiveLimits, NamespaceSpec, Source,
    },
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
    fn reload(&self) -> futures::future::BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move {
            let report = Reloader::reload(self).await?;
            serde_json::to_value(report).map_err(|e| e.to_string())
        })
    }
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReloadReport {
    /// The config's source.
    pub source: String,
    /// What changed and is in use now (`configs`, `namespaces.orders`, ...).
    pub applied: Vec<String>,
    /// What changed in the file but keeps its running value until a
    /// restart (`server.listen`, `backends`, ...).
    pub restart_required: Vec<String>,
}

/// The cells a reload replaces, and where the config came from.
pub struct Reloader {
    pub(super) origin: Origin,
    pub(super) config: LiveConfig,
    pub(super) limits: LiveLimits,
    pub(super) named: Arc<NamedConfigs>,
    pub(super) auth: Arc<Authenticator>,
    pub(super) registry: Arc<SessionRegistry>,
    pub(super) tls: Option<Arc<TlsMaterial>>,
    pub(super) admin_token: Arc<arc_swap::ArcSwapOption<String>>,
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
        let (next, mut report) = tokio::task::spawn_blocking(move || {
            let file = origin.read(&crate::config::ProcessEnv)?;
            let (next, report) = plan(&running, file);
            // What runs on must still agree with what changed (a config
            // naming a backend the file adds, say).
            let checked = crate::config::validate::validate(&next);
            if checked.has_failures() {
                return Err(format!(
                    "the reloadable part of the new config does not fit the running one:\n{}",
                    checked.failures_text()
                ));
            }
            Ok((next, report))
        })
        .await
        .map_err(|e| format!("reading the config: {e}"))??;
        report.source = self.origin.source.to_string();

        // Everything that can fail, before anything changes.
        let credentials = Credentials::new(&next)?;
        let named = NamedConfigs::resolve(&next).map_err(|e| e.message)?;
        let running = self.config.load_full();
        let filter = (next.server.log_level != running.server.log_level)
            .then(|| crate::telemetry::log_filter(next.server.log_level.as_deref()))
            .transpose()?;
        if let (Some(material), Some(spec)) = (&self.tls, &next.server.tls) {
            if material.reload(Some(spec)).await? == TlsReload::Replaced {
                report.applied.push("server.tls (certificate files)".into());
            }
        }

        // Commit.
        self.auth.replace(credentials);
        self.named.replace(named);
        for (name, spec) in &next.namespaces {
            if let Ok(namespace) = self.registry.namespace(name) {
                namespace.replace_spec(spec.clone());
            }
        }
        self.limits.store(Arc::new(next.limits));
        self.admin_token
            .store(next.server.admin_token.clone().map(Arc::new));
        if let Some(filter) = filter {
            if !crate::telemetry::replace_log_filter(filter)? {
                tracing::debug!("no subscriber of this process to give the new log level");
            }
        }
        self.config.store(Arc::new(next));
        tracing::info!(
            applied = ?report.applied,
            restart_required = ?report.restart_required,
            "config reloaded"
        );
        Ok(report)
    }
}

/// The config to run with after a reload from `file`: `file`'s live parts,
/// `running`'s for the rest; and what changed on each side.
fn plan(running: &GatewayConfig, file: GatewayConfig) -> (GatewayConfig, ReloadReport) {
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
    fixed!(backends, sessions, audit);

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
/// from them at start (schemas, tables, relay actors, the supervisor's
/// restart budget), which keep their running value; those are named.
fn namespace_plan(running: &NamespaceSpec, file: &NamespaceSpec) -> (NamespaceSpec, Vec<String>) {
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
    if next.relays != running.relays {
        fixed.push("relays".to_string());
        next.relays = running.relays.clone();
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
}
