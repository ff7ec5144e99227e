"""systemd-nspawn test hosts: real systemd machines reached over SSH.

This machine has no systemd as PID 1, so tests of the systemd supervision
path boot their own hosts, following docs/test-hosts.md:

- build_host_image(cache_dir=None) -> path of a cached root directory: a
  `debootstrap --variant=minbase bookworm` root with systemd, sshd, python3,
  crun and runc baked in (the hosts have no NAT and no DNS), configured for
  nspawn (see _configure_image).  Built once under /var/cache/intermodal-tests;
  a lock file makes concurrent builders share one build.
- Fleet(names, workdir): hosts on a bridge inside a network namespace that the
  fleet creates (intermodal-fleet-<id>), so the hosts can reach nothing but
  each other and the bridge, and nothing outside can reach them.  Each host
  is a full copy of the cached root (an overlayfs root breaks overlay mounts
  inside the host), runs in its own cgroup in every hierarchy, and gets a
  static address, a per-fleet root SSH key and an /etc/hosts naming all
  hosts.  .start() boots all and waits for SSH; .stop() shuts them down and
  removes every process, cgroup, link and file it made.

ssh and ansible reach the hosts only through `ip netns exec <ns>`.
systemd-nspawn itself is started with `nsenter --net=` rather than
`ip netns exec`, because the latter remounts /sys and so hides the cgroup
hierarchies nspawn needs.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import shutil
import signal
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

SUBNET_PREFIX = "10.213.77."
BRIDGE_ADDR = SUBNET_PREFIX + "1"
PREFIX_LEN = 24
FIRST_HOST = 10
BRIDGE = "imtest0"
SSH_OPTIONS = [
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
    "-o", "ConnectTimeout=3",
]
CGROUP_ROOT = "/sys/fs/cgroup"

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


# ---- cgroups -----------------------------------------------------------------------

def _cgroup_mounts():
    """{hierarchy key: mountpoint}; key is the controller list as in
    /proc/self/cgroup ("memory", "cpu", "name=systemd", "" for cgroup2)."""
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fstype, _source, options = right.split()[:3]
            mnt = left.split()[4]
            if fstype == "cgroup2":
                mounts.setdefault("", mnt)
            elif fstype == "cgroup":
                opts = set(options.split(","))
                mounts.setdefault(frozenset(o for o in opts if o not in ("rw", "ro")), mnt)
    return mounts


def _own_cgroups():
    """[(mountpoint, own path)] for every mounted hierarchy, taken once: the
    content of /proc/self/cgroup changes as a process moves."""
    mounts = _cgroup_mounts()
    found = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _hid, ctrls, path = line.rstrip("\n").split(":", 2)
            if ctrls == "":
                mnt = mounts.get("")
            else:
                want = set(ctrls.split(","))
                mnt = next((m for k, m in mounts.items() if k != "" and want <= k), None)
            if mnt:
                found.append((mnt, path))
    return found


def _make_cgroup(mnt, own, parts):
    """Create own/parts[0]/parts[1]... under mnt; v1 cpuset children start
    empty, so copy cpus and mems from the parent at each level."""
    path = mnt + own.rstrip("/")
    for part in parts:
        parent, path = path, os.path.join(path, part)
        os.makedirs(path, exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if os.path.exists(os.path.join(path, knob)):
                with open(os.path.join(parent, knob)) as f:
                    value = f.read().strip()
                with open(os.path.join(path, knob), "w") as f:
                    f.write(value)
    return path


def _procs(cgroup_dir):
    pids = set()
    for dirpath, _dirs, files in os.walk(cgroup_dir):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    pids.update(int(x) for x in f.read().split())
            except OSError:
                pass
    return pids


def process_state(pid):
    """The State: letter of /proc/PID/status, or None when the pid is gone.
    This machine's PID 1 reaps orphans late, so kill -0 would see zombies."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("State:"):
                    return line.split()[1]
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _alive(pids):
    return {p for p in pids if process_state(p) not in (None, "Z", "X")}


def _kill_and_remove_cgroups(dirs, timeout=10.0):
    """SIGKILL everything left in `dirs` (and below), wait until only zombies
    remain, then remove the directories deepest first."""
    deadline = time.monotonic() + timeout
    while True:
        alive = set()
        for d in dirs:
            if os.path.isdir(d):
                alive |= _alive(_procs(d))
        if not alive:
            break
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError("processes %s survive SIGKILL in %s" % (sorted(alive), dirs))
        time.sleep(0.05)
    failed = []
    for d in dirs:
        if not os.path.isdir(d):
            continue
        subdirs = [dp for dp, _dn, _fn in os.walk(d)]
        for sub in sorted(subdirs, key=len, reverse=True):
            for _attempt in range(100):  # exiting tasks leave the cgroup a moment later
                try:
                    os.rmdir(sub)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                failed.append(sub)
    if failed:
        raise RuntimeError("could not remove cgroups %s" % failed)


# ---- the fleet -------------------------------------------------------------------

# One JSON file per live fleet, removed by a clean stop().
RECORD_DIR = "/run/intermodal-test-fleets"


def _start_time(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def cleanup_stale_fleets():
    """Remove what fleets of dead processes left behind (a SIGKILLed test
    run): the hosts' processes and cgroups, the network namespace, the tmpfs.
    Fleets whose owner still runs (a concurrent test run) are left alone.
    Returns the names of the fleets cleaned."""
    cleaned = []
    if not os.path.isdir(RECORD_DIR):
        return cleaned
    for entry in sorted(os.listdir(RECORD_DIR)):
        path = os.path.join(RECORD_DIR, entry)
        if not entry.endswith(".json"):
            continue
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        if rec.get("owner_start") and _start_time(rec["owner_pid"]) == rec["owner_start"]:
            continue
        try:
            _kill_and_remove_cgroups([d for d in rec.get("cgroups", []) if os.path.isdir(d)])
        except RuntimeError:
            continue  # try again next time rather than half-clean
        netns = rec.get("netns", "")
        if netns.startswith("intermodal-fleet-") and os.path.exists("/run/netns/" + netns):
            out = _run(["ip", "netns", "pids", netns], check=False).stdout.split()
            for pid in _alive(int(p) for p in out):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _run(["ip", "netns", "delete", netns], check=False)
        roots = rec.get("roots_dir")
        if roots and os.path.isdir(roots):
            try:
                _unmount_all_under(roots)
                _safe_rmtree(roots)
            except RuntimeError:
                continue
        os.unlink(path)
        cleaned.append(netns)
    return cleaned


def _run(cmd, check=True, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), proc.returncode,
                                                   (proc.stdout + proc.stderr)[-2000:]))
    return proc


def nspawn_available():
    """None if nspawn hosts can run here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "systemd-nspawn test hosts need root"
    for tool in ("systemd-nspawn", "debootstrap", "ip", "nsenter", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            return "%s is not installed (apt install systemd-container debootstrap " \
                   "iproute2 util-linux openssh-client)" % tool
    if not os.path.isdir(os.path.join(CGROUP_ROOT, "memory")) and \
            not os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
        return "no cgroup hierarchy mounted at %s" % CGROUP_ROOT
    return None


class Host:
    def __init__(self, name, address, root):
        self.name = name
        self.address = address
        self.root = root
        self.proc = None
        self.log_path = None
        self.cgroups = []
        self.leader = None
        self.boot_seconds = None


class Fleet:
    """Hosts named `names`, booted from copies of the cached image.

    Files live under `workdir` (host roots, logs, the SSH key, the inventory).
    Use as a context manager, or call start() and stop().
    """

    def __init__(self, names, workdir, image=None, boot_timeout=90.0, roots_on_tmpfs=True):
        self.id = secrets.token_hex(4)
        self.netns = "intermodal-fleet-" + self.id
        self.workdir = os.path.abspath(workdir)
        self.image = image
        self.boot_timeout = boot_timeout
        self.hosts = {}
        for i, name in enumerate(names):
            self.hosts[name] = Host(name, SUBNET_PREFIX + str(FIRST_HOST + i),
                                    os.path.join(self.workdir, "hosts", name))
        self.tmpfs_size = "%dm" % (1024 * len(self.hosts))
        self.key_path = os.path.join(self.workdir, "id_ed25519")
        self.inventory_path = os.path.join(self.workdir, "inventory.ini")
        self.timings = {}
        self._netns_made = False
        # Host roots on a tmpfs of the fleet's own: copying 240 MB there takes
        # about 1.3 s instead of 5 to 12 s on this disk, and removing it is an
        # unmount instead of a 14 s rmtree.  Overlay mounts inside work on it.
        self.roots_on_tmpfs = roots_on_tmpfs
        self.roots_dir = os.path.join(self.workdir, "hosts")
        self._tmpfs_mounted = False

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        os.makedirs(self.workdir, exist_ok=True)
        if self.image is None:
            self.image = build_host_image()
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "intermodal-fleet-" + self.id,
              "-f", self.key_path])
        cleanup_stale_fleets()
        self._record()
        self._make_network()
        started = time.monotonic()
        os.makedirs(self.roots_dir, exist_ok=True)
        if self.roots_on_tmpfs and not self._tmpfs_mounted:
            _run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=" + self.tmpfs_size,
                  "intermodal-fleet", self.roots_dir])
            self._tmpfs_mounted = True
        # Copies run side by side: cp of a 240 MB tree is mostly syscalls.
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(self.hosts)) as pool:
            list(pool.map(self._prepare_root, self.hosts.values()))
        self.timings["copy_roots"] = time.monotonic() - started
        self._write_inventory()
        started = time.monotonic()
        for host in self.hosts.values():
            self._boot(host)
        for host in self.hosts.values():
            self._wait_for_ssh(host)
        self.timings["boot_to_ssh_all"] = time.monotonic() - started
        return self

    def stop(self):
        """Shut the hosts down (SIGKILL after 15 s) and remove all they used."""
        errors = []
        mark = time.monotonic()
        for host in self.hosts.values():
            if host.proc is not None and host.proc.poll() is None:
                host.proc.send_signal(signal.SIGTERM)  # nspawn asks the host's systemd to halt
        for host in self.hosts.values():
            if host.proc is None:
                continue
            try:
                host.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                host.proc.kill()
                host.proc.wait()
        mark = self._lap("stop_shutdown", mark)
        fleet_dirs = set()
        for host in self.hosts.values():
            fleet_dirs.update(os.path.dirname(d) for d in host.cgroups)
            try:
                _kill_and_remove_cgroups(host.cgroups)
            except RuntimeError as exc:
                errors.append(str(exc))
            host.cgroups = []
        try:
            _kill_and_remove_cgroups(sorted(fleet_dirs))
        except RuntimeError as exc:
            errors.append(str(exc))
        mark = self._lap("stop_cgroups", mark)
        if self._netns_made:
            self._kill_netns_processes()  # e.g. ssh ControlPersist masters
            _run(["ip", "netns", "delete", self.netns], check=False)
            self._netns_made = False
        mark = self._lap("stop_network", mark)
        try:
            if self._tmpfs_mounted:
                _unmount_all_under(self.roots_dir)
                self._tmpfs_mounted = False
                os.rmdir(self.roots_dir)
            else:
                for host in self.hosts.values():
                    _safe_rmtree(host.root)
        except (OSError, RuntimeError) as exc:
            errors.append(str(exc))
        self._lap("stop_remove_roots", mark)
        if not errors and os.path.exists(self._record_path()):
            os.unlink(self._record_path())
        if errors:
            raise RuntimeError("fleet %s clean-up: %s" % (self.id, "; ".join(errors)))

    def _record_path(self):
        return os.path.join(RECORD_DIR, self.netns + ".json")

    def _record(self):
        """What a later run needs to clean up after this one if this process
        dies before stop(): its owner, cgroups, namespace and tmpfs."""
        os.makedirs(RECORD_DIR, exist_ok=True)
        record = {
            "owner_pid": os.getpid(), "owner_start": _start_time(os.getpid()),
            "netns": self.netns, "roots_dir": self.roots_dir,
            "cgroups": [mnt + own.rstrip("/") + "/" + self.netns for mnt, own in _own_cgroups()],
        }
        with open(self._record_path() + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(self._record_path() + ".tmp", self._record_path())

    def _lap(self, what, since):
        now = time.monotonic()
        self.timings[what] = now - since
        return now

    def reboot(self, name):
        """Power host `name` off and boot it again from the same root (what
        survives is what a real reboot keeps: the disk, not /run or mounts);
        waits for SSH."""
        host = self.hosts[name]
        if host.proc is not None and host.proc.poll() is None:
            host.proc.send_signal(signal.SIGTERM)
            try:
                host.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                host.proc.kill()
                host.proc.wait()
        _kill_and_remove_cgroups(host.cgroups)
        host.cgroups = []
        host.leader = None
        self._boot(host)
        self._wait_for_ssh(host)

    # -- setup steps -------------------------------------------------------------

    def _make_network(self):
        _run(["ip", "netns", "add", self.netns])
        self._netns_made = True
        ns = ["ip", "-n", self.netns]
        _run(ns + ["link", "set", "lo", "up"])
        _run(ns + ["link", "add", BRIDGE, "type", "bridge"])
        _run(ns + ["addr", "add", "%s/%d" % (BRIDGE_ADDR, PREFIX_LEN), "dev", BRIDGE])
        _run(ns + ["link", "set", BRIDGE, "up"])

    def _kill_netns_processes(self):
        for _attempt in range(50):
            out = _run(["ip", "netns", "pids", self.netns], check=False).stdout.split()
            pids = _alive(int(p) for p in out)
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)

    def _prepare_root(self, host):
        if os.path.exists(host.root):
            _safe_rmtree(host.root)
        os.makedirs(os.path.dirname(host.root), exist_ok=True)
        _run(["cp", "-a", "--reflink=auto", self.image, host.root])
        r = host.root
        _write(os.path.join(r, "etc/machine-id"), secrets.token_hex(16) + "\n", 0o444)
        _write(os.path.join(r, "etc/hostname"), host.name + "\n")
        hosts = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
        hosts += "".join("%s %s\n" % (h.address, h.name) for h in self.hosts.values())
        _write(os.path.join(r, "etc/hosts"), hosts)
        _write(os.path.join(r, "etc/systemd/network/10-host0.network"),
               "[Match]\nName=host0\n\n[Network]\nAddress=%s/%d\nLinkLocalAddressing=no\n"
               "IPv6AcceptRA=no\n" % (host.address, PREFIX_LEN))
        with open(self.key_path + ".pub") as f:
            _write(os.path.join(r, "root/.ssh/authorized_keys"), f.read(), 0o600)
        os.chmod(os.path.join(r, "root/.ssh"), 0o700)
        kver = os.uname().release
        moddir = os.path.join(r, "lib/modules", kver)
        _write(os.path.join(moddir, "modules.builtin"), "\n".join(BUILTIN_MODULES) + "\n")
        _write(os.path.join(moddir, "modules.order"), "")
        _run(["chroot", r, "depmod", kver])

    def _boot(self, host):
        # Our own cgroup per host in every hierarchy, so the hosts' systemds do
        # not share (and fight over) one payload cgroup.
        host.cgroups = [_make_cgroup(mnt, own, [self.netns, host.name])
                        for mnt, own in _own_cgroups()]
        procs_files = [os.path.join(d, "cgroup.procs") for d in host.cgroups]

        def enter_cgroups():
            pid = str(os.getpid()).encode()
            for path in procs_files:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, pid)
                finally:
                    os.close(fd)

        host.log_path = os.path.join(self.workdir, host.name + ".console.log")
        cmd = ["nsenter", "--net=/run/netns/" + self.netns,
               "systemd-nspawn", "-D", host.root, "-b", "-M", host.name,
               "--hostname=" + host.name, "--register=no", "--keep-unit",
               "--network-bridge=" + BRIDGE, "--capability=all",
               "--system-call-filter=add_key keyctl bpf"]
        with open(host.log_path, "wb") as log:
            host.started_at = time.monotonic()
            host.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=enter_cgroups,
                                         start_new_session=True)

    def _find_leader(self, host):
        """The host's PID 1 (its systemd), seen from here."""
        for pid in sorted(_procs(host.cgroups[0])):
            try:
                with open("/proc/%d/status" % pid) as f:
                    for line in f:
                        if line.startswith("NSpid:"):
                            ids = line.split()[1:]
                            if len(ids) == 2 and ids[1] == "1":
                                return pid
            except OSError:
                continue
        return None

    def _wait_for_ssh(self, host):
        deadline = host.started_at + self.boot_timeout
        while True:
            if host.proc.poll() is not None:
                raise RuntimeError("host %s: systemd-nspawn exited with %d; console log:\n%s"
                                   % (host.name, host.proc.returncode, self.console(host.name)))
            if self.ssh(host.name, ["true"], timeout=10).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("host %s: no SSH after %.0f s; console log:\n%s"
                                   % (host.name, self.boot_timeout, self.console(host.name)))
            time.sleep(0.2)
        host.boot_seconds = time.monotonic() - host.started_at
        self.timings["boot_to_ssh_" + host.name] = host.boot_seconds
        host.leader = self._find_leader(host)

    def _write_inventory(self):
        common = " ".join(SSH_OPTIONS[:4])
        lines = ["[fleet]"]
        for host in self.hosts.values():
            lines.append("%s ansible_host=%s" % (host.name, host.address))
        lines += [
            "", "[fleet:vars]", "ansible_user=root",
            "ansible_ssh_private_key_file=%s" % self.key_path,
            "ansible_ssh_common_args='%s'" % common,
            "ansible_python_interpreter=/usr/bin/python3", "",
        ]
        _write(self.inventory_path, "\n".join(lines))

    # -- using the hosts ---------------------------------------------------------

    def netns_cmd(self, cmd):
        """`cmd` run inside the fleet's network namespace."""
        return ["ip", "netns", "exec", self.netns] + list(cmd)

    def ssh_cmd(self, name, cmd):
        host = self.hosts[name]
        if not isinstance(cmd, str):
            cmd = " ".join(_quote(c) for c in cmd)
        return self.netns_cmd(["ssh", "-i", self.key_path] + SSH_OPTIONS
                              + ["root@" + host.address, cmd])

    def ssh(self, name, cmd, timeout=120, input=None):
        return subprocess.run(self.ssh_cmd(name, cmd), capture_output=True, text=True,
                              timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL, check=False)

    def run(self, name, cmd, via="ssh", check=False, timeout=120, input=None):
        """Run `cmd` (list, or a shell string) in host `name`; CompletedProcess.

        via="ssh" goes through sshd like Ansible does; via="nsenter" enters all
        the host's namespaces from its PID 1 (works before SSH is up)."""
        if via == "ssh":
            proc = self.ssh(name, cmd, timeout=timeout, input=input)
        else:
            leader = self.hosts[name].leader or self._find_leader(self.hosts[name])
            argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
            proc = subprocess.run(["nsenter", "-t", str(leader), "-a"] + argv,
                                  capture_output=True, text=True, timeout=timeout, input=input,
                                  stdin=None if input is not None else subprocess.DEVNULL, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError("%s: %r failed (%d):\n%s%s" % (name, cmd, proc.returncode,
                                                              proc.stdout, proc.stderr))
        return proc

    def copy_to(self, name, src, dest):
        """Copy a local file into host `name` at `dest` (over SSH)."""
        with open(src, "rb") as f:
            proc = subprocess.run(self.ssh_cmd(name, "cat > %s" % _quote(dest)), stdin=f,
                                  capture_output=True, timeout=300, check=False)
        if proc.returncode != 0:
            raise RuntimeError("copy of %s to %s:%s failed: %s" % (src, name, dest, proc.stderr))

    def ansible_playbook_cmd(self, playbook, *args, limit=None):
        """argv running ansible-playbook against this fleet, from inside the
        fleet's network namespace."""
        cmd = [shutil.which("ansible-playbook") or "ansible-playbook",
               "-i", self.inventory_path, playbook]
        if limit:
            cmd += ["--limit", limit]
        return self.netns_cmd(cmd + list(args))

    def console(self, name):
        path = self.hosts[name].log_path
        if not path or not os.path.exists(path):
            return ""
        with open(path, "rb") as f:
            return f.read()[-6000:].decode("utf-8", "replace")

    def memory(self, name):
        """{"rss_kib": sum of VmRSS of the host's processes (shared pages
        counted once per process), "pss_kib": sum of their Pss (shared pages
        split), "cgroup_bytes": memory.usage_in_bytes of the host's memory
        cgroup (None without v1 memory), "processes": how many}.  The host's
        root on tmpfs (about 240 MB) is in none of these."""
        host = self.hosts[name]
        pids = set()
        for d in host.cgroups:
            pids |= _procs(d)
        totals = {"VmRSS:": 0, "Pss:": 0}
        for pid in pids:
            for path in ("/proc/%d/status" % pid, "/proc/%d/smaps_rollup" % pid):
                try:
                    with open(path) as f:
                        for line in f:
                            key = line.split(" ", 1)[0].split("\t", 1)[0]
                            if key in totals:
                                totals[key] += int(line.split()[1])
                except OSError:
                    pass
        usage = None
        for d in host.cgroups:
            path = os.path.join(d, "memory.usage_in_bytes")
            if os.path.exists(path):
                with open(path) as f:
                    usage = int(f.read())
        return {"rss_kib": totals["VmRSS:"], "pss_kib": totals["Pss:"], "cgroup_bytes": usage,
                "processes": len(pids)}


def _quote(arg):
    import shlex
    return shlex.quote(arg)
