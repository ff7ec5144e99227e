# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Containers as they are, and the acts that change them: create, start, stop, update live, remove.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

A container is a directory in the store: an overlay root filesystem (image
layers as lowerdirs, the container layer as upperdir), an OCI bundle, the
desired options it was created with (``state.json``), and whatever the
supervisor observed. The desired options are what later runs compare with;
limits are also read back from cgroupfs so drift made by hand is seen.
"""

from __future__ import annotations

import json
import os
import time

from ansible_collections.intermodal.containers.plugins.module_utils._cgroups import (
    Cgroup,
    InvalidOption,
    to_oci_resources,
)
from ansible_collections.intermodal.containers.plugins.module_utils._container_paths import (
    ContainerPaths,
    containers_dir,
)
from ansible_collections.intermodal.containers.plugins.module_utils._content import remove_tree
from ansible_collections.intermodal.containers.plugins.module_utils._errors import StoreError
from ansible_collections.intermodal.containers.plugins.module_utils._manifest import chain_ids
from ansible_collections.intermodal.containers.plugins.module_utils._options import LIMIT_OPTIONS, split
from ansible_collections.intermodal.containers.plugins.module_utils._rootfs import (
    ensure_short_links,
    is_mounted,
    mount_overlay,
    overlay_remount_argv,
    unmount,
)
from ansible_collections.intermodal.containers.plugins.module_utils._runtime import Runtime
from ansible_collections.intermodal.containers.plugins.module_utils._spec import build_spec
from ansible_collections.intermodal.containers.plugins.module_utils._supervise import Supervisor
from ansible_collections.intermodal.containers.plugins.module_utils._volumes import Volume

STATE_VERSION = 1


def _write_json(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(value, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(tmp, path)


def check_mount_sources(store_root, mounts):
    """Bind sources must exist before anything is created; volumes are created on demand."""
    for mount in mounts or []:
        if mount["type"] == "bind" and not os.path.exists(mount["source"]):
            raise InvalidOption("mounts: bind source %s does not exist (target %s)" % (mount["source"], mount["target"]))
        if mount["type"] == "volume":
            Volume(store_root, mount["source"])  # validates the name


class ContainerService:
    """Containers in one store, run by one supervisor."""

    def __init__(self, store_root, images, supervisor=None):
        self.store_root = os.path.abspath(store_root)
        self.images = images
        self._supervisor = supervisor

    @property
    def supervisor(self):
        if self._supervisor is None:
            self._supervisor = Supervisor.for_host(self.store_root)
        return self._supervisor

    def paths(self, name):
        return ContainerPaths(self.store_root, name)

    def names(self):
        try:
            entries = sorted(os.listdir(containers_dir(self.store_root)))
        except FileNotFoundError:
            return []
        return [n for n in entries if os.path.isfile(os.path.join(containers_dir(self.store_root), n, "state.json"))]

    # -- reading -------------------------------------------------------------

    def recorded(self, name):
        paths = self.paths(name)
        try:
            with open(paths.state) as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError("container %s state is unreadable: %s" % (name, exc))

    def status(self, name):
        return self.supervisor.status(self.paths(name))

    def stats(self, name):
        cgroup = Cgroup(self.paths(name).cgroup)
        if not cgroup.exists():
            return {}
        return cgroup.stats()

    def limit_drift(self, name, desired):
        """Limits whose cgroupfs value differs from ``desired`` (changed by hand, or lost).

        Compared by _cgroups in each file's own units, so a v2 cpu.weight that
        cannot hold cpu_shares exactly is not mistaken for drift.
        """
        cgroup = Cgroup(self.paths(name).cgroup)
        if not cgroup.exists():
            return []
        return cgroup.changed_keys({key: desired.get(key) for key in LIMIT_OPTIONS})

    def describe(self, name):
        recorded = self.recorded(name)
        if recorded is None:
            return {}
        paths = self.paths(name)
        status = self.status(name)
        return {
            "name": name,
            "id": paths.runtime_id,
            "image": recorded["image"],
            "image_digest": recorded["image_digest"],
            "image_id": recorded.get("image_id"),
            "created": recorded.get("created"),
            "config": recorded["options"],
            "state": status,
            "running": status.get("status") in ("running", "restarting"),
            "stats": self.stats(name) if status.get("status") == "running" else {},
            "rootfs": paths.rootfs,
            "log_path": paths.log,
            "cgroup": paths.cgroup,
        }

    # -- acting --------------------------------------------------------------

    def create(self, name, image_name, record, desired):
        """Container layer, overlay root, bundle and state; nothing runs yet.

        Holds the store lock shared until state.json names the layers, so an
        image removal running at the same time cannot free them underneath.
        """
        with self.images.content.lock("store", shared=True):
            self._create(name, image_name, record, desired)

    def _create(self, name, image_name, record, desired):
        paths = self.paths(name)
        process, limits, _policy = split(desired)
        check_mount_sources(self.store_root, process["mounts"])
        runtime = Runtime(process["runtime"])
        runtime.check()
        config = self.images.config_of(record)
        lowers = self.images.layers.lower_dirs(chain_ids(config.diff_ids)[-1]) if config.diff_ids else []
        for path in (paths.dir, paths.upper, paths.work, paths.rootfs, paths.logs_dir):
            os.makedirs(path, mode=0o700, exist_ok=True)
        try:
            mounts = self._resolve_mounts(process["mounts"])
            short = ensure_short_links(self.store_root, lowers)
            if not is_mounted(paths.rootfs):
                mount_overlay(short, paths.upper, paths.work, paths.rootfs)
            opts = dict(process)
            opts["mounts"] = mounts
            opts["capabilities"] = {"add": process.get("capabilities") or [], "drop": process.get("cap_drop") or []}
            if process.get("uts_mode") != "host":
                opts["hostname"] = process.get("hostname") or name
            opts["resources"] = to_oci_resources(limits)
            opts["cgroups_path"] = "/" + paths.cgroup
            spec = build_spec(config.config or {}, opts, paths.rootfs)
            _write_json(paths.config, spec)
            _write_json(paths.state, {
                "version": STATE_VERSION,
                "name": name,
                "image": image_name,
                "image_digest": record["manifest_digest"],
                "image_id": record["config_digest"],
                "lowers": lowers,
                "options": desired,
                "mounts": process["mounts"],
                "stop_signal": desired.get("stop_signal") or (config.config or {}).get("StopSignal") or "SIGTERM",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })
        except Exception:
            self._teardown(paths)
            raise

    def _resolve_mounts(self, mounts):
        resolved = []
        for mount in mounts or []:
            mount = dict(mount)
            if mount["type"] == "volume":
                volume = Volume(self.store_root, mount["source"])
                volume.ensure(None, None, None, None)
                mount["source"] = volume.data
                mount["type"] = "bind"
            resolved.append(mount)
        return resolved

    def policy(self, recorded):
        """Supervision settings in the supervisor's vocabulary."""
        opts = recorded["options"]
        return {
            "restart_policy": opts.get("restart_policy") or "no",
            "max_retries": opts.get("restart_retries"),
            "stop_signal": recorded.get("stop_signal") or opts.get("stop_signal") or "SIGTERM",
            "stop_timeout": opts.get("stop_timeout"),
            "log_max_size": opts.get("log_max_size"),
            "log_max_files": opts.get("log_max_files"),
        }

    def start(self, name):
        recorded = self.recorded(name)
        paths = self.paths(name)
        runtime = Runtime(recorded["options"]["runtime"])
        runtime.check()
        short = ensure_short_links(self.store_root, recorded["lowers"])
        if not is_mounted(paths.rootfs):
            # After a reboot the overlay is gone; the layers are not.
            mount_overlay(short, paths.upper, paths.work, paths.rootfs)
        extra = {}
        if self.supervisor.kind == "systemd":
            # The unit remounts it when it starts at boot, before any module run.
            extra["mount_argv"] = overlay_remount_argv(short, paths.upper, paths.work, paths.rootfs)
        self.supervisor.start(paths, runtime, self.policy(recorded), **extra)

    def stop(self, name):
        recorded = self.recorded(name)
        policy = self.policy(recorded)
        self.supervisor.stop(self.paths(name), Runtime(recorded["options"]["runtime"]),
                             policy["stop_signal"], policy.get("stop_timeout"))

    def update_limits(self, name, desired):
        """Apply changed limits to the running cgroup and record them for the next start."""
        recorded = self.recorded(name)
        limits = split(desired)[1]
        paths = self.paths(name)
        cgroup = Cgroup(paths.cgroup)
        if cgroup.exists():
            # Every limit is managed: an option left unset goes back to its default.
            cgroup.apply({key: desired.get(key) for key in LIMIT_OPTIONS})
        self._record_options(name, recorded, desired)
        try:
            with open(paths.config) as handle:
                spec = json.load(handle)
            spec.setdefault("linux", {})["resources"] = to_oci_resources(limits)
            _write_json(paths.config, spec)
        except (OSError, ValueError):
            pass

    def update_policy(self, name, desired):
        recorded = self.recorded(name)
        recorded = self._record_options(name, recorded, desired)
        self.supervisor.update_policy(self.paths(name), self.policy(recorded))

    def _record_options(self, name, recorded, desired):
        recorded = dict(recorded)
        recorded["options"] = desired
        if desired.get("stop_signal"):
            recorded["stop_signal"] = desired["stop_signal"]
        _write_json(self.paths(name).state, recorded)
        return recorded

    def remove(self, name):
        paths = self.paths(name)
        recorded = self.recorded(name)
        runtime = Runtime(recorded["options"]["runtime"]) if recorded else None
        status = self.supervisor.status(paths)
        if status.get("status") in ("running", "restarting"):
            self.stop(name)
        self.supervisor.remove(paths, runtime)
        if runtime is not None:
            try:
                runtime.delete(paths.runtime_id, force=True)
            except Exception:  # pylint: disable=broad-except
                pass  # already gone is the usual case
        self._teardown(paths)
        # Layers of an image removed while this container ran are free now.
        if recorded and recorded.get("image") and self.images.names().get(recorded["image"], {}).get(
                "manifest_digest") != recorded.get("image_digest"):
            self.images.prune()

    def _teardown(self, paths):
        if is_mounted(paths.rootfs):
            unmount(paths.rootfs)
        cgroup = Cgroup(paths.cgroup)
        if cgroup.exists():
            cgroup.kill_all()
            cgroup.remove()
        remove_tree(paths.dir)
