# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Images on the target: pull, import, tag, push, remove and describe.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

Data flows one way: reference -> registry client -> verified blobs in the
content store -> layers unpacked by chain ID -> a name in the image index.
The only point where a registry is trusted is the HEAD that resolves a tag;
everything after it is fetched by digest and verified (containerd's rule).

Concurrency: every writer holds the store lock shared and GC holds it
exclusive; one process produces a given layer (per chain-ID lock) while the
others wait and then find it done, so a blob is fetched once.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.intermodal.containers.plugins.module_utils._container_paths import recorded_states
from ansible_collections.intermodal.containers.plugins.module_utils._content import ContentStore
from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    DigestMismatch,
    ImageNotFound,
    ManifestError,
    ManifestNotFound,
    StoreError,
)
from ansible_collections.intermodal.containers.plugins.module_utils._index import ImageIndex, now_iso
from ansible_collections.intermodal.containers.plugins.module_utils._layers import LayerStore
from ansible_collections.intermodal.containers.plugins.module_utils._manifest import (
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    ImageIndex as ManifestIndex,
    chain_ids,
    check_manifest_matches_config,
    parse_config,
    parse_manifest,
)
from ansible_collections.intermodal.containers.plugins.module_utils._platform import (
    check_config_platform,
    host_platform,
    select_manifest,
)
from ansible_collections.intermodal.containers.plugins.module_utils._streams import (
    DecompressingReader,
    HashingReader,
)
from ansible_collections.intermodal.containers.plugins.module_utils._unpack import Limits, apply_layer

DEFAULT_CONCURRENT_DOWNLOADS = 4


class RegistrySettings:
    """How to reach registries: passed straight to RegistryClient."""

    def __init__(self, username=None, password=None, auth_file=None, insecure=None,
                 validate_certs=True, ca_path=None, timeout=60, retries=5):
        self.kwargs = {
            "username": username,
            "password": password,
            "auth_file": auth_file,
            "insecure": insecure,
            "validate_certs": validate_certs,
            "ca_path": ca_path,
            "timeout": timeout,
            "retries": retries,
        }


def _default_client_factory(registry, settings):
    from ansible_collections.intermodal.containers.plugins.module_utils._registry import (  # pylint: disable=import-outside-toplevel
        RegistryClient,
    )

    return RegistryClient(registry, **settings.kwargs)


class ImageService:
    """The image half of the store: everything the image modules act on."""

    def __init__(self, store_root, settings=None, client_factory=None,
                 max_concurrent_downloads=DEFAULT_CONCURRENT_DOWNLOADS, limits=None):
        self.content = ContentStore(store_root)
        self.layers = LayerStore(self.content)
        self.index = ImageIndex(self.content)
        self.settings = settings or RegistrySettings()
        self._client_factory = client_factory or _default_client_factory
        self._clients = {}
        self._clients_lock = threading.Lock()
        self.max_concurrent_downloads = max(1, int(max_concurrent_downloads))
        self.limits = limits or Limits()
        self.stats = {"blobs_fetched": 0, "bytes_fetched": 0, "layers_unpacked": 0, "layers_reused": 0}

    # -- plumbing ------------------------------------------------------------

    def client(self, registry):
        with self._clients_lock:
            if registry not in self._clients:
                self._clients[registry] = self._client_factory(registry, self.settings)
            return self._clients[registry]

    def close(self):
        for client in self._clients.values():
            client.close()
        self._clients = {}
        self.content.release_staging_locks()

    # -- queries -------------------------------------------------------------

    def record(self, ref):
        """The index record for a reference, or None. Never touches the network."""
        if not self.content.exists():
            return None
        return self.index.get(str(ref))

    def is_complete(self, record):
        """All content of a record is in the store (a crash or a bad GC could break that)."""
        try:
            manifest = self.manifest_of(record)
            config = self.config_of(record)
        except (StoreError, ManifestError):
            return False
        if not all(self.content.has_blob(d) for d in (record["manifest_digest"], record["config_digest"])):
            return False
        if len(manifest.layers) != len(config.diff_ids):
            return False
        return all(self.layers.has(c) for c in chain_ids(config.diff_ids))

    def manifest_of(self, record):
        return parse_manifest(self.content.read_blob(record["manifest_digest"], MAX_MANIFEST_BYTES),
                              record.get("manifest_media_type"))

    def config_of(self, record):
        return parse_config(self.content.read_blob(record["config_digest"], MAX_CONFIG_BYTES))

    def names(self):
        return self.index.load() if self.content.exists() else {}

    def describe(self, name, record):
        """The facts returned to the user for one image."""
        manifest = self.manifest_of(record)
        config = self.config_of(record)
        chains = chain_ids(config.diff_ids)
        layers = []
        unpacked = 0
        for desc, diff_id, chain_id in zip(manifest.layers, config.diff_ids, chains):
            present = self.layers.has(chain_id)
            if present:
                unpacked += int(self.layers.info(chain_id).get("size") or 0)
            layers.append({
                "digest": desc.digest,
                "size": desc.size,
                "media_type": desc.media_type,
                "diff_id": diff_id,
                "chain_id": chain_id,
                "unpacked": present,
            })
        names = sorted(n for n, r in self.names().items() if r.get("manifest_digest") == record["manifest_digest"])
        platform = "/".join(p for p in (config.os, config.architecture, config.variant) if p)
        return {
            "name": name,
            "names": names,
            "digest": record["digest"],
            "manifest_digest": record["manifest_digest"],
            "id": record["config_digest"],
            "platform": platform,
            "created": config.created,
            "config": config.config or {},
            "layers": layers,
            "size": sum(layer["size"] for layer in layers),
            "unpacked_size": unpacked,
            "source": record.get("source"),
            "updated": record.get("updated"),
        }

    # -- registry queries ----------------------------------------------------

    def remote_digest(self, ref):
        """What the reference resolves to in its registry: one HEAD request."""
        return self.client(ref.registry).resolve(ref.repository, ref.lookup)["digest"]

    # -- pull ----------------------------------------------------------------

    def pull(self, ref, platform=None):
        """Fetch and unpack ``ref``; return its new index record."""
        self.content.ensure()
        wanted = platform or host_platform()
        client = self.client(ref.registry)
        with self.content.lock("store", shared=True):
            top = client.resolve(ref.repository, ref.lookup)
            if ref.digest and top["digest"] != ref.digest:
                raise DigestMismatch("registry resolved %s to %s" % (ref, top["digest"]))
            body, media_type, digest = client.get_manifest(ref.repository, top["digest"], expected_digest=top["digest"])
            document = parse_manifest(body, media_type)
            self.content.put_bytes(body, digest)
            manifest_digest, manifest_type, manifest = digest, document.media_type, document
            if isinstance(document, ManifestIndex):
                chosen = select_manifest(document, wanted)
                body, manifest_type, manifest_digest = client.get_manifest(
                    ref.repository, chosen.digest, expected_digest=chosen.digest)
                manifest = parse_manifest(body, manifest_type)
                if isinstance(manifest, ManifestIndex):
                    raise ManifestError("%s: nested image indexes are not supported" % ref)
                manifest_type = manifest.media_type
                self.content.put_bytes(body, manifest_digest)
            config = parse_config(self._fetch_small_blob(client, ref, manifest.config))
            check_manifest_matches_config(manifest, config)
            if isinstance(document, ManifestIndex) or platform is not None:
                check_config_platform(config, wanted)
            self._ensure_layers(client, ref, manifest, config.diff_ids)
            record = {
                "digest": digest,
                "manifest_digest": manifest_digest,
                "manifest_media_type": manifest_type,
                "config_digest": manifest.config.digest,
                "platform": str(wanted) if isinstance(document, ManifestIndex) else None,
                "source": "pull",
                "updated": now_iso(),
            }
            with self.index.update() as images:
                images[str(ref)] = record
        return record

    def _fetch_small_blob(self, client, ref, desc):
        with self.content.lock("blob-" + desc.digest.split(":", 1)[1]):
            if self.content.has_blob(desc.digest, desc.size):
                return self.content.read_blob(desc.digest, MAX_CONFIG_BYTES)
            data = client.get_blob(ref.repository, desc.digest, desc.size, max_size=MAX_CONFIG_BYTES)
            self.content.put_bytes(data, desc.digest)
            self.stats["blobs_fetched"] += 1
            return data

    def _ensure_layers(self, client, ref, manifest, diff_ids):
        chains = chain_ids(diff_ids)
        workers = min(self.max_concurrent_downloads, max(1, len(chains)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="layer") as pool:
            futures = []
            parent_future = None
            for i, (desc, diff_id, chain_id) in enumerate(zip(manifest.layers, diff_ids, chains)):
                parent = chains[i - 1] if i else None
                futures.append(pool.submit(self._layer_job, client, ref, desc, diff_id, chain_id, parent, parent_future))
                parent_future = futures[-1]
            errors = []
            for future in futures:
                try:
                    future.result()
                except Exception as exc:  # pylint: disable=broad-except
                    errors.append(exc)
            if errors:
                raise errors[0]

    def _layer_job(self, client, ref, desc, diff_id, chain_id, parent, parent_future):
        with self.layers.produce(chain_id) as job:
            if job.exists:
                self.stats["layers_reused"] += 1
                if parent_future is not None:
                    parent_future.result()
                return
            ingest = None
            if self.content.has_blob(desc.digest, desc.size):
                source = self.content.open_blob(desc.digest)
                raw = HashingReader(source, expected_digest=desc.digest, expected_size=desc.size)
            else:
                source = client.open_blob(ref.repository, desc.digest, desc.size, urls=desc.urls)
                ingest = self.content.ingest(desc.digest, desc.size)
                raw = HashingReader(source, sink=ingest, expected_digest=desc.digest, expected_size=desc.size)
            stream = DecompressingReader(raw, max_output=self.limits.max_total_bytes)
            try:
                result = apply_layer(stream, job.diff_dir, self.limits)
                stream.drain()
                if stream.diff_id() != diff_id:
                    raise DigestMismatch(
                        "layer %s of %s unpacks to %s, but the image config says %s"
                        % (desc.digest, ref, stream.diff_id(), diff_id))
                if ingest is not None:
                    ingest.commit()
                    self.stats["blobs_fetched"] += 1
                    self.stats["bytes_fetched"] += desc.size
                if parent_future is not None:
                    parent_future.result()
                job.commit(diff_id, parent, result.implied_dirs, result.entries, result.bytes_written, desc.digest)
                self.stats["layers_unpacked"] += 1
            finally:
                stream.close()
                source.close()
                if ingest is not None:
                    ingest.abort()

    # -- names ---------------------------------------------------------------

    def set_name(self, ref, record, source):
        """Point ``ref`` at the same content as ``record``."""
        new = dict(record)
        new["source"] = source
        new["updated"] = now_iso()
        with self.content.lock("store", shared=True):
            with self.index.update() as images:
                images[str(ref)] = new
        return new

    # -- push ----------------------------------------------------------------

    def push_needed(self, ref, record):
        """True when the registry's copy of ``ref`` differs from ours (HEAD only)."""
        try:
            return self.remote_digest(ref) != record["manifest_digest"]
        except ManifestNotFound:
            return True

    def push(self, ref, record):
        """Upload what the registry lacks, then the manifest. Returns blob outcomes."""
        client = self.client(ref.registry)
        manifest = self.manifest_of(record)
        outcomes = {}
        with self.content.lock("store", shared=True):
            for desc in [manifest.config] + list(manifest.layers):
                if not self.content.has_blob(desc.digest, desc.size):
                    raise StoreError(
                        "cannot push %s: blob %s is not in the store (the layer was shared from another image); "
                        "pull the image again with pull=always first" % (ref, desc.digest))
                outcomes[desc.digest] = client.push_blob(
                    ref.repository, desc.digest, desc.size,
                    lambda d=desc.digest: self.content.open_blob(d))
            body = self.content.read_blob(record["manifest_digest"], MAX_MANIFEST_BYTES)
            client.put_manifest(ref.repository, ref.tag or ref.digest, body, manifest.media_type)
        return outcomes

    # -- remove and GC -------------------------------------------------------

    def remove(self, ref):
        """Forget a name, then free what no remaining image uses."""
        with self.content.lock("store"):
            with self.index.update() as images:
                if str(ref) not in images:
                    raise ImageNotFound("image %s is not in the store at %s" % (ref, self.content.root))
                del images[str(ref)]
                remaining = dict(images)
            return self.collect_garbage(remaining, self._chain_ids_in_use_by_containers())

    def prune(self):
        """Free blobs and layers that neither an image nor a container uses."""
        if not self.content.exists():
            return {"blobs": [], "layers": []}
        with self.content.lock("store"):
            return self.collect_garbage(self.index.load(), self._chain_ids_in_use_by_containers())

    def _chain_ids_in_use_by_containers(self):
        """Layers that containers' root filesystems stack on: never freed under them."""
        keep = set()
        for _name, state in recorded_states(self.content.root):
            for lower in state.get("lowers") or []:
                keep.add("sha256:" + os.path.basename(os.path.dirname(os.path.normpath(lower))))
        return keep

    def collect_garbage(self, images, keep_chain_ids=()):
        """Delete blobs and layers no image references; caller holds the store lock exclusively."""
        blobs, chains = set(), set(keep_chain_ids)
        for record in images.values():
            blobs.update(d for d in (record.get("digest"), record["manifest_digest"], record["config_digest"]) if d)
            try:
                manifest = self.manifest_of(record)
                config = self.config_of(record)
            except (StoreError, ManifestError):
                continue
            blobs.update(layer.digest for layer in manifest.layers)
            chains.update(chain_ids(config.diff_ids))
        # Parents of kept layers stay too: a layer dir needs its whole chain below it.
        for chain_id in list(chains):
            try:
                current = self.layers.info(chain_id).get("parent") if self.layers.has(chain_id) else None
            except StoreError:
                current = None
            while current and current not in chains:
                chains.add(current)
                current = self.layers.info(current).get("parent") if self.layers.has(current) else None
        freed = {"blobs": [], "layers": []}
        for digest in self.content.list_blobs():
            if digest not in blobs and self.content.delete_blob(digest):
                freed["blobs"].append(digest)
        for chain_id in self.layers.list():
            if chain_id not in chains and self.layers.remove(chain_id):
                freed["layers"].append(chain_id)
        self._prune_lock_files()
        return freed

    def _prune_lock_files(self):
        # Safe only under the exclusive store lock: no writer holds a per-digest lock.
        for name in os.listdir(self.content.locks_dir):
            if name.startswith(("blob-", "layer-")):
                try:
                    os.unlink(os.path.join(self.content.locks_dir, name))
                except FileNotFoundError:
                    pass
