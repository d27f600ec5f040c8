//! The ingress: checks a Customer.io webhook, turns it into a command and answers 200 only once
//! RabbitMQ has confirmed the persistent publish (DESIGN §1–§2). It never calls Customer.io or
//! Postgres on the request path.

#![forbid(unsafe_code)]

pub mod auth;
pub mod request;
mod routes;
mod settings;

use std::future::Future;

use anyhow::Context;
use shared::publisher::Publisher;
use tokio::net::TcpListener;

pub use routes::{router, AppState};
pub use settings::Settings;

/// Builds the shared state: the access keys and a publisher (connecting lazily).
pub fn state(settings: &Settings) -> AppState {
    AppState {
        keys: auth::AccessKeys::new(settings.access_keys.clone()),
        publisher: Publisher::new(&settings.amqp, "cio-sync ingress"),
        metrics: shared::metrics::handle(),
    }
}

/// Serves until `shutdown` resolves, then drains in-flight requests for at most the grace period.
pub async fn serve(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = state(&settings);
    match state.publisher.ensure_connected().await {
        Ok(()) => tracing::info!(namespace = %settings.amqp.namespace, "broker connected, topology declared"),
        Err(e) => tracing::warn!("broker not reachable yet ({e}); answering 503 until it is"),
    }
    let addr = listener.local_addr().context("listener address")?;
    tracing::info!(%addr, "ingress listening");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let grace = settings.shutdown_grace;
    tokio::select! {
        r = server => r.context("http server")?,
        _ = async {
            let _ = stop_rx.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(?grace, "grace period over; closing remaining connections"),
    }
    tracing::info!("ingress stopped");
    Ok(())
}
