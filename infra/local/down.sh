#!/usr/bin/env bash
# make services-down: stop every server up.sh started, by its pid file (never by name), and
# only if that pid still is the program up.sh started. Safe to run twice, or with nothing up.
# Note: S3 (moto) keeps its data in memory, so stopping it loses the buckets' contents.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# What each pid file must point at; a recycled pid belonging to something else is left alone.
declare -A EXPECT=([prefect]="prefect" [mlflow]="mlflow" [s3]="moto_server" [postgres]="postgres")

stop_group() {
  local name=$1 pid i
  pid=$(live_pid "$name") || { rm -f "$PID_DIR/$name.pid"; return 0; }
  if ! tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "${EXPECT[$name]}"; then
    log "$name: pid $pid is no longer $name; leaving it"; rm -f "$PID_DIR/$name.pid"; return 0
  fi
  log "stopping $name (pid $pid)"
  # up.sh started it with setsid: its pid is its process group, workers included
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name ignored SIGTERM for 15 s: SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  # workers left in its group (a uvicorn child that outlived its parent)
  local leftovers
  leftovers=$(ps -e -o pid=,pgid= | awk -v g="$pid" '$2 == g {print $1}')
  for i in $leftovers; do kill -KILL "$i" 2>/dev/null || true; done
  rm -f "$PID_DIR/$name.pid"
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

for service in "${SERVICES[@]}"; do
  if [ "$service" = postgres ]; then stop_postgres; else stop_group "$service"; fi
done
log "stack in $STACK_STATE_DIR stopped"
