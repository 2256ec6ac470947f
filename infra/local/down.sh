#!/usr/bin/env bash
# make services-down: stop every server up.sh started, by its pid file (never by name), and
# only if that pid still is the program up.sh started. Safe to run twice, or with nothing up.
# Note: S3 (moto) keeps its data in memory, so stopping it loses the buckets' contents.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# What each pid file must point at; a recycled pid belonging to something else is left alone.
declare -A EXPECT=([prefect]="prefect" [mlflow]="mlflow" [s3]="moto_server" [postgres]="postgres")

# SIGTERM to a server's whole process group (up.sh started it with setsid, so its pid is its
# group: uvicorn workers and other children go with it). Prints the pid if one was signalled.
signal_group() {
  local name=$1 pid
  pid=$(live_pid "$name") || { rm -f "$PID_DIR/$name.pid"; return 0; }
  if ! tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "${EXPECT[$name]}"; then
    log "$name: pid $pid is no longer $name; leaving it"; rm -f "$PID_DIR/$name.pid"; return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  echo "$pid"
}

# Wait up to 15 s for a signalled server to exit, then SIGKILL it and what is left of its group.
reap_group() {
  local name=$1 pid=$2 i leftovers
  for i in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name ignored SIGTERM for 15 s: SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  # workers that outlived their parent (still in its process group)
  leftovers=$(ps -e -o pid=,pgid= | awk -v g="$pid" '$2 == g {print $1}')
  for i in $leftovers; do kill -KILL "$i" 2>/dev/null || true; done
  rm -f "$PID_DIR/$name.pid"
}

stop_group() {
  local pid
  pid=$(signal_group "$1")
  [ -z "$pid" ] || reap_group "$1" "$pid"
}

stop_postgres() {
  local data=$PG_DIR/data bin pid i
  if [ -f "$data/postmaster.pid" ] && bin=$(pg_bin); then
    log "stopping postgres"
    as_pg "$bin/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
  fi
  # pg_ctl returns once postmaster.pid is gone; the process itself exits a moment later
  if pid=$(live_pid postgres); then
    for i in $(seq 1 20); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
  fi
  stop_group postgres   # only acts if pg_ctl could not stop it
}

# The three Python servers are signalled together and then waited for (a few seconds each to
# shut down on 2 cores); Postgres last, since MLflow and Prefect hold connections to it.
declare -A SIGNALLED=()
for service in "${SERVICES[@]}"; do
  [ "$service" = postgres ] && continue
  pid=$(signal_group "$service")
  [ -z "$pid" ] || SIGNALLED[$service]=$pid
done
for service in "${!SIGNALLED[@]}"; do
  reap_group "$service" "${SIGNALLED[$service]}"
done
stop_postgres
log "stack in $STACK_STATE_DIR stopped"
