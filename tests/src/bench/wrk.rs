//! Webhook load from `wrk` (a C load generator, so that the load takes little of the two cores
//! the ingress and the broker share): a generated Lua script posts `{"email": …}` bodies with a
//! distinct address per request and prints wrk's whole latency histogram, which becomes a
//! [`Run`] like the broker ceiling's, so rounds can be pooled and compared.

use std::{path::PathBuf, process::Command, time::Duration};

use super::load::Run;

/// The script: one distinct contact per request, every answer's latency printed at the end.
const SCRIPT: &str = r#"
local path, tag = "__PATH__", "__TAG__"
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  n = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  n = n + 1
  return wrk.format(nil, path, nil, '{"email":"' .. tag .. id .. '-' .. n .. '@bench.example.com"}')
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("cio-bench summary %d %d %d %d %d %d %d\n", summary.duration,
    summary.requests, e.connect, e.read, e.write, e.status, e.timeout))
  for i = 1, #latency do
    local v, c = latency(i)
    io.write(string.format("cio-bench latency %d %d\n", v, c))
  end
end
"#;

/// Whether `wrk` can be run (the benchmark script installs the Debian package when missing).
pub fn available() -> bool {
    Command::new("wrk").arg("--version").output().is_ok()
}

/// Posts `wpf_action=<action>` webhooks to `url` for `duration` (whole seconds, at least one) over `connections` kept-alive
/// connections on two threads; contacts are `<tag><thread>-<n>@bench.example.com`. Every answer
/// other than a 2xx, and every socket error or timeout, counts as a failure.
pub fn webhooks(url: &str, key: &str, action: &str, connections: usize, duration: Duration, tag: &str) -> Run {
    let script = ScriptFile::new(
        &SCRIPT
            .replace("__PATH__", &format!("/?wpf_action={action}&access_key={key}"))
            .replace("__TAG__", tag),
    );
    let out = Command::new("wrk")
        .args(["-t2", "--timeout", "5s"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("-s")
        .arg(&script.0)
        .arg(url)
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&text).unwrap_or_else(|| panic!("no summary in wrk's output: {text}"))
}

/// Reads the lines the script's `done` printed.
fn parse(text: &str) -> Option<Run> {
    let mut run = None;
    let mut latencies = Vec::new();
    for line in text.lines() {
        let f: Vec<u64> = match line.strip_prefix("cio-bench ") {
            Some(rest) => rest.split(' ').skip(1).filter_map(|n| n.parse().ok()).collect(),
            None => continue,
        };
        if line.starts_with("cio-bench summary") && f.len() == 7 {
            let failures = f[2..].iter().sum::<u64>() as usize;
            run = Some((Duration::from_micros(f[0]), f[1] as usize, failures));
        } else if line.starts_with("cio-bench latency") && f.len() == 2 {
            let at = Duration::from_micros(f[0]);
            latencies.extend(std::iter::repeat_n(at, f[1] as usize));
        }
    }
    let (elapsed, count, failures) = run?;
    latencies.sort();
    Some(Run {
        count,
        failures,
        elapsed,
        latencies,
    })
}

/// The script in a temporary file, removed when dropped.
struct ScriptFile(PathBuf);

impl ScriptFile {
    fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("cio-bench-{}-{}.lua", std::process::id(), uuid::Uuid::new_v4()));
        std::fs::write(&path, text).expect("write the wrk script");
        Self(path)
    }
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_output_becomes_a_run() {
        let out = "Running 1s test\ncio-bench summary 2000000 5 0 1 0 2 0\n\
                   cio-bench latency 900 2\ncio-bench latency 1500 3\n";
        let run = parse(out).unwrap();
        assert_eq!((run.count, run.failures), (5, 3));
        assert_eq!(run.elapsed, Duration::from_secs(2));
        assert_eq!(run.latencies.len(), 5);
        assert_eq!(run.latencies[4], Duration::from_micros(1500));
        assert!(parse("no summary").is_none());
    }
}
