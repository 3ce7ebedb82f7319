#!/usr/bin/env bash
# pgbench against Postgres directly, through pgwarden (release build) and
# through PgBouncer, one target after the other for every cell, so slow drift
# of the machine hits all three alike.
#
#   scripts/bench.sh [--quick] [--workers N] [--no-pin] [--time SECS] [--scale N]
#                    [--pool-size N] [--out FILE] [--no-pgbouncer] [--no-build]
#                    [--cell 'WORKLOAD PROTOCOL CLIENTS EXTRA']... [--jwt | --jwt-only]
#                    [--replica | --replica-only] [--server-unix] [--client-unix]
#                    [--relay]
#   PGWARDEN_BIN=path scripts/bench.sh ...   measure that binary instead
#   BASELINE_BIN=path scripts/bench.sh ...   also measure that binary (target
#                                            pgwarden-base), same config, same run
#
# Cells: select-only (-S) and tpcb-like, protocols simple/extended/prepared,
# -c 16 and -c 64, plus select-only simple -C (a new connection per
# transaction) at -c 16. Defaults: scale 10, -j 2, -T 15 each, pool size 20,
# transaction pooling in both proxies. --quick runs 5 cells at -T 5. --cell
# (repeatable) runs only the cells given, e.g. --cell 'select-only simple 16 -C'
# or --cell 'tpcb-like extended 64 -'.
#
# --jwt adds a table for JWT logins, all through pgwarden over TLS: a static
# user with SCRAM against a JWT user (a token as the password, role taken
# through an authenticator), for select-only -c 16 with -C (a login per
# transaction: the reconnect with the same token is served by the per-shard
# token cache) and without (per-transaction cost of a role-locked session).
# --jwt-only runs that table alone.
#
# --replica adds a table for read/write routing: a streaming replica of the
# server (pg_basebackup -R) and a database name in pgwarden with both hosts.
# Targets: direct (the primary), pgwarden to the primary alone (one host, no
# routing), and pgwarden-split (the primary and the replica, reads routed
# by SQL inspection). Select-only in the three protocols and tpcb-like, -c 16.
# --replica-only runs that table alone.
#
# --server-unix: pgwarden and PgBouncer reach Postgres over its Unix-domain
# socket instead of TCP on 127.0.0.1 (clients still connect over TCP, and
# "direct" stays TCP): the setup for a proxy on the database's own host.
# --client-unix: pgbench reaches every target over its Unix socket
# (Postgres's own, pgwarden's unix_socket_dir, PgBouncer's unix_socket_dir);
# TLS targets stay on TCP. With both, nothing crosses the TCP stack.
# BASELINE_BIN must then be a build that knows unix_socket_dir.
#
# --relay adds bare 1:1 TCP relays as targets (benches/relay.rs: no
# parsing, no pooling, no auth, one server connection per client):
# relay-monoio, pgwarden's mechanism; relay-multishot, the io-uring crate
# with one multishot receive per socket into a buffer ring; relay-recv and
# relay-pollfirst, the same loop with a one-shot receive per message, plain
# and with IORING_RECVSEND_POLL_FIRST. They are the floor of each mechanism
# on this machine. Their -C cells are n/a (without a pool every login forks
# a backend, as direct does). TCP only.
#
# For each cell: TPS, average latency, TPS as a fraction of direct, and the
# proxy's CPU time per transaction (utime+stime of its process from
# /proc/PID/stat before and after, over transactions done; microseconds).
# Prints a markdown table (and writes it to --out FILE).
#
# PgBouncer runs from Debian's package, auth_type scram-sha-256 with the same
# role's SCRAM secret in its userlist. Prepared statements in transaction mode
# need PgBouncer >= 1.21 (max_prepared_statements); with an older one its
# prepared cells are reported as n/a.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)

QUICK=0
WORKERS=auto
DURATION=
PIN=true
SCALE=10
POOL_SIZE=20
OUT=
WITH_PGBOUNCER=1
BUILD=1
ONLY_CELLS=()
JWT=0
REPLICA=0
SERVER_UNIX=0
CLIENT_UNIX=0
RELAY=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) QUICK=1 ;;
        --workers) WORKERS=$2; shift ;;
        --no-pin) PIN=false ;;
        --time | -T) DURATION=$2; shift ;;
        --scale) SCALE=$2; shift ;;
        --pool-size) POOL_SIZE=$2; shift ;;
        --out) OUT=$2; shift ;;
        --no-pgbouncer) WITH_PGBOUNCER=0 ;;
        --no-build) BUILD=0 ;;
        --cell) ONLY_CELLS+=("$2"); shift ;;
        --jwt) JWT=1 ;;
        --jwt-only) JWT=1; ONLY_CELLS=(none) ;;
        --replica) REPLICA=1 ;;
        --replica-only) REPLICA=1; ONLY_CELLS=(none) ;;
        --server-unix) SERVER_UNIX=1 ;;
        --client-unix) CLIENT_UNIX=1 ;;
        --relay) RELAY=1 ;;
        -h | --help) sed -n '2,53p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z $DURATION ]]; then
    if [[ $QUICK -eq 1 ]]; then DURATION=5; else DURATION=15; fi
fi
[[ $WORKERS == auto || $WORKERS =~ ^[0-9]+$ ]] || { echo "--workers: a number or auto" >&2; exit 2; }
if [[ $RELAY -eq 1 && ($SERVER_UNIX -eq 1 || $CLIENT_UNIX -eq 1) ]]; then
    echo "--relay: the relays speak TCP only; leave out --server-unix and --client-unix" >&2
    exit 2
fi
for cell in "${ONLY_CELLS[@]}"; do
    [[ $cell == none ]] && continue
    read -r workload protocol clients extra <<<"$cell"
    [[ $workload =~ ^(select-only|tpcb-like)$ && $protocol =~ ^(simple|extended|prepared)$ &&
        $clients =~ ^[0-9]+$ && ${extra:--} =~ ^(-|-C)$ ]] ||
        { echo "--cell '$cell': expected 'select-only|tpcb-like simple|extended|prepared CLIENTS -|-C'" >&2; exit 2; }
done

APP_USER=app
APP_PASSWORD=app-secret
DB=bench
CLK_TCK=$(getconf CLK_TCK)

log() { printf '%s\n' "$*" >&2; }
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
    local port=$1
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
# utime + stime of a process, in clock ticks.
cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

WORK=
PROXY_PID=
BASE_PID=
PGB_PID=
RELAY_PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $PROXY_PID ]] && kill -0 "$PROXY_PID" 2>/dev/null; then
        kill -TERM "$PROXY_PID" 2>/dev/null || true
        for _ in $(seq 1 350); do kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PROXY_PID" 2>/dev/null || true
        wait "$PROXY_PID" 2>/dev/null || true
    fi
    if [[ -n $BASE_PID ]]; then
        kill -TERM "$BASE_PID" 2>/dev/null || true
        wait "$BASE_PID" 2>/dev/null || true
    fi
    if [[ -n $PGB_PID ]]; then
        kill -TERM "$PGB_PID" 2>/dev/null || true
    fi
    for pid in "${RELAY_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $WORK && -d $WORK ]]; then
        [[ -d $WORK/replica ]] && { bash "$ROOT/scripts/pg.sh" stop "$WORK/replica" >/dev/null 2>&1 || true; }
        bash "$ROOT/scripts/pg.sh" stop "$WORK/pg" >/dev/null 2>&1 || true
        if [[ $rc -ne 0 ]]; then
            log "logs kept in $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bash "$ROOT/scripts/install-deps.sh"
PG_BIN=$(bash "$ROOT/scripts/pg.sh" bindir)

# PGWARDEN_BIN=path runs another build (nothing is built then).
if [[ -n ${PGWARDEN_BIN:-} ]]; then
    BIN=$PGWARDEN_BIN
else
    if [[ $BUILD -eq 1 ]]; then
        log "building pgwarden (release)..."
        cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
    fi
    TARGET_DIR=$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    BIN=$TARGET_DIR/release/pgwarden
fi
[[ -x $BIN ]] || { log "no release binary at $BIN"; exit 1; }
RELAY_BIN=
if [[ $RELAY -eq 1 ]]; then
    log "building the bare relay (release)..."
    RELAY_BIN=$(cargo build --release --quiet --bench relay --message-format=json --manifest-path "$ROOT/Cargo.toml" |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "relay" and m.get("executable"):
        print(m["executable"])')
    [[ -x $RELAY_BIN ]] || { log "no relay binary built"; exit 1; }
fi

WORK=$(mktemp -d -t pgwarden-bench.XXXXXX)
chmod 755 "$WORK"

# --- Postgres ---------------------------------------------------------------
PG_PORT=$(free_port)
bash "$ROOT/scripts/pg.sh" start "$WORK/pg" "$PG_PORT" 2>/dev/null
psql_su() { bash "$ROOT/scripts/pg.sh" psql "$WORK/pg" "$PG_PORT" -q -v ON_ERROR_STOP=1 "$@"; }
psql_su -d postgres -c "CREATE ROLE $APP_USER LOGIN PASSWORD '$APP_PASSWORD'" -c "CREATE DATABASE $DB OWNER $APP_USER" \
    -c "CREATE ROLE authenticator LOGIN NOINHERIT PASSWORD 'authenticator-secret'" \
    -c "CREATE ROLE bench_jwt NOLOGIN" -c "GRANT bench_jwt TO authenticator"
export PGPASSWORD=$APP_PASSWORD
log "initialising pgbench data, scale $SCALE..."
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U "$APP_USER" -i -q -s "$SCALE" "$DB" >"$WORK/init.log" 2>&1 ||
    { cat "$WORK/init.log" >&2; exit 1; }
psql_su -d "$DB" -c "GRANT SELECT, UPDATE, INSERT ON ALL TABLES IN SCHEMA public TO bench_jwt"

# A streaming replica (for --replica), taken after the data is loaded.
if [[ $REPLICA -eq 1 ]]; then
    REPLICA_PORT=$(free_port)
    bash "$ROOT/scripts/pg.sh" replica "$WORK/pg" "$WORK/replica" "$REPLICA_PORT" 2>/dev/null
fi

# TLS certificate and JWT signing key (for --jwt).
if [[ $JWT -eq 1 ]]; then
    mkdir -p "$WORK/certs"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
        -addext "subjectAltName=IP:127.0.0.1" -keyout "$WORK/certs/server.key" -out "$WORK/certs/server.crt" 2>/dev/null
    "$BIN" keygen --alg ES256 --out "$WORK/keys" >/dev/null
fi

# --- pgwarden ---------------------------------------------------------------
# Where both proxies reach Postgres: TCP, or its socket directory.
if [[ $SERVER_UNIX -eq 1 ]]; then SERVER_HOST=$WORK/pg; else SERVER_HOST=127.0.0.1; fi
[[ $CLIENT_UNIX -eq 1 ]] && mkdir -p "$WORK/pgwarden-sock"
if [[ $WORKERS == auto ]]; then WORKERS_TOML='"auto"'; else WORKERS_TOML=$WORKERS; fi
cat >"$WORK/pgwarden.toml" <<EOF
[general]
listen = "127.0.0.1:0"
$(if [[ $CLIENT_UNIX -eq 1 ]]; then echo "unix_socket_dir = \"$WORK/pgwarden-sock\""; fi)
workers = $WORKERS_TOML
pin_workers = $PIN
pool_mode = "transaction"
default_pool_size = $POOL_SIZE
log_level = "warn"

[[databases]]
name = "$DB"
host = "$SERVER_HOST"
port = $PG_PORT

[[users]]
name = "$APP_USER"
password = "$APP_PASSWORD"
EOF
if [[ $REPLICA -eq 1 ]]; then
    cat >>"$WORK/pgwarden.toml" <<EOF

[[databases]]
name = "${DB}_split"
host = "127.0.0.1"
port = $PG_PORT
database_name = "$DB"

[[databases]]
name = "${DB}_split"
host = "127.0.0.1"
port = $REPLICA_PORT
database_name = "$DB"
role = "replica"
EOF
fi
# TLS and JWT only for --jwt: the main table measures the plain setup.
if [[ $JWT -eq 1 ]]; then
    cat >>"$WORK/pgwarden.toml" <<EOF

[tls]
cert_file = "$WORK/certs/server.crt"
key_file = "$WORK/certs/server.key"

[jwt]
public_key_file = "$WORK/keys/public.pem"
server_user = "authenticator"
server_password = "authenticator-secret"
allowed_roles = ["bench_jwt"]
[[jwt.roles]]
name = "bench_jwt"
pool_size = $POOL_SIZE
EOF
fi
# log_level warn keeps per-connection logging off the measured path, but the
# `listening on` line is info: start at info if warn hides it.
start_pgwarden() {
    "$BIN" --config "$WORK/pgwarden.toml" 2>"$WORK/pgwarden.log" &
    PROXY_PID=$!
    for _ in $(seq 1 200); do
        PROXY_ADDR=$(grep -o 'listening on [^ ]*' "$WORK/pgwarden.log" | head -n 1 | awk '{print $3}' | tr -d ',' || true)
        [[ -n $PROXY_ADDR ]] && return 0
        kill -0 "$PROXY_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -TERM "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=
    return 1
}
PROXY_ADDR=
if ! start_pgwarden; then
    sed -i 's/^log_level = "warn"/log_level = "info"/' "$WORK/pgwarden.toml"
    start_pgwarden || { cat "$WORK/pgwarden.log" >&2; log "pgwarden did not start"; exit 1; }
fi
PROXY_PORT=${PROXY_ADDR##*:}
log "pgwarden pid $PROXY_PID on $PROXY_ADDR (workers $WORKERS)"

# A baseline build beside it (BASELINE_BIN), for before/after in one run.
BASE_PORT=
if [[ -n ${BASELINE_BIN:-} ]]; then
    [[ -x $BASELINE_BIN ]] || { log "BASELINE_BIN is not executable: $BASELINE_BIN"; exit 1; }
    "$BASELINE_BIN" --config "$WORK/pgwarden.toml" 2>"$WORK/pgwarden-base.log" &
    BASE_PID=$!
    for _ in $(seq 1 200); do
        BASE_ADDR=$(grep -o 'listening on [^ ]*' "$WORK/pgwarden-base.log" | head -n 1 | awk '{print $3}' | tr -d ',' || true)
        [[ -n $BASE_ADDR ]] && break
        sleep 0.1
    done
    [[ -n ${BASE_ADDR:-} ]] || { cat "$WORK/pgwarden-base.log" >&2; log "baseline pgwarden did not start"; exit 1; }
    BASE_PORT=${BASE_ADDR##*:}
    log "baseline pgwarden ($BASELINE_BIN) pid $BASE_PID on $BASE_ADDR"
fi

# --- PgBouncer --------------------------------------------------------------
PGB_VERSION=
PGB_PREPARED=0
if [[ $WITH_PGBOUNCER -eq 1 ]]; then
    command -v pgbouncer >/dev/null || { log "pgbouncer not installed"; exit 1; }
    PGB_VERSION=$(pgbouncer --version | awk 'NR == 1 {print $2}')
    if [[ $(printf '1.21\n%s\n' "$PGB_VERSION" | sort -V | head -n 1) == 1.21 ]]; then
        PGB_PREPARED=1 # max_prepared_statements exists from 1.21 on
    fi
    PGB_PORT=$(free_port)
    mkdir -p "$WORK/pgbouncer"
    SECRET=$(psql_su -d postgres -At -c "SELECT rolpassword FROM pg_authid WHERE rolname = '$APP_USER'")
    printf '"%s" "%s"\n' "$APP_USER" "$SECRET" >"$WORK/pgbouncer/userlist.txt"
    {
        echo "[databases]"
        echo "$DB = host=$SERVER_HOST port=$PG_PORT dbname=$DB"
        echo "[pgbouncer]"
        echo "listen_addr = 127.0.0.1"
        echo "listen_port = $PGB_PORT"
        if [[ $CLIENT_UNIX -eq 1 ]]; then echo "unix_socket_dir = $WORK/pgbouncer"; else echo "unix_socket_dir ="; fi
        echo "auth_type = scram-sha-256"
        echo "auth_file = $WORK/pgbouncer/userlist.txt"
        echo "pool_mode = transaction"
        echo "default_pool_size = $POOL_SIZE"
        echo "max_client_conn = 1000"
        echo "logfile = $WORK/pgbouncer/pgbouncer.log"
        echo "pidfile = $WORK/pgbouncer/pgbouncer.pid"
        if [[ $PGB_PREPARED -eq 1 ]]; then echo "max_prepared_statements = 200"; fi
    } >"$WORK/pgbouncer/pgbouncer.ini"
    if [[ $(id -u) -eq 0 ]]; then
        chown -R postgres: "$WORK/pgbouncer"
        runuser -u postgres -- pgbouncer -d "$WORK/pgbouncer/pgbouncer.ini"
    else
        pgbouncer -d "$WORK/pgbouncer/pgbouncer.ini"
    fi
    wait_port "$PGB_PORT" || { cat "$WORK/pgbouncer/pgbouncer.log" >&2; log "pgbouncer did not start"; exit 1; }
    PGB_PID=$(cat "$WORK/pgbouncer/pgbouncer.pid")
    log "PgBouncer $PGB_VERSION pid $PGB_PID on 127.0.0.1:$PGB_PORT (prepared statements: $PGB_PREPARED)"
fi

# --- bare relays (--relay) ---------------------------------------------------
declare -A RELAY_PORT RELAY_PID
RELAY_MODES="monoio multishot recv pollfirst"
if [[ $RELAY -eq 1 ]]; then
    for mode in $RELAY_MODES; do
        port=$(free_port)
        "$RELAY_BIN" --mode "$mode" --listen "127.0.0.1:$port" --upstream "127.0.0.1:$PG_PORT" 2>"$WORK/relay-$mode.log" &
        RELAY_PIDS+=($!)
        RELAY_PID[$mode]=$!
        RELAY_PORT[$mode]=$port
        wait_port "$port" || { cat "$WORK/relay-$mode.log" >&2; log "relay $mode did not start"; exit 1; }
        log "relay ($mode) pid ${RELAY_PID[$mode]} on 127.0.0.1:$port"
    done
fi

# --- cells ------------------------------------------------------------------
# workload protocol clients extra-flags
if [[ $QUICK -eq 1 ]]; then
    CELLS=(
        "select-only simple 16 -"
        "select-only prepared 16 -"
        "tpcb-like extended 16 -"
        "select-only prepared 64 -"
        "select-only simple 16 -C"
    )
else
    CELLS=()
    for workload in select-only tpcb-like; do
        for protocol in simple extended prepared; do
            for clients in 16 64; do
                CELLS+=("$workload $protocol $clients -")
            done
        done
    done
    CELLS+=("select-only simple 16 -C")
fi
if [[ ${#ONLY_CELLS[@]} -gt 0 ]]; then
    CELLS=()
    for cell in "${ONLY_CELLS[@]}"; do
        [[ $cell == none ]] || CELLS+=("$cell")
    done
fi
TARGETS=(direct pgwarden)
[[ -n $BASE_PORT ]] && TARGETS+=(pgwarden-base)
[[ $WITH_PGBOUNCER -eq 1 ]] && TARGETS+=(pgbouncer)
if [[ $RELAY -eq 1 ]]; then
    for mode in $RELAY_MODES; do TARGETS+=("relay-$mode"); done
fi

target_port() {
    case $1 in
        direct) echo "$PG_PORT" ;;
        relay-*) echo "${RELAY_PORT[${1#relay-}]}" ;;
        pgwarden-base) echo "$BASE_PORT" ;;
        pgwarden*) echo "$PROXY_PORT" ;;
        pgbouncer) echo "$PGB_PORT" ;;
    esac
}
target_pid() {
    case $1 in
        direct) echo "" ;;
        relay-*) echo "${RELAY_PID[${1#relay-}]}" ;;
        pgwarden-base) echo "$BASE_PID" ;;
        pgwarden*) echo "$PROXY_PID" ;;
        pgbouncer) echo "$PGB_PID" ;;
    esac
}
# User, password and sslmode per target (libpq's default sslmode=prefer
# would turn TLS on against pgwarden: plain targets say disable).
target_user() { if [[ $1 == pgwarden-jwt-tls ]]; then echo bench_jwt; else echo "$APP_USER"; fi; }
target_password() { if [[ $1 == pgwarden-jwt-tls ]]; then echo "$TOKEN"; else echo "$APP_PASSWORD"; fi; }
target_sslmode() { if [[ $1 == *-tls ]]; then echo require; else echo disable; fi; }
target_db() { if [[ $1 == pgwarden-split ]]; then echo "${DB}_split"; else echo "$DB"; fi; }
# With --client-unix: the target's socket directory (TLS targets stay TCP).
target_host() {
    if [[ $CLIENT_UNIX -eq 0 || $1 == *-tls ]]; then echo 127.0.0.1; return; fi
    case $1 in
        direct) echo "$WORK/pg" ;;
        pgbouncer) echo "$WORK/pgbouncer" ;;
        *) echo "$WORK/pgwarden-sock" ;;
    esac
}

ROWS=()
run_cell() {
    local workload=$1 protocol=$2 clients=$3 extra=$4 target=$5
    local label=$workload
    [[ $extra == -C ]] && label="$workload -C"
    if [[ $target == pgbouncer && $protocol == prepared && $PGB_PREPARED -eq 0 ]]; then
        ROWS+=("| $label | $protocol | $clients | $target | n/a | n/a | n/a | n/a (PgBouncer $PGB_VERSION < 1.21) |")
        return
    fi
    if [[ $target == relay-* && $extra == -C ]]; then
        ROWS+=("| $label | $protocol | $clients | $target | n/a | n/a | n/a | n/a (1:1 relay: no pool) |")
        return
    fi
    local port pid args=(-n -M "$protocol" -c "$clients" -j 2 -T "$DURATION")
    port=$(target_port "$target")
    pid=$(target_pid "$target")
    [[ $workload == select-only ]] && args+=(-S)
    [[ $extra == -C ]] && args+=(-C)
    local before=0 after=0 out rc=0
    [[ -n $pid ]] && before=$(cpu_ticks "$pid")
    out=$(PGPASSWORD=$(target_password "$target") PGSSLMODE=$(target_sslmode "$target") \
        timeout $((DURATION + 120)) "$PG_BIN/pgbench" -h "$(target_host "$target")" -p "$port" -U "$(target_user "$target")" \
        "${args[@]}" "$(target_db "$target")" 2>"$WORK/pgbench.err") || rc=$?
    [[ -n $pid ]] && after=$(cpu_ticks "$pid")
    local tps latency processed failed
    tps=$(awk '/^tps = / {print $3; exit}' <<<"$out")
    latency=$(awk '/^latency average = / {print $4; exit}' <<<"$out")
    processed=$(awk -F': ' '/^number of transactions actually processed/ {split($2, a, "/"); print a[1]; exit}' <<<"$out")
    failed=$(awk -F': ' '/^number of failed transactions/ {split($2, a, " "); print a[1]; exit}' <<<"$out")
    if [[ $rc -ne 0 || -z $tps || -z $processed || $processed -eq 0 ]]; then
        {
            echo "### $label $protocol c=$clients via $target: pgbench exit $rc"
            echo "$out"
            cat "$WORK/pgbench.err"
        } >>"$WORK/errors.log"
        log "  $target: FAILED (exit $rc): $(grep -m1 -i error "$WORK/pgbench.err" || true)"
        ROWS+=("| $label | $protocol | $clients | $target | error | - | - | - |")
        return
    fi
    local ratio=- cpu=-
    if [[ $target == direct ]]; then
        DIRECT_TPS=$tps
        ratio=1.00
    elif [[ -n ${DIRECT_TPS:-} ]]; then
        ratio=$(awk -v a="$tps" -v b="$DIRECT_TPS" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    fi
    if [[ -n $pid ]]; then
        cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$processed" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
    fi
    local note=""
    [[ -n $failed && $failed != 0 ]] && note=" ($failed failed)"
    ROWS+=("| $label | $protocol | $clients | $target | $(printf '%.0f' "$tps")$note | $latency | $ratio | $cpu |")
    log "  $target: tps $tps, latency $latency ms, vs direct $ratio, proxy CPU $cpu us/txn"
}

log "running ${#CELLS[@]} cells x ${#TARGETS[@]} targets, -T $DURATION each"
for cell in "${CELLS[@]}"; do
    read -r workload protocol clients extra <<<"$cell"
    log "$workload $protocol -c $clients$([[ $extra == -C ]] && echo ' -C')"
    DIRECT_TPS=
    for target in "${TARGETS[@]}"; do
        run_cell "$workload" "$protocol" "$clients" "$extra" "$target"
    done
done

JWT_ROWS=()
if [[ $JWT -eq 1 ]]; then
    TOKEN=$("$BIN" token --key "$WORK/keys/private.pem" --sub bench_jwt --ttl 2h)
    log "JWT logins over TLS"
    MAIN_ROWS=("${ROWS[@]}")
    ROWS=()
    for cell in "select-only simple 16 -C" "select-only simple 16 -"; do
        read -r workload protocol clients extra <<<"$cell"
        log "$workload $protocol -c $clients$([[ $extra == -C ]] && echo ' -C') (TLS)"
        DIRECT_TPS=
        for target in direct pgwarden-scram-tls pgwarden-jwt-tls; do
            run_cell "$workload" "$protocol" "$clients" "$extra" "$target"
        done
    done
    JWT_ROWS=("${ROWS[@]}")
    ROWS=("${MAIN_ROWS[@]}")
fi

REPLICA_ROWS=()
if [[ $REPLICA -eq 1 ]]; then
    log "read/write split over a primary and a replica"
    MAIN_ROWS=("${ROWS[@]}")
    ROWS=()
    for cell in "select-only simple 16 -" "select-only extended 16 -" "select-only prepared 16 -" \
        "tpcb-like simple 16 -"; do
        read -r workload protocol clients extra <<<"$cell"
        log "$workload $protocol -c $clients (replica)"
        DIRECT_TPS=
        for target in direct pgwarden pgwarden-split; do
            run_cell "$workload" "$protocol" "$clients" "$extra" "$target"
        done
    done
    REPLICA_ROWS=("${ROWS[@]}")
    ROWS=("${MAIN_ROWS[@]}")
fi

# --- report -----------------------------------------------------------------
{
    echo "## pgbench: direct vs pgwarden vs PgBouncer"
    echo
    echo "$(nproc) cores; Postgres $("$PG_BIN/postgres" -V | awk '{print $3}'); scale $SCALE; -j 2 -T $DURATION;" \
        "pool size $POOL_SIZE, transaction mode; pgwarden workers $WORKERS (pinned: $PIN)${PGB_VERSION:+; PgBouncer $PGB_VERSION};" \
        "proxies to Postgres over $(if [[ $SERVER_UNIX -eq 1 ]]; then echo "its Unix socket"; else echo TCP; fi);" \
        "pgbench to targets over $(if [[ $CLIENT_UNIX -eq 1 ]]; then echo "Unix sockets"; else echo TCP; fi)"
    echo
    if [[ ${#ROWS[@]} -gt 0 ]]; then
        echo "| workload | protocol | clients | target | TPS | avg latency (ms) | vs direct | proxy CPU (us/txn) |"
        echo "|---|---|---:|---|---:|---:|---:|---:|"
        printf '%s\n' "${ROWS[@]}"
    fi
    if [[ ${#JWT_ROWS[@]} -gt 0 ]]; then
        echo
        echo "### JWT logins (pgwarden over TLS): SCRAM static user vs JWT user (ES256 token, set_role)"
        echo
        echo "| workload | protocol | clients | target | TPS | avg latency (ms) | vs direct | proxy CPU (us/txn) |"
        echo "|---|---|---:|---|---:|---:|---:|---:|"
        printf '%s\n' "${JWT_ROWS[@]}"
    fi
    if [[ ${#REPLICA_ROWS[@]} -gt 0 ]]; then
        echo
        echo "### Read/write split: direct to the primary, pgwarden to the primary alone, pgwarden over primary + replica"
        echo
        echo "| workload | protocol | clients | target | TPS | avg latency (ms) | vs direct | proxy CPU (us/txn) |"
        echo "|---|---|---:|---|---:|---:|---:|---:|"
        printf '%s\n' "${REPLICA_ROWS[@]}"
    fi
    if [[ -s $WORK/errors.log ]]; then
        echo
        echo "Some runs failed; their output:"
        echo
        echo '```'
        cat "$WORK/errors.log"
        echo '```'
    fi
} | tee ${OUT:+"$OUT"}
