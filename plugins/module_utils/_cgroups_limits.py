# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The limits vocabulary shared by the cgroup module and containers.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

Validation and conversion only: sizes, CPU lists, weights and device rules are
checked here, before anything is created, so a bad value fails with a message
naming its option. `_cgroups` maps the normalised values onto cgroupfs files.

Normalised form (the output of normalize_limits): a key that is absent is not
managed; a key whose value is None asks for the default, which is "unlimited"
for memory, memory_swap, memory_reservation, cpus and pids_limit, 1024 for
cpu_shares, the kernel's default weight for blkio_weight, the parent's set for
cpuset_cpus/cpuset_mems, and no rules for the device lists.
"""

from __future__ import annotations

import math
import os
import re
import stat

from ansible_collections.intermodal.containers.plugins.module_utils._errors import IntermodalError


class InvalidOption(IntermodalError):
    """An option value is invalid; the message names the option."""


LIMIT_KEYS = (
    "memory", "memory_swap", "memory_reservation",
    "cpus", "cpu_shares", "cpuset_cpus", "cpuset_mems",
    "pids_limit", "blkio_weight", "device_read_bps", "device_write_bps",
)
CPU_PERIOD = 100000          # docker's --cpus uses a 100 ms period
MIN_QUOTA = 1000             # the kernel refuses a CFS quota under 1 ms
MIN_MEMORY = 4096            # one page; anything smaller cannot hold a process
SHARES_MIN, SHARES_MAX, SHARES_DEFAULT = 2, 262144, 1024
WEIGHT_MIN, WEIGHT_MAX = 10, 1000
UNLIMITED_WORDS = ("-1", "unlimited", "max", "none")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_LIST_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def parse_size(value, option):
    """Bytes from an int or a docker-style size string ("512m", "1g", "100MB"; units are binary)."""
    if isinstance(value, bool):
        raise InvalidOption("%s: invalid size %r (use a number with an optional b, k, m or g suffix)" % (option, value))
    if isinstance(value, int):
        if value < 0:
            raise InvalidOption("%s: size must not be negative (got %d)" % (option, value))
        return value
    if isinstance(value, float) and value >= 0 and value == int(value):
        return int(value)
    match = _SIZE_RE.match(value) if isinstance(value, str) else None
    if not match:
        raise InvalidOption("%s: invalid size %r (use a number with an optional b, k, m or g suffix)" % (option, value))
    number, unit = match.group(1), match.group(2).lower()
    return int(float(number) * _UNITS[unit]) if "." in number else int(number) * _UNITS[unit]


def _is_unlimited(value):
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return value == -1
    return isinstance(value, str) and value.strip().lower() in UNLIMITED_WORDS


def page_size():
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 4096


def _size_or_unlimited(value, option, minimum=0):
    if _is_unlimited(value):
        return None
    size = parse_size(value, option)
    if size < minimum:
        raise InvalidOption("%s: %d bytes is below the minimum of %d (use -1 for unlimited)" % (option, size, minimum))
    # The kernel keeps memory limits in pages; rounding here makes read() equal what was asked.
    return size - size % page_size()


def _integer(value, option):
    if isinstance(value, bool):
        raise InvalidOption("%s: expected an integer, got %r" % (option, value))
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise InvalidOption("%s: expected an integer, got %r" % (option, value)) from None


# ---- CPU and memory-node lists ---------------------------------------------

def parse_cpu_list(text, option="cpuset_cpus"):
    """"0-2,5" -> [0, 1, 2, 5] (sorted, unique)."""
    text = ("%s" % text).replace(" ", "")
    if not _LIST_RE.match(text):
        raise InvalidOption("%s: invalid list %r (use numbers and ranges, for example 0-1,3)" % (option, text))
    out = set()
    for part in text.split(","):
        low, _sep, high = part.partition("-")
        low, high = int(low), int(high or low)
        if high < low:
            raise InvalidOption("%s: invalid range %r in %r" % (option, part, text))
        if high - low > 65536:
            raise InvalidOption("%s: range %r is too large" % (option, part))
        out.update(range(low, high + 1))
    return sorted(out)


def format_cpu_list(numbers):
    """[0, 1, 2, 5] -> "0-2,5": the kernel's own spelling, so reads compare equal."""
    parts = []
    numbers = sorted(set(numbers))
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(str(numbers[i]) if i == j else "%d-%d" % (numbers[i], numbers[j]))
        i = j + 1
    return ",".join(parts)


def canonical_cpu_list(text, option="cpuset_cpus"):
    text = (text or "").strip()
    return format_cpu_list(parse_cpu_list(text, option)) if text else ""


def _online(path, fallback):
    try:
        with open(path) as handle:
            return parse_cpu_list(handle.read().strip() or fallback)
    except (OSError, InvalidOption):
        return parse_cpu_list(fallback)


def online_cpus():
    return _online("/sys/devices/system/cpu/online", "0-%d" % ((os.cpu_count() or 1) - 1))


def online_mems():
    return _online("/sys/devices/system/node/online", "0")


def _cpuset(value, option, online):
    if isinstance(value, bool):
        raise InvalidOption("%s: expected a list such as 0-1,3, got %r" % (option, value))
    text = str(value).strip()
    if not text:
        raise InvalidOption("%s: must not be empty (leave it unset to use every CPU or node)" % option)
    numbers = parse_cpu_list(text, option)
    missing = sorted(set(numbers) - set(online))
    if missing:
        raise InvalidOption("%s: %s not online on this host (online: %s)"
                            % (option, format_cpu_list(missing), format_cpu_list(online)))
    return format_cpu_list(numbers)


# ---- cpus ------------------------------------------------------------------

def _cpus(value):
    if isinstance(value, bool):
        raise InvalidOption("cpus: expected a number of CPUs such as 1.5, got %r" % (value,))
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise InvalidOption("cpus: expected a number of CPUs such as 1.5, got %r" % (value,)) from None
    if math.isnan(cpus) or math.isinf(cpus):
        raise InvalidOption("cpus: expected a finite number, got %r" % (value,))
    if cpus < 0:
        raise InvalidOption("cpus: must not be negative (got %s); use 0 for no limit" % value)
    if cpus == 0:
        return None
    available = len(online_cpus())
    if cpus > available:
        raise InvalidOption("cpus: %s is more than the %d CPUs of this host (range 0.01 to %d)"
                            % (value, available, available))
    quota = int(round(cpus * CPU_PERIOD))
    if quota < MIN_QUOTA:
        raise InvalidOption("cpus: %s is below the minimum of 0.01" % value)
    return quota / float(CPU_PERIOD)


def cpu_quota(cpus):
    """CFS quota in microseconds per CPU_PERIOD for normalised cpus (None -> -1, unlimited)."""
    return -1 if cpus is None else int(round(cpus * CPU_PERIOD))


# ---- weights: v1 values and their v2 counterparts, converted like runc/crun --

def shares_to_weight(shares):
    """cpu.shares (2..262144) -> cgroup v2 cpu.weight (1..10000)."""
    return 1 + ((shares - 2) * 9999) // 262142


def weight_to_shares(weight):
    """Inverse of shares_to_weight, exact only up to rounding (for read())."""
    return 2 + ((weight - 1) * 262142 + 9998) // 9999


def blkio_to_io_weight(weight):
    """blkio.weight (10..1000) -> cgroup v2 io.weight (1..10000)."""
    return 1 + ((weight - 10) * 9999) // 990


def io_to_blkio_weight(weight):
    return 10 + ((weight - 1) * 990 + 9998) // 9999


# ---- device rules -----------------------------------------------------------

def _devices(value, option):
    if not isinstance(value, (list, tuple)):
        raise InvalidOption("%s: expected a list of {path, rate}, got %r" % (option, value))
    out = {}
    for entry in value:
        if not isinstance(entry, dict) or not entry.get("path") or entry.get("rate") is None:
            raise InvalidOption("%s: each entry needs a path and a rate, got %r" % (option, entry))
        path = str(entry["path"])
        rate = parse_size(entry["rate"], option)
        if rate <= 0:
            raise InvalidOption("%s: rate for %s must be positive" % (option, path))
        try:
            st = os.stat(path)
        except OSError as exc:
            raise InvalidOption("%s: device %s: %s" % (option, path, exc.strerror)) from None
        if not stat.S_ISBLK(st.st_mode):
            raise InvalidOption("%s: %s is not a block device" % (option, path))
        key = (os.major(st.st_rdev), os.minor(st.st_rdev))
        if key in out:
            raise InvalidOption("%s: device %s (%d:%d) is listed twice" % (option, path, key[0], key[1]))
        out[key] = {"path": path, "major": key[0], "minor": key[1], "rate": rate}
    return [out[key] for key in sorted(out)]


def device_path(major, minor):
    """/dev/<name> for a block device number, or "major:minor" when it has no node we can name."""
    try:
        target = os.readlink("/sys/dev/block/%d:%d" % (major, minor))
        candidate = "/dev/" + os.path.basename(target)
        st = os.stat(candidate)
        if stat.S_ISBLK(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (major, minor):
            return candidate
    except OSError:
        pass
    return "%d:%d" % (major, minor)


# ---- the whole dict --------------------------------------------------------

def normalize_limits(limits):
    """Validate and convert a limits dict (see the module docstring for the output form).

    Keys that are absent or None are not managed. Raises InvalidOption naming
    the option for anything invalid; it never touches cgroupfs.
    """
    limits = limits or {}
    unknown = sorted(set(limits) - set(LIMIT_KEYS))
    if unknown:
        raise InvalidOption("unknown limit option(s): %s (known: %s)" % (", ".join(unknown), ", ".join(LIMIT_KEYS)))
    raw = {key: value for key, value in limits.items() if value is not None}
    out = {}
    if "memory" in raw:
        out["memory"] = _size_or_unlimited(raw["memory"], "memory", MIN_MEMORY)
    if "memory_swap" in raw:
        swap = _size_or_unlimited(raw["memory_swap"], "memory_swap")
        if swap is not None:
            if out.get("memory") is None:
                raise InvalidOption("memory_swap: needs a memory limit as well (memory_swap is memory plus swap)")
            if swap < out["memory"]:
                raise InvalidOption("memory_swap: %d must be at least memory (%d), as it counts memory plus swap"
                                    % (swap, out["memory"]))
        out["memory_swap"] = swap
    if "memory_reservation" in raw:
        reservation = _size_or_unlimited(raw["memory_reservation"], "memory_reservation")
        if reservation is not None and out.get("memory") is not None and reservation > out["memory"]:
            raise InvalidOption("memory_reservation: %d must not be above memory (%d)" % (reservation, out["memory"]))
        out["memory_reservation"] = reservation
    if "cpus" in raw:
        out["cpus"] = _cpus(raw["cpus"])
    if "cpu_shares" in raw:
        shares = _integer(raw["cpu_shares"], "cpu_shares")
        if shares != 0 and not SHARES_MIN <= shares <= SHARES_MAX:
            raise InvalidOption("cpu_shares: %d is outside %d..%d" % (shares, SHARES_MIN, SHARES_MAX))
        out["cpu_shares"] = shares or None
    if "cpuset_cpus" in raw:
        out["cpuset_cpus"] = _cpuset(raw["cpuset_cpus"], "cpuset_cpus", online_cpus())
    if "cpuset_mems" in raw:
        out["cpuset_mems"] = _cpuset(raw["cpuset_mems"], "cpuset_mems", online_mems())
    if "pids_limit" in raw:
        pids = _integer(raw["pids_limit"], "pids_limit")
        out["pids_limit"] = pids if pids > 0 else None
    if "blkio_weight" in raw:
        weight = _integer(raw["blkio_weight"], "blkio_weight")
        if weight != 0 and not WEIGHT_MIN <= weight <= WEIGHT_MAX:
            raise InvalidOption("blkio_weight: %d is outside %d..%d" % (weight, WEIGHT_MIN, WEIGHT_MAX))
        out["blkio_weight"] = weight or None
    for key in ("device_read_bps", "device_write_bps"):
        if key in raw:
            out[key] = _devices(raw[key], key)
    return out


def to_oci_resources(limits):
    """OCI linux.resources for normalised limits (only the managed keys appear).

    Both runc and crun read this at create time and in `update --resources -`.
    memory.swap is memory plus swap, as in the OCI spec; -1 is unlimited.
    """
    res = {}
    memory = {}
    if "memory" in limits:
        memory["limit"] = -1 if limits["memory"] is None else limits["memory"]
    if "memory_swap" in limits:
        memory["swap"] = -1 if limits["memory_swap"] is None else limits["memory_swap"]
    if limits.get("memory_reservation") is not None:
        # 0 leaves it unset: runc writes -1 as memory.low=max on v2, which protects everything.
        memory["reservation"] = limits["memory_reservation"]
    if memory:
        res["memory"] = memory
    cpu = {}
    if "cpus" in limits:
        cpu["quota"] = cpu_quota(limits["cpus"])
        cpu["period"] = CPU_PERIOD
    if "cpu_shares" in limits:
        cpu["shares"] = limits["cpu_shares"] or SHARES_DEFAULT
    if limits.get("cpuset_cpus"):
        cpu["cpus"] = limits["cpuset_cpus"]
    if limits.get("cpuset_mems"):
        cpu["mems"] = limits["cpuset_mems"]
    if cpu:
        res["cpu"] = cpu
    if "pids_limit" in limits:
        res["pids"] = {"limit": -1 if limits["pids_limit"] is None else limits["pids_limit"]}
    block = {}
    if limits.get("blkio_weight") is not None:
        block["weight"] = limits["blkio_weight"]
    for key, field in (("device_read_bps", "throttleReadBpsDevice"), ("device_write_bps", "throttleWriteBpsDevice")):
        if limits.get(key):
            block[field] = [{"major": d["major"], "minor": d["minor"], "rate": d["rate"]} for d in limits[key]]
    if block:
        res["blockIO"] = block
    return res
