# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Registry authentication: challenges, token fetch, token cache.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

Implements the distribution token flow (docs/spec/auth/token.md): parse the
``WWW-Authenticate`` challenge of a 401, get a Bearer token from the realm
(anonymous, Basic-to-token, or refresh-token POST), cache it per scope until
it expires. The realm URL comes from the registry and is therefore untrusted:
it must be https and must not point at link-local or private addresses
(SSRF; ggcr transport/bearer.go validateRealmURL). Nothing here does HTTP
itself: the client passes a ``transport`` callable, so retries, proxies and
TLS settings are the client's.
"""

from __future__ import annotations

import base64
import calendar
import ipaddress
import json
import re
import socket
import threading
import time
from urllib.parse import urlsplit

from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    AuthenticationError,
)

MAX_TOKEN_BODY = 1024 * 1024
DEFAULT_TOKEN_LIFETIME = 60
# Renew a little before the server's deadline so a token does not expire in flight.
_EXPIRY_MARGIN = 5
_TOKEN_RE = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM_RE = re.compile(r"\s*(" + _TOKEN_RE + r")\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^,\s]*)\s*")
_SCHEME_RE = re.compile(r"\s*(" + _TOKEN_RE + r")(?=\s|$|,)")


class Challenge:
    """One challenge of a WWW-Authenticate header: scheme + lowercased params."""

    __slots__ = ("scheme", "params")

    def __init__(self, scheme, params):
        self.scheme = scheme.lower()
        self.params = params

    def get(self, key, default=None):
        return self.params.get(key, default)

    def __repr__(self):
        return "Challenge(%r, %r)" % (self.scheme, self.params)


def parse_www_authenticate(header):
    """Parse ``Bearer realm="..",service="..",scope=".." , Basic realm=".."``.

    Returns a list of Challenge; unparseable input gives what could be read.
    """
    challenges = []
    if not header:
        return challenges
    pos, current = 0, None
    while pos < len(header):
        if header[pos] in ", \t":
            pos += 1
            continue
        param = _PARAM_RE.match(header, pos)
        if param and current is not None:
            value = param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            current.params[param.group(1).lower()] = value
            pos = param.end()
            continue
        scheme = _SCHEME_RE.match(header, pos)
        if not scheme:
            break
        current = Challenge(scheme.group(1), {})
        challenges.append(current)
        pos = scheme.end()
    return challenges


def pick_challenge(challenges):
    """Bearer if offered (it carries the scope), else Basic, else None."""
    for wanted in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == wanted:
                return challenge
    return None


def basic_header(username, password):
    raw = ("%s:%s" % (username or "", password or "")).encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _is_refused_address(addr, insecure):
    """Link-local (cloud metadata) is always refused; other non-public ranges
    only when the registry is not configured insecure."""
    if addr.is_link_local or (addr.version == 6 and addr.ipv4_mapped and addr.ipv4_mapped.is_link_local):
        return True
    if insecure:
        return False
    return addr.is_private or addr.is_loopback or addr.is_reserved or addr.is_multicast \
        or addr.is_unspecified


def validate_realm(realm, registry_host, insecure, resolver=None):
    """Raise AuthenticationError unless ``realm`` is a URL we may send credentials to.

    Decides on the URL first (scheme, IP literal). A hostname is resolved (with
    ``resolver``, default socket.getaddrinfo) only when its addresses matter.
    The later connection resolves again, so a DNS server that changes its
    answer in between (rebinding) is not stopped here; literals always are.
    """
    parts = urlsplit(realm)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    shown = "%s://%s%s" % (scheme, parts.netloc.rpartition("@")[2], parts.path)
    if scheme not in ("https", "http") or not host:
        raise AuthenticationError("registry %s sent an invalid token realm %r" % (registry_host, shown))
    if scheme == "http" and not insecure:
        raise AuthenticationError(
            "registry %s sent a plain-http token realm %s; refusing to send credentials "
            "without TLS (mark the registry insecure to allow it)" % (registry_host, shown))
    if parts.username or parts.password:
        raise AuthenticationError("registry %s sent a token realm with embedded credentials" % registry_host)
    # The registry already lives at its own address: a realm on the same host adds no reach.
    same_host = host.lower() == (urlsplit("//" + registry_host).hostname or "").lower()
    try:
        literal = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    elif same_host and not insecure:
        return
    else:
        resolver = resolver or socket.getaddrinfo
        try:
            infos = resolver(host, parts.port or (443 if scheme == "https" else 80), 0, socket.SOCK_STREAM)
        except (socket.gaierror, OSError) as exc:
            raise AuthenticationError("cannot resolve token realm host %s of registry %s: %s"
                                      % (host, registry_host, exc))
        addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    for addr in addresses:
        if _is_refused_address(addr, insecure) and not (same_host and not addr.is_link_local):
            why = "a link-local" if addr.is_link_local else "a non-public"
            hint = "" if addr.is_link_local else " (mark the registry insecure to allow private token servers)"
            raise AuthenticationError(
                "registry %s sent token realm %s which points at %s address %s; refusing it%s"
                % (registry_host, shown, why, addr, hint))


def _parse_issued_at(value):
    if not isinstance(value, str) or len(value) < 19:
        return None
    try:
        base = time.strptime(value[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    return calendar.timegm(base)


class Authenticator:
    """Per-client auth state; thread-safe (one lock around the caches).

    ``transport(method, url, headers=None, data=None, params=None)`` returns
    ``(status, headers, body_bytes)`` with the body capped by the caller's
    ``max_body``; it raises RegistryUnreachable on transport failure.
    """

    def __init__(self, registry, credentials, transport, insecure=False, clock=time.time,
                 resolver=None, user_agent="intermodal.containers"):
        self.registry = registry
        self.credentials = credentials
        self._transport = transport
        self._insecure = insecure
        self._clock = clock
        self._resolver = resolver
        self._client_id = user_agent
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()
        self._basic = False
        self._bearer = None            # (realm, service) learnt from the last Bearer challenge
        self._scope_map = {}           # requested scope -> token scope the registry asked for
        self._tokens = {}              # (realm, service, token scope) -> (token, expires_at)

    def __repr__(self):
        return "Authenticator(registry=%r, credentials=%r)" % (self.registry, self.credentials)

    # -- what to send -------------------------------------------------------
    def header_for(self, scope):
        """The Authorization value for a request needing ``scope``, or None.

        Once the registry is known to use Bearer, a token for a new scope is
        fetched up front instead of waiting for another 401.
        """
        if self._basic:
            return self._basic_value()
        with self._lock:
            bearer = self._bearer
            token_scope = self._scope_map.get(scope or "", scope or "")
            cached = self._tokens.get((bearer[0], bearer[1], token_scope)) if bearer else None
        if bearer is None:
            return None
        if cached and cached[1] > self._clock():
            return "Bearer " + cached[0]
        # One fetch at a time: parallel blob threads share the token they wait for.
        with self._fetch_lock:
            with self._lock:
                cached = self._tokens.get((bearer[0], bearer[1], token_scope))
            if cached and cached[1] > self._clock():
                return "Bearer " + cached[0]
            return "Bearer " + self._fetch(bearer[0], bearer[1], token_scope)

    def _basic_value(self):
        creds = self.credentials
        if creds.identity_token and not creds.password:
            return basic_header(creds.username or "<token>", creds.identity_token)
        return basic_header(creds.username, creds.password)

    # -- what to do on 401 --------------------------------------------------
    def handle_unauthorized(self, www_authenticate, scope, sent, tried):
        """Learn from a 401 so the next header_for(scope) can succeed, or raise.

        ``sent`` is the Authorization value that was refused (None if none);
        ``tried`` is a per-request set of token scopes already fetched fresh,
        which makes a repeated 401 for the same scope fatal.
        """
        challenge = pick_challenge(parse_www_authenticate(www_authenticate))
        if challenge is None:
            raise AuthenticationError(
                "authentication to %s failed: the registry answered 401 without a usable "
                "WWW-Authenticate challenge" % self.registry, status=401)
        if challenge.scheme == "basic":
            if self.credentials is None:
                raise AuthenticationError(
                    "authentication to %s failed: the registry requires a username and password "
                    "and none were given or found in an auth file" % self.registry, status=401)
            if sent and sent.startswith("Basic "):
                raise AuthenticationError(
                    "authentication to %s failed: the registry refused the credentials for %s"
                    % (self.registry, self._who()), status=401)
            self._basic = True
            return
        realm = challenge.get("realm")
        if not realm:
            raise AuthenticationError("authentication to %s failed: Bearer challenge without a realm"
                                      % self.registry, status=401)
        validate_realm(realm, self.registry, self._insecure, self._resolver)
        service = challenge.get("service", "")
        token_scope = challenge.get("scope") or (scope or "")
        if token_scope in tried:
            denied = challenge.get("error") or "the token was refused"
            raise AuthenticationError(
                "authentication to %s failed: access to %s denied (%s)%s"
                % (self.registry, token_scope or "the registry", denied, self._hint()), status=401)
        tried.add(token_scope)
        with self._lock:
            self._bearer = (realm, service)
            self._scope_map[scope or ""] = token_scope
            self._tokens.pop((realm, service, token_scope), None)
        self._fetch(realm, service, token_scope)

    def _who(self):
        return "user %r" % self.credentials.username if self.credentials.username else "the identity token"

    def _hint(self):
        if self.credentials is None:
            return "; no credentials were given or found, and the repository may not exist " \
                   "or may require a login"
        return "; credentials for %s were used" % self._who()

    # -- token fetch --------------------------------------------------------
    def _fetch(self, realm, service, token_scope):
        creds = self.credentials
        params = [("service", service)] if service else []
        params += [("scope", s) for s in token_scope.split(" ") if s]
        status, headers, body = None, None, b""
        if creds is not None and creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "service": service, "client_id": self._client_id}
            if token_scope:
                form["scope"] = token_scope
            status, headers, body = self._transport("POST", realm, data=form)
            # containerd falls back to the GET flow when the server has no OAuth2 POST.
            if status in (400, 401, 404, 405):
                status = None
        if status is None:
            headers = {}
            if creds is not None and creds.password:
                headers["Authorization"] = basic_header(creds.username, creds.password)
            elif creds is not None and creds.identity_token:
                headers["Authorization"] = basic_header(creds.username or "<token>", creds.identity_token)
            status, headers, body = self._transport("GET", realm, headers=headers, params=params)
        host = urlsplit(realm).netloc
        if status in (401, 403):
            raise AuthenticationError(
                "authentication to %s failed: token server %s refused %s (HTTP %d)"
                % (self.registry, host, self._who() if creds else "an anonymous token request", status),
                status=status)
        if status != 200:
            raise AuthenticationError("authentication to %s failed: token server %s answered HTTP %s"
                                      % (self.registry, host, status), status=status)
        return self._store(realm, service, token_scope, body, host)

    def _store(self, realm, service, token_scope, body, host):
        try:
            reply = json.loads(body.decode("utf-8"))
            token = reply.get("token") or reply.get("access_token")
        except (ValueError, UnicodeDecodeError, AttributeError):
            reply, token = {}, None
        if not isinstance(token, str) or not token:
            raise AuthenticationError("authentication to %s failed: token server %s sent no token"
                                      % (self.registry, host))
        try:
            lifetime = int(reply.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (TypeError, ValueError):
            lifetime = DEFAULT_TOKEN_LIFETIME
        lifetime = max(lifetime, 1)
        now = self._clock()
        issued = _parse_issued_at(reply.get("issued_at"))
        # Honour issued_at, but a skewed server clock must not push expiry past now+lifetime.
        base = min(now, issued) if issued is not None else now
        expires = base + lifetime - min(_EXPIRY_MARGIN, lifetime / 10.0)
        if expires <= now:
            expires = now + lifetime - min(_EXPIRY_MARGIN, lifetime / 10.0)
        with self._lock:
            self._tokens[(realm, service, token_scope)] = (token, expires)
        return token
