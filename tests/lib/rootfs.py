"""Real root filesystems (as plain tars) to build test images from.

The tars are deterministic where that matters (busybox, delta, arch variant):
fixed mtimes, sorted entries, numeric owner 0/0, so the same inputs always
hash the same and the images built from them keep the same digest.

The Debian minbase tar comes from a real ``debootstrap --variant=minbase``
and is cached on disk, because building it needs the network mirror apt is
configured with and takes tens of seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import io
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import time

# 2024-01-01T00:00:00Z: any fixed, non-zero time (some tools treat 0 as "unset").
FIXED_MTIME = 1704067200
BUSYBOX = os.environ.get("INTERMODAL_BUSYBOX", "/bin/busybox")
DEFAULT_CACHE_DIR = "/var/cache/intermodal-tests"
DEBIAN_SUITE = "bookworm"

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nnobody:x:65534:\n"


# ---- deterministic tar writing ---------------------------------------------

class _Entry:
    __slots__ = ("name", "type", "mode", "data", "linkname")

    def __init__(self, name, type_, mode, data=b"", linkname=""):
        self.name, self.type, self.mode = name, type_, mode
        self.data, self.linkname = data, linkname


def dir_entry(name, mode=0o755):
    return _Entry(name, tarfile.DIRTYPE, mode)


def file_entry(name, data, mode=0o644):
    if isinstance(data, str):
        data = data.encode("utf-8")
    return _Entry(name, tarfile.REGTYPE, mode, data=data)


def symlink_entry(name, target):
    return _Entry(name, tarfile.SYMTYPE, 0o777, linkname=target)


def write_deterministic_tar(dest_tar, entries):
    """Write entries sorted by name, owned 0/0, with FIXED_MTIME.

    Sorting by full path puts every directory before its children (a parent is
    a prefix of the child path).  Written to a temp file and renamed, so a
    reader never sees a half-written tar.
    """
    entries = sorted(entries, key=lambda e: e.name)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tar entries in %s" % dest_tar)
    tmp = dest_tar + ".tmp-%d" % os.getpid()
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for e in entries:
                info = tarfile.TarInfo(e.name)
                info.type = e.type
                info.mode = e.mode
                info.mtime = FIXED_MTIME
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if e.type == tarfile.SYMTYPE:
                    info.linkname = e.linkname
                    tar.addfile(info)
                elif e.type == tarfile.REGTYPE:
                    info.size = len(e.data)
                    tar.addfile(info, io.BytesIO(e.data))
                else:
                    tar.addfile(info)
        os.replace(tmp, dest_tar)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest_tar


# ---- busybox ---------------------------------------------------------------

def busybox_applets(busybox=BUSYBOX):
    out = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout
    # Only plain names: an applet name with '/' would escape bin/.
    return sorted({a.strip() for a in out.split() if a.strip() and "/" not in a} - {"busybox"})


def build_busybox_rootfs(dest_tar, busybox=BUSYBOX):
    """Minimal runnable rootfs: static busybox + applet symlinks in bin/.

    Returns dest_tar.  Deterministic: the same busybox binary gives the same
    tar bytes.
    """
    with open(busybox, "rb") as f:
        binary = f.read()
    entries = [
        dir_entry("bin"),
        dir_entry("dev"),
        dir_entry("etc"),
        dir_entry("proc"),
        dir_entry("root", 0o700),
        dir_entry("sys"),
        dir_entry("tmp", 0o1777),
        file_entry("bin/busybox", binary, 0o755),
        file_entry("etc/passwd", PASSWD),
        file_entry("etc/group", GROUP),
    ]
    for applet in busybox_applets(busybox):
        entries.append(symlink_entry("bin/" + applet, "busybox"))
    return write_deterministic_tar(dest_tar, entries)


# ---- Debian minbase (debootstrap, cached) ----------------------------------

def _deb822_stanzas(text):
    stanza = {}
    key = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, None
            continue
        if line[0] in " \t" and key:
            stanza[key] += " " + line.strip()
            continue
        key, _sep, value = line.partition(":")
        key = key.strip().lower()
        stanza[key] = value.strip()
    if stanza:
        yield stanza


def apt_mirror(suite=DEBIAN_SUITE, root="/etc/apt"):
    """The Debian mirror URI apt is configured with for `suite` (never a guess).

    Reads sources.list and sources.list.d/*.list / *.sources (deb822).  The
    INTERMODAL_DEBIAN_MIRROR environment variable overrides it.
    """
    override = os.environ.get("INTERMODAL_DEBIAN_MIRROR")
    if override:
        return override
    candidates = []
    list_files = [os.path.join(root, "sources.list")]
    list_files += sorted(glob.glob(os.path.join(root, "sources.list.d", "*.list")))
    for path in list_files:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 3 and parts[0] == "deb":
                if parts[1].startswith("["):  # options like [arch=amd64 signed-by=...]
                    while parts and not parts[0].endswith("]"):
                        parts.pop(0)
                    parts.pop(0)
                    parts.insert(0, "deb")
                if len(parts) >= 3 and parts[2] == suite:
                    candidates.append(parts[1])
    for path in sorted(glob.glob(os.path.join(root, "sources.list.d", "*.sources"))):
        with open(path) as f:
            text = f.read()
        for st in _deb822_stanzas(text):
            if st.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in st.get("types", "").split():
                continue
            if suite in st.get("suites", "").split():
                candidates.extend(st.get("uris", "").split())
    if not candidates:
        raise RuntimeError("no apt source for Debian %s found under %s" % (suite, root))
    return candidates[0]


def _mounts_under(path):
    path = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].encode().decode("unicode_escape")
            if mnt == path or mnt.startswith(path + "/"):
                found.append(mnt)
    return found


def _unmount_all_under(path):
    """Undo mounts debootstrap may leave behind (proc, sys, a tmpfs /dev with
    bind-mounted devices) before anything under `path` is deleted."""
    for mnt in sorted(_mounts_under(path), key=len, reverse=True):
        if subprocess.run(["umount", mnt], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
    left = _mounts_under(path)
    if left:
        raise RuntimeError("could not unmount %s; refusing to delete %s" % (left, path))


def _safe_rmtree(path):
    if os.path.exists(path):
        _unmount_all_under(path)
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _file_lock(path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def debian_arch():
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf"}.get(machine, machine)


def build_debian_minbase(cache_dir=None, suite=DEBIAN_SUITE, mirror=None, timings=None):
    """Path to a cached tar of `debootstrap --variant=minbase <suite>`.

    Builds it on first use (needs root and the apt mirror); later calls return
    the cached file without running debootstrap.  A lock file serialises
    concurrent callers.  If `timings` is a dict, the debootstrap and tar
    durations (seconds) are stored in it when a build happens.
    """
    cache_dir = cache_dir or os.environ.get("INTERMODAL_TEST_CACHE", DEFAULT_CACHE_DIR)
    os.makedirs(cache_dir, exist_ok=True)
    dest = os.path.join(cache_dir, "debian-%s-minbase-%s.tar" % (suite, debian_arch()))
    if os.path.exists(dest):
        return dest
    with _file_lock(dest + ".lock"):
        if os.path.exists(dest):  # built by whoever held the lock before us
            return dest
        mirror = mirror or apt_mirror(suite)
        work = tempfile.mkdtemp(prefix="minbase-", dir=cache_dir)
        target = os.path.join(work, "rootfs")
        try:
            started = time.monotonic()
            proc = subprocess.run(
                ["debootstrap", "--variant=minbase", suite, target, mirror],
                capture_output=True, text=True, check=False,
            )
            if timings is not None:
                timings["debootstrap"] = time.monotonic() - started
            _unmount_all_under(target)
            if proc.returncode != 0:
                raise RuntimeError(
                    "debootstrap %s from %s failed (%d):\n%s"
                    % (suite, mirror, proc.returncode, (proc.stdout + proc.stderr)[-4000:])
                )
            _slim(target)
            started = time.monotonic()
            _tar_tree(target, dest + ".tmp")
            os.replace(dest + ".tmp", dest)
            if timings is not None:
                timings["tar"] = time.monotonic() - started
        finally:
            if os.path.exists(dest + ".tmp"):
                os.unlink(dest + ".tmp")
            _safe_rmtree(work)
    return dest


def _slim(root):
    """Drop the downloaded .debs and apt lists (~80 MB) as Debian's own images
    do; the directories stay, so var/cache/apt still has content to hide."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
        for path in glob.glob(os.path.join(root, pattern)):
            if os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)


def _tar_tree(root, dest_tar):
    """GNU tar of `root` with sorted names, numeric owners and a fixed mtime.

    Members are named relative to root without a './' prefix.  The contents
    of dev/, proc/ and sys/ are left out: device nodes do not belong in an
    image layer (the runtime provides /dev).
    """
    top = sorted(os.listdir(root))
    cmd = [
        "tar", "--create", "--file", dest_tar, "--directory", root,
        "--sort=name", "--numeric-owner", "--mtime=@%d" % FIXED_MTIME,
        "--format=pax", "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        "--anchored", "--exclude=dev/*", "--exclude=proc/*", "--exclude=sys/*",
        "--",
    ] + top
    subprocess.run(cmd, check=True, capture_output=True)


# ---- delta layer and per-arch rootfs ---------------------------------------

DELTA_REMOVED = "etc/issue.net"
DELTA_OPAQUE_DIR = "var/cache/apt"
DELTA_OPAQUE_NEW_FILE = "var/cache/apt/intermodal-cache-note"
DELTA_ADDED = "etc/intermodal-release"


def build_debian_delta_layer(dest_tar):
    """A layer for the top of minbase: a whiteout, an opaque dir and a new file.

    (a) ``etc/.wh.issue.net`` deletes minbase's etc/issue.net;
    (b) ``var/cache/apt/.wh..wh..opq`` hides all of minbase's var/cache/apt
        content, and the layer adds one file back inside it;
    (c) ``etc/intermodal-release`` is new.
    """
    entries = [
        dir_entry("etc"),
        file_entry("etc/.wh.issue.net", b""),
        file_entry(DELTA_ADDED, "intermodal delta layer 1\n"),
        dir_entry("var"),
        dir_entry("var/cache"),
        dir_entry(DELTA_OPAQUE_DIR),
        file_entry(DELTA_OPAQUE_DIR + "/.wh..wh..opq", b""),
        file_entry(DELTA_OPAQUE_NEW_FILE, "replaced by the delta layer\n"),
    ]
    return write_deterministic_tar(dest_tar, entries)


def build_arch_variant_rootfs(dest_tar, arch):
    """Tiny rootfs whose only content is etc/arch naming `arch` (multi-arch tests)."""
    if not arch or "\n" in arch:
        raise ValueError("bad arch %r" % (arch,))
    return write_deterministic_tar(dest_tar, [
        dir_entry("etc"),
        file_entry("etc/arch", arch + "\n"),
    ])
