"""_cgroups.Cgroup against the real kernel of this host.

This host is hybrid (v1 controllers, cgroup2 with only hugetlb), so these
exercise the v1 mapping for real: a memory limit gets an allocation
OOM-killed, a pids limit makes fork fail, a CPU quota shows in cgroupfs and
throttles a busy loop, limits change live under the same process, stats are
read, and kill_all empties a cgroup whose processes keep forking. On a v2 host
(the qemu VM stage) the same tests run against the v2 mapping unchanged.

Each test works below its own intermodal-test-<random> parent, removed with
every process in it afterwards, even on failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

# pytest fixtures: pytest finds them by name in this module's namespace.
from tests.integration.cgroup_fixtures import cgroup_parent, procs  # noqa: F401  # pylint: disable=unused-import
from ansible_collections.intermodal.containers.plugins.module_utils._cgroups import (
    Cgroup,
    CgroupError,
    normalize_limits,
)

pytestmark = pytest.mark.integration

PY = sys.executable
MIB = 1 << 20


def _cgroup(cgroup_parent, name, limits=None):
    layout, parent = cgroup_parent
    cgroup = Cgroup("%s/%s" % (parent, name), layout)
    assert cgroup.create() is True
    if limits:
        cgroup.apply(normalize_limits(limits))
    return cgroup


def _wait_for(condition, tries=500):
    for _attempt in range(tries):
        if condition():
            return
        time.sleep(0.02)


def _file(cgroup, controller, name):
    with open(cgroup.file(controller, name)) as handle:
        return handle.read().strip()


def test_create_is_idempotent_and_remove_cleans_every_hierarchy(cgroup_parent):
    cgroup = _cgroup(cgroup_parent, "plain")
    assert cgroup.exists()
    assert cgroup.create() is False
    dirs = cgroup.dirs()
    assert len(dirs) >= 1 and all(os.path.isdir(d) for d in dirs)
    if cgroup.where("cpuset") == "v1":
        # A new v1 cpuset must not be empty, or no process could join it.
        assert _file(cgroup, "cpuset", "cpuset.cpus") and _file(cgroup, "cpuset", "cpuset.mems")
    assert cgroup.complete()
    if len(dirs) > 1:
        # A cgroup missing from one hierarchy still exists, is not complete, and create() mends it.
        os.rmdir(dirs[-1])
        assert cgroup.exists() and not cgroup.complete()
        assert cgroup.create() is True and cgroup.complete()
    assert cgroup.remove() is True
    assert not any(os.path.isdir(d) for d in dirs)
    assert not cgroup.exists()
    assert cgroup.remove() is False


def test_memory_limit_gets_an_allocation_oom_killed(cgroup_parent, procs):
    cgroup = _cgroup(cgroup_parent, "oom", {"memory": "32m", "memory_swap": "32m"})
    assert cgroup.read()["memory"] == 32 * MIB
    # b"x" * n writes every page, so the allocation is really charged.
    hog = procs.start_in(cgroup, [PY, "-c", "b = b'x' * (256 << 20); print('survived', len(b))"],
                         stdout=subprocess.PIPE)
    out, _err = hog.communicate(timeout=120)
    assert hog.returncode == -signal.SIGKILL, (hog.returncode, out)
    assert b"survived" not in out
    stats = cgroup.stats()
    assert stats["oom_kills"] >= 1, stats
    assert stats["memory_limit"] == 32 * MIB

    # The same allocation fits once the limit is raised.
    cgroup.apply(normalize_limits({"memory": "512m", "memory_swap": "512m"}))
    ok = procs.start_in(cgroup, [PY, "-c", "b = b'x' * (256 << 20); print('survived', len(b))"],
                        stdout=subprocess.PIPE)
    out, _err = ok.communicate(timeout=120)
    assert ok.returncode == 0 and b"survived" in out


FORKER = r"""
import json, os, signal, sys
children, errors = [], []
for _ in range(10):
    try:
        pid = os.fork()
    except OSError as exc:
        errors.append(exc.errno)
        continue
    if pid == 0:
        signal.pause()
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
print(json.dumps({"forked": len(children), "errors": errors}))
"""


def test_pids_limit_makes_fork_fail(cgroup_parent, procs):
    cgroup = _cgroup(cgroup_parent, "pids", {"pids_limit": 4})
    assert _file(cgroup, "pids", "pids.max") == "4"
    proc = procs.start_in(cgroup, [PY, "-c", FORKER], stdout=subprocess.PIPE)
    out, _err = proc.communicate(timeout=60)
    report = json.loads(out)
    # The python process itself is one of the 4.
    assert report["forked"] == 3, report
    assert len(report["errors"]) == 7 and set(report["errors"]) == {11}, report  # EAGAIN

    cgroup.apply(normalize_limits({"pids_limit": 0}))
    assert cgroup.read()["pids_limit"] is None
    proc = procs.start_in(cgroup, [PY, "-c", FORKER], stdout=subprocess.PIPE)
    out, _err = proc.communicate(timeout=60)
    assert json.loads(out) == {"forked": 10, "errors": []}


BUSY = "import time\nend = time.time() + 1.0\nwhile time.time() < end:\n    pass\n"


def test_cpu_quota_is_in_cgroupfs_and_throttles_usage(cgroup_parent, procs):
    cgroup = _cgroup(cgroup_parent, "cpu", {"cpus": 0.2, "cpu_shares": 512})
    if cgroup.where("cpu") == "v1":
        assert _file(cgroup, "cpu", "cpu.cfs_quota_us") == "20000"
        assert _file(cgroup, "cpu", "cpu.cfs_period_us") == "100000"
        assert _file(cgroup, "cpu", "cpu.shares") == "512"
    else:
        assert _file(cgroup, "cpu", "cpu.max") == "20000 100000"
    assert cgroup.read()["cpus"] == 0.2 and cgroup.read()["cpu_shares"] == 512
    before = cgroup.stats()["cpu_usage_ns"]
    busy = procs.start_in(cgroup, [PY, "-c", BUSY])
    assert busy.wait(timeout=60) == 0
    after = cgroup.stats()["cpu_usage_ns"]
    assert after > before
    stat = dict(line.split() for line in _file(cgroup, "cpu", "cpu.stat").splitlines())
    # A second of busy loop under a 20 ms per 100 ms quota is throttled in several periods.
    assert int(stat["nr_throttled"]) > 0, stat


def test_limits_change_live_under_the_same_process(cgroup_parent, procs):
    cgroup = _cgroup(cgroup_parent, "live", {"memory": "64m", "pids_limit": 50, "cpus": 1})
    sleeper = procs.start_in(cgroup, ["sleep", "300"])
    _wait_for(lambda: sleeper.pid in cgroup.pids())
    assert cgroup.pids() == [sleeper.pid]

    changed = cgroup.apply(normalize_limits({"memory": "128m", "pids_limit": 80, "cpus": 1.5}))
    assert changed == ["memory", "cpus", "pids_limit"]
    assert sleeper.poll() is None, "a live change must not touch the process"
    assert cgroup.pids() == [sleeper.pid]
    limits = cgroup.read()
    assert (limits["memory"], limits["pids_limit"], limits["cpus"]) == (128 * MIB, 80, 1.5)
    assert cgroup.apply(normalize_limits({"memory": "128m", "pids_limit": 80, "cpus": 1.5})) == []

    # Back to unlimited, still live.
    assert cgroup.apply(normalize_limits({"memory": -1, "pids_limit": -1, "cpus": 0})) == ["memory", "cpus", "pids_limit"]
    assert {k: cgroup.read()[k] for k in ("memory", "pids_limit", "cpus")} == {
        "memory": None, "pids_limit": None, "cpus": None}
    assert sleeper.poll() is None


def test_memory_and_swap_order_is_safe_both_ways(cgroup_parent):
    """memory.limit must never exceed memsw.limit on v1: raising and lowering both need the right order."""
    cgroup = _cgroup(cgroup_parent, "order", {"memory": "64m", "memory_swap": "128m"})
    cgroup.apply(normalize_limits({"memory": "256m", "memory_swap": "512m"}))
    assert (cgroup.read()["memory"], cgroup.read()["memory_swap"]) == (256 * MIB, 512 * MIB)
    cgroup.apply(normalize_limits({"memory": "16m", "memory_swap": "20m"}))
    assert (cgroup.read()["memory"], cgroup.read()["memory_swap"]) == (16 * MIB, 20 * MIB)
    cgroup.apply(normalize_limits({"memory": -1, "memory_swap": -1}))
    assert (cgroup.read()["memory"], cgroup.read()["memory_swap"]) == (None, None)


def test_stats_report_memory_cpu_and_pids(cgroup_parent, procs):
    cgroup = _cgroup(cgroup_parent, "stats", {"memory": "256m"})
    script = "import sys\nb = b'x' * (40 << 20)\nprint('ready', flush=True)\nsys.stdin.read()\n"
    holder = procs.start_in(cgroup, [PY, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"ready"
    stats = cgroup.stats()
    assert stats["memory_usage"] >= 40 * MIB, stats
    assert stats["memory_limit"] == 256 * MIB
    assert stats["cpu_usage_ns"] > 0
    assert stats["pids_current"] == 1
    assert stats["oom_kills"] == 0
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0


def test_kill_all_empties_a_forking_cgroup_and_remove_refuses_while_busy(cgroup_parent, procs):
    cgroup = _cgroup(cgroup_parent, "kill")
    parent = procs.start_in(cgroup, ["sh", "-c", "for i in 1 2 3 4 5; do sleep 300 & done; wait"])
    _wait_for(lambda: len(cgroup.pids()) == 6)
    assert len(cgroup.pids()) == 6
    with pytest.raises(CgroupError, match="not empty"):
        cgroup.remove()
    assert cgroup.kill_all() == 6
    assert cgroup.pids() == []
    assert parent.wait(timeout=10) == -signal.SIGKILL
    assert cgroup.remove() is True


def test_add_pid_moves_a_running_process_in_every_hierarchy(cgroup_parent, procs):
    cgroup = _cgroup(cgroup_parent, "move")
    sleeper = procs.start(["sleep", "300"])
    cgroup.add_pid(sleeper.pid)
    assert cgroup.pids() == [sleeper.pid]
    with open("/proc/%d/cgroup" % sleeper.pid) as handle:
        lines = handle.read().splitlines()
    for controller in ("memory", "pids", "cpu"):
        if cgroup.where(controller) == "v1":
            line = [entry for entry in lines if controller in entry.split(":")[1].split(",")][0]
            assert line.split(":", 2)[2] == "/" + cgroup.relpath
    with pytest.raises(CgroupError, match="no process with pid"):
        cgroup.add_pid(2 ** 22 + 7)


def _a_disk():
    """A whole disk with a /dev node (throttling rules apply to disks, not partitions)."""
    for name in sorted(os.listdir("/sys/block")):
        if name.startswith(("loop", "ram", "zram")):
            continue
        with open("/sys/block/%s/size" % name) as handle:
            if int(handle.read()) and os.path.exists("/dev/" + name):
                return "/dev/" + name
    return None


def test_cpuset_and_blkio_are_written_and_read_back(cgroup_parent):
    cgroup = _cgroup(cgroup_parent, "io")
    limits = {"cpuset_cpus": "0", "cpuset_mems": "0", "blkio_weight": 300}
    device = _a_disk()
    has_device = device is not None
    if has_device:
        rdev = os.stat(device).st_rdev
        major, minor = os.major(rdev), os.minor(rdev)
    if has_device:
        limits["device_read_bps"] = [{"path": device, "rate": "1m"}]
        limits["device_write_bps"] = [{"path": device, "rate": 2 * MIB}]
    normal = normalize_limits(limits)
    assert set(cgroup.apply(normal)) >= {"cpuset_cpus", "blkio_weight"}
    assert cgroup.apply(normal) == []
    read = cgroup.read()
    assert read["cpuset_cpus"] == "0" and read["blkio_weight"] == 300
    if has_device:
        assert [(d["major"], d["minor"], d["rate"]) for d in read["device_read_bps"]] == [(major, minor, MIB)]
        assert [(d["major"], d["minor"], d["rate"]) for d in read["device_write_bps"]] == [(major, minor, 2 * MIB)]
        # An empty list removes the rules.
        assert cgroup.apply(normalize_limits({"device_read_bps": [], "device_write_bps": []})) == [
            "device_read_bps", "device_write_bps"]
        assert cgroup.read()["device_read_bps"] is None
    # Back to the defaults: the parent's CPUs and the kernel's weight, read back as None.
    cgroup.apply(normalize_limits({"cpuset_cpus": None}))  # None in the input means "not managed"
    assert cgroup.read()["cpuset_cpus"] == "0"
    cgroup.apply({"cpuset_cpus": None, "blkio_weight": None})  # normalised None: back to the default
    assert cgroup.read()["cpuset_cpus"] is None and cgroup.read()["blkio_weight"] is None
