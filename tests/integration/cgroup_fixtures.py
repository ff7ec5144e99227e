"""Shared pieces for the real-kernel cgroup tests: a private parent cgroup that
is torn down (processes killed, every directory removed, in every hierarchy)
even when a test fails, and a way to start a command inside a cgroup.

Only cgroups under the test's own ``intermodal-test-<random>`` parent are
ever touched.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS_DIR = os.path.join(REPO_ROOT, ".build", "collections")
if COLLECTIONS_DIR not in sys.path:
    sys.path.insert(0, COLLECTIONS_DIR)

from ansible_collections.intermodal.containers.plugins.module_utils._cgroups import (  # noqa: E402
    Cgroup,
    CgroupError,
    detect_layout,
)


def cgroupfs_usable():
    """None when we can create cgroups here, else the reason to skip."""
    if os.geteuid() != 0:
        return "needs root to create cgroups"
    try:
        layout = detect_layout()
    except CgroupError as exc:
        return str(exc)
    probe = Cgroup("intermodal-test-probe-%s" % uuid.uuid4().hex[:8], layout)
    try:
        probe.create()
    except (CgroupError, OSError) as exc:
        return "cannot create cgroups here: %s" % exc
    finally:
        try:
            probe.remove()
        except CgroupError:
            pass
    return None


def hierarchy_roots(layout):
    roots = list(dict.fromkeys(layout.v1.values()))
    if layout.unified:
        roots.append(layout.unified)
    return roots


def teardown_parent(layout, parent):
    """Kill every process in any cgroup below ``parent`` and remove them all, deepest first."""
    leftovers = []
    for root in hierarchy_roots(layout):
        top = os.path.join(root, parent)
        if not os.path.isdir(top):
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda entry: -entry[0].count("/")):
            for _attempt in range(200):
                try:
                    with open(os.path.join(dirpath, "cgroup.procs")) as handle:
                        pids = [int(p) for p in handle.read().split()]
                except OSError:
                    pids = []
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.02)
            try:
                os.rmdir(dirpath)
            except OSError as exc:
                leftovers.append("%s: %s" % (dirpath, exc))
    return leftovers


class Procs:
    """Processes a test starts; all killed and reaped at teardown."""

    def __init__(self):
        self.started = []

    def start_in(self, cgroup, argv, **kwargs):
        """Run argv with its very first instruction being the move into ``cgroup`` (sh wrapper, then exec)."""
        moves = "; ".join("echo $$ > %s" % shlex.quote(os.path.join(d, "cgroup.procs")) for d in cgroup.dirs())
        wrapper = ["sh", "-c", moves + '; exec "$@"', "sh"] + list(argv)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(wrapper, **kwargs)
        self.started.append(proc)
        return proc

    def start(self, argv, **kwargs):
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, **kwargs)
        self.started.append(proc)
        return proc

    def cleanup(self):
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()


@pytest.fixture
def cgroup_parent():
    """(layout, parent name) for a fresh private parent, removed with everything in it afterwards."""
    reason = cgroupfs_usable()
    if reason:
        pytest.skip(reason)
    layout = detect_layout()
    parent = "intermodal-test-%s" % uuid.uuid4().hex[:12]
    try:
        yield layout, parent
    finally:
        leftovers = teardown_parent(layout, parent)
        assert not leftovers, "cgroups left behind: %s" % leftovers


@pytest.fixture
def procs():
    tracker = Procs()
    try:
        yield tracker
    finally:
        tracker.cleanup()
