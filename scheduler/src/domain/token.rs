//! API token and browser session secrets: how they are made and how they are recognised
//! without being stored.
//!
//! Secrets are 256 random bits, so a single SHA-256 is enough to store
//! them safely (no password stretching is needed for values nobody can
//! guess), and it keeps authentication cheap on every request.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Every secret starts with this, so a leaked one is easy to spot in logs and scanners.
pub const SECRET_PREFIX: &str = "htp_";

/// A fresh token secret: the prefix and 32 random bytes, base64url.
pub fn generate_secret() -> String {
    random_secret(SECRET_PREFIX)
}

/// A browser session's secret: as random as a token's, and told apart by
/// its prefix (one is never taken for the other).
pub fn generate_session_secret() -> String {
    random_secret("hts_")
}

fn random_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Shortest secret an operator may configure (`HELIOTROPE_ADMIN_TOKEN`).
pub const MIN_CONFIGURED_SECRET_LEN: usize = 16;

/// Checks a secret chosen by an operator: long enough not to be guessed,
/// and printable ASCII so that it survives an HTTP header.
pub fn check_configured_secret(secret: &str) -> Result<(), super::ValidationError> {
    if secret.len() < MIN_CONFIGURED_SECRET_LEN || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(super::ValidationError::new(
            "HELIOTROPE_ADMIN_TOKEN",
            format!("must be at least {MIN_CONFIGURED_SECRET_LEN} printable ASCII characters without spaces"),
        ));
    }
    Ok(())
}

/// What is stored and looked up in place of the secret.
pub fn secret_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_distinct_and_prefixed() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(a.len(), SECRET_PREFIX.len() + 43);
        assert_ne!(secret_digest(&a), secret_digest(&b));
        assert_eq!(secret_digest(&a), secret_digest(&a));
        assert!(check_configured_secret(&a).is_ok());
    }

    #[test]
    fn configured_secrets_must_be_strong_enough() {
        assert!(check_configured_secret("short").is_err());
        assert!(check_configured_secret("sixteen chars ok").is_err(), "no spaces");
        assert!(check_configured_secret("0123456789abcdef").is_ok());
    }
}
