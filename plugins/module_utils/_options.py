# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one declarative table of container options.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

Each entry says, in one place: its argument_spec, how a module value is
normalised (and validated, naming the option on error), where it goes (the
OCI process/spec, the cgroup limits, or the supervision policy), how it is
compared with the container as it is, and whether a change applies live. The
module's argument_spec, the desired state, the diff and the option docs
(checked by a unit test against DOCUMENTATION) all come from this table, so
adding an option is one entry (community.docker's OptionGroup idea).
"""

from __future__ import annotations

import shlex

from ansible_collections.intermodal.containers.plugins.module_utils._cgroups import (
    InvalidOption,
    normalize_limits,
    parse_size,
)
from ansible_collections.intermodal.containers.plugins.module_utils._spec import validate_capabilities

# Where an option's value goes.
PROCESS = "process"   # the OCI spec: a change means recreate
LIMITS = "limits"     # cgroups: changed live
POLICY = "policy"     # supervision: changed live

COMPARISON_MODES = ("strict", "ignore", "allow_more_present")


class Option:
    __slots__ = ("name", "spec", "target", "normalize", "kind", "doc")

    def __init__(self, name, spec, target, normalize=None, kind="scalar", doc=""):
        self.name = name
        self.spec = spec
        self.target = target
        self.normalize = normalize or (lambda value, params: value)
        self.kind = kind  # scalar | list | set | dict
        self.doc = doc

    @property
    def live(self):
        return self.target in (LIMITS, POLICY)


# -- normalisers: module value -> canonical value (None = not set) ------------


def _command(value, _params, name="command"):
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise InvalidOption("%s: cannot split %r: %s" % (name, value, exc))
    if not isinstance(value, (list, tuple)):
        raise InvalidOption("%s: expected a list or a string, got %r" % (name, value))
    return [str(v) for v in value]


def _entrypoint(value, params):
    return _command(value, params, "entrypoint")


def _str_dict(value, _params):
    if value is None:
        return None
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def _env(value, params):
    env = _str_dict(value, params)
    for key in env or {}:
        if not key or "=" in key:
            raise InvalidOption("env: invalid variable name %r" % key)
    return env


def _caps(name):
    def normalize(value, _params):
        if not value:
            return []
        try:
            return sorted(set(validate_capabilities(value)))
        except InvalidOption as exc:
            raise InvalidOption("%s: %s" % (name, exc))
    return normalize


def _mode(name):
    def normalize(value, _params):
        if value in (None, "private"):
            return "private"
        if value != "host":
            raise InvalidOption("%s: must be 'private' or 'host', got %r" % (name, value))
        return value
    return normalize


def _restart_policy(value, params):
    """'on-failure:3' is accepted as docker writes it; retries then come from it."""
    text = value or "no"
    policy, _sep, count = text.partition(":")
    if policy not in ("no", "on-failure", "always", "unless-stopped"):
        raise InvalidOption("restart_policy: must be no, on-failure[:max], always or unless-stopped, got %r" % text)
    if count:
        if policy != "on-failure" or not count.isdigit():
            raise InvalidOption("restart_policy: only on-failure takes a retry count, as on-failure:3")
        params["restart_retries"] = int(count)
    return policy


def _non_negative(name):
    def normalize(value, _params):
        if value is not None and value < 0:
            raise InvalidOption("%s: must not be negative, got %r" % (name, value))
        return value
    return normalize


def _log_size(value, _params):
    return parse_size(value, "log_max_size") if value is not None else None


def _signal(value, _params):
    if value is None:
        return None
    text = str(value).upper()
    if text.isdigit():
        return text
    return text if text.startswith("SIG") else "SIG" + text


# Limits are validated together by _cgroups.normalize_limits; the per-option
# normaliser only keeps the raw value.
def _raw(value, _params):
    return value


_SIZE_DOC = "A size such as C(512m) or C(2g) (units b, k, m, g)."

OPTIONS = [
    Option("command", dict(type="raw"), PROCESS, _command, "list",
           "Command to run, replacing the image's C(Cmd). A list, or a string split like a shell would."),
    Option("entrypoint", dict(type="list", elements="str"), PROCESS, _entrypoint, "list",
           "Entrypoint, replacing the image's."),
    Option("env", dict(type="dict"), PROCESS, _env, "dict", "Environment variables, added to the image's."),
    Option("user", dict(type="str"), PROCESS, None, "scalar",
           "User as C(name), C(uid) or C(uid:gid); names are looked up in the image's own C(/etc/passwd)."),
    Option("working_dir", dict(type="str"), PROCESS, None, "scalar", "Working directory, replacing the image's."),
    Option("hostname", dict(type="str"), PROCESS, None, "scalar", "Hostname inside the container (defaults to its name)."),
    Option("labels", dict(type="dict"), PROCESS, _str_dict, "dict", "Labels, written as OCI annotations."),
    Option("mounts", dict(type="list", elements="dict", options=dict(
        type=dict(type="str", choices=["bind", "volume", "tmpfs"], default="volume"),
        source=dict(type="str"),
        target=dict(type="str", required=True),
        read_only=dict(type="bool", default=False),
        options=dict(type="list", elements="str", default=[]),
    )), PROCESS, None, "list", "Mounts: named volumes, bind mounts of host paths and tmpfs."),
    Option("volumes", dict(type="list", elements="str"), PROCESS, None, "list",
           "Docker-style C(source:target[:ro]) strings; a source without C(/) is a named volume."),
    Option("read_only", dict(type="bool", default=False), PROCESS, None, "scalar", "Mount the root filesystem read-only."),
    Option("capabilities", dict(type="list", elements="str"), PROCESS, _caps("capabilities"), "set",
           "Capabilities to add to Docker's default set, as C(NET_ADMIN) or C(CAP_NET_ADMIN)."),
    Option("cap_drop", dict(type="list", elements="str"), PROCESS, _caps("cap_drop"), "set",
           "Capabilities to drop; C(ALL) drops every one."),
    Option("privileged", dict(type="bool", default=False), PROCESS, None, "scalar",
           "Give the container all capabilities, no seccomp filter and unmasked paths. Off unless set explicitly."),
    Option("network_mode", dict(type="str", choices=["none", "host"], default="none"), PROCESS, None, "scalar",
           "V(none) gives the container its own network namespace with only loopback; V(host) shares the host's."),
    Option("pid_mode", dict(type="str", choices=["private", "host"], default="private"), PROCESS, _mode("pid_mode"),
           "scalar", "PID namespace."),
    Option("ipc_mode", dict(type="str", choices=["private", "host"], default="private"), PROCESS, _mode("ipc_mode"),
           "scalar", "IPC namespace."),
    Option("uts_mode", dict(type="str", choices=["private", "host"], default="private"), PROCESS, _mode("uts_mode"),
           "scalar", "UTS namespace (hostname)."),
    Option("runtime", dict(type="str", choices=["crun", "runc"], default="crun"), PROCESS, None, "scalar",
           "OCI runtime binary that runs the container."),
    Option("memory", dict(type="str"), LIMITS, _raw, "scalar", "Memory limit. " + _SIZE_DOC),
    Option("memory_swap", dict(type="str"), LIMITS, _raw, "scalar",
           "Memory plus swap limit, as docker's C(--memory-swap); C(-1) for unlimited swap. " + _SIZE_DOC),
    Option("memory_reservation", dict(type="str"), LIMITS, _raw, "scalar", "Soft memory limit. " + _SIZE_DOC),
    Option("cpus", dict(type="float"), LIMITS, _raw, "scalar", "CPU quota in CPUs, for example C(1.5)."),
    Option("cpu_shares", dict(type="int"), LIMITS, _raw, "scalar", "Relative CPU weight, as docker's C(--cpu-shares)."),
    Option("cpuset_cpus", dict(type="str"), LIMITS, _raw, "scalar", "CPUs the container may use, as C(0-1,3)."),
    Option("cpuset_mems", dict(type="str"), LIMITS, _raw, "scalar", "Memory nodes the container may use."),
    Option("pids_limit", dict(type="int"), LIMITS, _raw, "scalar", "Maximum number of processes; 0 or less is unlimited."),
    Option("blkio_weight", dict(type="int"), LIMITS, _raw, "scalar", "Block I/O weight, 10 to 1000 (C(io.weight) on cgroup v2)."),
    Option("device_read_bps", dict(type="list", elements="dict", options=dict(
        path=dict(type="str", required=True), rate=dict(type="str", required=True))), LIMITS, _raw, "list",
        "Read rate limits per block device, as C(path) and C(rate) (a size per second)."),
    Option("device_write_bps", dict(type="list", elements="dict", options=dict(
        path=dict(type="str", required=True), rate=dict(type="str", required=True))), LIMITS, _raw, "list",
        "Write rate limits per block device, as C(path) and C(rate) (a size per second)."),
    Option("restart_policy", dict(type="str", default="no"), POLICY, _restart_policy, "scalar",
           "V(no), V(on-failure) (or C(on-failure:MAX)), V(always) or V(unless-stopped). Changes apply live."),
    Option("restart_retries", dict(type="int"), POLICY, _non_negative("restart_retries"), "scalar",
           "Maximum restarts for V(on-failure)."),
    Option("stop_signal", dict(type="str"), POLICY, _signal, "scalar",
           "Signal that stops the container; defaults to the image's C(StopSignal), else C(SIGTERM)."),
    Option("stop_timeout", dict(type="int", default=10), POLICY, _non_negative("stop_timeout"), "scalar",
           "Seconds to wait after O(stop_signal) before C(SIGKILL)."),
    Option("log_max_size", dict(type="str", default="10m"), POLICY, _log_size, "scalar",
           "Rotate the container's log file when it reaches this size. " + _SIZE_DOC),
    Option("log_max_files", dict(type="int", default=3), POLICY, _non_negative("log_max_files"), "scalar",
           "Rotated log files to keep."),
]

BY_NAME = {option.name: option for option in OPTIONS}
LIMIT_OPTIONS = [o.name for o in OPTIONS if o.target == LIMITS]


def argument_spec():
    return {option.name: dict(option.spec) for option in OPTIONS}


def desired_from_params(params):
    """Canonical desired values for every option in the table (validation happens here)."""
    params = dict(params)
    desired = {}
    for option in OPTIONS:
        desired[option.name] = option.normalize(params.get(option.name), params)
    # A retry count written as on-failure:N lands in params during normalisation.
    desired["restart_retries"] = params.get("restart_retries")
    if desired["restart_retries"] is not None and desired["restart_policy"] != "on-failure":
        raise InvalidOption("restart_retries: only applies to restart_policy=on-failure, not %s"
                            % desired["restart_policy"])
    desired["mounts"] = _merge_mounts(params.get("mounts"), params.get("volumes"))
    desired["volumes"] = None
    limits = normalize_limits({name: params.get(name) for name in LIMIT_OPTIONS})
    for name in LIMIT_OPTIONS:
        desired[name] = limits.get(name)
    return desired


def _merge_mounts(mounts, volumes):
    out = []
    for mount in mounts or []:
        mtype = mount.get("type") or "volume"
        if mtype != "tmpfs" and not mount.get("source"):
            raise InvalidOption("mounts: a %s mount needs a source (target %s)" % (mtype, mount.get("target")))
        out.append({"type": mtype, "source": mount.get("source"), "target": mount["target"],
                    "read_only": bool(mount.get("read_only")), "options": list(mount.get("options") or [])})
    for text in volumes or []:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1] or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise InvalidOption("volumes: %r is not source:target[:ro|rw]" % text)
        out.append({"type": "bind" if "/" in parts[0] else "volume", "source": parts[0], "target": parts[1],
                    "read_only": len(parts) == 3 and parts[2] == "ro", "options": []})
    for mount in out:
        if not mount["target"].startswith("/"):
            raise InvalidOption("mounts: target %r must be an absolute path" % mount["target"])
    return sorted(out, key=lambda m: m["target"])


def compare(desired, actual, comparisons=None):
    """Differences as [(name, before, after, live)], honouring comparisons overrides."""
    comparisons = dict(comparisons or {})
    default_mode = comparisons.pop("*", None)
    for name, mode in comparisons.items():
        if name not in BY_NAME and name != "image":
            raise InvalidOption("comparisons: unknown option %r" % name)
        if mode not in COMPARISON_MODES:
            raise InvalidOption("comparisons.%s: must be one of %s" % (name, ", ".join(COMPARISON_MODES)))
    diffs = []
    for option in OPTIONS:
        if option.name == "volumes":
            continue
        mode = comparisons.get(option.name, default_mode or "strict")
        want, have = desired.get(option.name), actual.get(option.name)
        if mode == "ignore" or _same(option.kind, mode, want, have):
            continue
        diffs.append((option.name, have, want, option.live))
    return diffs


def _same(kind, mode, want, have):
    if mode == "allow_more_present":
        if kind == "dict":
            return all((have or {}).get(k) == v for k, v in (want or {}).items())
        if kind in ("set", "list"):
            return all(item in (have or []) for item in (want or []))
    if kind == "set":
        return sorted(want or []) == sorted(have or [])
    if kind == "dict":
        return (want or {}) == (have or {})
    if kind == "list":
        return (want or []) == (have or [])
    return want == have


def split(desired):
    """(process options, limits, policy) for the spec builder, cgroups and the supervisor."""
    process = {o.name: desired.get(o.name) for o in OPTIONS if o.target == PROCESS and o.name != "volumes"}
    limits = {name: desired.get(name) for name in LIMIT_OPTIONS if desired.get(name) is not None}
    policy = {o.name: desired.get(o.name) for o in OPTIONS if o.target == POLICY}
    return process, limits, policy
