# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How each limit of the vocabulary maps onto cgroup v1 and v2 files.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

Pure mapping: given a view of one cgroup (``fs``, provided by `_cgroups.Cgroup`
with ``where(controller) -> "v1"|"v2"|None``, ``file(controller, name)``,
``read(controller, name) -> str|None`` and ``parent_read(controller, name)``),
it plans the writes needed for some normalised limits, comparing in the
file's own units so v2's converted weights stay idempotent, and reads the
current values back into the vocabulary. docs/cgroups.md has the table.

Controllers are named logically: memory, cpu, cpuacct, cpuset, pids, io
(v1 "blkio") and freezer.
"""

from __future__ import annotations

from collections import namedtuple

from ansible_collections.intermodal.containers.plugins.module_utils._cgroups_limits import (
    CPU_PERIOD,
    SHARES_DEFAULT,
    InvalidOption,
    blkio_to_io_weight,
    canonical_cpu_list,
    cpu_quota,
    device_path,
    io_to_blkio_weight,
    shares_to_weight,
    weight_to_shares,
)

Write = namedtuple("Write", "key controller name data")

UNLIMITED_V1 = 1 << 62   # v1 reports "unlimited" as LONG_MAX rounded to a page
CONTROLLER_OF = {
    "memory": "memory", "memory_swap": "memory", "memory_reservation": "memory",
    "cpus": "cpu", "cpu_shares": "cpu", "cpuset_cpus": "cpuset", "cpuset_mems": "cpuset",
    "pids_limit": "pids", "blkio_weight": "io", "device_read_bps": "io", "device_write_bps": "io",
}
V2_DEFAULT_WEIGHT = 100
V1_DEFAULT_WEIGHT = {"blkio.weight": 500, "blkio.bfq.weight": 100}


def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _v1_bytes(text):
    """A v1 byte counter: int, None for unlimited, or False when unreadable."""
    value = _int(text)
    if value is None:
        return False
    return None if value >= UNLIMITED_V1 or value < 0 else value


def _v2_max(text):
    if text is None:
        return False
    if text.strip() == "max":
        return None
    value = _int(text)
    return False if value is None else value


def _weight_of(text):
    """"default 100" (v2 io.weight, io.bfq.weight) or "100" (v1) -> 100."""
    if text is None:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "default":
            return _int(parts[1])
        if len(parts) == 1:
            return _int(parts[0])
    return None


def _rules(text, field=None):
    """Device rules -> {(major, minor): rate}. v1 lines: "8:0 1048576"; v2 io.max: "8:0 rbps=... wbps=..."."""
    out = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, _sep, minor = parts[0].partition(":")
        if field is None:
            rate = _int(parts[1]) if len(parts) > 1 else None
        else:
            values = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            rate = _int(values.get(field))
        if rate:
            out[(int(major), int(minor))] = rate
    return out


def _device_writes(key, want, have, controller, name, v2_field=None):
    want = {(d["major"], d["minor"]): d["rate"] for d in (want or [])}
    writes = []
    for dev in sorted(set(want) | set(have)):
        rate = want.get(dev)
        if rate == have.get(dev):
            continue
        if v2_field:
            data = "%d:%d %s=%s" % (dev[0], dev[1], v2_field, rate if rate else "max")
        else:
            data = "%d:%d %d" % (dev[0], dev[1], rate or 0)
        writes.append(Write(key, controller, name, data))
    return writes


def check_supported(fs, limits):
    """InvalidOption naming the option when its controller (or file) is missing on this host."""
    for key in limits:
        controller = CONTROLLER_OF[key]
        if fs.where(controller) is None:
            raise InvalidOption("%s: the %s controller is not available on this host's cgroups"
                                % (key, "blkio/io" if controller == "io" else controller))
    if limits.get("memory_swap") is not None and fs.where("memory") == "v1" \
            and not fs.root_has("memory", "memory.memsw.limit_in_bytes"):
        raise InvalidOption("memory_swap: swap accounting is off on this host (boot the kernel with swapaccount=1)")


# ---- plan --------------------------------------------------------------------

def plan(fs, limits):
    """Writes (in a safe order) that bring the cgroup to ``limits``; only what differs."""
    check_supported(fs, limits)
    writes = []
    writes += _plan_memory(fs, limits)
    writes += _plan_cpu(fs, limits)
    writes += _plan_cpuset(fs, limits)
    if "pids_limit" in limits:
        want = limits["pids_limit"]
        if _v2_max(fs.read("pids", "pids.max")) != want or fs.read("pids", "pids.max") is None:
            writes.append(Write("pids_limit", "pids", "pids.max", "max" if want is None else str(want)))
    writes += _plan_io(fs, limits)
    return writes


def _plan_memory(fs, limits):
    if not any(k in limits for k in ("memory", "memory_swap", "memory_reservation")):
        return []
    if fs.where("memory") == "v1":
        return _plan_memory_v1(fs, limits)
    writes = []
    if "memory" in limits:
        want = limits["memory"]
        if _v2_max(fs.read("memory", "memory.max")) != want:
            writes.append(Write("memory", "memory", "memory.max", "max" if want is None else str(want)))
    if "memory_swap" in limits:
        total = limits["memory_swap"]
        # v2 limits swap alone; docker's memory_swap is memory plus swap.
        want = None if total is None else total - (limits.get("memory") or 0)
        if _v2_max(fs.read("memory", "memory.swap.max")) != want:
            writes.append(Write("memory_swap", "memory", "memory.swap.max", "max" if want is None else str(want)))
    if "memory_reservation" in limits:
        want = limits["memory_reservation"]
        have = _int(fs.read("memory", "memory.low"))
        if have != (want or 0):
            writes.append(Write("memory_reservation", "memory", "memory.low", str(want or 0)))
    return writes


def _plan_memory_v1(fs, limits):
    writes = []
    mem = swap = None
    if "memory" in limits:
        want = limits["memory"]
        if _v1_bytes(fs.read("memory", "memory.limit_in_bytes")) != want:
            mem = Write("memory", "memory", "memory.limit_in_bytes", "-1" if want is None else str(want))
    if "memory_swap" in limits:
        want = limits["memory_swap"]
        have = _v1_bytes(fs.read("memory", "memory.memsw.limit_in_bytes"))
        if have != want:
            swap = Write("memory_swap", "memory", "memory.memsw.limit_in_bytes", "-1" if want is None else str(want))
            # memory.limit <= memsw.limit must hold after each write: memsw goes
            # first when it stays above the current memory limit (runc's rule).
            current = _v1_bytes(fs.read("memory", "memory.limit_in_bytes"))
            if want is None or (current is not None and current is not False and current < want):
                writes.append(swap)
                swap = None
    if mem:
        writes.append(mem)
    if swap:
        writes.append(swap)
    if "memory_reservation" in limits:
        want = limits["memory_reservation"]
        if _v1_bytes(fs.read("memory", "memory.soft_limit_in_bytes")) != want:
            writes.append(Write("memory_reservation", "memory", "memory.soft_limit_in_bytes",
                                "-1" if want is None else str(want)))
    return writes


def _plan_cpu(fs, limits):
    writes = []
    v1 = fs.where("cpu") == "v1"
    if "cpus" in limits:
        quota = cpu_quota(limits["cpus"])
        if v1:
            if quota > 0 and _int(fs.read("cpu", "cpu.cfs_period_us")) != CPU_PERIOD:
                writes.append(Write("cpus", "cpu", "cpu.cfs_period_us", str(CPU_PERIOD)))
            if _int(fs.read("cpu", "cpu.cfs_quota_us")) != quota:
                writes.append(Write("cpus", "cpu", "cpu.cfs_quota_us", str(quota)))
        else:
            have = (fs.read("cpu", "cpu.max") or "").split()
            have_quota = None if have[:1] == ["max"] else _int(have[0]) if have else False
            have_period = _int(have[1]) if len(have) > 1 else None
            want_quota = None if quota < 0 else quota
            if have_quota != want_quota or (want_quota is not None and have_period != CPU_PERIOD):
                data = "max" if want_quota is None else "%d %d" % (want_quota, CPU_PERIOD)
                writes.append(Write("cpus", "cpu", "cpu.max", data))
    if "cpu_shares" in limits:
        shares = limits["cpu_shares"]
        if v1:
            name, want = "cpu.shares", shares or SHARES_DEFAULT
        else:
            # The default on v2 is the kernel's weight 100, not 1024 shares converted.
            name, want = "cpu.weight", shares_to_weight(shares) if shares else V2_DEFAULT_WEIGHT
        if _int(fs.read("cpu", name)) != want:
            writes.append(Write("cpu_shares", "cpu", name, str(want)))
    return writes


def _plan_cpuset(fs, limits):
    writes = []
    v1 = fs.where("cpuset") == "v1"
    # v1 needs mems before cpus only on an empty cgroup, which create() never leaves.
    for key, name in (("cpuset_mems", "cpuset.mems"), ("cpuset_cpus", "cpuset.cpus")):
        if key not in limits:
            continue
        want = limits[key]
        if want is None:
            # Default: everything the parent has. v1 needs it spelled out; v2 inherits from "".
            want = canonical_cpu_list(fs.parent_read("cpuset", name)) if v1 else ""
        have = fs.read("cpuset", name)
        if have is None or canonical_cpu_list(have, key) != want:
            writes.append(Write(key, "cpuset", name, want or "\n"))
    return writes


def _plan_io(fs, limits):
    writes = []
    v1 = fs.where("io") == "v1"
    if "blkio_weight" in limits:
        if v1:
            name = "blkio.weight" if fs.read("io", "blkio.weight") is not None else "blkio.bfq.weight"
            want = limits["blkio_weight"] or V1_DEFAULT_WEIGHT[name]
            data = str(want)
        elif fs.read("io", "io.bfq.weight") is not None:
            # BFQ takes blkio's own 1..1000 scale, as runc writes it.
            name, want = "io.bfq.weight", limits["blkio_weight"] or 100
            data = str(want)
        else:
            name, want = "io.weight", blkio_to_io_weight(limits["blkio_weight"]) if limits["blkio_weight"] else 100
            data = "default %d" % want
        if _weight_of(fs.read("io", name)) != want:
            writes.append(Write("blkio_weight", "io", name, data))
    for key, v1_name, field in (("device_read_bps", "blkio.throttle.read_bps_device", "rbps"),
                                ("device_write_bps", "blkio.throttle.write_bps_device", "wbps")):
        if key not in limits:
            continue
        if v1:
            writes += _device_writes(key, limits[key], _rules(fs.read("io", v1_name)), "io", v1_name)
        else:
            writes += _device_writes(key, limits[key], _rules(fs.read("io", "io.max"), field), "io", "io.max", field)
    return writes


# ---- read back ---------------------------------------------------------------

def _none_if_false(value):
    return None if value is False else value


def read_limits(fs):
    """Current values in the vocabulary; None means unlimited or the default."""
    out = {}
    where = fs.where("memory")
    if where == "v1":
        out["memory"] = _none_if_false(_v1_bytes(fs.read("memory", "memory.limit_in_bytes")))
        out["memory_swap"] = _none_if_false(_v1_bytes(fs.read("memory", "memory.memsw.limit_in_bytes")))
        out["memory_reservation"] = _none_if_false(_v1_bytes(fs.read("memory", "memory.soft_limit_in_bytes")))
    elif where == "v2":
        memory = _none_if_false(_v2_max(fs.read("memory", "memory.max")))
        swap = _none_if_false(_v2_max(fs.read("memory", "memory.swap.max")))
        out["memory"] = memory
        out["memory_swap"] = None if swap is None else swap + (memory or 0)
        out["memory_reservation"] = _int(fs.read("memory", "memory.low")) or None
    where = fs.where("cpu")
    if where == "v1":
        quota, period = _int(fs.read("cpu", "cpu.cfs_quota_us")), _int(fs.read("cpu", "cpu.cfs_period_us"))
        out["cpus"] = quota / float(period) if quota and quota > 0 and period else None
        shares = _int(fs.read("cpu", "cpu.shares"))
    elif where == "v2":
        have = (fs.read("cpu", "cpu.max") or "max").split()
        out["cpus"] = None if have[0] == "max" or len(have) < 2 else int(have[0]) / float(int(have[1]))
        weight = _int(fs.read("cpu", "cpu.weight"))
        # Lossy: many share values map to one weight. Compare with Cgroup.changed_keys(), not read().
        shares = weight_to_shares(weight) if weight and weight != V2_DEFAULT_WEIGHT else None
    if where:
        out["cpu_shares"] = None if shares in (None, SHARES_DEFAULT) else shares
    where = fs.where("cpuset")
    for key, name in (("cpuset_cpus", "cpuset.cpus"), ("cpuset_mems", "cpuset.mems")):
        if where:
            have = canonical_cpu_list(fs.read("cpuset", name))
            if where == "v1" and have == canonical_cpu_list(fs.parent_read("cpuset", name)):
                have = ""
            out[key] = have or None
    if fs.where("pids"):
        out["pids_limit"] = _none_if_false(_v2_max(fs.read("pids", "pids.max")))
    out.update(_read_io(fs))
    return out


def _read_io(fs):
    out = {}
    where = fs.where("io")
    if where == "v1":
        name = "blkio.weight" if fs.read("io", "blkio.weight") is not None else "blkio.bfq.weight"
        weight = _weight_of(fs.read("io", name))
        out["blkio_weight"] = None if weight in (None, V1_DEFAULT_WEIGHT[name]) else weight
        reads = _rules(fs.read("io", "blkio.throttle.read_bps_device"))
        writes = _rules(fs.read("io", "blkio.throttle.write_bps_device"))
    elif where == "v2":
        bfq = fs.read("io", "io.bfq.weight")
        if bfq is not None:
            weight = _weight_of(bfq)
        else:
            weight = _weight_of(fs.read("io", "io.weight"))
            weight = io_to_blkio_weight(weight) if weight and weight != 100 else None
        out["blkio_weight"] = None if weight in (None, 100) else weight
        reads = _rules(fs.read("io", "io.max"), "rbps")
        writes = _rules(fs.read("io", "io.max"), "wbps")
    else:
        return out
    for key, rules in (("device_read_bps", reads), ("device_write_bps", writes)):
        out[key] = [{"path": device_path(*dev), "major": dev[0], "minor": dev[1], "rate": rules[dev]}
                    for dev in sorted(rules)] or None
    return out


def _kv(text):
    out = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = _int(parts[1])
    return out


def read_stats(fs, pid_count):
    """Live usage: memory bytes, memory limit, cpu time in ns, processes, OOM kills."""
    stats = {"memory_usage": 0, "memory_limit": None, "memory_max_usage": None, "cpu_usage_ns": 0,
             "pids_current": pid_count, "oom_kills": 0}
    if fs.where("memory") == "v1":
        stats["memory_usage"] = _int(fs.read("memory", "memory.usage_in_bytes")) or 0
        stats["memory_limit"] = _none_if_false(_v1_bytes(fs.read("memory", "memory.limit_in_bytes")))
        stats["memory_max_usage"] = _int(fs.read("memory", "memory.max_usage_in_bytes"))
        stats["oom_kills"] = _kv(fs.read("memory", "memory.oom_control")).get("oom_kill") or 0
    elif fs.where("memory") == "v2":
        stats["memory_usage"] = _int(fs.read("memory", "memory.current")) or 0
        stats["memory_limit"] = _none_if_false(_v2_max(fs.read("memory", "memory.max")))
        stats["memory_max_usage"] = _int(fs.read("memory", "memory.peak"))
        stats["oom_kills"] = _kv(fs.read("memory", "memory.events")).get("oom_kill") or 0
    if fs.where("cpuacct") == "v1":
        stats["cpu_usage_ns"] = _int(fs.read("cpuacct", "cpuacct.usage")) or 0
    elif fs.where("cpuacct") == "v2":
        stats["cpu_usage_ns"] = (_kv(fs.read("cpuacct", "cpu.stat")).get("usage_usec") or 0) * 1000
    if fs.where("pids"):
        current = _int(fs.read("pids", "pids.current"))
        if current is not None:
            stats["pids_current"] = current
    return stats
