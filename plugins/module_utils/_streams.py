# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Byte streams for layers: hashing, teeing, compression sniffing and decompression.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

gzip is the pull bottleneck (pulling-images.md section 4), so decompression
runs in its own thread, using isal or zlib-ng when installed and the stdlib
otherwise, while the caller's thread parses the tar and writes files. Both
libraries release the GIL, so a single large layer keeps two cores busy.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import zlib

from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    DigestMismatch,
    MissingDependency,
    UnsafeLayer,
)

CHUNK = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _zlib_module():
    """The fastest zlib-compatible module installed, and its name."""
    try:
        from isal import isal_zlib  # pylint: disable=import-outside-toplevel

        return isal_zlib, "isal"
    except ImportError:
        pass
    try:
        from zlib_ng import zlib_ng  # pylint: disable=import-outside-toplevel

        return zlib_ng, "zlib-ng"
    except ImportError:
        return zlib, "zlib"


def gzip_backend():
    """Name of the gzip implementation in use (reported in benchmarks)."""
    return _zlib_module()[1]


def sniff(head):
    """Return 'gzip', 'zstd' or None (plain tar) from the first bytes, as containerd does."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    # A zstd skippable frame (0x184D2A50-0x184D2A5F, little endian) may lead.
    if len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and 0x50 <= head[0] <= 0x5F:
        return "zstd"
    return None


class HashingReader:
    """Reads from ``raw`` while hashing and counting; optionally tees into ``sink``.

    With ``expected_digest``/``expected_size`` it refuses to read past the size
    and checks both at EOF, so nothing downstream sees more than was announced.
    """

    def __init__(self, raw, sink=None, expected_digest=None, expected_size=None, algorithm="sha256"):
        self._raw = raw
        self._sink = sink
        self._hash = hashlib.new(algorithm)
        self._algorithm = algorithm
        self._expected_digest = expected_digest
        self._expected_size = expected_size
        self.size = 0
        self.eof = False

    def read(self, n=-1):
        if self.eof:
            return b""
        if n is None or n < 0:
            n = CHUNK
        if self._expected_size is not None:
            # Read one byte past the announced size so an overlong blob is caught.
            n = min(n, self._expected_size - self.size + 1)
        data = self._raw.read(n)
        if not data:
            self.eof = True
            self._check_final()
            return b""
        self.size += len(data)
        if self._expected_size is not None and self.size > self._expected_size:
            raise DigestMismatch(
                "content is longer than its announced size %d (%s)" % (self._expected_size, self._expected_digest)
            )
        self._hash.update(data)
        if self._sink is not None:
            self._sink.write(data)
        return data

    def drain(self):
        while self.read(CHUNK):
            pass

    def _check_final(self):
        if self._expected_size is not None and self.size != self._expected_size:
            raise DigestMismatch(
                "content of %s is %d bytes, expected %d" % (self._expected_digest, self.size, self._expected_size)
            )
        if self._expected_digest is not None and self.digest() != self._expected_digest:
            raise DigestMismatch(
                "content does not match its digest: expected %s, got %s" % (self._expected_digest, self.digest())
            )

    def digest(self):
        return "%s:%s" % (self._algorithm, self._hash.hexdigest())


class _GzipDecoder:
    """Multi-member gzip decoder on the fastest zlib available."""

    def __init__(self):
        self._zlib = _zlib_module()[0]
        self._obj = self._zlib.decompressobj(31)

    def decode(self, data):
        out = []
        while data:
            out.append(self._obj.decompress(data))
            if self._obj.eof:
                data = self._obj.unused_data
                self._obj = self._zlib.decompressobj(31)
                # Trailing zero padding after the last member is common and harmless.
                if data and not data.strip(b"\0"):
                    data = b""
            else:
                data = b""
        return b"".join(out)

    def finish(self):
        if not self._obj.eof and self._obj.unconsumed_tail:
            raise UnsafeLayer("truncated gzip stream")
        return b""


class _ZstdDecoder:
    def __init__(self):
        try:
            import zstandard  # pylint: disable=import-outside-toplevel
        except ImportError:
            raise MissingDependency(
                "this layer is zstd-compressed and the Python library 'zstandard' is not installed "
                "on the target: pip install zstandard (or apt install python3-zstandard)"
            )
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()

    def decode(self, data):
        out = []
        while data:
            out.append(self._obj.decompress(data))
            if self._obj.eof:
                data = self._obj.unused_data
                self._obj = self._dctx.decompressobj()
            else:
                data = b""
        return b"".join(out)

    def finish(self):
        return b""


class _Identity:
    def decode(self, data):
        return data

    def finish(self):
        return b""


def decoder_for(compression):
    if compression == "gzip":
        return _GzipDecoder()
    if compression == "zstd":
        return _ZstdDecoder()
    return _Identity()


class DecompressingReader:
    """File-like reader of the uncompressed stream, decoded in a background thread.

    The worker reads ``raw`` (which may hash, tee and verify), sniffs the
    compression and decodes; the consumer reads decoded bytes and hashes each
    chunk as it takes it from the queue (the diff_id). Hashing on the
    consumer's side moves that work off the worker, which was the pipeline's
    bottleneck while the consumer waited for data (measured with
    benchmarks/pull_bench.py). Errors in the worker surface from ``read``. The
    queue is bounded so memory stays small however fast the network is.
    """

    _DONE = object()

    def __init__(self, raw, compression="auto", threaded=True, max_output=None):
        self._raw = raw
        self._compression = compression
        self._queue = queue.Queue(maxsize=16)
        self._buffer = b""
        self._offset = 0
        self._error = None
        self._finished = False
        self._diff_hash = hashlib.sha256()
        self._stop = threading.Event()
        self.size = 0
        self._max_output = max_output
        self.detected = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="decompress", daemon=True)
            self._thread.start()
        else:
            self._thread = None
            self._run()

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self):
        try:
            head = self._raw.read(CHUNK)
            compression = self._compression
            if compression == "auto":
                compression = sniff(head)
            self.detected = compression or "none"
            decoder = decoder_for(compression)
            data = head
            while data:
                out = decoder.decode(data)
                if out and not self._emit(out):
                    return
                data = self._raw.read(CHUNK)
            out = decoder.finish()
            if out and not self._emit(out):
                return
        except BaseException as exc:  # pylint: disable=broad-except
            self._error = exc
        self._put(self._DONE)

    def _emit(self, out):
        self.size += len(out)
        if self._max_output is not None and self.size > self._max_output:
            raise UnsafeLayer("layer decompresses to more than %d bytes; refusing (decompression bomb?)" % self._max_output)
        return self._put(out)

    def read(self, n=-1):
        if n is None or n < 0:
            chunks = []
            while True:
                data = self.read(CHUNK)
                if not data:
                    return b"".join(chunks)
                chunks.append(data)
        while self._offset >= len(self._buffer):
            if self._finished:
                return b""
            item = self._queue.get() if self._thread else self._queue.get_nowait()
            if item is self._DONE:
                self._finished = True
                if self._error is not None:
                    raise self._error
                return b""
            # Every chunk passes here exactly once, in order: the diff_id covers all of them.
            self._diff_hash.update(item)
            self._buffer, self._offset = item, 0
        data = self._buffer[self._offset:self._offset + n]
        self._offset += len(data)
        return data

    def drain(self):
        while self.read(CHUNK):
            pass

    def diff_id(self):
        """sha256 of everything decoded; valid once the stream was read to the end."""
        return "sha256:" + self._diff_hash.hexdigest()

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def gzip_compress_file(src_path, dst_path, level=1):
    """Compress src into dst as deterministic gzip (zlib's wrapper writes mtime 0).

    Level 1 because push and import are CPU-bound here and the registry
    stores whatever we send; the digest only has to be stable for one library.
    """
    zmod = _zlib_module()[0]
    comp = zmod.compressobj(level, zlib.DEFLATED, 31)
    with open(src_path, "rb") as src, open(dst_path, "wb") as dst:
        while True:
            data = src.read(CHUNK)
            if not data:
                break
            dst.write(comp.compress(data))
        dst.write(comp.flush())
