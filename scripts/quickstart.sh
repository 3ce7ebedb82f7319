#!/usr/bin/env bash
# pgwarden in five minutes, on a fresh Debian machine with Rust:
#
#   scripts/quickstart.sh          set up, demo, then keep running until Ctrl-C
#   scripts/quickstart.sh --exit   set up, demo, stop everything and exit
#
# It installs the dependencies (scripts/install-deps.sh), starts a throwaway
# Postgres in a temp dir (port 5433, or a free one), creates role `app`
# (password `app-secret`) and database `app`, writes a pgwarden config next to
# it, builds pgwarden (release), starts it on 127.0.0.1:6432 (or a free port),
# runs psql and pgbench through it, and prints how to connect. Ctrl-C stops
# pgwarden and Postgres and removes the temp dir.
# PGWARDEN_BIN=path uses that binary instead of building one.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
EXIT_WHEN_DONE=0
for arg in "$@"; do
    case $arg in
        --exit) EXIT_WHEN_DONE=1 ;;
        -h | --help)
            sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

APP_USER=app
APP_PASSWORD=app-secret
APP_DB=app

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() {
    printf '$'
    printf ' %q' "$@"
    printf '\n'
    "$@"
}

# A port is free if we can bind it (as a server would, with SO_REUSEADDR).
port_is_free() {
    python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
EOF
}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

WORK=
PROXY_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $PROXY_PID ]] && kill -0 "$PROXY_PID" 2>/dev/null; then
        echo "stopping pgwarden (pid $PROXY_PID)"
        kill -TERM "$PROXY_PID" 2>/dev/null || true
        for _ in $(seq 1 350); do
            kill -0 "$PROXY_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$PROXY_PID" 2>/dev/null || true
        wait "$PROXY_PID" 2>/dev/null || true
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $rc -ne 0 && $rc -ne 130 && -f $WORK/pgwarden.log ]]; then
            echo "--- last lines of pgwarden's log ---"
            tail -n 40 "$WORK/pgwarden.log" || true
        fi
        bash "$ROOT/scripts/pg.sh" stop "$WORK/pg" 2>/dev/null || true
        rm -rf "$WORK"
        echo "removed $WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "dependencies"
bash "$ROOT/scripts/install-deps.sh"
PG_BIN=$(bash "$ROOT/scripts/pg.sh" bindir)
echo "Postgres binaries: $PG_BIN"

step "throwaway Postgres"
WORK=$(mktemp -d -t pgwarden-quickstart.XXXXXX)
chmod 755 "$WORK"
PG_PORT=5433
port_is_free "$PG_PORT" || PG_PORT=$(free_port)
run bash "$ROOT/scripts/pg.sh" start "$WORK/pg" "$PG_PORT"
run bash "$ROOT/scripts/pg.sh" psql "$WORK/pg" "$PG_PORT" -q -v ON_ERROR_STOP=1 -d postgres \
    -c "CREATE ROLE $APP_USER LOGIN PASSWORD '$APP_PASSWORD'" \
    -c "CREATE DATABASE $APP_DB OWNER $APP_USER"

step "pgwarden config"
PROXY_PORT=6432
port_is_free "$PROXY_PORT" || PROXY_PORT=0
CONFIG=$WORK/pgwarden.toml
cat >"$CONFIG" <<EOF
# Written by scripts/quickstart.sh. See config/pgwarden.toml for every key.
[general]
listen = "127.0.0.1:$PROXY_PORT"
workers = "auto"
pool_mode = "transaction"
default_pool_size = 20
log_level = "info"

[[databases]]
name = "$APP_DB"
host = "127.0.0.1"
port = $PG_PORT

[[users]]
name = "$APP_USER"
password = "$APP_PASSWORD"
EOF
cat "$CONFIG"

if [[ -n ${PGWARDEN_BIN:-} ]]; then
    step "pgwarden binary from PGWARDEN_BIN (not building)"
    BIN=$PGWARDEN_BIN
else
    step "build pgwarden (release)"
    run cargo build --release --manifest-path "$ROOT/Cargo.toml"
    TARGET_DIR=$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    BIN=$TARGET_DIR/release/pgwarden
fi
run "$BIN" check --config "$CONFIG"

step "start pgwarden"
printf '$ %s --config %s 2>%s &\n' "$BIN" "$CONFIG" "$WORK/pgwarden.log"
"$BIN" --config "$CONFIG" 2>"$WORK/pgwarden.log" &
PROXY_PID=$!
ADDR=
for _ in $(seq 1 200); do
    ADDR=$(grep -o 'listening on [^ ]*' "$WORK/pgwarden.log" 2>/dev/null | head -n 1 | awk '{print $3}' | tr -d ',' || true)
    [[ -n $ADDR ]] && break
    if ! kill -0 "$PROXY_PID" 2>/dev/null; then
        echo "pgwarden exited during start-up" >&2
        exit 1
    fi
    sleep 0.1
done
[[ -n $ADDR ]] || {
    echo "pgwarden did not report 'listening on' within 20 s" >&2
    exit 1
}
PROXY_HOST=${ADDR%:*}
PROXY_PORT=${ADDR##*:}
echo "pgwarden (pid $PROXY_PID) is listening on $PROXY_HOST:$PROXY_PORT"

export PGPASSWORD=$APP_PASSWORD
CONNECT=(-h "$PROXY_HOST" -p "$PROXY_PORT" -U "$APP_USER")

step "psql through pgwarden"
run "$PG_BIN/psql" -X "${CONNECT[@]}" -d "$APP_DB" -c 'select version()' -c 'select current_user'

step "pgbench through pgwarden"
run "$PG_BIN/pgbench" "${CONNECT[@]}" -i -s 1 "$APP_DB"
run timeout 120 "$PG_BIN/pgbench" "${CONNECT[@]}" -c 8 -j 2 -T 10 -M prepared "$APP_DB"

step "done"
cat <<EOF
Postgres  127.0.0.1:$PG_PORT  (data in $WORK/pg, superuser via: scripts/pg.sh psql $WORK/pg $PG_PORT)
pgwarden  $PROXY_HOST:$PROXY_PORT  (config $CONFIG, log $WORK/pgwarden.log)

Connect through pgwarden with:

    PGPASSWORD=$APP_PASSWORD psql -h $PROXY_HOST -p $PROXY_PORT -U $APP_USER $APP_DB

EOF
if [[ $EXIT_WHEN_DONE -eq 1 ]]; then
    echo "--exit given: stopping everything."
    exit 0
fi
echo "Both keep running until you press Ctrl-C."
while kill -0 "$PROXY_PID" 2>/dev/null; do
    wait "$PROXY_PID" 2>/dev/null || true
done
echo "pgwarden exited on its own; see the log above." >&2
exit 1
