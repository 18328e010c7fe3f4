//! A load scenario file: ghz's JSON config keys (`call`, `host`, `total` or
//! `duration`, `concurrency`, `connections`, `rps`, `data`, `metadata`,
//! `insecure`, `timeout`; durations as Go-style strings), plus an `x-prism`
//! block that only `prism-loadtest` reads (ghz ignores unknown keys): the
//! session to open for `{{.SessionToken}}`, data to seed first, and
//! subscribers to keep open during the run.

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde::{Deserialize, Deserializer, Serialize};

/// Every run is bounded: these are the largest a file or flag may ask for.
pub const MAX_TOTAL: u64 = 5_000_000;
pub const MAX_DURATION: Duration = Duration::from_secs(600);
pub const MAX_CONCURRENCY: usize = 10_000;
pub const MAX_CONNECTIONS: usize = 1_000;

/// ghz's default request count when neither `total` nor `duration` is set.
const DEFAULT_TOTAL: u64 = 200;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Scenario {
    /// `package.Service/Method` (or `package.Service.Method`).
    pub call: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(
        default,
        deserialize_with = "go_duration",
        serialize_with = "go_duration_out",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration: Option<Duration>,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Requests per second over all workers; ghz's older name was `qps`.
    #[serde(default, alias = "qps", skip_serializing_if = "Option::is_none")]
    pub rps: Option<u64>,
    #[serde(
        default,
        deserialize_with = "go_duration",
        serialize_with = "go_duration_out",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// One request object, or an array used round robin (as ghz does).
    #[serde(default)]
    pub data: serde_json::Value,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(rename = "x-prism", default, skip_serializing_if = "Option::is_none")]
    pub prism: Option<Setup>,
}

/// What `prism-loadtest` prepares before a run.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    /// The session whose token fills `{{.SessionToken}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionSetup>,
    /// Calls made (and checked) before the measured run, e.g. the keys a
    /// Get scenario reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<Seed>,
    /// Streams held open (and drained) while the run lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribers: Option<Subscribers>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSetup {
    pub api_key: String,
    pub config_name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    pub call: String,
    pub data: serde_json::Value,
    pub total: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribers {
    pub call: String,
    pub data: serde_json::Value,
    pub count: usize,
}

fn default_concurrency() -> usize {
    50
}

fn default_connections() -> usize {
    1
}

fn go_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    text.filter(|t| !t.is_empty() && t != "0s" && t != "0")
        .map(|t| parse_duration(&t).map_err(serde::de::Error::custom))
        .transpose()
}

fn go_duration_out<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
        None => s.serialize_none(),
    }
}

/// Go's duration syntax as ghz writes it: `10s`, `500ms`, `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("duration `{text}`: {e}"))
}

/// A run's bounds after defaults and command-line overrides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub total: Option<u64>,
    pub duration: Option<Duration>,
    pub concurrency: usize,
    pub connections: usize,
    pub rps: Option<u64>,
    pub timeout: Duration,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Scenario, String> {
        let scenario: Scenario = serde_json::from_str(text).map_err(|e| e.to_string())?;
        match &scenario.data {
            serde_json::Value::Object(_) | serde_json::Value::Null => {}
            serde_json::Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.is_object()) => {}
            _ => return Err("`data` must be an object or a non-empty array of objects".into()),
        }
        Ok(scenario)
    }

    /// The name used in reports: `name`, or the call's method.
    pub fn title(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.call.clone())
    }

    /// ghz's rules: a duration, when given, ends the run and the total is
    /// ignored; otherwise `total` (default 200). Everything is capped.
    pub fn bounds(&self) -> Result<Bounds, String> {
        let duration = self.duration;
        let total = match duration {
            Some(d) if d > MAX_DURATION => {
                return Err(format!(
                    "duration {d:?} is over the limit of {MAX_DURATION:?}"
                ))
            }
            Some(_) => None,
            None => Some(self.total.unwrap_or(DEFAULT_TOTAL)),
        };
        if let Some(t) = total {
            if t == 0 || t > MAX_TOTAL {
                return Err(format!("total must be 1..={MAX_TOTAL}, not {t}"));
            }
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(format!(
                "concurrency must be 1..={MAX_CONCURRENCY}, not {}",
                self.concurrency
            ));
        }
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            return Err(format!(
                "connections must be 1..={MAX_CONNECTIONS}, not {}",
                self.connections
            ));
        }
        if self.rps == Some(0) {
            return Err("rps must be at least 1 (leave it out for no limit)".into());
        }
        // ghz: more workers than requests is pointless.
        let concurrency = match total {
            Some(t) => self.concurrency.min(t as usize),
            None => self.concurrency,
        };
        Ok(Bounds {
            total,
            duration,
            concurrency,
            connections: self.connections.min(concurrency),
            rps: self.rps,
            timeout: self.timeout.unwrap_or(Duration::from_secs(20)),
        })
    }

    /// The request objects, one per element of `data` (`{}` when absent).
    pub fn data_items(&self) -> Vec<serde_json::Value> {
        match &self.data {
            serde_json::Value::Array(items) => items.clone(),
            serde_json::Value::Null => vec![serde_json::json!({})],
            other => vec![other.clone()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ghz_keys_parse_with_their_defaults_and_rules() {
        let s = Scenario::parse(
            r#"{"call": "a.B/C", "host": "127.0.0.1:1", "insecure": true,
                "data": {"k": "v"}, "metadata": {"m": "1"}}"#,
        )
        .unwrap();
        let b = s.bounds().unwrap();
        assert_eq!(b.total, Some(200));
        assert_eq!(b.concurrency, 50);
        assert_eq!(b.connections, 1);
        assert_eq!(b.timeout, Duration::from_secs(20));

        let s = Scenario::parse(
            r#"{"call": "a.B/C", "total": 10, "duration": "1m30s", "qps": 5,
                "concurrency": 4, "connections": 8, "timeout": "250ms"}"#,
        )
        .unwrap();
        let b = s.bounds().unwrap();
        assert_eq!(b.total, None, "a duration overrides total, as in ghz");
        assert_eq!(b.duration, Some(Duration::from_secs(90)));
        assert_eq!(b.rps, Some(5));
        assert_eq!(b.connections, 4, "no more connections than workers");
        assert_eq!(b.timeout, Duration::from_millis(250));

        let few = Scenario::parse(r#"{"call": "a.B/C", "total": 3}"#).unwrap();
        assert_eq!(few.bounds().unwrap().concurrency, 3);
    }

    #[test]
    fn runs_beyond_the_limits_are_refused() {
        for bad in [
            r#"{"call": "a.B/C", "total": 0}"#,
            r#"{"call": "a.B/C", "total": 99000000}"#,
            r#"{"call": "a.B/C", "duration": "2h"}"#,
            r#"{"call": "a.B/C", "concurrency": 0}"#,
            r#"{"call": "a.B/C", "rps": 0}"#,
        ] {
            let s = Scenario::parse(bad).unwrap();
            assert!(s.bounds().is_err(), "{bad}");
        }
        assert!(Scenario::parse(r#"{"call": "a.B/C", "data": [1]}"#).is_err());
        assert!(Scenario::parse(r#"{"call": "a.B/C", "duration": "soon"}"#).is_err());
    }
}
