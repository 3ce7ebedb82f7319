#!/usr/bin/env bash
# Runs every check pgwarden has, in one go, the way CI does:
#   1. scripts/install-deps.sh      (Postgres, pgbouncer, libclang, psycopg)
#   2. cargo fmt --check
#   3. cargo clippy --all-targets -- -D warnings
#   4. cargo test --all-targets     (unit tests, integration tests against a
#                                    real throwaway Postgres, benches built)
#      cargo test --doc             (when there is a library)
# One profile only (dev/test). Every section runs even when an earlier one
# failed, so one run shows every problem; the exit status is non-zero if any
# section failed.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

failed=()
start_all=$SECONDS

section() {
    local name=$1
    shift
    printf '\n==================== %s ====================\n' "$name"
    printf '$ %s\n' "$*"
    local t0=$SECONDS rc=0
    "$@" || rc=$?
    if [[ $rc -eq 0 ]]; then
        printf -- '---- %s: ok (%ds)\n' "$name" $((SECONDS - t0))
    else
        printf -- '---- %s: FAILED with exit %d (%ds)\n' "$name" "$rc" $((SECONDS - t0))
        failed+=("$name")
    fi
    return 0
}

section "install deps" bash scripts/install-deps.sh
section "cargo fmt" cargo fmt --all -- --check
section "cargo clippy" cargo clippy --all-targets -- -D warnings
# Test output is also kept to count every suite's results for the closing
# line (CI reads it).
TEST_LOG=$(mktemp)
trap 'rm -f "$TEST_LOG"' EXIT
run_tests() { "$@" 2>&1 | tee -a "$TEST_LOG"; return "${PIPESTATUS[0]}"; }
section "cargo test" run_tests cargo test --all-targets
# --all-targets leaves out doc tests; run them too when there is a library.
if [[ -f src/lib.rs ]]; then
    section "cargo test --doc" run_tests cargo test --doc
fi

# Totals over every suite, for the closing line.
read -r tests_passed tests_failed < <(
    awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
         END { print p + 0, f + 0 }' "$TEST_LOG"
)
printf '\n==================== summary (%ds) ====================\n' $((SECONDS - start_all))
if [[ ${#failed[@]} -gt 0 ]]; then
    printf 'FAILED: %s\n' "${failed[*]}"
    printf 'tests: %d passed, %d failed\n' "$tests_passed" "$tests_failed"
    exit 1
fi
echo "all checks passed"
printf 'tests: %d passed, %d failed\n' "$tests_passed" "$tests_failed"
