# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place where core errors become Ansible failures.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

Modules call ``run(module, task)``: ``task()`` returns the result dict, and
any IntermodalError is turned into ``fail_json`` with its message, its
details and a traceback. The core never sees AnsibleModule; this adapter only
receives one, so it needs no Ansible import of its own.
"""

from __future__ import annotations

import traceback

from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    IntermodalError,
    MissingDependency,
)


def missing_library_message(library, reason, install_hint):
    return "Failed to import the required Python library (%s) on the target, needed %s. %s" % (
        library, reason, install_hint)


def run(module, task):
    """Run task() and exit the module with its result, or fail cleanly."""
    try:
        result = task()
    except MissingDependency as exc:
        module.fail_json(msg=str(exc), exception=traceback.format_exc())
    except IntermodalError as exc:
        details = {k: v for k, v in exc.details.items() if k not in ("msg", "changed", "failed")}
        module.fail_json(msg=str(exc), error=type(exc).__name__, exception=traceback.format_exc(), **details)
    module.exit_json(**result)
