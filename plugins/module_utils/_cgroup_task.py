# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the cgroup module does, without Ansible: validate, compare, change, report.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

Everything is validated (limits, names, PIDs, controllers) before the first
directory is created, so bad input changes nothing. Check mode runs the same
comparison as the real run and stops before writing.
"""

from __future__ import annotations

import os

from ansible_collections.intermodal.containers.plugins.module_utils._cgroups import (
    LIMIT_KEYS,
    Cgroup,
    CgroupError,
    InvalidOption,
    normalize_limits,
)
from ansible_collections.intermodal.containers.plugins.module_utils._container_paths import validate_name


def cgroup_relpath(name, parent):
    validate_name(name, "cgroup")
    parts = [p for p in (parent or "").strip("/").split("/") if p]
    for part in parts:
        try:
            validate_name(part, "cgroup parent")
        except Exception:
            raise InvalidOption("parent: %r is not a valid cgroup path (use names of [a-zA-Z0-9_.-] joined by /)"
                                % parent) from None
    return "/".join(parts + [name])


def _validate_pids(pids):
    out = []
    for pid in pids or []:
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise InvalidOption("pids: %r is not a process id" % (pid,))
        if not os.path.exists("/proc/%d" % pid):
            raise InvalidOption("pids: no process with pid %d" % pid)
        if pid not in out:
            out.append(pid)
    return out


class CgroupTask:
    """params: name, parent, state, pids, force and the limit keys."""

    def __init__(self, params, check_mode=False, layout=None):
        self.params = params
        self.check_mode = check_mode
        self.layout = layout

    def run(self):
        params = self.params
        relpath = cgroup_relpath(params["name"], params.get("parent"))
        limits = normalize_limits({key: params.get(key) for key in LIMIT_KEYS})
        pids = _validate_pids(params.get("pids"))
        cgroup = Cgroup(relpath, self.layout)
        if params.get("state", "present") == "absent":
            return self._absent(cgroup)
        cgroup.check(limits)
        return self._present(cgroup, limits, pids)

    def _state(self, cgroup):
        exists = cgroup.exists()
        return {"exists": exists, "limits": cgroup.read() if exists else {},
                "pids": cgroup.pids() if exists else []}

    def _present(self, cgroup, limits, pids):
        before = self._state(cgroup)
        actions, changed_keys = [], []
        if not cgroup.complete():
            # Also when only some hierarchies have it: the missing ones are created.
            actions.append("Created cgroup %s" % cgroup.relpath)
            if not self.check_mode:
                cgroup.create()
            elif not before["exists"]:
                # A new cgroup starts at the defaults (None), so every non-default value is a write.
                changed_keys = [key for key in LIMIT_KEYS if limits.get(key) is not None]
        if before["exists"] or not self.check_mode:
            if self.check_mode:
                changed_keys = cgroup.changed_keys(limits)
            else:
                changed_keys = cgroup.apply(limits)
        if changed_keys:
            actions.append("Set %s on cgroup %s" % (", ".join(changed_keys), cgroup.relpath))
        to_move = [pid for pid in pids if pid not in before["pids"]]
        if to_move:
            actions.append("Moved pids %s into cgroup %s" % (", ".join(map(str, to_move)), cgroup.relpath))
            if not self.check_mode:
                for pid in to_move:
                    cgroup.add_pid(pid)
        if self.check_mode:
            after = {"exists": True, "limits": self._predicted(before["limits"], limits),
                     "pids": sorted(set(before["pids"]) | set(to_move))}
        else:
            after = self._state(cgroup)
        return self._result(cgroup, actions, changed_keys, before, after)

    @staticmethod
    def _predicted(current, limits):
        predicted = {key: None for key in LIMIT_KEYS}
        predicted.update(current or {})
        predicted.update(limits)
        return predicted

    def _absent(self, cgroup):
        present = cgroup.exists()
        before = {"exists": present, "limits": cgroup.read() if present else {},
                  "pids": cgroup.pids() if present else []}
        actions = []
        if present:
            if before["pids"] and not self.params.get("force"):
                raise CgroupError("cgroup %s still has processes %s; stop them or set force=true to kill them"
                                  % (cgroup.relpath, before["pids"]))
            if before["pids"]:
                actions.append("Killed pids %s in cgroup %s" % (", ".join(map(str, before["pids"])), cgroup.relpath))
            actions.append("Removed cgroup %s" % cgroup.relpath)
            if not self.check_mode:
                if before["pids"]:
                    cgroup.kill_all()
                cgroup.remove()
        after = {"exists": False, "limits": {}, "pids": []}
        return self._result(cgroup, actions, [], before, after)

    def _result(self, cgroup, actions, changed_keys, before, after):
        exists = after["exists"] and not self.check_mode
        info = {
            "name": self.params["name"],
            "path": cgroup.relpath,
            "mode": cgroup.layout.mode,
            "paths": cgroup.paths,
            "exists": after["exists"],
            "limits": after["limits"],
            "pids": after["pids"],
            "stats": cgroup.stats() if exists or (self.check_mode and before["exists"]) else {},
        }
        return {"changed": bool(actions), "actions": actions, "changed_limits": changed_keys,
                "cgroup": info, "diff": {"before": before, "after": after}}
