#!/usr/bin/env bash
# make services-up: the project's real service stack on 127.0.0.1, no Docker needed.
#   PostgreSQL   MLflow's and Prefect's backend store (own cluster under the state dir)
#   S3 (moto)    the DVC remote, MLflow's artifacts, Ray Train's storage_path
#   MLflow       tracking server, artifacts proxied to s3://mlflow-artifacts
#   Prefect      API + UI, its database in the same PostgreSQL cluster
# Idempotent: a service already running (by its pid file) is left alone, buckets and roles that
# exist are kept, credentials already in the env file are reused. Settings: infra/local/lib.sh.
# Prints no secret: they go to the env file only (mode 600), and reach the servers through
# their environment, never their command line.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

mkdir -p "$PID_DIR" "$LOG_DIR" "$STACK_VENV_DIR"
[ -x "$MAIN_BIN/python" ] || die "no $REPO/.venv: run 'make setup' first (make services-up does)"

# ---------------------------------------------------------------------------- credentials
# Reuse what an earlier run wrote, so a second up.sh (or a restart of one server) keeps the
# passwords the running servers and the Postgres roles already have.
declare -A OLD=()
if [ -f "$STACK_ENV_FILE" ]; then
  while IFS='=' read -r key value; do
    [[ $key =~ ^[A-Z_][A-Z0-9_]*$ ]] && OLD[$key]=$value
  done < "$STACK_ENV_FILE"
fi
random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
# moto accepts any key pair, so a fresh random one per stack: nothing secret is committed.
S3_KEY=${OLD[AWS_ACCESS_KEY_ID]:-stack$(random_hex 8)}
S3_SECRET=${OLD[AWS_SECRET_ACCESS_KEY]:-$(random_hex 20)}
MLFLOW_DB_PASSWORD=${OLD[STACK_MLFLOW_DB_PASSWORD]:-$(random_hex 16)}
PREFECT_DB_PASSWORD=${OLD[STACK_PREFECT_DB_PASSWORD]:-$(random_hex 16)}
REGION=${OLD[AWS_DEFAULT_REGION]:-us-east-1}

S3_URL=http://$STACK_HOST:$STACK_S3_PORT
MLFLOW_URL=http://$STACK_HOST:$STACK_MLFLOW_PORT
PREFECT_URL=http://$STACK_HOST:$STACK_PREFECT_PORT/api
MLFLOW_DB_URI=postgresql+psycopg2://mlflow:$MLFLOW_DB_PASSWORD@$STACK_HOST:$STACK_PG_PORT/mlflow
PREFECT_DB_URI=postgresql+asyncpg://prefect:$PREFECT_DB_PASSWORD@$STACK_HOST:$STACK_PG_PORT/prefect

# Written before any server starts, so that an interrupted run leaves the passwords it set.
write_env() {
  local tmp
  tmp=$(mktemp "$STACK_ENV_FILE.XXXXXX")
  chmod 600 "$tmp"
  cat > "$tmp" <<EOF
# Written by infra/local/up.sh for the stack in $STACK_STATE_DIR: local secrets, never commit.
# Use: set -a; source $STACK_ENV_FILE; set +a
MLFLOW_TRACKING_URI=$MLFLOW_URL
PREFECT_API_URL=$PREFECT_URL
AWS_ACCESS_KEY_ID=$S3_KEY
AWS_SECRET_ACCESS_KEY=$S3_SECRET
AWS_DEFAULT_REGION=$REGION
AWS_ENDPOINT_URL=$S3_URL
MLFLOW_S3_ENDPOINT_URL=$S3_URL
MLFLOW_BACKEND_STORE_URI=$MLFLOW_DB_URI
PREFECT_SERVER_DATABASE_CONNECTION_URL=$PREFECT_DB_URI
STACK_MLFLOW_DB_PASSWORD=$MLFLOW_DB_PASSWORD
STACK_PREFECT_DB_PASSWORD=$PREFECT_DB_PASSWORD
STACK_STATE_DIR=$STACK_STATE_DIR
STACK_DVC_REMOTE_URL=s3://dvc-remote
STACK_RAY_STORAGE_PATH=s3://ray-results
EOF
  mv "$tmp" "$STACK_ENV_FILE"
}
write_env
if [ "${STACK_ENV_ONLY:-}" = 1 ]; then
  # for infra/compose.yaml on a Docker machine: the same credentials, no local servers
  log "wrote $STACK_ENV_FILE (STACK_ENV_ONLY=1: nothing started)"
  exit 0
fi
START=$SECONDS

# ---------------------------------------------------------------------------- helpers
port_busy() { (exec 3<>"/dev/tcp/$STACK_HOST/$1") 2>/dev/null; }

# Start a long-running server in its own session (setsid): its pid is its process group, so
# down.sh can stop it together with the workers it forks (uvicorn, MLflow's job runner).
start_bg() {
  local name=$1 port=$2 pid; shift 2
  if pid=$(live_pid "$name"); then
    log "$name already running (pid $pid)"; return 0
  fi
  port_busy "$port" && die "$name: port $port on $STACK_HOST is taken by another program" \
    "(set STACK_$(tr '[:lower:]' '[:upper:]' <<<"${name/s3/S3}")_PORT to a free one)"
  log "starting $name on port $port (log: $LOG_DIR/$name.log)"
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$PID_DIR/$name.pid"
}

# Poll a URL until it answers 2xx; fail naming the service and its log if it dies or times out.
wait_http() {
  local name=$1 url=$2 deadline=$((SECONDS + STACK_TIMEOUT))
  until curl -fsS -o /dev/null --max-time 5 "$url" 2>/dev/null; do
    if ! live_pid "$name" >/dev/null; then
      tail -n 20 "$LOG_DIR/$name.log" >&2 || true
      die "$name exited during start-up; see $LOG_DIR/$name.log"
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -n 20 "$LOG_DIR/$name.log" >&2 || true
      die "$name did not answer $url within ${STACK_TIMEOUT}s; see $LOG_DIR/$name.log"
    fi
    sleep 1
  done
  log "$name healthy ($url), $((SECONDS - START)) s after start-up began"
}

# A venv per server, from the pinned requirements-<name>.txt; reinstalled only when the pins or
# the install options change (a stamp holds their hash). uv with a warm cache takes seconds.
# No --compile-bytecode: it compiles every module of the MLflow venv (pandas, scipy, pyarrow...)
# and made the first install ~60 s on 2 cores. The servers are started with bytecode writing
# on instead (env -u PYTHONDONTWRITEBYTECODE, which CI sets), so the first start compiles only
# the modules a server imports and later starts reuse them.
UV_INSTALL_OPTS=()
ensure_venv() {
  local name=$1 venv=$STACK_VENV_DIR/$1 req=$HERE/requirements-$1.txt want links
  want=$( { cat "$req"; echo "${UV_INSTALL_OPTS[*]}"; } | sha256sum | cut -d' ' -f1)
  [ "$(cat "$venv/.stack-pins" 2>/dev/null)" = "$want" ] && return 0
  log "installing the $name server venv ($venv)"
  # uv ignores pip's config; pip's find-links folder (if any) holds the wheels this machine has.
  links=${PIP_FIND_LINKS:-$("$MAIN_BIN/python" -m pip config get global.find-links 2>/dev/null || true)}
  "$MAIN_BIN/uv" venv --quiet --allow-existing --python "$MAIN_BIN/python" "$venv"
  "$MAIN_BIN/uv" pip install --quiet --python "$venv/bin/python" ${links:+--find-links "$links"} \
    ${UV_INSTALL_OPTS[@]+"${UV_INSTALL_OPTS[@]}"} -r "$req" || die "installing $req into $venv failed"
  echo "$want" > "$venv/.stack-pins"
}

# ---------------------------------------------------------------------------- PostgreSQL
start_postgres() {
  local bin data=$PG_DIR/data
  bin=$(pg_bin) || {
    log "PostgreSQL not found: installing it from Debian (apt-get install postgresql)"
    local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y -q postgresql >/dev/null || { $sudo apt-get update -q >/dev/null &&
      $sudo apt-get install -y -q postgresql >/dev/null; } || die "apt-get install postgresql failed"
    bin=$(pg_bin) || die "postgresql installed but no initdb found"
  }
  mkdir -p "$PG_DIR/run"
  touch "$LOG_DIR/postgres.log"
  [ "$(id -u)" = 0 ] && chown -R postgres: "$PG_DIR" "$LOG_DIR/postgres.log"
  as_pg test -w "$PG_DIR" || die "the postgres user cannot write $PG_DIR: a parent directory" \
    "is not traversable by it (chmod o+x it, or set STACK_STATE_DIR elsewhere)"

  if [ ! -f "$data/PG_VERSION" ]; then
    log "initdb: a new cluster in $data"
    # Only the socket in our private run dir is trusted (administration by this script);
    # TCP on 127.0.0.1 needs the roles' passwords. The superuser's random one is thrown away.
    local pw=$PG_DIR/.pw
    (umask 077; random_hex 16 > "$pw")
    [ "$(id -u)" = 0 ] && chown postgres: "$pw"
    as_pg "$bin/initdb" -D "$data" -U postgres --pwfile="$pw" --auth-local=trust \
      --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >>"$LOG_DIR/postgres.log" 2>&1 ||
      { rm -f "$pw"; die "initdb failed; see $LOG_DIR/postgres.log"; }
    rm -f "$pw"
  fi

  if as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "postgres already running"
  else
    port_busy "$STACK_PG_PORT" && die "postgres: port $STACK_PG_PORT on $STACK_HOST is taken" \
      "by another program (set STACK_PG_PORT to a free one)"
    log "starting postgres on port $STACK_PG_PORT (log: $LOG_DIR/postgres.log)"
    as_pg "$bin/pg_ctl" -D "$data" -l "$LOG_DIR/postgres.log" -w -t "$STACK_TIMEOUT" \
      -o "-p $STACK_PG_PORT -k $PG_DIR/run -c listen_addresses=$STACK_HOST" start >/dev/null ||
      die "postgres did not start; see $LOG_DIR/postgres.log"
  fi
  head -n 1 "$data/postmaster.pid" > "$PID_DIR/postgres.pid"
  log "postgres healthy (pid $(cat "$PID_DIR/postgres.pid"))"

  # One role and database per server; the password is (re)set on every run, from stdin so it
  # shows in no process list.
  local role pass
  for role in mlflow prefect; do
    [ $role = mlflow ] && pass=$MLFLOW_DB_PASSWORD || pass=$PREFECT_DB_PASSWORD
    psql -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR/run" -p "$STACK_PG_PORT" -U postgres -d postgres \
      >/dev/null <<SQL || die "creating the $role role/database failed; see $LOG_DIR/postgres.log"
SELECT format('CREATE ROLE %I LOGIN', '$role') WHERE NOT EXISTS
  (SELECT 1 FROM pg_roles WHERE rolname = '$role') \gexec
ALTER ROLE $role WITH LOGIN PASSWORD '$pass';
SELECT format('CREATE DATABASE %I OWNER %I', '$role', '$role') WHERE NOT EXISTS
  (SELECT 1 FROM pg_database WHERE datname = '$role') \gexec
SQL
  done
}

# ---------------------------------------------------------------------------- start
start_postgres

ensure_venv moto
ensure_venv mlflow

S3_ENV=(AWS_ACCESS_KEY_ID="$S3_KEY" AWS_SECRET_ACCESS_KEY="$S3_SECRET" AWS_DEFAULT_REGION="$REGION")
start_bg s3 "$STACK_S3_PORT" env -u PYTHONDONTWRITEBYTECODE \
  "$STACK_VENV_DIR/moto/bin/moto_server" -H "$STACK_HOST" -p "$STACK_S3_PORT"

# MLflow reads the backend URI (with its password) from MLFLOW_BACKEND_STORE_URI; the S3 keys
# only the server needs: clients upload through its mlflow-artifacts proxy.
# Its job runner (GenAI jobs, 7 huey worker processes) is off unless STACK_MLFLOW_JOBS=true:
# the project has no such jobs, and on 2 cores it doubled the server's start-up time.
start_bg mlflow "$STACK_MLFLOW_PORT" env -u PYTHONDONTWRITEBYTECODE "${S3_ENV[@]}" MLFLOW_S3_ENDPOINT_URL="$S3_URL" \
  MLFLOW_BACKEND_STORE_URI="$MLFLOW_DB_URI" \
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${STACK_MLFLOW_JOBS:-false}" \
  "$STACK_VENV_DIR/mlflow/bin/mlflow" server --host "$STACK_HOST" --port "$STACK_MLFLOW_PORT" \
  --artifacts-destination s3://mlflow-artifacts --workers "$STACK_MLFLOW_WORKERS"

start_bg prefect "$STACK_PREFECT_PORT" env PREFECT_HOME="$STACK_STATE_DIR/prefect" \
  PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_DATABASE_CONNECTION_URL="$PREFECT_DB_URI" \
  "$MAIN_BIN/prefect" server start --host "$STACK_HOST" --port "$STACK_PREFECT_PORT"

wait_http s3 "$S3_URL/moto-api/"
# create_bucket is idempotent for the owner in us-east-1, but head first keeps it explicit.
env "${S3_ENV[@]}" "$STACK_VENV_DIR/moto/bin/python" - "$S3_URL" "${BUCKETS[@]}" <<'PY' ||
import sys
import boto3
from botocore.exceptions import ClientError
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
for bucket in sys.argv[2:]:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)
PY
  die "creating the buckets failed; see $LOG_DIR/s3.log"
log "buckets: ${BUCKETS[*]}"

wait_http mlflow "$MLFLOW_URL/health"
wait_http prefect "$PREFECT_URL/health"

if [ -n "$STACK_DVC_REPO" ]; then
  bash "$HERE/dvc-remote.sh" "$STACK_DVC_REPO"
fi

# ---------------------------------------------------------------------------- summary
cat <<EOF

Local service stack is up (state: $STACK_STATE_DIR)
  postgres  postgresql://$STACK_HOST:$STACK_PG_PORT (dbs mlflow, prefect)  log: $LOG_DIR/postgres.log
  s3 (moto) $S3_URL  buckets: ${BUCKETS[*]}  log: $LOG_DIR/s3.log
  mlflow    $MLFLOW_URL  artifacts: s3://mlflow-artifacts  log: $LOG_DIR/mlflow.log
  prefect   $PREFECT_URL (UI http://$STACK_HOST:$STACK_PREFECT_PORT)  log: $LOG_DIR/prefect.log
Credentials and URLs: $STACK_ENV_FILE  (set -a; source $STACK_ENV_FILE; set +a)
S3 (moto) keeps data in memory only: a restart loses it
EOF
