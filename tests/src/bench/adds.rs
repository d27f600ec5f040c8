//! Step 4: a burst of `add` commands for new contacts with the password return on, simulator
//! unthrottled, 2 workers: new users/s, exactly one user and one successful password-return PUT
//! per contact, and each worker's peak RSS.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use shared::{command::Action, publisher::Publisher};

use super::{calls_by_endpoint, drain, load, start_workers, stop, world, Options, Report};
use crate::{env::SECRETS_KEY, sim::SimConfig, TestEnv};

/// New users/s the burst must reach.
const USERS_PER_SEC: f64 = 250.0;

pub async fn run(o: &Options, r: &mut Report) {
    let env = TestEnv::with_sim(SimConfig {
        app_rate_limit: None,
        ..Default::default()
    })
    .await;
    let n = o.adds;
    world::people(&env, n, o.segments, world::new_email);
    let publisher = Publisher::new(&env.amqp(), "cio-bench loader");
    load::publishes(&publisher, n, o.connections, |i| {
        load::command(Action::Add, world::new_email(i))
    })
    .await;
    env.simh.reset_log();
    let started = Instant::now();
    let workers = start_workers(
        &env,
        2,
        "1000000",
        &[
            ("RETURN_PASSWORD_FIELD", "password".into()),
            ("SECRETS_KEY", SECRETS_KEY.into()),
        ],
    );
    let done = drain(&env, n, Duration::from_secs(600)).await;
    let secs = (done - started).as_secs_f64();
    // The password returns are delivered by the outbox after the commit.
    let returned = crate::wait_for("every password return to be sent", Duration::from_secs(300), || async {
        let sent = env
            .count("select count(*) from outbox where kind = 'password_return' and status = 'sent'")
            .await;
        if sent >= n as i64 {
            Ok(Instant::now())
        } else {
            Err(format!("{sent} of {n} sent"))
        }
    })
    .await;
    let users = env.count("select count(*) from users").await;
    let distinct = env.count("select count(distinct lower(email)) from users").await;
    let created = world::succeeded(&env).await;
    let rate = users as f64 / secs;

    // Successful (200) Track PUTs carrying a password, by contact (the worker addresses a person
    // by `cio_<id>` when it knows the id).
    let mut puts = BTreeMap::<String, usize>::new();
    for p in env.simh.track_puts() {
        if p.body.get("password").is_some_and(|v| v.is_string()) {
            let email = env.simh.email_of(&p.identifier).unwrap_or(p.identifier);
            *puts.entry(email.to_lowercase()).or_default() += 1;
        }
    }
    let once = (0..n).all(|i| puts.get(&world::new_email(i)) == Some(&1));
    r.line(format!(
        "worker, simulator unthrottled, password return on: burst of {n} add commands for new contacts with 2 workers: {users} users in {secs:.1} s: {rate:.0} new users/s ({created} succeeded); password returns all sent after {:.1} s ({} PUTs)",
        (returned - started).as_secs_f64(),
        puts.values().sum::<usize>()
    ));
    r.line(format!("  calls: {}", calls_by_endpoint(&env)));
    r.target(
        format!("{rate:.0} new users/s with 2 workers (≥ {USERS_PER_SEC:.0}/s)"),
        rate >= USERS_PER_SEC,
    );
    r.target(
        format!("{users} users for {n} contacts, {distinct} distinct e-mails (exactly one per contact)"),
        users == n as i64 && distinct == n as i64,
    );
    r.target(
        format!(
            "one successful password-return PUT per contact: {} contacts, {} PUTs (exactly {n} and {n})",
            puts.len(),
            puts.values().sum::<usize>()
        ),
        once && puts.len() == n,
    );
    r.workers_rss("add burst", &workers);
    stop(workers);
}
