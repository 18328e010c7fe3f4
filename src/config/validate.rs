//! `prism validate`: every check a configuration must pass, as a readable
//! report. Start-up runs the same checks and refuses a config that fails one.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{resolve, BackendSpec, GatewayConfig, JwtAlgorithm, Limits, Pattern};
use crate::backends::BackendKind;

/// Largest stream buffer in bytes (Queue and PubSub): a Queue buffer's
/// permits are counted in `u32`.
pub const MAX_BUFFER_BYTES: usize = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Note,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub outcome: Outcome,
    pub subject: String,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    fn push(&mut self, outcome: Outcome, subject: impl Into<String>, message: impl Into<String>) {
        self.checks.push(Check {
            outcome,
            subject: subject.into(),
            message: message.into(),
        });
    }

    pub(super) fn pass(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.push(Outcome::Pass, subject, message)
    }

    pub(super) fn fail(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.push(Outcome::Fail, subject, message)
    }

    pub fn has_failures(&self) -> bool {
        self.checks.iter().any(|c| c.outcome == Outcome::Fail)
    }

    /// Every check, one line each.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let mark = match c.outcome {
                Outcome::Pass => "ok  ",
                Outcome::Note => "note",
                Outcome::Fail => "FAIL",
            };
            let _ = writeln!(out, "{mark} {}: {}", c.subject, c.message);
        }
        out
    }

    pub fn failures_text(&self) -> String {
        let mut out = String::new();
        for c in self.checks.iter().filter(|c| c.outcome == Outcome::Fail) {
            let _ = writeln!(out, "  {}: {}", c.subject, c.message);
        }
        out
    }
}

pub fn validate(cfg: &GatewayConfig) -> Report {
    let mut r = Report::default();
    for (name, spec) in &cfg.backends {
        check_backend(&mut r, name, spec);
    }
    check_namespaces(&mut r, cfg);
    check_limits(&mut r, &cfg.limits);
    check_connections(&mut r, &cfg.server.connections);
    check_audit(&mut r, &cfg.audit);
    check_sessions(&mut r, cfg);
    super::claim_check::check(&mut r, cfg);
    // What the KeyValue caches and the memory backends' Cache stores may
    // hold in the gateway's memory, all together.
    let mut cache_bytes: usize = cfg
        .backends
        .iter()
        .filter(|(name, b)| {
            b.kind == BackendKind::Memory
                && cfg.configs.values().any(|c| {
                    &c.backend == *name
                        && (c.pattern == Pattern::Cache || c.also.contains(&Pattern::Cache))
                })
        })
        .map(|(_, b)| b.cache.unwrap_or_default().max_bytes)
        .sum();
    for (name, spec) in &cfg.configs {
        let subject = format!("config {name}");
        match resolve::resolve_named_spec(cfg, name, spec) {
            Ok(resolved) => {
                let patterns: Vec<&str> = resolved.patterns.iter().map(|p| p.name()).collect();
                let cache = match &resolved.kv_cache {
                    None => String::new(),
                    Some(c) => {
                        cache_bytes += c.max_bytes;
                        format!(
                            ", with a {} cache in the gateway (ttl {}, at most {} entries and {} \
                             bytes)",
                            c.strategy.name(),
                            humantime::format_duration(c.ttl),
                            c.max_entries,
                            c.max_bytes
                        )
                    }
                };
                r.pass(
                    &subject,
                    format!(
                        "namespace {}, {} on backend {} ({}){cache}",
                        resolved.namespace,
                        patterns.join("+"),
                        resolved.backend_name,
                        resolved.backend_kind
                    ),
                );
                for p in resolved.patterns.iter().filter(|p| !p.served()) {
                    let missing: Vec<&str> = p
                        .base_interfaces()
                        .iter()
                        .filter(|i| !resolved.backend_kind.has(**i))
                        .map(|i| i.name())
                        .collect();
                    if !missing.is_empty() {
                        r.push(
                            Outcome::Note,
                            &subject,
                            format!(
                                "the {p} API is not served on {} backends in this build yet \
                                 (no {}); its calls answer UNIMPLEMENTED until it is",
                                resolved.backend_kind,
                                missing.join(", ")
                            ),
                        );
                    }
                }
            }
            Err(e) => r.fail(&subject, e.message),
        }
    }
    if cache_bytes > 0 {
        r.push(
            Outcome::Note,
            "caches",
            format!(
                "the KeyValue caches and memory Cache stores may hold up to {cache_bytes} bytes \
                 of the gateway's memory together (keys, values and 64 bytes per entry)"
            ),
        );
    }
    check_auth(&mut r, cfg);
    if let Err(e) = crate::telemetry::log_filter(cfg.server.log_level.as_deref()) {
        r.fail("server.log_level", e);
    }
    if let Some(tls) = &cfg.server.tls {
        for (what, path) in [
            ("cert_file", Some(&tls.cert_file)),
            ("key_file", Some(&tls.key_file)),
            ("client_ca_file", tls.client_ca_file.as_ref()),
        ] {
            if let Some(path) = path {
                if path.is_file() {
                    r.pass("server.tls", format!("{what} {} exists", path.display()));
                } else {
                    r.fail(
                        "server.tls",
                        format!("{what} {} does not exist", path.display()),
                    );
                }
            }
        }
        match super::tls::check(tls) {
            Ok(()) => r.pass("server.tls", "the certificate, key and client CA load"),
            Err(e) => r.fail("server.tls", e),
        }
    }
    r
}

/// The smallest byte bound a cache may have (one small entry and then
/// some): the same for the memory backend's store as for a KeyValue cache.
const MIN_CACHE_BYTES: usize = super::resolve::KvCacheSettings::MIN_BYTES;

fn check_backend(r: &mut Report, name: &str, spec: &BackendSpec) {
    let subject = format!("backend {name}");
    let scheme_ok = |schemes: &[&str]| {
        spec.url
            .as_deref()
            .is_some_and(|u| schemes.iter().any(|s| u.starts_with(s)))
    };
    let problem = match spec.kind {
        BackendKind::Memory => None,
        BackendKind::Sqlite => (spec.path.is_none() && spec.url.is_none()).then_some(
            "sqlite needs `path` (a file, created when missing) or `url` (sqlite://...)",
        ),
        BackendKind::Postgres => (!scheme_ok(&["postgres://", "postgresql://"]))
            .then_some("postgres needs `url: postgres://user@host:port/db` (or DATABASE_URL)"),
        BackendKind::Redis => (!scheme_ok(&["redis://", "rediss://"]))
            .then_some("redis needs `url: redis://host:port` (or REDIS_URL)"),
        BackendKind::Nats => (!scheme_ok(&["nats://", "tls://"]))
            .then_some("nats needs `url: nats://host:port` (or NATS_URL)"),
        BackendKind::Kafka => (spec.url.as_deref().is_none_or(|u| u.trim().is_empty()))
            .then_some("kafka needs `url: host:port[,host:port]` (or KAFKA_BROKERS)"),
    };
    let p = &spec.pool;
    let pool_problem = if p.max_connections == 0 {
        Some("pool.max_connections must be at least 1")
    } else if p.connect_timeout.is_zero() || p.health_interval.is_zero() {
        Some("pool.connect_timeout and pool.health_interval must be positive")
    } else if p.backoff_initial.is_zero() || p.backoff_initial > p.backoff_max {
        Some("pool.backoff_initial must be positive and at most pool.backoff_max")
    } else if p.sweep_interval.is_zero() {
        Some("pool.sweep_interval must be positive")
    } else if p.statement_lanes > crate::backends::sql_lanes::MAX_LANES {
        Some("pool.statement_lanes must be at most 64")
    } else if spec.cache.is_some() && spec.kind != BackendKind::Memory {
        Some(
            "`cache` bounds only a memory backend's Cache entries; a redis backend is bounded \
             by the server's maxmemory",
        )
    } else if spec
        .cache
        .is_some_and(|c| c.max_entries == 0 || c.max_bytes < MIN_CACHE_BYTES)
    {
        Some("cache.max_entries must be at least 1 and cache.max_bytes at least 4096")
    } else if p
        .max_transactions
        .is_some_and(|t| t == 0 || (t >= p.max_connections && p.max_connections > 1))
    {
        Some(
            "pool.max_transactions must be at least 1 and below pool.max_connections, so \
             open transactions never take every connection",
        )
    } else {
        None
    };
    match problem.or(pool_problem) {
        Some(msg) => r.fail(subject, msg),
        None => {
            let interfaces = spec.kind.implements().len();
            r.pass(
                subject,
                format!(
                    "{} backend, {interfaces} interfaces in this build",
                    spec.kind
                ),
            )
        }
    }
}

fn check_namespaces(r: &mut Report, cfg: &GatewayConfig) {
    if cfg.namespaces.is_empty() {
        r.fail(
            "namespaces",
            "no namespace is configured; add at least one under `namespaces`",
        );
    }
    let mut key_owner: BTreeMap<String, String> = BTreeMap::new();
    for (name, ns) in &cfg.namespaces {
        let subject = format!("namespace {name}");
        let mut ok = true;
        if !valid_namespace_name(name) {
            ok = false;
            r.fail(
                &subject,
                "namespace names are 1 to 64 of A-Z a-z 0-9 - _ . (they scope stored keys)",
            );
        }
        for b in &ns.allowed_backends {
            if !cfg.backends.contains_key(b) {
                ok = false;
                r.fail(
                    &subject,
                    format!("allowed_backends names `{b}`, which is not under `backends`"),
                );
            }
        }
        for (i, rule) in ns.rules.iter().enumerate() {
            // A rule naming a backend the namespace cannot use would
            // silently cover nothing.
            for b in rule
                .backends
                .iter()
                .filter(|b| !ns.allowed_backends.contains(b))
            {
                ok = false;
                r.fail(
                    &subject,
                    format!("rules[{i}] names backend `{b}`, which is not in allowed_backends"),
                );
            }
            let bad_rate = rule
                .rate_limit
                .as_ref()
                .is_some_and(|l| l.requests_per_second < 0 || l.burst < 0);
            let bad_cap = rule.max_attempts == Some(0)
                || rule.max_partitions.is_some_and(|p| p < 1)
                || rule.max_visibility_timeout.is_some_and(|d| d.is_zero());
            if bad_rate || bad_cap {
                ok = false;
                r.fail(
                    &subject,
                    format!(
                        "rules[{i}]: rate_limit values must not be negative and option caps must be positive"
                    ),
                );
            }
        }
        if ns.allowed_patterns.is_empty() {
            ok = false;
            r.fail(
                &subject,
                "allowed_patterns is empty; list the patterns sessions may use",
            );
        }
        let s = &ns.session;
        if s.idle_timeout.is_zero() || s.max_lifetime < s.idle_timeout {
            ok = false;
            r.fail(
                &subject,
                "session.idle_timeout must be positive and no longer than session.max_lifetime",
            );
        }
        if s.expiring_within >= s.idle_timeout {
            ok = false;
            r.fail(
                &subject,
                "session.expiring_within must be shorter than session.idle_timeout",
            );
        }
        if s.max_sessions == 0 {
            ok = false;
            r.fail(&subject, "session.max_sessions must be at least 1");
        }
        if s.max_sessions_per_principal == 0 {
            ok = false;
            r.fail(
                &subject,
                "session.max_sessions_per_principal must be at least 1",
            );
        }
        if s.max_streams_per_session < 1 {
            ok = false;
            r.fail(
                &subject,
                "session.max_streams_per_session must be at least 1",
            );
        }
        if s.max_client_id_bytes == 0 {
            ok = false;
            r.fail(&subject, "session.max_client_id_bytes must be at least 1");
        }
        for (name, c) in &ns.collections {
            let what = format!("collection `{name}`");
            if !ns.allowed_backends.contains(&c.backend) {
                ok = false;
                r.fail(
                    &subject,
                    format!("{what}: backend `{}` is not in allowed_backends", c.backend),
                );
            } else if cfg
                .backends
                .get(&c.backend)
                .is_some_and(|b| !b.kind.has(crate::backends::Interface::ReaderPaged))
            {
                ok = false;
                r.fail(
                    &subject,
                    format!(
                        "{what}: backend `{}` does not implement reader_paged",
                        c.backend
                    ),
                );
            }
            if c.table.is_empty() || c.id.is_empty() {
                ok = false;
                r.fail(
                    &subject,
                    format!("{what}: `table` and `id` must not be empty"),
                );
            }
            if c.max_page_size == 0
                || c.default_page_size == 0
                || c.default_page_size > c.max_page_size
            {
                ok = false;
                r.fail(
                    &subject,
                    format!("{what}: need 1 <= default_page_size <= max_page_size"),
                );
            }
            if c.max_page_bytes < 1024 {
                ok = false;
                r.fail(
                    &subject,
                    format!("{what}: max_page_bytes must be at least 1024"),
                );
            }
        }
        ok &= check_transact(cfg, ns, &subject, r);
        if !(1..=1_000_000).contains(&ns.pubsub.buffer) {
            ok = false;
            r.fail(&subject, "pubsub.buffer must be 1 to 1000000 events");
        }
        if !(1024..=MAX_BUFFER_BYTES).contains(&ns.pubsub.buffer_bytes) {
            ok = false;
            r.fail(
                &subject,
                format!("pubsub.buffer_bytes must be 1024 to {MAX_BUFFER_BYTES} (1 GiB)"),
            );
        }
        if !(1..=65_536).contains(&ns.queue.buffer) {
            ok = false;
            r.fail(&subject, "queue.buffer must be 1 to 65536 messages");
        }
        if !(1024..=MAX_BUFFER_BYTES).contains(&ns.queue.buffer_bytes) {
            ok = false;
            r.fail(
                &subject,
                format!("queue.buffer_bytes must be 1024 to {MAX_BUFFER_BYTES} (1 GiB)"),
            );
        }
        for key in &ns.api_keys {
            let valid = key.sha256.len() == 64 && key.sha256.chars().all(|c| c.is_ascii_hexdigit());
            if !valid {
                ok = false;
                r.fail(
                    &subject,
                    format!(
                        "api key `{}`: sha256 must be 64 hex digits (printf %s KEY | sha256sum)",
                        key.name
                    ),
                );
            } else if let Some(other) =
                key_owner.insert(key.sha256.to_ascii_lowercase(), name.clone())
            {
                ok = false;
                r.fail(
                    &subject,
                    format!(
                        "api key `{}` is also a key of namespace {other}; keys must be unique",
                        key.name
                    ),
                );
            }
        }
        if ok {
            r.pass(
                &subject,
                format!(
                    "{} api keys, idle timeout {}, max lifetime {}",
                    ns.api_keys.len(),
                    humantime::format_duration(s.idle_timeout),
                    humantime::format_duration(s.max_lifetime)
                ),
            );
        }
    }
}

/// Namespace names are 1 to 64 of A-Z a-z 0-9 - _ . (they scope stored
/// keys and broker names).
pub fn valid_namespace_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn check_connections(r: &mut Report, c: &super::ConnectionLimits) {
    if !(1..=1_000_000).contains(&c.max_connections) {
        r.fail("server.connections", "max_connections must be 1 to 1000000");
    }
    if c.max_concurrent_streams == 0
        || c.max_header_list_bytes < 1024
        || c.keepalive_interval.is_zero()
        || c.keepalive_timeout.is_zero()
        || c.handshake_timeout.is_zero()
        || c.max_age.is_some_and(|a| a.is_zero())
    {
        r.fail(
            "server.connections",
            "max_concurrent_streams must be at least 1, max_header_list_bytes at least 1024, \
             and keepalive_interval, keepalive_timeout, handshake_timeout and max_age positive",
        );
    }
}

fn check_limits(r: &mut Report, limits: &Limits) {
    let problem = if limits.max_value_bytes == 0 || limits.max_key_bytes == 0 {
        Some("limits.max_value_bytes and limits.max_key_bytes must be positive".to_string())
    } else if limits.max_batch_ops == 0 {
        Some("limits.max_batch_ops must be at least 1".to_string())
    } else if limits.max_message_bytes < limits.max_value_bytes + 64 * 1024 {
        Some(format!(
            "limits.max_message_bytes ({}) must exceed limits.max_value_bytes ({}) by at least \
             64 KiB, or a value at the limit cannot be sent",
            limits.max_message_bytes, limits.max_value_bytes
        ))
    } else if limits.idempotency_window.is_zero() {
        Some("limits.idempotency_window must be positive".to_string())
    } else if limits.transaction_begin_timeout.is_zero() {
        Some("limits.transaction_begin_timeout must be positive".to_string())
    } else {
        None
    };
    match problem {
        Some(msg) => r.fail("limits", msg),
        None => r.pass(
            "limits",
            format!(
                "values up to {} bytes, keys up to {} bytes, {} ops per batch",
                limits.max_value_bytes, limits.max_key_bytes, limits.max_batch_ops
            ),
        ),
    }
}

fn check_auth(r: &mut Report, cfg: &GatewayConfig) {
    for issuer in &cfg.auth.jwt {
        let subject = format!("jwt issuer {}", issuer.issuer);
        match issuer.decoding_key() {
            Ok(_) => r.pass(
                subject,
                format!("{:?}, audience {}", issuer.algorithm, issuer.audience),
            ),
            Err(e) => r.fail(subject, e),
        }
        for ns in issuer
            .namespaces
            .iter()
            .filter(|ns| !cfg.namespaces.contains_key(*ns))
        {
            r.fail(
                format!("jwt issuer {}", issuer.issuer),
                format!("namespaces names `{ns}`, which is not configured"),
            );
        }
        if issuer.algorithm == JwtAlgorithm::HS256
            && issuer.secret.as_ref().is_some_and(|s| s.len() < 32)
        {
            r.push(
                Outcome::Note,
                format!("jwt issuer {}", issuer.issuer),
                "HS256 secret is shorter than 32 bytes",
            );
        }
    }
    if let Some(mtls) = &cfg.auth.mtls {
        if cfg
            .server
            .tls
            .as_ref()
            .and_then(|t| t.client_ca_file.as_ref())
            .is_none()
        {
            r.fail(
                "auth.mtls",
                "mTLS identities need server.tls.client_ca_file to verify client certificates",
            );
        }
        for (cn, id) in &mtls.identities {
            if cfg.namespaces.contains_key(&id.namespace) {
                r.pass(
                    format!("mtls identity {cn}"),
                    format!("namespace {}", id.namespace),
                );
            } else {
                r.fail(
                    format!("mtls identity {cn}"),
                    format!("namespace `{}` is not configured", id.namespace),
                );
            }
        }
    }
}

/// The session store: a shared one needs its URL, a flush interval well
/// inside every idle timeout; and with one, what each instance keeps to
/// itself is named.
fn check_sessions(r: &mut Report, cfg: &GatewayConfig) {
    use super::sessions::StoreKind;
    let sessions = &cfg.sessions;
    let subject = "sessions";
    let url = sessions.url.as_deref().unwrap_or("");
    match sessions.store {
        StoreKind::InProcess => {
            if sessions.url.is_some() {
                r.push(
                    Outcome::Note,
                    subject,
                    "`url` is ignored with `store: in_process`",
                );
            }
            return;
        }
        StoreKind::Redis if !(url.starts_with("redis://") || url.starts_with("rediss://")) => {
            r.fail(subject, "`store: redis` needs `url: redis://host:port`");
        }
        StoreKind::Postgres
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) =>
        {
            r.fail(
                subject,
                "`store: postgres` needs `url: postgres://user@host:port/db`",
            );
        }
        kind => r.pass(
            subject,
            format!("sessions are shared by every instance through {kind:?} (a cluster)"),
        ),
    }
    let flush = sessions.flush_interval;
    if flush < std::time::Duration::from_millis(50) || flush > std::time::Duration::from_secs(60) {
        r.fail(subject, "`flush_interval` must be between 50ms and 60s");
    }
    if sessions.timeout.is_zero() {
        r.fail(subject, "`timeout` must be more than zero");
    }
    for (name, ns) in &cfg.namespaces {
        if ns.session.idle_timeout <= flush * 2 {
            r.fail(
                format!("namespace {name}"),
                format!(
                    "session.idle_timeout ({}) must exceed twice sessions.flush_interval ({}): \
                     activity reaches the shared store once per flush interval",
                    humantime::format_duration(ns.session.idle_timeout),
                    humantime::format_duration(flush)
                ),
            );
        }
    }
    for (name, spec) in &cfg.backends {
        let what = match spec.kind {
            BackendKind::Memory => "keeps its data in each instance's memory",
            BackendKind::Sqlite => "is a file on each instance's disk",
            _ => continue,
        };
        r.push(
            Outcome::Note,
            format!("backend {name}"),
            format!(
                "{what}: with a shared session store, sessions move between instances but \
                 this backend's data does not (each instance has its own; a Queue message \
                 delivered by one instance can only be acknowledged there). Use Postgres, \
                 Redis, NATS or Kafka for data a cluster shares"
            ),
        );
    }
}

/// The audit sink and its PII fields.
fn check_audit(r: &mut Report, audit: &crate::audit::AuditConfig) {
    for f in &audit.pii_fields {
        if !crate::audit::MASKABLE.contains(&f.as_str()) {
            r.fail(
                "audit",
                format!(
                    "pii_fields names `{f}`; maskable fields are {}",
                    crate::audit::MASKABLE.join(", ")
                ),
            );
        }
    }
    if let Some(problem) = audit.key_problem() {
        r.fail("audit", problem);
    }
    if audit.sink == crate::audit::Sink::File && audit.path.is_none() {
        r.fail("audit", "sink `file` needs a `path`");
    }
}

/// A namespace's Transact tables and outbox relays.
fn check_transact(
    cfg: &GatewayConfig,
    ns: &crate::config::NamespaceSpec,
    subject: &str,
    r: &mut Report,
) -> bool {
    use crate::{backends::Interface, config::RelayTarget};
    let mut ok = true;
    let mut fail = |r: &mut Report, message: String| {
        ok = false;
        r.fail(subject, message);
    };
    let has = |backend: &str, interface: Interface| {
        cfg.backends
            .get(backend)
            .is_some_and(|b| b.kind.has(interface))
    };
    let t = &ns.transact;
    for (table, spec) in &t.tables {
        let what = format!("transact table `{table}`");
        if !ns.allowed_backends.contains(&spec.backend) {
            fail(
                r,
                format!(
                    "{what}: backend `{}` is not in allowed_backends",
                    spec.backend
                ),
            );
        } else if !has(&spec.backend, Interface::TransactOutbox) {
            fail(
                r,
                format!(
                    "{what}: backend `{}` does not implement transact_outbox",
                    spec.backend
                ),
            );
        }
        if table.is_empty() || spec.id.is_empty() {
            fail(
                r,
                format!("{what}: the table name and `id` must not be empty"),
            );
        }
    }
    if t.default_timeout.is_zero() || t.max_timeout < t.default_timeout {
        fail(
            r,
            "transact.default_timeout must be positive and no longer than transact.max_timeout"
                .into(),
        );
    }
    if t.idempotency_window.is_zero() {
        fail(r, "transact.idempotency_window must be positive".into());
    }
    if t.max_open_per_session == 0 || t.max_open_per_namespace < t.max_open_per_session {
        fail(
            r,
            "transact: need 1 <= max_open_per_session <= max_open_per_namespace".into(),
        );
    }
    for (name, relay) in &ns.relays {
        let what = format!("relay `{name}`");
        if !has(&relay.backend, Interface::TransactOutbox) {
            fail(
                r,
                format!(
                    "{what}: backend `{}` is not a configured backend implementing transact_outbox",
                    relay.backend
                ),
            );
        }
        if relay.mailbox.is_empty()
            || relay.batch_size == 0
            || relay.poll_interval.is_zero()
            || relay.max_attempts == 0
        {
            fail(
                r,
                format!(
                    "{what}: needs a mailbox, a positive batch_size, poll_interval and \
                     max_attempts"
                ),
            );
        }
        let target = relay.to.backend();
        let kind = cfg.backends.get(target).map(|b| b.kind);
        let fits = match (&relay.to, kind) {
            (_, None) => false,
            (RelayTarget::Pubsub { topic, .. }, Some(k)) => {
                if crate::backends::pubsub::check_topic(topic).is_err() {
                    fail(r, format!("{what}: `{topic}` is not a valid pubsub topic"));
                }
                k.has(Interface::PubSubBasic)
            }
            (RelayTarget::Kafka { topic, .. }, Some(k)) => {
                !topic.is_empty() && k == crate::backends::BackendKind::Kafka
            }
            (RelayTarget::Nats { subject, .. }, Some(k)) => {
                !subject.is_empty() && k == crate::backends::BackendKind::Nats
            }
        };
        if !fits {
            fail(
                r,
                format!(
                    "{what}: `to` needs a configured backend of its kind (pubsub: a pubsub \
                     backend, kafka: a kafka backend, nats: a nats backend) and a destination; \
                     `{target}` does not fit"
                ),
            );
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;

    fn parse(yaml: &str) -> GatewayConfig {
        GatewayConfig::from_yaml(yaml, &Source::Inline, &[("X", "x"); 0]).unwrap()
    }

    #[test]
    fn missing_interface_fails_naming_backend_and_interface() {
        let cfg = parse(
            r#"
backends:
  events-kafka: { type: kafka, url: "127.0.0.1:9092" }
namespaces:
  ns: { allowed_backends: [events-kafka], allowed_patterns: [key_value] }
configs:
  cache:
    namespace: ns
    pattern: key_value
    backend: events-kafka
    required_interfaces: [keyvalue_ttl]
"#,
        );
        let report = validate(&cfg);
        assert!(report.has_failures());
        let text = report.failures_text();
        assert!(
            text.contains("events-kafka") && text.contains("keyvalue_ttl"),
            "{text}"
        );
    }

    #[test]
    fn keyvalue_on_a_backend_without_keyvalue_is_rejected() {
        let cfg = parse(
            r#"
backends:
  events-kafka: { type: kafka, url: "127.0.0.1:9092" }
namespaces:
  ns: { allowed_backends: [events-kafka], allowed_patterns: [key_value] }
configs:
  cache: { namespace: ns, pattern: key_value, backend: events-kafka }
"#,
        );
        let text = validate(&cfg).failures_text();
        assert!(
            text.contains("events-kafka") && text.contains("keyvalue_basic"),
            "{text}"
        );
    }

    #[test]
    fn limits_pools_and_namespace_names_are_checked() {
        let cfg = parse(
            r#"
backends:
  mem: { type: memory, pool: { backoff_initial: 5s, backoff_max: 1s } }
  pg: { type: postgres, url: "postgres://h/db", pool: { statement_lanes: 65 } }
namespaces:
  "bad:name":
    allowed_backends: [mem]
    allowed_patterns: [key_value]
    queue: { buffer: 0, buffer_bytes: 2147483648 }
limits: { max_value_bytes: 1000000, max_message_bytes: 1000000 }
server: { connections: { max_connections: 0 } }
"#,
        );
        let text = validate(&cfg).failures_text();
        assert!(text.contains("pool.backoff_initial"), "{text}");
        assert!(text.contains("namespace names"), "{text}");
        assert!(text.contains("limits.max_message_bytes"), "{text}");
        assert!(text.contains("queue.buffer must"), "{text}");
        assert!(text.contains("queue.buffer_bytes must"), "{text}");
        assert!(text.contains("max_connections must"), "{text}");
        assert!(
            text.contains("pool.statement_lanes must be at most 64"),
            "{text}"
        );
    }

    #[test]
    fn policy_violations_are_reported() {
        let cfg = parse(
            r#"
backends:
  mem: { type: memory }
  pg: { type: postgres }
namespaces:
  ns:
    allowed_backends: [mem, ghost]
    allowed_patterns: [queue]
    api_keys: [{ name: k, sha256: "abc" }]
configs:
  c1: { namespace: ns, pattern: pubsub, backend: mem }
  c2: { namespace: ns, pattern: queue, backend: pg }
"#,
        );
        let text = validate(&cfg).failures_text();
        assert!(text.contains("`ghost`"), "{text}");
        assert!(text.contains("64 hex digits"), "{text}");
        assert!(text.contains("pubsub pattern"), "{text}");
        assert!(text.contains("may not use backend `pg`"), "{text}");
        assert!(text.contains("postgres needs `url"), "{text}");
    }

    #[test]
    fn cache_settings_out_of_bounds_or_a_negative_rate_limit_are_rejected() {
        let cfg = parse(
            r#"
backends:
  mem: { type: memory, cache: { max_entries: 0 } }
  mem2: { type: memory, cache: { max_entries: 10, max_bytes: 1048576 } }
  rds: { type: redis, url: "redis://127.0.0.1:6379", cache: { max_entries: 10 } }
namespaces:
  ns: { allowed_backends: [mem, mem2], allowed_patterns: [key_value, cache] }
configs:
  huge: { namespace: ns, pattern: key_value, backend: mem2, cache: { enabled: true, max_bytes: 99999999999999 } }
  tiny: { namespace: ns, pattern: key_value, backend: mem2, cache: { enabled: true, max_entries: 0 } }
  notkv: { namespace: ns, pattern: cache, backend: mem2, cache: { enabled: true } }
  zero: { namespace: ns, pattern: cache, backend: mem2, cache: { ttl: 0s } }
  negative: { namespace: ns, pattern: key_value, backend: mem2, rate_limit: { requests_per_second: -1 } }
  cached: { namespace: ns, pattern: key_value, backend: mem2, cache: { enabled: true, strategy: write_through, ttl: 5m } }
  entries: { namespace: ns, pattern: cache, backend: mem2, cache: { ttl: 1h } }
  fine: { namespace: ns, pattern: key_value, backend: mem2, cache: { enabled: false }, rate_limit: { requests_per_second: 50, burst: 10 } }
"#,
        );
        let text = validate(&cfg).failures_text();
        assert!(text.contains("backend mem: cache.max_entries"), "{text}");
        assert!(text.contains("backend rds: `cache` bounds only"), "{text}");
        assert!(!text.contains("backend mem2"), "{text}");
        assert!(
            text.contains("config `huge`: cache.max_bytes is 99999999999999"),
            "{text}"
        );
        assert!(
            text.contains("config `tiny`: cache.max_entries is 0"),
            "{text}"
        );
        assert!(
            text.contains("config `notkv`: cache.enabled puts a cache"),
            "{text}"
        );
        assert!(
            text.contains("config `zero`: cache.ttl must be positive and at most 100 years"),
            "{text}"
        );
        assert!(text.contains("config `negative`: rate_limit"), "{text}");
        for fine in ["`cached`", "`entries`", "`fine`"] {
            assert!(!text.contains(fine), "{fine}: {text}");
        }
    }

    #[test]
    fn a_shared_session_store_names_what_each_instance_keeps_to_itself() {
        let cfg = parse(
            r#"
sessions: { store: redis, url: "redis://127.0.0.1:6379", flush_interval: 1s }
backends:
  mem: { type: memory }
  file: { type: sqlite, path: x.db }
  pg: { type: postgres, url: "postgres://u@h/d" }
namespaces:
  quick: { allowed_backends: [mem, file, pg], allowed_patterns: [key_value], session: { idle_timeout: 2s } }
  fine: { allowed_backends: [pg], allowed_patterns: [key_value] }
"#,
        );
        let report = validate(&cfg);
        let notes: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| c.outcome == Outcome::Note)
            .map(|c| c.subject.as_str())
            .collect();
        assert_eq!(notes, ["backend file", "backend mem"], "{}", report.text());
        let text = report.failures_text();
        assert!(
            text.contains("namespace quick: session.idle_timeout (2s) must exceed"),
            "{text}"
        );
        assert!(!text.contains("namespace fine"), "{text}");

        let cfg = parse("sessions: { store: postgres }\nnamespaces: { ns: { allowed_backends: [], allowed_patterns: [key_value] } }\n");
        let text = validate(&cfg).failures_text();
        assert!(text.contains("`store: postgres` needs `url"), "{text}");
        // One instance (the default) notes nothing.
        let cfg = parse("backends: { mem: { type: memory } }\nnamespaces: { ns: { allowed_backends: [mem], allowed_patterns: [key_value] } }\n");
        assert!(validate(&cfg)
            .checks
            .iter()
            .all(|c| c.outcome != Outcome::Note || !c.subject.starts_with("backend")));
    }
}
