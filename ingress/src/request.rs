//! Turning an HTTP request into a command: pure functions, so that every rule is
//! unit-tested and fuzzed without a server.
//!
//! A request is read in two steps. [`head`] looks at the query and the headers only: a key found
//! there is checked before the body is read, and a request whose head offers a wrong key, several
//! keys, or no key while its body cannot carry one is refused without reading the body. [`finish`]
//! then reads the body: a form body may carry the key (and the other parameters), a JSON body
//! gives the contact.
//!
//! Where WP Fusion reads `$_REQUEST`, we read the query string and a form-encoded body; a JSON
//! body gives the contact (`email`, optionally `id` and `cio_id`). Decisions of ours:
//! - the access key is checked before anything else, so an unauthenticated caller learns nothing;
//! - more than one distinct key value (query, form and headers together) is a 400, and none of the
//!   values is compared; a key in the head is compared before the body is read, so a form body
//!   offering a different one is refused after that single comparison;
//! - a JSON body without `email` falls back to `email`/`contact_id` from the query or form;
//! - `send_notification` accepts `true/1/yes/on` and `false/0/no/off/` (any case); other values are
//!   a 400 rather than a guess;
//! - `tags=` with nothing in it counts as absent (the worker then asks Customer.io).

use std::borrow::Cow;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::command::{Action, Contact, SyncV1};
use uuid::Uuid;

use crate::auth::{AccessKeys, LabelId, Offer, Offered};

/// What a well-formed, authenticated request asks for.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// `wpf_action=test`: answer `{"success":true}`, queue nothing.
    Test,
    Command(SyncV1),
}

/// An authenticated request: what it asks for, and the label of the key it came with.
#[derive(Debug, PartialEq)]
pub struct Accepted {
    pub label: LabelId,
    pub parsed: Parsed,
}

/// Why a request is refused; the text is safe to return (it never contains the key).
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    Forbidden,
    BadRequest(String),
}

/// The refusal of a request offering more than one distinct key.
pub const SEVERAL_KEYS: &str = "more than one access key offered: send exactly one";

fn bad(msg: impl Into<String>) -> Rejection {
    Rejection::BadRequest(msg.into())
}

/// The parts of the request the parser looks at.
pub struct Input<'a> {
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

type Pairs<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

struct Params<'a>(Pairs<'a>);

impl Params<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_ref())
    }
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.trim_start();
            v.len() >= 33 && v[..33].eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// A request whose head passed: its query parameters and, when the head carried the key, its label.
pub struct Head<'a> {
    pairs: Pairs<'a>,
    offered: Offered<'a>,
    label: Option<LabelId>,
    form: bool,
}

/// Checks the head of a request (query and headers) before its body is read.
pub fn head<'a>(query: Option<&'a str>, headers: &'a HeaderMap, keys: &AccessKeys) -> Result<Head<'a>, Rejection> {
    let pairs: Pairs<'a> = query
        .map(|q| form_urlencoded::parse(q.as_bytes()).collect())
        .unwrap_or_default();
    let offered = Offered::from_head(&pairs, headers);
    let form = is_form(headers);
    let label = match offered.offer() {
        Offer::Several => return Err(bad(SEVERAL_KEYS)),
        Offer::One(k) => Some(keys.check(k).ok_or(Rejection::Forbidden)?),
        // Only a form body can still bring the key.
        Offer::None if !form => return Err(Rejection::Forbidden),
        Offer::None => None,
    };
    Ok(Head {
        pairs,
        offered,
        label,
        form,
    })
}

/// Parses and checks one whole webhook request (both steps).
pub fn parse(input: &Input<'_>, keys: &AccessKeys, event_id: Uuid, now: DateTime<Utc>) -> Result<Accepted, Rejection> {
    let h = head(input.query, input.headers, keys)?;
    finish(h, input.body, keys, event_id, now)
}

/// A JSON string or number as text; empty strings count as absent (Liquid renders missing values so).
fn text_field(body: &serde_json::Map<String, Value>, name: &str) -> Result<Option<String>, Rejection> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(bad(format!("body field '{name}' must be a string"))),
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// The second step: reads the body of a request whose head passed.
pub fn finish<'a>(
    head: Head<'a>,
    body: &'a [u8],
    keys: &AccessKeys,
    event_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Accepted, Rejection> {
    let Head {
        mut pairs,
        mut offered,
        label,
        form,
    } = head;
    let mut json: Option<serde_json::Map<String, Value>> = None;
    if form {
        let start = pairs.len();
        pairs.extend(form_urlencoded::parse(body));
        for (k, v) in &pairs[start..] {
            if k == "access_key" {
                offered.add(v.clone());
            }
        }
    } else if !body.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => json = Some(map),
            Ok(_) => {
                return Err(bad(
                    "body must be a JSON object, like {\"email\": \"{{customer.email}}\"}",
                ))
            }
            Err(e) => {
                return Err(bad(format!(
                    "body is not valid JSON ({})",
                    truncate(&e.to_string(), 120)
                )))
            }
        }
    }

    // 1. The access key, before anything else.
    let label = match (offered.offer(), label) {
        (Offer::Several, _) => return Err(bad(SEVERAL_KEYS)),
        (_, Some(l)) => l,
        (Offer::One(k), None) => keys.check(k).ok_or(Rejection::Forbidden)?,
        (Offer::None, None) => return Err(Rejection::Forbidden),
    };
    let params = Params(pairs);
    let parsed = parse_params(&params, json.as_ref(), event_id, now)?;
    Ok(Accepted { label, parsed })
}

fn parse_params(
    params: &Params<'_>,
    json: Option<&serde_json::Map<String, Value>>,
    event_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Parsed, Rejection> {
    // 2. The action.
    let raw_action = params.get("wpf_action").map(str::trim).unwrap_or("");
    if raw_action.is_empty() {
        return Err(bad("wpf_action is missing: use update_tags, update, add or test"));
    }
    if raw_action.eq_ignore_ascii_case("test") {
        return Ok(Parsed::Test);
    }
    let action = Action::parse(raw_action).ok_or_else(|| {
        bad(format!(
            "unknown wpf_action '{}': use update_tags, update, add or test",
            truncate(raw_action, 40)
        ))
    })?;

    // 3. The contact.
    let mut email = None;
    let (mut id, mut cio_id) = (None, None);
    if let Some(body) = json {
        email = text_field(body, "email")?;
        id = text_field(body, "id")?;
        cio_id = text_field(body, "cio_id")?;
    }
    if email.is_none() {
        email = params
            .get("email")
            .or_else(|| params.get("contact_id"))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
    }
    let email = email.ok_or_else(|| {
        bad("no contact e-mail: send a JSON body like {\"email\": \"{{customer.email}}\"} or ?email=")
    })?;
    let email = shared::email::parse(&email).map_err(|why| bad(format!("malformed contact e-mail: {why}")))?;

    // 4. Options.
    let send_notification = match params.get("send_notification").map(|s| s.trim().to_ascii_lowercase()) {
        None => false,
        Some(v) => match v.as_str() {
            "true" | "1" | "yes" | "on" => action == Action::Add,
            "false" | "0" | "no" | "off" | "" => false,
            _ => return Err(bad("send_notification must be true or false")),
        },
    };
    let role = match params.get("role").map(str::trim).filter(|r| !r.is_empty()) {
        Some(_) if action == Action::UpdateTags => None,
        Some(r) if r.len() > 64 || !r.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')) => {
            return Err(bad("role must be a role name of letters, digits, '_' or '-'"))
        }
        Some(r) => Some(r.to_ascii_lowercase()),
        None => None,
    };
    let tags = match (action, params.get("tags").map(str::trim).filter(|t| !t.is_empty())) {
        (Action::UpdateTags, Some(t)) => {
            let ids: Result<Vec<i64>, _> = t
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or(()))
                .collect();
            let mut ids = ids.map_err(|_| bad("tags must be comma-separated numeric segment ids"))?;
            ids.sort_unstable();
            ids.dedup();
            Some(ids)
        }
        _ => None,
    };

    Ok(Parsed::Command(SyncV1 {
        event_id,
        received_at: now,
        action,
        contact: Contact { email, id, cio_id },
        send_notification,
        role,
        tags,
    }))
}

#[cfg(test)]
mod tests;
