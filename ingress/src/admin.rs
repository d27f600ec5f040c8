//! The operator port (`INGRESS_ADMIN_ADDR`): `/readyz`, `/metrics` and `/healthz`.
//!
//! Readiness asks the broker (the link is up and the commands queue exists) at most once per
//! [`READINESS_TTL`]: probes in between get the cached answer, and concurrent probes wait for the
//! one check in progress, so that no number of probes can churn broker channels.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::State,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use shared::publisher::Publisher;
use tokio::sync::Mutex;

use crate::metrics::Metrics;

/// How long one readiness answer is reused.
pub const READINESS_TTL: Duration = Duration::from_secs(1);

/// The cached readiness of the broker.
pub struct Readiness {
    publisher: Publisher,
    metrics: Arc<Metrics>,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    pub fn new(publisher: Publisher, metrics: Arc<Metrics>) -> Self {
        Self {
            publisher,
            metrics,
            last: Mutex::new(None),
        }
    }

    /// `Ok` when ready, else what is wrong (for operators: the admin port is not public).
    pub async fn check(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, r)) = &*last {
            if at.elapsed() < READINESS_TTL {
                return r.clone();
            }
        }
        self.metrics.readiness_checks.increment(1);
        let r = self.publisher.check_ready().await.map_err(|e| format!("broker: {e}"));
        *last = Some((Instant::now(), r.clone()));
        r
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Arc<Readiness>,
    prometheus: PrometheusHandle,
}

/// The admin router.
pub fn router(readiness: Arc<Readiness>, prometheus: PrometheusHandle) -> Router {
    Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .with_state(AdminState { readiness, prometheus })
}

async fn readyz(State(st): State<AdminState>) -> Response {
    match st.readiness.check().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => {
            let mut r = (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": e }))).into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
    }
}

async fn metrics(State(st): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.prometheus.render(),
    )
}
