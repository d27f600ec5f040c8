#!/usr/bin/env bash
# Stops what deploy/local/start.sh started (SIGTERM: the services drain and exit).
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUN="$ROOT/.run"
quiet=${1:-}
for f in "$RUN"/*.pid; do
  [ -e "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    [ "$quiet" = --quiet ] || echo "stopping $(basename "$f" .pid) ($pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -f "$f"
done
