# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where registry credentials come from.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

Reads the same files, in the same order, as containers/image
(pkg/docker/config/config.go) so that a ``podman login`` or ``docker login``
done on the target is honoured: auth.json files, then docker's config.json,
then the legacy ~/.dockercfg. Inside one file a per-registry credential helper
wins, then the most specific ``auths`` key, then the default ``credsStore``.
Secrets never reach an exception message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import subprocess

from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    AuthenticationError,
)

DOCKER_HUB = "docker.io"
# The key ``docker login`` writes for Hub and the URL credential helpers expect.
DOCKER_HUB_LEGACY_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io")
# Helpers say this (docker-credential-helpers credentials.NewErrCredentialsNotFound)
# when they simply have nothing stored: that is "no credentials", not a failure.
_NOT_FOUND_MARKER = "credentials not found"
HELPER_TIMEOUT = 60
MAX_AUTH_FILE_SIZE = 4 * 1024 * 1024


class Credentials:
    """A username/password pair or an identity (refresh) token."""

    __slots__ = ("username", "password", "identity_token", "source")

    def __init__(self, username, password, identity_token=None, source=None):
        self.username = username
        self.password = password
        self.identity_token = identity_token
        # Where they came from (file path or helper name), for messages only.
        self.source = source

    def __repr__(self):
        kind = "identity token" if self.identity_token else "password"
        return "Credentials(username=%r, %s=<hidden>, source=%r)" % (
            self.username, kind, self.source)

    __str__ = __repr__

    def __eq__(self, other):
        return isinstance(other, Credentials) and (
            (self.username, self.password, self.identity_token)
            == (other.username, other.password, other.identity_token))

    def __hash__(self):
        return hash((self.username, self.password, self.identity_token))


def normalize_registry_key(key):
    """Reduce an ``auths`` key to ``host[:port][/path]`` the way docker does.

    Keys may carry a scheme and a ``/v1/`` or ``/v2/`` suffix
    (``https://index.docker.io/v1/``); Hub has several names.
    """
    key = key.strip()
    for prefix in ("https://", "http://"):
        if key.lower().startswith(prefix):
            key = key[len(prefix):]
            break
    key = key.rstrip("/")
    for suffix in ("/v1", "/v2"):
        if key.endswith(suffix):
            key = key[:-len(suffix)]
    key = key.rstrip("/")
    host, sep, rest = key.partition("/")
    if host.lower() in _HUB_ALIASES or host.lower() == DOCKER_HUB:
        host = DOCKER_HUB
    return host + sep + rest


def candidate_keys(registry, repository=None):
    """Lookup keys, most specific first: registry/ns/repo, ..., registry."""
    registry = normalize_registry_key(registry)
    keys = []
    if repository:
        parts = repository.strip("/").split("/")
        for end in range(len(parts), 0, -1):
            keys.append(registry + "/" + "/".join(parts[:end]))
    keys.append(registry)
    return keys


def auth_file_candidates(environ):
    """The files to read, in containers/image order (missing ones are skipped)."""
    home = environ.get("HOME") or os.path.expanduser("~")
    files = []
    if environ.get("REGISTRY_AUTH_FILE"):
        files.append((environ["REGISTRY_AUTH_FILE"], "json"))
    if environ.get("XDG_RUNTIME_DIR"):
        files.append((os.path.join(environ["XDG_RUNTIME_DIR"], "containers", "auth.json"), "json"))
    config_home = environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    files.append((os.path.join(config_home, "containers", "auth.json"), "json"))
    docker_config = environ.get("DOCKER_CONFIG")
    if docker_config:
        files.append((os.path.join(docker_config, "config.json"), "json"))
    else:
        files.append((os.path.join(home, ".docker", "config.json"), "json"))
    files.append((os.path.join(home, ".dockercfg"), "legacy"))
    return files


def _load(path, kind):
    """Parse one auth file; None if it does not exist."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_AUTH_FILE_SIZE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuthenticationError("cannot read registry auth file %s: %s" % (path, exc.strerror))
    if len(raw) > MAX_AUTH_FILE_SIZE:
        raise AuthenticationError("registry auth file %s is larger than 4 MiB" % path)
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        # The message from json names a position, never the file's content.
        raise AuthenticationError("registry auth file %s is not valid JSON (%s)"
                                  % (path, type(exc).__name__))
    if not isinstance(data, dict):
        raise AuthenticationError("registry auth file %s is not a JSON object" % path)
    if kind == "legacy":
        # ~/.dockercfg is the bare ``auths`` map.
        return {"auths": data}
    return data


def _decode_auth_entry(entry, where):
    """Turn one ``auths`` value into Credentials (or None if it holds nothing)."""
    if not isinstance(entry, dict):
        return None
    username, password = entry.get("username"), entry.get("password")
    encoded = entry.get("auth")
    if encoded:
        try:
            decoded = base64.b64decode(encoded, validate=False).decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise AuthenticationError("the 'auth' value for %s is not valid base64" % where)
        if ":" not in decoded:
            raise AuthenticationError("the 'auth' value for %s is not base64 of user:password" % where)
        username, password = decoded.split(":", 1)
        # podman and docker both trim the NUL padding some tools leave.
        password = password.strip("\x00")
    token = entry.get("identitytoken")
    if token:
        return Credentials(username or "", None, identity_token=token, source=where)
    if username or password:
        return Credentials(username or "", password or "", source=where)
    return None


def _helper_server_url(registry):
    return DOCKER_HUB_LEGACY_KEY if registry == DOCKER_HUB else registry


def run_credential_helper(helper, registry, environ):
    """Run ``docker-credential-<helper> get``; None when it has nothing stored."""
    name = "docker-credential-" + helper
    if not helper or "/" in helper or helper.startswith("."):
        raise AuthenticationError("invalid credential helper name %r" % helper)
    binary = shutil.which(name, path=environ.get("PATH", os.defpath))
    if binary is None:
        raise AuthenticationError(
            "credential helper %s (configured for %s) is not installed or not on PATH"
            % (name, registry))
    try:
        proc = subprocess.run(
            [binary, "get"], input=_helper_server_url(registry).encode("utf-8"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(environ),
            timeout=HELPER_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise AuthenticationError("credential helper %s timed out after %d s for %s"
                                  % (name, HELPER_TIMEOUT, registry))
    except OSError as exc:
        raise AuthenticationError("credential helper %s could not be run: %s" % (name, exc.strerror))
    out = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        if _NOT_FOUND_MARKER in out.lower() or _NOT_FOUND_MARKER in proc.stderr.decode("utf-8", "replace").lower():
            return None
        # The helper's output could echo a secret; report only its exit status.
        raise AuthenticationError("credential helper %s failed for %s (exit status %d)"
                                  % (name, registry, proc.returncode))
    try:
        reply = json.loads(out)
        username, secret = reply.get("Username", ""), reply.get("Secret", "")
    except (ValueError, AttributeError):
        raise AuthenticationError("credential helper %s returned output that is not "
                                  "{Username, Secret} JSON for %s" % (name, registry))
    if not secret:
        return None
    where = "credential helper " + name
    if username == "<token>":
        return Credentials("", None, identity_token=secret, source=where)
    return Credentials(username, secret, source=where)


def _from_config(data, path, registry, repository, environ):
    helpers = data.get("credHelpers")
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if normalize_registry_key(key) == registry:
                return run_credential_helper(helper, registry, environ)
    auths = data.get("auths")
    if isinstance(auths, dict):
        by_key = {}
        for key, entry in auths.items():
            # A later duplicate (same key spelled twice) does not override.
            by_key.setdefault(normalize_registry_key(key), (key, entry))
        for want in candidate_keys(registry, repository):
            if want in by_key:
                key, entry = by_key[want]
                found = _decode_auth_entry(entry, "%s in %s" % (key, path))
                if found is not None:
                    return found
    store = data.get("credsStore")
    if store:
        return run_credential_helper(store, registry, environ)
    return None


def find_credentials(registry, repository=None, auth_file=None, environ=None):
    """Credentials for ``registry`` (a Reference.registry), or None.

    With ``auth_file`` only that file is read. ``environ`` defaults to
    os.environ (tests inject their own HOME/XDG_*/PATH).
    """
    environ = os.environ if environ is None else environ
    registry = normalize_registry_key(registry)
    if auth_file:
        files = [(auth_file, "json")]
        if not os.path.exists(auth_file):
            raise AuthenticationError("registry auth file %s does not exist" % auth_file)
    else:
        files = auth_file_candidates(environ)
    for path, kind in files:
        data = _load(path, kind)
        if not data:
            continue
        found = _from_config(data, path, registry, repository, environ)
        if found is not None:
            return found
    return None
