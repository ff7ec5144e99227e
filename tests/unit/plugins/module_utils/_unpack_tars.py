# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hand-built tars and host snapshots for the unpacker's adversarial tests.

``Tar`` writes headers byte by byte (no ``tarfile``) so tests can produce what
no honest tool would: binary PAX xattrs, sparse flags, lying sizes, bad
checksums. ``snapshot`` records everything outside the layer root so a test
can prove nothing there changed. ``LazyStream`` serves a prefix followed by
generated filler without ever holding it, and counts what was read.
"""

from __future__ import annotations

import hashlib
import os
import stat

BLOCK = 512


def _b(value):
    return value if isinstance(value, bytes) else os.fsencode(value)


def _num(value, width):
    """Octal when it fits, else GNU base-256 (what tar writes for >= 8 GiB)."""
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\x00" % (width - 1, value)
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def pax_record(key, value):
    body = b" " + _b(key) + b"=" + _b(value) + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def header(name, typeflag=b"0", size=0, mode=0o644, uid=0, gid=0, mtime=1600000000,
           linkname=b"", devmajor=0, devminor=0, uname=b"", gname=b"", size_field=None,
           magic=b"ustar\x0000", checksum_delta=0):
    """One 512-byte header; ``size_field`` overrides the encoded size bytes."""
    buf = bytearray(BLOCK)
    name, linkname = _b(name), _b(linkname)
    assert len(name) <= 100 and len(linkname) <= 100
    buf[0:len(name)] = name
    buf[100:108] = _num(mode, 8)
    buf[108:116] = _num(uid, 8)
    buf[116:124] = _num(gid, 8)
    buf[124:136] = size_field if size_field is not None else _num(size, 12)
    buf[136:148] = _num(mtime, 12)
    buf[148:156] = b" " * 8
    buf[156:157] = typeflag
    buf[157:157 + len(linkname)] = linkname
    buf[257:265] = magic
    buf[265:265 + len(uname)] = _b(uname)
    buf[297:297 + len(gname)] = _b(gname)
    buf[329:337] = _num(devmajor, 8)
    buf[337:345] = _num(devminor, 8)
    buf[148:156] = b"%06o\x00 " % (sum(buf) + checksum_delta)
    assert len(buf) == BLOCK, "a field overflowed its width"
    return bytes(buf)


def pad(data):
    return data + bytes(-len(data) % BLOCK)


class Tar(object):
    """Append entries, then ``bytes()`` adds the end-of-archive marker."""

    def __init__(self):
        self.parts = []

    def raw(self, data):
        self.parts.append(data)
        return self

    def pax(self, records, typeflag=b"x"):
        payload = b"".join(pax_record(k, v) for k, v in records)
        self.parts.append(header(b"PaxHeaders/x", typeflag, len(payload)) + pad(payload))
        return self

    def entry(self, name, typeflag=b"0", data=b"", xattrs=None, pax=None, **fields):
        name = _b(name)
        records = list(pax or [])
        for key, value in (xattrs or {}).items():
            records.append((b"SCHILY.xattr." + _b(key), _b(value)))
        linkname = _b(fields.pop("linkname", b""))
        if len(name) > 100:
            records.append((b"path", name))
            name = name[:100]
        if len(linkname) > 100:
            records.append((b"linkpath", linkname))
            linkname = linkname[:100]
        if records:
            self.pax(records)
        self.parts.append(header(name, typeflag, len(data), linkname=linkname, **fields) + pad(data))
        return self

    def file(self, name, data=b"", **fields):
        return self.entry(name, b"0", data, **fields)

    def dir(self, name, mode=0o755, **fields):
        return self.entry(name, b"5", mode=mode, **fields)

    def symlink(self, name, target, **fields):
        return self.entry(name, b"2", linkname=target, mode=0o777, **fields)

    def hardlink(self, name, target, **fields):
        return self.entry(name, b"1", linkname=target, **fields)

    def bytes(self, trailer=True):
        return b"".join(self.parts) + (bytes(2 * BLOCK) if trailer else b"")


class LazyStream(object):
    """``prefix`` then ``filler`` bytes up to ``total``; refuses unbounded reads."""

    def __init__(self, prefix, total, filler=b"\x00"):
        self.prefix = prefix
        self.total = total
        self.filler = filler
        self.read_bytes = 0

    def read(self, size=-1):
        if size is None or size < 0:
            raise AssertionError("unbounded read() on a layer stream")
        size = min(size, self.total - self.read_bytes)
        out = b""
        if self.read_bytes < len(self.prefix):
            out = self.prefix[self.read_bytes:self.read_bytes + size]
        out += self.filler * (size - len(out))
        self.read_bytes += len(out)
        return out


class TrickleStream(object):
    """Short reads (at most ``step`` bytes), as a decompressor or socket gives."""

    def __init__(self, data, step=7):
        self.data = data
        self.pos = 0
        self.step = step

    def read(self, size=-1):
        if size is None or size < 0:
            size = len(self.data)
        size = min(size, self.step)
        out = self.data[self.pos:self.pos + size]
        self.pos += len(out)
        return out


def snapshot(top, exclude):
    """Everything under ``top`` except the ``exclude`` subtree, with metadata and contents."""
    state = {}
    exclude = os.path.abspath(exclude)
    for dirpath, dirnames, filenames in os.walk(top):
        if os.path.abspath(dirpath) == exclude:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.abspath(path) == exclude:
                continue
            st = os.lstat(path)
            item = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_ino, st.st_mtime_ns, st.st_size)
            if stat.S_ISLNK(st.st_mode):
                item += (os.readlink(path),)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    item += (hashlib.sha256(handle.read()).hexdigest(),)
            if not stat.S_ISLNK(st.st_mode):
                item += (sorted((n, os.getxattr(path, n)) for n in os.listxattr(path)),)
            state[os.path.relpath(path, top)] = item
    return state


def lexists_in(root, relpath):
    return os.path.lexists(os.path.join(root, relpath))
