//! Layered configuration: the file's text, then the environment. `${VAR}`
//! and `${VAR:-default}` in the text are filled from the environment (`$$`
//! is a literal `$`), the result is parsed as YAML (`yaml_serde`, the YAML
//! organisation's maintained serde_yaml) into [`GatewayConfig`], and the
//! well-known variables override what the file says: `PRISM_LISTEN`,
//! `PRISM_ADMIN_LISTEN`, `PRISM_BACKEND_<NAME>_URL`, and `DATABASE_URL`,
//! `REDIS_URL`, `NATS_URL`, `KAFKA_BROKERS` for the one backend of their
//! kind. A parse error names the field and its line.

use std::collections::BTreeMap;

use super::{BackendKind, ConfigError, GatewayConfig, Source};

/// Parses `text` (from `source`) in layers: interpolation, YAML, overrides.
pub(super) fn parse(
    text: &str,
    source: &Source,
    env: &dyn Env,
) -> Result<GatewayConfig, ConfigError> {
    let source_name = source.to_string();
    let text = interpolate(text, env).map_err(|var| ConfigError::MissingEnv {
        source_name: source_name.clone(),
        var,
    })?;
    let mut config: GatewayConfig =
        yaml_serde::from_str(&text).map_err(|e| ConfigError::Parse {
            source_name: source_name.clone(),
            message: describe_yaml_error(&e),
        })?;
    apply_env_overrides(&mut config, env, &source_name)?;
    Ok(config)
}

/// Reads environment variables; injectable so tests never touch the process
/// environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// The environment's layer. A listen address that does not parse is an
/// error, never silently the file's.
fn apply_env_overrides(
    config: &mut GatewayConfig,
    env: &dyn Env,
    source_name: &str,
) -> Result<(), ConfigError> {
    for (var, field) in [
        ("PRISM_LISTEN", &mut config.server.listen),
        ("PRISM_ADMIN_LISTEN", &mut config.server.admin_listen),
    ] {
        if let Some(value) = env.var(var) {
            *field = value.parse().map_err(|_| ConfigError::Parse {
                source_name: source_name.to_string(),
                message: format!(
                    "{var}={value:?} is not a socket address (host:port, e.g. 0.0.0.0:8980)"
                ),
            })?;
        }
    }
    if let Some(directives) = env.var("RUST_LOG").filter(|d| !d.is_empty()) {
        config.server.log_level = Some(directives);
    }
    // A conventional variable (DATABASE_URL, ...) addresses the one backend
    // of its kind; with several, only PRISM_BACKEND_<NAME>_URL is used.
    let mut per_kind: BTreeMap<BackendKind, usize> = BTreeMap::new();
    for spec in config.backends.values() {
        *per_kind.entry(spec.kind).or_default() += 1;
    }
    for (name, spec) in config.backends.iter_mut() {
        let specific = format!(
            "PRISM_BACKEND_{}_URL",
            name.to_ascii_uppercase().replace(['-', '.'], "_")
        );
        let conventional = match spec.kind {
            BackendKind::Postgres => Some("DATABASE_URL"),
            BackendKind::Redis => Some("REDIS_URL"),
            BackendKind::Nats => Some("NATS_URL"),
            BackendKind::Kafka => Some("KAFKA_BROKERS"),
            BackendKind::Memory | BackendKind::Sqlite => None,
        };
        let value = env.var(&specific).or_else(|| {
            conventional
                .filter(|_| per_kind.get(&spec.kind) == Some(&1))
                .and_then(|v| env.var(v))
        });
        if let Some(url) = value {
            spec.url = Some(url);
        }
    }
    Ok(())
}

/// Replaces `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`.
fn interpolate(text: &str, env: &dyn Env) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                out.push('$');
                rest = after;
                continue;
            };
            let expr = &body[..end];
            let (var, default) = match expr.split_once(":-") {
                Some((v, d)) => (v, Some(d)),
                None => (expr, None),
            };
            match env.var(var).or_else(|| default.map(str::to_string)) {
                Some(v) => out.push_str(&v),
                None => return Err(var.to_string()),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn describe_yaml_error(e: &yaml_serde::Error) -> String {
    let mut msg = e.to_string();
    if msg.contains("unknown field") {
        msg.push_str(" (check the spelling; README.md lists every field)");
    } else if msg.contains("unknown variant") {
        msg.push_str(" (use one of the listed values)");
    } else if msg.contains("missing field") {
        msg.push_str(" (add the field)");
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_ENV: [(&str, &str); 0] = [];

    fn parse_inline(yaml: &str, env: &dyn Env) -> Result<GatewayConfig, ConfigError> {
        parse(yaml, &Source::Inline, env)
    }

    #[test]
    fn interpolation_uses_env_and_defaults() {
        let env = [("A", "1")];
        assert_eq!(
            interpolate("x=${A} y=${B:-2} $$z", &env).unwrap(),
            "x=1 y=2 $z"
        );
        assert_eq!(interpolate("${MISSING}", &env), Err("MISSING".to_string()));
    }

    #[test]
    fn conventional_env_overrides_the_single_backend_of_its_kind() {
        let yaml = r#"
backends:
  pg: { type: postgres, url: "postgres://file/db" }
namespaces:
  ns: { allowed_backends: [pg], allowed_patterns: [queue] }
"#;
        let env = [
            ("DATABASE_URL", "postgres://env/db"),
            ("PRISM_LISTEN", "127.0.0.1:9999"),
        ];
        let cfg = parse_inline(yaml, &env).unwrap();
        assert_eq!(cfg.backends["pg"].url.as_deref(), Some("postgres://env/db"));
        assert_eq!(cfg.server.listen.to_string(), "127.0.0.1:9999");

        let env = [("PRISM_BACKEND_PG_URL", "postgres://specific/db")];
        let cfg = parse_inline(yaml, &env).unwrap();
        assert_eq!(
            cfg.backends["pg"].url.as_deref(),
            Some("postgres://specific/db")
        );
    }

    #[test]
    fn unknown_field_and_backend_type_are_named() {
        let yaml =
            "namespaces:\n  ns: { allowed_backends: [], allowed_patterns: [], sesion: {} }\n";
        let err = parse_inline(yaml, &NO_ENV).unwrap_err();
        assert!(err.to_string().contains("unknown field `sesion`"), "{err}");

        let yaml = "backends:\n  m: { type: mongo }\nnamespaces: {}\n";
        let err = parse_inline(yaml, &NO_ENV).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("unknown variant `mongo`") && msg.contains("postgres"),
            "{msg}"
        );
    }

    #[test]
    fn a_parse_error_names_the_field_and_its_line() {
        let yaml = "server:\n  shutdown_grace: 1s\nnamespaces:\n  ns:\n    allowed_backends: []\n    allowed_patterns: [key_value]\n    session: { idle_timeout: soon }\n";
        let err = parse_inline(yaml, &NO_ENV).unwrap_err().to_string();
        assert!(
            err.contains("idle_timeout") && err.contains("line 7"),
            "{err}"
        );
    }

    #[test]
    fn a_listen_address_that_does_not_parse_is_refused() {
        let yaml = "namespaces: {}\n";
        let err = parse_inline(yaml, &[("PRISM_LISTEN", "localhost")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("PRISM_LISTEN") && err.contains("localhost"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_variable_is_named() {
        let err = parse_inline("server: { listen: \"${PRISM_NOPE}\" }\n", &NO_ENV)
            .unwrap_err()
            .to_string();
        assert!(err.contains("PRISM_NOPE"), "{err}");
    }
}
