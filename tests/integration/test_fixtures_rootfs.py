"""The rootfs builders produce real, usable, deterministic content."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile

import pytest

from tests.lib import rootfs

pytestmark = pytest.mark.integration


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _members(path):
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_busybox_rootfs_contents(scratch_dir):
    tar_path = rootfs.build_busybox_rootfs(os.path.join(scratch_dir, "bb.tar"))
    m = _members(tar_path)
    bb = m["bin/busybox"]
    assert bb.isfile() and bb.mode & 0o111 and bb.size == os.path.getsize(rootfs.BUSYBOX)
    for applet in ("sh", "ls", "cat", "sleep", "echo", "id"):
        link = m["bin/" + applet]
        assert link.issym() and link.linkname == "busybox"
    assert m["tmp"].isdir() and m["tmp"].mode == 0o1777
    for d in ("proc", "sys", "dev", "root", "etc"):
        assert m[d].isdir()
    assert "busybox" not in [n.split("/")[-1] for n in m if m[n].issym()]
    for info in m.values():
        assert (info.uid, info.gid, info.mtime) == (0, 0, rootfs.FIXED_MTIME)
    with tarfile.open(tar_path) as tar:
        passwd = tar.extractfile("etc/passwd").read().decode()
        group = tar.extractfile("etc/group").read().decode()
    assert passwd.startswith("root:x:0:0:") and "\nnobody:x:65534:65534:" in passwd
    assert group.startswith("root:x:0:") and "nobody:x:65534:" in group


def test_busybox_rootfs_is_deterministic(scratch_dir):
    a = rootfs.build_busybox_rootfs(os.path.join(scratch_dir, "a.tar"))
    b = rootfs.build_busybox_rootfs(os.path.join(scratch_dir, "b.tar"))
    assert _sha256(a) == _sha256(b)
    with tarfile.open(a) as tar:
        names = tar.getnames()
    assert names == sorted(names)


def test_busybox_rootfs_actually_runs(scratch_dir):
    """Unpack it and run its sh with chroot: the tar is a working rootfs."""
    tar_path = rootfs.build_busybox_rootfs(os.path.join(scratch_dir, "bb.tar"))
    root = os.path.join(scratch_dir, "root")
    os.mkdir(root)
    with tarfile.open(tar_path) as tar:
        tar.extractall(root, filter="tar")
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    out = subprocess.run(["chroot", root, "/bin/sh", "-c", "echo hello from $(cat /etc/group | head -n1)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "hello from root:x:0:"


def test_delta_layer_has_whiteout_opaque_and_new_file(scratch_dir):
    path = rootfs.build_debian_delta_layer(os.path.join(scratch_dir, "delta.tar"))
    m = _members(path)
    assert m["etc/.wh.issue.net"].isfile() and m["etc/.wh.issue.net"].size == 0
    assert m["var/cache/apt/.wh..wh..opq"].isfile()
    assert m[rootfs.DELTA_OPAQUE_NEW_FILE].isfile()
    assert m[rootfs.DELTA_ADDED].isfile()
    assert m["var/cache/apt"].isdir()
    # parent dirs come before their children
    names = list(m)
    assert names.index("var/cache/apt") < names.index("var/cache/apt/.wh..wh..opq")
    again = rootfs.build_debian_delta_layer(os.path.join(scratch_dir, "delta2.tar"))
    assert _sha256(path) == _sha256(again)


def test_arch_variant_rootfs(scratch_dir):
    amd = rootfs.build_arch_variant_rootfs(os.path.join(scratch_dir, "amd64.tar"), "amd64")
    arm = rootfs.build_arch_variant_rootfs(os.path.join(scratch_dir, "arm.tar"), "arm/v7")
    with tarfile.open(arm) as tar:
        assert tar.extractfile("etc/arch").read() == b"arm/v7\n"
        assert tar.getnames() == ["etc", "etc/arch"]
    assert _sha256(amd) != _sha256(arm)
    with pytest.raises(ValueError):
        rootfs.build_arch_variant_rootfs(os.path.join(scratch_dir, "x.tar"), "")


def test_apt_mirror_reads_deb822_and_one_line_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# comment\nURIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n")
    assert rootfs.apt_mirror("bookworm", root=str(tmp_path)) == "http://mirror.invalid/debian"
    (tmp_path / "sources.list").write_text(
        "deb [signed-by=/x.gpg] http://one-line.invalid/debian bookworm main\n")
    assert rootfs.apt_mirror("bookworm", root=str(tmp_path)) == "http://one-line.invalid/debian"
    with pytest.raises(RuntimeError):
        rootfs.apt_mirror("trixie", root=str(tmp_path))


def test_apt_mirror_from_this_machine():
    mirror = rootfs.apt_mirror()
    assert mirror.startswith(("http://", "https://", "file:/"))


@pytest.mark.slow
def test_debian_minbase_tar_is_built_once_and_cached(rootfs_cache_dir):
    """First run builds it with debootstrap (network: the apt mirror); later
    calls and later runs reuse the cached tar."""
    if os.geteuid() != 0:
        pytest.skip("debootstrap needs root")
    timings = {}
    path = rootfs.build_debian_minbase(rootfs_cache_dir, timings=timings)
    first_mtime = os.stat(path).st_mtime_ns
    again = {}
    assert rootfs.build_debian_minbase(rootfs_cache_dir, timings=again) == path
    assert again == {}  # cached: debootstrap did not run
    assert os.stat(path).st_mtime_ns == first_mtime

    m = _members(path)
    assert not any(n.startswith(("./", "/")) for n in m)
    assert m["etc/issue.net"].isfile()  # what the delta layer whites out
    assert m["var/cache/apt"].isdir() and "var/cache/apt/archives" in m
    assert m["etc/debian_version"].isfile()
    assert m["usr/bin/dpkg"].isfile()
    assert not any(n.startswith(("dev/", "proc/", "sys/")) for n in m)
    assert not any(n.endswith(".deb") for n in m)
    assert all(info.mtime == rootfs.FIXED_MTIME for info in m.values())
    with tarfile.open(path) as tar:
        assert tar.extractfile("etc/debian_version").read().startswith(b"12.")


def test_minbase_waits_for_a_concurrent_builder_and_reuses_its_tar(tmp_path):
    """While another caller holds the build lock, a second caller waits; when
    the first one has produced the tar, the second returns it without running
    debootstrap (no network needed: the 'first builder' is this test)."""
    import fcntl
    import threading

    cache = str(tmp_path)
    dest = os.path.join(cache, "debian-%s-minbase-%s.tar" % (rootfs.DEBIAN_SUITE, rootfs.debian_arch()))
    timings, result, errors = {}, [], []
    with open(dest + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)

        def second_caller():
            try:
                result.append(rootfs.build_debian_minbase(cache, timings=timings,
                                                          mirror="http://127.0.0.1:9/"))
            except Exception as e:  # surfaced by the asserts below
                errors.append(e)

        t = threading.Thread(target=second_caller)
        t.start()
        t.join(timeout=1.0)
        assert t.is_alive()  # blocked on our lock, did not start its own build
        with open(dest, "wb") as f:
            f.write(b"built by the first caller")
        fcntl.flock(lock, fcntl.LOCK_UN)
        t.join(timeout=30)
    assert not t.is_alive() and errors == []
    assert result == [dest] and timings == {}
    assert sorted(os.listdir(cache)) == sorted([os.path.basename(dest), os.path.basename(dest) + ".lock"])


def test_safe_rmtree_unmounts_before_deleting(tmp_path):
    """debootstrap can leave proc/tmpfs mounts in its target on failure; the
    clean-up must unmount them rather than delete through them."""
    if os.geteuid() != 0:
        pytest.skip("mount needs root")
    work = tmp_path / "work"
    inner = work / "rootfs" / "dev"
    inner.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "intermodal-test", str(inner)], check=True)
    try:
        (inner / "marker").write_text("x")
        assert rootfs._mounts_under(str(work)) == [str(inner)]
        rootfs._safe_rmtree(str(work))
        assert not work.exists()
        assert rootfs._mounts_under(str(work)) == []
    finally:
        if rootfs._mounts_under(str(work)):
            subprocess.run(["umount", "-l", str(inner)], check=False)


def test_session_rootfs_fixtures(busybox_rootfs_tar, debian_delta_layer_tar, arch_rootfs_tar):
    assert "bin/sh" in _members(busybox_rootfs_tar)
    assert "etc/.wh.issue.net" in _members(debian_delta_layer_tar)
    with tarfile.open(arch_rootfs_tar("arm64")) as tar:
        assert tar.extractfile("etc/arch").read() == b"arm64\n"
