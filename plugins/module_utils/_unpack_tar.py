# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A bounded, streaming tar header reader for layer tars.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

Why not ``tarfile``: CPython reads PAX and GNU long-name payloads into memory
whatever size the header claims (``_proc_pax``/``_proc_gnulong``), decodes
names and xattr values through the locale, and ignores xattrs. This reader
keeps everything as bytes, checks every size against a budget *before*
reading it, and follows Go's ``archive/tar`` (what containerd and moby use)
wherever the formats are ambiguous, so a layer means the same thing here as
in the daemons.

Supported: v7, ustar, star, GNU (long names ``L``/``K``) and PAX (``x``;
``g`` is read and ignored, as containerd does). Refused: sparse files,
multi-volume and unknown entry types.
"""

from __future__ import annotations

from ansible_collections.intermodal.containers.plugins.module_utils._errors import UnsafeLayer

BLOCK = 512
CHUNK = 1 << 20
_ZERO_BLOCK = bytes(BLOCK)

# Entry types handed to the applier (everything else is consumed here).
REG = b"0"
LINK = b"1"
SYMLINK = b"2"
CHAR = b"3"
BLOCKDEV = b"4"
DIR = b"5"
FIFO = b"6"
_HEADER_ONLY = (LINK, SYMLINK, CHAR, BLOCKDEV, DIR, FIFO)
_XATTR_PREFIX = b"SCHILY.xattr."


class TarEntry(object):
    """One member; ``name``/``linkname`` are raw bytes, ``xattrs`` a dict of bytes."""

    __slots__ = ("name", "linkname", "type", "mode", "uid", "gid", "size",
                 "mtime_ns", "devmajor", "devminor", "xattrs", "offset")

    def __repr__(self):
        return "TarEntry(%r, type=%r, size=%d)" % (self.name, self.type, self.size)


def _octal(field, what, offset):
    """Parse a numeric header field: octal text, or GNU base-256 binary."""
    if field[:1] and field[0] & 0x80:
        if field[0] & 0x40:  # negative base-256
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(field, "big") - (0x80 << (8 * (len(field) - 1)))
    text = field.strip(b" \x00")
    if not text:
        return 0
    # isdigit() first: int(x, 8) would also accept "0o7", "-1" and "1_0".
    if not text.isdigit():
        raise UnsafeLayer("malformed tar header at byte %d: field %s is %r" % (offset, what, bytes(field)))
    try:
        return int(text, 8)
    except ValueError:
        raise UnsafeLayer("malformed tar header at byte %d: field %s is %r" % (offset, what, bytes(field)))


def _cstr(field):
    end = field.find(b"\x00")
    return field if end < 0 else field[:end]


def _pax_int(value, key, offset):
    if not value.isdigit():
        raise UnsafeLayer("malformed PAX record %s=%r at byte %d" % (key.decode("ascii", "replace"), value, offset))
    return int(value)


def _pax_time_ns(value, offset):
    """PAX times are decimal seconds with an optional fraction; keep ns exactly."""
    sign = 1
    if value[:1] == b"-":
        sign, value = -1, value[1:]
    whole, _dot, frac = value.partition(b".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise UnsafeLayer("malformed PAX mtime %r at byte %d" % (value, offset))
    return sign * (int(whole) * 1000000000 + int(frac[:9].ljust(9, b"0") or b"0"))


def parse_pax(data, offset):
    """Split a PAX payload into (key, value) records, in order."""
    records = []
    pos = 0
    size = len(data)
    while pos < size:
        space = data.find(b" ", pos, pos + 20)
        length_text = data[pos:space]
        if space < 0 or not length_text.isdigit():
            raise UnsafeLayer("malformed PAX header at byte %d" % offset)
        end = pos + int(length_text)
        if end <= space + 1 or end > size or data[end - 1:end] != b"\n":
            raise UnsafeLayer("malformed PAX header at byte %d" % offset)
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq or not key:
            raise UnsafeLayer("malformed PAX record at byte %d" % offset)
        records.append((key, value))
        pos = end
    return records


class TarReader(object):
    """Iterate over a tar stream's members without trusting any size in it.

    ``max_header_bytes`` bounds the extended headers (PAX, GNU long names,
    and 512 bytes per header block) that may precede one member; the payload
    size is checked before a byte of it is read. Member data is not buffered:
    ``copy_to(fd)`` streams it to a file in slices of at most ``CHUNK``.
    """

    def __init__(self, stream, max_header_bytes=1024 * 1024, max_path_length=4096):
        self._stream = stream
        self._max_header = max_header_bytes
        self._max_path = max_path_length
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        self.consumed = 0      # bytes of the tar parsed so far
        self._remaining = 0    # unread data of the current member
        self._pad = 0
        self.done = False

    # -- buffered input ---------------------------------------------------

    def _fill(self):
        chunk = self._stream.read(CHUNK)
        if not chunk:
            return False
        self._buf = chunk
        self._view = memoryview(chunk)
        self._pos = 0
        return True

    def _read_exact(self, size, what):
        end = self._pos + size
        if end <= len(self._buf):
            data = self._buf[self._pos:end]
            self._pos = end
            self.consumed += size
            return data
        parts = [self._buf[self._pos:]]
        need = size - len(parts[0])
        self._pos = len(self._buf)
        while need > 0:
            if not self._fill():
                raise UnsafeLayer("layer tar is truncated in %s at byte %d" % (what, self.consumed + size - need))
            take = min(need, len(self._buf))
            parts.append(self._buf[:take])
            self._pos = take
            need -= take
        self.consumed += size
        return b"".join(parts)

    def _skip(self, size, what):
        while size > 0:
            if self._pos >= len(self._buf) and not self._fill():
                raise UnsafeLayer("layer tar is truncated in %s at byte %d" % (what, self.consumed))
            take = min(size, len(self._buf) - self._pos)
            self._pos += take
            self.consumed += take
            size -= take

    def copy_to(self, fd, write):
        """Write the current member's data to ``fd`` with ``write(fd, view)``."""
        while self._remaining:
            if self._pos >= len(self._buf) and not self._fill():
                raise UnsafeLayer("layer tar is truncated in file data at byte %d" % self.consumed)
            take = min(self._remaining, len(self._buf) - self._pos)
            view = self._view[self._pos:self._pos + take]
            while view:
                written = write(fd, view)
                view = view[written:]
            self._pos += take
            self.consumed += take
            self._remaining -= take

    # -- headers ----------------------------------------------------------

    def next(self):
        """Return the next member, or None at the end-of-archive marker."""
        if self.done:
            return None
        if self._remaining or self._pad:
            self._skip(self._remaining + self._pad, "file data")
            self._remaining = self._pad = 0
        budget = self._max_header
        pax = {}
        long_name = long_link = None
        while True:
            offset = self.consumed
            if self._pos + BLOCK <= len(self._buf):
                block = self._buf[self._pos:self._pos + BLOCK]
                self._pos += BLOCK
                self.consumed += BLOCK
            else:
                if self._pos >= len(self._buf) and not self._fill():
                    # EOF on a header boundary: Go's reader calls this a clean
                    # end; a truncated layer still fails the diff_id check.
                    if pax or long_name is not None or long_link is not None:
                        raise UnsafeLayer("layer tar ends after an extended header at byte %d" % offset)
                    self.done = True
                    return None
                block = self._read_exact(BLOCK, "a header")
            if block == _ZERO_BLOCK:
                return self._end_of_archive(offset)
            budget -= BLOCK
            if budget < 0:
                raise UnsafeLayer("layer tar has more than %d bytes of extended headers before byte %d"
                                  % (self._max_header, offset))
            _check_sum(block, offset)
            typeflag = block[156:157]
            if typeflag in (b"x", b"g", b"L", b"K"):
                size = _octal(block[124:136], "size", offset)
                if size < 0 or size > budget:
                    raise UnsafeLayer("layer tar has an extended header of %d bytes at byte %d "
                                      "(limit %d per entry)" % (size, offset, self._max_header))
                budget -= size
                payload = self._read_exact(size, "an extended header")
                self._skip(-size % BLOCK, "an extended header")
                if typeflag == b"x":
                    for key, value in parse_pax(payload, offset):
                        pax[key] = value
                elif typeflag == b"L":
                    long_name = _cstr(payload)
                elif typeflag == b"K":
                    long_link = _cstr(payload)
                # b"g": global headers are ignored, as containerd does.
                continue
            return self._member(block, offset, pax, long_name, long_link)

    def _end_of_archive(self, offset):
        # Two zero blocks end the archive. A zero block followed by EOF is
        # accepted; one followed by a header is an error (Go: ErrHeader).
        if self._pos >= len(self._buf) and not self._fill():
            self.done = True
            return None
        second = self._read_exact(BLOCK, "the end-of-archive marker")
        if second != _ZERO_BLOCK:
            raise UnsafeLayer("layer tar has a lone zero block at byte %d" % offset)
        self.done = True
        return None

    def _member(self, block, offset, pax, long_name, long_link):
        entry = TarEntry()
        entry.offset = offset
        typeflag = block[156:157]
        magic = block[257:263]
        name = _cstr(block[0:100])
        if magic == b"ustar\x00":
            # POSIX ustar keeps a path prefix; star uses a shorter one.
            prefix = _cstr(block[345:476] if block[508:512] == b"tar\x00" else block[345:500])
            if prefix:
                name = prefix + b"/" + name
        if long_name is not None:
            name = long_name
        linkname = long_link if long_link is not None else _cstr(block[157:257])
        entry.mode = _octal(block[100:108], "mode", offset) & 0o7777
        entry.uid = _octal(block[108:116], "uid", offset)
        entry.gid = _octal(block[116:124], "gid", offset)
        entry.size = _octal(block[124:136], "size", offset)
        entry.mtime_ns = _octal(block[136:148], "mtime", offset) * 1000000000
        if typeflag in (CHAR, BLOCKDEV):
            entry.devmajor = _octal(block[329:337], "devmajor", offset)
            entry.devminor = _octal(block[337:345], "devminor", offset)
        else:
            entry.devmajor = entry.devminor = 0
        xattrs = {}
        for key, value in pax.items():
            if key == b"path":
                if value:
                    name = value
            elif key == b"linkpath":
                if value:
                    linkname = value
            elif key == b"size":
                entry.size = _pax_int(value, key, offset)
            elif key == b"uid":
                entry.uid = _pax_int(value, key, offset)
            elif key == b"gid":
                entry.gid = _pax_int(value, key, offset)
            elif key == b"mtime":
                entry.mtime_ns = _pax_time_ns(value, offset)
            elif key.startswith(_XATTR_PREFIX):
                if len(key) > len(_XATTR_PREFIX):
                    xattrs[key[len(_XATTR_PREFIX):]] = value
            elif key.startswith(b"GNU.sparse."):
                typeflag = b"S"
        entry.xattrs = xattrs
        if typeflag == b"S":
            # Sparse members expand holes to zeroes: a tiny tar could write
            # terabytes, and image-spec says layers SHOULD NOT use them.
            raise UnsafeLayer("layer tar has a sparse file %r at byte %d; sparse files are not supported"
                              % (_show(name), offset))
        if typeflag in (b"\x00", b"7"):
            # v7 marks directories only by a trailing slash (Go: TypeRegA).
            typeflag = DIR if typeflag == b"\x00" and name.endswith(b"/") else REG
        elif typeflag not in (REG,) + _HEADER_ONLY:
            raise UnsafeLayer("layer tar has an entry %r of unsupported type %r at byte %d"
                              % (_show(name), typeflag, offset))
        if entry.size < 0 or entry.uid < 0 or entry.gid < 0:
            raise UnsafeLayer("layer tar has a negative size or owner for %r at byte %d" % (_show(name), offset))
        if len(name) > self._max_path or len(linkname) > self._max_path:
            raise UnsafeLayer("layer tar has a path longer than %d bytes at byte %d" % (self._max_path, offset))
        if b"\x00" in name or b"\x00" in linkname:
            raise UnsafeLayer("layer tar has a path with a NUL byte at byte %d" % offset)
        entry.type = typeflag
        entry.name = name
        entry.linkname = linkname
        # Go's reader: links, devices and directories carry no data whatever
        # their size field says, so we parse the stream the way containerd does.
        self._remaining = 0 if typeflag in _HEADER_ONLY else entry.size
        self._pad = -self._remaining % BLOCK
        return entry


def _check_sum(block, offset):
    stored = _octal(block[148:156], "checksum", offset)
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32
    if stored == unsigned:
        return
    # Some old tars summed signed chars.
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    if stored != signed:
        raise UnsafeLayer("layer tar has a header with a bad checksum at byte %d" % offset)


def _show(name):
    return name.decode("utf-8", "backslashreplace")
