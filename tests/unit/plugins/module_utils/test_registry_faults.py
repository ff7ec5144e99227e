"""Registry client against a FAKE registry: faults a real registry can't produce.

The fake (``_registry_fakes.FakeServer``, a ThreadingHTTPServer on 127.0.0.1)
is used only to inject faults on demand: resets mid-blob, ignored Range
requests, lying digests, oversized manifests, 429/503 storms, unreachable
ports. Normal push/pull is tested against the real docker-registry in
tests/integration/test_registry_client_real.py. Sleeps are injected, so no
test waits for real backoff.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _registry_fakes  # noqa: E402
from _registry_fakes import FakeServer, Reply, Store, error_reply, make_client, sha256  # noqa: E402

from ansible_collections.intermodal.containers.plugins.module_utils._errors import (  # noqa: E402
    DigestMismatch,
    ManifestError,
    ManifestNotFound,
    MissingDependency,
    RegistryError,
    RegistryUnreachable,
)
from ansible_collections.intermodal.containers.plugins.module_utils._registry import (  # noqa: E402
    ACCEPT_MANIFESTS,
    MANIFEST_MEDIA_TYPES,
    RegistryClient,
)
from ansible_collections.intermodal.containers.plugins.module_utils._registry_transport import (  # noqa: E402
    _retry_after,
)

fake = _registry_fakes.fake      # fixture: a FakeServer, stopped afterwards
store = _registry_fakes.store    # fixture: normal registry behaviour for the fake

OCI_MANIFEST = MANIFEST_MEDIA_TYPES[2]
BLOB = bytes(range(256)) * 4096 * 3          # 3 MiB, several 1 MiB chunks


def manifest_doc(config_digest="sha256:" + "a" * 64):
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": 2}, "layers": []}


# -- blobs: resume, Range, size and digest ------------------------------------

def test_reset_mid_blob_resumes_with_range(fake, store):
    digest = store.add_blob(BLOB)
    cut = 1024 * 1024 + 123
    calls = []

    def handler(req):
        if "/blobs/" in req.path and req.method == "GET":
            calls.append(req.headers.get("range"))
            if len(calls) == 1:
                return Store.blob_reply(req, BLOB, truncate_at=cut)
        return store.serve(req)

    fake.handler = handler
    client = make_client(fake)
    with client.open_blob("lib/app", digest, len(BLOB)) as reader:
        data = reader.read()
        assert reader.bytes_read == len(BLOB)
    assert data == BLOB
    # The first request had no Range; the resume asked for exactly what was missing.
    assert calls[0] is None
    assert len(calls) == 2 and calls[1].startswith("bytes=")
    resumed_from = int(calls[1].split("=")[1].rstrip("-"))
    assert 0 < resumed_from <= cut
    assert len(client.sleeps) == 1


@pytest.mark.parametrize("bad", ["status-200", "wrong-content-range"])
def test_resume_refuses_a_reply_that_does_not_continue_the_stream(fake, store, bad):
    digest = store.add_blob(BLOB)
    cut = 2 * 1024 * 1024

    def handler(req):
        if "/blobs/" in req.path:
            if "range" not in req.headers:
                return Store.blob_reply(req, BLOB, truncate_at=cut)
            if bad == "status-200":
                return Reply(200, {}, BLOB)       # server ignored Range: would restart
            return Reply(206, {"Content-Range": "bytes 0-%d/%d" % (len(BLOB) - 1, len(BLOB))}, BLOB)
        return store.serve(req)

    fake.handler = handler
    client = make_client(fake)
    reader = client.open_blob("lib/app", digest, len(BLOB))
    with pytest.raises(RegistryError) as err:
        reader.read()
    text = str(err.value)
    assert digest in text
    assert ("ignored the Range" in text) if bad == "status-200" else ("Content-Range" in text)


def test_resume_attempts_are_bounded(fake, store):
    digest = store.add_blob(BLOB)
    fake.handler = lambda req: (Store.blob_reply(req, BLOB, truncate_at=10) if "/blobs/" in req.path
                                and "range" not in req.headers else
                                Store.blob_reply(req, BLOB, truncate_at=0) if "/blobs/" in req.path
                                else store.serve(req))
    client = make_client(fake, retries=2)
    with pytest.raises(RegistryUnreachable) as err:
        client.open_blob("lib/app", digest, len(BLOB)).read()
    assert "broke off 3 times" in str(err.value)
    assert len(fake.seen("GET", "/v2/lib/app/blobs/")) == 3


@pytest.mark.parametrize("variant", ["shorter", "longer", "longer-unannounced", "wrong-digest"])
def test_blob_size_and_digest_are_verified(fake, store, variant):
    size = 4096
    good = os.urandom(size)
    digest = sha256(good)
    served = {"shorter": good[:-1], "longer": good + b"x", "longer-unannounced": good + b"x" * 5000,
              "wrong-digest": os.urandom(size)}[variant]
    no_length = variant == "longer-unannounced"
    fake.handler = lambda req: (Reply(200, {}, served, no_length=no_length) if "/blobs/" in req.path
                                else store.serve(req))
    client = make_client(fake)
    reader = client.open_blob("lib/app", digest, size)
    with pytest.raises(DigestMismatch) as err:
        reader.read()
    assert digest in str(err.value)
    if variant == "longer-unannounced":
        # Stopped at the first chunk past the size, not after reading everything.
        assert "more than the 4096 bytes" in str(err.value)
    with pytest.raises(DigestMismatch):
        client.get_blob("lib/app", digest, size)


def test_get_blob_refuses_a_size_over_the_cap_without_fetching(fake, store):
    fake.handler = store.serve
    client = make_client(fake)
    with pytest.raises(ManifestError):
        client.get_blob("lib/app", "sha256:" + "b" * 64, 5 * 1024 * 1024)
    assert fake.seen(path_prefix="/v2/lib/") == []


def test_missing_blob_is_blob_not_found(fake, store):
    from ansible_collections.intermodal.containers.plugins.module_utils._errors import BlobNotFound
    fake.handler = store.serve
    client = make_client(fake)
    with pytest.raises(BlobNotFound) as err:
        client.open_blob("lib/app", "sha256:" + "c" * 64, 10).read()
    assert "lib/app" in str(err.value) and "BLOB_UNKNOWN" in str(err.value)


def test_foreign_urls_refused_unless_allowed(fake, store):
    fake.handler = store.serve
    client = make_client(fake)
    with FakeServer(lambda req: Reply(200, {}, b"abc")) as foreign:
        urls = [foreign.url + "/layer.tar.gz"]
        with pytest.raises(RegistryError) as err:
            client.open_blob("lib/app", sha256(b"abc"), 3, urls=urls).read()
        assert "foreign" in str(err.value) and foreign.seen() == []

        allowed = make_client(fake, allow_foreign_urls=True, username="u", password="pw-foreign")
        assert allowed.open_blob("lib/app", sha256(b"abc"), 3, urls=urls).read() == b"abc"
        assert [r.headers.get("authorization") for r in foreign.seen()] == [None]

        listed = make_client(fake, allow_foreign_urls=["127.0.0.1"])
        assert listed.open_blob("lib/app", sha256(b"abc"), 3, urls=urls).read() == b"abc"
        unlisted = make_client(fake, allow_foreign_urls=["cdn.example"])
        with pytest.raises(RegistryError) as err:
            unlisted.open_blob("lib/app", sha256(b"abc"), 3, urls=urls).read()
        assert "not in allow_foreign_urls" in str(err.value) and len(foreign.seen()) == 2


# -- manifests ----------------------------------------------------------------

def test_head_405_falls_back_to_get_with_the_same_accept(fake, store):
    body, digest = store.add_manifest("lib/app", "v1", manifest_doc())
    fake.handler = lambda req: Reply(405) if req.method == "HEAD" else store.serve(req)
    client = make_client(fake)
    assert client.resolve("lib/app", "v1") == {"media_type": OCI_MANIFEST, "digest": digest,
                                               "size": len(body)}
    head, get = fake.seen("HEAD")[0], fake.seen("GET", "/v2/lib/")[0]
    assert head.headers["accept"] == get.headers["accept"] == ACCEPT_MANIFESTS


def test_head_is_enough_when_it_carries_a_valid_digest(fake, store):
    body, digest = store.add_manifest("lib/app", "v1", manifest_doc())
    fake.handler = store.serve
    client = make_client(fake)
    assert client.resolve("lib/app", "v1")["digest"] == digest
    assert fake.seen("GET", "/v2/lib/") == []          # GETs are what Hub meters


def test_head_with_invalid_digest_header_is_not_trusted(fake, store):
    body, digest = store.add_manifest("lib/app", "v1", manifest_doc())

    def handler(req):
        reply = store.serve(req)
        if req.method == "HEAD":
            reply.headers["Docker-Content-Digest"] = "sha256:not-a-digest"
        return reply

    fake.handler = handler
    assert make_client(fake).resolve("lib/app", "v1")["digest"] == digest
    assert len(fake.seen("GET", "/v2/lib/")) == 1


def test_lying_docker_content_digest_is_detected(fake, store):
    store.add_manifest("lib/app", "v1", manifest_doc())

    def handler(req):
        reply = store.serve(req)
        reply.headers["Docker-Content-Digest"] = "sha256:" + "d" * 64
        return reply

    fake.handler = handler
    client = make_client(fake)
    with pytest.raises(DigestMismatch) as err:
        client.get_manifest("lib/app", "v1")
    assert "Docker-Content-Digest" in str(err.value)


def test_by_digest_manifest_with_other_bytes_is_rejected(fake, store):
    _unused, digest = store.add_manifest("lib/app", "v1", manifest_doc())
    other = json.dumps(manifest_doc("sha256:" + "e" * 64)).encode()
    # The registry serves different bytes under the pinned digest (and no header).
    fake.handler = lambda req: Reply(200, {"Content-Type": OCI_MANIFEST}, other) \
        if "/manifests/" in req.path else store.serve(req)
    client = make_client(fake)
    with pytest.raises(DigestMismatch) as err:
        client.get_manifest("lib/app", digest)
    assert digest in str(err.value)
    with pytest.raises(DigestMismatch):
        client.get_manifest("lib/app", "v1", expected_digest=digest)


@pytest.mark.parametrize("announce", [True, False])
def test_oversized_manifest_is_refused(fake, store, announce):
    big = b'{"schemaVersion": 2, "pad": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    fake.handler = lambda req: Reply(200, {"Content-Type": OCI_MANIFEST}, big, no_length=not announce) \
        if "/manifests/" in req.path else store.serve(req)
    with pytest.raises(ManifestError) as err:
        make_client(fake).get_manifest("lib/app", "v1")
    assert "4 MiB" in str(err.value)


@pytest.mark.parametrize("doc,content_type,why", [
    ({"schemaVersion": 1, "name": "x"}, "application/vnd.docker.distribution.manifest.v1+prettyjws",
     "schema 1"),
    ({"schemaVersion": 1, "name": "x"}, "application/json", "schema 1"),
    (dict(manifest_doc(), manifests=[]), OCI_MANIFEST, "ambiguous"),
    (dict(manifest_doc(), mediaType=MANIFEST_MEDIA_TYPES[0]), OCI_MANIFEST, "declares mediaType"),
])
def test_schema1_and_ambiguous_manifests_are_refused(fake, store, doc, content_type, why):
    fake.handler = lambda req: Reply(200, {"Content-Type": content_type}, doc) \
        if "/manifests/" in req.path else store.serve(req)
    with pytest.raises(ManifestError) as err:
        make_client(fake).get_manifest("lib/app", "v1")
    assert why in str(err.value)


def test_unknown_manifest_is_manifest_not_found(fake, store):
    fake.handler = store.serve
    client = make_client(fake)
    with pytest.raises(ManifestNotFound) as err:
        client.resolve("lib/app", "nope")
    assert str(err.value).startswith("image %s/lib/app:nope not found" % fake.host)


# -- retries --------------------------------------------------------------------

@pytest.mark.parametrize("retry_after,expected", [("7", 7.0), ("3600", 60.0)])
def test_429_honours_retry_after_capped(fake, store, retry_after, expected):
    store.add_manifest("lib/app", "v1", manifest_doc())
    count = {"n": 0}

    def handler(req):
        if "/manifests/" in req.path:
            count["n"] += 1
            if count["n"] == 1:
                return error_reply(429, "TOOMANYREQUESTS", "slow down", {"Retry-After": retry_after})
        return store.serve(req)

    fake.handler = handler
    client = make_client(fake)
    assert client.resolve("lib/app", "v1")["media_type"] == OCI_MANIFEST
    assert client.sleeps == [expected]


def test_retry_after_http_date():
    assert _retry_after("Wed, 21 Oct 2015 07:28:30 GMT", 1445412500.0) == 10.0
    assert _retry_after("garbage", 0) is None
    assert _retry_after(None, 0) is None


def test_503_storm_gives_up_after_retries(fake):
    fake.handler = lambda req: error_reply(503, "UNAVAILABLE", "try later")
    client = make_client(fake, retries=3)
    with pytest.raises(RegistryError) as err:
        client.get_manifest("lib/app", "v1")
    assert err.value.status == 503
    assert "gave up after 4 attempts" in str(err.value) and "UNAVAILABLE" in str(err.value)
    assert len(fake.seen("GET", "/v2/lib/")) == 4
    # Exponential backoff from 0.5 s.
    assert client.sleeps == [0.5, 1.0, 2.0]


def test_connection_refused_is_registry_unreachable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = RegistryClient("127.0.0.1:%d" % port, environ={"HOME": "/nonexistent-home"}, retries=2)
    client._sleep = lambda s: None
    with pytest.raises(RegistryUnreachable) as err:
        client.ping()
    text = str(err.value)
    assert text.startswith("cannot reach registry 127.0.0.1:%d: connection refused" % port)
    assert "tried https, then plain http" in text
    # requests' own exception (whose text carries full URLs) is not chained on
    assert err.value.__suppress_context__ and err.value.__cause__ is None


def test_insecure_loopback_falls_back_to_http_and_remembers(fake, store):
    fake.handler = store.serve
    client = make_client(fake)
    assert client.insecure is True
    client.ping()
    client.ping()
    assert client._scheme == "http"
    # The probe is a bare TLS handshake, not an HTTP request: it failed, and
    # plain http got exactly the two pings (so a warm pull stays one HEAD).
    assert len(fake.seen("GET", "/v2/")) == 2


# -- redirects --------------------------------------------------------------------

def test_redirect_loop_is_capped(fake):
    fake.handler = lambda req: Reply(307, {"Location": "/v2/lib/app/blobs/" + "sha256:" + "f" * 64})
    with pytest.raises(RegistryError) as err:
        make_client(fake).open_blob("lib/app", "sha256:" + "f" * 64, 1).read()
    assert "more than 10 times" in str(err.value)


def test_redirect_to_link_local_is_refused(fake, monkeypatch):
    fake.handler = lambda req: Reply(307, {"Location": "http://169.254.169.254/latest/meta-data"})
    real_connect = socket.create_connection

    def guarded(address, *args, **kwargs):
        assert not str(address[0]).startswith("169.254."), "connected to link-local"
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    with pytest.raises(RegistryError) as err:
        make_client(fake).open_blob("lib/app", "sha256:" + "f" * 64, 1).read()
    assert "link-local" in str(err.value)


def test_missing_requests_is_a_clear_dependency_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "requests", None)
    with pytest.raises(MissingDependency) as err:
        RegistryClient("127.0.0.1:5000")
    assert "pip install requests" in str(err.value)


def test_redirect_downgrade_to_http_is_refused():
    from ansible_collections.intermodal.containers.plugins.module_utils._blobio import check_redirect_target
    with pytest.raises(RegistryError) as err:
        check_redirect_target("reg.example", "https://reg.example/v2/x", "http://cdn.example/blob", False)
    assert "plain http" in str(err.value)
    check_redirect_target("reg.example", "https://reg.example/v2/x", "http://cdn.example/blob", True)
    check_redirect_target("reg.example", "https://reg.example/v2/x", "https://cdn.example/blob?sig=1", False)


# -- tags and manifest push ---------------------------------------------------------

def test_list_tags_follows_link_pagination(fake):
    pages = {None: (["a", "b"], '</v2/lib/app/tags/list?n=2&last=b>; rel="next"'),
             "b": (["c"], None)}

    def handler(req):
        last = req.query.get("last", [None])[0]
        tags, link = pages[last]
        headers = {"Content-Type": "application/json"}
        if link:
            headers["Link"] = link
        return Reply(200, headers, {"name": "lib/app", "tags": tags})

    fake.handler = handler
    assert make_client(fake).list_tags("lib/app") == ["a", "b", "c"]


def test_list_tags_refuses_a_link_to_another_host(fake):
    fake.handler = lambda req: Reply(200, {"Link": '<http://169.254.169.254/v2/x/tags/list>; rel="next"'},
                                     {"tags": ["a"]})
    with pytest.raises(RegistryError):
        make_client(fake).list_tags("lib/app")


def test_put_manifest_verifies_the_echoed_digest(fake, store):
    body = json.dumps(manifest_doc()).encode()
    fake.handler = lambda req: Reply(201, {"Docker-Content-Digest": "sha256:" + "9" * 64})
    with pytest.raises(DigestMismatch) as err:
        make_client(fake).put_manifest("lib/app", "v1", body, OCI_MANIFEST)
    assert sha256(body) in str(err.value)
    fake.handler = lambda req: Reply(201, {"Docker-Content-Digest": sha256(body)})
    assert make_client(fake).put_manifest("lib/app", "v1", body, OCI_MANIFEST) == sha256(body)
    put = fake.seen("PUT")[-1]
    assert put.body == body and put.headers["content-type"] == OCI_MANIFEST


def test_invalid_names_are_refused_before_any_request(fake):
    from ansible_collections.intermodal.containers.plugins.module_utils._errors import InvalidReference
    client = make_client(fake)
    for repo, ref in (("../etc", "v1"), ("lib/app", "sha256:../../x"), ("lib/app", "bad tag"),
                      ("Lib/App", "v1")):
        with pytest.raises(InvalidReference):
            client.get_manifest(repo, ref)
    with pytest.raises(InvalidReference):
        client.open_blob("lib/app", "sha256:" + "A" * 64, 1)
    assert fake.seen(path_prefix="/v2/lib") == [] and fake.seen(path_prefix="/v2/..") == []


def test_manifest_body_cut_off_is_fetched_again_then_gives_up(fake, store):
    body, digest = store.add_manifest("lib/app", "v1", manifest_doc())
    cuts = {"n": 0}

    def handler(req):
        if "/manifests/" in req.path and cuts["n"] < cuts.get("limit", 1):
            cuts["n"] += 1
            return Reply(200, {"Content-Type": OCI_MANIFEST}, body, truncate_at=10)
        return store.serve(req)

    fake.handler = handler
    client = make_client(fake)
    assert client.get_manifest("lib/app", "v1") == (body, OCI_MANIFEST, digest)
    assert len(client.sleeps) == 1
    cuts.update(n=0, limit=100)
    client = make_client(fake, retries=2)
    with pytest.raises(RegistryUnreachable) as err:
        client.get_manifest("lib/app", "v1")
    assert "while reading manifest %s/lib/app:v1" % fake.host in str(err.value)
    assert cuts["n"] == 3
