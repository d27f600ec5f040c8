//! Response shapes of the Customer.io App API, parsed leniently: unknown
//! fields are ignored, most fields are optional, and ids arrive as strings or numbers.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Accepts `"42"`, `42` or `null`.
pub fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// Accepts `7` or `"7"`.
pub fn int_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom("segment id is not an integer")),
        Value::String(s) => s.trim().parse().map_err(serde::de::Error::custom),
        _ => Err(serde::de::Error::custom("segment id must be a number")),
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Identifiers {
    #[serde(default, deserialize_with = "string_or_number")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "string_or_number")]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "string_or_number")]
    pub cio_id: Option<String>,
}

/// One person (`customer` in the attributes responses).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Customer {
    #[serde(default, deserialize_with = "string_or_number")]
    pub id: Option<String>,
    #[serde(default)]
    pub identifiers: Identifiers,
    #[serde(default)]
    pub attributes: BTreeMap<String, Value>,
    #[serde(default)]
    pub unsubscribed: Option<bool>,
}

impl Customer {
    /// The cio_id from `identifiers`, else from the attributes.
    pub fn cio_id(&self) -> Option<String> {
        self.identifiers
            .cio_id
            .clone()
            .or_else(|| attr_text(self.attributes.get("cio_id")))
    }
    pub fn email(&self) -> Option<String> {
        self.identifiers
            .email
            .clone()
            .or_else(|| attr_text(self.attributes.get("email")))
    }
    pub fn customer_id(&self) -> Option<String> {
        self.identifiers
            .id
            .clone()
            .or_else(|| self.id.clone())
            .or_else(|| attr_text(self.attributes.get("id")))
    }
}

/// An attribute value as text; `None` for null and empty strings ("empty values do not clear").
pub fn attr_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) if s.trim().is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

#[derive(Debug, Deserialize)]
pub struct CustomerEnvelope {
    pub customer: Customer,
}

#[derive(Debug, Deserialize)]
pub struct CustomersEnvelope {
    #[serde(default)]
    pub customers: Vec<CustomerEnvelope>,
}

/// A segment as listed per person or in the catalogue.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Segment {
    #[serde(deserialize_with = "int_lenient")]
    pub id: i64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SegmentsEnvelope {
    #[serde(default)]
    pub segments: Vec<Segment>,
}

/// One page of `GET /v1/segments/{id}/membership`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MembershipPage {
    #[serde(default)]
    pub identifiers: Vec<Identifiers>,
    #[serde(default)]
    pub next: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_attributes_example_with_numeric_ids() {
        let json = r#"{"customer":{"id":2,"identifiers":{"id":2,"email":"test@example.com","cio_id":3000001},
            "attributes":{"id":"2","email":"test@example.com","created_at":"1489014595","First Name":"Test","nested":{"a":1}},
            "timestamps":{"id":1489014595},"unsubscribed":false,"devices":[{"id":"d","platform":"ios"}],"new_field":1}}"#;
        let c: CustomerEnvelope = serde_json::from_str(json).unwrap();
        assert_eq!(c.customer.cio_id().as_deref(), Some("3000001"));
        assert_eq!(c.customer.customer_id().as_deref(), Some("2"));
        assert_eq!(c.customer.email().as_deref(), Some("test@example.com"));
        assert_eq!(
            attr_text(c.customer.attributes.get("nested")).as_deref(),
            Some(r#"{"a":1}"#)
        );
    }

    #[test]
    fn segments_accept_string_ids_and_extra_fields() {
        let s: SegmentsEnvelope = serde_json::from_str(
            r#"{"segments":[{"id":"7","name":"VIP","state":"finished","type":"manual"},{"id":8}]}"#,
        )
        .unwrap();
        assert_eq!(s.segments[0].id, 7);
        assert_eq!(s.segments[0].kind.as_deref(), Some("manual"));
        assert_eq!(s.segments[1].name, None);
    }

    #[test]
    fn empty_values_are_absent() {
        assert_eq!(attr_text(Some(&Value::String("  ".into()))), None);
        assert_eq!(attr_text(Some(&Value::Null)), None);
        assert_eq!(attr_text(Some(&Value::Bool(true))).as_deref(), Some("true"));
    }
}
