# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""OCI and Docker manifests, indexes and image configs: parse, validate, build.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

Everything here is pure (bytes in, objects or bytes out). Parsing is strict on
purpose: a registry or a tarball is untrusted, and the checks below are the
ones containerd, containers/image and moby apply (size caps, schema1 refusal,
CVE-2021-41190 ambiguity, digest syntax before a digest becomes a path or URL,
known layer media types only). Builders write canonical JSON so that the same
inputs always give the same digest.
"""

from __future__ import annotations

import hashlib
import json

from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    DigestMismatch,
    InvalidDigest,
    ManifestError,
)
from ansible_collections.intermodal.containers.plugins.module_utils._platform import (
    InvalidPlatform,
    Platform,
    host_platform,
)
from ansible_collections.intermodal.containers.plugins.module_utils._reference import (
    validate_digest,
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_TAR = "application/vnd.docker.image.rootfs.foreign.diff.tar"

SCHEMA1_TYPES = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
# What the registry client should send as Accept, identically on HEAD and GET.
ACCEPT_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
# Content types that say nothing; the document's own mediaType (or shape) decides.
GENERIC_TYPES = ("", "application/json", "application/octet-stream", "text/plain")

# media type -> compression (None = plain tar)
_LAYER_COMPRESSION = {
    OCI_LAYER_TAR: None,
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_NONDIST_TAR: None,
    OCI_LAYER_NONDIST_GZIP: "gzip",
    OCI_LAYER_NONDIST_ZSTD: "zstd",
    DOCKER_LAYER_TAR: None,
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_ZSTD: "zstd",
    DOCKER_FOREIGN_LAYER: "gzip",
    DOCKER_FOREIGN_LAYER_TAR: None,
}
LAYER_TYPES = tuple(_LAYER_COMPRESSION)
# Layers whose blob may live outside the registry (descriptor ``urls``).
_FOREIGN_TYPES = (
    DOCKER_FOREIGN_LAYER, DOCKER_FOREIGN_LAYER_TAR,
    OCI_LAYER_NONDIST_TAR, OCI_LAYER_NONDIST_GZIP, OCI_LAYER_NONDIST_ZSTD,
)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 4 * 1024 * 1024


def sha256_digest(data):
    """``sha256:<hex>`` of ``data`` (bytes)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _digest_of(data, algorithm):
    return "%s:%s" % (algorithm, hashlib.new(algorithm, data).hexdigest())


def canonical_json(obj):
    """Deterministic UTF-8 JSON bytes: sorted keys, no whitespace."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def layer_compression(media_type):
    """``"gzip"``, ``"zstd"`` or None (plain tar) for a known layer media type."""
    _check_layer_type(media_type)
    return _LAYER_COMPRESSION[media_type]


def is_foreign_layer(media_type):
    """True for Docker foreign and OCI non-distributable layers (may carry ``urls``)."""
    return media_type in _FOREIGN_TYPES


def _check_layer_type(media_type, where="layer"):
    if not isinstance(media_type, str):
        raise ManifestError("%s has no valid mediaType (got %r)" % (where, media_type))
    if "+encrypted" in media_type:
        raise ManifestError(
            "%s is encrypted (%s); encrypted layers are not supported" % (where, media_type)
        )
    if media_type not in _LAYER_COMPRESSION:
        raise ManifestError("%s has unsupported media type %r" % (where, media_type))


def _reject_duplicates(pairs):
    # Go keeps the last duplicate key, Python too, other parsers the first:
    # a document with duplicates means different things to different readers.
    out = {}
    for key, value in pairs:
        if key in out:
            raise ManifestError("JSON document has duplicate key %r" % (key,))
        out[key] = value
    return out


def _reject_constant(name):
    raise ManifestError("JSON document contains %s, which is not valid JSON" % (name,))


def _load_json_object(body, what, limit):
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, (bytes, bytearray)):
        raise ManifestError("%s must be bytes, got %s" % (what, type(body).__name__))
    if len(body) > limit:
        raise ManifestError(
            "%s is %d bytes, more than the %d byte limit" % (what, len(body), limit)
        )
    try:
        doc = json.loads(
            bytes(body).decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
        )
    except ManifestError as exc:
        raise ManifestError("%s is not valid: %s" % (what, exc))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError("%s is not valid JSON: %s" % (what, exc))
    if not isinstance(doc, dict):
        raise ManifestError("%s must be a JSON object, got %s" % (what, type(doc).__name__))
    return doc


def _check_string_map(value, what):
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestError("%s must be a map of strings to strings" % (what,))
    return dict(value)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


class Descriptor:
    """An OCI content descriptor; digest and size are validated on construction."""

    __slots__ = ("media_type", "digest", "size", "urls", "platform", "annotations", "artifact_type")

    def __init__(self, media_type, digest, size, urls=None, platform=None, annotations=None,
                 artifact_type=None):
        if not isinstance(media_type, str) or not media_type:
            raise ManifestError("descriptor %r has no mediaType" % (digest,))
        try:
            validate_digest(digest)
        except InvalidDigest as exc:
            raise ManifestError("descriptor of type %s has an invalid digest: %s" % (media_type, exc))
        if not _is_int(size) or size < 0:
            raise ManifestError("descriptor %s has invalid size %r" % (digest, size))
        if urls is not None and (
            not isinstance(urls, list) or not all(isinstance(u, str) and u for u in urls)
        ):
            raise ManifestError("descriptor %s: urls must be a list of strings" % (digest,))
        if platform is not None and not isinstance(platform, Platform):
            raise ManifestError("descriptor %s: platform must be a Platform" % (digest,))
        if artifact_type is not None and not isinstance(artifact_type, str):
            raise ManifestError("descriptor %s: artifactType must be a string" % (digest,))
        self.media_type = media_type
        self.digest = digest
        self.size = size
        self.urls = list(urls) if urls else []
        self.platform = platform
        self.annotations = _check_string_map(annotations, "annotations of descriptor %s" % digest)
        self.artifact_type = artifact_type

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise ManifestError("descriptor must be a JSON object, got %r" % (data,))
        platform = data.get("platform")
        if platform is not None:
            try:
                platform = Platform.from_dict(platform)
            except InvalidPlatform as exc:
                raise ManifestError("descriptor %s: %s" % (data.get("digest"), exc))
        return cls(
            data.get("mediaType"),
            data.get("digest"),
            data.get("size"),
            urls=data.get("urls"),
            platform=platform,
            annotations=data.get("annotations"),
            artifact_type=data.get("artifactType"),
        )

    def to_dict(self):
        out = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.platform is not None:
            out["platform"] = self.platform.to_dict()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def __eq__(self, other):
        return isinstance(other, Descriptor) and self.to_dict() == other.to_dict()

    def __hash__(self):
        return hash((self.media_type, self.digest, self.size))

    def __repr__(self):
        return "Descriptor(%s, %s, %d)" % (self.media_type, self.digest, self.size)


def _as_descriptor(value):
    return value if isinstance(value, Descriptor) else Descriptor.from_dict(value)


class ImageManifest:
    """A single-platform image manifest (OCI or Docker schema 2)."""

    __slots__ = ("media_type", "config", "layers", "annotations", "subject", "raw")

    def __init__(self, media_type, config, layers, annotations=None, subject=None, raw=b""):
        self.media_type = media_type
        self.config = config
        self.layers = layers
        self.annotations = annotations or {}
        self.subject = subject
        self.raw = raw

    @property
    def digest(self):
        """sha256 of the exact bytes parsed (what the registry addresses it by)."""
        return sha256_digest(self.raw)

    is_index = False


class ImageIndex:
    """A multi-platform index (OCI image index or Docker manifest list)."""

    __slots__ = ("media_type", "manifests", "annotations", "raw")

    def __init__(self, media_type, manifests, annotations=None, raw=b""):
        self.media_type = media_type
        self.manifests = manifests
        self.annotations = annotations or {}
        self.raw = raw

    @property
    def digest(self):
        return sha256_digest(self.raw)

    is_index = True


def _strip_params(content_type):
    return (content_type or "").split(";", 1)[0].strip().lower()


def _schema1_error():
    return ManifestError(
        "schema 1 manifests are not supported; re-push the image with a current client"
    )


def _decide_type(doc, content_type):
    """The media type the document is parsed as, refusing anything ambiguous."""
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestError("manifest mediaType must be a string, got %r" % (declared,))
    if content_type in SCHEMA1_TYPES or declared in SCHEMA1_TYPES:
        raise _schema1_error()
    schema = doc.get("schemaVersion")
    if _is_int(schema) and schema == 1:
        raise _schema1_error()
    if not _is_int(schema) or schema != 2:
        raise ManifestError("unsupported manifest schemaVersion %r (expected 2)" % (schema,))
    has_manifests = "manifests" in doc
    has_image = "config" in doc or "layers" in doc
    if has_manifests and has_image:
        # CVE-2021-41190: one document must not read as both index and manifest.
        raise ManifestError(
            "ambiguous manifest: it has both 'manifests' and 'config'/'layers'"
        )
    known = INDEX_TYPES + MANIFEST_TYPES
    if content_type not in GENERIC_TYPES:
        if content_type not in known:
            raise ManifestError("unsupported manifest media type %r" % (content_type,))
        if declared is not None and declared != content_type:
            raise ManifestError(
                "ambiguous manifest: Content-Type is %s but its mediaType field says %s"
                % (content_type, declared)
            )
        media_type = content_type
    elif declared is not None:
        if declared not in known:
            raise ManifestError("unsupported manifest media type %r" % (declared,))
        media_type = declared
    elif has_manifests:
        media_type = OCI_INDEX
    elif has_image:
        media_type = OCI_MANIFEST
    else:
        raise ManifestError("document is neither an image manifest nor an index")
    if media_type in INDEX_TYPES and has_image:
        raise ManifestError("index of type %s has 'config' or 'layers'" % (media_type,))
    if media_type in MANIFEST_TYPES and has_manifests:
        raise ManifestError("manifest of type %s has 'manifests'" % (media_type,))
    return media_type


def _parse_index(doc, media_type, raw):
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise ManifestError("index 'manifests' must be a list")
    manifests = [Descriptor.from_dict(d) for d in entries]
    annotations = _check_string_map(doc.get("annotations"), "index annotations")
    return ImageIndex(media_type, manifests, annotations, raw)


def _parse_image_manifest(doc, media_type, raw):
    if "config" not in doc:
        raise ManifestError("image manifest has no config descriptor")
    config = Descriptor.from_dict(doc["config"])
    artifact_type = doc.get("artifactType")
    if config.media_type not in CONFIG_TYPES:
        raise ManifestError(
            "manifest is not a container image (config type %s%s)"
            % (config.media_type, ", artifact type %s" % artifact_type if artifact_type else "")
        )
    layers_doc = doc.get("layers")
    if not isinstance(layers_doc, list):
        raise ManifestError("image manifest 'layers' must be a list")
    layers = []
    for i, item in enumerate(layers_doc):
        layer = Descriptor.from_dict(item)
        _check_layer_type(layer.media_type, "layer %d (%s)" % (i, layer.digest))
        layers.append(layer)
    subject = doc.get("subject")
    if subject is not None:
        subject = Descriptor.from_dict(subject)
    annotations = _check_string_map(doc.get("annotations"), "manifest annotations")
    return ImageManifest(media_type, config, layers, annotations, subject, raw)


def parse_manifest(body, content_type=None):
    """Parse registry bytes into an ImageManifest or ImageIndex, or raise ManifestError.

    ``content_type`` is the HTTP Content-Type (parameters ignored). When it is
    missing or generic, the document's mediaType field, then its shape, decide.
    """
    raw = body.encode("utf-8") if isinstance(body, str) else body
    doc = _load_json_object(raw, "manifest", MAX_MANIFEST_BYTES)
    raw = bytes(raw)
    media_type = _decide_type(doc, _strip_params(content_type))
    if media_type in INDEX_TYPES:
        return _parse_index(doc, media_type, raw)
    return _parse_image_manifest(doc, media_type, raw)


class ImageConfig:
    """The parts of an image config the collection uses; ``raw`` keeps the bytes."""

    __slots__ = ("raw", "os", "architecture", "variant", "os_version", "created", "author",
                 "config", "diff_ids", "history")

    def __init__(self, raw, os, architecture, variant, os_version, created, author, config,
                 diff_ids, history):
        self.raw = raw
        self.os = os
        self.architecture = architecture
        self.variant = variant
        self.os_version = os_version
        self.created = created
        self.author = author
        self.config = config
        self.diff_ids = diff_ids
        self.history = history

    @property
    def digest(self):
        return sha256_digest(self.raw)

    @property
    def platform(self):
        return Platform(self.os or "linux", self.architecture or "unknown", self.variant)


_CONFIG_LISTS = ("Env", "Cmd", "Entrypoint", "Shell", "OnBuild")
_CONFIG_STRINGS = ("WorkingDir", "User", "StopSignal", "Image", "Hostname", "Domainname")


def _check_container_config(value):
    """Type-check the fields later code turns into an OCI runtime spec."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ManifestError("image config 'config' must be a JSON object")
    for key in _CONFIG_LISTS:
        item = value.get(key)
        if item is not None and (
            not isinstance(item, list) or not all(isinstance(s, str) for s in item)
        ):
            raise ManifestError("image config %s must be a list of strings" % (key,))
    for key in _CONFIG_STRINGS:
        item = value.get(key)
        if item is not None and not isinstance(item, str):
            raise ManifestError("image config %s must be a string" % (key,))
    _check_string_map(value.get("Labels"), "image config Labels")
    for key in ("ExposedPorts", "Volumes"):
        item = value.get(key)
        if item is not None and not isinstance(item, dict):
            raise ManifestError("image config %s must be a JSON object" % (key,))
    return value


def _optional_str(doc, key):
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise ManifestError("image config %r must be a string, got %r" % (key, value))
    return value or None


def parse_config(body):
    """Parse an image config blob (OCI or Docker) into ImageConfig, or raise ManifestError."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    doc = _load_json_object(raw, "image config", MAX_CONFIG_BYTES)
    raw = bytes(raw)
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict):
        raise ManifestError("image config has no rootfs object")
    if rootfs.get("type") != "layers":
        raise ManifestError("image config rootfs.type is %r, expected 'layers'" % (rootfs.get("type"),))
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise ManifestError("image config rootfs.diff_ids must be a list")
    for i, diff_id in enumerate(diff_ids):
        try:
            validate_digest(diff_id)
        except InvalidDigest as exc:
            raise ManifestError("image config diff_id %d is invalid: %s" % (i, exc))
    history = doc.get("history")
    if history is None:
        history = []
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ManifestError("image config history must be a list of objects")
    return ImageConfig(
        raw=raw,
        os=_optional_str(doc, "os"),
        architecture=_optional_str(doc, "architecture"),
        variant=_optional_str(doc, "variant"),
        os_version=_optional_str(doc, "os.version"),
        created=_optional_str(doc, "created"),
        author=_optional_str(doc, "author"),
        config=_check_container_config(doc.get("config")),
        diff_ids=list(diff_ids),
        history=history,
    )


def check_manifest_matches_config(manifest, config):
    """Raise unless ``config`` belongs to ``manifest``.

    The config bytes must hash to the manifest's config digest (DigestMismatch)
    and there must be one diff_id per layer (ManifestError, moby's
    errRootFSMismatch).
    """
    expected = manifest.config.digest
    if config.raw:
        algorithm = expected.split(":", 1)[0]
        actual = _digest_of(config.raw, algorithm)
        if actual != expected or len(config.raw) != manifest.config.size:
            raise DigestMismatch(
                "image config (%d bytes, %s) does not match the manifest's config descriptor"
                " (%d bytes, %s)" % (len(config.raw), actual, manifest.config.size, expected)
            )
    if len(manifest.layers) != len(config.diff_ids):
        raise ManifestError(
            "manifest has %d layers but its config lists %d diff_ids (rootfs mismatch)"
            % (len(manifest.layers), len(config.diff_ids))
        )


def chain_ids(diff_ids):
    """Chain IDs per image-spec config.md: the first is the first diff_id, then
    ``sha256(previous_chain_id + " " + diff_id)``."""
    out = []
    for diff_id in diff_ids:
        validate_digest(diff_id)
        if not out:
            out.append(diff_id)
        else:
            out.append(sha256_digest(("%s %s" % (out[-1], diff_id)).encode("ascii")))
    return out


def build_config(diff_ids, os="linux", architecture=None, variant=None, config=None,
                 created=None, history=None):
    """Canonical OCI image config bytes. ``architecture`` defaults to the host's."""
    for diff_id in diff_ids:
        validate_digest(diff_id)
    if architecture is None:
        host = host_platform()
        architecture, variant = host.architecture, variant or host.variant
    doc = {
        "architecture": architecture,
        "os": os,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }
    if variant:
        doc["variant"] = variant
    if config:
        doc["config"] = _check_container_config(config)
    if created:
        doc["created"] = created
    if history:
        doc["history"] = list(history)
    return canonical_json(doc)


def build_manifest(config_descriptor, layer_descriptors, annotations=None):
    """Canonical OCI image manifest bytes for a config and its layers."""
    config = _as_descriptor(config_descriptor)
    layers = [_as_descriptor(d) for d in layer_descriptors]
    for layer in layers:
        _check_layer_type(layer.media_type, "layer %s" % layer.digest)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_dict(),
        "layers": [d.to_dict() for d in layers],
    }
    if annotations:
        doc["annotations"] = _check_string_map(annotations, "manifest annotations")
    return canonical_json(doc)


def build_index(manifest_descriptors, annotations=None):
    """Canonical OCI image index bytes; each descriptor should carry a platform."""
    manifests = [_as_descriptor(d) for d in manifest_descriptors]
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [d.to_dict() for d in manifests],
    }
    if annotations:
        doc["annotations"] = _check_string_map(annotations, "index annotations")
    return canonical_json(doc)
