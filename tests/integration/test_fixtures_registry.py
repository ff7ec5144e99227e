"""The registry fixtures really work: a real docker-registry (distribution 2.8)
on 127.0.0.1, driven with plain `requests` (not the collection's client).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re

import pytest
import requests

from tests.lib.registry import Registry
from tests.lib.token_issuer import TokenIssuer, parse_scopes

pytestmark = pytest.mark.integration

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def _session():
    s = requests.Session()
    s.trust_env = False  # never route loopback traffic through a proxy
    return s


def _digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_blob(s, reg, repo, data, headers=None):
    r = s.post("%s/v2/%s/blobs/uploads/" % (reg.url, repo), headers=headers)
    assert r.status_code == 202, r.text
    loc = r.headers["Location"]
    if loc.startswith("/"):
        loc = reg.url + loc
    digest = _digest(data)
    r = s.put(loc, params={"digest": digest}, data=data,
              headers=dict(headers or {}, **{"Content-Type": "application/octet-stream"}))
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    return digest


def _push_image(s, reg, repo, tag, headers=None):
    """Push a one-layer OCI image; return (manifest_digest, config_digest, layer_digest)."""
    layer = b"not really a tar, the registry does not care " + repo.encode()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]}}).encode()
    layer_digest = _push_blob(s, reg, repo, layer, headers)
    config_digest = _push_blob(s, reg, repo, config, headers)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(layer)}],
    }).encode()
    r = s.put("%s/v2/%s/manifests/%s" % (reg.url, repo, tag), data=manifest,
              headers=dict(headers or {}, **{"Content-Type": MANIFEST_TYPE}))
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == _digest(manifest)
    return _digest(manifest), config_digest, layer_digest


def test_open_registry_push_and_pull(registry_open):
    s = _session()
    assert s.get(registry_open.url + "/v2/").status_code == 200
    mdigest, cdigest, ldigest = _push_image(s, registry_open, "fixtures/open", "v1")

    r = s.get("%s/v2/fixtures/open/manifests/v1" % registry_open.url,
              headers={"Accept": MANIFEST_TYPE})
    assert r.status_code == 200
    assert _digest(r.content) == mdigest
    assert r.headers["Content-Type"] == MANIFEST_TYPE
    assert json.loads(r.content)["layers"][0]["digest"] == ldigest

    r = s.get("%s/v2/fixtures/open/blobs/%s" % (registry_open.url, cdigest))
    assert r.status_code == 200
    assert _digest(r.content) == cdigest

    # the access log recorded the traffic with method, path and status
    log = registry_open.requests_log()
    assert {"method": "GET", "path": "/v2/fixtures/open/manifests/v1", "status": 200} in [
        {k: e[k] for k in ("method", "path", "status")} for e in log]
    assert any(e["method"] == "PUT" and e["status"] == 201 for e in log)


def test_blob_fetches_counts_successful_blob_gets(registry_open):
    s = _session()
    _unused, cdigest, ldigest = _push_image(s, registry_open, "fixtures/counting", "v1")
    before_c = registry_open.blob_fetches(cdigest)
    before_l = registry_open.blob_fetches(ldigest)
    for _attempt in range(3):
        assert s.get("%s/v2/fixtures/counting/blobs/%s" % (registry_open.url, ldigest)).status_code == 200
    # a Range request (206) counts, a HEAD does not, a 404 does not
    r = s.get("%s/v2/fixtures/counting/blobs/%s" % (registry_open.url, cdigest),
              headers={"Range": "bytes=2-"})
    assert r.status_code == 206
    assert s.head("%s/v2/fixtures/counting/blobs/%s" % (registry_open.url, cdigest)).status_code == 200
    missing = _digest(b"never pushed")
    assert s.get("%s/v2/fixtures/counting/blobs/%s" % (registry_open.url, missing)).status_code == 404

    assert registry_open.blob_fetches(ldigest) == before_l + 3
    assert registry_open.blob_fetches(cdigest) == before_c + 1
    assert registry_open.blob_fetches(missing) == 0
    counts = registry_open.blob_fetches()
    assert counts[ldigest] == before_l + 3
    assert missing not in counts


def test_htpasswd_rejects_bad_and_accepts_good_credentials(registry_htpasswd):
    s = _session()
    r = s.get(registry_htpasswd.url + "/v2/")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic ")
    assert 'realm="basic-realm"' in r.headers["WWW-Authenticate"]

    assert s.get(registry_htpasswd.url + "/v2/", auth=("tester", "wrong")).status_code == 401
    assert s.get(registry_htpasswd.url + "/v2/", auth=("nobody", "s3cret-pass")).status_code == 401

    good = (registry_htpasswd.username, registry_htpasswd.password)
    assert s.get(registry_htpasswd.url + "/v2/", auth=good).status_code == 200
    s.auth = good
    mdigest, _unused, _unused = _push_image(s, registry_htpasswd, "fixtures/basic", "v1")
    r = s.get("%s/v2/fixtures/basic/manifests/%s" % (registry_htpasswd.url, mdigest),
              headers={"Accept": MANIFEST_TYPE})
    assert r.status_code == 200 and _digest(r.content) == mdigest
    # without credentials even a pull is refused
    anon = _session()
    assert anon.get("%s/v2/fixtures/basic/manifests/v1" % registry_htpasswd.url).status_code == 401


def _parse_challenge(header):
    """'Bearer k="v",k2="a,b"' -> ('Bearer', {k: v, k2: 'a,b'}); commas may sit inside quotes."""
    scheme, _sep, params = header.partition(" ")
    out = {}
    for m in re.finditer(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', params):
        out[m.group(1)] = m.group(2) if m.group(2) is not None else m.group(3)
    return scheme, out


def _jwt_parts(token):
    def dec(p):
        return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    h, c, _unused = token.split(".")
    return dec(h), dec(c)


def test_token_flow_end_to_end(registry_token):
    reg = registry_token
    s = _session()
    r = s.get(reg.url + "/v2/")
    assert r.status_code == 401
    scheme, params = _parse_challenge(r.headers["WWW-Authenticate"])
    assert scheme == "Bearer"
    assert params["realm"] == reg.issuer.realm
    assert params["service"] == "intermodal-test-registry"

    start = len(reg.issuer.requests)
    r = s.get(params["realm"], params={"service": params["service"],
                                       "scope": "repository:fixtures/tok:pull,push"},
              auth=(reg.username, reg.password))
    assert r.status_code == 200
    body = r.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300 and body["issued_at"]
    header, claims = _jwt_parts(body["token"])
    assert header["alg"] == "RS256" and header["x5c"]
    assert claims["aud"] == "intermodal-test-registry" and claims["sub"] == reg.username
    assert claims["access"] == [{"type": "repository", "name": "fixtures/tok",
                                 "actions": ["pull", "push"]}]
    rec = reg.issuer.requests[start]
    assert rec["had_basic_auth"] is True and rec["user"] == reg.username

    bearer = {"Authorization": "Bearer " + body["token"]}
    assert s.get(reg.url + "/v2/", headers=bearer).status_code == 200
    # the token really authorises push and pull on that repository
    mdigest, _unused, _unused = _push_image(s, reg, "fixtures/tok", "v1", headers=bearer)
    r = s.get("%s/v2/fixtures/tok/manifests/v1" % reg.url,
              headers=dict(bearer, Accept=MANIFEST_TYPE))
    assert r.status_code == 200 and _digest(r.content) == mdigest

    # ...but not on another one: the registry asks for the other scope
    r = s.get("%s/v2/fixtures/other/manifests/v1" % reg.url, headers=bearer)
    assert r.status_code == 401
    scheme, params = _parse_challenge(r.headers["WWW-Authenticate"])
    assert params.get("scope") == "repository:fixtures/other:pull"


def test_token_wrong_credentials_get_401(registry_token):
    r = _session().get(registry_token.issuer.realm,
                       params={"service": "intermodal-test-registry",
                               "scope": "repository:fixtures/tok:pull"},
                       auth=(registry_token.username, "wrong"))
    assert r.status_code == 401
    assert registry_token.issuer.requests[-1]["status"] == 401


def test_anonymous_token_pulls_but_cannot_push(registry_token):
    reg = registry_token
    s = _session()
    authed = s.get(reg.issuer.realm, params={"service": "intermodal-test-registry",
                                             "scope": "repository:fixtures/anon:pull,push"},
                   auth=(reg.username, reg.password)).json()["token"]
    mdigest, _unused, _unused = _push_image(s, reg, "fixtures/anon", "v1",
                                            headers={"Authorization": "Bearer " + authed})

    r = s.get(reg.issuer.realm, params={"service": "intermodal-test-registry",
                                        "scope": "repository:fixtures/anon:pull,push"})
    assert r.status_code == 200
    anon_token = r.json()["token"]
    _unused, claims = _jwt_parts(anon_token)
    assert claims["access"][0]["actions"] == ["pull"]
    assert reg.issuer.requests[-1]["had_basic_auth"] is False
    bearer = {"Authorization": "Bearer " + anon_token}

    r = s.get("%s/v2/fixtures/anon/manifests/v1" % reg.url,
              headers=dict(bearer, Accept=MANIFEST_TYPE))
    assert r.status_code == 200 and _digest(r.content) == mdigest

    r = s.post("%s/v2/fixtures/anon/blobs/uploads/" % reg.url, headers=bearer)
    assert r.status_code in (401, 403)
    _unused, params = _parse_challenge(r.headers["WWW-Authenticate"])
    assert params["error"] == "insufficient_scope"
    # distribution lists the actions in no fixed order (a Go map)
    (wanted,) = parse_scopes([params["scope"]])
    assert wanted["name"] == "fixtures/anon" and sorted(wanted["actions"]) == ["pull", "push"]


def test_token_post_refresh_and_password_grants(registry_token):
    reg = registry_token
    s = _session()
    r = s.post(reg.issuer.realm, data={
        "grant_type": "refresh_token", "refresh_token": reg.refresh_token,
        "service": "intermodal-test-registry", "scope": "repository:fixtures/post:pull,push",
        "client_id": "intermodal-tests"})
    assert r.status_code == 200
    token = r.json()["access_token"]
    assert _jwt_parts(token)[1]["sub"] == reg.username
    assert reg.issuer.requests[-1]["grant_type"] == "refresh_token"
    _push_image(s, reg, "fixtures/post", "v1", headers={"Authorization": "Bearer " + token})

    r = s.post(reg.issuer.realm, data={"grant_type": "refresh_token", "refresh_token": "bogus",
                                       "service": "intermodal-test-registry"})
    assert r.status_code == 401

    r = s.post(reg.issuer.realm, data={
        "grant_type": "password", "username": reg.username, "password": reg.password,
        "service": "intermodal-test-registry", "scope": "repository:fixtures/post:pull"})
    assert r.status_code == 200
    token = r.json()["access_token"]
    r = s.get("%s/v2/fixtures/post/manifests/v1" % reg.url,
              headers={"Authorization": "Bearer " + token, "Accept": MANIFEST_TYPE})
    assert r.status_code == 200

    r = s.post(reg.issuer.realm, data={"grant_type": "password", "username": reg.username,
                                       "password": "nope", "service": "intermodal-test-registry"})
    assert r.status_code == 401


def test_token_signed_by_untrusted_key_is_rejected(registry_token, tmp_path):
    """A token from a different issuer key must not be accepted: proves the
    registry really verifies our signatures rather than ignoring them."""
    rogue = TokenIssuer({"tester": "x"}, workdir=str(tmp_path / "rogue"),
                        service="intermodal-test-registry", issuer="intermodal-test-issuer")
    token = rogue.make_token("tester", [{"type": "repository", "name": "fixtures/tok",
                                         "actions": ["pull", "push"]}])
    r = _session().get(registry_token.url + "/v2/", headers={"Authorization": "Bearer " + token})
    assert r.status_code == 401


def test_token_issuer_without_anonymous_pull_requires_credentials(tmp_path):
    with TokenIssuer({"u": "p"}, workdir=str(tmp_path / "iss"), anonymous_pull=False) as iss:
        s = _session()
        q = {"service": iss.service, "scope": "repository:a/b:pull"}
        assert s.get(iss.realm, params=q).status_code == 401
        r = s.get(iss.realm, params=q, auth=("u", "p"))
        assert r.status_code == 200
        assert _jwt_parts(r.json()["token"])[1]["access"][0]["actions"] == ["pull"]
        assert [x["status"] for x in iss.requests] == [401, 200]
        assert s.get(iss.realm.replace("/token", "/other")).status_code == 404
    with pytest.raises(requests.ConnectionError):
        _session().get(iss.realm, timeout=2)


def test_parse_scopes_handles_ports_and_repeats():
    assert parse_scopes(["repository:127.0.0.1:5000/a/b:pull,push", "registry:catalog:*"]) == [
        {"type": "repository", "name": "127.0.0.1:5000/a/b", "actions": ["pull", "push"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]


def test_registry_start_failure_reports_log_and_cleans_up(tmp_path):
    """Two registries on the same port: the second one fails to bind, and the
    error carries its log tail; no process is left behind."""
    first = Registry(str(tmp_path / "one")).start()
    try:
        second = Registry(str(tmp_path / "two"), port=first.port)
        with pytest.raises(RuntimeError) as err:
            second.start()
        assert "did not answer" in str(err.value)
        assert "address already in use" in str(err.value)
        assert not second.running
    finally:
        first.stop()
    assert not first.running


def test_stop_kills_registry_and_issuer(tmp_path):
    reg = Registry(str(tmp_path / "r"), auth="token").start()
    pid, realm = reg._proc.pid, reg.issuer.realm
    reg.cleanup()
    assert not os.path.exists(str(tmp_path / "r"))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(requests.ConnectionError):
        _session().get(realm, timeout=2)


# ---- the ansible-playbook runner (lives here because playbooks in the
# ---- integration suite talk to these registries) --------------------------

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: say hi
      ansible.builtin.command: echo hi
    - name: show a var
      ansible.builtin.debug:
        msg: "greeting={{ greeting }}"
    - name: ping the registry
      ansible.builtin.uri:
        url: "{{ registry_url }}/v2/"
        use_proxy: false
      register: ping
    - name: skipped one
      ansible.builtin.debug:
        msg: never
      when: false
    - name: fails but ignored
      ansible.builtin.command: /bin/false
      ignore_errors: true
"""


def test_run_playbook_reports_tasks_and_recap(run_playbook, registry_open):
    res = run_playbook(PLAYBOOK, extra_vars={"greeting": "hello", "registry_url": registry_open.url})
    assert res.rc == 0
    hi = res.task("say hi")
    assert hi["changed"] is True and hi["failed"] is False
    assert hi["result"]["stdout"] == "hi"
    assert res.task("show a var")["result"]["msg"] == "greeting=hello"
    assert res.task("ping the registry")["result"]["status"] == 200
    assert res.task("skipped one")["skipped"] is True
    failed = res.task("fails but ignored")
    assert failed["failed"] is True and failed["result"]["rc"] == 1
    recap = res.recap["localhost"]
    assert recap["changed"] == 2 and recap["failures"] == 0 and recap["ignored"] == 1
    assert recap["skipped"] == 1
    assert "PLAY RECAP" in res.stdout


def test_run_playbook_expect_failure_and_check_mode(run_playbook, tmp_path):
    target = tmp_path / "file.txt"
    pb = tmp_path / "pb.yml"
    pb.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - name: write a file\n      ansible.builtin.copy:\n"
        "        dest: %s\n        content: hi\n"
        "    - name: boom\n      ansible.builtin.fail:\n        msg: wanted failure\n"
        "      when: do_fail | bool\n" % target)
    res = run_playbook(str(pb), extra_vars={"do_fail": False}, check=True, diff=True)
    assert res.task("write a file")["changed"] is True
    assert not target.exists()  # --check really was passed
    res = run_playbook(str(pb), extra_vars={"do_fail": True}, expect_failure=True)
    assert res.rc != 0 and res.failed == 1
    assert res.task("boom")["result"]["msg"] == "wanted failure"
    assert target.read_text() == "hi"


def test_make_registry_gives_fresh_registries(make_registry):
    a = make_registry()
    b = make_registry(auth="htpasswd", username="other", password="pw")
    assert a.port != b.port
    s = _session()
    assert s.get(b.url + "/v2/", auth=("other", "pw")).status_code == 200
    _push_blob(s, a, "fresh/one", b"payload")
    assert a.blob_fetches() == {}
    s.get("%s/v2/fresh/one/blobs/%s" % (a.url, _digest(b"payload")))
    assert a.blob_fetches() == {_digest(b"payload"): 1}
    a.clear_log()
    assert a.blob_fetches() == {} and a.requests_log() == []
    s.get("%s/v2/fresh/one/blobs/%s" % (a.url, _digest(b"payload")))
    assert a.blob_fetches(_digest(b"payload")) == 1


def test_tls_registry_is_trusted_only_with_its_ca(make_registry):
    reg = make_registry(tls=True)
    assert reg.url == "https://" + reg.host
    s = _session()
    with pytest.raises(requests.exceptions.SSLError):
        s.get(reg.url + "/v2/", timeout=5)  # system CAs do not know our test CA
    r = s.get(reg.url + "/v2/", verify=reg.ca_path, timeout=5)
    assert r.status_code == 200
    s.verify = reg.ca_path
    digest = _push_blob(s, reg, "tls/repo", b"over tls")
    assert s.get("%s/v2/tls/repo/blobs/%s" % (reg.url, digest)).content == b"over tls"
    assert reg.blob_fetches(digest) == 1
