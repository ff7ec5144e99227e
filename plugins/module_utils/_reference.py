# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image references, parsed and normalised the way docker does.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

``busybox`` -> ``docker.io/library/busybox:latest``; ``host:5000/a/b@sha256:..``
keeps its registry and digest. The grammar is distribution's
(reference/regexp.go); a name that does not match is refused before it is used
in a URL or a path.
"""

from __future__ import annotations

import re

from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    InvalidDigest,
    InvalidReference,
)

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
# The API endpoint Docker Hub really answers on; docker.io is only its name.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
LEGACY_HUB_NAMES = ("index.docker.io", "registry-1.docker.io")

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = _ALNUM + r"(?:" + _SEPARATOR + _ALNUM + r")*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_NAME = _DOMAIN_COMPONENT + r"(?:\." + _DOMAIN_COMPONENT + r")*"
_DOMAIN = r"(?:" + _DOMAIN_NAME + r"|" + _IPV6 + r")(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_PATH_RE = re.compile(r"^" + _PATH_COMPONENT + r"(?:/" + _PATH_COMPONENT + r")*$")
_DOMAIN_RE = re.compile(r"^" + _DOMAIN + r"$")
_TAG_RE = re.compile(r"^" + _TAG + r"$")
_DIGEST_RE = re.compile(r"^" + _DIGEST + r"$")
_KNOWN_DIGESTS = {
    "sha256": re.compile(r"^sha256:[a-f0-9]{64}$"),
    "sha512": re.compile(r"^sha512:[a-f0-9]{128}$"),
}
NAME_TOTAL_LENGTH_MAX = 255


def validate_digest(digest):
    """Return ``digest`` if it is a well-formed sha256/sha512 digest, else raise.

    Called before any digest is used in a URL or a file name (CVE-2024-3727).
    """
    if not isinstance(digest, str):
        raise InvalidDigest("digest must be a string, got %r" % (digest,))
    algorithm = digest.split(":", 1)[0]
    pattern = _KNOWN_DIGESTS.get(algorithm)
    if pattern is None or not pattern.match(digest):
        raise InvalidDigest(
            "invalid digest %r: expected sha256:<64 hex> or sha512:<128 hex>" % (digest,)
        )
    return digest


class Reference:
    """A parsed, normalised image reference.

    ``registry`` is the registry's name (``docker.io``, ``localhost:5000``);
    ``repository`` the path inside it (``library/busybox``). ``tag`` defaults
    to ``latest`` only when there is no digest, as docker does.
    """

    __slots__ = ("registry", "repository", "tag", "digest")

    def __init__(self, registry, repository, tag=None, digest=None):
        self.registry = registry
        self.repository = repository
        self.tag = tag
        self.digest = digest

    @property
    def name(self):
        """registry/repository, without tag or digest."""
        return "%s/%s" % (self.registry, self.repository)

    @property
    def api_host(self):
        """host[:port] to send HTTP requests to."""
        if self.registry == DEFAULT_REGISTRY:
            return DOCKER_HUB_API_HOST
        return self.registry

    @property
    def lookup(self):
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag

    def with_digest(self, digest):
        return Reference(self.registry, self.repository, tag=None, digest=digest)

    def __str__(self):
        out = self.name
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out

    def familiar(self):
        """The short form docker prints: ``busybox:latest`` for Hub library images."""
        name = self.name
        if self.registry == DEFAULT_REGISTRY:
            name = self.repository
            if name.startswith("library/") and name.count("/") == 1:
                name = name[len("library/"):]
        if self.tag:
            name += ":" + self.tag
        if self.digest:
            name += "@" + self.digest
        return name

    def __repr__(self):
        return "Reference(%r)" % str(self)

    def __eq__(self, other):
        return isinstance(other, Reference) and str(self) == str(other)

    def __hash__(self):
        return hash(str(self))


def _split_domain(name):
    # docker's rule: the first component is a registry only if it has a dot or
    # a port, or is "localhost"; otherwise the name lives on Docker Hub.
    first, sep, rest = name.partition("/")
    if sep and (
        "." in first or ":" in first or first == "localhost" or first.startswith("[")
        or first != first.lower()
    ):
        return first, rest
    return DEFAULT_REGISTRY, name


def parse_reference(text, default_tag=DEFAULT_TAG):
    """Parse ``text`` into a normalised Reference, or raise InvalidReference."""
    if not isinstance(text, str) or not text:
        raise InvalidReference("image reference must be a non-empty string")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidReference("invalid image reference %r: contains whitespace" % (text,))

    remainder, digest = text, None
    if "@" in remainder:
        remainder, _at, digest = remainder.partition("@")
        if not _DIGEST_RE.match(digest):
            raise InvalidReference("invalid image reference %r: bad digest %r" % (text, digest))
        validate_digest(digest)

    tag = None
    # A colon after the last slash is a tag; one before it is a port.
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1:]
        if not _TAG_RE.match(tag):
            raise InvalidReference(
                "invalid image reference %r: bad tag %r (1-128 of [A-Za-z0-9_.-], not starting with . or -)"
                % (text, tag)
            )

    registry, path = _split_domain(remainder)
    if registry in LEGACY_HUB_NAMES:
        registry = DEFAULT_REGISTRY
    if not _DOMAIN_RE.match(registry):
        raise InvalidReference("invalid image reference %r: bad registry %r" % (text, registry))
    if not path:
        raise InvalidReference("invalid image reference %r: missing repository" % (text,))
    if path != path.lower():
        raise InvalidReference(
            "invalid image reference %r: repository name must be lowercase" % (text,)
        )
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = "library/" + path
    if not _PATH_RE.match(path):
        raise InvalidReference(
            "invalid image reference %r: repository %r does not match the distribution grammar"
            % (text, path)
        )
    if len(registry) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(
            "invalid image reference %r: name longer than %d characters" % (text, NAME_TOTAL_LENGTH_MAX)
        )
    if tag is None and digest is None:
        tag = default_tag
    return Reference(registry, path, tag=tag, digest=digest)
