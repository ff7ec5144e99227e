#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_info
short_description: Facts about images in the local intermodal image store
version_added: 0.1.0
description:
  - Returns one, several or all images in the store on the target, with their digests, configuration and layers.
  - Reads the store only; never contacts a registry.
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
    description:
      - Image references to report, normalised as in M(intermodal.containers.image).
      - Omit to report every image in the store. Names not in the store are listed in RV(missing).
    type: list
    elements: str
seealso:
  - module: intermodal.containers.image
"""

EXAMPLES = r"""
---
- name: All images in the store
  intermodal.containers.image_info:
  register: all_images

- name: One image
  intermodal.containers.image_info:
    name: busybox:1.36
  register: busybox

- name: Show its digest
  ansible.builtin.debug:
    msg: "{{ busybox.images[0].digest }}"
"""

RETURN = r"""
images:
  description: The images found, sorted by name, each as returned by M(intermodal.containers.image).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The normalised reference.
      type: str
    digest:
      description: What the name resolved to in its registry.
      type: str
    manifest_digest:
      description: The platform manifest that was unpacked.
      type: str
    id:
      description: The config digest (the image ID).
      type: str
    platform:
      description: os/architecture[/variant].
      type: str
    config:
      description: The image's runtime configuration.
      type: dict
    layers:
      description: Layers, base first.
      type: list
      elements: dict
    size:
      description: Sum of the compressed layer sizes in bytes.
      type: int
missing:
  description: Requested names that are not in the store.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.intermodal.containers.plugins.module_utils._content import DEFAULT_ROOT
from ansible_collections.intermodal.containers.plugins.module_utils._images import ImageService
from ansible_collections.intermodal.containers.plugins.module_utils._module import run
from ansible_collections.intermodal.containers.plugins.module_utils._reference import parse_reference


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="list", elements="str"),
            store_root=dict(type="path", default=DEFAULT_ROOT),
        ),
        supports_check_mode=True,
    )

    def task():
        wanted = [str(parse_reference(n)) for n in module.params["name"]] if module.params["name"] else None
        service = ImageService(module.params["store_root"])
        stored = service.names()
        names = sorted(stored) if wanted is None else [n for n in wanted if n in stored]
        images = [service.describe(n, stored[n]) for n in names]
        missing = [n for n in (wanted or []) if n not in stored]
        return {"changed": False, "images": images, "missing": missing}

    run(module, task)


if __name__ == "__main__":
    main()
