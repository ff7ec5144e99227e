# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Consistency check of an image store (the store's fsck).

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

What "consistent" means after any crash: every blob hashes to its name, every
visible layer is complete and its parents exist, and every name in the index
points at content that is all there. Staging left in tmp/ is allowed (the
next run purges it) and reported separately.
"""

from __future__ import annotations

import os

from ansible_collections.intermodal.containers.plugins.module_utils._content import hash_file
from ansible_collections.intermodal.containers.plugins.module_utils._errors import ManifestError, StoreError


def check_store(service, verify_blobs=True):
    """Return {"ok", "problems", "blobs", "layers", "images", "staging"} for the store."""
    content, layers = service.content, service.layers
    problems = []
    blobs = content.list_blobs()
    if verify_blobs:
        for digest in blobs:
            actual = hash_file(content.blob_path(digest))[0]
            if actual != digest:
                problems.append("blob %s hashes to %s" % (digest, actual))
    chains = layers.list()
    for chain_id in chains:
        path = layers.path(chain_id)
        if not os.path.isdir(os.path.join(path, "diff")):
            problems.append("layer %s has no diff directory" % chain_id)
            continue
        try:
            info = layers.info(chain_id)
        except StoreError as exc:
            problems.append(str(exc))
            continue
        if info.get("chain_id") != chain_id:
            problems.append("layer %s records chain ID %s" % (chain_id, info.get("chain_id")))
        parent = info.get("parent")
        if parent and not layers.has(parent):
            problems.append("layer %s has a missing parent %s" % (chain_id, parent))
    images = service.names()
    for name, record in images.items():
        try:
            complete = service.is_complete(record)
        except (StoreError, ManifestError) as exc:
            problems.append("image %s: %s" % (name, exc))
            continue
        if not complete:
            problems.append("image %s points at content missing from the store" % name)
    try:
        staging = sorted(n for n in os.listdir(content.tmp_dir) if not n.endswith(".owner"))
    except FileNotFoundError:
        staging = []
    return {
        "ok": not problems,
        "problems": problems,
        "blobs": len(blobs),
        "layers": len(chains),
        "images": len(images),
        "staging": staging,
    }
