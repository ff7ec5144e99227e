"""The cgroup v2 VM for the `cgroupv2` test stage (tests/lib/qemu_vm.py).

One VM for the whole session, booted once (about 45 s under TCG): import
`v2_host` (and `v2_playbook`) from here in a test module.  The VM only boots
when INTERMODAL_V2_VM=1 is set, so the default pytest run skips these tests;
the stage that sets it is run as

    INTERMODAL_V2_VM=1 python3 -m pytest -m cgroupv2 tests/integration/test_cgroup_v2*.py

Boot time, qemu's RSS and the stage's wall time are printed at the end of
the session and written to <workdir>/timings.json.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tests.integration.conftest import CALLBACK_DIR, COLLECTIONS_DIR, PlaybookResult  # noqa: E402

ENABLED = os.environ.get("INTERMODAL_V2_VM") == "1"
SKIP_REASON = ("cgroup v2 VM tests boot a qemu VM (~1 min, ~600 MiB RSS): "
               "run them as their own stage with INTERMODAL_V2_VM=1")
requires_v2_vm = pytest.mark.skipif(not ENABLED, reason=SKIP_REASON)


def _report(config, line):
    """Print past pytest's capture (session teardown output is captured)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capman is not None:
        with capman.global_and_fixture_disabled():
            reporter.write_line(line)
    else:
        reporter.write_line(line)


# Each test module that imports `v2_host` gets its own copy of the session
# fixture in pytest's eyes; this shared state keeps it to ONE VM per session:
# the first setup boots it, the last teardown stops it.
_SHARED = {"host": None, "users": 0, "workdir": None, "timings": None, "started": None}


def _acquire(config):
    from tests.lib.qemu_vm import V2Host, build_vm_image

    if _SHARED["host"] is None:
        _SHARED["started"] = time.monotonic()
        _SHARED["workdir"] = tempfile.mkdtemp(prefix="intermodal-v2-")
        _SHARED["timings"] = timings = {}
        try:
            build_started = time.monotonic()
            image = build_vm_image(timings=timings)
            timings["image_seconds"] = round(time.monotonic() - build_started, 1)
            host = V2Host(_SHARED["workdir"], image=image)
            host.start()  # stops itself if the boot fails
        except BaseException:
            _release(config, failed=True)
            raise
        timings["boot_seconds"] = round(host.boot_seconds, 1)
        _SHARED["host"] = host
    _SHARED["users"] += 1
    return _SHARED["host"]


def _release(config, failed=False):
    if not failed:
        _SHARED["users"] -= 1
        if _SHARED["users"] > 0:
            return
    host, timings, workdir = _SHARED["host"], _SHARED["timings"], _SHARED["workdir"]
    _SHARED.update(host=None, users=0, workdir=None)
    try:
        if host is not None:
            rss = host.qemu_rss_bytes()
            timings["qemu_rss_mib"] = round(rss / 2 ** 20) if rss else None
            host.stop()
    finally:
        timings["stage_seconds"] = round(time.monotonic() - _SHARED["started"], 1)
        for key, value in timings.items():  # build step durations come unrounded
            if isinstance(value, float):
                timings[key] = round(value, 1)
        if workdir:
            with open(os.path.join(workdir, "timings.json"), "w") as f:
                json.dump(timings, f)
            if os.environ.get("INTERMODAL_V2_KEEP_WORKDIR") != "1":
                shutil.rmtree(workdir, ignore_errors=True)
        _report(config, "cgroup v2 VM: %s" % json.dumps(timings, sort_keys=True))


@pytest.fixture(scope="session")
def v2_host(request):
    """A started V2Host (cgroup v2 Debian VM reachable by SSH), shared by
    every test module of the session, stopped and its namespace deleted at
    the end of the session, even on failure."""
    if not ENABLED:
        pytest.skip(SKIP_REASON)
    if os.geteuid() != 0:
        pytest.skip("the v2 VM needs root (network namespace, tap, debootstrap)")
    host = _acquire(request.config)
    try:
        yield host
    finally:
        _release(request.config)


@pytest.fixture
def v2_playbook(v2_host, tmp_path):
    """v2_playbook(yaml_text, check=False, diff=False, expect_failure=False)
    -> PlaybookResult: ansible-playbook against the VM (hosts: v2), run inside
    the VM's network namespace with this checkout's collection."""
    import subprocess

    workdir = tmp_path / "v2-playbooks"
    for sub in ("local", "home", "cp"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS_DIR,
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "local"),
        "ANSIBLE_HOME": str(workdir / "home"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(workdir / "cp"),
        # One ssh round trip per task: the VM is emulated, every exec counts.
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_CALLBACK_PLUGINS": CALLBACK_DIR,
        "ANSIBLE_CALLBACKS_ENABLED": "jsonl_results",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    counter = {"n": 0}

    def run(playbook, check=False, diff=False, expect_failure=False, timeout=900):
        counter["n"] += 1
        path = workdir / ("playbook-%d.yml" % counter["n"])
        path.write_text(playbook)
        results = workdir / ("results-%d.jsonl" % counter["n"])
        cmd = v2_host.netns_argv([shutil.which("ansible-playbook") or "ansible-playbook",
                                  "-i", v2_host.inventory_path, str(path)])
        if check:
            cmd.append("--check")
        if diff:
            cmd.append("--diff")
        proc = subprocess.run(cmd, env=dict(env, INTERMODAL_JSONL_RESULTS=str(results)),
                              cwd=str(workdir), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
        records = []
        if results.exists():
            records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        result = PlaybookResult(proc.returncode, proc.stdout, proc.stderr, records, cmd)
        if expect_failure and proc.returncode == 0:
            pytest.fail("playbook succeeded but was expected to fail:\n%s" % proc.stdout[-6000:])
        if not expect_failure and proc.returncode != 0:
            pytest.fail("playbook failed (rc=%d):\nSTDOUT:\n%s\nSTDERR:\n%s"
                        % (proc.returncode, proc.stdout[-8000:], proc.stderr[-4000:]))
        return result

    return run
