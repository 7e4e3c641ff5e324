"""
L{lbproxy.tls.transport}: lbproxy's server-side TLS transport, in memory,
against a pyOpenSSL client over memory BIOs.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IConsumer,
    IHandshakeListener,
    INegotiated,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from certs import CertificateAuthority
from lbproxy.tls.server import ServerTLS, clientSubject, describeTLS, wrapFactory
from lbproxy.tls.transport import ServerTLSFactory, ServerTLSTransport, describeError
from lbproxy._twisted.writebatch import WriteBatch
from tlsmemory import clientContext, listenerTLS

SOURCE = "lb.toml"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory)
    clients = CertificateAuthority(directory / "clients", name="client CA", intermediate=True)
    return {
        "ca": ca,
        "default": ca.issue("default.example.test"),
        "www": ca.issue("www.example.test"),
        "clientCA": clients,
        "client": clients.issue(client=True, commonName="alice"),
    }


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


class Recorder(Protocol):
    """
    Keeps what it receives and how it was told about the connection.
    """

    def __init__(self):
        self.received = []
        self.lost = None
        self.made = False

    def connectionMade(self):
        self.made = True

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.lost = reason

    @property
    def data(self) -> bytes:
        return b"".join(self.received)


@implementer(IHandshakeListener)
class Listening(Recorder):
    def __init__(self):
        super().__init__()
        self.handshakes = 0

    def handshakeCompleted(self):
        self.handshakes += 1


class Producer:
    def __init__(self):
        self.calls = []

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        self.calls.append("resume")

    def stopProducing(self):
        self.calls.append("stop")


class Connection:
    """
    One client over memory BIOs, the server's L{ServerTLSTransport} over a
    L{StringTransport}, and what passes between them.
    """

    def __init__(
        self,
        pki,
        protocol=Recorder,
        serverName=b"www.example.test",
        clientAlpn=(b"http/1.1",),
        cert=None,
        timeout=10.0,
        **tlsOptions,
    ):
        self.clock = Clock()
        self.serverTLS = ServerTLS("web", listenerTLS(pki["default"], pki["www"], **tlsOptions), SOURCE)
        self.serverTLS.load()
        self.factory = wrapFactory(self.serverTLS, Factory.forProtocol(protocol), self.clock, timeout)
        self.tls = self.factory.buildProtocol(None)
        self.tcp = StringTransport()
        self.tls.makeConnection(self.tcp)
        self.app = self.tls.wrappedProtocol
        context = clientContext(
            ca=pki["ca"].cert,
            alpn=list(clientAlpn) if clientAlpn else None,
            cert=cert.chain if cert is not None else None,
            key=cert.key if cert is not None else None,
        )
        self.client = SSL.Connection(context, None)
        if serverName is not None:
            self.client.set_tlsext_host_name(serverName)
        self.client.set_connect_state()
        self.closed = False

    def toServer(self, pieceSize: int | None = None) -> None:
        """
        Feed what the client wrote to the server, in pieces of
        C{pieceSize} bytes (all at once by default).
        """
        data = b""
        while True:
            try:
                chunk = self.client.bio_read(65536)
            except SSL.WantReadError:
                break
            data += chunk
        if not data:
            return
        if pieceSize is None:
            self.tls.dataReceived(data)
            return
        for start in range(0, len(data), pieceSize):
            self.tls.dataReceived(data[start : start + pieceSize])

    def toClient(self) -> None:
        data = self.tcp.value()
        self.tcp.clear()
        if data:
            self.client.bio_write(data)

    def handshake(self) -> None:
        for _ in range(10):
            try:
                self.client.do_handshake()
            except SSL.WantReadError:
                pass
            else:
                self.toServer()
                return
            self.toServer()
            self.toClient()
        raise AssertionError("no handshake")

    def clientReceive(self) -> bytes:
        """
        What the client decrypts of what the server sent; C{closed} tells
        whether a close_notify came after it.
        """
        self.toClient()
        out = []
        while True:
            try:
                out.append(self.client.recv(65536))
            except SSL.WantReadError:
                return b"".join(out)
            except SSL.ZeroReturnError:
                self.closed = True
                return b"".join(out)

    def send(self, data: bytes, pieceSize: int | None = None) -> None:
        view = memoryview(data)
        while view:
            sent = self.client.send(view[:16384])
            view = view[sent:]
        self.toServer(pieceSize)

    def lose(self, reason=ConnectionDone()) -> None:
        self.tls.connectionLost(Failure(reason))


def test_interfaces(pki):
    connection = Connection(pki)
    connection.handshake()
    transport = connection.tls
    for interface in (ITransport, ITCPTransport, ISSLTransport, IConsumer, IPushProducer, INegotiated):
        assert verifyObject(interface, transport)
    assert isinstance(connection.factory, ServerTLSFactory)
    assert connection.app.transport is transport


def test_handshakeAndEcho(pki):
    connection = Connection(pki, protocol=Listening)
    assert connection.app.made
    assert connection.app.handshakes == 0
    connection.handshake()
    assert connection.app.handshakes == 1
    # The deadline is gone with the handshake.
    assert connection.clock.getDelayedCalls() == []
    connection.send(b"hello")
    assert connection.app.data == b"hello"
    connection.tls.write(b"world")
    connection.tls.writeSequence([b" and", b" more"])
    assert connection.clientReceive() == b"world and more"
    info = describeTLS(connection.tls)
    assert info["version"] == "TLSv1.3"
    assert info["sni"] == "www.example.test"


def test_writesBeforeHandshakeWait(pki):
    connection = Connection(pki)
    connection.tls.write(b"early")
    assert connection.tcp.value() == b""
    connection.handshake()
    assert connection.clientReceive() == b"early"


@pytest.mark.parametrize(
    "serverName, expected",
    [(b"www.example.test", "www.example.test"), (b"unknown.example.test", "default.example.test"), (None, "default.example.test")],
)
def test_serverNameChoosesCertificate(pki, serverName, expected):
    connection = Connection(pki, serverName=serverName)
    connection.handshake()
    certificate = connection.client.get_peer_certificate(as_cryptography=True)
    names = [a.value for a in certificate.subject]
    assert expected in names


def test_alpn(pki):
    connection = Connection(pki, alpn=("http/1.1",))
    connection.handshake()
    assert connection.tls.negotiatedProtocol == b"http/1.1"
    assert connection.client.get_alpn_proto_negotiated() == b"http/1.1"
    assert describeTLS(connection.tls)["alpn"] == "http/1.1"
    plain = Connection(pki, alpn=("http/1.1",), clientAlpn=None)
    plain.handshake()
    assert plain.tls.negotiatedProtocol is None


def test_clientCertificate(pki):
    connection = Connection(
        pki, cert=pki["client"], clientCA=str(pki["clientCA"].cert), clientVerify="required"
    )
    connection.handshake()
    connection.send(b"x")
    assert connection.app.data == b"x"
    assert clientSubject(connection.tls) == "CN=alice,O=lbproxy tests"
    assert connection.tls.getPeerCertificate() is not None


def test_clientCertificateMissing(pki, logged):
    connection = Connection(pki, clientCA=str(pki["clientCA"].cert), clientVerify="required")
    try:
        connection.handshake()
    except SSL.Error:
        pass
    connection.toServer()
    assert connection.tcp.disconnecting
    lines = [e for e in logged if e.get("log_format", "").startswith("TLS error")]
    assert len(lines) == 1
    connection.lose()
    assert connection.app.lost.check(SSL.Error)
    assert "certificate" in describeError(connection.app.lost.value)


def test_largeBodiesBothWays(pki):
    connection = Connection(pki)
    connection.handshake()
    body = bytes(range(256)) * 4096 + b"end"
    # In pieces that cut records and their headers anywhere.
    connection.send(body, pieceSize=1021)
    assert connection.app.data == body
    connection.tls.write(body)
    assert connection.clientReceive() == body


def test_severalRecordsOneDelivery(pki):
    connection = Connection(pki)
    connection.handshake()
    for piece in (b"one ", b"two ", b"three"):
        connection.client.send(piece)
    connection.toServer()
    assert connection.app.received == [b"one two three"]


def test_byteByByte(pki):
    connection = Connection(pki)
    connection.handshake()
    connection.send(b"GET / HTTP/1.1\r\n\r\n", pieceSize=1)
    assert connection.app.data == b"GET / HTTP/1.1\r\n\r\n"
    connection.send(b"again")
    assert connection.app.data.endswith(b"again")


def test_handshakeByteByByte(pki):
    connection = Connection(pki, protocol=Listening)
    for _ in range(10):
        try:
            connection.client.do_handshake()
            break
        except SSL.WantReadError:
            connection.toServer(pieceSize=1)
            connection.toClient()
    connection.send(b"hi", pieceSize=3)
    assert connection.app.handshakes == 1
    assert connection.app.data == b"hi"


def test_producersPassedToTCP(pki):
    connection = Connection(pki)
    connection.handshake()
    producer = Producer()
    connection.tls.registerProducer(producer, True)
    assert connection.tcp.producer is producer
    assert connection.tcp.streaming
    connection.tls.pauseProducing()
    assert connection.tcp.producerState == "paused"
    connection.tls.resumeProducing()
    assert connection.tcp.producerState == "producing"
    connection.tls.unregisterProducer()
    assert connection.tcp.producer is None
    connection.tls.stopProducing()
    assert connection.tcp.producerState == "stopped"


def test_closeNotify(pki):
    connection = Connection(pki)
    connection.handshake()
    connection.tls.write(b"bye")
    connection.tls.loseConnection()
    assert connection.tcp.disconnecting
    assert connection.clientReceive() == b"bye"
    assert connection.closed
    # Writes after the close are dropped.
    connection.tls.write(b"late")
    assert connection.tcp.value() == b""
    connection.lose()
    assert connection.app.lost.check(ConnectionDone)


def test_closeWaitsForProducer(pki):
    connection = Connection(pki)
    connection.handshake()
    producer = Producer()
    connection.tls.registerProducer(producer, True)
    connection.tls.loseConnection()
    connection.tls.write(b"still")
    assert not connection.tcp.disconnecting
    connection.tls.unregisterProducer()
    assert connection.tcp.disconnecting
    assert connection.clientReceive() == b"still"
    assert connection.closed


def test_clientCloseNotify(pki):
    connection = Connection(pki)
    connection.handshake()
    connection.client.send(b"last")
    connection.client.shutdown()
    connection.toServer()
    assert connection.app.data == b"last"
    assert connection.tcp.disconnecting
    # The server answered with its own close_notify.
    assert connection.clientReceive() == b""
    assert connection.closed
    assert connection.app.lost is None
    connection.lose()
    assert connection.app.lost.check(ConnectionDone)


def test_halfCloseClosesWhole(pki):
    """
    A TLS peer has no half-close: loseWriteConnection sends close_notify
    and closes the TCP connection whole.
    """
    connection = Connection(pki)
    connection.handshake()
    connection.tls.loseWriteConnection()
    assert connection.tcp.disconnecting
    assert connection.clientReceive() == b""
    assert connection.closed


def test_abort(pki):
    connection = Connection(pki)
    connection.handshake()
    connection.tls.write(b"x")
    connection.tcp.clear()
    connection.tls.abortConnection()
    assert connection.tcp.disconnected
    connection.tls.write(b"dropped")
    connection.send(b"ignored")
    assert connection.tcp.value() == b""
    assert connection.app.data == b""


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b"\x80\x2e\x01\x03\x01"])
def test_garbageCloses(pki, logged, garbage):
    connection = Connection(pki)
    connection.tls.dataReceived(garbage)
    if not connection.tcp.disconnecting:
        # A record header that promises more: OpenSSL waits for it.
        connection.tls.dataReceived(b"\x00" * 64)
    assert connection.tcp.disconnecting
    lines = [e for e in logged if e.get("log_format", "").startswith("TLS error")]
    assert len(lines) == 1
    connection.tls.dataReceived(b"more garbage")
    assert connection.app.data == b""
    connection.lose()
    assert isinstance(connection.app.lost.value, SSL.Error)


def test_handshakeTimeout(pki):
    connection = Connection(pki, timeout=7)
    connection.clock.advance(6.9)
    assert not connection.tcp.disconnecting
    connection.clock.advance(0.1)
    assert connection.tcp.disconnected
    connection.lose()
    assert connection.clock.getDelayedCalls() == []


def test_closeBeforeHandshakeAfterWrite(pki):
    """
    An answer written and closed before the handshake (an HTTP 408) waits
    for the handshake, then goes out before the close_notify; without a
    handshake the deadline drops it.
    """
    connection = Connection(pki)
    connection.tls.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    connection.tls.loseConnection()
    assert not connection.tcp.disconnecting
    connection.handshake()
    assert connection.tcp.disconnecting
    assert connection.clientReceive() == b"HTTP/1.1 408 Request Timeout\r\n\r\n"
    assert connection.closed
    silent = Connection(pki, timeout=5)
    silent.tls.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    silent.tls.loseConnection()
    silent.clock.advance(5)
    assert silent.tcp.disconnected


def test_closeBeforeHandshakeWithoutWrite(pki):
    connection = Connection(pki)
    connection.tls.loseConnection()
    assert connection.tcp.disconnected


def test_tcpLostWithoutCloseNotify(pki):
    connection = Connection(pki)
    connection.handshake()
    connection.lose()
    assert connection.app.lost.check(ConnectionDone)
    assert not connection.tls.connected


def test_writeBatchEncryptsAtOnce(pki):
    """
    A write batch hands data for the TLS transport to it at once; over a
    transport that is not plain TCP the records go to its own write.
    """
    connection = Connection(pki)
    connection.handshake()
    batch = WriteBatch(connection.clock)
    batch.write(connection.tls, b"a")
    batch.writeSequence(connection.tls, [b"b", b"c"])
    assert connection.clientReceive() == b"abc"
    assert connection.clock.getDelayedCalls() == []


def test_noDelayPassedToTCP(pki):
    connection = Connection(pki)
    calls = []
    connection.tcp.setTcpNoDelay = calls.append
    connection.tls.setTcpNoDelay(True)
    assert calls == [True]
    assert connection.tls.getTcpNoDelay() is False
    assert connection.tls.getHost() == connection.tcp.getHost()
    assert connection.tls.getPeer() == connection.tcp.getPeer()


def test_factoryPassesStartAndStop(pki):
    started = []

    class Front(Factory):
        protocol = Recorder

        def startFactory(self):
            started.append("start")

        def stopFactory(self):
            started.append("stop")

        def buildProtocol(self, addr):
            return None if addr == "refused" else super().buildProtocol(addr)

    serverTLS = ServerTLS("web", listenerTLS(pki["default"]), SOURCE)
    serverTLS.load()
    factory = wrapFactory(serverTLS, Front(), Clock())
    factory.doStart()
    factory.doStop()
    assert started == ["start", "stop"]
    assert factory.buildProtocol("refused") is None
    assert isinstance(factory.buildProtocol(None), ServerTLSTransport)


class LoopbackTests(TestCase):
    """
    Over a real TCP connection on loopback: the records of a write batch's
    writes go out with the batch, and a close sends close_notify.
    """

    async def test_batchedOverTCP(self):
        from twisted.internet import reactor
        from twisted.internet.ssl import Certificate, optionsForClientTLS
        from twisted.protocols.tls import TLSMemoryBIOFactory

        directory = tempfile.mkdtemp(prefix="lbproxy-test-tls-transport-")
        self.addCleanup(shutil.rmtree, directory, True)
        ca = CertificateAuthority(directory)
        leaf = ca.issue("localhost")
        serverTLS = ServerTLS("web", listenerTLS(leaf), SOURCE)
        serverTLS.load()
        servers: list[Recorder] = []

        class Front(Factory):
            def buildProtocol(self, addr):
                servers.append(Recorder())
                return servers[-1]

        port = reactor.listenTCP(0, wrapFactory(serverTLS, Front(), reactor), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        closed = Deferred()

        class Client(Recorder):
            def connectionLost(self, reason):
                closed.callback(self.data)

        trust = Certificate.loadPEM(open(ca.cert, "rb").read())
        clientFactory = TLSMemoryBIOFactory(optionsForClientTLS("localhost", trust), True, Factory.forProtocol(Client))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        client = await endpoint.connect(clientFactory)
        self.addCleanup(client.transport.abortConnection)
        client.write(b"ping")
        for _ in range(500):
            if servers and servers[0].data == b"ping":
                break
            await deferLater(reactor, 0.01)
        server = servers[0].transport
        self.assertIsInstance(server, ServerTLSTransport)
        lower = server.transport
        batch = WriteBatch(reactor)
        writers = []
        for data in (b"one ", b"two"):
            batch.write(server, data)
            writers.append(lower in reactor.getWriters())
            await deferLater(reactor, 0)
            writers.append(lower in reactor.getWriters())
        self.assertEqual(writers, [False, False, False, False])
        server.loseConnection()
        self.assertEqual(await closed, b"one two")


def test_closedAtHandshakeCompletion(pki):
    """
    A protocol that closes when told of the handshake gets nothing more.
    """

    class Closing(Listening):
        def handshakeCompleted(self):
            super().handshakeCompleted()
            self.transport.loseConnection()

    connection = Connection(pki, protocol=Closing)
    for _ in range(10):
        try:
            connection.client.do_handshake()
            break
        except SSL.WantReadError:
            connection.toClient()
            data = b""
            try:
                data = connection.client.bio_read(65536)
            except SSL.WantReadError:
                pass
            if data:
                connection.tls.dataReceived(data)
    # The client's first data arrives with its Finished.
    connection.client.send(b"too late")
    connection.toServer()
    assert connection.app.handshakes == 1
    assert connection.tcp.disconnecting
    assert connection.app.data == b""
    assert connection.clientReceive() == b""
    assert connection.closed
