"""A FAKE distribution registry on 127.0.0.1 for the registry client's fault tests.

It exists only for faults a real registry cannot be made to produce on demand:
connections reset mid-blob, ignored Range headers, lying digests, 429/503
storms, hostile token realms, oversized manifests. Normal behaviour is tested
against Debian's real docker-registry in tests/integration.

A FakeServer records every request (method, path, query, headers) and answers
through ``handler(request) -> Reply``; ``Store.serve`` gives the normal
behaviour (manifests, blobs with Range, uploads) that a test wraps with faults.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from ansible_collections.intermodal.containers.plugins.module_utils._registry import RegistryClient

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Request:
    def __init__(self, method, path, query, headers, body):
        self.method = method
        self.path = path
        self.query = query            # dict: name -> list of values
        self.headers = headers        # dict with lower-case names
        self.body = body

    def __repr__(self):
        return "Request(%s %s)" % (self.method, self.path)


class Reply:
    """What the fake sends back.

    truncate_at: send only that many body bytes (with the full Content-Length),
    then drop the connection -- a reset mid-transfer.
    no_length: no Content-Length; the body ends when the connection closes.
    """

    def __init__(self, status=200, headers=None, body=b"", truncate_at=None, no_length=False):
        self.status = status
        self.headers = dict(headers or {})
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.truncate_at = truncate_at
        self.no_length = no_length


def error_reply(status, code, message, headers=None):
    return Reply(status, dict({"Content-Type": "application/json"}, **(headers or {})),
                 {"errors": [{"code": code, "message": message}]})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _handle(self):
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        req = Request(self.command, parts.path, parse_qs(parts.query), headers, body)
        fake = self.server.fake
        with fake.lock:
            fake.requests.append(req)
        try:
            reply = fake.handler(req)
        except Exception as exc:  # a bug in a test handler must show, not hang
            reply = Reply(599, {}, ("handler error: %r" % exc).encode())
        self._send(reply)

    def _send(self, reply):
        self.send_response(reply.status)
        body = reply.body
        for key, value in reply.headers.items():
            self.send_header(key, value)
        if reply.no_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        elif "Content-Length" not in reply.headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if reply.truncate_at is not None:
            self.wfile.write(body[:reply.truncate_at])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class FakeServer:
    """A threaded HTTP server on 127.0.0.1:<free port>; stop() always cleans up."""

    def __init__(self, handler=None):
        self.requests = []
        self.lock = threading.Lock()
        self.handler = handler or (lambda req: Reply(404))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        # Clients hanging up (TLS probes, resets we cause) are not test failures.
        self._server.handle_error = lambda request, address: None
        self._server.fake = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    @property
    def url(self):
        return "http://" + self.host

    def seen(self, method=None, path_prefix=""):
        with self.lock:
            return [r for r in self.requests
                    if (method is None or r.method == method) and r.path.startswith(path_prefix)]

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Store:
    """Normal registry behaviour: /v2/, manifests, blobs (with Range), uploads."""

    def __init__(self):
        self.blobs = {}
        self.manifests = {}      # (repo, tag or digest) -> (body, media type)
        self.uploads = {}        # upload id -> repo

    def add_blob(self, data):
        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def add_manifest(self, repo, tag, doc, media_type=OCI_MANIFEST):
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        digest = sha256(body)
        self.manifests[(repo, tag)] = (body, media_type)
        self.manifests[(repo, digest)] = (body, media_type)
        return body, digest

    def serve(self, req):
        path = req.path
        if path == "/v2/":
            return Reply(200, {"Content-Type": "application/json"}, b"{}")
        if "/manifests/" in path:
            repo, ref = path[len("/v2/"):].split("/manifests/", 1)
            if (repo, ref) not in self.manifests:
                return error_reply(404, "MANIFEST_UNKNOWN", "manifest unknown")
            body, media_type = self.manifests[(repo, ref)]
            return Reply(200, {"Content-Type": media_type, "Docker-Content-Digest": sha256(body)}, body)
        if path.endswith("/blobs/uploads/") and req.method == "POST":
            upload = uuid.uuid4().hex
            self.uploads[upload] = path[len("/v2/"):].split("/blobs/", 1)[0]
            # A relative Location, as distribution may send.
            return Reply(202, {"Location": "/v2/uploads/%s?_state=s3cr3t-state" % upload,
                               "Content-Length": "0"})
        if path.startswith("/v2/uploads/") and req.method == "PUT":
            digest = req.query.get("digest", [""])[0]
            if sha256(req.body) != digest:
                return error_reply(400, "DIGEST_INVALID", "digest did not match content")
            self.blobs[digest] = req.body
            return Reply(201, {"Docker-Content-Digest": digest, "Content-Length": "0"})
        if "/blobs/" in path:
            digest = path.rsplit("/blobs/", 1)[1]
            if digest not in self.blobs:
                return error_reply(404, "BLOB_UNKNOWN", "blob unknown to registry")
            return self.blob_reply(req, self.blobs[digest])
        return error_reply(404, "NAME_UNKNOWN", "unknown path %s" % path)

    @staticmethod
    def blob_reply(req, data, **kwargs):
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": sha256(data)}
        rng = req.headers.get("range")
        if rng:
            start = int(rng.split("=", 1)[1].split("-", 1)[0])
            headers["Content-Range"] = "bytes %d-%d/%d" % (start, len(data) - 1, len(data))
            return Reply(206, headers, data[start:], **kwargs)
        return Reply(200, headers, data, **kwargs)


class TokenRealm:
    """Bearer auth on a FakeServer: /token issues tokens, other paths demand one.

    ``scope_for(req)`` says which scope a request needs; ``insufficient`` lets a
    test answer a valid token with error="insufficient_scope".
    """

    def __init__(self, fake, store, expires_in=300, realm=None, username=None, password=None):
        self.fake = fake
        self.store = store
        self.expires_in = expires_in
        self.realm = realm or fake.url + "/token"
        self.username, self.password = username, password
        self.issued = []          # (token, scopes)
        self.valid = {}           # token -> set(scopes)
        self.only_latest = False  # revoke older tokens when a new one is issued

    def challenge(self, scope, error=None):
        value = 'Bearer realm="%s",service="fake"' % self.realm
        if scope:
            value += ',scope="%s"' % scope
        if error:
            value += ',error="%s"' % error
        return error_reply(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": value})

    def issue(self, req):
        if self.username is not None:
            import base64
            expected = "Basic " + base64.b64encode(
                ("%s:%s" % (self.username, self.password)).encode()).decode()
            if req.headers.get("authorization") != expected:
                return error_reply(401, "UNAUTHORIZED", "bad credentials")
        scopes = set()
        for value in req.query.get("scope", []):
            scopes.update(value.split(" "))
        token = "tok-%d-%s" % (len(self.issued) + 1, uuid.uuid4().hex[:8])
        if self.only_latest:
            self.valid.clear()
        self.issued.append((token, scopes))
        self.valid[token] = scopes
        return Reply(200, {"Content-Type": "application/json"},
                     {"token": token, "expires_in": self.expires_in})

    def serve(self, req, scope_for=None):
        if req.path == "/token":
            return self.issue(req)
        if req.path == "/v2/":
            return self.challenge(None)
        repo = req.path[len("/v2/"):].split("/", 1)[0] if "/" in req.path[4:] else ""
        for marker in ("/manifests/", "/blobs/", "/tags/"):
            if marker in req.path:
                repo = req.path[len("/v2/"):].split(marker, 1)[0]
        need = scope_for(req) if scope_for else "repository:%s:pull" % repo
        auth = req.headers.get("authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        if token not in self.valid:
            return self.challenge(need)
        if need not in self.valid[token]:
            return self.challenge(need, error="insufficient_scope")
        return self.store.serve(req)


# -- shared by the test modules (imported there, so pytest sees the fixtures) ----

@pytest.fixture
def fake():
    server = FakeServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def store():
    return Store()


def make_client(fake, **kwargs):
    """A client for ``fake`` that reads no real auth files and records its sleeps."""
    kwargs.setdefault("environ", {"HOME": "/nonexistent-home", "PATH": "/usr/bin:/bin"})
    client = RegistryClient(fake.host, **kwargs)
    client.sleeps = []
    client._sleep = client.sleeps.append
    return client
