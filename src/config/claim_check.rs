//! `namespaces.<ns>.claim_check`: payloads above a threshold go to one of
//! the `object_stores` and the message carries its key (the claim check),
//! and how `prism validate` checks both against the brokers' limits.

use std::time::Duration;

use serde::Deserialize;

use super::{
    validate::{Outcome, Report},
    GatewayConfig,
};
use crate::backends::{kafka::MAX_RECORD_BYTES, BackendKind};

/// NATS servers' default `max_payload`.
pub const NATS_DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// What a message's headers and metadata may take beside its payload
/// (PubSub allows 64 KiB of metadata).
pub const HEADER_ALLOWANCE: usize = 64 * 1024;
/// Smallest and largest delivered piece of a large payload.
pub const MIN_CHUNK_BYTES: usize = 64 * 1024;
pub const MAX_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// One namespace's claim check.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimCheckPolicy {
    /// The object store (a key of `object_stores`).
    pub store: String,
    /// Payloads larger than this many bytes are stored (default 256 KiB);
    /// must stay under the broker's message limit.
    #[serde(default = "default_threshold")]
    pub threshold: usize,
    /// A stored payload is delivered in pieces of at most this many bytes
    /// (default 1 MiB: gRPC clients take 4 MiB messages by default).
    #[serde(default = "default_chunk")]
    pub chunk_size: usize,
    /// Largest payload accepted (default 1 GiB).
    #[serde(default = "default_max_object")]
    pub max_object_bytes: u64,
    /// Objects older than this are deleted whatever became of their
    /// message (default 7 days): PubSub payloads go this way, and Queue
    /// payloads nobody acknowledged.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// A Queue payload is deleted once its message is acknowledged
    /// (default false: retention only). Turn on only where each message is
    /// consumed once: one consumer group per topic, no private (group-less)
    /// subscriptions, no Seek back — the first acknowledgement deletes the
    /// payload for every reader.
    #[serde(default)]
    pub delete_on_ack: bool,
    /// Uploads of this namespace's PublishStreams at once (default 8); each
    /// holds up to about 15 MiB while it runs, besides the piece being
    /// received (at most `limits.max_message_bytes`).
    #[serde(default = "default_max_uploads")]
    pub max_uploads: usize,
}

fn default_max_uploads() -> usize {
    8
}

fn default_threshold() -> usize {
    256 * 1024
}

/// Delivered pieces by default, and for a namespace with no claim check.
pub const DEFAULT_CHUNK_BYTES: usize = 1024 * 1024;

fn default_chunk() -> usize {
    DEFAULT_CHUNK_BYTES
}

fn default_max_object() -> u64 {
    1 << 30
}

fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// The largest message a backend's broker takes, where it has a limit.
pub fn broker_limit(kind: BackendKind) -> Option<usize> {
    match kind {
        BackendKind::Kafka => Some(MAX_RECORD_BYTES),
        BackendKind::Nats => Some(NATS_DEFAULT_MAX_PAYLOAD),
        _ => None,
    }
}

/// Object stores and every namespace's claim check.
pub fn check(r: &mut Report, cfg: &GatewayConfig) {
    for (name, spec) in &cfg.object_stores {
        let subject = format!("object store {name}");
        let problems = spec.problems();
        if problems.is_empty() {
            r.pass(&subject, spec.describe());
        }
        for p in problems {
            r.fail(&subject, p);
        }
    }
    for (ns, spec) in &cfg.namespaces {
        let Some(cc) = &spec.claim_check else {
            continue;
        };
        let subject = format!("namespace {ns} claim_check");
        let before = r.checks.len();
        if !cfg.object_stores.contains_key(&cc.store) {
            r.fail(
                &subject,
                format!(
                    "store `{}` is not one of object_stores ({})",
                    cc.store,
                    cfg.object_stores
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if cc.threshold == 0 {
            r.fail(&subject, "threshold must be at least 1 byte");
        }
        if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&cc.chunk_size) {
            r.fail(
                &subject,
                format!(
                    "chunk_size {} is outside {MIN_CHUNK_BYTES}..={MAX_CHUNK_BYTES} bytes",
                    cc.chunk_size
                ),
            );
        }
        if cc.max_object_bytes <= cc.threshold as u64 {
            r.fail(&subject, "max_object_bytes must exceed threshold");
        }
        if !(1..=1024).contains(&cc.max_uploads) {
            r.fail(&subject, "max_uploads must be 1 to 1024");
        }
        if cc.retention < Duration::from_secs(1) {
            r.fail(&subject, "retention must be at least 1s");
        }
        for backend in &spec.allowed_backends {
            let Some(kind) = cfg.backends.get(backend).map(|b| b.kind) else {
                continue;
            };
            if let Some(limit) = broker_limit(kind) {
                let room = limit - HEADER_ALLOWANCE;
                if cc.threshold > room {
                    r.fail(
                        &subject,
                        format!(
                            "threshold {} bytes would let messages of backend `{backend}` \
                             ({kind}) exceed its broker's limit of {limit} bytes; use at most \
                             {room} (the limit less {HEADER_ALLOWANCE} for headers)",
                            cc.threshold
                        ),
                    );
                }
            }
        }
        if r.checks[before..]
            .iter()
            .all(|c| c.outcome != Outcome::Fail)
        {
            r.pass(
                &subject,
                format!(
                    "payloads over {} bytes (up to {}) kept in store `{}`, delivered in pieces \
                     of {} bytes, deleted {}after {}",
                    cc.threshold,
                    cc.max_object_bytes,
                    cc.store,
                    cc.chunk_size,
                    if cc.delete_on_ack {
                        "on acknowledgement or "
                    } else {
                        ""
                    },
                    humantime::format_duration(cc.retention)
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{validate::validate, Source};

    fn report(claim_check: &str, stores: &str) -> String {
        let yaml = format!(
            r#"
backends:
  k: {{ type: kafka, url: "127.0.0.1:9092" }}
  m: {{ type: memory }}
object_stores:
{stores}
namespaces:
  ns:
    allowed_backends: [k, m]
    allowed_patterns: [queue]
    claim_check: {claim_check}
"#
        );
        let cfg = GatewayConfig::from_yaml(&yaml, &Source::Inline, &[("X", "x"); 0]).unwrap();
        validate(&cfg).text()
    }

    #[test]
    fn thresholds_stay_under_the_brokers_limits_and_stores_must_exist() {
        let local = "  files: { type: local, path: /var/lib/prism/claims }";
        let ok = report("{ store: files }", local);
        assert!(
            ok.contains("ok   namespace ns claim_check: payloads over 262144"),
            "{ok}"
        );
        assert!(
            ok.contains("ok   object store files: local directory"),
            "{ok}"
        );

        let over = report("{ store: files, threshold: 1000000 }", local);
        assert!(
            over.contains("FAIL namespace ns claim_check: threshold 1000000 bytes would let messages of backend `k` (kafka) exceed"),
            "{over}"
        );
        let unknown = report("{ store: elsewhere }", local);
        assert!(
            unknown.contains("store `elsewhere` is not one of object_stores (files)"),
            "{unknown}"
        );
        let chunk = report("{ store: files, chunk_size: 100 }", local);
        assert!(
            chunk.contains("FAIL namespace ns claim_check: chunk_size 100"),
            "{chunk}"
        );

        let s3 = "  b: { type: s3, bucket: claims, endpoint: \"http://127.0.0.1:9000\" }";
        let plain = report("{ store: b }", s3);
        assert!(
            plain.contains("FAIL object store b: endpoint `http://127.0.0.1:9000` is plain http"),
            "{plain}"
        );
    }
}
