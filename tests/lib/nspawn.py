"""systemd-nspawn test hosts: real systemd machines reached over SSH.

This machine has no systemd as PID 1, so tests of the systemd supervision
path boot their own hosts, following docs/test-hosts.md:

- build_host_image(cache_dir=None) -> path of a cached root directory
  (tests/lib/nspawn_image.py, re-exported here).
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
import time

from tests.lib.nspawn_cgroups import (
    _alive, _kill_and_remove_cgroups, _make_cgroup, _own_cgroups, _procs, process_state,
)
from tests.lib.nspawn_image import (
    BUILTIN_MODULES, DEFAULT_CACHE_DIR, IMAGE_VERSION, PACKAGES, _write, build_host_image,
)
from tests.lib.rootfs import _safe_rmtree, _unmount_all_under

__all__ = [
    "BRIDGE", "BUILTIN_MODULES", "DEFAULT_CACHE_DIR", "Fleet", "Host", "IMAGE_VERSION", "PACKAGES",
    "build_host_image", "cleanup_stale_fleets", "nspawn_available", "process_state",
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
