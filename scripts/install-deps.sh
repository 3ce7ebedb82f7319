#!/usr/bin/env bash
# Installs what pgwarden's tests, quickstart and benchmarks need, and nothing
# if it is all there already (then it prints nothing).
#
#   Debian packages: postgresql postgresql-contrib pgbouncer libclang-dev python3-pip openssl
#   Python:          psycopg[binary] (psycopg 3), for the psycopg integration test
#
# Safe to run again and again: apt-get update runs once, and only when a
# package is missing. Package installs never start services (no Debian
# "main" Postgres cluster, no pgbouncer on 6432): the scripts and tests start
# their own throwaway servers.
set -euo pipefail

APT_PACKAGES=(postgresql postgresql-contrib pgbouncer libclang-dev python3-pip openssl)

log() { printf 'install-deps: %s\n' "$*" >&2; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root to run: $*"
        return 1
    fi
}

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

install_apt_packages() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0

    log "installing Debian packages: ${missing[*]}"
    # No default cluster: tests and scripts run their own Postgres.
    if ! is_installed postgresql-common; then
        as_root mkdir -p /etc/postgresql-common
        if [[ ! -e /etc/postgresql-common/createcluster.conf ]]; then
            echo 'create_main_cluster = false' | as_root tee /etc/postgresql-common/createcluster.conf >/dev/null
        fi
    fi
    # Keep package scripts from starting services (Postgres, pgbouncer).
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || rc=$?
    if [[ $rc -eq 0 ]]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${missing[@]}" >/dev/null || rc=$?
    fi
    if [[ $added_policy -eq 1 ]]; then
        as_root rm -f "$policy"
    fi
    if [[ $rc -ne 0 ]]; then
        log "apt-get failed (exit $rc)"
        return "$rc"
    fi
    # Debian's pgbouncer package may still have started its service on 6432.
    if command -v service >/dev/null 2>&1 && pgrep -x pgbouncer >/dev/null 2>&1; then
        as_root service pgbouncer stop >/dev/null 2>&1 || true
    fi
    log "installed: ${missing[*]}"
}

install_psycopg() {
    local py=${PYTHON:-python3}
    if ! command -v "$py" >/dev/null 2>&1; then
        log "$py not found"
        return 1
    fi
    if "$py" -c 'import psycopg' >/dev/null 2>&1; then
        return 0
    fi
    log "installing psycopg[binary] for $(command -v "$py")"
    if ! "$py" -m pip --version >/dev/null 2>&1; then
        log "$py has no pip module"
        return 1
    fi
    local out
    if ! out=$("$py" -m pip install --quiet --disable-pip-version-check --no-input 'psycopg[binary]' 2>&1); then
        if grep -qi 'externally-managed' <<<"$out"; then
            "$py" -m pip install --quiet --disable-pip-version-check --no-input \
                --break-system-packages 'psycopg[binary]'
        else
            printf '%s\n' "$out" >&2
            return 1
        fi
    fi
    "$py" -c 'import psycopg' || { log "psycopg still not importable"; return 1; }
    log "installed psycopg $("$py" -c 'import psycopg; print(psycopg.__version__)')"
}

install_apt_packages
install_psycopg
