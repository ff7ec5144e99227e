"""Fixtures for integration tests against real peers.

- registry_open / registry_htpasswd / registry_token: session-scoped, started
  docker-registry processes on 127.0.0.1 (see tests/lib/registry.py).
- collection_env: environment for ansible-playbook subprocesses.
- make_registry: start extra registries (own workdir, stopped afterwards).
- run_playbook: run a playbook (path or YAML text) against localhost and get
  back rc, stdout, per-task results and the recap.
- busybox_rootfs_tar, debian_delta_layer_tar, arch_rootfs_tar, and
  debian_minbase_tar (cached across runs, built by debootstrap on first use).
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
# pytest runs with --import-mode=importlib, which does not put the rootdir on
# sys.path; `from tests.lib... import` needs it.
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tests.lib.registry import Registry  # noqa: E402

COLLECTIONS_DIR = os.path.join(REPO_ROOT, ".build", "collections")
CALLBACK_DIR = os.path.join(REPO_ROOT, "tests", "lib", "callback_plugins")


def _registry_fixture(tmp_path_factory, name, auth):
    base = str(tmp_path_factory.mktemp("registry-" + name))
    reg = Registry(os.path.join(base, "reg"), auth=auth)
    try:
        reg.start()
        yield reg
    finally:
        reg.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def registry_open(tmp_path_factory):
    yield from _registry_fixture(tmp_path_factory, "open", None)


@pytest.fixture(scope="session")
def registry_htpasswd(tmp_path_factory):
    yield from _registry_fixture(tmp_path_factory, "htpasswd", "htpasswd")


@pytest.fixture(scope="session")
def registry_token(tmp_path_factory):
    """Token-auth registry; its TokenIssuer is `registry_token.issuer`."""
    yield from _registry_fixture(tmp_path_factory, "token", "token")


@pytest.fixture
def make_registry(tmp_path):
    """make_registry(auth=None, **kwargs) -> started Registry, stopped and
    removed after the test (for tests needing a fresh log or other settings)."""
    started = []

    def make(auth=None, **kwargs):
        reg = Registry(str(tmp_path / ("registry-%d" % len(started))), auth=auth, **kwargs)
        started.append(reg)
        return reg.start()

    try:
        yield make
    finally:
        for reg in started:
            reg.cleanup()


# ---- ansible-playbook ------------------------------------------------------

@pytest.fixture
def collection_env(tmp_path):
    """Environment for `ansible-playbook` runs using this checkout's collection."""
    tmp = tmp_path / "ansible"
    for sub in ("local", "remote", "home"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS_DIR,
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp / "remote"),
        "ANSIBLE_HOME": str(tmp / "home"),
        "ANSIBLE_CALLBACK_PLUGINS": CALLBACK_DIR,
        "ANSIBLE_CALLBACKS_ENABLED": "jsonl_results",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    return env


class PlaybookResult:
    """rc, stdout, stderr, tasks (list of dicts: name, host, action, changed,
    failed, skipped, status, result) and recap ({host: {ok, changed, ...}})."""

    def __init__(self, rc, stdout, stderr, records, cmd):
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.cmd = cmd
        self.tasks = [r for r in records if r.get("type") == "task"]
        stats = [r for r in records if r.get("type") == "stats"]
        self.recap = stats[-1]["recap"] if stats else {}

    def task(self, name):
        """The (last) result of the task with this name; KeyError if none ran."""
        for rec in reversed(self.tasks):
            if rec["name"] == name:
                return rec
        raise KeyError("no task named %r ran; tasks: %s" % (name, [t["name"] for t in self.tasks]))

    @property
    def changed(self):
        return sum(h.get("changed", 0) for h in self.recap.values())

    @property
    def failed(self):
        return sum(h.get("failures", 0) + h.get("unreachable", 0) for h in self.recap.values())

    def __repr__(self):
        return "PlaybookResult(rc=%d, recap=%r)" % (self.rc, self.recap)


def _looks_like_yaml(text):
    return "\n" in text or not os.path.exists(text)


def make_playbook_runner(env, workdir):
    counter = {"n": 0}

    def run_playbook(playbook, extra_vars=None, check=False, diff=False,
                     expect_failure=False, timeout=600, extra_args=()):
        counter["n"] += 1
        n = counter["n"]
        if _looks_like_yaml(playbook):
            path = os.path.join(workdir, "playbook-%d.yml" % n)
            with open(path, "w") as f:
                f.write(playbook)
        else:
            path = os.path.abspath(playbook)
        results_path = os.path.join(workdir, "results-%d.jsonl" % n)
        cmd = [shutil.which("ansible-playbook") or "ansible-playbook",
               "-i", "localhost,", "-c", "local", path]
        if extra_vars:
            vars_path = os.path.join(workdir, "extra-vars-%d.json" % n)
            with open(vars_path, "w") as f:
                json.dump(extra_vars, f)
            cmd += ["-e", "@" + vars_path]
        if check:
            cmd.append("--check")
        if diff:
            cmd.append("--diff")
        cmd += list(extra_args)
        run_env = dict(env, INTERMODAL_JSONL_RESULTS=results_path)
        proc = subprocess.run(cmd, env=run_env, cwd=workdir, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        records = []
        if os.path.exists(results_path):
            with open(results_path, encoding="utf-8") as f:
                records = [json.loads(line) for line in f if line.strip()]
        result = PlaybookResult(proc.returncode, proc.stdout, proc.stderr, records, cmd)
        if expect_failure and proc.returncode == 0:
            pytest.fail("playbook %s succeeded but was expected to fail:\n%s" % (path, proc.stdout))
        if not expect_failure and proc.returncode != 0:
            pytest.fail("playbook %s failed (rc=%d):\nSTDOUT:\n%s\nSTDERR:\n%s"
                        % (path, proc.returncode, proc.stdout[-8000:], proc.stderr[-4000:]))
        return result

    return run_playbook


@pytest.fixture
def run_playbook(collection_env, tmp_path):
    """run_playbook(playbook_path_or_yaml, extra_vars=None, check=False,
    diff=False, expect_failure=False) -> PlaybookResult"""
    workdir = tmp_path / "playbooks"
    workdir.mkdir(exist_ok=True)
    return make_playbook_runner(collection_env, str(workdir))


# ---- rootfs tars ------------------------------------------------------------

@pytest.fixture(scope="session")
def rootfs_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("rootfs")
    try:
        yield path
    finally:
        shutil.rmtree(str(path), ignore_errors=True)


@pytest.fixture(scope="session")
def busybox_rootfs_tar(rootfs_dir):
    from tests.lib.rootfs import build_busybox_rootfs
    return build_busybox_rootfs(str(rootfs_dir / "busybox-rootfs.tar"))


@pytest.fixture(scope="session")
def debian_delta_layer_tar(rootfs_dir):
    from tests.lib.rootfs import build_debian_delta_layer
    return build_debian_delta_layer(str(rootfs_dir / "debian-delta.tar"))


@pytest.fixture(scope="session")
def arch_rootfs_tar(rootfs_dir):
    """arch_rootfs_tar("arm64") -> path of a tiny rootfs with etc/arch."""
    from tests.lib.rootfs import build_arch_variant_rootfs

    def build(arch):
        return build_arch_variant_rootfs(
            str(rootfs_dir / ("arch-%s.tar" % arch.replace("/", "-"))), arch)
    return build


@pytest.fixture(scope="session")
def debian_minbase_tar(rootfs_cache_dir):
    """Cached debootstrap minbase tar (first use: ~25 s, needs root + apt mirror)."""
    from tests.lib.rootfs import build_debian_minbase
    if os.geteuid() != 0:
        pytest.skip("debootstrap needs root")
    return build_debian_minbase(rootfs_cache_dir)


@pytest.fixture(scope="session")
def rootfs_cache_dir():
    """Where cached rootfs tars (Debian minbase) live between runs."""
    from tests.lib.rootfs import DEFAULT_CACHE_DIR
    return os.environ.get("INTERMODAL_TEST_CACHE", DEFAULT_CACHE_DIR)


@pytest.fixture
def scratch_dir():
    """A temp dir removed afterwards even if the test fails."""
    path = tempfile.mkdtemp(prefix="intermodal-it-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
