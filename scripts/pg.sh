#!/usr/bin/env bash
# Throwaway development Postgres, for tests, the quickstart and benchmarks.
#
#   scripts/pg.sh start DIR PORT   initdb DIR/data if needed, start on 127.0.0.1:PORT
#   scripts/pg.sh stop DIR         stop it (fast shutdown)
#   scripts/pg.sh psql DIR PORT [psql args...]
#                                  psql as superuser "postgres" over the unix socket
#   scripts/pg.sh replica PRIMARY_DIR DIR PORT
#                                  a streaming replica of the server in PRIMARY_DIR
#                                  (pg_basebackup -R over its socket), started on PORT
#   scripts/pg.sh bindir           print the Postgres bin directory in use
#
# The server listens on 127.0.0.1 only; its unix socket lives in DIR itself.
# Host (TCP) logins use scram-sha-256; unix-socket logins are trusted.
# fsync, synchronous_commit and full_page_writes are off: fast, and unsafe for
# anything but throwaway data. max_connections = 200.
#
# Postgres refuses to run as root: as root, initdb and pg_ctl run as the
# "postgres" system user and DIR is chowned to it (DIR's parents must be
# traversable by that user; /tmp and mktemp -d under it are fine, since DIR
# itself is chowned).
set -euo pipefail

die() { printf 'pg.sh: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

pg_bindir() {
    if [[ -n ${PG_BINDIR:-} ]]; then
        echo "$PG_BINDIR"
        return
    fi
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n $dir && -x $dir/pg_ctl ]] || die "no Postgres found in /usr/lib/postgresql/*/bin (run scripts/install-deps.sh)"
    echo "$dir"
}

# Runs a command as the user that owns the cluster.
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

abs_dir() {
    mkdir -p "$1"
    (cd "$1" && pwd -P)
}

cmd_start() {
    [[ $# -eq 2 ]] || usage
    local dir port bin data
    dir=$(abs_dir "$1")
    port=$2
    [[ $port =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
    bin=$(pg_bindir)
    data=$dir/data

    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "no 'postgres' system user (install the postgresql package)"
        chown postgres: "$dir"
        chmod 700 "$dir"
        runuser -u postgres -- test -x "$dir" || die "user postgres cannot reach $dir (check its parent directories)"
    fi

    if [[ ! -s $data/PG_VERSION ]]; then
        as_pg "$bin/initdb" -D "$data" -U postgres -E UTF8 --locale=C \
            --auth-local=trust --auth-host=scram-sha-256 -N >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
        as_pg sh -c "echo \"include_if_exists = 'pgwarden-dev.conf'\" >> '$data/postgresql.conf'"
    fi

    # Rewritten at every start, so the same DIR can move to another port.
    as_pg tee "$data/pgwarden-dev.conf" >/dev/null <<EOF
# written by scripts/pg.sh
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
log_min_messages = warning
log_line_prefix = '%m [%p] %q%u@%d '
EOF

    if as_pg "$bin/pg_ctl" status -D "$data" >/dev/null 2>&1; then
        echo "pg.sh: already running in $dir" >&2
        return 0
    fi
    as_pg "$bin/pg_ctl" start -D "$data" -l "$dir/postgres.log" -w -t 60 >/dev/null \
        || { tail -n 30 "$dir/postgres.log" >&2 || true; die "pg_ctl start failed"; }
    echo "pg.sh: Postgres $("$bin/postgres" -V | awk '{print $3}') running on 127.0.0.1:$port (socket in $dir, log $dir/postgres.log)" >&2
}

cmd_replica() {
    [[ $# -eq 3 ]] || usage
    local primary dir port bin data
    [[ -d $1 ]] || die "no such directory: $1"
    primary=$(cd "$1" && pwd -P)
    dir=$(abs_dir "$2")
    port=$3
    [[ $port =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
    bin=$(pg_bindir)
    data=$dir/data
    local pport
    pport=$(awk -F' = ' '/^port/ {print $2}' "$primary/data/pgwarden-dev.conf")
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$dir"
        chmod 700 "$dir"
    fi
    if [[ ! -s $data/PG_VERSION ]]; then
        as_pg "$bin/pg_basebackup" -h "$primary" -p "$pport" -U postgres -R -X stream -c fast -D "$data" \
            >"$dir/basebackup.log" 2>&1 || { cat "$dir/basebackup.log" >&2; die "pg_basebackup failed"; }
    fi
    as_pg sh -c "sed -e 's/^port = .*/port = $port/' -e \"s|^unix_socket_directories = .*|unix_socket_directories = '$dir'|\" \
        '$primary/data/pgwarden-dev.conf' > '$data/pgwarden-dev.conf'; echo 'hot_standby = on' >> '$data/pgwarden-dev.conf'"
    as_pg "$bin/pg_ctl" start -D "$data" -l "$dir/postgres.log" -w -t 60 >/dev/null \
        || { tail -n 30 "$dir/postgres.log" >&2 || true; die "pg_ctl start (replica) failed"; }
    echo "pg.sh: replica of 127.0.0.1:$pport running on 127.0.0.1:$port (log $dir/postgres.log)" >&2
}

cmd_stop() {
    [[ $# -eq 1 ]] || usage
    local dir bin
    [[ -d $1 ]] || die "no such directory: $1"
    dir=$(cd "$1" && pwd -P)
    bin=$(pg_bindir)
    if as_pg "$bin/pg_ctl" status -D "$dir/data" >/dev/null 2>&1; then
        as_pg "$bin/pg_ctl" stop -D "$dir/data" -m fast -w -t 60 >/dev/null
        echo "pg.sh: stopped Postgres in $dir" >&2
    else
        echo "pg.sh: not running in $dir" >&2
    fi
}

cmd_psql() {
    [[ $# -ge 2 ]] || usage
    local dir port bin
    dir=$(cd "$1" && pwd -P)
    port=$2
    shift 2
    bin=$(pg_bindir)
    exec "$bin/psql" -X -h "$dir" -p "$port" -U postgres "$@"
}

[[ $# -ge 1 ]] || usage
command=$1
shift
case $command in
    start) cmd_start "$@" ;;
    replica) cmd_replica "$@" ;;
    stop) cmd_stop "$@" ;;
    psql) cmd_psql "$@" ;;
    bindir) pg_bindir ;;
    -h | --help | help) usage ;;
    *) usage ;;
esac
