#!/usr/bin/env bash
# The dependency policy (deny.toml): banned crates (one rustls provider, one certificate store),
# duplicate versions, licences and sources, checked with cargo-deny, which is installed from
# crates.io when missing. RustSec's advisory database is fetched from GitHub: where it cannot be
# fetched, the advisories check is reported as skipped, never as passed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $DENY_VERSION"; then
  echo "== installing cargo-deny $DENY_VERSION (crates.io)"
  cargo install --locked --quiet cargo-deny --version "$DENY_VERSION"
fi
echo "== cargo deny check bans licenses sources"
cargo deny check bans licenses sources
echo "== cargo deny check advisories"
if timeout 120 cargo deny fetch db >/dev/null 2>&1; then
  cargo deny check advisories
else
  echo "SKIP advisories: RustSec's database (github.com/RustSec/advisory-db) cannot be fetched from this machine"
fi
