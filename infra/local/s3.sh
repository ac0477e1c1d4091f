#!/usr/bin/env bash
# A local S3 endpoint for laptops: moto's S3 server on loopback, no Docker.
# (MinIO would be the usual choice but its binaries are not on PyPI; moto is,
# and is already a dev dependency for the tests.)
#
#   infra/local/s3.sh start      # starts it, creates the bucket, prints the variables
#   eval "$(infra/local/s3.sh env)"
#   imgrec data upload ./pets s3://imgrec-local/data/pets
#   infra/local/s3.sh status
#   infra/local/s3.sh stop
#
# moto keeps everything in memory: `stop` loses the bucket's content. For
# local work that must survive, give the jobs a local folder instead of an
# s3:// URI (imgrec accepts both).
#
# Environment: IMGREC_S3_PORT (9000), IMGREC_LOCAL_BUCKET (imgrec-local),
# IMGREC_S3_STATE (state folder: pid, log).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PORT="${IMGREC_S3_PORT:-9000}"
BUCKET="${IMGREC_LOCAL_BUCKET:-imgrec-local}"
STATE="${IMGREC_S3_STATE:-/tmp/imgrec-s3-local-$(id -u)}"
PIDFILE="$STATE/moto.pid"
LOG="$STATE/moto.log"
ENDPOINT="http://127.0.0.1:${PORT}"

if [[ -x "$REPO/.venv/bin/python" ]]; then
    PY="$REPO/.venv/bin/python"
else
    PY="$(command -v python3)"
fi

usage() {
    sed -n '6,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

# Dummy credentials: moto accepts any. Region us-east-1 as in the tests.
print_env() {
    cat <<EOF
export AWS_ENDPOINT_URL=$ENDPOINT
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
# bucket: s3://$BUCKET
EOF
}

running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# Wait for the port, then create the bucket (versioned, like the real one in
# infra/main.tf, so overwrite/delete behave the same).
create_bucket() {
    AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_EC2_METADATA_DISABLED=true \
        "$PY" - "$ENDPOINT" "$BUCKET" <<'EOF'
import sys, time
import boto3

endpoint, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
deadline = time.time() + 60
while True:
    try:
        s3.list_buckets()
        break
    except Exception:
        if time.time() > deadline:
            sys.exit(f"no answer from {endpoint} within 60 s")
        time.sleep(0.3)
if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket=bucket)
s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
EOF
}

cmd_start() {
    if ! "$PY" -c "import moto.server" 2>/dev/null; then
        echo "error: moto's server is not installed for $PY: run 'make install' (dev extra: moto[server,s3])" >&2
        exit 1
    fi
    if pid="$(running_pid)"; then
        echo "already running (pid $pid) at $ENDPOINT" >&2
        print_env
        return 0
    fi
    if "$PY" -c "import socket,sys; s=socket.socket(); sys.exit(0 if s.connect_ex(('127.0.0.1', $PORT)) == 0 else 1)"; then
        echo "error: port $PORT on 127.0.0.1 is in use; set IMGREC_S3_PORT" >&2
        exit 1
    fi
    mkdir -p "$STATE"
    # Own session, so `stop` ends exactly this server; loopback only.
    setsid "$PY" -m moto.server -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    if ! create_bucket; then
        echo "error: moto did not start; last lines of $LOG:" >&2
        tail -n 20 "$LOG" >&2
        cmd_stop >/dev/null
        exit 1
    fi
    echo "moto S3 running (pid $(cat "$PIDFILE")) at $ENDPOINT, bucket s3://$BUCKET; export:" >&2
    print_env
}

cmd_stop() {
    local pid
    if ! pid="$(running_pid)"; then
        echo "not running"
        rm -f "$PIDFILE"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    echo "stopped"
}

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        echo "running (pid $pid) at $ENDPOINT, bucket s3://$BUCKET"
    else
        echo "not running"
        return 1
    fi
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) print_env ;;
    *) usage ;;
esac
