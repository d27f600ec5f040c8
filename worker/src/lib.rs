//! The worker: consumes commands, syncs contacts from Customer.io into Postgres, delivers the
//! outbox, prunes old records, and serves the operator commands (`check`, `migrate`, `dlq`, `events`,
//! `outbox`, `prune`, `erase`).

#![forbid(unsafe_code)]

pub mod cio;
pub mod cli;
pub mod console;
pub mod consumer;
pub mod dlq;
pub mod events;
pub mod fieldmap;
pub mod http;
pub mod mail;
pub mod outbox;
pub mod password;
pub mod ratelimit;
pub mod retention;
pub mod secretbox;
pub mod settings;
pub mod sync;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use shared::publisher::Publisher;
use sqlx::{postgres::PgPoolOptions, PgPool};
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;

pub use settings::Settings;

use crate::{cio::CioClient, consumer::Consumer, mail::Mailer, outbox::Outbox, ratelimit::RateLimiter, sync::SyncCtx};

/// Outbox rows delivered at once by one worker.
pub const OUTBOX_PARALLEL: usize = 4;

/// Opens the pool, waiting (with a bounded number of tries) for the database to come up.
pub async fn connect_db(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let mut last = None;
    for attempt in 0..30 {
        match PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
        {
            Ok(p) => return Ok(p),
            Err(e) => {
                if attempt == 0 {
                    tracing::warn!("database not reachable yet ({e}); waiting");
                }
                last = Some(e);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    Err(last
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("database unreachable")))
    .context("connecting to DATABASE_URL")
}

/// A worker's parts, built from settings and a pool (tests build it with their own pool).
pub struct Worker {
    pub ctx: Arc<SyncCtx>,
    pub consumer: Arc<Consumer>,
    pub outbox: Arc<Outbox>,
    pub publisher: Publisher,
    pub settings: Settings,
}

impl Worker {
    pub async fn build(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
        let default_known: Option<bool> = sqlx::query_scalar("select protected from roles where name = $1")
            .bind(&settings.default_role)
            .fetch_optional(&pool)
            .await
            .context("reading roles (has `worker migrate` run?)")?;
        match default_known {
            None => anyhow::bail!(
                "configuration error: DEFAULT_ROLE {} is not a registered role",
                settings.default_role
            ),
            Some(true) => anyhow::bail!(
                "configuration error: DEFAULT_ROLE {} is a protected role",
                settings.default_role
            ),
            Some(false) => {}
        }
        if let Some(pr) = &settings.password_return {
            settings
                .field_map
                .check_password_field(&pr.field)
                .map_err(|p| anyhow::anyhow!("configuration error: FIELD_MAP_FILE {p}"))?;
        }
        let limiter = Arc::new(RateLimiter::shared(
            pool.clone(),
            ratelimit::APP_API_KEY,
            settings.app_rate_limit,
        ));
        let cio = CioClient::new(&settings.cio, limiter)?;
        let mailer = match &settings.mail {
            Some(m) => Some(Mailer::new(m)?),
            None => None,
        };
        let wakeup = Arc::new(Notify::new());
        let ctx = Arc::new(SyncCtx {
            pool: pool.clone(),
            cio: cio.clone(),
            field_map: settings.field_map.clone(),
            default_role: settings.default_role.clone(),
            password_length: settings.password_length,
            password_return: settings.password_return.clone(),
            mail_enabled: mailer.is_some(),
            email_changes: settings.sync_email_changes,
            outbox_wakeup: wakeup.clone(),
            snapshots: sync::snapshot::Snapshots::new(settings.snapshot_max_members),
            hasher: Default::default(),
            parallel: settings.concurrency,
            max_attempts: settings.max_attempts,
            not_found_attempts: settings.not_found_attempts,
        });
        let publisher = Publisher::new(&settings.amqp, "cio-sync worker (retries)");
        let consumer = Arc::new(Consumer {
            ctx: ctx.clone(),
            amqp: settings.amqp.clone(),
            publisher: publisher.clone(),
            concurrency: settings.concurrency,
            shutdown_grace: settings.shutdown_grace,
            batch_size: settings.batch_size,
            batch_wait: settings.batch_wait,
            consuming: Default::default(),
        });
        let outbox = Arc::new(Outbox {
            pool,
            cio,
            mailer,
            password_return: settings.password_return.clone(),
            give_up_after: settings.outbox_give_up_after,
            wakeup,
        });
        Ok(Self {
            ctx,
            consumer,
            outbox,
            publisher,
            settings,
        })
    }

    /// What `/readyz` looks at.
    pub fn health(&self) -> http::HealthState {
        http::HealthState {
            pool: self.ctx.pool.clone(),
            publisher: self.publisher.clone(),
            consuming: self.consumer.consuming.clone(),
        }
    }

    /// Runs the consumer and the outbox until `shutdown` is cancelled, then drains.
    pub async fn run(
        self,
        listener: Option<tokio::net::TcpListener>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        // Both are optional features: being off is a choice, said at `info` like the password
        // return (a webhook asking for the e-mail while it is off gets a warning in its event log).
        if self.settings.mail.is_none() {
            tracing::info!("welcome e-mail is off: SMTP_URL is not set");
        }
        match &self.settings.password_return {
            Some(p) => tracing::info!(field = %p.field, "password return is on"),
            None => tracing::info!("password return is off: RETURN_PASSWORD_FIELD is not set"),
        }
        let mut tasks = JoinSet::new();
        if let Some(l) = listener {
            let state = self.health();
            let stop = shutdown.clone();
            tasks.spawn(async move {
                if let Err(e) = http::serve(l, state, stop).await {
                    tracing::error!("worker http server failed: {e}");
                }
            });
            let gauges = self.health();
            tasks.spawn(http::refresh_gauges(gauges, shutdown.clone()));
        }
        tasks.spawn(self.consumer.clone().run(shutdown.clone()));
        tasks.spawn(self.outbox.clone().run(OUTBOX_PARALLEL, shutdown.clone()));
        match self.settings.retention_days {
            0 => tracing::info!("retention is off: RETENTION_DAYS is not set"),
            days => {
                tracing::info!(days, "finished events older than RETENTION_DAYS are pruned daily");
                tasks.spawn(retention::run_daily(
                    self.ctx.pool.clone(),
                    days,
                    self.settings.retention_first_run,
                    shutdown.clone(),
                ));
            }
        }
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!("worker task failed: {e}");
            }
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// `worker run`: everything from the environment, until SIGTERM/Ctrl-C.
pub async fn run_from_env(settings: Settings, signal: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let pool = connect_db(
        &settings.database_url,
        (settings.concurrency + OUTBOX_PARALLEL + 4) as u32,
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("cannot listen on WORKER_HTTP_ADDR {}", settings.http_addr))?;
    let worker = Worker::build(settings, pool).await?;
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        signal.await;
        stop.cancel();
    });
    worker.run(Some(listener), token).await
}
