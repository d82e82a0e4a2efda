#!/usr/bin/env bash
# A loopback S3 server (moto) for shard-source's signed-request test, tests/s3.rs
# `a_real_s3_server_when_one_is_named` (skipped, with a notice, when no server is named).
#
#   scripts/s3_test_server.sh test    install moto if needed, start it, run the test, stop it
#   eval "$(scripts/s3_test_server.sh start)"   start it and print the variables to export
#   scripts/s3_test_server.sh stop
#   scripts/s3_test_server.sh upload BUCKET DIR    create BUCKET on the running server and
#                                                  upload DIR's *.tar into it (for benches)
#
# moto lives in a virtual environment outside the repository ($MOTO_VENV, /tmp/moto); it
# listens on 127.0.0.1:$MOTO_PORT (5077) and accepts any credentials.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MOTO_VENV:-/tmp/moto}
PORT=${MOTO_PORT:-5077}
PIDFILE="$VENV/moto_server.pid"
ENDPOINT="http://127.0.0.1:$PORT"

install() {
    if [ ! -x "$VENV/bin/moto_server" ]; then
        python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || {
            echo "needs python3 with venv (Debian: apt-get install python3-venv)" >&2
            exit 1
        }
        python3 -m venv "$VENV" >&2
        "$VENV/bin/pip" install --quiet 'moto[server]' >&2
    fi
}

up() {
    "$VENV/bin/python" - "$PORT" <<'PY'
import socket, sys
s = socket.socket()
s.settimeout(0.5)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
PY
}

start() {
    install
    if ! up; then
        "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$VENV/moto_server.log" 2>&1 &
        echo $! >"$PIDFILE"
        for _ in $(seq 100); do up && break; sleep 0.1; done
        up || { echo "moto did not start; see $VENV/moto_server.log" >&2; exit 1; }
    fi
    echo "export CLIP_TEST_S3_ENDPOINT=$ENDPOINT AWS_ACCESS_KEY_ID=testing" \
        "AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1"
}

stop() {
    if [ -f "$PIDFILE" ]; then
        pid=$(cat "$PIDFILE")
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        rm -f "$PIDFILE"
    fi
}

upload() {
    "$VENV/bin/python" - "$ENDPOINT" "$1" "$2" <<'PY'
import boto3, os, sys
endpoint, bucket, root = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                  aws_secret_access_key="testing", region_name="us-east-1")
s3.create_bucket(Bucket=bucket)
for f in sorted(os.listdir(root)):
    if f.endswith(".tar"):
        s3.upload_file(os.path.join(root, f), bucket, f)
PY
}

case "${1:-test}" in
    start) start ;;
    stop) stop ;;
    upload) upload "$2" "$3" ;;
    test)
        eval "$(start)"
        trap stop EXIT
        cargo test --workspace --test s3 -- --nocapture
        ;;
    *) echo "usage: $0 [test|start|stop|upload BUCKET DIR]" >&2; exit 2 ;;
esac
