//! JWT verification (HS256, RS256): signature, issuer, audience and expiry,
//! then the configured claims give the namespace and roles.

use base64::Engine as _;
use jsonwebtoken::{errors::ErrorKind as JwtErrorKind, Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{AuthMethod, Principal};
use crate::{
    config::{JwtAlgorithm, JwtIssuerSpec},
    error::Error,
};

/// One trusted issuer.
pub struct JwtVerifier {
    issuer: String,
    key: DecodingKey,
    validation: Validation,
    namespace_claim: String,
    roles_claim: String,
    /// Namespaces its tokens may name; empty = any.
    namespaces: Vec<String>,
}

impl JwtVerifier {
    pub fn new(spec: &JwtIssuerSpec) -> Result<Self, String> {
        let key = spec.decoding_key()?;
        let algorithm = match spec.algorithm {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::RS256 => Algorithm::RS256,
        };
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&spec.issuer]);
        validation.set_audience(&[&spec.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // A token that is not valid yet is refused (within the leeway).
        validation.validate_nbf = true;
        validation.leeway = spec.leeway.as_secs();
        Ok(JwtVerifier {
            issuer: spec.issuer.clone(),
            key,
            validation,
            namespace_claim: spec.namespace_claim.clone(),
            roles_claim: spec.roles_claim.clone(),
            namespaces: spec.namespaces.clone(),
        })
    }
}

fn invalid(reason: &'static str, message: &str) -> Error {
    Error::unauthenticated(reason, message.to_string())
}

/// Reads `iss` without trusting it, only to pick the verifier.
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

pub fn verify(verifiers: &[JwtVerifier], token: &str) -> Result<Principal, Error> {
    if verifiers.is_empty() {
        return Err(invalid(
            "JWT_NOT_CONFIGURED",
            "jwt authentication is not configured on this gateway; use an api key",
        ));
    }
    let issuer = unverified_issuer(token)
        .ok_or_else(|| invalid("JWT_MALFORMED", "jwt is malformed or has no `iss` claim"))?;
    let verifier = verifiers
        .iter()
        .find(|v| v.issuer == issuer)
        .ok_or_else(|| {
            invalid(
                "JWT_UNKNOWN_ISSUER",
                "jwt issuer is not trusted by this gateway",
            )
        })?;
    let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
        token,
        &verifier.key,
        &verifier.validation,
    )
    .map_err(|e| match e.kind() {
        JwtErrorKind::ExpiredSignature => {
            invalid("JWT_EXPIRED", "jwt has expired; obtain a fresh token")
        }
        JwtErrorKind::ImmatureSignature => invalid(
            "JWT_NOT_YET_VALID",
            "jwt is not valid yet (`nbf` is in the future); check the issuer's clock",
        ),
        JwtErrorKind::InvalidAudience => {
            invalid("JWT_INVALID_AUDIENCE", "jwt audience is not this gateway's")
        }
        JwtErrorKind::InvalidIssuer => invalid(
            "JWT_INVALID_ISSUER",
            "jwt issuer is not trusted by this gateway",
        ),
        JwtErrorKind::InvalidSignature => {
            invalid("JWT_INVALID_SIGNATURE", "jwt signature does not verify")
        }
        JwtErrorKind::InvalidAlgorithm => invalid(
            "JWT_INVALID_ALGORITHM",
            "jwt algorithm is not the one configured for its issuer",
        ),
        JwtErrorKind::MissingRequiredClaim(_) => invalid(
            "JWT_MISSING_CLAIM",
            "jwt lacks a required claim (exp, iss, aud)",
        ),
        _ => invalid("JWT_MALFORMED", "jwt is malformed"),
    })?;
    let claims = data.claims;
    let namespace = claims
        .get(&verifier.namespace_claim)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Error::permission_denied(
                "JWT_NO_NAMESPACE",
                format!(
                    "jwt has no `{}` claim naming a namespace",
                    verifier.namespace_claim
                ),
            )
        })?
        .to_string();
    if !verifier.namespaces.is_empty() && !verifier.namespaces.contains(&namespace) {
        return Err(Error::permission_denied(
            "JWT_NAMESPACE_NOT_ALLOWED",
            format!(
                "issuer `{}` may not name namespace `{}`",
                verifier.issuer,
                namespace.chars().take(64).collect::<String>()
            ),
        ));
    }
    let roles = match claims.get(&verifier.roles_claim) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    };
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or("anonymous");
    Ok(Principal {
        identity: format!("jwt:{subject}"),
        namespace,
        roles,
        method: AuthMethod::Jwt,
    })
}
