"""
Tests for lbproxy._twisted.writebatch: writes to TCP connections sent at the end of
the reactor iteration, on loopback sockets with the real reactor, and the
plain write for other transports.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from lbproxy._twisted.writebatch import WriteBatch

pytestmark = pytest.mark.integration


class Collector(Protocol):
    """
    The receiving end: keeps what arrives, fires C{closed} with it when the
    connection ends.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.closed: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason) -> None:
        self.closed.callback(b"".join(self.received))


@implementer(IPushProducer)
class Sender(Protocol):
    """
    The writing end, producer of its own transport so that pauses show.
    """

    def __init__(self) -> None:
        self.pauses = 0
        self.resumes = 0

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)

    def pauseProducing(self) -> None:
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.resumes += 1

    def stopProducing(self) -> None:
        pass


class WriteBatchLoopbackTests(TestCase):
    async def connect(self) -> tuple[Sender, Collector]:
        receivers: list[Collector] = []

        class ReceiverFactory(Factory):
            def buildProtocol(self, addr):
                receivers.append(Collector())
                return receivers[-1]

        port = reactor.listenTCP(0, ReceiverFactory(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        sender = await connectProtocol(endpoint, Sender())
        self.addCleanup(sender.transport.abortConnection)
        while not receivers:
            await deferLater(reactor, 0.01)
        return sender, receivers[0]

    async def test_inOrderWithPlainWrites(self):
        """
        Batched data is sent in the order of the calls, plain writes
        included, and C{loseConnection} sends everything before closing
        (what is written while it closes too, as with C{transport.write}).
        """
        sender, receiver = await self.connect()
        batch = WriteBatch(reactor)
        transport = sender.transport
        batch.write(transport, b"one ")
        transport.write(b"two ")
        batch.writeSequence(transport, [b"three ", b"", b"four "])
        self.assertEqual(transport._tempDataLen, len(b"one two three four "))
        await deferLater(reactor, 0)
        batch.write(transport, b"five")
        transport.loseConnection()
        batch.write(transport, b" six")
        self.assertEqual(await receiver.closed, b"one two three four five six")

    async def test_sentAtTheEndOfTheIteration(self):
        """
        Nothing is sent during the call; once the reactor has run the batch,
        the transport holds nothing and is not waiting to write.
        """
        sender, receiver = await self.connect()
        batch = WriteBatch(reactor)
        transport = sender.transport
        batch.write(transport, b"x" * 100)
        self.assertNotIn(transport, reactor.getWriters())
        await deferLater(reactor, 0)
        self.assertEqual((transport.dataBuffer, transport._tempDataBuffer), (b"", []))
        self.assertNotIn(transport, reactor.getWriters())
        while not receiver.received:
            await deferLater(reactor, 0.01)
        self.assertEqual(b"".join(receiver.received), b"x" * 100)

    async def overflowThenDrain(self, write, chunk: bytes, count: int) -> None:
        """
        Write C{chunk} C{count} times with C{write(batch, transport,
        chunk)} while the receiver does not read: what the kernel does not
        take stays buffered for the reactor, and the transport pauses its
        producer; once the receiver reads again, the reactor sends it all
        and the producer is resumed once.
        """
        sender, receiver = await self.connect()
        receiver.transport.pauseProducing()
        batch = WriteBatch(reactor)
        transport = sender.transport
        for _ in range(count):
            write(batch, transport, chunk)
        self.assertTrue(sender.pauses)
        self.assertTrue(transport.producerPaused)
        await deferLater(reactor, 0)
        self.assertTrue(transport.dataBuffer or transport._tempDataBuffer)
        self.assertIn(transport, reactor.getWriters())
        receiver.transport.resumeProducing()
        for _ in range(500):
            if not transport.producerPaused:
                break
            await deferLater(reactor, 0.01)
        self.assertEqual(sender.resumes, 1)
        self.assertNotIn(transport, reactor.getWriters())
        transport.unregisterProducer()
        transport.loseConnection()
        self.assertEqual(await receiver.closed, chunk * count)

    async def test_moreThanTheKernelTakes(self):
        await self.overflowThenDrain(WriteBatch.write, bytes(range(256)) * 256, 64)

    async def test_writeNowMoreThanTheKernelTakes(self):
        """
        The same with L{WriteBatch.writeNow}: its sends come at once, the
        rest waits for the reactor.
        """
        await self.overflowThenDrain(WriteBatch.writeNow, bytes(range(256)) * 4096, 16)

    async def test_producerResumedWhenAllIsSent(self):
        """
        More than the transport's buffer size pauses its producer; when the
        batch sends it all, the producer is resumed, as after a write the
        reactor completed.
        """
        sender, receiver = await self.connect()
        batch = WriteBatch(reactor)
        transport = sender.transport
        data = b"y" * (transport.bufferSize + 1)
        batch.write(transport, data)
        self.assertTrue(transport.producerPaused)
        await deferLater(reactor, 0)
        self.assertEqual((transport.dataBuffer, transport._tempDataBuffer), (b"", []))
        self.assertFalse(transport.producerPaused)
        self.assertEqual((sender.pauses, sender.resumes), (1, 1))
        transport.unregisterProducer()
        transport.loseConnection()
        self.assertEqual(await receiver.closed, data)

    async def test_writeNowSendsAtOnce(self):
        """
        L{WriteBatch.writeNow} sends at once, after what the batch held for
        the transport, and a write above the buffer size that the kernel
        takes whole pauses nothing.
        """
        sender, receiver = await self.connect()
        batch = WriteBatch(reactor)
        transport = sender.transport
        batch.write(transport, b"head ")
        body = b"b" * (transport.bufferSize * 2)
        batch.writeNow(transport, body)
        self.assertEqual((transport.dataBuffer, transport._tempDataBuffer), (b"", []))
        self.assertNotIn(transport, reactor.getWriters())
        self.assertEqual((sender.pauses, sender.resumes), (0, 0))
        await deferLater(reactor, 0)
        batch.write(transport, b" tail")
        transport.unregisterProducer()
        transport.loseConnection()
        self.assertEqual(await receiver.closed, b"head " + body + b" tail")

    async def test_abortDropsTheBatch(self):
        """
        Data still in the batch when the connection is aborted is dropped,
        as abortConnection drops the transport's buffer.
        """
        sender, receiver = await self.connect()
        batch = WriteBatch(reactor)
        batch.write(sender.transport, b"sent")
        while not receiver.received:
            await deferLater(reactor, 0.01)
        batch.write(sender.transport, b"dropped")
        sender.transport.abortConnection()
        self.assertEqual(await receiver.closed, b"sent")

    async def test_flushNow(self):
        """
        L{WriteBatch.flush} sends at once and cancels the pending call.
        """
        sender, receiver = await self.connect()
        clock = Clock()
        batch = WriteBatch(clock)
        batch.write(sender.transport, b"now")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        batch.flush()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(sender.transport._tempDataBuffer, [])
        sender.transport.loseConnection()
        self.assertEqual(await receiver.closed, b"now")

    async def test_closedTransport(self):
        """
        Writes after the connection is gone are dropped, as
        C{transport.write} drops them.
        """
        sender, receiver = await self.connect()
        batch = WriteBatch(reactor)
        batch.write(sender.transport, b"before")
        sender.transport.loseConnection()
        await receiver.closed
        while sender.transport.connected:
            await deferLater(reactor, 0.01)
        batch.write(sender.transport, b"after")
        self.assertEqual(sender.transport._tempDataBuffer, [])


class WriteBatchTLSTests(TestCase):
    async def test_tlsRecordsBatched(self):
        """
        Through TLS over a TCP connection, the data arrives in order, and
        the encrypted records go out with the batch at the end of the
        iteration, the TCP connection never waiting for writability.
        """
        from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from certs import CertificateAuthority

        directory = tempfile.mkdtemp(prefix="lbproxy-test-writebatch-")
        self.addCleanup(shutil.rmtree, directory, True)
        ca = CertificateAuthority(directory)
        leaf = ca.issue("localhost")
        server = PrivateCertificate.loadPEM(
            open(leaf.cert, "rb").read() + open(leaf.key, "rb").read()
        )
        receivers: list[Collector] = []

        class ReceiverFactory(Factory):
            def buildProtocol(self, addr):
                receivers.append(Collector())
                return receivers[-1]

        port = reactor.listenTCP(
            0,
            TLSMemoryBIOFactory(server.options(), False, ReceiverFactory()),
            interface="127.0.0.1",
        )
        self.addCleanup(port.stopListening)
        trust = Certificate.loadPEM(open(ca.cert, "rb").read())
        clientFactory = TLSMemoryBIOFactory(
            optionsForClientTLS("localhost", trust), True, Factory.forProtocol(Sender)
        )
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        tls = await endpoint.connect(clientFactory)
        self.addCleanup(tls.transport.abortConnection)
        batch = WriteBatch(reactor)
        batch.write(tls, b"one ")
        while not receivers or b"".join(receivers[0].received) != b"one ":
            # The handshake, written before the batch took the connection.
            await deferLater(reactor, 0.01)
        lower = tls.transport
        writers = []
        for data in (b"two ", b"three"):
            batch.write(tls, data)
            await deferLater(reactor, 0)
            writers.append(lower in reactor.getWriters())
        while not receivers or b"".join(receivers[0].received) != b"one two three":
            await deferLater(reactor, 0.01)
        self.assertEqual(writers, [False, False])
        # Plain writes (held by Twisted's BufferingTLSTransport until its
        # own callLater) and batched ones stay in order.
        tls.write(b" four")
        batch.write(tls, b" five")
        tls.write(b" six")
        while b"".join(receivers[0].received) != b"one two three four five six":
            await deferLater(reactor, 0.01)
        self.assertNotIn(lower, reactor.getWriters())
        tls.unregisterProducer()
        tls.loseConnection()
        self.assertEqual(await receivers[0].closed, b"one two three four five six")


class WriteBatchOtherTransportTests(SynchronousTestCase):
    def test_plainWrite(self):
        """
        A transport that is not a plain TCP connection gets the data from
        its own C{write} at once, and nothing is scheduled.
        """
        clock = Clock()
        batch = WriteBatch(clock)
        transport = StringTransport()
        batch.write(transport, b"a")
        batch.writeSequence(transport, [b"b", b"c"])
        batch.writeNow(transport, b"d")
        self.assertEqual(transport.value(), b"abcd")
        self.assertEqual(clock.getDelayedCalls(), [])
        batch.flush()
