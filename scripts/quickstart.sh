#!/usr/bin/env bash
# pgwarden in five minutes, on a fresh Debian machine with Rust:
#
#   scripts/quickstart.sh          set up, demo, then keep running until Ctrl-C
#   scripts/quickstart.sh --exit   set up, demo, stop everything and exit
#
# It installs the dependencies (scripts/install-deps.sh), starts a throwaway
# Postgres in a temp dir (port 5433, or a free one), creates role `app`
# (password `app-secret`), database `app`, an authenticator role and a role
# `analyst` for JWT logins, writes a pgwarden config next to it, builds
# pgwarden (release), makes a signing key (`pgwarden keygen`) and a TLS
# certificate, starts pgwarden on 127.0.0.1:6432 (or a free port), runs psql
# and pgbench through it with a password and with a JWT over TLS, and prints
# how to connect. Ctrl-C stops pgwarden and Postgres and removes the temp dir.
# PGWARDEN_BIN=path uses that binary instead of building one.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
EXIT_WHEN_DONE=0
for arg in "$@"; do
    case $arg in
        --exit) EXIT_WHEN_DONE=1 ;;
        -h | --help)
            sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
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
AUTH_USER=authenticator
AUTH_PASSWORD=authenticator-secret
JWT_ROLE=analyst

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
    -c "CREATE DATABASE $APP_DB OWNER $APP_USER" \
    -c "CREATE ROLE $AUTH_USER LOGIN NOINHERIT PASSWORD '$AUTH_PASSWORD'" \
    -c "CREATE ROLE $JWT_ROLE NOLOGIN" \
    -c "GRANT $JWT_ROLE TO $AUTH_USER"

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

# TLS for clients (a self-signed certificate made below).
[tls]
cert_file = "$WORK/certs/server.crt"
key_file = "$WORK/certs/server.key"
client_tls = "allowed"

# JWT logins: a token signed by the key made below is the password; its
# "sub" is the Postgres role, taken through the authenticator.
[jwt]
public_key_file = "$WORK/keys/public.pem"
audience = "pgwarden"
allowed_roles = ["$JWT_ROLE"]
server_user = "$AUTH_USER"
server_password = "$AUTH_PASSWORD"
auto_provision = true
read_only_claim = "scope"
read_only_values = ["db:read"]
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
step "signing key and TLS certificate"
run "$BIN" keygen --alg ES256 --out "$WORK/keys"
mkdir -p "$WORK/certs"
run openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$WORK/certs/server.key" -out "$WORK/certs/server.crt"
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

step "JWT login over TLS: a token as the password"
run bash "$ROOT/scripts/pg.sh" psql "$WORK/pg" "$PG_PORT" -q -v ON_ERROR_STOP=1 -d "$APP_DB" \
    -c "GRANT SELECT ON ALL TABLES IN SCHEMA public TO $JWT_ROLE"
TOKEN=$("$BIN" token --key "$WORK/keys/private.pem" --sub "$JWT_ROLE" --aud pgwarden --ttl 1h)
echo "\$ TOKEN=\$($BIN token --key $WORK/keys/private.pem --sub $JWT_ROLE --aud pgwarden --ttl 1h)"
JWT_CONNECT="host=$PROXY_HOST port=$PROXY_PORT user=$JWT_ROLE dbname=$APP_DB sslmode=require"
PGPASSWORD=$TOKEN run "$PG_BIN/psql" -X "$JWT_CONNECT" -c 'select current_user, session_user' -c '\conninfo'
echo "A role change is refused (42501):"
PGPASSWORD=$TOKEN run "$PG_BIN/psql" -X "$JWT_CONNECT" -c 'set role none' || true
echo "A read-only token (scope db:read) cannot write (25006):"
RO_TOKEN=$("$BIN" token --key "$WORK/keys/private.pem" --sub "$JWT_ROLE" --aud pgwarden --ttl 1h --claim scope=db:read)
PGPASSWORD=$RO_TOKEN run "$PG_BIN/psql" -X "$JWT_CONNECT" -c 'delete from pgbench_history' || true

step "pgbench with a JWT over TLS"
PGPASSWORD=$TOKEN PGSSLMODE=require run timeout 120 "$PG_BIN/pgbench" -h "$PROXY_HOST" -p "$PROXY_PORT" \
    -U "$JWT_ROLE" -n -S -c 8 -j 2 -T 10 "$APP_DB"
PGPASSWORD=$TOKEN PGSSLMODE=require run timeout 120 "$PG_BIN/pgbench" -h "$PROXY_HOST" -p "$PROXY_PORT" \
    -U "$JWT_ROLE" -n -S -c 4 -j 2 -T 5 -C "$APP_DB"

step "done"
cat <<EOF
Postgres  127.0.0.1:$PG_PORT  (data in $WORK/pg, superuser via: scripts/pg.sh psql $WORK/pg $PG_PORT)
pgwarden  $PROXY_HOST:$PROXY_PORT  (config $CONFIG, log $WORK/pgwarden.log)

Connect through pgwarden with a password:

    PGPASSWORD=$APP_PASSWORD psql -h $PROXY_HOST -p $PROXY_PORT -U $APP_USER $APP_DB

or with a token over TLS:

    PGPASSWORD=\$($BIN token --key $WORK/keys/private.pem --sub $JWT_ROLE --aud pgwarden --ttl 1h) \\
        psql "host=$PROXY_HOST port=$PROXY_PORT user=$JWT_ROLE dbname=$APP_DB sslmode=require"

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
