//! Segments of a contact: from the webhook's `tags`, or from Customer.io, named from the cached
//! catalogue (`segments` table), which is refreshed from `GET /v1/segments` when an unknown id appears.

use std::collections::BTreeSet;

use shared::command::SyncV1;
use sqlx::PgConnection;

use super::{prefetch::Snapshot, store, Failure, SyncCtx};
use crate::{
    cio::{CioError, PersonRef},
    events::EventLog,
};

/// The contact's segment ids, with a label for the log; `None` when Customer.io has no such person.
/// From the webhook's `tags`, else the batch's membership snapshot, else one call.
pub struct Loaded {
    pub ids: BTreeSet<i64>,
    pub label: String,
}

pub async fn load(
    ctx: &SyncCtx,
    cmd: &SyncV1,
    person: &PersonRef,
    cio_id: Option<&str>,
    snapshot: Option<&Snapshot>,
) -> Result<Option<Loaded>, Failure> {
    let ids: BTreeSet<i64> = match (&cmd.tags, snapshot) {
        (Some(tags), _) => tags.iter().copied().collect(),
        (None, Some(snap)) => snap.segments_of(cio_id, &cmd.contact.email),
        (None, None) => match ctx.cio.person_segments(person).await {
            Ok(segs) => {
                store::upsert_catalogue(&ctx.pool, &segs).await?;
                segs.iter().map(|s| s.id).collect()
            }
            Err(CioError::NotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        },
    };
    let snapshot_names = snapshot.filter(|_| cmd.tags.is_none()).map(|s| &s.names);
    let (mut names, complete) = match snapshot_names {
        // The snapshot read the whole catalogue (names and types) moments ago.
        Some(n) => (
            ids.iter()
                .filter_map(|id| n.get(id).map(|v| (*id, v.clone())))
                .collect(),
            true,
        ),
        None => store::segment_names(&ctx.pool, &ids).await?,
    };
    if !complete {
        // An id the catalogue does not know (or knows without its type): refresh it from Customer.io.
        let all = ctx.cio.segments().await?;
        store::upsert_catalogue(&ctx.pool, &all).await?;
        names = store::segment_names(&ctx.pool, &ids).await?.0;
    }
    let label = if ids.is_empty() {
        "none".to_string()
    } else {
        ids.iter()
            .map(|id| {
                names
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| format!("(Unknown Segment: {id})"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(Some(Loaded { ids, label }))
}

/// Replaces the user's segment set and says what changed.
pub async fn apply(conn: &mut PgConnection, user_id: i64, loaded: &Loaded, log: &mut EventLog) -> Result<(), Failure> {
    let (added, removed) = store::replace_segments(conn, user_id, &loaded.ids).await?;
    let mut msg = format!("Loaded segment(s): {}", loaded.label);
    if !added.is_empty() || !removed.is_empty() {
        msg.push_str(&format!(" ({} added, {} removed)", added.len(), removed.len()));
    }
    log.info(msg);
    Ok(())
}
