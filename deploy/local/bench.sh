#!/usr/bin/env bash
# The benchmark (README "Performance"): release binaries against the machine's PostgreSQL and
# RabbitMQ and the in-process Customer.io simulator. Steps: ingress, unthrottled updates, throttled
# burst, add burst with the password return, large membership snapshot; each can be skipped
# (--skip-ingress, --skip-unthrottled, --skip-throttled, --skip-add-burst, --skip-snapshot).
# Prints the figures, each worker's peak RSS per step, and whether each target is met; exits
# non-zero when one is not. Options: see `target/release/cio-bench --help`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. deploy/local/services.sh
ensure_services
# The ingress step drives the ingress with wrk.
command -v wrk >/dev/null || apt_install wrk || { echo "wrk is needed for the ingress step (or pass --skip-ingress)" >&2; exit 1; }
say "building the release binaries"
cargo build --release --quiet -p ingress -p worker -p cio-sync-tests --bin ingress --bin worker --bin cio-bench
say "running the benchmark"
exec target/release/cio-bench "$@"
