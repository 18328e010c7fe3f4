//! Resolving a client configuration — named on the server or sent inline —
//! against a namespace's policy: which backends and patterns it may use and
//! which interfaces those backends implement. `prism validate` and
//! CreateSession share this one path.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use super::{
    options::ClientOptions, policy, CacheSpec, CacheStrategy, Consistency, GatewayConfig,
    NamedConfigSpec, NamespaceSpec, Pattern,
};
use crate::{
    backends::{BackendKind, Interface},
    error::{Error, ErrorKind},
    proto::config::v1 as pb,
};

/// A client configuration that passed every policy check.
#[derive(Debug, Clone)]
pub struct ResolvedConfig {
    pub name: String,
    pub namespace: String,
    pub backend_name: String,
    pub backend_kind: BackendKind,
    /// Primary pattern first.
    pub patterns: Vec<Pattern>,
    /// Role sets a session of this config needs, one role of each: the
    /// named config's own `roles` and those of the namespace rules that
    /// cover it. Empty = anyone in the namespace.
    pub role_sets: Vec<Vec<String>>,
    /// The config's options, parsed and checked.
    pub options: ClientOptions,
    /// The cache in front of KeyValue, when `cache.enabled`.
    pub kv_cache: Option<KvCacheSettings>,
    /// Cache pattern: the expiry of entries written without one.
    pub cache_ttl: Option<Duration>,
    /// What the client is shown.
    pub proto: pb::ClientConfig,
}

/// A KeyValue cache's settings, checked (see [`CacheSpec`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheSettings {
    pub strategy: CacheStrategy,
    pub ttl: Duration,
    pub max_entries: usize,
    pub max_bytes: usize,
}

impl KvCacheSettings {
    pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
    pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
    pub const DEFAULT_MAX_BYTES: usize = 16 << 20;
    /// The most one config's cache may hold: the operator sizes it, but
    /// a typo should not take the gateway's memory.
    pub const MAX_ENTRIES: usize = 10_000_000;
    pub const MAX_BYTES: usize = 16 << 30;
    pub const MIN_BYTES: usize = 4096;
}

impl ResolvedConfig {
    /// The first role set `roles` has none of, if any.
    pub fn missing_roles(&self, roles: &[String]) -> Option<&[String]> {
        self.role_sets
            .iter()
            .find(|set| !set.iter().any(|r| roles.contains(r)))
            .map(Vec::as_slice)
    }

    /// Feature names for `supported_features`: the interfaces the session's
    /// backend implements, e.g. `keyvalue_ttl`.
    pub fn interfaces(&self) -> impl Iterator<Item = Interface> + '_ {
        self.backend_kind.implements().iter().copied()
    }
}

pub fn pattern_to_proto(p: Pattern) -> pb::AccessPattern {
    match p {
        Pattern::KeyValue => pb::AccessPattern::KeyValue,
        Pattern::Queue => pb::AccessPattern::Queue,
        Pattern::Pubsub => pb::AccessPattern::Pubsub,
        Pattern::Reader => pb::AccessPattern::Reader,
        Pattern::Transact => pb::AccessPattern::Transact,
        Pattern::Cache => pb::AccessPattern::Cache,
    }
}

/// A backend kind on the wire (the backends know nothing of the wire).
pub fn kind_to_proto(kind: BackendKind) -> pb::BackendType {
    match kind {
        BackendKind::Memory => pb::BackendType::Memory,
        BackendKind::Sqlite => pb::BackendType::Sqlite,
        BackendKind::Postgres => pb::BackendType::Postgres,
        BackendKind::Redis => pb::BackendType::Redis,
        BackendKind::Kafka => pb::BackendType::Kafka,
        BackendKind::Nats => pb::BackendType::Nats,
    }
}

pub fn kind_from_proto(t: pb::BackendType) -> Option<BackendKind> {
    Some(match t {
        pb::BackendType::Unspecified => return None,
        pb::BackendType::Memory => BackendKind::Memory,
        pb::BackendType::Sqlite => BackendKind::Sqlite,
        pb::BackendType::Postgres => BackendKind::Postgres,
        pb::BackendType::Redis => BackendKind::Redis,
        pb::BackendType::Kafka => BackendKind::Kafka,
        pb::BackendType::Nats => BackendKind::Nats,
    })
}

pub fn pattern_from_proto(p: pb::AccessPattern) -> Option<Pattern> {
    Some(match p {
        pb::AccessPattern::Unspecified => return None,
        pb::AccessPattern::KeyValue => Pattern::KeyValue,
        pb::AccessPattern::Queue => Pattern::Queue,
        pb::AccessPattern::Pubsub => Pattern::Pubsub,
        pb::AccessPattern::Reader => Pattern::Reader,
        pb::AccessPattern::Transact => Pattern::Transact,
        pb::AccessPattern::Cache => Pattern::Cache,
    })
}

/// The named configs, resolved by name.
pub type ByName = BTreeMap<String, Arc<ResolvedConfig>>;

/// Every named config, resolved once at start and again on each config
/// reload (which replaces the whole set at once): sessions share these
/// instead of re-resolving, and an open session keeps the config it was
/// opened with.
#[derive(Debug)]
pub struct NamedConfigs {
    by_name: arc_swap::ArcSwap<ByName>,
}

impl NamedConfigs {
    pub fn resolve_all(cfg: &GatewayConfig) -> Result<Self, Error> {
        Ok(NamedConfigs {
            by_name: arc_swap::ArcSwap::from_pointee(Self::resolve(cfg)?),
        })
    }

    /// Every named config of `cfg`, resolved; the first that does not
    /// resolve is the error.
    pub fn resolve(cfg: &GatewayConfig) -> Result<ByName, Error> {
        cfg.configs
            .iter()
            .map(|(name, spec)| Ok((name.clone(), Arc::new(resolve_named_spec(cfg, name, spec)?))))
            .collect()
    }

    /// Puts a reloaded set in use for sessions opened from now on.
    pub fn replace(&self, by_name: ByName) {
        self.by_name.store(Arc::new(by_name));
    }

    pub fn get(&self, name: &str) -> Result<Arc<ResolvedConfig>, Error> {
        self.by_name.load().get(name).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                "CONFIG_NOT_FOUND",
                format!(
                    "no named config `{name}`; ConfigService.ListConfigs shows the available names"
                ),
            )
            .with("config_name", name)
        })
    }

    /// Every config as it is now, in name order.
    pub fn all(&self) -> Arc<ByName> {
        self.by_name.load_full()
    }
}

/// A config's rate limit must not be negative (0 = no limit).
fn check_rate(what: &str, rate_limit: Option<(i32, i32)>) -> Result<(), Error> {
    if let Some((rps, burst)) = rate_limit {
        if rps < 0 || burst < 0 {
            return Err(Error::invalid_argument(
                "INVALID_CONFIG",
                format!("{what}: rate_limit values must not be negative (0 = no limit)"),
            ));
        }
    }
    Ok(())
}

/// The longest `cache.ttl` (as for any expiry a client sends).
/// The longest expiry anything takes: 100 years.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn invalid_cache(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::invalid_argument("INVALID_CACHE_CONFIG", format!("{what}: {detail}"))
}

/// A bound from the config, checked into `min..=max`; `default` when unset.
fn cache_bound(
    what: &str,
    field: &str,
    value: Option<i64>,
    default: usize,
    (min, max): (usize, usize),
) -> Result<usize, Error> {
    let Some(v) = value else {
        return Ok(default);
    };
    usize::try_from(v)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| {
            invalid_cache(
                what,
                format!("cache.{field} is {v}; it must be {min} to {max}"),
            )
        })
}

/// What a config's `cache` asks for: the KeyValue cache when enabled (only
/// on a config serving key_value), and a cache config's default entry
/// expiry.
fn check_cache(
    what: &str,
    patterns: &[Pattern],
    cache: Option<&CacheSpec>,
) -> Result<(Option<KvCacheSettings>, Option<Duration>), Error> {
    let Some(c) = cache else {
        return Ok((None, None));
    };
    if c.ttl.is_some_and(|t| t.is_zero() || t > MAX_TTL) {
        return Err(invalid_cache(
            what,
            "cache.ttl must be positive and at most 100 years",
        ));
    }
    let cache_ttl = c.ttl.filter(|_| patterns.contains(&Pattern::Cache));
    if !c.enabled {
        return Ok((None, cache_ttl));
    }
    if !patterns.contains(&Pattern::KeyValue) {
        return Err(invalid_cache(
            what,
            "cache.enabled puts a cache in front of KeyValue, and this config does not serve \
             key_value; a cache config's entries live on its backend (set only cache.ttl there)",
        ));
    }
    let settings = KvCacheSettings {
        strategy: c.strategy,
        ttl: c.ttl.unwrap_or(KvCacheSettings::DEFAULT_TTL),
        max_entries: cache_bound(
            what,
            "max_entries",
            c.max_entries,
            KvCacheSettings::DEFAULT_MAX_ENTRIES,
            (1, KvCacheSettings::MAX_ENTRIES),
        )?,
        max_bytes: cache_bound(
            what,
            "max_bytes",
            c.max_bytes,
            KvCacheSettings::DEFAULT_MAX_BYTES,
            (KvCacheSettings::MIN_BYTES, KvCacheSettings::MAX_BYTES),
        )?,
    };
    Ok((Some(settings), cache_ttl))
}

/// A cache as the client is shown it.
fn cache_to_proto(
    kv: Option<&KvCacheSettings>,
    cache_ttl: Option<Duration>,
) -> Option<pb::CacheConfig> {
    match (kv, cache_ttl) {
        (Some(kv), _) => Some(pb::CacheConfig {
            enabled: true,
            ttl: Some(crate::clock::duration_to_proto(kv.ttl)),
            max_entries: kv.max_entries as i64,
            strategy: match kv.strategy {
                CacheStrategy::LookAside => pb::CacheStrategy::LookAside,
                CacheStrategy::WriteThrough => pb::CacheStrategy::WriteThrough,
            } as i32,
            max_bytes: kv.max_bytes as i64,
        }),
        (None, Some(ttl)) => Some(pb::CacheConfig {
            ttl: Some(crate::clock::duration_to_proto(ttl)),
            ..Default::default()
        }),
        (None, None) => None,
    }
}

pub(crate) fn resolve_named_spec(
    cfg: &GatewayConfig,
    name: &str,
    spec: &NamedConfigSpec,
) -> Result<ResolvedConfig, Error> {
    let backend = cfg.backends.get(&spec.backend).ok_or_else(|| {
        Error::new(
            ErrorKind::FailedPrecondition,
            "BACKEND_NOT_CONFIGURED",
            format!(
                "config `{name}` uses backend `{}`, which is not configured; add it under `backends`",
                spec.backend
            ),
        )
    })?;
    let mut patterns = vec![spec.pattern];
    patterns.extend(spec.also.iter().copied().filter(|p| *p != spec.pattern));
    let required = parse_interfaces(&spec.required_interfaces)?;
    let mut options = ClientOptions::parse(&format!("configs.{name}.options"), &spec.options)?;
    let own_rate = spec
        .rate_limit
        .as_ref()
        .map(|r| (r.requests_per_second, r.burst));
    check_rate(&format!("config `{name}`"), own_rate)?;
    let (kv_cache, cache_ttl) =
        check_cache(&format!("config `{name}`"), &patterns, spec.cache.as_ref())?;
    let ns = check_policy(
        cfg,
        &spec.namespace,
        &spec.backend,
        backend.kind,
        &patterns,
        &required,
    )?;
    let bounds = policy::bound(
        &ns.rules,
        &spec.backend,
        &patterns,
        &mut options,
        |name| spec.options.contains_key(name),
        &format!("configs.{name}.options"),
        policy::Bounds {
            role_sets: [&spec.roles]
                .into_iter()
                .filter(|r| !r.is_empty())
                .cloned()
                .collect(),
            rate: policy::rate_of(own_rate),
        },
    )?;

    let proto = pb::ClientConfig {
        name: name.to_string(),
        version: spec.version.clone(),
        pattern: pattern_to_proto(spec.pattern) as i32,
        backend: Some(pb::BackendConfig {
            r#type: kind_to_proto(backend.kind) as i32,
            name: spec.backend.clone(),
            options: spec.options.clone().into_iter().collect(),
            required_interfaces: spec.required_interfaces.clone(),
        }),
        consistency: Some(pb::ConsistencyConfig {
            level: match spec.consistency {
                Consistency::Strong => pb::ConsistencyLevel::Strong,
                Consistency::Eventual => pb::ConsistencyLevel::Eventual,
                Consistency::BoundedStaleness => pb::ConsistencyLevel::BoundedStaleness,
            } as i32,
            max_staleness: spec.max_staleness.map(crate::clock::duration_to_proto),
        }),
        cache: cache_to_proto(kv_cache.as_ref(), cache_ttl),
        rate_limit: rate_to_proto(bounds.rate),
        namespace: spec.namespace.clone(),
        patterns: patterns
            .iter()
            .map(|p| pattern_to_proto(*p) as i32)
            .collect(),
    };
    Ok(ResolvedConfig {
        name: name.to_string(),
        namespace: spec.namespace.clone(),
        backend_name: spec.backend.clone(),
        backend_kind: backend.kind,
        patterns,
        role_sets: bounds.role_sets,
        options,
        kv_cache,
        cache_ttl,
        proto,
    })
}

/// Resolves a config sent by the client, for a principal of `namespace`.
pub fn resolve_inline(
    cfg: &GatewayConfig,
    namespace: &str,
    inline: &pb::ClientConfig,
) -> Result<ResolvedConfig, Error> {
    if !inline.namespace.is_empty() && inline.namespace != namespace {
        return Err(Error::permission_denied(
            "NAMESPACE_MISMATCH",
            format!(
                "inline config names namespace `{}` but the credentials are for `{namespace}`; \
                 leave namespace empty or use credentials of that namespace",
                inline.namespace
            ),
        ));
    }
    let primary = pb::AccessPattern::try_from(inline.pattern)
        .ok()
        .and_then(pattern_from_proto)
        .ok_or_else(|| {
            Error::invalid_argument(
                "INVALID_CONFIG",
                "inline_config.pattern is unspecified or unknown; set it to one of QUEUE, PUBSUB, \
                 READER, TRANSACT, KEY_VALUE, CACHE",
            )
        })?;
    let mut patterns = vec![primary];
    for p in &inline.patterns {
        let p = pb::AccessPattern::try_from(*p)
            .ok()
            .and_then(pattern_from_proto)
            .ok_or_else(|| {
                Error::invalid_argument(
                    "INVALID_CONFIG",
                    "inline_config.patterns holds an unspecified or unknown pattern",
                )
            })?;
        if !patterns.contains(&p) {
            patterns.push(p);
        }
    }
    let backend = inline.backend.clone().unwrap_or_default();
    let (backend_name, kind) = pick_backend(cfg, namespace, &backend)?;
    let required = parse_interfaces(&backend.required_interfaces)?;
    let mut options = ClientOptions::parse("inline_config.backend.options", &backend.options)?;
    let own_rate = inline
        .rate_limit
        .as_ref()
        .map(|r| (r.requests_per_second, r.burst));
    check_rate("inline_config", own_rate)?;
    let cache_ttl = inline_cache_ttl(inline.cache.as_ref(), &patterns)?;
    let ns = check_policy(cfg, namespace, &backend_name, kind, &patterns, &required)?;
    let bounds = policy::bound(
        &ns.rules,
        &backend_name,
        &patterns,
        &mut options,
        |name| backend.options.contains_key(name),
        "inline_config.backend.options",
        policy::Bounds {
            role_sets: Vec::new(),
            rate: policy::rate_of(own_rate),
        },
    )?;

    let mut proto = inline.clone();
    proto.rate_limit = rate_to_proto(bounds.rate);
    proto.cache = cache_to_proto(None, cache_ttl);
    proto.namespace = namespace.to_string();
    if proto.name.is_empty() {
        proto.name = "inline".to_string();
    }
    if proto.version.is_empty() {
        proto.version = "v1".to_string();
    }
    let b = proto.backend.get_or_insert_with(Default::default);
    b.name = backend_name.clone();
    b.r#type = kind_to_proto(kind) as i32;
    proto.patterns = patterns
        .iter()
        .map(|p| pattern_to_proto(*p) as i32)
        .collect();
    Ok(ResolvedConfig {
        name: proto.name.clone(),
        namespace: namespace.to_string(),
        backend_name,
        backend_kind: kind,
        patterns,
        role_sets: bounds.role_sets,
        options,
        kv_cache: None,
        cache_ttl,
        proto,
    })
}

/// An inline config's `cache`: only a cache config's default entry expiry.
/// A cache in the gateway holds the gateway's memory, so only the operator
/// turns one on (in a named config); a client may not.
fn inline_cache_ttl(
    cache: Option<&pb::CacheConfig>,
    patterns: &[Pattern],
) -> Result<Option<Duration>, Error> {
    let Some(c) = cache else {
        return Ok(None);
    };
    if c.enabled {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            "CACHE_NOT_ALLOWED_INLINE",
            "inline_config.cache.enabled asks for a cache in the gateway, which only the operator \
             sets up (a named config with cache.enabled); use such a config, or leave enabled \
             false",
        ));
    }
    let ttl = match &c.ttl {
        None => None,
        Some(d) => Some(
            crate::clock::duration_from_proto(d)
                .filter(|d| !d.is_zero() && *d <= MAX_TTL)
                .ok_or_else(|| {
                    invalid_cache(
                        "inline_config",
                        "cache.ttl must be a positive duration of at most 100 years",
                    )
                })?,
        ),
    };
    Ok(ttl.filter(|_| patterns.contains(&Pattern::Cache)))
}

/// Finds the configured backend an inline config means: by name, or the
/// namespace's only allowed backend of the requested type.
fn pick_backend(
    cfg: &GatewayConfig,
    namespace: &str,
    backend: &pb::BackendConfig,
) -> Result<(String, BackendKind), Error> {
    let ns = cfg
        .namespaces
        .get(namespace)
        .ok_or_else(|| unknown_namespace(namespace))?;
    let wanted = pb::BackendType::try_from(backend.r#type)
        .ok()
        .and_then(kind_from_proto);
    if !backend.name.is_empty() {
        let spec = cfg.backends.get(&backend.name).ok_or_else(|| {
            Error::new(
                ErrorKind::FailedPrecondition,
                "BACKEND_NOT_CONFIGURED",
                format!("no backend named `{}` is configured", backend.name),
            )
        })?;
        if let Some(kind) = wanted {
            if kind != spec.kind {
                return Err(Error::invalid_argument(
                    "INVALID_CONFIG",
                    format!(
                        "backend `{}` is {}, not {kind}; fix inline_config.backend.type or name",
                        backend.name, spec.kind
                    ),
                ));
            }
        }
        return Ok((backend.name.clone(), spec.kind));
    }
    let kind = wanted.ok_or_else(|| {
        Error::invalid_argument(
            "INVALID_CONFIG",
            "inline_config.backend needs a type (MEMORY, SQLITE, POSTGRES, REDIS, KAFKA, NATS) or a name",
        )
    })?;
    let allowed: Vec<&String> = ns
        .allowed_backends
        .iter()
        .filter(|n| cfg.backends.get(*n).is_some_and(|b| b.kind == kind))
        .collect();
    match allowed.as_slice() {
        [one] => Ok(((*one).clone(), kind)),
        [] => {
            let configured = cfg.backends.values().any(|b| b.kind == kind);
            if configured {
                Err(Error::permission_denied(
                    "BACKEND_NOT_ALLOWED",
                    format!("namespace `{namespace}` may not use {kind} backends"),
                ))
            } else {
                Err(Error::new(
                    ErrorKind::FailedPrecondition,
                    "BACKEND_NOT_CONFIGURED",
                    format!("no {kind} backend is configured on this gateway"),
                ))
            }
        }
        many => Err(Error::invalid_argument(
            "AMBIGUOUS_BACKEND",
            format!(
                "namespace `{namespace}` has several {kind} backends ({}); set inline_config.backend.name",
                many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// The rate a session is held to, as the client is shown it.
fn rate_to_proto(rate: policy::Rate) -> Option<pb::RateLimitConfig> {
    rate.map(|(requests_per_second, burst)| pb::RateLimitConfig {
        requests_per_second,
        burst,
    })
}

fn unknown_namespace(namespace: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        "NAMESPACE_NOT_FOUND",
        format!("namespace `{namespace}` is not configured"),
    )
}

fn parse_interfaces(names: &[String]) -> Result<Vec<Interface>, Error> {
    names
        .iter()
        .map(|n| {
            Interface::parse(n).ok_or_else(|| {
                let known: Vec<&str> = Interface::ALL.iter().map(|i| i.name()).collect();
                Error::invalid_argument(
                    "UNKNOWN_INTERFACE",
                    format!(
                        "unknown interface `{n}`; known interfaces: {}",
                        known.join(", ")
                    ),
                )
            })
        })
        .collect()
}

/// The namespace policy and interface checks every config must pass; the
/// namespace, for the rules that bound the config next.
fn check_policy<'c>(
    cfg: &'c GatewayConfig,
    namespace: &str,
    backend_name: &str,
    kind: BackendKind,
    patterns: &[Pattern],
    required: &[Interface],
) -> Result<&'c NamespaceSpec, Error> {
    let ns = cfg
        .namespaces
        .get(namespace)
        .ok_or_else(|| unknown_namespace(namespace))?;
    if !ns.allowed_backends.iter().any(|b| b == backend_name) {
        return Err(Error::permission_denied(
            "BACKEND_NOT_ALLOWED",
            format!(
                "namespace `{namespace}` may not use backend `{backend_name}`; allowed: {}",
                ns.allowed_backends.join(", ")
            ),
        ));
    }
    for p in patterns {
        if !ns.allowed_patterns.contains(p) {
            return Err(Error::permission_denied(
                "PATTERN_NOT_ALLOWED",
                format!("namespace `{namespace}` may not use the {p} pattern"),
            ));
        }
    }
    let served = patterns
        .iter()
        .filter(|p| p.served())
        .flat_map(|p| p.base_interfaces().iter().copied());
    for interface in required.iter().copied().chain(served) {
        if !kind.has(interface) {
            return Err(crate::backends::missing_interface(
                backend_name,
                kind,
                interface,
            ));
        }
    }
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_kinds_round_trip_through_proto() {
        for k in BackendKind::ALL {
            assert_eq!(kind_from_proto(kind_to_proto(k)), Some(k));
        }
    }
}
