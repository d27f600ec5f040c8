//! `cio-bench`: the throughput and memory benchmark (see `testkit::bench`). Run it with
//! `deploy/local/bench.sh`, which builds the release binaries and makes sure the services run.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    about = "cio-sync benchmark: ingress vs broker ceiling, worker syncs/s, burst drain at 10 req/s, add burst, large membership snapshot, peak RSS per step"
)]
struct Args {
    /// Seconds of webhook load (from wrk) in the ingress step, split over four rounds that
    /// alternate with the broker's ceiling.
    #[arg(long, default_value_t = 12)]
    ingress_seconds: u64,
    /// Concurrent connections of the ingress step (each level also sets the in-flight publishes
    /// of its broker ceiling); a comma-separated list measures each level in turn.
    #[arg(long, value_delimiter = ',', default_values_t = [16, 64])]
    ingress_connections: Vec<usize>,
    /// Concurrent publishes or HTTP connections of the worker steps' load.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Distinct contacts in the worker runs.
    #[arg(long, default_value_t = 10_000)]
    contacts: usize,
    /// Segments the contacts are spread over.
    #[arg(long, default_value_t = 20)]
    segments: i64,
    /// `add` commands for new contacts in the add burst (password return on).
    #[arg(long, default_value_t = 2_000)]
    adds: usize,
    /// Segment memberships in the workspace of the snapshot step (two per person).
    #[arg(long, default_value_t = 500_000)]
    snapshot_members: usize,
    /// `update` commands in the backlog that makes the snapshot step take a snapshot.
    #[arg(long, default_value_t = 2_000)]
    snapshot_updates: usize,
    #[arg(long)]
    skip_ingress: bool,
    #[arg(long)]
    skip_unthrottled: bool,
    #[arg(long)]
    skip_throttled: bool,
    #[arg(long)]
    skip_add_burst: bool,
    #[arg(long)]
    skip_snapshot: bool,
}

fn main() {
    let a = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(testkit::bench::run(testkit::bench::Options {
        ingress_seconds: a.ingress_seconds,
        ingress_connections: a.ingress_connections,
        connections: a.connections,
        contacts: a.contacts,
        segments: a.segments,
        adds: a.adds,
        snapshot_members: a.snapshot_members,
        snapshot_updates: a.snapshot_updates,
        skip_ingress: a.skip_ingress,
        skip_unthrottled: a.skip_unthrottled,
        skip_throttled: a.skip_throttled,
        skip_add_burst: a.skip_add_burst,
        skip_snapshot: a.skip_snapshot,
    }));
    std::process::exit(if report.all_met() { 0 } else { 1 });
}
