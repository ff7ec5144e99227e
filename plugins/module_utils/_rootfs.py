# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A container's root filesystem: overlayfs over image layers, plus root-confined reads.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

The image's layer diff dirs are the overlay lowerdirs (top-most first), the
container's own upper and work dirs make the copy-on-write container layer.
mount(2) takes at most one page of options, so each lower dir gets a short
``<store>/l/<id>`` symlink (as Docker's overlay2 does) and, when even that is
too long, the mount is made relative to the common parent directory.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import errno
import hashlib
import os
import shlex
import stat
import threading

from ansible_collections.intermodal.containers.plugins.module_utils._errors import IntermodalError

MS_RDONLY = 1
MNT_DETACH = 2
MAX_SYMLINKS = 40
_CHDIR_LOCK = threading.Lock()
_libc = None


class MountError(IntermodalError):
    """A mount or unmount of a container filesystem failed."""


def _lib():
    global _libc  # pylint: disable=global-statement
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
        _libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
    return _libc


def _fs(path):
    return os.fsencode(path) if path is not None else None


def sys_mount(source, target, fstype, flags=0, data=None):
    """mount(2); OSError with errno on failure."""
    if _lib().mount(_fs(source), _fs(target), _fs(fstype), flags, _fs(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


# -- root-confined path resolution ------------------------------------------------

def resolve_in_root(root, path):
    """``path`` inside ``root`` with symlinks resolved as if ``root`` were /.

    Absolute link targets and ``..`` never leave ``root`` (the image may hold
    hostile links such as /etc/passwd -> /../../etc/shadow).
    """
    root = os.path.realpath(root)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *(resolved + [part]))
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            resolved.extend(p for p in parts if p != "..")  # nothing further exists; caller gets ENOENT
            break
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, "too many symlinks", os.path.join(root, *resolved))
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def open_in_root(root, path):
    """Open a regular file of the image read-only (binary) without leaving ``root``."""
    real = resolve_in_root(root, path)
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", real)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# -- short lowerdir links ------------------------------------------------------------

def links_dir(store_root):
    return os.path.join(os.path.abspath(store_root), "l")


def short_id(path):
    """Stable 13-char id for a layer dir (base32 of its path's hash: no registry needed)."""
    digest = hashlib.sha256(os.fsencode(os.path.abspath(path))).digest()
    return base64.b32encode(digest[:8]).decode("ascii").rstrip("=")


def ensure_short_links(store_root, lower_dirs):
    """``<store>/l/<id>`` symlinks to each lower dir; returns their paths in the same order."""
    ldir = links_dir(store_root)
    os.makedirs(ldir, mode=0o700, exist_ok=True)
    out = []
    for lower in lower_dirs:
        lower = os.path.abspath(lower)
        if not os.path.isdir(lower):
            raise MountError("layer directory %s does not exist" % lower)
        link = os.path.join(ldir, short_id(lower))
        target = os.path.relpath(lower, ldir)
        try:
            current = os.readlink(link)
        except FileNotFoundError:
            current = None
        except OSError:
            current = ""
        if current != target:
            tmp = "%s.tmp-%d-%d" % (link, os.getpid(), threading.get_ident())
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            os.symlink(target, tmp)
            os.rename(tmp, link)  # atomic: a concurrent mount sees the old or the new link
        out.append(link)
    return out


def prune_short_links(store_root):
    """Remove links whose layer is gone; returns how many were removed."""
    ldir = links_dir(store_root)
    removed = 0
    try:
        names = os.listdir(ldir)
    except FileNotFoundError:
        return 0
    for name in names:
        path = os.path.join(ldir, name)
        if os.path.islink(path) and not os.path.exists(path):
            os.unlink(path)
            removed += 1
    return removed


# -- overlay mount ---------------------------------------------------------------------

def _overlay_data(lowers, upper, work, extra):
    opts = ["lowerdir=" + ":".join(lowers)]
    if upper is not None:
        opts += ["upperdir=" + upper, "workdir=" + work]
    return ",".join(opts + list(extra))


def _escape_check(path):
    if any(c in path for c in ",:\n"):
        raise MountError("overlay cannot use path %r (contains , or :)" % path)


def _match_root_dir(upper, top_lower):
    """A fresh upper dir takes the image root's mode and owner.

    overlayfs shows the upper dir's attributes as the container's "/": an
    upper made 0700 would make "/" untraversable for a non-root user.
    """
    if os.listdir(upper):
        return  # the container layer is in use: "/" is whatever the container made it
    want = os.stat(top_lower)
    have = os.stat(upper)
    if stat.S_IMODE(have.st_mode) != stat.S_IMODE(want.st_mode):
        os.chmod(upper, stat.S_IMODE(want.st_mode))
    if (have.st_uid, have.st_gid) != (want.st_uid, want.st_gid):
        os.chown(upper, want.st_uid, want.st_gid)


def overlay_options(lower_dirs, upper=None, work=None, target="the container filesystem"):
    """``(data, base)``: the overlayfs mount options and the directory they are relative to.

    ``base`` is None when the absolute paths fit in mount(2)'s one page; else
    the options name paths relative to ``base`` (the mount must run with
    ``base`` as its cwd). ``mount_overlay`` and the systemd unit's remount
    (``overlay_remount_argv``) both use this, so they mount the same thing.
    """
    lowers = [os.path.abspath(p) for p in lower_dirs]
    paths = lowers + ([os.path.abspath(upper), os.path.abspath(work)] if upper is not None else [])
    for path in paths:
        _escape_check(path)
    extra = []
    if os.path.exists("/sys/module/overlay/parameters/index"):
        extra.append("index=off")  # the same layers serve many mounts; the index would tie them to one upper
    page = os.sysconf("SC_PAGESIZE") - 1
    data = _overlay_data(lowers, *(paths[-2:] if upper is not None else (None, None)), extra=extra)
    if len(data) <= page:
        return data, None
    base = os.path.commonpath(paths)
    rel = [os.path.relpath(p, base) for p in paths]
    n = len(lowers)
    data = _overlay_data(rel[:n], *(rel[n:] if upper is not None else (None, None)), extra=extra)
    if len(data) > page:
        raise MountError("overlay options for %s are %d bytes, over the %d-byte page limit even with "
                         "short links (%d layers)" % (target, len(data), page, n))
    return data, base


def overlay_remount_argv(lower_dirs, upper, work, target):
    """argv that mounts the container's overlay at ``target`` unless something is mounted there.

    For a systemd unit's ExecStartPre: after a reboot the unit starts the
    container before any module run, and the overlay (unlike its layers,
    upper and work dirs) is gone. ``lower_dirs`` should be the short links.
    """
    target = os.path.abspath(target)
    _escape_check(target)
    data, base = overlay_options(lower_dirs, upper, work, target=target)
    mount = "/bin/mount -t overlay overlay -o %s %s" % (shlex.quote(data), shlex.quote(target))
    if base is not None:
        mount = "cd %s && %s" % (shlex.quote(base), mount)
    return ["/bin/sh", "-c", "/bin/mountpoint -q %s || { %s; }" % (shlex.quote(target), mount)]


def mount_overlay(lower_dirs, upper, work, target, read_only=False):
    """Mount overlayfs at ``target``: ``lower_dirs`` top-most first, container layer in upper/work.

    ``upper``/``work`` may be None for a lower-only (read-only) mount.
    Creates upper, work and target when missing.  Raises MountError.
    """
    if not lower_dirs:
        raise MountError("overlay at %s needs at least one lower directory" % target)
    if (upper is None) != (work is None):
        raise MountError("overlay at %s: upper and work must be given together" % target)
    target = os.path.abspath(target)
    lowers = [os.path.abspath(p) for p in lower_dirs]
    paths = lowers + ([os.path.abspath(upper), os.path.abspath(work)] if upper is not None else [])
    for path in paths:
        _escape_check(path)
    if is_mounted(target):  # stacking a second overlay would hide the first and leak it
        raise MountError("cannot mount the container filesystem at %s: something is already mounted there" % target)
    for lower in lowers:
        if not os.path.isdir(lower):
            raise MountError("cannot mount the container filesystem at %s: layer directory %s is missing"
                             % (target, lower))
    if upper is not None:
        os.makedirs(paths[-2], mode=0o755, exist_ok=True)
        os.makedirs(paths[-1], mode=0o700, exist_ok=True)
        _match_root_dir(paths[-2], lowers[0])
    if upper is None and len(lowers) == 1:
        # A lower-only overlay needs two layers on older kernels; an empty one changes nothing.
        empty = os.path.join(os.path.dirname(os.path.abspath(target)), ".empty-lower")
        os.makedirs(empty, mode=0o755, exist_ok=True)
        lowers.append(empty)
        paths.insert(1, empty)
    os.makedirs(target, mode=0o755, exist_ok=True)
    flags = MS_RDONLY if read_only else 0
    try:
        data, base = overlay_options(lowers, *(paths[-2:] if upper is not None else (None, None)), target=target)
        if base is None:
            sys_mount("overlay", target, "overlay", flags, data)
            return
        # mount(2) resolves relative lowerdirs against the cwd: chdir, serialized for threads.
        with _CHDIR_LOCK:
            cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.chdir(base)
                sys_mount("overlay", target, "overlay", flags, data)
            finally:
                os.fchdir(cwd)
                os.close(cwd)
    except OSError as exc:
        raise MountError("cannot mount the container filesystem at %s: %s" % (target, exc.strerror or exc))


def unmount(target, lazy_if_busy=True):
    """Unmount ``target``; True if something was unmounted, False if it was not a mount point."""
    target = os.path.abspath(target)
    if not is_mounted(target):
        return False
    if _lib().umount2(_fs(target), 0) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EINVAL:
        return False
    if err == errno.EBUSY and lazy_if_busy:
        if _lib().umount2(_fs(target), MNT_DETACH) == 0:
            return True
        err = ctypes.get_errno()
    raise MountError("cannot unmount %s: %s" % (target, os.strerror(err)))


def _unescape(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points(mountinfo="/proc/self/mountinfo"):
    """Mount points of this mount namespace, in mount order."""
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        return [_unescape(line.split(" ")[4]) for line in f if line.strip()]


def is_mounted(target):
    target = os.path.realpath(target)
    return target in mount_points()
