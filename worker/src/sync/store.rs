//! The Postgres side of a sync, set-based: each function reads or writes what a whole batch of
//! commands needs in one statement. Functions take a connection so that the caller decides the
//! transaction; the pipeline holds one transaction per batch.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use uuid::Uuid;

use crate::{cio::types::Segment, outbox::OutboxKind};

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

/// How to find one contact's user: by `cio_id` first, then by any of `emails`.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub cio_id: Option<String>,
    /// Lower-cased addresses.
    pub emails: Vec<String>,
}

/// Finds each lookup's user (`None` where there is none), in order. With `lock`, the users' rows
/// stay locked until the transaction ends.
pub async fn find_users(
    conn: &mut PgConnection,
    lookups: &[Lookup],
    lock: bool,
) -> Result<Vec<Option<UserRow>>, sqlx::Error> {
    if lookups.is_empty() {
        return Ok(Vec::new());
    }
    #[derive(sqlx::FromRow)]
    struct Found {
        i: i64,
        #[sqlx(flatten)]
        user: UserRow,
    }
    let sql = format!(
        "select t.i, u.* from unnest($1::text[], $2::text[]) with ordinality as t(cio_id, emails, i)
         cross join lateral (
             select u.id, u.email, u.username, u.role, u.cio_id, u.customer_id, u.first_name, u.last_name,
                    u.display_name, r.protected
             from users u join roles r on r.name = u.role
             where (t.cio_id is not null and u.cio_id = t.cio_id)
                or fold_email(u.email) = any(array(select jsonb_array_elements_text(t.emails::jsonb)))
             order by (u.cio_id is not distinct from t.cio_id) desc, u.id
             limit 1 {}
         ) u",
        if lock { "for update of u" } else { "" }
    );
    let rows: Vec<Found> = sqlx::query_as(AssertSqlSafe(sql.as_str()))
        .bind(lookups.iter().map(|l| l.cio_id.clone()).collect::<Vec<_>>())
        .bind(
            lookups
                .iter()
                .map(|l| serde_json::to_string(&l.emails).expect("strings serialise"))
                .collect::<Vec<_>>(),
        )
        .fetch_all(conn)
        .await?;
    let mut out = vec![None; lookups.len()];
    for f in rows {
        out[(f.i - 1) as usize] = Some(f.user);
    }
    Ok(out)
}

/// Serialises every writer of these contacts (their cio_id, else e-mail) until the transaction ends.
pub async fn lock_contacts(conn: &mut PgConnection, keys: &[String]) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query("select lock_contacts($1)").bind(keys).execute(conn).await?;
    Ok(())
}

/// What a registered role allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleRules {
    /// Users with it are never changed by webhooks.
    pub protected: bool,
    /// A webhook's `role=` may give it (an operator's allow-list).
    pub assignable: bool,
}

/// Every registered role: name → its rules.
pub async fn roles(conn: &mut PgConnection) -> Result<HashMap<String, RoleRules>, sqlx::Error> {
    let rows: Vec<(String, bool, bool)> = sqlx::query_as("select name, protected, assignable from roles")
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(n, protected, assignable)| (n, RoleRules { protected, assignable }))
        .collect())
}

/// Which of `usernames` are taken: lower-cased username → its user (`Some`, as [`super::users::Facts`] keeps them).
pub async fn taken_usernames(
    conn: &mut PgConnection,
    usernames: &[String],
) -> Result<HashMap<String, Option<i64>>, sqlx::Error> {
    if usernames.is_empty() {
        return Ok(HashMap::new());
    }
    let lowered: Vec<String> = usernames.iter().map(|u| shared::email::fold(u)).collect();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("select fold_email(username), id from users where fold_email(username) = any($1)")
            .bind(&lowered)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().map(|(u, id)| (u, Some(id))).collect())
}

/// The owners of `emails`: lower-cased address → user id.
pub async fn email_owners(conn: &mut PgConnection, emails: &[String]) -> Result<HashMap<String, i64>, sqlx::Error> {
    if emails.is_empty() {
        return Ok(HashMap::new());
    }
    let lowered: Vec<String> = emails.iter().map(|e| shared::email::fold(e)).collect();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("select fold_email(email), id from users where fold_email(email) = any($1)")
            .bind(&lowered)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().collect())
}

/// The newest command carrying URL state (`tags=`, `role=`) applied to each of `users`:
/// user id → (its `received_at`, its event).
pub async fn url_states(
    conn: &mut PgConnection,
    users: &[i64],
) -> Result<HashMap<i64, (DateTime<Utc>, Uuid)>, sqlx::Error> {
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(i64, DateTime<Utc>, Uuid)> =
        sqlx::query_as("select user_id, received_at, event_id from user_url_state where user_id = any($1)")
            .bind(users)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().map(|(u, at, e)| (u, (at, e))).collect())
}

/// Records commands carrying URL state as applied (a user keeps the newest).
pub async fn record_url_states(
    conn: &mut PgConnection,
    applied: &[(i64, DateTime<Utc>, Uuid)],
) -> Result<(), sqlx::Error> {
    if applied.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into user_url_state (user_id, received_at, event_id)
         select * from unnest($1::bigint[], $2::timestamptz[], $3::uuid[])
         on conflict (user_id) do update set received_at = excluded.received_at, event_id = excluded.event_id
         where user_url_state.received_at < excluded.received_at",
    )
    .bind(applied.iter().map(|a| a.0).collect::<Vec<_>>())
    .bind(applied.iter().map(|a| a.1).collect::<Vec<_>>())
    .bind(applied.iter().map(|a| a.2).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: String,
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub cio_id: Option<String>,
    pub customer_id: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub display_name: String,
}

/// Creates the users; returns their ids in order.
pub async fn insert_users(conn: &mut PgConnection, users: &[NewUser]) -> Result<Vec<i64>, sqlx::Error> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let col = |f: fn(&NewUser) -> Option<String>| users.iter().map(f).collect::<Vec<_>>();
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "with new as (
             select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                  $8::text[], $9::text[]) with ordinality
                 as t(email, username, password_hash, role, cio_id, customer_id, first_name, last_name, display_name, i)
         ), created as (
             insert into users (email, username, password_hash, role, cio_id, customer_id, first_name, last_name, display_name)
             select email, username, password_hash, role, cio_id, customer_id, first_name, last_name, display_name
             from new order by i
             returning id, fold_email(email) as email
         )
         select new.i, created.id from new join created on created.email = fold_email(new.email)",
    )
    .bind(col(|u| Some(u.email.clone())))
    .bind(col(|u| Some(u.username.clone())))
    .bind(col(|u| Some(u.password_hash.clone())))
    .bind(col(|u| Some(u.role.clone())))
    .bind(col(|u| u.cio_id.clone()))
    .bind(col(|u| u.customer_id.clone()))
    .bind(col(|u| u.first_name.clone()))
    .bind(col(|u| u.last_name.clone()))
    .bind(col(|u| Some(u.display_name.clone())))
    .fetch_all(conn)
    .await?;
    let mut ids = vec![0; users.len()];
    for (i, id) in rows {
        ids[(i - 1) as usize] = id;
    }
    Ok(ids)
}

/// Column changes to an existing user; `None` leaves a column as it is.
#[derive(Debug, Default, Clone)]
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
    /// The names of the columns that change, for the event log.
    pub fn columns(&self) -> Vec<&'static str> {
        [
            ("email", self.email.is_some()),
            ("role", self.role.is_some()),
            ("first_name", self.first_name.is_some()),
            ("last_name", self.last_name.is_some()),
            ("display_name", self.display_name.is_some()),
            ("cio_id", self.cio_id.is_some()),
            ("customer_id", self.customer_id.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, b)| b.then_some(n))
        .collect()
    }
}

/// Applies column changes to many users at once.
pub async fn update_users(conn: &mut PgConnection, changes: &[(i64, UserChanges)]) -> Result<(), sqlx::Error> {
    let changes: Vec<&(i64, UserChanges)> = changes.iter().filter(|(_, c)| !c.columns().is_empty()).collect();
    if changes.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&UserChanges) -> Option<String>| changes.iter().map(|(_, c)| f(c)).collect::<Vec<_>>();
    sqlx::query(
        "update users u set email = coalesce(c.email, u.email), role = coalesce(c.role, u.role),
             cio_id = coalesce(c.cio_id, u.cio_id), customer_id = coalesce(c.customer_id, u.customer_id),
             first_name = coalesce(c.first_name, u.first_name), last_name = coalesce(c.last_name, u.last_name),
             display_name = coalesce(c.display_name, u.display_name), updated_at = now()
         from unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
             as c(id, email, role, cio_id, customer_id, first_name, last_name, display_name)
         where u.id = c.id",
    )
    .bind(changes.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(col(|c| c.email.clone()))
    .bind(col(|c| c.role.clone()))
    .bind(col(|c| c.cio_id.clone()))
    .bind(col(|c| c.customer_id.clone()))
    .bind(col(|c| c.first_name.clone()))
    .bind(col(|c| c.last_name.clone()))
    .bind(col(|c| c.display_name.clone()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets meta keys of many users (never deletes: empty attributes do not clear local data).
pub async fn upsert_meta(
    conn: &mut PgConnection,
    meta: &[(i64, &BTreeMap<String, String>)],
) -> Result<(), sqlx::Error> {
    let (mut users, mut keys, mut values) = (vec![], vec![], vec![]);
    for (user_id, m) in meta {
        for (k, v) in m.iter() {
            users.push(*user_id);
            keys.push(k.as_str());
            values.push(v.as_str());
        }
    }
    if users.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into user_meta (user_id, meta_key, meta_value)
         select * from unnest($1::bigint[], $2::text[], $3::text[])
         on conflict (user_id, meta_key) do update set meta_value = excluded.meta_value
         where user_meta.meta_value is distinct from excluded.meta_value",
    )
    .bind(users)
    .bind(keys)
    .bind(values)
    .execute(conn)
    .await?;
    Ok(())
}

/// Replaces the segment sets of many users; returns each user's (added, removed) counts.
pub async fn replace_segments(
    conn: &mut PgConnection,
    sets: &[(i64, &BTreeSet<i64>)],
) -> Result<HashMap<i64, (i64, i64)>, sqlx::Error> {
    if sets.is_empty() {
        return Ok(HashMap::new());
    }
    let owners: Vec<i64> = sets.iter().map(|(u, _)| *u).collect();
    let (mut users, mut segments) = (vec![], vec![]);
    for (user_id, ids) in sets {
        for id in ids.iter() {
            users.push(*user_id);
            segments.push(*id);
        }
    }
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "with owners as (
             select unnest($1::bigint[]) as user_id
         ), wanted as (
             select * from unnest($2::bigint[], $3::bigint[]) as w(user_id, segment_id)
         ), removed as (
             delete from user_segments s using owners o
             where s.user_id = o.user_id
               and not exists (select 1 from wanted w where w.user_id = s.user_id and w.segment_id = s.segment_id)
             returning s.user_id
         ), added as (
             insert into user_segments (user_id, segment_id) select user_id, segment_id from wanted
             on conflict do nothing returning user_id
         )
         select o.user_id,
                (select count(*) from added a where a.user_id = o.user_id),
                (select count(*) from removed r where r.user_id = o.user_id)
         from owners o",
    )
    .bind(owners)
    .bind(users)
    .bind(segments)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(u, a, r)| (u, (a, r))).collect())
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
pub struct NewOutboxRow {
    pub kind: OutboxKind,
    pub user_id: i64,
    pub event_id: Uuid,
    pub recipient: String,
    /// password_return: the sealed password.
    pub secret: Option<Vec<u8>>,
    /// `pending`, or `skipped` when the feature is off (with the reason).
    pub skipped: Option<&'static str>,
}

/// Queues outbox rows (at most one password return and one welcome e-mail per user, ever).
pub async fn insert_outbox(conn: &mut PgConnection, rows: &[NewOutboxRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into outbox (kind, user_id, event_id, recipient, secret, status, last_error)
         select k, u, e, r, s, case when n is null then 'pending' else 'skipped' end, n
         from unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::bytea[], $6::text[]) as t(k, u, e, r, s, n)
         on conflict (user_id, kind) where kind in ('password_return', 'welcome_email') do nothing",
    )
    .bind(rows.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.user_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.recipient.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.secret.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.skipped).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}
