#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL and RabbitMQ (started here when needed).
# Each test makes its own database and AMQP namespace and removes them, so tests run in parallel.
# The operator console's tests drive headless Chromium: chromium and chromium-driver are installed
# with apt when missing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. deploy/local/services.sh
ensure_services
ensure_browser
say "building the workspace (binaries included: the end-to-end tests run them)"
cargo build --workspace --all-targets --quiet
say "running the tests"
cargo test --workspace --quiet "$@"
