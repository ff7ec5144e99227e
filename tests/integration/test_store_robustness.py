"""The store under kill -9 and under concurrent pulls, with the real module process.

The module file is run directly (``python image.py args.json``), the way
Ansible runs it on a target, so SIGKILL lands on the process that does the
work. The image is the Debian minbase + delta image: big enough (about 120 MB
unpacked, 2 layers) that kills land while blobs are downloading, layers
unpacking and commits renaming.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

# pytest fixture: pytest finds it by name in this module's namespace.
from tests.integration.fixtures_images import debian_images  # noqa: F401  # pylint: disable=unused-import
from tests.integration.image_helpers import COLLECTIONS_DIR, REPO_ROOT, store_report

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODULE = os.path.join(REPO_ROOT, "plugins", "modules", "image.py")
KILL_TRIALS = 24


def start_module(args, workdir, tag):
    path = os.path.join(workdir, "args-%s.json" % tag)
    with open(path, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    env = dict(os.environ, PYTHONPATH=COLLECTIONS_DIR)
    return subprocess.Popen([sys.executable, MODULE, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=workdir, start_new_session=True)


def finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    text = out.decode()
    result = json.loads(text[text.index("{"):]) if "{" in text else {}
    return proc.returncode, result, err.decode()


def tree_listing(root):
    """(path, type, mode, size, target) of every entry: what a pull must reproduce exactly."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            target = os.readlink(path) if os.path.islink(path) else None
            out.append((os.path.relpath(path, root), st.st_mode, st.st_uid, st.st_size, target))
    return out


def layer_trees(store):
    layers = os.path.join(store, "layers")
    return {name: tree_listing(os.path.join(layers, name, "diff")) for name in sorted(os.listdir(layers))}


def test_kill_9_at_random_points_leaves_the_store_consistent(debian_images, scratch_dir):  # noqa: F811
    def args_for(store):
        return {"name": debian_images["top"], "store_root": store}

    reference = os.path.join(scratch_dir, "reference")
    started = time.monotonic()
    code, result, err = finish(start_module(args_for(reference), scratch_dir, "reference"))
    full = time.monotonic() - started
    assert code == 0 and result["changed"], err
    expected = layer_trees(reference)
    assert len(expected) == 2

    rng = random.Random(int(os.environ.get("INTERMODAL_CRASH_SEED", "20261129")))
    persistent = os.path.join(scratch_dir, "persistent")
    outcomes = {"killed": 0, "finished": 0}
    for trial in range(KILL_TRIALS):
        # Even trials keep one store across kills (recovery path); odd ones start fresh.
        store = persistent if trial % 2 == 0 else os.path.join(scratch_dir, "fresh-%d" % trial)
        proc = start_module(args_for(store), scratch_dir, "trial-%d" % trial)
        time.sleep(rng.uniform(0.0, full * 1.1))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            outcomes["killed"] += 1
        else:
            outcomes["finished"] += 1
        proc.communicate()
        report = store_report(store)
        assert report["ok"], ("trial %d" % trial, report)
        # Half-made layers never become visible: every visible layer is complete.
        for name in os.listdir(os.path.join(store, "layers")) if os.path.isdir(os.path.join(store, "layers")) else []:
            assert layer_trees(store)[name] == expected[name], "trial %d: layer %s differs" % (trial, name)

    assert outcomes["killed"] >= KILL_TRIALS // 2, outcomes
    # The next pull succeeds, purges the staging the kills left, and matches the reference.
    code, result, err = finish(start_module(args_for(persistent), scratch_dir, "recover"))
    assert code == 0, err
    report = store_report(persistent)
    assert report["ok"] and report["staging"] == [] and report["images"] == 1, report
    assert layer_trees(persistent) == expected


def test_four_concurrent_pulls_fetch_each_blob_once(debian_images, registry_open, scratch_dir):  # noqa: F811
    store = os.path.join(scratch_dir, "store")
    registry_open.clear_log()
    procs = [start_module({"name": debian_images["top"], "store_root": store}, scratch_dir, "c%d" % i)
             for i in range(4)]
    results = [finish(proc) for proc in procs]
    for code, result, err in results:
        assert code == 0, err
        assert result["image"]["name"] == debian_images["top"]
    assert sum(1 for _unused, result, _unused in results if result["changed"]) >= 1
    fetched = registry_open.blob_fetches()
    # Two layers and one config: each fetched exactly once across the four runs.
    assert len(fetched) == 3 and set(fetched.values()) == {1}, fetched
    report = store_report(store)
    assert report["ok"] and report["layers"] == 2 and report["images"] == 1, report
