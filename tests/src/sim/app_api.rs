//! App API routes (`/v1/...`): people lookups, segments, membership
//! paging and people search. Auth, rate limit and faults have already run.

use axum::http::Method;
use base64::Engine;
use serde_json::{json, Value};

use super::server::{app_error, lock, Inner, Reply};
use super::state::{IdType, Person, Store};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned()
}

/// First value of a query parameter, form-decoded (`+` → space, like the real API).
pub(crate) fn param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `id_type` query parameter (default `id`); 400 for unknown or not-enabled types.
fn id_type(inner: &Inner, query: Option<&str>) -> Result<IdType, Reply> {
    match param(query, "id_type").as_deref() {
        None | Some("id") => Ok(IdType::Id),
        Some("cio_id") => Ok(IdType::CioId),
        Some("email") if inner.cfg.email_id_type_enabled => Ok(IdType::Email),
        Some(t @ ("email" | "phone")) => Err(app_error(
            400,
            &format!("id_type {t} is not enabled as an identifier in this workspace"),
        )),
        Some(t) => Err(app_error(400, &format!("invalid id_type: {t}"))),
    }
}

fn not_found_customer() -> Reply {
    app_error(404, "The customer_id does not exist.")
}

fn not_found_segment() -> Reply {
    app_error(404, "The segment_id does not exist.")
}

fn segment_id(seg: &str) -> Option<i64> {
    seg.parse::<i32>().ok().map(i64::from)
}

/// `start` cursor → offset; cursors are base64url of the decimal offset.
fn page_params(query: Option<&str>, default: usize, max: usize) -> Result<(usize, usize), Reply> {
    let limit = match param(query, "limit") {
        None => default,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => return Err(app_error(400, &format!("limit must be between 1 and {max}"))),
        },
    };
    let start = match param(query, "start").filter(|s| !s.is_empty()) {
        None => 0,
        Some(c) => B64
            .decode(c.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(|| app_error(400, "invalid start cursor"))?,
    };
    Ok((start, limit))
}

/// `{"identifiers":[…],"ids":[…],"next":"…"}` for `page`, which starts at `start` of `total`;
/// `next` omitted on the last page.
fn page_json(page: &[&Person], start: usize, total: usize, extra: Option<(&str, Value)>) -> Value {
    let limit = page.len();
    let mut out = json!({
        "identifiers": page.iter().map(|p| p.identifiers_json()).collect::<Vec<_>>(),
        "ids": page.iter().filter_map(|p| p.id.clone()).collect::<Vec<_>>(),
    });
    if start + limit < total {
        out["next"] = json!(B64.encode((start + limit).to_string()));
    }
    if let Some((k, v)) = extra {
        out[k] = v;
    }
    out
}

pub(crate) fn handle(inner: &Inner, method: &Method, path: &str, query: Option<&str>, body: Option<&Value>) -> Reply {
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let get = method == Method::GET;
    let post = method == Method::POST;
    let store = lock(&inner.store);
    let r = match segs.as_slice() {
        ["v1", "customers"] if get => find_by_email(&store, query),
        ["v1", "customers"] if post => search(&store, query, body),
        ["v1", "customers", "attributes"] if post => batch_attributes(inner, &store, query, body),
        ["v1", "customers", cid, what @ ("attributes" | "segments")] if get => {
            let ty = id_type(inner, query);
            ty.and_then(|ty| {
                let idx = store.find(ty, &decode(cid)).ok_or_else(not_found_customer)?;
                let p = &store.people[idx];
                Ok(if *what == "attributes" {
                    Reply::ok(json!({"customer": p.customer_json()}))
                } else {
                    let segs: Vec<Value> = store.segments_of(&p.cio_id).iter().map(|s| s.short_json()).collect();
                    Reply::ok(json!({ "segments": segs }))
                })
            })
        }
        ["v1", "segments"] if get => {
            let all: Vec<Value> = store.segments.values().map(|s| s.full_json()).collect();
            Ok(Reply::ok(json!({ "segments": all })))
        }
        ["v1", "segments", sid, rest @ ..] if get && rest.len() <= 1 => {
            segment_route(&store, query, sid, rest.first().copied())
        }
        _ => Err(app_error(404, "Not found")),
    };
    r.unwrap_or_else(|e| e)
}

fn find_by_email(store: &Store, query: Option<&str>) -> Result<Reply, Reply> {
    let email = param(query, "email").ok_or_else(|| app_error(400, "email is required"))?;
    let results: Vec<Value> = store
        .people
        .iter()
        .filter(|p| p.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(&email)))
        .map(Person::identifiers_json)
        .collect();
    Ok(Reply::ok(json!({ "results": results })))
}

fn batch_attributes(inner: &Inner, store: &Store, query: Option<&str>, body: Option<&Value>) -> Result<Reply, Reply> {
    let ty = id_type(inner, query)?;
    let ids = body
        .and_then(|b| b.get("ids"))
        .and_then(Value::as_array)
        .ok_or_else(|| app_error(400, "body must be {\"ids\":[...]}"))?;
    if ids.is_empty() || ids.len() > 100 {
        return Err(app_error(400, "ids must contain between 1 and 100 items"));
    }
    let mut customers = Vec::new();
    for id in ids {
        let id = match id {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(app_error(400, "ids must be strings")),
        };
        if let Some(i) = store.find(ty, &id) {
            customers.push(json!({"customer": store.people[i].customer_json()}));
        }
    }
    Ok(Reply::ok(json!({ "customers": customers })))
}

fn segment_route(store: &Store, query: Option<&str>, sid: &str, what: Option<&str>) -> Result<Reply, Reply> {
    let seg = segment_id(sid)
        .and_then(|id| store.segments.get(&id))
        .ok_or_else(not_found_segment)?;
    // Removing a person removes their memberships, so every member is a person.
    let members = seg.members();
    match what {
        None => Ok(Reply::ok(json!({"segment": seg.full_json()}))),
        Some("customer_count") => Ok(Reply::ok(json!({"count": members.len(), "segment_id": seg.id}))),
        Some("membership") => {
            let (start, limit) = page_params(query, 1000, 30000)?;
            let page: Vec<&Person> = members
                .iter()
                .skip(start)
                .take(limit)
                .filter_map(|c| store.person_by_cio(c))
                .collect();
            let extra = Some(("segment_id", json!(seg.id)));
            Ok(Reply::ok(page_json(&page, start, members.len(), extra)))
        }
        Some(_) => Err(app_error(404, "Not found")),
    }
}

/// `POST /v1/customers` (getPeopleFilter): `and|or|not|segment|attribute` filters.
fn search(store: &Store, query: Option<&str>, body: Option<&Value>) -> Result<Reply, Reply> {
    let (start, limit) = page_params(query, 50, 1000)?;
    let filter = body
        .and_then(|b| b.get("filter"))
        .ok_or_else(|| app_error(400, "body must contain a filter"))?;
    let mut hits = Vec::new();
    for p in &store.people {
        if eval(store, p, filter).map_err(|e| app_error(400, &e))? {
            hits.push(p);
        }
    }
    let page: Vec<&Person> = hits.iter().skip(start).take(limit).copied().collect();
    Ok(Reply::ok(page_json(&page, start, hits.len(), None)))
}

fn eval(store: &Store, p: &Person, f: &Value) -> Result<bool, String> {
    let obj = f.as_object().filter(|o| o.len() == 1).ok_or("filter needs one key")?;
    let (k, v) = obj.iter().next().ok_or("empty filter")?;
    let list = || v.as_array().ok_or(format!("{k} takes an array"));
    match k.as_str() {
        "and" => list()?.iter().try_fold(true, |a, f| Ok(a & eval(store, p, f)?)),
        "or" => list()?.iter().try_fold(false, |a, f| Ok(a | eval(store, p, f)?)),
        "not" => Ok(!eval(store, p, v)?),
        "segment" => {
            let id = v.get("id").and_then(Value::as_i64).ok_or("segment.id required")?;
            Ok(store.segments.get(&id).is_some_and(|s| s.has(&p.cio_id)))
        }
        "attribute" => {
            let field = v.get("field").and_then(Value::as_str).ok_or("field required")?;
            let actual = match field {
                "email" => p.email.clone(),
                "id" => p.id.clone(),
                "cio_id" => Some(p.cio_id.clone()),
                f => p.attrs.get(f).cloned(),
            };
            match v.get("operator").and_then(Value::as_str) {
                Some("exists") => Ok(actual.is_some()),
                Some("eq") => {
                    let want = v.get("value").and_then(super::state::stringify);
                    Ok(match (actual, want) {
                        (Some(a), Some(w)) if field == "email" => a.eq_ignore_ascii_case(&w),
                        (Some(a), Some(w)) => a == w,
                        _ => false,
                    })
                }
                _ => Err("operator must be eq or exists".into()),
            }
        }
        other => Err(format!("unsupported filter {other}")),
    }
}
