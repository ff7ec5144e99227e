# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Named volumes: data that outlives containers, with backups by tar.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

``volumes/<name>/_data`` is what containers mount; ``volume.json`` keeps its
labels and ownership. Export writes a deterministic tar (sorted, numeric
owners) so exporting unchanged data twice changes nothing. Import extracts
through the root-confined layer applier into staging, compares the content
with what is there, and swaps directories only when they differ, so a failed
or killed import never leaves half a volume.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import stat
import tarfile
import time

from ansible_collections.intermodal.containers.plugins.module_utils._container_paths import (
    recorded_states,
    validate_name,
    volumes_dir,
)
from ansible_collections.intermodal.containers.plugins.module_utils._content import hash_file, remove_tree
from ansible_collections.intermodal.containers.plugins.module_utils._errors import IntermodalError, StoreError
from ansible_collections.intermodal.containers.plugins.module_utils._streams import DecompressingReader
from ansible_collections.intermodal.containers.plugins.module_utils._unpack import apply_layer


class VolumeError(IntermodalError):
    """A volume operation cannot proceed (in use, missing, bad owner...)."""


def resolve_owner(value, kind):
    """uid/gid from an int, a digit string or a host user/group name."""
    if value is None or value == "":
        return None
    text = str(value)
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid if kind == "owner" else grp.getgrnam(text).gr_gid
    except KeyError:
        raise VolumeError("%s: no %s named %r on this host" % (kind, "user" if kind == "owner" else "group", text))


def parse_mode(value):
    if value is None or value == "":
        return None
    if isinstance(value, int):
        mode = value
    else:
        try:
            mode = int(str(value), 8)
        except ValueError:
            raise VolumeError("mode: %r is not an octal mode such as '0755'" % (value,))
    if mode < 0 or mode > 0o7777:
        raise VolumeError("mode: %o is out of range" % mode)
    return mode


def content_digest(root):
    """Hash of a tree's names, types, modes, owners, link targets and file data."""
    hasher = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            hasher.update(("%s\0%o\0%d\0%d\0" % (rel, st.st_mode, st.st_uid, st.st_gid)).encode("utf-8", "surrogateescape"))
            if stat.S_ISLNK(st.st_mode):
                hasher.update(os.readlink(path).encode("utf-8", "surrogateescape"))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    while True:
                        data = handle.read(1024 * 1024)
                        if not data:
                            break
                        hasher.update(data)
            hasher.update(b"\n")
    return "sha256:" + hasher.hexdigest()


class Volume:
    def __init__(self, store_root, name):
        self.name = validate_name(name, "volume")
        self.store_root = os.path.abspath(store_root)
        self.dir = os.path.join(volumes_dir(store_root), name)
        self.data = os.path.join(self.dir, "_data")
        self.meta_path = os.path.join(self.dir, "volume.json")

    def exists(self):
        return os.path.isfile(self.meta_path) and os.path.isdir(self.data)

    def meta(self):
        try:
            with open(self.meta_path) as handle:
                return json.load(handle)
        except (OSError, ValueError) as exc:
            raise StoreError("volume %s metadata is unreadable: %s" % (self.name, exc))

    def actual(self):
        """The volume as it is: labels from metadata, ownership and mode from the directory."""
        if not self.exists():
            return None
        st = os.stat(self.data)
        meta = self.meta()
        return {
            "name": self.name,
            "path": self.data,
            "labels": meta.get("labels", {}),
            "owner": st.st_uid,
            "group": st.st_gid,
            "mode": "%04o" % stat.S_IMODE(st.st_mode),
            "created": meta.get("created"),
        }

    def _write_meta(self, labels, created=None):
        meta = {"name": self.name, "labels": labels, "created": created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = self.meta_path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(meta, handle, sort_keys=True)
        os.rename(tmp, self.meta_path)

    def ensure(self, labels, owner, group, mode):
        """Create or adjust; returns the list of what changed (empty when nothing did)."""
        changes = []
        if not self.exists():
            os.makedirs(volumes_dir(self.store_root), mode=0o700, exist_ok=True)
            os.makedirs(self.data, mode=0o755, exist_ok=True)
            self._write_meta(labels or {})
            changes.append("created")
        current = self.actual()
        if labels is not None and current["labels"] != labels:
            self._write_meta(labels, current["created"])
            changes.append("labels")
        if (owner is not None and owner != current["owner"]) or (group is not None and group != current["group"]):
            os.chown(self.data, current["owner"] if owner is None else owner, current["group"] if group is None else group)
            changes.append("owner")
        if mode is not None and "%04o" % mode != current["mode"]:
            os.chmod(self.data, mode)
            changes.append("mode")
        return changes

    def users(self):
        """Containers whose desired state mounts this volume."""
        return [name for name, state in recorded_states(self.store_root)
                if any(m.get("type") == "volume" and m.get("source") == self.name for m in state.get("mounts", []))]

    def remove(self, force=False):
        users = self.users()
        if users and not force:
            raise VolumeError("volume %s is used by container(s) %s; remove them first or set force=true"
                              % (self.name, ", ".join(users)))
        remove_tree(self.dir)

    # -- backups -------------------------------------------------------------

    def export_needed(self, dest):
        if not os.path.exists(dest):
            return True
        tmp = dest + ".intermodal-tmp"
        try:
            self._write_tar(tmp)
            return hash_file(tmp) != hash_file(dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def export(self, dest):
        """Write a deterministic tar of the data; True if the file changed."""
        tmp = dest + ".intermodal-tmp"
        try:
            self._write_tar(tmp)
            if os.path.exists(dest) and hash_file(tmp) == hash_file(dest):
                return False
            os.chmod(tmp, 0o600)
            os.rename(tmp, dest)
            return True
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _write_tar(self, path):
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for dirpath, dirnames, filenames in os.walk(self.data):
                dirnames.sort()
                for name in sorted(dirnames + filenames):
                    full = os.path.join(dirpath, name)
                    info = tar.gettarinfo(full, arcname=os.path.relpath(full, self.data))
                    info.uname = info.gname = ""
                    if info.isreg():
                        with open(full, "rb") as handle:
                            tar.addfile(info, handle)
                    else:
                        tar.addfile(info)

    def import_needed(self, source):
        staging = self._stage(source)
        try:
            return content_digest(staging) != content_digest(self.data)
        finally:
            remove_tree(os.path.dirname(staging))

    def import_tar(self, source):
        """Replace the data with the tar's content; True if it changed."""
        staging = self._stage(source)
        holder = os.path.dirname(staging)
        try:
            if content_digest(staging) == content_digest(self.data):
                return False
            st = os.stat(self.data)
            os.chown(staging, st.st_uid, st.st_gid)
            os.chmod(staging, stat.S_IMODE(st.st_mode))
            old = os.path.join(holder, "old")
            os.rename(self.data, old)
            os.rename(staging, self.data)
            return True
        finally:
            remove_tree(holder)

    def _stage(self, source):
        if not os.path.isfile(source):
            raise VolumeError("import_from %s does not exist or is not a file" % source)
        holder = os.path.join(self.dir, ".import-%d" % os.getpid())
        remove_tree(holder)
        os.makedirs(os.path.join(holder, "data"))
        staging = os.path.join(holder, "data")
        try:
            with open(source, "rb") as handle:
                stream = DecompressingReader(handle)
                try:
                    apply_layer(stream, staging)
                    stream.drain()
                finally:
                    stream.close()
        except Exception:
            remove_tree(holder)
            raise
        return staging


def list_volumes(store_root):
    try:
        names = sorted(os.listdir(volumes_dir(store_root)))
    except FileNotFoundError:
        return []
    return [n for n in names if Volume(store_root, n).exists()]
