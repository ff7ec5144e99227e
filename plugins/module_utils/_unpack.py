# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Apply one layer tar to an empty directory, in the overlayfs lowerdir format.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

``apply_layer`` is the root-confined tar applier: every entry's parent is
resolved afresh inside the layer directory (``_unpack_paths``), the last
component is created with ``O_EXCL``/``O_NOFOLLOW`` or an ``*at`` call, and
metadata is set through fds. Whiteouts become 0/0 character devices and
opaque markers an ``overlay.opaque`` xattr, so the directory can be used as an
overlay lower layer as it is. Headers are parsed by ``_unpack_tar``, which
bounds them; this file bounds entries and bytes. Never ``extractall``, never
``chroot`` (checklist items 22-33 of the pulling reference).
"""

from __future__ import annotations

import errno
import os
import stat

from ansible_collections.intermodal.containers.plugins.module_utils._errors import StoreError, UnsafeLayer
from ansible_collections.intermodal.containers.plugins.module_utils import _unpack_tar as tar
from ansible_collections.intermodal.containers.plugins.module_utils._unpack_paths import (
    chmod_nofollow,
    clean_components,
    close_unless,
    remove_at,
    remove_tree,
    resolve_dir,
    show,
)

__all__ = ["Limits", "ApplyResult", "apply_layer", "inherit_parent_metadata", "remove_tree"]

_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WHITEOUT = b".wh."
_OPAQUE = b".wh..wh..opq"
_TOLERATED_XATTR_ERRORS = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM)


class Limits(object):
    """Bounds for one layer; every attribute can be overridden by keyword."""

    max_entries = 1000000
    max_total_bytes = 64 * 1024 ** 3     # real file data written
    max_file_bytes = 32 * 1024 ** 3
    max_header_bytes = 1024 * 1024       # PAX / GNU long name/link headers per entry
    max_path_length = 4096
    max_depth = 256                      # path components

    def __init__(self, **overrides):
        for key, value in overrides.items():
            if not hasattr(Limits, key) or key.startswith("_"):
                raise TypeError("unknown unpack limit %r" % key)
            setattr(self, key, value)


class ApplyResult(object):
    """What ``apply_layer`` did.

    ``implied_dirs``: relative paths of directories we had to create because
    the tar did not list them (feed them to ``inherit_parent_metadata``).
    ``skipped_devices``: device/FIFO entries not created because we are not
    privileged. ``unapplied_whiteouts``: whiteouts the kernel refused to
    create. ``overlay_xattr_prefix``: ``trusted.overlay.`` when privileged,
    else ``user.overlay.`` (mount with ``userxattr`` then).
    """

    def __init__(self):
        self.entries = 0
        self.bytes_written = 0
        self.implied_dirs = []
        self.skipped_devices = 0
        self.whiteouts = 0
        self.opaque_dirs = []
        self.unapplied_whiteouts = []
        self.overlay_xattr_prefix = "trusted.overlay."

    def __repr__(self):
        return "ApplyResult(entries=%d, bytes_written=%d, implied_dirs=%d)" % (
            self.entries, self.bytes_written, len(self.implied_dirs))


def is_privileged():
    """Real root outside a user namespace (containerd: devices need this)."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as handle:
            return handle.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


def _write_all(fd, view):
    return os.write(fd, view)


def _keep_xattr(name):
    """Drop overlay metadata a layer must not plant, and SELinux labels."""
    if b".overlay." in name:
        parts = name.split(b".", 2)
        if len(parts) > 1 and parts[1] == b"overlay":
            return False
    return name != b"security.selinux"


class _Applier(object):

    def __init__(self, root_fd, limits, privileged):
        self.root_fd = root_fd
        self.limits = limits
        self.privileged = privileged
        self.is_root = os.geteuid() == 0
        # Without CAP_DAC_OVERRIDE a 0555 directory would block its children:
        # keep directories writable and set their real mode at the end.
        self.defer_dir_mode = not self.is_root
        self.result = ApplyResult()
        self.result.overlay_xattr_prefix = "trusted.overlay." if privileged else "user.overlay."
        self.implied = {}       # b"a/b" -> components, in creation order
        self.dirs = []          # (components, mtime_ns, mode) applied at the end
        self.data_bytes = 0     # all regular-file data in the tar, written or not

    # -- the loop ---------------------------------------------------------

    def run(self, stream):
        limits = self.limits
        reader = tar.TarReader(stream, limits.max_header_bytes, limits.max_path_length)
        result = self.result
        while True:
            entry = reader.next()
            if entry is None:
                break
            result.entries += 1
            if result.entries > limits.max_entries:
                raise UnsafeLayer("layer has more than %d entries" % limits.max_entries)
            if entry.type == tar.REG:
                self.check_size(entry)
            components = clean_components(entry.name)
            if len(components) > limits.max_depth:
                raise UnsafeLayer("layer entry %s is deeper than %d components"
                                  % (show(components), limits.max_depth))
            try:
                self.apply(entry, components, reader)
            except OSError as err:
                raise StoreError("cannot unpack %s from the layer: %s" % (show(components), err.strerror or err))
        self.finish()
        return result

    def apply(self, entry, components, reader):
        if not components:
            return self.apply_root(entry)
        base = components[-1]
        if base.startswith(_WHITEOUT):
            return self.apply_whiteout(components)
        parent_fd, parent = self.parent_of(components, "entry")
        try:
            kind = entry.type
            if kind == tar.REG:
                self.make_file(parent_fd, base, entry, reader)
            elif kind == tar.DIR:
                self.make_dir(parent_fd, base, entry, parent + [base])
            elif kind == tar.SYMLINK:
                self.make_symlink(parent_fd, base, entry)
            elif kind == tar.LINK:
                self.make_hardlink(parent_fd, base, entry, components)
            else:
                self.make_node(parent_fd, base, entry)
        finally:
            close_unless(parent_fd, self.root_fd)

    def parent_of(self, components, what):
        """Resolve (creating if missing) the directory that holds ``components``."""
        return self.open_dir(components[:-1], "%s %s" % (what, show(components)))

    def open_dir(self, components, label):
        created = []
        try:
            return resolve_dir(self.root_fd, components, created, self.limits.max_depth)
        except NotADirectoryError:
            raise UnsafeLayer("layer %s has a parent that is not a directory" % label)
        finally:
            for path in created:
                self.implied[b"/".join(path)] = path

    # -- entry kinds ------------------------------------------------------

    def apply_root(self, entry):
        # Never replace or re-type the layer root (umoci CVE-2021-29136).
        if entry.type != tar.DIR:
            raise UnsafeLayer("layer entry %r would replace the layer root with a non-directory"
                              % entry.name.decode("utf-8", "backslashreplace"))
        self.set_dir_metadata(self.root_fd, entry, [])

    def check_size(self, entry):
        # Counted before any byte is read, and for every regular entry: data
        # behind a whiteout marker is never written but still has to be read.
        limits = self.limits
        if entry.size > limits.max_file_bytes:
            raise UnsafeLayer("layer file %s is %d bytes, over the %d byte limit"
                              % (os.fsdecode(entry.name), entry.size, limits.max_file_bytes))
        self.data_bytes += entry.size
        if self.data_bytes > limits.max_total_bytes:
            raise UnsafeLayer("layer unpacks to more than %d bytes" % limits.max_total_bytes)

    def make_file(self, parent_fd, base, entry, reader):
        size = entry.size
        fd = self.create(parent_fd, base, lambda: os.open(base, _CREATE_FLAGS, 0o600, dir_fd=parent_fd))
        try:
            reader.copy_to(fd, _write_all)
            self.result.bytes_written += size
            self.set_metadata(fd, entry)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)

    def make_dir(self, parent_fd, base, entry, path):
        try:
            os.mkdir(base, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            st = os.stat(base, dir_fd=parent_fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                remove_at(parent_fd, base)
                os.mkdir(base, 0o700, dir_fd=parent_fd)
        # Listed by the tar after all: its metadata is the tar's, not inherited.
        self.implied.pop(b"/".join(path), None)
        fd = os.open(base, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            self.set_dir_metadata(fd, entry, path)
        finally:
            os.close(fd)

    def make_symlink(self, parent_fd, base, entry):
        # Stored verbatim, never followed while unpacking.
        self.create(parent_fd, base, lambda: os.symlink(entry.linkname, base, dir_fd=parent_fd))
        if self.is_root:
            os.chown(base, entry.uid, entry.gid, dir_fd=parent_fd, follow_symlinks=False)
        # No chmod (symlink modes mean nothing; CVE-2021-32760) and no xattrs:
        # Linux allows only trusted/security ones on symlinks, and neither
        # belongs on a link in an image.
        os.utime(base, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)

    def make_hardlink(self, parent_fd, base, entry, components):
        target = clean_components(entry.linkname)
        missing = UnsafeLayer("layer hard link %s points at %s, which this layer does not contain"
                              % (show(components), show(target)))
        if not target:
            raise UnsafeLayer("layer hard link %s points at the layer root" % show(components))
        try:
            src_fd, _real = resolve_dir(self.root_fd, target[:-1], None, self.limits.max_depth)
        except (FileNotFoundError, NotADirectoryError):
            raise missing
        try:
            try:
                src = os.stat(target[-1], dir_fd=src_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise missing
            if stat.S_ISDIR(src.st_mode):
                raise UnsafeLayer("layer hard link %s points at directory %s" % (show(components), show(target)))
            try:
                dst = os.stat(base, dir_fd=parent_fd, follow_symlinks=False)
                if (dst.st_dev, dst.st_ino) == (src.st_dev, src.st_ino):
                    return  # already the same inode (a link to itself)
            except FileNotFoundError:
                pass
            # linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the
            # symlink. Metadata stays the target's, as GNU tar does.
            self.create(parent_fd, base, lambda: os.link(
                target[-1], base, src_dir_fd=src_fd, dst_dir_fd=parent_fd, follow_symlinks=False))
        finally:
            close_unless(src_fd, self.root_fd)

    def make_node(self, parent_fd, base, entry):
        if not self.privileged:
            # containerd skipFile: rootless or in a user namespace.
            self.result.skipped_devices += 1
            return
        kind = {tar.CHAR: stat.S_IFCHR, tar.BLOCKDEV: stat.S_IFBLK, tar.FIFO: stat.S_IFIFO}[entry.type]
        device = os.makedev(entry.devmajor, entry.devminor) if kind != stat.S_IFIFO else 0
        self.create(parent_fd, base, lambda: os.mknod(base, kind | 0o600, device, dir_fd=parent_fd))
        os.chown(base, entry.uid, entry.gid, dir_fd=parent_fd, follow_symlinks=False)
        chmod_nofollow(parent_fd, base, entry.mode)
        # Never open a device or FIFO to set xattrs or times through it.
        os.utime(base, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)

    def apply_whiteout(self, components):
        base = components[-1]
        rest = base[len(_WHITEOUT):]
        if base == _OPAQUE:
            return self.make_opaque(components[:-1])
        if rest.startswith(_WHITEOUT):
            return  # other .wh..wh.* metadata files: ignored, as containerd does
        if rest in (b"", b".", b".."):
            raise UnsafeLayer("layer has a malformed whiteout %s" % show(components))
        parent_fd, parent = self.parent_of(components, "whiteout")
        try:
            try:
                self.create(parent_fd, rest, lambda: os.mknod(
                    rest, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent_fd))
            except PermissionError:
                # Without CAP_MKNOD on kernels before 5.8: report, don't fail.
                self.result.unapplied_whiteouts.append(show(parent + [rest]))
                return
            if self.is_root:
                os.chown(rest, 0, 0, dir_fd=parent_fd, follow_symlinks=False)
            self.result.whiteouts += 1
        finally:
            close_unless(parent_fd, self.root_fd)

    def make_opaque(self, dir_components):
        # Per-layer directories make this order-independent: the xattr hides
        # only lower layers, so siblings from this layer stay wherever the
        # marker sits in the tar.
        fd, path = self.open_dir(dir_components, "opaque marker in %s" % show(dir_components))
        try:
            dir_fd = os.open(".", _DIR_FLAGS, dir_fd=fd)
        finally:
            close_unless(fd, self.root_fd)
        try:
            os.setxattr(dir_fd, self.result.overlay_xattr_prefix + "opaque", b"y")
        finally:
            os.close(dir_fd)
        self.result.opaque_dirs.append(show(path))

    # -- helpers ----------------------------------------------------------

    def create(self, parent_fd, base, make):
        """Create ``base``; an existing entry is removed first (duplicates: last wins)."""
        try:
            return make()
        except FileExistsError:
            remove_at(parent_fd, base)
            return make()

    def set_metadata(self, fd, entry, mode=None):
        # chown clears setuid/setgid and security.capability: chown, then
        # chmod, then xattrs.
        if self.is_root:
            os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode if mode is None else mode)
        for name, value in entry.xattrs.items():
            if _keep_xattr(name):
                try:
                    os.setxattr(fd, name, value)
                except OSError as err:
                    if err.errno not in _TOLERATED_XATTR_ERRORS:
                        raise

    def set_dir_metadata(self, fd, entry, path):
        self.set_metadata(fd, entry, entry.mode | 0o700 if self.defer_dir_mode else None)
        # Directory times last: creating children would change them again.
        self.dirs.append((path, entry.mtime_ns, entry.mode))

    def finish(self):
        # Deepest first, so a parent's final mode (maybe 000 when not root)
        # never blocks reaching its children.
        for path, mtime_ns, mode in sorted(self.dirs, key=lambda item: -len(item[0])):
            try:
                fd, real = resolve_dir(self.root_fd, path, None, self.limits.max_depth)
            except (FileNotFoundError, NotADirectoryError, UnsafeLayer):
                continue  # replaced by a later entry (maybe by a symlink loop)
            try:
                if real != path:
                    continue  # now a symlink to some other directory
                dir_fd = os.open(".", _DIR_FLAGS, dir_fd=fd)
            finally:
                close_unless(fd, self.root_fd)
            try:
                os.utime(dir_fd, ns=(mtime_ns, mtime_ns))
                if self.defer_dir_mode:
                    os.fchmod(dir_fd, mode)
            finally:
                os.close(dir_fd)
        implied = []
        for path in self.implied.values():
            try:
                fd, real = resolve_dir(self.root_fd, path, None, self.limits.max_depth)
            except (FileNotFoundError, NotADirectoryError, UnsafeLayer):
                continue  # removed again by a later entry
            close_unless(fd, self.root_fd)
            if real == path:
                implied.append(show(path))
        self.result.implied_dirs = implied


def apply_layer(stream, dest, limits=None, privileged=None):
    """Unpack one uncompressed layer tar from ``stream`` into ``dest``.

    ``dest`` must be an existing, empty directory; nothing is written
    outside it. The tar is consumed up to its end-of-archive marker (the
    caller drains and hashes whatever follows). Raises UnsafeLayer for
    anything refused and StoreError when the filesystem fails; on any
    exception the caller removes ``dest``.
    """
    limits = limits if limits is not None else Limits()
    if privileged is None:
        privileged = is_privileged()
    try:
        root_fd = os.open(dest, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except OSError as err:
        raise StoreError("cannot open layer directory %s: %s" % (dest, err.strerror))
    try:
        return _Applier(root_fd, limits, privileged).run(stream)
    finally:
        os.close(root_fd)


def inherit_parent_metadata(layer_dir, implied_dirs, lower_dirs):
    """Give implied directories the mode, owner, times and xattrs of the lower layers.

    For each relative path in ``implied_dirs``, the highest layer in
    ``lower_dirs`` (top-most first) that has it decides, as containerd's
    ``mkparent`` does; a lower layer where the path is not a directory stops
    the search. Paths are resolved root-confined in every directory.
    Without this, ``/tmp`` 1777 in the base becomes 0755 in an upper layer.
    """
    root_fd = os.open(layer_dir, _DIR_FLAGS & ~os.O_NOFOLLOW)
    lower_fds = []
    try:
        for lower in lower_dirs:
            lower_fds.append(os.open(lower, _DIR_FLAGS & ~os.O_NOFOLLOW))
        for rel in implied_dirs:
            components = clean_components(os.fsencode(rel))
            if components:
                _inherit_one(root_fd, components, lower_fds)
    finally:
        for fd in lower_fds:
            os.close(fd)
        os.close(root_fd)


def _open_real_dir(root_fd, components):
    """A readable fd of the directory ``components`` names, or None."""
    path_fd, _real = resolve_dir(root_fd, components)
    try:
        return os.open(".", _DIR_FLAGS, dir_fd=path_fd)
    finally:
        close_unless(path_fd, root_fd)


def _inherit_one(root_fd, components, lower_fds):
    try:
        fd = _open_real_dir(root_fd, components)
    except (FileNotFoundError, NotADirectoryError, UnsafeLayer):
        return
    try:
        for lower_fd in lower_fds:
            try:
                src = _open_real_dir(lower_fd, components)
            except FileNotFoundError:
                continue
            except (NotADirectoryError, UnsafeLayer):
                return  # a non-directory (or a symlink loop) there: do not copy
            try:
                _copy_dir_metadata(src, fd)
            finally:
                os.close(src)
            return
    finally:
        os.close(fd)


def _copy_dir_metadata(src, dst):
    st = os.fstat(src)
    if os.geteuid() == 0:
        os.fchown(dst, st.st_uid, st.st_gid)
    os.fchmod(dst, stat.S_IMODE(st.st_mode))
    try:
        names = os.listxattr(src)
    except OSError as err:
        if err.errno not in _TOLERATED_XATTR_ERRORS:
            raise
        names = []
    for name in names:
        if not _keep_xattr(os.fsencode(name)):
            continue
        try:
            os.setxattr(dst, name, os.getxattr(src, name))
        except OSError as err:
            if err.errno not in _TOLERATED_XATTR_ERRORS + (errno.ENODATA,):
                raise
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
