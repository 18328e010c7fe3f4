//! Namespace policy: the rules (`namespaces.<ns>.rules`) that bound every
//! client config of a namespace, named or inline alike. A rule covers the
//! configs of some patterns and backends (all when it names none); each
//! rule that covers a config adds a role a session must hold, caps its
//! rate limit and caps its options. A config may narrow what its rules
//! allow — its own roles, a lower rate, smaller options — never widen it.

use std::time::Duration;

use serde::Deserialize;

use super::{options::ClientOptions, Pattern, RateLimitSpec};
use crate::error::Error;

/// One rule of a namespace's policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// Patterns the rule covers; empty = every pattern.
    #[serde(default)]
    pub patterns: Vec<Pattern>,
    /// Backends the rule covers; empty = every backend of the namespace.
    #[serde(default)]
    pub backends: Vec<String>,
    /// A session under the rule needs one of these roles; empty = any.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The most a session under the rule may send; a config's own
    /// `rate_limit` applies only when lower.
    pub rate_limit: Option<RateLimitSpec>,
    /// Caps on the config's options.
    #[serde(default, with = "humantime_serde")]
    pub max_visibility_timeout: Option<Duration>,
    pub max_attempts: Option<u32>,
    pub max_partitions: Option<i32>,
}

impl PolicyRule {
    /// Whether the rule covers a config of `backend` serving `patterns`.
    pub fn covers(&self, backend: &str, patterns: &[Pattern]) -> bool {
        (self.backends.is_empty() || self.backends.iter().any(|b| b == backend))
            && (self.patterns.is_empty() || patterns.iter().any(|p| self.patterns.contains(p)))
    }
}

/// A rate limit as (requests per second, burst), burst never 0; `None` is
/// no limit.
pub type Rate = Option<(i32, i32)>;

/// A `rate_limit` as a [`Rate`]: 0 requests per second is no limit, burst
/// 0 is one second's worth.
pub fn rate_of(limit: Option<(i32, i32)>) -> Rate {
    limit
        .filter(|(rps, _)| *rps > 0)
        .map(|(rps, burst)| (rps, if burst > 0 { burst } else { rps }))
}

/// The lower of two limits, field by field.
fn lower(a: Rate, b: Rate) -> Rate {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some((r1, b1)), Some((r2, b2))) => Some((r1.min(r2), b1.min(b2))),
    }
}

/// What a namespace's rules make of one config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bounds {
    /// Role sets a session must satisfy, one role of each.
    pub role_sets: Vec<Vec<String>>,
    /// The rate the session is held to.
    pub rate: Rate,
}

/// Holds one config to the `rules` that cover it: checks the options it
/// set against their caps (PERMISSION_DENIED `OPTION_NOT_ALLOWED` naming
/// the option and the cap), lowers the defaults it left to the caps, and
/// gives the roles and rate its sessions are held to, starting from the
/// config's own (`own`). `set` says whether the config set an option
/// itself; `field` names where its options came from, for the error.
pub fn bound(
    rules: &[PolicyRule],
    backend: &str,
    patterns: &[Pattern],
    options: &mut ClientOptions,
    set: impl Fn(&str) -> bool,
    field: &str,
    own: Bounds,
) -> Result<Bounds, Error> {
    let mut bounds = own;
    for rule in rules.iter().filter(|r| r.covers(backend, patterns)) {
        if !rule.roles.is_empty() && !bounds.role_sets.contains(&rule.roles) {
            bounds.role_sets.push(rule.roles.clone());
        }
        bounds.rate = lower(
            bounds.rate,
            rate_of(
                rule.rate_limit
                    .as_ref()
                    .map(|r| (r.requests_per_second, r.burst)),
            ),
        );
        cap(
            "visibility_timeout",
            &mut options.visibility_timeout,
            rule.max_visibility_timeout,
            &set,
            field,
            |d| humantime::format_duration(*d).to_string(),
        )?;
        cap(
            "max_attempts",
            &mut options.max_attempts,
            rule.max_attempts,
            &set,
            field,
            u32::to_string,
        )?;
        cap(
            "partitions",
            &mut options.partitions,
            rule.max_partitions,
            &set,
            field,
            i32::to_string,
        )?;
    }
    Ok(bounds)
}

/// An option above its cap: refused when the config set it, lowered when
/// it is the default.
fn cap<T: PartialOrd + Copy>(
    name: &str,
    value: &mut T,
    max: Option<T>,
    set: &impl Fn(&str) -> bool,
    field: &str,
    show: impl Fn(&T) -> String,
) -> Result<(), Error> {
    let Some(max) = max.filter(|m| *value > *m) else {
        return Ok(());
    };
    if set(name) {
        return Err(Error::permission_denied(
            "OPTION_NOT_ALLOWED",
            format!(
                "{field}.{name} = {} is above the namespace's limit of {}",
                show(value),
                show(&max)
            ),
        )
        .with("field", format!("{field}.{name}"))
        .with("limit", show(&max)));
    }
    *value = max;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> PolicyRule {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn rules_cover_by_pattern_and_backend() {
        let r = rule("{ patterns: [transact], backends: [db] }");
        assert!(r.covers("db", &[Pattern::Reader, Pattern::Transact]));
        assert!(!r.covers("db", &[Pattern::Reader]));
        assert!(!r.covers("other", &[Pattern::Transact]));
        assert!(rule("{}").covers("anything", &[Pattern::KeyValue]));
    }

    #[test]
    fn the_lowest_rate_and_every_role_set_apply() {
        let rules = [
            rule("{ roles: [writer], rate_limit: { requests_per_second: 100 } }"),
            rule("{ backends: [db], roles: [audited], rate_limit: { requests_per_second: 500, burst: 50 } }"),
            rule("{ backends: [elsewhere], roles: [never] }"),
        ];
        let mut options = ClientOptions::default();
        let b = bound(
            &rules,
            "db",
            &[Pattern::KeyValue],
            &mut options,
            |_| false,
            "f",
            Bounds::default(),
        )
        .unwrap();
        assert_eq!(
            b.role_sets,
            [vec!["writer".to_string()], vec!["audited".to_string()]]
        );
        assert_eq!(b.rate, Some((100, 50)));
        // A config's own lower limit stays; a higher one is lowered.
        let mut with_own = |own: Option<(i32, i32)>| {
            bound(
                &rules,
                "db",
                &[Pattern::KeyValue],
                &mut options,
                |_| false,
                "f",
                Bounds {
                    role_sets: Vec::new(),
                    rate: rate_of(own),
                },
            )
            .unwrap()
            .rate
        };
        assert_eq!(with_own(Some((10, 0))), Some((10, 10)));
        assert_eq!(with_own(Some((10_000, 20_000))), Some((100, 50)));
    }

    #[test]
    fn options_above_a_cap_are_refused_when_set_and_lowered_when_default() {
        let rules = [rule("{ max_visibility_timeout: 10s, max_attempts: 3 }")];
        let mut options = ClientOptions::default();
        bound(
            &rules,
            "q",
            &[Pattern::Queue],
            &mut options,
            |_| false,
            "f",
            Bounds::default(),
        )
        .unwrap();
        assert_eq!(options.visibility_timeout, Duration::from_secs(10));
        assert_eq!(options.max_attempts, 3);

        let mut options = ClientOptions {
            max_attempts: 50,
            ..Default::default()
        };
        let err = bound(
            &rules,
            "q",
            &[Pattern::Queue],
            &mut options,
            |name| name == "max_attempts",
            "inline_config.backend.options",
            Bounds::default(),
        )
        .unwrap_err();
        assert_eq!(err.reason, "OPTION_NOT_ALLOWED");
        assert!(err.message.contains("max_attempts = 50"), "{}", err.message);
    }
}
