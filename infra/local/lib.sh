# shellcheck shell=bash disable=SC2034  # sourced: the variables are used by the scripts
# Shared by up.sh, down.sh and dvc-remote.sh (sourced, not run): where the local stack keeps
# its state and which ports it listens on. Every value can be overridden from the environment,
# so a test can run a second, isolated stack beside a developer's (other state dir, other ports).

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

# Runtime state (pid files, logs, the Postgres cluster, Prefect's home): one directory per stack.
STACK_STATE_DIR=$(mkdir -p "${STACK_STATE_DIR:-$HERE/state}" && cd "${STACK_STATE_DIR:-$HERE/state}" && pwd)
# The server venvs hold no state, only pinned packages: shared by every stack on this checkout.
STACK_VENV_DIR=${STACK_VENV_DIR:-$HERE/venvs}
# Where the credentials and URLs are written (KEY=VALUE, mode 600, gitignored).
STACK_ENV_FILE=${STACK_ENV_FILE:-$HERE/.env}
# The git+DVC repo whose .dvc/config.local gets the `s3` remote; empty: configure none.
STACK_DVC_REPO=${STACK_DVC_REPO-$REPO}

STACK_HOST=127.0.0.1          # loopback only: nothing of this stack is reachable from outside
STACK_PG_PORT=${STACK_PG_PORT:-5432}
STACK_MLFLOW_PORT=${STACK_MLFLOW_PORT:-5000}
STACK_S3_PORT=${STACK_S3_PORT:-9000}
STACK_PREFECT_PORT=${STACK_PREFECT_PORT:-4200}
# Seconds each service may take to answer its health check (MLflow and Prefect need ~15 s each
# on an idle 2-core machine; both start at once, and a busy machine triples that).
STACK_TIMEOUT=${STACK_TIMEOUT:-240}
STACK_MLFLOW_WORKERS=${STACK_MLFLOW_WORKERS:-1}

BUCKETS=(dvc-remote mlflow-artifacts ray-results)
SERVICES=(prefect mlflow s3 postgres)   # the order down.sh stops them in

MAIN_BIN=$REPO/.venv/bin
PID_DIR=$STACK_STATE_DIR/pids
LOG_DIR=$STACK_STATE_DIR/logs
PG_DIR=$STACK_STATE_DIR/postgres

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

# The pid in a pid file if that process is still alive, else nothing.
live_pid() {
  local file=$PID_DIR/$1.pid pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# PostgreSQL refuses to run as root: as root, its commands run as the `postgres` OS user.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
  local d
  for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null && { dirname "$(readlink -f "$(command -v initdb)")"; return 0; }
  return 1
}
