#!/usr/bin/env bash
# Make sure RabbitMQ (SPINE_AMQP_URL) and PostgreSQL (SPINE_PG_URL) answer; start them if we can.
#
# Order of attempts for a server that does not answer:
#   1. a Docker engine answers      -> docker compose up -d rabbitmq postgres
#   2. the URL points at this host, the server is installed here and we are root
#                                   -> start the local server (rabbitmq-server / pg_ctlcluster)
#   3. otherwise                    -> exit 1, naming the URL that was tried and how to give another
# A server that answers but refuses our login is not restarted: that is a configuration problem.
#
# A RabbitMQ that answers logins must also complete a quorum-queue round trip (`spine broker
# check`): our 3.10 node has been seen accepting logins while every quorum-queue declare hung.
# A local node that fails it is restarted; if it still fails and SPINE_RESET_WEDGED_BROKER=1
# (.ci/run sets it: its broker holds nothing but test objects) its data directory is moved
# aside (kept, never deleted) and it starts empty.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The same precedence as the services: environment first, then .env.
from_dotenv() {
  [[ -f .env ]] || return 0
  sed -n -E "s/^[[:space:]]*(export[[:space:]]+)?$1=['\"]?([^'\"]*)['\"]?[[:space:]]*$/\2/p" .env | tail -n1
}
AMQP_URL="${SPINE_AMQP_URL:-$(from_dotenv SPINE_AMQP_URL)}"
AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}"
PG_URL="${SPINE_PG_URL:-$(from_dotenv SPINE_PG_URL)}"
PG_URL="${PG_URL:-postgresql://postgres@127.0.0.1:5432}"
WAIT_S="${SPINE_SERVER_WAIT_S:-60}"

PY=python3
[[ -x .venv/bin/python ]] && PY=.venv/bin/python

redact() { sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#' <<<"$1"; }

# Prints "ok", "down: <why>" or "refused: <why>" for one server.
probe() {
  "$PY" - "$1" "$2" <<'PYEOF'
import asyncio, socket, sys
from urllib.parse import urlsplit

kind, url = sys.argv[1], sys.argv[2]
parts = urlsplit(url)
host = parts.hostname or "127.0.0.1"
port = parts.port or (5672 if kind == "amqp" else 5432)

def down(why):
    print(f"down: {why}")
    sys.exit(0)

try:  # first the port: quick, and enough to tell "not running" from "misconfigured"
    socket.create_connection((host, port), timeout=3).close()
except OSError as exc:
    down(f"{host}:{port}: {exc.strerror or exc}")

async def login():
    if kind == "amqp":
        import aio_pika
        conn = await aio_pika.connect(url, timeout=5)
        await conn.close()
    else:
        import asyncpg
        conn = await asyncpg.connect(f"{url.rstrip('/')}/postgres", timeout=5)
        await conn.close()

try:
    asyncio.run(login())
except ImportError:
    pass  # no .venv yet: an open port is the best we can check
except Exception as exc:
    text = f"{exc.__class__.__name__}: {exc}"
    # A server still starting up accepts TCP but not yet logins: keep waiting for it.
    starting = ("starting up", "CannotConnectNow", "ConnectionReset", "IncompatibleProtocol",
                "ConnectionClosed", "Timeout", "Connection refused")
    if any(s in text for s in starting):
        down(text)
    print(f"refused: {text}")
    sys.exit(0)
print("ok")
PYEOF
}

is_local() {
  local host
  host="$("$PY" -c 'import sys; from urllib.parse import urlsplit; print(urlsplit(sys.argv[1]).hostname or "")' "$1")"
  [[ "$host" == "127.0.0.1" || "$host" == "localhost" || "$host" == "::1" || -z "$host" ]]
}

# Does the AMQP URL name the local node's port (5672 unless the URL says otherwise)?
is_local_port() {
  "$PY" -c 'import sys; from urllib.parse import urlsplit; sys.exit(0 if (urlsplit(sys.argv[1]).port or 5672) == 5672 else 1)' "$AMQP_URL"
}

start_server() {  # $1 = amqp|pg, $2 = url
  if docker info >/dev/null 2>&1; then
    local svc=rabbitmq; [[ "$1" == pg ]] && svc=postgres
    echo "starting $svc with docker compose"
    docker compose up -d "$svc"
    echo "(compose's servers need credentials; see the top of docker-compose.yml for the URLs)"
    return 0
  fi
  if ! is_local "$2"; then
    return 1
  fi
  if [[ "$(id -u)" != 0 ]]; then
    echo "not root: cannot start the local server myself" >&2
    return 1
  fi
  # A local server that is already running but does not answer at the URL listens somewhere
  # else: starting it again cannot help, and waiting for it would only waste a minute.
  if [[ "$1" == amqp ]]; then
    command -v rabbitmq-server >/dev/null || return 1
    if rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
      # Running, but no AMQP login completes: a listener elsewhere, or the wedge seen on our
      # 3.10 node (new connections hang in the handshake after a vhost was deleted).
      if [[ "$(rabbitmq-diagnostics -q listeners 2>/dev/null)" != *":5672"* ]] && ! is_local_port; then
        echo "the local RabbitMQ is running, but not at that address" >&2
        return 1
      fi
      echo "the local RabbitMQ runs but completes no AMQP login (wedged): restarting it"
      restart_local_rabbitmq && return 0
      [[ "${SPINE_RESET_WEDGED_BROKER:-0}" == 1 ]] && restart_local_rabbitmq reset && return 0
      return 1
    fi
    echo "starting the local RabbitMQ (rabbitmq-server -detached)"
    rabbitmq-server -detached
  else
    command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]] || return 1
    local version
    version="$(ls /etc/postgresql | sort -V | tail -n1)"
    if pg_ctlcluster "$version" main status >/dev/null 2>&1; then
      echo "the local PostgreSQL $version is running, but not at that address" >&2
      return 1
    fi
    echo "starting the local PostgreSQL $version (pg_ctlcluster $version main start)"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
  fi
}

ensure() {  # $1 = amqp|pg, $2 = url, $3 = env var, $4 = name
  local state
  state="$(probe "$1" "$2")"
  case "$state" in
    ok) echo "$4 answers at $(redact "$2")"; return 0 ;;
    refused:*)
      echo "error: $4 at $(redact "$2") answers but refuses us (${state#refused: })." >&2
      echo "       Fix the credentials in $3 (environment or .env)." >&2
      return 1 ;;
  esac
  echo "$4 does not answer at $(redact "$2") (${state#down: })"
  if ! start_server "$1" "$2"; then
    echo "error: $4 does not answer at $(redact "$2") and I cannot start one here." >&2
    echo "       Start it yourself, or set $3 to a server that runs, e.g." >&2
    if [[ "$1" == amqp ]]; then
      echo "       export $3=amqp://user:password@host:5672/" >&2
    else
      echo "       export $3=postgresql://user:password@host:5432" >&2
    fi
    return 1
  fi
  local deadline=$((SECONDS + WAIT_S))
  while ((SECONDS < deadline)); do
    state="$(probe "$1" "$2")"
    if [[ "$state" == ok ]]; then
      echo "$4 answers at $(redact "$2")"
      return 0
    fi
    [[ "$state" == refused:* ]] && break
    sleep 1
  done
  echo "error: $4 still does not answer at $(redact "$2") after ${WAIT_S}s (${state#*: })." >&2
  echo "       Set $3 to a server that runs." >&2
  return 1
}

# Prints nothing and succeeds when the broker completes a quorum-queue round trip in time.
round_trip() {
  [[ -x .venv/bin/python ]] || return 0  # no .venv yet: the login check is all we can do
  SPINE_AMQP_URL="$AMQP_URL" PYTHONPATH="$PWD" .venv/bin/python -m spine_cli broker check \
    --timeout "${SPINE_BROKER_CHECK_S:-20}" >/dev/null 2>"${1:-/dev/null}"
}

# The local node's pid (private nodes of the tests keep theirs elsewhere).
RABBIT_PID_FILE=/var/lib/rabbitmq/mnesia/rabbit@localhost.pid
rabbit_pid() {
  local pid
  pid="$(cat "$RABBIT_PID_FILE" 2>/dev/null || true)"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
  return 0
}

restart_local_rabbitmq() {
  echo "stopping the local RabbitMQ"
  timeout 60 rabbitmqctl stop >/dev/null 2>&1 || true
  local pid
  pid="$(rabbit_pid)"
  if [[ -n "$pid" ]]; then
    echo "it did not stop within 60 s: killing it (pid $pid)"
    kill -9 "$pid" 2>/dev/null || true
    sleep 2
  fi
  if [[ "${1:-}" == reset ]]; then
    local base=/var/lib/rabbitmq/mnesia aside
    aside="/var/lib/rabbitmq/mnesia.wedged-$(date +%Y%m%d-%H%M%S)"
    [[ -d "$base" ]] && mv "$base" "$aside" && echo "moved its data aside to $aside"
  fi
  echo "starting the local RabbitMQ (rabbitmq-server -detached)"
  rabbitmq-server -detached
  local deadline=$((SECONDS + WAIT_S))
  while ((SECONDS < deadline)); do
    [[ "$(probe amqp "$AMQP_URL")" == ok ]] && return 0
    sleep 1
  done
  return 1
}

ensure_round_trip() {
  local why
  why="$(mktemp)"
  if round_trip "$why"; then
    rm -f "$why"
    echo "RabbitMQ completes a quorum-queue round trip"
    return 0
  fi
  echo "RabbitMQ answers logins but failed a quorum-queue round trip: $(tail -n1 "$why")"
  rm -f "$why"
  if ! is_local "$AMQP_URL" || [[ "$(id -u)" != 0 ]] || ! command -v rabbitmq-server >/dev/null \
      || docker info >/dev/null 2>&1; then
    echo "error: it is not a local node I may restart; restart it yourself." >&2
    return 1
  fi
  restart_local_rabbitmq && round_trip && { echo "RabbitMQ works again after a restart"; return 0; }
  if [[ "${SPINE_RESET_WEDGED_BROKER:-0}" == 1 ]]; then
    restart_local_rabbitmq reset && round_trip \
      && { echo "RabbitMQ works again on an empty data directory"; return 0; }
  fi
  echo "error: RabbitMQ still fails a quorum-queue round trip after a restart." >&2
  echo "       See /var/log/rabbitmq/; SPINE_RESET_WEDGED_BROKER=1 lets this script start it empty." >&2
  return 1
}

rc=0
ensure amqp "$AMQP_URL" SPINE_AMQP_URL RabbitMQ || rc=1
ensure pg "$PG_URL" SPINE_PG_URL PostgreSQL || rc=1
if ((rc == 0)); then
  ensure_round_trip || rc=1
fi
exit $rc
