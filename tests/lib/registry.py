"""Run Debian's ``docker-registry`` (CNCF distribution 2.8) on 127.0.0.1 for tests.

Three flavours: open, htpasswd (bcrypt via apache2-utils' ``htpasswd``) and
token auth backed by our own :class:`tests.lib.token_issuer.TokenIssuer`.
With ``tls=True`` it serves https with a cert signed by a test CA
(``Registry.ca_path``).  The access log is on, so tests can count what a
client really fetched (``requests_log``, ``blob_fetches``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import ssl
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid

from tests.lib.token_issuer import TokenIssuer

REGISTRY_BIN = os.environ.get("INTERMODAL_REGISTRY_BIN", "/usr/bin/docker-registry")
SERVICE = "intermodal-test-registry"
ISSUER = "intermodal-test-issuer"

# Apache combined log line as written by gorilla/handlers, e.g.
# 127.0.0.1 - - [29/Nov/2026:06:50:00 +0000] "GET /v2/ HTTP/1.1" 401 87 "" "python-requests/2.x"
_ACCESS_RE = re.compile(
    r'^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] '
    r'"(?P<method>[A-Z]+) (?P<path>\S+) (?P<proto>[^"]+)" (?P<status>\d{3}) (?P<size>\S+)'
)
_SYNC_PARAM = "intermodal-log-sync"
_BLOB_RE = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>[a-z0-9]+:[a-fA-F0-9]+)$")


def _die_with_parent():
    """Child-side: get SIGTERM if the test process dies without cleaning up
    (killed pytest), so no registry outlives it."""
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def free_port():
    """A currently free TCP port on 127.0.0.1 (small race accepted: tests only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_ca_and_server_cert(directory, ip="127.0.0.1"):
    """A test CA (directory/ca.pem) and a server cert+key for `ip` signed by it.

    Returns (cert_path, key_path).  Clients trust the registry by pointing at
    ca.pem, exactly as with a private registry's CA.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject, issuer, pub, signer, ca, extra=()):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
             .public_key(pub).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        for ext in extra:
            b = b.add_extension(ext, critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermodal test CA")])
    ca = build(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]), ca_name, key.public_key(),
        ca_key, False,
        [x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
         x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])],
    )
    paths = {name: os.path.join(directory, name) for name in ("ca.pem", "server.pem", "server-key.pem")}
    with open(paths["ca.pem"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["server.pem"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["server-key.pem"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(paths["server-key.pem"], 0o600)
    return paths["server.pem"], paths["server-key.pem"]


class RegistryStartError(RuntimeError):
    pass


class Registry:
    """One docker-registry process; use as a context manager or start()/stop()."""

    def __init__(self, workdir, auth=None, username="tester", password="s3cret-pass",
                 port=None, anonymous_pull=True, refresh_token="intermodal-refresh-token",
                 tls=False):
        if auth not in (None, "htpasswd", "token"):
            raise ValueError("auth must be None, 'htpasswd' or 'token', not %r" % (auth,))
        self.workdir = os.path.abspath(workdir)
        self.auth = auth
        self.username = username
        self.password = password
        self.port = port
        self.anonymous_pull = anonymous_pull
        self.refresh_token = refresh_token
        # tls: serve https with a cert for 127.0.0.1 signed by a test CA
        # whose PEM is at ca_path (for clients' CA-bundle / insecure tests).
        self.tls = tls
        self.ca_path = os.path.join(self.workdir, "tls", "ca.pem") if tls else None
        self.issuer = None
        self.log_path = os.path.join(self.workdir, "registry.log")
        self.config_path = os.path.join(self.workdir, "config.yml")
        self.storage_dir = os.path.join(self.workdir, "storage")
        self._proc = None
        self._log_file = None

    # ---- addresses ----------------------------------------------------
    @property
    def host(self):
        return "127.0.0.1:%d" % self.port

    @property
    def url(self):
        return ("https://" if self.tls else "http://") + self.host

    # ---- lifecycle ----------------------------------------------------
    def _auth_config(self):
        if self.auth == "htpasswd":
            htpasswd_path = os.path.join(self.workdir, "htpasswd")
            out = subprocess.run(
                ["htpasswd", "-Bbn", self.username, self.password],
                check=True, capture_output=True, text=True,
            ).stdout
            with open(htpasswd_path, "w") as f:
                f.write(out.strip() + "\n")
            return ("auth:\n  htpasswd:\n    realm: basic-realm\n    path: %s\n" % htpasswd_path)
        if self.auth == "token":
            self.issuer = TokenIssuer(
                {self.username: self.password},
                workdir=os.path.join(self.workdir, "issuer"),
                service=SERVICE, issuer=ISSUER,
                anonymous_pull=self.anonymous_pull,
                refresh_tokens={self.refresh_token: self.username},
            ).start()
            return (
                "auth:\n  token:\n"
                "    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n"
                % (self.issuer.realm, SERVICE, ISSUER, self.issuer.cert_path)
            )
        return ""

    def _tls_config(self):
        if not self.tls:
            return ""
        cert, key = write_ca_and_server_cert(os.path.dirname(self.ca_path), "127.0.0.1")
        return "  tls:\n    certificate: %s\n    key: %s\n" % (cert, key)

    def _opener(self):
        """urllib opener that ignores proxy settings and trusts our test CA."""
        handlers = [urllib.request.ProxyHandler({})]
        if self.tls:
            handlers.append(urllib.request.HTTPSHandler(
                context=ssl.create_default_context(cafile=self.ca_path)))
        return urllib.request.build_opener(*handlers)

    def _write_config(self):
        config = (
            "version: 0.1\n"
            "log:\n  level: info\n  accesslog:\n    disabled: false\n"
            "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n"
            "http:\n  addr: %s\n"
            % (self.storage_dir, self.host)
        ) + self._tls_config() + self._auth_config()
        with open(self.config_path, "w") as f:
            f.write(config)

    def start(self):
        if self._proc is not None:
            return self
        os.makedirs(self.storage_dir, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        try:
            self._write_config()
            # Fresh log (readiness looks for "listening on" in it), opened
            # O_APPEND so clear_log() can truncate it under the running process.
            open(self.log_path, "wb").close()
            self._log_file = open(self.log_path, "ab")
            self._proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", self.config_path],
                stdout=self._log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent,
                # no proxy variables may leak into the registry's own requests
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
            self._wait_ready(15.0)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        last = None
        # bypass any proxy environment: loopback only
        opener = self._opener()
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                last = "exited with status %s" % self._proc.returncode
                break
            # Only trust /v2/ once *this* process says it listens: with a port
            # clash another server could be answering.
            if not self._logged_listening():
                last = "no 'listening on' in the log yet"
                time.sleep(0.1)
                continue
            try:
                with opener.open(self.url + "/v2/", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    return
                last = "HTTP %s" % e.code
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        raise RegistryStartError(
            "docker-registry on %s did not answer GET /v2/ (%s); log tail:\n%s"
            % (self.host, last, self.log_tail())
        )

    def _logged_listening(self):
        try:
            with open(self.log_path, "rb") as f:
                return b"listening on " + self.host.encode() in f.read()
        except OSError:
            return False

    def stop(self):
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.issuer is not None:
            self.issuer.stop()

    def cleanup(self):
        """Stop and remove the workdir (storage, config, logs)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def running(self):
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- logs ---------------------------------------------------------
    def log_tail(self, lines=40):
        try:
            with open(self.log_path, "rb") as f:
                data = f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(data.splitlines()[-lines:])

    def _read_log_lines(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []

    def sync_log(self, timeout=10.0):
        """Wait until requests already answered are in the access log.

        gorilla/handlers writes the access line after the handler returns,
        which can be after the client has read the whole body.  A marker
        request sent now is logged after those lines are written (their
        responses were complete before it was sent), so seeing the marker
        means the earlier lines are there.
        """
        if not self.running:
            return
        marker = "%s=%s" % (_SYNC_PARAM, uuid.uuid4().hex)
        opener = self._opener()
        try:
            opener.open("%s/v2/?%s" % (self.url, marker), timeout=5).close()
        except urllib.error.HTTPError:
            pass  # 401 on auth registries: still logged
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(marker in line for line in self._read_log_lines()):
                return
            time.sleep(0.02)
        raise RuntimeError("registry %s never logged the sync marker" % self.host)

    def requests_log(self, sync=True):
        """Parsed access-log entries: dicts with method, path, status (+ user, size).

        With sync (default) it first waits for in-flight log lines
        (see sync_log); the marker requests themselves are left out.
        """
        if sync:
            self.sync_log()
        entries = []
        for line in self._read_log_lines():
            m = _ACCESS_RE.match(line)
            if not m or _SYNC_PARAM in m.group("path"):
                continue
            entries.append({
                "method": m.group("method"),
                "path": m.group("path"),
                "status": int(m.group("status")),
                "user": m.group("user"),
                "size": m.group("size"),
            })
        return entries

    def blob_fetches(self, digest=None):
        """Successful blob GETs (200/206/307) per digest, or the count for one digest."""
        counts = {}
        for entry in self.requests_log():
            if entry["method"] != "GET" or entry["status"] not in (200, 206, 307):
                continue
            m = _BLOB_RE.match(entry["path"].split("?", 1)[0])
            if m:
                counts[m.group("digest")] = counts.get(m.group("digest"), 0) + 1
        if digest is not None:
            return counts.get(digest, 0)
        return counts

    def clear_log(self):
        """Truncate the log so later counts only see later requests."""
        self.sync_log()  # so no earlier line lands after the truncation
        with open(self.log_path, "r+b") as f:
            f.truncate(0)
