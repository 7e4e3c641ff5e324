"""
lbproxy's reactor makes TCP connections with their attributes in slots
(lbproxy._twisted.transports): they behave as Twisted's, on real loopback
connections, and keep no instance dictionary. Its timed calls share what
they can.
"""

import socket
import sys

import pytest
from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport

from lbproxy._twisted import PLAIN_TCP
from lbproxy._twisted.transports import LeanClient, LeanServer
from test_reactor import Recorder, _iterateUntil, reactor, tcpPair  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="lbproxy's reactor is epoll, Linux only")


def _exercise(reactor, server, client):
    """
    What a proxied connection does with its transports: data both ways,
    each transport the other's producer, pauses, Nagle off, addresses.
    """
    for protocol in (server, client):
        protocol.transport.setTcpNoDelay(True)
        protocol.transport.getHost()
        protocol.transport.getPeer()
    server.transport.registerProducer(client.transport, True)
    client.transport.registerProducer(server.transport, True)
    server.transport.pauseProducing()
    server.transport.resumeProducing()
    client.transport.write(b"ping")
    _iterateUntil(reactor, lambda: server.received)
    server.transport.writeSequence([b"po", b"ng"])
    _iterateUntil(reactor, lambda: b"".join(client.received) == b"pong")
    server.transport.unregisterProducer()
    client.transport.unregisterProducer()


def test_connectionsAreLean(reactor, tcpPair):
    """
    Accepted and outgoing TCP connections are the lean classes, count as
    plain TCP for the read and write paths, and keep every attribute in a
    slot through their usual life.
    """
    server, client = tcpPair()
    assert type(server.transport) is LeanServer
    assert type(client.transport) is LeanClient
    assert {LeanServer, LeanClient} <= PLAIN_TCP
    _exercise(reactor, server, client)
    assert vars(server.transport) == {}
    assert vars(client.transport) == {}


def test_connectionDefaults(reactor, tcpPair):
    """
    The slots that hide Twisted's class defaults start with those defaults.
    """
    server, client = tcpPair()
    for transport in (server.transport, client.transport):
        assert transport.producer is None
        assert transport.streamingProducer is False
        assert transport.producerPaused is False
        assert transport.disconnecting == 0
        assert transport.dataBuffer == b""
        assert transport.offset == 0
        assert transport._writeDisconnecting is False
        assert transport.bufferSize == tcp.Connection.bufferSize
        assert transport._aborting is False
        assert transport.TLS is False
        assert transport.connected == 1


def test_hostAddressShared(reactor, tcpPair):
    """
    Connections accepted on one local address share one address object;
    each keeps its peer's address, the same object at each getPeer.
    """
    first, _ = tcpPair()
    port = first.transport.getHost().port
    second, _ = tcpPair()
    assert first.transport.getHost() == IPv4Address("TCP", "127.0.0.1", port)
    assert second.transport.getHost() is second.transport.getHost()
    assert first.transport.getPeer() is first.transport.getPeer()
    assert first.transport.getPeer() == IPv4Address("TCP", *first.transport.client)
    assert first.transport.client == ("127.0.0.1", first.transport.getPeer().port)
    assert first.transport.getPeer() != second.transport.getPeer()


def test_logStrings(reactor, tcpPair):
    """
    The log prefix and representation read as Twisted's would.
    """
    server, client = tcpPair()
    transport = server.transport
    port = transport.server._realPortNumber
    assert transport.logPrefix() == f"Recorder,{transport.sessionno},127.0.0.1"
    assert repr(transport) == f"<Recorder #{transport.sessionno} on {port}>"
    assert client.transport.logPrefix() == "Recorder,client"


def test_filenoUntilLost(reactor, tcpPair):
    """
    C{fileno()} is the socket's while connected and -1 once the connection
    is lost, as Twisted's C{FileDescriptor.fileno} answers.
    """
    server, client = tcpPair()
    assert server.transport.fileno() == server.transport.socket.fileno()
    assert client.transport.fileno() == client.transport.socket.fileno()
    client.transport.loseConnection()
    _iterateUntil(reactor, lambda: server.ended and client.ended)
    assert server.ended == [ConnectionDone]
    assert server.transport.fileno() == -1
    assert client.transport.fileno() == -1


def test_refusedConnection(reactor):
    """
    A connection attempt that fails is reported as with Twisted's clients.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    failures = []
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    connectProtocol(endpoint, Recorder()).addErrback(failures.append)
    _iterateUntil(reactor, lambda: failures)
    assert failures[0].check(ConnectionRefusedError)


def test_ipv6(reactor):
    """
    IPv6 connections are lean too, with IPv6 addresses.
    """
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    built = []

    class Keeping(Factory):
        noisy = False

        def buildProtocol(self, addr):
            built.append(Recorder())
            return built[-1]

    try:
        port = reactor.listenTCP(0, Keeping(), interface="::1")
    except Exception as e:
        pytest.skip(f"no ::1 ({e})")
    try:
        connected = []
        endpoint = TCP6ClientEndpoint(reactor, "::1", port.getHost().port)
        connectProtocol(endpoint, Recorder()).addCallback(connected.append)
        _iterateUntil(reactor, lambda: connected and built)
        server, client = built[0], connected[0]
        assert type(server.transport) is LeanServer
        assert isinstance(server.transport.getPeer(), IPv6Address)
        assert server.transport.getPeer() == IPv6Address("TCP", *server.transport.client)
        assert len(server.transport.client) == 4
        assert isinstance(client.transport.getPeer(), IPv6Address)
        assert isinstance(server.transport.getHost(), IPv6Address)
        client.transport.write(b"six")
        _iterateUntil(reactor, lambda: server.received)
        assert vars(server.transport) == {}
        client.transport.abortConnection()
        _iterateUntil(reactor, lambda: server.ended)
    finally:
        port.stopListening()
        for _ in range(5):
            reactor.iterate(0)


def test_timedCallsShare(reactor):
    """
    Timed calls share the reactor's bound methods and an empty keyword
    mapping, and still fire, move and cancel as Twisted's.
    """
    fired = []
    first = reactor.callLater(0, fired.append, "first")
    second = reactor.callLater(0.5, fired.append, "second")
    third = reactor.callLater(0, lambda **kw: fired.append(kw), value=3)
    assert first.canceller is second.canceller
    assert first.resetter is second.resetter
    assert first.kw is second.kw and dict(first.kw) == {}
    assert third.kw == {"value": 3}
    second.reset(0)
    cancelled = reactor.callLater(0, fired.append, "cancelled")
    cancelled.cancel()
    _iterateUntil(reactor, lambda: len(fired) == 3)
    reactor.iterate(0)
    assert sorted(map(str, fired)) == ["first", "second", "{'value': 3}"]
    assert not cancelled.active()


def test_otherTransportsUntouched():
    """
    Only TCP ports accept lean connections: what is not a TCP port is left
    as it is.
    """
    from lbproxy._twisted.reactor import _leanConnections

    other = StringTransport()
    assert _leanConnections(other) is other
    assert not hasattr(other, "transport")
