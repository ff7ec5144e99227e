#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image
short_description: Pull, import, tag, push and remove OCI images in a local image store
version_added: 0.1.0
description:
  - Manages images in the intermodal content-addressed store on the target host, with no container engine.
  - Pulls speak the registry protocol directly. A tag is resolved with one C(HEAD) request, everything
    after it is fetched by digest and verified, and layers are unpacked once per chain ID into
    overlay-ready directories shared by every image that uses them.
  - Every write is staged, verified and renamed into place, so an interrupted run leaves the store
    consistent and the next run cleans up after it. Concurrent runs on one host are safe and fetch each blob once.
author:
  - intermodal.containers contributors (@intermodal)
requirements:
  - Optional C(isal) or C(zlib-ng) for faster gzip, and C(zstandard) for zstd layers.
extends_documentation_fragment:
  - intermodal.containers.attributes
  - intermodal.containers.store
  - intermodal.containers.registry
attributes:
  check_mode:
    support: full
    details:
      - With O(pull=always), check mode asks the registry with a C(HEAD) request and reports a change only
        when the tag moved, so the prediction matches the real run.
  diff_mode:
    support: full
  idempotent:
    support: full
    details:
      - An import with the same tar and O(import_config) yields the same image ID and reports no change.
options:
  name:
    description:
      - The image reference, normalised the way docker does (C(busybox) is C(docker.io/library/busybox:latest)).
      - May carry a tag, a digest, or both.
    type: str
    required: true
  state:
    description:
      - V(present) makes sure the image is in the store (and tagged and pushed when asked).
      - V(absent) removes the name (and the O(tag_as) names) and frees content no other image uses.
    type: str
    choices: [present, absent]
    default: present
  source:
    description:
      - Where the image comes from when it must be created.
      - V(pull) fetches it from its registry, following O(pull).
      - V(import) builds a one-layer image from O(import_path), as C(docker import) does.
      - V(local) requires the image to be in the store already; use it to tag or push.
    type: str
    choices: [pull, import, local]
    default: pull
  pull:
    description:
      - Pull policy for O(source=pull).
      - V(missing) pulls only when the image is not in the store (no network traffic otherwise).
      - V(always) resolves the tag with one C(HEAD) request and pulls only when the digest moved.
      - V(never) fails when the image is not in the store.
    type: str
    choices: [missing, always, never]
    default: missing
  platform:
    description:
      - The platform to select from a multi-platform image, as C(os/arch[/variant]), for example C(linux/arm64).
      - Defaults to the target's own platform. For O(source=import) it is the platform written into the config.
    type: str
  import_path:
    description:
      - Path on the target of a root filesystem tar (plain, gzip or zstd) for O(source=import).
    type: path
  import_base:
    description:
      - For O(source=import), an image in the store to stack the tar on as a new top layer,
        like C(FROM base) followed by C(ADD) in a Dockerfile. Unset O(import_config) keys are inherited from it.
      - The tar may delete files of the base with whiteouts (C(.wh.NAME)) and hide a directory's
        lower contents with C(.wh..wh..opq).
    type: str
  import_config:
    description:
      - Image configuration for O(source=import).
    type: dict
    suboptions:
      cmd:
        description: Default command.
        type: list
        elements: str
      entrypoint:
        description: Entrypoint.
        type: list
        elements: str
      env:
        description: Environment, as a dict or a list of C(KEY=VALUE).
        type: raw
      workdir:
        description: Working directory.
        type: str
      user:
        description: User (name or uid[:gid]).
        type: str
      labels:
        description: Labels.
        type: dict
      exposed_ports:
        description: Ports, as C(80) or C(53/udp).
        type: list
        elements: str
      volumes:
        description: Volume paths.
        type: list
        elements: str
      stop_signal:
        description: Stop signal, for example C(SIGTERM).
        type: str
  tag_as:
    description:
      - More names for the same image in the store.
    type: list
    elements: str
    default: []
  push:
    description:
      - Push O(name) and every O(tag_as) name to its registry when the registry's copy differs
        (checked with one C(HEAD) per name). Blobs the registry already has are skipped.
    type: bool
    default: false
  timeout:
    description: Seconds to wait for each registry request.
    type: int
    default: 60
  retries:
    description: Attempts for a registry request that failed with 429, 5xx or a transport error.
    type: int
    default: 5
  max_concurrent_downloads:
    description: Layers downloaded and unpacked in parallel.
    type: int
    default: 4
notes:
  - The store root is created with mode C(0700). Layers are never unpacked with C(tarfile.extractall); a
    root-confined applier refuses entries that would escape the layer.
seealso:
  - module: intermodal.containers.image_info
"""

EXAMPLES = r"""
---
- name: Pull busybox if it is not there yet
  intermodal.containers.image:
    name: busybox:1.36

- name: Follow a moving tag (one HEAD request when nothing changed)
  intermodal.containers.image:
    name: registry.example.com/team/app:stable
    pull: always
    username: deploy
    password: "{{ registry_password }}"

- name: Pull the arm64 variant of a multi-platform image
  intermodal.containers.image:
    name: docker.io/library/alpine:3.20
    platform: linux/arm64

- name: Build an image from a rootfs tarball and push it
  intermodal.containers.image:
    name: 127.0.0.1:5000/demo/rootfs:1
    source: import
    import_path: /srv/build/rootfs.tar.gz
    import_config:
      cmd: ["/bin/sh"]
      env:
        PATH: /usr/sbin:/usr/bin:/sbin:/bin
      workdir: /
    push: true

- name: Tag a stored image and publish the tag
  intermodal.containers.image:
    name: 127.0.0.1:5000/demo/rootfs:1
    source: local
    tag_as:
      - 127.0.0.1:5000/demo/rootfs:latest
    push: true

- name: Remove an image and free what nothing else uses
  intermodal.containers.image:
    name: busybox:1.36
    state: absent
"""

RETURN = r"""
image:
  description: The image, as stored. Empty after O(state=absent).
  returned: always
  type: dict
  contains:
    name:
      description: The normalised reference.
      type: str
      sample: docker.io/library/busybox:1.36
    names:
      description: All names in the store that point at this image.
      type: list
      elements: str
    digest:
      description: What the name resolved to in its registry (an index or a manifest digest).
      type: str
      sample: sha256:7b3ccabffc97de872a30dfd234fd972a66d247c8cfc69b0550f276481852627c
    manifest_digest:
      description: The platform manifest that was unpacked.
      type: str
    id:
      description: The config digest (the image ID).
      type: str
    platform:
      description: os/architecture[/variant] of the image.
      type: str
      sample: linux/amd64
    config:
      description: The image's runtime configuration (Env, Cmd, Entrypoint, WorkingDir, User, Labels...).
      type: dict
    layers:
      description: Layers, base first, with digest, size, media_type, diff_id, chain_id and whether it is unpacked.
      type: list
      elements: dict
    size:
      description: Sum of the compressed layer sizes in bytes.
      type: int
    unpacked_size:
      description: Bytes of file data in the unpacked layers.
      type: int
actions:
  description: What was done, or would be done in check mode.
  returned: always
  type: list
  elements: str
  sample: ["Pulled image docker.io/library/busybox:1.36 (sha256:...)"]
diff:
  description: Before and after state of every name the task manages.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.intermodal.containers.plugins.module_utils._content import DEFAULT_ROOT
from ansible_collections.intermodal.containers.plugins.module_utils._image_state import ImageTask
from ansible_collections.intermodal.containers.plugins.module_utils._images import ImageService, RegistrySettings
from ansible_collections.intermodal.containers.plugins.module_utils._module import run


def argument_spec():
    return dict(
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        source=dict(type="str", default="pull", choices=["pull", "import", "local"]),
        pull=dict(type="str", default="missing", choices=["missing", "always", "never"]),
        platform=dict(type="str"),
        import_path=dict(type="path"),
        import_base=dict(type="str"),
        import_config=dict(type="dict", options=dict(
            cmd=dict(type="list", elements="str"),
            entrypoint=dict(type="list", elements="str"),
            env=dict(type="raw"),
            workdir=dict(type="str"),
            user=dict(type="str"),
            labels=dict(type="dict"),
            exposed_ports=dict(type="list", elements="str"),
            volumes=dict(type="list", elements="str"),
            stop_signal=dict(type="str"),
        )),
        tag_as=dict(type="list", elements="str", default=[]),
        push=dict(type="bool", default=False),
        store_root=dict(type="path", default=DEFAULT_ROOT),
        username=dict(type="str"),
        password=dict(type="str", no_log=True),
        auth_file=dict(type="path"),
        validate_certs=dict(type="bool", default=True, aliases=["tls_verify"]),
        ca_path=dict(type="path"),
        insecure=dict(type="bool"),
        timeout=dict(type="int", default=60),
        retries=dict(type="int", default=5),
        max_concurrent_downloads=dict(type="int", default=4),
    )


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        required_if=[("source", "import", ["import_path"])],
        required_together=[("username", "password")],
    )
    params = module.params

    def task():
        if params["max_concurrent_downloads"] < 1 or params["retries"] < 0 or params["timeout"] < 1:
            module.fail_json(msg="max_concurrent_downloads and timeout must be at least 1, retries at least 0")
        settings = RegistrySettings(
            username=params["username"], password=params["password"], auth_file=params["auth_file"],
            insecure=params["insecure"], validate_certs=params["validate_certs"], ca_path=params["ca_path"],
            timeout=params["timeout"], retries=params["retries"])
        service = ImageService(params["store_root"], settings, max_concurrent_downloads=params["max_concurrent_downloads"])
        try:
            return ImageTask(service, params, check_mode=module.check_mode).run()
        finally:
            service.close()

    run(module, task)


if __name__ == "__main__":
    main()
