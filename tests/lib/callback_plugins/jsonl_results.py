# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-only callback: every task result as one JSON line.

Enabled by tests/integration/conftest.py through ANSIBLE_CALLBACK_PLUGINS and
ANSIBLE_CALLBACKS_ENABLED; writes to the file named by
INTERMODAL_JSONL_RESULTS.  Lines are ``{"type": "task", ...}`` per host and
task, and one ``{"type": "stats", "recap": {...}}`` at the end.
ansible-core ships no machine-readable stdout callback, hence this file.
"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: jsonl_results
type: aggregate
short_description: write task results as JSON lines (tests only)
description:
  - Appends one JSON object per task result to the file named by the
    INTERMODAL_JSONL_RESULTS environment variable.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "jsonl_results"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._path = os.environ.get("INTERMODAL_JSONL_RESULTS")

    def _write(self, record):
        if not self._path:
            return
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def _result_dict(self, result):
        raw = getattr(result, "_result", None)
        if raw is None:
            raw = getattr(result, "result", {})
        # _dump_results drops internal keys and honours no_log.
        try:
            data = json.loads(self._dump_results(raw, indent=None))
        except (TypeError, ValueError):
            return {"unserializable": str(raw)}
        # _dump_results strips "diff" for screen output; tests assert on it.
        # A no_log result was already censored before any callback saw it.
        if isinstance(raw, dict) and "diff" in raw and "censored" not in data:
            try:
                data["diff"] = json.loads(json.dumps(raw["diff"], default=str))
            except (TypeError, ValueError):
                pass
        return data

    def _task_record(self, result, status):
        task = getattr(result, "task", None) or getattr(result, "_task", None)
        host = getattr(result, "host", None) or getattr(result, "_host", None)
        data = self._result_dict(result)
        self._write({
            "type": "task",
            "status": status,
            "host": host.get_name() if host is not None else None,
            "name": task.get_name() if task is not None else None,
            "action": getattr(task, "action", None),
            "changed": bool(data.get("changed", False)),
            "failed": status == "failed",
            "skipped": status == "skipped",
            "unreachable": status == "unreachable",
            "ignore_errors": bool(getattr(task, "ignore_errors", False)),
            "result": data,
        })

    def v2_runner_on_ok(self, result, **kwargs):
        self._task_record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._task_record(result, "failed")

    def v2_runner_on_skipped(self, result, **kwargs):
        self._task_record(result, "skipped")

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._task_record(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        recap = {}
        for host in sorted(stats.processed.keys()):
            recap[host] = stats.summarize(host)
        self._write({"type": "stats", "recap": recap})
