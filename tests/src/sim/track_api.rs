//! Track API routes (`/api/v1/...`, `/api/v2/...`): identify with the
//! path-shape resolution rules and limits, v2 batch, region, manual segment edits, delete.

use axum::http::Method;
use serde_json::{json, Map, Value};

use super::app_api::param;
use super::server::{lock, track_error, Inner, Reply};
use super::state::{stringify, truthy, IdType, Ident, Store};
use super::TrackPut;

const MAX_ID: usize = 150;
const MAX_NAME: usize = 150;
const MAX_VALUE: usize = 1000;
const MAX_ATTRS: usize = 300;
const MAX_BATCH: usize = 500 * 1024;
const MAX_ENTRY: usize = 32 * 1024;

/// Keys that are not stored as attributes.
const NOT_STORED: &[&str] = &["id", "email", "cio_id", "_update", "_timestamp"];

fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned()
}

/// Enforce the Track API's byte and count limits.
fn validate(ident: &str, attrs: &Map<String, Value>) -> Result<(), String> {
    if ident.is_empty() {
        return Err("identifier is required".into());
    }
    if ident.len() > MAX_ID {
        return Err(format!("identifier is longer than {MAX_ID} bytes"));
    }
    let count = attrs
        .keys()
        .filter(|k| !matches!(k.as_str(), "_update" | "_timestamp"))
        .count();
    if count > MAX_ATTRS {
        return Err(format!("too many attributes: {count} (max {MAX_ATTRS})"));
    }
    for (k, v) in attrs {
        if k.len() > MAX_NAME {
            return Err(format!("attribute name is longer than {MAX_NAME} bytes: {k:.40}…"));
        }
        if stringify(v).is_some_and(|s| s.len() > MAX_VALUE) {
            return Err(format!("attribute value for {k:.40} is longer than {MAX_VALUE} bytes"));
        }
    }
    Ok(())
}

/// Identify/update one person per the Track API's rules. `Err` only for the per-person attribute cap.
pub(crate) fn identify(store: &mut Store, ident: &Ident, attrs: &Map<String, Value>) -> Result<(), String> {
    let update_only = attrs.get("_update").is_some_and(truthy);
    let body_id = attrs.get("id").and_then(stringify);
    let body_email = attrs.get("email").and_then(stringify);
    let by_body = |s: &Store| {
        body_email
            .as_deref()
            .and_then(|e| s.find_email(e))
            .or_else(|| body_id.as_deref().and_then(|i| s.find(IdType::Id, i)))
    };
    let (found, adopted) = match store.find_ident(ident) {
        Some(i) => (Some(i), false),
        // An unknown cio_id is silently dropped.
        None if matches!(ident, Ident::CioId(_)) => return Ok(()),
        None => (by_body(store), true),
    };
    let new_keys = attrs
        .iter()
        .filter(|(k, v)| !NOT_STORED.contains(&k.as_str()) && stringify(v).is_some());
    let idx = match found {
        Some(i) => {
            let p = &store.people[i];
            let total = p.attrs.len() + new_keys.filter(|(k, _)| !p.attrs.contains_key(*k)).count();
            if total > MAX_ATTRS {
                return Err(format!("person would exceed {MAX_ATTRS} attributes"));
            }
            i
        }
        None if update_only => return Ok(()),
        None => match ident {
            Ident::Email(e) => store.create(body_id.clone(), Some(e.clone())),
            Ident::Id(id) => store.create(Some(id.clone()), body_email.clone()),
            Ident::CioId(_) => return Ok(()),
        },
    };
    if adopted && found.is_some() {
        // Path unknown, body identifier matched: the person takes the path identifier.
        match ident {
            Ident::Email(e) => store.set_email(idx, Some(e.clone())),
            Ident::Id(id) => store.set_id(idx, Some(id.clone())),
            Ident::CioId(_) => {}
        }
    } else if found.is_some() {
        let conflict = |other: Option<usize>| other.is_some_and(|o| o != idx);
        let id_conflict = conflict(body_id.as_deref().and_then(|i| store.find(IdType::Id, i)));
        let email_conflict = conflict(body_email.as_deref().and_then(|e| store.find_email(e)));
        if id_conflict || email_conflict {
            // Path and body identify different people: 200, nothing changes.
            return Ok(());
        }
        let p = &store.people[idx];
        let (id, email) = match ident {
            Ident::CioId(_) => (body_id.or(p.id.clone()), body_email.or(p.email.clone())),
            Ident::Email(_) => (body_id.or(p.id.clone()), p.email.clone()),
            Ident::Id(_) if p.email.is_none() => (p.id.clone(), body_email),
            Ident::Id(_) => (p.id.clone(), p.email.clone()),
        };
        store.set_id(idx, id);
        store.set_email(idx, email);
    }
    for (k, v) in attrs {
        if !NOT_STORED.contains(&k.as_str()) {
            store.set_plain_attr(idx, k, v);
        }
    }
    Ok(())
}

pub(crate) fn handle(
    inner: &Inner,
    method: &Method,
    path: &str,
    query: Option<&str>,
    raw: &[u8],
    body: Option<&Value>,
) -> Reply {
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    match (method.as_str(), segs.as_slice()) {
        ("PUT", ["api", "v1", "customers", id]) => put_customer(inner, &decode(id), body),
        ("DELETE", ["api", "v1", "customers", id]) => {
            let mut store = lock(&inner.store);
            if let Some(i) = store.find_ident(&Ident::from_track_path(&decode(id))) {
                store.remove(i);
            }
            Reply::ok(json!({}))
        }
        ("POST", ["api", "v2", "batch"]) => batch(inner, raw, body),
        ("GET", ["api", "v1", "accounts", "region"]) => {
            let url = inner.base_url.read().unwrap_or_else(|e| e.into_inner()).clone();
            Reply::ok(json!({"url": url, "region": "us", "environment_id": 1}))
        }
        ("POST", ["api", "v1", "segments", sid, op @ ("add_customers" | "remove_customers")]) => {
            segment_edit(inner, sid, op == &"add_customers", query, body)
        }
        _ => track_error(404, "not found"),
    }
}

fn put_customer(inner: &Inner, identifier: &str, body: Option<&Value>) -> Reply {
    let Some(attrs) = body.and_then(Value::as_object) else {
        return track_error(400, "request body must be a JSON object of attributes");
    };
    if let Err(e) = validate(identifier, attrs) {
        return track_error(400, &e);
    }
    let ident = Ident::from_track_path(identifier);
    if let Err(e) = identify(&mut lock(&inner.store), &ident, attrs) {
        return track_error(400, &e);
    }
    lock(&inner.puts).push(TrackPut {
        identifier: identifier.to_string(),
        body: Value::Object(attrs.clone()),
    });
    Reply::ok(json!({}))
}

fn batch_error(status: u16, field: &str, message: &str) -> Reply {
    let e = json!({"reason": "invalid", "field": field, "message": message});
    Reply::status(status, json!({ "errors": [e] }))
}

fn batch(inner: &Inner, raw: &[u8], body: Option<&Value>) -> Reply {
    if raw.len() > MAX_BATCH {
        return batch_error(400, "batch", "request is larger than 500KB");
    }
    let Some(entries) = body.and_then(|b| b.get("batch")).and_then(Value::as_array) else {
        return batch_error(400, "batch", "body must be {\"batch\":[...]}");
    };
    let mut errors = Vec::new();
    let mut store = lock(&inner.store);
    for (i, entry) in entries.iter().enumerate() {
        if let Err((field, message)) = batch_entry(inner, &mut store, entry) {
            errors.push(json!({"batch_index": i, "reason": "invalid", "field": field, "message": message}));
        }
    }
    if errors.is_empty() {
        Reply::ok(json!({}))
    } else {
        Reply::status(207, json!({ "errors": errors }))
    }
}

fn batch_entry(inner: &Inner, store: &mut Store, e: &Value) -> Result<(), (&'static str, String)> {
    if serde_json::to_vec(e).map_or(0, |v| v.len()) > MAX_ENTRY {
        return Err(("", "entry is larger than 32KB".into()));
    }
    match e.get("type").and_then(Value::as_str) {
        Some("person") => {}
        Some("object" | "delivery") => return Ok(()),
        _ => return Err(("type", "unknown or missing type".into())),
    }
    let ids = e
        .get("identifiers")
        .and_then(Value::as_object)
        .ok_or(("identifiers", "identifiers must be an object".to_string()))?;
    let present: Vec<(&String, String)> = ids.iter().filter_map(|(k, v)| stringify(v).map(|s| (k, s))).collect();
    let [(kind, value)] = present.as_slice() else {
        return Err((
            "identifiers",
            "exactly one of id, email, phone or cio_id required".into(),
        ));
    };
    let ident = match kind.as_str() {
        "id" => Ident::Id(value.clone()),
        "cio_id" => Ident::CioId(value.clone()),
        "email" if inner.cfg.email_id_type_enabled => Ident::Email(value.clone()),
        "email" | "phone" => return Err(("identifiers", format!("{kind} is not enabled"))),
        _ => return Err(("identifiers", format!("unknown identifier {kind}"))),
    };
    match e.get("action").and_then(Value::as_str) {
        Some("identify") => {
            let empty = Map::new();
            let attrs = match e.get("attributes") {
                None | Some(Value::Null) => &empty,
                Some(Value::Object(o)) => o,
                Some(_) => return Err(("attributes", "attributes must be an object".into())),
            };
            validate(value, attrs).map_err(|m| ("attributes", m))?;
            identify(store, &ident, attrs).map_err(|m| ("attributes", m))
        }
        Some("delete") => {
            if let Some(i) = store.find_ident(&ident) {
                store.remove(i);
            }
            Ok(())
        }
        Some(
            "event"
            | "screen"
            | "page"
            | "add_relationships"
            | "delete_relationships"
            | "add_device"
            | "delete_device"
            | "merge"
            | "suppress"
            | "unsuppress",
        ) => Ok(()),
        _ => Err(("action", "unknown or missing action".into())),
    }
}

fn segment_edit(inner: &Inner, sid: &str, add: bool, query: Option<&str>, body: Option<&Value>) -> Reply {
    let ty = match param(query, "id_type").as_deref() {
        None | Some("id") => IdType::Id,
        Some("cio_id") => IdType::CioId,
        Some("email") if inner.cfg.email_id_type_enabled => IdType::Email,
        Some(t) => return track_error(400, &format!("id_type {t} is not supported")),
    };
    let Some(ids) = body.and_then(|b| b.get("ids")).and_then(Value::as_array) else {
        return track_error(400, "body must be {\"ids\":[...]}");
    };
    if ids.is_empty() || ids.len() > 1000 {
        return track_error(400, "ids must contain between 1 and 1000 items");
    }
    let mut store = lock(&inner.store);
    let cio_ids: Vec<String> = ids
        .iter()
        .filter_map(stringify)
        .filter_map(|id| store.find(ty, &id))
        .map(|i| store.people[i].cio_id.clone())
        .collect();
    let Some(seg) = sid.parse::<i64>().ok().and_then(|id| store.segments.get_mut(&id)) else {
        return track_error(404, "segment not found");
    };
    if seg.kind != "manual" {
        return track_error(400, "only manual segments can be changed");
    }
    for c in cio_ids {
        if add {
            seg.add(&c);
        } else {
            seg.remove(&c);
        }
    }
    seg.updated_at = super::state::now();
    Reply::ok(json!({}))
}
