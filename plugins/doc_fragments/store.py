# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """The store every module works on, and what a target needs."""

    DOCUMENTATION = r"""
options:
  store_root:
    description:
      - Root of the intermodal store on the target (images, layers, containers and volumes).
      - Created with mode C(0700) when missing.
    type: path
    default: /var/lib/intermodal
requirements:
  - Python 3.9 or newer on the target.
"""
