//! The HTML pages: each handler calls the same data function as its JSON twin in `api` and
//! renders it with an askama template (`templates/`, escaped by default). No scripts: forms,
//! links, and a meta refresh on a running job's page.

use askama::Template;
use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
    Extension,
};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{
    auth::{self, Operator, LOGIN_COOKIE, SESSION_COOKIE, SESSION_TTL},
    chart::{self, Chart},
    dead_letters::{self, DeadPage, DeadQuery, Job, Purged},
    events::{self, EventDetail, EventFilters, EventQuery, EventsPage, UserDetail, ACTIONS, STATUSES},
    layout::{error_page, render, Chrome},
    outbox::{self, OutboxPage, OutboxQuery, KINDS},
    overview::{self, Overview},
    AppState, ConsoleError,
};

/// "2026-11-27 08:20:10" (UTC).
pub fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// [`when`], or a dash.
pub fn maybe(t: &Option<DateTime<Utc>>) -> String {
    t.as_ref().map_or_else(|| "–".into(), when)
}

/// A `datetime-local` form value.
fn local(t: &Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%dT%H:%M").to_string()).unwrap_or_default()
}

/// `path?k=v&…` with only the non-empty pairs.
fn link(path: &str, pairs: &[(&str, String)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        ser.append_pair(k, v);
    }
    let q = ser.finish();
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{q}")
    }
}

/// The frame around every page: the navigation, who is signed in, the CSRF token for forms.
/// The frame of a signed-in operator's page.
fn chrome(active: &'static str, op: &Operator) -> Chrome {
    Chrome {
        active,
        operator: op.label.clone(),
        csrf: op.csrf.clone(),
    }
}

pub struct PageError(ConsoleError, Option<Chrome>);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        error_page(self.0.status(), &self.0.message(), self.1)
    }
}

trait OrPage<T> {
    fn or_page(self, c: &Chrome) -> Result<T, PageError>;
}

impl<T> OrPage<T> for Result<T, ConsoleError> {
    fn or_page(self, c: &Chrome) -> Result<T, PageError> {
        self.map_err(|e| {
            PageError(
                e,
                Some(Chrome {
                    active: c.active,
                    operator: c.operator.clone(),
                    csrf: c.csrf.clone(),
                }),
            )
        })
    }
}

pub async fn not_found(Extension(op): Extension<Operator>) -> Response {
    error_page(StatusCode::NOT_FOUND, "no such page", Some(chrome("", &op)))
}

pub async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("static/console.css"),
    )
        .into_response()
}

// ---- sign-in -------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "login.html", config = "src/console/askama.toml")]
struct LoginPage {
    c: Chrome,
    nonce: String,
    next: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// Only a path on this console (never `//host`): where to go after signing in.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/".into(),
    }
}

/// The sign-in form, with its double-submit nonce: the browser's current one when it has one
/// (a second tab or a stray request for the form must not invalidate the first), else a new one.
fn login_page(st: &AppState, headers: &HeaderMap, status: StatusCode, next: String, error: Option<String>) -> Response {
    let nonce = auth::cookie_value(headers, LOGIN_COOKIE)
        .filter(|n| n.len() == 43 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .unwrap_or_else(auth::random_id);
    let cookie = st
        .auth
        .cookie(LOGIN_COOKIE, &nonce, "/login", std::time::Duration::from_secs(1800));
    let page = LoginPage {
        c: Chrome::anonymous(),
        nonce,
        next,
        error,
    };
    (status, [(header::SET_COOKIE, cookie)], render(&page)).into_response()
}

pub async fn login_form(State(st): State<AppState>, headers: HeaderMap, Query(q): Query<NextQuery>) -> Response {
    login_page(&st, &headers, StatusCode::OK, safe_next(q.next.as_deref()), None)
}

pub async fn login(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let field = |name: &str| {
        form_urlencoded::parse(&body)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let next = safe_next(field("next").as_deref());
    let nonce_ok = match (auth::cookie_value(&headers, LOGIN_COOKIE), field("login_csrf")) {
        (Some(c), Some(f)) => auth::same_secret(&c, &f),
        _ => false,
    };
    if !nonce_ok {
        tracing::warn!("console: refused a sign-in without its form's CSRF token");
        return login_page(
            &st,
            &HeaderMap::new(),
            StatusCode::FORBIDDEN,
            next,
            Some("The sign-in form had expired or came from elsewhere. Please sign in again.".into()),
        );
    }
    let Some(label) = field("token").and_then(|t| st.auth.check_token(t.trim())) else {
        tracing::warn!("console: refused a sign-in with an invalid token");
        return login_page(
            &st,
            &headers,
            StatusCode::UNAUTHORIZED,
            next,
            Some("That operator token is not valid.".into()),
        );
    };
    let id = st.auth.open_session(&label);
    tracing::info!(operator = %label, "console: signed in");
    let mut resp = Redirect::to(&next).into_response();
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        st.auth
            .cookie(SESSION_COOKIE, &id, "/", SESSION_TTL)
            .parse()
            .expect("cookie"),
    );
    h.append(
        header::SET_COOKIE,
        st.auth
            .cookie(LOGIN_COOKIE, "", "/login", std::time::Duration::ZERO)
            .parse()
            .expect("cookie"),
    );
    resp
}

pub async fn logout(State(st): State<AppState>, Extension(op): Extension<Operator>, headers: HeaderMap) -> Response {
    if let Some(c) = auth::cookie_value(&headers, SESSION_COOKIE) {
        st.auth.close_session(&c);
    }
    tracing::info!(operator = %op.label, "console: signed out");
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        st.auth
            .cookie(SESSION_COOKIE, "", "/", std::time::Duration::ZERO)
            .parse()
            .expect("cookie"),
    );
    resp
}

// ---- overview ------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "overview.html", config = "src/console/askama.toml")]
struct OverviewPage {
    c: Chrome,
    o: Overview,
    chart: Chart,
}

pub async fn overview(State(st): State<AppState>, Extension(op): Extension<Operator>) -> Result<Response, PageError> {
    let c = chrome("overview", &op);
    let o = overview::load(&st.pool, &st.broker, st.app_rate_limit)
        .await
        .or_page(&c)?;
    let chart = chart::build(&o.statuses, &o.per_minute);
    Ok(render(&OverviewPage { c, o, chart }))
}

// ---- events --------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "events.html", config = "src/console/askama.toml")]
struct EventsView {
    c: Chrome,
    p: EventsPage,
    statuses: &'static [&'static str],
    actions: &'static [&'static str],
    from: String,
    to: String,
    /// (status, count, link to the events of that status).
    chips: Vec<(String, i64, String)>,
    next_url: Option<String>,
    json_url: String,
}

fn filter_pairs(f: &EventFilters) -> Vec<(&'static str, String)> {
    let rfc = |t: &Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
    vec![
        ("email", f.email.clone().unwrap_or_default()),
        ("status", f.status.clone().unwrap_or_default()),
        ("action", f.action.clone().unwrap_or_default()),
        ("key_label", f.key_label.clone().unwrap_or_default()),
        ("from", rfc(&f.from)),
        ("to", rfc(&f.to)),
    ]
}

pub async fn events(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    Query(q): Query<EventQuery>,
) -> Result<Response, PageError> {
    let c = chrome("events", &op);
    let p = events::search(&st.pool, &q).await.or_page(&c)?;
    let base = filter_pairs(&p.filters);
    let chips = p
        .counts
        .iter()
        .map(|s| {
            let mut pairs: Vec<_> = base.iter().filter(|(k, _)| *k != "status").cloned().collect();
            pairs.push(("status", s.status.clone()));
            (s.status.clone(), s.count, link("/events", &pairs))
        })
        .collect();
    let next_url = p.next.as_ref().map(|n| {
        let mut pairs = base.clone();
        pairs.push(("cursor", n.clone()));
        link("/events", &pairs)
    });
    let mut json_pairs = base.clone();
    json_pairs.push(("cursor", q.cursor.clone().unwrap_or_default()));
    let view = EventsView {
        from: local(&p.filters.from),
        to: local(&p.filters.to),
        chips,
        next_url,
        json_url: link("/api/events", &json_pairs),
        c,
        p,
        statuses: &STATUSES,
        actions: &ACTIONS,
    };
    Ok(render(&view))
}

#[derive(Template)]
#[template(path = "event.html", config = "src/console/askama.toml")]
struct EventView {
    c: Chrome,
    d: EventDetail,
}

pub async fn event(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let c = chrome("events", &op);
    let d = events::detail(&st.pool, &id).await.or_page(&c)?;
    Ok(render(&EventView { c, d }))
}

#[derive(Template)]
#[template(path = "user.html", config = "src/console/askama.toml")]
struct UserView {
    c: Chrome,
    u: UserDetail,
}

pub async fn user(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let c = chrome("events", &op);
    let u = events::user(&st.pool, id).await.or_page(&c)?;
    Ok(render(&UserView { c, u }))
}

// ---- dead letters --------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "dead_letters.html", config = "src/console/askama.toml")]
struct DeadView {
    c: Chrome,
    p: DeadPage,
}

pub async fn dead_letters(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    Query(q): Query<DeadQuery>,
) -> Result<Response, PageError> {
    let c = chrome("dead", &op);
    let p = dead_letters::list(&st.broker, &q).await.or_page(&c)?;
    Ok(render(&DeadView { c, p }))
}

/// The fields of a posted form; `ids` may repeat.
struct Form {
    ids: Vec<String>,
    op: Option<String>,
    confirm: Option<String>,
}

fn form(body: &Bytes) -> Form {
    let mut f = Form {
        ids: Vec::new(),
        op: None,
        confirm: None,
    };
    for (k, v) in form_urlencoded::parse(body) {
        match k.as_ref() {
            "ids" => f.ids.push(v.into_owned()),
            "op" => f.op = Some(v.into_owned()),
            "confirm" => f.confirm = Some(v.into_owned()),
            _ => {}
        }
    }
    f
}

#[derive(Template)]
#[template(path = "purge_confirm.html", config = "src/console/askama.toml")]
struct PurgeConfirm {
    c: Chrome,
    ids: Vec<String>,
}

/// The Dead letters form: `op=replay` starts a job, `op=purge` asks for confirmation.
pub async fn dead_letter_action(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    body: Bytes,
) -> Result<Response, PageError> {
    let c = chrome("dead", &op);
    let f = form(&body);
    let ids = dead_letters::check_selection(&f.ids).or_page(&c)?;
    match f.op.as_deref() {
        Some("replay") => {
            let job = dead_letters::start_replay(st.broker.clone(), &st.jobs, ids, &op.label);
            Ok(Redirect::to(&format!("/jobs/{}", job.id)).into_response())
        }
        Some("purge") => Ok(render(&PurgeConfirm { c, ids })),
        _ => Err(PageError(
            ConsoleError::BadRequest("op: replay or purge".into()),
            Some(c),
        )),
    }
}

#[derive(Template)]
#[template(path = "purge_done.html", config = "src/console/askama.toml")]
struct PurgeDone {
    c: Chrome,
    r: Purged,
}

/// The confirmed purge: `confirm` must repeat how many ids were selected.
pub async fn purge(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    body: Bytes,
) -> Result<Response, PageError> {
    let c = chrome("dead", &op);
    let f = form(&body);
    let ids = dead_letters::check_selection(&f.ids).or_page(&c)?;
    let confirm = f.confirm.and_then(|n| n.trim().parse().ok()).unwrap_or(usize::MAX);
    let r = dead_letters::purge(&st.broker, &ids, confirm, &op.label)
        .await
        .or_page(&c)?;
    Ok(render(&PurgeDone { c, r }))
}

#[derive(Template)]
#[template(path = "job.html", config = "src/console/askama.toml")]
struct JobView {
    c: Chrome,
    j: Job,
}

pub async fn job(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let c = chrome("dead", &op);
    let j = st
        .jobs
        .get(&id)
        .ok_or_else(|| ConsoleError::NotFound(format!("no job {id} in this console")))
        .or_page(&c)?;
    Ok(render(&JobView { c, j }))
}

// ---- outbox --------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "outbox.html", config = "src/console/askama.toml")]
struct OutboxView {
    c: Chrome,
    p: OutboxPage,
    kinds: &'static [&'static str],
    next_url: Option<String>,
    notice: Option<String>,
}

#[derive(Deserialize)]
pub struct OutboxPageQuery {
    #[serde(flatten)]
    q: OutboxQuery,
    retried: Option<i64>,
    unchanged: Option<i64>,
}

pub async fn outbox(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    Query(q): Query<OutboxPageQuery>,
) -> Result<Response, PageError> {
    let c = chrome("outbox", &op);
    let p = outbox::list(&st.pool, &q.q).await.or_page(&c)?;
    let next_url = p.next.map(|n| {
        link(
            "/outbox",
            &[
                ("kind", p.kind.clone().unwrap_or_default()),
                ("status", p.status.clone().unwrap_or_default()),
                ("before", n.to_string()),
            ],
        )
    });
    let notice = match (q.retried, q.unchanged) {
        (Some(id), _) => Some(format!("Row {id} is pending again; a worker will deliver it shortly.")),
        (_, Some(id)) => Some(format!(
            "Row {id} was not dead (already retried or delivered): nothing changed."
        )),
        _ => None,
    };
    Ok(render(&OutboxView {
        c,
        p,
        kinds: &KINDS,
        next_url,
        notice,
    }))
}

pub async fn outbox_retry(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let c = chrome("outbox", &op);
    let r = outbox::retry(&st.pool, id).await.or_page(&c)?;
    tracing::info!(operator = %op.label, id, retried = r.retried, "console: outbox retry");
    let key = if r.retried { "retried" } else { "unchanged" };
    Ok(Redirect::to(&format!("/outbox?{key}={id}")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_only_returns_to_this_console() {
        assert_eq!(safe_next(Some("/events?email=a")), "/events?email=a");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn links_keep_only_given_filters() {
        assert_eq!(
            link("/events", &[("email", "a+b@x.io".into()), ("status", String::new())]),
            "/events?email=a%2Bb%40x.io"
        );
        assert_eq!(link("/events", &[]), "/events");
    }
}
