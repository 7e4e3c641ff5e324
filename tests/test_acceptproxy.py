"""
lbproxy.core.acceptproxy: the PROXY header read in front of listeners whose
front does not read it itself (TLS, mail and redirect listeners), in
memory; the real-socket tests are in test_tls_loopback and
test_mail_imap_dovecot.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy.core.acceptproxy import (
    AcceptProxyFactory,
    ProxyHeaderReader,
)
from lbproxy.config import ListenerConfig
from lbproxy.http.config import HTTPListenerConfig
from lbproxy.mail.config import MailListenerConfig
from lbproxy.modes import findMode
from lbproxy.tcp.config import TCPListenerConfig
from lbproxy.config.tls import CertificateConfig, ListenerTLSConfig
from lbproxy.interfaces import IProxiedAddresses
from lbproxy.http.redirect import RedirectFactory
from lbproxy.mail.imap import IMAPProxyFactory
from lbproxy.core.proxyprotocol import buildV1, buildV2
from lbproxy.tls.transport import ServerTLSFactory, ServerTLSTransport

PROXY = IPv4Address("TCP", "127.0.0.1", 50000)
STRANGER = IPv4Address("TCP", "192.0.2.99", 50001)
HOST = IPv4Address("TCP", "127.0.0.1", 993)
CLIENT = IPv4Address("TCP", "198.51.100.7", 40000)
DESTINATION = IPv4Address("TCP", "203.0.113.1", 993)
TLS = ListenerTLSConfig(certificates=(CertificateConfig("c.pem", "c.pem"),))


_CONFIGS = {"imap": MailListenerConfig, "pop3": MailListenerConfig, "http": HTTPListenerConfig, "tcp": TCPListenerConfig}


def listener(mode: str = "imap", tls=TLS, **kwargs) -> ListenerConfig:
    return _CONFIGS[mode](
        name="front",
        bind="tcp:993",
        pool="store",
        mode=mode,
        tls=tls,
        acceptProxy=(ipaddress.ip_network("127.0.0.0/8"),),
        **kwargs,
    )


def readsProxyHeaderItself(config: ListenerConfig) -> bool:
    return findMode(config.mode).readsProxyHeader(config)


@implementer(IProxiedAddresses)
class Recorder(Protocol):
    def __init__(self) -> None:
        self.proxied = None
        self.received = []
        self.lost = None
        self.madeWith = None

    def proxiedAddresses(self, client, local):
        self.proxied = (client, local)

    def connectionMade(self):
        self.madeWith = (self.transport.getPeer(), self.transport.getHost())

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.lost = reason


class TCPLike(StringTransport):
    """
    A transport that, like Twisted's TCP connections, delivers to
    whatever its C{protocol} attribute holds.
    """

    def __init__(self, peer) -> None:
        super().__init__(hostAddress=HOST, peerAddress=peer)
        self.protocol = None


class ReaderTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.factory = AcceptProxyFactory(Factory.forProtocol(Recorder), listener(), self.clock)

    def connect(self, peer=PROXY, transportClass=TCPLike):
        transport = transportClass(peer) if transportClass is TCPLike else transportClass(
            hostAddress=HOST, peerAddress=peer
        )
        protocol = self.factory.buildProtocol(peer)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    def test_interfaces(self):
        verifyObject(IProxiedAddresses, Recorder())
        tlsFactory = ServerTLSFactory(None, Factory.forProtocol(Protocol), self.clock, 10.0)
        verifyObject(IProxiedAddresses, ServerTLSTransport(tlsFactory, Protocol()))
        imap = IMAPProxyFactory(listener(tls=None), {}, self.clock)
        verifyObject(IProxiedAddresses, imap.buildProtocol(PROXY))
        redirect = RedirectFactory(
            HTTPListenerConfig(name="plain", bind="tcp:80", pool="", redirectHttps=443),
            self.clock,
        )
        verifyObject(IProxiedAddresses, redirect.buildProtocol(PROXY))

    def test_headerThenHandOver(self):
        """
        The wrapped protocol is connected only once the header is read,
        with the header's addresses; the bytes after the header reach it;
        the transport delivers to it directly from then on.
        """
        reader, transport = self.connect()
        self.assertIsInstance(reader, ProxyHeaderReader)
        wrapped = reader.wrapped
        header = buildV1(CLIENT, DESTINATION)
        reader.dataReceived(header[:10])
        self.assertIsNone(wrapped.madeWith)
        reader.dataReceived(header[10:] + b"\x16\x03\x01hello")
        self.assertEqual(wrapped.proxied, (CLIENT, DESTINATION))
        self.assertIs(transport.protocol, wrapped)
        self.assertIs(wrapped.transport, transport)
        self.assertEqual(wrapped.received, [b"\x16\x03\x01hello"])
        self.clock.advance(60)
        self.assertFalse(transport.disconnecting)

    def test_version2IPv6(self):
        client = IPv6Address("TCP", "2001:db8::5", 40000)
        destination = IPv6Address("TCP", "2001:db8::1", 993)
        reader, transport = self.connect()
        reader.dataReceived(buildV2(client, destination))
        self.assertEqual(reader.wrapped.proxied, (client, destination))
        self.assertEqual(reader.wrapped.received, [])

    def test_localHeaderKeepsTheAddresses(self):
        """
        A LOCAL header (the proxy's own health check) leaves the TCP
        addresses in place.
        """
        reader, transport = self.connect()
        reader.dataReceived(b"PROXY UNKNOWN\r\n")
        self.assertIsNone(reader.wrapped.proxied)
        self.assertEqual(reader.wrapped.madeWith, (PROXY, HOST))

    def test_untrustedPeerServedDirectly(self):
        protocol = self.factory.buildProtocol(STRANGER)
        self.assertIsInstance(protocol, Recorder)

    def test_badHeaderClosed(self):
        reader, transport = self.connect()
        with capturedLogs() as events:
            reader.dataReceived(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(reader.wrapped.madeWith)
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["front: closed the connection of trusted proxy 127.0.0.1:50000: not a PROXY protocol header"],
        )
        reader.dataReceived(b"PROXY UNKNOWN\r\n")
        self.assertIsNone(reader.wrapped.madeWith)

    def test_headerTimeout(self):
        reader, transport = self.connect()
        reader.dataReceived(b"PROXY TCP4 ")
        with capturedLogs() as events:
            self.clock.advance(5.0)
        self.assertTrue(transport.disconnecting)
        self.assertIn("no complete PROXY header within 5s", formatEvent(events[0]))
        self.assertIsNone(reader.wrapped.madeWith)

    def test_closedBeforeHeader(self):
        """
        A peer that closes after part of a header is logged; one that
        sent nothing (a TCP check of the proxy in front) is not. Neither
        reaches the wrapped protocol.
        """
        reader, transport = self.connect()
        with capturedLogs() as events:
            reader.connectionLost(None)
        self.assertEqual(events, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        reader, transport = self.connect()
        reader.dataReceived(b"PROXY")
        with capturedLogs() as events:
            reader.connectionLost(None)
        self.assertIn("connection closed before a complete PROXY header", formatEvent(events[0]))
        self.assertIsNone(reader.wrapped.madeWith)
        self.assertIsNone(reader.wrapped.lost)

    def test_forwardsWithoutProtocolAttribute(self):
        """
        A transport that has no C{protocol} to hand over keeps the reader
        in the path, forwarding every event.
        """
        reader, transport = self.connect(transportClass=StringTransport)
        del transport.protocol
        reader.dataReceived(buildV1(CLIENT, DESTINATION) + b"a")
        reader.dataReceived(b"b")
        wrapped = reader.wrapped
        self.assertEqual(wrapped.received, [b"a", b"b"])
        reason = Failure(ConnectionDone())
        reader.connectionLost(reason)
        self.assertIs(wrapped.lost, reason)

    def test_redirectListener(self):
        """
        An HTTP redirect listener behind the balancer that sends PROXY
        headers to every port: it takes the header, then redirects.
        """
        redirect = HTTPListenerConfig(
            name="plain",
            bind="tcp:80",
            pool="",
            mode="http",
            redirectHttps=443,
            acceptProxy=(ipaddress.ip_network("127.0.0.0/8"),),
        )
        self.factory = AcceptProxyFactory(RedirectFactory(redirect, self.clock), redirect, self.clock)
        reader, transport = self.connect()
        reader.dataReceived(buildV1(CLIENT, DESTINATION) + b"GET /a HTTP/1.1\r\nHost: example.test\r\n\r\n")
        self.assertEqual(reader.wrapped.client, CLIENT)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 301 "), transport.value())
        self.assertIn(b"Location: https://example.test/a\r\n", transport.value())

    def test_tlsTransportReportsTheHeaderAddresses(self):
        tlsFactory = ServerTLSFactory(None, Factory.forProtocol(Protocol), self.clock, 10.0)
        tls = ServerTLSTransport(tlsFactory, Protocol())
        tls.transport = StringTransport(hostAddress=HOST, peerAddress=PROXY)
        self.assertEqual((tls.getPeer(), tls.getHost()), (PROXY, HOST))
        tls.proxiedAddresses(CLIENT, DESTINATION)
        self.assertEqual((tls.getPeer(), tls.getHost()), (CLIENT, DESTINATION))


def test_whoReadsTheHeader():
    """
    No built-in front reads the PROXY header itself: every listener with
    accept_proxy gets the shared reader, in front of TLS when it has some.
    """
    for mode in ("tcp", "http", "imap", "pop3"):
        for tls in (None, TLS):
            assert not readsProxyHeaderItself(listener(mode, tls=tls))
    redirect = HTTPListenerConfig(name="plain", bind="tcp:80", pool="", redirectHttps=443)
    assert not readsProxyHeaderItself(redirect)
