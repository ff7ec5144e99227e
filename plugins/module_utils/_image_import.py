# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build images from local content: ``docker import`` of a rootfs tar, and multi-arch indexes.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

An import is planned before anything is written: the tar is hashed (its
diff_id) and the config built deterministically (no ``created`` stamp), so
importing the same tar with the same settings twice yields the same image ID
and the second run changes nothing.
"""

from __future__ import annotations

import os

from ansible_collections.intermodal.containers.plugins.module_utils._errors import IntermodalError, StoreError
from ansible_collections.intermodal.containers.plugins.module_utils._index import now_iso
from ansible_collections.intermodal.containers.plugins.module_utils._manifest import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    build_config,
    build_index,
    build_manifest,
    chain_ids,
    sha256_digest,
)
from ansible_collections.intermodal.containers.plugins.module_utils._platform import host_platform
from ansible_collections.intermodal.containers.plugins.module_utils._streams import (
    DecompressingReader,
    gzip_compress_file,
)
from ansible_collections.intermodal.containers.plugins.module_utils._unpack import apply_layer

# import_config option -> OCI config key
CONFIG_KEYS = {
    "cmd": "Cmd",
    "entrypoint": "Entrypoint",
    "env": "Env",
    "workdir": "WorkingDir",
    "user": "User",
    "labels": "Labels",
    "exposed_ports": "ExposedPorts",
    "volumes": "Volumes",
    "stop_signal": "StopSignal",
}


class ImportError_(IntermodalError):  # pylint: disable=invalid-name
    """The import source or its settings are unusable."""


def image_config_from_options(options):
    """Turn the module's import_config dict into an OCI ``config`` object."""
    config = {}
    for key, value in (options or {}).items():
        if value is None:
            continue
        if key not in CONFIG_KEYS:
            raise ImportError_("import_config: unknown key %r (known: %s)" % (key, ", ".join(sorted(CONFIG_KEYS))))
        if key == "env":
            if isinstance(value, dict):
                value = ["%s=%s" % (k, v) for k, v in sorted(value.items())]
            else:
                value = [str(v) for v in value]
                bad = [v for v in value if "=" not in v]
                if bad:
                    raise ImportError_("import_config.env: entries must be KEY=VALUE, got %r" % bad[0])
        elif key in ("cmd", "entrypoint"):
            value = [value] if isinstance(value, str) else [str(v) for v in value]
        elif key in ("exposed_ports", "volumes"):
            value = {(str(v) if key == "volumes" or "/" in str(v) else "%s/tcp" % v): {} for v in value}
        elif key == "labels":
            value = {str(k): str(v) for k, v in value.items()}
        else:
            value = str(value)
        config[CONFIG_KEYS[key]] = value
    return config


class ImportPlan:
    """What an import would create, computed without writing to the store."""

    def __init__(self, path, diff_id, compression, config_bytes, config_digest, platform, base=None):
        self.path = path
        self.diff_id = diff_id
        self.compression = compression
        self.config_bytes = config_bytes
        self.config_digest = config_digest
        self.platform = platform
        self.base = base  # (record, manifest, config) of the image we stack on, or None


def plan_import(path, options=None, platform=None, comment=None, base=None):
    """Hash the tar (decompressing if needed) and build the config it would get.

    ``base`` is ``(record, manifest, config)`` of an image in the store: the
    tar becomes a new top layer over it and unset config keys are inherited,
    like a Dockerfile ``FROM base`` + ``ADD``.
    """
    if not os.path.isfile(path):
        raise ImportError_("import_path %s does not exist or is not a regular file" % path)
    with open(path, "rb") as handle:
        stream = DecompressingReader(handle)
        try:
            stream.drain()
        finally:
            stream.close()
    diff_id = stream.diff_id()
    history = [{"created_by": "intermodal.containers.image import", "comment": comment or os.path.basename(path)}]
    image_config = image_config_from_options(options)
    diff_ids = [diff_id]
    if base is not None:
        base_config = base[2]
        wanted = platform or base_config.platform
        merged = dict(base_config.config or {})
        merged.update(image_config)
        image_config = merged
        diff_ids = list(base_config.diff_ids) + diff_ids
        history = list(base_config.history or []) + history
    else:
        wanted = platform or host_platform()
    config_bytes = build_config(
        diff_ids,
        os=wanted.os,
        architecture=wanted.architecture,
        variant=wanted.variant,
        config=image_config,
        history=history,
    )
    return ImportPlan(path, diff_id, stream.detected, config_bytes, sha256_digest(config_bytes), wanted, base)


def apply_import(service, ref, plan):
    """Unpack, store the blobs, write the manifest and name it. Returns the record."""
    content = service.content
    content.ensure()
    base_layers, parent = [], None
    if plan.base is not None:
        _base_record, base_manifest, base_config = plan.base
        base_layers = list(base_manifest.layers)
        parent = chain_ids(base_config.diff_ids)[-1]
    chain_id = chain_ids(([] if plan.base is None else plan.base[2].diff_ids) + [plan.diff_id])[-1]
    with content.lock("store", shared=True):
        with service.layers.produce(chain_id) as job:
            if not job.exists:
                with open(plan.path, "rb") as handle:
                    stream = DecompressingReader(handle, max_output=service.limits.max_total_bytes)
                    try:
                        result = apply_layer(stream, job.diff_dir, service.limits)
                        stream.drain()
                    finally:
                        stream.close()
                if stream.diff_id() != plan.diff_id:
                    raise StoreError("%s changed while it was being imported" % plan.path)
                job.commit(plan.diff_id, parent, result.implied_dirs, result.entries, result.bytes_written)
        layer_digest, layer_size, media_type = _store_layer_blob(content, plan)
        config_digest = content.put_bytes(plan.config_bytes)
        manifest = build_manifest(
            Descriptor.from_dict({"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(plan.config_bytes)}),
            base_layers + [Descriptor.from_dict({"mediaType": media_type, "digest": layer_digest, "size": layer_size})],
        )
        manifest_digest = content.put_bytes(manifest)
        record = {
            "digest": manifest_digest,
            "manifest_digest": manifest_digest,
            "manifest_media_type": OCI_MANIFEST,
            "config_digest": config_digest,
            "platform": str(plan.platform),
            "source": "import",
            "updated": now_iso(),
        }
        with service.index.update() as images:
            images[str(ref)] = record
    return record


def _store_layer_blob(content, plan):
    """Keep compressed input as it is; gzip a plain tar so pushes are small."""
    if plan.compression == "gzip":
        digest, size = content.put_file(plan.path)
        return digest, size, OCI_LAYER_GZIP
    if plan.compression == "zstd":
        digest, size = content.put_file(plan.path)
        return digest, size, OCI_LAYER_ZSTD
    tmp = content.tmp_path("import-gz")
    try:
        gzip_compress_file(plan.path, tmp)
        digest, size = content.put_file(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        content.release_tmp(tmp)
    return digest, size, OCI_LAYER_GZIP


def push_index(service, ref, member_refs):
    """Push the images named by member_refs, then an OCI index of them as ``ref``.

    Used to publish multi-arch images built on this host (the test suite's
    multi-arch fixture is made this way). Returns the index digest.
    """
    descriptors = []
    for member in member_refs:
        record = service.record(member)
        if record is None:
            raise ImportError_("cannot build index %s: %s is not in the store" % (ref, member))
        service.push(ref.with_digest(record["manifest_digest"]), record)
        config = service.config_of(record)
        manifest_bytes = service.content.read_blob(record["manifest_digest"])
        platform = {"os": config.os, "architecture": config.architecture}
        if config.variant:
            platform["variant"] = config.variant
        descriptors.append(Descriptor.from_dict({
            "mediaType": record.get("manifest_media_type") or OCI_MANIFEST,
            "digest": record["manifest_digest"],
            "size": len(manifest_bytes),
            "platform": platform,
        }))
    index = build_index(descriptors)
    client = service.client(ref.registry)
    return client.put_manifest(ref.repository, ref.tag, index, OCI_INDEX)
