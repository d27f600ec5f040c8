//! The JSON API: every page's data from the same functions the pages call, under the same auth
//! (a session cookie with `X-CSRF-Token` on POSTs, or `Authorization: Bearer <operator token>`).
//! Errors are `{"error": "…"}` with a 4xx/5xx status.

use axum::{
    extract::{rejection::JsonRejection, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Extension, Json,
};
use serde::Deserialize;

use super::{
    auth::Operator,
    dead_letters::{self, DeadQuery},
    events::{self, EventQuery},
    outbox::{self, OutboxQuery},
    overview, AppState, ConsoleError,
};

/// An API failure as JSON.
pub struct ApiError(ConsoleError);

impl From<ConsoleError> for ApiError {
    fn from(e: ConsoleError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0.status(), Json(serde_json::json!({ "error": self.0.message() }))).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v)
        .map_err(|e| ApiError(ConsoleError::BadRequest(format!("body: {}", e.body_text()))))
}

pub async fn overview(State(st): State<AppState>) -> ApiResult<overview::Overview> {
    Ok(Json(overview::load(&st.pool, &st.broker, st.app_rate_limit).await?))
}

pub async fn events(State(st): State<AppState>, Query(q): Query<EventQuery>) -> ApiResult<events::EventsPage> {
    Ok(Json(events::search(&st.pool, &q).await?))
}

pub async fn event(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<events::EventDetail> {
    Ok(Json(events::detail(&st.pool, &id).await?))
}

pub async fn user(State(st): State<AppState>, Path(id): Path<i64>) -> ApiResult<events::UserDetail> {
    Ok(Json(events::user(&st.pool, id).await?))
}

pub async fn dead_letters(State(st): State<AppState>, Query(q): Query<DeadQuery>) -> ApiResult<dead_letters::DeadPage> {
    Ok(Json(dead_letters::list(&st.broker, &q).await?))
}

#[derive(Deserialize)]
pub struct Selection {
    pub ids: Vec<String>,
    /// Purge only: the number of ids, repeated as confirmation.
    pub confirm: Option<usize>,
}

/// Starts a replay; answers 202 with the job (follow it at `/api/jobs/{id}`).
pub async fn replay(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    b: Result<Json<Selection>, JsonRejection>,
) -> Result<Response, ApiError> {
    let sel = body(b)?;
    let ids = dead_letters::check_selection(&sel.ids)?;
    let job = dead_letters::start_replay(st.broker.clone(), &st.jobs, ids, &op.label);
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

pub async fn job(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<dead_letters::Job> {
    st.jobs
        .get(&id)
        .map(Json)
        .ok_or_else(|| ApiError(ConsoleError::NotFound(format!("no job {id} in this console"))))
}

pub async fn purge(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    b: Result<Json<Selection>, JsonRejection>,
) -> ApiResult<dead_letters::Purged> {
    let sel = body(b)?;
    let ids = dead_letters::check_selection(&sel.ids)?;
    let confirm = sel.confirm.ok_or_else(|| {
        ApiError(ConsoleError::BadRequest(format!(
            "confirm: repeat the number of dead letters to delete ({})",
            ids.len()
        )))
    })?;
    Ok(Json(dead_letters::purge(&st.broker, &ids, confirm, &op.label).await?))
}

pub async fn outbox(State(st): State<AppState>, Query(q): Query<OutboxQuery>) -> ApiResult<outbox::OutboxPage> {
    Ok(Json(outbox::list(&st.pool, &q).await?))
}

pub async fn outbox_retry(
    State(st): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<i64>,
) -> ApiResult<outbox::Retried> {
    let r = outbox::retry(&st.pool, id).await?;
    tracing::info!(operator = %op.label, id, retried = r.retried, "console: outbox retry");
    Ok(Json(r))
}
