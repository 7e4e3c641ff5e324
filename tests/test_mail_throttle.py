"""
Tests for lbproxy.mail.throttle: failed logins counted per client address
across connections, and its use by the mail fronts.
"""

from base64 import b64encode

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from memoryconnections import acceptClient, completeAttempt
from lbproxy.mail.config import AddressFailureLimit
from lbproxy.mail.imap import IMAPProxyFactory
from lbproxy.mail.pop3 import POP3ProxyFactory
from lbproxy.mail.throttle import FailedLogins

from test_mail_session import DONE, HOST, PEER, TLSFakeTransport, makeListener, makePool


def v4(host: str) -> IPv4Address:
    return IPv4Address("TCP", host, 40000)


def v6(host: str) -> IPv6Address:
    return IPv6Address("TCP", host, 40000)


class FailedLoginsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()

    def table(self, **limit) -> FailedLogins:
        return FailedLogins(AddressFailureLimit(**limit), self.clock, "imap")

    def fail(self, table, address, count=1):
        for _ in range(count):
            table.failed(address)

    def test_refusedAfterLimitUntilWindowEnds(self):
        table = self.table(maxFailures=3, window=60.0)
        client = v4("192.0.2.7")
        self.fail(table, client, 2)
        self.assertFalse(table.refused(client, "imap"))
        self.clock.advance(30)
        self.fail(table, client)
        self.assertTrue(table.refused(client, "imap"))
        self.assertFalse(table.refused(v4("192.0.2.8"), "imap"))
        self.clock.advance(29.9)
        self.assertTrue(table.refused(client, "imap"))
        self.clock.advance(0.1)
        self.assertFalse(table.refused(client, "imap"))
        self.assertEqual(len(table), 0)

    def test_loggedOncePerWindow(self):
        table = self.table(maxFailures=2, window=60.0)
        client = v4("192.0.2.7")
        with capturedLogs() as events:
            self.fail(table, client, 2)
            for _ in range(5):
                self.assertTrue(table.refused(client, "pop3"))
            self.clock.advance(60)
            self.fail(table, client, 2)
            self.assertTrue(table.refused(client, "pop3"))
        lines = [formatEvent(e) for e in events]
        self.assertEqual(
            lines,
            [
                "pop3 client 192.0.2.7 of listener imap had 2 failed logins within 60s "
                "(auth.address_max_failures): its logins are refused for 60s"
            ]
            * 2,
        )

    def test_addresses(self):
        """
        IPv4-mapped IPv6 counts as IPv4; IPv6 by address, or by the
        configured prefix; an address without an IP is not counted.
        """
        table = self.table(maxFailures=1)
        self.assertEqual(table.keyFor(v6("::ffff:192.0.2.7")), "192.0.2.7")
        self.assertEqual(table.keyFor(v6("2001:db8::1%eth0")), "2001:db8::1")
        self.assertIsNone(table.keyFor(UNIXAddress(b"/run/x")))
        self.assertIsNone(table.keyFor(None))
        table.failed(v6("2001:db8::1"))
        self.assertTrue(table.refused(v6("2001:db8::1"), "imap"))
        self.assertFalse(table.refused(v6("2001:db8::2"), "imap"))
        table.failed(UNIXAddress(b"/run/x"))
        self.assertEqual(len(table), 1)
        prefix = self.table(maxFailures=1, ipv6Prefix=64)
        self.assertEqual(prefix.keyFor(v6("2001:db8:0:1::1")), "2001:db8:0:1::/64")
        prefix.failed(v6("2001:db8:0:1::1"))
        self.assertTrue(prefix.refused(v6("2001:db8:0:1:ffff::2"), "imap"))
        self.assertFalse(prefix.refused(v6("2001:db8:0:2::1"), "imap"))
        self.assertEqual(prefix.keyFor(v4("192.0.2.7")), "192.0.2.7")

    def test_sprayStaysBounded(self):
        """
        An attacker failing from ever new addresses fills the table up to
        its size; the oldest are forgotten (logged once per window).
        """
        table = self.table(maxFailures=2, window=300.0, tableSize=256)
        with capturedLogs() as events:
            for index in range(5000):
                table.failed(v6(f"2001:db8::{index:x}"))
                self.clock.advance(0.01)
        self.assertEqual(len(table), 256)
        table.failed(v6("2001:db8::1387"))
        self.assertTrue(table.refused(v6("2001:db8::1387"), "imap"))
        self.assertFalse(table.refused(v6("2001:db8::0"), "imap"))
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["listener imap counts failed logins of 256 client addresses (auth.address_table_size): forgetting the oldest"],
        )
        self.clock.advance(300)
        table.failed(v4("192.0.2.1"))
        self.assertEqual(len(table), 1)


class AcrossConnectionsTests(SynchronousTestCase):
    """
    The fronts: failed logins of one address on separate connections add
    up; over the limit its logins are answered like failed ones without
    asking a store, from any connection, until the window ends.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()

    def makeFactory(self, factoryClass, **limit):
        mail = dict(
            authFailureDelay=2.0, addressLimit=AddressFailureLimit(maxFailures=2, window=600.0, **limit)
        )
        self.factory = factoryClass(makeListener(mail), {"store": makePool(count=1)}, self.reactor)

    def connect(self, peer=PEER):
        transport = TLSFakeTransport()
        front = acceptClient(self.factory, transport, peer, HOST)
        transport.clear()
        return front, transport

    def refusedByStore(self, command, refusal):
        front, client = self.connect()
        front.dataReceived(command)
        dialog, server = completeAttempt(self.reactor, TLSFakeTransport())
        dialog.dataReceived(refusal)
        self.reactor.advance(2.0)
        front.connectionLost(DONE)
        return client.value()

    def test_imap(self):
        self.makeFactory(IMAPProxyFactory)
        greeting = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n"
        refusal = b"lbp1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
        for _ in range(2):
            self.refusedByStore(b"a LOGIN alice wrong\r\n", greeting + refusal)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        front, client = self.connect()
        with capturedLogs() as events:
            front.dataReceived(b"b LOGIN alice right\r\n")
        self.assertEqual(client.value(), b"")
        self.reactor.advance(2.0)
        self.assertEqual(client.value(), b"b NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
        self.assertEqual(front.failures, 1)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertIn(
            "imap client 192.0.2.7 of listener toy had 2 failed logins within 600s "
            "(auth.address_max_failures): its logins are refused for 596s",
            [formatEvent(e) for e in events],
        )
        other, _ = self.connect(IPv4Address("TCP", "192.0.2.8", 40000))
        other.dataReceived(b"c LOGIN alice right\r\n")
        self.assertEqual(len(self.reactor.tcpClients), 3)
        self.reactor.advance(600)
        front.dataReceived(b"d LOGIN alice right\r\n")
        self.assertEqual(len(self.reactor.tcpClients), 4)

    def test_pop3(self):
        self.makeFactory(POP3ProxyFactory)
        for _ in range(2):
            self.refusedByStore(b"USER alice\r\nPASS wrong\r\n", b"+OK ready\r\n+OK\r\n-ERR [AUTH] Authentication failed.\r\n")
        front, client = self.connect()
        front.dataReceived(b"USER alice\r\nPASS right\r\n")
        self.reactor.advance(2.0)
        self.assertEqual(client.value(), b"+OK\r\n-ERR [AUTH] Authentication failed.\r\n")
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_proxyRefusalsCount(self):
        """
        Logins lbproxy refuses itself (an unusable SASL response, a user
        name with a NUL) count too.
        """
        self.makeFactory(IMAPProxyFactory)
        front, client = self.connect()
        front.dataReceived(b"a AUTHENTICATE PLAIN " + b64encode(b"no-nuls") + b"\r\n")
        self.reactor.advance(2.0)
        front.dataReceived(b"b LOGIN {7+}\r\nalice\0x secret\r\n")
        self.reactor.advance(2.0)
        front.dataReceived(b"c LOGIN alice secret\r\n")
        self.reactor.advance(2.0)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertIn(b"c NO [AUTHENTICATIONFAILED] Authentication failed\r\n", client.value())
