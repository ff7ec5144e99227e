"""RegistryClient against a REAL registry: Debian's docker-registry (distribution 2.8).

Each flavour (open, htpasswd Basic auth, token auth with the test token
issuer) is started by this module on a free 127.0.0.1 port and stopped and
removed at the end, even on failure. Faults a real registry cannot produce
are in tests/unit/plugins/module_utils/test_registry_faults.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import tempfile

import pytest

from tests.lib.registry import Registry

from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    AuthenticationError,
    BlobNotFound,
    ManifestNotFound,
    RegistryUnreachable,
)
from ansible_collections.intermodal.containers.plugins.module_utils._registry import (
    MANIFEST_MEDIA_TYPES,
    RegistryClient,
)

pytestmark = pytest.mark.integration

OCI_INDEX, _unused, OCI_MANIFEST, _unused = MANIFEST_MEDIA_TYPES
NO_AUTH_FILES = {"HOME": "/nonexistent-home", "PATH": "/usr/bin:/bin"}


def digest_of(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _start(auth, **kwargs):
    base = tempfile.mkdtemp(prefix="intermodal-regclient-")
    reg = Registry(os.path.join(base, "reg"), auth=auth, **kwargs)
    try:
        reg.start()
        yield reg
    finally:
        reg.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def open_registry():
    yield from _start(None)


@pytest.fixture(scope="module")
def basic_registry():
    yield from _start("htpasswd")


@pytest.fixture(scope="module")
def token_registry():
    yield from _start("token")


def client_for(reg, **kwargs):
    kwargs.setdefault("environ", NO_AUTH_FILES)
    return RegistryClient(reg.host, **kwargs)


def push_image(client, repo, tag, layer):
    """Push config + one layer + manifest; returns (manifest bytes, digests)."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]}}).encode()
    outcomes = [client.push_blob(repo, digest_of(data), len(data), lambda d=data: io.BytesIO(d))
                for data in (layer, config)]
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest_of(layer), "size": len(layer)}],
    }).encode()
    assert client.put_manifest(repo, tag, manifest, OCI_MANIFEST) == digest_of(manifest)
    return manifest, config, outcomes


def test_push_then_pull_round_trip(open_registry):
    reg = open_registry
    layer = os.urandom(5 * 1024 * 1024 + 17)         # several 1 MiB chunks
    with client_for(reg) as client:
        client.ping()
        assert client._scheme == "http"              # loopback: https failed, http remembered
        manifest, config, outcomes = push_image(client, "round/trip", "v1", layer)
        assert outcomes == ["uploaded", "uploaded"]
        # pushing again finds everything in place
        assert push_image(client, "round/trip", "v1", layer)[2] == ["exists", "exists"]

        reg.clear_log()
        resolved = client.resolve("round/trip", "v1")
        assert resolved == {"media_type": OCI_MANIFEST, "digest": digest_of(manifest), "size": len(manifest)}
        manifest_calls = [(e["method"], e["status"]) for e in reg.requests_log() if "/manifests/" in e["path"]]
        assert manifest_calls == [("HEAD", 200)]       # resolved by HEAD, no metered GET

        assert client.get_manifest("round/trip", "v1") == (manifest, OCI_MANIFEST, digest_of(manifest))
        assert client.get_manifest("round/trip", digest_of(manifest))[0] == manifest
        assert client.get_blob("round/trip", digest_of(config), len(config)) == config

        with client.open_blob("round/trip", digest_of(layer), len(layer)) as reader:
            parts = []
            while True:
                part = reader.read(777777)
                if not part:
                    break
                parts.append(part)
        assert b"".join(parts) == layer and reader.bytes_read == len(layer)

        assert client.blob_exists("round/trip", digest_of(layer)) is True
        assert client.blob_exists("round/trip", "sha256:" + "0" * 64) is False
        assert client.list_tags("round/trip") == ["v1"]


def test_index_and_cross_repo_mount(open_registry):
    layer = os.urandom(4096)
    with client_for(open_registry) as client:
        manifest, config, _unused = push_image(client, "mount/source", "v1", layer)
        for blob in (layer, config):
            assert client.push_blob("mount/target", digest_of(blob), len(blob), lambda b=blob: io.BytesIO(b),
                                    mount_from="mount/source") == "mounted"
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest_of(manifest), "size": len(manifest),
             "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
        # the index needs its child manifest in the same repository
        client.put_manifest("mount/target", digest_of(manifest), manifest, OCI_MANIFEST)
        client.put_manifest("mount/target", "multi", index, OCI_INDEX)
        assert client.resolve("mount/target", "multi")["media_type"] == OCI_INDEX
        assert client.get_manifest("mount/target", "multi")[:2] == (index, OCI_INDEX)


def test_resume_against_the_real_registry(open_registry):
    """Drop the connection mid-blob: the resume uses the registry's real 206."""
    layer = os.urandom(6 * 1024 * 1024)
    with client_for(open_registry) as client:
        client._sleep = lambda s: None
        push_image(client, "resume/me", "v1", layer)
        open_registry.clear_log()
        reader = client.open_blob("resume/me", digest_of(layer), len(layer))
        first = reader.read(1024 * 1024)
        # Cut the socket under the live response, as a flaky network would.
        reader._resp.raw._connection.sock.shutdown(socket.SHUT_RDWR)
        rest = reader.read()
        assert first + rest == layer
        statuses = [e["status"] for e in open_registry.requests_log() if "/blobs/" in e["path"]]
        assert statuses[-1] == 206


def test_not_found_errors(open_registry):
    with client_for(open_registry) as client:
        with pytest.raises(ManifestNotFound) as err:
            client.resolve("no/such", "latest")
        assert "%s/no/such:latest" % open_registry.host in str(err.value)
        with pytest.raises(BlobNotFound):
            client.open_blob("no/such", "sha256:" + "1" * 64, 1).read()


def test_htpasswd_basic_auth(basic_registry):
    reg = basic_registry
    layer = os.urandom(2048)
    with client_for(reg, username=reg.username, password=reg.password) as client:
        manifest, _unused, _unused = push_image(client, "basic/app", "v1", layer)
        assert client.resolve("basic/app", "v1")["digest"] == digest_of(manifest)
        assert client.get_blob("basic/app", digest_of(layer), len(layer)) == layer
    with client_for(reg, username=reg.username, password="wrong-" + reg.password) as client:
        with pytest.raises(AuthenticationError) as err:
            client.resolve("basic/app", "v1")
        assert "refused the credentials" in str(err.value) and reg.password not in str(err.value)
    with client_for(reg) as client:
        with pytest.raises(AuthenticationError) as err:
            client.get_manifest("basic/app", "v1")
        assert "none were given" in str(err.value)


def test_htpasswd_credentials_from_auth_file(basic_registry, tmp_path):
    import base64
    reg = basic_registry
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {reg.host: {
        "auth": base64.b64encode(("%s:%s" % (reg.username, reg.password)).encode()).decode()}}}))
    with client_for(reg, environ={"HOME": str(tmp_path), "REGISTRY_AUTH_FILE": str(auth)}) as client:
        push_image(client, "basic/fromfile", "v1", b"layer-from-auth-file")
        assert client.list_tags("basic/fromfile") == ["v1"]


def test_token_auth(token_registry):
    reg = token_registry
    layer = os.urandom(3000)
    with client_for(reg, username=reg.username, password=reg.password) as client:
        manifest, _unused, _unused = push_image(client, "tok/app", "v1", layer)
    with client_for(reg) as anonymous:                          # anonymous pull is allowed
        assert anonymous.resolve("tok/app", "v1")["digest"] == digest_of(manifest)
        assert anonymous.get_blob("tok/app", digest_of(layer), len(layer)) == layer
        with pytest.raises(AuthenticationError):                # ... anonymous push is not
            anonymous.push_blob("tok/app", digest_of(b"x"), 1, lambda: io.BytesIO(b"x"))
    with client_for(reg, username=reg.username, password="bad-password") as client:
        with pytest.raises(AuthenticationError) as err:
            client.resolve("tok/app", "v1")
        assert "bad-password" not in str(err.value)


def test_token_auth_with_identity_token(token_registry, tmp_path):
    reg = token_registry
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {reg.host: {"identitytoken": reg.refresh_token}}}))
    with client_for(reg, auth_file=str(auth)) as client:
        push_image(client, "tok/identity", "v1", b"pushed-with-a-refresh-token")
    posts = [r for r in reg.issuer.requests if r.get("grant_type") == "refresh_token"]
    assert posts and all(r["status"] == 200 for r in posts)


# -- TLS: a real registry serving https with a certificate from a test CA ------------

@pytest.fixture(scope="module")
def tls_registry():
    for reg in _start(None, tls=True):
        yield {"host": reg.host, "ca": reg.ca_path}


def test_tls_loopback_is_insecure_but_stays_on_https(tls_registry):
    with RegistryClient(tls_registry["host"], environ=NO_AUTH_FILES) as client:
        manifest, _unused, _unused = push_image(client, "tls/app", "v1", b"layer over https")
        assert client._scheme == "https"       # the https attempt answered: no fallback to http
        assert client.resolve("tls/app", "v1")["digest"] == digest_of(manifest)


def test_tls_verification_with_ca_path(tls_registry):
    with RegistryClient(tls_registry["host"], insecure=False, ca_path=tls_registry["ca"],
                        environ=NO_AUTH_FILES) as client:
        client.ping()
        push_image(client, "tls/verified", "v1", b"verified layer")
        assert client.list_tags("tls/verified") == ["v1"]


def test_tls_untrusted_certificate_is_refused_without_retries(tls_registry):
    with RegistryClient(tls_registry["host"], insecure=False, environ=NO_AUTH_FILES) as client:
        sleeps = []
        client._sleep = sleeps.append
        with pytest.raises(RegistryUnreachable) as err:
            client.ping()
        assert "TLS certificate verification failed" in str(err.value)
        assert tls_registry["host"] in str(err.value)
        assert sleeps == []                    # a certificate problem does not go away by retrying
    with RegistryClient(tls_registry["host"], insecure=False, validate_certs=False,
                        environ=NO_AUTH_FILES) as client:
        client.ping()
