#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL and RabbitMQ (started here when needed).
# Each test makes its own database and AMQP namespace and removes them, so tests run in parallel.
# The operator console's tests drive headless Chromium: chromium and chromium-driver are installed
# with apt when missing. The `cluster` group (a three-node RabbitMQ cluster started from the
# rabbitmq-server package, installed with apt when missing, and a node killed under load) runs
# after the rest, on its own, when no arguments select tests; with arguments, only those run
# (`./deploy/local/test.sh -- --ignored cluster::` runs the group alone).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. deploy/local/services.sh
ensure_services
ensure_browser
ensure_rabbitmq_package
say "building the workspace (binaries included: the end-to-end tests run them)"
cargo build --workspace --all-targets --quiet
say "running the tests"
cargo test --workspace --quiet "$@"
if [ $# -eq 0 ]; then
  say "running the cluster group (three RabbitMQ nodes, one killed under load)"
  cargo test -p cio-sync-tests --test it --quiet -- --ignored --nocapture cluster::
fi
