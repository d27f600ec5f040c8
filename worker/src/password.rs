//! Generated passwords and their Argon2id hashes. A plaintext password never leaves this module
//! except wrapped in a `SecretString` (and, for the password return, AEAD-encrypted in the outbox).

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHasher, SaltString},
    Argon2,
};
use rand::{distributions::Alphanumeric, Rng};
use secrecy::{ExposeSecret, SecretString};

/// A password of `len` characters from [A-Za-z0-9], drawn from the OS CSPRNG.
pub fn generate(len: usize) -> SecretString {
    let s: String = rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    SecretString::from(s)
}

/// The Argon2id PHC string (`$argon2id$v=19$…`) of `password`, with the crate's default
/// parameters (19 MiB, 2 passes) and a random salt.
pub fn hash(password: &SecretString) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHash, PasswordVerifier};

    #[test]
    fn generated_passwords_are_long_alphanumeric_and_distinct() {
        let a = generate(20);
        let b = generate(20);
        assert_eq!(a.expose_secret().len(), 20);
        assert!(a.expose_secret().chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let pw = generate(16);
        let h = hash(&pw).unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains(pw.expose_secret()));
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(Argon2::default()
            .verify_password(pw.expose_secret().as_bytes(), &parsed)
            .is_ok());
    }
}
