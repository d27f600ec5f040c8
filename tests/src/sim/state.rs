//! In-memory workspace: people, segments, identifier lookup and the JSON shapes they render to.
//! Lookups by identifier and membership tests are indexed, so that workspaces of hundreds of
//! thousands of people seed and page quickly.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Map, Value};

/// One person. Custom attributes are stored as strings (Customer.io returns all as strings).
#[derive(Clone, Debug)]
pub(crate) struct Person {
    pub cio_id: String,
    pub id: Option<String>,
    pub email: Option<String>,
    pub attrs: BTreeMap<String, String>,
    pub attr_ts: BTreeMap<String, i64>,
    pub unsubscribed: bool,
    pub created: i64,
}

/// One segment; `members` holds cio_ids in insertion order (the stable paging order).
#[derive(Clone, Debug)]
pub(crate) struct Segment {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub kind: String,
    pub created_at: i64,
    pub updated_at: i64,
    members: Vec<String>,
    member_set: HashSet<String>,
}

/// How a per-person App API call identifies the person (`id_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdType {
    Id,
    Email,
    CioId,
}

/// A Track identifier after the Track API's identifier shape rules (or a v2 `identifiers` entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ident {
    CioId(String),
    Email(String),
    Id(String),
}

impl Ident {
    /// Track v1 path rule: `cio_<x>` → cio_id, contains `@` → email, else id.
    pub fn from_track_path(s: &str) -> Ident {
        if let Some(rest) = s.strip_prefix("cio_") {
            Ident::CioId(rest.to_string())
        } else if s.contains('@') {
            Ident::Email(s.to_string())
        } else {
            Ident::Id(s.to_string())
        }
    }
}

/// People in creation order, with indexes by cio_id, e-mail (ASCII case-folded) and id that point
/// at the first person holding each. Identifiers change only through [`Store::set_email`] and
/// [`Store::set_id`], which keep the indexes right.
#[derive(Default)]
pub(crate) struct Store {
    pub people: Vec<Person>,
    pub segments: BTreeMap<i64, Segment>,
    next_cio: u64,
    by_cio: HashMap<String, usize>,
    by_email: HashMap<String, usize>,
    by_id: HashMap<String, usize>,
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Attribute value as Customer.io stores it; `None` (null or "") means "remove".
pub(crate) fn stringify(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

/// `unsubscribed`: `true`, `TRUE`, `1` and `"1"` all mean unsubscribed.
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_i64() == Some(1),
        Value::String(s) => s.eq_ignore_ascii_case("true") || s == "1",
        _ => false,
    }
}

impl Store {
    fn new_cio_id(&mut self) -> String {
        self.next_cio += 1;
        format!("{:x}", 0xa300_0000u64 + self.next_cio)
    }

    pub fn find(&self, ty: IdType, value: &str) -> Option<usize> {
        match ty {
            IdType::Id => self.by_id.get(value).copied(),
            IdType::Email => self.find_email(value),
            IdType::CioId => self.by_cio.get(value).copied(),
        }
    }

    pub fn find_email(&self, email: &str) -> Option<usize> {
        self.by_email.get(&email.to_ascii_lowercase()).copied()
    }

    /// Rebuilds the identifier indexes (after a removal or an identifier change).
    fn reindex(&mut self) {
        self.by_cio.clear();
        self.by_email.clear();
        self.by_id.clear();
        for i in 0..self.people.len() {
            self.index(i);
        }
    }

    /// Adds person `i` to the indexes where no earlier person holds the same identifier.
    fn index(&mut self, i: usize) {
        let p = &self.people[i];
        self.by_cio.entry(p.cio_id.clone()).or_insert(i);
        if let Some(e) = &p.email {
            self.by_email.entry(e.to_ascii_lowercase()).or_insert(i);
        }
        if let Some(id) = &p.id {
            self.by_id.entry(id.clone()).or_insert(i);
        }
    }

    pub fn set_email(&mut self, idx: usize, email: Option<String>) {
        if self.people[idx].email != email {
            self.people[idx].email = email;
            self.reindex();
        }
    }

    pub fn set_id(&mut self, idx: usize, id: Option<String>) {
        if self.people[idx].id != id {
            self.people[idx].id = id;
            self.reindex();
        }
    }

    pub fn find_ident(&self, ident: &Ident) -> Option<usize> {
        match ident {
            Ident::CioId(c) => self.find(IdType::CioId, c),
            Ident::Email(e) => self.find_email(e),
            Ident::Id(i) => self.find(IdType::Id, i),
        }
    }

    pub fn create(&mut self, id: Option<String>, email: Option<String>) -> usize {
        let cio_id = self.new_cio_id();
        self.people.push(Person {
            cio_id,
            id,
            email,
            attrs: BTreeMap::new(),
            attr_ts: BTreeMap::new(),
            unsubscribed: false,
            created: now(),
        });
        let i = self.people.len() - 1;
        self.index(i);
        i
    }

    pub fn remove(&mut self, idx: usize) {
        let p = self.people.remove(idx);
        for seg in self.segments.values_mut() {
            seg.remove(&p.cio_id);
        }
        self.reindex();
    }

    /// Set one custom attribute (not an identifier); null/"" removes it.
    pub fn set_plain_attr(&mut self, idx: usize, key: &str, value: &Value) {
        let ts = now();
        let p = &mut self.people[idx];
        if key == "unsubscribed" {
            p.unsubscribed = truthy(value);
        }
        match stringify(value) {
            Some(s) => {
                p.attrs.insert(key.to_string(), s);
                p.attr_ts.insert(key.to_string(), ts);
            }
            None => {
                p.attrs.remove(key);
                p.attr_ts.remove(key);
            }
        }
    }

    /// Seeding helper: keys `id`/`email` set identifiers, `cio_id` is ignored, others are attrs.
    pub fn apply_seed_attrs(&mut self, idx: usize, attrs: &Value) {
        let Some(obj) = attrs.as_object() else { return };
        for (k, v) in obj {
            match k.as_str() {
                "id" => self.set_id(idx, stringify(v)),
                "email" => self.set_email(idx, stringify(v)),
                "cio_id" => {}
                _ => self.set_plain_attr(idx, k, v),
            }
        }
    }

    pub fn segments_of(&self, cio_id: &str) -> Vec<&Segment> {
        self.segments.values().filter(|s| s.has(cio_id)).collect()
    }

    pub fn person_by_cio(&self, cio_id: &str) -> Option<&Person> {
        self.by_cio.get(cio_id).map(|&i| &self.people[i])
    }
}

impl Person {
    /// `{email, id, cio_id}` as used by 3.1, 3.7 and search results.
    pub fn identifiers_json(&self) -> Value {
        json!({"email": self.email, "id": self.id, "cio_id": self.cio_id})
    }

    /// The attributes response's `customer` object.
    pub fn customer_json(&self) -> Value {
        let mut attrs: Map<String, Value> = self
            .attrs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let mut ts: Map<String, Value> = self.attr_ts.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        attrs.insert("cio_id".into(), json!(self.cio_id));
        ts.insert("cio_id".into(), json!(self.created));
        if let Some(id) = &self.id {
            attrs.insert("id".into(), json!(id));
            ts.insert("id".into(), json!(self.created));
        }
        if let Some(email) = &self.email {
            attrs.insert("email".into(), json!(email));
            ts.insert("email".into(), json!(self.created));
        }
        json!({
            "id": self.id,
            "identifiers": {"id": self.id, "email": self.email, "cio_id": self.cio_id},
            "attributes": attrs,
            "timestamps": ts,
            "unsubscribed": self.unsubscribed,
            "devices": [],
        })
    }
}

impl Segment {
    pub fn new(id: i64, ts: i64) -> Segment {
        Segment {
            id,
            name: String::new(),
            description: String::new(),
            kind: String::new(),
            created_at: ts,
            updated_at: ts,
            members: Vec::new(),
            member_set: HashSet::new(),
        }
    }

    /// Members' cio_ids in membership order.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    pub fn has(&self, cio_id: &str) -> bool {
        self.member_set.contains(cio_id)
    }

    /// Appends a member (no-op if already in); true when added.
    pub fn add(&mut self, cio_id: &str) -> bool {
        let added = self.member_set.insert(cio_id.to_string());
        if added {
            self.members.push(cio_id.to_string());
        }
        added
    }

    pub fn remove(&mut self, cio_id: &str) {
        if self.member_set.remove(cio_id) {
            self.members.retain(|m| m != cio_id);
        }
    }

    /// The catalogue's segment object.
    pub fn full_json(&self) -> Value {
        json!({
            "id": self.id,
            "deduplicate_id": format!("{}:{}", self.id, self.updated_at),
            "name": self.name,
            "description": self.description,
            "state": "finished",
            "progress": null,
            "type": self.kind,
            "tags": null,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }

    /// The per-person segment object.
    pub fn short_json(&self) -> Value {
        json!({"id": self.id, "name": self.name, "description": self.description})
    }
}
