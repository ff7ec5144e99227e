"""cgroup and process helpers of the systemd-nspawn test hosts (tests/lib/nspawn.py).

Each host runs in its own cgroup in every mounted hierarchy; these find the
launcher's own cgroups, make per-host children (v1 cpuset children need
cpus and mems), and kill and remove them on the way out, telling zombies from
live processes by /proc/PID/status (this machine's PID 1 reaps late).
"""

from __future__ import annotations

import os
import signal
import time


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
