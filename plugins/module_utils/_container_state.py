# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Desired vs actual for the container module: decide every act first, then act unless in check mode.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

A container is recreated only when an option that cannot change live, or the
image digest, really changed. Limits and the restart policy change live, on
the running container, without a restart.
"""

from __future__ import annotations

from ansible_collections.intermodal.containers.plugins.module_utils._container_paths import validate_name
from ansible_collections.intermodal.containers.plugins.module_utils._errors import ImageNotFound
from ansible_collections.intermodal.containers.plugins.module_utils._options import (
    LIMITS,
    POLICY,
    BY_NAME,
    compare,
    desired_from_params,
)
from ansible_collections.intermodal.containers.plugins.module_utils._containers import check_mount_sources
from ansible_collections.intermodal.containers.plugins.module_utils._platform import parse_platform
from ansible_collections.intermodal.containers.plugins.module_utils._reference import parse_reference

RUNNING = ("running", "restarting")


class ContainerTask:
    def __init__(self, images, containers, params, check_mode=False):
        self.images = images
        self.containers = containers
        self.params = params
        self.check_mode = check_mode
        self.actions = []
        self.changed = False
        # Everything is validated before anything is touched.
        self.name = validate_name(params["name"])
        self.state = params.get("state") or "started"
        self.desired = None
        self.ref = None
        if self.state != "absent":
            if not params.get("image"):
                raise ImageNotFound("image is required unless state=absent")
            self.ref = parse_reference(params["image"])
            self.platform = parse_platform(params["platform"]) if params.get("platform") else None
            self.desired = desired_from_params(params)
            check_mount_sources(containers.store_root, self.desired["mounts"])

    def _act(self, message, func=None, *args):
        self.changed = True
        self.actions.append(message)
        if not self.check_mode and func is not None:
            func(*args)

    def run(self):
        recorded = self.containers.recorded(self.name)
        before = self._summary(recorded)
        if self.state == "absent":
            if recorded is not None:
                self._act("Removed container %s" % self.name, self.containers.remove, self.name)
            return self._result(before, {"exists": False})
        record = self._image()
        was_running = recorded is not None and self.containers.status(self.name).get("status") in RUNNING
        recreate, live = self._plan(recorded, record)
        if recorded is not None and recreate:
            self._act("Removed container %s to recreate it (%s)" % (self.name, ", ".join(recreate)),
                      self.containers.remove, self.name)
            recorded = None
        if recorded is None:
            self._act("Created container %s from %s" % (self.name, self.ref),
                      self.containers.create, self.name, str(self.ref), record, self.desired)
        else:
            limits = [d for d in live if BY_NAME[d[0]].target == LIMITS]
            policy = [d for d in live if BY_NAME[d[0]].target == POLICY]
            if limits:
                self._act("Updated limits of %s live: %s" % (self.name, ", ".join(d[0] for d in limits)),
                          self.containers.update_limits, self.name, self.desired)
            if policy:
                self._act("Updated supervision of %s live: %s" % (self.name, ", ".join(d[0] for d in policy)),
                          self.containers.update_policy, self.name, self.desired)
        self._reach_state(was_running, bool(recreate))
        after = self._summary(self.containers.recorded(self.name)) if not self.check_mode else {
            "exists": True, "options": self.desired, "image": str(self.ref),
            "status": "running" if self.state in ("started", "restarted") else before.get("status", "created")}
        return self._result(before, after)

    def _image(self):
        """The image record to run, pulling per the pull policy. None only in check mode before a pull."""
        policy = self.params.get("pull") or "missing"
        record = self.images.record(self.ref)
        complete = record is not None and self.images.is_complete(record)
        if policy == "never" or (policy == "missing" and complete):
            if not complete:
                raise ImageNotFound("image %s is not in the store at %s and pull=never"
                                    % (self.ref, self.images.content.root))
            return record
        remote = self.images.remote_digest(self.ref)  # one HEAD; also proves the image exists
        if complete and record.get("digest") == remote:
            return record
        self.changed = True
        self.actions.append("Pulled image %s (%s)" % (self.ref, remote))
        if self.check_mode:
            return {"digest": remote, "manifest_digest": None}
        return self.images.pull(self.ref, self.platform)

    def _plan(self, recorded, record):
        """(reasons to recreate, live differences)."""
        if recorded is None:
            return [], []
        comparisons = self.params.get("comparisons") or {}
        reasons = []
        if self.params.get("recreate"):
            reasons.append("recreate=true")
        image_mode = comparisons.get("image", comparisons.get("*", "strict"))
        if image_mode != "ignore" and record.get("manifest_digest") != recorded["image_digest"]:
            reasons.append("image %s" % (record.get("manifest_digest") or record.get("digest")))
        diffs = compare(self.desired, recorded["options"], comparisons)
        reasons.extend(d[0] for d in diffs if not d[3])
        live = [d for d in diffs if d[3]]
        if not reasons:
            seen = {d[0] for d in live}
            for key in self.containers.limit_drift(self.name, self.desired):
                mode = comparisons.get(key, comparisons.get("*", "strict"))
                if key not in seen and mode != "ignore":
                    live.append((key, "drifted in cgroupfs", self.desired.get(key), True))
        return reasons, live

    def _reach_state(self, was_running, recreated):
        status = self.containers.status(self.name).get("status") if not self.check_mode else None
        running = status in RUNNING if status is not None else was_running and not recreated
        if self.state == "restarted":
            if running:
                self._act("Stopped container %s" % self.name, self.containers.stop, self.name)
            self._act("Started container %s" % self.name, self.containers.start, self.name)
        elif self.state == "started" or (self.state == "present" and recreated and was_running):
            if not running:
                self._act("Started container %s" % self.name, self.containers.start, self.name)
        elif self.state == "stopped" and running:
            self._act("Stopped container %s" % self.name, self.containers.stop, self.name)

    def _summary(self, recorded):
        if recorded is None:
            return {"exists": False}
        return {
            "exists": True,
            "image": recorded["image"],
            "image_digest": recorded["image_digest"],
            "options": recorded["options"],
            "status": self.containers.status(self.name).get("status"),
        }

    def _result(self, before, after):
        container = self.containers.describe(self.name) if not self.check_mode else (
            self.containers.describe(self.name) or {"name": self.name})
        return {"changed": self.changed, "actions": self.actions, "container": container,
                "diff": {"before": before, "after": after}}
