#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: container_info
short_description: Facts about containers run by intermodal.containers
version_added: 0.1.0
description:
  - Returns one, several or all containers in the store on the target, with their configuration,
    status, exit code, start and finish times, and live statistics from cgroups.
  - Reads only; never changes a container.
author:
  - intermodal.containers contributors (@intermodal)
extends_documentation_fragment:
  - intermodal.containers.attributes
  - intermodal.containers.store
attributes:
  check_mode:
    support: full
    details:
      - The module only reads, so check mode returns the same facts.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  name:
    description: Container names to report; all when omitted. Unknown names are listed in RV(missing).
    type: list
    elements: str
seealso:
  - module: intermodal.containers.container
"""

EXAMPLES = r"""
---
- name: Every container on the host
  intermodal.containers.container_info:
  register: all_containers

- name: Is web running, and how much memory does it use?
  intermodal.containers.container_info:
    name: [web]
  register: web

- name: Show it
  ansible.builtin.debug:
    msg: "{{ web.containers[0].state.status }} {{ web.containers[0].stats.memory_usage | default('-') }}"
"""

RETURN = r"""
containers:
  description: The containers found, sorted by name, each as returned by M(intermodal.containers.container).
  returned: always
  type: list
  elements: dict
missing:
  description: Requested names that do not exist.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.intermodal.containers.plugins.module_utils._container_paths import validate_name
from ansible_collections.intermodal.containers.plugins.module_utils._containers import ContainerService
from ansible_collections.intermodal.containers.plugins.module_utils._content import DEFAULT_ROOT
from ansible_collections.intermodal.containers.plugins.module_utils._images import ImageService
from ansible_collections.intermodal.containers.plugins.module_utils._module import run


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="list", elements="str"),
            store_root=dict(type="path", default=DEFAULT_ROOT),
        ),
        supports_check_mode=True,
    )

    def task():
        wanted = [validate_name(n) for n in module.params["name"]] if module.params["name"] else None
        service = ContainerService(module.params["store_root"], ImageService(module.params["store_root"]))
        existing = service.names()
        names = existing if wanted is None else [n for n in wanted if n in existing]
        return {
            "changed": False,
            "containers": [service.describe(n) for n in names],
            "missing": [n for n in (wanted or []) if n not in existing],
        }

    run(module, task)


if __name__ == "__main__":
    main()
