"""Test images built by the collection's own code (import, import on a base, push)."""

from __future__ import annotations

import pytest

# Imported for its side effect: puts the collection on sys.path.
from tests.integration.image_helpers import COLLECTIONS_DIR  # noqa: F401  # pylint: disable=unused-import
from tests.lib.rootfs import build_debian_delta_layer, build_debian_minbase

from ansible_collections.intermodal.containers.plugins.module_utils._image_import import apply_import, plan_import
from ansible_collections.intermodal.containers.plugins.module_utils._images import ImageService
from ansible_collections.intermodal.containers.plugins.module_utils._platform import parse_platform
from ansible_collections.intermodal.containers.plugins.module_utils._reference import parse_reference


def publish(store_root, name, tar, base=None, platform=None, config=None):
    """Import ``tar`` (on ``base``) and push it, with the collection's core."""
    service = ImageService(store_root)
    try:
        ref = parse_reference(name)
        base_info = None
        if base is not None:
            record = service.record(parse_reference(base))
            base_info = (record, service.manifest_of(record), service.config_of(record))
        plan = plan_import(tar, config, parse_platform(platform) if platform else None, base=base_info)
        record = apply_import(service, ref, plan)
        service.push(ref, record)
        return record
    finally:
        service.close()


@pytest.fixture(scope="session")
def debian_images(registry_open, tmp_path_factory, rootfs_cache_dir):
    work = tmp_path_factory.mktemp("debian")
    minbase = build_debian_minbase(rootfs_cache_dir)
    delta = build_debian_delta_layer(str(work / "delta.tar"))
    publisher = str(work / "publisher")
    base_name = registry_open.host + "/debian/minbase:bookworm"
    top_name = registry_open.host + "/debian/delta:1"
    publish(publisher, base_name, minbase, config={"cmd": ["/bin/bash"], "env": {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}})
    publish(publisher, top_name, delta, base=base_name)
    return {"base": base_name, "top": top_name}
