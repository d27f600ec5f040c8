//! Bounded polling: tests wait for an outcome, never for a fixed time.

use std::{fmt::Display, future::Future, time::Duration};

/// Polls `check` every 25 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for(what, timeout, || {
        let pending = check();
        async move { pending.await.ok_or("not yet") }
    })
    .await
}

/// Like [`wait_until`], but `check` says what is still missing; the panic after `timeout`
/// gives the last answer, so a failure explains itself.
pub async fn wait_for<T, E, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let why = match check().await {
            Ok(v) => return v,
            Err(why) => why,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}: {why}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
