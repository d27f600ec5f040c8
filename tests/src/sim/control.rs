//! Control API (`/_sim/...`, no auth): seeding, inspection and fault injection over HTTP for
//! the local stack and shell users. Errors are `{"error":"…"}`.

use std::sync::Arc;

use axum::http::Method;
use serde_json::{json, Value};

use super::server::{Inner, Reply};
use super::{Fault, SimHandle};

fn err(status: u16, msg: &str) -> Reply {
    Reply::status(status, json!({ "error": msg }))
}

fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned()
}

fn text<'a>(body: Option<&'a Value>, key: &str) -> Option<&'a str> {
    body.and_then(|b| b.get(key)).and_then(Value::as_str)
}

pub(crate) fn handle(inner: &Arc<Inner>, method: &Method, path: &str, body: Option<&Value>) -> Reply {
    let h = SimHandle { inner: inner.clone() };
    let segs: Vec<&str> = path.split('/').skip(2).collect();
    let r = match (method.as_str(), segs.as_slice()) {
        ("GET", ["health"]) => Ok(json!({"ok": true})),
        ("GET", ["people"]) => Ok(json!(h.people())),
        ("POST", ["people"]) => add_person(&h, body),
        ("GET", ["people", email]) => h
            .person(&decode(email))
            .map(|p| json!(p))
            .ok_or_else(|| err(404, "no such person")),
        ("DELETE", ["people", email]) => {
            h.remove_person(&decode(email));
            Ok(json!({}))
        }
        ("POST", ["people", email, "attributes"]) => match body {
            Some(b @ Value::Object(_)) => h
                .try_set_attributes(&decode(email), b)
                .map(|_| json!({}))
                .map_err(|e| err(404, &e)),
            _ => Err(err(400, "body must be an object of attributes")),
        },
        ("GET", ["segments"]) => Ok(segments(&h)),
        ("POST", ["segments"]) => {
            let id = body.and_then(|b| b.get("id")).and_then(Value::as_i64);
            match (id, text(body, "name")) {
                (Some(id), Some(name)) => {
                    h.add_segment(id, name, text(body, "type").unwrap_or("manual"));
                    Ok(json!({}))
                }
                _ => Err(err(400, "body must be {id, name, type?}")),
            }
        }
        ("POST", ["segments", id, "members"]) => match (id.parse(), text(body, "email")) {
            (Ok(id), Some(email)) => h
                .try_add_to_segment(id, email)
                .map(|_| json!({}))
                .map_err(|e| err(404, &e)),
            _ => Err(err(400, "body must be {email}")),
        },
        ("DELETE", ["segments", id, "members", email]) => match id.parse() {
            Ok(id) => {
                h.remove_from_segment(id, &decode(email));
                Ok(json!({}))
            }
            Err(_) => Err(err(400, "bad segment id")),
        },
        ("GET", ["requests"]) => Ok(requests(&h)),
        ("GET", ["track"]) => Ok(json!(h
            .track_puts()
            .into_iter()
            .map(|p| json!({"identifier": p.identifier, "body": p.body}))
            .collect::<Vec<_>>())),
        ("GET", ["faults"]) => Ok(json!(h.faults().iter().map(Fault::to_json).collect::<Vec<_>>())),
        ("POST", ["faults"]) => match body.map(Fault::from_json) {
            Some(Ok(f)) => {
                h.inject(f);
                Ok(json!({}))
            }
            Some(Err(e)) => Err(err(400, &e)),
            None => Err(err(400, "body required")),
        },
        ("DELETE", ["faults"]) => {
            h.clear_faults();
            Ok(json!({}))
        }
        ("POST", ["reset_log"]) => {
            h.reset_log();
            Ok(json!({}))
        }
        ("POST", ["seed_demo"]) => {
            super::demo_seed(&h);
            Ok(json!({}))
        }
        _ => Err(err(404, "unknown control route")),
    };
    match r {
        Ok(v) => Reply::ok(v),
        Err(e) => e,
    }
}

fn add_person(h: &SimHandle, body: Option<&Value>) -> Result<Value, Reply> {
    let email = text(body, "email");
    let id = text(body, "id");
    if email.is_none() && id.is_none() {
        return Err(err(400, "body must be {email, id?, attributes?}"));
    }
    let attrs = body
        .and_then(|b| b.get("attributes"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    if !attrs.is_object() {
        return Err(err(400, "attributes must be an object"));
    }
    Ok(json!({"cio_id": h.add_person_with_id(email, id, attrs)}))
}

fn segments(h: &SimHandle) -> Value {
    let store = super::server::lock(&h.inner.store);
    let list: Vec<Value> = store
        .segments
        .values()
        .map(|s| {
            let mut v = s.full_json();
            v["member_count"] = json!(s.members().len());
            v
        })
        .collect();
    json!(list)
}

fn requests(h: &SimHandle) -> Value {
    let started = h.inner.started;
    json!(h
        .requests()
        .into_iter()
        .map(|r| json!({
            "api": r.api.as_str(),
            "method": r.method,
            "path": r.path,
            "query": r.query,
            "status": r.status,
            "body": r.body,
            "at_ms": r.at.saturating_duration_since(started).as_millis() as u64,
        }))
        .collect::<Vec<_>>())
}
