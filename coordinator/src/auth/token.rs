//! Token secrets: generation, hashing, and reading them from a request.
//!
//! A secret is `evt_` followed by 64 hex digits (32 random bytes from the operating system's
//! generator through `rand`'s thread RNG). Only its SHA-256 is stored: with 256 bits of
//! entropy there is nothing to brute-force, so a slow password hash would add nothing.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of every token secret (lets secret scanners recognise leaked ones).
pub const SECRET_PREFIX: &str = "evt_";

/// Length of a secret: the prefix and 64 hex digits.
pub const SECRET_LEN: usize = SECRET_PREFIX.len() + 64;

/// A freshly generated token: its public id and its secret (shown once).
#[derive(Debug, Clone)]
pub struct NewSecret {
    /// Public handle, `tok_` and 12 hex digits.
    pub token_id: String,
    /// The bearer secret.
    pub secret: String,
    /// SHA-256 of `secret`, what the store keeps.
    pub hash: [u8; 32],
}

/// Generates a token id and secret.
pub fn generate() -> NewSecret {
    let mut rng = rand::rng();
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let mut id = [0u8; 6];
    rng.fill_bytes(&mut id);
    let secret = format!("{SECRET_PREFIX}{}", hex::encode(secret));
    NewSecret {
        token_id: format!("tok_{}", hex::encode(id)),
        hash: hash(&secret),
        secret,
    }
}

/// SHA-256 of a secret.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `text` has the shape of a secret (prefix, length, hex digits); a cheap check
/// before hashing anything a client sends.
pub fn looks_like_secret(text: &str) -> bool {
    text.len() == SECRET_LEN
        && text.starts_with(SECRET_PREFIX)
        && text[SECRET_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
}

/// What an `authorization` header carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented<'a> {
    /// No `authorization` header.
    Missing,
    /// A header that is not `Bearer <secret>`.
    Malformed,
    /// A bearer secret (not yet checked).
    Bearer(&'a str),
}

/// Reads the bearer secret of an `authorization` header value.
pub fn presented(header: Option<&http::HeaderValue>) -> Presented<'_> {
    let Some(value) = header else {
        return Presented::Missing;
    };
    let Ok(text) = value.to_str() else {
        return Presented::Malformed;
    };
    match text.split_once(' ') {
        Some((scheme, secret)) if scheme.eq_ignore_ascii_case("bearer") => {
            let secret = secret.trim();
            if looks_like_secret(secret) {
                Presented::Bearer(secret)
            } else {
                Presented::Malformed
            }
        }
        _ => Presented::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_have_the_documented_shape_and_differ() {
        let a = generate();
        let b = generate();
        assert!(looks_like_secret(&a.secret), "{}", a.secret);
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.token_id, b.token_id);
        assert_eq!(a.hash, hash(&a.secret));
        assert!(a.token_id.starts_with("tok_") && a.token_id.len() == 16);
    }

    #[test]
    fn bearer_headers_are_read_strictly() {
        let secret = generate().secret;
        let header = http::HeaderValue::from_str(&format!("Bearer {secret}")).unwrap();
        assert_eq!(presented(Some(&header)), Presented::Bearer(secret.as_str()));
        let lower = http::HeaderValue::from_str(&format!("bearer {secret}")).unwrap();
        assert_eq!(presented(Some(&lower)), Presented::Bearer(secret.as_str()));
        assert_eq!(presented(None), Presented::Missing);
        for bad in ["Basic abc", "Bearer", "Bearer evt_xyz", "token", ""] {
            let value = http::HeaderValue::from_str(bad).unwrap();
            assert_eq!(presented(Some(&value)), Presented::Malformed, "{bad}");
        }
    }
}
