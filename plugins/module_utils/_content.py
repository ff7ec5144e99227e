# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The content-addressed blob store on the target, with its locks and staging area.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

Layout under the store root (mode 0700, so host users cannot reach setuid
binaries inside layers, CVE-2021-41103)::

    blobs/sha256/<hex>     verified blobs (manifests, configs, compressed layers)
    layers/<hex>/          extracted layers by chain ID (see _layers)
    tmp/<name>             staging; every entry is flock'ed by its writer
    locks/<name>.lock      advisory locks
    images.json            the image index (see _index)

Every write goes to tmp/ first, is verified, fsync'ed and renamed into place,
so a crash at any point leaves only unreferenced staging that the next run
purges. The store knows nothing about registries or tar (architecture.md).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import time
import uuid
from contextlib import contextmanager

from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    DigestMismatch,
    LockTimeout,
    StoreError,
)
from ansible_collections.intermodal.containers.plugins.module_utils._reference import validate_digest

DEFAULT_ROOT = "/var/lib/intermodal"
DEFAULT_LOCK_TIMEOUT = 900.0


def hash_file(path):
    """(sha256 digest, size) of a file, read in 1 MiB chunks."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while True:
            data = handle.read(1024 * 1024)
            if not data:
                break
            hasher.update(data)
            size += len(data)
    return "sha256:" + hasher.hexdigest(), size


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Lock:
    """An flock on a file; exclusive or shared, with a bounded wait."""

    def __init__(self, path, shared, timeout, what):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                fcntl.flock(self.fd, mode)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(self.fd)
                    raise
            if time.monotonic() >= deadline:
                os.close(self.fd)
                raise LockTimeout(
                    "timed out after %.0fs waiting for %s (another run holds %s)" % (timeout, what, path)
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class BlobIngest:
    """A blob being written: hash while writing, then verify and rename into place."""

    def __init__(self, store, digest, size):
        self._store = store
        self.digest = digest
        self.expected_size = size
        self._tmp = store.tmp_path("blob-" + digest.split(":", 1)[1][:16])
        self._file = open(self._tmp, "wb")  # pylint: disable=consider-using-with
        self._hash = hashlib.sha256()
        self.size = 0
        self.committed = False

    def write(self, data):
        self._hash.update(data)
        self.size += len(data)
        self._file.write(data)

    def commit(self):
        """Verify size and digest, fsync, rename, fsync the directory."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        actual = "sha256:" + self._hash.hexdigest()
        if self.expected_size is not None and self.size != self.expected_size:
            self.abort()
            raise DigestMismatch("blob %s is %d bytes, expected %d" % (self.digest, self.size, self.expected_size))
        if actual != self.digest:
            self.abort()
            raise DigestMismatch("blob does not match its digest: expected %s, got %s" % (self.digest, actual))
        final = self._store.blob_path(self.digest)
        os.chmod(self._tmp, 0o600)
        os.rename(self._tmp, final)
        _fsync_dir(os.path.dirname(final))
        self.committed = True
        self._store.release_tmp(self._tmp)
        return final

    def abort(self):
        if not self._file.closed:
            self._file.close()
        if not self.committed:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._store.release_tmp(self._tmp)


class ContentStore:
    """Blobs by digest, a staging area, and locks, under one root directory."""

    def __init__(self, root=DEFAULT_ROOT, lock_timeout=DEFAULT_LOCK_TIMEOUT):
        self.root = os.path.abspath(root)
        self.lock_timeout = lock_timeout
        self.blobs_dir = os.path.join(self.root, "blobs", "sha256")
        self.layers_dir = os.path.join(self.root, "layers")
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.locks_dir = os.path.join(self.root, "locks")
        self._held = {}

    # -- set-up --------------------------------------------------------------

    def exists(self):
        return os.path.isdir(self.blobs_dir)

    def ensure(self):
        """Create the layout (root 0700) and purge staging left by killed runs."""
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            os.chmod(self.root, 0o700)
            for path in (self.blobs_dir, self.layers_dir, self.tmp_dir, self.locks_dir):
                os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError("cannot create the image store at %s: %s" % (self.root, exc.strerror or exc))
        self.purge_stale_tmp()

    # -- locks ---------------------------------------------------------------

    @contextmanager
    def lock(self, name, shared=False, timeout=None):
        """flock locks/<name>.lock. The store lock is shared by writers and exclusive for GC."""
        lock = _Lock(
            os.path.join(self.locks_dir, name + ".lock"),
            shared,
            self.lock_timeout if timeout is None else timeout,
            "lock %r in store %s" % (name, self.root),
        )
        try:
            yield lock
        finally:
            lock.release()

    # -- staging -------------------------------------------------------------

    def tmp_path(self, prefix):
        """A fresh staging path whose owner holds tmp/<name>.owner locked until exit."""
        name = "%s-%d-%s" % (prefix, os.getpid(), uuid.uuid4().hex[:12])
        owner = _Lock(os.path.join(self.tmp_dir, name + ".owner"), False, 0, "staging " + name)
        path = os.path.join(self.tmp_dir, name)
        self._held[path] = owner
        return path

    def release_tmp(self, path):
        """Drop the ownership of a staging path once it was renamed away or removed."""
        owner = self._held.pop(path, None)
        if owner is not None:
            try:
                os.unlink(owner.path)
            except FileNotFoundError:
                pass
            owner.release()

    @contextmanager
    def staging_dir(self, prefix):
        """A new empty staging directory, removed on exit unless it was renamed away."""
        path = self.tmp_path(prefix)
        os.mkdir(path, 0o700)
        try:
            yield path
        finally:
            if os.path.lexists(path):
                remove_tree(path)
            self.release_tmp(path)

    def purge_stale_tmp(self):
        """Remove staging whose writer is gone (its .owner lock is free)."""
        try:
            names = os.listdir(self.tmp_dir)
        except FileNotFoundError:
            return []
        purged = []
        for name in names:
            if name.endswith(".owner"):
                continue
            owner = os.path.join(self.tmp_dir, name + ".owner")
            try:
                lock = _Lock(owner, False, 0, "staging")
            except LockTimeout:
                continue
            try:
                remove_tree(os.path.join(self.tmp_dir, name))
                purged.append(name)
                os.unlink(owner)
            finally:
                lock.release()
        for name in names:
            # .owner files whose staging is gone and nobody holds.
            if name.endswith(".owner") and not os.path.lexists(os.path.join(self.tmp_dir, name[:-6])):
                path = os.path.join(self.tmp_dir, name)
                try:
                    lock = _Lock(path, False, 0, "staging")
                except (LockTimeout, FileNotFoundError):
                    continue
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                finally:
                    lock.release()
        return purged

    def release_staging_locks(self):
        for path in list(self._held):
            self.release_tmp(path)

    # -- blobs ---------------------------------------------------------------

    def blob_path(self, digest):
        validate_digest(digest)
        algorithm, hexpart = digest.split(":", 1)
        if algorithm != "sha256":
            raise StoreError("the store keeps sha256 blobs only, not %s" % digest)
        return os.path.join(self.blobs_dir, hexpart)

    def has_blob(self, digest, size=None):
        try:
            st = os.stat(self.blob_path(digest))
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def open_blob(self, digest):
        try:
            return open(self.blob_path(digest), "rb")  # pylint: disable=consider-using-with
        except FileNotFoundError:
            raise StoreError("blob %s is missing from the store at %s" % (digest, self.root))

    def read_blob(self, digest, max_size=None):
        """Read a small blob and re-verify it: metadata must never be trusted from disk blindly."""
        with self.open_blob(digest) as handle:
            data = handle.read() if max_size is None else handle.read(max_size + 1)
        if max_size is not None and len(data) > max_size:
            raise StoreError("blob %s is larger than %d bytes" % (digest, max_size))
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise StoreError("blob %s in %s is corrupt (digest mismatch); remove the image and pull again" % (digest, self.root))
        return data

    def ingest(self, digest, size=None):
        validate_digest(digest)
        return BlobIngest(self, digest, size)

    def put_bytes(self, data, digest=None):
        """Store small content; returns its digest. Idempotent."""
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest is not None and digest != actual:
            raise DigestMismatch("content does not match its digest: expected %s, got %s" % (digest, actual))
        if self.has_blob(actual, len(data)):
            return actual
        ingest = self.ingest(actual, len(data))
        try:
            ingest.write(data)
            ingest.commit()
        finally:
            ingest.abort()
        return actual

    def put_file(self, path):
        """Hash a file and store a copy of it; returns (digest, size)."""
        digest, size = hash_file(path)
        if self.has_blob(digest, size):
            return digest, size
        ingest = self.ingest(digest, size)
        try:
            with open(path, "rb") as handle:
                shutil.copyfileobj(handle, ingest, 1024 * 1024)
            ingest.commit()
        finally:
            ingest.abort()
        return digest, size

    def list_blobs(self):
        try:
            return sorted("sha256:" + name for name in os.listdir(self.blobs_dir))
        except FileNotFoundError:
            return []

    def delete_blob(self, digest):
        try:
            os.unlink(self.blob_path(digest))
            return True
        except FileNotFoundError:
            return False


def remove_tree(path):
    """rm -rf that never follows symlinks and copes with mode-000 directories."""
    if os.path.islink(path) or not os.path.isdir(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return

    def _onerror(func, failed, _exc):
        parent = os.path.dirname(failed)
        os.chmod(parent, 0o700)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, 0o700)
        func(failed)

    shutil.rmtree(path, onerror=_onerror)  # pylint: disable=deprecated-argument
