//! The public listener, hardened against slow and abusive clients.
//!
//! - Each connection has a clock. From accepting it, and from its first byte after an idle pause,
//!   the whole request head must arrive within [`Limits::header_timeout`]; between requests a
//!   kept-alive connection may idle for [`Limits::idle_timeout`]. Past either it is closed. The
//!   webhook handler bounds the body ([`Limits::body_timeout`]), the publisher the broker's confirm.
//! - Open connections are capped ([`Limits::max_connections`]), so descriptors stay bounded. At the
//!   cap, a new connection takes the place of the oldest one that is not handling a request
//!   (still sending its head or body, or idle): trickling clients cannot crowd out a webhook that
//!   arrives whole. Only when every connection is busy is the new one answered at once with a 503
//!   and `Retry-After` (as soon as its head is in, its body unread) and closed.
//! - On shutdown it stops accepting, lets open connections finish their request (answering with
//!   `Connection: close`), and closes what is left when the grace period is over.

use std::{
    collections::HashMap,
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::Router;
use hyper::{body::Incoming, server::conn::http1, Request};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore},
};
use tower::ServiceExt;

use crate::{
    clock::millis,
    logs::Throttle,
    metrics::{Metrics, Timeout, Unavailable},
    responses::CONNECTION_LIMIT_RESPONSE,
    settings::Limits,
};

/// Connections over the cap that may wait for an evicted one's place, or for their 503, at once;
/// beyond that they are closed without an answer.
const OVERFLOW: usize = 256;
/// How long a connection over the cap may wait for a place, or take to get its 503.
const OVERFLOW_TIME: Duration = Duration::from_millis(500);
/// How many evictable connections are compared to pick the oldest.
const EVICTION_SAMPLE: usize = 64;

/// Descriptors the process needs besides its connections (listeners, broker, runtime, logs).
pub const RESERVED_FDS: usize = 64;

/// The number of connections the descriptor limit leaves room for: raises the soft limit to the
/// hard one first (as servers commonly do), then keeps room for the overflow and the rest.
pub fn connection_budget(wanted: usize) -> (usize, Option<u64>) {
    let reserve = (OVERFLOW + RESERVED_FDS) as u64;
    let limit = rlimit::increase_nofile_limit(u64::MAX).ok();
    match limit {
        Some(l) if l < wanted as u64 + reserve => (l.saturating_sub(reserve).max(16) as usize, Some(l)),
        _ => (wanted, limit),
    }
}

/// Where a connection is in its life.
const FRESH: u8 = 0;
const HEAD: u8 = 1;
const BODY: u8 = 2;
const BUSY: u8 = 3;
const IDLE: u8 = 4;

/// The state of one connection and when it entered it, shared by its socket, its service, the
/// webhook handler (through the request's extensions) and its watchdog.
pub struct ConnClock {
    state: AtomicU8,
    since: AtomicU64,
    evicted: AtomicBool,
    evict: Notify,
    /// Wakes the watchdog when the state changes, so it sleeps on the new state's deadline.
    changed: Notify,
    /// Where an evicted connection hands its place (its permit) to the one that evicted it.
    handoff: Mutex<Option<oneshot::Sender<OwnedSemaphorePermit>>>,
}

impl ConnClock {
    fn new() -> Self {
        Self {
            state: AtomicU8::new(FRESH),
            since: AtomicU64::new(millis()),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
            changed: Notify::new(),
            handoff: Mutex::new(None),
        }
    }

    fn set(&self, state: u8) {
        self.since.store(millis(), Ordering::Release);
        self.state.store(state, Ordering::Release);
        self.changed.notify_one();
    }

    /// Bytes arrived: after an idle pause, a new request head has begun.
    fn bytes_arrived(&self) {
        if self.state.load(Ordering::Acquire) == IDLE {
            self.set(HEAD);
        }
    }

    /// The body has been read: the request is now being handled, and no longer evictable.
    pub fn body_read(&self) {
        self.set(BUSY);
    }

    /// Not handling a request, so another connection may take its place at the cap.
    fn evictable(&self) -> bool {
        self.state.load(Ordering::Acquire) != BUSY && !self.evicted.load(Ordering::Acquire)
    }

    /// Asks the connection to close; its place is then sent to the returned receiver.
    fn evict(&self) -> oneshot::Receiver<OwnedSemaphorePermit> {
        let (tx, rx) = oneshot::channel();
        *self.handoff.lock().expect("handoff lock") = Some(tx);
        self.evicted.store(true, Ordering::Release);
        self.evict.notify_one();
        rx
    }

    /// The connection is over: its place goes to the connection that evicted it, if any.
    fn release(&self, permit: OwnedSemaphorePermit) {
        if let Some(tx) = self.handoff.lock().expect("handoff lock").take() {
            let _ = tx.send(permit);
        }
    }

    /// Resolves when the connection has overstayed its current state. Re-reads the state whenever
    /// it changes: a connection watched while fresh (header timeout) that then idles between
    /// requests must be cut at the idle timeout, not at the deadline it was first given.
    async fn expired(&self, limits: &Limits) -> Timeout {
        loop {
            let changed = self.changed.notified();
            let state = self.state.load(Ordering::Acquire);
            let since = self.since.load(Ordering::Acquire);
            let (limit, phase) = match state {
                FRESH | HEAD => (limits.header_timeout, Timeout::Head),
                IDLE => (limits.idle_timeout, Timeout::Idle),
                // The handler bounds the body and the publish: wait for the next state.
                _ => {
                    changed.await;
                    continue;
                }
            };
            let deadline = since.saturating_add(limit.as_millis() as u64);
            let now = millis();
            if now >= deadline {
                return phase;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(deadline - now)) => {}
                _ = changed => {}
            }
        }
    }
}

/// The open connections, to pick one to evict at the cap.
#[derive(Default)]
struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnClock>>>,
}

impl Registry {
    fn add(&self, clock: Arc<ConnClock>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.lock().expect("registry lock").insert(id, clock);
        id
    }

    fn remove(&self, id: u64) {
        self.open.lock().expect("registry lock").remove(&id);
    }

    /// Evicts the oldest of (a sample of) the connections not handling a request; its place
    /// arrives on the returned receiver. `None` when every connection is busy.
    fn evict_one(&self) -> Option<oneshot::Receiver<OwnedSemaphorePermit>> {
        let open = self.open.lock().expect("registry lock");
        open.values()
            .filter(|c| c.evictable())
            .take(EVICTION_SAMPLE)
            .min_by_key(|c| c.since.load(Ordering::Acquire))
            .map(|c| c.evict())
    }
}

/// A socket that tells its clock when bytes arrive.
struct Watched {
    io: TcpStream,
    clock: Arc<ConnClock>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.bytes_arrived();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What the server tells its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serve,
    /// Finish the request in progress, then close.
    Drain,
    /// The grace period is over: close now.
    Close,
}

/// What every connection task shares.
struct Shared {
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    registry: Registry,
    connections: Arc<Semaphore>,
    overflow: Arc<Semaphore>,
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains for at most `grace`.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let shared = Arc::new(Shared {
        app,
        connections: Arc::new(Semaphore::new(limits.max_connections)),
        overflow: Arc::new(Semaphore::new(OVERFLOW)),
        limits,
        metrics,
        registry: Registry::default(),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Serve);
    let accept_errors = Throttle::default();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    if let Some(skipped) = accept_errors.allow() {
                        tracing::error!(error = %e, skipped, "cannot accept connections");
                    }
                    // Out of descriptors (or similar): give closing connections a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if let Ok(permit) = shared.connections.clone().try_acquire_owned() {
            tokio::spawn(connection(stream, shared.clone(), phase_rx.clone(), permit));
            continue;
        }
        // At the cap: take an evicted connection's place, or get a 503.
        let Ok(waiting) = shared.overflow.clone().try_acquire_owned() else {
            shared.metrics.unavailable(Unavailable::ConnectionLimit);
            continue;
        };
        let place = shared.registry.evict_one();
        let (shared, phase) = (shared.clone(), phase_rx.clone());
        tokio::spawn(async move {
            let permit = match place {
                // The evicted connection hands over its place as it closes; should it have closed
                // on its own just before, its place went back to the pool.
                Some(rx) => match tokio::time::timeout(OVERFLOW_TIME, rx).await {
                    Ok(Ok(p)) => Some(p),
                    _ => shared.connections.clone().try_acquire_owned().ok(),
                },
                None => None,
            };
            match permit {
                Some(permit) => {
                    drop(waiting);
                    connection(stream, shared, phase, permit).await;
                }
                None => {
                    shared.metrics.unavailable(Unavailable::ConnectionLimit);
                    shed(stream).await;
                    drop(waiting);
                }
            }
        });
    }
    drop(listener);
    let _ = phase_tx.send(Phase::Drain);
    let all = u32::try_from(shared.limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, shared.connections.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(?grace, "grace period over; closing remaining connections");
        let _ = phase_tx.send(Phase::Close);
    }
}

async fn connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    shared.metrics.connections.increment(1.0);
    let clock = Arc::new(ConnClock::new());
    let id = shared.registry.add(clock.clone());
    let io = TokioIo::new(Watched {
        io: stream,
        clock: clock.clone(),
    });
    let (service_clock, app) = (clock.clone(), shared.app.clone());
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        service_clock.set(BODY);
        req.extensions_mut().insert(service_clock.clone());
        let app = app.clone();
        let done = service_clock.clone();
        async move {
            let r = app.oneshot(req).await;
            done.set(IDLE);
            r
        }
    });
    let mut conn = Box::pin(
        http1::Builder::new()
            .header_read_timeout(None::<Duration>)
            .serve_connection(io, service),
    );
    let mut draining = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            phase = clock.expired(&shared.limits) => {
                shared.metrics.timeout(phase);
                break;
            }
            _ = clock.evict.notified() => break,
            changed = phase.changed() => {
                let now = *phase.borrow_and_update();
                if changed.is_err() || now == Phase::Close {
                    break;
                }
                if now == Phase::Drain && !draining {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    shared.registry.remove(id);
    shared.metrics.connections.decrement(1.0);
    // Close the socket before handing the place over, so descriptors stay within the cap.
    drop(conn);
    clock.release(permit);
}

/// Answers a connection over the cap with a 503 once its request head is in (clients do not
/// expect an answer before they have sent their request), then closes it. A client that does not
/// send its head within [`OVERFLOW_TIME`] is closed without an answer.
async fn shed(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    let mut seen = 0usize;
    let mut tail = [0u8; 4];
    let head_in = tokio::time::timeout(OVERFLOW_TIME, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(false);
            }
            seen += n;
            for &b in &buf[..n] {
                tail = [tail[1], tail[2], tail[3], b];
                if &tail == b"\r\n\r\n" {
                    return Ok(true);
                }
            }
            if seen > 16 * 1024 {
                return Ok(true);
            }
        }
    })
    .await;
    if !matches!(head_in, Ok(Ok::<bool, io::Error>(true))) {
        return;
    }
    let _ = tokio::time::timeout(OVERFLOW_TIME, async {
        stream.write_all(CONNECTION_LIMIT_RESPONSE).await?;
        stream.shutdown().await?;
        // Read what the client still sends until it closes: closing with unread data would
        // reset the connection, and a reset may discard the answer before the client reads it.
        while stream.read(&mut buf).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}
