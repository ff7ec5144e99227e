# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image index: name -> manifest digest -> config, one JSON file in the store.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

An image is just a name pointing at content (containerd's ``Image{Name,
Target}``). Updates are read-modify-write under the index lock and replace
the file atomically, so concurrent runs never lose each other's entries and a
crash leaves either the old or the new index.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager

from ansible_collections.intermodal.containers.plugins.module_utils._errors import StoreError

INDEX_VERSION = 1


def now_iso():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ImageIndex:
    """images.json: {"version": 1, "images": {name: record}}.

    A record holds ``digest`` (what the name resolved to in its registry: an
    index or a manifest), ``manifest_digest`` (the platform manifest we
    unpacked), ``config_digest`` (the image ID), ``platform``, ``source`` and
    ``updated``.
    """

    def __init__(self, content):
        self.content = content
        self.path = os.path.join(content.root, "images.json")

    def load(self):
        try:
            with open(self.path) as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StoreError("image index %s is unreadable: %s" % (self.path, exc))
        if data.get("version") != INDEX_VERSION:
            raise StoreError("image index %s has unsupported version %r" % (self.path, data.get("version")))
        return data.get("images", {})

    def get(self, name):
        return self.load().get(name)

    @contextmanager
    def update(self):
        """Yield the images dict; write it back atomically when the block succeeds."""
        with self.content.lock("index"):
            images = self.load()
            yield images
            tmp = self.content.tmp_path("index")
            with open(tmp, "w") as handle:
                json.dump({"version": INDEX_VERSION, "images": images}, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(tmp, self.path)
            self.content.release_tmp(tmp)
