"""The limits vocabulary: sizes, validation, conversions and OCI resources (no cgroupfs involved)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.intermodal.containers.plugins.module_utils._cgroups import (
    InvalidOption,
    normalize_limits,
    parse_size,
    to_oci_resources,
)
from ansible_collections.intermodal.containers.plugins.module_utils import _cgroups_limits as lim

MIB = 1 << 20


@pytest.mark.parametrize("text, expected", [
    ("512m", 512 * MIB), ("1g", 1 << 30), ("100MB", 100 * MIB), ("1KiB", 1024), ("4096", 4096),
    ("2 G", 2 << 30), ("1.5g", 3 << 29), ("10b", 10), (4096, 4096), (0, 0), ("1t", 1 << 40),
])
def test_parse_size_accepts_docker_spellings(text, expected):
    assert parse_size(text, "memory") == expected


@pytest.mark.parametrize("text", ["12XB", "", "m", "-5m", "1.2.3g", "ten", True, None, [1], "5mm"])
def test_parse_size_rejects_with_the_option_name(text):
    with pytest.raises(InvalidOption) as err:
        parse_size(text, "memory")
    assert str(err.value).startswith("memory: ")


def test_parse_size_message_for_12xb_is_the_documented_one():
    with pytest.raises(InvalidOption, match=r"^memory: invalid size '12XB' \(use a number with an optional b, k, m or g suffix\)$"):
        parse_size("12XB", "memory")


def test_normalize_sizes_round_to_pages_and_unlimited_is_none():
    page = lim.page_size()
    out = normalize_limits({"memory": 100000000, "memory_swap": "-1", "memory_reservation": "unlimited"})
    assert out == {"memory": 100000000 - 100000000 % page, "memory_swap": None, "memory_reservation": None}
    assert normalize_limits({"memory": -1}) == {"memory": None}
    assert normalize_limits({"memory": "max"}) == {"memory": None}


def test_absent_and_none_are_not_managed():
    assert normalize_limits({}) == {}
    assert normalize_limits(None) == {}
    assert normalize_limits({key: None for key in lim.LIMIT_KEYS}) == {}


@pytest.mark.parametrize("limits, option, words", [
    ({"memory": "12XB"}, "memory", "invalid size"),
    ({"memory": 100}, "memory", "below the minimum"),
    ({"memory_swap": "1g"}, "memory_swap", "needs a memory limit"),
    ({"memory": "1g", "memory_swap": "512m"}, "memory_swap", "at least memory"),
    ({"memory": "1g", "memory_reservation": "2g"}, "memory_reservation", "must not be above"),
    ({"cpus": -1}, "cpus", "must not be negative"),
    ({"cpus": -0.5}, "cpus", "must not be negative"),
    ({"cpus": "lots"}, "cpus", "expected a number"),
    ({"cpus": True}, "cpus", "expected a number"),
    ({"cpus": 0.001}, "cpus", "below the minimum"),
    ({"cpus": 100000}, "cpus", "more than the"),
    ({"cpus": float("nan")}, "cpus", "finite"),
    ({"cpu_shares": 1}, "cpu_shares", "outside"),
    ({"cpu_shares": 300000}, "cpu_shares", "outside"),
    ({"cpu_shares": "x"}, "cpu_shares", "expected an integer"),
    ({"cpuset_cpus": "0-"}, "cpuset_cpus", "invalid list"),
    ({"cpuset_cpus": "3-1"}, "cpuset_cpus", "invalid range"),
    ({"cpuset_cpus": "4096"}, "cpuset_cpus", "not online"),
    ({"cpuset_cpus": ""}, "cpuset_cpus", "must not be empty"),
    ({"cpuset_mems": "77"}, "cpuset_mems", "not online"),
    ({"blkio_weight": 5}, "blkio_weight", "outside"),
    ({"blkio_weight": 1001}, "blkio_weight", "outside"),
    ({"device_read_bps": "x"}, "device_read_bps", "expected a list"),
    ({"device_read_bps": [{"path": "/dev/null"}]}, "device_read_bps", "needs a path and a rate"),
    ({"device_read_bps": [{"path": "/dev/null", "rate": "1m"}]}, "device_read_bps", "not a block device"),
    ({"device_write_bps": [{"path": "/nonexistent", "rate": "1m"}]}, "device_write_bps", "/nonexistent"),
    ({"device_write_bps": [{"path": "/dev/null", "rate": "12XB"}]}, "device_write_bps", "invalid size"),
    ({"swap": "1g"}, "unknown limit option", "swap"),
])
def test_normalize_rejects_naming_the_option(limits, option, words):
    with pytest.raises(InvalidOption) as err:
        normalize_limits(limits)
    assert str(err.value).startswith(option) and words in str(err.value), str(err.value)


def test_normalize_converts_each_key():
    out = normalize_limits({"memory": "1g", "memory_swap": "2g", "memory_reservation": "512m", "cpus": "1.5",
                            "cpu_shares": 512, "cpuset_cpus": "1,0", "cpuset_mems": 0, "pids_limit": -5,
                            "blkio_weight": 300})
    assert out == {"memory": 1 << 30, "memory_swap": 2 << 30, "memory_reservation": 512 * MIB, "cpus": 1.5,
                   "cpu_shares": 512, "cpuset_cpus": "0-1", "cpuset_mems": "0", "pids_limit": None,
                   "blkio_weight": 300}
    assert normalize_limits({"cpus": 0, "cpu_shares": 0, "blkio_weight": 0, "pids_limit": 0}) == {
        "cpus": None, "cpu_shares": None, "blkio_weight": None, "pids_limit": None}


def _a_block_device():
    for name in sorted(os.listdir("/sys/block")) if os.path.isdir("/sys/block") else []:
        if os.path.exists("/dev/" + name):
            return "/dev/" + name
    return None


def test_device_rules_resolve_numbers_and_refuse_duplicates():
    device = _a_block_device()
    if device is None:
        pytest.skip("no block device node on this host")
    rdev = os.stat(device).st_rdev
    out = normalize_limits({"device_read_bps": [{"path": device, "rate": "1m"}], "device_write_bps": []})
    assert out["device_read_bps"] == [{"path": device, "major": os.major(rdev), "minor": os.minor(rdev), "rate": MIB}]
    assert out["device_write_bps"] == []
    with pytest.raises(InvalidOption, match="listed twice"):
        normalize_limits({"device_read_bps": [{"path": device, "rate": 1}, {"path": device, "rate": 2}]})
    with pytest.raises(InvalidOption, match="must be positive"):
        normalize_limits({"device_read_bps": [{"path": device, "rate": 0}]})


@pytest.mark.parametrize("text, canonical", [("0", "0"), ("0-1", "0-1"), ("1,0", "0-1"), ("0,2-4,3,7", "0,2-4,7"),
                                             (" 0 - 1 ", "0-1")])
def test_cpu_lists_are_spelled_like_the_kernel(text, canonical):
    assert lim.canonical_cpu_list(text) == canonical


def test_weight_conversions_match_runc():
    # runc: 1 + ((shares - 2) * 9999) / 262142 and 1 + (blkio - 10) * 9999 / 990
    assert [lim.shares_to_weight(s) for s in (2, 1024, 262144)] == [1, 39, 10000]
    assert [lim.blkio_to_io_weight(w) for w in (10, 500, 1000)] == [1, 4950, 10000]
    for shares in (2, 512, 1024, 4096, 262144):
        assert lim.shares_to_weight(lim.weight_to_shares(lim.shares_to_weight(shares))) == lim.shares_to_weight(shares)
    for weight in (10, 100, 500, 1000):
        assert lim.io_to_blkio_weight(lim.blkio_to_io_weight(weight)) == weight


def test_to_oci_resources_has_only_managed_keys():
    assert to_oci_resources({}) == {}
    res = to_oci_resources(normalize_limits({"memory": "1g", "memory_swap": "2g", "memory_reservation": "256m",
                                             "cpus": 1.5, "cpu_shares": 512, "cpuset_cpus": "0", "pids_limit": 100,
                                             "blkio_weight": 300}))
    assert res == {
        "memory": {"limit": 1 << 30, "swap": 2 << 30, "reservation": 256 * MIB},
        "cpu": {"quota": 150000, "period": 100000, "shares": 512, "cpus": "0"},
        "pids": {"limit": 100},
        "blockIO": {"weight": 300},
    }


def test_to_oci_resources_spells_unlimited_as_runtimes_expect():
    res = to_oci_resources({"memory": None, "memory_swap": None, "memory_reservation": None, "cpus": None,
                            "cpu_shares": None, "pids_limit": None, "cpuset_cpus": None})
    assert res == {"memory": {"limit": -1, "swap": -1}, "cpu": {"quota": -1, "period": 100000, "shares": 1024},
                   "pids": {"limit": -1}}
    devices = [{"path": "/dev/x", "major": 8, "minor": 0, "rate": 5}]
    assert to_oci_resources({"device_write_bps": devices}) == {
        "blockIO": {"throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 5}]}}
