//! HTTP plumbing: listener with resettable connections, the request pipeline
//! (classify → auth → rate limit → faults → handler → record) and the reply type.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::conn::{ConnKill, SimListener};
use super::faults::{request_contacts, take_matching, Fault, FaultKind};
use super::limiter::Limiter;
use super::state::Store;
use super::{app_api, control, track_api, Api, RecordedRequest, SimConfig, TrackPut};

/// Largest request body read (the v2 batch limit is 500 KB; larger bodies get 413).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Shared simulator state behind [`super::SimHandle`].
pub(crate) struct Inner {
    pub cfg: SimConfig,
    pub base_url: RwLock<String>,
    pub store: Mutex<Store>,
    pub log: Mutex<Vec<RecordedRequest>>,
    pub puts: Mutex<Vec<TrackPut>>,
    pub faults: Mutex<Vec<Fault>>,
    pub limiter: Mutex<Limiter>,
    pub started: Instant,
    pub cancel: CancellationToken,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A handler's answer.
pub(crate) struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn ok(body: Value) -> Reply {
        Reply::status(200, body)
    }
    pub fn status(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body,
            headers: Vec::new(),
        }
    }
    pub fn header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// Random hex used in `(reference …)` suffixes.
pub(crate) fn reference() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// App API error envelope: `{"errors":[{"detail":"… (reference x)","status":"404"}]}`.
pub(crate) fn app_error(status: u16, detail: &str) -> Reply {
    let detail = format!("{detail} (reference {})", reference());
    Reply::status(
        status,
        json!({"errors": [{"detail": detail, "status": status.to_string()}]}),
    )
}

/// Track API error envelope: `{"meta":{"errors":["…"]}}`.
pub(crate) fn track_error(status: u16, msg: &str) -> Reply {
    Reply::status(status, json!({"meta": {"errors": [msg]}}))
}

pub(crate) async fn spawn(
    cfg: SimConfig,
    addr: SocketAddr,
) -> anyhow::Result<(Arc<Inner>, SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let host = if local.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], local.port()))
    } else {
        local
    };
    let inner = Arc::new(Inner {
        cfg,
        base_url: RwLock::new(format!("http://{host}")),
        store: Mutex::new(Store::default()),
        log: Mutex::new(Vec::new()),
        puts: Mutex::new(Vec::new()),
        faults: Mutex::new(Vec::new()),
        limiter: Mutex::new(Limiter::default()),
        started: Instant::now(),
        cancel: CancellationToken::new(),
    });
    let app = Router::new().fallback(dispatch).with_state(inner.clone());
    let svc = app.into_make_service_with_connect_info::<ConnKill>();
    let stop = inner.cancel.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(SimListener(listener), svc)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!("cio-sim server error: {e}");
        }
    });
    Ok((inner, local, task))
}

fn classify(path: &str) -> Api {
    if path == "/_sim" || path.starts_with("/_sim/") {
        Api::Control
    } else if path.starts_with("/api/") {
        Api::Track
    } else {
        Api::App
    }
}

fn parse_body(bytes: &[u8]) -> Option<Value> {
    if bytes.is_empty() {
        return None;
    }
    Some(serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())))
}

fn app_authorized(headers: &HeaderMap, key: &str) -> bool {
    let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let v = v.trim();
    v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") && v[7..].trim() == key
}

fn track_authorized(headers: &HeaderMap, cfg: &SimConfig) -> bool {
    let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let v = v.trim();
    if v.len() <= 6 || !v[..6].eq_ignore_ascii_case("basic ") {
        return false;
    }
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(v[6..].trim()) else {
        return false;
    };
    raw == format!("{}:{}", cfg.site_id, cfg.track_api_key).as_bytes()
}

fn fault_reply(inner: &Inner, api: Api, kind: &FaultKind, path: &str, query: Option<&str>) -> Reply {
    let status = match kind {
        FaultKind::Status(s) => *s,
        _ => 429,
    };
    if (300..400).contains(&status) {
        let q = query.map(|q| format!("?{q}")).unwrap_or_default();
        let loc = format!("{}{path}{q}", lock_base(inner));
        return Reply::status(status, json!({})).header("location", loc);
    }
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Simulated failure");
    let reply = if status == 429 {
        rate_limited(inner, api)
    } else if api == Api::Track {
        track_error(status, reason)
    } else {
        app_error(status, reason)
    };
    if matches!(kind, FaultKind::RateLimitNoRetryAfter) {
        Reply {
            headers: Vec::new(),
            ..reply
        }
    } else {
        reply
    }
}

fn lock_base(inner: &Inner) -> String {
    inner.base_url.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The 429 answer (with `Retry-After: 1`).
fn rate_limited(inner: &Inner, api: Api) -> Reply {
    let rate = match api {
        Api::Track => inner.cfg.track_rate_limit,
        _ => inner.cfg.app_rate_limit,
    }
    .unwrap_or(10);
    let detail = format!("rate limited to {rate} requests per 1s");
    let reply = if api == Api::Track {
        track_error(429, &detail)
    } else {
        app_error(429, &detail)
    };
    reply.header("retry-after", "1".into())
}

/// Auth, rate limit and faults for App/Track. `Err` = answer now; `Ok(Some(true))` = reset.
async fn gate(
    inner: &Inner,
    api: Api,
    headers: &HeaderMap,
    path: &str,
    query: Option<&str>,
    body: Option<&Value>,
) -> Result<bool, Reply> {
    let (authorized, key, rate) = match api {
        Api::Track => (
            track_authorized(headers, &inner.cfg),
            format!("track:{}", inner.cfg.site_id),
            inner.cfg.track_rate_limit,
        ),
        _ => (
            app_authorized(headers, &inner.cfg.app_api_key),
            format!("app:{}", inner.cfg.app_api_key),
            inner.cfg.app_rate_limit,
        ),
    };
    if !authorized {
        return Err(match api {
            Api::Track => track_error(401, "Unauthorized request"),
            _ => app_error(
                401,
                "Unauthorized request. Make sure that you provided the right credentials.",
            ),
        });
    }
    if let Some(rate) = rate {
        if !lock(&inner.limiter).try_acquire(&key, rate) {
            return Err(rate_limited(inner, api));
        }
    }
    let kind = {
        let mut faults = lock(&inner.faults);
        if faults.is_empty() {
            None
        } else {
            let contacts = request_contacts(&lock(&inner.store), api, path, query, body);
            take_matching(&mut faults, api, path, &contacts)
        }
    };
    match kind {
        None => Ok(false),
        Some(FaultKind::Reset) => Ok(true),
        Some(FaultKind::Delay(d)) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = inner.cancel.cancelled() => {}
            }
            Ok(false)
        }
        Some(k) => Err(fault_reply(inner, api, &k, path, query)),
    }
}

async fn dispatch(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let at = Instant::now();
    let conn = req.extensions().get::<ConnectInfo<ConnKill>>().cloned();
    let (parts, body) = req.into_parts();
    let method = parts.method;
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);
    let api = classify(&path);
    let (answer, json) = match axum::body::to_bytes(body, MAX_BODY).await {
        Err(_) => {
            let reply = match api {
                Api::Track => track_error(413, "request body too large"),
                _ => app_error(413, "Request body too large"),
            };
            (Answer { reply, reset: false }, None)
        }
        Ok(bytes) => {
            let json = parse_body(&bytes);
            let q = query.as_deref();
            let h = &parts.headers;
            let answer = route(&inner, api, &method, h, &path, q, &bytes, json.as_ref()).await;
            (answer, json)
        }
    };
    record(&inner, api, &method, &path, &query, &answer, json, at);
    finish(answer, conn)
}

pub(crate) struct Answer {
    reply: Reply,
    reset: bool,
}

#[allow(clippy::too_many_arguments)]
async fn route(
    inner: &Arc<Inner>,
    api: Api,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    query: Option<&str>,
    raw: &[u8],
    json: Option<&Value>,
) -> Answer {
    let reply = match api {
        Api::Control => control::handle(inner, method, path, json),
        _ => match gate(inner, api, headers, path, query, json).await {
            Err(r) => r,
            Ok(true) => {
                return Answer {
                    reply: Reply::ok(json!({})),
                    reset: true,
                }
            }
            Ok(false) if api == Api::Track => track_api::handle(inner, method, path, query, raw, json),
            Ok(false) => app_api::handle(inner, method, path, query, json),
        },
    };
    Answer { reply, reset: false }
}

#[allow(clippy::too_many_arguments)]
fn record(
    inner: &Inner,
    api: Api,
    method: &Method,
    path: &str,
    query: &Option<String>,
    a: &Answer,
    body: Option<Value>,
    at: Instant,
) {
    let status = if a.reset { 0 } else { a.reply.status };
    tracing::info!(api = api.as_str(), method = %method, path, status, "cio-sim request");
    lock(&inner.log).push(RecordedRequest {
        api,
        method: method.to_string(),
        path: path.to_string(),
        query: query.clone(),
        status,
        body,
        at,
    });
}

fn finish(a: Answer, conn: Option<ConnectInfo<ConnKill>>) -> Response {
    if a.reset {
        if let Some(ConnectInfo(ConnKill(kill))) = conn {
            kill.store(true, Ordering::SeqCst);
        }
    }
    let status = StatusCode::from_u16(a.reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, axum::Json(a.reply.body)).into_response();
    for (name, value) in a.reply.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}
