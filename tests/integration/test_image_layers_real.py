"""Real content through the whole chain: Debian minbase + a delta layer, and a multi-arch index.

The images are built by the collection's own code (import, import on a base,
push, push of an OCI index) from real content: debootstrap's minbase (cached
between runs) and tars made by tests/lib/rootfs.py. Pulled layers are then
mounted with the real kernel's overlayfs to prove they are overlay-ready:
the whiteout hides a file, the opaque directory hides the base's contents.
"""

from __future__ import annotations

import os
import subprocess

import pytest

# debian_images is a pytest fixture: pytest finds it by name in this module's namespace.
from tests.integration.fixtures_images import debian_images, publish  # noqa: F401  # pylint: disable=unused-import
from tests.integration.image_helpers import image_playbook, result_of, store_report
from tests.lib.rootfs import (
    DELTA_ADDED,
    DELTA_OPAQUE_DIR,
    DELTA_OPAQUE_NEW_FILE,
    DELTA_REMOVED,
    build_arch_variant_rootfs,
)

from ansible_collections.intermodal.containers.plugins.module_utils._image_import import push_index
from ansible_collections.intermodal.containers.plugins.module_utils._images import ImageService
from ansible_collections.intermodal.containers.plugins.module_utils._platform import host_platform
from ansible_collections.intermodal.containers.plugins.module_utils._reference import parse_reference

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class OverlayMount:
    """A read-only overlay of lower dirs, unmounted even when the test fails."""

    def __init__(self, target, lowers):
        self.target = target
        self.lowers = lowers

    def __enter__(self):
        os.makedirs(self.target, exist_ok=True)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=" + ":".join(self.lowers),
                        self.target], check=True, capture_output=True)
        return self.target

    def __exit__(self, *exc):
        subprocess.run(["umount", self.target], check=False, capture_output=True)


def test_debian_two_layers_are_overlay_ready(run_playbook, debian_images, scratch_dir):
    store = os.path.join(scratch_dir, "store")
    pulled = result_of(run_playbook(image_playbook(name=debian_images["top"], store_root=store)))
    assert pulled["changed"] is True
    image = pulled["result"]["image"]
    assert len(image["layers"]) == 2 and all(layer["unpacked"] for layer in image["layers"])
    assert image["config"]["Cmd"] == ["/bin/bash"], "import_base must inherit the base config"

    service = ImageService(store)
    try:
        lowers = service.layers.lower_dirs(image["layers"][-1]["chain_id"])
    finally:
        service.close()
    top_diff = lowers[0]
    whiteout = os.lstat(os.path.join(top_diff, DELTA_REMOVED))
    assert os.major(whiteout.st_rdev) == 0 and os.minor(whiteout.st_rdev) == 0
    assert os.getxattr(os.path.join(top_diff, DELTA_OPAQUE_DIR), "trusted.overlay.opaque") == b"y"
    assert os.path.exists(os.path.join(lowers[1], DELTA_REMOVED)), "the base layer keeps its file"
    hidden = os.listdir(os.path.join(lowers[1], DELTA_OPAQUE_DIR))
    assert hidden, "the base must have something in the dir the delta makes opaque"

    with OverlayMount(os.path.join(scratch_dir, "merged"), lowers) as merged:
        assert not os.path.lexists(os.path.join(merged, DELTA_REMOVED)), "whiteout must hide the file"
        assert os.listdir(os.path.join(merged, DELTA_OPAQUE_DIR)) == [os.path.basename(DELTA_OPAQUE_NEW_FILE)], hidden
        with open(os.path.join(merged, DELTA_ADDED)) as handle:
            assert "delta layer" in handle.read()
        with open(os.path.join(merged, "etc/os-release")) as handle:
            assert "bookworm" in handle.read()
        assert os.stat(os.path.join(merged, "tmp")).st_mode & 0o7777 == 0o1777
        assert os.path.islink(os.path.join(merged, "bin")) or os.path.isdir(os.path.join(merged, "bin"))

    # The base is shared: pulling it too adds no layer.
    again = result_of(run_playbook(image_playbook(name=debian_images["base"], store_root=store)))
    assert again["changed"] is True
    report = store_report(store)
    assert report["ok"] and report["layers"] == 2 and report["images"] == 2, report


@pytest.fixture(scope="module")
def multiarch_image(registry_open, tmp_path_factory):
    work = tmp_path_factory.mktemp("multiarch")
    publisher = str(work / "publisher")
    host = host_platform()
    platforms = [str(host), "linux/arm64/v8" if host.architecture != "arm64" else "linux/amd64", "linux/arm/v7"]
    members = []
    for platform in platforms:
        arch = platform.split("/", 1)[1].replace("/", "-")
        name = "%s/multi/arch:%s" % (registry_open.host, arch)
        publish(publisher, name, build_arch_variant_rootfs(str(work / (arch + ".tar")), arch), platform=platform)
        members.append(parse_reference(name))
    index_ref = parse_reference(registry_open.host + "/multi/arch:1")
    service = ImageService(publisher)
    try:
        digest = push_index(service, index_ref, members)
    finally:
        service.close()
    return {"name": str(index_ref), "digest": digest, "platforms": platforms}


@pytest.mark.parametrize("which", [0, 1, 2])
def test_multiarch_index_selects_the_platform(run_playbook, multiarch_image, scratch_dir, which):
    store = os.path.join(scratch_dir, "store")
    platform = multiarch_image["platforms"][which]
    args = dict(name=multiarch_image["name"], store_root=store)
    if which:
        args["platform"] = platform
    res = result_of(run_playbook(image_playbook(**args)))["result"]
    assert res["image"]["digest"] == multiarch_image["digest"], "the name resolves to the index"
    assert res["image"]["manifest_digest"] != multiarch_image["digest"]
    assert res["image"]["platform"] == platform
    service = ImageService(store)
    try:
        diff = service.layers.diff_path(res["image"]["layers"][0]["chain_id"])
    finally:
        service.close()
    with open(os.path.join(diff, "etc/arch")) as handle:
        assert handle.read().strip() == platform.split("/", 1)[1].replace("/", "-")
    # Same platform again: nothing to do.
    assert result_of(run_playbook(image_playbook(**args)))["changed"] is False


def test_multiarch_missing_platform_is_a_clear_error(run_playbook, multiarch_image, scratch_dir):
    store = os.path.join(scratch_dir, "store")
    res = result_of(run_playbook(image_playbook(name=multiarch_image["name"], store_root=store,
                                                platform="linux/s390x"), expect_failure=True))
    msg = res["result"]["msg"]
    assert "linux/s390x" in msg and "linux/arm/v7" in msg, msg
    report = store_report(store)
    assert report["ok"] and report["images"] == 0 and report["layers"] == 0, report
