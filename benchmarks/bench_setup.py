"""What every benchmark script does first: use the project's venv and find the collection.

Imported by the scripts next to it (python3 benchmarks/<script>.py puts this
directory on sys.path).
"""

from __future__ import annotations

import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS_DIR = os.path.join(REPO_ROOT, ".build", "collections")  # where tests/conftest.py links the collection
VENV_PYTHON = os.path.join(REPO_ROOT, ".venv", "bin", "python")


def reexec_in_venv(flag):
    """Re-run the script with the project's venv (it has requests, isal...), once."""
    if os.path.exists(VENV_PYTHON) and os.path.realpath(sys.prefix) != os.path.realpath(
            os.path.join(REPO_ROOT, ".venv")) and not os.environ.get(flag):
        os.environ[flag] = "1"
        os.execv(VENV_PYTHON, [VENV_PYTHON] + sys.argv)


def ensure_collection_path():
    """Make ansible_collections.intermodal.containers and tests.* importable.

    tests/conftest.py owns the .build/collections link; importing it makes it
    (as benchmarks/monitor_rss.py does).
    """
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    import tests.conftest  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import


def run(cmd, env=None, check=True, cwd=None):
    """Run a command quietly; raise with its output's tail when check and it failed."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL,
                          check=False)
    if check and proc.returncode != 0:
        raise RuntimeError("%s failed (%d):\n%s" % (" ".join(cmd), proc.returncode,
                                                    (proc.stdout + proc.stderr)[-3000:]))
    return proc
