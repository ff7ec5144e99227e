"""The cgroup v2 file mapping and layout detection, against a FAKE cgroupfs tree.

This host's cgroup2 mount only has hugetlb, so v2 semantics cannot be
exercised for real here: these tests build a fake unified hierarchy in a tmp
dir (files with the kernel's default contents) and check which files and
values _cgroups writes and how it reads them back. The fake replaces a file on
each write, where the kernel would merge io.max lines per device; tests that
depend on merging assert the planned writes instead. The same operations run
against a real v2 kernel in the qemu VM stage (tests/integration/test_cgroup_*).

Layout detection is fed mountinfo samples of v1, v2 and hybrid hosts, since a
single host only has one of them.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.intermodal.containers.plugins.module_utils._cgroups import (
    Cgroup,
    CgroupError,
    InvalidOption,
    Layout,
    detect_layout,
    normalize_limits,
)
from ansible_collections.intermodal.containers.plugins.module_utils._cgroup_task import CgroupTask
from ansible_collections.intermodal.containers.plugins.module_utils._cgroups_limits import shares_to_weight

MIB = 1 << 20
CONTROLLERS = "cpuset cpu io memory hugetlb pids"


def _put(path, text):
    with open(path, "w") as handle:
        handle.write(text)


def _get(path):
    with open(path) as handle:
        return handle.read()


def populate(directory, controllers):
    """What the kernel puts in a new v2 cgroup, for the given enabled controllers."""
    files = {"cgroup.controllers": " ".join(controllers), "cgroup.subtree_control": "", "cgroup.procs": "",
             "cgroup.freeze": "0", "cgroup.kill": "", "cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"}
    if "memory" in controllers:
        files.update({"memory.max": "max\n", "memory.swap.max": "max\n", "memory.low": "0\n",
                      "memory.current": "4096\n", "memory.peak": "8192\n",
                      "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"})
    if "cpu" in controllers:
        files.update({"cpu.max": "max 100000\n", "cpu.weight": "100\n"})
    if "cpuset" in controllers:
        files.update({"cpuset.cpus": "\n", "cpuset.mems": "\n", "cpuset.cpus.effective": "0-1\n"})
    if "pids" in controllers:
        files.update({"pids.max": "max\n", "pids.current": "0\n"})
    if "io" in controllers:
        files.update({"io.weight": "default 100\n", "io.max": ""})
    for name, text in files.items():
        _put(os.path.join(directory, name), text)


@pytest.fixture
def v2root(tmp_path):
    root = tmp_path / "unified"
    root.mkdir()
    _put(str(root / "cgroup.controllers"), CONTROLLERS + "\n")
    _put(str(root / "cgroup.subtree_control"), "\n")
    _put(str(root / "cgroup.procs"), "1\n")
    return str(root)


def v2layout(root, controllers=CONTROLLERS):
    return Layout("v2", unified=root, v1={}, unified_controllers=set(controllers.split()))


def made(root, relpath, controllers=("cpuset", "cpu", "io", "memory", "pids")):
    """Create relpath level by level and let the fake kernel fill each new directory."""
    layout = v2layout(root)
    parts = relpath.split("/")
    for i in range(1, len(parts) + 1):
        cgroup = Cgroup("/".join(parts[:i]), layout)
        if not cgroup.exists():
            assert cgroup.create() is True
            populate(cgroup.dir_of("memory"), controllers)
    return cgroup


def test_create_enables_only_missing_controllers_down_the_path(v2root):
    root_control = os.path.join(v2root, "cgroup.subtree_control")
    _put(root_control, "memory pids\n")
    made(v2root, "intermodal")
    # The root already had memory and pids; only the others were added. hugetlb is not ours.
    assert _get(root_control) == "+cpu +cpuset +io"
    _put(root_control, "cpuset cpu io memory pids\n")  # how the kernel shows it after that write
    cgroup = made(v2root, "intermodal/web")
    assert _get(root_control) == "cpuset cpu io memory pids\n", "nothing missing, nothing written"
    assert _get(os.path.join(v2root, "intermodal", "cgroup.subtree_control")) == "+cpu +cpuset +io +memory +pids"
    assert cgroup.dirs() == [os.path.join(v2root, "intermodal", "web")]
    assert set(cgroup.paths) == {"memory", "cpu", "cpuacct", "cpuset", "pids", "io", "freezer"}
    assert cgroup.create() is False


def test_v2_files_and_values_for_every_limit(v2root):
    cgroup = made(v2root, "intermodal/web")
    d = cgroup.dir_of("memory")
    limits = normalize_limits({"memory": "256m", "memory_swap": "384m", "memory_reservation": "128m",
                               "cpus": 1.5, "cpu_shares": 512, "cpuset_cpus": "0", "cpuset_mems": "0",
                               "pids_limit": 64, "blkio_weight": 500})
    planned = {(w["file"], w["value"]) for w in cgroup.plan(limits)}
    assert planned == {
        (os.path.join(d, "memory.max"), str(256 * MIB)),
        (os.path.join(d, "memory.swap.max"), str(128 * MIB)),   # swap alone: 384m - 256m
        (os.path.join(d, "memory.low"), str(128 * MIB)),
        (os.path.join(d, "cpu.max"), "150000 100000"),
        (os.path.join(d, "cpu.weight"), "20"),                  # runc's conversion of 512 shares
        (os.path.join(d, "cpuset.cpus"), "0"),
        (os.path.join(d, "cpuset.mems"), "0"),
        (os.path.join(d, "pids.max"), "64"),
        (os.path.join(d, "io.weight"), "default 4950"),         # runc's conversion of blkio 500
    }
    assert _get(os.path.join(d, "memory.max")) == "max\n", "plan() must not write"
    changed = cgroup.apply(limits)
    assert set(changed) == set(limits)
    assert _get(os.path.join(d, "cpu.max")) == "150000 100000"
    read = cgroup.read()
    # cpu.weight holds less than cpu.shares: reading back gives a share count of the same weight.
    assert shares_to_weight(read.pop("cpu_shares")) == shares_to_weight(512)
    expected = dict(limits, device_read_bps=None, device_write_bps=None)
    del expected["cpu_shares"]
    assert read == expected
    # Idempotent in the files' own units, although cpu.weight cannot be converted back exactly.
    assert cgroup.apply(limits) == []
    assert cgroup.changed_keys(limits) == []


def test_v2_back_to_defaults(v2root):
    cgroup = made(v2root, "intermodal/web")
    d = cgroup.dir_of("memory")
    cgroup.apply(normalize_limits({"memory": "256m", "memory_swap": "512m", "cpus": 1, "pids_limit": 10,
                                   "cpuset_cpus": "0", "cpu_shares": 2048, "memory_reservation": "1m"}))
    changed = cgroup.apply({"memory": None, "memory_swap": None, "cpus": None, "pids_limit": None,
                            "cpuset_cpus": None, "cpu_shares": None, "memory_reservation": None})
    assert set(changed) == {"memory", "memory_swap", "cpus", "pids_limit", "cpuset_cpus", "cpu_shares",
                            "memory_reservation"}
    assert [_get(os.path.join(d, f)).strip() for f in ("memory.max", "memory.swap.max", "cpu.max", "pids.max",
                                                       "cpuset.cpus", "cpu.weight", "memory.low")] == [
        "max", "max", "max", "max", "", "100", "0"]
    read = cgroup.read()
    assert all(read[k] is None for k in changed), read


def test_v2_prefers_io_bfq_weight_on_blkio_scale(v2root):
    cgroup = made(v2root, "intermodal/bfq")
    d = cgroup.dir_of("io")
    _put(os.path.join(d, "io.bfq.weight"), "default 100\n")
    assert cgroup.apply(normalize_limits({"blkio_weight": 300})) == ["blkio_weight"]
    assert _get(os.path.join(d, "io.bfq.weight")) == "300"
    assert _get(os.path.join(d, "io.weight")) == "default 100\n"
    assert cgroup.read()["blkio_weight"] == 300


def test_v2_device_rules_go_to_io_max(v2root):
    cgroup = made(v2root, "intermodal/io")
    d = cgroup.dir_of("io")
    rules = [{"path": "/dev/fake", "major": 254, "minor": 0, "rate": MIB}]
    planned = cgroup.plan({"device_read_bps": rules, "device_write_bps": [dict(rules[0], rate=2 * MIB)]})
    assert [(w["key"], w["value"]) for w in planned] == [
        ("device_read_bps", "254:0 rbps=%d" % MIB), ("device_write_bps", "254:0 wbps=%d" % (2 * MIB))]
    # What the kernel shows after both writes:
    _put(os.path.join(d, "io.max"), "254:0 rbps=%d wbps=%d riops=max wiops=max\n" % (MIB, 2 * MIB))
    read = cgroup.read()
    assert [(r["major"], r["minor"], r["rate"]) for r in read["device_read_bps"]] == [(254, 0, MIB)]
    assert [(r["major"], r["minor"], r["rate"]) for r in read["device_write_bps"]] == [(254, 0, 2 * MIB)]
    assert cgroup.plan({"device_read_bps": rules}) == []
    # Rules not in the list are lifted.
    assert [w["value"] for w in cgroup.plan({"device_read_bps": [], "device_write_bps": []})] == [
        "254:0 rbps=max", "254:0 wbps=max"]


def test_v2_stats_come_from_memory_cpu_and_pids_files(v2root):
    cgroup = made(v2root, "intermodal/stats")
    d = cgroup.dir_of("memory")
    _put(os.path.join(d, "cgroup.procs"), "101\n102\n")
    _put(os.path.join(d, "pids.current"), "3\n")
    _put(os.path.join(d, "memory.max"), "%d\n" % (64 * MIB))
    assert cgroup.pids() == [101, 102]
    assert cgroup.stats() == {"memory_usage": 4096, "memory_limit": 64 * MIB, "memory_max_usage": 8192,
                              "cpu_usage_ns": 1500000, "pids_current": 3, "oom_kills": 1}


def test_v2_missing_controller_fails_naming_the_option(v2root):
    layout = v2layout(v2root, "memory pids")
    cgroup = Cgroup("intermodal/x", layout)
    with pytest.raises(InvalidOption, match="^blkio_weight: the blkio/io controller is not available"):
        cgroup.check(normalize_limits({"blkio_weight": 100}))
    with pytest.raises(InvalidOption, match="^cpus: the cpu controller"):
        cgroup.plan(normalize_limits({"cpus": 1}))
    cgroup.check(normalize_limits({"memory": "1g", "pids_limit": 5}))
    assert not os.path.exists(os.path.join(v2root, "intermodal")), "checks must not create anything"


def test_module_task_on_v2_check_apply_idempotent(v2root):
    params = {"name": "job", "parent": "intermodal", "state": "present", "pids": None, "force": False,
              "memory": "64m", "cpus": 0.5, "pids_limit": 20}
    layout = v2layout(v2root)
    check = CgroupTask(params, check_mode=True, layout=layout).run()
    assert check["changed"] is True and set(check["changed_limits"]) == {"memory", "cpus", "pids_limit"}
    assert not os.path.exists(os.path.join(v2root, "intermodal"))
    assert check["cgroup"]["limits"]["memory"] == 64 * MIB and check["cgroup"]["stats"] == {}
    made(v2root, "intermodal")  # the fake kernel fills the parent, as the real one would
    applied = CgroupTask(params, layout=layout).run()
    assert applied["changed"] is True and applied["cgroup"]["paths"]["memory"] == os.path.join(
        v2root, "intermodal", "job")
    assert _get(os.path.join(v2root, "intermodal", "job", "cpu.max")) == "50000 100000"
    again = CgroupTask(params, layout=layout).run()
    assert again["changed"] is False and again["changed_limits"] == []
    params["pids_limit"] = 30
    check2 = CgroupTask(params, check_mode=True, layout=layout).run()
    assert check2["changed_limits"] == ["pids_limit"]
    assert _get(os.path.join(v2root, "intermodal", "job", "pids.max")) == "20"
    assert check2["diff"]["before"]["limits"]["pids_limit"] == 20
    assert check2["diff"]["after"]["limits"]["pids_limit"] == 30


# ---- layout detection ----------------------------------------------------------

HYBRID = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 31 0:30 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
36 31 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2 = """\
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""
V1_COMOUNTED = """\
32 31 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
33 31 0:28 / /sys/fs/cgroup/my\\040pids rw,relatime - cgroup cgroup rw,pids
34 31 0:29 / /mnt/again rw,relatime - cgroup cgroup rw,pids
"""


def _mountinfo(tmp_path, text):
    path = tmp_path / "mountinfo"
    path.write_text(text)
    return str(path)


def test_detect_hybrid(tmp_path):
    layout = detect_layout(_mountinfo(tmp_path, HYBRID))
    assert layout.mode == "hybrid"
    assert layout.v1 == {"cpu": "/sys/fs/cgroup/cpu", "cpuacct": "/sys/fs/cgroup/cpuacct",
                         "memory": "/sys/fs/cgroup/memory"}
    assert layout.unified == "/sys/fs/cgroup/unified"
    assert layout.where("memory") == ("v1", "/sys/fs/cgroup/memory")
    assert layout.where("cpuacct") == ("v1", "/sys/fs/cgroup/cpuacct")
    # freezer is a core file on cgroup2, but in hybrid mode the processes are accounted in v1.
    assert layout.where("freezer") is None and layout.where("io") is None


def test_detect_v2(tmp_path, v2root):
    text = V2.replace("/sys/fs/cgroup", v2root)
    layout = detect_layout(_mountinfo(tmp_path, text))
    assert layout.mode == "v2" and layout.unified == v2root and layout.v1 == {}
    assert layout.unified_controllers == set(CONTROLLERS.split())
    assert layout.where("io") == ("v2", v2root)
    assert layout.where("cpuacct") == ("v2", v2root) and layout.where("freezer") == ("v2", v2root)


def test_detect_v1_comounted_and_escaped(tmp_path):
    layout = detect_layout(_mountinfo(tmp_path, V1_COMOUNTED))
    assert layout.mode == "v1" and layout.unified is None
    assert layout.v1 == {"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
                         "pids": "/sys/fs/cgroup/my pids"}
    # cpu and cpuacct share one directory, so a cgroup has one dir for both.
    cgroup = Cgroup("a/b", layout)
    assert cgroup.dirs() == ["/sys/fs/cgroup/cpu,cpuacct/a/b", "/sys/fs/cgroup/my pids/a/b"]


def test_detect_nothing_mounted(tmp_path):
    with pytest.raises(CgroupError, match="no cgroup filesystem"):
        detect_layout(_mountinfo(tmp_path, "25 30 0:23 / /sys rw - sysfs sysfs rw\n"))


def test_detect_this_host():
    layout = detect_layout()
    assert layout.mode in ("v1", "v2", "hybrid")
    assert (layout.mode == "v2") == (not layout.v1)


@pytest.mark.parametrize("relpath", ["", "/", "..", "a/../b", "a/.hidden"])
def test_cgroup_paths_cannot_escape(relpath, v2root):
    with pytest.raises(InvalidOption):
        Cgroup(relpath, v2layout(v2root))
