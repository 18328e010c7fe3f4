//! The audit log: every session event (create, refresh, close, expire,
//! authentication failure) and every data call's outcome (session id,
//! identity, namespace, operation, resource, `ok` or the gRPC code, time)
//! as JSON lines on stdout or in a file (`audit:` in the config). Fields
//! listed in `audit.pii_fields` are masked — in audit records and in the
//! gateway's own log lines — as `hmac:<16 hex>`, a stable pseudonym keyed
//! with `audit.pseudonym_key`: records of one identity still match, and
//! without the key a guessed value cannot be checked against them.
//!
//! Records go to a writer thread through a channel, so no call waits on the
//! disk; nothing is dropped (the channel is unbounded and its depth is
//! counted).

use std::{
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Where audit records go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sink {
    #[default]
    None,
    Stdout,
    File,
}

/// `audit:` in the config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub sink: Sink,
    /// The file for `sink: file` (appended to; created when missing).
    pub path: Option<std::path::PathBuf>,
    /// Record fields to mask: any of `identity`, `session_id`, `resource`.
    pub pii_fields: Vec<String>,
    /// The HMAC key of the pseudonyms (at least 16 bytes; use
    /// `${PRISM_AUDIT_KEY}`); required when `pii_fields` is set.
    pub pseudonym_key: Option<String>,
}

/// The shortest `pseudonym_key` accepted.
pub const MIN_KEY_BYTES: usize = 16;

impl AuditConfig {
    /// Why the config cannot mask PII, if it cannot: `pii_fields` without a
    /// `pseudonym_key` of at least [`MIN_KEY_BYTES`] would make pseudonyms
    /// hashes anyone can check a guess against.
    pub fn key_problem(&self) -> Option<String> {
        let keyed = self
            .pseudonym_key
            .as_ref()
            .is_some_and(|k| k.len() >= MIN_KEY_BYTES);
        (!self.pii_fields.is_empty() && !keyed).then(|| {
            format!(
                "pii_fields needs pseudonym_key of at least {MIN_KEY_BYTES} bytes \
                 (e.g. ${{PRISM_AUDIT_KEY}}): without a key a pseudonym is a hash anyone can \
                 check a guess against"
            )
        })
    }
}

/// The record fields that may be marked PII.
pub const MASKABLE: [&str; 3] = ["identity", "session_id", "resource"];

/// One audit record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    pub time: String,
    /// `session.create`, `session.refresh`, `session.close`,
    /// `session.expire`, `session.fail`, `session.shutdown`,
    /// `session.auth_failure`, or `data`.
    pub event: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub session_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub identity: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// `service/method` for data calls.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub operation: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// `ok`, or the gRPC code / reason.
    pub outcome: String,
}

/// The gateway's audit sink.
pub struct Audit {
    tx: Option<mpsc::Sender<String>>,
    mask_identity: bool,
    mask_session: bool,
    mask_resource: bool,
    /// The pseudonyms' HMAC key.
    key: Arc<[u8]>,
    /// Records handed to the writer and not yet written.
    pending: Arc<AtomicU64>,
}

/// A stable pseudonym for a PII value under `key`: `hmac:` and the first
/// 16 hex digits of HMAC-SHA256(key, value).
pub fn pseudonym(key: &[u8], value: &str) -> String {
    if value.is_empty() {
        return String::new();
    }
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(value.as_bytes());
    format!("hmac:{}", &hex::encode(mac.finalize().into_bytes())[..16])
}

impl Audit {
    /// No sink: records are not kept; masking of log lines still applies.
    pub fn disabled(config: &AuditConfig) -> Self {
        let pii = &config.pii_fields;
        Audit {
            tx: None,
            mask_identity: pii.iter().any(|f| f == "identity"),
            mask_session: pii.iter().any(|f| f == "session_id"),
            mask_resource: pii.iter().any(|f| f == "resource"),
            key: config
                .pseudonym_key
                .as_deref()
                .unwrap_or_default()
                .as_bytes()
                .into(),
            pending: Arc::default(),
        }
    }

    fn mask(&self, value: &str) -> String {
        pseudonym(&self.key, value)
    }

    /// Opens the configured sink and starts its writer thread.
    pub fn open(config: &AuditConfig) -> Result<Self, String> {
        if let Some(problem) = config.key_problem() {
            return Err(format!("audit: {problem}"));
        }
        let mut audit = Self::disabled(config);
        let mut out: Box<dyn Write + Send> = match config.sink {
            Sink::None => return Ok(audit),
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::File => {
                let path = config
                    .path
                    .as_ref()
                    .ok_or("audit.sink file needs audit.path")?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("audit: cannot create {}: {e}", dir.display()))?;
                }
                Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|e| format!("audit: cannot open {}: {e}", path.display()))?,
                )
            }
        };
        let (tx, rx) = mpsc::channel::<String>();
        let pending = audit.pending.clone();
        // Ends when every sender is gone (the gateway dropped its Audit).
        std::thread::Builder::new()
            .name("prism-audit".into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    let mut ok = writeln!(out, "{line}").is_ok();
                    pending.fetch_sub(1, Ordering::AcqRel);
                    // Write what else is queued, then flush once.
                    while let Ok(line) = rx.try_recv() {
                        ok &= writeln!(out, "{line}").is_ok();
                        pending.fetch_sub(1, Ordering::AcqRel);
                    }
                    ok &= out.flush().is_ok();
                    if !ok {
                        eprintln!("prism: audit sink write failed");
                    }
                }
            })
            .map_err(|e| format!("audit writer thread: {e}"))?;
        audit.tx = Some(tx);
        Ok(audit)
    }

    /// An identity as logs and records show it.
    pub fn identity(&self, identity: &str) -> String {
        if self.mask_identity {
            self.mask(identity)
        } else {
            identity.to_string()
        }
    }

    /// Whether records are kept (callers skip building them otherwise).
    pub fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Records not yet written.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    /// Waits until every record handed over is written, or `limit` passes;
    /// returns how many are still unwritten (for shutdown).
    pub async fn wait_written(&self, limit: std::time::Duration) -> u64 {
        let _ = tokio::time::timeout(limit, async {
            while self.pending() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
        .await;
        self.pending()
    }

    /// Writes a record (masked); never blocks.
    pub fn record(&self, mut r: Record) {
        let Some(tx) = &self.tx else { return };
        if r.time.is_empty() {
            r.time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        }
        r.identity = self.identity(&r.identity);
        if self.mask_session {
            r.session_id = self.mask(&r.session_id);
        }
        if self.mask_resource {
            r.resource = self.mask(&r.resource);
        }
        let line = serde_json::to_string(&r).unwrap_or_default();
        self.pending.fetch_add(1, Ordering::AcqRel);
        if tx.send(line).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            tracing::error!("audit writer is gone; a record was not written");
        }
    }

    /// A session event's record.
    pub fn session(&self, event: &'static str, session: &crate::call::SessionRef) {
        if !self.is_enabled() {
            return;
        }
        self.record(Record {
            event,
            session_id: session.session_id.clone(),
            identity: session.identity.clone(),
            namespace: session.namespace.clone(),
            outcome: "ok".into(),
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_stable_keyed_pseudonyms() {
        let key = b"0123456789abcdef";
        assert_eq!(
            pseudonym(key, "api-key:test"),
            pseudonym(key, "api-key:test")
        );
        assert_ne!(
            pseudonym(key, "api-key:test"),
            pseudonym(key, "api-key:other")
        );
        assert_ne!(
            pseudonym(key, "api-key:test"),
            pseudonym(b"another key of 16", "api-key:test"),
            "the key decides the pseudonym"
        );
        assert!(pseudonym(key, "x").starts_with("hmac:"));
        assert_eq!(pseudonym(key, "x").len(), "hmac:".len() + 16);
        assert_eq!(pseudonym(key, ""), "");
        let config = AuditConfig {
            pii_fields: vec!["identity".into()],
            pseudonym_key: Some("0123456789abcdef".into()),
            ..Default::default()
        };
        assert_eq!(
            Audit::disabled(&config).identity("alice"),
            pseudonym(key, "alice")
        );
        assert_eq!(
            Audit::disabled(&AuditConfig::default()).identity("alice"),
            "alice"
        );
        let unkeyed = AuditConfig {
            pseudonym_key: None,
            ..config
        };
        assert!(Audit::open(&unkeyed).is_err(), "masking needs a key");
    }
}
