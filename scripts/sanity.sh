#!/usr/bin/env bash
# ansible-test sanity for intermodal.containers, without Docker.
#
# ansible-test must run from .../ansible_collections/<ns>/<name>, and the
# repository root is the collection root, so the files git knows about
# (tracked, plus untracked-but-not-ignored) are copied into a temporary
# tree of that shape. The sanity tools (pylint, mypy, validate-modules ...)
# are installed by ansible-test itself into cached venvs under
# ~/.ansible/test/venv (--venv --requirements), so a re-run is quick.
#
# Usage: scripts/sanity.sh [extra ansible-test sanity args, e.g. --test pep8]
# Env:   SANITY_PYTHON=3.11 to test one Python only (default: every supported
#        version installed), KEEP_SANITY_TREE=1 to keep the copy.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
# Empty: every supported Python found (compile/import per version).
PY="${SANITY_PYTHON:-}"

if [ ! -x "$VENV/bin/ansible-test" ]; then
    echo "sanity.sh: $VENV/bin/ansible-test missing; run scripts/setup-host.sh" >&2
    exit 1
fi

# ansible-test bootstraps pip into each sanity venv with a get-pip script it
# downloads from a host that is not reachable here. Give it a stand-in in
# its cache: ensurepip (python3-venv) provides pip, which then installs the
# exact pip version ansible-test asked for from the package index.
PIP_VERSION="$(sed -n "s/^ *pip='\([0-9.]*\)',*$/\1/p" \
    "$("$VENV/bin/python" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_internal/python_requirements.py" | head -n1)"
GET_PIP="$HOME/.ansible/test/cache/get_pip_${PIP_VERSION//./_}.py"
if [ -n "$PIP_VERSION" ] && ! grep -q 'intermodal stand-in' "$GET_PIP" 2>/dev/null; then
    mkdir -p "$(dirname "$GET_PIP")"
    cat > "$GET_PIP" <<'PYEOF'
"""intermodal stand-in for get-pip.py (written by scripts/sanity.sh)."""
import subprocess
import sys

# In a child: ensurepip sets PIP_CONFIG_FILE=/dev/null in its own process,
# which would hide the host's pip configuration (index, CA) from the install.
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
# get-pip.py's own flags; everything else is pip install arguments.
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
PYEOF
fi

WORK="$(mktemp -d /tmp/intermodal-sanity.XXXXXX)"
# shellcheck disable=SC2317  # called through the EXIT trap
cleanup() {
    if [ "${KEEP_SANITY_TREE:-0}" = 1 ]; then
        echo "sanity.sh: tree kept at $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

TREE="$WORK/ansible_collections/intermodal/containers"
mkdir -p "$TREE"

# Copy what git would ship: tracked and new-but-not-ignored files that
# still exist in the work tree (a deleted-but-uncommitted file is skipped).
(
    cd "$REPO"
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do
            if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
        done
) | rsync -a --from0 --files-from=- "$REPO/" "$TREE/"

# A fresh repository so ansible-test's git-based file listing sees exactly
# these files (and does not climb up into the real checkout).
(
    cd "$TREE"
    git init -q
    git add -A
    git -c user.name=sanity -c user.email=sanity@localhost \
        commit -q --no-verify -m "sanity snapshot"
)

cd "$TREE"
export ANSIBLE_COLLECTIONS_PATH="$WORK"
# The multi-version tests (compile, import) look for pythonX.Y on PATH. pyenv
# shims refuse versions that are not active, so link each installed pyenv
# interpreter by its pythonX.Y name into a directory put first on PATH. A
# version not installed at all is skipped by ansible-test with a warning.
mkdir -p "$WORK/bin"
for exe in "$HOME"/.pyenv/versions/3.*/bin/python3.[0-9] "$HOME"/.pyenv/versions/3.*/bin/python3.[0-9][0-9]; do
    # Older than the collection's floor (tests/config.yml): nothing to test.
    case "${exe##*/}" in python3.[0-8]) continue ;; esac
    if [ -x "$exe" ] && [ ! -e "$WORK/bin/${exe##*/}" ]; then
        ln -s "$exe" "$WORK/bin/${exe##*/}"
    fi
done
export PATH="$VENV/bin:$WORK/bin:$PATH"
py_args=()
if [ -n "$PY" ]; then
    py_args=(--python "$PY")
fi
set +e
"$VENV/bin/ansible-test" sanity --venv --requirements "${py_args[@]}" --color no "$@"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
    echo "sanity.sh: ansible-test sanity failed (exit $rc)" >&2
fi
exit "$rc"
