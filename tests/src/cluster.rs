//! A three-node RabbitMQ cluster started by a test from the installed `rabbitmq-server` package.
//!
//! Each node gets its own name (`cio<id>n<i>@localhost`), free AMQP and distribution ports, data
//! and log directories and config file in one temporary directory, and a private Erlang cookie
//! (through `HOME`), so it collides neither with the machine's broker nor with a parallel run.
//! The machine's `/etc/rabbitmq` files are not read. Nodes 2 and 3 join node 1 with
//! `rabbitmqctl join_cluster`. Only the nodes started here are ever stopped, by the process id
//! each node wrote to its pid file; dropping the [`Cluster`] kills them and deletes the directory.
//!
//! The scripts are taken from `RABBITMQ_SCRIPTS_DIR` (default `/usr/lib/rabbitmq/bin`, the
//! Debian package's unwrapped scripts that run as the calling user).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

fn scripts_dir() -> PathBuf {
    std::env::var_os("RABBITMQ_SCRIPTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/rabbitmq/bin"))
}

/// One node of the test cluster.
pub struct RabbitNode {
    /// The Erlang node name, e.g. `cio0123abcdn1@localhost`.
    pub name: String,
    pub amqp_port: u16,
    dist_port: u16,
    dir: PathBuf,
    /// The `rabbitmq-server` script (it runs the Erlang VM as its child).
    script: Option<Child>,
}

impl RabbitNode {
    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// The Erlang VM's process id, from the pid file the node writes when it boots.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("pid")).ok()?.trim().parse().ok()
    }

    /// Whether the node's Erlang VM (by the pid it wrote) is alive.
    fn vm_alive(&self) -> bool {
        self.pid()
            .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    }

    pub fn is_running(&mut self) -> bool {
        self.script.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// Nodes started by one test; stopped (by pid) and removed on drop.
pub struct Cluster {
    pub nodes: Vec<RabbitNode>,
    dir: PathBuf,
    /// How long [`Cluster::start`] took, from the first spawn to all nodes healthy and clustered.
    pub started_in: Duration,
}

impl Cluster {
    /// Starts `n` nodes, clusters them and waits until all are running members.
    pub async fn start(n: usize) -> Cluster {
        assert!(
            scripts_dir().join("rabbitmq-server").exists(),
            "{} is missing: install the rabbitmq-server package (deploy/local/test.sh does)",
            scripts_dir().join("rabbitmq-server").display()
        );
        let began = Instant::now();
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let dir = std::env::temp_dir().join(format!("cio-rabbit-{id}"));
        std::fs::create_dir_all(dir.join("home")).unwrap();
        let cookie = dir.join("home/.erlang.cookie");
        std::fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string()).unwrap();
        set_mode(&cookie, 0o400);
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(dir.join("advanced.config"), "[].\n").unwrap();
        // Replaces /etc/rabbitmq/rabbitmq-env.conf: distribution on the loopback interface only.
        std::fs::write(
            dir.join("rabbitmq-env.conf"),
            "export ERL_FLAGS=\"-kernel inet_dist_use_interface {127,0,0,1}\"\n",
        )
        .unwrap();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            dir,
            started_in: Duration::ZERO,
        };
        // Every port of every node at once, each held until all are chosen, so that no two
        // nodes are given the same one (a node whose AMQP port another node's distribution had
        // taken would die at boot after the port answered for it).
        let mut ports = distinct_ports(2 * n).into_iter();
        for i in 1..=n {
            let node_dir = cluster.dir.join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let amqp_port = ports.next().unwrap();
            std::fs::write(
                node_dir.join("rabbitmq.conf"),
                format!("listeners.tcp.1 = 127.0.0.1:{amqp_port}\n"),
            )
            .unwrap();
            cluster.nodes.push(RabbitNode {
                name: format!("cio{id}n{i}@localhost"),
                amqp_port,
                dist_port: ports.next().unwrap(),
                dir: node_dir,
                script: None,
            });
        }
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_listening(i).await;
        }
        let first = cluster.nodes[0].name.clone();
        let joins = (1..n).map(|i| {
            let me = &cluster;
            let first = first.clone();
            async move {
                me.ctl_ok(i, &["stop_app"]).await;
                me.ctl_ok(i, &["join_cluster", &first]).await;
                me.ctl_ok(i, &["start_app"]).await;
            }
        });
        futures_util::future::join_all(joins).await;
        cluster.wait_healthy().await;
        cluster.started_in = began.elapsed();
        cluster
    }

    /// The comma-separated URL list of all nodes (the `AMQP_URL` of a cluster).
    pub fn amqp_url(&self) -> String {
        self.nodes.iter().map(RabbitNode::url).collect::<Vec<_>>().join(",")
    }

    /// The index of the node listening on `port`.
    pub fn node_with_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.amqp_port == port)
    }

    fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("console.log"))
            .unwrap();
        let mut cmd = Command::new(scripts_dir().join("rabbitmq-server"));
        self.node_env(&mut cmd, i);
        cmd.env("RABBITMQ_NODE_PORT", node.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_BASE", &node.dir)
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", self.dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", node.dir.join("pid"))
            // Its own process group, so that dropping the cluster can stop the script and the VM
            // even before the VM wrote its pid file.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let _ = std::fs::remove_file(node.dir.join("pid"));
        self.nodes[i].script = Some(cmd.spawn().expect("start rabbitmq-server"));
    }

    /// What both the server and the CLI tools need: the node name, the private cookie (in
    /// `HOME`) and an env file of our own instead of the machine's.
    fn node_env(&self, cmd: &mut Command, i: usize) {
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.join("home"))
            .env("LANG", "C.UTF-8")
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &self.nodes[i].name);
    }

    /// Waits until node `i` accepts AMQP connections (the last step of its boot).
    async fn wait_listening(&mut self, i: usize) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let port = self.nodes[i].amqp_port;
        loop {
            if speaks_amqp(port).await && self.nodes[i].is_running() {
                return;
            }
            assert!(
                self.nodes[i].is_running(),
                "RabbitMQ node {} exited while booting:\n{}",
                self.nodes[i].name,
                self.console_log(i)
            );
            assert!(
                Instant::now() < deadline,
                "RabbitMQ node {} did not boot within {BOOT_TIMEOUT:?}:\n{}",
                self.nodes[i].name,
                self.console_log(i)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every node is a running member of one cluster and accepts AMQP connections.
    pub async fn wait_healthy(&mut self) {
        let n = self.nodes.len().to_string();
        let up = (0..self.nodes.len())
            .find(|&i| self.nodes[i].is_running())
            .expect("a running node");
        self.ctl_ok(up, &["await_online_nodes", &n, "--timeout", "120"]).await;
        for i in 0..self.nodes.len() {
            self.wait_listening(i).await;
        }
    }

    fn console_log(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.nodes[i].dir.join("console.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Runs `rabbitmqctl -n <node i> <args>`; returns (success, stdout), or (false, stdout +
    /// stderr) when it failed.
    pub async fn ctl(&self, i: usize, args: &[&str]) -> (bool, String) {
        self.tool("rabbitmqctl", i, args).await
    }

    /// Runs one of the package's CLI tools (`rabbitmqctl`, `rabbitmq-queues`, …) against node `i`.
    pub async fn tool(&self, tool: &str, i: usize, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new(scripts_dir().join(tool));
        self.node_env(&mut cmd, i);
        cmd.arg("-n").arg(&self.nodes[i].name).args(args).stdin(Stdio::null());
        let out = cmd.output().await.expect("run a RabbitMQ CLI tool");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            (true, stdout)
        } else {
            (false, format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    async fn ctl_ok(&self, i: usize, args: &[&str]) -> String {
        let (ok, text) = self.ctl(i, args).await;
        assert!(
            ok,
            "rabbitmqctl {args:?} on {} failed:\n{text}\n{}",
            self.nodes[i].name,
            self.diagnostics()
        );
        text
    }

    /// Whether each node runs, and the end of its console log: printed when a step fails, since
    /// the cluster's directory is removed when it is dropped.
    fn diagnostics(&self) -> String {
        (0..self.nodes.len())
            .map(|i| {
                format!(
                    "--- {} (AMQP port {}, distribution port {}, VM alive: {}):\n{}",
                    self.nodes[i].name,
                    self.nodes[i].amqp_port,
                    self.nodes[i].dist_port,
                    self.nodes[i].vm_alive(),
                    self.console_log(i)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `kill -9` node `i` (its Erlang VM, by pid) and waits for it to be gone.
    pub async fn kill(&mut self, i: usize) {
        let pid = self.nodes[i].pid().expect("the node wrote its pid file");
        kill(pid, "-KILL");
        if let Some(script) = self.nodes[i].script.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(30), script.wait()).await;
        }
        self.nodes[i].script = None;
    }

    /// Starts node `i` again on its data directory; it rejoins the cluster by itself.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_listening(i).await;
        self.wait_healthy().await;
    }

    /// `rabbitmqctl list_queues` of node `i` for queues whose name starts with `prefix`, as JSON
    /// objects with `name`, `type`, `members`, `online` and `leader`.
    pub async fn quorum_queues(&self, i: usize, prefix: &str) -> Vec<serde_json::Value> {
        let (ok, text) = self
            .ctl(
                i,
                &[
                    "list_queues",
                    "name",
                    "type",
                    "members",
                    "online",
                    "leader",
                    "--formatter",
                    "json",
                    "-q",
                ],
            )
            .await;
        assert!(ok, "list_queues failed: {text}");
        let all: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
        all.as_array()
            .into_iter()
            .flatten()
            .filter(|q| q["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .cloned()
            .collect()
    }

    /// The server port of the connection named `connection_name`, asked of node `i`.
    pub async fn connection_port(&self, i: usize, connection_name: &str) -> Option<u16> {
        let (ok, text) = self
            .ctl(
                i,
                &[
                    "list_connections",
                    "port",
                    "client_properties",
                    "--formatter",
                    "json",
                    "-q",
                ],
            )
            .await;
        assert!(ok, "list_connections failed: {text}");
        let all: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
        all.as_array().into_iter().flatten().find_map(|c| {
            let props = c["client_properties"].as_array()?;
            let name = props.iter().find(|p| p[0] == "connection_name")?[2].as_str()?;
            (name == connection_name).then(|| c["port"].as_u64())?.map(|p| p as u16)
        })
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn kill(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}

/// Kills the process group `group` (a node's script and everything it started).
fn kill_group(group: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .status();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut script) = node.script.take() {
                if let Some(pid) = node.pid() {
                    kill(pid, "-KILL");
                }
                if let Some(group) = script.id() {
                    kill_group(group);
                }
                // Reap the script so that no zombie is left (bounded: the VM is gone).
                let deadline = Instant::now() + Duration::from_secs(10);
                while matches!(script.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` distinct free ports of the loopback interface.
fn distinct_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Whether an AMQP server answers on `port`: it answers the protocol header with `connection.start`
/// (a method frame, type 1), which no other listener would.
async fn speaks_amqp(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limit = Duration::from_secs(2);
    let Ok(Ok(mut s)) = tokio::time::timeout(limit, tokio::net::TcpStream::connect(("127.0.0.1", port))).await else {
        return false;
    };
    if s.write_all(b"AMQP\x00\x00\x09\x01").await.is_err() {
        return false;
    }
    let mut frame_type = [0u8; 1];
    matches!(tokio::time::timeout(limit, s.read_exact(&mut frame_type)).await, Ok(Ok(_)) if frame_type[0] == 1)
}
