#!/usr/bin/env bash
# The project's demo command (README): set the host up, start a local
# registry on 127.0.0.1:5055 (it keeps running afterwards, so the demo can
# be re-run and the image pulled again), then run playbooks/demo.yml.
#
# Stop the registry: kill "$(cat /var/lib/intermodal-demo/registry.pid)"
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
DEMO_DIR=/var/lib/intermodal-demo
REG_ADDR=127.0.0.1:5055
REG_CONFIG="$DEMO_DIR/registry.yml"
REG_PIDFILE="$DEMO_DIR/registry.pid"
REG_LOG="$DEMO_DIR/registry.log"

bash "$REPO/scripts/setup-host.sh"

registry_up() {
    "$VENV/bin/python" - "$REG_ADDR" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen("http://%s/v2/" % sys.argv[1], timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

start_registry() {
    mkdir -p "$DEMO_DIR/registry"
    chmod 0700 "$DEMO_DIR"
    cat > "$REG_CONFIG" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $DEMO_DIR/registry
  delete:
    enabled: true
http:
  addr: $REG_ADDR
EOF
    # setsid + nohup: the registry outlives this script and its terminal.
    setsid nohup /usr/bin/docker-registry serve "$REG_CONFIG" \
        >>"$REG_LOG" 2>&1 </dev/null &
    echo $! > "$REG_PIDFILE"
    for _ in $(seq 1 50); do
        if registry_up; then
            echo "demo.sh: registry started on $REG_ADDR (pid $(cat "$REG_PIDFILE"), log $REG_LOG)"
            return 0
        fi
        sleep 0.2
    done
    echo "demo.sh: the registry did not come up on $REG_ADDR; last log lines:" >&2
    tail -n 20 "$REG_LOG" >&2 || true
    return 1
}

if registry_up; then
    echo "demo.sh: registry already answering on $REG_ADDR"
else
    start_registry
fi

cd "$REPO"
export ANSIBLE_COLLECTIONS_PATH="$REPO/.build/collections"
export ANSIBLE_PYTHON_INTERPRETER="$VENV/bin/python"
exec "$VENV/bin/ansible-playbook" -i localhost, -c local "$REPO/playbooks/demo.yml" "$@"
