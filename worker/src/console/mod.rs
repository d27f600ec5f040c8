//! The operator console (`worker console`): server-rendered pages and a JSON API over the same
//! data functions, behind operator tokens.
//!
//! | page | JSON |
//! |---|---|
//! | `/` overview: queues, consumers, App API budget, outbox backlog, events per minute (SVG) | `/api/overview` |
//! | `/events?email=&status=&action=&key_label=&from=&to=&cursor=` | `/api/events?…` |
//! | `/events/{id}`: fields, ordered log, user, outbox rows | `/api/events/{id}` |
//! | `/users/{id}` | `/api/users/{id}` |
//! | `/dead-letters?offset=`: select → replay (a job with progress) or purge (confirmed) | `/api/dead-letters`, `POST /api/dead-letters/replay`, `POST /api/dead-letters/purge`, `/api/jobs/{id}` |
//! | `/outbox?kind=&status=&before=`: retry a dead row | `/api/outbox`, `POST /api/outbox/{id}/retry` |
//!
//! Each module holds one concern: `settings` (configuration), `auth` (tokens, sessions, CSRF and
//! origin checks), `broker` (the AMQP link), the data modules (`events`, `dead_letters`, `outbox`,
//! `overview`, `chart`), the two faces: `pages` (HTML) and `api` (JSON), and `layout` (the frame,
//! rendering and the error page, which `auth` also answers with). Nothing secret is ever
//! read for display: no password hash, no outbox `secret`, no key or token.

pub mod api;
pub mod auth;
pub mod broker;
pub mod chart;
pub mod dead_letters;
pub mod events;
pub mod layout;
pub mod outbox;
pub mod overview;
pub mod pages;
pub mod settings;

use std::{future::Future, sync::Arc};

use anyhow::Context;
use axum::{
    http::{header, HeaderValue},
    middleware,
    routing::{get, post},
    Router,
};
use sqlx::PgPool;

pub use settings::ConsoleSettings;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub broker: Arc<broker::Broker>,
    pub auth: Arc<auth::Auth>,
    pub jobs: Arc<dead_letters::Jobs>,
    pub app_rate_limit: f64,
}

impl AppState {
    pub fn new(settings: &ConsoleSettings, pool: PgPool) -> Self {
        Self {
            pool,
            broker: Arc::new(broker::Broker::new(&settings.amqp)),
            auth: Arc::new(auth::Auth::new(&settings.tokens, settings.secure_cookie)),
            jobs: Arc::default(),
            app_rate_limit: settings.app_rate_limit,
        }
    }
}

/// Why a request could not be answered.
#[derive(Debug)]
pub enum ConsoleError {
    /// The request is wrong; the text says what to change.
    BadRequest(String),
    NotFound(String),
    /// PostgreSQL or RabbitMQ failed; details go to the log only.
    Unavailable(anyhow::Error),
}

impl From<sqlx::Error> for ConsoleError {
    fn from(e: sqlx::Error) -> Self {
        ConsoleError::Unavailable(anyhow::Error::new(e).context("database"))
    }
}

impl ConsoleError {
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The text shown to the operator (logging the cause of an outage).
    pub fn message(&self) -> String {
        match self {
            ConsoleError::BadRequest(m) | ConsoleError::NotFound(m) => m.clone(),
            ConsoleError::Unavailable(e) => {
                tracing::error!("console: {e:#}");
                "PostgreSQL or RabbitMQ did not answer; the console's log has the details. Try again shortly.".into()
            }
        }
    }
}

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// Headers on every answer: a strict content policy (no scripts at all), no sniffing, no framing,
/// no referrer sent to other origins (`same-origin`: with `no-referrer` a browser would send
/// `Origin: null` on the console's own forms, which the origin check refuses), and no caching of
/// pages that show operational data.
async fn security_headers(mut resp: axum::response::Response) -> axum::response::Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// Every route, behind [`auth::guard`].
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/healthz", get(|| async { "ok" }))
        .route("/favicon.ico", get(|| async { axum::http::StatusCode::NO_CONTENT }))
        .route("/static/console.css", get(pages::stylesheet))
        .route("/events", get(pages::events))
        .route("/events/{id}", get(pages::event))
        .route("/users/{id}", get(pages::user))
        .route("/dead-letters", get(pages::dead_letters))
        .route("/dead-letters/action", post(pages::dead_letter_action))
        .route("/dead-letters/purge", post(pages::purge))
        .route("/jobs/{id}", get(pages::job))
        .route("/outbox", get(pages::outbox))
        .route("/outbox/{id}/retry", post(pages::outbox_retry))
        .route("/api/overview", get(api::overview))
        .route("/api/events", get(api::events))
        .route("/api/events/{id}", get(api::event))
        .route("/api/users/{id}", get(api::user))
        .route("/api/dead-letters", get(api::dead_letters))
        .route("/api/dead-letters/replay", post(api::replay))
        .route("/api/dead-letters/purge", post(api::purge))
        .route("/api/jobs/{id}", get(api::job))
        .route("/api/outbox", get(api::outbox))
        .route("/api/outbox/{id}/retry", post(api::outbox_retry))
        .fallback(pages::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth::guard))
        .layer(middleware::map_response(security_headers))
        .with_state(state)
}

/// Serves the console on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// `worker console`: everything from the environment, until SIGTERM/Ctrl-C.
pub async fn run_from_env(
    settings: ConsoleSettings,
    signal: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let pool = crate::connect_db(&settings.database_url, 8).await?;
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on CONSOLE_ADDR {}", settings.addr))?;
    tracing::info!(
        addr = %settings.addr,
        operators = settings.tokens.len(),
        "operator console listening on http://{}/",
        settings.addr
    );
    serve(listener, AppState::new(&settings, pool), signal).await?;
    Ok(())
}
