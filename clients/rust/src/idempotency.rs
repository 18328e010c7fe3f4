//! Identities of logical writes: made once per write, before its first
//! attempt, and sent unchanged with every retry, so the gateway applies
//! the write once and answers each retry with the first outcome.

use prism_proto::keyvalue::v1::IdempotencyToken;
use rand::RngCore;

/// A random (version 4) UUID, as text.
pub(crate) fn new_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A KeyValue idempotency token generated now.
pub(crate) fn token() -> IdempotencyToken {
    IdempotencyToken {
        id: new_id(),
        generated_at: Some(std::time::SystemTime::now().into()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_version_4_uuids_and_differ() {
        let (a, b) = (super::new_id(), super::new_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }
}
