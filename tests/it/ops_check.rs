//! `worker check`, `ingress check` and `worker migrate --status`, run as an operator runs them,
//! against the test environment (the simulator standing in for Customer.io).

use testkit::{
    procs::{ingress_cmd, ingress_env, worker_cmd, worker_cmd_with},
    TestEnv,
};

fn fail_lines(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("FAIL")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_passes_against_a_working_environment() {
    let env = TestEnv::new().await;
    env.declare_topology().await;
    let (code, out) = worker_cmd(&env, &["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(fail_lines(&out).is_empty(), "{out}");
    for want in [
        "ok   database reachable (PostgreSQL ",
        "ok   migrations current",
        "ok   broker reachable",
        "ok   broker topology present",
        "ok   Customer.io App API: CIO_APP_API_KEY accepted",
        "ok   Customer.io Track API: CIO_SITE_ID and CIO_TRACK_API_KEY accepted",
        "skip SMTP: SMTP_URL is not set",
    ] {
        assert!(out.lines().any(|l| l.starts_with(want)), "no line {want:?} in:\n{out}");
    }
    assert!(!out.contains("sim-app-key") && !out.contains("sim-track-key"), "{out}");
    assert_eq!(
        env.simh.count_status(200),
        2,
        "one App API call and one Track call, nothing else"
    );

    let (vars, _, _) = ingress_env("check-key-0123456789abcdef", &env.namespace);
    let (code, text) = ingress_cmd(&["check"], &vars);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("ok   commands queue present"), "{text}");
    assert!(!text.contains("check-key-0123456789abcdef"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_fails_on_a_missing_topology_in_both_binaries() {
    let env = TestEnv::new().await;
    let (code, out) = worker_cmd(&env, &["check"]);
    assert_eq!(code, 1, "{out}");
    let fails = fail_lines(&out);
    assert_eq!(fails.len(), 1, "{out}");
    let dead = format!("queue {}", env.names().dead_queue());
    assert!(
        fails[0].starts_with("FAIL broker topology: missing ") && fails[0].contains(&dead),
        "{out}"
    );

    let (vars, _, _) = ingress_env("check-key-0123456789abcdef", &env.namespace);
    let (code, text) = ingress_cmd(&["check"], &vars);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAIL commands queue"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_fails_on_a_wrong_database_url_without_printing_the_password() {
    let env = TestEnv::new().await;
    env.declare_topology().await;
    let url = "postgres://postgres:pg-pass-s3cret@127.0.0.1:5432/cio_no_such_database".to_string();
    let (code, out) = worker_cmd_with(&env, &["check"], &[("DATABASE_URL", url)]);
    assert_eq!(code, 1, "{out}");
    let fails = fail_lines(&out);
    assert_eq!(fails.len(), 1, "only the database fails:\n{out}");
    assert!(fails[0].starts_with("FAIL database (DATABASE_URL): "), "{out}");
    assert!(
        out.contains("ok   broker reachable"),
        "the other checks still run:\n{out}"
    );
    assert!(!out.contains("pg-pass-s3cret"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_fails_on_a_refused_api_key_naming_the_setting_not_the_key() {
    let env = TestEnv::new().await;
    env.declare_topology().await;
    let key = "wrong-app-key-4f9a2c".to_string();
    let (code, out) = worker_cmd_with(&env, &["check"], &[("CIO_APP_API_KEY", key.clone())]);
    assert_eq!(code, 1, "{out}");
    let fails = fail_lines(&out);
    assert_eq!(fails.len(), 1, "{out}");
    assert!(
        fails[0].starts_with("FAIL Customer.io App API: CIO_APP_API_KEY refused") && fails[0].contains("401"),
        "{out}"
    );
    assert!(!out.contains(&key), "{out}");

    let track = "wrong-track-key-77b1".to_string();
    let (code, out) = worker_cmd_with(&env, &["check"], &[("CIO_TRACK_API_KEY", track.clone())]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL Customer.io Track API: CIO_SITE_ID/CIO_TRACK_API_KEY refused"),
        "{out}"
    );
    assert!(!out.contains(&track), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_status_lists_every_migration_as_applied() {
    let env = TestEnv::new().await;
    let (code, out) = worker_cmd(&env, &["migrate", "--status"]);
    assert_eq!(code, 0, "{out}");
    let n = shared::MIGRATOR.iter().count();
    let applied: Vec<&str> = out.lines().filter(|l| l.starts_with("applied ")).collect();
    assert_eq!(applied.len(), n, "{out}");
    assert!(applied[0].contains("0001  schema"), "{out}");
    assert!(!out.contains("pending "), "{out}");
    assert!(out.contains(&format!("{n} applied, 0 pending")), "{out}");

    // Forget the newest one: it is pending again, and `check` says so.
    sqlx::query("delete from _sqlx_migrations where version = (select max(version) from _sqlx_migrations)")
        .execute(&env.pool)
        .await
        .unwrap();
    let (_, out) = worker_cmd(&env, &["migrate", "--status"]);
    assert_eq!(out.lines().filter(|l| l.starts_with("pending ")).count(), 1, "{out}");
    let (code, out) = worker_cmd(&env, &["check"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL migrations: pending"), "{out}");
}
