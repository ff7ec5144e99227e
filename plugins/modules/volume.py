#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: volume
short_description: Named volumes for containers, with tar export and import for backups
version_added: 0.1.0
description:
  - Manages named volumes in the intermodal store on the target. A volume is a directory that containers
    mount and that outlives them; several containers may share one.
  - Exports a volume to a deterministic tar and imports one back, for backups and migrations.
author:
  - intermodal.containers contributors (@intermodal)
extends_documentation_fragment:
  - intermodal.containers.attributes
  - intermodal.containers.store
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
    details:
      - An export of unchanged data produces the same bytes and reports no change.
      - An import reports a change only when the tar's content differs from the volume's.
options:
  name:
    description: Volume name (1-63 of C([a-zA-Z0-9_.-])).
    type: str
    required: true
  state:
    description:
      - V(present) creates the volume or adjusts its labels, owner and mode.
      - V(absent) removes it and its data. It refuses while a container uses the volume, unless O(force=true).
    type: str
    choices: [present, absent]
    default: present
  labels:
    description: Labels; the volume's labels become exactly these when set.
    type: dict
  owner:
    description: Owner of the volume's data directory, as a uid or a host user name.
    type: str
  group:
    description: Group of the volume's data directory, as a gid or a host group name.
    type: str
  mode:
    description: Mode of the volume's data directory, in octal such as C('0750').
    type: str
  export_to:
    description:
      - Write a tar of the volume's data to this path on the target. The tar is deterministic, so an
        unchanged volume exported again reports no change.
    type: path
  import_from:
    description:
      - Replace the volume's data with the content of this tar (plain, gzip or zstd) on the target.
        Entries are applied root-confined; nothing is written outside the volume.
    type: path
  force:
    description: Remove the volume even if containers use it.
    type: bool
    default: false
seealso:
  - module: intermodal.containers.container
"""

EXAMPLES = r"""
---
- name: A volume for a database, owned by the container's user
  intermodal.containers.volume:
    name: pgdata
    owner: "999"
    group: "999"
    mode: "0700"
    labels:
      app: postgres

- name: Back it up
  intermodal.containers.volume:
    name: pgdata
    export_to: /srv/backups/pgdata.tar

- name: Restore it
  intermodal.containers.volume:
    name: pgdata
    import_from: /srv/backups/pgdata.tar

- name: Remove it
  intermodal.containers.volume:
    name: pgdata
    state: absent
"""

RETURN = r"""
volume:
  description: The volume after the task; empty when absent.
  returned: always
  type: dict
  contains:
    name:
      description: Volume name.
      type: str
    path:
      description: Host path of the data directory that containers mount.
      type: str
    labels:
      description: Labels.
      type: dict
    owner:
      description: uid of the data directory.
      type: int
    group:
      description: gid of the data directory.
      type: int
    mode:
      description: Mode of the data directory.
      type: str
    users:
      description: Containers that mount the volume.
      type: list
      elements: str
actions:
  description: What was done, or would be done in check mode.
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.intermodal.containers.plugins.module_utils._content import DEFAULT_ROOT
from ansible_collections.intermodal.containers.plugins.module_utils._module import run
from ansible_collections.intermodal.containers.plugins.module_utils._volumes import (
    Volume,
    VolumeError,
    parse_mode,
    resolve_owner,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            labels=dict(type="dict"),
            owner=dict(type="str"),
            group=dict(type="str"),
            mode=dict(type="str"),
            export_to=dict(type="path"),
            import_from=dict(type="path"),
            force=dict(type="bool", default=False),
            store_root=dict(type="path", default=DEFAULT_ROOT),
        ),
        supports_check_mode=True,
        mutually_exclusive=[("export_to", "import_from")],
    )
    params = module.params

    def task():
        volume = Volume(params["store_root"], params["name"])
        if params["import_from"] and not os.path.isfile(params["import_from"]):
            raise VolumeError("import_from %s does not exist or is not a file" % params["import_from"])
        before = volume.actual()
        actions = []
        if params["state"] == "absent":
            if before is not None:
                if not params["force"] and volume.users():
                    volume.remove(force=False)  # raises with the users' names
                actions.append("Removed volume %s" % volume.name)
                if not module.check_mode:
                    volume.remove(force=params["force"])
            return {"changed": bool(actions), "actions": actions, "volume": {},
                    "diff": {"before": before or {}, "after": {}}}
        labels = {str(k): str(v) for k, v in params["labels"].items()} if params["labels"] is not None else None
        owner = resolve_owner(params["owner"], "owner")
        group = resolve_owner(params["group"], "group")
        mode = parse_mode(params["mode"])
        after = dict(before) if before else {"name": volume.name, "path": volume.data, "labels": {},
                                             "owner": 0, "group": 0, "mode": "0755"}
        if labels is not None:
            after["labels"] = labels
        if owner is not None:
            after["owner"] = owner
        if group is not None:
            after["group"] = group
        if mode is not None:
            after["mode"] = "%04o" % mode
        if before is None:
            actions.append("Created volume %s" % volume.name)
        elif after != before:
            actions.append("Updated volume %s" % volume.name)
        if not module.check_mode and actions:
            volume.ensure(labels, owner, group, mode)
        if params["import_from"]:
            needed = before is None or volume.import_needed(params["import_from"])
            if needed:
                actions.append("Imported %s into volume %s" % (params["import_from"], volume.name))
                if not module.check_mode:
                    volume.import_tar(params["import_from"])
        if params["export_to"]:
            needed = before is None or volume.export_needed(params["export_to"]) if volume.exists() else True
            if needed:
                actions.append("Exported volume %s to %s" % (volume.name, params["export_to"]))
                if not module.check_mode:
                    volume.export(params["export_to"])
        current = volume.actual() if not module.check_mode else after
        if current is not None:
            current = dict(current, users=volume.users())
        return {"changed": bool(actions), "actions": actions, "volume": current or {},
                "diff": {"before": before or {}, "after": after}}

    run(module, task)


if __name__ == "__main__":
    main()
