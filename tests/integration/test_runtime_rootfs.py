"""Real overlay mounts: many layers past the one-page option limit, read-only, unmount, is_mounted."""

from __future__ import annotations

import os

import pytest

# Imported for its side effect: puts the collection on sys.path.
from tests.integration.image_helpers import COLLECTIONS_DIR  # noqa: F401  # pylint: disable=unused-import

from ansible_collections.intermodal.containers.plugins.module_utils import _rootfs

pytestmark = pytest.mark.integration


@pytest.fixture
def mounts():
    made = []
    yield made
    for target in reversed(made):
        _rootfs.unmount(target)
    assert not any(_rootfs.is_mounted(t) for t in made)


def _layers(root, count):
    lowers = []
    for i in range(count):
        d = os.path.join(root, "layers", "%064x" % i, "diff")
        os.makedirs(d)
        with open(os.path.join(d, "layer-%03d" % i), "w") as f:
            f.write(str(i))
        with open(os.path.join(d, "shadowed"), "w") as f:
            f.write(str(i))
        lowers.append(d)
    return list(reversed(lowers))  # top-most first, as lower_dirs() gives them


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_many_layers_beyond_a_page_of_options(tmp_path, mounts):
    store = str(tmp_path / ("s" * 80))  # long store path: absolute options would not fit a page
    lowers = _layers(store, 150)
    assert len(":".join(lowers)) > os.sysconf("SC_PAGESIZE")
    links = _rootfs.ensure_short_links(store, lowers)
    target = os.path.join(store, "c", "rootfs")
    _rootfs.mount_overlay(links, os.path.join(store, "c", "upper"), os.path.join(store, "c", "work"), target)
    mounts.append(target)
    assert _rootfs.is_mounted(target)
    names = os.listdir(target)
    assert len([n for n in names if n.startswith("layer-")]) == 150
    with open(os.path.join(target, "shadowed")) as f:
        assert f.read() == "149"  # the top-most layer wins
    with pytest.raises(_rootfs.MountError, match="already mounted"):
        _rootfs.mount_overlay(links, os.path.join(store, "c", "upper"), os.path.join(store, "c", "work"), target)
    with open(os.path.join(target, "new"), "w") as f:
        f.write("x")
    assert os.path.exists(os.path.join(store, "c", "upper", "new"))  # writes land in the container layer
    assert not any(os.path.exists(os.path.join(d, "new")) for d in lowers)
    assert os.getcwd() != store  # the relative-path mount restored our cwd
    assert _rootfs.unmount(target) is True
    mounts.remove(target)
    assert not _rootfs.is_mounted(target)
    assert _rootfs.unmount(target) is False


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_read_only_and_lower_only_mounts(tmp_path, mounts):
    lowers = _layers(str(tmp_path), 1)
    ro = str(tmp_path / "ro")
    _rootfs.mount_overlay(lowers, None, None, ro)
    mounts.append(ro)
    assert os.listdir(ro) == sorted(os.listdir(lowers[0])) or set(os.listdir(ro)) == set(os.listdir(lowers[0]))
    with pytest.raises(OSError):
        open(os.path.join(ro, "x"), "w").close()
    ro2 = str(tmp_path / "ro2")
    _rootfs.mount_overlay(lowers, str(tmp_path / "u"), str(tmp_path / "w"), ro2, read_only=True)
    mounts.append(ro2)
    with pytest.raises(OSError):
        open(os.path.join(ro2, "x"), "w").close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_mount_errors_are_typed(tmp_path):
    with pytest.raises(_rootfs.MountError, match="at least one"):
        _rootfs.mount_overlay([], None, None, str(tmp_path / "t"))
    with pytest.raises(_rootfs.MountError, match="cannot mount"):
        _rootfs.mount_overlay([str(tmp_path / "missing")], str(tmp_path / "u"), str(tmp_path / "w"),
                              str(tmp_path / "t"))
    assert not _rootfs.is_mounted(str(tmp_path / "t"))
