"""Credential discovery: auth file order, key matching, identity tokens, helpers.

Real files in tmp dirs with an injected environ (HOME, XDG_*, DOCKER_CONFIG,
PATH). Credential helpers are FAKED by tiny shell scripts named
``docker-credential-test`` put on an injected PATH: a real helper needs a
desktop keychain or a cloud account this machine does not have.
"""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from ansible_collections.intermodal.containers.plugins.module_utils._credentials import (
    Credentials,
    candidate_keys,
    find_credentials,
    normalize_registry_key,
)
from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    AuthenticationError,
)


def b64(user, password):
    return base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def write_json(path, data):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(str(path), "w") as handle:
        json.dump(data, handle)
    return str(path)


@pytest.fixture
def env(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    return {"HOME": str(home), "PATH": str(bindir) + ":/usr/bin:/bin"}


def fake_helper(env, script_body, name="test"):
    """Write docker-credential-<name> (a shell script) into the injected PATH."""
    bindir = env["PATH"].split(":")[0]
    path = os.path.join(bindir, "docker-credential-" + name)
    with open(path, "w") as handle:
        handle.write("#!/bin/sh\n" + script_body + "\n")
    os.chmod(path, stat.S_IRWXU)
    return path


def test_normalize_keys():
    assert normalize_registry_key("https://index.docker.io/v1/") == "docker.io"
    assert normalize_registry_key("registry-1.docker.io") == "docker.io"
    assert normalize_registry_key("http://reg.example:5000/v2/") == "reg.example:5000"
    assert normalize_registry_key("reg.example/ns/repo") == "reg.example/ns/repo"
    assert candidate_keys("reg.example", "a/b/c") == [
        "reg.example/a/b/c", "reg.example/a/b", "reg.example/a", "reg.example"]


def test_search_order(env, tmp_path):
    home = env["HOME"]

    def entry(who):
        return {"auths": {"reg.example": {"auth": b64(who, "pw-" + who)}}}

    files = {
        "dockercfg": (os.path.join(home, ".dockercfg"), {"reg.example": {"auth": b64("dockercfg", "x")}}),
        "docker": (os.path.join(home, ".docker", "config.json"), entry("docker")),
        "docker_config": (str(tmp_path / "dc" / "config.json"), entry("docker_config")),
        "xdg_config": (os.path.join(home, ".config", "containers", "auth.json"), entry("xdg_config")),
        "xdg_runtime": (str(tmp_path / "run" / "containers" / "auth.json"), entry("xdg_runtime")),
        "registry_auth_file": (str(tmp_path / "explicit-env.json"), entry("registry_auth_file")),
    }
    env = dict(env, DOCKER_CONFIG=str(tmp_path / "dc"), XDG_RUNTIME_DIR=str(tmp_path / "run"),
               REGISTRY_AUTH_FILE=files["registry_auth_file"][0])
    # Write all, then remove them from the most preferred down: each time the
    # next file in the documented order must answer.
    for path, data in files.values():
        write_json(path, data)
    order = ["registry_auth_file", "xdg_runtime", "xdg_config", "docker_config", "dockercfg"]
    for name in order:
        assert find_credentials("reg.example", environ=env).username == name
        os.remove(files[name][0])
        if name == "docker_config":
            # without $DOCKER_CONFIG, ~/.docker/config.json is read instead
            assert find_credentials("reg.example", environ=dict(env, DOCKER_CONFIG="")).username == "docker"
    assert find_credentials("reg.example", environ=env) is None


def test_explicit_auth_file_is_the_only_one_read(env, tmp_path):
    write_json(os.path.join(env["HOME"], ".docker", "config.json"),
               {"auths": {"reg.example": {"auth": b64("home", "pw")}}})
    only = write_json(tmp_path / "only.json", {"auths": {"other.example": {"auth": b64("o", "p")}}})
    assert find_credentials("reg.example", auth_file=only, environ=env) is None
    assert find_credentials("other.example", auth_file=only, environ=env) == Credentials("o", "p")
    with pytest.raises(AuthenticationError):
        find_credentials("reg.example", auth_file=str(tmp_path / "missing.json"), environ=env)


def test_most_specific_key_wins(env, tmp_path):
    path = write_json(tmp_path / "a.json", {"auths": {
        "reg.example": {"auth": b64("registry", "1")},
        "reg.example/team": {"auth": b64("namespace", "2")},
        "https://reg.example/team/app": {"auth": b64("repo", "3")},
    }})

    def found(repo):
        return find_credentials("reg.example", repo, auth_file=path, environ=env).username

    assert found("team/app") == "repo"
    assert found("team/app/sub") == "repo"
    assert found("team/other") == "namespace"
    assert found("elsewhere/x") == "registry"
    assert find_credentials("reg.example", auth_file=path, environ=env).username == "registry"


def test_docker_hub_legacy_key(env, tmp_path):
    path = write_json(tmp_path / "a.json", {"auths": {"https://index.docker.io/v1/": {"auth": b64("hub", "pw")}}})
    assert find_credentials("docker.io", "library/busybox", auth_file=path, environ=env).username == "hub"


def test_identity_token(env, tmp_path):
    path = write_json(tmp_path / "a.json", {"auths": {"reg.example": {
        "auth": b64("00000000-0000-0000-0000-000000000000", ""), "identitytoken": "id-tok-secret"}}})
    creds = find_credentials("reg.example", auth_file=path, environ=env)
    assert creds.identity_token == "id-tok-secret" and creds.password is None
    assert "id-tok-secret" not in repr(creds) and "id-tok-secret" not in str(creds)


def test_repr_hides_password():
    creds = Credentials("alice", "pa55word-xyz")
    assert "pa55word-xyz" not in repr(creds) and "alice" in repr(creds)


def test_cred_helper_first_then_auths_then_creds_store(env, tmp_path):
    # The fake helper echoes the server URL it was given on stdin as the username.
    fake_helper(env, 'read url; printf \'{"ServerURL":"%s","Username":"helper:%s","Secret":"s3"}\' "$url" "$url"')
    path = write_json(tmp_path / "a.json", {
        "credHelpers": {"helped.example": "test"},
        "auths": {"helped.example": {"auth": b64("from-auths", "x")},
                  "plain.example": {"auth": b64("from-auths", "x")}},
        "credsStore": "test",
    })
    assert find_credentials("helped.example", auth_file=path, environ=env) == \
        Credentials("helper:helped.example", "s3")
    assert find_credentials("plain.example", auth_file=path, environ=env).username == "from-auths"
    assert find_credentials("store.example", auth_file=path, environ=env).username == "helper:store.example"
    # Hub is asked for under the URL docker login stores it by.
    hub = write_json(tmp_path / "hub.json", {"credHelpers": {"docker.io": "test"}})
    assert find_credentials("docker.io", auth_file=hub, environ=env).username == \
        "helper:https://index.docker.io/v1/"


def test_cred_helper_token_username_means_identity_token(env, tmp_path):
    fake_helper(env, 'cat >/dev/null; echo \'{"Username":"<token>","Secret":"refresh-xyz"}\'')
    path = write_json(tmp_path / "a.json", {"credHelpers": {"reg.example": "test"}})
    creds = find_credentials("reg.example", auth_file=path, environ=env)
    assert creds.identity_token == "refresh-xyz" and creds.password is None


def test_cred_helper_not_found_is_no_credentials(env, tmp_path):
    fake_helper(env, 'cat >/dev/null; echo "credentials not found in native keychain"; exit 1')
    path = write_json(tmp_path / "a.json", {"credHelpers": {"reg.example": "test"}})
    assert find_credentials("reg.example", auth_file=path, environ=env) is None


def test_failing_or_missing_helper_names_the_helper_not_the_secret(env, tmp_path):
    fake_helper(env, 'cat >/dev/null; echo "leaked-secret-value" >&2; exit 3')
    path = write_json(tmp_path / "a.json", {"credHelpers": {"reg.example": "test", "gone.example": "absent"}})
    with pytest.raises(AuthenticationError) as err:
        find_credentials("reg.example", auth_file=path, environ=env)
    assert "docker-credential-test" in str(err.value) and "exit status 3" in str(err.value)
    assert "leaked-secret-value" not in str(err.value)
    with pytest.raises(AuthenticationError) as err:
        find_credentials("gone.example", auth_file=path, environ=env)
    assert "docker-credential-absent" in str(err.value)


def test_invalid_files_are_clear_errors(env, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"auths": {"reg.example": {"auth": "c2VjcmV0LXdpdGhvdXQtY29sb24="')
    with pytest.raises(AuthenticationError) as err:
        find_credentials("reg.example", auth_file=str(bad), environ=env)
    assert str(bad) in str(err.value) and "not valid JSON" in str(err.value)
    nocolon = write_json(tmp_path / "n.json", {"auths": {"reg.example": {"auth": "c2VjcmV0LXdpdGhvdXQtY29sb24="}}})
    with pytest.raises(AuthenticationError) as err:
        find_credentials("reg.example", auth_file=nocolon, environ=env)
    assert "secret-without-colon" not in str(err.value)
