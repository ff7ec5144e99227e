#!/usr/bin/env bash
# The project's test command (README): set the host up, then run every
# stage and fail at the end if any stage failed.
#   1. pytest tests/unit tests/integration  (no tests collected = failure)
#   1b. the cgroup v2 tests on one qemu VM  (SKIP_V2_VM=1 skips)
#   2. ansible-test sanity                 (scripts/sanity.sh)
#   3. ansible-lint + yamllint              (scripts/lint.sh)
#
# Usage: scripts/test.sh [extra pytest args, e.g. -k registry]
# Env:   SKIP_SANITY=1 / SKIP_LINT=1 to skip those stages while iterating,
#        SKIP_SETUP=1 to skip scripts/setup-host.sh.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1

if [ "${SKIP_SETUP:-0}" != 1 ]; then
    bash "$REPO/scripts/setup-host.sh" || { echo "test.sh: setup-host.sh failed" >&2; exit 1; }
fi

VENV="$REPO/.venv"
export PATH="$VENV/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$REPO/.build/collections"
# Modules run on localhost with the venv's Python, which has requests & co.
export ANSIBLE_PYTHON_INTERPRETER="$VENV/bin/python"
export PYTHONDONTWRITEBYTECODE=1

declare -a NAMES=() RESULTS=() TIMES=()
failed=0

stage() {
    local name="$1" start rc
    shift
    printf '\n===== %s =====\n' "$name"
    start=$(date +%s)
    "$@"
    rc=$?
    NAMES+=("$name")
    TIMES+=("$(( $(date +%s) - start ))s")
    if [ "$rc" -eq 0 ]; then
        RESULTS+=("ok")
    else
        RESULTS+=("FAILED (exit $rc)")
        failed=1
    fi
}

run_pytest() {
    local rc
    "$VENV/bin/python" -m pytest tests/unit tests/integration \
        -p no:cacheprovider --timeout=900 -q "$@"
    rc=$?
    if [ "$rc" -eq 5 ]; then
        # pytest's "no tests collected": a run that tested nothing is a failure.
        echo "test.sh: pytest collected no tests" >&2
    fi
    return "$rc"
}

run_v2_vm() {
    # One qemu (TCG) VM with real cgroup v2, booted once for these tests:
    # its own stage because it costs minutes (docs/test-hosts.md).
    local rc
    INTERMODAL_V2_VM=1 "$VENV/bin/python" -m pytest -m cgroupv2 tests/integration/test_cgroup_v2*.py \
        -p no:cacheprovider --timeout=1800 -q
    rc=$?
    [ "$rc" -eq 5 ] && echo "test.sh: the cgroup v2 stage collected no tests" >&2
    return "$rc"
}

stage "pytest (unit + integration)" run_pytest "$@"
if [ "${SKIP_V2_VM:-0}" = 1 ]; then
    NAMES+=("cgroup v2 VM (qemu)"); RESULTS+=("skipped (SKIP_V2_VM=1)"); TIMES+=("-")
else
    stage "cgroup v2 VM (qemu)" run_v2_vm
fi
if [ "${SKIP_SANITY:-0}" = 1 ]; then
    NAMES+=("ansible-test sanity"); RESULTS+=("skipped (SKIP_SANITY=1)"); TIMES+=("-")
else
    stage "ansible-test sanity" bash "$REPO/scripts/sanity.sh"
fi
if [ "${SKIP_LINT:-0}" = 1 ]; then
    NAMES+=("ansible-lint + yamllint"); RESULTS+=("skipped (SKIP_LINT=1)"); TIMES+=("-")
else
    stage "ansible-lint + yamllint" bash "$REPO/scripts/lint.sh"
fi

printf '\n===== summary =====\n'
for i in "${!NAMES[@]}"; do
    printf '%-30s %-28s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}"
done
if [ "$failed" -ne 0 ]; then
    echo "test.sh: FAILED"
    exit 1
fi
echo "test.sh: all stages passed"
