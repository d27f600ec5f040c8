#!/usr/bin/env bash
# Sourced by start.sh and test.sh: makes sure PostgreSQL and RabbitMQ answer at the configured
# addresses, starting them when they are not running — from the machine's packages (installing
# them with apt where it can), or with docker compose where a Docker engine runs.

PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
AMQP_HOST=${AMQP_HOST:-127.0.0.1}
AMQP_PORT=${AMQP_PORT:-5672}

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {
  local what=$1 host=$2 port=$3 tries=${4:-60}
  for _ in $(seq "$tries"); do
    port_open "$host" "$port" && return 0
    sleep 1
  done
  echo "error: $what did not come up on $host:$port" >&2
  return 1
}

have_docker_engine() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  say "installing $* with apt"
  as_root apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  port_open "$PG_HOST" "$PG_PORT" && return 0
  say "PostgreSQL is not answering on $PG_HOST:$PG_PORT; starting it"
  if ! command -v pg_ctlcluster >/dev/null 2>&1 && ! have_docker_engine; then
    apt_install postgresql || true
  fi
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    local ver
    ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
    if [ -n "$ver" ]; then
      # Local development: trust connections from this machine, as the README's URLs assume.
      local hba="/etc/postgresql/$ver/main/pg_hba.conf"
      if [ -w "$hba" ] && ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
        sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
      fi
      as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || as_root pg_ctlcluster "$ver" main start || true
    fi
  elif have_docker_engine; then
    docker compose -f "$ROOT/deploy/compose.yaml" up -d postgres
  fi
  wait_port PostgreSQL "$PG_HOST" "$PG_PORT"
}

ensure_rabbitmq() {
  port_open "$AMQP_HOST" "$AMQP_PORT" && return 0
  say "RabbitMQ is not answering on $AMQP_HOST:$AMQP_PORT; starting it"
  if ! command -v rabbitmq-server >/dev/null 2>&1 && ! have_docker_engine; then
    apt_install rabbitmq-server || true
  fi
  if command -v rabbitmq-server >/dev/null 2>&1; then
    as_root rabbitmq-server -detached || true
  elif have_docker_engine; then
    docker compose -f "$ROOT/deploy/compose.yaml" up -d rabbitmq
  fi
  wait_port RabbitMQ "$AMQP_HOST" "$AMQP_PORT" 90
}

# The cluster tests start their own RabbitMQ nodes from the rabbitmq-server package's scripts
# (a broker running in Docker does not provide them).
ensure_rabbitmq_package() {
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && return 0
  say "the rabbitmq-server package is missing (the cluster tests start nodes from it)"
  apt_install rabbitmq-server || {
    echo "error: install the rabbitmq-server Debian package to run the cluster tests" >&2
    return 1
  }
}

# The operator console's browser tests drive headless Chromium through chromedriver (Debian's
# chromium and chromium-driver packages).
ensure_browser() {
  if command -v chromedriver >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
    return 0
  fi
  say "chromium or chromedriver is missing (the console's browser tests need both)"
  apt_install chromium chromium-driver || {
    echo "error: install chromium and chromium-driver (Debian packages) to run the console's browser tests" >&2
    return 1
  }
}

ensure_services() {
  ensure_postgres
  ensure_rabbitmq
}
