"""Tests on a real systemd host: the project's systemd-nspawn test host `sd1`.

First that the host is what the systemd-path tests need (systemd as PID 1,
cgroup limits that really apply, Ansible over SSH, crun and runc), then the
container module's systemd supervision on it.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.fixtures_nspawn import fleet_playbook, nspawn_fleet  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOST = "sd1"


def sh(fleet, cmd, check=True, timeout=120):
    proc = fleet.run(HOST, cmd, timeout=timeout)
    if check:
        assert proc.returncode == 0, "%r on %s failed (%d):\n%s%s" % (
            cmd, HOST, proc.returncode, proc.stdout, proc.stderr)
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
    outside = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert host.address not in outside and "imtest0" not in outside
    inside = subprocess.run(nspawn_fleet.netns_cmd(["ip", "-o", "addr"]),
                            capture_output=True, text=True).stdout
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


def test_crun_and_runc_are_installed(nspawn_fleet):
    assert sh(nspawn_fleet, "crun --version").stdout.startswith("crun version")
    assert sh(nspawn_fleet, "runc --version").stdout.startswith("runc version")


def test_builtin_modules_load_with_modprobe(nspawn_fleet):
    sh(nspawn_fleet, "modprobe overlay && modprobe br_netfilter && modprobe veth")


def test_ansible_reaches_the_host_over_ssh(fleet_playbook):
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
    assert result.task("ping", HOST)["result"]["ping"] == "pong"
    facts = result.task("facts", HOST)["result"]["ansible_facts"]
    assert facts["ansible_service_mgr"] == "systemd"
    assert facts["ansible_hostname"] == HOST
    assert facts["ansible_virtualization_type"] == "container"
    assert result.recap[HOST]["failures"] == 0 and result.recap[HOST]["unreachable"] == 0
