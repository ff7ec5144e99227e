# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-container monitor process used where systemd is not PID 1.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

``_supervise`` installs this file (and the few it needs) under
``<store>/libexec/<hash>/`` and starts it detached::

    python3 -S <libexec>/.../_monitor.py <container dir>

It runs the runtime's foreground command, frames the container's stdout and
stderr into a rotated log (``_logs``), records what it sees in
``monitor.json`` (tmp + rename), applies the restart policy with backoff, and
on SIGTERM stops the container (stop_signal, stop_timeout, SIGKILL, delete).
SIGHUP re-reads ``policy.json``.

Memory budget is 12 MiB RSS per monitor, so the monitor imports only C
builtins (``_signal``, ``_json``, ``select``) instead of ``signal`` (enum),
``json`` (re) or ``subprocess``; the runtime driver is imported only in
short-lived forked helpers, whose memory is not the monitor's.
"""

from __future__ import annotations

import os
import select
import sys
import time

try:  # the C module: `signal` imports enum, ~0.9 MiB per monitor
    import _signal as signal
except ImportError:  # pragma: no cover
    import signal

from ansible_collections.intermodal.containers.plugins.module_utils._logs import LineFramer, RotatingLog, rfc3339_now

POLICY_FILE = "policy.json"
LAUNCH_FILE = "supervise.json"
STATUS_FILE = "monitor.json"
MONITOR_PID_FILE = "monitor.pid"
MONITOR_LOG = "monitor.log"

RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")
DEFAULT_POLICY = {
    "restart_policy": "no",
    "max_retries": None,
    "stop_signal": "SIGTERM",
    "stop_timeout": 10,
    "log_max_size": 10 * 1024 * 1024,
    "log_max_files": 5,
}

BACKOFF_START = 0.1
BACKOFF_MAX = 10.0
BACKOFF_RESET_AFTER = 10.0
# After SIGKILL, how long to wait for the runtime before killing it directly.
KILL_GRACE = 5.0
# How long to look for the runtime's pid file after a start.
PID_FILE_WAIT = 10.0


# ---- policy -----------------------------------------------------------------

def signal_number(name):
    """'SIGTERM', 'TERM', 'sigterm', 15 or '15' -> 15; ValueError otherwise."""
    if isinstance(name, bool):
        raise ValueError("invalid signal %r" % (name,))
    if isinstance(name, int):
        num = name
    else:
        text = str(name).strip().upper()
        if text.isdigit():
            num = int(text)
        else:
            if not text.startswith("SIG"):
                text = "SIG" + text
            num = getattr(signal, text, None) if not text.startswith("SIG_") else None
            if not isinstance(num, int):
                raise ValueError("unknown signal %r" % (name,))
    if not 0 < num < 65:
        raise ValueError("invalid signal number %r" % (name,))
    return num


def signal_name(name):
    """Canonical 'SIGTERM' form of a signal (numbers without a name stay numbers as text)."""
    num = signal_number(name)
    for attr in dir(signal):
        if attr.startswith("SIG") and not attr.startswith("SIG_") and getattr(signal, attr) == num \
                and attr not in ("SIGIOT", "SIGPOLL", "SIGCLD"):
            return attr
    return str(num)


def parse_restart_policy(text, max_retries=None):
    """'on-failure:3' -> ('on-failure', 3). max_retries None or 0 means unlimited."""
    if text is None:
        text = "no"
    text = str(text).strip()
    name, sep, count = text.partition(":")
    if name not in RESTART_POLICIES:
        raise ValueError("invalid restart policy %r (use no, on-failure[:max], always or unless-stopped)" % text)
    if sep:
        if name != "on-failure":
            raise ValueError("invalid restart policy %r: only on-failure takes a maximum" % text)
        if not count.isdigit():
            raise ValueError("invalid restart policy %r: the maximum must be a number" % text)
        max_retries = int(count)
    if max_retries is not None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError("invalid max_retries %r: use a number >= 0" % (max_retries,))
        if name != "on-failure" and max_retries:
            raise ValueError("max_retries applies to on-failure only, not %r" % name)
        if max_retries == 0:
            max_retries = None
    return name, max_retries


def normalize_policy(raw):
    """Validate a policy dict and fill defaults; ValueError names the bad key."""
    raw = dict(raw or {})
    unknown = set(raw) - set(DEFAULT_POLICY) - {"serial"}
    if unknown:
        raise ValueError("unknown policy keys: %s" % ", ".join(sorted(unknown)))
    out = dict(DEFAULT_POLICY)
    out.update((k, v) for k, v in raw.items() if v is not None)
    out["restart_policy"], out["max_retries"] = parse_restart_policy(out["restart_policy"], raw.get("max_retries"))
    out["stop_signal"] = signal_name(out["stop_signal"])
    for key, minimum in (("stop_timeout", 0), ("log_max_size", 0), ("log_max_files", 1)):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise ValueError("invalid %s %r: use a number >= %d" % (key, value, minimum))
    out["log_max_files"] = int(out["log_max_files"])
    out["log_max_size"] = int(out["log_max_size"])
    out["serial"] = int(raw.get("serial") or 0)
    return out


def should_restart(policy, exit_code, restart_count, stopped_by_user):
    """Docker's RestartManager decision, for a container that just exited."""
    if stopped_by_user:
        return False
    name = policy["restart_policy"]
    if name in ("always", "unless-stopped"):
        return True
    if name == "on-failure":
        limit = policy.get("max_retries")
        return exit_code != 0 and (not limit or restart_count < limit)
    return False


def next_delay(previous, ran_for):
    """Backoff before the next start: 100 ms doubling to 10 s, reset after 10 s of running."""
    if ran_for >= BACKOFF_RESET_AFTER or not previous:
        return BACKOFF_START
    return min(previous * 2, BACKOFF_MAX)


# ---- small JSON without importing json (which pulls in re) -----------------

try:
    import _json

    class _ScanContext:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        memo = None

        @staticmethod
        def parse_constant(name):
            raise ValueError("invalid JSON constant %s" % name)

    _scan = _json.make_scanner(_ScanContext())
    _quote = _json.encode_basestring_ascii
except (ImportError, AttributeError):  # pragma: no cover - interpreters without the C accelerator
    _scan = None
    _quote = None


def loads(text):
    """json.loads for the few files the monitor reads."""
    if _scan is None:  # pragma: no cover
        import json
        return json.loads(text)
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    ws = " \t\n\r"
    start = len(text) - len(text.lstrip(ws))
    try:
        value, end = _scan(text, start)
    except StopIteration:
        raise ValueError("not JSON")
    if text[end:].strip(ws):
        raise ValueError("extra data after JSON value")
    return value


def dumps(value):
    """json.dumps for plain data (dict, list, str, int, float, bool, None)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        if _quote is None:  # pragma: no cover
            import json
            return json.dumps(value)
        return _quote(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join("%s: %s" % (dumps(str(k)), dumps(v)) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    raise TypeError("cannot encode %r" % (value,))


def write_json_atomic(path, value):
    """Readers see the old file or the new one, never a torn write."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    data = (dumps(value) + "\n").encode("utf-8")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_json(path):
    """The parsed file, or None if it does not exist."""
    try:
        with open(path, "rb") as f:
            return loads(f.read())
    except FileNotFoundError:
        return None


# ---- processes --------------------------------------------------------------

def process_state(pid):
    """'R', 'S', 'Z', ... from /proc/PID/status, or None if there is no such process.

    kill(pid, 0) is not enough: this machine's PID 1 reaps orphans late, and
    a zombie still answers kill 0.
    """
    try:
        with open("/proc/%d/status" % pid, "rb") as f:
            for line in f:
                if line.startswith(b"State:"):
                    return line.split()[1].decode("ascii")
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None


def process_alive(pid):
    return bool(pid) and process_state(pid) not in (None, "Z", "X")


def process_starttime(pid):
    """Start time in clock ticks since boot (field 22 of /proc/PID/stat); tells a reused pid apart."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(data[data.rindex(b")") + 2:].split()[19])


def exit_code_of(status):
    """waitpid status -> shell-style exit code (128 + signal when killed)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 255


# ---- the monitor --------------------------------------------------------------

class _GuardedLog:
    """Log sink that drops records it cannot write (disk full, log dir gone)
    instead of raising: the container keeps running and being supervised."""

    def __init__(self, log, note):
        self.log, self.note = log, note
        self.dropped = 0

    def write(self, data):
        try:
            self.log.write(data)
        except OSError as exc:
            if not self.dropped:
                self.note("cannot write the container log, dropping output: %s" % exc)
            self.dropped += 1
            try:
                self.log.close()  # reopened (and the directory re-made) on the next write
            except OSError:
                pass
            return
        if self.dropped:
            self.note("container log writable again; %d records were dropped" % self.dropped)
            self.dropped = 0


class Monitor:
    """One container's supervisor loop. ``run()`` returns when it is done."""

    def __init__(self, container_dir):
        self.dir = container_dir
        self.launch = read_json(os.path.join(container_dir, LAUNCH_FILE))
        if not self.launch or not self.launch.get("argv"):
            raise ValueError("%s: missing or empty %s" % (container_dir, LAUNCH_FILE))
        self.status_path = os.path.join(container_dir, STATUS_FILE)
        self.policy = self._read_policy(DEFAULT_POLICY)
        self.log = RotatingLog(self.launch.get("log") or os.path.join(container_dir, "logs", "container.log"),
                               self.policy["log_max_size"], self.policy["log_max_files"])
        self._sink = _GuardedLog(self.log, self._note)
        self.pid = os.getpid()
        self.state = {
            "status": "created",
            "pid": None,
            "runtime_pid": None,
            "runtime_starttime": None,
            "pid_starttime": None,
            "monitor_pid": self.pid,
            "monitor_starttime": process_starttime(self.pid),
            "started_at": None,
            "finished_at": None,
            "exit_code": None,
            "restart_count": 0,
            "policy_serial": self.policy["serial"],
            "stopped_by_user": False,
            "error": None,
        }
        self._flags = set()
        self._child = None
        self._fds = {}

    # -- bookkeeping

    def _read_policy(self, fallback):
        try:
            return normalize_policy(read_json(os.path.join(self.dir, POLICY_FILE)))
        except (OSError, ValueError) as exc:
            # Keep running on the last good policy; say why in the monitor log.
            self._note("cannot read %s: %s" % (POLICY_FILE, exc))
            return dict(fallback, serial=fallback.get("serial", 0))

    def _note(self, text):
        os.write(2, ("%s monitor: %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), text)).encode("utf-8", "replace"))

    def _save(self, **changes):
        self.state.update(changes)
        try:
            write_json_atomic(self.status_path, self.state)
        except OSError as exc:  # a full disk must not kill the container's supervisor
            self._note("cannot write %s: %s" % (STATUS_FILE, exc))

    def _reload(self):
        self.policy = self._read_policy(self.policy)
        self.log.configure(self.policy["log_max_size"], self.policy["log_max_files"])
        self._save(policy_serial=self.policy["serial"])

    # -- signals

    def _on_signal(self, signum, frame):
        self._flags.add(signum)

    def _install_signals(self):
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)

    def _take(self, sig):
        if sig in self._flags:
            self._flags.discard(sig)
            return True
        return False

    # -- runtime operations, in a forked helper so _runtime's imports never
    # count against this process's memory

    def _runtime_call(self, method, *args, **kwargs):
        spec = self.launch.get("runtime")
        if not spec:
            # Stand-in argv (tests, or a plain command): signal its process group.
            if method == "kill" and self._child:
                try:
                    os.killpg(self._child, signal_number(args[1]))
                except ProcessLookupError:
                    pass
            return 0
        helper = os.fork()
        if helper == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                from ansible_collections.intermodal.containers.plugins.module_utils._runtime import Runtime
                getattr(Runtime(**spec), method)(*args, **kwargs)
                code = 0
            except BaseException as exc:  # noqa: B902 - report anything, then exit
                self._note("runtime %s %r failed: %s" % (method, args, exc))
            os._exit(code)
        try:
            return exit_code_of(os.waitpid(helper, 0)[1])
        except ChildProcessError:  # pragma: no cover
            return 1

    # -- one run of the container

    def _spawn(self):
        argv = self.launch["argv"]
        pid_file = self.launch.get("pid_file")
        if pid_file:
            try:
                os.unlink(pid_file)
            except FileNotFoundError:
                pass
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        env = self.launch.get("env") or {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        try:
            # posix_spawn: no subprocess import; own session so signals meant
            # for the monitor never reach the container by accident.
            self._child = os.posix_spawnp(
                argv[0], argv, env,
                file_actions=[(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
                              (os.POSIX_SPAWN_DUP2, err_w, 2)],
                setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                           signal.SIGCHLD),
                setsigmask=(),
            )
        finally:
            os.close(null)
            os.close(out_w)
            os.close(err_w)
        self._fds = {}
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            self._fds[fd] = LineFramer(stream, self._sink)
        self._started_mono = time.monotonic()
        start = process_starttime(self._child)
        self._save(status="running", pid=None if pid_file else self._child, runtime_pid=self._child,
                   pid_starttime=None if pid_file else start, runtime_starttime=start,
                   started_at=rfc3339_now(), error=None)

    def _drain(self, fd, until_eof=False):
        framer = self._fds.get(fd)
        while framer is not None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not data:
                framer.flush()
                os.close(fd)
                del self._fds[fd]
                return
            framer.feed(data)
            if not until_eof:
                return

    def _close_pipes(self):
        for fd in list(self._fds):
            self._drain(fd, until_eof=True)
            if fd in self._fds:  # something in the container still holds the pipe
                self._fds[fd].flush()
                os.close(fd)
                del self._fds[fd]

    def _watch(self):
        """Wait for the current child to exit, handling signals; returns its exit code."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        for fd in self._fds:
            poller.register(fd, select.POLLIN)
        pid_file = self.launch.get("pid_file")
        pid_deadline = time.monotonic() + PID_FILE_WAIT
        stop_phase, stop_deadline = 0, None
        while True:
            now = time.monotonic()
            timeout = 5.0
            if self.state["pid"] is None and pid_file and now < pid_deadline:
                timeout = 0.05
            if stop_deadline is not None:
                timeout = min(timeout, max(0.0, stop_deadline - now))
            for fd, events in poller.poll(timeout * 1000):
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 512)
                    except BlockingIOError:
                        pass
                elif fd in self._fds:
                    self._drain(fd)
                    if fd not in self._fds:
                        poller.unregister(fd)
            if self.state["pid"] is None and pid_file:
                self._read_pid_file(pid_file)
            if self._take(signal.SIGHUP):
                self._reload()
            if (self._take(signal.SIGTERM) | self._take(signal.SIGINT)) and not self.state["stopped_by_user"]:
                self._reload()  # the supervisor writes stop_signal/stop_timeout before it signals
                self._save(stopped_by_user=True)
                self._runtime_call("kill", self.launch.get("runtime_id"), self.policy["stop_signal"])
                stop_phase, stop_deadline = 1, time.monotonic() + self.policy["stop_timeout"]
            self._take(signal.SIGCHLD)
            try:
                done, status = os.waitpid(self._child, os.WNOHANG)
            except ChildProcessError:  # pragma: no cover - reaped elsewhere
                done, status = self._child, 255 << 8
            if done:
                self._close_pipes()
                self._child = None
                return exit_code_of(status)
            if stop_deadline is not None and time.monotonic() >= stop_deadline:
                if stop_phase == 1:
                    self._note("container did not stop within %ss after %s; sending SIGKILL"
                               % (self.policy["stop_timeout"], self.policy["stop_signal"]))
                    self._runtime_call("kill", self.launch.get("runtime_id"), "SIGKILL", all=True)
                    stop_phase, stop_deadline = 2, time.monotonic() + KILL_GRACE
                elif stop_phase == 2:
                    self._note("runtime still running after SIGKILL to the container; killing the runtime")
                    try:
                        os.killpg(self._child, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    stop_phase, stop_deadline = 3, None

    def _read_pid_file(self, path):
        try:
            with open(path, "rb") as f:
                text = f.read().strip()
        except FileNotFoundError:
            return
        if text.isdigit():
            self._save(pid=int(text), pid_starttime=process_starttime(int(text)))

    def _wait_backoff(self, delay):
        """Sleep before a restart; False if a stop (or a policy change) cancelled it."""
        deadline = time.monotonic() + delay
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            if poller.poll(left * 1000):
                try:
                    os.read(self._wake_r, 512)
                except BlockingIOError:
                    pass
            if self._take(signal.SIGTERM) | self._take(signal.SIGINT):
                self._save(stopped_by_user=True)
                return False
            if self._take(signal.SIGHUP):
                self._reload()
                if not should_restart(self.policy, self.state["exit_code"], self.state["restart_count"], False):
                    return False
            self._take(signal.SIGCHLD)

    def run(self):
        self._install_signals()
        with open(os.path.join(self.dir, MONITOR_PID_FILE) + ".tmp", "w") as f:
            f.write("%d\n" % self.pid)
        os.replace(os.path.join(self.dir, MONITOR_PID_FILE) + ".tmp", os.path.join(self.dir, MONITOR_PID_FILE))
        delay = 0.0
        while True:
            try:
                self._spawn()
            except OSError as exc:
                self._note("cannot start %s: %s" % (self.launch["argv"][0], exc))
                self._save(status="exited", exit_code=127, finished_at=rfc3339_now(), pid=None, runtime_pid=None,
                           error="cannot start %s: %s" % (self.launch["argv"][0], exc))
                return 127
            code = self._watch()
            ran_for = time.monotonic() - self._started_mono
            self._save(exit_code=code, finished_at=rfc3339_now(), pid=None, runtime_pid=None)
            if self.state["stopped_by_user"] or not should_restart(
                    self.policy, code, self.state["restart_count"], False):
                break
            delay = next_delay(delay, ran_for)
            self._save(status="restarting")
            if not self._wait_backoff(delay):
                break
            self.state["restart_count"] += 1
            if self.launch.get("runtime"):
                # runc/crun normally delete on exit; a killed runtime leaves state behind.
                self._runtime_call("delete", self.launch.get("runtime_id"), force=True)
        if self.launch.get("runtime"):
            self._runtime_call("delete", self.launch.get("runtime_id"), force=True)
        self._save(status="exited")
        self.log.close()
        return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: _monitor.py <container dir>\n")
        return 2
    return Monitor(os.path.abspath(argv[0])).run()


if __name__ == "__main__":
    raise SystemExit(main())
