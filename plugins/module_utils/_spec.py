# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build a container's OCI runtime spec (config.json) with Docker's secure defaults.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

Defaults equal Docker's: its 14 default capabilities, its default seccomp
profile (_seccomp), its masked and read-only /proc and /sys paths and its
private /dev.  On top of Docker, no_new_privileges is on unless the container
is privileged.  Rlimits never exceed this host's hard limits (a spec asking
for more makes the runtime fail on setrlimit).  The user is resolved from the
image's own /etc/passwd and /etc/group, read without leaving the rootfs;
the host's NSS is never consulted.
"""

from __future__ import annotations

import os
import resource

from ansible_collections.intermodal.containers.plugins.module_utils import _seccomp
from ansible_collections.intermodal.containers.plugins.module_utils._cgroups import InvalidOption  # noqa: F401 (re-export)
from ansible_collections.intermodal.containers.plugins.module_utils._rootfs import open_in_root

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOFILE_WANTED = 1048576  # what podman asks for; capped at the host's hard limit

# Linux capabilities 0..40 by number (include/uapi/linux/capability.h).
ALL_CAPABILITIES = (
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID "
    "CAP_SETUID CAP_SETPCAP CAP_LINUX_IMMUTABLE CAP_NET_BIND_SERVICE CAP_NET_BROADCAST "
    "CAP_NET_ADMIN CAP_NET_RAW CAP_IPC_LOCK CAP_IPC_OWNER CAP_SYS_MODULE CAP_SYS_RAWIO "
    "CAP_SYS_CHROOT CAP_SYS_PTRACE CAP_SYS_PACCT CAP_SYS_ADMIN CAP_SYS_BOOT CAP_SYS_NICE "
    "CAP_SYS_RESOURCE CAP_SYS_TIME CAP_SYS_TTY_CONFIG CAP_MKNOD CAP_LEASE CAP_AUDIT_WRITE "
    "CAP_AUDIT_CONTROL CAP_SETFCAP CAP_MAC_OVERRIDE CAP_MAC_ADMIN CAP_SYSLOG CAP_WAKE_ALARM "
    "CAP_BLOCK_SUSPEND CAP_AUDIT_READ CAP_PERFMON CAP_BPF CAP_CHECKPOINT_RESTORE"
).split()

# moby oci/defaults.go DefaultCapabilities(), in its order.
DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]

# moby's masked paths (plus powercap, masked by Docker since CVE-2020-8694).
MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def _default_mounts(privileged):
    sys_opt = "rw" if privileged else "ro"
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", sys_opt]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", sys_opt]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    ]


def _dev_rule(allow, type_=None, major=None, minor=None, access="rwm"):
    rule = {"allow": allow, "access": access}
    if type_:
        rule["type"] = type_
    if major is not None:
        rule["major"] = major
    if minor is not None:
        rule["minor"] = minor
    return rule


def default_device_rules(privileged=False):
    """Docker's device cgroup rules: deny all, then null, zero, full, random, urandom, tty, console, ptmx."""
    if privileged:
        return [_dev_rule(True)]
    return [
        _dev_rule(False),
        _dev_rule(True, "c", 1, 5), _dev_rule(True, "c", 1, 3), _dev_rule(True, "c", 1, 9),
        _dev_rule(True, "c", 1, 8), _dev_rule(True, "c", 5, 0), _dev_rule(True, "c", 5, 1),
        _dev_rule(True, "c", 5, 2), _dev_rule(True, "c", 136, None),  # ptmx and /dev/pts/*
        _dev_rule(False, "c", 10, 229),  # /dev/fuse
    ]


# -- capabilities ------------------------------------------------------------

def _normalize_cap(name, option):
    if not isinstance(name, str) or not name.strip():
        raise InvalidOption("%s: capability names must be non-empty strings, got %r" % (option, name))
    cap = name.strip().upper()
    if cap == "ALL":
        return cap
    if not cap.startswith("CAP_"):
        cap = "CAP_" + cap
    if cap not in ALL_CAPABILITIES:
        raise InvalidOption("%s: unknown capability %r (known: ALL, %s)"
                            % (option, name, ", ".join(c[4:] for c in ALL_CAPABILITIES)))
    return cap


def validate_capabilities(names, option="capabilities"):
    """Normalized names (CAP_ prefix, upper case); InvalidOption naming ``option`` for unknown ones."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    return [_normalize_cap(n, option) for n in names]


def host_capabilities():
    """Capabilities a container here can get: known to the kernel and in our own bounding set.

    A runtime cannot grant what its caller lacks (capset fails with EPERM), so
    ALL and privileged mean "all of these".
    """
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read().strip())
    except (OSError, ValueError):
        last = len(ALL_CAPABILITIES) - 1
    bounding = (1 << (last + 1)) - 1
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    bounding = int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return [cap for i, cap in enumerate(ALL_CAPABILITIES[:last + 1]) if bounding & (1 << i)]


def effective_capabilities(capabilities=None, privileged=False):
    """Docker's TweakCapabilities: defaults, drop (ALL empties), add (ALL fills)."""
    capabilities = capabilities or {}
    unknown = set(capabilities) - {"add", "drop"}
    if unknown:
        raise InvalidOption("capabilities: unknown key(s) %s (use add and drop)" % ", ".join(sorted(unknown)))
    add = validate_capabilities(capabilities.get("add"), "capabilities.add")
    drop = validate_capabilities(capabilities.get("drop"), "capabilities.drop")
    known = host_capabilities()
    lacking = [c for c in add if c != "ALL" and c not in known]
    if lacking:
        raise InvalidOption("capabilities.add: %s cannot be granted on this host: the kernel or the "
                            "process starting containers does not have it" % ", ".join(lacking))
    if privileged:
        return list(known)
    if "ALL" in drop:  # start empty, keep only what is added
        caps = list(known) if "ALL" in add else [c for c in add if c != "ALL"]
    elif "ALL" in add:  # everything but the drops
        caps = [c for c in known if c not in drop]
    else:  # drop from the defaults, then add (add wins, as in Docker)
        caps = [c for c in DEFAULT_CAPABILITIES if c not in drop]
        caps += [c for c in add if c not in caps]
    seen = []
    for cap in caps:
        if cap in known and cap not in seen:
            seen.append(cap)
    return seen


# -- user resolution (from the image, root-confined) ----------------------------

def _read_image_file(rootfs, path, limit=4 << 20):
    try:
        with open_in_root(rootfs, path) as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:  # missing, a directory, a FIFO, a link loop: the image has no usable file
        return None


def _parse_colon_file(text, fields):
    entries = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith(("+", "-")):  # NIS lines: not ours to follow
            continue
        parts = line.split(":")
        if len(parts) < fields:
            continue
        entries.append(parts)
    return entries


def _lookup(entries, key, kind, option, source):
    """(name-or-id) → entry; numeric ids need no entry."""
    for parts in entries:
        if parts[0] == key:
            return parts
    if key.isdigit():
        for parts in entries:
            if parts[2] == key:
                return parts
        return None
    raise InvalidOption("%s: no %s %r in the image's %s" % (option, kind, key, source))


def resolve_user(rootfs, user, option="user"):
    """Docker's user syntax (name|uid[:group|gid]) → OCI process.user, from the image's files."""
    user = (user or "").strip() or "0"
    name, _sep, group = user.partition(":")
    if not name:
        raise InvalidOption("%s: %r has no user part (use name, uid, name:group or uid:gid)" % (option, user))
    passwd = _parse_colon_file(_read_image_file(rootfs, "/etc/passwd"), 7)
    groups = _parse_colon_file(_read_image_file(rootfs, "/etc/group"), 3)
    entry = _lookup(passwd, name, "user", option, "/etc/passwd")
    if entry:
        uid, gid, home, username = int(entry[2]), int(entry[3]), entry[5], entry[0]
    else:
        uid, gid, home, username = int(name), 0, "/", None
    if group:
        gentry = _lookup(groups, group, "group", option, "/etc/group")
        gid = int(gentry[2]) if gentry else int(group)
    if uid > 0xFFFFFFFE or gid > 0xFFFFFFFE:
        raise InvalidOption("%s: uid/gid out of range in %r" % (option, user))
    additional = []
    if username:  # supplementary groups the image's /etc/group lists the user in
        for parts in groups:
            members = [m.strip() for m in parts[3].split(",")] if len(parts) > 3 else []
            if username in members and parts[2].isdigit() and int(parts[2]) != gid:
                additional.append(int(parts[2]))
    result = {"uid": uid, "gid": gid}
    if additional:
        result["additionalGids"] = sorted(set(additional))
    return result, home or "/"


# -- rlimits -------------------------------------------------------------------

_RLIMITS = {"RLIMIT_NOFILE": resource.RLIMIT_NOFILE, "RLIMIT_NPROC": resource.RLIMIT_NPROC}


def host_hard_limit(name):
    _soft, hard = resource.getrlimit(_RLIMITS[name])
    return None if hard == resource.RLIM_INFINITY else hard


def capped_rlimits(wanted=None):
    """OCI rlimits; ``wanted`` {RLIMIT_X: n}; each value capped at the host's hard limit."""
    wanted = dict(wanted or {"RLIMIT_NOFILE": NOFILE_WANTED})
    out = []
    for name in sorted(wanted):
        if name not in _RLIMITS:
            raise InvalidOption("ulimits: unsupported limit %r (supported: %s)" % (name, ", ".join(sorted(_RLIMITS))))
        value = int(wanted[name])
        hard = host_hard_limit(name)
        if hard is not None:
            value = min(value, hard)
        out.append({"type": name, "hard": value, "soft": value})
    return out


# -- mounts --------------------------------------------------------------------

def _check_target(target, option):
    if not isinstance(target, str) or not target.startswith("/"):
        raise InvalidOption("%s: target %r must be an absolute path" % (option, target))
    if ".." in target.split("/") or os.path.normpath(target) == "/":
        raise InvalidOption("%s: target %r may not be / or contain .." % (option, target))
    return os.path.normpath(target)


def user_mount(mount, index=0):
    """One opts mount → an OCI mount."""
    option = "mounts[%d]" % index
    kind = mount.get("type", "bind")
    target = _check_target(mount.get("target"), option)
    extra = [str(o) for o in (mount.get("options") or [])]
    ro = ["ro"] if mount.get("read_only") else []
    if kind in ("bind", "volume"):
        source = mount.get("source")
        if not isinstance(source, str) or not source.startswith("/"):
            raise InvalidOption("%s: %s source %r must be an absolute host path" % (option, kind, source))
        if not os.path.exists(source):
            raise InvalidOption("%s: %s source %s does not exist" % (option, kind, source))
        return {"destination": target, "type": "bind", "source": source, "options": ["rbind", "rprivate"] + ro + extra}
    if kind == "tmpfs":
        return {"destination": target, "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "noexec"] + ro + extra}
    raise InvalidOption("%s: unknown mount type %r (use bind, volume or tmpfs)" % (option, kind))


# -- the spec ------------------------------------------------------------------

def _namespaces(opts):
    ns = [{"type": "mount"}]
    modes = {"pid": opts.get("pid_mode"), "ipc": opts.get("ipc_mode"), "uts": opts.get("uts_mode")}
    for kind in ("pid", "ipc", "uts"):
        mode = modes[kind] or "private"
        if mode not in ("private", "host"):
            raise InvalidOption("%s_mode: %r is not supported (use private or host)" % (kind, mode))
        if mode == "private":
            ns.append({"type": kind})
    net = opts.get("network_mode") or "none"
    if net not in ("none", "host"):
        raise InvalidOption("network_mode: %r is not supported (use none or host)" % net)
    if net == "none":
        ns.append({"type": "network"})
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):  # pure v2: private cgroupns as Docker does
        ns.append({"type": "cgroup"})
    return ns


def _args(image_config, opts):
    entrypoint = opts.get("entrypoint")
    command = opts.get("command")
    if isinstance(entrypoint, str):
        entrypoint = [entrypoint]
    if isinstance(command, str):
        command = [command]
    if entrypoint is None:
        entrypoint = image_config.get("Entrypoint") or []
        if command is None:
            command = image_config.get("Cmd") or []
    elif command is None:
        command = []  # Docker: an explicit entrypoint drops the image's Cmd
    args = [str(a) for a in list(entrypoint) + list(command)]
    if not args:
        raise InvalidOption("command: the image has no Entrypoint or Cmd; give command or entrypoint")
    return args


def _env(image_config, opts, home, hostname):
    env = {}
    order = []
    for item in image_config.get("Env") or []:
        key, _sep, value = str(item).partition("=")
        if key not in env:
            order.append(key)
        env[key] = value
    for key, value in (opts.get("env") or {}).items():
        key = str(key)
        if not key or "=" in key:
            raise InvalidOption("env: invalid variable name %r" % key)
        if key not in env:
            order.append(key)
        env[key] = "" if value is None else str(value)
    for key, value in (("PATH", DEFAULT_PATH), ("HOME", home), ("HOSTNAME", hostname)):
        if key not in env and value:
            order.append(key)
            env[key] = value
    return ["%s=%s" % (k, env[k]) for k in order]


def build_spec(image_config, opts, rootfs):
    """OCI config.json (a dict) for the image config ``image_config`` and the container options ``opts``.

    ``rootfs`` is the container's mounted root (read for /etc/passwd and
    /etc/group only).  Raises InvalidOption naming the option at fault.
    """
    image_config = image_config or {}
    opts = opts or {}
    privileged = bool(opts.get("privileged"))
    caps = effective_capabilities(opts.get("capabilities"), privileged)
    user, home = resolve_user(rootfs, opts.get("user") or image_config.get("User"))
    hostname = opts.get("hostname")
    if hostname and (opts.get("uts_mode") or "private") == "host":
        raise InvalidOption("hostname: cannot be set with uts_mode host")
    cwd = opts.get("working_dir") or image_config.get("WorkingDir") or "/"
    if not cwd.startswith("/"):
        raise InvalidOption("working_dir: %r must be an absolute path" % cwd)
    process = {
        "terminal": bool(opts.get("terminal", False)),
        "user": user,
        "args": _args(image_config, opts),
        "env": _env(image_config, opts, home, hostname),
        "cwd": cwd,
        "capabilities": {"bounding": list(caps), "effective": list(caps), "permitted": list(caps)},
        "rlimits": capped_rlimits(opts.get("ulimits")),
        "noNewPrivileges": not privileged,
    }
    user_mounts = [user_mount(m, i) for i, m in enumerate(opts.get("mounts") or [])]
    taken = {m["destination"] for m in user_mounts}
    mounts = [m for m in _default_mounts(privileged) if m["destination"] not in taken] + user_mounts
    resources = dict(opts.get("resources") or {})
    resources.setdefault("devices", default_device_rules(privileged))
    linux = {
        "namespaces": _namespaces(opts),
        "resources": resources,
    }
    if opts.get("cgroups_path"):
        linux["cgroupsPath"] = opts["cgroups_path"]
    if not privileged:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
        linux["seccomp"] = _seccomp.default_profile(caps)
    spec = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": bool(opts.get("read_only"))},
        "mounts": mounts,
        "linux": linux,
    }
    if hostname:
        spec["hostname"] = hostname
    labels = opts.get("labels") or {}
    if labels:
        spec["annotations"] = {str(k): str(v) for k, v in labels.items()}
    return spec
