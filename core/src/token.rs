//! Tokens: SHA-256 for lookup, AES-256-GCM at rest when `ENCRYPTION_KEY` is set (D15).
//!
//! Tokens are secrets: nothing here implements `Display` or logs a token. Only
//! [`short_hash`] may appear in logs.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use sha2::{Digest, Sha256};

/// SHA-256 of a token: the lookup key stored in `token_hash`.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The first 8 hex digits of the token's hash: safe to log, enough to correlate.
pub fn short_hash(token: &str) -> String {
    hex::encode(&hash(token)[..4])
}

/// Errors reading or using token secrets.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// `ENCRYPTION_KEY` is not base64 of exactly 32 bytes.
    #[error("ENCRYPTION_KEY must be base64 of exactly 32 bytes")]
    BadKey,
    /// A stored secret could not be decrypted (wrong or rotated key, or corrupt row).
    #[error("stored token secret could not be decrypted (wrong ENCRYPTION_KEY?)")]
    Decrypt,
    /// A stored plain secret is not UTF-8.
    #[error("stored token secret is not UTF-8")]
    NotUtf8,
}

/// Seals and opens `token_secret` values. Without a key, secrets are stored as plain UTF-8.
#[derive(Clone)]
pub struct TokenCipher {
    key: Option<Aes256Gcm>,
}

impl std::fmt::Debug for TokenCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCipher")
            .field("encrypted", &self.key.is_some())
            .finish()
    }
}

const NONCE_LEN: usize = 12;

impl TokenCipher {
    /// No encryption: secrets are stored as plain UTF-8.
    pub fn plain() -> TokenCipher {
        TokenCipher { key: None }
    }

    /// From `ENCRYPTION_KEY` (base64, 32 bytes).
    pub fn from_base64_key(key: &str) -> Result<TokenCipher, TokenError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| TokenError::BadKey)?;
        if bytes.len() != 32 {
            return Err(TokenError::BadKey);
        }
        let key = Key::<Aes256Gcm>::from_slice(&bytes);
        Ok(TokenCipher {
            key: Some(Aes256Gcm::new(key)),
        })
    }

    /// From an optional key: `None` means plain.
    pub fn from_optional_key(key: Option<&str>) -> Result<TokenCipher, TokenError> {
        key.map_or(Ok(TokenCipher::plain()), TokenCipher::from_base64_key)
    }

    /// From the `ENCRYPTION_KEY` setting of either binary: unset means plain.
    pub fn from_setting(key: Option<&secrecy::SecretString>) -> Result<TokenCipher, TokenError> {
        use secrecy::ExposeSecret;
        TokenCipher::from_optional_key(key.map(|k| k.expose_secret()))
    }

    /// Whether secrets are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// The value to store in `token_secret`: `nonce || ciphertext` when encrypting.
    pub fn seal(&self, token: &str) -> Vec<u8> {
        match &self.key {
            None => token.as_bytes().to_vec(),
            Some(cipher) => {
                let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
                // Encryption with a valid key and in-memory buffers cannot fail.
                let ct = cipher.encrypt(&nonce, token.as_bytes()).unwrap_or_default();
                let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&ct);
                out
            }
        }
    }

    /// The token from a stored `token_secret`.
    pub fn open(&self, stored: &[u8]) -> Result<String, TokenError> {
        let plain = match &self.key {
            None => stored.to_vec(),
            Some(cipher) => {
                if stored.len() < NONCE_LEN {
                    return Err(TokenError::Decrypt);
                }
                let (nonce, ct) = stored.split_at(NONCE_LEN);
                cipher
                    .decrypt(Nonce::from_slice(nonce), ct)
                    .map_err(|_| TokenError::Decrypt)?
            }
        };
        String::from_utf8(plain).map_err(|_| TokenError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "HwAeAR0CHAMbBBoFGQYYBxcIFgkVChQLEwwSDREOEA8=";

    #[test]
    fn encrypted_round_trip_and_wrong_key_fails() {
        let a = TokenCipher::from_base64_key(KEY_A).unwrap();
        let sealed = a.seal("secret-token");
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "ciphertext must not hold the token"
        );
        assert_eq!(a.open(&sealed).unwrap(), "secret-token");
        let b = TokenCipher::from_base64_key(KEY_B).unwrap();
        assert!(matches!(b.open(&sealed), Err(TokenError::Decrypt)));
    }

    #[test]
    fn plain_mode_stores_utf8_and_bad_keys_are_rejected() {
        let p = TokenCipher::plain();
        assert_eq!(p.seal("t"), b"t");
        assert_eq!(p.open(b"t").unwrap(), "t");
        assert!(TokenCipher::from_base64_key("c2hvcnQ=").is_err());
        assert!(TokenCipher::from_base64_key("not base64!").is_err());
    }

    #[test]
    fn hashes_are_stable_sha256() {
        assert_eq!(
            hex::encode(hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(short_hash("abc"), "ba7816bf");
    }
}
