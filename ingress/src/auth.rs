//! Access keys: the configured keys with their labels, the keys a request offers, and the check.
//!
//! A request may offer one key value: the same value in several places is fine, but two distinct
//! values are refused before either is compared, so that one request can never try many keys.
//! The one candidate is compared in constant time against every configured key, so neither
//! timing nor order tells which key (if any) it matched.

use std::borrow::Cow;

use axum::http::{header::AUTHORIZATION, HeaderMap};
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// One configured key: its secret and, optionally, the label that names who uses it
/// (`ACCESS_KEYS=onboarding:KEY1,crm:KEY2`).
#[derive(Clone)]
pub struct AccessKey {
    pub label: Option<String>,
    pub secret: SecretString,
}

impl AccessKey {
    pub fn unlabelled(secret: &str) -> Self {
        Self {
            label: None,
            secret: SecretString::from(secret),
        }
    }

    pub fn labelled(label: &str, secret: &str) -> Self {
        Self {
            label: Some(label.to_string()),
            secret: SecretString::from(secret),
        }
    }
}

/// Which label a request's key carries: an index into [`AccessKeys::labels`] (0 = no label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelId(pub u16);

impl LabelId {
    pub const NONE: LabelId = LabelId(0);
}

/// The configured access keys.
#[derive(Clone)]
pub struct AccessKeys {
    keys: Vec<(SecretString, u16)>,
    /// Distinct labels; index 0 is the empty label of unlabelled keys.
    labels: Vec<String>,
}

impl AccessKeys {
    pub fn new(keys: Vec<AccessKey>) -> Self {
        let mut labels = vec![String::new()];
        let keys = keys
            .into_iter()
            .map(|k| {
                let id = match k.label {
                    None => 0,
                    Some(l) => match labels.iter().position(|x| *x == l) {
                        Some(i) => i,
                        None => {
                            labels.push(l);
                            labels.len() - 1
                        }
                    },
                };
                (k.secret, u16::try_from(id).expect("fewer than 65,536 labels"))
            })
            .collect();
        Self { keys, labels }
    }

    /// The label of the configured key equal to `candidate`, or `None`. Compares against every key.
    pub fn check(&self, candidate: &str) -> Option<LabelId> {
        // 0 = no match, else label index + 1.
        let mut found = 0u32;
        for (key, label) in &self.keys {
            let eq = key.expose_secret().as_bytes().ct_eq(candidate.as_bytes());
            found.conditional_assign(&(u32::from(*label) + 1), eq);
        }
        (found > 0).then(|| LabelId((found - 1) as u16))
    }

    /// Every label, index 0 being the empty label of unlabelled keys.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The label text (empty for unlabelled keys).
    pub fn label(&self, id: LabelId) -> &str {
        &self.labels[usize::from(id.0)]
    }
}

/// The distinct key values a request offers, gathered without comparing any.
#[derive(Debug, Default)]
pub struct Offered<'a> {
    first: Option<Cow<'a, str>>,
    several: bool,
}

/// What a request offers, once every source was read.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<'a> {
    None,
    One(&'a str),
    /// Two or more distinct values: refused without comparing any.
    Several,
}

impl<'a> Offered<'a> {
    /// Adds one offered value; blank values count as not offered.
    pub fn add(&mut self, value: Cow<'a, str>) {
        let value = match value {
            Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
            Cow::Owned(s) if s.trim().len() == s.len() => Cow::Owned(s),
            Cow::Owned(s) => Cow::Owned(s.trim().to_string()),
        };
        if value.is_empty() {
            return;
        }
        match &self.first {
            None => self.first = Some(value),
            Some(f) if *f == value => {}
            Some(_) => self.several = true,
        }
    }

    /// The keys of the request head: `access_key` in the query (already split into pairs), the
    /// `X-Access-Key` header, `Authorization: Bearer KEY`, and the password of `Authorization: Basic`.
    pub fn from_head(query: &[(Cow<'a, str>, Cow<'a, str>)], headers: &'a HeaderMap) -> Self {
        let mut o = Offered::default();
        for (k, v) in query {
            if k == "access_key" {
                o.add(v.clone());
            }
        }
        for v in headers.get_all("x-access-key") {
            match v.to_str() {
                Ok(s) => o.add(Cow::Borrowed(s)),
                // A value that is not text cannot be a key, but it was offered.
                Err(_) => o.add(Cow::Owned(String::from_utf8_lossy(v.as_bytes()).into_owned())),
            }
        }
        for v in headers.get_all(AUTHORIZATION) {
            let Ok(s) = v.to_str() else { continue };
            let s = s.trim();
            let Some((scheme, rest)) = s.split_once(' ') else {
                continue;
            };
            if scheme.eq_ignore_ascii_case("bearer") {
                o.add(Cow::Borrowed(rest));
            } else if scheme.eq_ignore_ascii_case("basic") {
                if let Some(pass) = basic_password(rest) {
                    o.add(Cow::Owned(pass));
                }
            }
        }
        o
    }

    pub fn offer(&self) -> Offer<'_> {
        match (&self.first, self.several) {
            (_, true) => Offer::Several,
            (None, false) => Offer::None,
            (Some(k), false) => Offer::One(k),
        }
    }
}

/// The password of a Basic credential (`base64(user:password)`); `None` when there is none.
fn basic_password(token: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::STANDARD.decode(token.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (_user, pass) = text.split_once(':')?;
    (!pass.is_empty()).then(|| pass.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> AccessKeys {
        AccessKeys::new(vec![
            AccessKey::unlabelled("old-key-123"),
            AccessKey::labelled("crm", "new-key-456"),
            AccessKey::labelled("onboarding", "third-key-789"),
            AccessKey::labelled("crm", "crm-rotated-000"),
        ])
    }

    fn pairs(q: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
        form_urlencoded::parse(q.as_bytes()).collect()
    }

    #[test]
    fn check_finds_the_label_of_any_configured_key_and_nothing_else() {
        let k = keys();
        assert_eq!(k.check("old-key-123"), Some(LabelId::NONE));
        assert_eq!(k.label(k.check("new-key-456").unwrap()), "crm");
        assert_eq!(k.label(k.check("third-key-789").unwrap()), "onboarding");
        assert_eq!(
            k.check("crm-rotated-000"),
            k.check("new-key-456"),
            "one label, two keys"
        );
        assert_eq!(k.check("new-key-45"), None);
        assert_eq!(k.check(""), None);
        assert_eq!(k.check("NEW-KEY-456"), None);
        assert_eq!(k.labels(), ["", "crm", "onboarding"]);
    }

    #[test]
    fn reads_query_header_bearer_and_basic_password() {
        let h = HeaderMap::new();
        assert_eq!(
            Offered::from_head(&pairs("access_key=k1"), &h).offer(),
            Offer::One("k1")
        );
        let mut h = HeaderMap::new();
        h.insert("x-access-key", " k2 ".parse().unwrap());
        assert_eq!(Offered::from_head(&[], &h).offer(), Offer::One("k2"));
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer k3".parse().unwrap());
        assert_eq!(Offered::from_head(&[], &h).offer(), Offer::One("k3"));
        // https://journey:k4@host/ → Authorization: Basic base64("journey:k4")
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Basic am91cm5leTprNA==".parse().unwrap());
        assert_eq!(Offered::from_head(&[], &h).offer(), Offer::One("k4"));
        // A Basic credential without a password offers nothing.
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "basic am91cm5leTo=".parse().unwrap());
        assert_eq!(Offered::from_head(&[], &h).offer(), Offer::None);
    }

    #[test]
    fn the_same_value_twice_is_one_offer_and_two_values_are_several() {
        let mut h = HeaderMap::new();
        h.insert("x-access-key", "k1".parse().unwrap());
        assert_eq!(
            Offered::from_head(&pairs("access_key=k1&access_key=k1&access_key="), &h).offer(),
            Offer::One("k1")
        );
        assert_eq!(
            Offered::from_head(&pairs("access_key=k1&access_key=k2"), &HeaderMap::new()).offer(),
            Offer::Several
        );
        let mut h = HeaderMap::new();
        h.append(AUTHORIZATION, "Bearer k1".parse().unwrap());
        h.append(AUTHORIZATION, "Bearer k2".parse().unwrap());
        assert_eq!(Offered::from_head(&[], &h).offer(), Offer::Several);
        let (q, h) = (pairs("access_key=k1"), HeaderMap::new());
        let mut o = Offered::from_head(&q, &h);
        o.add(Cow::Borrowed("k9"));
        assert_eq!(o.offer(), Offer::Several);
    }
}
