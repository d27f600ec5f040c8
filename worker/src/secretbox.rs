//! AEAD encryption of outbox secrets (the generated password until it is returned), with
//! XChaCha20-Poly1305 and a ring of 32-byte keys with ids (`SECRETS_KEYS`, or the single
//! `SECRETS_KEY`): the first key seals, every key opens, so rotating the key never strands a
//! pending password.
//!
//! Sealed layout: `0x01 || id length (1 byte) || id || nonce (24 bytes) || ciphertext`. Secrets
//! sealed before key ids existed (`nonce || ciphertext`) still open: every key of the ring is tried.

use base64::Engine;
use chacha20poly1305::{
    aead::{Aead, Generate, KeyInit},
    XChaCha20Poly1305, XNonce,
};
use secrecy::{ExposeSecret, SecretString};

/// The id of the key given by `SECRETS_KEY` (a ring of one).
pub const SINGLE_KEY_ID: &str = "default";
const VERSION: u8 = 1;

#[derive(Clone)]
pub struct SecretBox {
    /// `(id, cipher)`, the sealing key first.
    keys: Vec<(String, XChaCha20Poly1305)>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        write!(f, "SecretBox(keys {ids:?})")
    }
}

fn cipher(key: &str) -> Result<XChaCha20Poly1305, &'static str> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .map_err(|_| "must be base64")?;
    if bytes.len() != 32 {
        return Err("must decode to exactly 32 bytes (e.g. `openssl rand -base64 32`)");
    }
    XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| "invalid key")
}

impl SecretBox {
    /// One key (`SECRETS_KEY`), from the base64 text of 32 bytes; its id is [`SINGLE_KEY_ID`].
    pub fn from_base64(key: &str) -> Result<Self, &'static str> {
        Ok(Self {
            keys: vec![(SINGLE_KEY_ID.to_string(), cipher(key)?)],
        })
    }

    /// A ring (`SECRETS_KEYS`): comma-separated `id:base64key`, the first one sealing.
    pub fn ring(spec: &str) -> Result<Self, &'static str> {
        let mut keys: Vec<(String, XChaCha20Poly1305)> = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, key) = entry
                .split_once(':')
                .ok_or("must be a comma-separated list of id:base64key")?;
            let id = id.trim();
            if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err("key ids must be 1 to 64 letters, digits, '-', '_' or '.'");
            }
            if keys.iter().any(|(k, _)| k == id) {
                return Err("key ids must be distinct");
            }
            keys.push((id.to_string(), cipher(key)?));
        }
        if keys.is_empty() {
            return Err("must hold at least one id:base64key");
        }
        Ok(Self { keys })
    }

    /// The id of the key that seals.
    pub fn sealing_id(&self) -> &str {
        &self.keys[0].0
    }

    pub fn seal(&self, plaintext: &SecretString) -> Vec<u8> {
        let (id, cipher) = &self.keys[0];
        let nonce = XNonce::generate();
        let mut out = vec![VERSION, id.len() as u8];
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend(
            cipher
                .encrypt(&nonce, plaintext.expose_secret().as_bytes())
                .expect("encryption with a valid key cannot fail"),
        );
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<SecretString, &'static str> {
        let plain = self.open_keyed(sealed).or_else(|| self.open_legacy(sealed)).ok_or(
            "sealed secret does not open with any key of SECRETS_KEYS (its key was removed, or it is corrupted)",
        )?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| "sealed secret is not text")
    }

    fn open_keyed(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        let (&len, rest) = rest.split_first()?;
        if version != VERSION || rest.len() < len as usize + 24 {
            return None;
        }
        let (id, rest) = rest.split_at(len as usize);
        let (_, cipher) = self.keys.iter().find(|(k, _)| k.as_bytes() == id)?;
        let (nonce, ct) = rest.split_at(24);
        cipher.decrypt(&XNonce::try_from(nonce).ok()?, ct).ok()
    }

    fn open_legacy(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 24 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(24);
        let nonce = XNonce::try_from(nonce).ok()?;
        self.keys.iter().find_map(|(_, c)| c.decrypt(&nonce, ct).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const OTHER: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

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
        let other = SecretBox::from_base64(OTHER).unwrap();
        assert!(other.open(&sealed).is_err());
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(b.open(&sealed).is_err());
        assert!(SecretBox::from_base64("c2hvcnQ=").is_err());
    }

    #[test]
    fn a_ring_seals_with_its_first_key_and_opens_with_any() {
        let old = SecretBox::from_base64(KEY).unwrap();
        let by_old = old.seal(&SecretString::from("before".to_string()));
        let ring = SecretBox::ring(&format!("k2:{OTHER}, default:{KEY}")).unwrap();
        assert_eq!(ring.sealing_id(), "k2");
        assert_eq!(ring.open(&by_old).unwrap().expose_secret(), "before");
        let by_new = ring.seal(&SecretString::from("after".to_string()));
        assert!(old.open(&by_new).is_err());
        let only_new = SecretBox::ring(&format!("k2:{OTHER}")).unwrap();
        assert_eq!(only_new.open(&by_new).unwrap().expose_secret(), "after");
        for bad in [
            "",
            "nokey",
            "a:c2hvcnQ=",
            &format!("a:{KEY},a:{OTHER}"),
            &format!(":{KEY}"),
        ] {
            assert!(SecretBox::ring(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_sealed_before_key_ids_still_open() {
        let c = cipher(KEY).unwrap();
        let nonce = XNonce::generate();
        let mut legacy = nonce.to_vec();
        legacy.extend(c.encrypt(&nonce, b"legacy".as_ref()).unwrap());
        let ring = SecretBox::ring(&format!("k2:{OTHER},old:{KEY}")).unwrap();
        assert_eq!(ring.open(&legacy).unwrap().expose_secret(), "legacy");
    }
}
