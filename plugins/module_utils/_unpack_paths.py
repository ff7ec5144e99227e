# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Root-confined path resolution and removal for layer directories.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

Every path from a layer is resolved as if the layer directory were ``/``:
component by component from a directory fd, with ``O_NOFOLLOW``, expanding
symlinks ourselves so that absolute targets restart at the root and ``..``
stops there. Nothing is cached between calls: a later tar entry may have
swapped a directory for a symlink (CVE-2025-47290). No ``chroot()`` (it would
change the whole Ansible process) and no path string is ever handed to the
kernel with more than one component.
"""

from __future__ import annotations

import errno
import os
import stat

from ansible_collections.intermodal.containers.plugins.module_utils._errors import UnsafeLayer

O_PATH = getattr(os, "O_PATH", 0o10000000)
_WALK_FLAGS = O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
MAX_SYMLINKS = 255     # expansions per resolution (Linux itself allows 40)
_MAX_STEPS = 65536     # components visited per resolution, symlink targets included


def clean_components(name):
    """Split a tar name into components, cleaned as if joined to ``/``.

    ``/etc/x`` -> ``[etc, x]``; ``a/../../x`` -> ``[x]`` (containerd:
    ``filepath.Clean`` then a join to the root), so ``..`` can never climb.
    """
    out = []
    for part in name.split(b"/"):
        if part == b".." :
            if out:
                out.pop()
        elif part and part != b".":
            out.append(part)
    return out


def show(components):
    """A path for messages and results: relative, ``/``-separated, str."""
    return os.fsdecode(b"/".join(components)) or "."


def resolve_dir(root_fd, components, created=None, max_depth=256):
    """Open the directory ``components`` names inside ``root_fd``, root-confined.

    Returns ``(fd, real_components)``; ``fd`` is ``root_fd`` itself for the
    root (callers close it only when it differs). Symlinks, including the
    last component, are followed inside the root. Missing directories raise
    FileNotFoundError, unless ``created`` is a list: then they are made
    (0755, owned by us) and their real paths appended to it. A component that
    is neither a directory nor a symlink raises NotADirectoryError.
    """
    todo = list(reversed(components))
    fds = []
    path = []
    links = steps = 0
    try:
        while todo:
            name = todo.pop()
            steps += 1
            if steps > _MAX_STEPS:
                raise UnsafeLayer("path %s is too deep once its symlinks are followed" % show(components))
            if name == b"..":
                if fds:
                    os.close(fds.pop())
                    path.pop()
                continue
            if not name or name == b".":
                continue
            cur = fds[-1] if fds else root_fd
            try:
                fd = os.open(name, _WALK_FLAGS, dir_fd=cur)
            except FileNotFoundError:
                if created is None:
                    raise
                fd = _mkdir(cur, name)
                created.append(path + [name])
            except OSError as err:
                if err.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                st = os.stat(name, dir_fd=cur, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", show(path + [name]))
                links += 1
                if links > MAX_SYMLINKS:
                    raise UnsafeLayer("too many levels of symbolic links in %s" % show(components))
                target = os.readlink(name, dir_fd=cur)
                if target.startswith(b"/"):
                    # Absolute targets restart at the layer root, never the host's.
                    while fds:
                        os.close(fds.pop())
                    del path[:]
                todo.extend(reversed(target.split(b"/")))
                continue
            fds.append(fd)
            path.append(name)
            if len(path) > max_depth:
                raise UnsafeLayer("path %s is deeper than %d components" % (show(path), max_depth))
        return (fds.pop() if fds else root_fd), path
    finally:
        for fd in fds:
            os.close(fd)


def _mkdir(parent_fd, name):
    """Make a missing parent 0755 (umask notwithstanding) and open it."""
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        pass  # only we write here; the open below checks what it is
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        os.fchmod(fd, 0o755)
    except BaseException:
        os.close(fd)
        raise
    return fd


def close_unless(fd, root_fd):
    if fd != root_fd:
        os.close(fd)


def chmod_nofollow(dir_fd, name, mode):
    """chmod a non-directory by name without ever following a symlink.

    Linux has no lchmod; ``os.chmod(follow_symlinks=False)`` raises. We open
    the inode itself with O_PATH and chmod through its /proc magic link.
    """
    fd = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            return
        os.chmod("/proc/self/fd/%d" % fd, mode)
    finally:
        os.close(fd)


def _open_for_removal(dir_fd, name):
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        # Mode 000 as non-root: make it ours to list, by inode, not by path.
        chmod_nofollow(dir_fd, name, 0o700)
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    if os.fstat(fd).st_mode & 0o700 != 0o700:
        os.fchmod(fd, 0o700)  # needed to unlink children when not root
    return fd


def remove_at(dir_fd, name):
    """``rm -rf`` of ``name`` in ``dir_fd``; never follows a symlink."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except FileNotFoundError:
        return
    except (IsADirectoryError, PermissionError):
        if not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise
    # Iterative, so deep trees do not hit Python's recursion limit.
    stack = [(dir_fd, name, _open_for_removal(dir_fd, name))]
    try:
        pending = [os.listdir(stack[0][2])]
        while stack:
            parent_fd, dname, fd = stack[-1]
            names = pending[-1]
            if not names:
                stack.pop()
                pending.pop()
                os.close(fd)
                os.rmdir(dname, dir_fd=parent_fd)
                continue
            child = names.pop()
            try:
                os.unlink(child, dir_fd=fd)
                continue
            except FileNotFoundError:
                continue
            except (IsADirectoryError, PermissionError):
                if not stat.S_ISDIR(os.stat(child, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise
            child_fd = _open_for_removal(fd, child)
            stack.append((fd, child, child_fd))
            pending.append(os.listdir(child_fd))
    finally:
        for entry in stack:
            os.close(entry[2])


def remove_tree(path):
    """Robust ``rm -rf`` for layer and staging directories.

    Copes with mode-000 directories, device nodes and whiteouts, and never
    follows a symlink out of the tree (a symlink named ``path`` itself is
    removed, not its target). A missing ``path`` is not an error.
    """
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    if not name:
        raise ValueError("refusing to remove the root directory")
    try:
        parent_fd = os.open(parent, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        remove_at(parent_fd, os.fsencode(name))
    finally:
        os.close(parent_fd)
