//! AEAD encryption of outbox secrets (the generated password until it is returned), with
//! XChaCha20-Poly1305 and the 32-byte `SECRETS_KEY`. Stored as nonce (24 bytes) || ciphertext.

use base64::Engine;
use chacha20poly1305::{
    aead::{Aead, AeadCore, KeyInit, OsRng},
    XChaCha20Poly1305, XNonce,
};
use secrecy::{ExposeSecret, SecretString};

#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<key>)")
    }
}

impl SecretBox {
    /// From the base64 text of a 32-byte key.
    pub fn from_base64(key: &str) -> Result<Self, &'static str> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| "must be base64")?;
        if bytes.len() != 32 {
            return Err("must decode to exactly 32 bytes (e.g. `openssl rand -base64 32`)");
        }
        Ok(Self {
            cipher: XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| "invalid key")?,
        })
    }

    pub fn seal(&self, plaintext: &SecretString) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        out.extend(
            self.cipher
                .encrypt(&nonce, plaintext.expose_secret().as_bytes())
                .expect("encryption with a valid key cannot fail"),
        );
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<SecretString, &'static str> {
        if sealed.len() < 24 {
            return Err("sealed secret is too short");
        }
        let (nonce, ct) = sealed.split_at(24);
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), ct)
            .map_err(|_| "sealed secret does not open with SECRETS_KEY (wrong key or corrupted)")?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| "sealed secret is not text")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn seals_and_opens() {
        let b = SecretBox::from_base64(KEY).unwrap();
        let sealed = b.seal(&SecretString::from("hunter2hunter2".to_string()));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(b.open(&sealed).unwrap().expose_secret(), "hunter2hunter2");
    }

    #[test]
    fn wrong_key_or_tampering_fails() {
        let b = SecretBox::from_base64(KEY).unwrap();
        let mut sealed = b.seal(&SecretString::from("x".to_string()));
        let other = SecretBox::from_base64("BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=").unwrap();
        assert!(other.open(&sealed).is_err());
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(b.open(&sealed).is_err());
        assert!(SecretBox::from_base64("c2hvcnQ=").is_err());
    }
}
