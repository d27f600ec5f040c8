//! E-mail addresses: parsed once where they enter (the ingress, or a command being decoded), then
//! carried as [`Email`], so nothing downstream validates them again.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An address that passed [`parse`]. Serialises as the plain string; deserialising validates, so a
/// command carrying a malformed address fails to decode (and is dead-lettered with the reason).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address folded for comparison (addresses match case-insensitively); see [`fold`].
    pub fn folded(&self) -> String {
        fold(&self.0)
    }
}

impl TryFrom<String> for Email {
    type Error = &'static str;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        parse(&raw)
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<&str> for Email {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Folds an address (or a username) for comparison: Unicode lower case. The database folds with
/// `fold_email()` (ICU's root locale), which gives the same result whatever the collation, so a
/// non-ASCII address matches the same user in Rust and in SQL.
pub fn fold(s: &str) -> String {
    s.to_lowercase()
}

/// Checks that `raw` looks like a deliverable address and returns it trimmed.
///
/// The address itself is checked by lettre's parser, the one the worker's mailer uses, so every
/// accepted address is one the welcome e-mail can be sent to: a dot-atom local part (no leading,
/// trailing or doubled dot, none of `()<>[]:;@\,"` or spaces) and a domain. On top of it, the
/// domain must have at least two labels of letters, digits and hyphens (no bare host names or
/// address literals), and the lengths are those of SMTP (254 in all, 64 for the local part).
pub fn parse(raw: &str) -> Result<Email, &'static str> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("contact e-mail is empty");
    }
    if s.len() > 254 {
        return Err("contact e-mail is longer than 254 characters");
    }
    let (local, domain) = s.rsplit_once('@').ok_or("contact e-mail has no @")?;
    if local.is_empty() || local.len() > 64 {
        return Err("contact e-mail has an empty or over-long local part");
    }
    if s.parse::<lettre::Address>().is_err() {
        return Err("contact e-mail has characters or dots not allowed in an address");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err("contact e-mail has an invalid domain");
    }
    Ok(Email(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn accepts_ordinary_and_plus_addresses() {
        assert_eq!(parse(" Jane@Example.com ").unwrap().as_str(), "Jane@Example.com");
        assert!(parse("jane+vip@example.co.uk").is_ok());
        assert!(parse("o'brien@example.ie").is_ok());
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in [
            "",
            "   ",
            "jane",
            "jane@",
            "@example.com",
            "jane@example",
            "jane@@example.com",
            "ja ne@example.com",
            "jane@exa mple.com",
            "jane@-example.com",
            "jane@example..com",
            "{{customer.email}}",
            "<jane@example.com>",
            // Refused by the mailer's parser, so refused here too.
            "jane..doe@example.com",
            ".jane@example.com",
            "jane.@example.com",
            "jane()@example.com",
            "jane:x@example.com",
            "jane[x]@example.com",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
