"""Helpers shared by the image integration tests: playbook text and store inspection."""

from __future__ import annotations

import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS_DIR = os.path.join(REPO_ROOT, ".build", "collections")
if COLLECTIONS_DIR not in sys.path:
    sys.path.insert(0, COLLECTIONS_DIR)

from ansible_collections.intermodal.containers.plugins.module_utils._images import ImageService  # noqa: E402
from ansible_collections.intermodal.containers.plugins.module_utils._store_check import check_store  # noqa: E402


def task_playbook(module, args, register="out", name="under test", no_log=False, ignore_errors=False):
    """A one-task playbook for ``module`` with ``args``; JSON is valid YAML."""
    task = {"name": name, module: args, "register": register}
    if no_log:
        task["no_log"] = True
    if ignore_errors:
        task["ignore_errors"] = True
    play = [{"name": "test", "hosts": "localhost", "gather_facts": False, "tasks": [task]}]
    return json.dumps(play, indent=1)


def image_playbook(**args):
    return task_playbook("intermodal.containers.image", args)


def info_playbook(**args):
    return task_playbook("intermodal.containers.image_info", args)


def result_of(run, name="under test"):
    return run.task(name)


def store_report(store_root):
    """check_store() of a store, or an 'absent' marker if it was never created."""
    service = ImageService(store_root)
    if not service.content.exists():
        return {"ok": True, "problems": [], "blobs": 0, "layers": 0, "images": 0, "staging": [], "absent": True}
    try:
        return check_store(service)
    finally:
        service.close()
