//! Passwords of new users and their Argon2id hashes. A plaintext password never leaves this module
//! except wrapped in a `SecretString` (and, for the password return, AEAD-encrypted in the outbox).
//!
//! Two cost settings, both Argon2id PHC strings that any Argon2 library verifies:
//! - a password chosen by a person (mapped from Customer.io as `user_pass`) may be guessable, so it
//!   gets the memory-hard cost meant to slow guessing: [`CHOSEN`] (19 MiB, 2 passes, 1 lane, the
//!   OWASP recommendation and the argon2 crate's default);
//! - a generated password is at least 16 characters (`PASSWORD_LENGTH`, default 20) drawn uniformly
//!   from 62 by the OS CSPRNG: at least 95 bits (119 at the default), far beyond any guessing,
//!   however cheap each guess. Its hash needs a salt and a one-way
//!   function, not a slow one: [`GENERATED`] (1 MiB, 1 pass, 1 lane), so that a burst of new users
//!   costs about a millisecond of CPU each instead of tens of milliseconds and 19 MiB.
//!
//! Hashing runs off the async runtime, at most as many at once as the machine has cores, so a
//! burst of `add`s cannot multiply the memory cost.

use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use rand::{distr::Alphanumeric, rand_core::UnwrapErr, rngs::SysRng, RngExt};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

/// Argon2id cost for passwords people chose: m = 19 MiB, t = 2, p = 1.
pub const CHOSEN: (u32, u32, u32) = (19 * 1024, 2, 1);
/// Argon2id cost for generated passwords (≥ 95 bits from the OS CSPRNG): m = 1 MiB, t = 1, p = 1.
pub const GENERATED: (u32, u32, u32) = (1024, 1, 1);

/// Where a new user's password came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Drawn here; returnable to Customer.io.
    Generated,
    /// Mapped from a Customer.io attribute (`user_pass`).
    FromCustomerIo,
}

/// A new user's password, hashed.
pub struct Prepared {
    pub plaintext: SecretString,
    pub hash: String,
    pub origin: Origin,
}

/// A password of `len` characters from [A-Za-z0-9], drawn from the OS CSPRNG.
pub fn generate(len: usize) -> SecretString {
    let s: String = UnwrapErr(SysRng)
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    SecretString::from(s)
}

/// The Argon2id PHC string (`$argon2id$v=19$…`) of `password` with the cost for its origin and a
/// random salt.
pub fn hash(password: &SecretString, origin: Origin) -> anyhow::Result<String> {
    let (m, t, p) = match origin {
        Origin::Generated => GENERATED,
        Origin::FromCustomerIo => CHOSEN,
    };
    let params = Params::new(m, t, p, None).map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    // A 16-byte random salt from the OS generator.
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.expose_secret().as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

/// Hashes passwords off the runtime, at most one per core at a time.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
}

impl Default for Hasher {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            permits: Arc::new(Semaphore::new(cores)),
        }
    }
}

impl Hasher {
    /// The mapped password (`Some`), else a generated one of `len` characters, hashed.
    pub async fn prepare(&self, mapped: Option<&str>, len: usize) -> anyhow::Result<Prepared> {
        let (plaintext, origin) = match mapped {
            Some(p) => (SecretString::from(p.to_string()), Origin::FromCustomerIo),
            None => (generate(len), Origin::Generated),
        };
        let _slot = self.permits.acquire().await.expect("the semaphore is never closed");
        let to_hash = plaintext.clone();
        let hash = tokio::task::spawn_blocking(move || hash(&to_hash, origin))
            .await
            .map_err(|e| anyhow::anyhow!("hashing task failed: {e}"))??;
        Ok(Prepared {
            plaintext,
            hash,
            origin,
        })
    }
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
    fn hashes_are_argon2id_with_the_cost_of_their_origin_and_verify() {
        let pw = generate(16);
        for (origin, params) in [
            (Origin::Generated, "m=1024,t=1,p=1"),
            (Origin::FromCustomerIo, "m=19456,t=2,p=1"),
        ] {
            let h = hash(&pw, origin).unwrap();
            assert!(h.starts_with(&format!("$argon2id$v=19${params}$")), "{h}");
            assert!(!h.contains(pw.expose_secret()));
            let parsed = PasswordHash::new(&h).unwrap();
            // A verifier with default settings reads the cost from the PHC string.
            assert!(Argon2::default()
                .verify_password(pw.expose_secret().as_bytes(), &parsed)
                .is_ok());
            assert!(Argon2::default().verify_password(b"wrong", &parsed).is_err());
        }
    }

    #[test]
    fn hashes_written_by_another_argon2_library_verify() {
        // Written by argon2-cffi (Python) with both costs: stored hashes do not depend on the
        // version of the argon2 crate that wrote them.
        for phc in [
            "$argon2id$v=19$m=19456,t=2,p=1$omv2SRVufw2ArDY1zma27Q$a1bvDeLqDKvoh9SBHqqyUn9/u9Gr9WegSc3zw59op6s",
            "$argon2id$v=19$m=1024,t=1,p=1$DlxFV8sCnR2EWiZ2DlqL+g$AEYBVgHiKFcGxY/4UxJmSN9T+RUwZshmei+/v5yOrAA",
        ] {
            let parsed = PasswordHash::new(phc).unwrap();
            assert!(Argon2::default()
                .verify_password(b"correct horse battery staple", &parsed)
                .is_ok());
            assert!(Argon2::default().verify_password(b"correct horse", &parsed).is_err());
        }
    }

    #[tokio::test]
    async fn the_hasher_maps_or_generates() {
        let h = Hasher::default();
        let mapped = h.prepare(Some("chosen by jane"), 20).await.unwrap();
        assert_eq!(mapped.origin, Origin::FromCustomerIo);
        assert_eq!(mapped.plaintext.expose_secret(), "chosen by jane");
        let generated = h.prepare(None, 24).await.unwrap();
        assert_eq!(generated.origin, Origin::Generated);
        assert_eq!(generated.plaintext.expose_secret().len(), 24);
    }
}
