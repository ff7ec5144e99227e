# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Supervision that outlives the module: our monitor process, or a systemd unit.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

``Supervisor.for_host(store_root)`` picks the backend:

- systemd is PID 1 and ``systemctl`` answers: one unit per container
  (``_systemd.py``); restart policy, start at boot and journald
  logs come from systemd.
- elsewhere: our monitor (``_monitor.py``), one small detached process per
  container. Its code is copied out of the module (AnsiballZ deletes its zip
  when the module exits) into ``<store>/libexec/<content hash>/`` so running
  monitors keep working across collection upgrades.

policy = {"restart_policy": "no"|"on-failure[:N]"|"always"|"unless-stopped",
"max_retries": int|None, "stop_signal": "SIGTERM", "stop_timeout": 10,
"log_max_size": bytes, "log_max_files": int}; missing keys take
``_monitor.DEFAULT_POLICY``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from ansible_collections.intermodal.containers.plugins.module_utils import _logs, _monitor
from ansible_collections.intermodal.containers.plugins.module_utils._errors import IntermodalError
from ansible_collections.intermodal.containers.plugins.module_utils._systemd import (  # noqa: F401 (re-exported)
    InvalidPolicy, SupervisorError, SystemdSupervisor, empty_status, render_unit, systemd_is_pid1, validate_policy,
)
from ansible_collections.intermodal.containers.plugins.module_utils._monitor import (
    LAUNCH_FILE, MONITOR_LOG, MONITOR_PID_FILE, POLICY_FILE, STATUS_FILE,
    process_alive, process_starttime, read_json, write_json_atomic,
)

MU = "ansible_collections.intermodal.containers.plugins.module_utils"
# Files the monitor process needs; their collection imports are added transitively.
MONITOR_MODULES = ("_monitor", "_logs")
RUNTIME_MODULE = "_runtime"
START_WAIT = 15.0
# Extra time, beyond stop_timeout, the monitor gets to kill and delete.
STOP_MARGIN = _monitor.KILL_GRACE + 10.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ---- installing the monitor's code outside AnsiballZ -------------------------

def _source_of(modname):
    module = importlib.import_module("%s.%s" % (MU, modname))
    loader = getattr(module, "__loader__", None)
    source = None
    if loader is not None and hasattr(loader, "get_source"):
        source = loader.get_source(module.__name__)  # works inside AnsiballZ's zip too
    if source is None:
        with open(module.__file__, "r", encoding="utf-8") as f:
            source = f.read()
    return source


_IMPORT_RE = re.compile(r"plugins\.module_utils(?:\._(\w+)| import ([\w, ()\n]+))")


def _deps(source):
    names = set()
    for single, group in _IMPORT_RE.findall(source):
        if single:
            names.add("_" + single)
        else:
            names.update(n.strip() for n in group.replace("(", "").replace(")", "").split(",")
                         if n.strip().startswith("_"))
    return names


def monitor_sources(with_runtime=True):
    """{file name: source} for the monitor and what it imports (transitively)."""
    todo = list(MONITOR_MODULES) + ([RUNTIME_MODULE] if with_runtime else [])
    sources = {}
    while todo:
        name = todo.pop()
        if name in sources:
            continue
        sources[name] = _source_of(name)
        todo.extend(_deps(sources[name]) - set(sources) - (set() if with_runtime else {RUNTIME_MODULE}))
    return {name + ".py": text for name, text in sources.items()}


def install_monitor(store_root, with_runtime=True, python=None):
    """Copy the monitor's code to <store>/libexec/<hash>/; returns that root (idempotent)."""
    sources = monitor_sources(with_runtime)
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name].encode("utf-8") + b"\0")
    base = os.path.join(os.path.abspath(store_root), "libexec")
    root = os.path.join(base, digest.hexdigest()[:16])
    if not os.path.isdir(root):
        _write_tree(base, root, sources)
    _compile(root, python or python_interpreter())
    return root


def _write_tree(base, root, sources):
    os.makedirs(base, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=base)
    try:
        pkg = os.path.join(tmp, *MU.split("."))
        os.makedirs(pkg)
        for name, text in sources.items():
            with open(os.path.join(pkg, name), "w", encoding="utf-8") as f:
                f.write(text)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, root)
        except OSError:
            if not os.path.isdir(root):  # not a lost race with another installer
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _compile(root, python):
    """Write the pyc files with the monitor's own interpreter, once per interpreter.

    A monitor that compiles its code at start keeps ~1.6 MiB more RSS for life.
    """
    marker = os.path.join(root, ".compiled-" + hashlib.sha256(python.encode()).hexdigest()[:12])
    if os.path.exists(marker):
        return
    pkg = os.path.join(root, *MU.split("."))
    proc = subprocess.run([python, "-S", "-m", "compileall", "-q", pkg], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, check=False, timeout=120)
    if proc.returncode != 0:
        raise SupervisorError("cannot compile the monitor's code with %s: %s"
                              % (python, proc.stdout.decode("utf-8", "replace").strip()))
    open(marker, "w").close()


def monitor_argv(python, container_dir):
    """The monitor's command line. `-c import` rather than a script path or -m:
    imported modules load from the pyc written at install (compiling _monitor
    at every start costs ~1.6 MiB RSS that never comes back, runpy ~1 MiB)."""
    return [python, "-S", "-c", "import sys; from %s._monitor import main; sys.exit(main())" % MU, container_dir]


def python_interpreter():
    exe = sys.executable
    if exe and os.path.isfile(exe) and os.access(exe, os.X_OK):
        return exe
    return "/usr/bin/python3"


def spawn_detached(argv, env, log_path, cwd="/"):
    """Start argv as a daemon (double fork, new session, own process group, stdin /dev/null); returns its pid.

    The intermediate child exits at once, so the daemon is never our zombie
    and lives on after this process (the Ansible module) exits.
    """
    rfd, wfd = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - child processes
        try:
            os.close(rfd)
            os.setsid()
            second = os.fork()
            if second:
                os.write(wfd, b"%d" % second)
                os._exit(0)
            os.setpgid(0, 0)  # its own process group, so killpg(monitor pid) is exact
            os.chdir(cwd)
            os.umask(0o022)
            null = os.open("/dev/null", os.O_RDONLY)
            log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.closerange(3, 65536)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    os.close(wfd)
    try:
        data = b""
        while True:
            chunk = os.read(rfd, 64)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(rfd)
        os.waitpid(first, 0)
    if not data.isdigit():
        raise SupervisorError("could not start the monitor process %s" % argv)
    return int(data)


# ---- the monitor-backed supervisor -----------------------------------------

def _tail(path, limit=2000):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


class Supervisor:
    """Common entry point; see MonitorSupervisor and _systemd.SystemdSupervisor."""

    kind = None

    @staticmethod
    def for_host(store_root):
        if systemd_is_pid1():
            return SystemdSupervisor(store_root)
        return MonitorSupervisor(store_root)


class MonitorSupervisor(Supervisor):
    """One detached `_monitor` process per container."""

    kind = "monitor"

    def __init__(self, store_root, python=None):
        self.store_root = os.path.abspath(store_root)
        self.python = python or python_interpreter()

    # -- reading what the monitor recorded

    def _monitor_pid(self, paths, state=None):
        """The live monitor's pid, or None (dead, zombie or a reused pid)."""
        state = state if state is not None else (read_json(os.path.join(paths.dir, STATUS_FILE)) or {})
        pid = state.get("monitor_pid")
        if not pid:
            try:
                with open(os.path.join(paths.dir, MONITOR_PID_FILE)) as f:
                    pid = int(f.read().strip())
            except (OSError, ValueError):
                return None
        if not process_alive(pid):
            return None
        recorded = state.get("monitor_starttime")
        if recorded is not None and process_starttime(pid) != recorded:
            return None
        return pid

    def status(self, paths):
        state = read_json(os.path.join(paths.dir, STATUS_FILE))
        if state is None:
            return empty_status()
        out = empty_status(state.get("status") or "created")
        for key in ("pid", "started_at", "finished_at", "exit_code", "restart_count", "error"):
            if state.get(key) is not None:
                out[key] = state[key]
        monitor = self._monitor_pid(paths, state)
        out["monitor_pid"] = monitor
        if out["pid"] and state.get("pid_starttime") is not None \
                and process_starttime(out["pid"]) != state["pid_starttime"]:
            out["pid"] = None  # that pid now belongs to another process (e.g. after a reboot)
        if out["status"] in ("running", "restarting") and monitor is None:
            # The monitor died without recording an end: say so.
            if out["pid"] and process_alive(out["pid"]):
                out["error"] = ("the monitor process %s is gone; the container (pid %s) runs unsupervised"
                                % (state.get("monitor_pid"), out["pid"]))
            else:
                out.update(status="exited", pid=None, exit_code=None,
                           error="the monitor process %s died; the container's exit code is unknown"
                           % state.get("monitor_pid"))
        elif out["status"] == "running" and state.get("pid") and not (out["pid"] and process_alive(out["pid"])):
            out["status"] = "restarting"  # exited a moment ago; the monitor is about to record it
        return out

    # -- start / stop

    def _write_policy(self, paths, policy):
        old = read_json(os.path.join(paths.dir, POLICY_FILE)) or {}
        data = dict(policy)
        data["serial"] = int(old.get("serial") or 0) + 1
        write_json_atomic(os.path.join(paths.dir, POLICY_FILE), data)
        return data["serial"]

    def start(self, paths, runtime, policy, argv=None, env=None):
        """Start the container under a new monitor; a live monitor means it is already started.

        ``argv`` replaces ``runtime.run_argv(...)`` (a stand-in command for
        tests or plain processes; then ``runtime`` may be None).
        """
        policy = validate_policy(policy)
        if self._monitor_pid(paths) is not None:
            return self.status(paths)
        previous = read_json(os.path.join(paths.dir, STATUS_FILE)) or {}
        if previous.get("status") in ("running", "restarting"):
            # Its monitor died: end the unsupervised leftovers before starting anew.
            self._force_end(paths, runtime, previous)
        if argv is None and runtime.state(paths.runtime_id) is not None:
            runtime.delete(paths.runtime_id, force=True)  # stale state would make `run` fail
        os.makedirs(paths.logs_dir, exist_ok=True)
        if argv is None:
            argv = list(runtime.run_argv(paths.bundle, paths.runtime_id, pid_file=paths.pid_file))
            pid_file = paths.pid_file
        else:
            argv, pid_file = list(argv), None
        launch = {
            "argv": argv,
            "runtime": _runtime_spec(runtime),
            "runtime_id": paths.runtime_id,
            "pid_file": pid_file,
            "log": paths.log,
            "env": env or {"PATH": os.environ.get("PATH") or DEFAULT_PATH},
        }
        write_json_atomic(os.path.join(paths.dir, LAUNCH_FILE), launch)
        self._write_policy(paths, {k: v for k, v in policy.items() if k != "serial"})
        for stale in (STATUS_FILE, MONITOR_PID_FILE):
            try:
                os.unlink(os.path.join(paths.dir, stale))
            except FileNotFoundError:
                pass
        root = install_monitor(self.store_root, with_runtime=launch["runtime"] is not None, python=self.python)
        menv = {"PATH": launch["env"]["PATH"], "PYTHONPATH": root, "LANG": "C.UTF-8"}
        pid = spawn_detached(monitor_argv(self.python, paths.dir), menv,
                             os.path.join(paths.logs_dir, MONITOR_LOG))
        deadline = time.monotonic() + START_WAIT
        while time.monotonic() < deadline:
            state = read_json(os.path.join(paths.dir, STATUS_FILE)) or {}
            # Wait for the container's pid too (the runtime writes its pid
            # file a moment after it starts), or for an early exit.
            if state.get("monitor_pid") == pid and (state.get("pid") or state.get("status") in ("exited", "restarting")):
                return self.status(paths)
            if not process_alive(pid):
                state = read_json(os.path.join(paths.dir, STATUS_FILE)) or {}
                if state.get("monitor_pid") == pid:
                    return self.status(paths)
                raise SupervisorError("the monitor for container %s exited at start: %s"
                                      % (paths.name, _tail(os.path.join(paths.logs_dir, MONITOR_LOG))))
            time.sleep(0.01)
        raise SupervisorError("the monitor for container %s did not report within %ss: %s"
                              % (paths.name, START_WAIT, _tail(os.path.join(paths.logs_dir, MONITOR_LOG))))

    def stop(self, paths, runtime=None, stop_signal=None, stop_timeout=None):
        """stop_signal, then SIGKILL after stop_timeout, then delete; returns the final status."""
        current = read_json(os.path.join(paths.dir, POLICY_FILE)) or {}
        policy = validate_policy({k: v for k, v in current.items() if k != "serial"})
        if stop_signal is not None:
            policy["stop_signal"] = stop_signal
        if stop_timeout is not None:
            policy["stop_timeout"] = stop_timeout
        policy = validate_policy({k: v for k, v in policy.items() if k != "serial"})
        monitor = self._monitor_pid(paths)
        if monitor is not None:
            self._write_policy(paths, {k: v for k, v in policy.items() if k != "serial"})
            try:
                os.kill(monitor, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + policy["stop_timeout"] + STOP_MARGIN
            while process_alive(monitor) and time.monotonic() < deadline:
                time.sleep(0.02)
            if process_alive(monitor):
                os.kill(monitor, signal.SIGKILL)
        state = read_json(os.path.join(paths.dir, STATUS_FILE)) or {}
        if state.get("status") in ("running", "restarting"):
            # No monitor did the ending (dead, or killed above): do it here.
            self._force_end(paths, runtime, state)
        return self.status(paths)

    def _force_end(self, paths, runtime, state):
        launch = read_json(os.path.join(paths.dir, LAUNCH_FILE)) or {}
        rpid = state.get("runtime_pid")
        # The start time tells the runtime process apart from a later process that reused its pid.
        if rpid and process_alive(rpid) and process_starttime(rpid) == state.get("runtime_starttime"):
            try:
                os.killpg(rpid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            deadline = time.monotonic() + 10
            while process_alive(rpid) and time.monotonic() < deadline:
                time.sleep(0.01)
        if runtime is not None and launch.get("runtime"):
            for call in (lambda: runtime.kill(paths.runtime_id, "SIGKILL", all=True),
                         lambda: runtime.delete(paths.runtime_id, force=True)):
                try:
                    call()
                except IntermodalError:
                    pass  # already gone
        state.update(status="exited", pid=None, runtime_pid=None, stopped_by_user=True,
                     finished_at=state.get("finished_at") or _logs.rfc3339_now(),
                     error="the monitor was not there to stop the container; it was killed")
        write_json_atomic(os.path.join(paths.dir, STATUS_FILE), state)

    def update_policy(self, paths, policy, wait=5.0):
        """Write the new policy and have a live monitor re-read it (no restart).

        Returns True when a running monitor confirmed it, False when there is
        no monitor (the policy applies at the next start).
        """
        policy = validate_policy(policy)
        serial = self._write_policy(paths, {k: v for k, v in policy.items() if k != "serial"})
        monitor = self._monitor_pid(paths)
        if monitor is None:
            return False
        os.kill(monitor, signal.SIGHUP)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            state = read_json(os.path.join(paths.dir, STATUS_FILE)) or {}
            if (state.get("policy_serial") or 0) >= serial:
                return True
            if not process_alive(monitor):
                return False
            time.sleep(0.01)
        raise SupervisorError("the monitor of container %s did not confirm the new policy within %ss"
                              % (paths.name, wait))

    def remove(self, paths, runtime=None):
        """Stop if needed and delete the supervision files (not logs or the bundle)."""
        if self._monitor_pid(paths) is not None:
            self.stop(paths, runtime)
        for name in (POLICY_FILE, LAUNCH_FILE, STATUS_FILE, MONITOR_PID_FILE):
            try:
                os.unlink(os.path.join(paths.dir, name))
            except FileNotFoundError:
                pass


def _runtime_spec(runtime):
    """How the monitor's helpers rebuild the Runtime: Runtime(**spec)."""
    if runtime is None:
        return None
    spec = {}
    for attr in ("name", "binary", "state_root"):
        value = getattr(runtime, attr, None)
        if value is not None:
            spec[attr] = value
    return spec


__all__ = [
    "Supervisor", "MonitorSupervisor", "SystemdSupervisor", "InvalidPolicy", "SupervisorError", "validate_policy",
    "render_unit", "systemd_is_pid1", "empty_status", "install_monitor", "monitor_sources", "monitor_argv",
    "spawn_detached",
]
