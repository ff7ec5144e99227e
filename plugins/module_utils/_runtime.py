# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Driver for the OCI runtimes crun and runc: the only code that executes them.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

Both runtimes take the same verbs and global options (--root for their state
directory), so one class drives either.  ``run_argv`` gives the foreground
``run`` command line for a supervisor to exec; the other verbs run here and
turn failures into typed errors.

Hybrid cgroups: crun (1.8 at least) refuses a host where cgroup v1
controllers are mounted and cgroup2 still has a controller (on this kind of
host, hugetlb alone sits on /sys/fs/cgroup/unified).  ``check`` detects
that before anything is created and raises HybridCgroups with the fix;
``fix_hybrid_hugetlb`` applies the fix for callers allowed to change the host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

from ansible_collections.intermodal.containers.plugins.module_utils._errors import IntermodalError, MissingDependency

RUNTIMES = ("crun", "runc")
DEFAULT_STATE_ROOT = "/run/intermodal/runtime"
CGROUP_ROOT = "/sys/fs/cgroup"
UNIFIED = "/sys/fs/cgroup/unified"
HYBRID_MESSAGE = "hybrid mode not supported"
COMMAND_TIMEOUT = 60


class RuntimeCommandError(IntermodalError):
    """crun/runc ran and failed."""


class HybridCgroups(IntermodalError):
    """crun refuses this host's hybrid cgroup layout (a controller left on cgroup2)."""


def _mountinfo(path="/proc/self/mountinfo"):
    """[(mount point, fstype, super options)] of this mount namespace."""
    out = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if " - " not in line or len(fields) < 10:
                continue
            sep = fields.index("-")
            out.append((fields[4], fields[sep + 1], fields[sep + 3] if len(fields) > sep + 3 else ""))
    return out


def hybrid_controllers(mountinfo="/proc/self/mountinfo"):
    """Controllers crun objects to: those on a cgroup2 mount while v1 hierarchies exist too.

    Empty when the host is pure v1, pure v2, or hybrid with an empty cgroup2.
    """
    mounts = _mountinfo(mountinfo)
    v1 = [m for m in mounts if m[1] == "cgroup"]
    v2 = [m for m in mounts if m[1] == "cgroup2"]
    if not v1 or not v2:
        return set()
    found = set()
    for point, _fstype, _opts in v2:
        try:
            with open(os.path.join(point, "cgroup.controllers")) as f:
                found.update(f.read().split())
        except OSError:
            continue
    return found


def fix_hybrid_hugetlb(cgroup_root=CGROUP_ROOT, mountinfo="/proc/self/mountinfo"):
    """Move hugetlb off cgroup2 by mounting it as a v1 hierarchy; True if the host changed.

    What an ops engineer does on such a host (``mkdir /sys/fs/cgroup/hugetlb;
    mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb``).  Idempotent.
    Only call it when the user allows changing the host's cgroup mounts.
    """
    # imported here: _rootfs owns the mount(2) wrapper
    from ansible_collections.intermodal.containers.plugins.module_utils._rootfs import sys_mount

    controllers = hybrid_controllers(mountinfo)
    if "hugetlb" not in controllers:
        return False
    others = controllers - {"hugetlb"}
    if others:
        raise HybridCgroups("cgroup2 holds %s besides hugetlb; moving those is not automated (mount each "
                            "as a v1 hierarchy under %s, or use runtime runc)" % (", ".join(sorted(others)), cgroup_root))
    target = os.path.join(cgroup_root, "hugetlb")
    for point, fstype, opts in _mountinfo(mountinfo):
        if fstype == "cgroup" and "hugetlb" in opts.split(","):
            return False  # already a v1 hierarchy (the cgroup2 list is stale)
    try:
        os.makedirs(target, exist_ok=True)
        sys_mount("cgroup", target, "cgroup", 0, "hugetlb")
    except OSError as exc:
        raise HybridCgroups("cannot mount hugetlb as a cgroup v1 hierarchy at %s: %s (mount -t cgroup -o "
                            "hugetlb cgroup %s)" % (target, exc.strerror or exc, target))
    return True


def hybrid_fix_hint(controllers):
    return ("crun refuses this host's hybrid cgroup layout: cgroup v1 controllers are mounted and "
            "cgroup2 (%s) still holds %s. Fix the host by mounting it as a v1 hierarchy: "
            "'mkdir -p /sys/fs/cgroup/hugetlb && mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb' "
            "(see docs/runtime.md), or use runtime: runc."
            % (UNIFIED, ", ".join(sorted(controllers)) or "a controller"))


class Runtime:
    """One OCI runtime binary with its own state directory."""

    def __init__(self, name="crun", binary=None, state_root=None):
        if name not in RUNTIMES:
            raise IntermodalError("runtime: %r is not supported (use %s)" % (name, " or ".join(RUNTIMES)))
        self.name = name
        self._binary = binary
        self.state_root = state_root or os.path.join(DEFAULT_STATE_ROOT, name)

    @property
    def binary(self):
        path = self._binary or shutil.which(self.name) or shutil.which(self.name, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if not path or not os.access(path, os.X_OK):
            raise MissingDependency("runtime %s: the %s binary is not installed%s (apt install %s)"
                                    % (self.name, self.name, " at " + self._binary if self._binary else "", self.name))
        return path

    def check(self):
        """MissingDependency if the binary is missing; HybridCgroups if crun will refuse this host."""
        binary = self.binary
        if self.name == "crun":
            controllers = hybrid_controllers()
            if controllers:
                raise HybridCgroups(hybrid_fix_hint(controllers), controllers=sorted(controllers))
        return binary

    def version(self):
        out = self._run(["--version"]).stdout
        first = out.splitlines()[0] if out else ""
        return first.split()[-1] if first else ""

    # -- commands ------------------------------------------------------------

    def _base(self):
        return [self.binary, "--root", self.state_root]

    def _run(self, args, input_=None, check=True, base=True):
        argv = (self._base() if base else [self.binary]) + list(args)
        os.makedirs(self.state_root, mode=0o700, exist_ok=True)
        try:
            proc = subprocess.run(argv, input=input_, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  universal_newlines=True, timeout=COMMAND_TIMEOUT, close_fds=True, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeCommandError("%s %s did not finish in %ds" % (self.name, args[0], COMMAND_TIMEOUT))
        if check and proc.returncode != 0:
            self._raise(args, proc.stderr or proc.stdout)
        return proc

    def _raise(self, args, text):
        text = (text or "").strip()
        if HYBRID_MESSAGE in text:
            raise HybridCgroups(hybrid_fix_hint(hybrid_controllers()))
        verb = args[0] if args else ""
        target = args[-1] if len(args) > 1 else ""
        raise RuntimeCommandError("%s %s %s failed: %s" % (self.name, verb, target, _last_lines(text)))

    def run_argv(self, bundle, runtime_id, pid_file=None):
        """Command line of a foreground ``run``: the runtime stays the container's parent until it exits."""
        argv = self._base() + ["run", "--bundle", os.path.abspath(bundle)]
        if pid_file:
            argv += ["--pid-file", os.path.abspath(pid_file)]
        return argv + [runtime_id]

    def state(self, runtime_id):
        """``state`` JSON (status: creating|created|running|stopped), or None if the runtime has no such container."""
        proc = self._run(["state", runtime_id], check=False)
        if proc.returncode != 0:
            if _is_missing(proc.stderr):
                return None
            self._raise(["state", runtime_id], proc.stderr)
        try:
            return json.loads(proc.stdout)
        except ValueError:
            raise RuntimeCommandError("%s state %s printed no JSON: %s" % (self.name, runtime_id, _last_lines(proc.stdout)))

    def kill(self, runtime_id, signal="SIGTERM", all=False):  # pylint: disable=redefined-builtin
        """Signal the container (every process in it with all=True); False if it is not running."""
        args = ["kill"] + (["--all"] if all else []) + [runtime_id, str(signal)]
        proc = self._run(args, check=False)
        if proc.returncode != 0:
            if _is_missing(proc.stderr) or _is_not_running(proc.stderr):
                return False
            self._raise(["kill", runtime_id], proc.stderr)
        return True

    def delete(self, runtime_id, force=False):
        """Delete the container's runtime state (force kills it first); False if there was none."""
        proc = self._run(["delete"] + (["--force"] if force else []) + [runtime_id], check=False)
        if proc.returncode != 0:
            if _is_missing(proc.stderr):
                return False
            self._raise(["delete", runtime_id], proc.stderr)
        return True

    def update(self, runtime_id, resources):
        """Apply OCI linux.resources to a live container (via a file: crun 1.8 does not read '-')."""
        with tempfile.NamedTemporaryFile("w", prefix="resources-", suffix=".json", delete=False) as f:
            json.dump(resources, f)
            path = f.name
        try:
            self._run(["update", "--resources", path, runtime_id])
        finally:
            os.unlink(path)

    def ps(self, runtime_id):
        """Host PIDs of the container's processes."""
        proc = self._run(["ps", "--format", "json", runtime_id])
        try:
            pids = json.loads(proc.stdout or "[]")
        except ValueError:
            raise RuntimeCommandError("%s ps %s printed no JSON: %s" % (self.name, runtime_id, _last_lines(proc.stdout)))
        return [int(p) for p in (pids or [])]

    def list(self):
        """IDs of the containers this runtime (in this state root) knows."""
        proc = self._run(["list", "--format", "json"], check=False)
        if proc.returncode != 0 or not proc.stdout.strip():
            return []
        try:
            return [c["id"] for c in json.loads(proc.stdout) or []]
        except (ValueError, KeyError, TypeError):
            return []


def _is_missing(text):
    text = (text or "").lower()
    return "does not exist" in text or "not found" in text or "no such file" in text


def _is_not_running(text):
    text = (text or "").lower()
    return "not running" in text or "container not running" in text or "process already finished" in text \
        or "no such process" in text


def _last_lines(text, n=3):
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "(no output)"
