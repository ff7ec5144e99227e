# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Typed errors raised by the core.

This module util is PRIVATE to the collection. It can have breaking changes at
any time. Every message is written for the person running the playbook: it
names the object and the cause. Modules turn these into fail_json in one place
(_module.run_module); nothing else in module_utils knows about Ansible.
"""

from __future__ import annotations


class IntermodalError(Exception):
    """Base class; str(err) is the user-facing message."""

    def __init__(self, message, **details):
        super().__init__(message)
        self.message = message
        self.details = details


class MissingDependency(IntermodalError):
    """A Python library or binary the target needs is not installed."""


class InvalidReference(IntermodalError):
    """An image name, tag or digest does not follow the distribution grammar."""


class InvalidDigest(InvalidReference):
    """A digest string is malformed (checked before it is used as a path or URL)."""


class RegistryError(IntermodalError):
    """The registry answered with an error or could not be used."""

    def __init__(self, message, status=None, url=None, **details):
        super().__init__(message, **details)
        self.status = status
        self.url = url


class RegistryUnreachable(RegistryError):
    """DNS, connect or TLS failure, or retries exhausted on transport errors."""


class AuthenticationError(RegistryError):
    """Credentials were refused or a token could not be obtained."""


class ManifestNotFound(RegistryError):
    """The repository or tag does not exist in the registry."""


class BlobNotFound(RegistryError):
    """A blob the manifest names is missing from the registry."""


class ManifestError(IntermodalError):
    """A manifest or index is malformed, ambiguous, too large or unsupported."""


class PlatformMismatch(ManifestError):
    """No manifest in an index matches the requested platform."""


class DigestMismatch(IntermodalError):
    """Content does not hash to the digest (or size) it was announced with."""


class UnsafeLayer(IntermodalError):
    """A layer tar tried something the unpacker refuses (escape, bomb, bad whiteout)."""


class StoreError(IntermodalError):
    """The content store on the target is inconsistent or cannot be written."""


class ImageNotFound(StoreError):
    """The image is not in the local store."""


class ImageInUse(StoreError):
    """The image cannot be removed because something still uses it."""


class LockTimeout(StoreError):
    """Another run holds a lock for longer than we are willing to wait."""
