# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Extracted layers, keyed by chain ID, in overlay-ready directories.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

``layers/<chain hex>/diff`` holds one layer exactly as overlayfs wants a
lowerdir (whiteouts as 0/0 char devices, opaque dirs as an xattr), and
``layer.json`` its metadata. A layer directory exists only once it is
complete: it is extracted in tmp/, its diff_id verified, synced with one
syncfs, and renamed into place. Keying by chain ID (not blob digest) shares a
layer between every image built on the same stack, whatever compression their
blobs used, as containerd's snapshotter does.
"""

from __future__ import annotations

import ctypes
import json
import os
import time
from contextlib import contextmanager

from ansible_collections.intermodal.containers.plugins.module_utils._content import remove_tree
from ansible_collections.intermodal.containers.plugins.module_utils._errors import StoreError
from ansible_collections.intermodal.containers.plugins.module_utils._reference import validate_digest
from ansible_collections.intermodal.containers.plugins.module_utils._unpack import inherit_parent_metadata

_LIBC = None


def syncfs(path):
    """One syncfs for the filesystem holding path: per layer, not per file (containerd's choice)."""
    global _LIBC  # pylint: disable=global-statement
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if getattr(_LIBC, "syncfs", None) is None or _LIBC.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


class LayerJob:
    """The right to produce one layer, held under its lock."""

    def __init__(self, layers, chain_id, staging):
        self.layers = layers
        self.chain_id = chain_id
        self.staging = staging
        self.diff_dir = os.path.join(staging, "diff") if staging else None
        self.exists = staging is None

    def commit(self, diff_id, parent_chain_id, implied_dirs=(), entries=0, size=0, blob_digest=None):
        """Fix implied parents from the lower layers, sync, and rename into place."""
        lower = self.layers.lower_dirs(parent_chain_id) if parent_chain_id else []
        if implied_dirs:
            inherit_parent_metadata(self.diff_dir, list(implied_dirs), lower)
        meta = {
            "chain_id": self.chain_id,
            "diff_id": diff_id,
            "parent": parent_chain_id,
            "entries": entries,
            "size": size,
            "blob": blob_digest,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with open(os.path.join(self.staging, "layer.json"), "w") as handle:
            json.dump(meta, handle, sort_keys=True)
        syncfs(self.staging)
        final = self.layers.path(self.chain_id)
        os.rename(self.staging, final)
        self.exists = True
        return final


class LayerStore:
    """Layers on top of a ContentStore's root."""

    def __init__(self, content):
        self.content = content

    def path(self, chain_id):
        validate_digest(chain_id)
        return os.path.join(self.content.layers_dir, chain_id.split(":", 1)[1])

    def diff_path(self, chain_id):
        return os.path.join(self.path(chain_id), "diff")

    def has(self, chain_id):
        return os.path.isfile(os.path.join(self.path(chain_id), "layer.json"))

    def info(self, chain_id):
        try:
            with open(os.path.join(self.path(chain_id), "layer.json")) as handle:
                return json.load(handle)
        except (OSError, ValueError) as exc:
            raise StoreError("layer %s in %s is unreadable: %s" % (chain_id, self.content.root, exc))

    def list(self):
        try:
            names = os.listdir(self.content.layers_dir)
        except FileNotFoundError:
            return []
        return sorted("sha256:" + name for name in names if len(name) == 64)

    def lower_dirs(self, chain_id):
        """diff dirs from chain_id down to the base: the order overlayfs' lowerdir wants."""
        dirs = []
        current = chain_id
        while current:
            if not self.has(current):
                raise StoreError("layer %s is missing from the store at %s" % (current, self.content.root))
            dirs.append(self.diff_path(current))
            current = self.info(current).get("parent")
            if len(dirs) > 500:
                raise StoreError("layer chain of %s is longer than 500 layers" % chain_id)
        return dirs

    @contextmanager
    def produce(self, chain_id):
        """Lock chain_id; yield a LayerJob with .exists set if someone else already made it."""
        with self.content.lock("layer-" + chain_id.split(":", 1)[1]):
            if self.has(chain_id):
                yield LayerJob(self, chain_id, None)
                return
            with self.content.staging_dir("layer") as staging:
                os.mkdir(os.path.join(staging, "diff"), 0o755)
                yield LayerJob(self, chain_id, staging)

    def remove(self, chain_id):
        """Remove a layer: rename it into tmp first so a crash never leaves half a layer visible."""
        path = self.path(chain_id)
        if not os.path.lexists(path):
            return False
        doomed = self.content.tmp_path("rm-layer")
        os.rename(path, doomed)
        remove_tree(doomed)
        self.content.release_tmp(doomed)
        return True
