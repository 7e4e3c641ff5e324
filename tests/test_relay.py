"""
Tests for lbproxy.core.relay: the two-way pump with backpressure, half-close,
idle timeout and byte counts, on in-memory transports.
"""

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, ISSLTransport, ITCPTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides, implementer
from zope.interface.verify import verifyObject

from lbproxy.core.relay import Relay, RelayLeg, RelayResult

DONE = Failure(ConnectionDone())
RESET = Failure(ConnectionLost("Connection reset by peer"))


@implementer(ITCPTransport)
class FakeTCPTransport(StringTransport):
    """
    A StringTransport that half-closes and, like a real TCP transport,
    pauses its registered streaming producer when more than C{bufferSize}
    bytes wait to be sent, and resumes it when L{drain}ed.
    """

    bufferSize = 64 * 1024
    writeDisconnecting = False
    noDelay = False
    producerPaused = False

    def __init__(self):
        super().__init__()
        self.pending = 0

    def write(self, data):
        super().write(data)
        self.pending += len(data)
        if self.producer is not None and self.streaming and self.pending > self.bufferSize:
            self.producerPaused = True
            self.producer.pauseProducing()

    def writeSequence(self, data):
        for chunk in data:
            self.write(chunk)

    def drain(self):
        """
        The peer read everything buffered.
        """
        self.pending = 0
        if self.producer is not None and self.producerPaused:
            self.producerPaused = False
            self.producer.resumeProducing()

    def loseWriteConnection(self):
        self.writeDisconnecting = True

    def setTcpNoDelay(self, enabled):
        self.noDelay = enabled


class RelayTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.relay = Relay(self.clock, idleTimeout=10.0)
        self.results = []
        self.relay.finished.addCallback(self.results.append)
        self.clientTransport = FakeTCPTransport()
        self.serverTransport = FakeTCPTransport()

    def connectClient(self):
        self.relay.client.makeConnection(self.clientTransport)

    def connectServer(self):
        protocol = self.relay.serverFactory().buildProtocol(None)
        self.assertIs(protocol, self.relay.server)
        protocol.makeConnection(self.serverTransport)

    def started(self):
        self.connectClient()
        self.connectServer()
        self.relay.start()
        return self.relay.client, self.relay.server

    def loseBoth(self, reason=DONE):
        self.relay.client.connectionLost(reason)
        self.relay.server.connectionLost(reason)

    def test_interfaces(self):
        verifyObject(IHalfCloseableProtocol, self.relay.client)
        verifyObject(IHalfCloseableProtocol, self.relay.server)

    def test_registerProducers(self):
        """
        Each transport is the other's streaming producer.
        """
        self.started()
        self.assertIs(self.clientTransport.producer, self.serverTransport)
        self.assertTrue(self.clientTransport.streaming)
        self.assertIs(self.serverTransport.producer, self.clientTransport)
        self.assertTrue(self.serverTransport.streaming)

    def test_noDelay(self):
        self.started()
        self.assertTrue(self.clientTransport.noDelay)
        self.assertTrue(self.serverTransport.noDelay)

    def test_clientPausedUntilStarted(self):
        """
        The client is not read while the backend is being connected; both
        transports are read once the relay starts.
        """
        self.connectClient()
        self.assertEqual(self.clientTransport.producerState, "paused")
        self.connectServer()
        self.assertEqual(self.serverTransport.producerState, "paused")
        self.relay.start()
        self.assertEqual(self.clientTransport.producerState, "producing")
        self.assertEqual(self.serverTransport.producerState, "producing")

    def test_heldDataFlushedAfterPreamble(self):
        """
        Bytes the client sent while the backend was connecting are held
        (pausing the client on each read) and written after the preamble.
        """
        self.connectClient()
        self.clientTransport.producerState = "producing"
        self.relay.client.dataReceived(b"hello ")
        self.assertEqual(self.clientTransport.producerState, "paused")
        self.assertEqual(self.relay.client.heldBytes, 6)
        self.connectServer()
        self.serverTransport.write(b"PROXY UNKNOWN\r\n")
        self.relay.start()
        self.assertEqual(self.serverTransport.value(), b"PROXY UNKNOWN\r\nhello ")
        self.assertEqual(self.relay.client.heldBytes, 0)
        self.relay.client.dataReceived(b"world")
        self.assertEqual(
            self.serverTransport.value(), b"PROXY UNKNOWN\r\nhello world"
        )
        self.assertEqual(self.relay.bytesIn, 11)

    def test_heldDataBounded(self):
        """
        A leg fed past maxHeld before the relay runs (its transport
        ignoring pauseProducing) ends the session instead of buffering.
        """
        relay = Relay(self.clock, maxHeld=100)
        results = []
        relay.finished.addCallback(results.append)
        relay.client.makeConnection(self.clientTransport)
        relay.client.dataReceived(b"x" * 100)
        self.assertFalse(self.clientTransport.disconnected)
        relay.client.dataReceived(b"x")
        self.assertTrue(self.clientTransport.disconnected)
        relay.client.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(results[0].end, "client-overflow")
        self.assertEqual(relay.client.heldBytes, 0)

    def test_forwardsAndCounts(self):
        client, server = self.started()
        client.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        server.dataReceived(b"HTTP/1.0 200 OK\r\n")
        server.dataReceived(b"\r\nbody")
        self.assertEqual(self.serverTransport.value(), b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(self.clientTransport.value(), b"HTTP/1.0 200 OK\r\n\r\nbody")
        self.assertEqual((self.relay.bytesIn, self.relay.bytesOut), (18, 23))

    def test_backendFloodPausedBySlowClient(self):
        """
        A backend sending faster than the client reads is paused once the
        client transport's buffer is full, so the proxy's buffer stays
        bounded; it resumes when the client has drained it.
        """
        client, server = self.started()
        chunk = b"x" * 16384
        sent = 0
        while self.serverTransport.producerState == "producing":
            server.dataReceived(chunk)
            sent += len(chunk)
            self.assertLess(sent, 10 * 1024 * 1024)
        self.assertLessEqual(
            self.clientTransport.pending,
            self.clientTransport.bufferSize + len(chunk),
        )
        self.clientTransport.drain()
        self.assertEqual(self.serverTransport.producerState, "producing")
        self.assertEqual(self.relay.bytesOut, sent)

    def test_clientFloodPausedBySlowBackend(self):
        client, server = self.started()
        self.serverTransport.producer.pauseProducing()
        self.assertEqual(self.clientTransport.producerState, "paused")
        client.dataReceived(b"y" * (self.serverTransport.bufferSize + 1))
        self.assertEqual(self.clientTransport.producerState, "paused")

    def test_halfCloseFromClient(self):
        """
        A FIN from the client becomes a half-close toward the backend,
        whose reply still reaches the client; the session ends when both
        directions are closed.
        """
        client, server = self.started()
        client.dataReceived(b"request")
        client.readConnectionLost()
        self.assertTrue(self.serverTransport.writeDisconnecting)
        self.assertFalse(self.serverTransport.disconnecting)
        self.assertIsNone(self.serverTransport.producer)
        server.writeConnectionLost()
        self.assertFalse(self.serverTransport.disconnecting)
        server.dataReceived(b"reply")
        self.assertEqual(self.clientTransport.value(), b"reply")
        self.assertIs(self.clientTransport.producer, self.serverTransport)
        server.readConnectionLost()
        self.assertTrue(self.clientTransport.writeDisconnecting)
        self.assertTrue(self.serverTransport.disconnecting)
        self.assertFalse(self.clientTransport.disconnecting)
        client.writeConnectionLost()
        self.assertTrue(self.clientTransport.disconnecting)
        self.assertEqual(self.results, [])
        self.loseBoth()
        self.assertEqual(self.results, [RelayResult("client-closed", 7, 5)])

    def test_halfCloseFromServer(self):
        """
        A FIN from the backend becomes a half-close toward the client,
        which may still send.
        """
        client, server = self.started()
        server.dataReceived(b"banner")
        server.readConnectionLost()
        self.assertTrue(self.clientTransport.writeDisconnecting)
        self.assertIsNone(self.clientTransport.producer)
        client.dataReceived(b"more")
        self.assertEqual(self.serverTransport.value(), b"more")
        client.readConnectionLost()
        self.assertTrue(self.serverTransport.writeDisconnecting)
        client.writeConnectionLost()
        server.writeConnectionLost()
        self.assertTrue(self.clientTransport.disconnecting)
        self.assertTrue(self.serverTransport.disconnecting)
        self.loseBoth()
        self.assertEqual(self.results, [RelayResult("server-closed", 4, 6)])

    def test_halfCloseToTLSClosesWhole(self):
        """
        A FIN from the backend closes a TLS client connection whole (with
        its close_notify) instead of half-closing the socket under the TLS
        layer: TLS transports have loseWriteConnection too, their own
        (startTLS) or the TCP transport's below (TLSMemoryBIOProtocol).
        """
        alsoProvides(self.clientTransport, ISSLTransport)
        client, server = self.started()
        server.readConnectionLost()
        self.assertTrue(self.clientTransport.disconnecting)
        self.assertFalse(self.clientTransport.writeDisconnecting)

    def test_clientFinBeforeStart(self):
        """
        A client that sent its request and FIN before the backend was up
        has both forwarded once the relay starts.
        """
        self.connectClient()
        self.relay.client.dataReceived(b"req")
        self.relay.client.readConnectionLost()
        self.connectServer()
        self.relay.start()
        self.assertEqual(self.serverTransport.value(), b"req")
        self.assertTrue(self.serverTransport.writeDisconnecting)
        self.assertIsNone(self.serverTransport.producer)
        self.assertEqual(self.clientTransport.producerState, "paused")

    def test_clientReset(self):
        """
        A client connection failing ends the session: the backend
        connection is closed after what it has buffered is sent.
        """
        client, server = self.started()
        client.connectionLost(RESET)
        self.assertTrue(self.serverTransport.disconnecting)
        self.assertFalse(self.serverTransport.disconnected)
        self.assertIsNone(self.serverTransport.producer)
        self.assertEqual(self.results, [])
        server.dataReceived(b"late")
        self.assertEqual(self.clientTransport.value(), b"")
        server.connectionLost(DONE)
        (result,) = self.results
        self.assertEqual(result.end, "client-reset")
        self.assertIn("reset", result.detail)

    def test_serverReset(self):
        client, server = self.started()
        server.connectionLost(RESET)
        self.assertTrue(self.clientTransport.disconnecting)
        client.connectionLost(DONE)
        self.assertEqual(self.results[0].end, "server-reset")

    def test_resetAfterHalfCloseWins(self):
        client, server = self.started()
        client.readConnectionLost()
        server.connectionLost(RESET)
        client.connectionLost(DONE)
        self.assertEqual(self.results[0].end, "server-reset")

    def test_idleTimeout(self):
        """
        No byte either way for idleTimeout seconds aborts both connections;
        traffic postpones it without scheduling a timer per chunk.
        """
        client, server = self.started()
        (call,) = self.clock.getDelayedCalls()
        self.clock.advance(6)
        for _ in range(100):
            client.dataReceived(b"x")
        self.assertEqual(self.clock.getDelayedCalls(), [call])
        self.clock.advance(4)
        self.assertFalse(self.clientTransport.disconnected)
        self.clock.advance(5.9)
        self.assertFalse(self.clientTransport.disconnected)
        server.dataReceived(b"y")
        self.clock.advance(9.9)
        self.assertFalse(self.clientTransport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(self.clientTransport.disconnected)
        self.assertTrue(self.serverTransport.disconnected)
        self.loseBoth(Failure(ConnectionLost()))
        (result,) = self.results
        self.assertEqual(result.end, "idle-timeout")
        self.assertEqual((result.bytesIn, result.bytesOut), (100, 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noIdleTimeout(self):
        relay = Relay(self.clock, idleTimeout=None)
        relay.client.makeConnection(self.clientTransport)
        relay.serverFactory().buildProtocol(None).makeConnection(self.serverTransport)
        relay.start()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timerCancelledWhenFinished(self):
        self.started()
        self.loseBoth()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_clientLeavesWhileConnecting(self):
        """
        A client gone before the backend connected ends the session at
        once; a backend connection made afterwards is dropped, and start()
        does nothing.
        """
        self.connectClient()
        self.relay.client.connectionLost(DONE)
        self.assertEqual(self.results, [RelayResult("client-closed", 0, 0)])
        self.connectServer()
        self.assertTrue(self.serverTransport.disconnected)
        self.relay.start()
        self.assertIsNone(self.serverTransport.producer)
        self.relay.server.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(self.results), 1)

    def test_closeBeforeStart(self):
        """
        close() (e.g. no backend) closes the client cleanly; the session
        ends with the given reason once the client connection is gone.
        """
        self.connectClient()
        self.relay.client.dataReceived(b"dropped")
        self.relay.close("connect-failed", "2 attempts failed")
        self.assertTrue(self.clientTransport.disconnecting)
        self.assertFalse(self.clientTransport.disconnected)
        self.assertEqual(self.results, [])
        self.relay.client.connectionLost(DONE)
        self.assertEqual(
            self.results, [RelayResult("connect-failed", 7, 0, "2 attempts failed")]
        )

    def test_closeUnregistersProducers(self):
        """
        Closing unregisters the producers first: a transport closing with a
        paused producer registered would wait for it forever.
        """
        self.started()
        self.relay.close("shutdown")
        self.assertIsNone(self.clientTransport.producer)
        self.assertIsNone(self.serverTransport.producer)
        self.assertTrue(self.clientTransport.disconnecting)
        self.assertTrue(self.serverTransport.disconnecting)

    def test_abort(self):
        self.started()
        self.relay.abort("killed")
        self.assertTrue(self.clientTransport.disconnected)
        self.assertTrue(self.serverTransport.disconnected)
        self.loseBoth(Failure(ConnectionLost()))
        self.assertEqual(self.results[0].end, "killed")

    def test_startTwice(self):
        self.started()
        self.assertRaises(RuntimeError, self.relay.start)

    def test_startNeedsBothLegs(self):
        self.connectClient()
        self.assertRaises(RuntimeError, self.relay.start)

    def test_serverFactoryBuildsOnce(self):
        factory = self.relay.serverFactory()
        self.assertIs(factory.buildProtocol(None), self.relay.server)
        self.assertIsNone(factory.buildProtocol(None))
        self.assertIsInstance(self.relay.server, RelayLeg)


def test_directWriterOnlyForPlainTCP():
    """
    Transports other than plain TCP connections keep their own write.
    """
    from twisted.internet.testing import StringTransport

    from lbproxy._twisted.directwrite import transportWrite, writerFor

    transport = StringTransport()
    assert writerFor(transport) is transportWrite
    transportWrite(transport, b"data")
    assert transport.value() == b"data"


class WhenFinishedTests(SynchronousTestCase):
    """
    Relay.whenFinished: one function called with the result when the
    session is over, without a Deferred; finished still works, made when
    asked for, even afterwards.
    """

    def finish(self, relay):
        relay.client.makeConnection(FakeTCPTransport())
        relay.client.connectionLost(DONE)

    def test_calledOnceWithTheResult(self):
        relay = Relay(Clock())
        results = []
        relay.whenFinished(results.append)
        self.assertIsNone(relay._finished)
        self.finish(relay)
        self.assertEqual(results, [RelayResult("client-closed", 0, 0)])
        relay.close("again")
        self.assertEqual(len(results), 1)

    def test_beforeFinishedCallbacks(self):
        relay = Relay(Clock())
        order = []
        relay.finished.addCallback(lambda result: order.append("deferred"))
        relay.whenFinished(lambda result: order.append("function"))
        self.finish(relay)
        self.assertEqual(order, ["function", "deferred"])

    def test_afterTheEnd(self):
        """
        A function or a Deferred asked for once the session is over get
        its result at once.
        """
        relay = Relay(Clock())
        self.finish(relay)
        results = []
        relay.whenFinished(results.append)
        self.assertEqual(results, [RelayResult("client-closed", 0, 0)])
        self.assertEqual(self.successResultOf(relay.finished), results[0])

    def test_oneFunction(self):
        relay = Relay(Clock())
        relay.whenFinished(lambda result: None)
        self.assertRaises(RuntimeError, relay.whenFinished, lambda result: None)

    def test_errorLogged(self):
        relay = Relay(Clock())

        def broken(result):
            raise ValueError("front bug")

        relay.whenFinished(broken)
        results = []
        relay.finished.addCallback(results.append)
        self.finish(relay)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(results), 1)
