//! The ingress: checks a Customer.io webhook, turns it into a command and answers 200 only once
//! RabbitMQ has confirmed the persistent publish. It never calls Customer.io or Postgres on the
//! request path.
//!
//! Two listeners: the public one (`INGRESS_ADDR`) serves webhooks and `/healthz` only, behind the
//! defences of [`server`]; the admin one (`INGRESS_ADMIN_ADDR`, loopback by default) serves
//! `/readyz` and `/metrics` to operators.

#![forbid(unsafe_code)]

mod admin;
pub mod auth;
pub mod check;
mod clock;
mod logs;
mod metrics;
pub mod request;
mod responses;
mod server;
mod settings;
mod webhook;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use shared::publisher::Publisher;
use tokio::{net::TcpListener, sync::Semaphore};

pub use admin::READINESS_TTL;
pub use settings::{parse_access_keys, Cli, Cmd, IngressArgs, Limits, Settings, DEFAULT_ADMIN_ADDR};
pub use webhook::{properties, router, AppState, MAX_BODY};

/// Builds the shared state: the access keys, the metrics and a publisher (connecting lazily).
pub fn state(settings: &Settings) -> AppState {
    // The recorder must exist before the metric handles are taken.
    let _ = shared::metrics::handle();
    let keys = auth::AccessKeys::new(settings.access_keys.clone());
    let metrics = Arc::new(metrics::Metrics::new(&keys));
    let publisher = Publisher::new(&settings.amqp, "cio-sync ingress");
    AppState {
        inner: Arc::new(webhook::Inner {
            exchange: publisher.names().commands_exchange(),
            keys,
            in_flight: Semaphore::new(settings.limits.max_in_flight),
            body_timeout: settings.limits.body_timeout,
            metrics,
            publish_failures: Default::default(),
        }),
        publisher,
    }
}

/// The two listening sockets.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

/// Binds `INGRESS_ADDR` and `INGRESS_ADMIN_ADDR`; the error names the variable.
pub async fn bind(settings: &Settings) -> Result<Listeners, String> {
    let public = TcpListener::bind(settings.addr)
        .await
        .map_err(|e| format!("cannot listen on INGRESS_ADDR {}: {e}", settings.addr))?;
    let admin = TcpListener::bind(settings.admin_addr)
        .await
        .map_err(|e| format!("cannot listen on INGRESS_ADMIN_ADDR {}: {e}", settings.admin_addr))?;
    Ok(Listeners { public, admin })
}

/// Serves until `shutdown` resolves, then drains in-flight requests for at most the grace period.
pub async fn serve(
    listeners: Listeners,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    for w in settings.warnings() {
        tracing::warn!("{w}");
    }
    let mut limits = settings.limits.clone();
    let (budget, fd_limit) = server::connection_budget(limits.max_connections);
    if budget < limits.max_connections {
        tracing::warn!(
            wanted = limits.max_connections,
            allowed = budget,
            fd_limit,
            "the open-files limit leaves room for fewer connections than INGRESS_MAX_CONNECTIONS; raise `ulimit -n`"
        );
        limits.max_connections = budget;
    }
    let state = state(&settings);
    match state.publisher.ensure_connected().await {
        Ok(()) => tracing::info!(namespace = %settings.amqp.namespace, "broker connected, topology declared"),
        Err(e) => tracing::warn!("broker not reachable yet ({e}); answering 503 until it is"),
    }
    let public_addr = listeners.public.local_addr().context("public listener address")?;
    let admin_addr = listeners.admin.local_addr().context("admin listener address")?;
    tracing::info!(%public_addr, %admin_addr, max_connections = limits.max_connections, "ingress listening");

    let metrics = state.inner.metrics.clone();
    let readiness = Arc::new(admin::Readiness::new(state.publisher.clone(), metrics.clone()));
    let admin_app = admin::router(readiness, shared::metrics::handle());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut admin = tokio::spawn({
        let mut stop = stop_rx.clone();
        async move {
            axum::serve(listeners.admin, admin_app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        }
    });
    let grace = settings.shutdown_grace;
    server::run(
        listeners.public,
        router(state),
        limits,
        metrics,
        async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        },
        grace,
    )
    .await;
    // The admin port outlives the public one by the drain; it has nothing slow to wait for.
    if tokio::time::timeout(Duration::from_secs(1), &mut admin).await.is_err() {
        admin.abort();
    }
    drop(stop_rx);
    tracing::info!("ingress stopped");
    Ok(())
}
