#!/usr/bin/env bash
# A loopback S3 server (moto) for shard-source's signed-request test, tests/s3.rs
# `a_real_s3_server_when_one_is_named` (skipped, with a notice, when no server is named).
#
#   scripts/s3_test_server.sh test    install moto if needed, start it, run the test, stop it
#   eval "$(scripts/s3_test_server.sh start)"   start it and print the variables to export
#   scripts/s3_test_server.sh stop
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

case "${1:-test}" in
    start) start ;;
    stop) stop ;;
    test)
        eval "$(start)"
        trap stop EXIT
        cargo test --workspace --test s3 -- --nocapture
        ;;
    *) echo "usage: $0 [test|start|stop]" >&2; exit 2 ;;
esac
