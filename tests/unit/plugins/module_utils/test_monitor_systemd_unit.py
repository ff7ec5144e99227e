"""systemd unit text and the restart-policy mapping (the systemd path itself runs on a systemd host)."""

from __future__ import annotations

import pytest

from ansible_collections.intermodal.containers.plugins.module_utils._container_paths import ContainerPaths
from ansible_collections.intermodal.containers.plugins.module_utils._monitor import normalize_policy
from ansible_collections.intermodal.containers.plugins.module_utils._systemd import (
    SupervisorError, delete_argv, render_unit, restart_settings, starts_at_boot, systemd_quote, _utc,
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
    assert "RestartSec=100ms" in service
    assert "StandardOutput=journal" in service and "StandardError=journal" in service
    assert "KillMode=mixed" in service
    assert section(text, "Install") == ["WantedBy=multi-user.target"]
    assert "StartLimitIntervalSec=0" in section(text, "Unit")
    assert "Description=intermodal.containers container web" in section(text, "Unit")


@pytest.mark.parametrize("policy,unit_lines,restart", [
    ({"restart_policy": "no"}, [], "Restart=no"),
    ({"restart_policy": "on-failure"}, ["StartLimitIntervalSec=0"], "Restart=on-failure"),
    ({"restart_policy": "on-failure:3"}, ["StartLimitIntervalSec=infinity", "StartLimitBurst=4"], "Restart=on-failure"),
    ({"restart_policy": "on-failure", "max_retries": 1}, ["StartLimitIntervalSec=infinity", "StartLimitBurst=2"],
     "Restart=on-failure"),
    ({"restart_policy": "always"}, ["StartLimitIntervalSec=0"], "Restart=always"),
    ({"restart_policy": "unless-stopped"}, ["StartLimitIntervalSec=0"], "Restart=always"),
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
    assert "RestartSteps=7" in new and "RestartMaxDelaySec=10s" in new
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
