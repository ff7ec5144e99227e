# -*- coding: utf-8 -*-
# Copyright: intermodal.containers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The HTTP layer of the registry client: retries, redirects, auth, errors.

This module util is PRIVATE to the collection. It can have breaking changes at
any time.

Redirects are followed here rather than by requests so that Authorization is
only ever attached to the registry's own origin (CPython and requests copy
headers across hosts in ways that leak tokens to CDNs and break S3 presigned
URLs). 429/5xx and transport errors are retried a bounded number of times,
honouring Retry-After; an exchange whose body cannot be replayed is tried once.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import warnings
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin, urlsplit

from ansible_collections.intermodal.containers.plugins.module_utils._auth import Authenticator
from ansible_collections.intermodal.containers.plugins.module_utils._blobio import (
    check_redirect_target,
    transport_cause,
)
from ansible_collections.intermodal.containers.plugins.module_utils._credentials import (
    Credentials,
    find_credentials,
)
from ansible_collections.intermodal.containers.plugins.module_utils._errors import (
    AuthenticationError,
    MissingDependency,
    RegistryError,
    RegistryUnreachable,
)
from ansible_collections.intermodal.containers.plugins.module_utils._reference import (
    DEFAULT_REGISTRY,
    DOCKER_HUB_API_HOST,
)

MAX_TOKEN_BODY = 1024 * 1024
MAX_ERROR_BODY = 64 * 1024
MAX_REDIRECTS = 10
RETRY_STATUSES = (408, 429, 502, 503, 504)
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_MISSING_REQUESTS = ("the Python library 'requests' is required on the target: pip install requests "
                     "(or apt install python3-requests)")


def _import_requests():
    try:
        import requests
        from requests.adapters import HTTPAdapter
    except ImportError:
        raise MissingDependency(_MISSING_REQUESTS)
    return requests, HTTPAdapter


def _host_only(hostport):
    return (urlsplit("//" + hostport).hostname or "").lower()


def is_loopback_host(hostport):
    """moby treats localhost, 127.0.0.0/8 and ::1 as insecure registries."""
    host = _host_only(hostport)
    return host == "localhost" or host.startswith("127.") or host == "::1"


def origin(url):
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def redact_url(url):
    """scheme://host/path: queries carry upload state and presigned signatures."""
    parts = urlsplit(url)
    return "%s://%s%s" % (parts.scheme, parts.netloc.rpartition("@")[2], parts.path)


def _retry_after(value, now):
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


def registry_error_text(body):
    """`CODE: message` pairs from the registry's JSON error body, if any."""
    try:
        errors = json.loads(body.decode("utf-8")).get("errors") or []
        texts = ["%s: %s" % (e.get("code", "?"), e.get("message", "")) for e in errors[:5] if isinstance(e, dict)]
    except (ValueError, UnicodeDecodeError, AttributeError):
        return ""
    return "; ".join(texts)


class RegistryTransport:
    """One registry, one requests.Session; safe to share across a few threads.

    The HTTP layer under RegistryClient: retries, redirects, auth rounds,
    typed errors. RegistryClient adds the distribution API on top.
    """

    def __init__(self, registry, *, username=None, password=None, auth_file=None, insecure=None,
                 validate_certs=True, ca_path=None, timeout=30, retries=5, backoff_cap=60.0,
                 user_agent="intermodal.containers", pool_size=8, environ=None,
                 allow_foreign_urls=False):
        requests, adapter_cls = _import_requests()
        self._requests = requests
        self.registry = registry
        self.host = DOCKER_HUB_API_HOST if registry == DEFAULT_REGISTRY else registry
        self.insecure = is_loopback_host(self.host) if insecure is None else bool(insecure)
        self._verify = False if self.insecure else (ca_path or bool(validate_certs))
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff_cap = float(backoff_cap)
        # False, True (any https host) or a list of host names to fetch foreign layers from.
        if allow_foreign_urls in (False, None, True):
            self.allow_foreign_urls = bool(allow_foreign_urls)
        else:
            self.allow_foreign_urls = [h.lower() for h in allow_foreign_urls]
        self._user_agent = user_agent
        self._environ = environ
        self._auth_file = auth_file
        self._explicit = None
        if username is not None:
            self._explicit = Credentials(username, password or "", source="module parameters")
        self._sleep = time.sleep
        self._clock = time.time
        self._resolver = None
        self._lock = threading.Lock()
        self._scheme = None if self.insecure else "https"
        self._authenticators = {}
        self._credentials = {}
        session = requests.Session()
        # No ~/.netrc, no REQUESTS_CA_BUNDLE: credentials and trust are ours to decide.
        session.trust_env = False
        adapter = adapter_cls(pool_connections=2, pool_maxsize=max(1, pool_size), max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        self._session = session
        if self._verify is False:
            # The user chose no verification; a warning per request says nothing new.
            try:
                from urllib3.exceptions import InsecureRequestWarning
                warnings.filterwarnings("ignore", category=InsecureRequestWarning)
            except ImportError:
                pass

    def __repr__(self):
        return "RegistryClient(registry=%r, insecure=%r)" % (self.registry, self.insecure)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._session.close()

    # -- plumbing -----------------------------------------------------------
    def _backoff(self, attempt):
        return min(self.backoff_cap, 0.5 * (2 ** attempt))

    def _send(self, method, url, headers=None, data=None, params=None, stream=False):
        proxies = self._requests.utils.get_environ_proxies(url)
        return self._session.request(
            method, url, headers=headers, data=data, params=params, stream=stream,
            allow_redirects=False, verify=self._verify, timeout=(self.timeout, self.timeout),
            proxies=proxies)

    def _exchange(self, method, url, headers=None, body=None, params=None, stream=False,
                  retryable=True, retries=None, retry_statuses=True):
        """One HTTP exchange with bounded retries on 429/5xx and transport errors.

        ``body`` may be bytes, a dict (form) or a callable returning a fresh
        file object. Non-retryable exchanges (a streamed upload) are tried once.
        """
        requests = self._requests
        retries = self.retries if retries is None else retries
        headers = dict(headers or {})
        headers.setdefault("User-Agent", self._user_agent)
        # Digests are over the stored bytes; no transfer compression to undo (or to bomb us).
        headers.setdefault("Accept-Encoding", "identity")
        attempt = 0
        while True:
            data = body() if callable(body) else body
            try:
                resp = self._send(method, url, headers, data, params, stream)
            except requests.exceptions.RequestException as exc:
                tls = isinstance(exc, requests.exceptions.SSLError)
                if retryable and not tls and attempt < retries:
                    self._sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                tried = " after %d attempts" % (attempt + 1) if attempt else ""
                raise RegistryUnreachable(
                    "cannot reach registry %s: %s (%s %s)%s"
                    % (self.registry, transport_cause(exc), method, redact_url(url), tried),
                    url=redact_url(url)) from None   # requests' text names the full URL
            finally:
                if hasattr(data, "close"):
                    data.close()
            if resp.status_code in RETRY_STATUSES and retryable and retry_statuses:
                if attempt < retries:
                    wait = _retry_after(resp.headers.get("Retry-After"), self._clock())
                    wait = self._backoff(attempt) if wait is None else min(wait, self.backoff_cap)
                    resp.close()
                    self._sleep(wait)
                    attempt += 1
                    continue
                self._raise_status(resp, method, url, "gave up after %d attempts" % (attempt + 1))
            return resp

    def _base(self):
        """scheme://host, deciding https vs http once for insecure registries."""
        if self._scheme is None:
            with self._lock:
                if self._scheme is None:
                    self._scheme = self._probe_scheme()
        return "%s://%s" % (self._scheme, self.host)

    def _probe_scheme(self):
        # Insecure registries: https if a TLS handshake succeeds (verification
        # off), else plain http - moby's order. A bare handshake is not an HTTP
        # request, so a warm pull stays exactly one HEAD in the registry's log.
        parts = urlsplit("//" + self.host)
        try:
            sock = socket.create_connection((parts.hostname, parts.port or 443), timeout=self.timeout)
        except OSError:
            sock = None
        if sock is None:
            return self._probe_scheme_by_request()
        try:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            with context.wrap_socket(sock, server_hostname=parts.hostname):
                return "https"
        except (ssl.SSLError, OSError):
            return "http"
        finally:
            sock.close()

    def _probe_scheme_by_request(self):
        # No TLS port answered: let real requests decide, with their retries
        # and their error messages.
        try:
            self._exchange("GET", "https://%s/v2/" % self.host, retries=0, retry_statuses=False).close()
            return "https"
        except RegistryUnreachable:
            pass
        try:
            self._exchange("GET", "http://%s/v2/" % self.host, retry_statuses=False).close()
        except RegistryUnreachable as exc:
            raise RegistryUnreachable("%s (tried https, then plain http)" % exc.message, url=exc.url) from None
        return "http"

    def _credentials_for(self, repository):
        if self._explicit is not None:
            return self._explicit
        key = repository or ""
        if key not in self._credentials:
            found = find_credentials(self.registry, repository, auth_file=self._auth_file,
                                     environ=self._environ)
            with self._lock:
                self._credentials.setdefault(key, found)
        return self._credentials[key]

    def _now(self):
        # Looked up at each call, so a clock swapped in later (tests) reaches
        # authenticators made earlier.
        return self._clock()

    def _authenticator(self, repository):
        creds = self._credentials_for(repository)
        with self._lock:
            auth = self._authenticators.get(creds)
            if auth is None:
                auth = Authenticator(self.registry, creds, self._token_transport,
                                     insecure=self.insecure, clock=self._now,
                                     resolver=self._resolver, user_agent=self._user_agent)
                self._authenticators[creds] = auth
        return auth

    def _token_transport(self, method, url, headers=None, data=None, params=None):
        """What _auth uses to reach the token realm: no redirects, body capped at 1 MiB."""
        resp = self._exchange(method, url, headers=headers, body=data, params=params, stream=True)
        try:
            body = self._read_capped(resp, MAX_TOKEN_BODY)
        finally:
            resp.close()
        if body is None:
            raise AuthenticationError("authentication to %s failed: token response from %s is larger "
                                      "than 1 MiB" % (self.registry, urlsplit(url).netloc))
        return resp.status_code, resp.headers, body

    def _read_capped(self, resp, cap, what=None):
        """The body, or None if it is longer than ``cap`` (reading stops there)."""
        chunks, total = [], 0
        try:
            for chunk in resp.iter_content(64 * 1024):
                total += len(chunk)
                if total > cap:
                    return None
                chunks.append(chunk)
        except self._requests.exceptions.RequestException as exc:
            raise RegistryUnreachable("cannot reach registry %s: %s while reading %s"
                                      % (self.registry, transport_cause(exc),
                                         what or "the answer from " + redact_url(resp.url or "")),
                                      url=redact_url(resp.url or "")) from None
        return b"".join(chunks)

    def _request(self, method, url, scope=None, repository=None, headers=None, body=None,
                 params=None, stream=False, retryable=True, anonymous=False):
        """An exchange plus 401 handling and redirects (max 10).

        Authorization is only ever sent to the registry's own origin; a
        redirect elsewhere (a CDN, S3) is followed without it.
        """
        registry_origin = origin(self._base())
        auth = None if anonymous else self._authenticator(repository)
        tried, hops, rounds = set(), 0, 0
        while True:
            send = dict(headers or {})
            same_origin = origin(url) == registry_origin
            sent = auth.header_for(scope) if (auth is not None and same_origin) else None
            if sent:
                send["Authorization"] = sent
            resp = self._exchange(method, url, send, body, params, stream, retryable)
            if resp.status_code == 401 and auth is not None and same_origin and rounds < 4:
                rounds += 1
                challenge = resp.headers.get("WWW-Authenticate", "")
                resp.close()
                auth.handle_unauthorized(challenge, scope, sent, tried)
                continue
            if resp.status_code in REDIRECT_STATUSES and resp.headers.get("Location"):
                hops += 1
                target = urljoin(resp.url or url, resp.headers["Location"])
                resp.close()
                if hops > MAX_REDIRECTS:
                    raise RegistryError("registry %s redirected %s %s more than %d times"
                                        % (self.registry, method, redact_url(url), MAX_REDIRECTS), url=redact_url(url))
                check_redirect_target(self.registry, url, target, self.insecure)
                if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
                    method, body = "GET", None
                url, params = target, None
                continue
            return resp

    def _raise_status(self, resp, method, url, note=None, not_found=None, what=None):
        """Turn a non-success response into the right typed error."""
        status = resp.status_code
        body = b""
        if method != "HEAD":
            try:
                body = self._read_capped(resp, MAX_ERROR_BODY) or b""
            except RegistryUnreachable:
                body = b""      # the status alone still says what went wrong
        resp.close()
        detail = registry_error_text(body)
        what = what or "%s %s" % (method, redact_url(url))
        suffix = (": " + detail if detail else "") + (" (%s)" % note if note else "")
        codes = detail.upper()
        if not_found is not None and (status == 404 or "MANIFEST_UNKNOWN" in codes
                                      or "NAME_UNKNOWN" in codes or "BLOB_UNKNOWN" in codes):
            raise not_found[0](not_found[1] + suffix, status=status, url=redact_url(url))
        if status in (401, 403):
            raise AuthenticationError("authentication to %s failed: %s was denied (HTTP %d)%s"
                                      % (self.registry, what, status, suffix), status=status, url=redact_url(url))
        raise RegistryError("registry %s answered HTTP %d to %s%s" % (self.registry, status, what, suffix),
                            status=status, url=redact_url(url))
