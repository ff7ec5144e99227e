# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Streaming, verified, resumable blob downloads for _registry.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

A BlobReader never hands out more than the descriptor's ``size`` bytes and
checks size and digest at EOF (ggcr internal/verify). A connection that drops
mid-blob is resumed with ``Range: bytes=N-``; only a 206 whose Content-Range
starts at N is accepted, because a 200 would restart a stream whose first N
bytes the caller has already consumed (containers/image docker/body_reader.go).
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import re
import socket
import ssl
from urllib.parse import urlsplit

from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    BlobNotFound,
    DigestMismatch,
    RegistryError,
    RegistryUnreachable,
)

CHUNK_SIZE = 1024 * 1024
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


def _chain(exc):
    """The exception and what it wraps (requests -> urllib3 -> socket)."""
    seen = []
    while exc is not None and len(seen) < 10 and exc not in seen:
        seen.append(exc)
        nxt = exc.__cause__ or exc.__context__ or getattr(exc, "reason", None)
        if nxt is None and exc.args and isinstance(exc.args[0], BaseException):
            nxt = exc.args[0]
        exc = nxt if isinstance(nxt, BaseException) else None
    return seen


def transport_cause(exc):
    """A short human cause for a transport failure, without URLs or queries.

    ``None`` means a response that ended before its Content-Length.

    requests' own messages embed the request URL, whose query may hold an
    upload state or a presigned signature, so they are not repeated.
    """
    if exc is None:
        return "connection closed before the announced length"
    chain = _chain(exc)
    names = [type(e).__name__ for e in chain]
    for err in chain:
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, socket.gaierror) or type(err).__name__ == "NameResolutionError":
            return "DNS lookup failed (name or service not known)"
        if isinstance(err, ssl.SSLCertVerificationError):
            return "TLS certificate verification failed (%s)" % (err.verify_message or "untrusted certificate")
        if isinstance(err, ssl.SSLError):
            return "TLS handshake failed (%s)" % (err.reason or type(err).__name__)
        if isinstance(err, ConnectionResetError):
            return "connection reset by peer"
        if isinstance(err, (socket.timeout, TimeoutError)) or "Timeout" in type(err).__name__:
            return "timed out"
    for err in chain:
        if isinstance(err, OSError) and err.strerror:
            return err.strerror.lower()
    if any(n in ("ProtocolError", "ChunkedEncodingError", "IncompleteRead") for n in names):
        return "connection broken mid-response"
    if "SSLError" in names:
        return "TLS error"
    return "transport error (%s)" % names[-1]


def check_redirect_target(registry, from_url, target, insecure):
    """Refuse redirects that downgrade to http or aim at link-local addresses."""
    source, dest = urlsplit(from_url), urlsplit(target)
    scheme = dest.scheme.lower()
    shown = "%s://%s%s" % (scheme, dest.netloc.rpartition("@")[2], dest.path)
    if scheme not in ("http", "https") or not dest.hostname:
        raise RegistryError("registry %s redirected to an invalid URL %s" % (registry, shown))
    if scheme == "http" and source.scheme.lower() == "https" and not insecure:
        raise RegistryError("registry %s redirected from https to plain http (%s); refusing"
                            % (registry, shown))
    try:
        addr = ipaddress.ip_address(dest.hostname.split("%", 1)[0])
    except ValueError:
        return
    if addr.is_link_local or addr.is_unspecified or addr.is_multicast:
        raise RegistryError("registry %s redirected to %s, a link-local or reserved address; refusing"
                            % (registry, shown))


def _transport_errors():
    import requests
    errors = (requests.exceptions.RequestException, http.client.HTTPException, OSError)
    try:
        import urllib3
        errors += (urllib3.exceptions.HTTPError,)
    except ImportError:
        pass
    return errors


class BlobReader:
    """File-like reader of one blob: read(n=-1), close(), context manager.

    Opens lazily, so every failure (not found, size, digest, resume) surfaces
    from read(). ``bytes_read`` counts bytes received and verified so far.
    """

    def __init__(self, client, repository, digest, size, urls=None):
        self._client = client
        self.repository = repository
        self.digest = digest
        self.size = size
        self.bytes_read = 0
        self._urls = list(urls or [])
        self._hasher = hashlib.new(digest.split(":", 1)[0])
        self._buf = b""
        self._pos = 0
        self._resp = None
        self._iter = None
        self._end = None          # byte offset the current response announced it ends at
        self._foreign = None
        self._resumes = 0
        self._done = False
        self._closed = False
        self._errors = _transport_errors()

    def __repr__(self):
        return "BlobReader(%s in %s/%s, %d/%d bytes)" % (
            self.digest, self._client.registry, self.repository, self.bytes_read, self.size)

    @property
    def _name(self):
        return "blob %s in %s/%s" % (self.digest, self._client.registry, self.repository)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def readable(self):
        return True

    def close(self):
        self._closed = True
        self._drop_response()

    def _drop_response(self):
        if self._resp is not None:
            try:
                self._resp.close()
            except Exception:  # closing a broken socket must not mask the real error
                pass
        self._resp, self._iter, self._end = None, None, None

    # -- reading ------------------------------------------------------------
    def read(self, n=-1):
        if self._closed:
            raise ValueError("read from a closed BlobReader")
        if n is None or n < 0:
            parts = [self._buf[self._pos:]]
            self._buf, self._pos = b"", 0
            while not self._done:
                parts.append(self._next_chunk())
            return b"".join(parts)
        while len(self._buf) - self._pos < n and not self._done:
            chunk = self._next_chunk()
            if chunk:
                self._buf = self._buf[self._pos:] + chunk
                self._pos = 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def _next_chunk(self):
        while True:
            if self._iter is None:
                self._open(self.bytes_read)
            try:
                chunk = next(self._iter)
            except StopIteration:
                if self._end is None or self.bytes_read >= self._end:
                    self._finish()
                    return b""
                # urllib3 1.x (Debian 12's) ends a short body quietly instead of
                # raising IncompleteRead: fewer bytes than announced is a break.
                chunk = None
            except self._errors as exc:
                chunk = exc
            if chunk is None or isinstance(chunk, BaseException):
                self._drop_response()
                if self.bytes_read == self.size:
                    # Everything arrived; the connection died on the way out.
                    self._finish()
                    return b""
                self._resume_after(chunk)
                continue
            if not chunk:
                continue
            self.bytes_read += len(chunk)
            if self.bytes_read > self.size:
                self.close()
                raise DigestMismatch("%s: the registry sent more than the %d bytes the descriptor "
                                     "announces" % (self._name, self.size))
            self._hasher.update(chunk)
            return chunk

    def _resume_after(self, exc):
        client = self._client
        self._resumes += 1
        if self._resumes > client.retries:
            self.close()
            raise RegistryUnreachable(
                "download of %s broke off %d times (last at byte %d of %d: %s); giving up"
                % (self._name, self._resumes, self.bytes_read, self.size, transport_cause(exc)))
        client._sleep(client._backoff(self._resumes - 1))

    def _finish(self):
        self._drop_response()
        self._done = True
        if self.bytes_read != self.size:
            raise DigestMismatch("%s: the registry sent %d bytes, the descriptor says %d"
                                 % (self._name, self.bytes_read, self.size))
        actual = "%s:%s" % (self.digest.split(":", 1)[0], self._hasher.hexdigest())
        if actual != self.digest:
            raise DigestMismatch("%s: the content hashes to %s" % (self._name, actual))

    # -- connecting ---------------------------------------------------------
    def _open(self, offset):
        client = self._client
        resp = client._open_blob_response(self.repository, self.digest, offset, self._foreign)
        status = resp.status_code
        if status == 404 and offset == 0 and self._urls and self._foreign is None:
            resp.close()
            return self._open_foreign()
        if status not in (200, 206):
            client._raise_status(resp, "GET", resp.url or "", what=self._name, not_found=(
                BlobNotFound, "%s not found" % self._name))
        length = resp.headers.get("Content-Length")
        if status == 206:
            match = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                resp.close()
                raise RegistryError("registry %s answered a request for %s from byte %d with "
                                    "Content-Range %r; refusing to splice mismatched data"
                                    % (client.registry, self._name, offset, resp.headers.get("Content-Range")))
        elif offset:
            resp.close()
            raise RegistryError("registry %s ignored the Range request when resuming %s at byte %d "
                                "(HTTP 200); the download cannot restart because %d bytes were already "
                                "consumed" % (client.registry, self._name, offset, offset))
        if length and length.isdigit() and int(length) != self.size - offset:
            resp.close()
            raise DigestMismatch("%s: the registry announces %d bytes from byte %d, the descriptor "
                                 "says %d in total" % (self._name, int(length), offset, self.size))
        self._end = offset + int(length) if length and length.isdigit() else None
        self._resp = resp
        self._iter = resp.iter_content(CHUNK_SIZE)

    def _open_foreign(self):
        client = self._client
        hosts = sorted({urlsplit(u).netloc.rpartition("@")[2] for u in self._urls})
        if not client.allow_foreign_urls:
            raise RegistryError("%s is not in the registry; its descriptor points at foreign URLs on %s, "
                                "which are not allowed (allow_foreign_urls is off)"
                                % (self._name, ", ".join(hosts)))
        allowed = client.allow_foreign_urls
        last = None
        for url in self._urls:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            if scheme != "https" and not (scheme == "http" and client.insecure):
                last = RegistryError("%s: foreign URL scheme %r refused" % (self._name, scheme))
                continue
            if allowed is not True and (parts.hostname or "").lower() not in allowed:
                last = RegistryError("%s: foreign URL host %s is not in allow_foreign_urls"
                                     % (self._name, parts.hostname))
                continue
            try:
                check_redirect_target(client.registry, "https://" + client.host, url, client.insecure)
                self._foreign = url
                return self._open(0)
            except (RegistryError, DigestMismatch) as exc:
                last = exc
        self._foreign = None
        raise last
