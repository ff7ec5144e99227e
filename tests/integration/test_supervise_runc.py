"""The monitor backend with real runc and crun containers (busybox rootfs, spec from _spec.build_spec).

runc works on this machine's hybrid cgroup layout as it is; crun needs the
hugetlb fix (_runtime.fix_hybrid_hugetlb), so its runs are skipped, saying
why, until a host has it. Each test's containers sit
under a cgroup parent `intermodal-test-<random>` that is removed afterwards,
after every container, monitor and runtime process is gone.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import tarfile
import uuid

import pytest

from tests.integration.test_supervise_monitor import (  # noqa: F401 (shared helpers)
    RSS_BUDGET_KIB, Harness, monitor_gone, restarted, vmrss_kib, wait_for,
)

from ansible_collections.intermodal.containers.plugins.module_utils._monitor import process_alive, process_state

runtime_mod = pytest.importorskip("ansible_collections.intermodal.containers.plugins.module_utils._runtime")
spec_mod = pytest.importorskip("ansible_collections.intermodal.containers.plugins.module_utils._spec")

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="the runtimes need root here")]


class RuncHarness(Harness):
    def __init__(self, store, rootfs_tar, cgroup_parent, runtime_name="runc"):
        super().__init__(store, runtime_mod.Runtime(runtime_name, state_root=os.path.join(store, "runtime-state")))
        self.rootfs_tar = rootfs_tar
        self.cgroup_parent = cgroup_parent

    def create(self, name, command):
        p = self.paths(name)
        os.makedirs(p.rootfs)
        with tarfile.open(self.rootfs_tar) as tar:
            tar.extractall(p.rootfs)
        spec = spec_mod.build_spec({}, {"command": command, "hostname": name,
                                        "cgroups_path": "/%s/%s" % (self.cgroup_parent, name)}, p.rootfs)
        with open(p.config, "w") as f:
            json.dump(spec, f)
        self.started.remove(p)
        return p

    def start(self, name, policy=None, argv=None, command=None):
        p = self.create(name, command)
        self.started.append(p)
        return p, self.sup.start(p, self.runtime, policy or {})


def _remove_cgroup_parent(parent):
    for path in sorted(glob.glob("/sys/fs/cgroup/*/%s" % parent) + glob.glob("/sys/fs/cgroup/%s" % parent)):
        for sub in sorted(glob.glob(path + "/*/"), reverse=True):
            try:
                os.rmdir(sub)
            except OSError:
                pass
        try:
            os.rmdir(path)
        except OSError:
            pass


@pytest.fixture(params=["runc", "crun"])
def runc_harness(request, tmp_path, busybox_rootfs_tar):
    name = request.param
    if not shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin"):
        pytest.skip("%s is not installed" % name)
    try:
        runtime_mod.Runtime(name).check()
    except runtime_mod.HybridCgroups as exc:
        pytest.skip("crun refuses this host's cgroup layout until the hugetlb fix: %s" % exc)
    parent = "intermodal-test-%s" % uuid.uuid4().hex[:10]
    h = RuncHarness(str(tmp_path / "store"), busybox_rootfs_tar, parent, name)
    try:
        yield h
    finally:
        h.cleanup()
        _remove_cgroup_parent(parent)
        assert not glob.glob("/sys/fs/cgroup/*/%s" % parent), "cgroups left behind"


LOOP = ["/bin/sh", "-c", "echo started; exec sleep 1000"]


def runc_state(h, p):
    return h.runtime.state(p.runtime_id)


def test_container_runs_as_pid_1_and_logs(runc_harness):
    h = runc_harness
    p, st = h.start("hello", {"restart_policy": "no"},
                    command=["/bin/sh", "-c", "echo pid $$; echo host $(hostname); echo bad >&2; exit 5"])
    wait_for(lambda: monitor_gone(h, p), "monitor to exit")
    final = h.status(p)
    assert (final["status"], final["exit_code"], final["restart_count"]) == ("exited", 5, 0)
    assert h.log_texts(p, "stdout") == ["pid 1", "host hello"]
    assert h.log_texts(p, "stderr") == ["bad"]
    assert runc_state(h, p) is None   # deleted


def test_container_pid_is_the_host_pid_of_its_init(runc_harness):
    h = runc_harness
    p, st = h.start("pid", {"restart_policy": "always"}, command=LOOP)
    assert st["status"] == "running"
    with open(p.pid_file) as f:
        assert int(f.read()) == st["pid"]
    with open("/proc/%d/cmdline" % st["pid"], "rb") as f:
        assert f.read().split(b"\0")[:2] == [b"sleep", b"1000"]
    assert runc_state(h, p)["status"] == "running"


def test_killed_container_comes_back_on_failure_with_max(runc_harness):
    h = runc_harness
    p, st = h.start("onfail", {"restart_policy": "on-failure:1"}, command=LOOP)
    first = st["pid"]
    os.kill(first, signal.SIGKILL)
    st = wait_for(lambda: restarted(h, p, [first]), "restart")
    assert (st["restart_count"], st["exit_code"]) == (1, 137)
    assert runc_state(h, p)["pid"] == st["pid"]
    os.kill(st["pid"], signal.SIGKILL)   # max 1 restart: this time it stays down
    wait_for(lambda: monitor_gone(h, p), "monitor to give up")
    final = h.status(p)
    assert (final["status"], final["exit_code"], final["restart_count"]) == ("exited", 137, 1)
    assert runc_state(h, p) is None
    assert h.log_texts(p) == ["started", "started"]


def test_killed_container_comes_back_always(runc_harness):
    h = runc_harness
    p, st = h.start("always", {"restart_policy": "always"}, command=LOOP)
    pids = [st["pid"]]
    for n in (1, 2):
        os.kill(pids[-1], signal.SIGKILL)
        st = wait_for(lambda: restarted(h, p, pids), "restart %d" % n)
        assert st["restart_count"] == n
        pids.append(st["pid"])


def test_policy_no_stays_exited(runc_harness):
    h = runc_harness
    p, st = h.start("no", {"restart_policy": "no"}, command=LOOP)
    os.kill(st["pid"], signal.SIGKILL)
    wait_for(lambda: monitor_gone(h, p), "monitor to exit")
    final = h.status(p)
    assert (final["status"], final["exit_code"], final["restart_count"]) == ("exited", 137, 0)


def test_stop_with_a_trapping_container(runc_harness):
    h = runc_harness
    cmd = ["/bin/sh", "-c", "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.1; done"]
    p, st = h.start("trap", {"restart_policy": "always"}, command=cmd)
    wait_for(lambda: "ready" in h.log_texts(p), "ready")
    final = h.sup.stop(p, h.runtime, stop_signal="SIGTERM", stop_timeout=30)
    assert (final["status"], final["exit_code"], final["restart_count"]) == ("exited", 0, 0)
    assert h.log_texts(p)[-1] == "bye"
    assert runc_state(h, p) is None
    assert process_state(st["pid"]) in (None, "Z")


def test_stop_kills_after_stop_timeout(runc_harness):
    """PID 1 without a TERM handler ignores SIGTERM: only SIGKILL after stop_timeout ends it."""
    h = runc_harness
    p, st = h.start("stubborn", {"restart_policy": "always", "stop_timeout": 1}, command=LOOP)
    final = h.sup.stop(p, h.runtime)
    assert (final["status"], final["exit_code"]) == ("exited", 137)
    assert runc_state(h, p) is None
    assert process_state(st["pid"]) in (None, "Z")
    with open(os.path.join(p.logs_dir, "monitor.log")) as f:
        assert "sending SIGKILL" in f.read()


def test_live_policy_change_keeps_the_same_container(runc_harness):
    h = runc_harness
    p, st = h.start("live", {"restart_policy": "no"}, command=LOOP)
    assert h.sup.update_policy(p, {"restart_policy": "on-failure:5", "stop_timeout": 2}) is True
    now = h.status(p)
    assert (now["pid"], now["restart_count"], now["started_at"]) == (st["pid"], 0, st["started_at"])
    assert runc_state(h, p)["pid"] == st["pid"]
    os.kill(st["pid"], signal.SIGKILL)
    again = wait_for(lambda: restarted(h, p, [st["pid"]]), "restart")
    assert again["restart_count"] == 1


def test_logs_rotate_with_a_real_container(runc_harness):
    h = runc_harness
    cmd = ["/bin/sh", "-c", "i=1; while [ $i -le 2000 ]; do echo line $i; i=$((i+1)); done"]
    p, dummy = h.start("chatty", {"log_max_size": 16384, "log_max_files": 2}, command=cmd)
    wait_for(lambda: monitor_gone(h, p), "monitor to exit")
    assert os.path.exists(p.log + ".1") and not os.path.exists(p.log + ".2")
    assert os.path.getsize(p.log) <= 16384 and os.path.getsize(p.log + ".1") <= 16384
    kept = [int(t.split()[1]) for t in h.log_texts(p)]
    assert kept == list(range(kept[0], 2001)) and kept[0] > 1


def test_monitor_rss_with_runc_containers(runc_harness):
    h = runc_harness
    started = [h.start("rss%d" % i, {"restart_policy": "always"},
                       command=["/bin/sh", "-c", "while :; do echo tick; sleep 0.05; done"])[1] for i in range(3)]
    wait_for(lambda: all(len(h.log_texts(p)) >= 5 for p in h.started), "logging")
    for st in started:
        rss = vmrss_kib(st["monitor_pid"])
        assert rss <= RSS_BUDGET_KIB, "monitor %d uses %d KiB" % (st["monitor_pid"], rss)
        assert process_alive(st["pid"])


def test_start_after_the_monitor_died_replaces_the_orphan(runc_harness):
    """A killed monitor leaves runc and the container running; start() ends them and starts anew."""
    h = runc_harness
    p, st = h.start("orphan", {"restart_policy": "always"}, command=LOOP)
    runtime_pid = h.record(p)["runtime_pid"]
    os.kill(st["monitor_pid"], signal.SIGKILL)
    wait_for(lambda: process_state(st["monitor_pid"]) in (None, "Z"), "monitor death")
    assert "unsupervised" in h.status(p)["error"]
    again = h.sup.start(p, h.runtime, {"restart_policy": "always"})
    assert again["status"] == "running" and again["error"] is None
    assert again["monitor_pid"] != st["monitor_pid"] and again["pid"] != st["pid"]
    assert process_state(st["pid"]) in (None, "Z") and process_state(runtime_pid) in (None, "Z")
    assert h.runtime.state(p.runtime_id)["pid"] == again["pid"]


def test_start_clears_stale_runtime_state(runc_harness):
    """State left by a crashed runtime (created, never started) must not block `run`."""
    h = runc_harness
    p = h.create("stale", LOOP)
    h.started.append(p)
    # `create` hands its stdio to the container: /dev/null, or it never returns.
    subprocess.run([h.runtime.binary, "--root", h.runtime.state_root, "create", "--bundle", p.bundle, p.runtime_id],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=60)
    assert h.runtime.state(p.runtime_id)["status"] == "created"
    st = h.sup.start(p, h.runtime, {})
    assert st["status"] == "running"
    assert h.runtime.state(p.runtime_id)["status"] == "running"
