#!/usr/bin/env bash
# ansible-lint (production profile, .ansible-lint) over the playbooks and
# roles, then yamllint (.yamllint) over every YAML file git knows about.
# Usage: scripts/lint.sh [paths to lint instead of the defaults]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
cd "$REPO"

if [ ! -x "$VENV/bin/ansible-lint" ]; then
    echo "lint.sh: $VENV/bin/ansible-lint missing; run scripts/setup-host.sh" >&2
    exit 1
fi
export PATH="$VENV/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$REPO/.build/collections"

targets=()
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    for d in playbooks roles tests/integration/playbooks; do
        # Only directories with YAML in them: an empty roles/ is not an error.
        if [ -d "$d" ] && [ -n "$(find "$d" \( -name '*.yml' -o -name '*.yaml' \) -print -quit)" ]; then
            targets+=("$d")
        fi
    done
fi

rc=0
if [ "${#targets[@]}" -eq 0 ]; then
    echo "lint.sh: nothing for ansible-lint to lint" >&2
    rc=1
else
    echo "ansible-lint (production): ${targets[*]}"
    ansible-lint --offline -c "$REPO/.ansible-lint" "${targets[@]}" || rc=1
fi

# yamllint over tracked and new YAML, the same set sanity copies.
mapfile -t yaml_files < <(git ls-files --cached --others --exclude-standard -- '*.yml' '*.yaml' \
    | while IFS= read -r f; do [ -f "$f" ] && printf '%s\n' "$f"; done)
if [ "${#yaml_files[@]}" -gt 0 ]; then
    echo "yamllint: ${#yaml_files[@]} files"
    yamllint -c "$REPO/.yamllint" --strict "${yaml_files[@]}" || rc=1
fi

if [ "$rc" -ne 0 ]; then
    echo "lint.sh: FAILED" >&2
fi
exit "$rc"
