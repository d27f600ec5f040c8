//! Access-key checking: every candidate the request carries is compared, in constant time,
//! against every configured key, so that neither timing nor order reveals anything.

use axum::http::{header::AUTHORIZATION, HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// The configured access keys.
#[derive(Clone)]
pub struct AccessKeys(Vec<SecretString>);

impl AccessKeys {
    pub fn new(keys: Vec<SecretString>) -> Self {
        Self(keys)
    }

    /// True when `candidate` equals one of the keys. Compares against all of them.
    pub fn accepts(&self, candidate: &str) -> bool {
        let mut ok = subtle::Choice::from(0u8);
        for key in &self.0 {
            ok |= key.expose_secret().as_bytes().ct_eq(candidate.as_bytes());
        }
        bool::from(ok)
    }
}

/// The keys a request offers: `access_key` (query or form, collected by the caller),
/// `X-Access-Key`, and `Authorization: Bearer`.
pub fn header_candidates(headers: &HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    for v in headers.get_all("x-access-key") {
        if let Ok(s) = v.to_str() {
            out.push(s.trim().to_string());
        }
    }
    for v in headers.get_all(AUTHORIZATION) {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if s.len() > 7 && s[..7].eq_ignore_ascii_case("bearer ") {
                out.push(s[7..].trim().to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_any_configured_key_and_nothing_else() {
        let keys = AccessKeys::new(vec!["old-key-123".to_string().into(), "new-key-456".to_string().into()]);
        assert!(keys.accepts("old-key-123"));
        assert!(keys.accepts("new-key-456"));
        assert!(!keys.accepts("new-key-45"));
        assert!(!keys.accepts(""));
        assert!(!keys.accepts("NEW-KEY-456"));
    }

    #[test]
    fn reads_header_and_bearer_candidates() {
        let mut h = HeaderMap::new();
        h.insert("x-access-key", "k1".parse().unwrap());
        h.insert(AUTHORIZATION, "Bearer k2".parse().unwrap());
        assert_eq!(header_candidates(&h), vec!["k1", "k2"]);
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(header_candidates(&h).is_empty());
    }
}
