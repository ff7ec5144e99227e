"""Registry client auth and push against a FAKE registry and token server.

The fake (``_registry_fakes``) is used only for what a real registry cannot be
made to do on demand: hostile token realms (link-local, plain http), tokens
that expire after one second, insufficient_scope answers, cross-host blob
redirects, upload sessions that fail halfway. The real Basic and token flows
are tested against docker-registry in tests/integration.
"""

from __future__ import annotations

import io
import os
import socket
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _registry_fakes  # noqa: E402
from _registry_fakes import (  # noqa: E402
    FakeServer, Reply, Store, TokenRealm, error_reply, make_client, sha256,
)

from ansible_collections.intermodal.containers.plugins.module_utils._auth import (  # noqa: E402
    parse_www_authenticate,
    validate_realm,
)
from ansible_collections.intermodal.containers.plugins.module_utils._errors import (  # noqa: E402
    AuthenticationError,
    RegistryError,
)
fake = _registry_fakes.fake      # fixture: a FakeServer, stopped afterwards
store = _registry_fakes.store    # fixture: normal registry behaviour for the fake

PASSWORD = "hunter2-very-secret"
BLOB = os.urandom(300 * 1024)


@pytest.fixture
def no_link_local_connect(monkeypatch):
    """Fail the test if anything opens a socket to 169.254.0.0/16."""
    attempts = []
    real_connect = socket.socket.connect
    real_create = socket.create_connection

    def connect(sock, address):
        if str(address[0]).startswith("169.254."):
            attempts.append(address)
            raise AssertionError("connected to link-local %s" % (address,))
        return real_connect(sock, address)

    def create(address, *args, **kwargs):
        if str(address[0]).startswith("169.254."):
            attempts.append(address)
            raise AssertionError("connected to link-local %s" % (address,))
        return real_create(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", create)
    return attempts


# -- challenge parsing and realm validation --------------------------------------

def test_parse_www_authenticate():
    [bearer] = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push",error="insufficient_scope"')
    assert bearer.scheme == "bearer"
    assert bearer.params == {"realm": "https://auth.example/token", "service": "registry.example",
                             "scope": "repository:a/b:pull,push", "error": "insufficient_scope"}
    both = parse_www_authenticate('Basic realm="r \\"q\\"", Bearer realm="https://x/t"')
    assert [(c.scheme, c.params["realm"]) for c in both] == [("basic", 'r "q"'), ("bearer", "https://x/t")]
    assert parse_www_authenticate("") == []


def test_validate_realm_rules():
    def never(*_args, **_kwargs):
        pytest.fail("resolved a name that needed no resolution")

    # https to a public literal: fine, without any DNS.
    validate_realm("https://8.8.8.8/token", "reg.example", False, resolver=never)
    # same host as the registry: no resolution needed.
    validate_realm("https://reg.example/token", "reg.example:443", False, resolver=never)
    for realm in ("http://8.8.8.8/token", "https://10.1.2.3/token", "https://127.0.0.1/t",
                  "https://[fe80::1]/t", "https://169.254.169.254/t", "ftp://x/t"):
        with pytest.raises(AuthenticationError):
            validate_realm(realm, "reg.example", False, resolver=never)
    # insecure registries may use http and private realms, never link-local.
    validate_realm("http://10.1.2.3/token", "reg.example", True, resolver=never)
    with pytest.raises(AuthenticationError):
        validate_realm("http://169.254.169.254/token", "reg.example", True, resolver=never)
    # a hostname is judged by what it resolves to.
    asked = []

    def resolver(host, port, *rest):
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]

    with pytest.raises(AuthenticationError) as err:
        validate_realm("https://metadata.example/token", "reg.example", False, resolver=resolver)
    assert asked == ["metadata.example"] and "link-local" in str(err.value)


def test_link_local_realm_is_refused_before_any_connection(fake, store, no_link_local_connect):
    def handler(req):
        return error_reply(401, "UNAUTHORIZED", "auth", {
            "WWW-Authenticate": 'Bearer realm="http://169.254.169.254/token",service="x"'})

    fake.handler = handler
    client = make_client(fake)
    with pytest.raises(AuthenticationError) as err:
        client.get_manifest("lib/app", "v1")
    assert "169.254.169.254" in str(err.value) and "refusing" in str(err.value)
    assert no_link_local_connect == []
    # Only the manifest request itself reached the fake: no token request anywhere.
    assert [r.path for r in fake.seen(path_prefix="/v2/lib/")] == ["/v2/lib/app/manifests/v1"]


def test_hostname_realm_resolving_to_link_local_is_refused(fake, no_link_local_connect):
    fake.handler = lambda req: error_reply(401, "UNAUTHORIZED", "auth", {
        "WWW-Authenticate": 'Bearer realm="http://metadata.internal/token",service="x"'})
    client = make_client(fake)
    asked = []

    def resolver(host, port, *rest):
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]

    client._resolver = resolver
    with pytest.raises(AuthenticationError):
        client.get_manifest("lib/app", "v1")
    assert asked == ["metadata.internal"] and no_link_local_connect == []


# -- token flow ----------------------------------------------------------------

def test_bearer_token_flow_and_cache(fake, store):
    body, digest = store.add_manifest("lib/app", "v1", {"schemaVersion": 2, "manifests": []},
                                      "application/vnd.oci.image.index.v1+json")
    realm = TokenRealm(fake, store)
    fake.handler = realm.serve
    client = make_client(fake)
    assert client.get_manifest("lib/app", "v1")[2] == digest
    assert client.resolve("lib/app", "v1")["digest"] == digest
    # one token, for the scope the challenge named, reused for the second call
    assert len(realm.issued) == 1 and realm.issued[0][1] == {"repository:lib/app:pull"}
    token_req = fake.seen("GET", "/token")[0]
    assert token_req.query["service"] == ["fake"] and "authorization" not in token_req.headers


def test_token_expiring_mid_pull_is_refreshed(fake, store):
    digest = store.add_blob(BLOB)
    store.add_manifest("lib/app", "v1", {"schemaVersion": 2, "manifests": []},
                       "application/vnd.oci.image.index.v1+json")
    realm = TokenRealm(fake, store, expires_in=1)
    realm.only_latest = True
    fake.handler = realm.serve
    client = make_client(fake)
    now = [1000000.0]
    client._clock = lambda: now[0]
    client.get_manifest("lib/app", "v1")
    now[0] += 2                                   # the 1 s token is now stale
    assert client.get_blob("lib/app", digest, len(BLOB)) == BLOB
    assert len(realm.issued) == 2
    blob_get = fake.seen("GET", "/v2/lib/app/blobs/")
    # Renewed before use: the blob request carried the new token and got no 401.
    assert [r.headers["authorization"] for r in blob_get] == ["Bearer " + realm.issued[1][0]]


def test_insufficient_scope_rescopes_once(fake, store):
    _unused, digest = store.add_manifest("lib/app", "v1", {"schemaVersion": 2, "manifests": []},
                                         "application/vnd.oci.image.index.v1+json")
    realm = TokenRealm(fake, store)
    wider = "repository:lib/app:pull,push"
    fake.handler = lambda req: realm.serve(req, scope_for=lambda r: wider)
    client = make_client(fake)
    # The first challenge names pull only (as registries do for a GET) ...
    first = {"done": False}

    def handler(req):
        if req.path.startswith("/v2/lib/") and not first["done"]:
            first["done"] = True
            return realm.challenge("repository:lib/app:pull")
        return realm.serve(req, scope_for=lambda r: wider)

    fake.handler = handler
    assert client.get_manifest("lib/app", "v1")[2] == digest
    # ... then insufficient_scope names the wider one: exactly one re-scope.
    assert [sorted(s) for _unused, s in realm.issued] == [["repository:lib/app:pull"], [wider]]


def test_insufficient_scope_again_is_fatal(fake, store):
    realm = TokenRealm(fake, store)

    def handler(req):
        if req.path == "/token":
            return realm.issue(req)
        if req.headers.get("authorization"):
            # a token for exactly the scope asked for, still "insufficient"
            return realm.challenge("repository:lib/app:pull", error="insufficient_scope")
        return realm.challenge("repository:lib/app:pull")

    fake.handler = handler
    client = make_client(fake)
    with pytest.raises(AuthenticationError) as err:
        client.get_manifest("lib/app", "v1")
    assert "authentication to %s failed" % fake.host in str(err.value)
    assert len(realm.issued) == 1          # the same scope is never fetched twice in a row


def test_repeated_401_is_an_authentication_error_without_secrets(fake, store):
    realm = TokenRealm(fake, store)

    def handler(req):
        if req.path == "/token":
            return realm.issue(req)
        return realm.challenge("repository:lib/app:pull")      # refuses every token

    fake.handler = handler
    client = make_client(fake, username="alice", password=PASSWORD)
    with pytest.raises(AuthenticationError) as err:
        client.get_manifest("lib/app", "v1")
    text = str(err.value)
    assert text.startswith("authentication to %s failed" % fake.host)
    assert "'alice'" in text
    assert len(fake.seen("GET", "/v2/lib/")) == 2        # original + one retry with a fresh token
    for secret in [PASSWORD] + [t for t, _unused in realm.issued]:
        assert secret not in text and secret not in repr(err.value.details)
        assert secret not in repr(client) and secret not in repr(client._authenticator("lib/app"))


def test_basic_credentials_go_to_the_token_server(fake, store):
    _unused, digest = store.add_manifest("lib/app", "v1", {"schemaVersion": 2, "manifests": []},
                                         "application/vnd.oci.image.index.v1+json")
    realm = TokenRealm(fake, store, username="alice", password=PASSWORD)
    fake.handler = realm.serve
    assert make_client(fake, username="alice", password=PASSWORD).get_manifest("lib/app", "v1")[2] == digest
    with pytest.raises(AuthenticationError) as err:
        make_client(fake, username="alice", password="wrong-pass").get_manifest("lib/app", "v1")
    assert "refused" in str(err.value) and "wrong-pass" not in str(err.value)


def test_identity_token_uses_oauth2_post_then_falls_back_to_get(fake, store, tmp_path):
    _unused, digest = store.add_manifest("lib/app", "v1", {"schemaVersion": 2, "manifests": []},
                                         "application/vnd.oci.image.index.v1+json")
    realm = TokenRealm(fake, store)

    def handler(req):
        if req.path == "/token" and req.method == "POST":
            return Reply(404)           # this server has no OAuth2 endpoint
        return realm.serve(req)

    fake.handler = handler
    auth = tmp_path / "auth.json"
    auth.write_text('{"auths": {"%s": {"identitytoken": "refresh-abc"}}}' % fake.host)
    client = make_client(fake, auth_file=str(auth))
    assert client.get_manifest("lib/app", "v1")[2] == digest
    post = fake.seen("POST", "/token")[0]
    assert b"grant_type=refresh_token" in post.body and b"refresh_token=refresh-abc" in post.body
    assert len(fake.seen("GET", "/token")) == 1


def test_basic_challenge(fake, store):
    import base64
    good = "Basic " + base64.b64encode(("bob:" + PASSWORD).encode()).decode()
    store.add_blob(BLOB)

    def handler(req):
        if req.headers.get("authorization") != good:
            return error_reply(401, "UNAUTHORIZED", "no", {"WWW-Authenticate": 'Basic realm="r"'})
        return store.serve(req)

    fake.handler = handler
    assert make_client(fake, username="bob", password=PASSWORD).blob_exists("lib/app", sha256(BLOB))
    with pytest.raises(AuthenticationError) as err:
        make_client(fake).blob_exists("lib/app", sha256(BLOB))
    assert "none were given" in str(err.value)
    with pytest.raises(AuthenticationError) as err:
        make_client(fake, username="bob", password="nope-" + PASSWORD).blob_exists("lib/app", sha256(BLOB))
    assert PASSWORD not in str(err.value) and "refused the credentials" in str(err.value)


# -- redirects never carry credentials off-host -----------------------------------

def test_blob_redirect_to_another_host_drops_authorization(fake, store):
    digest = sha256(BLOB)
    realm = TokenRealm(fake, store)
    with FakeServer() as cdn:
        cdn.handler = lambda req: Store.blob_reply(req, BLOB)

        def handler(req):
            if "/blobs/" in req.path and req.method == "GET":
                if not req.headers.get("authorization", "").startswith("Bearer "):
                    return realm.challenge("repository:lib/app:pull")
                return Reply(307, {"Location": cdn.url + "/bucket/blob?X-Signature=presigned"})
            return realm.serve(req)

        fake.handler = handler
        client = make_client(fake, username="alice", password=PASSWORD)
        assert client.get_blob("lib/app", digest, len(BLOB)) == BLOB
        assert [r.headers.get("authorization") for r in cdn.seen()] == [None]
        assert cdn.seen()[0].query["X-Signature"] == ["presigned"]
        # the registry did get the token
        assert fake.seen("GET", "/v2/lib/app/blobs/")[-1].headers["authorization"].startswith("Bearer ")


def test_parallel_blob_downloads_share_one_client(fake, store):
    blobs = [os.urandom(200 * 1024 + i) for i in range(8)]
    digests = [store.add_blob(b) for b in blobs]
    realm = TokenRealm(fake, store)
    fake.handler = realm.serve
    client = make_client(fake, pool_size=4)
    results, errors = {}, []

    def worker(indexes):
        try:
            for i in indexes:
                results[i] = client.get_blob("lib/app", digests[i], len(blobs[i]))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(range(n, 8, 4),)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert [results[i] for i in range(8)] == blobs


# -- push ------------------------------------------------------------------------

def test_push_blob_skips_when_head_says_it_exists(fake, store):
    digest = store.add_blob(BLOB)
    fake.handler = store.serve
    opened = []
    client = make_client(fake)
    assert client.push_blob("lib/app", digest, len(BLOB), lambda: opened.append(1) or io.BytesIO(BLOB)) == "exists"
    assert opened == [] and fake.seen("POST") == [] and fake.seen("PUT") == []


def test_failed_upload_starts_a_new_session(fake, store):
    digest = sha256(BLOB)
    puts = []

    def handler(req):
        if req.method == "PUT":
            puts.append(req.path)
            if len(puts) == 1:
                return error_reply(503, "UNAVAILABLE", "storage hiccup")
        return store.serve(req)

    fake.handler = handler
    opened = []

    def opener():
        opened.append(1)
        return io.BytesIO(BLOB)

    client = make_client(fake)
    assert client.push_blob("lib/app", digest, len(BLOB), opener) == "uploaded"
    # two sessions, each PUT once (the failed one was never re-sent), fresh stream each time
    assert len(fake.seen("POST", "/v2/lib/app/blobs/uploads/")) == 2
    assert len(set(puts)) == 2 and len(opened) == 2
    put = fake.seen("PUT")[-1]
    assert put.query["digest"] == [digest] and put.query["_state"] == ["s3cr3t-state"]
    assert store.blobs[digest] == BLOB


def test_upload_error_message_hides_upload_state(fake, store):
    fake.handler = lambda req: error_reply(400, "DIGEST_INVALID", "nope") if req.method == "PUT" \
        else store.serve(req)
    with pytest.raises(RegistryError) as err:
        make_client(fake).push_blob("lib/app", sha256(BLOB), len(BLOB), lambda: io.BytesIO(BLOB))
    assert "DIGEST_INVALID" in str(err.value) and "s3cr3t-state" not in str(err.value)
    assert "s3cr3t" not in (err.value.url or "")


def test_cross_repo_mount(fake, store):
    digest = sha256(BLOB)

    def handler(req):
        if req.method == "POST" and req.query.get("mount") == [digest] and req.query.get("from") == ["lib/base"]:
            return Reply(201, {"Location": "/v2/lib/app/blobs/" + digest})
        return store.serve(req)

    fake.handler = handler
    assert make_client(fake).push_blob("lib/app", digest, len(BLOB), lambda: io.BytesIO(BLOB),
                                       mount_from="lib/base") == "mounted"
    assert fake.seen("PUT") == []
