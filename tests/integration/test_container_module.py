"""intermodal.containers.container through real ansible-playbook runs, with real crun and runc.

Real parts only: the module on localhost, overlayfs over layers from the
store, the OCI runtime, cgroups of this kernel, and our monitor supervising
each container. Every test removes its containers (which kills their
processes, unmounts their root and removes their cgroups) even when it fails.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

# COLLECTIONS_DIR: imported for its side effect, puts the collection on sys.path.
from tests.integration.image_helpers import COLLECTIONS_DIR  # noqa: F401  # pylint: disable=unused-import
from tests.integration.image_helpers import result_of, task_playbook
from tests.lib.rootfs import build_busybox_rootfs

from ansible_collections.intermodal.containers.plugins.module_utils._containers import ContainerService
from ansible_collections.intermodal.containers.plugins.module_utils._image_import import apply_import, plan_import
from ansible_collections.intermodal.containers.plugins.module_utils._images import ImageService
from ansible_collections.intermodal.containers.plugins.module_utils._reference import parse_reference
from ansible_collections.intermodal.containers.plugins.module_utils._runtime import fix_hybrid_hugetlb

pytestmark = pytest.mark.integration

IMAGE = "local/busybox:1"


@pytest.fixture(scope="session", autouse=True)
def hybrid_cgroups_fixed():
    # The documented host preparation for crun on a hybrid-cgroup host (docs/runtime.md).
    fix_hybrid_hugetlb()


@pytest.fixture(scope="module")
def busybox_tar(tmp_path_factory):
    return build_busybox_rootfs(str(tmp_path_factory.mktemp("bb") / "busybox.tar"))


@pytest.fixture
def store(scratch_dir, busybox_tar):
    root = os.path.join(scratch_dir, "store")
    service = ImageService(root)
    try:
        apply_import(service, parse_reference(IMAGE), plan_import(busybox_tar, {"cmd": ["sh"], "env": {"PATH": "/bin"}}))
    finally:
        service.close()
    yield root
    images = ImageService(root)
    containers = ContainerService(root, images)
    for name in containers.names():
        containers.remove(name)
    images.close()


@pytest.fixture(params=["crun", "runc"])
def runtime(request):
    return request.param


def container_playbook(**args):
    return task_playbook("intermodal.containers.container", args)


def run_container(run_playbook, check=False, expect_failure=False, **args):
    return result_of(run_playbook(container_playbook(**args), check=check, diff=True, expect_failure=expect_failure))


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail("timed out waiting for %s" % what)


def describe(store, name):
    images = ImageService(store)
    try:
        return ContainerService(store, images).describe(name)
    finally:
        images.close()


def log_text(store, name):
    path = os.path.join(store, "containers", name, "logs", "container.log")
    try:
        with open(path, errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def base(store, runtime, **extra):
    args = dict(name="app", image=IMAGE, pull="never", store_root=store, runtime=runtime,
                command=["sh", "-c", "echo started; exec sleep 1000"])
    args.update(extra)
    return args


def test_idempotency_walk_recreate_and_live_update(run_playbook, store, runtime):
    args = base(store, runtime, env={"MODE": "one"}, memory="64m")
    results = []
    for check, want in zip((True, False, True, False), (True, True, False, False)):
        res = run_container(run_playbook, check=check, **args)
        assert res["changed"] is want, (check, res["result"]["actions"], describe(store, "app").get("state"),
                                        log_text(store, "app")[-500:])
        results.append(res["result"])
    assert not os.path.exists(os.path.join(store, "containers", "app")) or results[1], "check mode created nothing"
    first = results[1]["container"]
    assert first["state"]["status"] == "running" and first["config"]["env"] == {"MODE": "one"}
    pid = first["state"]["pid"]

    # An env change cannot apply live: the container is recreated (new process).
    args["env"] = {"MODE": "two"}
    recreated = run_container(run_playbook, **args)["result"]
    assert any("recreate" in a for a in recreated["actions"]), recreated["actions"]
    new_pid = recreated["container"]["state"]["pid"]
    assert new_pid != pid and recreated["container"]["state"]["status"] == "running"

    # A memory change applies live: same pid, new limit in cgroupfs, no restart.
    args["memory"] = "96m"
    check = run_container(run_playbook, check=True, **args)
    assert check["changed"] and any("live" in a for a in check["result"]["actions"])
    live = run_container(run_playbook, **args)["result"]
    assert live["container"]["state"]["pid"] == new_pid
    assert live["container"]["stats"]["memory_limit"] == 96 * 1024 * 1024
    assert run_container(run_playbook, **args)["changed"] is False

    # Stop, then absent: nothing is left behind.
    assert run_container(run_playbook, state="stopped", **{k: v for k, v in args.items() if k != "state"})["changed"]
    assert describe(store, "app")["state"]["status"] == "exited"
    removed = run_container(run_playbook, name="app", state="absent", store_root=store)
    assert removed["changed"] and not os.path.exists(os.path.join(store, "containers", "app"))
    assert not os.path.exists("/sys/fs/cgroup/memory/intermodal/app")


def test_memory_limit_oom_kills(run_playbook, store, runtime):
    args = base(store, runtime, memory="32m", command=["sh", "-c", "dd if=/dev/zero of=/dev/null bs=128M count=1"])
    run_container(run_playbook, **args)
    state = wait_for(lambda: (describe(store, "app")["state"] if describe(store, "app")["state"]["status"] == "exited"
                              else None), what="the allocation to be killed")
    assert state["exit_code"] == 137, state


def test_pids_limit_makes_fork_fail(run_playbook, store, runtime):
    script = "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 100 & done; echo spawned; exec sleep 1000"
    run_container(run_playbook, **base(store, runtime, pids_limit=5, command=["sh", "-c", script]))
    # busybox sh reports the failed fork (and gives up the loop): the limit held.
    text = wait_for(lambda: "fork" in log_text(store, "app") and log_text(store, "app"), what="the fork failure")
    assert "can't fork" in text or "Resource temporarily unavailable" in text, text[-2000:]
    assert "spawned" not in text
    stats = describe(store, "app")["stats"]
    assert not stats or stats["pids_current"] <= 5


def test_cpu_quota_is_visible_and_used(run_playbook, store, runtime):
    res = run_container(run_playbook, **base(store, runtime, cpus=0.5,
                                             command=["sh", "-c", "while :; do :; done"]))["result"]
    assert res["container"]["config"]["cpus"] == 0.5
    with open("/sys/fs/cgroup/cpu/intermodal/app/cpu.cfs_quota_us") as handle:
        assert int(handle.read()) == 50000
    first = describe(store, "app")["stats"]["cpu_usage_ns"]
    wait_for(lambda: describe(store, "app")["stats"]["cpu_usage_ns"] > first + 50000000, what="cpu usage to grow")


def test_isolation_pid1_hostname_readonly(run_playbook, store, runtime):
    script = ("echo pid=$$; echo procs=$(ls /proc | grep -c '^[0-9]'); echo host=$(hostname); "
              "touch /probe 2>/dev/null && echo rw || echo ro; "
              "mount -t tmpfs none /tmp 2>/dev/null && echo mounted || echo mount-denied; exec sleep 1000")
    run_container(run_playbook, **base(store, runtime, read_only=True, hostname="isolated",
                                       command=["sh", "-c", script]))
    text = wait_for(lambda: "mount" in log_text(store, "app") and log_text(store, "app"), what="the probe output")
    assert "pid=1" in text and "host=isolated" in text and " ro" in text or "ro\n" in text, text
    assert "mount-denied" in text, text
    # Only the container's own processes are visible: sh/sleep and the ls pipeline.
    procs = int(text.split("procs=")[1].split()[0])
    assert procs <= 4, text


def test_volumes_survive_recreate_and_are_shared(run_playbook, store, runtime):
    writer = base(store, runtime, volumes=["shared:/data"],
                  command=["sh", "-c", "echo hello >> /data/file; exec sleep 1000"], env={"GEN": "1"})
    run_container(run_playbook, **writer)
    wait_for(lambda: os.path.exists(os.path.join(store, "volumes", "shared", "_data", "file")), what="the write")
    writer["env"] = {"GEN": "2"}
    run_container(run_playbook, **writer)  # recreated: the volume keeps its data
    data = os.path.join(store, "volumes", "shared", "_data", "file")
    wait_for(lambda: open(data).read().count("hello") == 2, what="the second write")
    reader = {**writer, "name": "reader", "command": ["sh", "-c", "cat /data/file; exec sleep 1000"]}
    run_container(run_playbook, **reader)
    wait_for(lambda: log_text(store, "reader").count("hello") == 2, what="the reader to see both writes")
    # The volume is in use: removing it is refused.
    res = result_of(run_playbook(task_playbook("intermodal.containers.volume",
                                               dict(name="shared", state="absent", store_root=store)),
                                 expect_failure=True))
    assert "app" in res["result"]["msg"] and "reader" in res["result"]["msg"]


def test_restart_policy_brings_it_back(run_playbook, store, runtime):
    run_container(run_playbook, **base(store, runtime, restart_policy="always"))
    pid = wait_for(lambda: describe(store, "app")["state"]["status"] == "running" and describe(store, "app")["state"]["pid"],
                   what="the container to run")
    os.kill(pid, signal.SIGKILL)
    state = wait_for(lambda: (describe(store, "app")["state"]
                              if describe(store, "app")["state"].get("pid") not in (None, pid)
                              and describe(store, "app")["state"]["status"] == "running" else None),
                     what="the restart")
    assert state["restart_count"] >= 1
    # Changing the policy applies live: same process.
    live = run_container(run_playbook, **base(store, runtime, restart_policy="no"))["result"]
    assert live["container"]["state"]["pid"] == state["pid"]


@pytest.mark.parametrize("bad, word", [
    (dict(image="local/nothing:1"), "local/nothing"),
    (dict(memory="12XB"), "memory"),
    (dict(cpus=-1.0), "cpus"),
    (dict(capabilities=["CAP_NOT_A_THING"]), "capabilities"),
    (dict(mounts=[{"type": "bind", "source": "/does/not/exist", "target": "/x"}]), "/does/not/exist"),
])
def test_bad_input_fails_before_anything_is_created(run_playbook, store, bad, word):
    args = base(store, "runc")
    args.update(bad)
    res = run_container(run_playbook, expect_failure=True, **args)
    assert word in res["result"]["msg"], res["result"]["msg"]
    assert not os.path.exists(os.path.join(store, "containers", "app"))


def test_removing_the_image_keeps_a_running_container_whole(run_playbook, store):
    res = run_container(run_playbook, **base(store, "runc"))["result"]
    pid = res["container"]["state"]["pid"]
    removed = result_of(run_playbook(task_playbook("intermodal.containers.image",
                                                   dict(name=IMAGE, state="absent", store_root=store))))
    assert removed["changed"] is True
    assert os.listdir(os.path.join(store, "layers")), "the container's layers must survive the image"
    again = run_container(run_playbook, check=True, **{**base(store, "runc"), "pull": "never"},
                          expect_failure=True)
    assert "not in the store" in again["result"]["msg"]
    assert describe(store, "app")["state"]["pid"] == pid
    run_container(run_playbook, name="app", state="absent", store_root=store)
    assert os.listdir(os.path.join(store, "layers")) == [], "freed once the container is gone"
