"""
Tests for lbproxy.mail.pop3 in memory: the pre-login commands and their
answers, the TLS policy, STLS injection, and the login replayed to the
server (USER/PASS, AUTH PLAIN, STLS, XCLIENT) with the server's answer
passed back.
"""

from dataclasses import replace

from twisted.internet.testing import MemoryReactorClock
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from memoryconnections import acceptClient, completeAttempt
from lbproxy.mail.config import MailLimits
from lbproxy.config.tls import BackendTLSConfig
from lbproxy.mail.pop3 import POP3Dialog, POP3Front, POP3ProxyFactory
from lbproxy.mail.sasl import Credentials, encodePlain
from lbproxy.core.format import SESSION_LINE
from lbproxy.service import frontFactory

from test_mail_session import (
    DONE,
    HOST,
    PEER,
    STARTTLS,
    FakeBackendTLS,
    FakeServerTLS,
    TLSFakeTransport,
    makeListener,
    makePool,
)

GREETING = b"+OK lbproxy POP3 proxy ready.\r\n"
PLAIN = encodePlain(b"", b"alice", b"s3cret pass")


def capaLines(data: bytes) -> list[bytes]:
    head, _, rest = data.partition(b"\r\n")
    assert head.startswith(b"+OK"), data
    lines = rest.split(b"\r\n")
    assert lines[-2:] == [b".", b""], data
    return lines[:-2]


class POP3Tests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()

    def makeFactory(self, mail=None, tls=None, pool=None, serverTLS=None):
        listener = makeListener(mail, tls=tls)
        self.pools = {"store": pool or makePool()}
        self.factory = POP3ProxyFactory(listener, self.pools, self.reactor, serverTLS=serverTLS)
        return self.factory

    def accept(self):
        transport = TLSFakeTransport()
        front = acceptClient(self.factory, transport, PEER, HOST)
        self.assertEqual(transport.value(), GREETING)
        transport.clear()
        return front, transport

    def backend(self, index=-1):
        return completeAttempt(self.reactor, TLSFakeTransport(), index)

    def sessionLines(self, events):
        return [formatEvent(e) for e in events if e.get("log_format") == SESSION_LINE]

    # The front before login.

    def test_interfaces(self):
        self.makeFactory()
        front, _ = self.accept()
        self.assertIsInstance(front, POP3Front)
        verifyObject(IHalfCloseableProtocol, front)
        verifyObject(IHalfCloseableProtocol, POP3Dialog(front, Credentials(b"u", b"p")))

    def test_serviceBranch(self):
        """
        service.frontFactory serves pop3 listeners with the POP3 front.
        """
        listener = replace(makeListener(), mode="pop3")
        factory = frontFactory(listener, {"store": makePool()}, self.reactor)
        self.assertIsInstance(factory, POP3ProxyFactory)

    def test_capaPlain(self):
        """
        Without TLS: USER and SASL PLAIN, no STLS.
        """
        self.makeFactory()
        front, client = self.accept()
        front.dataReceived(b"capa\r\n")
        caps = capaLines(client.value())
        self.assertIn(b"USER", caps)
        self.assertIn(b"SASL PLAIN", caps)
        self.assertIn(b"PIPELINING", caps)
        self.assertNotIn(b"STLS", caps)

    def test_capaTLSRequired(self):
        """
        tls_required in plaintext: CAPA offers STLS and hides USER and
        SASL; USER, PASS and AUTH are refused. After STLS, CAPA offers them
        and no longer STLS.
        """
        self.makeFactory(dict(tlsRequired=True), tls=STARTTLS, serverTLS=FakeServerTLS())
        front, client = self.accept()
        front.dataReceived(b"CAPA\r\n")
        caps = capaLines(client.value())
        self.assertIn(b"STLS", caps)
        self.assertNotIn(b"USER", caps)
        self.assertFalse([c for c in caps if c.startswith(b"SASL")])
        for command in (b"USER alice", b"PASS x", b"AUTH PLAIN " + PLAIN, b"AUTH"):
            client.clear()
            front.dataReceived(command + b"\r\n")
            self.assertTrue(client.value().startswith(b"-ERR [AUTH] "), command)
        self.assertEqual(self.reactor.tcpClients, [])
        client.clear()
        front.dataReceived(b"STLS\r\n")
        self.assertEqual(client.value(), b"+OK Begin TLS negotiation now.\r\n")
        self.assertIs(client.tlsStarted, FakeServerTLS.creator)
        client.clear()
        front.dataReceived(b"CAPA\r\n")
        caps = capaLines(client.value())
        self.assertIn(b"USER", caps)
        self.assertIn(b"SASL PLAIN", caps)
        self.assertNotIn(b"STLS", caps)
        client.clear()
        front.dataReceived(b"STLS\r\n")
        self.assertTrue(client.value().startswith(b"-ERR"))

    def test_stlsInjection(self):
        """
        Bytes pipelined after STLS are discarded and the connection closed
        without starting TLS (CVE-2011-0411).
        """
        self.makeFactory(tls=STARTTLS, serverTLS=FakeServerTLS())
        front, client = self.accept()
        with capturedLogs() as events:
            front.dataReceived(b"STLS\r\nUSER alice\r\nPASS secret\r\n")
        self.assertEqual(client.value(), b"")
        self.assertIsNone(client.tlsStarted)
        self.assertTrue(client.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])
        [line] = self.sessionLines(events)
        self.assertIn("end=starttls-injection", line)

    def test_stlsNotOffered(self):
        self.makeFactory()
        front, client = self.accept()
        front.dataReceived(b"STLS\r\n")
        self.assertEqual(client.value(), b"-ERR STLS is not offered.\r\n")

    def test_otherCommands(self):
        """
        Transaction commands before login, unknown commands and empty
        lines get -ERR; QUIT says goodbye and closes.
        """
        self.makeFactory()
        front, client = self.accept()
        front.dataReceived(b"STAT\r\nRETR 1\r\nAPOP a b\r\n\r\nDO_CAPA\r\nPASS x\r\n")
        self.assertEqual(
            client.value(),
            b"-ERR Log in first.\r\n-ERR Log in first.\r\n-ERR Unknown command.\r\n"
            b"-ERR Unknown command.\r\n-ERR Unknown command.\r\n-ERR USER first.\r\n",
        )
        client.clear()
        front.dataReceived(b"AUTH\r\nAUTH CRAM-MD5\r\nUSER\r\nQUIT\r\n")
        self.assertEqual(
            client.value(),
            b"+OK\r\nPLAIN\r\n.\r\n-ERR Unsupported authentication mechanism.\r\n"
            b"-ERR USER needs a name.\r\n+OK Logging out.\r\n",
        )
        self.assertTrue(client.disconnecting)

    def test_authCancelAndBadBase64(self):
        """
        C{*} cancels an AUTH PLAIN continuation; invalid base64 gets -ERR
        at once; a response that is not a PLAIN message is a failed login
        (delayed).
        """
        self.makeFactory()
        front, client = self.accept()
        front.dataReceived(b"AUTH PLAIN\r\n")
        self.assertEqual(client.value(), b"+ \r\n")
        front.dataReceived(b"*\r\n")
        self.assertEqual(client.value(), b"+ \r\n-ERR Authentication cancelled.\r\n")
        client.clear()
        front.dataReceived(b"AUTH PLAIN !!!\r\n")
        self.assertEqual(client.value(), b"-ERR Invalid base64 response.\r\n")
        client.clear()
        front.dataReceived(b"AUTH PLAIN =\r\n")
        self.assertEqual(client.value(), b"")
        self.reactor.advance(2.0)
        self.assertEqual(client.value(), b"-ERR [AUTH] Authentication failed.\r\n")
        self.assertEqual(front.failures, 1)
        self.assertEqual(self.reactor.tcpClients, [])

    def refusedBeforeAnyStore(self, data, mail=None):
        """
        Send C{data}; see no store connected and, after the failure delay,
        the failed-login answer.

        @return: the refusal's log line.
        """
        self.makeFactory(mail)
        front, client = self.accept()
        with capturedLogs() as events:
            front.dataReceived(data)
            self.reactor.advance(2.0)
        self.assertTrue(client.value().endswith(b"-ERR [AUTH] Authentication failed.\r\n"), client.value())
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(front.failures, 1)
        [line] = [text for text in map(formatEvent, events) if "refused before any store" in text]
        return line

    def test_nulInUser(self):
        line = self.refusedBeforeAnyStore(b"USER alice\0x\r\nPASS secret\r\n")
        self.assertEqual(
            "pop3 login of alice\\x00x from 192.0.2.7:40000 (listener toy) refused before any store: "
            "the user name contains a control character",
            line,
        )
        self.refusedBeforeAnyStore(b"USER alice\x01\r\nPASS secret\r\n")

    def test_controlInSASL(self):
        self.refusedBeforeAnyStore(b"AUTH PLAIN " + encodePlain(b"", b"alice\x7f", b"secret") + b"\r\n")
        self.refusedBeforeAnyStore(b"AUTH PLAIN\r\n" + encodePlain(b"bo\x1bb", b"alice", b"secret") + b"\r\n")

    def test_nulInPassword(self):
        self.refusedBeforeAnyStore(b"USER alice\r\nPASS sec\0ret\r\n")

    def test_userTooLong(self):
        line = self.refusedBeforeAnyStore(b"USER " + b"x" * 300 + b"\r\nPASS secret\r\n")
        self.assertIn("the user name is 300 bytes long, over limits.user (256)", line)

    # The login replayed.

    def test_userPassReplayed(self):
        """
        USER/PASS: the proxy answers USER, then replays both; the server's
        answer to PASS is the client's; what the client pipelined after
        PASS reaches the server after the login; then bytes are relayed.
        """
        self.makeFactory()
        front, client = self.accept()
        front.dataReceived(b"USER Alice\r\nPASS s3cret pass\r\nSTAT\r\n")
        self.assertEqual(client.value(), b"+OK\r\n")
        self.assertEqual(front.user, "alice")
        dialog, server = self.backend()
        self.assertIsInstance(dialog, POP3Dialog)
        dialog.dataReceived(b"+OK Dovecot ready.\r\n")
        self.assertEqual(server.value(), b"USER Alice\r\n")
        dialog.dataReceived(b"+OK\r\n")
        self.assertEqual(server.value(), b"USER Alice\r\nPASS s3cret pass\r\n")
        with capturedLogs() as events:
            dialog.dataReceived(b"+OK Logged in.\r\n+OK 4 5323000\r\n")
            self.assertEqual(client.value(), b"+OK\r\n+OK Logged in.\r\n+OK 4 5323000\r\n")
            self.assertTrue(server.value().endswith(b"PASS s3cret pass\r\nSTAT\r\n"))
            front.dataReceived(b"RETR 1\r\n")
            self.assertTrue(server.value().endswith(b"STAT\r\nRETR 1\r\n"))
            front.connectionLost(DONE)
            dialog.connectionLost(DONE)
        [line] = self.sessionLines(events)
        self.assertIn("pop3 192.0.2.7:40000 toy -> store/s0 user=alice ", line)
        self.assertIn("result=ok", line)
        text = "".join(formatEvent(e) for e in events)
        self.assertNotIn("s3cret", text)

    def test_authPlainReplayed(self):
        """
        AUTH PLAIN (initial response or continuation) is replayed with an
        initial response, and again after a server's continuation.
        """
        self.makeFactory()
        front, client = self.accept()
        front.dataReceived(b"AUTH PLAIN\r\n")
        front.dataReceived(PLAIN + b"\r\n")
        self.assertEqual(front.user, "alice")
        dialog, server = self.backend()
        dialog.dataReceived(b"+OK ready\r\n")
        self.assertEqual(server.value(), b"AUTH PLAIN " + PLAIN + b"\r\n")
        dialog.dataReceived(b"+ \r\n")
        self.assertEqual(server.value(), b"AUTH PLAIN " + PLAIN + b"\r\n" + PLAIN + b"\r\n")
        dialog.dataReceived(b"+OK Logged in.\r\n")
        self.assertEqual(client.value(), b"+ \r\n+OK Logged in.\r\n")
        self.assertIsNotNone(front.relay)

    def test_refusedDelayedThenRetried(self):
        """
        The server's -ERR reaches the client after the failure delay; the
        client may log in again (a new backend connection).
        """
        self.makeFactory()
        front, client = self.accept()
        front.dataReceived(b"AUTH PLAIN " + PLAIN + b"\r\n")
        dialog, server = self.backend()
        dialog.dataReceived(b"+OK ready\r\n-ERR [AUTH] Authentication failed.\r\n")
        self.assertTrue(server.disconnecting or server.disconnected)
        self.assertEqual(client.value(), b"")
        self.reactor.advance(2.0)
        self.assertEqual(client.value(), b"-ERR [AUTH] Authentication failed.\r\n")
        front.dataReceived(b"USER alice\r\nPASS right\r\n")
        dialog, server = self.backend()
        dialog.dataReceived(b"+OK ready\r\n+OK\r\n+OK Logged in.\r\n")
        self.assertTrue(client.value().endswith(b"+OK\r\n+OK Logged in.\r\n"))

    def test_userRefusedByServer(self):
        """
        A server refusing USER: its answer is the client's (delayed).
        """
        self.makeFactory()
        front, client = self.accept()
        front.dataReceived(b"USER alice\r\nPASS x\r\n")
        dialog, server = self.backend()
        dialog.dataReceived(b"+OK ready\r\n-ERR No such user\r\n")
        self.assertEqual(server.value(), b"USER alice\r\n")
        self.reactor.advance(2.0)
        self.assertEqual(client.value(), b"+OK\r\n-ERR No such user\r\n")

    def test_badGreetingNextServer(self):
        """
        Replicas: a server that does not greet with +OK is skipped for the
        next; with none left the client gets -ERR [SYS/TEMP].
        """
        self.makeFactory(pool=makePool(count=2, retries=1, stores="replicas"))
        front, client = self.accept()
        front.dataReceived(b"USER alice\r\nPASS x\r\n")
        dialog, server = self.backend()
        dialog.dataReceived(b"-ERR go away\r\n")
        self.assertEqual(len(self.reactor.tcpClients), 2)
        dialog, server = self.backend()
        dialog.dataReceived(b"* OK IMAP here\r\n")
        self.assertEqual(
            client.value(),
            b"+OK\r\n-ERR [SYS/TEMP] Mail store temporarily unavailable, try again later.\r\n",
        )
        self.assertFalse(client.disconnecting)

    def test_xclient(self):
        """
        client_address = "xclient": XCLIENT with the client's address and
        port before the login; a refusal is logged and the login goes on.
        """
        pool = makePool(clientAddress="xclient")
        self.makeFactory(pool=pool)
        front, client = self.accept()
        front.dataReceived(b"USER alice\r\nPASS x\r\n")
        dialog, server = self.backend()
        dialog.dataReceived(b"+OK ready\r\n")
        self.assertEqual(server.value(), b"XCLIENT ADDR=192.0.2.7 PORT=40000\r\n")
        with capturedLogs() as events:
            dialog.dataReceived(b"-ERR not trusted\r\n")
        self.assertIn("refused XCLIENT", "".join(formatEvent(e) for e in events))
        self.assertTrue(server.value().endswith(b"USER alice\r\n"))

    def test_backendSTLS(self):
        """
        A pool with STARTTLS: STLS, TLS with the pool's creator, then the
        login; bytes after the server's +OK before TLS abort the dialog.
        """
        pool = makePool(count=1, retries=0, tls=BackendTLSConfig(starttls=True))
        pool.tls = FakeBackendTLS()
        self.makeFactory(pool=pool)
        front, client = self.accept()
        front.dataReceived(b"USER alice\r\nPASS x\r\n")
        dialog, server = self.backend()
        dialog.dataReceived(b"+OK ready\r\n")
        self.assertEqual(server.value(), b"STLS\r\n")
        dialog.dataReceived(b"+OK Begin TLS\r\n")
        self.assertEqual(server.tlsStarted, ("creator", "s0"))
        self.assertEqual(server.value(), b"STLS\r\nUSER alice\r\n")
        dialog.dataReceived(b"+OK\r\n+OK Logged in.\r\n")
        self.assertTrue(client.value().endswith(b"+OK Logged in.\r\n"))

        front, client = self.accept()
        front.dataReceived(b"USER alice\r\nPASS x\r\n")
        dialog, server = self.backend()
        dialog.dataReceived(b"+OK ready\r\n")
        dialog.dataReceived(b"+OK Begin TLS\r\n+OK injected\r\n")
        self.assertIsNone(server.tlsStarted)
        self.assertEqual(server.value(), b"STLS\r\n")
        self.assertIn(b"-ERR [SYS/TEMP]", client.value())

    def test_serverRefusesSTLS(self):
        pool = makePool(count=1, retries=0, tls=BackendTLSConfig(starttls=True))
        pool.tls = FakeBackendTLS()
        self.makeFactory(pool=pool)
        front, client = self.accept()
        front.dataReceived(b"USER alice\r\nPASS x\r\n")
        dialog, server = self.backend()
        dialog.dataReceived(b"+OK ready\r\n-ERR no TLS here\r\n")
        self.assertIn(b"-ERR [SYS/TEMP]", client.value())
        self.assertNotIn(b"USER", server.value())

    def test_goodbyes(self):
        """
        The POP3 words for a line over the limit, the login timeout and
        too many failed logins; each closes the connection.
        """
        self.makeFactory(dict(limits=MailLimits(line=512), maxAuthFailures=1, authFailureDelay=0.5))
        front, client = self.accept()
        front.dataReceived(b"USER " + b"x" * 600)
        self.assertEqual(client.value(), b"-ERR Line too long.\r\n")
        self.assertTrue(client.disconnecting)
        front, client = self.accept()
        self.reactor.advance(60)
        self.assertEqual(client.value(), b"-ERR Disconnected for inactivity.\r\n")
        self.assertTrue(client.disconnecting)
        front, client = self.accept()
        front.dataReceived(b"AUTH PLAIN =\r\n")
        self.reactor.advance(0.5)
        self.assertEqual(
            client.value(),
            b"-ERR [AUTH] Authentication failed.\r\n-ERR Too many authentication failures.\r\n",
        )
        self.assertTrue(client.disconnecting)
