//! Offline Customer.io simulator for tests and the local demo stack.
//!
//! One HTTP listener serves three surfaces, routed by path:
//! - App API (`/v1/...`, Bearer auth, token-bucket rate limit, `errors` envelope),
//! - Track API (`/api/v1/...`, `/api/v2/...`, HTTP Basic auth, `meta.errors` envelope),
//! - Control API (`/_sim/...`, no auth) for seeding, inspection and fault injection.
//!
//! Behaviour follows `shared/reference/customerio-api.md` (section 10 is the checklist).
//! Tests drive the simulator through [`SimHandle`]; the local stack through the Control API.
//! Every request is recorded ([`SimHandle::requests`]) with the status it was answered with.

mod app_api;
mod conn;
mod control;
mod faults;
mod handle;
mod limiter;
mod seed;
mod server;
mod state;
mod track_api;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub use faults::{Fault, FaultKind};
pub use seed::demo_seed;

/// Simulator configuration. See [`SimConfig::default`] for the defaults.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Bearer key accepted on `/v1/*`.
    pub app_api_key: String,
    /// Track Basic auth user.
    pub site_id: String,
    /// Track Basic auth password.
    pub track_api_key: String,
    /// Requests per second for the App token bucket (capacity = rate); `None` = unthrottled.
    pub app_rate_limit: Option<u32>,
    /// Requests per second for the Track token bucket; `None` = unthrottled.
    pub track_rate_limit: Option<u32>,
    /// `false` => `id_type=email` (App) and email identifiers (Track v2) answer 400 "not enabled".
    pub email_id_type_enabled: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            app_api_key: "sim-app-key".into(),
            site_id: "sim-site".into(),
            track_api_key: "sim-track-key".into(),
            app_rate_limit: Some(10),
            track_rate_limit: None,
            email_id_type_enabled: true,
        }
    }
}

/// Which surface a request hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// `/v1/...` and any other path that is neither Track nor Control.
    App,
    /// `/api/...`.
    Track,
    /// `/_sim/...`.
    Control,
}

impl Api {
    /// Lower-case name used by the Control API (`"app"`, `"track"`, `"control"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Api::App => "app",
            Api::Track => "track",
            Api::Control => "control",
        }
    }
}

/// One request as received, with the status it was answered with.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub api: Api,
    pub method: String,
    /// Raw path, still percent-encoded.
    pub path: String,
    /// Raw query string (without `?`).
    pub query: Option<String>,
    /// Status answered; `0` when the connection was dropped by a `FaultKind::Reset`.
    pub status: u16,
    /// Request body: parsed JSON, or a JSON string holding the raw text if it was not JSON;
    /// `None` when empty.
    pub body: Option<serde_json::Value>,
    /// When the request was received.
    pub at: Instant,
}

/// A Track `PUT /api/v1/customers/{identifier}` that was answered 200.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackPut {
    /// Path identifier, percent-decoded (still carries a `cio_` prefix if one was sent).
    pub identifier: String,
    pub body: serde_json::Value,
}

/// Snapshot of one person.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PersonView {
    pub cio_id: String,
    pub id: Option<String>,
    pub email: Option<String>,
    /// Custom attributes as stored (all strings). The identifiers `id`/`email`/`cio_id` are
    /// not repeated here (the App API adds them to `attributes` on read).
    pub attributes: BTreeMap<String, String>,
}

/// Cheap clone of the simulator's shared state; all methods are synchronous.
#[derive(Clone)]
pub struct SimHandle {
    pub(crate) inner: Arc<server::Inner>,
}

/// A running simulator. Dropping it (or calling [`Simulator::shutdown`]) stops the server.
pub struct Simulator {
    handle: SimHandle,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Simulator {
    /// Start on `127.0.0.1:0` (a free port).
    pub async fn start(cfg: SimConfig) -> anyhow::Result<Simulator> {
        Self::start_on(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Start on a given address.
    pub async fn start_on(cfg: SimConfig, addr: SocketAddr) -> anyhow::Result<Simulator> {
        let (inner, addr, task) = server::spawn(cfg, addr).await?;
        Ok(Simulator {
            handle: SimHandle { inner },
            addr,
            task: Some(task),
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:PORT`; serves App, Track and Control paths.
    pub fn url(&self) -> String {
        self.handle.base_url()
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shared state handle.
    pub fn handle(&self) -> SimHandle {
        self.handle.clone()
    }

    /// Stop accepting, cancel in-flight delays, and wait (bounded) for connections to close.
    pub async fn shutdown(mut self) {
        self.handle.inner.cancel.cancel();
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.handle.inner.cancel.cancel();
    }
}
