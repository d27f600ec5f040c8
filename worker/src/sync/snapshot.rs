//! Segment membership snapshots (interim: replaced by the paged, leased implementation).

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

use super::{ledger::CLOCK_SKEW_MARGIN, outcome::Failure, store};
use crate::cio::{CioClient, CioError};

/// Members per membership page (the API's maximum).
pub const MEMBERSHIP_PAGE: u32 = 30_000;

#[derive(Debug, Default)]
struct Members {
    names: HashMap<i64, String>,
    by_cio: HashMap<String, BTreeSet<i64>>,
    by_email: HashMap<String, BTreeSet<i64>>,
}

/// Every segment's members at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub id: i64,
    pub taken_at: DateTime<Utc>,
    members: Arc<Members>,
}

impl Snapshot {
    pub fn name(&self, id: i64) -> Option<&str> {
        self.members.names.get(&id).map(String::as_str)
    }

    pub async fn memberships(
        &self,
        _pool: &PgPool,
        contacts: &[(Option<&str>, &str)],
    ) -> Result<Vec<BTreeSet<i64>>, sqlx::Error> {
        Ok(contacts
            .iter()
            .map(|(cio, email)| {
                let mut s = BTreeSet::new();
                if let Some(found) = cio.and_then(|c| self.members.by_cio.get(c)) {
                    s.extend(found);
                }
                if let Some(found) = self.members.by_email.get(&email.to_lowercase()) {
                    s.extend(found);
                }
                s
            })
            .collect())
    }
}

pub struct Snapshots {
    current: Mutex<Option<Snapshot>>,
}

impl Snapshots {
    pub fn new(_max_members: usize) -> Self {
        Self {
            current: Mutex::new(None),
        }
    }

    pub async fn known_fresh(&self, received: DateTime<Utc>) -> bool {
        let g = self.current.lock().await;
        g.as_ref().is_some_and(|s| s.taken_at >= received + CLOCK_SKEW_MARGIN)
    }

    pub async fn fresh(
        &self,
        pool: &PgPool,
        cio: &CioClient,
        received: DateTime<Utc>,
    ) -> Result<Option<Snapshot>, Failure> {
        let mut g = self.current.lock().await;
        if let Some(s) = g.as_ref().filter(|s| s.taken_at >= received + CLOCK_SKEW_MARGIN) {
            return Ok(Some(s.clone()));
        }
        let ready_at = received + CLOCK_SKEW_MARGIN;
        if let Ok(early) = (ready_at - Utc::now()).to_std() {
            tokio::time::sleep(early).await;
        }
        let taken_at = Utc::now();
        let catalogue = cio.segments().await?;
        store::upsert_catalogue(pool, &catalogue).await?;
        let mut m = Members::default();
        for seg in &catalogue {
            if let Some(n) = &seg.name {
                m.names.insert(seg.id, n.clone());
            }
            let mut start: Option<String> = None;
            loop {
                let page = match cio.segment_membership(seg.id, start.as_deref(), MEMBERSHIP_PAGE).await {
                    Ok(p) => p,
                    Err(CioError::NotFound) => break,
                    Err(e) => return Err(e.into()),
                };
                for who in page.identifiers {
                    if let Some(c) = who.cio_id {
                        m.by_cio.entry(c).or_default().insert(seg.id);
                    }
                    if let Some(e) = who.email {
                        m.by_email.entry(e.to_lowercase()).or_default().insert(seg.id);
                    }
                }
                match page.next.filter(|n| !n.is_empty()) {
                    Some(n) => start = Some(n),
                    None => break,
                }
            }
        }
        let s = Snapshot {
            id: Uuid::new_v4().as_u64_pair().0 as i64,
            taken_at,
            members: Arc::new(m),
        };
        *g = Some(s.clone());
        Ok(Some(s))
    }
}
