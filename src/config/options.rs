//! A client config's `options` (a named config's `options:`, an inline
//! config's `backend.options`), parsed and range-checked once when the
//! config is resolved — at load for named configs (`prism validate`
//! reports a bad one), at CreateSession for inline ones — into typed values
//! the services read. No call parses an option string.

use std::time::Duration;

use crate::error::Error;

/// Partitions of a topic the backend creates (Kafka, NATS).
const PARTITIONS: std::ops::RangeInclusive<i32> = 1..=1024;
/// How long a delivered message stays invisible to other consumers.
const VISIBILITY: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(12 * 3600);
/// Deliveries of a message before it is dead-lettered.
const MAX_ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=1000;

/// The typed options of a client config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Partitions of topics the backend creates (Queue and PubSub on
    /// Kafka and NATS); default 1.
    pub partitions: i32,
    /// Queue: how long a delivered, unacknowledged message stays invisible
    /// before it is delivered again; default 30s.
    pub visibility_timeout: Duration,
    /// Queue: deliveries before a message is dead-lettered; default 5.
    pub max_attempts: u32,
    /// The only Reader collection the config's sessions may read, when
    /// set.
    pub collection: Option<String>,
    /// The only Transact mailbox the config's sessions may write, read or
    /// process, when set.
    pub mailbox: Option<String>,
    /// The only Transact tables the config's sessions may write, when set
    /// (comma-separated in the option).
    pub tables: Option<Vec<String>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            partitions: 1,
            visibility_timeout: Duration::from_secs(30),
            max_attempts: 5,
            collection: None,
            mailbox: None,
            tables: None,
        }
    }
}

impl ClientOptions {
    /// The option names a config may set.
    pub const NAMES: [&'static str; 6] = [
        "partitions",
        "visibility_timeout",
        "max_attempts",
        "collection",
        "mailbox",
        "tables",
    ];

    /// Parses `options`; `field` names where they came from (e.g.
    /// `configs.orders.options`) in the error, which is INVALID_ARGUMENT
    /// `INVALID_CONFIG` naming the option and its allowed values.
    pub fn parse<'a>(
        field: &str,
        options: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<ClientOptions, Error> {
        let mut parsed = ClientOptions::default();
        for (name, raw) in options {
            // Names come from clients too: bounded in messages and metadata.
            let name: String = name.chars().take(64).collect();
            let invalid = |allowed: &str| {
                Error::invalid_argument(
                    "INVALID_CONFIG",
                    format!(
                        "{field}.{name} = `{}` is not valid: {allowed}",
                        raw.chars().take(64).collect::<String>()
                    ),
                )
                .with("field", format!("{field}.{name}"))
            };
            match name.as_str() {
                "partitions" => {
                    parsed.partitions = raw
                        .trim()
                        .parse()
                        .ok()
                        .filter(|p| PARTITIONS.contains(p))
                        .ok_or_else(|| {
                            invalid(&format!(
                                "a whole number from {} to {}",
                                PARTITIONS.start(),
                                PARTITIONS.end()
                            ))
                        })?;
                }
                "visibility_timeout" => {
                    parsed.visibility_timeout = humantime::parse_duration(raw.trim())
                        .ok()
                        .filter(|d| VISIBILITY.contains(d))
                        .ok_or_else(|| invalid("a duration from 100ms to 12h, e.g. 30s"))?;
                }
                "max_attempts" => {
                    parsed.max_attempts = raw
                        .trim()
                        .parse()
                        .ok()
                        .filter(|n| MAX_ATTEMPTS.contains(n))
                        .ok_or_else(|| {
                            invalid(&format!(
                                "a whole number from {} to {}",
                                MAX_ATTEMPTS.start(),
                                MAX_ATTEMPTS.end()
                            ))
                        })?;
                }
                "collection" | "mailbox" => {
                    if raw.is_empty() || raw.len() > 200 {
                        return Err(invalid("a name of 1 to 200 bytes"));
                    }
                    let slot = if name == "collection" {
                        &mut parsed.collection
                    } else {
                        &mut parsed.mailbox
                    };
                    *slot = Some(raw.clone());
                }
                "tables" => {
                    let tables: Vec<String> =
                        raw.split(',').map(|t| t.trim().to_string()).collect();
                    if tables.len() > 64 || tables.iter().any(|t| t.is_empty() || t.len() > 200) {
                        return Err(invalid(
                            "a comma-separated list of 1 to 64 table names of 1 to 200 bytes",
                        ));
                    }
                    parsed.tables = Some(tables);
                }
                _ => {
                    return Err(Error::invalid_argument(
                        "INVALID_CONFIG",
                        format!(
                            "{field}.{name} is not an option; the options are {}",
                            Self::NAMES.join(", ")
                        ),
                    )
                    .with("field", format!("{field}.{name}")))
                }
            }
        }
        Ok(parsed)
    }

    /// Refuses a collection other than the config's own, when it names one.
    pub fn allow_collection(&self, collection: &str) -> Result<(), Error> {
        allow(
            "collection",
            "COLLECTION_NOT_ALLOWED",
            self.collection.as_slice(),
            collection,
        )
    }

    /// Refuses a mailbox other than the config's own, when it names one.
    pub fn allow_mailbox(&self, mailbox: &str) -> Result<(), Error> {
        allow(
            "mailbox",
            "MAILBOX_NOT_ALLOWED",
            self.mailbox.as_slice(),
            mailbox,
        )
    }

    /// Refuses a table the config's `tables` does not list, when it has one.
    pub fn allow_table(&self, table: &str) -> Result<(), Error> {
        allow(
            "tables",
            "TABLE_NOT_ALLOWED",
            self.tables.as_deref().unwrap_or_default(),
            table,
        )
    }
}

/// PERMISSION_DENIED `reason` when `allowed` is set and does not hold
/// `name`.
fn allow(
    option: &'static str,
    reason: &'static str,
    allowed: &[String],
    name: &str,
) -> Result<(), Error> {
    if allowed.is_empty() || allowed.iter().any(|a| a == name) {
        return Ok(());
    }
    let shown: String = name.chars().take(64).collect();
    Err(Error::permission_denied(
        reason,
        format!(
            "this session's config is limited to {option} {}; `{shown}` is not one of them",
            allowed.join(", ")
        ),
    )
    .with("option", option)
    .with("allowed", allowed.join(",")))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<ClientOptions, Error> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ClientOptions::parse("configs.jobs.options", &map)
    }

    #[test]
    fn no_options_take_the_defaults() {
        assert_eq!(parse(&[]).unwrap(), ClientOptions::default());
    }

    #[test]
    fn every_option_parses_into_its_type() {
        let o = parse(&[
            ("partitions", "6"),
            ("visibility_timeout", "400ms"),
            ("max_attempts", "3"),
            ("collection", "orders"),
            ("mailbox", "order-events"),
        ])
        .unwrap();
        assert_eq!(o.partitions, 6);
        assert_eq!(o.visibility_timeout, Duration::from_millis(400));
        assert_eq!(o.max_attempts, 3);
        assert_eq!(o.collection.as_deref(), Some("orders"));
        assert_eq!(o.mailbox.as_deref(), Some("order-events"));
    }

    #[test]
    fn a_bad_value_names_the_field_and_the_allowed_range() {
        for (name, raw, allowed) in [
            ("partitions", "0", "from 1 to 1024"),
            ("partitions", "2000", "from 1 to 1024"),
            ("partitions", "six", "from 1 to 1024"),
            ("visibility_timeout", "10ms", "from 100ms to 12h"),
            ("visibility_timeout", "soon", "from 100ms to 12h"),
            ("max_attempts", "0", "from 1 to 1000"),
            ("max_attempts", "-1", "from 1 to 1000"),
            ("collection", "", "1 to 200 bytes"),
        ] {
            let e = parse(&[(name, raw)]).unwrap_err();
            assert_eq!(e.reason, "INVALID_CONFIG");
            assert!(
                e.message.contains(&format!("configs.jobs.options.{name}")),
                "{}",
                e.message
            );
            assert!(e.message.contains(allowed), "{}", e.message);
        }
    }

    #[test]
    fn an_unknown_option_is_refused_with_the_known_ones() {
        let e = parse(&[("partitons", "3")]).unwrap_err();
        assert!(e.message.contains("configs.jobs.options.partitons"));
        assert!(e.message.contains("partitions, visibility_timeout"));
    }
}
