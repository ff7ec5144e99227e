"""The monitor backend with real processes: a stand-in command instead of a container runtime.

Everything here runs through the same code path as a real container
(Supervisor.start: libexec copy, double fork, `python3 -S -c` monitor, policy
file, monitor.json); only the runtime's `run` command is replaced by
`/bin/sh -c ...` (and kill goes to its process group instead of `runc kill`).
Real runc containers: test_supervise_runc.py.

Every process started is killed afterwards (process groups; zombies checked
with State: in /proc/PID/status, because this machine's PID 1 reaps late).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.image_helpers import COLLECTIONS_DIR  # noqa: F401 (puts the collection on sys.path)

from ansible_collections.intermodal.containers.plugins.module_utils._container_paths import ContainerPaths
from ansible_collections.intermodal.containers.plugins.module_utils._logs import read_lines
from ansible_collections.intermodal.containers.plugins.module_utils._monitor import (
    process_alive, process_state, read_json,
)
from ansible_collections.intermodal.containers.plugins.module_utils._supervise import MonitorSupervisor

RSS_BUDGET_KIB = 12 * 1024
LOOP = "echo run $$; exec sleep 1000"


def wait_for(predicate, what, timeout=30.0):
    """Poll until predicate() is truthy; fail naming `what` (generous timeout, not a timing check)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for %s" % what)
        time.sleep(0.02)


def vmrss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def kill_group_and_wait(pid):
    """SIGKILL pid's process group (it leads its own session) and wait until nothing is left but zombies."""
    if not pid:
        return
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 10
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


class Harness:
    """A store, a MonitorSupervisor, and clean-up of everything started."""

    def __init__(self, store, runtime=None):
        self.store = store
        self.sup = MonitorSupervisor(store)
        self.runtime = runtime
        self.started = []

    def paths(self, name):
        p = ContainerPaths(self.store, name)
        self.started.append(p)
        return p

    def start(self, name, policy=None, argv=None):
        p = self.paths(name)
        st = self.sup.start(p, self.runtime, policy or {}, argv=argv)
        return p, st

    def status(self, p):
        return self.sup.status(p)

    def record(self, p):
        return read_json(os.path.join(p.dir, "monitor.json")) or {}

    def log_texts(self, p, stream=None):
        return [r[3] for r in read_lines(p.log, 10) if stream is None or r[1] == stream]

    def cleanup(self):
        for p in self.started:
            rec = self.record(p)
            try:
                self.sup.stop(p, self.runtime, stop_timeout=1)
            except Exception:  # noqa: BLE001 - clean-up goes on regardless
                pass
            rec2 = self.record(p)
            for pid in sorted({rec.get("monitor_pid") or 0, rec.get("runtime_pid") or 0,
                               rec2.get("monitor_pid") or 0, rec2.get("runtime_pid") or 0}):
                kill_group_and_wait(pid)
            if self.runtime is not None:
                try:
                    self.runtime.delete(p.runtime_id, force=True)
                except Exception:  # noqa: BLE001
                    pass


@pytest.fixture
def harness(tmp_path):
    h = Harness(str(tmp_path / "store"))
    try:
        yield h
    finally:
        h.cleanup()


def restarted(h, p, old_pids):
    """The status once the container runs again under a pid not in old_pids, else None."""
    st = h.status(p)
    if st["status"] == "running" and st["pid"] is not None and st["pid"] not in old_pids:
        return st
    return None


def sh(script):
    return ["/bin/sh", "-c", script]


def monitor_gone(h, p):
    pid = h.record(p).get("monitor_pid")
    return pid and process_state(pid) in (None, "Z")


# ---- restart policy ---------------------------------------------------------

def test_policy_no_records_exit_code_and_monitor_exits(harness):
    p, st = harness.start("no", {"restart_policy": "no"}, sh("echo hello; echo oops >&2; exit 7"))
    final = wait_for(lambda: harness.status(p)["status"] == "exited" and harness.status(p), "exit")
    assert final["exit_code"] == 7
    assert final["restart_count"] == 0
    assert final["finished_at"] >= final["started_at"]
    wait_for(lambda: monitor_gone(harness, p), "monitor to exit")
    assert harness.log_texts(p, "stdout") == ["hello"]
    assert harness.log_texts(p, "stderr") == ["oops"]


def test_on_failure_with_max_restarts_then_gives_up(harness):
    p, dummy = harness.start("onfail", {"restart_policy": "on-failure:2"}, sh("echo attempt; exit 3"))
    wait_for(lambda: monitor_gone(harness, p), "monitor to give up")
    st = harness.status(p)
    assert (st["status"], st["exit_code"], st["restart_count"]) == ("exited", 3, 2)
    assert harness.log_texts(p) == ["attempt"] * 3


def test_on_failure_does_not_restart_a_clean_exit(harness):
    p, dummy = harness.start("clean", {"restart_policy": "on-failure"}, sh("echo once; exit 0"))
    wait_for(lambda: monitor_gone(harness, p), "monitor to exit")
    st = harness.status(p)
    assert (st["status"], st["exit_code"], st["restart_count"]) == ("exited", 0, 0)


@pytest.mark.parametrize("policy", ["always", "unless-stopped", "on-failure"])
def test_killed_container_comes_back(harness, policy):
    p, st = harness.start("kill-" + policy, {"restart_policy": policy}, sh(LOOP))
    first = st["pid"]
    assert st["status"] == "running" and process_alive(first)
    os.kill(first, signal.SIGKILL)
    st = wait_for(lambda: restarted(harness, p, [first]), "restart after kill")
    assert st["restart_count"] == 1
    assert st["exit_code"] == 137   # the kill is recorded
    assert process_alive(st["pid"])
    wait_for(lambda: len(harness.log_texts(p)) == 2, "the second run's output")


def test_policy_no_stays_exited_after_kill(harness):
    p, st = harness.start("kill-no", {"restart_policy": "no"}, sh(LOOP))
    os.kill(st["pid"], signal.SIGKILL)
    wait_for(lambda: monitor_gone(harness, p), "monitor to exit")
    st = harness.status(p)
    assert (st["status"], st["exit_code"], st["restart_count"], st["pid"]) == ("exited", 137, 0, None)
    assert st["error"] is None


# ---- stop -------------------------------------------------------------------

def test_stop_sends_stop_signal_then_sigkill_after_timeout(harness):
    """The command traps TERM and carries on: only the SIGKILL after stop_timeout ends it."""
    script = "trap 'echo got TERM' TERM; echo ready; while :; do sleep 0.05; done"
    p, st = harness.start("stubborn", {"restart_policy": "always", "stop_timeout": 1}, sh(script))
    wait_for(lambda: "ready" in harness.log_texts(p), "ready")
    pid = st["pid"]
    final = harness.sup.stop(p)
    assert final["status"] == "exited"
    assert final["exit_code"] == 137
    assert final["restart_count"] == 0          # a stop never restarts, even with always
    assert "got TERM" in harness.log_texts(p)   # the stop signal came first
    assert process_state(pid) in (None, "Z")
    assert monitor_gone(harness, p)
    with open(os.path.join(p.logs_dir, "monitor.log")) as f:
        assert "sending SIGKILL" in f.read()


def test_stop_uses_the_given_stop_signal(harness):
    script = "trap 'echo got USR1; exit 0' USR1; echo ready; while :; do sleep 0.05; done"
    p, dummy = harness.start("usr1", {"restart_policy": "always", "stop_signal": "SIGTERM"}, sh(script))
    wait_for(lambda: "ready" in harness.log_texts(p), "ready")
    final = harness.sup.stop(p, None, stop_signal="SIGUSR1", stop_timeout=30)
    assert (final["status"], final["exit_code"]) == ("exited", 0)
    assert "got USR1" in harness.log_texts(p)


def test_stop_of_an_exited_container_is_harmless(harness):
    p, dummy = harness.start("done", {}, sh("exit 4"))
    wait_for(lambda: monitor_gone(harness, p), "monitor to exit")
    assert harness.sup.stop(p)["exit_code"] == 4


def test_start_twice_keeps_one_monitor(harness):
    p, st = harness.start("twice", {"restart_policy": "always"}, sh(LOOP))
    again = harness.sup.start(p, None, {"restart_policy": "always"}, argv=sh(LOOP))
    assert (again["monitor_pid"], again["pid"]) == (st["monitor_pid"], st["pid"])


# ---- logs -------------------------------------------------------------------

def test_logs_rotate_by_size(harness):
    script = "i=1; while [ $i -le 3000 ]; do echo line $i; i=$((i+1)); done; echo end >&2"
    p, dummy = harness.start("chatty", {"log_max_size": 8192, "log_max_files": 3}, sh(script))
    wait_for(lambda: monitor_gone(harness, p), "monitor to exit")
    names = sorted(os.listdir(p.logs_dir))
    assert names == ["container.log", "container.log.1", "container.log.2", "monitor.log"]
    for name in names[:3]:
        assert os.path.getsize(os.path.join(p.logs_dir, name)) <= 8192
    texts = harness.log_texts(p)
    assert texts[-1] == "end" or texts[-2:] == ["line 3000", "end"] or "line 3000" in texts
    kept = [int(t.split()[1]) for t in texts if t.startswith("line ")]
    assert kept == list(range(kept[0], 3001))   # newest kept, in order, nothing lost in between
    assert kept[0] > 1                           # oldest rotated away


# ---- outliving the module, live policy, dead monitors ------------------------------

def test_monitor_survives_its_parent_exiting(harness):
    """A separate python process (like the Ansible module) starts the monitor and exits."""
    p = harness.paths("orphan")
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from ansible_collections.intermodal.containers.plugins.module_utils._container_paths import ContainerPaths\n"
        "from ansible_collections.intermodal.containers.plugins.module_utils._supervise import MonitorSupervisor\n"
        "st = MonitorSupervisor(%r).start(ContainerPaths(%r, 'orphan'), None, {'restart_policy': 'always'},"
        " argv=['/bin/sh', '-c', %r])\n"
        "print(st['monitor_pid'], st['pid'])\n" % (COLLECTIONS_DIR, harness.store, harness.store, LOOP))
    parent = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            timeout=60, check=False)
    assert parent.returncode == 0, parent.stderr.decode()
    monitor, container = (int(x) for x in parent.stdout.split())
    assert process_alive(monitor) and process_alive(container)
    with open("/proc/%d/stat" % monitor) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    assert int(fields[2]) == monitor          # its own process group
    assert int(fields[3]) != os.getsid(0)     # in a new session (double fork: not its leader, no tty)
    assert fields[4] == "0"                   # no controlling terminal
    assert os.readlink("/proc/%d/fd/0" % monitor) == "/dev/null"
    st = harness.status(p)
    assert (st["status"], st["pid"], st["monitor_pid"]) == ("running", container, monitor)


def test_live_policy_change_without_restart(harness):
    p, st = harness.start("live", {"restart_policy": "no"}, sh(LOOP))
    pid = st["pid"]
    assert harness.sup.update_policy(p, {"restart_policy": "always"}) is True
    now = harness.status(p)
    assert (now["status"], now["pid"], now["restart_count"]) == ("running", pid, 0)   # same process
    os.kill(pid, signal.SIGKILL)   # the new policy is in force: it comes back
    st = wait_for(lambda: restarted(harness, p, [pid]), "restart")
    assert st["restart_count"] == 1
    # and back to "no": the next kill leaves it exited
    assert harness.sup.update_policy(p, {"restart_policy": "no"}) is True
    os.kill(st["pid"], signal.SIGKILL)
    wait_for(lambda: monitor_gone(harness, p), "monitor to exit")
    assert harness.status(p)["status"] == "exited"


def test_live_log_limit_change(harness, tmp_path):
    flag = str(tmp_path / "go")
    script = ("echo ready; while [ ! -e %s ]; do sleep 0.05; done; "
              "i=1; while [ $i -le 500 ]; do echo line $i; i=$((i+1)); done; exec sleep 1000" % flag)
    p, st = harness.start("loglimit", {"log_max_size": 10 ** 6, "log_max_files": 2}, sh(script))
    assert harness.sup.update_policy(p, {"log_max_size": 1024, "log_max_files": 2}) is True
    open(flag, "w").close()   # output starts only after the monitor confirmed the new limits
    wait_for(lambda: "line 500" in harness.log_texts(p), "output")
    assert harness.status(p)["pid"] == st["pid"]   # no restart
    wait_for(lambda: os.path.exists(p.log + ".1"), "rotation under the new limit")
    assert os.path.getsize(p.log) <= 1024


def test_status_reports_a_dead_monitor(harness):
    p, st = harness.start("orphaned", {"restart_policy": "always"}, sh(LOOP))
    kill_group_and_wait(st["monitor_pid"])   # the container runs in its own session: it survives
    now = harness.status(p)
    assert now["status"] == "running" and now["monitor_pid"] is None
    assert "runs unsupervised" in now["error"]
    final = harness.sup.stop(p)               # stop still ends it, without a monitor
    assert final["status"] == "exited"
    assert "monitor was not there" in final["error"]
    assert process_state(st["pid"]) in (None, "Z")


def test_status_when_monitor_and_container_died(harness):
    p, st = harness.start("alldead", {"restart_policy": "always"}, sh(LOOP))
    kill_group_and_wait(st["monitor_pid"])
    kill_group_and_wait(st["pid"])
    now = harness.status(p)
    assert (now["status"], now["exit_code"], now["pid"]) == ("exited", None, None)
    assert "died" in now["error"]


def test_status_of_a_never_started_container(harness):
    p = harness.paths("never")
    assert harness.status(p)["status"] == "created"


def test_remove_deletes_supervision_files(harness):
    p, dummy = harness.start("gone", {"restart_policy": "always"}, sh(LOOP))
    harness.sup.remove(p)
    left = set(os.listdir(p.dir))
    assert not left & {"policy.json", "supervise.json", "monitor.json", "monitor.pid"}
    assert monitor_gone(harness, p) or harness.record(p) == {}


def test_code_is_installed_by_content_hash(harness):
    p, st = harness.start("hash", {}, sh(LOOP))
    roots = os.listdir(os.path.join(harness.store, "libexec"))
    assert len(roots) == 1 and len(roots[0]) == 16
    with open("/proc/%d/environ" % st["monitor_pid"], "rb") as f:
        env = f.read()
    assert b"PYTHONPATH=" + os.path.join(harness.store, "libexec", roots[0]).encode() in env


# ---- memory budget ----------------------------------------------------------

def test_monitor_rss_within_budget(harness):
    """Issue 3: <= 12 MiB RSS per monitor (VmRSS, measured after the containers have logged)."""
    started = [harness.start("rss%d" % i, {"restart_policy": "always"},
                             sh("i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.05; done"))[1]
               for i in range(3)]
    wait_for(lambda: all(len(harness.log_texts(harness.started[i])) >= 5 for i in range(3)), "logging")
    for st in started:
        rss = vmrss_kib(st["monitor_pid"])
        assert rss <= RSS_BUDGET_KIB, "monitor %d uses %d KiB" % (st["monitor_pid"], rss)


def test_install_works_from_an_ansiballz_style_zip(harness, tmp_path):
    """Like AnsiballZ: module_utils imported from a zip that is deleted after the module exits."""
    import zipfile
    from ansible_collections.intermodal.containers.plugins.module_utils import _logs, _monitor
    mu_dir = os.path.dirname(os.path.abspath(_monitor.__file__))
    zpath = str(tmp_path / "ansiballz_payload.zip")
    prefix = "ansible_collections/intermodal/containers/plugins/module_utils/"
    with zipfile.ZipFile(zpath, "w") as z:
        for pkg in ("ansible_collections/", "ansible_collections/intermodal/", "ansible_collections/intermodal/containers/",
                    "ansible_collections/intermodal/containers/plugins/", prefix):
            z.writestr(pkg + "__init__.py", "")
        for name in os.listdir(mu_dir):
            if name.endswith(".py"):
                z.write(os.path.join(mu_dir, name), prefix + name)
    p = harness.paths("zipped")
    code = (
        "from ansible_collections.intermodal.containers.plugins.module_utils import _supervise\n"
        "from ansible_collections.intermodal.containers.plugins.module_utils._container_paths import ContainerPaths\n"
        "assert type(_supervise.__loader__).__name__ == 'zipimporter', _supervise.__loader__\n"
        "st = _supervise.MonitorSupervisor(%r).start(ContainerPaths(%r, 'zipped'), None, {'restart_policy': 'always'},"
        " argv=['/bin/sh', '-c', %r])\n"
        "print(st['monitor_pid'])\n" % (harness.store, harness.store, LOOP))
    run = subprocess.run([sys.executable, "-S", "-c", code], env={"PYTHONPATH": zpath, "PATH": os.environ["PATH"]},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, check=False)
    assert run.returncode == 0, run.stderr.decode()
    os.unlink(zpath)   # AnsiballZ removes its payload
    monitor = int(run.stdout)
    assert process_alive(monitor)
    (root,) = os.listdir(os.path.join(harness.store, "libexec"))
    installed = os.path.join(harness.store, "libexec", root, *prefix.strip("/").split("/"))
    for mod in (_monitor, _logs):
        name = os.path.basename(mod.__file__)
        with open(os.path.join(installed, name)) as a, open(os.path.join(mu_dir, name)) as b:
            assert a.read() == b.read()
    assert not os.path.exists(os.path.join(installed, "__init__.py"))   # namespace packages
    pid = harness.status(p)["pid"]
    os.kill(pid, signal.SIGKILL)   # still supervised with the zip gone
    wait_for(lambda: restarted(harness, p, [pid]), "restart")


def test_for_host_picks_the_monitor_without_systemd(harness):
    from ansible_collections.intermodal.containers.plugins.module_utils._supervise import Supervisor
    with open("/proc/1/comm") as f:
        if f.read().strip() == "systemd":
            pytest.skip("this host runs systemd as PID 1")
    sup = Supervisor.for_host(harness.store)
    assert sup.kind == "monitor"


def test_status_does_not_mistake_a_reused_pid_for_the_container(harness):
    """After a reboot the recorded pid may belong to another process: its start time tells."""
    from ansible_collections.intermodal.containers.plugins.module_utils._monitor import write_json_atomic
    p, st = harness.start("reused", {"restart_policy": "always"}, sh(LOOP))
    kill_group_and_wait(st["monitor_pid"])
    rec = harness.record(p)
    assert rec["pid_starttime"] is not None
    write_json_atomic(os.path.join(p.dir, "monitor.json"), dict(rec, pid_starttime=rec["pid_starttime"] - 1))
    now = harness.status(p)
    assert (now["status"], now["pid"]) == ("exited", None)
    assert "died" in now["error"]
