# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""systemd-backed supervision: one unit per container, where systemd is PID 1.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

``_supervise.Supervisor.for_host`` picks this backend. The unit gives restart
policy (``Restart=``, ``StartLimitBurst=`` for on-failure:N), start at boot
(enabled for always/unless-stopped, like Docker's daemon start), journald
logs, ``KillSignal=``/``TimeoutStopSec=`` for stop and ``runtime delete
--force`` after stop. The errors and policy validation shared by both
backends live here too, because ``_supervise`` imports this file (not the
other way round).
"""

from __future__ import annotations

import os
import re
import subprocess
import time

from ansible_collections.intermodal.containers.plugins.module_utils._errors import IntermodalError
from ansible_collections.intermodal.containers.plugins.module_utils._monitor import (
    LAUNCH_FILE, POLICY_FILE, normalize_policy, process_alive, read_json, write_json_atomic,
)


class InvalidPolicy(IntermodalError):
    """A restart policy, stop signal, timeout or log limit that cannot be used."""


class SupervisorError(IntermodalError):
    """The monitor or the systemd unit could not be started, stopped or read."""


def validate_policy(policy):
    """normalize_policy with a user-facing error that names the option."""
    try:
        return normalize_policy(policy)
    except ValueError as exc:
        raise InvalidPolicy("container restart/stop/log settings: %s" % exc)


def empty_status(status="created"):
    return {"status": status, "pid": None, "started_at": None, "finished_at": None, "exit_code": None,
            "restart_count": 0, "monitor_pid": None, "supervisor": "monitor", "error": None}


UNIT_DIR = "/etc/systemd/system"
START_LIMIT_INTERVAL = 60
START_LIMIT_BURST = 10
START_WAIT = 30.0  # seconds start() waits for the runtime's pid file
_TS_RE = re.compile(r"(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)")


def systemd_is_pid1():
    """PID 1 is systemd and systemctl answers (not just installed, as in a container)."""
    try:
        with open("/proc/1/comm") as f:
            if f.read().strip() != "systemd":
                return False
        out = subprocess.run(["systemctl", "is-system-running"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return out.strip().decode("ascii", "replace") not in ("", "offline", "unknown")


def systemd_quote(arg):
    """One argument of an Exec*= line: %-specifiers and $-expansion disabled, quoted if needed."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and re.match(r"^[A-Za-z0-9_@%+=:,./-]+$", arg):
        return arg
    return '"%s"' % arg.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def restart_settings(policy, systemd_version=0):
    """([Unit] lines, [Service] lines) for a normalized policy's restart behaviour.

    on-failure:N gives up after N restarts (N+1 starts: the first counts)
    until the next explicit start (start() runs reset-failed). always and
    unless-stopped never give up, like Docker.
    """
    name, limit = policy["restart_policy"], policy.get("max_retries")
    unit = []
    service = ["Restart=%s" % {"no": "no", "on-failure": "on-failure"}.get(name, "always"),
               "RestartSec=1s"]
    if name == "on-failure" and limit:
        unit += ["StartLimitIntervalSec=infinity", "StartLimitBurst=%d" % (limit + 1)]
    elif name != "no":
        # A container that cannot start (say its rootfs cannot be mounted)
        # must not retry forever: more than 10 starts a minute marks the unit
        # failed until the next explicit start or boot.
        unit += ["StartLimitIntervalSec=%d" % START_LIMIT_INTERVAL, "StartLimitBurst=%d" % START_LIMIT_BURST]
    if name != "no" and systemd_version >= 254:
        # Backoff like the monitor's, growing to 10 s.
        service += ["RestartSteps=5", "RestartMaxDelaySec=10s"]
    return unit, service


def starts_at_boot(policy):
    """Docker starts always and unless-stopped containers when the host comes up."""
    return policy["restart_policy"] in ("always", "unless-stopped")


def delete_argv(run_argv, runtime_id):
    """`<runtime> <global flags> delete --force <id>` from the run command's prefix."""
    try:
        prefix = run_argv[:run_argv.index("run")]
    except ValueError:
        raise SupervisorError("cannot derive the delete command from %r" % (run_argv,))
    return prefix + ["delete", "--force", runtime_id]


def render_unit(paths, run_argv, policy, systemd_version=0, stop_argv=None, mount_argv=None):
    """Text of the unit for one container.

    ``mount_argv`` (``_rootfs.overlay_remount_argv``) mounts the container's
    overlay when it is not mounted, as after a reboot.
    """
    stop_argv = stop_argv or delete_argv(run_argv, paths.runtime_id)
    unit, service = restart_settings(policy, systemd_version)
    mount = ["ExecStartPre=" + " ".join(systemd_quote(a) for a in mount_argv)] if mount_argv else []
    lines = ["# Written by intermodal.containers for container %s; the next run overwrites changes." % paths.name,
             "[Unit]",
             "Description=intermodal.containers container %s" % paths.name,
             "After=network.target local-fs.target"] + unit + [
        "",
        "[Service]",
        "Type=simple",
    ] + mount + [
        # Runtime state left by a crash or a reboot would make `run` fail.
        "ExecStartPre=-" + " ".join(systemd_quote(a) for a in stop_argv),
        "ExecStart=" + " ".join(systemd_quote(a) for a in run_argv),
        # After TimeoutStopSec systemd SIGKILLs the runtime only (the container
        # sits in its own cgroup): delete --force kills the container itself.
        "ExecStopPost=-" + " ".join(systemd_quote(a) for a in stop_argv),
        "KillMode=mixed",
        "KillSignal=%s" % policy["stop_signal"],
        "TimeoutStopSec=%s" % _seconds(policy["stop_timeout"]),
    ] + service + [
        "StandardOutput=journal",
        "StandardError=journal",
        "SyslogIdentifier=%s" % paths.runtime_id,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _seconds(value):
    return ("%d" % value) if float(value) == int(value) else ("%gs" % value)


def _utc(text):
    m = _TS_RE.search(text or "")
    return "%sT%sZ" % m.groups() if m else None


class SystemdSupervisor:
    """One unit per container in /etc/systemd/system."""

    kind = "systemd"

    def __init__(self, store_root, unit_dir=UNIT_DIR, systemctl="systemctl"):
        self.store_root = os.path.abspath(store_root)
        self.unit_dir = unit_dir
        self.systemctl = systemctl
        self._version = None

    def _run(self, *args, check=True):
        env = dict(os.environ, TZ="UTC", LC_ALL="C", SYSTEMD_PAGER="")
        proc = subprocess.run([self.systemctl] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, timeout=300, check=False)
        if check and proc.returncode != 0:
            raise SupervisorError("systemctl %s failed: %s" % (" ".join(args), proc.stderr.decode("utf-8", "replace").strip()))
        return proc.stdout.decode("utf-8", "replace")

    def version(self):
        if self._version is None:
            m = re.search(r"systemd (\d+)", self._run("--version", check=False))
            self._version = int(m.group(1)) if m else 0
        return self._version

    def _unit_path(self, paths):
        return os.path.join(self.unit_dir, paths.unit_name)

    def _write_unit(self, paths, text):
        """Write the unit and daemon-reload, only if its text changed."""
        path = self._unit_path(paths)
        try:
            with open(path) as f:
                if f.read() == text:
                    return False
        except FileNotFoundError:
            pass
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        self._run("daemon-reload")
        return True

    def _apply(self, paths, policy, run_argv=None, mount_argv=None):
        launch = read_json(os.path.join(paths.dir, LAUNCH_FILE)) or {}
        run_argv = run_argv or launch.get("argv")
        mount_argv = mount_argv or launch.get("mount_argv")
        if not run_argv:
            raise SupervisorError("container %s has never been started: no command for its unit" % paths.name)
        os.makedirs(paths.dir, exist_ok=True)
        write_json_atomic(os.path.join(paths.dir, LAUNCH_FILE),
                          dict(launch, argv=run_argv, mount_argv=mount_argv, runtime_id=paths.runtime_id))
        write_json_atomic(os.path.join(paths.dir, POLICY_FILE), {k: v for k, v in policy.items() if k != "serial"})
        self._write_unit(paths, render_unit(paths, run_argv, policy, self.version(), mount_argv=mount_argv))
        self._run("enable" if starts_at_boot(policy) else "disable", paths.unit_name, check=False)

    def start(self, paths, runtime, policy, argv=None, env=None, mount_argv=None):
        """Start the unit; returns once the container's pid is known or the unit stopped running.

        ``mount_argv`` becomes the unit's ExecStartPre that remounts the rootfs.
        """
        policy = validate_policy(policy)
        if argv is None:
            argv = list(runtime.run_argv(paths.bundle, paths.runtime_id, pid_file=paths.pid_file))
        self._apply(paths, policy, argv, mount_argv)
        if self.status(paths)["status"] != "running":
            # A pid file left by an earlier run could name a reused pid.
            try:
                os.unlink(paths.pid_file)
            except FileNotFoundError:
                pass
        self._run("reset-failed", paths.unit_name, check=False)
        self._run("start", paths.unit_name)
        # Type=simple: `systemctl start` returns once the runtime is forked,
        # before it created the container and wrote the pid file.
        deadline = time.monotonic() + START_WAIT
        while True:
            status = self.status(paths)
            if status["pid"] or status["status"] != "running" or time.monotonic() >= deadline:
                return status
            time.sleep(0.1)

    def stop(self, paths, runtime=None, stop_signal=None, stop_timeout=None):
        policy = validate_policy(read_json(os.path.join(paths.dir, POLICY_FILE)) or {})
        if stop_signal is not None or stop_timeout is not None:
            if stop_signal is not None:
                policy["stop_signal"] = stop_signal
            if stop_timeout is not None:
                policy["stop_timeout"] = stop_timeout
            policy = validate_policy({k: v for k, v in policy.items() if k != "serial"})
            if os.path.exists(self._unit_path(paths)):
                self._apply(paths, policy)
        if os.path.exists(self._unit_path(paths)):
            self._run("stop", paths.unit_name)
            if policy["restart_policy"] == "unless-stopped":
                self._run("disable", paths.unit_name, check=False)
        return self.status(paths)

    def status(self, paths):
        out = empty_status()
        out["supervisor"] = "systemd"
        props = {}
        for line in self._run("show", paths.unit_name, "-p", "LoadState,ActiveState,SubState,MainPID,"
                              "ExecMainStartTimestamp,ExecMainExitTimestamp,ExecMainCode,ExecMainStatus,NRestarts",
                              check=False).splitlines():
            key, dummy, value = line.partition("=")
            props[key] = value
        if props.get("LoadState") in (None, "", "not-found"):
            return out
        active, sub = props.get("ActiveState"), props.get("SubState")
        started = _utc(props.get("ExecMainStartTimestamp"))
        if active in ("active", "deactivating", "reloading"):
            out["status"] = "running"
        elif active == "activating":
            out["status"] = "restarting" if sub == "auto-restart" else "running"
        else:
            out["status"] = "exited" if started else "created"
        out["started_at"] = started
        if out["status"] != "running":
            out["finished_at"] = _utc(props.get("ExecMainExitTimestamp"))
            code, status = props.get("ExecMainCode"), props.get("ExecMainStatus")
            if code == "1" and status and status.isdigit():
                out["exit_code"] = int(status)
            elif code in ("2", "3") and status and status.isdigit():
                out["exit_code"] = 128 + int(status)
        else:
            # The runtime's pid file, never MainPID (that is the runtime, not the container).
            out["pid"] = _container_pid(paths)
        if (props.get("NRestarts") or "").isdigit():
            out["restart_count"] = int(props["NRestarts"])
        return out

    def update_policy(self, paths, policy):
        """Rewrite the unit and daemon-reload: systemd applies Restart= without restarting the service."""
        policy = validate_policy(policy)
        if not os.path.exists(self._unit_path(paths)):
            write_json_atomic(os.path.join(paths.dir, POLICY_FILE), {k: v for k, v in policy.items() if k != "serial"})
            return False
        self._apply(paths, policy)
        return True

    def remove(self, paths, runtime=None):
        if os.path.exists(self._unit_path(paths)):
            self._run("stop", paths.unit_name, check=False)
            self._run("disable", paths.unit_name, check=False)
            os.unlink(self._unit_path(paths))
            self._run("daemon-reload")
            self._run("reset-failed", paths.unit_name, check=False)
        for name in (POLICY_FILE, LAUNCH_FILE):
            try:
                os.unlink(os.path.join(paths.dir, name))
            except FileNotFoundError:
                pass


def _container_pid(paths):
    try:
        with open(paths.pid_file) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if process_alive(pid) else None
