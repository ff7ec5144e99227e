"""systemd unit text and the restart-policy mapping (the systemd path itself runs on a systemd host)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.intermodal.containers.plugins.module_utils._container_paths import ContainerPaths
from ansible_collections.intermodal.containers.plugins.module_utils._monitor import normalize_policy
from ansible_collections.intermodal.containers.plugins.module_utils._systemd import (
    SupervisorError, SystemdSupervisor, delete_argv, render_unit, restart_settings, starts_at_boot, systemd_quote, _utc,
)

RUN = ["/usr/sbin/runc", "--root", "/run/intermodal/runc", "run", "--bundle",
       "/var/lib/intermodal/containers/web/bundle", "--pid-file",
       "/var/lib/intermodal/containers/web/container.pid", "intermodal-web"]


def unit_for(policy, version=252):
    paths = ContainerPaths("/var/lib/intermodal", "web")
    return render_unit(paths, RUN, normalize_policy(policy), version)


def section(text, name):
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("["):
            inside = line == "[%s]" % name
        elif inside and line.strip():
            lines.append(line)
    return lines


def test_unit_text_for_always():
    text = unit_for({"restart_policy": "always", "stop_signal": "SIGQUIT", "stop_timeout": 25})
    service = section(text, "Service")
    assert "ExecStart=" + " ".join(RUN) in service
    assert "ExecStopPost=-/usr/sbin/runc --root /run/intermodal/runc delete --force intermodal-web" in service
    assert "ExecStartPre=-/usr/sbin/runc --root /run/intermodal/runc delete --force intermodal-web" in service
    assert "KillSignal=SIGQUIT" in service
    assert "TimeoutStopSec=25" in service
    assert "Restart=always" in service
    assert "RestartSec=1s" in service
    assert "StandardOutput=journal" in service and "StandardError=journal" in service
    assert "KillMode=mixed" in service
    assert section(text, "Install") == ["WantedBy=multi-user.target"]
    assert ["StartLimitIntervalSec=60", "StartLimitBurst=10"] == [
        line for line in section(text, "Unit") if line.startswith("StartLimit")]
    assert "Description=intermodal.containers container web" in section(text, "Unit")


@pytest.mark.parametrize("policy,unit_lines,restart", [
    ({"restart_policy": "no"}, [], "Restart=no"),
    ({"restart_policy": "on-failure"}, ["StartLimitIntervalSec=60", "StartLimitBurst=10"], "Restart=on-failure"),
    ({"restart_policy": "on-failure:3"}, ["StartLimitIntervalSec=infinity", "StartLimitBurst=4"], "Restart=on-failure"),
    ({"restart_policy": "on-failure", "max_retries": 1}, ["StartLimitIntervalSec=infinity", "StartLimitBurst=2"],
     "Restart=on-failure"),
    ({"restart_policy": "always"}, ["StartLimitIntervalSec=60", "StartLimitBurst=10"], "Restart=always"),
    ({"restart_policy": "unless-stopped"}, ["StartLimitIntervalSec=60", "StartLimitBurst=10"], "Restart=always"),
])
def test_restart_policy_mapping(policy, unit_lines, restart):
    unit, service = restart_settings(normalize_policy(policy))
    assert unit == unit_lines
    assert service[0] == restart
    text = unit_for(policy)
    for line in unit_lines:
        assert line in section(text, "Unit")
    assert restart in section(text, "Service")


def test_backoff_settings_only_where_systemd_knows_them():
    old = section(unit_for({"restart_policy": "always"}, version=252), "Service")
    new = section(unit_for({"restart_policy": "always"}, version=254), "Service")
    assert not any(line.startswith("RestartSteps") for line in old)
    assert "RestartSteps=5" in new and "RestartMaxDelaySec=10s" in new
    none = section(unit_for({"restart_policy": "no"}, version=255), "Service")
    assert not any(line.startswith("RestartSteps") for line in none)


@pytest.mark.parametrize("policy,boot", [
    ("no", False), ("on-failure:2", False), ("always", True), ("unless-stopped", True)])
def test_start_at_boot_follows_docker(policy, boot):
    assert starts_at_boot(normalize_policy({"restart_policy": policy})) is boot


def test_fractional_stop_timeout():
    assert "TimeoutStopSec=2.5s" in unit_for({"stop_timeout": 2.5})


def test_quoting_disables_specifiers_and_variables():
    assert systemd_quote("/usr/bin/runc") == "/usr/bin/runc"
    assert systemd_quote("50%") == "50%%"
    assert systemd_quote("$HOME") == '"$$HOME"'
    assert systemd_quote("a b") == '"a b"'
    assert systemd_quote('say "hi"\\') == '"say \\"hi\\"\\\\"'
    assert systemd_quote("") == '""'


def test_paths_with_spaces_are_quoted_in_the_unit():
    paths = ContainerPaths("/srv/my store", "web")
    run = ["/usr/sbin/runc", "run", "--bundle", paths.bundle, paths.runtime_id]
    text = render_unit(paths, run, normalize_policy({}))
    assert 'ExecStart=/usr/sbin/runc run --bundle "/srv/my store/containers/web/bundle" intermodal-web' in text


def test_delete_argv_keeps_global_flags():
    assert delete_argv(RUN, "intermodal-web") == [
        "/usr/sbin/runc", "--root", "/run/intermodal/runc", "delete", "--force", "intermodal-web"]
    with pytest.raises(SupervisorError):
        delete_argv(["/bin/sleep", "10"], "x")


def test_systemctl_timestamps_become_rfc3339():
    assert _utc("Sun 2026-11-29 07:00:01 UTC") == "2026-11-29T07:00:01Z"
    assert _utc("") is None
    assert _utc("n/a") is None


# ---- SystemdSupervisor against a fake systemctl --------------------------------
# This machine has no systemd as PID 1, so a real systemctl cannot answer here;
# these tests fake it (a script that records its calls and prints canned
# `show` output) to check which calls the supervisor makes. The real unit is
# tested on a systemd-nspawn host.

FAKE = """#!/bin/sh
echo "$*" >> "{calls}"
case "$1" in
  --version) echo "systemd 252 (252.30-1~deb12u2)";;
  show) cat "{show}" 2>/dev/null;;
esac
exit 0
"""


class FakeRuntime:
    def run_argv(self, bundle, runtime_id, pid_file=None):
        return ["/usr/sbin/runc", "--root", "/run/x", "run", "--bundle", bundle, "--pid-file", pid_file, runtime_id]


@pytest.fixture
def fake_systemd(tmp_path):
    calls, show = tmp_path / "calls", tmp_path / "show"
    script = tmp_path / "systemctl"
    script.write_text(FAKE.format(calls=calls, show=show))
    script.chmod(0o755)
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    sup = SystemdSupervisor(str(tmp_path / "store"), unit_dir=str(unit_dir), systemctl=str(script))
    paths = ContainerPaths(str(tmp_path / "store"), "web")

    def take_calls():
        text = calls.read_text() if calls.exists() else ""
        if calls.exists():
            calls.unlink()
        return [line for line in text.splitlines() if line != "--version" and not line.startswith("show")]

    return sup, paths, take_calls, show, unit_dir


def test_systemd_start_writes_unit_and_reloads_only_on_change(fake_systemd):
    sup, paths, take_calls, show, unit_dir = fake_systemd
    sup.start(paths, FakeRuntime(), {"restart_policy": "always"})
    unit = (unit_dir / paths.unit_name).read_text()
    assert "Restart=always" in unit and "--pid-file %s" % paths.pid_file in unit
    assert take_calls() == ["daemon-reload", "enable " + paths.unit_name, "reset-failed " + paths.unit_name,
                            "start " + paths.unit_name]
    sup.start(paths, FakeRuntime(), {"restart_policy": "always"})
    assert "daemon-reload" not in take_calls()


def test_systemd_policy_change_is_live(fake_systemd):
    sup, paths, take_calls, show, unit_dir = fake_systemd
    sup.start(paths, FakeRuntime(), {"restart_policy": "always"})
    take_calls()
    assert sup.update_policy(paths, {"restart_policy": "on-failure:2", "stop_timeout": 3}) is True
    unit = (unit_dir / paths.unit_name).read_text()
    assert "Restart=on-failure" in unit and "StartLimitBurst=3" in unit and "TimeoutStopSec=3" in unit
    calls = take_calls()
    assert calls == ["daemon-reload", "disable " + paths.unit_name]   # no stop, start or restart
    assert "ExecStart=/usr/sbin/runc --root /run/x run" in unit        # the command is kept


def test_systemd_stop_of_unless_stopped_disables(fake_systemd):
    sup, paths, take_calls, show, unit_dir = fake_systemd
    sup.start(paths, FakeRuntime(), {"restart_policy": "unless-stopped"})
    take_calls()
    sup.stop(paths)
    assert take_calls() == ["stop " + paths.unit_name, "disable " + paths.unit_name]


def test_systemd_remove(fake_systemd):
    sup, paths, take_calls, show, unit_dir = fake_systemd
    sup.start(paths, FakeRuntime(), {})
    take_calls()
    sup.remove(paths)
    assert not (unit_dir / paths.unit_name).exists()
    assert take_calls() == ["stop " + paths.unit_name, "disable " + paths.unit_name, "daemon-reload",
                            "reset-failed " + paths.unit_name]


@pytest.mark.parametrize("props,expected", [
    ("LoadState=not-found\nActiveState=inactive\n", {"status": "created", "exit_code": None}),
    ("LoadState=loaded\nActiveState=inactive\nSubState=dead\nExecMainStartTimestamp=\n",
     {"status": "created", "exit_code": None}),
    ("LoadState=loaded\nActiveState=failed\nSubState=failed\nExecMainStartTimestamp=Sun 2026-11-29 07:00:01 UTC\n"
     "ExecMainExitTimestamp=Sun 2026-11-29 07:00:09 UTC\nExecMainCode=2\nExecMainStatus=9\nNRestarts=3\n",
     {"status": "exited", "exit_code": 137, "restart_count": 3, "started_at": "2026-11-29T07:00:01Z",
      "finished_at": "2026-11-29T07:00:09Z"}),
    ("LoadState=loaded\nActiveState=inactive\nSubState=dead\nExecMainStartTimestamp=Sun 2026-11-29 07:00:01 UTC\n"
     "ExecMainCode=1\nExecMainStatus=0\n", {"status": "exited", "exit_code": 0}),
    ("LoadState=loaded\nActiveState=activating\nSubState=auto-restart\nExecMainStartTimestamp=Sun 2026-11-29 07:00:01 UTC\n"
     "ExecMainCode=1\nExecMainStatus=1\nNRestarts=1\n", {"status": "restarting", "exit_code": 1, "restart_count": 1}),
])
def test_systemd_status_mapping(fake_systemd, props, expected):
    sup, paths, take_calls, show, unit_dir = fake_systemd
    show.write_text(props)
    st = sup.status(paths)
    assert st["supervisor"] == "systemd"
    for key, value in expected.items():
        assert st[key] == value, key


def test_systemd_status_running_reports_the_container_pid(fake_systemd):
    sup, paths, take_calls, show, unit_dir = fake_systemd
    os.makedirs(paths.dir)
    with open(paths.pid_file, "w") as f:
        f.write(str(os.getpid()))   # a live pid standing in for the container's init
    show.write_text("LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=1\n"
                    "ExecMainStartTimestamp=Sun 2026-11-29 07:00:01 UTC\n")
    st = sup.status(paths)
    assert (st["status"], st["pid"], st["exit_code"]) == ("running", os.getpid(), None)


def test_status_never_reports_the_runtime_main_pid(fake_systemd):
    """Running, but the runtime has not written the pid file yet: no pid
    rather than MainPID (which is crun/runc, not the container)."""
    sup, paths, take_calls, show, unit_dir = fake_systemd
    show.write_text("LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=%d\n"
                    "ExecMainStartTimestamp=Sun 2026-11-29 07:00:01 UTC\n" % os.getpid())
    st = sup.status(paths)
    assert (st["status"], st["pid"]) == ("running", None)


def test_remount_command_becomes_the_first_exec_start_pre(fake_systemd):
    """The overlay remount (run at boot, before any module run) precedes the
    runtime-state clean-up, survives a policy rewrite, and is the same mount
    `_rootfs.mount_overlay` makes."""
    from ansible_collections.intermodal.containers.plugins.module_utils._rootfs import (
        overlay_options, overlay_remount_argv,
    )
    sup, paths, take_calls, show, unit_dir = fake_systemd
    lower = os.path.join(sup.store_root, "l", "ABC")
    mount = overlay_remount_argv([lower], paths.upper, paths.work, paths.rootfs)
    data, base = overlay_options([lower], paths.upper, paths.work)
    assert base is None
    assert mount[:2] == ["/bin/sh", "-c"]
    assert mount[2] == "/bin/mountpoint -q %s || { /bin/mount -t overlay overlay -o %s %s; }" % (
        paths.rootfs, data, paths.rootfs)
    assert data.startswith("lowerdir=%s,upperdir=%s,workdir=%s" % (lower, paths.upper, paths.work))
    sup.start(paths, FakeRuntime(), {"restart_policy": "always"}, mount_argv=mount)
    pre = [line for line in section((unit_dir / paths.unit_name).read_text(), "Service")
           if line.startswith("ExecStartPre=")]
    assert pre[0] == 'ExecStartPre=/bin/sh -c "%s"' % mount[2]
    assert pre[1].startswith("ExecStartPre=-/usr/sbin/runc")
    sup.update_policy(paths, {"restart_policy": "unless-stopped"})
    assert pre[0] in (unit_dir / paths.unit_name).read_text()


def test_remount_of_options_over_a_page_runs_relative_to_their_common_parent():
    """Options too long for mount(2)'s page become relative paths, and the
    remount command cds to the directory they are relative to, as
    mount_overlay does. (Paths only: nothing is mounted.)"""
    from ansible_collections.intermodal.containers.plugins.module_utils._rootfs import (
        overlay_options, overlay_remount_argv,
    )
    store = "/var/lib/intermodal"
    lowers = ["%s/l/%s" % (store, "L%03d" % i + "x" * 60) for i in range(50)]
    paths = ContainerPaths(store, "web")
    data, base = overlay_options(lowers, paths.upper, paths.work)
    assert base == store
    assert data.startswith("lowerdir=l/L000") and len(data) < os.sysconf("SC_PAGESIZE")
    script = overlay_remount_argv(lowers, paths.upper, paths.work, paths.rootfs)[2]
    assert script == "/bin/mountpoint -q %s || { cd %s && /bin/mount -t overlay overlay -o %s %s; }" % (
        paths.rootfs, store, data, paths.rootfs)
