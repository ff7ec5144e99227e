"""A small Docker-registry token server for tests (real HTTP on loopback).

Implements the distribution token auth spec closely enough for CNCF
distribution 2.8 to accept the tokens: RS256 JWTs whose header carries the
signing certificate in ``x5c``.  Distribution verifies that chain against its
``rootcertbundle``; a self-signed cert that is itself in the bundle verifies
(Go's x509 accepts a leaf that is one of the roots).

Endpoints:
  GET  /token?service=&scope=...  (Basic auth optional)
  POST /token  grant_type=password | refresh_token (form encoded)
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def generate_key_and_cert(key_path, cert_path, common_name="intermodal-test-issuer"):
    """Write an RSA 2048 key and a self-signed CA cert (PEM) for signing tokens."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
    os.chmod(key_path, 0o600)
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def parse_scopes(scopes):
    """['repository:foo/bar:pull,push', ...] -> [{type, name, actions}].

    The name may contain ':' only in the registry-with-port form, so split the
    type off the left and the actions off the right.
    """
    out = []
    for scope in scopes:
        for item in scope.split(" "):
            if not item:
                continue
            typ, _sep, rest = item.partition(":")
            name, _sep, actions = rest.rpartition(":")
            if not typ or not name:
                continue
            out.append({"type": typ, "name": name,
                        "actions": [a for a in actions.split(",") if a]})
    return out


class TokenIssuer:
    """Issues registry bearer tokens; see module docstring."""

    def __init__(self, users, key_path=None, cert_path=None, workdir=None,
                 service="intermodal-test-registry", issuer="intermodal-test-issuer",
                 expires_in=300, anonymous_pull=True, refresh_tokens=None, port=None):
        self.users = dict(users)
        self.service = service
        self.issuer = issuer
        self.expires_in = int(expires_in)
        self.anonymous_pull = anonymous_pull
        # refresh (identity) token -> username it stands for
        self.refresh_tokens = dict(refresh_tokens or {})
        if key_path is None or cert_path is None:
            if workdir is None:
                raise ValueError("TokenIssuer needs key_path+cert_path or a workdir")
            os.makedirs(workdir, exist_ok=True)
            key_path = os.path.join(workdir, "issuer-key.pem")
            cert_path = os.path.join(workdir, "issuer-cert.pem")
        if not (os.path.exists(key_path) and os.path.exists(cert_path)):
            generate_key_and_cert(key_path, cert_path, common_name=issuer)
        self.key_path = key_path
        self.cert_path = cert_path
        with open(key_path, "rb") as f:
            self._key = serialization.load_pem_private_key(f.read(), password=None)
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        self._x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")]
        self.requests = []
        self._lock = threading.Lock()
        self._port = port or 0
        self._server = None
        self._thread = None

    # ---- tokens -------------------------------------------------------
    def make_token(self, subject, access, audience=None):
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": self._x5c}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience or self.service,
            "exp": now + self.expires_in,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode())
                         + "." + _b64url(json.dumps(claims, separators=(",", ":")).encode()))
        sig = self._key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(sig)

    def grant(self, user, requested):
        """Known users get what they ask of pull/push/delete; anonymous gets pull."""
        allowed = {"pull", "push", "delete", "*"} if user else ({"pull"} if self.anonymous_pull else set())
        granted = []
        for res in requested:
            actions = [a for a in res["actions"] if a in allowed]
            granted.append({"type": res["type"], "name": res["name"], "actions": actions})
        return granted

    def issue(self, user, scopes, service):
        access = self.grant(user, parse_scopes(scopes))
        token = self.make_token(user or "", access, audience=service or self.service)
        issued = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"token": token, "access_token": token,
                "expires_in": self.expires_in, "issued_at": issued}

    # ---- server -------------------------------------------------------
    @property
    def port(self):
        return self._server.server_address[1] if self._server else self._port

    @property
    def realm(self):
        return "http://127.0.0.1:%d/token" % self.port

    def start(self):
        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="token-issuer", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _record(self, **entry):
        with self._lock:
            self.requests.append(entry)


def _make_handler(issuer):
    class Handler(BaseHTTPRequestHandler):
        server_version = "intermodal-token-issuer/1"

        def log_message(self, fmt, *args):  # keep pytest output clean
            pass

        def _json(self, status, body, headers=None):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _basic(self):
            """(had_basic, user or None, ok) from the Authorization header."""
            header = self.headers.get("Authorization", "")
            if not header.lower().startswith("basic "):
                return False, None, True
            try:
                raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return True, None, False
            user, sep, password = raw.partition(":")
            ok = bool(sep) and user in issuer.users and issuer.users[user] == password
            return True, user, ok

        def _unauthorized(self, path, had_basic, user, reason):
            issuer._record(method=self.command, path=path, had_basic_auth=had_basic,
                           user=user, status=401, reason=reason)
            self._json(401, {"errors": [{"code": "UNAUTHORIZED", "message": reason}]},
                       {"WWW-Authenticate": 'Basic realm="intermodal-token"'})

        def do_GET(self):
            parts = urlsplit(self.path)
            if parts.path != "/token":
                self._json(404, {"errors": [{"code": "NOT_FOUND"}]})
                return
            query = parse_qs(parts.query)
            had_basic, user, ok = self._basic()
            if not ok:
                self._unauthorized(self.path, had_basic, user, "invalid credentials")
                return
            if not had_basic and not issuer.anonymous_pull:
                self._unauthorized(self.path, had_basic, None, "authentication required")
                return
            body = issuer.issue(user, query.get("scope", []), (query.get("service") or [None])[0])
            issuer._record(method="GET", path=self.path, had_basic_auth=had_basic,
                           user=user, status=200, scopes=query.get("scope", []))
            self._json(200, body)

        def do_POST(self):
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode("utf-8")) if length else {}

            def get(key):
                return (form.get(key) or [None])[0]

            if parts.path != "/token":
                self._json(404, {"errors": [{"code": "NOT_FOUND"}]})
                return
            grant_type = get("grant_type")
            had_basic = bool(self.headers.get("Authorization"))
            if grant_type == "refresh_token":
                user = issuer.refresh_tokens.get(get("refresh_token") or "")
                if user is None:
                    self._unauthorized(self.path, had_basic, None, "invalid refresh token")
                    return
            elif grant_type == "password":
                user = get("username")
                if issuer.users.get(user) != get("password") or user is None:
                    self._unauthorized(self.path, had_basic, user, "invalid credentials")
                    return
            else:
                self._json(400, {"error": "unsupported_grant_type"})
                return
            scopes = form.get("scope", [])
            body = issuer.issue(user, scopes, get("service"))
            if grant_type == "refresh_token":
                body["refresh_token"] = get("refresh_token")
            issuer._record(method="POST", path=self.path, had_basic_auth=had_basic,
                           user=user, status=200, scopes=scopes, grant_type=grant_type)
            self._json(200, body)

    return Handler
