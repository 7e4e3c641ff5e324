"""
End-to-end tests of the TCP front on loopback sockets with the real
reactor: distribution, half-close, retries, PROXY headers both ways, and
bounded buffering when a client reads slowly.
"""

import hashlib
import ipaddress
import struct

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from lbproxy.config import PoolConfig
from lbproxy.tcp.config import TCPListenerConfig
from lbproxy.core.pool import Pool, Server
from lbproxy.core.proxyprotocol import ProxyHeaderParser
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin
from lbproxy.service import wrapFront
from lbproxy.tcp.front import TCPProxyFactory

from support import freePort

pytestmark = pytest.mark.integration


@implementer(IHalfCloseableProtocol)
class ReplyOnFin(Protocol):
    """
    A backend that reads the whole request (until the client's FIN) and
    answers C{NAME:request} before closing.
    """

    def connectionMade(self):
        self.data = []

    def dataReceived(self, data):
        self.data.append(data)

    def readConnectionLost(self):
        request = b"".join(self.data)
        self.factory.requests.append(request)
        self.transport.write(self.factory.name + b":" + request)
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


class BackendFactory(Factory):
    protocol = ReplyOnFin

    def __init__(self, name):
        self.name = name
        self.requests = []


@implementer(IHalfCloseableProtocol)
class Client(Protocol):
    """
    Sends C{payload}, half-closes, and collects the reply until the
    proxy's FIN.
    """

    def __init__(self, payload):
        self.payload = payload
        self.received = []
        self.done = Deferred()

    def connectionMade(self):
        self.transport.write(self.payload)
        self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.received.append(data)

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.done.callback(b"".join(self.received))


@implementer(IPushProducer)
class FloodingBackend(Protocol):
    """
    Sends C{factory.total} bytes as fast as its transport takes them, as a
    push producer (so its own buffer stays small), then closes.
    """

    chunkSize = 65536

    def connectionMade(self):
        self.sent = 0
        self.index = 0
        self.paused = False
        self.hash = hashlib.sha256()
        self.factory.instances.append(self)
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self):
        self.paused = False
        total = self.factory.total
        while not self.paused and self.sent < total:
            chunk = struct.pack("!Q", self.index) * (self.chunkSize // 8)
            chunk = chunk[: total - self.sent]
            self.index += 1
            self.sent += len(chunk)
            self.hash.update(chunk)
            self.transport.write(chunk)
        if self.sent >= total and not self.paused:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.paused = True


class SlowReader(Protocol):
    """
    Reads nothing until L{startReading}; then hashes everything.
    """

    def __init__(self):
        self.size = 0
        self.hash = hashlib.sha256()
        self.done = Deferred()

    def connectionMade(self):
        self.transport.pauseProducing()

    def startReading(self):
        self.transport.resumeProducing()

    def dataReceived(self, data):
        self.size += len(data)
        self.hash.update(data)

    def connectionLost(self, reason):
        self.done.callback(self.size)


def buffered(transport) -> int:
    """
    Bytes a Twisted TCP transport holds in user space, waiting to be sent.
    """
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


async def waitFor(predicate, timeout=10.0):
    """
    Poll C{predicate} until it is true; fail after C{timeout} seconds.
    """
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await deferLater(reactor, 0.01)
    raise AssertionError(f"timed out waiting for {predicate}")


class LoopbackTests(TestCase):
    timeout = 60

    def listen(self, factory):
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def startBackends(self, count=2):
        self.backends = [BackendFactory(b"b%d" % i) for i in range(count)]
        return [self.listen(f) for f in self.backends]

    def startProxy(self, ports, sendProxy="none", retries=2, acceptProxy=(), maxconn=0):
        servers = [
            Server(f"s{i}", f"tcp:host=127.0.0.1:port={port}", maxconn=maxconn)
            for i, port in enumerate(ports)
        ]
        options = PoolConfig(
            name="pool", servers=(), retries=retries, connectTimeout=2.0, sendProxy=sendProxy
        )
        self.pool = Pool("pool", servers, SmoothWeightedRoundRobin(), options)
        listener = TCPListenerConfig(
            name="front",
            bind="tcp:0:interface=127.0.0.1",
            pool="pool",
            acceptProxy=acceptProxy,
        )
        self.factory = TCPProxyFactory(listener, self.pool, reactor)
        self.proxyPort = self.listen(wrapFront(self.factory.listener, self.factory, reactor))
        return self.proxyPort

    async def request(self, payload):
        client = Client(payload)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxyPort)
        await connectProtocol(endpoint, client)
        reply = await client.done
        return reply

    async def test_roundRobinAndHalfClose(self):
        """
        Connections alternate between the two backends; each client
        half-closes after its request and still gets the backend's reply.
        The proxy logs one line per session.
        """
        self.startProxy(self.startBackends())
        with capturedLogs() as events:
            replies = []
            for i in range(4):
                replies.append(await self.request(b"hello %d" % i))
            await waitFor(lambda: not self.factory.listener.sessions)
        self.assertEqual(
            replies, [b"b0:hello 0", b"b1:hello 1", b"b0:hello 2", b"b1:hello 3"]
        )
        lines = [
            formatEvent(e)
            for e in events
            if e.get("log_namespace") == "lbproxy.tcp.front.TCPProxyProtocol"
        ]
        self.assertEqual(len(lines), 4)
        self.assertIn("front -> pool/s0 in=7 out=10 ", lines[0])
        self.assertIn("end=client-closed", lines[0])
        self.assertEqual([s.active for s in self.pool.servers], [0, 0])

    async def test_queueKeepsServersWithinMaxconn(self):
        """
        Eight clients at once against one server with maxconn 1: all are
        served, one after the other through the pool's queue, and the
        server never has two connections at a time.
        """
        ports = self.startBackends(1)
        backend = self.backends[0]
        backend.open = backend.most = 0
        build = backend.buildProtocol

        def buildProtocol(addr):
            protocol = build(addr)
            made, lost = protocol.connectionMade, protocol.connectionLost

            def connectionMade():
                backend.open += 1
                backend.most = max(backend.most, backend.open)
                made()

            def connectionLost(reason):
                backend.open -= 1
                lost(reason)

            protocol.connectionMade, protocol.connectionLost = connectionMade, connectionLost
            return protocol

        backend.buildProtocol = buildProtocol
        self.startProxy(ports, maxconn=1)
        with capturedLogs() as events:
            replies = await gatherResults([Deferred.fromCoroutine(self.request(b"q%d" % i)) for i in range(8)])
            await waitFor(lambda: not self.factory.listener.sessions)
        self.assertEqual(sorted(replies), sorted(b"b0:q%d" % i for i in range(8)))
        self.assertEqual(backend.most, 1)
        lines = [formatEvent(e) for e in events if e.get("log_namespace") == "lbproxy.tcp.front.TCPProxyProtocol"]
        self.assertEqual(len(lines), 8)
        self.assertGreaterEqual(sum(" queue=" in line for line in lines), 1, lines)
        self.assertEqual((self.pool.queued, self.pool.servers[0].active), (0, 0))

    async def test_retryWhenBackendDown(self):
        """
        A backend whose port is closed is retried on the other one; every
        request is served.
        """
        ports = self.startBackends(1)
        closed = freePort()
        self.startProxy([closed, ports[0]], retries=1)
        for i in range(4):
            self.assertEqual(await self.request(b"r%d" % i), b"b0:r%d" % i)
        self.assertGreaterEqual(self.pool.servers[0].connectFailures, 1)
        self.assertEqual(len(self.backends[0].requests), 4)

    async def assertBackendSawHeader(self, version):
        self.startProxy(self.startBackends(1), sendProxy=version)
        reply = await self.request(b"payload")
        self.assertTrue(reply.startswith(b"b0:"))
        header, rest = ProxyHeaderParser().feed(reply[3:])
        self.assertEqual(header.version, int(version[1]))
        self.assertEqual(header.source.host, "127.0.0.1")
        self.assertEqual(header.destination.host, "127.0.0.1")
        self.assertEqual(header.destination.port, self.proxyPort)
        self.assertEqual(rest, b"payload")

    async def test_sendProxyV1(self):
        await self.assertBackendSawHeader("v1")

    async def test_sendProxyV2(self):
        await self.assertBackendSawHeader("v2")

    async def test_acceptProxyFromLoopback(self):
        """
        A client on 127.0.0.1, trusted by accept_proxy, sends a PROXY v1
        header; the backend gets the addresses it carried (here in a v2
        header) and not the v1 line.
        """
        self.startProxy(
            self.startBackends(1),
            sendProxy="v2",
            acceptProxy=(ipaddress.ip_network("127.0.0.1/32"),),
        )
        reply = await self.request(b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\nhello")
        header, rest = ProxyHeaderParser().feed(reply[3:])
        self.assertEqual((header.source.host, header.source.port), ("192.0.2.1", 1234))
        self.assertEqual(
            (header.destination.host, header.destination.port), ("192.0.2.2", 80)
        )
        self.assertEqual(rest, b"hello")

    async def test_slowReaderBoundsBuffering(self):
        """
        A backend sends 64 MiB while the client reads nothing: the proxy
        pauses the backend instead of buffering, keeping its user-space
        buffers at about one TCP transport buffer. Once the client reads,
        every byte arrives intact.
        """
        total = 64 * 1024 * 1024
        backendFactory = Factory.forProtocol(FloodingBackend)
        backendFactory.total = total
        backendFactory.instances = []
        self.startProxy([self.listen(backendFactory)])
        reader = SlowReader()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxyPort)
        await connectProtocol(endpoint, reader)
        await waitFor(lambda: backendFactory.instances)
        backend = backendFactory.instances[0]
        await waitFor(lambda: self.factory.listener.sessions)
        (session,) = self.factory.listener.sessions
        peak = [0]

        def sample():
            relay = session.relay
            if relay is None or relay.server.transport is None:
                return
            held = buffered(session.transport) + buffered(relay.server.transport)
            peak[0] = max(peak[0], held)

        sampler = LoopingCall(sample)
        sampler.start(0.005)
        try:
            await waitFor(lambda: backend.paused and backend.sent > 0)
            await deferLater(reactor, 1.0)
            sentWhilePaused = backend.sent
            self.assertLess(sentWhilePaused, total // 2)
            self.assertLess(peak[0], 256 * 1024)
            reader.startReading()
            size = await reader.done
        finally:
            sampler.stop()
        self.assertEqual(size, total)
        self.assertEqual(reader.hash.hexdigest(), backend.hash.hexdigest())
        self.assertLess(peak[0], 256 * 1024)
