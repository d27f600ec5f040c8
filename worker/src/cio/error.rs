//! How a Customer.io call failed, classified once so that callers only decide what to do:
//! transient failures are retried later, permanent ones need an operator (or are final).

use std::time::Duration;

use serde_json::Value;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CioError {
    /// 404: the person (or segment) does not exist in Customer.io.
    #[error("not found in Customer.io (404)")]
    NotFound,
    /// 429: over the rate limit; `Retry-After` when the API sent one.
    #[error("rate limited by Customer.io (429){}", .retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, timeouts and connection errors: worth another try later.
    #[error("Customer.io unavailable: {0}")]
    Unavailable(String),
    /// 400, 401, 403 and other 4xx: the request or the credentials are wrong; retrying won't help.
    #[error("Customer.io rejected the request ({status}): {detail}")]
    Rejected { status: u16, detail: String },
}

impl CioError {
    pub fn is_transient(&self) -> bool {
        matches!(self, CioError::RateLimited { .. } | CioError::Unavailable(_))
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CioError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// Builds the error for a non-success HTTP status from the response body (either envelope).
    pub fn from_status(status: u16, retry_after: Option<Duration>, body: &[u8]) -> CioError {
        match status {
            404 => CioError::NotFound,
            429 => CioError::RateLimited { retry_after },
            500..=599 => CioError::Unavailable(format!("HTTP {status}: {}", detail(body))),
            401 => CioError::Rejected {
                status,
                detail: format!("credentials refused: {}", detail(body)),
            },
            _ => CioError::Rejected {
                status,
                detail: detail(body),
            },
        }
    }
}

/// `errors[0].detail` (App API), then `meta.error` / `meta.errors[0]` (Track), else a short excerpt.
fn detail(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let found = parsed.as_ref().and_then(|v| {
        v.pointer("/errors/0/detail")
            .or_else(|| v.pointer("/errors/0/message"))
            .or_else(|| v.pointer("/meta/error"))
            .or_else(|| v.pointer("/meta/errors/0"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    found.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text: String = text.chars().take(200).collect();
        if text.trim().is_empty() {
            "no details".into()
        } else {
            text
        }
    })
}

/// Parses `Retry-After` as delay-seconds or an HTTP date, capped at one hour.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    const CAP: Duration = Duration::from_secs(3600);
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(CAP));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO).min(CAP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statuses() {
        assert_eq!(CioError::from_status(404, None, b""), CioError::NotFound);
        assert!(CioError::from_status(429, Some(Duration::from_secs(1)), b"").is_transient());
        assert!(CioError::from_status(503, None, b"").is_transient());
        assert!(!CioError::from_status(401, None, b"").is_transient());
        assert!(!CioError::from_status(400, None, b"").is_transient());
    }

    #[test]
    fn reads_both_error_envelopes() {
        let app = br#"{"errors":[{"detail":"rate limited to 10 requests per 1s (reference a1)","status":"429"}]}"#;
        assert_eq!(detail(app), "rate limited to 10 requests per 1s (reference a1)");
        assert_eq!(detail(br#"{"meta":{"errors":["value too long"]}}"#), "value too long");
        assert_eq!(detail(br#"{"meta":{"error":"bad"}}"#), "bad");
        assert_eq!(detail(b""), "no details");
    }

    #[test]
    fn parses_retry_after() {
        assert_eq!(parse_retry_after("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after("999999"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
