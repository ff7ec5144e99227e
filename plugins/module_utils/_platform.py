# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Platforms (os/architecture/variant): parsing, normalising, choosing from an index.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

The rules are containerd's (github.com/containerd/platforms, ``database.go``
and ``compare.go``) so that a host picks the same manifest from a multi-arch
index as ``ctr``/``nerdctl``/``docker`` would: names are normalised
(``aarch64`` -> ``arm64``, ``x86_64`` -> ``amd64``, ``armhf`` -> ``arm/v7``),
then an exact match is preferred, then the compatible fallbacks in order
(amd64/v3 -> v2 -> v1 -> 386; arm/v7 -> v6 -> v5; arm64 -> arm/v8 -> ... v5).

This file knows nothing about manifests: ``select_manifest`` only reads the
``manifests``, ``platform``, ``annotations`` attributes of what it is given, so
``_manifest`` can import ``Platform`` without an import cycle.
"""

from __future__ import annotations

import platform as _stdlib_platform
import re

from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    IntermodalError,
    PlatformMismatch,
)


class InvalidPlatform(IntermodalError, ValueError):
    """A platform string or dict is malformed (user input or a manifest field)."""


# containerd's specifierRe, plus a leading alphanumeric so "." and ".." never
# reach code that might build a path from a platform.
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Go's syslist (containerd isKnownOS): a bare word that is one of these is an OS.
_KNOWN_OS = frozenset((
    "aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios",
    "js", "linux", "nacl", "netbsd", "openbsd", "plan9", "solaris", "windows", "zos",
))
_KNOWN_ARCH = frozenset((
    "386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "ppc64", "ppc64le",
    "loong64", "mips", "mipsle", "mips64", "mips64le", "mips64p32", "mips64p32le", "ppc",
    "riscv", "riscv64", "s390", "s390x", "sparc", "sparc64", "wasm",
))
# uname -m spellings of 32-bit ARM ("armv7l") carry the variant in the name.
_UNAME_ARM_RE = re.compile(r"^armv([5-8])[a-z]*$")

ATTESTATION_ANNOTATION = "vnd.docker.reference.type"
ATTESTATION_VALUE = "attestation-manifest"


def normalize(os, arch, variant=None):
    """Return ``(os, arch, variant)`` in containerd's canonical form.

    ``variant`` is None when there is none. As in containerd, arm64's default
    variant v8 and amd64's v1 become None, and plain ``arm`` becomes ``arm/v7``.
    """
    os = (os or "").lower()
    if os == "macos":
        os = "darwin"
    arch = (arch or "").lower()
    variant = (variant or "").lower()
    uname_arm = _UNAME_ARM_RE.match(arch)
    if uname_arm:
        arch, variant = "arm", variant or "v" + uname_arm.group(1)
    if arch in ("i386", "i486", "i586", "i686"):
        arch, variant = "386", ""
    elif arch in ("x86_64", "x86-64", "amd64"):
        arch = "amd64"
        if variant == "v1":
            variant = ""
    elif arch in ("aarch64", "arm64"):
        arch = "arm64"
        if variant in ("8", "v8"):
            variant = ""
    elif arch == "armhf":
        arch, variant = "arm", "v7"
    elif arch == "armel":
        arch, variant = "arm", "v6"
    elif arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return os, arch, (variant or None)


class Platform:
    """One OCI platform. Stores what it was given; compares normalised.

    ``str()`` gives ``os/arch[/variant]``. Two platforms are equal when their
    normalised os, architecture and variant agree (so ``linux/arm64`` equals
    ``linux/aarch64/v8``); os.version and os.features are kept for round trips.
    """

    __slots__ = ("os", "architecture", "variant", "os_version", "os_features")

    def __init__(self, os, architecture, variant=None, os_version=None, os_features=None):
        self.os = os
        self.architecture = architecture
        self.variant = variant or None
        self.os_version = os_version or None
        self.os_features = list(os_features) if os_features else []

    @classmethod
    def from_dict(cls, data):
        """Build from an OCI ``platform`` object; raise InvalidPlatform if malformed."""
        if not isinstance(data, dict):
            raise InvalidPlatform("platform must be a JSON object, got %r" % (data,))
        os_name = data.get("os")
        arch = data.get("architecture")
        for key, value in (("os", os_name), ("architecture", arch)):
            if not isinstance(value, str) or not value:
                raise InvalidPlatform("platform %r: %r must be a non-empty string" % (data, key))
        variant = data.get("variant")
        os_version = data.get("os.version")
        for key, value in (("variant", variant), ("os.version", os_version)):
            if value is not None and not isinstance(value, str):
                raise InvalidPlatform("platform %r: %r must be a string" % (data, key))
        features = data.get("os.features")
        if features is not None and (
            not isinstance(features, list) or not all(isinstance(f, str) for f in features)
        ):
            raise InvalidPlatform("platform %r: 'os.features' must be a list of strings" % (data,))
        return cls(os_name, arch, variant, os_version, features)

    def to_dict(self):
        """The OCI JSON form (keys os, architecture, variant?, os.version?, os.features?)."""
        out = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        return out

    def normalized(self):
        """A new Platform in canonical form (see ``normalize``)."""
        os_name, arch, variant = normalize(self.os, self.architecture, self.variant)
        return Platform(os_name, arch, variant, self.os_version, sorted(set(self.os_features)))

    @property
    def key(self):
        """The normalised ``(os, arch, variant)`` tuple used for comparison."""
        return normalize(self.os, self.architecture, self.variant)

    def is_unknown(self):
        """True for buildx's ``unknown/unknown`` attestation placeholders."""
        return (self.os or "").lower() == "unknown" or (self.architecture or "").lower() == "unknown"

    def __str__(self):
        parts = [self.os or "unknown", self.architecture or "unknown"]
        if self.variant:
            parts.append(self.variant)
        return "/".join(parts)

    def __repr__(self):
        return "Platform(%r)" % str(self)

    def __eq__(self, other):
        if not isinstance(other, Platform):
            return NotImplemented
        return self.key == other.key

    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self):
        return hash(self.key)


def parse_platform(text):
    """Parse ``os/arch[/variant]``, ``arch`` (os linux) or ``os`` (host arch).

    The result is normalised; an explicit ``arm64/v8`` keeps its variant for
    display, as containerd's Parse does. Raises InvalidPlatform.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidPlatform("platform must be a non-empty string like 'linux/amd64', got %r" % (text,))
    parts = text.strip().split("/")
    if len(parts) > 3:
        raise InvalidPlatform(
            "invalid platform %r: expected os/architecture[/variant], e.g. linux/arm/v7" % (text,)
        )
    for part in parts:
        if not _COMPONENT_RE.match(part):
            raise InvalidPlatform(
                "invalid platform %r: component %r must be letters, digits, '_', '.', '-'" % (text, part)
            )
    if len(parts) == 1:
        word = parts[0].lower()
        if word in _KNOWN_OS:
            host = host_platform()
            return Platform(word, host.architecture, host.variant)
        os_name, arch, variant = normalize("linux", word, None)
        if arch not in _KNOWN_ARCH:
            raise InvalidPlatform(
                "invalid platform %r: not a known operating system or architecture" % (text,)
            )
        return Platform(os_name, arch, variant)
    given_variant = parts[2] if len(parts) == 3 else None
    os_name, arch, variant = normalize(parts[0], parts[1], given_variant)
    if arch == "arm64" and variant is None and given_variant:
        variant = "v8"
    return Platform(os_name, arch, variant)


def host_platform():
    """The platform of the machine this runs on (Linux targets only)."""
    machine = _stdlib_platform.machine() or "unknown"
    os_name, arch, variant = normalize("linux", machine, None)
    if arch == "arm64" and variant is None:
        variant = "v8"  # what containerd's DefaultSpec reports on arm64
    return Platform(os_name, arch, variant)


def _variant_number(variant, default):
    text = (variant or default).lstrip("v")
    try:
        return int(text)
    except ValueError:
        return None


def _arm64_vector(os_name, variant):
    # compare.go: arm64/v9.x -> v9.(x-1)..v9 -> v8.(x+5)..v8, then arm/v8..v5.
    variant = variant or "v8"
    major_text, _dot, minor_text = variant.lstrip("v").partition(".")
    out = [(os_name, "arm64", variant)]
    try:
        major = int(major_text)
        minor = int(minor_text) if minor_text else 0
    except ValueError:
        major = minor = None
    if major is not None and major >= 8:
        if major == 9:
            for m in range(minor - 1, -1, -1):
                out.append((os_name, "arm64", "v9.%d" % m if m else "v9"))
            out.append((os_name, "arm64", "v8.%d" % (minor + 5)))
            major, minor = 8, minor + 5
        for m in range(minor - 1, -1, -1):
            out.append((os_name, "arm64", "v%d.%d" % (major, m) if m else "v%d" % major))
    if variant.startswith("v8.") or variant.startswith("v9."):
        variant = "v8"
    return out + _vector(os_name, "arm", variant)


def _vector(os_name, arch, variant):
    """containerd's platformVector: (os, arch, variant) tuples, best first."""
    out = [(os_name, arch, variant)]
    if arch == "amd64":
        level = _variant_number(variant, "v1")
        if level is not None and level > 1:
            out.extend((os_name, "amd64", "v%d" % v) for v in range(level - 1, 0, -1))
        out.append((os_name, "386", None))
    elif arch == "arm":
        level = _variant_number(variant, "")
        if level is not None and level > 5:
            out.extend((os_name, "arm", "v%d" % v) for v in range(level - 1, 4, -1))
    elif arch == "arm64":
        return _arm64_vector(os_name, variant)
    return out


def compatible_platforms(wanted):
    """Normalised ``(os, arch, variant)`` keys ``wanted`` can run, best first."""
    seen, keys = set(), []
    for os_name, arch, variant in _vector(*wanted.key):
        key = normalize(os_name, arch, variant)
        if key not in seen:
            seen.add(key)
            keys.append(key)
    return keys


def _features_ok(candidate, wanted):
    # containerd: a candidate's os.features must be a subset of the wanted ones.
    return set(candidate.os_features) <= set(wanted.os_features)


def is_attestation(descriptor):
    """True for buildx attestation entries, which are not runnable images."""
    annotations = getattr(descriptor, "annotations", None) or {}
    if annotations.get(ATTESTATION_ANNOTATION) == ATTESTATION_VALUE:
        return True
    plat = getattr(descriptor, "platform", None)
    return plat is not None and plat.is_unknown()


def select_manifest(index, wanted, name=None):
    """Pick the descriptor in ``index.manifests`` that best runs on ``wanted``.

    ``wanted`` is a Platform or a string for ``parse_platform``; ``name`` (the
    image reference) is only used in the error message.

    Attestations are skipped. The best rank in ``compatible_platforms(wanted)``
    wins; ties go to the first entry in index order. Entries without a platform
    are used only when no entry in the index declares one (the caller must then
    check the config with ``check_config_platform``). The result may itself be
    an index; bounding that recursion is the caller's job.
    """
    if isinstance(wanted, str):
        wanted = parse_platform(wanted)
    ranks = {key: i for i, key in enumerate(compatible_platforms(wanted))}
    entries = [d for d in index.manifests if not is_attestation(d)]
    best, best_rank = None, None
    for desc in entries:
        if desc.platform is None:
            continue
        rank = ranks.get(desc.platform.key)
        if rank is None or not _features_ok(desc.platform, wanted):
            continue
        if best_rank is None or rank < best_rank:
            best, best_rank = desc, rank
    if best is not None:
        return best
    if entries and all(d.platform is None for d in entries):
        return entries[0]
    available = [str(d.platform) for d in entries if d.platform is not None]
    where = name or getattr(index, "digest", None) or "the image index"
    raise PlatformMismatch(
        "no manifest for platform %s in %s; available: %s"
        % (wanted, where, ", ".join(available) if available else "none (only attestations)"),
        wanted=str(wanted),
        available=available,
    )


def check_config_platform(config, wanted, name=None):
    """Raise PlatformMismatch unless the image config can run on ``wanted``.

    Like moby's check after a pull: the config's os/architecture (and variant,
    when the config states one) must be among ``wanted``'s compatible
    platforms. An empty os is taken as linux, as moby does; a config without
    architecture cannot be checked and is accepted.
    """
    if isinstance(wanted, str):
        wanted = parse_platform(wanted)
    os_name = getattr(config, "os", None) or "linux"
    arch = getattr(config, "architecture", None)
    if not arch:
        return
    variant = getattr(config, "variant", None)
    have_os, have_arch, have_variant = normalize(os_name, arch, variant)
    for want_os, want_arch, want_variant in compatible_platforms(wanted):
        if (want_os, want_arch) != (have_os, have_arch):
            continue
        # Many configs omit the variant (normalize would invent arm/v7); only
        # compare it when the config really states one.
        if not variant or want_variant == have_variant:
            return
    have = Platform(os_name, arch, variant)
    raise PlatformMismatch(
        "image %sis for platform %s, which cannot run on the requested platform %s"
        % ("%s " % name if name else "", have, wanted),
        wanted=str(wanted),
        actual=str(have),
    )
