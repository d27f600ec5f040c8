//! Fault injection: what a fault is, how it matches a request, and its Control API JSON form.

use std::time::Duration;

use serde_json::{json, Value};

use super::state::{stringify, Ident, Store};
use super::Api;

/// A fault applied to matching App or Track requests (after auth and the rate limiter).
#[derive(Clone, Debug)]
pub struct Fault {
    /// `Api::App` or `Api::Track` (Control is never faulted).
    pub api: Api,
    /// `Some(email)`: only requests about this contact (path identifier, `?email=`, body ids,
    /// body `email`, v2 batch identifiers; an id/cio_id resolving to a person with this email
    /// also counts). Compared case-insensitively. `None`: every request.
    pub contact: Option<String>,
    /// Optional extra filter: substring of the raw (still percent-encoded) path.
    pub path_contains: Option<String>,
    pub kind: FaultKind,
    /// Fire this many times, then remove itself; `None` = until cleared.
    pub times: Option<u32>,
}

/// What a matching fault does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer with this status and the API's error body. 429 carries `Retry-After: 1`.
    /// 301/302/307/308 carry `Location` = the same URL on this simulator (a redirect that
    /// succeeds once the fault is spent, like the EU-region redirect).
    Status(u16),
    /// 429 with the rate-limit body but no `Retry-After` (the "daily quota" path).
    RateLimitNoRetryAfter,
    /// Sleep this long, then answer normally.
    Delay(Duration),
    /// Drop the connection without sending a response: the server's write fails on purpose,
    /// the socket gets `SO_LINGER=0` and is closed, so the client sees a TCP reset / incomplete
    /// message. Recorded with status 0.
    Reset,
}

impl Fault {
    /// A global fault that fires until cleared.
    pub fn new(api: Api, kind: FaultKind) -> Fault {
        Fault {
            api,
            contact: None,
            path_contains: None,
            kind,
            times: None,
        }
    }

    /// Restrict to requests about `email`.
    pub fn with_contact(mut self, email: &str) -> Fault {
        self.contact = Some(email.to_string());
        self
    }

    /// Restrict to raw paths containing `s`.
    pub fn with_path(mut self, s: &str) -> Fault {
        self.path_contains = Some(s.to_string());
        self
    }

    /// Fire `n` times, then stop.
    pub fn with_times(mut self, n: u32) -> Fault {
        self.times = Some(n);
        self
    }

    /// Parse the Control API form:
    /// `{api:"app"|"track", contact?, path_contains?, kind: {"status":503} | {"delay_ms":N} |
    /// "reset" | "rate_limit_no_retry_after", times?}`.
    pub(crate) fn from_json(v: &Value) -> Result<Fault, String> {
        let api = match v.get("api").and_then(Value::as_str) {
            Some("app") => Api::App,
            Some("track") => Api::Track,
            _ => return Err("api must be \"app\" or \"track\"".into()),
        };
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let kind = match v.get("kind") {
            Some(Value::String(s)) if s == "reset" => FaultKind::Reset,
            Some(Value::String(s)) if s == "rate_limit_no_retry_after" => FaultKind::RateLimitNoRetryAfter,
            Some(Value::Object(o)) if o.contains_key("status") => {
                let s = o["status"].as_u64().filter(|s| (100..=599).contains(s));
                FaultKind::Status(s.ok_or("kind.status must be 100..=599")? as u16)
            }
            Some(Value::Object(o)) if o.contains_key("delay_ms") => {
                let ms = o["delay_ms"].as_u64().ok_or("kind.delay_ms must be an integer")?;
                FaultKind::Delay(Duration::from_millis(ms))
            }
            _ => return Err("unknown fault kind".into()),
        };
        let times = match v.get("times") {
            None | Some(Value::Null) => None,
            Some(t) => Some(
                t.as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .ok_or("times must be a u32")?,
            ),
        };
        Ok(Fault {
            api,
            contact: text("contact"),
            path_contains: text("path_contains"),
            kind,
            times,
        })
    }

    pub(crate) fn to_json(&self) -> Value {
        let kind = match &self.kind {
            FaultKind::Status(s) => json!({ "status": s }),
            FaultKind::RateLimitNoRetryAfter => json!("rate_limit_no_retry_after"),
            FaultKind::Delay(d) => json!({ "delay_ms": d.as_millis() as u64 }),
            FaultKind::Reset => json!("reset"),
        };
        json!({
            "api": self.api.as_str(),
            "contact": self.contact,
            "path_contains": self.path_contains,
            "kind": kind,
            "times": self.times,
        })
    }

    fn matches(&self, api: Api, raw_path: &str, contacts: &[String]) -> bool {
        self.api == api
            && self.path_contains.as_deref().is_none_or(|p| raw_path.contains(p))
            && self
                .contact
                .as_deref()
                .is_none_or(|c| contacts.iter().any(|x| x.eq_ignore_ascii_case(c)))
    }
}

/// Find the first matching fault, consume one of its `times`, and return its kind.
pub(crate) fn take_matching(
    faults: &mut Vec<Fault>,
    api: Api,
    raw_path: &str,
    contacts: &[String],
) -> Option<FaultKind> {
    let i = faults.iter().position(|f| f.matches(api, raw_path, contacts))?;
    let kind = faults[i].kind.clone();
    if let Some(t) = faults[i].times.as_mut() {
        *t = t.saturating_sub(1);
        if *t == 0 {
            faults.remove(i);
        }
    }
    Some(kind)
}

/// Everything a request "is about": path identifier, `?email=`, body ids/email, v2
/// identifiers, plus the email of any person those resolve to.
pub(crate) fn request_contacts(
    store: &Store,
    api: Api,
    path: &str,
    query: Option<&str>,
    body: Option<&Value>,
) -> Vec<String> {
    let segs: Vec<&str> = path.split('/').collect();
    let mut idents: Vec<Ident> = Vec::new();
    let dec = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    match (api, segs.as_slice()) {
        (Api::App, ["", "v1", "customers", id, _]) => {
            let id = dec(id);
            idents.extend([Ident::Email(id.clone()), Ident::Id(id.clone()), Ident::CioId(id)]);
        }
        (Api::Track, ["", "api", "v1", "customers", id, ..]) => {
            idents.push(Ident::from_track_path(&dec(id)));
        }
        _ => {}
    }
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if k == "email" {
                idents.push(Ident::Email(v.into_owned()));
            }
        }
    }
    if let Some(b) = body {
        let strs = |v: Option<&Value>| -> Vec<String> {
            match v {
                Some(Value::Array(a)) => a.iter().filter_map(stringify).collect(),
                Some(v) => stringify(v).into_iter().collect(),
                None => Vec::new(),
            }
        };
        for s in strs(b.get("ids")) {
            idents.extend([Ident::Email(s.clone()), Ident::Id(s.clone()), Ident::CioId(s)]);
        }
        idents.extend(strs(b.get("email")).into_iter().map(Ident::Email));
        idents.extend(strs(b.get("id")).into_iter().map(Ident::Id));
        if let Some(Value::Array(batch)) = b.get("batch") {
            for e in batch {
                let ids = e.get("identifiers");
                let get = |k| strs(ids.and_then(|i| i.get(k)));
                idents.extend(get("email").into_iter().map(Ident::Email));
                idents.extend(get("id").into_iter().map(Ident::Id));
                idents.extend(get("cio_id").into_iter().map(Ident::CioId));
            }
        }
    }
    let mut out = Vec::new();
    for ident in &idents {
        if let Ident::Email(e) = ident {
            out.push(e.clone());
        }
        if let Some(email) = store.find_ident(ident).and_then(|i| store.people[i].email.clone()) {
            out.push(email);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_consume() {
        let f = Fault::from_json(&json!({"api":"app","kind":{"status":503},"times":2})).unwrap();
        assert_eq!(f.kind, FaultKind::Status(503));
        let mut v = vec![f, Fault::new(Api::Track, FaultKind::Reset).with_contact("a@b.c")];
        assert!(take_matching(&mut v, Api::Track, "/x", &[]).is_none());
        assert_eq!(
            take_matching(&mut v, Api::Track, "/x", &["A@B.C".into()]),
            Some(FaultKind::Reset)
        );
        assert!(take_matching(&mut v, Api::App, "/x", &[]).is_some());
        assert!(take_matching(&mut v, Api::App, "/x", &[]).is_some());
        assert!(take_matching(&mut v, Api::App, "/x", &[]).is_none());
        assert!(Fault::from_json(&json!({"api":"control","kind":"reset"})).is_err());
    }
}
