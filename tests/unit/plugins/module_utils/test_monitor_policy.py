"""Restart policy parsing, restart decisions, backoff, the monitor's JSON and monitor.json atomicity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.intermodal.containers.plugins.module_utils import _monitor
from ansible_collections.intermodal.containers.plugins.module_utils._monitor import (
    dumps, exit_code_of, loads, next_delay, normalize_policy, parse_restart_policy, process_alive,
    process_state, should_restart, signal_name, signal_number, write_json_atomic,
)
from ansible_collections.intermodal.containers.plugins.module_utils._supervise import InvalidPolicy, validate_policy


@pytest.mark.parametrize("text,max_retries,expected", [
    ("no", None, ("no", None)),
    (None, None, ("no", None)),
    ("always", None, ("always", None)),
    ("unless-stopped", None, ("unless-stopped", None)),
    ("on-failure", None, ("on-failure", None)),
    ("on-failure:3", None, ("on-failure", 3)),
    ("on-failure", 5, ("on-failure", 5)),
    ("on-failure:2", 7, ("on-failure", 2)),   # the inline maximum wins, like docker's --restart
    ("on-failure:0", None, ("on-failure", None)),  # 0 = unlimited, like docker
])
def test_parse_restart_policy(text, max_retries, expected):
    assert parse_restart_policy(text, max_retries) == expected


@pytest.mark.parametrize("text,max_retries,needle", [
    ("sometimes", None, "invalid restart policy"),
    ("always:3", None, "only on-failure"),
    ("on-failure:x", None, "must be a number"),
    ("on-failure:-1", None, "must be a number"),
    ("on-failure", -2, "max_retries"),
    ("on-failure", True, "max_retries"),
    ("always", 3, "on-failure only"),
])
def test_parse_restart_policy_errors(text, max_retries, needle):
    with pytest.raises(ValueError) as err:
        parse_restart_policy(text, max_retries)
    assert needle in str(err.value)


def test_normalize_policy_defaults_and_signal_names():
    pol = normalize_policy({"restart_policy": "on-failure:2", "stop_signal": "int", "stop_timeout": 3})
    assert pol == {"restart_policy": "on-failure", "max_retries": 2, "stop_signal": "SIGINT", "stop_timeout": 3,
                   "log_max_size": 10 * 1024 * 1024, "log_max_files": 5, "serial": 0}
    assert normalize_policy(None)["restart_policy"] == "no"
    assert normalize_policy({"stop_signal": 9})["stop_signal"] == "SIGKILL"


@pytest.mark.parametrize("bad,needle", [
    ({"stop_signal": "SIGNOPE"}, "unknown signal"),
    ({"stop_signal": 99}, "invalid signal number"),
    ({"stop_timeout": -1}, "stop_timeout"),
    ({"log_max_files": 0}, "log_max_files"),
    ({"log_max_size": "1m"}, "log_max_size"),
    ({"restrat_policy": "always"}, "unknown policy keys: restrat_policy"),
])
def test_normalize_policy_errors_name_the_key(bad, needle):
    with pytest.raises(ValueError) as err:
        normalize_policy(bad)
    assert needle in str(err.value)
    with pytest.raises(InvalidPolicy) as err2:
        validate_policy(bad)
    assert needle in str(err2.value)


def test_signal_number_and_name():
    assert signal_number("SIGTERM") == 15 == signal_number("term") == signal_number("15") == signal_number(15)
    assert signal_name("SIGUSR1") == "SIGUSR1"
    assert signal_name(17) == "SIGCHLD"
    with pytest.raises(ValueError):
        signal_number("SIG_DFL")
    with pytest.raises(ValueError):
        signal_number(True)


@pytest.mark.parametrize("policy,code,count,by_user,expected", [
    ("no", 1, 0, False, False),
    ("always", 0, 0, False, True),
    ("always", 1, 99, False, True),
    ("always", 137, 0, True, False),          # a stop from the supervisor never restarts
    ("unless-stopped", 0, 5, False, True),
    ("unless-stopped", 0, 5, True, False),
    ("on-failure", 0, 0, False, False),       # clean exit
    ("on-failure", 1, 0, False, True),
    ("on-failure", 137, 1000, False, True),   # unlimited
    ("on-failure:3", 1, 2, False, True),
    ("on-failure:3", 1, 3, False, False),     # 3 restarts done
])
def test_should_restart(policy, code, count, by_user, expected):
    assert should_restart(normalize_policy({"restart_policy": policy}), code, count, by_user) is expected


def test_backoff_doubles_from_100ms_to_10s():
    delays, d = [], 0.0
    for dummy in range(10):
        d = next_delay(d, ran_for=0.5)
        delays.append(d)
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]


def test_backoff_resets_after_ten_seconds_of_running():
    assert next_delay(10.0, ran_for=10.0) == 0.1
    assert next_delay(6.4, ran_for=9.99) == 10.0
    assert next_delay(0.4, ran_for=3600) == 0.1


def test_exit_code_of_wait_status():
    assert exit_code_of(3 << 8) == 3
    assert exit_code_of(9) == 137   # killed by SIGKILL
    assert exit_code_of(15) == 143


@pytest.mark.parametrize("value", [
    {"a": 1, "b": [1, 2.5, None, True, False], "c": {"d": "é\"\\\n\x01"}},
    [],
    {},
    "plain",
    -7,
    {"argv": ["/usr/sbin/runc", "--root", "/run/x y", "run", "ünïcode ☃"]},
])
def test_json_round_trip_matches_stdlib(value):
    text = dumps(value)
    assert json.loads(text) == value
    assert loads(text) == value
    assert loads(json.dumps(value, indent=2)) == value


@pytest.mark.parametrize("bad", ["", "{", '{"a": 1} x', "[1,]", "NaN", "{'a': 1}"])
def test_loads_rejects_bad_json(bad):
    with pytest.raises(ValueError):
        loads(bad)


def test_write_json_atomic_replaces_and_leaves_no_temp(tmp_path):
    path = str(tmp_path / "monitor.json")
    write_json_atomic(path, {"status": "running"})
    first_inode = os.stat(path).st_ino
    with open(path) as held:   # a reader holding the old file keeps the old content
        write_json_atomic(path, {"status": "exited", "exit_code": 3})
        assert json.load(held) == {"status": "running"}
    assert os.stat(path).st_ino != first_inode
    with open(path) as f:
        assert json.load(f) == {"status": "exited", "exit_code": 3}
    assert os.listdir(str(tmp_path)) == ["monitor.json"]


def test_concurrent_readers_never_see_a_torn_monitor_json(tmp_path):
    """A writer rewrites a large record 300 times while readers parse it non-stop."""
    path = str(tmp_path / "monitor.json")
    big = "x" * 20000  # larger than one write() page, so a non-atomic write could tear
    write_json_atomic(path, {"n": 0, "pad": big})
    errors, seen = [], set()
    done = threading.Event()

    def reader():
        while not done.is_set():
            try:
                with open(path, "rb") as f:
                    value = loads(f.read())
                assert value["pad"] == big
                seen.add(value["n"])
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(exc))

    threads = [threading.Thread(target=reader) for dummy in range(3)]
    for t in threads:
        t.start()
    try:
        for n in range(1, 301):
            write_json_atomic(path, {"n": n, "pad": big})
    finally:
        done.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(seen) > 1
    assert loads(open(path, "rb").read())["n"] == 300


def test_process_state_sees_zombies(tmp_path):
    """A child we have not reaped is a zombie: alive for kill(0), dead for us."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 30   # generous: the child only has to exit
        while process_state(pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.001)
        assert process_state(pid) == "Z"
        os.kill(pid, 0)   # still "exists" for kill
        assert process_alive(pid) is False
    finally:
        os.waitpid(pid, 0)
    assert process_state(pid) is None
    assert process_alive(os.getpid()) is True


def test_monitor_imports_stay_minimal():
    """In a fresh interpreter the monitor must not load json (re), subprocess, signal (enum) or ansible:
    each costs resident memory in every monitor (budget 12 MiB)."""
    code = ("import sys; from ansible_collections.intermodal.containers.plugins.module_utils import _monitor; "
            "print(' '.join(sorted(sys.modules)))")
    collections = os.path.abspath(_monitor.__file__)
    for dummy in _monitor.__name__.split("."):
        collections = os.path.dirname(collections)
    out = subprocess.run([sys.executable, "-S", "-c", code], env={"PYTHONPATH": collections},
                         stdout=subprocess.PIPE, check=True).stdout.decode().split()
    assert "ansible_collections.intermodal.containers.plugins.module_utils._monitor" in out
    for heavy in ("json", "re", "subprocess", "signal", "enum", "ansible", "threading", "datetime"):
        assert heavy not in out
