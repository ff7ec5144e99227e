"""Fixtures for tests on real systemd hosts (systemd-nspawn, tests/lib/nspawn.py).

- nspawn_fleet: session-scoped Fleet of two hosts, `sd1` and `sd2`, booted
  from the cached image (first use builds it: about 2.5 min; then about 6 s
  to SSH on both).  Skipped with the reason
  when this machine cannot run systemd-nspawn hosts.
- fleet_playbook: run a playbook (YAML text) against the fleet with
  ansible-playbook from inside the fleet's network namespace, using this
  checkout's collection; returns a FleetPlaybookResult.
- fleet_playbook_runner(fleet, workdir): the same runner, for fixtures of a
  wider scope than a test.

Import the fixtures into a test module with
`from tests.integration.fixtures_nspawn import nspawn_fleet, fleet_playbook`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tests.lib.nspawn import Fleet, build_host_image, nspawn_available  # noqa: E402

COLLECTIONS_DIR = os.path.join(REPO_ROOT, ".build", "collections")
CALLBACK_DIR = os.path.join(REPO_ROOT, "tests", "lib", "callback_plugins")
FLEET_NAMES = ["sd1", "sd2"]


@pytest.fixture(scope="session")
def nspawn_fleet():
    reason = nspawn_available()
    if reason:
        pytest.skip("systemd-nspawn test hosts cannot run here: " + reason)
    image = build_host_image()
    workdir = tempfile.mkdtemp(prefix="intermodal-fleet-")
    fleet = Fleet(FLEET_NAMES, workdir, image=image)
    try:
        with fleet:
            yield fleet
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class FleetPlaybookResult:
    """rc, stdout, stderr, tasks (per host and task: name, host, action,
    status, changed, failed, result) and recap ({host: {ok, changed, ...}})."""

    def __init__(self, proc, records):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.tasks = [r for r in records if r.get("type") == "task"]
        stats = [r for r in records if r.get("type") == "stats"]
        self.recap = stats[-1]["recap"] if stats else {}

    def task(self, name, host=None):
        """The last result of task `name` (on `host`); KeyError if none ran."""
        for rec in reversed(self.tasks):
            if rec["name"] == name and (host is None or rec["host"] == host):
                return rec
        raise KeyError("no task %r ran; tasks: %s" % (name, [t["name"] for t in self.tasks]))


def fleet_playbook_runner(fleet, workdir):
    """run(yaml_text, extra_vars=None, expect_failure=False, limit=None) ->
    FleetPlaybookResult, for ansible-playbook runs against `fleet` that keep
    their files (playbooks, results, Ansible's home) under `workdir`."""
    workdir = str(workdir)
    home = os.path.join(workdir, "ansible")
    for sub in ("local", "home", "cp"):
        os.makedirs(os.path.join(home, sub), exist_ok=True)
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS_DIR,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCAL_TEMP": os.path.join(home, "local"),
        "ANSIBLE_HOME": os.path.join(home, "home"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": os.path.join(home, "cp"),
        "ANSIBLE_CALLBACK_PLUGINS": CALLBACK_DIR,
        "ANSIBLE_CALLBACKS_ENABLED": "jsonl_results",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    counter = {"n": 0}

    def run(playbook, extra_vars=None, expect_failure=False, limit=None, timeout=600):
        counter["n"] += 1
        n = counter["n"]
        path = os.path.join(workdir, "playbook-%d.yml" % n)
        with open(path, "w") as f:
            f.write(playbook)
        results = os.path.join(workdir, "results-%d.jsonl" % n)
        args = []
        if extra_vars:
            vars_path = os.path.join(workdir, "vars-%d.json" % n)
            with open(vars_path, "w") as f:
                json.dump(extra_vars, f)
            args += ["-e", "@" + vars_path]
        cmd = fleet.ansible_playbook_cmd(path, *args, limit=limit)
        proc = subprocess.run(cmd, env=dict(env, INTERMODAL_JSONL_RESULTS=results),
                              cwd=workdir, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        records = []
        if os.path.exists(results):
            with open(results) as f:
                records = [json.loads(line) for line in f if line.strip()]
        result = FleetPlaybookResult(proc, records)
        if expect_failure and proc.returncode == 0:
            pytest.fail("playbook %s succeeded but was expected to fail:\n%s" % (path, proc.stdout))
        if not expect_failure and proc.returncode != 0:
            pytest.fail("playbook %s failed (rc=%d):\nSTDOUT:\n%s\nSTDERR:\n%s"
                        % (path, proc.returncode, proc.stdout[-8000:], proc.stderr[-4000:]))
        return result

    return run


@pytest.fixture
def fleet_playbook(nspawn_fleet, tmp_path):
    """fleet_playbook(yaml_text, extra_vars=None, expect_failure=False, limit=None)."""
    return fleet_playbook_runner(nspawn_fleet, tmp_path)
