//! The JSON answers of the public port. Error bodies say what the caller can act on (fix the
//! request, use another key, retry later); they never carry the broker's own error text, which
//! goes to the log instead.

use axum::{
    body::Body,
    http::{header, HeaderValue, StatusCode},
    response::Response,
};
use serde::Serialize;
use shared::publisher::PublishError;
use uuid::Uuid;

use crate::metrics::Unavailable;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

fn json(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, JSON);
    r
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::to_vec(&ErrorBody { error: message }).expect("a string serialises");
    json(status, body)
}

/// `{"success":true}`: the answer to `wpf_action=test`.
pub fn test_ok() -> Response {
    json(StatusCode::OK, &b"{\"success\":true}"[..])
}

/// `{"status":"queued","event_id":"…","action":"…"}`.
pub fn queued(event_id: Uuid, action: &str) -> Response {
    let mut id = Uuid::encode_buffer();
    let id = event_id.hyphenated().encode_lower(&mut id);
    let mut s = String::with_capacity(80);
    s.push_str("{\"status\":\"queued\",\"event_id\":\"");
    s.push_str(id);
    s.push_str("\",\"action\":\"");
    s.push_str(action);
    s.push_str("\"}");
    json(StatusCode::OK, s)
}

/// Why a publish failed, as the metric and the caller see it.
pub fn unavailable_reason(e: &PublishError) -> Unavailable {
    match e {
        // With `x-overflow=reject-publish`, a full commands queue is what makes the broker nack.
        PublishError::Nacked => Unavailable::QueueFull,
        PublishError::Unroutable => Unavailable::Unroutable,
        PublishError::Unavailable(_) | PublishError::Timeout(_) => Unavailable::Broker,
    }
}

/// 503 with `Retry-After` (seconds) and a message the caller can act on.
pub fn unavailable(why: Unavailable) -> Response {
    let (message, retry_after) = match why {
        Unavailable::QueueFull => ("the queue is full: retry later", "30"),
        Unavailable::Broker | Unavailable::Unroutable => ("the webhook could not be queued: retry later", "5"),
        Unavailable::InFlightLimit => ("too many webhooks in flight: retry later", "1"),
        Unavailable::ConnectionLimit => ("too many connections: retry later", "1"),
    };
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(retry_after));
    r
}

/// The raw HTTP/1.1 answer to a connection over the cap, written before its request is read.
pub const CONNECTION_LIMIT_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 45\r\n\
\r\n\
{\"error\":\"too many connections: retry later\"}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_connection_limit_answer_is_well_formed() {
        let text = std::str::from_utf8(CONNECTION_LIMIT_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "too many connections: retry later");
    }

    async fn body_of(r: Response) -> serde_json::Value {
        let b = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    #[tokio::test]
    async fn queued_and_test_bodies_are_the_documented_json() {
        let id = Uuid::new_v4();
        let r = queued(id, "add");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body_of(r).await,
            serde_json::json!({"status": "queued", "event_id": id.to_string(), "action": "add"})
        );
        assert_eq!(body_of(test_ok()).await, serde_json::json!({"success": true}));
    }

    #[tokio::test]
    async fn error_bodies_escape_what_they_quote() {
        let r = error(StatusCode::BAD_REQUEST, "unknown wpf_action '\"}{'");
        assert_eq!(
            body_of(r).await,
            serde_json::json!({"error": "unknown wpf_action '\"}{'"})
        );
    }

    #[tokio::test]
    async fn broker_errors_never_reach_the_caller() {
        for e in [
            PublishError::Unavailable("IO error: connection refused (os error 111) at 10.0.0.7".into()),
            PublishError::Nacked,
            PublishError::Unroutable,
            PublishError::Timeout(std::time::Duration::from_secs(5)),
        ] {
            let r = unavailable(unavailable_reason(&e));
            assert_eq!(r.status(), 503);
            assert!(r.headers().contains_key(header::RETRY_AFTER));
            let text = body_of(r).await.to_string();
            assert!(!text.contains(&e.to_string()) && !text.contains("10.0.0.7"), "{text}");
        }
    }
}
