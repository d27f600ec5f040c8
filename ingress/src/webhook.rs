//! The public routes: the webhook endpoint (`/` and `/webhook`) and `/healthz`.
//!
//! A webhook is handled in this order: the key in the query or headers is checked before the body
//! is read; the body is read within the body timeout and the size limit; the request is parsed;
//! a command takes an in-flight slot (none free: an immediate 503) and is published, persistent
//! and confirmed, with the label of its key as a header; only the broker's confirm gives a 200.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderMap, StatusCode},
    response::Response,
    routing::{get, on, MethodFilter},
    Router,
};
use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use lapin::{
    types::{AMQPValue, FieldTable, LongString, ShortString},
    BasicProperties,
};
use shared::{command::Command, headers, publisher::Publisher, topology::COMMAND_KEY};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::{
    auth::{AccessKeys, LabelId},
    logs::Throttle,
    metrics::{ActionLabel, Metrics, Timeout, Unavailable},
    request::{self, Accepted, Parsed, Rejection},
    responses,
    server::ConnClock,
};

/// Bodies above this size are refused with 413.
pub const MAX_BODY: usize = 64 * 1024;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub publisher: Publisher,
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub keys: AccessKeys,
    /// `{ns}.commands`, computed once.
    pub exchange: String,
    pub in_flight: Semaphore,
    pub body_timeout: Duration,
    pub metrics: Arc<Metrics>,
    pub publish_failures: Throttle,
}

/// The public router: webhooks and `/healthz`, nothing an operator alone should see.
pub fn router(state: AppState) -> Router {
    let methods = MethodFilter::GET
        .or(MethodFilter::POST)
        .or(MethodFilter::PUT)
        .or(MethodFilter::PATCH);
    Router::new()
        .route("/", on(methods, webhook))
        .route("/webhook", on(methods, webhook))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn healthz() -> Response {
    let mut r = Response::new(Body::from(&b"{\"status\":\"ok\"}"[..]));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn refused(st: &Inner, action: ActionLabel, label: LabelId, r: Rejection) -> Response {
    match r {
        Rejection::Forbidden => {
            st.metrics.request(action, StatusCode::FORBIDDEN, label);
            tracing::debug!("webhook refused: invalid access key");
            responses::error(StatusCode::FORBIDDEN, "invalid access key")
        }
        Rejection::BadRequest(msg) => {
            st.metrics.request(action, StatusCode::BAD_REQUEST, label);
            tracing::debug!(problem = %msg, "webhook refused");
            responses::error(StatusCode::BAD_REQUEST, &msg)
        }
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

enum BodyError {
    TooLarge,
    Timeout,
    Unreadable,
}

/// Reads the whole body, at most [`MAX_BODY`] bytes, within `limit`.
async fn read_body(body: Body, limit: Duration) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(limit, Limited::new(body, MAX_BODY).collect()).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Ok(Err(_)) => Err(BodyError::Unreadable),
    }
}

async fn webhook(State(st): State<AppState>, req: Request) -> Response {
    let inner = &*st.inner;
    let (parts, body) = req.into_parts();
    let head = match request::head(parts.uri.query(), &parts.headers, &inner.keys) {
        Ok(h) => h,
        Err(r) => return refused(inner, ActionLabel::None, LabelId::NONE, r),
    };
    let too_large = || {
        inner
            .metrics
            .request(ActionLabel::None, StatusCode::PAYLOAD_TOO_LARGE, LabelId::NONE);
        responses::error(StatusCode::PAYLOAD_TOO_LARGE, "body is larger than 64 KiB")
    };
    if declared_length(&parts.headers).is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let body = match read_body(body, inner.body_timeout).await {
        Ok(b) => {
            // From here on the connection is handling a request: it keeps its place at the cap.
            if let Some(clock) = parts.extensions.get::<Arc<ConnClock>>() {
                clock.body_read();
            }
            b
        }
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Timeout) => {
            inner.metrics.timeout(Timeout::Body);
            inner
                .metrics
                .request(ActionLabel::None, StatusCode::REQUEST_TIMEOUT, LabelId::NONE);
            return responses::error(
                StatusCode::REQUEST_TIMEOUT,
                &format!("the body did not arrive within {:?}", inner.body_timeout),
            );
        }
        Err(BodyError::Unreadable) => {
            inner
                .metrics
                .request(ActionLabel::None, StatusCode::BAD_REQUEST, LabelId::NONE);
            return responses::error(StatusCode::BAD_REQUEST, "could not read the request body");
        }
    };
    let event_id = Uuid::new_v4();
    let now = Utc::now();
    let Accepted { label, parsed } = match request::finish(head, &body, &inner.keys, event_id, now) {
        Ok(a) => a,
        Err(r) => return refused(inner, ActionLabel::None, LabelId::NONE, r),
    };
    let cmd = match parsed {
        Parsed::Test => {
            inner.metrics.request(ActionLabel::Test, StatusCode::OK, label);
            return responses::test_ok();
        }
        Parsed::Command(c) => c,
    };
    let name = cmd.action.as_str();
    let action = ActionLabel::Command(cmd.action);
    let Ok(_slot) = inner.in_flight.try_acquire() else {
        inner.metrics.unavailable(Unavailable::InFlightLimit);
        inner.metrics.request(action, StatusCode::SERVICE_UNAVAILABLE, label);
        return responses::unavailable(Unavailable::InFlightLimit);
    };
    let props = properties(event_id, name, cmd.contact.email.as_str(), inner.keys.label(label), now);
    let payload = Command::SyncV1(cmd).encode();
    let started = Instant::now();
    let result = st
        .publisher
        .publish(&inner.exchange, COMMAND_KEY, &payload, props)
        .await;
    inner.metrics.publish_seconds.record(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            inner.metrics.request(action, StatusCode::OK, label);
            tracing::debug!(%event_id, action = name, "webhook queued");
            responses::queued(event_id, name)
        }
        Err(e) => {
            let why = responses::unavailable_reason(&e);
            inner.metrics.unavailable(why);
            inner.metrics.request(action, StatusCode::SERVICE_UNAVAILABLE, label);
            if let Some(skipped) = inner.publish_failures.allow() {
                tracing::error!(%event_id, action = name, error = %e, skipped, "webhook not queued (503)");
            }
            responses::unavailable(why)
        }
    }
}

/// AMQP properties of a command: persistent JSON, message id = event id, headers for tracing and
/// the label of the access key used (absent for unlabelled keys).
pub fn properties(
    event_id: Uuid,
    action: &str,
    email: &str,
    key_label: &str,
    now: chrono::DateTime<Utc>,
) -> BasicProperties {
    let mut buf = Uuid::encode_buffer();
    let id: &str = event_id.hyphenated().encode_lower(&mut buf);
    let mut h = FieldTable::default();
    h.insert(
        ShortString::from(headers::EVENT_ID),
        AMQPValue::LongString(LongString::from(id)),
    );
    h.insert(
        ShortString::from(headers::ACTION),
        AMQPValue::LongString(LongString::from(action)),
    );
    h.insert(
        ShortString::from(headers::CONTACT),
        AMQPValue::LongString(LongString::from(email)),
    );
    if !key_label.is_empty() {
        h.insert(
            ShortString::from(headers::KEY_LABEL),
            AMQPValue::LongString(LongString::from(key_label)),
        );
    }
    BasicProperties::default()
        .with_message_id(ShortString::from(id))
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_timestamp(now.timestamp().max(0) as u64)
        .with_headers(h)
}
