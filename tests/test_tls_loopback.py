"""
TLS termination on loopback with real clients: curl, C{openssl s_client}
and Python's ssl module, against a L{BalancerService} running on the
test's reactor in front of a small web server that reports what it
received.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import ssl
import tempfile
from http.client import HTTPSConnection

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from certs import CertificateAuthority
from lbproxy.config import loadBytes
from lbproxy.core.proxyprotocol import buildV1, buildV2
from lbproxy.service import BalancerService
from support import freePort, requireExecutable

CONFIG = """\
[listeners.web]
bind = "tcp:{web}:interface=127.0.0.1"
pool = "app"
mode = "http"

[listeners.web.tls]
certificates = [
    {{ cert = "{default}", key = "{defaultKey}" }},
    {{ cert = "{www}", key = "{wwwKey}" }},
    {{ cert = "{wild}", key = "{wildKey}" }},
]

[listeners.mtls]
bind = "tcp:{mtls}:interface=127.0.0.1"
pool = "app"
mode = "http"

[listeners.mtls.tls]
certificates = [{{ cert = "{www}", key = "{wwwKey}" }}]
client_verify = "required"
client_ca = "{clientCA}"
client_subject_header = "X-SSL-Client"

[listeners.optional]
bind = "tcp:{optional}:interface=127.0.0.1"
pool = "app"
mode = "http"

[listeners.optional.timeouts]
request = "1s"

[listeners.optional.tls]
certificates = [{{ cert = "{www}", key = "{wwwKey}" }}]
client_verify = "optional"
client_ca = "{clientCA}"

[listeners.plain]
bind = "tcp:{plain}:interface=127.0.0.1"
mode = "http"
redirect_https = {web}

[listeners.raw]
bind = "tcp:{raw}:interface=127.0.0.1"
pool = "echo"

[listeners.proxied]
bind = "tcp:{proxied}:interface=127.0.0.1"
pool = "app"
mode = "http"
accept_proxy = ["127.0.0.1"]

[listeners.proxied.tls]
certificates = [{{ cert = "{www}", key = "{wwwKey}" }}]

[listeners.raw.tls]
certificates = [{{ cert = "{www}", key = "{wwwKey}" }}]

[pools.app]
servers = [{{ name = "a", address = "127.0.0.1:{backend}", cookie = "a1" }}]

[pools.app.cookie]
name = "SRV"

[pools.echo]
servers = [{{ name = "e", address = "127.0.0.1:{echo}" }}]
"""


class Report(resource.Resource):
    """
    C{GET /bytes/N}: N bytes; C{POST}: the body's length and digest; any
    other request: the headers received, as JSON.
    """

    isLeaf = True

    def render_GET(self, request):
        if request.path.startswith(b"/bytes/"):
            size = int(request.path[len(b"/bytes/"):])
            request.setHeader(b"content-type", b"application/octet-stream")
            return _pattern(size)
        headers = {k.decode("latin-1").lower(): v[-1].decode("latin-1") for k, v in request.requestHeaders.getAllRawHeaders()}
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"path": request.uri.decode("latin-1"), "headers": headers}).encode("utf-8")

    def render_POST(self, request):
        body = request.content.read()
        return json.dumps({"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}).encode("utf-8")


def _pattern(size: int) -> bytes:
    block = bytes(range(256)) * 256
    return (block * (size // len(block) + 1))[:size]


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class TLSLoopbackTests(TestCase):
    timeout = 60

    def setUp(self):
        directory = tempfile.mkdtemp(prefix="lbproxy-tls-")
        self.addCleanup(shutil.rmtree, directory, True)
        ca = self.ca = CertificateAuthority(directory)
        clients = CertificateAuthority(os.path.join(directory, "clients"), name="client CA")
        stranger = CertificateAuthority(os.path.join(directory, "stranger"), name="stranger CA")
        self.default = ca.issue("default.example.test")
        self.www = ca.issue("www.example.test")
        self.wild = ca.issue("*.api.example.test", commonName="api wildcard")
        self.alice = clients.issue(client=True, commonName="alice")
        self.mallory = stranger.issue(client=True, commonName="mallory")
        self.clientCA = clients.cert
        site = server.Site(Report())
        backend = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        echo = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(echo.stopListening)
        self.ports = {name: freePort() for name in ("web", "mtls", "optional", "plain", "raw", "proxied")}
        text = CONFIG.format(
            backend=backend.getHost().port,
            echo=echo.getHost().port,
            default=self.default.chain,
            defaultKey=self.default.key,
            www=self.www.chain,
            wwwKey=self.www.key,
            wild=self.wild.chain,
            wildKey=self.wild.key,
            clientCA=self.clientCA,
            **self.ports,
        )
        self.service = BalancerService(loadBytes(text.encode("utf-8"), "loopback.toml"), reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    # -- clients ------------------------------------------------------------

    def curl(self, name: str, path: str = "/", listener: str = "web", *options: str):
        curl = requireExecutable("curl")
        port = self.ports[listener]
        argv = [
            "-sS",
            "--max-time", "20",
            "--noproxy", "*",
            "--resolve", f"{name}:{port}:127.0.0.1",
            "--cacert", str(self.ca.cert),
            *options,
            f"https://{name}:{port}{path}",
        ]
        return getProcessOutputAndValue(curl, argv, env=os.environ)

    def sslContext(self, cert=None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        if cert is not None:
            context.load_cert_chain(str(cert.chain), str(cert.key))
        return context

    # -- SNI, versions, ALPN ------------------------------------------------

    @inlineCallbacks
    def test_sniSelectsTheCertificate(self):
        for name in ("www.example.test", "v1.api.example.test", "default.example.test"):
            out, err, code = yield self.curl(name, "/h")
            self.assertEqual(code, 0, (name, err))
            self.assertEqual(json.loads(out)["path"], "/h")

    @inlineCallbacks
    def test_unknownNameGetsTheDefault(self):
        openssl = requireExecutable("openssl")
        for name in ("unknown.example.test", "a.b.api.example.test"):
            out, err, code = yield getProcessOutputAndValue(
                openssl,
                ["s_client", "-connect", f"127.0.0.1:{self.ports['web']}", "-servername", name, "-brief"],
                env=os.environ,
                stdinBytes=b"",
            )
            self.assertIn(b"Peer certificate: O = lbproxy tests, CN = default.example.test", out + err)

    @inlineCallbacks
    def test_wildcardWithOpenSSL(self):
        openssl = requireExecutable("openssl")
        out, err, code = yield getProcessOutputAndValue(
            openssl,
            ["s_client", "-connect", f"127.0.0.1:{self.ports['web']}", "-servername", "x.api.example.test", "-brief"],
            env=os.environ,
            stdinBytes=b"",
        )
        self.assertIn(b"Peer certificate: O = lbproxy tests, CN = api wildcard", out + err)

    @inlineCallbacks
    def test_tls11RefusedCurl(self):
        out, err, code = yield self.curl("www.example.test", "/", "web", "--tlsv1.1", "--tls-max", "1.1")
        self.assertNotEqual(code, 0)
        self.assertEqual(out, b"")

    @inlineCallbacks
    def test_tls11RefusedOpenSSL(self):
        openssl = requireExecutable("openssl")
        out, err, code = yield getProcessOutputAndValue(
            openssl,
            ["s_client", "-connect", f"127.0.0.1:{self.ports['web']}", "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
            env=os.environ,
            stdinBytes=b"",
        )
        self.assertNotEqual(code, 0)
        self.assertNotIn(b"BEGIN CERTIFICATE", out)

    @inlineCallbacks
    def test_tls12And13(self):
        for version in ("1.2", "1.3"):
            out, err, code = yield self.curl(
                "www.example.test", "/", "web", f"--tlsv{version}", "--tls-max", version, "-w", "%{http_code}", "-o", "/dev/null"
            )
            self.assertEqual((code, out), (0, b"200"), err)

    @inlineCallbacks
    def test_alpn(self):
        openssl = requireExecutable("openssl")
        for offered, expected in ((b"h2,http/1.1", b"ALPN protocol: http/1.1"), (b"h2", b"No ALPN negotiated")):
            out, err, code = yield getProcessOutputAndValue(
                openssl,
                ["s_client", "-connect", f"127.0.0.1:{self.ports['web']}", "-alpn", offered.decode(), "-servername", "www.example.test"],
                env=os.environ,
                stdinBytes=b"",
            )
            self.assertIn(expected, out)

    @inlineCallbacks
    def test_clientOfferingOnlyH2GetsNoALPN(self):
        port = self.ports["web"]
        context = self.sslContext()
        context.set_alpn_protocols(["h2"])

        def run():
            raw = socket.create_connection(("127.0.0.1", port), timeout=20)
            with context.wrap_socket(raw, server_hostname="www.example.test") as s:
                selected = s.selected_alpn_protocol()
                s.sendall(b"GET /h1 HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n")
                status, body = _readResponse(s.makefile("rb"))
                return selected, status, json.loads(body)["path"]

        self.assertEqual((yield deferToThread(run)), (None, 200, "/h1"))

    @inlineCallbacks
    def test_curlHTTP2FallsBackToHTTP11(self):
        out, err, code = yield self.curl("www.example.test", "/only-h2", "web", "--http2", "-w", "\n%{http_version}")
        self.assertEqual(code, 0, err)
        body, version = out.rsplit(b"\n", 1)
        self.assertEqual(version, b"1.1")
        self.assertEqual(json.loads(body)["path"], "/only-h2")

    # -- what the backend sees ----------------------------------------------

    @inlineCallbacks
    def test_forwardedProtoAndSpoofedSubject(self):
        out, err, code = yield self.curl(
            "www.example.test", "/", "web", "-H", "X-Client-Subject: CN=admin", "-H", "X-Forwarded-Proto: http"
        )
        self.assertEqual(code, 0, err)
        headers = json.loads(out)["headers"]
        self.assertEqual(headers["x-forwarded-proto"], "https")
        self.assertNotIn("x-client-subject", headers)

    @inlineCallbacks
    def test_secureCookie(self):
        out, err, code = yield self.curl("www.example.test", "/", "web", "-D", "-", "-o", "/dev/null")
        self.assertEqual(code, 0, err)
        cookies = [line for line in out.split(b"\r\n") if line.lower().startswith(b"set-cookie:")]
        self.assertEqual(len(cookies), 1, out)
        self.assertIn(b"; Secure", cookies[0])

    # -- client certificates ------------------------------------------------

    @inlineCallbacks
    def test_requiredWithoutCertificate(self):
        out, err, code = yield self.curl("www.example.test", "/", "mtls")
        self.assertNotEqual(code, 0)
        self.assertEqual(out, b"")

    @inlineCallbacks
    def test_requiredAccepted(self):
        out, err, code = yield self.curl(
            "www.example.test", "/", "mtls",
            "--cert", str(self.alice.chain), "--key", str(self.alice.key),
            "-H", "X-SSL-Client: CN=admin",
        )
        self.assertEqual(code, 0, err)
        headers = json.loads(out)["headers"]
        self.assertEqual(headers["x-ssl-client"], "CN=alice,O=lbproxy tests")

    @inlineCallbacks
    def test_anotherCARejected(self):
        for listener in ("mtls", "optional"):
            out, err, code = yield self.curl(
                "www.example.test", "/", listener, "--cert", str(self.mallory.chain), "--key", str(self.mallory.key)
            )
            self.assertNotEqual(code, 0, listener)
            self.assertEqual(out, b"")

    @inlineCallbacks
    def test_optional(self):
        out, err, code = yield self.curl("www.example.test", "/", "optional", "-H", "X-Client-Subject: CN=admin")
        self.assertEqual(code, 0, err)
        self.assertNotIn("x-client-subject", json.loads(out)["headers"])
        out, err, code = yield self.curl(
            "www.example.test", "/", "optional", "--cert", str(self.alice.chain), "--key", str(self.alice.key)
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["headers"]["x-client-subject"], "CN=alice,O=lbproxy tests")

    @inlineCallbacks
    def test_pythonClientCertificate(self):
        port = self.ports["mtls"]

        def fetch():
            connection = HTTPSConnection("www.example.test", port, context=self.sslContext(self.alice), timeout=20)
            connection.sock = None
            connection._create_connection = lambda address, *a, **k: socket.create_connection(("127.0.0.1", port), *a, **k)
            connection.request("GET", "/py")
            response = connection.getresponse()
            body = response.read()
            connection.close()
            return response.status, body

        status, body = yield deferToThread(fetch)
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["headers"]["x-ssl-client"], "CN=alice,O=lbproxy tests")

    # -- a PROXY header before the handshake --------------------------------

    def proxiedFetch(self, header: bytes) -> dict:
        """
        Send C{header} on a new connection to the C{proxied} listener, then
        a request over TLS; the backend's report of what it received.
        """
        port = self.ports["proxied"]
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            raw.sendall(header)
            with self.sslContext().wrap_socket(raw, server_hostname="www.example.test") as tls:
                tls.sendall(b"GET /proxied HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        return json.loads(body)

    @inlineCallbacks
    def test_proxyHeaderBeforeHandshake(self):
        """
        accept_proxy on a TLS listener: the trusted proxy's header (v1 or
        v2) comes before the ClientHello, and its source is the client the
        backend learns of.
        """
        v1 = buildV1(IPv4Address("TCP", "192.0.2.50", 5555), IPv4Address("TCP", "192.0.2.1", 443))
        report = yield deferToThread(self.proxiedFetch, v1)
        self.assertEqual(report["headers"]["x-forwarded-for"], "192.0.2.50")
        self.assertEqual(report["headers"]["x-forwarded-proto"], "https")
        v2 = buildV2(IPv6Address("TCP", "2001:db8::5", 5555), IPv6Address("TCP", "2001:db8::1", 443))
        report = yield deferToThread(self.proxiedFetch, v2)
        self.assertEqual(report["headers"]["x-forwarded-for"], "2001:db8::5")

    @inlineCallbacks
    def test_curlProxyHeader(self):
        out, err, code = yield self.curl("www.example.test", "/c", "proxied", "--haproxy-protocol")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["headers"]["x-forwarded-for"], "127.0.0.1")

    @inlineCallbacks
    def test_trustedPeerWithoutHeaderRefused(self):
        """
        A trusted peer must send the header: a ClientHello in its place
        ends the connection before any TLS.
        """
        out, err, code = yield self.curl("www.example.test", "/c", "proxied")
        self.assertNotEqual(code, 0)

    @inlineCallbacks
    def test_silentClientDropped(self):
        """
        A client that connects and never starts the handshake is closed
        after the listener's request timeout.
        """
        port = self.ports["optional"]

        def run():
            with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
                data = s.recv(65536)
                return data

        try:
            data = yield deferToThread(run)
        except ConnectionResetError:
            data = b""
        self.assertEqual(data, b"")

    # -- redirect -----------------------------------------------------------

    @inlineCallbacks
    def test_redirect(self):
        curl = requireExecutable("curl")
        port = self.ports["plain"]
        for method, status in (("GET", b"301"), ("HEAD", b"301"), ("POST", b"308")):
            options = ["-I"] if method == "HEAD" else ["-X", method, "-d", "x=1"] if method == "POST" else []
            out, err, code = yield getProcessOutputAndValue(
                curl,
                ["-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", *options,
                 "-H", "Host: www.example.test", f"http://127.0.0.1:{port}/a/b?c=d"],
                env=os.environ,
            )
            self.assertEqual(code, 0, err)
            self.assertEqual(out, status + b" https://www.example.test:%d/a/b?c=d" % (self.ports["web"],))

    @inlineCallbacks
    def test_redirectWithoutHost(self):
        port = self.ports["plain"]

        def ask():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                return data

        data = yield deferToThread(ask)
        self.assertTrue(data.startswith(b"HTTP/1.1 400 "), data)

    # -- data path over TLS ---------------------------------------------------

    @inlineCallbacks
    def test_keepAlivePipeliningAndLargeBodies(self):
        """
        One TLS connection: 20 pipelined requests, then a 6 MB upload and a
        6 MB download on the same connection (writes go through the TLS
        transport, not the write batch).
        """
        port = self.ports["web"]
        context = self.sslContext()
        size = 6 * 1024 * 1024

        def run():
            raw = socket.create_connection(("127.0.0.1", port), timeout=30)
            with context.wrap_socket(raw, server_hostname="www.example.test") as s:
                s.sendall(b"".join(b"GET /p%d HTTP/1.1\r\nHost: www.example.test\r\n\r\n" % n for n in range(20)))
                reader = s.makefile("rb")
                paths = [json.loads(_readResponse(reader)[1])["path"] for _ in range(20)]
                body = _pattern(size)
                s.sendall(b"POST /up HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: %d\r\n\r\n" % size)
                s.sendall(body)
                upload = json.loads(_readResponse(reader)[1])
                s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n" % size)
                status, download = _readResponse(reader)
                return paths, upload, status, hashlib.sha256(download).hexdigest(), hashlib.sha256(body).hexdigest()

        paths, upload, status, downloaded, sent = yield deferToThread(run)
        self.assertEqual(paths, [f"/p{n}" for n in range(20)])
        self.assertEqual(upload, {"bytes": size, "sha256": sent})
        self.assertEqual(status, 200)
        self.assertEqual(downloaded, hashlib.sha256(_pattern(size)).hexdigest())

    @inlineCallbacks
    def test_tcpListenerRelaysDecryptedBytes(self):
        port = self.ports["raw"]
        context = self.sslContext()

        def run():
            raw = socket.create_connection(("127.0.0.1", port), timeout=20)
            with context.wrap_socket(raw, server_hostname="www.example.test") as s:
                payload = os.urandom(300000)
                s.sendall(payload)
                received = b""
                while len(received) < len(payload):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                return received == payload

        self.assertTrue((yield deferToThread(run)))


def _readResponse(reader) -> tuple[int, bytes]:
    """
    Read one response with a Content-Length or chunked body from
    C{reader}; return its status and body.
    """
    status = int(reader.readline().split()[1])
    length = None
    chunked = False
    while True:
        line = reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        body = b""
        while True:
            size = int(reader.readline().split(b";")[0], 16)
            if size == 0:
                while reader.readline() not in (b"\r\n", b""):
                    pass
                return status, body
            body += reader.read(size)
            reader.readline()
    return status, reader.read(length or 0)
