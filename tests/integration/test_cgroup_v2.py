"""cgroup v2 for real: the collection's cgroup and container modules on a qemu VM.

This machine is hybrid (v1 controllers), so v2 enforcement can only be seen
on the VM from tests/lib/qemu_vm.py: a stock Debian bookworm kernel with
systemd and the unified hierarchy.  The modules run through ansible-playbook
over SSH, as a user would run them; what they did is then checked in the VM's
cgroupfs and by the kernel's own behaviour (OOM kills).  Containers run with
crun (which works as it is on a pure v2 host) under the VM's systemd.

Own CI stage (skipped unless INTERMODAL_V2_VM=1):
    INTERMODAL_V2_VM=1 python3 -m pytest -m cgroupv2 tests/integration/test_cgroup_v2*.py
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.integration.fixtures_v2 import requires_v2_vm, v2_host, v2_playbook  # noqa: F401 (pytest fixtures)  # pylint: disable=unused-import

pytestmark = [pytest.mark.cgroupv2, pytest.mark.integration, requires_v2_vm]

CG_ROOT = "/sys/fs/cgroup"
MiB = 1 << 20

# Waits for /tmp/<tag>.go, then really touches `mib` MiB (a bytes object
# is filled, so every page is written; a bare bytearray could stay zero pages).
ALLOC_PY = """import os, sys, time
tag, mib = sys.argv[1], int(sys.argv[2])
while not os.path.exists("/tmp/%s.go" % tag):
    time.sleep(0.1)
data = b"\\x01" * (mib << 20)
print(len(data))
"""


def cgroup_playbook(task_args, name="cgroup task"):
    return """- hosts: v2
  gather_facts: false
  tasks:
    - name: %s
      intermodal.containers.cgroup: %s
""" % (name, json.dumps(task_args))


def cgroup_task(v2_playbook, check=False, diff=False, **args):
    """Run the cgroup module once on the VM; its task record."""
    res = v2_playbook(cgroup_playbook(args), check=check, diff=diff)
    return res.task("cgroup task")


def read(host, path):
    return host.run("cat %s" % path).stdout.strip()


def remove_cgroup(host, relpath):
    """Test clean-up independent of the module: kill, then rmdir."""
    path = "%s/%s" % (CG_ROOT, relpath)
    host.run("if [ -d %s ]; then echo 1 > %s/cgroup.kill; sleep 0.2; rmdir %s; fi" % (path, path, path),
             check=False)


def start_background(host, command, tag):
    """Start `command` detached on the VM; its exit code lands in /tmp/<tag>.rc.
    Returns its pid (the command itself, not the wrapping shell)."""
    host.run("rm -f /tmp/{t}.pid /tmp/{t}.rc /tmp/{t}.go; "
             "setsid sh -c '{c} & echo $! > /tmp/{t}.pid; wait $!; echo $? > /tmp/{t}.rc' "
             "</dev/null >/dev/null 2>&1 &".format(t=tag, c=command))
    return int(wait_for_file(host, "/tmp/%s.pid" % tag))


def wait_for_file(host, path, timeout=180):
    deadline = time.monotonic() + timeout
    while True:
        proc = host.run("cat %s 2>/dev/null" % path, check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.strip()
        if time.monotonic() > deadline:
            raise AssertionError("%s did not appear on the VM within %d s" % (path, timeout))
        time.sleep(0.5)


def process_alive(host, pid):
    proc = host.run("grep '^State:' /proc/%d/status" % pid, check=False)
    return proc.returncode == 0 and "zombie" not in proc.stdout


# ---- the VM itself -----------------------------------------------------------------

def test_vm_runs_pure_cgroup_v2(v2_host):
    assert v2_host.run("stat -fc %T /sys/fs/cgroup").stdout.strip() == "cgroup2fs"
    controllers = set(read(v2_host, CG_ROOT + "/cgroup.controllers").split())
    assert {"memory", "cpu", "io", "pids"} <= controllers
    # No v1 hierarchy anywhere: a pure v2 host, unlike the machine running the tests.
    mounts = v2_host.run("cat /proc/self/mounts").stdout
    assert not [line for line in mounts.splitlines() if line.split()[2] == "cgroup"]


def test_vm_network_is_confined_to_its_namespace(v2_host):
    """The VM's only peer is the bridge in the test's own namespace: no
    default route, in the namespace or in the guest."""
    ns_routes = subprocess.run(["ip", "-n", v2_host.netns, "route"], capture_output=True,
                               text=True, check=True).stdout
    assert "default" not in ns_routes
    links = subprocess.run(["ip", "-n", v2_host.netns, "-o", "link"], capture_output=True,
                           text=True, check=True).stdout
    names = sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines())
    assert names == sorted(["lo", "br-v2", "tap-v2"])
    assert "default" not in v2_host.run("ip route").stdout


# ---- the cgroup module on v2 ------------------------------------------------------------

def test_memory_limit_is_enforced_by_oom_kill(v2_host, v2_playbook):
    rel = "intermodal/v2-oom"
    v2_host.run("cat > /tmp/alloc.py", input=ALLOC_PY)
    try:
        created = cgroup_task(v2_playbook, name="v2-oom", memory="64m", memory_swap="64m")
        assert created["changed"]
        assert created["result"]["cgroup"]["mode"] == "v2"
        assert read(v2_host, "%s/%s/memory.max" % (CG_ROOT, rel)) == str(64 * MiB)
        assert read(v2_host, "%s/%s/memory.swap.max" % (CG_ROOT, rel)) == "0"

        pid = start_background(v2_host, "exec python3 /tmp/alloc.py oom 200", "oom")
        moved = cgroup_task(v2_playbook, name="v2-oom", memory="64m", memory_swap="64m", pids=[pid])
        assert moved["changed"]
        assert pid in moved["result"]["cgroup"]["pids"]
        assert str(pid) in read(v2_host, "%s/%s/cgroup.procs" % (CG_ROOT, rel)).split()

        v2_host.run("touch /tmp/oom.go")
        assert wait_for_file(v2_host, "/tmp/oom.rc") == "137"  # 128 + SIGKILL
        events = dict(line.split() for line in read(v2_host, "%s/%s/memory.events" % (CG_ROOT, rel)).splitlines())
        assert int(events["oom_kill"]) >= 1
        after = cgroup_task(v2_playbook, name="v2-oom", memory="64m", memory_swap="64m")
        assert not after["changed"]
        assert after["result"]["cgroup"]["stats"]["oom_kills"] >= 1

        # The same allocation fits once the limit is raised live: the limit,
        # not the VM's size, killed it.
        raised = cgroup_task(v2_playbook, name="v2-oom", memory="512m", memory_swap="512m")
        # memory.swap.max stays 0 (v2 keeps swap apart from memory): only memory is written.
        assert raised["result"]["changed_limits"] == ["memory"]
        assert read(v2_host, "%s/%s/memory.swap.max" % (CG_ROOT, rel)) == "0"
        pid = start_background(v2_host, "exec python3 /tmp/alloc.py oom 200", "oom")
        cgroup_task(v2_playbook, name="v2-oom", pids=[pid])
        v2_host.run("touch /tmp/oom.go")
        assert wait_for_file(v2_host, "/tmp/oom.rc") == "0"
    finally:
        remove_cgroup(v2_host, rel)


def test_live_memory_update_keeps_the_process(v2_host, v2_playbook):
    rel = "intermodal/v2-live"
    try:
        pid = start_background(v2_host, "exec sleep 100000", "live")
        first = cgroup_task(v2_playbook, name="v2-live", memory="64m", pids=[pid])
        assert first["changed"]
        assert read(v2_host, "%s/%s/memory.max" % (CG_ROOT, rel)) == str(64 * MiB)

        updated = cgroup_task(v2_playbook, diff=True, name="v2-live", memory="96m")
        assert updated["changed"]
        assert updated["result"]["changed_limits"] == ["memory"]
        assert updated["result"]["diff"]["before"]["limits"]["memory"] == 64 * MiB
        assert updated["result"]["diff"]["after"]["limits"]["memory"] == 96 * MiB
        assert read(v2_host, "%s/%s/memory.max" % (CG_ROOT, rel)) == str(96 * MiB)
        # Same process, still running, still in the cgroup: the change was live.
        assert process_alive(v2_host, pid)
        assert read(v2_host, "%s/%s/cgroup.procs" % (CG_ROOT, rel)).split() == [str(pid)]

        removed = cgroup_task(v2_playbook, name="v2-live", state="absent", force=True)
        assert removed["changed"]
        assert v2_host.run("test -e %s/%s" % (CG_ROOT, rel), check=False).returncode != 0
        assert wait_for_file(v2_host, "/tmp/live.rc") == "137"
    finally:
        remove_cgroup(v2_host, rel)
        v2_host.run("pkill -x -f 'sleep 100000'", check=False)


def test_idempotency_walk(v2_host, v2_playbook):
    rel = "intermodal/v2-idem"
    path = "%s/%s" % (CG_ROOT, rel)
    limits = dict(name="v2-idem", memory="128m", cpus=0.5, pids_limit=64, cpu_shares=512)
    try:
        check1 = cgroup_task(v2_playbook, check=True, **limits)
        assert check1["changed"]
        assert v2_host.run("test -e %s" % path, check=False).returncode != 0, "check mode created it"

        apply1 = cgroup_task(v2_playbook, **limits)
        assert apply1["changed"]
        assert read(v2_host, path + "/memory.max") == str(128 * MiB)
        assert read(v2_host, path + "/cpu.max") == "50000 100000"
        assert read(v2_host, path + "/pids.max") == "64"
        # cpu_shares 512 -> cpu.weight as runc/crun convert it: 1 + ((512-2)*9999)/262142.
        assert read(v2_host, path + "/cpu.weight") == str(1 + ((512 - 2) * 9999) // 262142)
        limits_read = apply1["result"]["cgroup"]["limits"]
        assert limits_read["memory"] == 128 * MiB and limits_read["cpus"] == 0.5
        assert limits_read["pids_limit"] == 64

        check2 = cgroup_task(v2_playbook, check=True, **limits)
        assert not check2["changed"]
        apply2 = cgroup_task(v2_playbook, **limits)
        assert not apply2["changed"]
        assert apply2["result"]["changed_limits"] == []

        change_check = cgroup_task(v2_playbook, check=True, **{**limits, "memory": "256m"})
        assert change_check["changed"] and change_check["result"]["changed_limits"] == ["memory"]
        assert read(v2_host, path + "/memory.max") == str(128 * MiB), "check mode wrote memory.max"
        change = cgroup_task(v2_playbook, **{**limits, "memory": "256m"})
        assert change["changed"] and change["result"]["changed_limits"] == ["memory"]
        assert read(v2_host, path + "/memory.max") == str(256 * MiB)
        assert read(v2_host, path + "/cpu.max") == "50000 100000"
    finally:
        remove_cgroup(v2_host, rel)


# ---- containers on v2 ---------------------------------------------------------------------

IMAGE = "local/busybox:v2"


@pytest.fixture(scope="module")
def v2_busybox_image(v2_host, tmp_path_factory):
    """A busybox image in the VM's store, made by the image module from a
    rootfs tar (the VM has no registry to pull from)."""
    from tests.lib.rootfs import build_busybox_rootfs

    tar = build_busybox_rootfs(str(tmp_path_factory.mktemp("v2-busybox") / "busybox.tar"))
    v2_host.put(tar, "/root/busybox.tar")
    return IMAGE


def import_image(v2_playbook):
    res = v2_playbook("""- hosts: v2
  gather_facts: false
  tasks:
    - name: import busybox
      intermodal.containers.image: %s
""" % json.dumps(dict(name=IMAGE, source="import", import_path="/root/busybox.tar",
                      import_config={"cmd": ["sh"], "env": {"PATH": "/bin"}})))
    assert res.task("import busybox")["status"] in ("ok", "changed")


def container_task(v2_playbook, check=False, **args):
    res = v2_playbook("""- hosts: v2
  gather_facts: false
  tasks:
    - name: container task
      intermodal.containers.container: %s
""" % json.dumps(args), check=check, diff=True)
    return res.task("container task")


def container_args(name, **extra):
    # stop_timeout: busybox sleep as PID 1 ignores SIGTERM; no need to wait 10 s for SIGKILL.
    args = dict(name=name, image=IMAGE, pull="never", runtime="crun", stop_timeout=2)
    args.update(extra)
    return args


def remove_container(v2_playbook, name):
    removed = container_task(v2_playbook, name=name, state="absent", stop_timeout=2)
    assert removed["status"] in ("ok", "changed")


def cgroup_dir_of(host, pid):
    line = [ln for ln in read(host, "/proc/%d/cgroup" % pid).splitlines() if ln.startswith("0::")]
    assert line, "no v2 cgroup line for pid %d" % pid
    return CG_ROOT + line[0][3:]


def test_container_memory_limit_oom_kills_beyond_it(v2_host, v2_playbook, v2_busybox_image):
    import_image(v2_playbook)
    name = "v2-oom"
    # dd's 128 MiB buffer is written by read(): beyond the 48 MiB limit.  The
    # shell (PID 1) survives and reports dd's exit status.
    command = ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=128M count=1; echo dd-rc=$? > /dd.rc; "
                           "exec sleep 100000"]
    try:
        started = container_task(v2_playbook, **container_args(name, command=command, memory="48m",
                                                               memory_swap="48m"))
        assert started["changed"]
        ctr = started["result"]["container"]
        assert ctr["state"]["status"] == "running"
        assert ctr["state"]["supervisor"] == "systemd"  # the VM's PID 1 is systemd
        pid = ctr["state"]["pid"]
        cg = cgroup_dir_of(v2_host, pid)
        assert cg == CG_ROOT + "/" + ctr["cgroup"]
        assert read(v2_host, cg + "/memory.max") == str(48 * MiB)
        assert read(v2_host, cg + "/memory.swap.max") == "0"

        rc_file = ctr["rootfs"] + "/dd.rc"
        assert wait_for_file(v2_host, rc_file) == "dd-rc=137"  # dd got SIGKILL
        events = dict(line.split() for line in read(v2_host, cg + "/memory.events").splitlines())
        assert int(events["oom_kill"]) >= 1
        assert re.search(r"Memory cgroup out of memory: Killed process \d+ \(dd\)", v2_host.run("dmesg").stdout)

        again = container_task(v2_playbook, **container_args(name, command=command, memory="48m",
                                                             memory_swap="48m"))
        assert not again["changed"]
        assert again["result"]["container"]["stats"]["oom_kills"] >= 1
        assert again["result"]["container"]["state"]["pid"] == pid
    finally:
        remove_container(v2_playbook, name)
    assert v2_host.run("test -e %s/intermodal/%s" % (CG_ROOT, name), check=False).returncode != 0


def test_container_idempotency_walk_and_live_memory_update(v2_host, v2_playbook, v2_busybox_image):
    import_image(v2_playbook)
    name = "v2-live"
    args = container_args(name, command=["sleep", "100000"], memory="64m")
    store = "/var/lib/intermodal/containers/" + name
    try:
        check1 = container_task(v2_playbook, check=True, **args)
        assert check1["changed"]
        assert v2_host.run("test -e " + store, check=False).returncode != 0, "check mode created it"

        apply1 = container_task(v2_playbook, **args)
        assert apply1["changed"]
        pid = apply1["result"]["container"]["state"]["pid"]
        cg = cgroup_dir_of(v2_host, pid)
        assert read(v2_host, cg + "/memory.max") == str(64 * MiB)

        assert not container_task(v2_playbook, check=True, **args)["changed"]
        assert not container_task(v2_playbook, **args)["changed"]

        args["memory"] = "96m"
        changed = container_task(v2_playbook, **args)
        assert changed["changed"]
        actions = changed["result"]["actions"]
        assert not any("reate" in a for a in actions), actions  # neither created nor recreated
        assert changed["result"]["container"]["state"]["pid"] == pid
        assert read(v2_host, cg + "/memory.max") == str(96 * MiB)
        assert process_alive(v2_host, pid)
        assert cgroup_dir_of(v2_host, pid) == cg
    finally:
        remove_container(v2_playbook, name)
    assert v2_host.run("test -e " + store, check=False).returncode != 0
    assert "/var/lib/intermodal/containers" not in v2_host.run("cat /proc/mounts").stdout
