# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Container log files: timestamped lines, rotated by size.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

The monitor process imports this, so it stays tiny (os and time only: every
import costs resident memory in every monitor). Format, one line per record,
the same as the CRI log format Kubernetes tools read::

    2026-11-29T07:00:00.123456789Z stdout F hello world
    2026-11-29T07:00:00.123456789Z stderr P first 16 KiB of a very long line...

``F`` marks a full line, ``P`` a partial one (split because it was too long, or
because the stream ended without a newline). Files are ``container.log``
(current), ``container.log.1`` (newest rotated) ... ``container.log.<N-1>``,
where N = max_files counts the current file, like Docker's ``max-file``.
"""

from __future__ import annotations

import os
import time

# A line longer than this is written in pieces tagged P.
MAX_LINE = 16 * 1024


def rfc3339_now(now_ns=None):
    """UTC RFC 3339 timestamp with nanoseconds, e.g. 2026-11-29T07:00:00.000000001Z."""
    if now_ns is None:
        now_ns = time.time_ns()
    sec, nsec = divmod(now_ns, 1000000000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + ".%09dZ" % nsec


def rotated_names(path, max_files):
    """All files of one log, newest first: path, path.1 ... path.<max_files-1>."""
    return [path] + ["%s.%d" % (path, i) for i in range(1, max(1, max_files))]


class RotatingLog:
    """Append-only log file that rotates when the next write would pass max_size.

    max_size None or <= 0 disables rotation. A single record bigger than
    max_size still gets written whole, into a fresh file.
    """

    def __init__(self, path, max_size=None, max_files=1):
        self.path = path
        self.max_size = max_size
        self.max_files = max(1, int(max_files or 1))
        self._fd = -1
        self._size = 0
        self._open()

    def _open(self):
        d = os.path.dirname(self.path)
        if d:
            os.makedirs(d, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size

    def configure(self, max_size, max_files):
        """Change limits live (policy reload); applies from the next write."""
        self.max_size = max_size
        self.max_files = max(1, int(max_files or 1))

    def rotate(self):
        os.close(self._fd)
        self._fd = -1
        names = rotated_names(self.path, self.max_files)
        # Drop files beyond the limit (also after max_files was lowered).
        i = self.max_files
        while os.path.exists("%s.%d" % (self.path, i)):
            os.unlink("%s.%d" % (self.path, i))
            i += 1
        if self.max_files == 1:
            os.unlink(self.path)
        else:
            for older, newer in zip(reversed(names[1:]), reversed(names[:-1])):
                if os.path.exists(newer):
                    os.replace(newer, older)
        self._open()

    def write(self, data):
        if self._fd < 0:
            self._open()
        if self.max_size and self.max_size > 0 and self._size > 0 and self._size + len(data) > self.max_size:
            self.rotate()
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(data)

    def close(self):
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LineFramer:
    """Turns a byte stream into log records: '<ts> <stream> F|P <line>\\n'."""

    def __init__(self, stream, sink, max_line=MAX_LINE):
        self.prefix = (" %s " % stream).encode("ascii")
        self.sink = sink
        self.max_line = max_line
        self._buf = b""

    def _emit(self, line, tag):
        self.sink.write(rfc3339_now().encode("ascii") + self.prefix + tag + line + b"\n")

    def feed(self, data):
        buf = self._buf + data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            while len(line) > self.max_line:
                self._emit(line[:self.max_line], b"P ")
                line = line[self.max_line:]
            self._emit(line, b"F ")
            start = nl + 1
        rest = buf[start:]
        while len(rest) >= self.max_line:
            self._emit(rest[:self.max_line], b"P ")
            rest = rest[self.max_line:]
        self._buf = rest

    def flush(self):
        """Stream ended: write what is left as a partial line."""
        if self._buf:
            self._emit(self._buf, b"P ")
            self._buf = b""


def parse_line(line):
    """'<ts> <stream> <tag> <text>' -> (ts, stream, partial, text); None if malformed."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    line = line.rstrip("\n")
    parts = line.split(" ", 3)
    if len(parts) < 3 or parts[2] not in ("F", "P"):
        return None
    return parts[0], parts[1], parts[2] == "P", parts[3] if len(parts) > 3 else ""


def read_lines(path, max_files, tail=None):
    """Records of a log, oldest first (rotated files included), last ``tail`` only if given."""
    out = []
    for name in reversed(rotated_names(path, max_files)):
        try:
            with open(name, "rb") as f:
                for raw in f:
                    rec = parse_line(raw)
                    if rec is not None:
                        out.append(rec)
        except FileNotFoundError:
            continue
    if tail is not None:
        out = out[-tail:] if tail > 0 else []
    return out
