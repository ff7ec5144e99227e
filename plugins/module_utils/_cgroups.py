# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""cgroups v1, v2 and hybrid behind one vocabulary of limits.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

detect_layout() finds where each controller is mounted; Cgroup(relpath) is one
cgroup (a directory per v1 hierarchy, or one on the unified mount) that can be
created, limited (only what differs is written), read back, measured, filled
with processes, killed and removed. The vocabulary itself (parse_size,
normalize_limits, to_oci_resources) lives in _cgroups_limits and the file
mapping in _cgroups_map; both are re-exported here so callers import one name.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from ansible_collections.intermodal.containers.plugins.module_utils._cgroups_limits import (  # noqa: F401 (re-exports)
    LIMIT_KEYS,
    InvalidOption,
    normalize_limits,
    parse_size,
    to_oci_resources,
)
from ansible_collections.intermodal.containers.plugins.module_utils._cgroups_map import (
    check_supported,
    plan,
    read_limits,
    read_stats,
)
from ansible_collections.intermodal.containers.plugins.module_utils._errors import IntermodalError

__all__ = ["LIMIT_KEYS", "CgroupError", "Cgroup", "InvalidOption", "Layout", "detect_layout", "normalize_limits",
           "parse_size", "to_oci_resources"]

V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "blkio",
                  "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc")
# Logical controllers we manage, and their v1 / v2 names. cpuacct and freezer
# are core files on v2 (cpu.stat, cgroup.freeze), so they need no controller.
LOGICAL = ("memory", "cpu", "cpuacct", "cpuset", "pids", "io", "freezer")
V1_NAME = {"io": "blkio"}
V2_CORE = ("cpuacct", "freezer")


class CgroupError(IntermodalError):
    """cgroupfs refused an operation, or the cgroup is in a state we cannot change."""


class Layout:
    """Where the cgroup hierarchies are: mode "v1" | "v2" | "hybrid"."""

    def __init__(self, mode, unified=None, v1=None, unified_controllers=None):
        self.mode = mode
        self.unified = unified
        self.v1 = dict(v1 or {})
        self.unified_controllers = set(unified_controllers or ())

    def where(self, logical):
        """(version, mountpoint) for a logical controller, or None if this host lacks it."""
        v1_name = V1_NAME.get(logical, logical)
        if v1_name in self.v1:
            return "v1", self.v1[v1_name]
        if self.unified and (logical in self.unified_controllers or logical in V2_CORE):
            # In hybrid mode the core files exist on cgroup2 but the process is
            # accounted in v1; only use v2 for what v1 does not have.
            if self.mode == "v2" or logical in self.unified_controllers:
                return "v2", self.unified
        return None

    def as_dict(self):
        return {"mode": self.mode, "unified": self.unified, "v1": dict(self.v1),
                "unified_controllers": sorted(self.unified_controllers)}

    def __repr__(self):
        return "Layout(%r)" % (self.as_dict(),)


def _unescape(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and len(field[i + 1:i + 4]) == 3:
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def detect_layout(mountinfo="/proc/self/mountinfo"):
    """Read the mounts of cgroup and cgroup2 filesystems (first mount of each controller wins)."""
    v1, unified = {}, None
    try:
        with open(mountinfo) as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise CgroupError("cannot read %s to find the cgroup mounts: %s" % (mountinfo, exc.strerror))
    for line in lines:
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields, tail = pre.split(), post.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype, mountpoint, options = tail[0], _unescape(fields[4]), tail[2].split(",")
        if fstype == "cgroup2" and unified is None:
            unified = mountpoint
        elif fstype == "cgroup":
            for opt in options:
                if opt in V1_CONTROLLERS and opt not in v1:
                    v1[opt] = mountpoint
    if not v1 and not unified:
        raise CgroupError("no cgroup filesystem is mounted on this host (looked in %s)" % mountinfo)
    controllers = set()
    if unified:
        controllers = set((_read(os.path.join(unified, "cgroup.controllers")) or "").split())
    mode = "v2" if not v1 else ("hybrid" if unified else "v1")
    return Layout(mode, unified, v1, controllers)


def _read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise CgroupError("cannot read %s: %s" % (path, exc.strerror))


def _write(path, data):
    # One write() per value: cgroupfs takes each write as one command. O_TRUNC
    # is what a shell's ">" does; cgroupfs ignores it and a fake tree needs it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data.encode() if data else b"\n")
    finally:
        os.close(fd)


def _validate_relpath(relpath):
    parts = [p for p in str(relpath).strip("/").split("/") if p]
    if not parts or any(p in (".", "..") or p.startswith(".") for p in parts):
        raise InvalidOption("invalid cgroup path %r" % (relpath,))
    return "/".join(parts)


class Cgroup:
    """One cgroup, at ``relpath`` below every hierarchy root (e.g. "intermodal/web")."""

    def __init__(self, relpath, layout=None):
        self.relpath = _validate_relpath(relpath)
        self.layout = layout or detect_layout()

    def where(self, logical):
        found = self.layout.where(logical)
        return found[0] if found else None

    def dir_of(self, logical):
        found = self.layout.where(logical)
        return os.path.join(found[1], self.relpath) if found else None

    def file(self, logical, name):
        return os.path.join(self.dir_of(logical), name)

    # ---- directories ---------------------------------------------------------
    @property
    def paths(self):
        """{logical controller: directory} for every controller this host has."""
        return {c: self.dir_of(c) for c in LOGICAL if self.dir_of(c)}

    def dirs(self):
        """The distinct directories (one per hierarchy), in a stable order."""
        seen = []
        for directory in self.paths.values():
            if directory not in seen:
                seen.append(directory)
        return seen

    def exists(self):
        """True if the cgroup is in any hierarchy (a runtime may not have made it in all)."""
        return any(os.path.isdir(d) for d in self.dirs())

    def complete(self):
        """True if the cgroup is in every hierarchy this host has; create() makes it so."""
        dirs = self.dirs()
        return bool(dirs) and all(os.path.isdir(d) for d in dirs)

    def create(self):
        """Make the directory in every hierarchy (parents too). True if anything was created."""
        created = False
        for logical, directory in self.paths.items():
            if os.path.isdir(directory):
                continue
            version, base = self.layout.where(logical)
            current = base
            for part in self.relpath.split("/"):
                parent, current = current, os.path.join(current, part)
                if version == "v2":
                    self._enable_controllers(parent)
                if os.path.isdir(current):
                    continue
                try:
                    os.mkdir(current, 0o755)
                except FileExistsError:
                    continue
                except OSError as exc:
                    raise CgroupError("cannot create cgroup %s: %s" % (current, exc.strerror))
                created = True
                if version == "v1" and self._is_v1_cpuset(base):
                    self._init_cpuset(parent, current)
        return created

    def _is_v1_cpuset(self, base):
        return self.layout.v1.get("cpuset") == base

    @staticmethod
    def _init_cpuset(parent, child):
        # A new v1 cpuset starts empty and cannot take a process: copy the parent's sets.
        for name in ("cpuset.mems", "cpuset.cpus"):
            path = os.path.join(child, name)
            if not _read(path):
                value = _read(os.path.join(parent, name))
                if value:
                    try:
                        _write(path, value)
                    except OSError as exc:
                        raise CgroupError("cannot initialise %s from its parent: %s" % (path, exc.strerror))

    def _enable_controllers(self, parent):
        """v2: let children of ``parent`` use the controllers we manage (only missing ones are written)."""
        wanted = {"memory", "cpu", "cpuset", "pids", "io"}
        available = set((_read(os.path.join(parent, "cgroup.controllers")) or "").split())
        enabled = set(c.lstrip("+") for c in (_read(os.path.join(parent, "cgroup.subtree_control")) or "").split())
        missing = sorted((wanted & available) - enabled)
        if missing:
            try:
                _write(os.path.join(parent, "cgroup.subtree_control"), " ".join("+" + c for c in missing))
            except OSError as exc:
                raise CgroupError("cannot enable controllers %s in %s: %s (a cgroup v2 parent must not hold "
                                  "processes itself)" % (", ".join(missing), parent, exc.strerror))

    # ---- limits ---------------------------------------------------------------
    def check(self, limits):
        """Raise InvalidOption if a normalised limit needs a controller this host lacks."""
        check_supported(_View(self), limits)

    def plan(self, limits):
        """The writes apply() would do, as [{"key", "file", "value"}], without writing."""
        return [{"key": w.key, "file": self.file(w.controller, w.name), "value": w.data.strip()}
                for w in plan(_View(self), limits)]

    def changed_keys(self, limits):
        return _unique(w.key for w in plan(_View(self), limits))

    def apply(self, limits):
        """Write the normalised ``limits`` that differ; returns the keys that changed."""
        changed = []
        view = _View(self)
        for write in plan(view, limits):
            path = self.file(write.controller, write.name)
            try:
                _write(path, write.data)
            except OSError as exc:
                raise CgroupError(_refusal(write, path, exc, view.read))
            if write.key not in changed:
                changed.append(write.key)
        return changed

    def read(self):
        """Current limits in the vocabulary (None = unlimited or the default)."""
        return read_limits(_View(self))

    def stats(self):
        """{"memory_usage", "memory_limit", "memory_max_usage", "cpu_usage_ns", "pids_current", "oom_kills"}"""
        return read_stats(_View(self), len(self.pids()))

    # ---- processes --------------------------------------------------------------
    def pids(self):
        """Processes in the cgroup (the union over hierarchies), sorted."""
        found = set()
        for directory in self.dirs():
            text = _read(os.path.join(directory, "cgroup.procs"))
            found.update(int(p) for p in (text or "").split())
        return sorted(found)

    def add_pid(self, pid):
        """Move a process (all its threads) into this cgroup in every hierarchy."""
        pid = int(pid)
        for directory in self.dirs():
            path = os.path.join(directory, "cgroup.procs")
            try:
                _write(path, str(pid))
            except OSError as exc:
                if exc.errno == errno.ESRCH:
                    raise CgroupError("pids: no process with pid %d" % pid)
                raise CgroupError("pids: cannot move pid %d into %s: %s" % (pid, directory, exc.strerror))

    def kill_all(self, sig=signal.SIGKILL, timeout=10.0):
        """Signal every process; for SIGKILL wait until the cgroup is empty. Returns how many were signalled.

        The cgroup is frozen first where a freezer exists, so a forking process
        cannot outrun the kill (as runc does).
        """
        v2_kill = self.dir_of("freezer") and self.where("freezer") == "v2" \
            and os.path.exists(os.path.join(self.dir_of("freezer"), "cgroup.kill"))
        signalled = set()
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                return len(signalled)
            if sig == signal.SIGKILL and v2_kill:
                _write(os.path.join(self.dir_of("freezer"), "cgroup.kill"), "1")
                signalled.update(pids)
            else:
                frozen = self._freeze(True)
                try:
                    for pid in self.pids():
                        try:
                            os.kill(pid, sig)
                            signalled.add(pid)
                        except ProcessLookupError:
                            pass
                finally:
                    if frozen:
                        self._freeze(False)
            if sig != signal.SIGKILL:
                return len(signalled)
            if time.monotonic() > deadline:
                raise CgroupError("cgroup %s: processes %s survived SIGKILL for %ss"
                                  % (self.relpath, self.pids(), timeout))
            time.sleep(0.02)

    def _freeze(self, frozen):
        directory = self.dir_of("freezer")
        if not directory or not os.path.isdir(directory):
            return False
        try:
            if self.where("freezer") == "v1":
                _write(os.path.join(directory, "freezer.state"), "FROZEN" if frozen else "THAWED")
            else:
                _write(os.path.join(directory, "cgroup.freeze"), "1" if frozen else "0")
        except OSError:
            return False
        return True

    def remove(self):
        """Remove the cgroup from every hierarchy (not its parents). True if anything was removed."""
        removed = False
        for directory in self.dirs():
            try:
                os.rmdir(directory)
                removed = True
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise CgroupError("cgroup %s is not empty: processes %s or child cgroups remain in %s"
                                      % (self.relpath, self.pids(), directory))
                raise CgroupError("cannot remove cgroup %s: %s" % (directory, exc.strerror))
        return removed

    def describe(self):
        exists = self.exists()
        return {
            "path": self.relpath,
            "exists": exists,
            "mode": self.layout.mode,
            "paths": self.paths,
            "limits": self.read() if exists else {},
            "stats": self.stats() if exists else {},
            "pids": self.pids() if exists else [],
        }


class _View:
    """The read-only view of one cgroup that _cgroups_map plans against."""

    def __init__(self, cgroup):
        self.cgroup = cgroup
        self.where = cgroup.where
        self.file = cgroup.file

    def read(self, logical, name):
        directory = self.cgroup.dir_of(logical)
        return _read(os.path.join(directory, name)) if directory else None

    def parent_read(self, logical, name):
        directory = self.cgroup.dir_of(logical)
        return _read(os.path.join(os.path.dirname(directory), name)) if directory else None

    def root_has(self, logical, name):
        found = self.cgroup.layout.where(logical)
        return bool(found) and os.path.exists(os.path.join(found[1], name))


def _unique(items):
    out = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _refusal(write, path, exc, read):
    hint = ""
    if exc.errno == errno.EBUSY and write.key in ("memory", "memory_swap"):
        hint = " (the processes use more than that and the kernel could not reclaim it)"
    elif exc.errno == errno.EINVAL and write.key == "memory":
        hint = " (it must not exceed the memory+swap limit %s; set memory_swap too)" % (
            read("memory", "memory.memsw.limit_in_bytes"),)
    return "%s: the kernel refused %r for %s: %s%s" % (write.key, write.data.strip(), path, exc.strerror, hint)
