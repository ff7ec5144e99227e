# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Adversarial layer tars against the public unpacker API (black box).

Every tar here is hand-built in memory: no registry or real image produces
these entries, which is why they are fabricated (the pulling reference's
"10 adversarial tests", the tar-related ones). Each test unpacks into
``tmp_path/root`` next to ``tmp_path/outside`` (a canary file, a directory)
and proves through a full snapshot that nothing outside the root changed.
Absolute symlink targets point at the real ``outside`` path, so an unpacker
that followed them on the host would write there, where we look.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _unpack_tars import LazyStream, Tar, header, snapshot  # noqa: E402

from ansible_collections.intermodal.containers.plugins.module_utils._errors import UnsafeLayer  # noqa: E402
from ansible_collections.intermodal.containers.plugins.module_utils._unpack import Limits, apply_layer  # noqa: E402

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ownership, whiteout devices, trusted xattrs)")
MIB = 1024 * 1024


class Area(object):
    def __init__(self, tmp_path):
        self.top = tmp_path
        self.root = tmp_path / "root"
        self.outside = tmp_path / "outside"
        self.root.mkdir()
        self.outside.mkdir()
        (self.outside / "sub").mkdir()
        self.canary = self.outside / "canary"
        self.canary.write_bytes(b"host data")
        os.chmod(str(self.canary), 0o640)
        # The outside dir as a path *inside* the root, where confined writes land.
        self.inner = str(self.outside).lstrip("/")
        self.before = snapshot(str(tmp_path), str(self.root))

    def apply(self, tar, **kwargs):
        data = tar.bytes() if isinstance(tar, Tar) else tar
        return apply_layer(io.BytesIO(data), str(self.root), **kwargs)

    def at(self, relpath):
        return os.path.join(str(self.root), relpath)

    def assert_outside_untouched(self):
        assert snapshot(str(self.top), str(self.root)) == self.before
        assert self.canary.read_bytes() == b"host data"
        assert stat.S_IMODE(os.lstat(str(self.canary)).st_mode) == 0o640


@pytest.fixture
def area(tmp_path):
    return Area(tmp_path)


# -- 1. traversal ----------------------------------------------------------

def test_dotdot_and_absolute_names_stay_in_the_root(area):
    host_name = "/etc/intermodal-unpack-test-%s" % uuid.uuid4().hex
    tar = (Tar().file("../../escape1", b"1")
           .file(str(area.outside) + "/escape2", b"2")
           .file("a/../../escape3", b"3")
           .file(host_name, b"4")
           .file("./../x/../../escape5", b"5"))
    try:
        area.apply(tar)
    finally:
        leaked = os.path.lexists(host_name)
        if leaked:
            os.unlink(host_name)
    assert not leaked
    assert open(area.at("escape1"), "rb").read() == b"1"
    assert open(area.at(area.inner + "/escape2"), "rb").read() == b"2"
    assert open(area.at("escape3"), "rb").read() == b"3"
    assert open(area.at(host_name.lstrip("/")), "rb").read() == b"4"
    assert open(area.at("escape5"), "rb").read() == b"5"
    assert not os.path.lexists(str(area.top / "escape1"))
    area.assert_outside_untouched()


# -- 2. symlink, then write through it -------------------------------------

def test_write_through_absolute_symlink_is_confined(area):
    tar = (Tar().symlink("etc", str(area.outside))
           .file("etc/passwd", b"pwned")
           .file("etc/canary", b"pwned"))
    area.apply(tar)
    assert os.readlink(area.at("etc")) == str(area.outside)  # stored verbatim
    assert open(area.at(area.inner + "/passwd"), "rb").read() == b"pwned"
    assert open(area.at(area.inner + "/canary"), "rb").read() == b"pwned"
    area.assert_outside_untouched()


def test_write_through_relative_dotdot_symlink_is_confined(area):
    tar = (Tar().symlink("lnk", "../../..")
           .file("lnk/pwn", b"x")
           .symlink("deep/up", "../../../../outside")
           .file("deep/up/canary", b"x"))
    area.apply(tar)
    assert open(area.at("pwn"), "rb").read() == b"x"
    assert open(area.at("outside/canary"), "rb").read() == b"x"
    assert not os.path.lexists(str(area.top / "pwn"))
    area.assert_outside_untouched()


def test_symlink_from_an_earlier_layer_does_not_apply_to_a_new_layer_dir(area, tmp_path):
    layer1 = tmp_path / "layer1"
    layer1.mkdir()
    apply_layer(io.BytesIO(Tar().symlink("etc", str(area.outside)).bytes()), str(layer1))
    area.apply(Tar().file("etc/passwd", b"pwned"))
    assert stat.S_ISDIR(os.lstat(area.at("etc")).st_mode)
    assert open(area.at("etc/passwd"), "rb").read() == b"pwned"
    assert not os.path.lexists(str(area.outside / "passwd"))


def test_symlink_loop_is_refused(area):
    tar = Tar().symlink("a", "b").symlink("b", "a").file("a/x", b"x")
    with pytest.raises(UnsafeLayer):
        area.apply(tar)
    area.assert_outside_untouched()


# -- 3. directory swapped for a symlink mid-tar (CVE-2025-47290) ----------

@pytest.mark.parametrize("target", ["../outside", "ABS"])
def test_dir_swapped_for_symlink_mid_tar(area, target):
    target = str(area.outside) if target == "ABS" else target
    tar = (Tar().dir("d").file("d/a", b"a")
           .symlink("d", target)
           .file("d/b", b"b")
           .file("d/canary", b"b"))
    area.apply(tar)
    assert os.readlink(area.at("d")) == target
    landed = "outside" if not target.startswith("/") else area.inner
    assert open(area.at(landed + "/b"), "rb").read() == b"b"
    assert open(area.at(landed + "/canary"), "rb").read() == b"b"
    area.assert_outside_untouched()


def test_swap_back_and_forth_is_resolved_fresh_each_entry(area):
    tar = Tar()
    for i in range(5):
        tar.dir("d").file("d/in%d" % i, b"in").symlink("d", str(area.outside)).file("d/out%d" % i, b"out")
    area.apply(tar)
    for i in range(5):
        assert os.path.exists(area.at(area.inner + "/out%d" % i))
    area.assert_outside_untouched()


# -- 4. hard links ---------------------------------------------------------

def test_hardlink_through_root_symlink_to_host_file_is_refused(area):
    tar = Tar().symlink("lnk", "/").hardlink("x", "lnk/" + area.inner + "/canary")
    with pytest.raises(UnsafeLayer):
        area.apply(tar)
    assert os.lstat(str(area.canary)).st_nlink == 1
    area.assert_outside_untouched()


def test_hardlink_through_symlink_links_the_layers_own_file(area):
    tar = (Tar().file("etc/shadow", b"layer shadow")
           .symlink("lnk", "/")
           .hardlink("x", "lnk/etc/shadow"))
    area.apply(tar)
    assert os.path.samefile(area.at("x"), area.at("etc/shadow"))
    assert open(area.at("x"), "rb").read() == b"layer shadow"
    area.assert_outside_untouched()


@pytest.mark.parametrize("target", ["missing", "../outside/canary", "/etc/passwd"])
def test_hardlink_to_missing_target_is_refused(area, target):
    with pytest.raises(UnsafeLayer):
        area.apply(Tar().hardlink("x", target))
    assert os.lstat(str(area.canary)).st_nlink == 1
    area.assert_outside_untouched()


def test_hardlink_to_directory_is_refused(area):
    with pytest.raises(UnsafeLayer):
        area.apply(Tar().dir("d").hardlink("x", "d"))


def test_hardlink_to_symlink_links_the_symlink_itself(area):
    area.apply(Tar().symlink("s", str(area.canary)).hardlink("h", "s"))
    assert os.readlink(area.at("h")) == str(area.canary)
    assert os.lstat(area.at("h")).st_ino == os.lstat(area.at("s")).st_ino
    area.assert_outside_untouched()


# -- 5. whiteouts ----------------------------------------------------------

@pytest.mark.parametrize("name", ["d/.wh.", "d/.wh..", "d/.wh...", ".wh.."])
def test_malformed_whiteouts_are_refused(area, name):
    with pytest.raises(UnsafeLayer):
        area.apply(Tar().dir("d").file(name))
    area.assert_outside_untouched()


@ROOT_ONLY
def test_whiteout_becomes_char_device_and_marker_is_not_written(area):
    area.apply(Tar().dir("d").file("d/.wh.gone").file(".wh.top"), privileged=True)
    for rel in ("d/gone", "top"):
        st = os.lstat(area.at(rel))
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
        assert (st.st_uid, st.st_gid) == (0, 0)
    assert not os.path.lexists(area.at("d/.wh.gone"))


@ROOT_ONLY
def test_whiteout_under_symlinked_parent_is_confined(area):
    tar = Tar().symlink("p", str(area.outside)).file("p/.wh.canary").file("p/sub/.wh.x")
    area.apply(tar, privileged=True)
    assert stat.S_ISCHR(os.lstat(area.at(area.inner + "/canary")).st_mode)
    assert stat.S_ISCHR(os.lstat(area.at(area.inner + "/sub/x")).st_mode)
    area.assert_outside_untouched()


@ROOT_ONLY
@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_marker_keeps_this_layers_siblings(area, marker_first):
    tar = Tar().dir("d")
    if marker_first:
        tar.file("d/.wh..wh..opq")
    tar.file("d/a", b"a").dir("d/sub").file("d/sub/b", b"b")
    if not marker_first:
        tar.file("d/.wh..wh..opq")
    area.apply(tar, privileged=True)
    assert os.getxattr(area.at("d"), "trusted.overlay.opaque") == b"y"
    assert open(area.at("d/a"), "rb").read() == b"a"
    assert open(area.at("d/sub/b"), "rb").read() == b"b"
    assert not os.path.lexists(area.at("d/.wh..wh..opq"))
    with pytest.raises(OSError):
        os.getxattr(area.at("d/sub"), "trusted.overlay.opaque")


@ROOT_ONLY
def test_other_wh_wh_names_are_ignored(area):
    area.apply(Tar().dir("d").file("d/.wh..wh.plnk", b"x").file("d/.wh..wh.aufs"), privileged=True)
    assert os.listdir(area.at("d")) == []


@ROOT_ONLY
def test_whiteout_then_same_name_and_reverse(area):
    tar = (Tar().file("d/x", b"file").file("d/.wh.x")          # file, then whiteout
           .file("d/.wh.y").file("d/y", b"again")               # whiteout, then file
           .dir("d/z").file("d/z/inner", b"i").file("d/.wh.z")  # dir, then whiteout
           .file("d/.wh.w").dir("d/w"))                          # whiteout, then dir
    area.apply(tar, privileged=True)
    assert stat.S_ISCHR(os.lstat(area.at("d/x")).st_mode)
    assert open(area.at("d/y"), "rb").read() == b"again"
    assert stat.S_ISCHR(os.lstat(area.at("d/z")).st_mode)
    assert stat.S_ISDIR(os.lstat(area.at("d/w")).st_mode)


# -- 6. metadata -----------------------------------------------------------

@ROOT_ONLY
def test_symlink_to_host_file_then_metadata_on_same_path_spares_host(area):
    tar = (Tar().symlink("f", str(area.canary), uid=1234, gid=1234)
           .file("f", b"replaced", mode=0o4777, uid=1234, gid=1234)
           .symlink("g", str(area.outside / "sub"))
           .dir("g", mode=0o777, uid=4321))
    area.apply(tar)
    assert open(area.at("f"), "rb").read() == b"replaced"
    assert stat.S_IMODE(os.lstat(area.at("f")).st_mode) == 0o4777
    assert stat.S_ISDIR(os.lstat(area.at("g")).st_mode)
    area.assert_outside_untouched()


@ROOT_ONLY
def test_symlink_mode_and_owner_never_reach_the_target(area):
    area.apply(Tar().symlink("s", str(area.canary), uid=1234, gid=99))
    st = os.lstat(area.at("s"))
    assert (st.st_uid, st.st_gid) == (1234, 99)
    area.assert_outside_untouched()


@ROOT_ONLY
def test_overlay_and_selinux_xattrs_from_the_layer_are_dropped(area):
    evil = {"trusted.overlay.redirect": "/etc", "trusted.overlay.opaque": "y",
            "trusted.overlay.metacopy": "", "user.overlay.opaque": "y",
            "security.selinux": "system_u:object_r:shadow_t:s0", "user.foo": "bar"}
    area.apply(Tar().dir("d", xattrs=evil).file("f", b"x", xattrs=evil))
    for rel in ("d", "f"):
        assert sorted(os.listxattr(area.at(rel))) == ["user.foo"]
        assert os.getxattr(area.at(rel), "user.foo") == b"bar"


@ROOT_ONLY
def test_security_capability_is_kept_after_chown(area):
    # A VFS_CAP_REVISION_2 blob granting cap_net_bind_service (bit 10).
    cap = b"\x01\x00\x00\x02" + (1 << 10).to_bytes(4, "little") + bytes(12)
    area.apply(Tar().file("ping", b"\x7fELF", mode=0o755, uid=0, gid=0,
                          xattrs={"security.capability": cap}))
    assert os.getxattr(area.at("ping"), "security.capability") == cap


@ROOT_ONLY
def test_numeric_owner_wins_over_names_and_setuid_survives_chown(area):
    tar = (Tar().file("su", b"x", mode=0o4755, uid=1000, gid=1001, uname="root", gname="root")
           .dir("shared", mode=0o2775, uid=1000, gid=1001, uname="root", gname="root")
           .dir("tmp", mode=0o1777))
    area.apply(tar)
    st = os.lstat(area.at("su"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o4755)
    st = os.lstat(area.at("shared"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o2775)
    assert stat.S_IMODE(os.lstat(area.at("tmp")).st_mode) == 0o1777


def test_devices_and_fifos_are_skipped_when_not_privileged(area):
    tar = (Tar().entry("dev/null", b"3", mode=0o666, devmajor=1, devminor=3)
           .entry("dev/sda", b"4", mode=0o660, devmajor=8, devminor=0)
           .entry("dev/fifo", b"6", mode=0o600)
           .file("dev/regular", b"r"))
    result = area.apply(tar, privileged=False)
    assert sorted(os.listdir(area.at("dev"))) == ["regular"]
    assert result.entries == 4
    area.assert_outside_untouched()


@ROOT_ONLY
def test_devices_are_created_when_privileged(area):
    tar = (Tar().entry("dev/null", b"3", mode=0o666, devmajor=1, devminor=3)
           .entry("dev/fifo", b"6", mode=0o620, uid=5, gid=6))
    area.apply(tar, privileged=True)
    st = os.lstat(area.at("dev/null"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666
    st = os.lstat(area.at("dev/fifo"))
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620
    assert (st.st_uid, st.st_gid) == (5, 6)


# -- the root itself -------------------------------------------------------

@pytest.mark.parametrize("name", [".", "./", "/", ""])
def test_root_entry_may_set_root_metadata(area, name):
    area.apply(Tar().raw(header(name, b"5", mode=0o711, mtime=1000000000)).file("x", b"x"))
    st = os.lstat(str(area.root))
    assert stat.S_IMODE(st.st_mode) == 0o711
    assert st.st_mtime_ns == 1000000000 * 10 ** 9
    area.assert_outside_untouched()


@pytest.mark.parametrize("kind", ["file", "symlink", "hardlink", "fifo"])
def test_non_directory_root_entry_is_refused(area, kind):
    tar = Tar().file("f", b"x")
    if kind == "file":
        tar.file("./", b"x")
    elif kind == "symlink":
        tar.symlink(".", str(area.outside))
    elif kind == "hardlink":
        tar.hardlink("./", "f")
    else:
        tar.entry("/", b"6")
    with pytest.raises(UnsafeLayer):
        area.apply(tar, privileged=True)
    assert stat.S_ISDIR(os.lstat(str(area.root)).st_mode)
    area.assert_outside_untouched()


# -- 7. bombs and malformed tars -------------------------------------------

def test_total_bytes_limit_aborts(area):
    tar = Tar().file("a", b"x" * 600).file("b", b"y" * 600)
    with pytest.raises(UnsafeLayer):
        area.apply(tar, limits=Limits(max_total_bytes=1000))


def test_huge_file_is_refused_before_its_data_is_read(area):
    prefix = header("big", b"0", size=100 * 1024 ** 3)  # 100 GiB of zeros, never materialised
    stream = LazyStream(prefix, total=prefix.__len__() + 100 * 1024 ** 3)
    with pytest.raises(UnsafeLayer):
        apply_layer(stream, str(area.root), Limits(max_total_bytes=MIB, max_file_bytes=MIB))
    assert stream.read_bytes < 8 * MIB
    area.assert_outside_untouched()


@pytest.mark.parametrize("name", ["d/.wh.x", "d/.wh..wh.plnk"])
def test_data_behind_whiteout_markers_counts_against_limits(area, name):
    """Marker data is never written, but reading 4 GiB of it is still a bomb."""
    prefix = header(name, b"0", size=4 * 1024 ** 3)
    stream = LazyStream(prefix, total=len(prefix) + 4 * 1024 ** 3 + 1024)
    with pytest.raises(UnsafeLayer):
        apply_layer(stream, str(area.root), Limits(max_total_bytes=MIB, max_file_bytes=MIB), privileged=True)
    assert stream.read_bytes < 8 * MIB


def test_dir_later_replaced_by_symlink_loop(area):
    tar = Tar().dir("a", mtime=5).dir("a/b", mtime=5).symlink("a", "a")
    area.apply(tar)
    assert os.readlink(area.at("a")) == "a"
    area.assert_outside_untouched()


def test_file_size_limit_counts_each_file(area):
    with pytest.raises(UnsafeLayer):
        area.apply(Tar().file("a", b"x" * 2048), limits=Limits(max_file_bytes=1024))


@pytest.mark.parametrize("typeflag", [b"x", b"L", b"K", b"g"])
def test_huge_extended_header_is_refused_without_reading_it(area, typeflag):
    size = 2 * 1024 ** 3  # a 2 GiB PAX / long-name header
    prefix = header("PaxHeaders/big", typeflag, size)
    stream = LazyStream(prefix, total=len(prefix) + size + 4096, filler=b"9")
    with pytest.raises(UnsafeLayer):
        apply_layer(stream, str(area.root), Limits(max_header_bytes=64 * 1024))
    assert stream.read_bytes < 8 * MIB


def test_chained_extended_headers_share_one_budget(area):
    """300 PAX headers of 8 KiB each before one entry: the cap is per entry, not per header."""
    tar = Tar()
    for i in range(300):
        tar.pax([("comment", "c" * 8000)])
    tar.file("f", b"x")
    with pytest.raises(UnsafeLayer):
        area.apply(tar, limits=Limits(max_header_bytes=64 * 1024))


@pytest.mark.parametrize("key", ["path", "linkpath"])
def test_nul_byte_in_pax_path_is_refused(area, key):
    tar = Tar()
    if key == "path":
        tar.file("f", b"x", pax=[("path", b"etc/pass\x00wd")])
    else:
        tar.symlink("s", "t", pax=[("linkpath", b"/etc/\x00x")])
    with pytest.raises(UnsafeLayer):
        area.apply(tar)
    area.assert_outside_untouched()


def test_gnu_sparse_entry_is_refused(area):
    # Type 'S' claims a huge real size (offset 483) made of holes.
    block = bytearray(header("sparse", b"S", size=512, mode=0o644))
    with pytest.raises(UnsafeLayer):
        area.apply(Tar().raw(bytes(block) + bytes(512)))


def test_pax_sparse_entry_is_refused(area):
    # A valid sparse 1.0 map (one 512-byte data run at offset 0), then the
    # data: extracting it naively would write a 1 TiB file of holes.
    data = b"1\n0\n512\n".ljust(512, b"\x00") + b"d" * 512
    tar = Tar().file("GNUSparseFile.0/sparse", data, pax=[
        ("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"),
        ("GNU.sparse.name", "sparse"), ("GNU.sparse.realsize", str(1024 ** 4))])
    with pytest.raises(UnsafeLayer):
        area.apply(tar)


def test_malformed_sparse_map_is_a_typed_refusal(area):
    """A garbage PAX sparse map must surface as UnsafeLayer, not a parser crash."""
    tar = Tar().file("GNUSparseFile.0/sparse", b"\x00" * 512, pax=[
        ("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"),
        ("GNU.sparse.name", "sparse"), ("GNU.sparse.realsize", "512")])
    with pytest.raises(UnsafeLayer):
        area.apply(tar)


def test_too_many_entries(area):
    tar = Tar()
    for i in range(11):
        tar.file("f%d" % i)
    with pytest.raises(UnsafeLayer):
        area.apply(tar, limits=Limits(max_entries=10))
    assert len(os.listdir(str(area.root))) <= 10


def test_path_length_and_depth_limits(area):
    with pytest.raises(UnsafeLayer):
        area.apply(Tar().file("a" * 200 + "/" + "b" * 200, b"x"), limits=Limits(max_path_length=300))
    with pytest.raises(UnsafeLayer):
        area.apply(Tar().file("/".join(["d"] * 20), b"x"), limits=Limits(max_depth=10))


def test_depth_limit_applies_after_symlink_expansion(area):
    # A short name that a symlink expands into a very deep path.
    tar = Tar().symlink("s", "/".join(["d"] * 40)).file("s/x", b"x")
    with pytest.raises(UnsafeLayer):
        area.apply(tar, limits=Limits(max_depth=10))


def test_bad_checksum_is_refused(area):
    with pytest.raises(UnsafeLayer):
        area.apply(Tar().raw(header("f", b"0", 0, checksum_delta=1)))


def test_negative_size_is_refused(area):
    negative = b"\xff" * 12  # base-256 -1
    with pytest.raises(UnsafeLayer):
        area.apply(Tar().raw(header("f", b"0", size_field=negative)))


def test_truncated_file_data_is_an_error(area):
    data = Tar().file("f", b"x" * 4096).bytes(trailer=False)[:512 + 1000]
    with pytest.raises(UnsafeLayer):
        area.apply(data)


def test_stream_read_to_end_of_archive_marker(area):
    data = Tar().file("a", b"a" * 5000).dir("d").bytes()
    stream = io.BytesIO(data + b"trailing garbage the caller drains")
    result = apply_layer(stream, str(area.root))
    assert result.entries == 2
    assert result.bytes_written == 5000
    assert stream.tell() >= len(data)
