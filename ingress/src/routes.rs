//! HTTP routes: the webhook endpoint, health, readiness and metrics.

use std::time::Instant;

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, DefaultBodyLimit, RawQuery, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, on, MethodFilter},
    Json, Router,
};
use chrono::Utc;
use lapin::{
    types::{AMQPValue, FieldTable, LongString, ShortString},
    BasicProperties,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use shared::{command::Command, headers, publisher::Publisher, topology::COMMAND_KEY};
use uuid::Uuid;

use crate::{
    auth::AccessKeys,
    request::{self, Input, Parsed, Rejection},
};

/// Bodies above this size are refused with 413 (DESIGN §2).
pub const MAX_BODY: usize = 64 * 1024;

/// Seconds a client should wait after a 503.
const RETRY_AFTER_SECS: &str = "5";

#[derive(Clone)]
pub struct AppState {
    pub keys: AccessKeys,
    pub publisher: Publisher,
    pub metrics: PrometheusHandle,
}

pub fn router(state: AppState) -> Router {
    let methods = MethodFilter::GET
        .or(MethodFilter::POST)
        .or(MethodFilter::PUT)
        .or(MethodFilter::PATCH);
    Router::new()
        .route("/", on(methods, webhook))
        .route("/webhook", on(methods, webhook))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn unavailable(message: &str) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
    r
}

fn count(action: &str, status: StatusCode) {
    metrics::counter!("cio_ingress_requests_total", "action" => action.to_string(), "status" => status.as_u16().to_string())
        .increment(1);
}

async fn webhook(
    State(st): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            count("none", StatusCode::PAYLOAD_TOO_LARGE);
            return error(StatusCode::PAYLOAD_TOO_LARGE, "body is larger than 64 KiB");
        }
        Err(_) => {
            count("none", StatusCode::BAD_REQUEST);
            return error(StatusCode::BAD_REQUEST, "could not read the request body");
        }
    };
    let input = Input {
        query: query.as_deref(),
        headers: &headers,
        body: &body,
    };
    let event_id = Uuid::new_v4();
    let cmd = match request::parse(&input, &st.keys, event_id, Utc::now()) {
        Err(Rejection::Forbidden) => {
            count("none", StatusCode::FORBIDDEN);
            tracing::warn!("webhook refused: invalid access key");
            return error(StatusCode::FORBIDDEN, "invalid access key");
        }
        Err(Rejection::BadRequest(msg)) => {
            count("none", StatusCode::BAD_REQUEST);
            tracing::info!(problem = %msg, "webhook refused");
            return error(StatusCode::BAD_REQUEST, &msg);
        }
        Ok(Parsed::Test) => {
            count("test", StatusCode::OK);
            return Json(json!({"success": true})).into_response();
        }
        Ok(Parsed::Command(c)) => c,
    };
    let action = cmd.action.as_str();
    let email = cmd.contact.email.clone();
    let payload = Command::SyncV1(cmd).encode();
    let started = Instant::now();
    let result = st
        .publisher
        .publish(
            &st.publisher.names().commands_exchange(),
            COMMAND_KEY,
            &payload,
            properties(event_id, action, email.as_str()),
        )
        .await;
    metrics::histogram!("cio_ingress_publish_seconds").record(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            count(action, StatusCode::OK);
            tracing::info!(%event_id, action, contact = %email, "webhook queued");
            Json(json!({"status": "queued", "event_id": event_id, "action": action})).into_response()
        }
        Err(e) => {
            count(action, StatusCode::SERVICE_UNAVAILABLE);
            tracing::error!(%event_id, action, error = %e, "webhook not queued");
            unavailable(&format!("could not queue the webhook: {e}; retry later"))
        }
    }
}

/// AMQP properties of a command: persistent JSON, message id = event id, headers for tracing.
pub fn properties(event_id: Uuid, action: &str, email: &str) -> BasicProperties {
    let mut h = FieldTable::default();
    h.insert(
        ShortString::from(headers::EVENT_ID),
        AMQPValue::LongString(LongString::from(event_id.to_string())),
    );
    h.insert(
        ShortString::from(headers::ACTION),
        AMQPValue::LongString(LongString::from(action)),
    );
    h.insert(
        ShortString::from(headers::CONTACT),
        AMQPValue::LongString(LongString::from(email)),
    );
    BasicProperties::default()
        .with_message_id(event_id.to_string().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(Utc::now().timestamp().max(0) as u64)
        .with_headers(h)
}

async fn readyz(State(st): State<AppState>) -> Response {
    match st.publisher.check_ready().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => unavailable(&format!("broker: {e}")),
    }
}

async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
}
