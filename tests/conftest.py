"""Make the collection importable as ansible_collections.intermodal.containers.

The repository root is the collection root; a symlink under .build/ gives it
the namespace path Ansible and the tests import it by.
"""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS_DIR = os.path.join(REPO_ROOT, ".build", "collections")


def _ensure_collection_link():
    ns_dir = os.path.join(COLLECTIONS_DIR, "ansible_collections", "intermodal")
    link = os.path.join(ns_dir, "containers")
    os.makedirs(ns_dir, exist_ok=True)
    if not os.path.islink(link):
        try:
            os.symlink(REPO_ROOT, link)
        except FileExistsError:
            pass


_ensure_collection_link()
if COLLECTIONS_DIR not in sys.path:
    sys.path.insert(0, COLLECTIONS_DIR)
os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", COLLECTIONS_DIR)
