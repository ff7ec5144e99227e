"""The container options table: normalisation, validation messages, comparisons, routing."""

import pytest

from ansible_collections.intermodal.containers.plugins.module_utils._cgroups import InvalidOption
from ansible_collections.intermodal.containers.plugins.module_utils._options import (
    BY_NAME,
    compare,
    desired_from_params,
    split,
)


def desired(**params):
    return desired_from_params(params)


def test_defaults_and_routing():
    d = desired(memory="64m", cpus=1.5, restart_policy="always", env={"A": 1}, command="sh -c 'echo hi'")
    assert d["memory"] == 64 * 1024 * 1024 and d["cpus"] == 1.5
    assert d["command"] == ["sh", "-c", "echo hi"]
    assert d["env"] == {"A": "1"}
    process, limits, policy = split(d)
    assert limits == {"memory": 64 * 1024 * 1024, "cpus": 1.5}
    assert policy["restart_policy"] == "always"
    assert "memory" not in process and "env" in process


def test_on_failure_count_is_read_like_docker():
    d = desired(restart_policy="on-failure:3")
    assert d["restart_policy"] == "on-failure" and d["restart_retries"] == 3


@pytest.mark.parametrize("params, word", [
    (dict(memory="12XB"), "memory"),
    (dict(cpus=-1.0), "cpus"),
    (dict(capabilities=["CAP_NOPE"]), "capabilities"),
    (dict(restart_policy="sometimes"), "restart_policy"),
    (dict(restart_policy="always:3"), "restart_policy"),
    (dict(volumes=["no-target"]), "volumes"),
    (dict(mounts=[{"type": "bind", "target": "/x"}]), "mounts"),
    (dict(mounts=[{"type": "tmpfs", "target": "relative"}]), "mounts"),
    (dict(env={"A=B": "c"}), "env"),
    (dict(stop_timeout=-1), "stop_timeout"),
    (dict(restart_policy="always", restart_retries=3), "restart_retries"),
    (dict(memory_swap="1g"), "memory_swap"),
])
def test_bad_values_name_their_option(params, word):
    with pytest.raises(InvalidOption) as err:
        desired(**params)
    assert word in str(err.value)


def test_volumes_strings_become_mounts():
    d = desired(volumes=["data:/data", "/srv/conf:/etc/app:ro"])
    assert d["mounts"] == [
        {"type": "volume", "source": "data", "target": "/data", "read_only": False, "options": []},
        {"type": "bind", "source": "/srv/conf", "target": "/etc/app", "read_only": True, "options": []},
    ]


def test_compare_marks_live_and_recreate_differences():
    old = desired(memory="64m", env={"A": "1"})
    new = desired(memory="128m", env={"A": "2"})
    diffs = {name: live for name, _before, _after, live in compare(new, old)}
    assert diffs == {"memory": True, "env": False}
    assert compare(old, old) == []


def test_comparisons_ignore_and_allow_more_present():
    old = desired(env={"A": "1", "B": "2"}, labels={"x": "y"})
    new = desired(env={"A": "1"}, labels={"x": "z"})
    assert [d[0] for d in compare(new, old)] == ["env", "labels"]
    assert [d[0] for d in compare(new, old, {"env": "allow_more_present"})] == ["labels"]
    assert compare(new, old, {"*": "ignore"}) == []
    with pytest.raises(InvalidOption):
        compare(new, old, {"nope": "strict"})
    with pytest.raises(InvalidOption):
        compare(new, old, {"env": "loose"})


def test_capability_order_does_not_matter():
    assert compare(desired(capabilities=["NET_ADMIN", "SYS_TIME"]), desired(capabilities=["sys_time", "CAP_NET_ADMIN"])) == []


def test_every_option_has_a_target_and_doc():
    for option in BY_NAME.values():
        assert option.target in ("process", "limits", "policy") and option.doc
