"""The cached root image of the systemd-nspawn test hosts (tests/lib/nspawn.py).

build_host_image(cache_dir=None, timings=None) -> path of a root directory:
`debootstrap --variant=minbase bookworm` with systemd, sshd, python3, crun and
runc baked in (the hosts have no NAT and no DNS), configured for nspawn (see
_configure_image).  Built once under /var/cache/intermodal-tests; a lock file
makes concurrent builders share one build.  See docs/test-hosts.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

from tests.lib.rootfs import _file_lock, _safe_rmtree, _unmount_all_under, apt_mirror, debian_arch

DEFAULT_CACHE_DIR = "/var/cache/intermodal-tests"
SUITE = "bookworm"
# Bump when anything that ends up in the image changes: it is the cache key.
IMAGE_VERSION = "1"
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-requests",
    "iproute2", "procps", "iptables", "crun", "runc",
    # modprobe of the built-in modules listed in modules.builtin
    "kmod",
]
# Built into this machine's kernel (which has no module support); listed in
# each host's modules.builtin so `modprobe` inside a host succeeds.
BUILTIN_MODULES = [
    "kernel/fs/overlayfs/overlay.ko",
    "kernel/net/bridge/bridge.ko",
    "kernel/net/bridge/br_netfilter.ko",
    "kernel/drivers/net/veth.ko",
    "kernel/net/netfilter/nf_tables.ko",
]

# ---- what is baked into the image ------------------------------------------------

# nspawn mounts the v1 controllers read-only into the host, so memory limits
# set by the host's systemd are silently not written.  Remounting each one rw
# (remount,bind: a plain remount gives EBUSY) and re-executing systemd fixes it.
_CGROUP_RW_UNIT = """[Unit]
Description=Make the cgroup controllers writable inside systemd-nspawn
ConditionVirtualization=systemd-nspawn
DefaultDependencies=no
After=systemd-remount-fs.service
Before=sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for d in /sys/fs/cgroup/*/; do mount -o remount,bind,rw "$d"; done'
ExecStart=/bin/systemctl daemon-reexec

[Install]
WantedBy=sysinit.target
"""

_SYSTEM_CONF = """[Manager]
# A test host must shut down quickly.
DefaultTimeoutStopSec=10s
"""

# Units that only slow a test host down or fail without hardware.
_MASKED_UNITS = [
    "systemd-networkd-wait-online.service", "apt-daily.timer", "apt-daily-upgrade.timer",
    "e2scrub_all.timer", "fstrim.timer", "systemd-timesyncd.service",
    "getty@tty1.service", "console-getty.service",
]


def _write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _mask(root, unit):
    link = os.path.join(root, "etc/systemd/system", unit)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink("/dev/null", link)


def _configure_image(root):
    _write(os.path.join(root, "etc/systemd/system/intermodal-cgroup-rw.service"), _CGROUP_RW_UNIT)
    _write(os.path.join(root, "etc/systemd/system.conf.d/intermodal-tests.conf"), _SYSTEM_CONF)
    for unit in _MASKED_UNITS:
        _mask(root, unit)
    subprocess.run(["chroot", root, "systemctl", "enable", "intermodal-cgroup-rw.service",
                    "systemd-networkd.service", "ssh.service"],
                   check=True, capture_output=True)
    # Per-host files are written at copy time; the image holds no identity.
    for rel in ("etc/machine-id", "var/lib/dbus/machine-id"):
        path = os.path.join(root, rel)
        if os.path.lexists(path):
            os.unlink(path)
    _write(os.path.join(root, "etc/machine-id"), "")
    shutil.rmtree(os.path.join(root, "var/cache/apt/archives"), ignore_errors=True)
    os.makedirs(os.path.join(root, "var/cache/apt/archives/partial"), exist_ok=True)
    shutil.rmtree(os.path.join(root, "var/lib/apt/lists"), ignore_errors=True)
    os.makedirs(os.path.join(root, "var/lib/apt/lists/partial"), exist_ok=True)


def build_host_image(cache_dir=None, timings=None):
    """Path of the cached host root directory, built on first use.

    Needs root, debootstrap and the apt mirror configured on this machine.
    If `timings` is a dict, it gets "debootstrap" and "total" seconds when a
    build happens.
    """
    cache_dir = cache_dir or os.environ.get("INTERMODAL_TEST_CACHE", DEFAULT_CACHE_DIR)
    os.makedirs(cache_dir, exist_ok=True)
    dest = os.path.join(cache_dir, "nspawn-%s-%s-v%s" % (SUITE, debian_arch(), IMAGE_VERSION))
    stamp = os.path.join(dest, ".intermodal-complete")
    if os.path.exists(stamp):
        return dest
    with _file_lock(dest + ".lock"):
        if os.path.exists(stamp):  # built by whoever held the lock before us
            return dest
        # Left by a build that was killed: nobody else builds while we hold the lock.
        for entry in os.listdir(cache_dir):
            if entry.startswith("nspawn-build-"):
                _safe_rmtree(os.path.join(cache_dir, entry))
        started = time.monotonic()
        work = tempfile.mkdtemp(prefix="nspawn-build-", dir=cache_dir)
        target = os.path.join(work, "rootfs")
        try:
            proc = subprocess.run(
                ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
                 SUITE, target, apt_mirror(SUITE)],
                capture_output=True, text=True, check=False,
            )
            _unmount_all_under(target)
            if proc.returncode != 0:
                raise RuntimeError("debootstrap for the nspawn host image failed (%d):\n%s"
                                   % (proc.returncode, (proc.stdout + proc.stderr)[-4000:]))
            if timings is not None:
                timings["debootstrap"] = time.monotonic() - started
            _configure_image(target)
            with open(os.path.join(target, ".intermodal-complete"), "w") as f:
                f.write("packages: %s\n" % " ".join(PACKAGES))
            if os.path.exists(dest):  # a half-built leftover of a killed build
                _safe_rmtree(dest)
            os.rename(target, dest)
            if timings is not None:
                timings["total"] = time.monotonic() - started
        finally:
            _safe_rmtree(work)
    return dest
