//! The one Customer.io client: region hosts or base-URL overrides,
//! Bearer auth for the App API and Basic auth for Track, percent-encoded identifiers, a per-call
//! timeout, the shared App API rate limit, and errors classified as transient or permanent.
//!
//! The client itself does not retry: callers decide (the worker re-queues a command with a delay,
//! the outbox reschedules a row). A 429 blocks the shared bucket for its Retry-After, so that every
//! worker pauses, not just the one that was refused.

mod error;
pub mod types;

use std::{sync::Arc, time::Duration};

use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{header, Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use error::{parse_retry_after, CioError};
use types::{Customer, CustomerEnvelope, CustomersEnvelope, MembershipPage, Segment, SegmentsEnvelope};

use crate::ratelimit::RateLimiter;

/// RFC 3986 unreserved characters stay; everything else (`@`, `+`, `/`, spaces) is encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// How the identifier in a per-person path is to be read (`id_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdType {
    Id,
    Email,
    CioId,
}

impl IdType {
    pub fn as_str(self) -> &'static str {
        match self {
            IdType::Id => "id",
            IdType::Email => "email",
            IdType::CioId => "cio_id",
        }
    }
}

/// A person as the App API addresses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonRef {
    pub value: String,
    pub id_type: IdType,
}

impl PersonRef {
    pub fn email(e: &str) -> Self {
        Self {
            value: e.to_string(),
            id_type: IdType::Email,
        }
    }
    pub fn cio_id(c: &str) -> Self {
        Self {
            value: c.to_string(),
            id_type: IdType::CioId,
        }
    }
}

/// Where and how to reach Customer.io.
#[derive(Clone)]
pub struct CioSettings {
    /// Scheme and host of the App API (`https://api.customer.io`); the client adds `/v1/…`.
    pub app_url: String,
    /// Scheme and host of the Track API (`https://track.customer.io`); the client adds `/api/v1/…`.
    pub track_url: String,
    pub app_api_key: SecretString,
    pub site_id: Option<String>,
    pub track_api_key: Option<SecretString>,
    pub timeout: Duration,
}

impl CioSettings {
    /// The documented hosts of a region (`us` or `eu`).
    pub fn region_urls(region: &str) -> Option<(&'static str, &'static str)> {
        match region {
            "us" => Some(("https://api.customer.io", "https://track.customer.io")),
            "eu" => Some(("https://api-eu.customer.io", "https://track-eu.customer.io")),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct CioClient {
    http: reqwest::Client,
    app_url: Arc<str>,
    track_url: Arc<str>,
    app_auth: Arc<SecretString>,
    track_auth: Option<Arc<SecretString>>,
    limiter: Arc<RateLimiter>,
}

impl CioClient {
    pub fn new(settings: &CioSettings, limiter: Arc<RateLimiter>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("cio-sync/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(64)
            .build()?;
        let track_auth = match (&settings.site_id, &settings.track_api_key) {
            (Some(site), Some(key)) => {
                let raw = format!("{site}:{}", key.expose_secret());
                let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
                Some(Arc::new(SecretString::from(format!("Basic {b64}"))))
            }
            _ => None,
        };
        Ok(Self {
            http,
            app_url: settings.app_url.trim_end_matches('/').into(),
            track_url: settings.track_url.trim_end_matches('/').into(),
            app_auth: Arc::new(SecretString::from(format!(
                "Bearer {}",
                settings.app_api_key.expose_secret()
            ))),
            track_auth,
            limiter,
        })
    }

    /// `GET /v1/customers/{id}/attributes`.
    pub async fn attributes(&self, who: &PersonRef) -> Result<Customer, CioError> {
        let path = format!(
            "/v1/customers/{}/attributes?id_type={}",
            encode(&who.value),
            who.id_type.as_str()
        );
        let env: CustomerEnvelope = self.app(Method::GET, "attributes", &path, None).await?;
        Ok(env.customer)
    }

    /// `GET /v1/customers/{id}/segments`.
    pub async fn person_segments(&self, who: &PersonRef) -> Result<Vec<Segment>, CioError> {
        let path = format!(
            "/v1/customers/{}/segments?id_type={}",
            encode(&who.value),
            who.id_type.as_str()
        );
        let env: SegmentsEnvelope = self.app(Method::GET, "person_segments", &path, None).await?;
        Ok(env.segments)
    }

    /// `GET /v1/segments`: the whole catalogue.
    pub async fn segments(&self) -> Result<Vec<Segment>, CioError> {
        let env: SegmentsEnvelope = self.app(Method::GET, "segments", "/v1/segments", None).await?;
        Ok(env.segments)
    }

    /// `POST /v1/customers/attributes`: up to 100 people in one call; unknown ids are omitted.
    pub async fn attributes_batch(&self, ids: &[String], id_type: IdType) -> Result<Vec<Customer>, CioError> {
        let path = format!("/v1/customers/attributes?id_type={}", id_type.as_str());
        let body = serde_json::json!({ "ids": ids });
        let env: CustomersEnvelope = self.app(Method::POST, "attributes_batch", &path, Some(&body)).await?;
        Ok(env.customers.into_iter().map(|c| c.customer).collect())
    }

    /// `GET /v1/segments/{id}/membership`: one page.
    pub async fn segment_membership(
        &self,
        segment: i64,
        start: Option<&str>,
        limit: u32,
    ) -> Result<MembershipPage, CioError> {
        let mut path = format!("/v1/segments/{segment}/membership?limit={limit}");
        if let Some(s) = start.filter(|s| !s.is_empty()) {
            path.push_str(&format!("&start={}", encode(s)));
        }
        self.app(Method::GET, "segment_membership", &path, None).await
    }

    /// `PUT /api/v1/customers/{identifier}` on the Track API.
    pub async fn identify(&self, identifier: &str, body: &Value) -> Result<(), CioError> {
        let auth = self.track_auth.as_ref().ok_or_else(|| CioError::Rejected {
            status: 0,
            detail: "Track API credentials (CIO_SITE_ID, CIO_TRACK_API_KEY) are not configured".into(),
        })?;
        let url = format!("{}/api/v1/customers/{}", self.track_url, encode(identifier));
        let _: Value = self.send("track_identify", Method::PUT, &url, auth, Some(body)).await?;
        Ok(())
    }

    /// `GET /api/v1/accounts/region` on the Track API: checks the Track credentials and changes
    /// nothing; returns the account's region (`us` or `eu`).
    pub async fn track_region(&self) -> Result<String, CioError> {
        let auth = self.track_auth.as_ref().ok_or_else(|| CioError::Rejected {
            status: 0,
            detail: "Track API credentials (CIO_SITE_ID, CIO_TRACK_API_KEY) are not configured".into(),
        })?;
        let url = format!("{}/api/v1/accounts/region", self.track_url);
        let v: Value = self.send("track_region", Method::GET, &url, auth, None).await?;
        Ok(v["region"].as_str().unwrap_or("?").to_string())
    }

    async fn app<T: DeserializeOwned>(
        &self,
        method: Method,
        endpoint: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, CioError> {
        self.limiter
            .acquire()
            .await
            .map_err(|e| CioError::Unavailable(format!("shared rate limiter unavailable: {e}")))?;
        let url = format!("{}{path}", self.app_url);
        let result = self.send(endpoint, method, &url, &self.app_auth, body).await;
        if let Err(CioError::RateLimited { retry_after }) = &result {
            let pause = retry_after.unwrap_or(Duration::from_secs(1));
            if let Err(e) = self.limiter.block(pause).await {
                tracing::warn!("could not pause the shared rate limiter: {e}");
            }
        }
        result
    }

    async fn send<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        method: Method,
        url: &str,
        auth: &SecretString,
        body: Option<&Value>,
    ) -> Result<T, CioError> {
        let mut req = self
            .http
            .request(method, url)
            .header(header::AUTHORIZATION, auth.expose_secret())
            .header(header::ACCEPT, "application/json");
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let status = if e.is_timeout() { "timeout" } else { "connection_error" };
                metrics::counter!("cio_api_calls_total", "endpoint" => endpoint, "status" => status).increment(1);
                return Err(CioError::Unavailable(format!("{status}: {}", describe(e))));
            }
        };
        let status = resp.status();
        metrics::counter!("cio_api_calls_total", "endpoint" => endpoint, "status" => status.as_u16().to_string())
            .increment(1);
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| CioError::Unavailable(format!("reading the response: {}", describe(e))))?;
        if status == StatusCode::OK || status == StatusCode::CREATED || status == StatusCode::NO_CONTENT {
            if bytes.is_empty() {
                return serde_json::from_value(Value::Object(Default::default()))
                    .map_err(|e| CioError::Unavailable(format!("empty response: {e}")));
            }
            return serde_json::from_slice(&bytes).map_err(|e| CioError::Rejected {
                status: status.as_u16(),
                detail: format!("unexpected response shape from {endpoint}: {e}"),
            });
        }
        Err(CioError::from_status(status.as_u16(), retry_after, &bytes))
    }
}

/// A transport error for logs and event lines: reqwest's words without the URL (it holds e-mail
/// addresses; headers, and so keys, are never in it) and the innermost cause, which says what an
/// operator can act on (a refused connection, a certificate the system store does not trust).
fn describe(e: reqwest::Error) -> String {
    let mut cause = None;
    let mut next = std::error::Error::source(&e);
    while let Some(inner) = next {
        cause = Some(inner.to_string());
        next = inner.source();
    }
    let outer = e.without_url().to_string();
    match cause {
        Some(cause) if !outer.contains(&cause) => format!("{outer}: {cause}"),
        _ => outer,
    }
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn identifiers_are_percent_encoded() {
        assert_eq!(encode("jane+vip@example.com"), "jane%2Bvip%40example.com");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
        assert_eq!(encode("a3000001"), "a3000001");
    }
}
