//! `SimHandle`: synchronous seeding, inspection and fault control used by tests and the
//! Control API. Fallible `try_*` forms back the Control API; the public forms panic on misuse.

use serde_json::Value;

use super::server::lock;
use super::state::{now, Person, Segment};
use super::{Api, Fault, PersonView, RecordedRequest, SimHandle, TrackPut};

fn view(p: &Person) -> PersonView {
    PersonView {
        cio_id: p.cio_id.clone(),
        id: p.id.clone(),
        email: p.email.clone(),
        attributes: p.attrs.clone(),
    }
}

impl SimHandle {
    /// Base URL of the server, e.g. `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.inner.base_url.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Override the URL the simulator reports about itself (Track region `url`, redirect
    /// `Location`), e.g. `http://cio-sim:9090` inside a compose network.
    pub fn set_public_url(&self, url: &str) {
        *self.inner.base_url.write().unwrap_or_else(|e| e.into_inner()) = url.trim_end_matches('/').to_string();
    }

    /// Add a person (or update the one with this email); returns its cio_id.
    /// `attrs` is an object; values are stored as strings (keys `id`/`email` set identifiers).
    pub fn add_person(&self, email: &str, attrs: Value) -> String {
        self.add_person_with_id(Some(email), None, attrs)
    }

    /// Add a person with optional email and id (upsert: an existing person with the same
    /// email, else the same id, is updated). Returns the cio_id.
    pub fn add_person_with_id(&self, email: Option<&str>, id: Option<&str>, attrs: Value) -> String {
        let mut store = lock(&self.inner.store);
        let existing = email
            .and_then(|e| store.find_email(e))
            .or_else(|| id.and_then(|i| store.find(super::state::IdType::Id, i)));
        let idx = match existing {
            Some(i) => {
                if let Some(e) = email {
                    store.set_email(i, Some(e.to_string()));
                }
                if let Some(id) = id {
                    store.set_id(i, Some(id.to_string()));
                }
                i
            }
            None => store.create(id.map(str::to_string), email.map(str::to_string)),
        };
        store.apply_seed_attrs(idx, &attrs);
        store.people[idx].cio_id.clone()
    }

    pub(crate) fn try_set_attributes(&self, email: &str, attrs: &Value) -> Result<(), String> {
        let mut store = lock(&self.inner.store);
        let idx = store
            .find_email(email)
            .ok_or_else(|| format!("no person with email {email}"))?;
        store.apply_seed_attrs(idx, attrs);
        Ok(())
    }

    /// Set one attribute (null or "" removes it). Panics if no person has this email.
    pub fn set_attribute(&self, email: &str, key: &str, value: Value) {
        let attrs = Value::Object([(key.to_string(), value)].into_iter().collect());
        self.try_set_attributes(email, &attrs)
            .unwrap_or_else(|e| panic!("cio-sim set_attribute: {e}"));
    }

    /// Remove a person (and their segment memberships); no-op if unknown.
    pub fn remove_person(&self, email: &str) {
        let mut store = lock(&self.inner.store);
        if let Some(i) = store.find_email(email) {
            store.remove(i);
        }
    }

    /// Snapshot of the person with this email (case-insensitive).
    pub fn person(&self, email: &str) -> Option<PersonView> {
        let store = lock(&self.inner.store);
        store.find_email(email).map(|i| view(&store.people[i]))
    }

    /// Snapshot of the person with this cio_id.
    pub fn person_by_cio_id(&self, cio_id: &str) -> Option<PersonView> {
        lock(&self.inner.store).person_by_cio(cio_id).map(view)
    }

    /// The e-mail of the person a Track path identifier names (`cio_<id>`, or an e-mail as is).
    pub fn email_of(&self, identifier: &str) -> Option<String> {
        match identifier.strip_prefix("cio_") {
            Some(id) => self.person_by_cio_id(id).and_then(|p| p.email),
            None => Some(identifier.to_string()),
        }
    }

    /// All people, in creation order.
    pub fn people(&self) -> Vec<PersonView> {
        lock(&self.inner.store).people.iter().map(view).collect()
    }

    /// Add (or rename/retype) a segment. `kind` is `"manual"` or `"dynamic"`.
    pub fn add_segment(&self, id: i64, name: &str, kind: &str) {
        let mut store = lock(&self.inner.store);
        let ts = now();
        let seg = store.segments.entry(id).or_insert_with(|| Segment::new(id, ts));
        seg.name = name.to_string();
        seg.description = format!("{name} ({kind} segment)");
        seg.kind = kind.to_string();
        seg.updated_at = ts;
    }

    pub(crate) fn try_add_to_segment(&self, segment_id: i64, email: &str) -> Result<(), String> {
        let mut store = lock(&self.inner.store);
        let idx = store
            .find_email(email)
            .ok_or_else(|| format!("no person with email {email}"))?;
        let cio = store.people[idx].cio_id.clone();
        let seg = store
            .segments
            .get_mut(&segment_id)
            .ok_or_else(|| format!("no segment {segment_id}"))?;
        if seg.add(&cio) {
            seg.updated_at = now();
        }
        Ok(())
    }

    /// Add a person to a segment (appended to the stable membership order).
    /// Panics if the segment or person does not exist.
    pub fn add_to_segment(&self, segment_id: i64, email: &str) {
        self.try_add_to_segment(segment_id, email)
            .unwrap_or_else(|e| panic!("cio-sim add_to_segment: {e}"));
    }

    /// Remove a person from a segment; no-op if either is unknown.
    pub fn remove_from_segment(&self, segment_id: i64, email: &str) {
        let mut store = lock(&self.inner.store);
        let Some(idx) = store.find_email(email) else {
            return;
        };
        let cio = store.people[idx].cio_id.clone();
        if let Some(seg) = store.segments.get_mut(&segment_id) {
            seg.remove(&cio);
            seg.updated_at = now();
        }
    }

    /// Emails (or ids when no email) of a segment's members, in membership order.
    pub fn segment_members(&self, segment_id: i64) -> Vec<String> {
        let store = lock(&self.inner.store);
        let Some(seg) = store.segments.get(&segment_id) else {
            return Vec::new();
        };
        seg.members()
            .iter()
            .filter_map(|c| store.person_by_cio(c))
            .filter_map(|p| p.email.clone().or_else(|| p.id.clone()))
            .collect()
    }

    /// Every request received (App, Track and Control), in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.log).clone()
    }

    /// App API requests that were answered (any status; resets are not answered).
    pub fn app_request_count(&self) -> usize {
        lock(&self.inner.log)
            .iter()
            .filter(|r| r.api == Api::App && r.status != 0)
            .count()
    }

    /// Recorded requests (any API) answered with `status`.
    pub fn count_status(&self, status: u16) -> usize {
        lock(&self.inner.log).iter().filter(|r| r.status == status).count()
    }

    /// Track `PUT /api/v1/customers/{id}` calls answered 200, in order.
    pub fn track_puts(&self) -> Vec<TrackPut> {
        lock(&self.inner.puts).clone()
    }

    /// Add a fault (faults are checked in insertion order; the first match fires).
    pub fn inject(&self, fault: Fault) {
        lock(&self.inner.faults).push(fault);
    }

    /// Active faults (with remaining `times`).
    pub fn faults(&self) -> Vec<Fault> {
        lock(&self.inner.faults).clone()
    }

    pub fn clear_faults(&self) {
        lock(&self.inner.faults).clear();
    }

    /// Clear the request log and the recorded Track PUTs.
    pub fn reset_log(&self) {
        lock(&self.inner.log).clear();
        lock(&self.inner.puts).clear();
    }
}
