//! Session tokens and ids. A token is 256 random bits, opaque to clients and
//! kept by the gateway only as its SHA-256 digest.

use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub type TokenDigest = [u8; 32];

/// A fresh token and its digest.
pub fn new_token() -> (String, TokenDigest) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = format!(
        "prism_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let digest = digest(&token);
    (token, digest)
}

/// Whether `token` has the shape of one this gateway makes (`prism_` and 43
/// URL-safe base64 characters): anything else is refused without a lookup.
pub fn well_formed(token: &str) -> bool {
    token.len() == 49
        && token.starts_with("prism_")
        && token.as_bytes()[6..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// A session id: public, safe to log, unrelated to the token.
pub fn new_session_id() -> String {
    let mut bytes = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("sess-{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let (a, da) = new_token();
        let (b, db) = new_token();
        assert_ne!(a, b);
        assert_ne!(da, db);
        assert!(a.len() >= 6 + 43, "256 bits in base64 is 43 characters");
        assert_eq!(digest(&a), da);
    }

    #[test]
    fn only_tokens_of_our_shape_are_well_formed() {
        for _ in 0..100 {
            assert!(well_formed(&new_token().0));
        }
        let (t, _) = new_token();
        for bad in [
            "",
            "prism_",
            "prism_not-a-token",
            &t[..48],
            &format!("{t}x"),
            &t.replace("prism_", "prosm_"),
            &format!("prism_{}", "é".repeat(21)),
            &format!("prism_{}", "/".repeat(43)),
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
    }
}
