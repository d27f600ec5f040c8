//! Running the real `ingress` and `worker` binaries as child processes (end-to-end tests, crash
//! tests). Output is captured to files so that tests can check what the processes logged.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// The directory holding the workspace's binaries: the running binary's own directory (the
/// benchmark in `target/release`), or its parent (a test binary in `target/debug/deps`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let own = exe.parent().expect("exe dir").to_path_buf();
    let dir = if own.join("ingress").exists() {
        own
    } else {
        own.parent().expect("target dir").to_path_buf()
    };
    for b in ["ingress", "worker"] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: build the binaries first (`cargo build --workspace`), as deploy/local/test.sh does",
            dir.join(b).display()
        );
    }
    dir
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running child process whose output goes to a temp file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(bin: &str, args: &[&str], env: &[(&str, String)]) -> Proc {
        let log = std::env::temp_dir().join(format!("cio-sync-{bin}-{}.log", uuid::Uuid::new_v4().simple()));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(bin_dir().join(bin));
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).env_clear();
        cmd.env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc {
            child: cmd.spawn().expect("spawn binary"),
            log,
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args([sig, &self.child.id().to_string()]).status();
    }

    /// SIGTERM, then waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal("-TERM");
        self.wait_exit(timeout)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The environment of a `worker run` process pointed at a test environment.
pub fn worker_env(env: &crate::TestEnv) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", env.database_url.clone()),
        ("AMQP_URL", crate::env::amqp_url()),
        ("AMQP_NAMESPACE", env.namespace.clone()),
        ("CIO_APP_API_KEY", "sim-app-key".into()),
        ("CIO_SITE_ID", "sim-site".into()),
        ("CIO_TRACK_API_KEY", "sim-track-key".into()),
        ("CIO_APP_API_URL", env.sim_url()),
        ("CIO_TRACK_API_URL", env.sim_url()),
        ("WORKER_HTTP_ADDR", format!("127.0.0.1:{}", free_port())),
        ("SHUTDOWN_GRACE_SECS", "10".into()),
    ]
}

/// The environment of an `ingress` process with `keys` (`ACCESS_KEYS`) on `namespace` of the
/// test broker, on two free ports: returns the variables and the public and admin ports.
pub fn ingress_env(keys: &str, namespace: &str) -> (Vec<(&'static str, String)>, u16, u16) {
    let (port, admin) = (free_port(), free_port());
    let vars = vec![
        ("ACCESS_KEYS", keys.to_string()),
        ("INGRESS_ADDR", format!("127.0.0.1:{port}")),
        ("INGRESS_ADMIN_ADDR", format!("127.0.0.1:{admin}")),
        ("AMQP_URL", crate::env::amqp_url()),
        ("AMQP_NAMESPACE", namespace.to_string()),
    ];
    (vars, port, admin)
}

/// Runs `ingress <args>` (an operator command such as `check`) with exactly `vars`; returns
/// (code, stdout+stderr).
pub fn ingress_cmd(args: &[&str], vars: &[(&'static str, String)]) -> (i32, String) {
    let out = Command::new(bin_dir().join("ingress"))
        .args(args)
        .env_clear()
        .envs(vars.iter().cloned())
        .output()
        .expect("run ingress");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Runs `worker <args>` (an operator command) against a test environment; returns (code, stdout+stderr).
pub fn worker_cmd(env: &crate::TestEnv, args: &[&str]) -> (i32, String) {
    worker_cmd_with(env, args, &[])
}

/// Like [`worker_cmd`], with some variables of [`worker_env`] replaced or added.
pub fn worker_cmd_with(env: &crate::TestEnv, args: &[&str], vars: &[(&str, String)]) -> (i32, String) {
    let (code, stdout, stderr) = worker_output(env, args, vars);
    (code, format!("{stdout}{stderr}"))
}

/// Runs `worker <args>` with [`worker_env`] and `vars` on top; returns (code, stdout, stderr)
/// apart, for output that scripts parse.
pub fn worker_output(env: &crate::TestEnv, args: &[&str], vars: &[(&str, String)]) -> (i32, String, String) {
    let mut all: Vec<(&str, String)> = worker_env(env)
        .into_iter()
        .filter(|(k, _)| !vars.iter().any(|(v, _)| v == k))
        .collect();
    all.extend(vars.iter().cloned());
    let out = Command::new(bin_dir().join("worker"))
        .args(args)
        .env_clear()
        .envs(all)
        .output()
        .expect("run worker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
