#!/usr/bin/env bash
# Starts the whole cio-sync system on this machine: PostgreSQL and RabbitMQ (started or installed
# when needed), the migrations, the ingress, two workers and the operator console — and, when no
# Customer.io credentials are set, the Customer.io simulator seeded with demo contacts. Ends with a
# curl that works and the console's address and sign-in token.
#
# Configuration is the environment the README's configuration table lists; state lives in .run/.
# Stop everything with deploy/local/stop.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. deploy/local/services.sh

PROFILE=${PROFILE:-release}
RUN="$ROOT/.run"
mkdir -p "$RUN"

ensure_services

say "building cio-sync ($PROFILE)"
if [ "$PROFILE" = release ]; then
  cargo build --release --quiet --bin ingress --bin worker --bin cio-sim
else
  cargo build --quiet --bin ingress --bin worker --bin cio-sim
fi
BIN="$ROOT/target/$PROFILE"

"$ROOT/deploy/local/stop.sh" --quiet || true

export DATABASE_URL=${DATABASE_URL:-postgres://postgres@$PG_HOST:$PG_PORT/cio_sync}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@$AMQP_HOST:$AMQP_PORT/%2f}
export AMQP_NAMESPACE=${AMQP_NAMESPACE:-cio_sync}
export LOG_FORMAT=${LOG_FORMAT:-text}

# The database itself (the migrations need it to exist).
db_name=${DATABASE_URL##*/}
db_name=${db_name%%\?*}
server_url=${DATABASE_URL%/*}
if command -v psql >/dev/null 2>&1; then
  if ! psql "$server_url/postgres" -Atqc "select 1 from pg_database where datname = '$db_name'" | grep -q 1; then
    say "creating database $db_name"
    psql "$server_url/postgres" -qc "create database \"$db_name\"" >/dev/null
  fi
fi
say "applying migrations"
"$BIN/worker" migrate

# An access key for this machine, kept across restarts.
if [ -z "${ACCESS_KEYS:-}" ]; then
  [ -s "$RUN/access_key" ] || head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24 > "$RUN/access_key"
  export ACCESS_KEYS=$(cat "$RUN/access_key")
fi
KEY=${ACCESS_KEYS%%,*}

# The commands queue's length limit is a broker policy (README, "The commands queue's length limit").
MAX_LENGTH=${COMMANDS_QUEUE_MAX_LENGTH:-1000000}
policy=(set_policy --apply-to queues --priority 10 "$AMQP_NAMESPACE-commands-limit"
  "^${AMQP_NAMESPACE//./\\.}\\.commands\$" "{\"max-length\":$MAX_LENGTH}")
say "limiting the commands queue to $MAX_LENGTH messages (RabbitMQ policy)"
if command -v rabbitmqctl >/dev/null 2>&1 && as_root rabbitmqctl -q "${policy[@]}" >/dev/null 2>&1; then :
elif have_docker_engine && docker compose -f "$ROOT/deploy/compose.yaml" exec -T rabbitmq rabbitmqctl -q "${policy[@]}" >/dev/null 2>&1; then :
else
  echo "warning: could not set the policy (no rabbitmqctl here): the commands queue has no length limit" >&2
fi

if [ -z "${CIO_APP_API_KEY:-}" ]; then
  SIM_ADDR=${SIM_ADDR:-127.0.0.1:9099}
  export CIO_APP_API_KEY=sim-app-key CIO_SITE_ID=sim-site CIO_TRACK_API_KEY=sim-track-key
  export CIO_APP_API_URL="http://$SIM_ADDR" CIO_TRACK_API_URL="http://$SIM_ADDR"
  say "no CIO_APP_API_KEY set: starting the Customer.io simulator on $SIM_ADDR with demo contacts"
  nohup "$BIN/cio-sim" --addr "$SIM_ADDR" --seed-demo > "$RUN/cio-sim.log" 2>&1 &
  echo $! > "$RUN/cio-sim.pid"
  wait_port "Customer.io simulator" "${SIM_ADDR%:*}" "${SIM_ADDR##*:}" 30
fi

export INGRESS_ADDR=${INGRESS_ADDR:-127.0.0.1:8080}
export INGRESS_ADMIN_ADDR=${INGRESS_ADMIN_ADDR:-127.0.0.1:9090}
say "starting the ingress on $INGRESS_ADDR (readiness and metrics on $INGRESS_ADMIN_ADDR)"
nohup "$BIN/ingress" > "$RUN/ingress.log" 2>&1 &
echo $! > "$RUN/ingress.pid"

for i in 1 2; do
  say "starting worker $i"
  WORKER_HTTP_ADDR=127.0.0.1:$((9090 + i + 1)) nohup "$BIN/worker" run > "$RUN/worker-$i.log" 2>&1 &
  echo $! > "$RUN/worker-$i.pid"
done

# The operator console, with a token for this machine kept across restarts.
if [ -z "${CONSOLE_TOKENS:-}" ]; then
  [ -s "$RUN/console_token" ] || head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32 > "$RUN/console_token"
  CONSOLE_TOKEN=$(cat "$RUN/console_token")
  export CONSOLE_TOKENS="operator:$CONSOLE_TOKEN"
else
  CONSOLE_TOKEN="(one of your CONSOLE_TOKENS)"
fi
export CONSOLE_ADDR=${CONSOLE_ADDR:-127.0.0.1:8088}
say "starting the operator console on $CONSOLE_ADDR"
nohup "$BIN/worker" console > "$RUN/console.log" 2>&1 &
echo $! > "$RUN/console.pid"
CONSOLE_URL="http://$CONSOLE_ADDR"

URL="http://$INGRESS_ADDR"
for _ in $(seq 60); do
  if curl -fsS "http://$INGRESS_ADMIN_ADDR/readyz" >/dev/null 2>&1; then break; fi
  sleep 1
done
curl -fsS "http://$INGRESS_ADMIN_ADDR/readyz" >/dev/null || { echo "the ingress did not become ready; see $RUN/ingress.log" >&2; exit 1; }
for i in 1 2; do
  for _ in $(seq 60); do
    curl -fsS "http://127.0.0.1:$((9090 + i + 1))/readyz" >/dev/null 2>&1 && break
    sleep 1
  done
  curl -fsS "http://127.0.0.1:$((9090 + i + 1))/readyz" >/dev/null || { echo "worker $i did not become ready; see $RUN/worker-$i.log" >&2; exit 1; }
done
curl -fsS "$URL/?wpf_action=test&access_key=$KEY" | grep -q '"success":true' || { echo "the test webhook failed" >&2; exit 1; }
for _ in $(seq 60); do
  curl -fsS "$CONSOLE_URL/healthz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS "$CONSOLE_URL/healthz" >/dev/null || { echo "the console did not start; see $RUN/console.log" >&2; exit 1; }

cat <<MSG

cio-sync is running: ingress $URL (metrics, readiness: http://$INGRESS_ADMIN_ADDR), workers on
127.0.0.1:9092 and :9093 (metrics, health).
Logs: $RUN/*.log — stop with deploy/local/stop.sh

Create a user from the demo contact jane@example.com, as a Customer.io journey would:

  curl -X POST '$URL/?wpf_action=add&access_key=$KEY&send_notification=true' \\
       -H 'Content-Type: application/json' -d '{"email": "jane@example.com"}'

Then see what happened (use the event_id from the answer):

  DATABASE_URL=$DATABASE_URL $BIN/worker events show <event_id>

or in the operator console: $CONSOLE_URL/ — sign in with the token $CONSOLE_TOKEN
MSG
