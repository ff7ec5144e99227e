# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """How modules that pull or push reach a registry."""

    DOCUMENTATION = r"""
options:
  username:
    description:
      - Registry user name. When unset, credentials come from the files users already have, in containers'
        order (C(REGISTRY_AUTH_FILE), C(auth.json), C(~/.docker/config.json) with its credential helpers).
    type: str
  password:
    description: Registry password or token.
    type: str
  auth_file:
    description: Read registry credentials from this C(auth.json) or C(config.json) file only.
    type: path
  validate_certs:
    description: Verify the registry's TLS certificate.
    type: bool
    default: true
    aliases: [tls_verify]
  ca_path:
    description: CA bundle to verify the registry with.
    type: path
  insecure:
    description:
      - Allow plain HTTP and unverified TLS. Unset means true for loopback registries
        (C(localhost), C(127.0.0.0/8), C(::1)), as docker does, and false otherwise.
    type: bool
requirements:
  - The Python library C(requests) on the target (the host role installs it).
"""
