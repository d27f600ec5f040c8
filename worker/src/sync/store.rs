//! The Postgres side of a sync: finding, creating and updating users, their meta and segments,
//! and the segment catalogue. Functions take a connection so that the caller decides the
//! transaction; the sync module holds the one transaction per event.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{PgConnection, PgPool};

use crate::cio::types::Segment;

/// A local user as the sync needs to see it.
#[derive(Debug, Clone, sqlx::FromRow)]
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
    pub protected: bool,
}

/// Finds the user by `cio_id` first, then by any of `emails` (case-insensitive).
pub async fn find_user(
    conn: &mut PgConnection,
    cio_id: Option<&str>,
    emails: &[String],
) -> Result<Option<UserRow>, sqlx::Error> {
    find_user_sql(conn, FIND_USER, cio_id, emails).await
}

/// Like [`find_user`], and locks the user's row until the transaction ends.
pub async fn find_user_for_update(
    conn: &mut PgConnection,
    cio_id: Option<&str>,
    emails: &[String],
) -> Result<Option<UserRow>, sqlx::Error> {
    find_user_sql(conn, FIND_USER_FOR_UPDATE, cio_id, emails).await
}

macro_rules! find_user_query {
    () => {
        "select u.id, u.email, u.username, u.role, u.cio_id, u.customer_id, u.first_name, u.last_name,
                u.display_name, r.protected
         from users u join roles r on r.name = u.role
         where ($1::text is not null and u.cio_id = $1) or lower(u.email) = any($2)
         order by (u.cio_id is not distinct from $1) desc, u.id
         limit 1"
    };
}
const FIND_USER: &str = find_user_query!();

const FIND_USER_FOR_UPDATE: &str = concat!(find_user_query!(), " for update of u");

async fn find_user_sql(
    conn: &mut PgConnection,
    sql: &'static str,
    cio_id: Option<&str>,
    emails: &[String],
) -> Result<Option<UserRow>, sqlx::Error> {
    let lowered: Vec<String> = emails.iter().map(|e| e.to_lowercase()).collect();
    sqlx::query_as(sql)
        .bind(cio_id)
        .bind(&lowered)
        .fetch_optional(conn)
        .await
}

/// Serialises every writer of one contact until the transaction ends (many `add`s at once).
pub async fn lock_contact(conn: &mut PgConnection, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_advisory_xact_lock(hashtextextended('cio-sync contact ' || lower($1), 0))")
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// `Some(protected)` when the role is registered.
pub async fn role(conn: &mut PgConnection, name: &str) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar("select protected from roles where name = $1")
        .bind(name)
        .fetch_optional(conn)
        .await
}

/// The user id owning `username` (case-insensitive), if any.
pub async fn username_owner(conn: &mut PgConnection, username: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("select id from users where lower(username) = lower($1)")
        .bind(username)
        .fetch_optional(conn)
        .await
}

pub async fn email_owner(conn: &mut PgConnection, email: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("select id from users where lower(email) = lower($1)")
        .bind(email)
        .fetch_optional(conn)
        .await
}

/// A user to create.
pub struct NewUser<'a> {
    pub email: &'a str,
    pub username: &'a str,
    pub password_hash: &'a str,
    pub role: &'a str,
    pub cio_id: Option<&'a str>,
    pub customer_id: Option<&'a str>,
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
    pub display_name: &'a str,
}

pub async fn insert_user(conn: &mut PgConnection, u: &NewUser<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "insert into users (email, username, password_hash, role, cio_id, customer_id, first_name, last_name, display_name)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning id",
    )
    .bind(u.email)
    .bind(u.username)
    .bind(u.password_hash)
    .bind(u.role)
    .bind(u.cio_id)
    .bind(u.customer_id)
    .bind(u.first_name)
    .bind(u.last_name)
    .bind(u.display_name)
    .fetch_one(conn)
    .await
}

/// Column changes to an existing user; `None` leaves a column as it is.
#[derive(Debug, Default)]
pub struct UserChanges {
    pub email: Option<String>,
    pub role: Option<String>,
    pub cio_id: Option<String>,
    pub customer_id: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub display_name: Option<String>,
}

impl UserChanges {
    pub fn is_empty(&self) -> bool {
        self.email.is_none()
            && self.role.is_none()
            && self.cio_id.is_none()
            && self.customer_id.is_none()
            && self.first_name.is_none()
            && self.last_name.is_none()
            && self.display_name.is_none()
    }
}

pub async fn update_user(conn: &mut PgConnection, id: i64, c: &UserChanges) -> Result<(), sqlx::Error> {
    if c.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "update users set email = coalesce($2, email), role = coalesce($3, role), cio_id = coalesce($4, cio_id),
             customer_id = coalesce($5, customer_id), first_name = coalesce($6, first_name),
             last_name = coalesce($7, last_name), display_name = coalesce($8, display_name), updated_at = now()
         where id = $1",
    )
    .bind(id)
    .bind(&c.email)
    .bind(&c.role)
    .bind(&c.cio_id)
    .bind(&c.customer_id)
    .bind(&c.first_name)
    .bind(&c.last_name)
    .bind(&c.display_name)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets meta keys (never deletes: empty attributes do not clear local data).
pub async fn upsert_meta(
    conn: &mut PgConnection,
    user_id: i64,
    meta: &BTreeMap<String, String>,
) -> Result<(), sqlx::Error> {
    if meta.is_empty() {
        return Ok(());
    }
    let keys: Vec<&String> = meta.keys().collect();
    let values: Vec<&String> = meta.values().collect();
    sqlx::query(
        "insert into user_meta (user_id, meta_key, meta_value)
         select $1, k, v from unnest($2::text[], $3::text[]) as t(k, v)
         on conflict (user_id, meta_key) do update set meta_value = excluded.meta_value
         where user_meta.meta_value is distinct from excluded.meta_value",
    )
    .bind(user_id)
    .bind(keys)
    .bind(values)
    .execute(conn)
    .await?;
    Ok(())
}

/// Replaces the user's segment set; returns (added, removed).
pub async fn replace_segments(
    conn: &mut PgConnection,
    user_id: i64,
    ids: &BTreeSet<i64>,
) -> Result<(Vec<i64>, Vec<i64>), sqlx::Error> {
    let wanted: Vec<i64> = ids.iter().copied().collect();
    let (added, removed): (Vec<i64>, Vec<i64>) = sqlx::query_as(
        "with removed as (
             delete from user_segments where user_id = $1 and not (segment_id = any($2)) returning segment_id
         ), added as (
             insert into user_segments (user_id, segment_id) select $1, unnest($2::bigint[])
             on conflict do nothing returning segment_id
         )
         select coalesce((select array_agg(segment_id) from added), '{}'),
                coalesce((select array_agg(segment_id) from removed), '{}')",
    )
    .bind(user_id)
    .bind(&wanted)
    .fetch_one(conn)
    .await?;
    Ok((added, removed))
}

/// Stores segment names and descriptions from Customer.io, touching only rows that changed.
pub async fn upsert_catalogue(pool: &PgPool, segments: &[Segment]) -> Result<(), sqlx::Error> {
    let named: Vec<&Segment> = segments.iter().filter(|s| s.name.is_some()).collect();
    if named.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = named.iter().map(|s| s.id).collect();
    let names: Vec<Option<String>> = named.iter().map(|s| s.name.clone()).collect();
    let descs: Vec<Option<String>> = named.iter().map(|s| s.description.clone()).collect();
    let kinds: Vec<Option<String>> = named.iter().map(|s| s.kind.clone()).collect();
    sqlx::query(
        "insert into segments (id, name, description, type)
         select * from unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
         on conflict (id) do update set
             name = excluded.name,
             description = coalesce(excluded.description, segments.description),
             type = coalesce(excluded.type, segments.type),
             updated_at = now()
         where (segments.name, segments.description, segments.type) is distinct from
               (excluded.name, coalesce(excluded.description, segments.description), coalesce(excluded.type, segments.type))",
    )
    .bind(ids)
    .bind(names)
    .bind(descs)
    .bind(kinds)
    .execute(pool)
    .await?;
    Ok(())
}

/// Names of the given segments that the catalogue knows.
/// Also says whether every one of them is fully catalogued (name and type, as `GET /v1/segments`
/// gives them; the per-person endpoint gives no type).
pub async fn segment_names(pool: &PgPool, ids: &BTreeSet<i64>) -> Result<(BTreeMap<i64, String>, bool), sqlx::Error> {
    let ids: Vec<i64> = ids.iter().copied().collect();
    let rows: Vec<(i64, String, bool)> =
        sqlx::query_as("select id, name, type is not null from segments where id = any($1) and name is not null")
            .bind(&ids)
            .fetch_all(pool)
            .await?;
    let complete = rows.len() == ids.len() && rows.iter().all(|r| r.2);
    Ok((rows.into_iter().map(|(id, name, _)| (id, name)).collect(), complete))
}

/// A side effect to queue in the outbox, in the same transaction as the user.
pub struct NewOutboxRow<'a> {
    pub kind: &'a str,
    pub user_id: i64,
    pub event_id: uuid::Uuid,
    pub recipient: &'a str,
    /// password_return: the sealed password.
    pub secret: Option<Vec<u8>>,
    /// `pending`, or `skipped` when the feature is off.
    pub status: &'a str,
    pub note: Option<&'a str>,
}

pub async fn insert_outbox(conn: &mut PgConnection, row: NewOutboxRow<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into outbox (kind, user_id, event_id, recipient, secret, status, last_error)
         values ($1, $2, $3, $4, $5, $6, $7) on conflict (user_id, kind) do nothing",
    )
    .bind(row.kind)
    .bind(row.user_id)
    .bind(row.event_id)
    .bind(row.recipient)
    .bind(row.secret)
    .bind(row.status)
    .bind(row.note)
    .execute(conn)
    .await?;
    Ok(())
}
