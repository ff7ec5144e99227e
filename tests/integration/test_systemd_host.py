"""Tests on a real systemd host: the project's systemd-nspawn test host `sd1`.

First that the host is what the systemd-path tests need (systemd as PID 1,
cgroup limits that really apply, Ansible over SSH, crun and runc), then the
container module's systemd supervision on it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.integration.fixtures_nspawn import fleet_playbook, nspawn_fleet  # noqa: F401 pylint: disable=unused-import

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HOST = "sd1"


def sh(fleet, cmd, check=True, timeout=120, host=HOST):
    proc = fleet.run(host, cmd, timeout=timeout)
    if check:
        assert proc.returncode == 0, "%r on %s failed (%d):\n%s%s" % (
            cmd, host, proc.returncode, proc.stdout, proc.stderr)
    return proc


# ---- the host itself ------------------------------------------------------------

def test_systemd_is_pid1_and_the_system_is_up(nspawn_fleet):
    assert sh(nspawn_fleet, "cat /proc/1/comm").stdout.strip() == "systemd"
    state = sh(nspawn_fleet, "systemctl is-system-running --wait", check=False).stdout.strip()
    failed = sh(nspawn_fleet, "systemctl --failed --no-legend --plain", check=False).stdout
    assert state in ("running", "degraded"), "state %r, failed units:\n%s" % (state, failed)
    assert sh(nspawn_fleet, "hostname").stdout.strip() == HOST
    assert sh(nspawn_fleet, "systemd-detect-virt").stdout.strip() == "systemd-nspawn"


def test_host_has_its_own_cgroup_and_network(nspawn_fleet):
    host = nspawn_fleet.hosts[HOST]
    # Every hierarchy of the launcher got a per-host cgroup holding the host's PID 1.
    assert host.cgroups and all(d.endswith("/%s/%s" % (nspawn_fleet.netns, HOST)) for d in host.cgroups)
    addr = sh(nspawn_fleet, "ip -4 -o addr show dev host0").stdout
    assert host.address + "/24" in addr
    # The bridge and the host's address live only in the fleet's network
    # namespace: the machine's own namespace has neither, and the host has
    # no route out of its subnet.
    outside = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=False).stdout
    assert host.address not in outside and "imtest0" not in outside
    inside = subprocess.run(nspawn_fleet.netns_cmd(["ip", "-o", "addr"]),
                            capture_output=True, text=True, check=False).stdout
    assert "imtest0" in inside
    assert "default" not in sh(nspawn_fleet, "ip route").stdout


def test_memory_limit_on_a_transient_unit_is_enforced(nspawn_fleet):
    """nspawn mounts the v1 controllers read-only; the image's oneshot unit
    remounts them rw, so a limit set by the host's systemd reaches cgroupfs
    and a 200 MB allocation under MemoryMax=64M is OOM-killed."""
    unit = "intermodal-limit-probe"
    sh(nspawn_fleet, "systemd-run --unit=%s -p MemoryMax=64M sleep 300" % unit)
    try:
        limit = sh(nspawn_fleet, "cat /sys/fs/cgroup/memory/system.slice/%s.service/"
                                 "memory.limit_in_bytes" % unit).stdout.strip()
        assert limit == str(64 * 1024 * 1024)
    finally:
        sh(nspawn_fleet, "systemctl stop %s" % unit, check=False)

    alloc = "python3 -c 'b = b\"x\" * (%d << 20); print(len(b))'"
    small = sh(nspawn_fleet, "systemd-run --wait --pipe -p MemoryMax=64M " + alloc % 16, check=False)
    assert small.returncode == 0, small.stderr
    assert small.stdout.strip() == str(16 << 20)

    big = sh(nspawn_fleet, "systemd-run --wait --pipe --unit=intermodal-oom-probe "
                           "-p MemoryMax=64M " + alloc % 200, check=False)
    assert big.returncode != 0
    assert "status=9/KILL" in big.stderr or "oom" in big.stderr.lower(), big.stderr
    sh(nspawn_fleet, "systemctl reset-failed intermodal-oom-probe.service", check=False)


def test_reboot_keeps_the_disk_and_starts_a_new_boot(nspawn_fleet):
    """Fleet.reboot() powers the host off and boots the same root again."""
    other = sorted(nspawn_fleet.hosts)[-1]  # the host the container tests do not use
    run = nspawn_fleet.run
    boot_id = run(other, "cat /proc/sys/kernel/random/boot_id", check=True).stdout.strip()
    run(other, "echo kept > /root/reboot-probe && echo lost > /run/reboot-probe", check=True)
    nspawn_fleet.reboot(other)
    assert run(other, "cat /proc/sys/kernel/random/boot_id", check=True).stdout.strip() != boot_id
    assert run(other, "cat /root/reboot-probe", check=True).stdout.strip() == "kept"
    assert run(other, "test -e /run/reboot-probe").returncode != 0
    assert run(other, "systemctl is-system-running --wait").stdout.strip() in ("running", "degraded")


def test_crun_and_runc_are_installed(nspawn_fleet):
    assert sh(nspawn_fleet, "crun --version").stdout.startswith("crun version")
    assert sh(nspawn_fleet, "runc --version").stdout.startswith("runc version")


def test_builtin_modules_load_with_modprobe(nspawn_fleet):
    sh(nspawn_fleet, "modprobe overlay && modprobe br_netfilter && modprobe veth")


def test_ansible_reaches_the_hosts_over_ssh(fleet_playbook, nspawn_fleet):
    result = fleet_playbook("""
- hosts: fleet
  gather_facts: false
  tasks:
    - name: ping
      ansible.builtin.ping:
    - name: facts
      ansible.builtin.setup:
        gather_subset: [min, virtual]
""")
    for name in nspawn_fleet.hosts:
        assert result.task("ping", name)["result"]["ping"] == "pong"
        facts = result.task("facts", name)["result"]["ansible_facts"]
        assert facts["ansible_service_mgr"] == "systemd"
        assert facts["ansible_hostname"] == name
        assert facts["ansible_virtualization_type"] == "container"
        assert result.recap[name]["failures"] == 0 and result.recap[name]["unreachable"] == 0


def test_hosts_reach_each_other_by_name(nspawn_fleet):
    """Every host's name is in /etc/hosts; sd1 opens a TCP connection to
    sd2's sshd across the fleet's bridge."""
    if len(nspawn_fleet.hosts) < 2:
        pytest.skip("a one-host fleet")
    other = [n for n in nspawn_fleet.hosts if n != HOST][0]
    probe = ("python3 -c 'import socket; s = socket.create_connection((\"%s\", 22), 5); "
             "print(s.recv(64).decode().strip())'" % other)
    assert sh(nspawn_fleet, probe).stdout.startswith("SSH-2.0-")


# ---- intermodal.containers.container on systemd -----------------------------------

IMAGE = "localhost/intermodal-test/busybox:1"
HOST_TAR = "/root/intermodal-busybox-rootfs.tar"
STORE = "/var/lib/intermodal"
# Prints a marker for the journald check, then idles; the trap lets the
# container's PID 1 (which ignores unhandled signals) stop on SIGTERM.
COMMAND = ["sh", "-c", "echo started-$MARK; trap 'exit 0' TERM; while true; do sleep 1; done"]

CONTAINER_PLAY = """
- hosts: sd1
  gather_facts: false
  tasks:
    - name: container
      intermodal.containers.container:
        name: "{{ cname }}"
        image: "%s"
        pull: never
        state: "{{ cstate }}"
        command: "{{ command }}"
        env:
          MARK: "{{ cname }}"
        restart_policy: always
        runtime: "{{ runtime }}"
""" % IMAGE


def unit_of(name):
    return "intermodal-container-%s.service" % name


def unit_props(fleet, unit, *props, host=HOST):
    out = sh(fleet, "systemctl show -p %s %s" % (",".join(props), unit), host=host).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def container_pid(fleet, name, host=HOST):
    """The container's init process as the host sees it, from the pid file
    the runtime writes; None while there is none or it is not running."""
    out = sh(fleet, "cat %s/containers/%s/container.pid 2>/dev/null || true" % (STORE, name),
             host=host).stdout.strip()
    if not out:
        return None
    pid = int(out)
    state = sh(fleet, "awk '/^State:/ {print $2}' /proc/%d/status 2>/dev/null || true" % pid,
               host=host).stdout.strip()
    return pid if state and state not in ("Z", "X") else None


def wait_until(check, what, attempts=300, delay=0.1):
    """Poll `check` (bounded); its last truthy value, or fail naming `what`."""
    import time
    for _attempt in range(attempts):
        value = check()
        if value:
            return value
        time.sleep(delay)
    pytest.fail("gave up waiting: %s" % what)


def import_image(fleet, work, host):
    """The busybox rootfs tar copied into `host` and imported there with
    intermodal.containers.image (source=import): no registry is needed.
    Returns the playbook runner."""
    from tests.integration.fixtures_nspawn import fleet_playbook_runner
    from tests.lib.rootfs import build_busybox_rootfs
    tar = build_busybox_rootfs(str(work / "busybox.tar"))
    fleet.copy_to(host, tar, HOST_TAR)
    run = fleet_playbook_runner(fleet, work)
    result = run("""
- hosts: %s
  gather_facts: false
  tasks:
    - name: import
      intermodal.containers.image:
        name: %s
        source: import
        import_path: %s
""" % (host, IMAGE, HOST_TAR))
    assert result.task("import", host)["status"] == "ok"
    return run


@pytest.fixture(scope="module")
def host_image(nspawn_fleet, tmp_path_factory):
    """The image imported on sd1."""
    return import_image(nspawn_fleet, tmp_path_factory.mktemp("sd-image"), HOST)


@pytest.fixture(scope="module", params=["crun", "runc"])
def sd_container(request, nspawn_fleet, host_image):
    """A started container with restart_policy=always, per runtime; removed
    (state=absent) afterwards."""
    runtime = request.param
    name = "sd-" + runtime
    variables = {"cname": name, "runtime": runtime, "command": COMMAND}
    result = host_image(CONTAINER_PLAY, dict(variables, cstate="started"))
    task = result.task("container", HOST)
    try:
        yield {"name": name, "runtime": runtime, "unit": unit_of(name), "vars": variables,
               "first": task["result"], "run": host_image}
    finally:
        host_image(CONTAINER_PLAY, dict(variables, cstate="absent"))


def test_container_runs_as_an_enabled_systemd_unit(nspawn_fleet, sd_container):
    first = sd_container["first"]
    assert first["changed"] is True
    state = first["container"]["state"]
    assert state["supervisor"] == "systemd" and state["status"] == "running"
    unit = sd_container["unit"]
    assert sh(nspawn_fleet, "systemctl is-active " + unit).stdout.strip() == "active"
    assert sh(nspawn_fleet, "systemctl is-enabled " + unit).stdout.strip() == "enabled"
    props = unit_props(nspawn_fleet, unit, "Restart", "ExecStart")
    assert props["Restart"] == "always"
    assert re.search(r"argv\[\]=\S*/%s .* run " % sd_container["runtime"], props["ExecStart"]), props["ExecStart"]
    # The runtime's pid file names the container's init, running the command.
    pid = wait_until(lambda: container_pid(nspawn_fleet, sd_container["name"]),
                     "container pid of " + sd_container["name"])
    # The module reported that pid, not the runtime's (the unit's MainPID).
    assert state["pid"] == pid
    assert state["pid"] != int(unit_props(nspawn_fleet, unit, "MainPID")["MainPID"])
    cmdline = sh(nspawn_fleet, "tr '\\0' ' ' < /proc/%d/cmdline" % pid).stdout
    assert cmdline.startswith("sh -c echo started-$MARK")


def test_container_output_is_in_journald(nspawn_fleet, sd_container):
    """The container's stdout goes to journald under the unit's
    SyslogIdentifier (intermodal-<name>)."""
    marker = "started-" + sd_container["name"]
    ident = "intermodal-" + sd_container["name"]
    wait_until(lambda: marker in sh(nspawn_fleet, "journalctl -t %s -o cat --no-pager" % ident).stdout,
               "%r in journalctl -t %s" % (marker, ident))


def test_restart_policy_restarts_the_container_after_kill_9(nspawn_fleet, sd_container):
    unit = sd_container["unit"]
    name = sd_container["name"]
    before = int(unit_props(nspawn_fleet, unit, "NRestarts")["NRestarts"])
    old_pid = wait_until(lambda: container_pid(nspawn_fleet, name), "container pid of " + name)
    sh(nspawn_fleet, "kill -9 %d" % old_pid)

    def restarted():
        pid = container_pid(nspawn_fleet, name)
        props = unit_props(nspawn_fleet, unit, "NRestarts", "ActiveState")
        if pid and pid != old_pid and props["ActiveState"] == "active" \
                and int(props["NRestarts"]) > before:
            return pid
        return None

    new_pid = wait_until(restarted, "systemd restarting %s after kill -9" % unit)
    # The module sees the restarted container as running, with nothing to change.
    again = sd_container["run"](CONTAINER_PLAY, dict(sd_container["vars"], cstate="started"))
    result = again.task("container", HOST)["result"]
    assert result["changed"] is False
    assert result["container"]["state"]["status"] == "running"
    assert result["container"]["state"]["pid"] == new_pid


def test_container_survives_systemctl_restart_of_its_unit(nspawn_fleet, sd_container):
    unit = sd_container["unit"]
    name = sd_container["name"]
    old_pid = wait_until(lambda: container_pid(nspawn_fleet, name), "container pid of " + name)
    sh(nspawn_fleet, "systemctl restart " + unit)
    assert sh(nspawn_fleet, "systemctl is-active " + unit).stdout.strip() == "active"
    new_pid = wait_until(lambda: (container_pid(nspawn_fleet, name) or old_pid) != old_pid
                         and container_pid(nspawn_fleet, name),
                         "a new container process after systemctl restart " + unit)
    assert new_pid != old_pid
    again = sd_container["run"](CONTAINER_PLAY, dict(sd_container["vars"], cstate="started"))
    result = again.task("container", HOST)["result"]
    assert result["changed"] is False
    assert result["container"]["state"]["status"] == "running"
    assert result["container"]["state"]["pid"] == new_pid


def test_absent_removes_the_unit_and_the_container(nspawn_fleet, host_image):
    name = "sd-gone"
    variables = {"cname": name, "runtime": "crun", "command": COMMAND}
    host_image(CONTAINER_PLAY, dict(variables, cstate="started"))
    unit = unit_of(name)
    assert sh(nspawn_fleet, "systemctl is-active " + unit).stdout.strip() == "active"
    removed = host_image(CONTAINER_PLAY, dict(variables, cstate="absent"))
    assert removed.task("container", HOST)["result"]["changed"] is True
    assert sh(nspawn_fleet, "systemctl is-active " + unit, check=False).stdout.strip() in ("inactive", "unknown")
    assert sh(nspawn_fleet, "test -e /etc/systemd/system/" + unit, check=False).returncode != 0
    assert sh(nspawn_fleet, "test -e %s/containers/%s" % (STORE, name), check=False).returncode != 0
    assert sh(nspawn_fleet, "test -e /sys/fs/cgroup/memory/intermodal/" + name, check=False).returncode != 0
    procs = sh(nspawn_fleet, "ps -eo args").stdout
    assert "intermodal-" + name not in procs


# ---- reboot (on sd2, so sd1's containers are not disturbed) -------------------

REBOOT_HOST = "sd2"


@pytest.fixture(scope="module")
def reboot_host_image(nspawn_fleet, tmp_path_factory):
    """The image imported on sd2, for the reboot test."""
    if REBOOT_HOST not in nspawn_fleet.hosts:
        pytest.skip("the fleet has no %s" % REBOOT_HOST)
    return import_image(nspawn_fleet, tmp_path_factory.mktemp("sd2-image"), REBOOT_HOST)


@pytest.mark.parametrize("runtime", ["crun", "runc"])
def test_enabled_container_comes_back_after_a_host_reboot(nspawn_fleet, reboot_host_image, runtime):
    """After a reboot nothing has mounted the container's overlay: the unit's
    ExecStartPre does, so systemd starts the container at boot, at the first
    attempt, and the module then finds it running with nothing to change."""
    host = REBOOT_HOST
    name = "sd-boot-" + runtime
    unit = unit_of(name)
    rootfs = "%s/containers/%s/bundle/rootfs" % (STORE, name)
    play = CONTAINER_PLAY.replace("- hosts: sd1", "- hosts: " + host)
    variables = {"cname": name, "runtime": runtime, "command": COMMAND}
    try:
        first = reboot_host_image(play, dict(variables, cstate="started")).task("container", host)["result"]
        assert first["container"]["state"]["status"] == "running"
        assert sh(nspawn_fleet, "systemctl is-enabled " + unit, host=host).stdout.strip() == "enabled"
        boot_id = sh(nspawn_fleet, "cat /proc/sys/kernel/random/boot_id", host=host).stdout
        nspawn_fleet.reboot(host)
        assert sh(nspawn_fleet, "cat /proc/sys/kernel/random/boot_id", host=host).stdout != boot_id

        def booted_container():
            # The pid file survives the reboot; only a live pid running the
            # command, with the unit active, is the container of this boot.
            pid = container_pid(nspawn_fleet, name, host=host)
            if not pid or sh(nspawn_fleet, "systemctl is-active " + unit, host=host,
                             check=False).stdout.strip() != "active":
                return None
            cmdline = sh(nspawn_fleet, "tr '\\0' ' ' < /proc/%d/cmdline" % pid, host=host, check=False).stdout
            return pid if cmdline.startswith("sh -c echo started-$MARK") else None

        pid = wait_until(booted_container, "%s started by systemd after the reboot" % unit, attempts=600)
        assert sh(nspawn_fleet, "systemctl is-active " + unit, host=host).stdout.strip() == "active"
        assert sh(nspawn_fleet, "mountpoint -q " + rootfs, host=host, check=False).returncode == 0
        # Started at the first attempt: no retry loop on an unmounted rootfs.
        assert unit_props(nspawn_fleet, unit, "NRestarts", host=host)["NRestarts"] == "0"

        again = reboot_host_image(play, dict(variables, cstate="started")).task("container", host)["result"]
        assert again["changed"] is False
        assert again["container"]["state"]["status"] == "running"
        assert again["container"]["state"]["pid"] == pid
    finally:
        reboot_host_image(play, dict(variables, cstate="absent"))
    assert sh(nspawn_fleet, "test -e /etc/systemd/system/" + unit, host=host, check=False).returncode != 0
    assert sh(nspawn_fleet, "mountpoint -q " + rootfs, host=host, check=False).returncode != 0


# ---- clean-up -----------------------------------------------------------------

def _fleet_leftovers(netns, roots_dir, pids):
    """What of a fleet is still on the machine: namespace, mounts, cgroups,
    live (non-zombie) processes."""
    from tests.lib.nspawn import process_state
    left = []
    if os.path.exists("/run/netns/" + netns):
        left.append("netns " + netns)
    with open("/proc/self/mountinfo") as f:
        if any(" %s " % roots_dir in line for line in f):
            left.append("mount " + roots_dir)
    for dirpath, dirnames, _files in os.walk("/sys/fs/cgroup"):
        if netns in dirnames:
            left.append("cgroup " + os.path.join(dirpath, netns))
        if dirpath.count("/") > 6:
            dirnames[:] = []
    left += ["pid %d (%s)" % (p, process_state(p)) for p in pids if process_state(p) not in (None, "Z", "X")]
    return left


OWNER_SCRIPT = r"""
import json, os, signal, sys
sys.path.insert(0, %r)
from tests.lib.nspawn import Fleet
fleet = Fleet(["stale1"], sys.argv[1])
fleet.start()
host = fleet.hosts["stale1"]
print(json.dumps({"netns": fleet.netns, "roots": fleet.roots_dir,
                  "pids": [host.proc.pid, host.leader]}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # dies without stop()
"""


def test_stop_and_stale_cleanup_leave_nothing(nspawn_fleet, tmp_path):
    """A fleet stopped normally leaves no namespace, mount, cgroup or process;
    one whose owner was SIGKILLed is removed by cleanup_stale_fleets()."""
    from tests.lib.nspawn import Fleet, cleanup_stale_fleets
    with Fleet(["clean1"], str(tmp_path / "clean")) as fleet:
        host = fleet.hosts["clean1"]
        assert fleet.run("clean1", "cat /proc/1/comm", via="nsenter").stdout.strip() == "systemd"
        netns, roots, pids = fleet.netns, fleet.roots_dir, [host.proc.pid, host.leader]
    assert _fleet_leftovers(netns, roots, pids) == []

    proc = subprocess.run([sys.executable, "-c", OWNER_SCRIPT % REPO_ROOT, str(tmp_path / "stale")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -9, proc.stderr
    info = json.loads(proc.stdout.splitlines()[-1])
    # The owner is gone but its host still runs: that is what a killed test run leaves.
    assert _fleet_leftovers(info["netns"], info["roots"], info["pids"])
    assert info["netns"] in cleanup_stale_fleets()
    assert _fleet_leftovers(info["netns"], info["roots"], info["pids"]) == []
    # The session's own fleet (owner alive) was left alone.
    assert nspawn_fleet.run(HOST, "true").returncode == 0
