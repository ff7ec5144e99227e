"""Pieces of the rootfs and runtime helpers that need no container: links, mountinfo, detection."""

from __future__ import annotations

import os

import pytest

from ansible_collections.intermodal.containers.plugins.module_utils import _rootfs, _runtime
from ansible_collections.intermodal.containers.plugins.module_utils._errors import MissingDependency

HYBRID = """\
25 30 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
27 25 0:24 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2 = "25 30 0:22 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n"


def test_short_links_are_stable_and_point_at_the_layers(tmp_path):
    store = tmp_path / "store"
    lowers = []
    for i in range(3):
        d = store / "layers" / ("%064x" % i) / "diff"
        d.mkdir(parents=True)
        (d / ("f%d" % i)).write_text("x")
        lowers.append(str(d))
    links = _rootfs.ensure_short_links(str(store), lowers)
    assert links == _rootfs.ensure_short_links(str(store), lowers)  # idempotent
    assert len(set(links)) == 3
    for link, lower in zip(links, lowers):
        assert os.path.dirname(link) == str(store / "l")
        assert len(os.path.basename(link)) <= 13
        assert os.path.realpath(link) == lower
    os.rename(lowers[2], lowers[2] + ".gone")
    assert _rootfs.prune_short_links(str(store)) == 1
    assert sorted(os.listdir(str(store / "l"))) == sorted(os.path.basename(x) for x in links[:2])


def test_short_links_refuse_missing_layer(tmp_path):
    with pytest.raises(_rootfs.MountError, match="does not exist"):
        _rootfs.ensure_short_links(str(tmp_path), [str(tmp_path / "nope")])


def test_mountinfo_escapes(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text("36 35 98:0 / /mnt/with\\040space rw - ext4 /dev/x rw\n"
                    "37 35 98:0 / /plain rw - ext4 /dev/x rw\n")
    assert _rootfs.mount_points(str(info)) == ["/mnt/with space", "/plain"]


def test_is_mounted_on_this_host():
    assert _rootfs.is_mounted("/proc")
    assert not _rootfs.is_mounted("/proc/self/fd")


def test_hybrid_detection(tmp_path):
    """Fake mountinfo: the host cannot be both layouts at once (and the fix may already be applied)."""
    unified = tmp_path / "unified"
    unified.mkdir()
    (unified / "cgroup.controllers").write_text("hugetlb\n")
    info = tmp_path / "mountinfo"
    info.write_text(HYBRID.replace("/sys/fs/cgroup/unified", str(unified)))
    assert _runtime.hybrid_controllers(str(info)) == {"hugetlb"}
    (unified / "cgroup.controllers").write_text("\n")
    assert _runtime.hybrid_controllers(str(info)) == set()
    info.write_text(V2)
    assert _runtime.hybrid_controllers(str(info)) == set()


def test_hybrid_hint_gives_the_fix():
    hint = _runtime.hybrid_fix_hint({"hugetlb"})
    assert "mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb" in hint and "runc" in hint


@pytest.mark.parametrize("name", ["crun", "runc"])
def test_missing_binary_gives_install_hint(name, tmp_path):
    runtime = _runtime.Runtime(name, binary=str(tmp_path / name), state_root=str(tmp_path / "state"))
    with pytest.raises(MissingDependency) as err:
        runtime.check()
    assert "apt install %s" % name in str(err.value)


def test_unknown_runtime_is_refused():
    with pytest.raises(Exception, match="runtime"):
        _runtime.Runtime("kata")
