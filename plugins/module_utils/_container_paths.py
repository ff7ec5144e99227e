# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a container's files live in the store, and the names derived from its name.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

One place for the layout so the spec, the runtime driver, the supervisor and
the container logic agree without importing each other::

    containers/<name>/bundle/config.json   OCI runtime spec
    containers/<name>/bundle/rootfs/       overlay mountpoint
    containers/<name>/upper, work          the container layer
    containers/<name>/state.json           desired configuration (owned by _containers)
    containers/<name>/monitor.json         what the supervisor observed
    containers/<name>/logs/container.log   stdout+stderr, rotated by size
"""

from __future__ import annotations

import json
import os
import re

from ansible_collections.intermodal.containers.plugins.module_utils._errors import IntermodalError

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
RUNTIME_ID_PREFIX = "intermodal-"
CGROUP_PARENT = "intermodal"


class InvalidName(IntermodalError):
    """A container, volume or cgroup name that is unsafe as a file name."""


def validate_name(name, what="container"):
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidName("invalid %s name %r: use 1-63 of [a-zA-Z0-9_.-], starting with a letter or digit"
                          % (what, name))
    return name


class ContainerPaths:
    """Paths and identifiers for one container."""

    def __init__(self, store_root, name):
        self.name = validate_name(name)
        self.store_root = os.path.abspath(store_root)
        self.dir = os.path.join(self.store_root, "containers", name)
        self.bundle = os.path.join(self.dir, "bundle")
        self.config = os.path.join(self.bundle, "config.json")
        self.rootfs = os.path.join(self.bundle, "rootfs")
        self.upper = os.path.join(self.dir, "upper")
        self.work = os.path.join(self.dir, "work")
        self.state = os.path.join(self.dir, "state.json")
        self.monitor = os.path.join(self.dir, "monitor.json")
        self.logs_dir = os.path.join(self.dir, "logs")
        self.log = os.path.join(self.logs_dir, "container.log")
        self.pid_file = os.path.join(self.dir, "container.pid")
        self.monitor_pid_file = os.path.join(self.dir, "monitor.pid")

    @property
    def runtime_id(self):
        """The container ID crun/runc know it by."""
        return RUNTIME_ID_PREFIX + self.name

    @property
    def cgroup(self):
        """cgroup path relative to each hierarchy's root (v1) or the unified root (v2)."""
        return "%s/%s" % (CGROUP_PARENT, self.name)

    @property
    def unit_name(self):
        """systemd unit used where systemd is PID 1."""
        return "intermodal-container-%s.service" % self.name


def containers_dir(store_root):
    return os.path.join(os.path.abspath(store_root), "containers")


def recorded_states(store_root):
    """(name, state.json dict) of every container in the store; unreadable ones are skipped."""
    root = containers_dir(store_root)
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        try:
            with open(os.path.join(root, name, "state.json")) as handle:
                out.append((name, json.load(handle)))
        except (OSError, ValueError):
            continue
    return out


def volumes_dir(store_root):
    return os.path.join(os.path.abspath(store_root), "volumes")
