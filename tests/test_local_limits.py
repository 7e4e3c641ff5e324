"""
lbproxy's own resource limits (out of file descriptors, socket buffers,
memory, local ports) are not server failures: how each reaches lbproxy
through Twisted, the connector refusing the flow without blaming or
retrying a server, each front's answer, and health checks that count
neither way.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile

from twisted.internet import error, reactor, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    UNIXClientEndpoint,
    clientFromString,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbproxy.config import HealthConfig, PoolConfig, ServerConfig
from lbproxy.http.config import HTTPListenerConfig
from lbproxy.tcp.config import TCPListenerConfig
from lbproxy.core.connect import BackendConnector
from lbproxy.core.context import FlowContext
from lbproxy.errors import ConnectFailed, LocalLimitReached
from lbproxy.health.checks import HealthCheckSkipped, TCPCheck
from lbproxy.health.monitor import HealthMonitor
from lbproxy.http.factory import HTTPProxyFactory
from lbproxy.core.limits import describeLocalLimit, localLimit
from lbproxy.mail.imap import IMAPProxyFactory
from lbproxy.core.pool import Pool, Server, ServerState
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin
from lbproxy.tcp.front import TCPProxyFactory

from memoryconnections import acceptClient, failAttempt
from test_mail_session import makeListener as makeMailListener
from test_mail_session import makePool as makeMailPool
from test_relay import FakeTCPTransport

PEER = IPv4Address("TCP", "192.0.2.7", 40000)
HOST = IPv4Address("TCP", "198.51.100.1", 8080)


def osError(number: int) -> OSError:
    return OSError(number, os.strerror(number))


#: Each local limit as Twisted reports it when the socket cannot be made
#: (ConnectBindError), when connect() fails at once (getConnectError), and
#: as a UNIX client raises it.
LOCAL = [
    (errno.EMFILE, error.ConnectBindError(errno.EMFILE, os.strerror(errno.EMFILE))),
    (errno.ENFILE, error.ConnectBindError(errno.ENFILE, os.strerror(errno.ENFILE))),
    (errno.ENOBUFS, error.ConnectBindError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))),
    (errno.ENOMEM, error.ConnectBindError(errno.ENOMEM, os.strerror(errno.ENOMEM))),
    (errno.EADDRNOTAVAIL, error.getConnectError((errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL)))),
    (errno.EMFILE, osError(errno.EMFILE)),
]


def makePool(count=2, retries=2, passiveFall=1) -> Pool:
    servers = [Server(f"s{i}", f"tcp:host=127.0.0.1:port={8001 + i}") for i in range(count)]
    for server in servers:
        server.passiveFall = passiveFall
    options = PoolConfig(name="web", servers=(), retries=retries, connectTimeout=5.0)
    return Pool("web", servers, SmoothWeightedRoundRobin(), options)


class ClassificationTests(SynchronousTestCase):
    def test_localLimits(self):
        for number, exception in LOCAL:
            self.assertEqual(localLimit(exception), number, exception)
            self.assertEqual(localLimit(Failure(exception)), number, exception)

    def test_notLocal(self):
        """
        Failures of the server, the network, name lookups, and errors
        without an errno are the server's (or at least not lbproxy's).
        """
        for exception in (
            error.getConnectError((errno.ECONNREFUSED, "Connection refused")),
            error.getConnectError((errno.ENETUNREACH, "Network is unreachable")),
            error.ConnectBindError(errno.EADDRINUSE, "Address already in use"),
            error.ConnectError(string="something"),
            error.ConnectError(osError="not a number"),
            error.DNSLookupError("no such host"),
            error.TimeoutError(),
            osError(errno.ECONNRESET),
            ValueError("invalid hostname"),
        ):
            self.assertIsNone(localLimit(exception), exception)

    def test_describe(self):
        self.assertEqual(describeLocalLimit(errno.EMFILE), "lbproxy is out of file descriptors (EMFILE)")
        self.assertEqual(
            describeLocalLimit(errno.EADDRNOTAVAIL),
            "lbproxy has no local address or port left to connect from (EADDRNOTAVAIL)",
        )


class _NoLocalPort(socket.socket):
    """
    A socket whose connect() fails as when every ephemeral port towards the
    address is taken.
    """

    def connect_ex(self, address):
        return errno.EADDRNOTAVAIL


class TwistedPathTests(TestCase):
    """
    How each local error reaches an endpoint's caller through Twisted's
    real client code, on the real reactor (the socket is made to fail,
    not the process's descriptors exhausted).
    """

    def socketFails(self, number):
        def createInternetSocket(client):
            raise osError(number)

        self.patch(tcp.BaseClient, "createInternetSocket", createInternetSocket)

    async def limitOf(self, endpoint):
        with self.assertRaises(Exception) as raised:
            await endpoint.connect(Factory.forProtocol(Protocol))
        return raised.exception, localLimit(raised.exception)

    async def test_tcpSocketFails(self):
        for number in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            self.socketFails(number)
            exception, limit = await self.limitOf(TCP4ClientEndpoint(reactor, "127.0.0.1", 1))
            self.assertIsInstance(exception, error.ConnectBindError)
            self.assertEqual(limit, number)

    async def test_ephemeralPortsExhausted(self):
        def createInternetSocket(client):
            skt = _NoLocalPort(client.addressFamily, client.socketType)
            skt.setblocking(False)
            return skt

        self.patch(tcp.BaseClient, "createInternetSocket", createInternetSocket)
        exception, limit = await self.limitOf(TCP4ClientEndpoint(reactor, "127.0.0.1", 1))
        self.assertIs(type(exception), error.ConnectError)
        self.assertEqual(limit, errno.EADDRNOTAVAIL)

    async def test_hostnameEndpointAndTLS(self):
        """
        HostnameEndpoint fails with its last attempt's error, and TLS on
        top (a C{tls:} server address) passes it on.
        """
        self.socketFails(errno.EMFILE)
        exception, limit = await self.limitOf(HostnameEndpoint(reactor, b"127.0.0.1", 1))
        self.assertEqual(limit, errno.EMFILE)
        exception, limit = await self.limitOf(clientFromString(reactor, "tls:127.0.0.1:1"))
        self.assertEqual(limit, errno.EMFILE)

    async def test_unixSocketFails(self):
        self.socketFails(errno.EMFILE)
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "server.sock")
        exception, limit = await self.limitOf(UNIXClientEndpoint(reactor, path))
        self.assertIs(type(exception), OSError)
        self.assertEqual(limit, errno.EMFILE)


class ConnectorTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.pool = makePool()
        self.connector = BackendConnector(self.pool, self.reactor)

    def connect(self):
        return self.connector.connect(FlowContext(PEER, HOST), Factory.forProtocol(Protocol))

    def test_refusedNotBlamedNotRetried(self):
        """
        An attempt failing for a local limit fails the flow with
        LocalLimitReached at once: no other server is tried, the server's
        failure count is untouched (with passive_fall 1 it would be down)
        and its slot is released.
        """
        for number, exception in LOCAL:
            tries = len(self.reactor.tcpClients)
            d = self.connect()
            failAttempt(self.reactor, exception)
            refused = self.failureResultOf(d, LocalLimitReached).value
            self.assertIsInstance(refused, ConnectFailed)
            self.assertEqual(refused.errno, number)
            self.assertEqual(refused.attempts, 1)
            self.assertEqual(len(self.reactor.tcpClients), tries + 1)
            self.assertIn(describeLocalLimit(number), str(refused))
            self.assertIn("(not a server failure)", str(refused))
            for server in self.pool.servers:
                self.assertIs(server.state, ServerState.UP)
                self.assertEqual((server.connectFailures, server.active), (0, 0))

    def test_afterAFailedAttempt(self):
        """
        A local limit met on a retry ends the flow too; the first server's
        real failure still counts.
        """
        self.pool = makePool(passiveFall=3)
        self.connector = BackendConnector(self.pool, self.reactor)
        d = self.connect()
        failAttempt(self.reactor, error.ConnectionRefusedError())
        failAttempt(self.reactor, error.ConnectBindError(errno.EMFILE, "Too many open files"))
        self.assertEqual(self.failureResultOf(d, LocalLimitReached).value.attempts, 2)
        self.assertEqual([s.connectFailures for s in self.pool.servers], [1, 0])
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_loggedOnceASecond(self):
        """
        A flood of refusals is one line at once, then one line a second
        with the count, each saying it is lbproxy's limit.
        """
        with capturedLogs() as events:
            for _ in range(50):
                d = self.connect()
                failAttempt(self.reactor, error.ConnectBindError(errno.EMFILE, "Too many open files"))
                self.failureResultOf(d)
            self.reactor.advance(0.5)
            d = self.connect()
            failAttempt(self.reactor, error.ConnectBindError(errno.EMFILE, "Too many open files"))
            self.failureResultOf(d)
            self.reactor.advance(0.5)
            self.reactor.advance(10)
        lines = [formatEvent(e) for e in events if e.get("log_namespace") == "lbproxy.core.connect.BackendConnector"]
        self.assertEqual(
            lines,
            [
                "lbproxy is out of file descriptors (EMFILE): refused 1 client of pool web (not a server failure)",
                "lbproxy is out of file descriptors (EMFILE): refused 50 clients of pool web (not a server failure)",
            ],
        )


class FrontTests(SynchronousTestCase):
    """
    Each front answers a flow refused for lbproxy's limit as such.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.emfile = error.ConnectBindError(errno.EMFILE, "Too many open files")

    def test_tcp(self):
        pool = makePool()
        factory = TCPProxyFactory(TCPListenerConfig(name="web", bind="tcp:8080", pool="web"), pool, self.reactor)
        client = FakeTCPTransport()
        with capturedLogs() as events:
            protocol = acceptClient(factory, client, PEER, HOST)
            failAttempt(self.reactor, self.emfile)
            self.assertTrue(client.disconnecting)
            protocol.connectionLost(Failure(error.ConnectionDone()))
        (event,) = [e for e in events if e.get("end")]
        self.assertEqual(event["end"], "local-limit")
        self.assertIn(
            "end=local-limit (lbproxy is out of file descriptors (EMFILE) connecting to web/s0 "
            "(not a server failure))",
            formatEvent(event),
        )
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(pool.servers[0].connectFailures, 0)

    def test_http(self):
        """
        503, termination state PC (as HAProxy's: the proxy's own socket
        limit), and the server untouched.
        """
        pool = makePool()
        listener = HTTPListenerConfig(name="web", bind="tcp:8080", pool="web")
        factory = HTTPProxyFactory(listener, {"web": pool}, self.reactor)
        records = []
        factory.accessLog.log = records.append
        client = FakeTCPTransport()
        protocol = acceptClient(factory, client, PEER, HOST)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        failAttempt(self.reactor, self.emfile)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 503 "))
        (record,) = records
        self.assertEqual((record.status, record.termination), (503, "PC"))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(pool.servers[0].connectFailures, 0)

    def test_imap(self):
        """
        A login refused for lbproxy's limit gets the temporary failure.
        """
        pool = makeMailPool(count=2)
        for server in pool.servers:
            server.passiveFall = 1
        factory = IMAPProxyFactory(makeMailListener(), {"store": pool}, self.reactor, None)
        client = FakeTCPTransport()
        front = acceptClient(factory, client, PEER, HOST)
        client.clear()
        front.dataReceived(b"a LOGIN alice secret\r\n")
        failAttempt(self.reactor, self.emfile)
        self.assertEqual(
            client.value(), b"a NO [UNAVAILABLE] Mail store temporarily unavailable, try again later\r\n"
        )
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual([s.state for s in pool.servers], [ServerState.UP, ServerState.UP])


def checkedPool(fall=1) -> Pool:
    config = HealthConfig(interval=2.0, timeout=1.0, rise=2, fall=fall)
    server = Server("a", "tcp:host=127.0.0.1:port=8000")
    options = PoolConfig(name="web", servers=(ServerConfig("a", server.address),), health=config)
    return Pool("web", [server], SmoothWeightedRoundRobin(), options)


class HealthCheckTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()

    def test_probeSkipped(self):
        for number, exception in LOCAL[:5]:
            d = TCPCheck(self.reactor, HealthConfig(timeout=1.0)).check(checkedPool().servers[0])
            failAttempt(self.reactor, exception)
            skipped = self.failureResultOf(d, HealthCheckSkipped).value
            self.assertEqual(skipped.errno, number)
            self.assertEqual(str(skipped), describeLocalLimit(number))

    def emfile(self):
        failAttempt(self.reactor, error.ConnectBindError(errno.EMFILE, "Too many open files"))

    def test_serverKeepsItsState(self):
        """
        Probes lbproxy cannot make count neither way: with fall 1, an up
        server stays up through a minute of them, and a down one stays
        down. Each is logged as lbproxy's limit (one line a second at
        most: here one per probe, every 2s).
        """
        pool = checkedPool()
        server = pool.servers[0]
        monitor = HealthMonitor(pool, self.reactor)
        with capturedLogs() as events:
            monitor.startService()
            for _ in range(30):
                self.emfile()
                self.reactor.advance(2)
            self.assertIs(server.state, ServerState.UP)
            health = server.health
            self.assertEqual((health.failures, health.successes, health.skipped), (0, 0, 30))
            server.setState(ServerState.DOWN, "operator")
            for _ in range(3):
                self.emfile()
                self.reactor.advance(2)
            self.assertIs(server.state, ServerState.DOWN)
            monitor.stopService()
        skipped = [formatEvent(e) for e in events if "skipped" in formatEvent(e)]
        self.assertEqual(len(skipped), 33)
        self.assertEqual(
            skipped[0],
            "lbproxy is out of file descriptors (EMFILE): skipped 1 health check of pool web "
            "(not a server failure; servers keep their state)",
        )

    def test_realProbesStillCount(self):
        """
        The skipped probes do not break a run of real ones: with fall 2, a
        refused probe, skipped ones, then another refused one take the
        server down.
        """
        pool = checkedPool(fall=2)
        server = pool.servers[0]
        monitor = HealthMonitor(pool, self.reactor)
        monitor.startService()
        self.addCleanup(monitor.stopService)
        failAttempt(self.reactor, error.ConnectionRefusedError())
        for _ in range(5):
            self.reactor.advance(2)
            self.emfile()
        self.assertIs(server.state, ServerState.UP)
        self.reactor.advance(2)
        failAttempt(self.reactor, error.ConnectionRefusedError())
        self.assertIs(server.state, ServerState.DOWN)
