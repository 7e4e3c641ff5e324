"""
TLS to servers end to end on loopback, with the real reactor: an HTTP
listener whose pool speaks TLS to Twisted and OpenSSL (s_server) servers.
A server whose certificate does not verify (another CA, another name) gets
no request: the client gets a 502, the attempts are bounded by the pool's
retries, each is logged with the reason and counted by passive health
checking. Health checks over TLS fail with the same reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from lbproxy.config import HealthConfig, loadBytes
from lbproxy.health.checks import HealthCheckFailed, TCPCheck
from lbproxy.core.pool import ServerState
from lbproxy.core.model import Balancer
from lbproxy.service import frontFactory

from certs import CertificateAuthority
from support import freePort, requireExecutable
from test_tls_backend import RecordingServerCreator

pytestmark = pytest.mark.integration

UNVERIFIED = "TLS: certificate verify failed (unable to get local issuer certificate)"


class Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello over TLS"


class Fetch(Protocol):
    """
    Sends one request with Connection: close and keeps the whole answer.
    """

    def __init__(self) -> None:
        self.data = b""
        self.done: Deferred = Deferred()

    def connectionMade(self):
        self.transport.write(b"GET / HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done.callback(self.data)


class FrontsOnLoopback(TestCase):
    """
    Tests that listen on loopback with the real reactor: L{listen} opens a
    port, and after each test the ports stop and the fronts in
    C{self.fronts} close their idle backend connections.
    """

    timeout = 60

    def setUp(self):
        self.ports = []
        self.fronts = []

    @inlineCallbacks
    def tearDown(self):
        for factory in self.fronts:
            for route in factory.routes:
                route.backends.closeIdle()
        for port in self.ports:
            yield port.stopListening()
        yield deferLater(reactor, 0.05, lambda: None)

    def listen(self, factory) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.ports.append(port)
        return port.getHost().port

    def front(self, pool: str) -> int:
        """
        Listen with an HTTP front (the last of C{self.fronts}) whose pool
        C{web} (C{self.pool}) is made of the table lines C{pool}; its port.
        """
        config = loadBytes(
            f"""
[listeners.web]
bind = "tcp:0:interface=127.0.0.1"
mode = "http"
pool = "web"

[pools.web]
{pool}
""".encode(),
            "lb.toml",
        )
        self.balancer = Balancer(config)
        self.pool = self.balancer.pools["web"]
        factory = frontFactory(config.listeners["web"], self.balancer.pools, reactor)
        self.fronts.append(factory)
        return self.listen(factory)


class BackendTLSLoopbackTests(FrontsOnLoopback):
    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp(prefix="lbproxy-btls-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.ca = CertificateAuthority(os.path.join(self.directory, "ca"))
        self.other = CertificateAuthority(os.path.join(self.directory, "other"), name="other CA")
        self.accepted = {}

    def tlsServer(self, issued, clientCA=None) -> int:
        """
        A Twisted web server over TLS presenting C{issued}.
        """
        site = server.Site(Hello())
        site.noisy = False
        factory = TLSMemoryBIOFactory(RecordingServerCreator(issued, clientCA=clientCA), False, site)
        accepted = []
        original = factory.buildProtocol

        def buildProtocol(addr):
            accepted.append(addr)
            return original(addr)

        factory.buildProtocol = buildProtocol
        port = self.listen(factory)
        self.accepted[port] = accepted
        return port

    def proxy(self, port: int, tls: str, retries: int = 1) -> int:
        front = self.front(
            f"""retries = {retries}
servers = [{{ name = "web1", address = "tcp:host=web1.test:port={port}" }}]
health = {{ interval = "60s", passive_fall = 2 }}

[pools.web.tls]
{tls}"""
        )
        # The servers are named web1.test; connect to loopback.
        for configured in self.pool.servers:
            configured.address = f"tcp:host=127.0.0.1:port={port}"
        return front

    @inlineCallbacks
    def fetch(self, port: int) -> bytes:
        client = Fetch()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        answer = yield client.done
        return answer

    def connectLines(self, events) -> list[str]:
        return [
            formatEvent(e)
            for e in events
            if e.get("log_namespace", "").startswith("lbproxy.core.connect")
        ]

    @inlineCallbacks
    def test_verifiedServer(self):
        backend = self.tlsServer(self.ca.issue("web1.test"))
        port = self.proxy(backend, f'ca = "{self.ca.cert}"\nserver_name = "web1.test"')
        answer = yield self.fetch(port)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertTrue(answer.endswith(b"hello over TLS"), answer)
        self.assertEqual(self.pool.servers[0].connectFailures, 0)

    @inlineCallbacks
    def test_serverOfAnotherCA(self):
        backend = self.tlsServer(self.other.issue("web1.test"))
        port = self.proxy(backend, f'ca = "{self.ca.cert}"\nserver_name = "web1.test"', retries=1)
        with capturedLogs() as events:
            answer = yield self.fetch(port)
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), answer)
        self.assertEqual(
            self.connectLines(events),
            [
                f"connect to web/web1 failed: {UNVERIFIED}; retrying",
                f"connect to web/web1 failed: {UNVERIFIED}; giving up",
            ],
        )
        self.assertEqual(len(self.accepted[backend]), 2)
        server = self.pool.servers[0]
        self.assertEqual(server.active, 0)
        self.assertIs(server.state, ServerState.DOWN)
        (change,) = [e for e in events if e.get("state") == "down"]
        self.assertIn(UNVERIFIED, change["reason"])

    @inlineCallbacks
    def test_serverOfAnotherName(self):
        backend = self.tlsServer(self.ca.issue("other.test"))
        port = self.proxy(backend, f'ca = "{self.ca.cert}"\nserver_name = "web1.test"', retries=0)
        with capturedLogs() as events:
            answer = yield self.fetch(port)
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), answer)
        self.assertEqual(
            self.connectLines(events),
            [
                "connect to web/web1 failed: TLS: certificate verify failed "
                "(certificate is not valid for web1.test); giving up"
            ],
        )

    @inlineCallbacks
    def test_verifyOff(self):
        backend = self.tlsServer(self.other.issue("elsewhere.test"))
        port = self.proxy(backend, "verify = false")
        answer = yield self.fetch(port)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)

    @inlineCallbacks
    def test_clientCertificate(self):
        client = self.ca.issue(client=True, commonName="lbproxy")
        backend = self.tlsServer(self.ca.issue("web1.test"), clientCA=self.ca.cert)
        port = self.proxy(
            backend,
            f'ca = "{self.ca.cert}"\nserver_name = "web1.test"\ncert = "{client.chain}"\nkey = "{client.key}"',
        )
        answer = yield self.fetch(port)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)

    @inlineCallbacks
    def test_clientCertificateRefusedAfterHandshake(self):
        """
        Under TLS 1.3 a server that wants a client certificate lbproxy does
        not send says so only after the client's handshake has finished,
        with an alert in place of the response. That is a failed connect
        attempt like any other: logged with OpenSSL's reason, counted by
        passive health, retried, and a 502 when no attempt is left.
        """
        backend = self.tlsServer(self.ca.issue("web1.test"), clientCA=self.ca.cert)
        port = self.proxy(backend, f'ca = "{self.ca.cert}"\nserver_name = "web1.test"', retries=1)
        with capturedLogs() as events:
            answer = yield self.fetch(port)
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), answer)
        lines = self.connectLines(events)
        self.assertEqual(len(lines), 2, lines)
        for line, action in zip(lines, ("retrying", "giving up")):
            self.assertTrue(line.startswith("connect to web/web1 failed: TLS: "), line)
            self.assertIn("certificate required", line)
            self.assertTrue(line.endswith(f"; {action}"), line)
        self.assertEqual(len(self.accepted[backend]), 2)
        server = self.pool.servers[0]
        self.assertEqual(server.active, 0)
        self.assertIs(server.state, ServerState.DOWN)

    @inlineCallbacks
    def test_healthCheckOverTLS(self):
        good = self.tlsServer(self.ca.issue("web1.test"))
        bad = self.tlsServer(self.other.issue("web1.test"))
        self.proxy(good, f'ca = "{self.ca.cert}"\nserver_name = "web1.test"')
        server = self.pool.servers[0]
        check = TCPCheck(reactor, HealthConfig(timeout=5.0, tls=True))
        yield check.check(server)
        server.address = f"tcp:host=127.0.0.1:port={bad}"
        try:
            yield check.check(server)
        except HealthCheckFailed as e:
            self.assertEqual(str(e), UNVERIFIED)
        else:
            self.fail("the check passed against a server of another CA")

    @inlineCallbacks
    def test_opensslServerGetsServerName(self):
        """
        An OpenSSL s_server presenting a certificate for web1.test only to
        clients that ask for web1.test by SNI (another name otherwise).
        """
        openssl = requireExecutable("openssl")
        wrong = self.ca.issue("default.test")
        right = self.ca.issue("web1.test")
        backend = freePort()
        process = subprocess.Popen(
            [
                openssl, "s_server", "-accept", f"127.0.0.1:{backend}", "-www", "-quiet",
                "-cert", str(wrong.chain), "-key", str(wrong.key),
                "-servername", "web1.test", "-cert2", str(right.chain), "-key2", str(right.key),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(process.wait, 10)
        self.addCleanup(process.kill)
        for _ in range(100):
            try:
                probe = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", backend), Protocol())
                # s_server serves one connection at a time.
                probe.transport.loseConnection()
                break
            except ConnectionRefusedError:
                yield deferLater(reactor, 0.05, lambda: None)
        port = self.proxy(backend, f'ca = "{self.ca.cert}"\nserver_name = "web1.test"')
        answer = yield self.fetch(port)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertIn(b"s_server", answer)
