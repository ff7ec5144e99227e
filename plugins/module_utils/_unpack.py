# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Root-confined layer tar applier that writes overlay-ready directories.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

It follows the MUST list of pulling-images.md section 5 (items 22-33):

* ``tarfile`` is only a bounded, streaming header parser; nothing is ever
  written by ``extractall`` and the process never chroots.
* Every entry's parent is resolved afresh from a dirfd of the layer root,
  expanding symlinks as if chrooted there (openat2 RESOLVE_IN_ROOT when the
  kernel has it, a per-component O_NOFOLLOW walk otherwise). Nothing is cached
  across entries (CVE-2025-47290).
* The last component is created with O_EXCL|O_NOFOLLOW (or the *at call of its
  type) and its metadata set through the fd, never through a path that could
  be a symlink (CVE-2021-32760).
* Whiteouts become 0/0 character devices, opaque markers the
  ``trusted.overlay.opaque`` xattr; overlay and SELinux xattrs in the tar are
  dropped so a layer cannot plant overlay metadata.
* Entries, bytes, header sizes and path lengths are capped; sparse entries are
  refused.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import tarfile

from ansible_collections.intermodal.containers.plugins.module_utils._errors import UnsafeLayer

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_DROPPED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
_DROPPED_XATTRS = ("security.selinux",)
_BUF = 1024 * 1024
_MAX_SYMLINK_EXPANSIONS = 255

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Limits:
    """Caps that turn bombs into a bounded, clean failure."""

    def __init__(self, **overrides):
        self.max_entries = 1000000
        self.max_total_bytes = 64 * 1024 ** 3
        self.max_file_bytes = 32 * 1024 ** 3
        self.max_header_bytes = 1024 * 1024
        self.max_path_length = 4096
        self.max_depth = 256
        for key, value in overrides.items():
            if not hasattr(self, key):
                raise TypeError("unknown limit %r" % key)
            setattr(self, key, value)


class ApplyResult:
    def __init__(self):
        self.entries = 0
        self.bytes_written = 0
        self.implied_dirs = []
        self.skipped_devices = 0


def running_privileged():
    """Real root outside a user namespace: the only case where mknod works."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as handle:
            fields = handle.read().split()
    except OSError:
        return True
    return fields[:3] == ["0", "0", "4294967295"]


# -- bounded header parsing --------------------------------------------------


def _bounded_tarinfo(limits):
    class BoundedTarInfo(tarfile.TarInfo):
        """Refuse oversized PAX/GNU long headers before tarfile reads them into memory."""

        def _proc_member(self, tar):  # pylint: disable=protected-access
            if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK,
                             tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
                if self.size > limits.max_header_bytes:
                    raise UnsafeLayer("layer has a %d-byte extended header (limit %d)"
                                      % (self.size, limits.max_header_bytes))
            if self.type == tarfile.GNUTYPE_SPARSE:
                # Sparse entries report their full size and read back as zeros:
                # a tiny tar could write terabytes. The spec says SHOULD NOT.
                raise UnsafeLayer("layer has a sparse entry %r; sparse files are refused" % self.name)
            return super()._proc_member(tar)

    return BoundedTarInfo


# -- root-confined resolution -----------------------------------------------


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "ppc64le": 437, "s390x": 437, "riscv64": 437}.get(os.uname().machine)
_openat2_state = {"ok": None, "libc": None}


def _openat2_dir(root_fd, relpath):
    """openat2(RESOLVE_IN_ROOT): one syscall resolves the whole parent as if chrooted."""
    if _openat2_state["ok"] is False or _SYS_OPENAT2 is None:
        return None
    if _openat2_state["libc"] is None:
        _openat2_state["libc"] = ctypes.CDLL(None, use_errno=True)
    libc = _openat2_state["libc"]
    how = _OpenHow(os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    fd = libc.syscall(_SYS_OPENAT2, root_fd, relpath.encode("utf-8", "surrogateescape"),
                      ctypes.byref(how), ctypes.sizeof(how))
    if fd >= 0:
        _openat2_state["ok"] = True
        return fd
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM) and _openat2_state["ok"] is None:
        _openat2_state["ok"] = False
        return None
    if err in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV, errno.EAGAIN):
        return None
    raise OSError(err, os.strerror(err), relpath)


def _walk(root_fd, parts, create=False, implied=None):
    """Resolve ``parts`` (directories) under root_fd as if chrooted; return (fd, physical parts).

    Symlinks are expanded relative to the root and ``..`` never climbs above
    it. With ``create``, missing directories are made (0755 root) and their
    physical paths appended to ``implied``.
    """
    fds = [os.dup(root_fd)]
    physical = []
    pending = list(parts)
    expansions = 0
    try:
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if len(fds) > 1:
                    os.close(fds.pop())
                    physical.pop()
                continue
            try:
                fd = os.open(name, _O_DIR, dir_fd=fds[-1])
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o755, dir_fd=fds[-1])
                if implied is not None:
                    implied.append("/".join(physical + [name]))
                fd = os.open(name, _O_DIR, dir_fd=fds[-1])
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.lstat(name, dir_fd=fds[-1])
                if not stat.S_ISLNK(st.st_mode):
                    raise UnsafeLayer("path component %r is not a directory" % "/".join(physical + [name]))
                expansions += 1
                if expansions > _MAX_SYMLINK_EXPANSIONS:
                    raise UnsafeLayer("too many levels of symbolic links under %r" % "/".join(physical))
                target = os.readlink(name, dir_fd=fds[-1])
                if target.startswith("/"):
                    for extra in fds[1:]:
                        os.close(extra)
                    del fds[1:]
                    physical = []
                pending = [p for p in target.split("/") if p] + pending
                continue
            fds.append(fd)
            physical.append(name)
        result = fds.pop()
        return result, physical
    finally:
        for fd in fds:
            os.close(fd)


def _open_parent(root_fd, parts, implied):
    """fd of the directory that will hold parts[-1], resolved freshly for this entry."""
    parent = parts[:-1]
    if not parent:
        return os.dup(root_fd)
    fd = _openat2_dir(root_fd, "/".join(parent))
    if fd is not None:
        return fd
    return _walk(root_fd, parent, create=True, implied=implied)[0]


def _clean(name):
    """Lexically clean a tar name inside the root: '/a/../../b' -> ['b']."""
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return parts


# -- removal -----------------------------------------------------------------


def _remove_at(dir_fd, name):
    """Remove dir_fd/name, recursing into directories by fd, never following symlinks."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, _O_DIR, dir_fd=dir_fd)
    try:
        try:
            children = os.listdir(fd)
        except PermissionError:
            os.fchmod(fd, 0o700)
            children = os.listdir(fd)
        for child in children:
            _remove_at(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def remove_tree(path):
    """rm -rf for layer and staging trees: copes with mode-000 dirs and device nodes,
    and never follows a symlink out of the tree."""
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        _remove_at(parent_fd, name)
    finally:
        os.close(parent_fd)


# -- metadata ----------------------------------------------------------------


def _xattrs(member):
    out = []
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        xname = key[len("SCHILY.xattr."):]
        if xname.startswith(_DROPPED_XATTR_PREFIXES) or xname in _DROPPED_XATTRS:
            continue
        out.append((xname, value.encode("utf-8", "surrogateescape")))
    return out


def _set_xattrs(fd, xattrs):
    for xname, value in xattrs:
        try:
            os.setxattr(fd, xname, value)
        except OSError as exc:
            # Filesystems without xattr support, or namespaces we may not write.
            if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EOPNOTSUPP):
                raise


def _set_fd_metadata(fd, member, xattrs):
    # chown before chmod: chown clears setuid/setgid bits.
    os.fchown(fd, member.uid, member.gid)
    os.fchmod(fd, stat.S_IMODE(member.mode))
    _set_xattrs(fd, xattrs)


def _ns(mtime):
    return int(mtime * 1000000000)


# -- the applier -------------------------------------------------------------


class _Applier:
    def __init__(self, dest, limits, privileged):
        self.limits = limits
        self.privileged = running_privileged() if privileged is None else privileged
        self.root_fd = os.open(dest, _O_DIR)
        self.result = ApplyResult()
        self.dir_times = []

    def close(self):
        os.close(self.root_fd)

    def apply(self, stream):
        tar = tarfile.open(fileobj=stream, mode="r|", tarinfo=_bounded_tarinfo(self.limits),
                           errorlevel=2, encoding="utf-8", errors="surrogateescape")
        try:
            for member in tar:
                self.result.entries += 1
                if self.result.entries > self.limits.max_entries:
                    raise UnsafeLayer("layer has more than %d entries" % self.limits.max_entries)
                self._entry(tar, member)
        except tarfile.TarError as exc:
            raise UnsafeLayer("layer is not a valid tar archive: %s" % exc)
        self._set_dir_times()
        return self.result

    def _entry(self, tar, member):
        if len(member.name) > self.limits.max_path_length:
            raise UnsafeLayer("entry name longer than %d bytes" % self.limits.max_path_length)
        if member.sparse is not None or any(k.startswith("GNU.sparse.") for k in member.pax_headers):
            raise UnsafeLayer("layer has a sparse entry %r; sparse files are refused" % member.name)
        parts = _clean(member.name)
        if len(parts) > self.limits.max_depth:
            raise UnsafeLayer("entry %r is nested deeper than %d levels" % (member.name, self.limits.max_depth))
        if not parts:
            self._root_entry(member)
            return
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts)
            return
        parent_fd = _open_parent(self.root_fd, parts, self.result.implied_dirs)
        try:
            if member.isdir():
                self._directory(parent_fd, parts, member)
                return
            _remove_existing(parent_fd, base)
            if member.isreg():
                self._regular(tar, parent_fd, base, member)
            elif member.issym():
                self._symlink(parent_fd, base, member)
            elif member.islnk():
                self._hardlink(parent_fd, base, member)
            elif member.ischr() or member.isblk() or member.isfifo():
                self._special(parent_fd, base, member)
            else:
                raise UnsafeLayer("entry %r has unsupported tar type %r" % (member.name, member.type))
        finally:
            os.close(parent_fd)

    def _root_entry(self, member):
        # The root may take a directory's metadata, but never be replaced or re-typed (CVE-2021-29136).
        if not member.isdir():
            raise UnsafeLayer("entry %r would replace the layer root with a non-directory" % member.name)
        _set_fd_metadata(self.root_fd, member, _xattrs(member))
        self.dir_times.append(([], member.mtime))

    def _directory(self, parent_fd, parts, member):
        name = parts[-1]
        try:
            st = os.lstat(name, dir_fd=parent_fd)
            if not stat.S_ISDIR(st.st_mode):
                _remove_at(parent_fd, name)
                os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileNotFoundError:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        fd = os.open(name, _O_DIR, dir_fd=parent_fd)
        try:
            _set_fd_metadata(fd, member, _xattrs(member))
        finally:
            os.close(fd)
        self.dir_times.append((parts, member.mtime))

    def _regular(self, tar, parent_fd, name, member):
        if member.size > self.limits.max_file_bytes:
            raise UnsafeLayer("entry %r is %d bytes (limit %d)" % (member.name, member.size, self.limits.max_file_bytes))
        if self.result.bytes_written + member.size > self.limits.max_total_bytes:
            raise UnsafeLayer("layer unpacks to more than %d bytes" % self.limits.max_total_bytes)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent_fd)
        try:
            if member.size:
                source = tar.extractfile(member)
                remaining = member.size
                while remaining:
                    data = source.read(min(_BUF, remaining))
                    if not data:
                        raise UnsafeLayer("entry %r is truncated" % member.name)
                    view = memoryview(data)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                    remaining -= len(data)
                self.result.bytes_written += member.size
            _set_fd_metadata(fd, member, _xattrs(member))
            os.utime(fd, ns=(_ns(member.mtime), _ns(member.mtime)))
        finally:
            os.close(fd)

    def _symlink(self, parent_fd, name, member):
        # Stored verbatim and never followed here; the chroot-style walk of
        # later entries is what keeps them inside the root.
        os.symlink(member.linkname, name, dir_fd=parent_fd)
        os.chown(name, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
        os.utime(name, ns=(_ns(member.mtime), _ns(member.mtime)), dir_fd=parent_fd, follow_symlinks=False)

    def _hardlink(self, parent_fd, name, member):
        target = _clean(member.linkname)
        if not target:
            raise UnsafeLayer("hard link %r points at the layer root" % member.name)
        try:
            target_parent, _ = _walk(self.root_fd, target[:-1])
        except (FileNotFoundError, UnsafeLayer):
            raise UnsafeLayer("hard link %r -> %r: target is not in this layer" % (member.name, member.linkname))
        try:
            try:
                st = os.lstat(target[-1], dir_fd=target_parent)
            except FileNotFoundError:
                raise UnsafeLayer("hard link %r -> %r: target is not in this layer" % (member.name, member.linkname))
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeLayer("hard link %r -> %r: target is a directory" % (member.name, member.linkname))
            os.link(target[-1], name, src_dir_fd=target_parent, dst_dir_fd=parent_fd, follow_symlinks=False)
        finally:
            os.close(target_parent)

    def _special(self, parent_fd, name, member):
        if not self.privileged:
            # Device nodes and FIFOs need real root outside a user namespace (containerd skipFile).
            self.result.skipped_devices += 1
            return
        mode = stat.S_IMODE(member.mode)
        if member.isfifo():
            os.mkfifo(name, mode, dir_fd=parent_fd)
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(name, kind | mode, os.makedev(member.devmajor, member.devminor), dir_fd=parent_fd)
        os.chown(name, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
        # Opening a device to fchmod it could have side effects; we created the
        # node just now in a private staging tree, so a path chmod is safe.
        os.chmod(name, mode, dir_fd=parent_fd)
        os.utime(name, ns=(_ns(member.mtime), _ns(member.mtime)), dir_fd=parent_fd, follow_symlinks=False)

    def _whiteout(self, parts):
        base = parts[-1]
        parent_fd = _open_parent(self.root_fd, parts, self.result.implied_dirs)
        try:
            if base == OPAQUE_MARKER:
                # Order-independent: the xattr hides lower layers only, so
                # siblings from this layer stay wherever the marker appears.
                os.setxattr(parent_fd, OPAQUE_XATTR, b"y")
                return
            if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
                return  # other AUFS metadata (.wh..wh.plnk etc.) means nothing to overlay
            target = base[len(WHITEOUT_PREFIX):]
            if target in ("", ".", "..") or "/" in target:
                raise UnsafeLayer("malformed whiteout %r" % "/".join(parts))
            if not self.privileged:
                raise UnsafeLayer("whiteout %r needs root to create an overlay whiteout device" % "/".join(parts))
            _remove_existing(parent_fd, target)
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent_fd)
            os.chown(target, 0, 0, dir_fd=parent_fd, follow_symlinks=False)
        finally:
            os.close(parent_fd)

    def _set_dir_times(self):
        # Last, because creating children updates a directory's mtime. Each
        # path is resolved again: nothing is cached across entries.
        for parts, mtime in reversed(self.dir_times):
            try:
                fd, _ = _walk(self.root_fd, parts)
            except (FileNotFoundError, UnsafeLayer, NotADirectoryError):
                continue
            try:
                os.utime(fd, ns=(_ns(mtime), _ns(mtime)))
            finally:
                os.close(fd)


def _remove_existing(parent_fd, name):
    """Duplicate paths: remove, then create (a later entry wins, as in docker)."""
    try:
        os.lstat(name, dir_fd=parent_fd)
    except FileNotFoundError:
        return
    _remove_at(parent_fd, name)


def apply_layer(stream, dest, limits=None, privileged=None):
    """Apply one uncompressed layer tar from ``stream`` into the empty directory ``dest``."""
    applier = _Applier(dest, limits or Limits(), privileged)
    try:
        return applier.apply(stream)
    except OSError as exc:
        raise UnsafeLayer("cannot apply layer into %s: %s" % (dest, exc))
    finally:
        applier.close()


def inherit_parent_metadata(layer_dir, implied_dirs, lower_dirs):
    """Give directories we had to invent the owner, mode and xattrs they have below.

    Without this, an upper layer that only lists ``tmp/x`` would turn /tmp
    from 1777 into 0755 in the merged view (containerd's mkparent).
    """
    root_fd = os.open(layer_dir, _O_DIR)
    lower_fds = []
    try:
        for lower in lower_dirs:
            try:
                lower_fds.append(os.open(lower, _O_DIR))
            except FileNotFoundError:
                continue
        for rel in implied_dirs:
            parts = _clean(rel)
            try:
                fd, _ = _walk(root_fd, parts)
            except (FileNotFoundError, UnsafeLayer, NotADirectoryError):
                continue
            try:
                for lower_fd in lower_fds:
                    try:
                        source, _ = _walk(lower_fd, parts)
                    except (FileNotFoundError, UnsafeLayer, NotADirectoryError):
                        continue
                    try:
                        st = os.fstat(source)
                        os.fchown(fd, st.st_uid, st.st_gid)
                        os.fchmod(fd, stat.S_IMODE(st.st_mode))
                        _copy_xattrs(source, fd)
                    finally:
                        os.close(source)
                    break
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)
        for fd in lower_fds:
            os.close(fd)


def _copy_xattrs(src_fd, dst_fd):
    try:
        names = os.listxattr(src_fd)
    except OSError:
        return
    for xname in names:
        if xname.startswith(_DROPPED_XATTR_PREFIXES) or xname in _DROPPED_XATTRS:
            continue
        try:
            os.setxattr(dst_fd, xname, os.getxattr(src_fd, xname))
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EOPNOTSUPP):
                raise


# struct is imported for callers that build raw tar headers in tests.
__all__ = ["Limits", "ApplyResult", "apply_layer", "inherit_parent_metadata", "remove_tree", "running_privileged", "struct"]
