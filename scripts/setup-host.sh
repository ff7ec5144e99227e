#!/usr/bin/env bash
# Prepare a Debian 12 (bookworm) host, as root, for the demo and the tests:
#   1. Debian packages (runtimes, a registry binary, tools the tests use);
#   2. a Python venv at $REPO/.venv with requirements/test.txt;
#   3. .build/collections/ansible_collections/intermodal/containers -> repo,
#      so ANSIBLE_COLLECTIONS_PATH=$REPO/.build/collections finds the collection.
# Idempotent and fast on re-run: apt is skipped when every package is
# installed, pip when the venv's stamp matches the requirements' hash.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
STAMP="$VENV/.intermodal-requirements.sha256"

log() { printf '[setup-host] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host.sh: run as root (it installs Debian packages)" >&2
    exit 1
fi

APT_PACKAGES=(
    # build and tooling
    python3 python3-venv python3-dev gcc git rsync ca-certificates shellcheck
    # peers the integration tests and the demo use: registry, runtimes, images
    docker-registry apache2-utils crun runc busybox-static debootstrap
    uidmap fuse-overlayfs iproute2 procps util-linux xz-utils zstd e2fsprogs
    # test hosts: systemd-nspawn machines over SSH, qemu VMs (cgroup v2)
    systemd-container openssh-client qemu-utils qemu-system-x86
    # benchmarks only (pull comparisons)
    podman skopeo
)

missing_packages() {
    local p status
    for p in "${APT_PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
        [ "$status" = "installed" ] || printf '%s\n' "$p"
    done
}

# The packaged registry listens on :5000 on every interface; the tests and
# the demo start their own instances on 127.0.0.1 only, so keep it off.
disable_packaged_registry() {
    local pid
    if [ -x /etc/init.d/docker-registry ]; then
        /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
    fi
    # Only the instance serving the packaged config, matched on the full
    # command line; registries started by tests use other configs.
    for pid in $(pgrep -x -f '/usr/bin/docker-registry serve /etc/docker/registry/config.yml' || true); do
        kill "$pid" 2>/dev/null || true
    done
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now docker-registry >/dev/null 2>&1 || true
    elif command -v update-rc.d >/dev/null 2>&1; then
        update-rc.d docker-registry disable >/dev/null 2>&1 || true
    fi
}

install_apt() {
    local missing
    missing="$(missing_packages)"
    if [ -z "$missing" ]; then
        log "Debian packages: all present"
    else
        # shellcheck disable=SC2086
        log "Debian packages: installing" $missing
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends $missing
    fi
    # Cheap, and a previous run may have been interrupted before this.
    disable_packaged_registry
}

requirements_hash() {
    # Any change to the requirement files or the interpreter rebuilds.
    {
        cat "$REPO"/requirements/*.txt
        command -v python3
        python3 --version 2>&1
    } | sha256sum | cut -d' ' -f1
}

install_venv() {
    local want
    want="$(requirements_hash)"
    if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
        && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        log "venv: up to date ($VENV)"
        return
    fi
    if [ -e "$VENV" ] && ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        log "venv: broken, recreating"
        rm -rf "$VENV"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        log "venv: creating with $(command -v python3) ($(python3 --version 2>&1))"
        python3 -m venv "$VENV"
    fi
    log "venv: installing requirements/test.txt"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r "$REPO/requirements/test.txt"
    printf '%s\n' "$want" > "$STAMP"
}

link_collection() {
    local ns="$REPO/.build/collections/ansible_collections/intermodal"
    mkdir -p "$ns"
    if [ -L "$ns/containers" ] && [ "$(readlink "$ns/containers")" = "$REPO" ]; then
        return
    fi
    if [ -e "$ns/containers" ] && [ ! -L "$ns/containers" ]; then
        echo "setup-host.sh: $ns/containers exists and is not a symlink; remove it" >&2
        exit 1
    fi
    rm -f "$ns/containers"
    ln -s "$REPO" "$ns/containers"
    log "linked $ns/containers -> $REPO"
}

prepare_cgroups() {
    # crun refuses a hybrid cgroup host whose cgroup2 mount still carries a
    # controller (hugetlb, on this kind of machine). The operator's fix is to
    # mount it as a v1 hierarchy; runc needs nothing (docs/runtime.md).
    local changed
    changed=$(cd "$REPO" && "$VENV/bin/python" -c '
import sys
sys.path.insert(0, ".build/collections")
from ansible_collections.intermodal.containers.plugins.module_utils._runtime import fix_hybrid_hugetlb
print("yes" if fix_hybrid_hugetlb() else "no")') || { echo "setup-host.sh: cgroup preparation failed" >&2; exit 1; }
    if [ "$changed" = yes ]; then
        log "cgroups: mounted hugetlb as a v1 hierarchy so crun accepts this hybrid host"
    fi
}

install_apt
install_venv
link_collection
prepare_cgroups
log "done"
