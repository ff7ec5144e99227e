# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The unpacker against real tar writers, and its two helpers.

Layers here are made by real peers (GNU tar in pax/gnu formats, busybox tar)
from a real tree, then applied and compared with that tree: types, modes,
owners, ns mtimes, contents, link targets, hard-link groups and xattrs.
``inherit_parent_metadata`` and ``remove_tree`` run on real directories.
Only the short-read stream is a stand-in: it models a decompressor that
returns a few bytes per read(), which BytesIO never does.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _unpack_tars import Tar, TrickleStream, snapshot  # noqa: E402

from ansible_collections.intermodal.containers.plugins.module_utils._unpack import (  # noqa: E402
    apply_layer,
    inherit_parent_metadata,
    remove_tree,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: ownership, setuid, devices")
T0 = 1500000000 * 10 ** 9 + 123456789   # ns, so sub-second precision is checked too


def _touch(path, ns):
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def build_tree(top):
    """A small rootfs with every kind of entry an image has."""
    os.makedirs(top)

    def mk(rel, data=b"", mode=0o644, uid=0, gid=0):
        path = os.path.join(top, rel)
        with open(path, "wb") as handle:
            handle.write(data)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        return path
    for rel, mode, uid in (("etc", 0o755, 0), ("tmp", 0o1777, 0), ("srv", 0o2750, 33),
                           ("root", 0o700, 0), ("usr", 0o755, 0), ("usr/bin", 0o755, 0),
                           ("empty", 0o555, 0), ("long" + "d" * 120, 0o755, 0)):
        os.mkdir(os.path.join(top, rel))
        os.chown(os.path.join(top, rel), uid, uid)
        os.chmod(os.path.join(top, rel), mode)
    mk("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    mk("etc/shadow", b"root:*:1::::::\n", 0o640, 0, 42)
    mk("usr/bin/su", b"\x7fELF su", 0o4755, 0, 0)
    mk("usr/bin/wall", b"\x7fELF wall", 0o2755, 0, 5)
    mk("usr/bin/owned", b"x", 0o755, 1000, 1000)
    mk("usr/bin/busybox", os.urandom(3 * 1024 * 1024 + 17), 0o755)  # spans read chunks
    mk("usr/bin/empty", b"", 0o600)
    mk("long" + "d" * 120 + "/" + "f" * 150, b"long name")
    mk(os.fsdecode(b"etc/caf\xe9"), b"latin-1 name")
    os.link(os.path.join(top, "usr/bin/busybox"), os.path.join(top, "usr/bin/sh"))
    os.link(os.path.join(top, "usr/bin/busybox"), os.path.join(top, "etc/busybox-link"))
    os.symlink("busybox", os.path.join(top, "usr/bin/ls"))
    os.symlink("/etc/passwd", os.path.join(top, "etc/abs-link"))
    os.symlink("../nowhere", os.path.join(top, "etc/dangling"))
    os.symlink("x" * 300, os.path.join(top, "etc/long-target"))
    os.lchown(os.path.join(top, "usr/bin/ls"), 1000, 1000)
    os.setxattr(os.path.join(top, "usr/bin/owned"), "user.foo", b"bar")
    os.setxattr(os.path.join(top, "srv"), "user.dir", b"\x00\xffbinary")
    stamp = T0
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            stamp += 10 ** 9 + 1
            _touch(os.path.join(dirpath, name), stamp)
        for name in dirnames:
            if not os.path.islink(os.path.join(dirpath, name)):
                stamp += 10 ** 9 + 1
                _touch(os.path.join(dirpath, name), stamp)
    _touch(top, T0)


def describe(top, xattrs=True, ns=True):
    """Path -> comparable metadata, with hard links grouped by first name."""
    out, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [""] + dirnames + filenames if dirpath == top else dirnames + filenames:
            path = os.path.join(dirpath, name) if name else top
            st = os.lstat(path)
            rel = os.path.relpath(path, top)
            mtime = st.st_mtime_ns if ns else st.st_mtime_ns // 10 ** 9
            item = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid]
            if not stat.S_ISDIR(st.st_mode) or rel != ".":
                item.append(mtime)
            if stat.S_ISLNK(st.st_mode):
                item[1] = None  # symlink modes are meaningless
                item.append(os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    item.append(handle.read())
                item.append(inodes.setdefault(st.st_ino, rel))
            if xattrs and not stat.S_ISLNK(st.st_mode):
                item.append(sorted((n, os.getxattr(path, n)) for n in os.listxattr(path)))
            out[rel] = item
    return out


@pytest.mark.parametrize("writer", ["gnu-pax", "gnu-gnu", "busybox"])
def test_real_tar_round_trip(tmp_path, writer):
    src = str(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    build_tree(src)
    if writer == "busybox" and not shutil.which("busybox"):
        pytest.skip("busybox not installed")
    cmd = {
        "gnu-pax": ["tar", "--format=pax", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", src, "-cf", "-", "."],
        "gnu-gnu": ["tar", "--format=gnu", "--numeric-owner", "-C", src, "-cf", "-", "."],
        "busybox": ["busybox", "tar", "-C", src, "-cf", "-", "."],
    }[writer]
    data = subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout
    result = apply_layer(io.BytesIO(data), str(dest))
    full = writer == "gnu-pax"  # only pax carries xattrs and ns mtimes
    assert describe(str(dest), xattrs=full, ns=full) == describe(src, xattrs=full, ns=full)
    assert result.implied_dirs == []
    assert result.bytes_written == sum(os.lstat(os.path.join(d, f)).st_size
                                       for d, _unused, fs in os.walk(src) for f in fs
                                       if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f))
                                       and f not in ("sh", "busybox-link"))


def test_short_reads_give_the_same_tree(tmp_path):
    src = str(tmp_path / "src")
    build_tree(src)
    data = subprocess.run(["tar", "--format=pax", "--xattrs", "--xattrs-include=*", "-C", src, "-cf", "-", "."],
                          check=True, stdout=subprocess.PIPE).stdout
    # Drop the 3 MiB file: 7-byte reads of it would only test patience.
    os.unlink(os.path.join(src, "usr/bin/busybox"))
    data = subprocess.run(["tar", "--format=pax", "--xattrs", "--xattrs-include=*", "-C", src, "-cf", "-", "."],
                          check=True, stdout=subprocess.PIPE).stdout
    dest = tmp_path / "dest"
    dest.mkdir()
    apply_layer(TrickleStream(data, step=7), str(dest))
    assert describe(str(dest)) == describe(src)


def test_directory_mtimes_are_set_after_their_children(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    tar = Tar().dir("a", mtime=1000).dir("a/b", mtime=2000).file("a/b/f", b"x", mtime=3000).file("a/g", mtime=4000)
    apply_layer(io.BytesIO(tar.bytes()), str(dest))
    assert os.lstat(str(dest / "a")).st_mtime == 1000
    assert os.lstat(str(dest / "a/b")).st_mtime == 2000
    assert os.lstat(str(dest / "a/b/f")).st_mtime == 3000


def test_implied_dirs_are_reported(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    tar = (Tar().file("usr/bin/x", b"x")          # usr, usr/bin implied
           .dir("opt").file("opt/y/z", b"z")       # opt listed, opt/y implied
           .file("late/f").dir("late", mode=0o700)  # late listed after its child: not implied
           .file("w/.wh.gone"))                     # parent of a whiteout
    result = apply_layer(io.BytesIO(tar.bytes()), str(dest), privileged=True)
    assert sorted(result.implied_dirs) == ["opt/y", "usr", "usr/bin", "w"]
    assert stat.S_IMODE(os.lstat(str(dest / "late")).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(str(dest / "usr/bin")).st_mode) == 0o755


def test_gnu_tar_of_a_single_deep_file_implies_its_parents(tmp_path):
    src = tmp_path / "src"
    (src / "var/lib/app").mkdir(parents=True)
    (src / "var/lib/app/state").write_bytes(b"s")
    data = subprocess.run(["tar", "-C", str(src), "-cf", "-", "var/lib/app/state"],
                          check=True, stdout=subprocess.PIPE).stdout
    dest = tmp_path / "dest"
    dest.mkdir()
    result = apply_layer(io.BytesIO(data), str(dest))
    assert sorted(result.implied_dirs) == ["var", "var/lib", "var/lib/app"]


# -- inherit_parent_metadata -------------------------------------------------

def _layer(tmp_path, name, tar, **kwargs):
    path = tmp_path / name
    path.mkdir()
    result = apply_layer(io.BytesIO(tar.bytes()), str(path), **kwargs)
    return path, result


def test_inherit_gives_implied_tmp_its_lower_mode_owner_and_xattrs(tmp_path):
    base, _unused = _layer(tmp_path, "base", Tar().dir("tmp", mode=0o1777, uid=0, gid=0, mtime=777,
                                                       xattrs={"user.keep": "1"}).dir("var", uid=7, gid=8))
    os.setxattr(str(base / "tmp"), "trusted.overlay.opaque", b"y")  # must not be copied up
    upper, result = _layer(tmp_path, "upper", Tar().file("tmp/x", b"x").file("var/y", b"y"))
    assert sorted(result.implied_dirs) == ["tmp", "var"]
    assert stat.S_IMODE(os.lstat(str(upper / "tmp")).st_mode) == 0o755
    inherit_parent_metadata(str(upper), result.implied_dirs, [str(base)])
    st = os.lstat(str(upper / "tmp"))
    assert stat.S_IMODE(st.st_mode) == 0o1777 and (st.st_uid, st.st_gid) == (0, 0)
    assert os.listxattr(str(upper / "tmp")) == ["user.keep"]
    assert (os.lstat(str(upper / "var")).st_uid, os.lstat(str(upper / "var")).st_gid) == (7, 8)
    assert open(str(upper / "tmp/x"), "rb").read() == b"x"


def test_inherit_takes_the_topmost_lower_and_stops_at_a_non_directory(tmp_path):
    base, _unused = _layer(tmp_path, "base", Tar().dir("a", mode=0o1777).dir("b", mode=0o1777))
    mid, _unused = _layer(tmp_path, "mid", Tar().dir("a", mode=0o700, uid=5).file("b", b"file now"))
    upper, result = _layer(tmp_path, "upper", Tar().file("a/x").file("b/x"))
    inherit_parent_metadata(str(upper), result.implied_dirs, [str(mid), str(base)])
    st = os.lstat(str(upper / "a"))
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, 5)
    assert stat.S_IMODE(os.lstat(str(upper / "b")).st_mode) == 0o755  # b is a file in mid: left as is


def test_inherit_resolves_lower_symlinks_inside_the_lower(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    os.chmod(str(host), 0o711)
    os.setxattr(str(host), "user.host", b"secret")
    base, _unused = _layer(tmp_path, "base", Tar()
                           .symlink("data", str(host))           # absolute: the lower's own /<host path>
                           .symlink("loop", "loop/x")
                           .dir("var/tmp", mode=0o1777).symlink("run", "var/tmp"))
    upper, result = _layer(tmp_path, "upper", Tar().file("data/x").file("run/y").file("loop/z"))
    inherit_parent_metadata(str(upper), result.implied_dirs, [str(base)])
    assert stat.S_IMODE(os.lstat(str(upper / "data")).st_mode) == 0o755
    assert os.listxattr(str(upper / "data")) == []
    assert stat.S_IMODE(os.lstat(str(upper / "loop")).st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(str(upper / "run")).st_mode) == 0o1777


# -- remove_tree -------------------------------------------------------------

def test_remove_tree_handles_locked_dirs_devices_and_never_follows_symlinks(tmp_path):
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep/file").write_bytes(b"keep")
    victim = tmp_path / "victim"
    (victim / "locked/inner").mkdir(parents=True)
    (victim / "locked/inner/f").write_bytes(b"f")
    (victim / "locked/g").write_bytes(b"g")
    os.mknod(str(victim / "wh"), stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.mkfifo(str(victim / "fifo"))
    os.symlink(str(outside / "keep"), str(victim / "dirlink"))
    os.symlink(str(outside / "keep/file"), str(victim / "filelink"))
    os.symlink(str(outside), str(victim / "locked/up"))
    os.chmod(str(victim / "locked/inner"), 0)
    os.chmod(str(victim / "locked"), 0)
    before = snapshot(str(tmp_path), str(victim))
    remove_tree(str(victim))
    assert not os.path.lexists(str(victim))
    assert snapshot(str(tmp_path), str(victim)) == before
    assert (outside / "keep/file").read_bytes() == b"keep"


def test_remove_tree_of_an_unpacked_layer(tmp_path):
    layer, _unused = _layer(tmp_path, "layer", Tar().dir("ro", mode=0o000).file("ro/f", b"x", mode=0)
                            .symlink("up", "/").file("d/.wh.x"), privileged=True)
    remove_tree(str(layer))
    assert not os.path.lexists(str(layer))


def test_unprivileged_user_unpacks_locked_dirs_and_removes_them():
    """As nobody (forked, setresuid): 0555/000 dirs with children, user.overlay.* opaque, no devices."""
    import tempfile
    work = tempfile.mkdtemp(prefix="unpack-nobody-")
    try:
        os.chown(work, 65534, 65534)  # nobody must be able to remove dest from it
        dest = os.path.join(work, "dest")
        os.mkdir(dest)
        os.chown(dest, 65534, 65534)
        tar = (Tar().dir("ro", mode=0o555).file("ro/f", b"x", mode=0o444)
               .dir("locked", mode=0).file("locked/g", b"g").file("o/.wh..wh..opq").file("o/.wh.gone")
               .entry("dev/null", b"3", devmajor=1, devminor=3))
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 1
            try:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                apply_layer(io.BytesIO(tar.bytes()), dest)
                ok = (stat.S_IMODE(os.lstat(os.path.join(dest, "ro")).st_mode) == 0o555
                      and stat.S_IMODE(os.lstat(os.path.join(dest, "locked")).st_mode) == 0
                      and os.getxattr(os.path.join(dest, "o"), "user.overlay.opaque") == b"y"
                      # Linux >= 5.8 lets anyone mknod a 0/0 whiteout.
                      and stat.S_ISCHR(os.lstat(os.path.join(dest, "o/gone")).st_mode)
                      and not os.path.lexists(os.path.join(dest, "dev/null")))
                remove_tree(dest)
                code = 0 if ok and not os.path.lexists(dest) else 2
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                os._exit(code)
        _unused, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        remove_tree(work)
