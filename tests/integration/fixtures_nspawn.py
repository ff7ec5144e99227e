"""Fixtures for tests on real systemd hosts (systemd-nspawn, tests/lib/nspawn.py).

- nspawn_fleet: session-scoped Fleet of one host, `sd1`, booted from the
  cached image (first use builds it: about 2.5 min).  Skipped with the reason
  when this machine cannot run systemd-nspawn hosts.
- fleet_playbook: run a playbook (YAML text) against the fleet with
  ansible-playbook from inside the fleet's network namespace, using this
  checkout's collection; returns a FleetPlaybookResult.

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
FLEET_NAMES = ["sd1"]


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


@pytest.fixture
def fleet_playbook(nspawn_fleet, tmp_path):
    """fleet_playbook(yaml_text, extra_vars=None, expect_failure=False, limit=None)."""
    home = tmp_path / "ansible"
    for sub in ("local", "home", "cp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS_DIR,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCAL_TEMP": str(home / "local"),
        "ANSIBLE_HOME": str(home / "home"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(home / "cp"),
        "ANSIBLE_CALLBACK_PLUGINS": CALLBACK_DIR,
        "ANSIBLE_CALLBACKS_ENABLED": "jsonl_results",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    counter = {"n": 0}

    def run(playbook, extra_vars=None, expect_failure=False, limit=None, timeout=600):
        counter["n"] += 1
        n = counter["n"]
        path = tmp_path / ("playbook-%d.yml" % n)
        path.write_text(playbook)
        results = tmp_path / ("results-%d.jsonl" % n)
        args = []
        if extra_vars:
            vars_path = tmp_path / ("vars-%d.json" % n)
            vars_path.write_text(json.dumps(extra_vars))
            args += ["-e", "@%s" % vars_path]
        cmd = nspawn_fleet.ansible_playbook_cmd(str(path), *args, limit=limit)
        proc = subprocess.run(cmd, env=dict(env, INTERMODAL_JSONL_RESULTS=str(results)),
                              cwd=str(tmp_path), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        records = []
        if results.exists():
            records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        result = FleetPlaybookResult(proc, records)
        if expect_failure and proc.returncode == 0:
            pytest.fail("playbook %d succeeded but was expected to fail:\n%s" % (n, proc.stdout))
        if not expect_failure and proc.returncode != 0:
            pytest.fail("playbook %d failed (rc=%d):\nSTDOUT:\n%s\nSTDERR:\n%s"
                        % (n, proc.returncode, proc.stdout[-8000:], proc.stderr[-4000:]))
        return result

    return run
