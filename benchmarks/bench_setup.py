"""What every benchmark script does first: use the project's venv and find the collection.

Imported by the scripts next to it (python3 benchmarks/<script>.py puts this
directory on sys.path). Like tests/conftest.py, it links
.build/collections/ansible_collections/intermodal/containers to the repo.
"""

from __future__ import annotations

import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS_DIR = os.path.join(REPO_ROOT, ".build", "collections")
VENV_PYTHON = os.path.join(REPO_ROOT, ".venv", "bin", "python")


def reexec_in_venv(flag):
    """Re-run the script with the project's venv (it has requests, isal...), once."""
    if os.path.exists(VENV_PYTHON) and os.path.realpath(sys.prefix) != os.path.realpath(
            os.path.join(REPO_ROOT, ".venv")) and not os.environ.get(flag):
        os.environ[flag] = "1"
        os.execv(VENV_PYTHON, [VENV_PYTHON] + sys.argv)


def ensure_collection_path():
    """Make ansible_collections.intermodal.containers and tests.* importable."""
    ns_dir = os.path.join(COLLECTIONS_DIR, "ansible_collections", "intermodal")
    link = os.path.join(ns_dir, "containers")
    os.makedirs(ns_dir, exist_ok=True)
    if not os.path.islink(link):
        try:
            os.symlink(REPO_ROOT, link)
        except FileExistsError:
            pass
    for path in (COLLECTIONS_DIR, REPO_ROOT):
        if path not in sys.path:
            sys.path.insert(0, path)


def run(cmd, env=None, check=True, cwd=None):
    """Run a command quietly; raise with its output's tail when check and it failed."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL,
                          check=False)
    if check and proc.returncode != 0:
        raise RuntimeError("%s failed (%d):\n%s" % (" ".join(cmd), proc.returncode,
                                                    (proc.stdout + proc.stderr)[-3000:]))
    return proc
