//! Slow and abusive clients at the public port: header, body and idle timeouts, the key checked
//! before the body is read, and thousands of trickling connections against the real binary.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use testkit::{
    env::ACCESS_KEY,
    metrics::{scrape, series},
    procs::{ingress_env, Proc},
    wait_for, wait_until, TestEnv,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

/// Reads until the status line is in and returns the status code; `None` if the connection
/// closed first. Bounded by `limit`.
async fn status_of(stream: &mut TcpStream, limit: Duration) -> Option<u16> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some(line) = text.split("\r\n").next().filter(|_| text.contains("\r\n")) {
                return line.split(' ').nth(1)?.parse().ok();
            }
        }
    })
    .await
    .expect("an answer or a close within the limit")
}

/// Reads and discards until the peer closes; the time it took. Bounded by `limit`.
async fn closed_after(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        while stream.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
    })
    .await
    .unwrap_or_else(|_| panic!("the ingress did not close the connection within {limit:?}"));
    started.elapsed()
}

fn addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

async fn ingress_with(env: &mut TestEnv, tune: impl FnOnce(&mut ingress::Limits)) -> SocketAddr {
    let mut s = env.ingress_settings();
    tune(&mut s.limits);
    addr(&env.start_ingress_at(s).await.public)
}

#[tokio::test]
async fn a_connection_that_sends_no_complete_head_is_closed_after_the_header_timeout() {
    let mut env = TestEnv::new().await;
    let a = ingress_with(&mut env, |l| l.header_timeout = Duration::from_secs(1)).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(a).await.unwrap();
    let mut partial = TcpStream::connect(a).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for s in [&mut silent, &mut partial] {
        closed_after(s, Duration::from_secs(10)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(800), "not before the timeout: {took:?}");
    }
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    // The real binary, so that its open-connection gauge is its own: the request is sent only once
    // the ingress is watching the connection, i.e. its clock started in the header phase (30 s)
    // and must move to the idle deadline (1 s) when the answer has gone out.
    let env = TestEnv::new().await;
    let (mut vars, port, admin_port) = ingress_env(ACCESS_KEY, &env.namespace);
    vars.extend([
        ("INGRESS_IDLE_TIMEOUT_SECS", "1".to_string()),
        ("INGRESS_HEADER_TIMEOUT_SECS", "30".into()),
    ]);
    let mut p = Proc::spawn("ingress", &[], &vars);
    let admin = format!("http://127.0.0.1:{admin_port}");
    wait_until("the ingress to be ready", Duration::from_secs(30), || {
        let u = format!("{admin}/readyz");
        async move { reqwest::get(u).await.ok().filter(|r| r.status() == 200) }
    })
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    wait_for(
        "the ingress to watch the connection",
        Duration::from_secs(10),
        || async {
            match series(&scrape(&format!("{admin}/metrics")).await, "cio_ingress_connections") {
                Some(n) if n >= 1.0 => Ok(()),
                other => Err(format!("open connections: {other:?}")),
            }
        },
    )
    .await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(status_of(&mut s, Duration::from_secs(5)).await, Some(200));
    // Kept alive, then cut by the idle timeout (1 s), long before the header timeout (30 s).
    let took = closed_after(&mut s, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(500), "{took:?}");
    let cut = scrape(&format!("{admin}/metrics")).await;
    assert!(
        cut.lines()
            .any(|l| l.starts_with("cio_ingress_timeouts_total{phase=\"idle\"} 1")),
        "{cut}"
    );
    assert!(p.terminate(Duration::from_secs(10)).unwrap().success());
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_408() {
    let mut env = TestEnv::new().await;
    let a = ingress_with(&mut env, |l| l.body_timeout = Duration::from_secs(1)).await;
    let mut s = TcpStream::connect(a).await.unwrap();
    let head = format!(
        "POST /?wpf_action=add&access_key={ACCESS_KEY} HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"email\":"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(status_of(&mut s, Duration::from_secs(10)).await, Some(408));
}

#[tokio::test]
async fn a_key_in_the_query_or_a_header_is_judged_before_the_body_is_read() {
    let mut env = TestEnv::new().await;
    // A body timeout far longer than the answer may take: the body is never waited for.
    let a = ingress_with(&mut env, |l| l.body_timeout = Duration::from_secs(60)).await;
    for (query, header) in [
        ("access_key=wrong-key-0000000000", ""),
        ("", "X-Access-Key: wrong-key-0000000000\r\n"),
        // No key, and a JSON body cannot bring one.
        ("", ""),
    ] {
        let mut s = TcpStream::connect(a).await.unwrap();
        let head = format!(
            "POST /?wpf_action=add&{query} HTTP/1.1\r\nHost: x\r\n{header}\
             Content-Type: application/json\r\nContent-Length: 65536\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        assert_eq!(
            status_of(&mut s, Duration::from_secs(5)).await,
            Some(403),
            "{query}{header}"
        );
    }
    // A form body may carry the key, so there the body is read.
    let mut s = TcpStream::connect(a).await.unwrap();
    let body = format!("wpf_action=test&access_key={ACCESS_KEY}");
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    assert_eq!(status_of(&mut s, Duration::from_secs(5)).await, Some(200));
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// One trickling client: sends `start`, then one byte of `drip` every 250 ms until the ingress
/// closes the connection, `stop` is cancelled, or 30 s have passed.
async fn trickle(a: SocketAddr, start: String, stop: CancellationToken, opened: Arc<AtomicUsize>) {
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(a)).await else {
        return;
    };
    opened.fetch_add(1, Ordering::Relaxed);
    if s.write_all(start.as_bytes()).await.is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if s.write_all(b"a").await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_trickling_connections_neither_starve_a_webhook_nor_pile_up_descriptors() {
    const CAP: usize = 1000;
    let env = TestEnv::new().await;
    let (mut vars, port, admin_port) = ingress_env(ACCESS_KEY, &env.namespace);
    vars.extend([
        ("INGRESS_MAX_CONNECTIONS", CAP.to_string()),
        ("INGRESS_HEADER_TIMEOUT_SECS", "4".into()),
        ("INGRESS_BODY_TIMEOUT_SECS", "4".into()),
    ]);
    let mut p = Proc::spawn("ingress", &[], &vars);
    let pid = p.child.id();
    let a: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin = format!("http://127.0.0.1:{admin_port}");
    wait_until("the ingress to be ready", Duration::from_secs(30), || {
        let u = format!("{admin}/readyz");
        async move { reqwest::get(u).await.ok().filter(|r| r.status() == 200) }
    })
    .await;
    let idle_fds = open_fds(pid);

    // 1,500 clients trickle a request head; 1,000 send a valid head declaring a 64 KiB body and
    // trickle the body. Together 2.5 times the connection cap.
    let stop = CancellationToken::new();
    let opened = Arc::new(AtomicUsize::new(0));
    let mut attackers = tokio::task::JoinSet::new();
    let head = format!("GET /?wpf_action=test&access_key={ACCESS_KEY} HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    let body = format!(
        "POST /?wpf_action=add&access_key={ACCESS_KEY} HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/json\r\nContent-Length: 65536\r\n\r\n{{\"email\":\""
    );
    let mut max_fds = 0;
    for batch in 0..25 {
        for i in 0..100 {
            let start = if (batch * 100 + i) % 5 < 3 {
                head.clone()
            } else {
                body.clone()
            };
            attackers.spawn(trickle(a, start, stop.clone(), opened.clone()));
        }
        max_fds = max_fds.max(open_fds(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for("the attackers to connect", Duration::from_secs(20), || async {
        let n = opened.load(Ordering::Relaxed);
        if n >= 2400 {
            Ok(())
        } else {
            Err(format!("{n} connected"))
        }
    })
    .await;

    // While they trickle, a real webhook test answers within a second, again and again.
    for round in 0..5 {
        let started = Instant::now();
        let mut s = TcpStream::connect(a).await.unwrap();
        let req = format!("GET /?wpf_action=test&access_key={ACCESS_KEY} HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let status = status_of(&mut s, Duration::from_secs(5)).await;
        let took = started.elapsed();
        assert_eq!(status, Some(200), "round {round}");
        assert!(took < Duration::from_secs(1), "round {round}: answered in {took:?}");
        max_fds = max_fds.max(open_fds(pid));
    }
    // Descriptors stay bounded by the cap (plus the overflow being answered and a small reserve).
    let bound = idle_fds + CAP + 256 + 64;
    assert!(max_fds <= bound, "{max_fds} descriptors open (bound {bound})");
    assert!(
        max_fds > CAP / 2,
        "the attack did reach the ingress ({max_fds} descriptors)"
    );

    // The timeouts cut them: back to idle while the clients would go on for 30 s.
    wait_for(
        "the trickling connections to be cut",
        Duration::from_secs(20),
        || async {
            let n = open_fds(pid);
            if n <= idle_fds + 10 {
                Ok(())
            } else {
                Err(format!("{n} descriptors open (idle {idle_fds})"))
            }
        },
    )
    .await;
    let m = scrape(&format!("{admin}/metrics")).await;
    for phase in ["head", "body"] {
        let line = format!("cio_ingress_timeouts_total{{phase=\"{phase}\"}}");
        assert!(
            m.lines().any(|l| l.starts_with(&line) && !l.ends_with(" 0")),
            "{phase}: {m}"
        );
    }
    stop.cancel();
    while attackers.join_next().await.is_some() {}
    assert!(p.terminate(Duration::from_secs(10)).unwrap().success());
}
