"""
SNI passthrough end to end on loopback, with the real reactor: real TLS
clients (curl, openssl s_client, Python's ssl) reach TLS servers through a
TCP listener with SNI routes, by the name they send; the bytes arrive at
the server exactly as the client sent them, both ways.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import tempfile

import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from lbproxy.config import loadBytes
from lbproxy.core.model import Balancer
from lbproxy.service import frontFactory

from certs import CertificateAuthority
from support import requireExecutable
from test_tls_backend import RecordingServerCreator

pytestmark = pytest.mark.integration


class Named(resource.Resource):
    isLeaf = True

    def __init__(self, name: bytes) -> None:
        super().__init__()
        self.name = name

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        return self.name + b" " + request.getRequestHostname() + b"\n"


class Recording(ProtocolWrapper):
    """
    Records the raw bytes of a connection, in and out, below TLS.
    """

    def makeConnection(self, transport):
        self.incoming = []
        self.outgoing = []
        self.factory.connections.append(self)
        super().makeConnection(transport)

    def dataReceived(self, data):
        self.incoming.append(data)
        super().dataReceived(data)

    def write(self, data):
        self.outgoing.append(data)
        super().write(data)

    def writeSequence(self, data):
        for chunk in data:
            self.write(chunk)


class RecordingFactory(WrappingFactory):
    protocol = Recording

    def __init__(self, wrapped):
        super().__init__(wrapped)
        self.connections: list[Recording] = []


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(b"echo:" + data)


def recordedClient(port: int, serverName: str, ca: str, request: bytes) -> tuple[bytes, bytes, bytes]:
    """
    A Python ssl client over memory BIOs on a blocking socket, so the raw
    bytes it sends and receives are known: returns (sent, received, the
    decrypted answer).
    """
    context = ssl.create_default_context(cafile=ca)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=serverName)
    sent, received, answer = [], [], []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:

        def flush():
            data = outgoing.read()
            if data:
                sent.append(data)
                sock.sendall(data)

        def pull() -> bool:
            data = sock.recv(65536)
            if not data:
                incoming.write_eof()
                return False
            received.append(data)
            incoming.write(data)
            return True

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                flush()
                if not pull():
                    raise ConnectionError("closed during the handshake")
        flush()
        tls.write(request)
        flush()
        while True:
            try:
                chunk = tls.read(65536)
            except ssl.SSLWantReadError:
                flush()
                if not pull():
                    break
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            if not chunk:
                break
            answer.append(chunk)
        flush()
    return b"".join(sent), b"".join(received), b"".join(answer)


class SNILoopbackTests(TestCase):
    timeout = 60

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="lbproxy-sni-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.ca = CertificateAuthority(os.path.join(self.directory, "ca"))
        self.ports = []
        self.servers = {}
        for name, names in (("a", ["a.example.test"]), ("b", ["b.example.test", "*.b.example.test"])):
            creator = RecordingServerCreator(self.ca.issue(*names))
            site = server.Site(Named(name.upper().encode()))
            site.noisy = False
            recording = RecordingFactory(TLSMemoryBIOFactory(creator, False, site))
            recording.creator = creator
            recording.noisy = False
            self.servers[name] = (recording, self.listen(recording))
        echo = Factory.forProtocol(Echo)
        echo.noisy = False
        self.echoPort = self.listen(echo)

    @inlineCallbacks
    def tearDown(self):
        for port in self.ports:
            yield port.stopListening()
        yield deferLater(reactor, 0.01, lambda: None)

    def listen(self, factory) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.ports.append(port)
        return port.getHost().port

    def proxy(self, fallback: str = "default") -> int:
        config = loadBytes(
            f"""
[listeners.front]
bind = "tcp:0:interface=127.0.0.1"
pool = "plain"
sni_fallback = "{fallback}"
timeouts.hello = "2s"
routes = [
  {{ sni = "a.example.test", pool = "a" }},
  {{ sni = ["*.b.example.test", "b.example.test"], pool = "b" }},
]

[pools.a]
servers = [{{ name = "a1", address = "tcp:host=127.0.0.1:port={self.servers['a'][1]}" }}]

[pools.b]
servers = [{{ name = "b1", address = "tcp:host=127.0.0.1:port={self.servers['b'][1]}" }}]

[pools.plain]
servers = [{{ name = "echo", address = "tcp:host=127.0.0.1:port={self.echoPort}" }}]
""".encode(),
            "sni.toml",
        )
        balancer = Balancer(config)
        factory = frontFactory(config.listeners["front"], balancer.pools, reactor)
        self.factory = factory
        return self.listen(factory)

    @inlineCallbacks
    def test_curl(self):
        curl = requireExecutable("curl")
        port = self.proxy()
        for name, expected in (("a.example.test", b"A a.example.test\n"), ("www.b.example.test", b"B www.b.example.test\n")):
            out, err, code = yield getProcessOutputAndValue(
                curl,
                [
                    "-sS", "--max-time", "10",
                    "--resolve", f"{name}:{port}:127.0.0.1",
                    "--cacert", str(self.ca.cert),
                    f"https://{name}:{port}/",
                ],
                env={},
            )
            self.assertEqual((code, err), (0, b""))
            self.assertEqual(out, expected)

    @inlineCallbacks
    def test_opensslClient(self):
        openssl = requireExecutable("openssl")
        port = self.proxy()
        out, err, code = yield getProcessOutputAndValue(
            openssl,
            [
                "s_client", "-connect", f"127.0.0.1:{port}",
                "-servername", "b.example.test",
                "-CAfile", str(self.ca.cert),
                "-verify_return_error", "-verify_hostname", "b.example.test",
                "-ign_eof", "-quiet",
            ],
            env={},
            stdinBytes=b"GET / HTTP/1.0\r\nHost: b.example.test\r\n\r\n",
        )
        self.assertEqual(code, 0, err)
        self.assertTrue(out.endswith(b"\r\n\r\nB b.example.test\n"), out)

    @inlineCallbacks
    def test_bytesUntouched(self):
        """
        What the client sent is what the server received, byte for byte,
        and the other way round; the session line names the server name.
        """
        port = self.proxy()
        request = b"GET /x HTTP/1.0\r\nHost: a.example.test\r\n\r\n"
        with capturedLogs() as events:
            sent, received, answer = yield deferToThread(
                recordedClient, port, "a.example.test", str(self.ca.cert), request
            )
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(answer.endswith(b"\r\n\r\nA a.example.test\n"), answer)
        (connection,) = self.servers["a"][0].connections
        self.assertEqual(b"".join(connection.incoming), sent)
        self.assertEqual(b"".join(connection.outgoing), received)
        self.assertEqual(self.servers["b"][0].connections, [])
        self.assertEqual(self.servers["a"][0].creator.names, [b"a.example.test"])
        lines = [formatEvent(e) for e in events if e.get("log_namespace") == "lbproxy.tcp.front.TCPProxyProtocol" and "end" in e]
        self.assertEqual(len(lines), 1)
        self.assertIn(" front -> a/a1 sni=a.example.test in=", lines[0])

    @inlineCallbacks
    def test_notTLSToDefault(self):
        port = self.proxy()
        client = Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        client.transport.write(b"hello plain\n")
        yield deferLater(reactor, 0.2, lambda: None)
        client.transport.loseConnection()
        self.assertEqual(client.data, b"echo:hello plain\n")

    @inlineCallbacks
    def test_rejectWithoutServerName(self):
        port = self.proxy(fallback="reject")
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        context.check_hostname = False

        def connect():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                with context.wrap_socket(sock) as tls:
                    tls.sendall(b"x")

        with capturedLogs() as events:
            try:
                yield deferToThread(connect)
            except (ssl.SSLError, OSError):
                pass
            else:
                self.fail("the handshake succeeded without a server name")
            yield deferLater(reactor, 0.05, lambda: None)
        ends = [e["end"] for e in events if e.get("log_namespace") == "lbproxy.tcp.front.TCPProxyProtocol" and "end" in e]
        self.assertEqual(ends, ["no-sni"])


class Collect(Protocol):
    def __init__(self):
        self.data = b""

    def dataReceived(self, data):
        self.data += data
