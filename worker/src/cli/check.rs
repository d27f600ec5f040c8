//! `worker check`: verifies every configured dependency and credential without changing anything
//! and prints one line per check: `ok   …`, `FAIL …: why` or `skip …: why`. The exit code is 1
//! when any check failed (2 when the configuration itself is invalid). Secrets are never printed:
//! a refused key is named by its setting.

use std::sync::Arc;

use shared::check::{self, Report, Wanted, TIMEOUT};
use sqlx::{postgres::PgPoolOptions, PgPool};

use super::migrate::{self, State};
use crate::{cio::CioClient, cio::CioError, mail::Mailer, ratelimit::RateLimiter, Settings};

pub async fn run() -> i32 {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            println!("FAIL configuration: {e}");
            return 2;
        }
    };
    let mut r = Report::default();
    r.ok("configuration valid");
    if let Some(pool) = database(&mut r, &settings.database_url).await {
        migrations(&mut r, &pool).await;
        pool.close().await;
    }
    broker(&mut r, &settings).await;
    customer_io(&mut r, &settings).await;
    smtp(&mut r, &settings).await;
    r.code()
}

async fn database(r: &mut Report, url: &str) -> Option<PgPool> {
    let connect = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(TIMEOUT)
        .connect(url);
    let pool = match tokio::time::timeout(TIMEOUT, connect).await {
        Ok(Ok(p)) => p,
        // sqlx errors name the host and database, never the password.
        Ok(Err(e)) => {
            r.fail(format!("database (DATABASE_URL): {e}"));
            return None;
        }
        Err(_) => {
            r.fail(format!(
                "database (DATABASE_URL): no answer within {}s",
                TIMEOUT.as_secs()
            ));
            return None;
        }
    };
    match sqlx::query_scalar::<_, String>("show server_version")
        .fetch_one(&pool)
        .await
    {
        Ok(v) => r.ok(format!("database reachable (PostgreSQL {v})")),
        Err(e) => r.fail(format!("database (DATABASE_URL): {e}")),
    }
    Some(pool)
}

async fn migrations(r: &mut Report, pool: &PgPool) {
    let all = match migrate::states(pool).await {
        Ok(a) => a,
        Err(e) => return r.fail(format!("migrations: {e}")),
    };
    let named = |want: fn(&State) -> bool| -> Vec<String> {
        all.iter()
            .filter(|m| want(&m.state))
            .map(|m| format!("{:04}", m.version))
            .collect()
    };
    let pending = named(|s| *s == State::Pending);
    let unknown = named(|s| *s == State::Unknown);
    let broken = named(|s| matches!(s, State::Changed | State::Failed));
    if pending.is_empty() && unknown.is_empty() && broken.is_empty() {
        return r.ok(format!("migrations current ({} applied)", all.len()));
    }
    let mut why = Vec::new();
    if !pending.is_empty() {
        why.push(format!("pending {} (run `worker migrate`)", pending.join(", ")));
    }
    if !unknown.is_empty() {
        why.push(format!("unknown to this release {}", unknown.join(", ")));
    }
    if !broken.is_empty() {
        why.push(format!(
            "changed or failed {} (see `worker migrate --status`)",
            broken.join(", ")
        ));
    }
    r.fail(format!("migrations: {}", why.join("; ")));
}

async fn broker(r: &mut Report, settings: &Settings) {
    let names = settings.amqp.names();
    let (exchanges, queues) = (names.all_exchanges(), names.all_queues());
    let present = format!(
        "{} exchanges, {} queues of namespace {}",
        exchanges.len(),
        queues.len(),
        names.namespace()
    );
    let wanted = Wanted {
        subject: "broker topology",
        exchanges: &exchanges,
        queues: &queues,
        present,
    };
    check::broker(r, &settings.amqp, "cio-sync check", wanted).await;
}

/// A refusal names the setting holding the credential, never its value.
fn refused(e: &CioError, settings: &str) -> String {
    match e {
        CioError::Rejected { status: 401 | 403, .. } => format!("{settings} refused: {e}"),
        other => other.to_string(),
    }
}

async fn customer_io(r: &mut Report, settings: &Settings) {
    // Unlimited: one call, and the check writes nothing (the shared bucket lives in the database).
    let client = match CioClient::new(&settings.cio, Arc::new(RateLimiter::unlimited())) {
        Ok(c) => c,
        Err(e) => return r.fail(format!("Customer.io client: {e}")),
    };
    match client.segments().await {
        Ok(s) => r.ok(format!(
            "Customer.io App API: CIO_APP_API_KEY accepted ({} segment(s))",
            s.len()
        )),
        Err(e) => r.fail(format!("Customer.io App API: {}", refused(&e, "CIO_APP_API_KEY"))),
    }
    if settings.cio.site_id.is_none() || settings.cio.track_api_key.is_none() {
        return r.skip("Customer.io Track API: CIO_SITE_ID and CIO_TRACK_API_KEY are not both set");
    }
    match client.track_region().await {
        Ok(region) => r.ok(format!(
            "Customer.io Track API: CIO_SITE_ID and CIO_TRACK_API_KEY accepted (region {region})"
        )),
        Err(e) => r.fail(format!(
            "Customer.io Track API: {}",
            refused(&e, "CIO_SITE_ID/CIO_TRACK_API_KEY")
        )),
    }
}

async fn smtp(r: &mut Report, settings: &Settings) {
    let Some(mail) = &settings.mail else {
        return r.skip("SMTP: SMTP_URL is not set (welcome e-mail is off)");
    };
    let mailer = match Mailer::new(mail) {
        Ok(m) => m,
        Err(e) => return r.fail(format!("SMTP: {e}")),
    };
    match tokio::time::timeout(TIMEOUT, mailer.test_connection()).await {
        Ok(Ok(())) => r.ok("SMTP server reachable (SMTP_URL)"),
        Ok(Err(e)) => r.fail(format!("SMTP (SMTP_URL): {e}")),
        Err(_) => r.fail(format!("SMTP (SMTP_URL): no answer within {}s", TIMEOUT.as_secs())),
    }
}
