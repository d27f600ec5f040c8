//! The real `ingress` and `worker` binaries, as an operator runs them.

use std::time::Duration;

use serde_json::json;
use testkit::{
    env::ACCESS_KEY,
    procs::{ingress_env, worker_env, Proc},
    TestEnv,
};

#[tokio::test(flavor = "multi_thread")]
async fn real_binaries_turn_a_webhook_into_a_user_and_stop_cleanly() {
    let env = TestEnv::new().await;
    env.simh.add_person("bin@example.com", json!({"First Name": "Bin"}));
    let (mut vars, port, admin) = ingress_env(&format!("{ACCESS_KEY},second-key-000"), &env.namespace);
    // The per-webhook "webhook queued" line is at debug.
    vars.push(("RUST_LOG", "info,ingress=debug".into()));
    let mut ingress = Proc::spawn("ingress", &[], &vars);
    let mut worker = Proc::spawn("worker", &["run"], &worker_env(&env));
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    testkit::wait_until("ingress ready", Duration::from_secs(30), || {
        let c = client.clone();
        let u = format!("http://127.0.0.1:{admin}/readyz");
        async move { c.get(u).send().await.ok().filter(|r| r.status() == 200) }
    })
    .await;
    let r = client
        .post(format!("{url}/?wpf_action=add&access_key={ACCESS_KEY}"))
        .json(&json!({"email": "bin@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let event = v["event_id"].as_str().unwrap().to_string();
    assert_eq!(
        env.wait_final(&event).await,
        "succeeded",
        "worker log:\n{}",
        worker.output()
    );
    let name: String = sqlx::query_scalar("select first_name from users where email = 'bin@example.com'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(name, "Bin");

    // `worker events show` tells the story of the webhook.
    let shown = std::process::Command::new(testkit::procs::bin_dir().join("worker"))
        .args(["events", "show", &event])
        .env("DATABASE_URL", &env.database_url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("status succeeded"), "{text}");
    assert!(
        text.contains("Received add webhook for contact bin@example.com"),
        "{text}"
    );

    assert!(ingress
        .terminate(Duration::from_secs(10))
        .expect("ingress exits on SIGTERM")
        .success());
    assert!(worker
        .terminate(Duration::from_secs(15))
        .expect("worker exits on SIGTERM")
        .success());
    let logs = format!("{}{}", ingress.output(), worker.output());
    assert!(logs.contains("webhook queued"), "{logs}");
    assert!(
        !logs.contains(ACCESS_KEY),
        "the access key never reaches a log line:\n{logs}"
    );
    assert!(!logs.contains("sim-app-key"), "the API key never reaches a log line");
}

fn run_expecting_config_error(bin: &str, args: &[&str], env: &[(&str, &str)], var: &str) {
    let mut cmd = std::process::Command::new(testkit::procs::bin_dir().join(bin));
    cmd.args(args).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{bin} {env:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(var), "{err:?} names {var}");
}

#[test]
fn missing_or_invalid_configuration_stops_with_one_line_naming_the_variable() {
    run_expecting_config_error("ingress", &[], &[], "ACCESS_KEYS");
    run_expecting_config_error(
        "ingress",
        &[],
        &[("ACCESS_KEYS", "long-enough-key"), ("INGRESS_ADDR", "nowhere")],
        "INGRESS_ADDR",
    );
    run_expecting_config_error(
        "ingress",
        &[],
        &[("ACCESS_KEYS", "long-enough-key"), ("LOG_FORMAT", "xml")],
        "LOG_FORMAT",
    );
    run_expecting_config_error("worker", &["run"], &[], "CIO_APP_API_KEY");
    run_expecting_config_error(
        "worker",
        &[],
        &[("CIO_APP_API_KEY", "k"), ("CIO_REGION", "mars")],
        "CIO_REGION",
    );
    run_expecting_config_error(
        "worker",
        &["run"],
        &[
            ("CIO_APP_API_KEY", "k"),
            ("RETURN_PASSWORD_FIELD", "pw"),
            ("SECRETS_KEY", "dG9vIHNob3J0"),
        ],
        "SECRETS_KEY",
    );
    run_expecting_config_error(
        "worker",
        &["run"],
        &[("CIO_APP_API_KEY", "k"), ("WORKER_CONCURRENCY", "lots")],
        "WORKER_CONCURRENCY",
    );
    run_expecting_config_error(
        "worker",
        &["run"],
        &[("CIO_APP_API_KEY", "k"), ("SMTP_URL", "smtp://localhost:25")],
        "MAIL_FROM",
    );
    run_expecting_config_error(
        "ingress",
        &[],
        &[
            ("ACCESS_KEYS", "a-long-enough-key-123456"),
            ("PUBLISH_TIMEOUT_SECS", "0"),
        ],
        "PUBLISH_TIMEOUT_SECS must be more than 0 seconds",
    );
    run_expecting_config_error(
        "worker",
        &["run"],
        &[("CIO_APP_API_KEY", "k"), ("PASSWORD_LENGTH", "8")],
        "PASSWORD_LENGTH must be between 16 and 128",
    );
}

fn output(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(testkit::procs::bin_dir().join(bin));
    cmd.args(args).env_clear().envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Help is wrapped to the terminal's width: compare with single spaces.
    (out.status.code(), text.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[test]
fn help_lists_every_variable_with_its_default_and_hides_secrets() {
    let secrets = [
        ("ACCESS_KEYS", "secret-access-key-0123456789"),
        ("CIO_APP_API_KEY", "secret-app-api-key"),
        ("AMQP_URL", "amqp://user:secret-broker-password@host/%2f"),
        ("DATABASE_URL", "postgres://user:secret-db-password@host/db"),
    ];
    let ingress = shared::config::env_names(&<ingress::Cli as clap::CommandFactory>::command());
    let (code, help) = output("ingress", &["--help"], &secrets);
    assert_eq!(code, Some(0), "{help}");
    for name in &ingress {
        assert!(
            help.contains(&format!("[env: {name}")),
            "ingress --help lists {name}:\n{help}"
        );
    }
    assert!(help.contains("[default: 5]") && help.contains("check"), "{help}");
    let run = shared::config::env_names(&<worker::settings::RunArgs as clap::Args>::augment_args(
        clap::Command::new("run"),
    ));
    for args in [&["--help"][..], &["run", "--help"]] {
        let (code, help) = output("worker", args, &secrets);
        assert_eq!(code, Some(0), "{help}");
        for name in &run {
            assert!(
                help.contains(&format!("[env: {name}")),
                "worker {args:?} lists {name}:\n{help}"
            );
        }
        assert!(help.contains("[default: 24h]"), "{help}");
    }
    for (bin, args) in [
        ("ingress", &["--help"][..]),
        ("worker", &["--help"]),
        ("worker", &["run", "--help"]),
    ] {
        let (_, help) = output(bin, args, &secrets);
        assert!(!help.contains("secret-"), "{bin} {args:?} shows a secret:\n{help}");
    }
    for bin in ["ingress", "worker"] {
        let (code, version) = output(bin, &["--version"], &[]);
        assert_eq!(code, Some(0));
        assert!(
            version.starts_with(&format!("{bin} {}", env!("CARGO_PKG_VERSION"))),
            "{version}"
        );
    }
}
