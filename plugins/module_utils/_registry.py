# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A client for the OCI distribution API (pull and push), built on requests.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

Follows containerd's and containers/image's behaviour where it matters for
safety: HEAD-first tag resolution with one Accept header, digest verification
of everything fetched, size caps, redirects handled here so Authorization never
leaves the registry's origin, bounded retries honouring Retry-After, and blob
downloads that resume with Range but never silently restart. Authentication
lives in _auth, credential discovery in _credentials, streaming in _blobio,
retries/redirects/auth rounds in _registry_transport.
"""

from __future__ import annotations

import hashlib
import json
import re
from urllib.parse import urlencode, urljoin, urlsplit

from ansible_collections.intermodal.containers.plugins.module_utils._blobio import BlobReader
from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    DigestMismatch,
    InvalidReference,
    ManifestError,
    ManifestNotFound,
    RegistryError,
    RegistryUnreachable,
)
from ansible_collections.intermodal.containers.plugins.module_utils._reference import (
    validate_digest,
)
from ansible_collections.intermodal.containers.plugins.module_utils._registry_transport import (
    RETRY_STATUSES,
    RegistryTransport,
    origin,
)

MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_MEDIA_TYPES = MANIFEST_MEDIA_TYPES[:2]
SCHEMA1_MEDIA_TYPES = (
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
)
# Same string on HEAD and GET: the digest a tag resolves to depends on it.
ACCEPT_MANIFESTS = ", ".join(MANIFEST_MEDIA_TYPES)
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
MAX_TAG_PAGES = 1000
GENERIC_CONTENT_TYPES = ("", "application/json", "text/plain", "application/octet-stream")
_PATH_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_LINK_NEXT_RE = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


def _media_type(value):
    return (value or "").split(";", 1)[0].strip().lower()


def _hash(algorithm, data):
    digest = hashlib.new(algorithm)
    digest.update(data)
    return "%s:%s" % (algorithm, digest.hexdigest())


class RegistryClient(RegistryTransport):
    """Distribution API client for one registry (see RegistryTransport for settings).

    RegistryClient(registry, *, username=None, password=None, auth_file=None,
    insecure=None, validate_certs=True, ca_path=None, timeout=30, retries=5,
    backoff_cap=60.0, user_agent="intermodal.containers", pool_size=8,
    environ=None, allow_foreign_urls=False)
    """

    def _url(self, repository, kind, ref=""):
        if not isinstance(repository, str) or not _PATH_RE.match(repository):
            raise InvalidReference("invalid repository name %r" % (repository,))
        return "%s/v2/%s/%s/%s" % (self._base(), repository, kind, ref)

    def _image_name(self, repository, reference):
        return "%s/%s%s%s" % (self.registry, repository, "@" if ":" in reference else ":", reference)

    @staticmethod
    def _check_ref(reference):
        if isinstance(reference, str) and ":" in reference:
            return validate_digest(reference)
        if not isinstance(reference, str) or not _TAG_RE.match(reference):
            raise InvalidReference("invalid tag %r" % (reference,))
        return reference

    # -- pull ---------------------------------------------------------------
    def ping(self):
        """GET /v2/: 200 or 401 means a registry is there."""
        url = self._base() + "/v2/"
        resp = self._exchange("GET", url)
        if resp.status_code not in (200, 401):
            self._raise_status(resp, "GET", url)
        resp.close()

    def resolve(self, repository, reference):
        """{"media_type", "digest", "size"} of a tag or digest, HEAD first."""
        self._check_ref(reference)
        url = self._url(repository, "manifests", reference)
        name = self._image_name(repository, reference)
        resp = self._request("HEAD", url, "repository:%s:pull" % repository, repository,
                             headers={"Accept": ACCEPT_MANIFESTS})
        if resp.status_code == 200:
            resp.close()
            digest = resp.headers.get("Docker-Content-Digest", "").strip()
            length = resp.headers.get("Content-Length")
            media_type = _media_type(resp.headers.get("Content-Type"))
            if media_type in SCHEMA1_MEDIA_TYPES:
                raise ManifestError("image %s uses the Docker schema 1 manifest format, which is "
                                    "no longer supported" % name)
            valid = self._valid_digest(digest)
            if ":" in reference and valid and digest.split(":")[0] != reference.split(":")[0]:
                valid = False       # another algorithm: let GET verify the bytes instead
            if valid and length and length.isdigit() and media_type in MANIFEST_MEDIA_TYPES:
                if ":" in reference and digest != reference:
                    raise DigestMismatch("registry %s resolved %s to a different digest %s"
                                         % (self.registry, name, digest))
                return {"media_type": media_type, "digest": digest, "size": int(length)}
        elif resp.status_code != 405:
            self._raise_status(resp, "HEAD", url, not_found=(ManifestNotFound, "image %s not found" % name),
                               what="manifest %s" % name)
        body, media_type, digest = self.get_manifest(repository, reference)
        return {"media_type": media_type, "digest": digest, "size": len(body)}

    @staticmethod
    def _valid_digest(value):
        try:
            return bool(value) and validate_digest(value) == value
        except InvalidReference:
            return False

    def get_manifest(self, repository, reference, expected_digest=None):
        """(body, media_type, digest) with the bytes verified and capped at 4 MiB."""
        self._check_ref(reference)
        if expected_digest is not None:
            validate_digest(expected_digest)
        by_digest = ":" in reference
        name = self._image_name(repository, reference)
        url = self._url(repository, "manifests", reference)
        attempt = 0
        while True:
            resp = self._request("GET", url, "repository:%s:pull" % repository, repository,
                                 headers={"Accept": ACCEPT_MANIFESTS}, stream=True)
            if resp.status_code != 200:
                self._raise_status(resp, "GET", url, what="manifest %s" % name,
                                   not_found=(ManifestNotFound, "image %s not found" % name))
            try:
                length = resp.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > MAX_MANIFEST_SIZE:
                    body = None
                else:
                    body = self._read_capped(resp, MAX_MANIFEST_SIZE, what="manifest " + name)
                break
            except RegistryUnreachable:
                # Nothing was handed out yet: a GET broken mid-body is simply asked again.
                if attempt >= self.retries:
                    raise
                self._sleep(self._backoff(attempt))
                attempt += 1
            finally:
                resp.close()
        if body is None:
            raise ManifestError("manifest %s is larger than the 4 MiB limit" % name)
        for wanted, why in ((reference if by_digest else None, "the digest it was requested by"),
                            (expected_digest, "the expected digest"),
                            (resp.headers.get("Docker-Content-Digest", "").strip(), "the registry's "
                             "Docker-Content-Digest header")):
            if wanted and self._valid_digest(wanted):
                actual = _hash(wanted.split(":", 1)[0], body)
                if actual != wanted:
                    raise DigestMismatch("manifest %s hashes to %s, not %s (%s)" % (name, actual, wanted, why))
        media_type = self._manifest_media_type(name, body, _media_type(resp.headers.get("Content-Type")))
        digest = reference if by_digest else (expected_digest or _hash("sha256", body))
        return body, media_type, digest

    @staticmethod
    def _manifest_media_type(name, body, content_type):
        """Content-Type, cross-checked with the document (CVE-2021-41190)."""
        if content_type in SCHEMA1_MEDIA_TYPES:
            raise ManifestError("image %s uses the Docker schema 1 manifest format, which is no longer "
                                "supported" % name)
        try:
            doc = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise ManifestError("manifest %s is not valid JSON" % name)
        if not isinstance(doc, dict):
            raise ManifestError("manifest %s is not a JSON object" % name)
        if doc.get("schemaVersion") == 1:
            raise ManifestError("image %s uses the Docker schema 1 manifest format, which is no longer "
                                "supported" % name)
        if "manifests" in doc and ("layers" in doc or "config" in doc):
            raise ManifestError("manifest %s is ambiguous: it has both 'manifests' and 'layers'/'config'" % name)
        declared = doc.get("mediaType")
        if content_type in MANIFEST_MEDIA_TYPES:
            if declared and declared != content_type:
                raise ManifestError("manifest %s is served as %s but declares mediaType %s"
                                    % (name, content_type, declared))
            return content_type
        if content_type not in GENERIC_CONTENT_TYPES:
            raise ManifestError("manifest %s has unsupported media type %s" % (name, content_type))
        if declared in MANIFEST_MEDIA_TYPES:
            return declared
        if declared is None and doc.get("schemaVersion") == 2:
            # OCI allows omitting mediaType; the shape tells which one it is.
            return MANIFEST_MEDIA_TYPES[0] if "manifests" in doc else MANIFEST_MEDIA_TYPES[2]
        raise ManifestError("manifest %s has unsupported media type %s" % (name, declared or content_type))

    def get_blob(self, repository, digest, size, max_size=MAX_MANIFEST_SIZE):
        """A small blob (an image config), verified against digest and size."""
        if size > max_size:
            raise ManifestError("blob %s in %s/%s is %d bytes, more than the %d allowed"
                                % (digest, self.registry, repository, size, max_size))
        with self.open_blob(repository, digest, size) as reader:
            return reader.read()

    def open_blob(self, repository, digest, size, urls=None):
        """A BlobReader streaming the blob; see _blobio for resume and checks."""
        validate_digest(digest)
        if not isinstance(size, int) or size < 0:
            raise ManifestError("blob %s has an invalid size %r" % (digest, size))
        self._url(repository, "blobs", digest)
        return BlobReader(self, repository, digest, size, urls=urls)

    def _open_blob_response(self, repository, digest, offset, foreign_url=None):
        """GET a blob from ``offset``; the caller checks Range semantics."""
        headers = {}
        if offset:
            headers["Range"] = "bytes=%d-" % offset
        if foreign_url is not None:
            return self._request("GET", foreign_url, headers=headers, stream=True, anonymous=True)
        url = self._url(repository, "blobs", digest)
        return self._request("GET", url, "repository:%s:pull" % repository, repository,
                             headers=headers, stream=True)

    def blob_exists(self, repository, digest):
        validate_digest(digest)
        url = self._url(repository, "blobs", digest)
        resp = self._request("HEAD", url, "repository:%s:pull" % repository, repository)
        resp.close()
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        return self._raise_status(resp, "HEAD", url, what="blob %s in %s/%s" % (digest, self.registry, repository))

    def list_tags(self, repository):
        """All tags, following Link pagination."""
        url = self._url(repository, "tags", "list")
        scope = "repository:%s:pull" % repository
        tags, pages = [], 0
        while url and pages < MAX_TAG_PAGES:
            pages += 1
            resp = self._request("GET", url, scope, repository, stream=True)
            if resp.status_code != 200:
                self._raise_status(resp, "GET", url, not_found=(
                    ManifestNotFound, "repository %s/%s not found" % (self.registry, repository)))
            body = self._read_capped(resp, MAX_MANIFEST_SIZE)
            resp.close()
            try:
                page = json.loads((body or b"").decode("utf-8")).get("tags") or []
            except (ValueError, UnicodeDecodeError, AttributeError):
                raise RegistryError("registry %s sent an invalid tag list for %s" % (self.registry, repository))
            tags.extend(t for t in page if isinstance(t, str))
            link = _LINK_NEXT_RE.search(resp.headers.get("Link", ""))
            url = urljoin(url, link.group(1)) if link else None
            if url and origin(url) != origin(self._base()):
                raise RegistryError("registry %s sent a tag list Link to another host" % self.registry)
        return tags

    # -- push ---------------------------------------------------------------
    def push_blob(self, repository, digest, size, opener, mount_from=None):
        """Upload a blob unless present: returns "exists", "mounted" or "uploaded".

        ``opener()`` returns a fresh binary file each call. An upload that
        fails is never resumed blindly: a new upload session starts (bounded).
        """
        validate_digest(digest)
        scope = "repository:%s:pull,push" % repository
        if self.blob_exists(repository, digest):
            return "exists"
        base = self._url(repository, "blobs", "uploads/")
        what = "upload of blob %s to %s/%s" % (digest, self.registry, repository)
        attempt = 0
        while True:
            params = None
            if mount_from and attempt == 0:
                self._url(mount_from, "blobs", digest)
                params = {"mount": digest, "from": mount_from}
            resp = self._request("POST", base, scope, repository, params=params,
                                 headers={"Content-Length": "0"})
            if resp.status_code == 201 and params:
                resp.close()
                return "mounted"
            if resp.status_code != 202 or not resp.headers.get("Location"):
                self._raise_status(resp, "POST", base, what=what)
            location = urljoin(resp.url or base, resp.headers["Location"])
            resp.close()
            split = urlsplit(location)
            query = (split.query + "&" if split.query else "") + urlencode({"digest": digest})
            target = split._replace(query=query).geturl()
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            try:
                resp = self._request("PUT", target, scope, repository, headers=headers, body=opener,
                                     retryable=False)
            except RegistryUnreachable:
                if attempt >= self.retries:
                    raise
                resp = None
            if resp is not None and resp.status_code in (201, 204):
                resp.close()
                echoed = resp.headers.get("Docker-Content-Digest", "").strip()
                if echoed and echoed != digest:
                    raise DigestMismatch("registry %s stored blob %s as %s" % (self.registry, digest, echoed))
                return "uploaded"
            if resp is not None and (resp.status_code not in RETRY_STATUSES or attempt >= self.retries):
                self._raise_status(resp, "PUT", target, what=what)
            if resp is not None:
                resp.close()
            self._sleep(self._backoff(attempt))
            attempt += 1

    def put_manifest(self, repository, reference, body, media_type):
        """PUT a manifest by tag or digest; returns its digest.

        The body is complete bytes and the PUT idempotent, so 429/5xx are retried.
        """
        self._check_ref(reference)
        digest = _hash(reference.split(":", 1)[0] if ":" in reference else "sha256", body)
        if ":" in reference and digest != reference:
            raise DigestMismatch("manifest pushed as %s hashes to %s" % (reference, digest))
        url = self._url(repository, "manifests", reference)
        resp = self._request("PUT", url, "repository:%s:pull,push" % repository, repository,
                             headers={"Content-Type": media_type}, body=bytes(body))
        if resp.status_code not in (200, 201, 202, 204):
            self._raise_status(resp, "PUT", url, what="manifest %s" % self._image_name(repository, reference))
        resp.close()
        echoed = resp.headers.get("Docker-Content-Digest", "").strip()
        if echoed and self._valid_digest(echoed) and echoed.split(":")[0] == digest.split(":")[0] \
                and echoed != digest:
            raise DigestMismatch("registry %s stored manifest %s as %s, not %s"
                                 % (self.registry, self._image_name(repository, reference), echoed, digest))
        return digest
