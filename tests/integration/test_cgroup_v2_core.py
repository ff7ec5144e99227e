"""_cgroups.Cgroup on a real cgroup v2 kernel (the qemu VM of tests/lib/qemu_vm.py).

This machine is hybrid, so the v2 file mapping is only unit-tested against a
fake tree here (tests/unit/plugins/module_utils/test_cgroups_v2_fake.py). In
the VM the same core code runs against the kernel: controller delegation,
every limit of the vocabulary written and read back idempotently, a pids
limit refusing fork, a CPU quota throttling a busy loop, stats, kill_all with
cgroup.kill, and removal. The module itself is exercised on v2 by
test_cgroup_v2.py.

Own CI stage (skipped unless INTERMODAL_V2_VM=1):
    INTERMODAL_V2_VM=1 python3 -m pytest -m cgroupv2 tests/integration/test_cgroup_v2_core.py
"""

from __future__ import annotations

import json
import os

import pytest

from tests.integration.fixtures_v2 import requires_v2_vm, v2_host  # noqa: F401 (pytest fixtures)  # pylint: disable=unused-import

pytestmark = [pytest.mark.cgroupv2, pytest.mark.integration, requires_v2_vm]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = ("_errors.py", "_cgroups.py", "_cgroups_limits.py", "_cgroups_map.py")
REMOTE = "/root/intermodal-core"
PARENT = "intermodal-test-v2core"

SCRIPT = r'''
import json, os, signal, subprocess, sys, time
sys.path.insert(0, "%(remote)s")
from ansible_collections.intermodal.containers.plugins.module_utils._cgroups import (
    Cgroup, detect_layout, normalize_limits)

out = {}
layout = detect_layout()
out["mode"] = layout.mode
cg = Cgroup("%(parent)s/core", layout)
procs = []
try:
    out["created"] = cg.create()
    out["root_subtree"] = open("/sys/fs/cgroup/cgroup.subtree_control").read().split()
    out["parent_subtree"] = open("/sys/fs/cgroup/%(parent)s/cgroup.subtree_control").read().split()
    limits = normalize_limits({
        "memory": "256m", "memory_swap": "320m", "memory_reservation": "64m", "cpus": 0.2,
        "cpu_shares": 512, "cpuset_cpus": "0", "cpuset_mems": "0", "pids_limit": 4, "blkio_weight": 500,
        "device_read_bps": [{"path": "/dev/vda", "rate": "10m"}],
        "device_write_bps": [{"path": "/dev/vda", "rate": "20m"}]})
    out["changed"] = cg.apply(limits)
    out["again"] = cg.apply(limits)
    out["changed_keys"] = cg.changed_keys(limits)
    d = cg.dir_of("memory")
    out["files"] = {name: open(os.path.join(d, name)).read().strip() for name in (
        "memory.max", "memory.swap.max", "memory.low", "cpu.max", "cpu.weight", "cpuset.cpus",
        "cpuset.mems", "pids.max", "io.max") if os.path.exists(os.path.join(d, name))}
    for name in ("io.weight", "io.bfq.weight"):
        if os.path.exists(os.path.join(d, name)):
            out["files"][name] = open(os.path.join(d, name)).read().strip()
    out["read"] = cg.read()
    # pids: the python process is one of 4, so 3 forks succeed.
    forker = ("import os, signal\nkids, errs = [], []\n"
              "for _ in range(6):\n"
              "    try:\n        pid = os.fork()\n    except OSError as e:\n        errs.append(e.errno); continue\n"
              "    if pid == 0:\n        signal.pause()\n    kids.append(pid)\n"
              "for k in kids:\n    os.kill(k, 9); os.waitpid(k, 0)\n"
              "print(len(kids), len(errs))\n")
    p = subprocess.Popen(["sh", "-c", 'echo $$ > %%s/cgroup.procs; exec "$@"' %% d, "sh", sys.executable, "-c", forker],
                         stdout=subprocess.PIPE)
    procs.append(p)
    out["forks"] = p.communicate(timeout=120)[0].decode().split()
    cg.apply(normalize_limits({"pids_limit": 0}))
    # cpu quota: a busy loop is throttled
    before = cg.stats()["cpu_usage_ns"]
    busy = "import time\nend = time.time() + 1.0\nwhile time.time() < end:\n    pass\n"
    p = subprocess.Popen(["sh", "-c", 'echo $$ > %%s/cgroup.procs; exec "$@"' %% d, "sh", sys.executable, "-c", busy])
    procs.append(p)
    p.wait(timeout=120)
    out["cpu_usage_grew"] = cg.stats()["cpu_usage_ns"] > before
    out["cpu_stat"] = dict(line.split() for line in open(os.path.join(d, "cpu.stat")).read().splitlines())
    # live change under a sleeping process, then stats and kill_all
    s = subprocess.Popen(["sh", "-c", 'echo $$ > %%s/cgroup.procs; exec sleep 300' %% d])
    procs.append(s)
    for _ in range(200):
        if s.pid in cg.pids():
            break
        time.sleep(0.05)
    out["live_changed"] = cg.apply(normalize_limits({"memory": "128m", "memory_swap": "128m", "cpus": 0.5}))
    out["live_alive"] = s.poll() is None and cg.pids() == [s.pid]
    out["live_read"] = {k: cg.read()[k] for k in ("memory", "memory_swap", "cpus")}
    out["stats"] = cg.stats()
    out["killed"] = cg.kill_all()
    s.wait(timeout=30)
    out["sleep_rc"] = s.returncode
    out["defaults_changed"] = cg.apply({"memory": None, "memory_swap": None, "memory_reservation": None,
                                        "cpus": None, "cpu_shares": None, "cpuset_cpus": None, "cpuset_mems": None, "pids_limit": None,
                                        "blkio_weight": None, "device_read_bps": [], "device_write_bps": []})
    out["defaults_read"] = cg.read()
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    try:
        cg.kill_all()
    except Exception:
        pass
    out["removed"] = cg.remove()
    Cgroup("%(parent)s", layout).remove()
    out["left"] = os.path.exists("/sys/fs/cgroup/%(parent)s")
print(json.dumps(out))
'''


def test_v2_core_on_a_real_kernel(v2_host):
    base = REMOTE + "/ansible_collections/intermodal/containers/plugins/module_utils"
    v2_host.run("mkdir -p %s" % base)
    for name in FILES:
        v2_host.put(os.path.join(REPO_ROOT, "plugins", "module_utils", name), base + "/" + name)
    try:
        proc = v2_host.run("python3 -", input=SCRIPT % {"remote": REMOTE, "parent": PARENT}, timeout=600)
    finally:
        v2_host.run("for d in /sys/fs/cgroup/%s/core /sys/fs/cgroup/%s; do "
                    "[ -d $d ] && { echo 1 > $d/cgroup.kill; sleep 0.2; rmdir $d; }; done; rm -rf %s"
                    % (PARENT, PARENT, REMOTE), check=False)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    mib = 1 << 20

    assert out["mode"] == "v2" and out["created"] is True
    assert {"cpu", "cpuset", "io", "memory", "pids"} <= set(out["parent_subtree"])
    assert set(out["changed"]) == {"memory", "memory_swap", "memory_reservation", "cpus", "cpu_shares", "cpuset_cpus",
                                   "cpuset_mems", "pids_limit", "blkio_weight", "device_read_bps", "device_write_bps"}
    assert out["again"] == [] and out["changed_keys"] == []
    files = out["files"]
    assert files["memory.max"] == str(256 * mib)
    assert files["memory.swap.max"] == str(64 * mib)
    assert files["memory.low"] == str(64 * mib)
    assert files["cpu.max"] == "20000 100000"
    assert files["cpu.weight"] == "20"
    assert files["cpuset.cpus"] == "0" and files["cpuset.mems"] == "0"
    assert files["pids.max"] == "4"
    assert "rbps=%d" % (10 * mib) in files["io.max"] and "wbps=%d" % (20 * mib) in files["io.max"]
    if "io.bfq.weight" in files:
        assert files["io.bfq.weight"].split()[-1] == "500"
    else:
        assert files["io.weight"] == "default 4950"
    read = out["read"]
    assert (read["memory"], read["memory_swap"], read["memory_reservation"], read["cpus"]) == (
        256 * mib, 320 * mib, 64 * mib, 0.2)
    assert read["pids_limit"] == 4 and read["cpuset_cpus"] == "0" and read["blkio_weight"] == 500
    assert [(d["rate"]) for d in read["device_read_bps"]] == [10 * mib]
    assert out["forks"] == ["3", "3"]
    assert out["cpu_usage_grew"] is True and int(out["cpu_stat"]["nr_throttled"]) > 0
    assert out["live_changed"] == ["memory", "memory_swap", "cpus"]
    assert out["live_alive"] is True
    assert out["live_read"] == {"memory": 128 * mib, "memory_swap": 128 * mib, "cpus": 0.5}
    assert out["stats"]["pids_current"] == 1 and out["stats"]["memory_limit"] == 128 * mib
    assert out["stats"]["cpu_usage_ns"] > 0
    assert out["killed"] == 1 and out["sleep_rc"] == -9
    assert set(out["defaults_changed"]) >= {"memory", "memory_swap", "memory_reservation", "cpus", "cpu_shares",
                                            "cpuset_cpus", "blkio_weight", "device_read_bps", "device_write_bps"}
    assert {k: v for k, v in out["defaults_read"].items() if v is not None} == {}
    assert out["removed"] is True and out["left"] is False
