#!/usr/bin/env bash
# A local Ray head with the job server, for developing jobs before a cloud run.
#
#   cluster/local.sh start [--num-cpus N]   # prints the RAY_ADDRESS to export
#   export RAY_ADDRESS=http://127.0.0.1:8265 RAY_AUTH_MODE=token
#   ray job submit --working-dir . -- python jobs/transfer.py ...
#   cluster/local.sh status
#   cluster/local.sh stop
#
# Why not plain `ray start` / `ray stop`: `ray stop` kills every Ray process
# of the user on the machine, including other people's test clusters. Here
# Ray runs in a session of its own (setsid), with its own --temp-dir, and
# `stop` signals exactly the processes of that session, by id.
#
# The dashboard, and with it the job server (which runs whatever it is sent),
# listens on 127.0.0.1 only and requires Ray's auth token (RAY_AUTH_MODE=token,
# token in ~/.ray/auth_token, created if missing): any local user could
# otherwise run code as you. Ray 2.60 turns this on by itself whenever that
# file exists; here it is explicit. Clients (`ray job submit`) need
# RAY_AUTH_MODE=token too: `start` prints it.
#
# Environment: RAY_DASHBOARD_PORT (8265), RAY_GCS_PORT (6379),
# RAY_DASHBOARD_AGENT_PORT and RAY_CLIENT_PORT (default: free ports),
# IMGREC_RAY_STATE (state folder: pid, log, Ray temp dir). For a local S3
# endpoint start infra/local/s3.sh first and export its variables before
# `start`: Ray workers inherit this script's environment.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
GCS_PORT="${RAY_GCS_PORT:-6379}"
STATE="${IMGREC_RAY_STATE:-/tmp/imgrec-ray-local-$(id -u)}"
PIDFILE="$STATE/ray.pid"
LOG="$STATE/ray-start.log"
ADDRESS="http://127.0.0.1:${DASHBOARD_PORT}"

# The project's venv first: its `ray`, and the `python` that job entrypoints
# (`python jobs/...`) and Ray workers run with.
if [[ -x "$REPO/.venv/bin/ray" ]]; then
    export PATH="$REPO/.venv/bin:$PATH"
fi
RAY="$(command -v ray || true)"
PY="$(command -v python || command -v python3)"

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

# Ids of every process in our Ray session (the session id is the pid of the
# `ray start --block` process that setsid made its leader).
session_pids() {
    local sid="$1"
    ps -e -o pid=,sid= | awk -v sid="$sid" '$2 == sid { print $1 }'
}

running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && [[ -n "$(session_pids "$pid")" ]] || return 1
    echo "$pid"
}

dashboard_up() {
    "$PY" - "$ADDRESS" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
# /api/gcs_healthz answers without a token; it is up once GCS and the dashboard are.
urllib.request.urlopen(sys.argv[1] + "/api/gcs_healthz", timeout=2).read()
EOF
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_busy() {
    "$PY" - "$1" <<'EOF' >/dev/null 2>&1
import socket, sys
with socket.socket() as s:
    s.settimeout(1)
    sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
EOF
}

print_env() {
    echo "export RAY_ADDRESS=$ADDRESS"
    echo "export RAY_AUTH_MODE=$(cat "$STATE/auth-mode" 2>/dev/null || echo token)"
}

cmd_start() {
    local num_cpus
    num_cpus="$(nproc 2>/dev/null || echo 2)"
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --num-cpus) num_cpus="$2"; shift 2 ;;
            --num-cpus=*) num_cpus="${1#*=}"; shift ;;
            *) echo "unknown option: $1" >&2; usage ;;
        esac
    done
    if [[ -z "$RAY" ]]; then
        echo "error: no ray executable: run 'make install' (creates .venv) or pip install 'ray[default]'" >&2
        exit 1
    fi
    if pid="$(running_pid)"; then
        echo "already running (pid $pid)"
        print_env
        return 0
    fi
    for port in "$DASHBOARD_PORT" "$GCS_PORT"; do
        if port_busy "$port"; then
            echo "error: port $port on 127.0.0.1 is in use (another Ray?); set RAY_DASHBOARD_PORT / RAY_GCS_PORT" >&2
            exit 1
        fi
    done
    # The dashboard agent (which runs submitted jobs) and the Ray Client
    # server have fixed default ports (52365, 10001) that another local Ray,
    # e.g. a test session's ray.init(), may already hold: take free ones.
    local agent_port client_port
    agent_port="${RAY_DASHBOARD_AGENT_PORT:-$(free_port)}"
    client_port="${RAY_CLIENT_PORT:-$(free_port)}"
    # Token auth unless the caller chose otherwise (RAY_AUTH_MODE=disabled).
    export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
    if [[ "$RAY_AUTH_MODE" == token ]]; then
        "$RAY" get-auth-token --generate >/dev/null 2>&1
    fi
    mkdir -p "$STATE"
    echo "$RAY_AUTH_MODE" >"$STATE/auth-mode"
    # --block keeps `ray start` alive as the session leader, so `stop` and
    # `status` have one pid to find everything by.
    RAY_USAGE_STATS_ENABLED=0 setsid "$RAY" start --head --block \
        --node-ip-address 127.0.0.1 \
        --port "$GCS_PORT" \
        --include-dashboard true \
        --dashboard-host 127.0.0.1 \
        --dashboard-port "$DASHBOARD_PORT" \
        --dashboard-agent-listen-port "$agent_port" \
        --ray-client-server-port "$client_port" \
        --num-cpus "$num_cpus" \
        --temp-dir "$STATE/ray" \
        --disable-usage-stats \
        >"$LOG" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$PIDFILE"
    # The job server answers once the dashboard is up (~10-30 s).
    for _ in $(seq 1 120); do
        if dashboard_up; then
            echo "Ray head running (pid $pid, $num_cpus CPUs, log $LOG)"
            print_env
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "error: ray start exited; last lines of $LOG:" >&2
            tail -n 20 "$LOG" >&2
            rm -f "$PIDFILE"
            exit 1
        fi
        sleep 1
    done
    echo "error: the job server did not answer on $ADDRESS within 120 s; see $LOG" >&2
    cmd_stop
    exit 1
}

cmd_stop() {
    local pid
    if ! pid="$(running_pid)"; then
        echo "not running"
        rm -f "$PIDFILE"
        return 0
    fi
    local pids
    pids="$(session_pids "$pid")"
    # shellcheck disable=SC2086  # word splitting of the pid list is intended
    kill -TERM $pids 2>/dev/null || true
    # On SIGTERM Ray drains for up to 30 s before it exits.
    for _ in $(seq 1 80); do
        pids="$(session_pids "$pid")"
        [[ -z "$pids" ]] && break
        sleep 0.5
    done
    if [[ -n "$pids" ]]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    echo "stopped"
}

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        if dashboard_up; then
            echo "running (pid $pid), job server at $ADDRESS"
        else
            echo "starting or unhealthy (pid $pid), no answer yet on $ADDRESS; see $LOG"
        fi
        print_env
    else
        echo "not running"
        return 1
    fi
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) usage ;;
esac
