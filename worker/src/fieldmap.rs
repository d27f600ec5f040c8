//! Mapping Customer.io attributes onto a user's fields and meta (`FIELD_MAP_FILE`).
//!
//! The file is TOML with one table, `[fields]`, of `"Customer.io attribute" = "target"`. A target
//! that names a user field (`email`, `first_name`, `last_name`, `display_name`, `user_login`,
//! `user_pass`) sets that field; any other target is a `user_meta` key. Without a file the mapping
//! is WP Fusion's default: `email`→`email`, `First Name`→`first_name`, `Last Name`→`last_name`.
//! Attribute names are case-sensitive, as in Customer.io. Empty values never clear local data.
//!
//! ```toml
//! [fields]
//! "email" = "email"
//! "First Name" = "first_name"
//! "username" = "user_login"
//! "company" = "company"        # stored as user_meta 'company'
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::cio::types::attr_text;

/// A user field a mapping can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UserField {
    Email,
    FirstName,
    LastName,
    DisplayName,
    UserLogin,
    UserPass,
}

impl UserField {
    fn parse(target: &str) -> Option<Self> {
        Some(match target {
            "email" | "user_email" => UserField::Email,
            "first_name" => UserField::FirstName,
            "last_name" => UserField::LastName,
            "display_name" => UserField::DisplayName,
            "user_login" | "username" => UserField::UserLogin,
            "user_pass" | "password" => UserField::UserPass,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Target {
    Field(UserField),
    Meta(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FieldMap {
    entries: Vec<(String, Target)>,
}

/// What one contact's attributes say about the user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mapped {
    pub fields: BTreeMap<UserField, String>,
    pub meta: BTreeMap<String, String>,
    /// `(Customer.io attribute, value)` of every mapped value but the password, for the event log.
    pub loaded: Vec<(String, String)>,
}

impl Mapped {
    pub fn get(&self, f: UserField) -> Option<&str> {
        self.fields.get(&f).map(String::as_str)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    fields: BTreeMap<String, String>,
}

impl Default for FieldMap {
    fn default() -> Self {
        Self {
            entries: vec![
                ("email".into(), Target::Field(UserField::Email)),
                ("First Name".into(), Target::Field(UserField::FirstName)),
                ("Last Name".into(), Target::Field(UserField::LastName)),
            ],
        }
    }
}

impl FieldMap {
    /// Parses the TOML text of a field-map file.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let file: FileFormat = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let mut entries = Vec::new();
        for (attr, target) in file.fields {
            let target = target.trim();
            if attr.trim().is_empty() || target.is_empty() {
                return Err("empty attribute name or target".into());
            }
            let t = UserField::parse(target)
                .map(Target::Field)
                .unwrap_or_else(|| Target::Meta(target.to_string()));
            entries.push((attr, t));
        }
        Ok(Self { entries })
    }

    /// Reads and parses `path`.
    pub fn load(path: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        Self::from_toml(&text)
    }

    /// Applies the mapping to a contact's attributes, skipping empty values.
    pub fn apply(&self, attributes: &BTreeMap<String, Value>) -> Mapped {
        let mut out = Mapped::default();
        for (attr, target) in &self.entries {
            let Some(value) = attr_text(attributes.get(attr)) else {
                continue;
            };
            if *target != Target::Field(UserField::UserPass) {
                out.loaded.push((attr.clone(), value.clone()));
            }
            match target {
                Target::Field(f) => {
                    out.fields.insert(*f, value);
                }
                Target::Meta(k) => {
                    out.meta.insert(k.clone(), value);
                }
            }
        }
        out
    }

    /// Refuses a map that would copy the attribute receiving generated passwords
    /// (`RETURN_PASSWORD_FIELD`) into anything but `user_pass`: a password must never land in a
    /// user's fields or meta, nor in the event log that lists loaded values.
    pub fn check_password_field(&self, password_field: &str) -> Result<(), String> {
        match self
            .entries
            .iter()
            .find(|(attr, t)| attr == password_field && *t != Target::Field(UserField::UserPass))
        {
            None => Ok(()),
            Some((attr, t)) => Err(format!(
                "maps {attr:?}, the RETURN_PASSWORD_FIELD attribute, to {}; it may only map to user_pass",
                match t {
                    Target::Field(f) => format!("{f:?}"),
                    Target::Meta(k) => format!("user_meta {k:?}"),
                }
            )),
        }
    }

    /// Whether a password attribute is mapped at all (`user_pass`).
    pub fn maps(&self, field: UserField) -> bool {
        self.entries.iter().any(|(_, t)| *t == Target::Field(field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn default_mapping_is_wp_fusions() {
        let m = FieldMap::default().apply(&attrs(
            json!({"email":"j@x.io","First Name":"Jane","Last Name":"","first name":"no","plan":"pro"}),
        ));
        assert_eq!(m.get(UserField::Email), Some("j@x.io"));
        assert_eq!(m.get(UserField::FirstName), Some("Jane"));
        assert_eq!(m.get(UserField::LastName), None, "empty values do not map");
        assert!(m.meta.is_empty());
    }

    #[test]
    fn file_maps_fields_and_meta() {
        let map = FieldMap::from_toml("[fields]\n\"username\" = \"user_login\"\n\"pw\" = \"user_pass\"\n\"company\" = \"company_name\"\n\"score\" = \"score\"\n").unwrap();
        let m = map.apply(&attrs(
            json!({"username":"jdoe","pw":"s3cret-pass","company":"Acme","score":42}),
        ));
        assert_eq!(m.get(UserField::UserLogin), Some("jdoe"));
        assert_eq!(m.get(UserField::UserPass), Some("s3cret-pass"));
        assert_eq!(m.meta.get("company_name").map(String::as_str), Some("Acme"));
        assert_eq!(m.meta.get("score").map(String::as_str), Some("42"));
        let logged: Vec<&str> = m.loaded.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            !logged.contains(&"pw"),
            "the password is never listed for the log: {logged:?}"
        );
        assert_eq!(logged, vec!["company", "score", "username"]);
        assert!(map.maps(UserField::UserPass));
        assert!(!FieldMap::default().maps(UserField::UserPass));
    }

    #[test]
    fn bad_files_are_explained() {
        assert!(FieldMap::from_toml("fields = 3").is_err());
        assert!(FieldMap::from_toml("[other]\na = \"b\"").is_err());
        assert!(FieldMap::from_toml("[fields]\n\"a\" = \"\"").is_err());
    }
}
