//! Events data: the search (filters, newest first, keyset pages, counts by status), one event
//! with its log, user and outbox rows, and one user. Read-only SQL over the public tables; the
//! pages and the JSON API both call these functions.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{outbox::OutboxRow, ConsoleError};

/// Every status an event can have, in the order the console shows them.
pub const STATUSES: [&str; 7] = [
    "processing",
    "retrying",
    "succeeded",
    "no_user",
    "contact_not_found",
    "rejected",
    "dead",
];
pub const ACTIONS: [&str; 3] = ["add", "update", "update_tags"];
/// Events per page unless `limit` says otherwise (at most [`MAX_LIMIT`]).
pub const PAGE: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

/// The search as given (query string); empty fields mean "any".
#[derive(Debug, Default, Clone, Deserialize)]
pub struct EventQuery {
    pub email: Option<String>,
    pub status: Option<String>,
    pub action: Option<String>,
    pub key_label: Option<String>,
    /// Start of the range (inclusive): RFC 3339, or `YYYY-MM-DDTHH:MM` in UTC.
    pub from: Option<String>,
    /// End of the range (exclusive), same forms.
    pub to: Option<String>,
    /// Where the previous page ended (`next` of that page).
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

/// The search, checked.
#[derive(Debug, Default, Clone, Serialize)]
pub struct EventFilters {
    pub email: Option<String>,
    pub status: Option<String>,
    pub action: Option<String>,
    pub key_label: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: i64,
    #[serde(skip)]
    cursor: Option<(DateTime<Utc>, Uuid)>,
}

fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// An RFC 3339 time, or a `datetime-local` form value (taken as UTC).
pub fn parse_time(field: &str, s: &str) -> Result<DateTime<Utc>, ConsoleError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc());
        }
    }
    Err(ConsoleError::BadRequest(format!(
        "{field}: use an RFC 3339 time or YYYY-MM-DDTHH:MM (UTC)"
    )))
}

/// `received_at~event_id` of the last row of a page.
fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    format!("{}~{id}", at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

fn decode_cursor(s: &str) -> Result<(DateTime<Utc>, Uuid), ConsoleError> {
    let bad = || ConsoleError::BadRequest("cursor: not a cursor this console made".into());
    let (t, id) = s.split_once('~').ok_or_else(bad)?;
    let t = DateTime::parse_from_rfc3339(t).map_err(|_| bad())?;
    Ok((t.with_timezone(&Utc), id.parse().map_err(|_| bad())?))
}

impl EventQuery {
    pub fn check(&self) -> Result<EventFilters, ConsoleError> {
        let status = given(&self.status);
        if let Some(s) = &status {
            if !STATUSES.contains(&s.as_str()) {
                return Err(ConsoleError::BadRequest(format!(
                    "status: one of {}",
                    STATUSES.join(", ")
                )));
            }
        }
        let action = given(&self.action);
        if let Some(a) = &action {
            if !ACTIONS.contains(&a.as_str()) {
                return Err(ConsoleError::BadRequest(format!(
                    "action: one of {}",
                    ACTIONS.join(", ")
                )));
            }
        }
        let limit = self.limit.unwrap_or(PAGE);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ConsoleError::BadRequest(format!("limit: 1 to {MAX_LIMIT}")));
        }
        Ok(EventFilters {
            email: given(&self.email),
            status,
            action,
            key_label: given(&self.key_label),
            from: given(&self.from).map(|s| parse_time("from", &s)).transpose()?,
            to: given(&self.to).map(|s| parse_time("to", &s)).transpose()?,
            limit,
            cursor: given(&self.cursor).map(|c| decode_cursor(&c)).transpose()?,
        })
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EventRow {
    pub event_id: Uuid,
    pub action: String,
    pub email: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub received_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub key_label: Option<String>,
    pub user_id: Option<i64>,
}

const EVENT_COLUMNS: &str =
    "event_id, action, email, status, attempts, received_at, finished_at, last_error, key_label, user_id";

#[derive(Debug, Clone, Serialize)]
pub struct StatusCount {
    pub status: String,
    pub count: i64,
}

/// One page of a search.
#[derive(Debug, Clone, Serialize)]
pub struct EventsPage {
    pub filters: EventFilters,
    /// Events matching every filter but the status, by status (for the whole range, not the page).
    pub counts: Vec<StatusCount>,
    pub events: Vec<EventRow>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next: Option<String>,
}

/// Adds the filters (all but the status when `with_status` is false) to a `where true` query.
fn push_filters(q: &mut QueryBuilder<Postgres>, f: &EventFilters, with_status: bool) {
    if let Some(e) = &f.email {
        q.push(" and lower(email) = lower(").push_bind(e.clone()).push(")");
    }
    if let (true, Some(s)) = (with_status, &f.status) {
        q.push(" and status = ").push_bind(s.clone());
    }
    if let Some(a) = &f.action {
        q.push(" and action = ").push_bind(a.clone());
    }
    if let Some(k) = &f.key_label {
        q.push(" and key_label = ").push_bind(k.clone());
    }
    if let Some(t) = f.from {
        q.push(" and received_at >= ").push_bind(t);
    }
    if let Some(t) = f.to {
        q.push(" and received_at < ").push_bind(t);
    }
}

/// Newest first, one page after the cursor; only the page is loaded.
pub async fn search(pool: &PgPool, query: &EventQuery) -> Result<EventsPage, ConsoleError> {
    let f = query.check()?;
    let mut q = QueryBuilder::new(format!("select {EVENT_COLUMNS} from webhook_events where true"));
    push_filters(&mut q, &f, true);
    if let Some((at, id)) = f.cursor {
        q.push(" and (received_at, event_id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    q.push(" order by received_at desc, event_id desc limit ")
        .push_bind(f.limit + 1);
    let mut events: Vec<EventRow> = q.build_query_as().fetch_all(pool).await?;
    let next = if events.len() as i64 > f.limit {
        events.truncate(f.limit as usize);
        events.last().map(|e| encode_cursor(e.received_at, e.event_id))
    } else {
        None
    };

    let mut c = QueryBuilder::new("select status, count(*) from webhook_events where true");
    push_filters(&mut c, &f, false);
    c.push(" group by status");
    let found: Vec<(String, i64)> = c.build_query_as().fetch_all(pool).await?;
    let counts = STATUSES
        .iter()
        .map(|s| StatusCount {
            status: s.to_string(),
            count: found.iter().find(|(k, _)| k == s).map_or(0, |r| r.1),
        })
        .collect();
    Ok(EventsPage {
        filters: f,
        counts,
        events,
        next,
    })
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LogLine {
    pub at: DateTime<Utc>,
    pub level: String,
    pub message: String,
}

/// A user as the console shows it: never the password hash.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct UserRow {
    pub id: i64,
    pub email: String,
    pub username: String,
    pub role: String,
    pub cio_id: Option<String>,
    pub customer_id: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub display_name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const USER_COLUMNS: &str =
    "id, email, username, role, cio_id, customer_id, first_name, last_name, display_name, created_at, updated_at";

/// One event: its fields, its ordered log, the user it touched and its outbox rows.
#[derive(Debug, Clone, Serialize)]
pub struct EventDetail {
    pub event: EventRow,
    pub first_failed_at: Option<DateTime<Utc>>,
    pub last_failed_at: Option<DateTime<Utc>>,
    pub log: Vec<LogLine>,
    pub user: Option<UserRow>,
    pub outbox: Vec<OutboxRow>,
}

pub async fn detail(pool: &PgPool, id: &str) -> Result<EventDetail, ConsoleError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ConsoleError::BadRequest("an event id is a UUID".into()))?;
    let event: EventRow = sqlx::query_as(AssertSqlSafe(format!(
        "select {EVENT_COLUMNS} from webhook_events where event_id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| {
        ConsoleError::NotFound(format!(
            "no event {id} (an event is recorded when a worker first processes it)"
        ))
    })?;
    let (first_failed_at, last_failed_at): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        sqlx::query_as("select first_failed_at, last_failed_at from webhook_events where event_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?;
    let log = sqlx::query_as("select at, level, message from event_log where event_id = $1 order by at, id")
        .bind(id)
        .fetch_all(pool)
        .await?;
    let user = match event.user_id {
        Some(u) => {
            sqlx::query_as(AssertSqlSafe(format!("select {USER_COLUMNS} from users where id = $1")))
                .bind(u)
                .fetch_optional(pool)
                .await?
        }
        None => None,
    };
    let outbox = super::outbox::for_event(pool, id).await?;
    Ok(EventDetail {
        event,
        first_failed_at,
        last_failed_at,
        log,
        user,
        outbox,
    })
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Segment {
    pub id: i64,
    pub name: Option<String>,
}

/// One user: fields, profile data, segments and latest events.
#[derive(Debug, Clone, Serialize)]
pub struct UserDetail {
    pub user: UserRow,
    pub meta: Vec<(String, String)>,
    pub segments: Vec<Segment>,
    /// The latest events that touched this user (at most [`PAGE`]).
    pub events: Vec<EventRow>,
}

pub async fn user(pool: &PgPool, id: i64) -> Result<UserDetail, ConsoleError> {
    let user: UserRow = sqlx::query_as(AssertSqlSafe(format!("select {USER_COLUMNS} from users where id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ConsoleError::NotFound(format!("no user #{id}")))?;
    let meta = sqlx::query_as("select meta_key, meta_value from user_meta where user_id = $1 order by meta_key")
        .bind(id)
        .fetch_all(pool)
        .await?;
    let segments = sqlx::query_as(
        "select us.segment_id as id, s.name from user_segments us left join segments s on s.id = us.segment_id
         where us.user_id = $1 order by us.segment_id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let events = sqlx::query_as(AssertSqlSafe(format!(
        "select {EVENT_COLUMNS} from webhook_events where user_id = $1 or lower(email) = lower($2)
         order by received_at desc, event_id desc limit $3"
    )))
    .bind(id)
    .bind(&user.email)
    .bind(PAGE)
    .fetch_all(pool)
    .await?;
    Ok(UserDetail {
        user,
        meta,
        segments,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_fields_mean_any_and_bad_values_are_named() {
        let q = EventQuery {
            email: Some("  ".into()),
            status: Some("".into()),
            ..Default::default()
        };
        let f = q.check().unwrap();
        assert!(f.email.is_none() && f.status.is_none());
        assert_eq!(f.limit, PAGE);
        let bad = EventQuery {
            status: Some("done".into()),
            ..Default::default()
        };
        assert!(matches!(bad.check(), Err(ConsoleError::BadRequest(m)) if m.starts_with("status")));
        let bad = EventQuery {
            from: Some("yesterday".into()),
            ..Default::default()
        };
        assert!(matches!(bad.check(), Err(ConsoleError::BadRequest(m)) if m.starts_with("from")));
    }

    #[test]
    fn form_times_are_utc_and_cursors_round_trip() {
        let t = parse_time("from", "2026-11-27T08:20").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-27T08:20:00+00:00");
        let id = Uuid::new_v4();
        let at = Utc::now();
        let (t2, id2) = decode_cursor(&encode_cursor(at, id)).unwrap();
        assert_eq!((t2.timestamp_micros(), id2), (at.timestamp_micros(), id));
        assert!(decode_cursor("nonsense").is_err());
    }
}
