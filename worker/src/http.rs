//! The worker's small HTTP server: `/metrics` (Prometheus), `/healthz` (alive) and `/readyz`
//! (database answers and the broker link is up), plus the gauges refreshed in the background.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use lapin::{options::QueueDeclareOptions, types::FieldTable, Connection};
use serde_json::json;
use shared::publisher::Publisher;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct HealthState {
    pub pool: PgPool,
    pub publisher: Publisher,
    /// Set by the consumer while it is attached to the commands queue.
    pub consuming: Arc<AtomicBool>,
}

pub fn router(state: HealthState) -> Router {
    let metrics = shared::metrics::handle();
    Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn readyz(State(st): State<HealthState>) -> impl IntoResponse {
    let db = sqlx::query("select 1")
        .execute(&st.pool)
        .await
        .err()
        .map(|e| e.to_string());
    let broker = st.publisher.check_ready().await.err().map(|e| e.to_string());
    let consuming = st.consuming.load(Ordering::SeqCst);
    let ok = db.is_none() && broker.is_none() && consuming;
    let body = json!({
        "status": if ok { "ready" } else { "unavailable" },
        "database": db.unwrap_or_else(|| "ok".into()),
        "broker": broker.unwrap_or_else(|| "ok".into()),
        "consumer": if consuming { "attached" } else { "not attached" },
    });
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HealthState,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

/// Refreshes the backlog gauges every 5 s: outbox rows by status, dead letters, queued commands.
pub async fn refresh_gauges(st: HealthState, stop: CancellationToken) {
    let mut amqp: Option<(Connection, lapin::Channel)> = None;
    loop {
        let rows: Result<Vec<(String, String, i64)>, _> = sqlx::query_as(
            "select kind, status, count(*) from outbox where status in ('pending', 'dead') group by 1, 2",
        )
        .fetch_all(&st.pool)
        .await;
        if let Ok(rows) = rows {
            for kind in ["password_return", "welcome_email"] {
                for status in ["pending", "dead"] {
                    let n = rows
                        .iter()
                        .find(|(k, s, _)| k == kind && s == status)
                        .map_or(0, |r| r.2);
                    metrics::gauge!("cio_outbox_backlog", "kind" => kind, "status" => status).set(n as f64);
                }
            }
        }
        // The queue gauges wait for the consumer, which declares the topology first: a passive
        // declare of a queue not yet declared would make the broker close the channel with an error.
        let topology_ready = st.consuming.load(Ordering::SeqCst);
        if topology_ready
            && amqp
                .as_ref()
                .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            amqp = open(&st.publisher).await;
        }
        if let Some((_, ch)) = amqp.as_ref().filter(|_| topology_ready) {
            let names = st.publisher.names().clone();
            for (queue, metric) in [
                (names.dead_queue(), "cio_dead_letters"),
                (names.commands_queue(), "cio_commands_queued"),
            ] {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                if let Ok(q) = ch
                    .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                    .await
                {
                    metrics::gauge!(metric).set(f64::from(q.message_count()));
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn open(p: &Publisher) -> Option<(Connection, lapin::Channel)> {
    let (conn, _node) = shared::broker::Nodes::new(p.url())
        .connect("cio-sync worker (gauges)")
        .await
        .ok()?;
    let ch = conn.create_channel().await.ok()?;
    Some((conn, ch))
}
