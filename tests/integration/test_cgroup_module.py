"""intermodal.containers.cgroup through real ansible-playbook runs on this host.

The module runs on localhost against the real cgroupfs (hybrid v1 here), under
a private intermodal-test-<random> parent that is removed with every process
in it afterwards. The lifecycle walks check -> apply -> check (no change) ->
apply (no change) -> change one thing, and bad input must fail before any
directory is created.
"""

from __future__ import annotations

import os

import pytest

# pytest fixtures: pytest finds them by name in this module's namespace.
from tests.integration.cgroup_fixtures import cgroup_parent, procs  # noqa: F401  # pylint: disable=unused-import
from tests.integration.image_helpers import result_of, task_playbook
from ansible_collections.intermodal.containers.plugins.module_utils._cgroups import Cgroup

pytestmark = pytest.mark.integration

MIB = 1 << 20


def cgroup_playbook(**args):
    return task_playbook("intermodal.containers.cgroup", args)


def _walk(run_playbook, playbook, expect, after_first_check=None):
    results = []
    for check, want in zip((True, False, True, False), expect):
        res = result_of(run_playbook(playbook, check=check, diff=True))
        assert res["changed"] is want, (check, res["result"])
        results.append(res["result"])
        if len(results) == 1 and after_first_check is not None:
            after_first_check()
    return results


def _file(path):
    with open(path) as handle:
        return handle.read().strip()


def test_lifecycle_check_apply_idempotent_then_change_one_limit(run_playbook, cgroup_parent):
    layout, parent = cgroup_parent
    cgroup = Cgroup("%s/batch" % parent, layout)
    args = dict(name="batch", parent=parent, memory="64m", memory_swap="96m", cpus=0.5,
                pids_limit=50, cpu_shares=512, cpuset_cpus="0")

    def nothing_created():
        assert not any(os.path.isdir(d) for d in cgroup.dirs()), "check mode must not create the cgroup"

    check1, apply1, check2, apply2 = _walk(run_playbook, cgroup_playbook(**args), (True, True, False, False),
                                           after_first_check=nothing_created)
    assert check1["actions"][0] == "Created cgroup %s/batch" % parent
    assert set(check1["changed_limits"]) == {"memory", "memory_swap", "cpus", "pids_limit", "cpu_shares",
                                             "cpuset_cpus"}
    assert set(apply1["changed_limits"]) == set(check1["changed_limits"])
    info = apply1["cgroup"]
    assert info["exists"] is True and info["path"] == "%s/batch" % parent
    assert info["mode"] == layout.mode
    limits = info["limits"]
    assert (limits["memory"], limits["memory_swap"], limits["cpus"], limits["pids_limit"]) == (
        64 * MIB, 96 * MIB, 0.5, 50)
    assert limits["cpu_shares"] == 512 and limits["cpuset_cpus"] == "0"
    assert limits["memory_reservation"] is None
    assert info["stats"]["pids_current"] == 0 and info["stats"]["memory_limit"] == 64 * MIB
    assert apply1["diff"]["before"]["exists"] is False and apply1["diff"]["after"]["exists"] is True
    # The kernel has what the module reported.
    if cgroup.where("memory") == "v1":
        assert _file(cgroup.file("memory", "memory.limit_in_bytes")) == str(64 * MIB)
        assert _file(cgroup.file("cpu", "cpu.cfs_quota_us")) == "50000"
        assert _file(cgroup.file("pids", "pids.max")) == "50"
    assert check2["changed_limits"] == [] and apply2["changed_limits"] == []
    assert check2["cgroup"]["limits"] == apply1["cgroup"]["limits"]

    # Change one thing: only memory is written, the rest stays.
    args["memory"] = "80m"
    check3 = result_of(run_playbook(cgroup_playbook(**args), check=True, diff=True))
    assert check3["changed"] is True and check3["result"]["changed_limits"] == ["memory"]
    assert cgroup.read()["memory"] == 64 * MIB, "check mode must not write"
    assert check3["result"]["diff"]["after"]["limits"]["memory"] == 80 * MIB
    changed = result_of(run_playbook(cgroup_playbook(**args), diff=True))
    assert changed["changed"] is True and changed["result"]["changed_limits"] == ["memory"]
    assert changed["result"]["diff"]["before"]["limits"]["memory"] == 64 * MIB
    assert changed["result"]["diff"]["after"]["limits"]["memory"] == 80 * MIB
    assert cgroup.read()["memory"] == 80 * MIB and cgroup.read()["cpus"] == 0.5

    # A limit left out is not managed: dropping cpus from the task leaves the quota alone.
    del args["cpus"]
    assert result_of(run_playbook(cgroup_playbook(**args)))["changed"] is False
    assert cgroup.read()["cpus"] == 0.5


def test_pids_are_moved_in_once_and_absent_needs_force(run_playbook, cgroup_parent, procs):
    layout, parent = cgroup_parent
    cgroup = Cgroup("%s/job" % parent, layout)
    sleeper = procs.start(["sleep", "300"])
    args = dict(name="job", parent=parent, pids=[sleeper.pid], memory="128m")
    _walk(run_playbook, cgroup_playbook(**args), (True, True, False, False))
    assert cgroup.pids() == [sleeper.pid]
    assert sleeper.poll() is None

    # Moving the same pid again is no change; its limits change live.
    args["memory"] = "256m"
    res = result_of(run_playbook(cgroup_playbook(**args), diff=True))
    assert res["changed"] is True and res["result"]["changed_limits"] == ["memory"]
    assert res["result"]["cgroup"]["pids"] == [sleeper.pid] and sleeper.poll() is None

    absent = dict(name="job", parent=parent, state="absent")
    refused = result_of(run_playbook(task_playbook("intermodal.containers.cgroup", absent, ignore_errors=True)))
    assert refused["failed"] is True
    assert "still has processes" in refused["result"]["msg"] and str(sleeper.pid) in refused["result"]["msg"]
    assert cgroup.exists() and sleeper.poll() is None

    absent["force"] = True
    check = result_of(run_playbook(cgroup_playbook(**absent), check=True))
    assert check["changed"] is True and cgroup.exists() and sleeper.poll() is None
    removed = result_of(run_playbook(cgroup_playbook(**absent), diff=True))
    assert removed["changed"] is True
    assert removed["result"]["diff"]["before"]["pids"] == [sleeper.pid]
    assert sleeper.wait(timeout=10) == -9
    assert not any(os.path.isdir(d) for d in cgroup.dirs())
    assert result_of(run_playbook(cgroup_playbook(**absent)))["changed"] is False


@pytest.mark.parametrize("bad, option, words", [
    ({"memory": "12XB"}, "memory", "invalid size '12XB'"),
    ({"cpus": -1}, "cpus", "must not be negative"),
    ({"memory": "64m", "memory_swap": "32m"}, "memory_swap", "at least memory"),
    ({"cpu_shares": 1}, "cpu_shares", "outside"),
    ({"cpuset_cpus": "0-999"}, "cpuset_cpus", "not online"),
    ({"device_read_bps": [{"path": "/nonexistent-disk", "rate": "1m"}]}, "device_read_bps", "/nonexistent-disk"),
    ({"pids": [2 ** 22 + 7]}, "pids", "no process"),
])
def test_bad_input_fails_naming_the_option_before_anything_is_created(run_playbook, cgroup_parent, bad, option, words):
    layout, parent = cgroup_parent
    args = dict(name="bad", parent=parent, pids_limit=10)
    args.update(bad)
    run = run_playbook(task_playbook("intermodal.containers.cgroup", args, ignore_errors=True))
    res = result_of(run)
    assert res["failed"] is True
    msg = res["result"]["msg"]
    assert msg.startswith(option + ":") and words in msg, msg
    assert res["result"]["error"] == "InvalidOption"
    for root in set(layout.v1.values()) | ({layout.unified} if layout.unified else set()):
        assert not os.path.exists(os.path.join(root, parent)), "nothing may be created on bad input"


def test_documentation_renders_and_matches_the_argument_spec(collection_env):
    """ansible-doc renders the module, and every option in argument_spec is documented with its type."""
    import json
    import shutil
    import subprocess

    from ansible_collections.intermodal.containers.plugins.modules.cgroup import argument_spec

    proc = subprocess.run([shutil.which("ansible-doc") or "ansible-doc", "--json", "intermodal.containers.cgroup"],
                          env=collection_env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)["intermodal.containers.cgroup"]
    options = doc["doc"]["options"]
    spec = argument_spec()
    assert set(options) == set(spec)
    for name, entry in spec.items():
        assert options[name]["type"] == entry["type"], name
        assert options[name].get("default") == entry.get("default"), name
        assert options[name].get("choices") == entry.get("choices"), name
    assert set(doc["doc"]["attributes"]) == {"check_mode", "diff_mode", "idempotent"}
    assert doc["examples"].strip() and set(doc["return"]) >= {"cgroup", "changed_limits", "actions", "diff"}
