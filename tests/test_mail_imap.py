"""
Tests for lbproxy.mail.imap in memory: the pre-login command parser and
answers, every login form, the TLS policy, STARTTLS injection, and the
backend dialog (replay forms, ID, STARTTLS, tags) against scripted
servers.
"""

from base64 import b64encode

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from memoryconnections import acceptClient, completeAttempt
from lbproxy.mail.config import MailLimits
from lbproxy.config.tls import BackendTLSConfig
from lbproxy.mail.imap import (
    IMAPFront,
    IMAPProxyFactory,
    MAX_HELD,
    IMAPSyntaxError,
    Tokens,
    clientIDParams,
    encodeCommand,
    parseID,
)
from lbproxy.core.format import SESSION_LINE

from test_mail_session import (
    HOST,
    PEER,
    STARTTLS,
    FakeBackendTLS,
    FakeServerTLS,
    TLSFakeTransport,
    makeListener,
    makePool,
)

DONE = Failure(ConnectionDone())
GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN] store ready\r\n"


class ParserTests(SynchronousTestCase):
    def tokens(self, *segments, start=0):
        return Tokens(list(segments[0::2]), list(segments[1::2]), start)

    def test_forms(self):
        tokens = self.tokens(b'alice "pa\\"ss\\\\" {3}', b"x y", b' ("a" NIL )')
        self.assertEqual(tokens.next(), ("atom", b"alice"))
        self.assertEqual(tokens.next(), ("string", b'pa"ss\\'))
        self.assertEqual(tokens.next(), ("string", b"x y"))
        self.assertEqual(tokens.next(), ("list", [("string", b"a"), ("atom", b"NIL")]))
        self.assertIsNone(tokens.next())

    def test_errors(self):
        for text in (b'"open', b'"bad \\n escape"', b"(unclosed", b")", b"{3}"):
            tokens = self.tokens(text)
            self.assertRaises(IMAPSyntaxError, tokens.next)

    def test_id(self):
        pairs = parseID(self.tokens(b'("name" "mutt" "x-originating-ip" "6.6.6.6" "X-Connected-Port" "1" "os" NIL)'))
        self.assertEqual(
            clientIDParams(pairs), [(b"name", b"mutt"), (b"os", None)]
        )
        self.assertEqual(parseID(self.tokens(b"NIL")), [])
        for bad in (b'("odd")', b"(name value)", b'("' + b"f" * 31 + b'" "v")', b"x"):
            self.assertRaises(IMAPSyntaxError, parseID, self.tokens(bad))

    def test_encodeCommand(self):
        self.assertEqual(encodeCommand(b"t LOGIN", [b"alice", b"pw"], False), [b"t LOGIN alice pw\r\n"])
        self.assertEqual(
            encodeCommand(b"t LOGIN", [b"alice", b'p "w'], True), [b't LOGIN alice {4+}\r\np "w\r\n']
        )
        self.assertEqual(
            encodeCommand(b"t LOGIN", [b"alice", b'p "w\\'], False), [b't LOGIN alice "p \\"w\\\\"\r\n']
        )
        self.assertEqual(
            encodeCommand(b"t LOGIN", [b"j\xc3\xb6rg", b"p\r\nw"], False),
            [b"t LOGIN {5}\r\n", b"j\xc3\xb6rg {4}\r\n", b"p\r\nw\r\n"],
        )
        self.assertEqual(encodeCommand(b"t LOGIN", [b"", b"x"], False), [b't LOGIN "" x\r\n'])


class IMAPFrontTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()

    def makeFactory(self, listener=None, pools=None, serverTLS=None):
        self.pools = pools or {"store": makePool()}
        self.factory = IMAPProxyFactory(listener or makeListener(), self.pools, self.reactor, serverTLS)
        return self.factory

    def accept(self):
        transport = TLSFakeTransport()
        protocol = acceptClient(self.factory, transport, PEER, HOST)
        self.client = transport
        transport.clear()
        return protocol

    def said(self):
        value = self.client.value()
        self.client.clear()
        return value

    def backend(self, greeting=GREETING, index=-1):
        dialog, transport = completeAttempt(self.reactor, TLSFakeTransport(), index)
        if greeting:
            dialog.dataReceived(greeting)
        return dialog, transport

    def test_greeting(self):
        self.makeFactory()
        transport = TLSFakeTransport()
        protocol = self.factory.buildProtocol(PEER)
        self.assertIsInstance(protocol, IMAPFront)
        protocol.makeConnection(transport)
        self.assertEqual(
            transport.value(),
            b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN] lbproxy IMAP proxy ready\r\n",
        )

    def test_simpleCommands(self):
        self.makeFactory()
        front = self.accept()
        front.dataReceived(b"a1 capability\r\na2 NOOP\r\n")
        self.assertEqual(
            self.said(),
            b"* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN\r\na1 OK CAPABILITY completed\r\n"
            b"a2 OK NOOP completed\r\n",
        )
        front.dataReceived(b'a3 ID ("name" "test" "x-originating-ip" "6.6.6.6")\r\n')
        self.assertEqual(self.said(), b'* ID ("name" "lbproxy")\r\na3 OK ID completed\r\n')
        self.assertEqual(front.clientID, [(b"name", b"test")])
        front.dataReceived(b"a4 SELECT INBOX\r\na5 FROB\r\na6 NOOP extra\r\n\r\n+ x\r\n")
        self.assertEqual(
            self.said(),
            b"a4 BAD Log in first\r\na5 BAD Unknown command\r\na6 BAD unexpected arguments\r\n"
            b"* BAD Invalid tag or command\r\n* BAD Invalid tag or command\r\n",
        )
        front.dataReceived(b"a7 STARTTLS\r\na8 LOGOUT\r\n")
        self.assertEqual(
            self.said(),
            b"a7 BAD STARTTLS is not offered\r\n* BYE Logging out\r\na8 OK LOGOUT completed\r\n",
        )
        self.assertTrue(self.client.disconnecting)

    def test_tlsRequired(self):
        """
        Plaintext with tls_required: LOGINDISABLED and no AUTH=, LOGIN and
        AUTHENTICATE refused; after STARTTLS the client asks again and
        gets AUTH=PLAIN and no STARTTLS.
        """
        mail = dict(tlsRequired=True)
        self.makeFactory(makeListener(mail, tls=STARTTLS), serverTLS=FakeServerTLS())
        front = self.accept()
        front.dataReceived(b"a CAPABILITY\r\n")
        self.assertIn(b"* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID STARTTLS LOGINDISABLED\r\n", self.said())
        front.dataReceived(b"b LOGIN alice pw\r\nc AUTHENTICATE PLAIN AGFsaWNlAHB3\r\n")
        self.assertEqual(
            self.said(),
            b"b NO [PRIVACYREQUIRED] LOGIN is disabled until TLS is active\r\n"
            b"c NO [PRIVACYREQUIRED] Authentication is disabled until TLS is active\r\n",
        )
        self.assertEqual(self.reactor.tcpClients, [])
        front.dataReceived(b"d STARTTLS\r\n")
        self.assertEqual(self.said(), b"d OK Begin TLS negotiation now\r\n")
        self.assertIs(self.client.tlsStarted, FakeServerTLS.creator)
        front.dataReceived(b"e CAPABILITY\r\nf STARTTLS\r\n")
        self.assertEqual(
            self.said(),
            b"* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN\r\ne OK CAPABILITY completed\r\n"
            b"f BAD TLS is already active\r\n",
        )

    def test_startTLSInjection(self):
        self.makeFactory(makeListener(tls=STARTTLS), serverTLS=FakeServerTLS())
        front = self.accept()
        with capturedLogs() as events:
            front.dataReceived(b"a STARTTLS\r\nb LOGIN alice pw\r\n")
        self.assertEqual(self.said(), b"")
        self.assertIsNone(self.client.tlsStarted)
        self.assertTrue(self.client.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])
        lines = [formatEvent(e) for e in events if e.get("log_format") == SESSION_LINE]
        self.assertIn("end=starttls-injection", lines[0])

    def loginAndCheck(self, command, user, password, continuations=0):
        """
        Send C{command} in pieces of one line and see the proxy place a
        login of C{user} / C{password}.
        """
        self.makeFactory()
        front = self.accept()
        pieces = command.split(b"\n")
        for piece in pieces[:-1]:
            front.dataReceived(piece + b"\n")
        self.assertEqual(self.said(), b"+ Ready for literal data\r\n" * continuations)
        dialog, server = self.backend()
        self.assertEqual((dialog.credentials.user, dialog.credentials.password), (user, password))
        self.assertEqual(front.user, user.decode("utf-8").lower())
        return front, dialog, server

    def test_loginAtom(self):
        self.loginAndCheck(b"a LOGIN alice secret\r\n", b"alice", b"secret")

    def test_loginQuoted(self):
        self.loginAndCheck(b'a LOGIN "Alice" "se\\"c ret\\\\"\r\n', b"Alice", b'se"c ret\\')

    def test_loginLiterals(self):
        self.loginAndCheck(b"a LOGIN {5}\r\nalice {6}\r\nse\r\ncr\r\n", b"alice", b"se\r\ncr", continuations=2)

    def test_loginLiteralPlus(self):
        self.loginAndCheck(b"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n", b"alice", b"secret")

    def test_loginInOnePacket(self):
        self.makeFactory()
        front = self.accept()
        front.dataReceived(b"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n")
        dialog, server = self.backend()
        self.assertEqual(dialog.credentials.password, b"secret")

    def test_literalTooLarge(self):
        """
        A synchronizing literal over the cap gets BAD and no continuation;
        a non-synchronizing one BAD and the connection closed (its bytes
        follow anyway).
        """
        mail = dict(limits=MailLimits(literal=256))
        self.makeFactory(makeListener(mail))
        front = self.accept()
        front.dataReceived(b"a LOGIN {257}\r\n")
        self.assertEqual(self.said(), b"a BAD Literal too large\r\n")
        front.dataReceived(b"b NOOP\r\n")
        self.assertEqual(self.said(), b"b OK NOOP completed\r\n")
        front.dataReceived(b"c LOGIN {256+}\r\n" + b"x" * 256 + b" y\r\n")
        self.assertEqual(self.said(), b"")
        self.assertEqual(self.reactor.tcpClients != [], True)
        front = self.accept()
        front.dataReceived(b"d LOGIN {300+}\r\n" + b"x" * 300)
        self.assertEqual(self.said(), b"d BAD Literal too large\r\n")
        self.assertTrue(self.client.disconnecting)

    def test_literalWithoutTag(self):
        self.makeFactory()
        front = self.accept()
        front.dataReceived(b"{5}\r\n")
        self.assertEqual(self.said(), b"* BAD Invalid tag\r\n")
        self.assertFalse(self.client.disconnecting)
        front.dataReceived(b"{5+}\r\nhello\r\n")
        self.assertEqual(self.said(), b"* BAD Invalid tag\r\n")
        self.assertTrue(self.client.disconnecting)

    def test_authenticatePlain(self):
        response = b64encode(b"\0alice\0secret")
        self.makeFactory()
        front = self.accept()
        front.dataReceived(b"a AUTHENTICATE PLAIN " + response + b"\r\n")
        dialog, server = self.backend()
        self.assertEqual(dialog.credentials.mechanism, "PLAIN")
        self.assertEqual(server.value(), b"lbp1 AUTHENTICATE PLAIN " + response + b"\r\n")
        front = self.accept()
        front.dataReceived(b"b authenticate plain\r\n")
        self.assertEqual(self.said(), b"+ \r\n")
        front.dataReceived(response + b"\r\n")
        dialog, server = self.backend()
        self.assertEqual(dialog.credentials.password, b"secret")

    def test_authenticateRefusals(self):
        mail = dict(authFailureDelay=2.0, maxAuthFailures=3)
        self.makeFactory(makeListener(mail))
        front = self.accept()
        front.dataReceived(b"a AUTHENTICATE PLAIN\r\n*\r\n")
        self.assertEqual(self.said(), b"+ \r\na BAD AUTHENTICATE cancelled\r\n")
        front.dataReceived(b"b AUTHENTICATE CRAM-MD5\r\nc AUTHENTICATE PLAIN !!!\r\n")
        self.assertEqual(
            self.said(),
            b"b NO [CANNOT] Unsupported authentication mechanism\r\nc BAD Invalid base64 response\r\n",
        )
        front.dataReceived(b"d AUTHENTICATE PLAIN " + b64encode(b"no-nuls") + b"\r\ne NOOP\r\n")
        self.assertEqual(self.said(), b"")
        self.reactor.advance(2.0)
        self.assertEqual(
            self.said(), b"d NO [AUTHENTICATIONFAILED] Authentication failed\r\ne OK NOOP completed\r\n"
        )
        self.assertEqual(self.reactor.tcpClients, [])

    def refusedBeforeAnyStore(self, *pieces, tag=b"a", mail=None):
        """
        Send C{pieces} (the client reading between them); see no store
        connected and, after the failure delay, the failed-login answer.

        @return: the refusal's log line.
        """
        self.makeFactory(makeListener(mail) if mail is not None else None)
        front = self.accept()
        with capturedLogs() as events:
            for piece in pieces:
                front.dataReceived(piece)
            self.reactor.advance(2.0)
        said = self.said()
        self.assertTrue(said.endswith(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed\r\n"), said)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(front.failures, 1)
        [line] = [text for text in map(formatEvent, events) if "refused before any store" in text]
        return line

    def test_nulInUserLiteralPlus(self):
        line = self.refusedBeforeAnyStore(b"a LOGIN {7+}\r\nalice\0x secret\r\n")
        self.assertEqual(
            "imap login of alice\\x00x from 192.0.2.7:40000 (listener toy) refused before any store: "
            "the user name contains a control character",
            line,
        )

    def test_nulInUserLiteral(self):
        self.refusedBeforeAnyStore(b"a LOGIN {7}\r\n", b"alice\0x {6}\r\n", b"secret\r\n")

    def test_controlInUserQuoted(self):
        self.refusedBeforeAnyStore(b'a LOGIN "alice\x01x" secret\r\n')
        self.refusedBeforeAnyStore(b'a LOGIN "alice\x7f" secret\r\n')
        self.refusedBeforeAnyStore(b'a LOGIN {7+}\r\nalice\xc2\x85 secret\r\n')

    def test_controlInUserAtom(self):
        """
        An atom cannot hold a control character: the command is refused as
        a syntax error, and no store is asked.
        """
        for line in (b"a LOGIN alice\0x secret\r\n", b"a LOGIN alice\x01x secret\r\n"):
            self.makeFactory()
            front = self.accept()
            front.dataReceived(line)
            self.assertEqual(self.said(), b"a BAD invalid characters\r\n")
            self.assertEqual(self.reactor.tcpClients, [])

    def test_nulInUserQuoted(self):
        self.makeFactory()
        front = self.accept()
        front.dataReceived(b'a LOGIN "alice\0x" secret\r\n')
        self.assertEqual(self.said(), b"a BAD NUL in quoted string\r\n")
        self.assertEqual(self.reactor.tcpClients, [])

    def test_controlInSASL(self):
        """
        The decoded authcid and authzid of AUTHENTICATE PLAIN, with SASL-IR
        or after the continuation.
        """
        self.refusedBeforeAnyStore(b"a AUTHENTICATE PLAIN " + b64encode(b"\0alice\x01x\0secret") + b"\r\n")
        self.refusedBeforeAnyStore(b"a AUTHENTICATE PLAIN\r\n", b64encode(b"bo\x1bb\0alice\0secret") + b"\r\n")

    def test_nulInPassword(self):
        line = self.refusedBeforeAnyStore(b"a LOGIN alice {7+}\r\nsec\0ret\r\n")
        self.assertIn("the password contains a NUL", line)
        self.assertNotIn("sec", line.partition("alice")[2])

    def test_userTooLong(self):
        """
        A user name over limits.user never reaches a store; one at the
        limit does.
        """
        line = self.refusedBeforeAnyStore(b"a LOGIN " + b"x" * 257 + b" secret\r\n")
        self.assertIn("the user name is 257 bytes long, over limits.user (256)", line)
        self.refusedBeforeAnyStore(
            b"a LOGIN {40+}\r\n" + b"y" * 40 + b" secret\r\n", mail=dict(limits=MailLimits(user=32))
        )
        self.makeFactory()
        front = self.accept()
        front.dataReceived(b"a LOGIN " + b"x" * 256 + b" secret\r\n")
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_idControlCharacters(self):
        self.makeFactory()
        front = self.accept()
        front.dataReceived(b'i ID ("name" {5+}\r\nmu\0tt)\r\nj ID ("na\x01me" "mutt")\r\nk ID ("name" "mu\x7ftt")\r\n')
        bad = b" BAD ID fields and values may not contain control characters\r\n"
        self.assertEqual(self.said(), b"i" + bad + b"j" + bad + b"k" + bad)
        self.assertIsNone(front.clientID)


class IMAPDialogTests(IMAPFrontTests):
    """
    The login replayed to scripted servers.
    """

    def login(self, command=b"a LOGIN alice secret\r\n", greeting=GREETING, **poolOptions):
        self.makeFactory(pools={"store": makePool(count=1, retries=0, **poolOptions)})
        front = self.accept()
        front.dataReceived(command)
        dialog, server = self.backend(greeting)
        return front, dialog, server

    def test_accepted(self):
        """
        The client gets the server's tagged OK (with its capabilities)
        under its own tag, then bytes are relayed; the log line has the
        user and no password.
        """
        with capturedLogs() as events:
            front, dialog, server = self.login(b"x1 LOGIN alice s3cr3t-pw\r\nx2 SELECT INBOX\r\n")
            self.assertEqual(server.value(), b"lbp1 LOGIN alice s3cr3t-pw\r\n")
            dialog.dataReceived(b"lbp1 OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in\r\n")
            self.assertEqual(self.said(), b"x1 OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in\r\n")
            self.assertEqual(server.value(), b"lbp1 LOGIN alice s3cr3t-pw\r\nx2 SELECT INBOX\r\n")
            dialog.dataReceived(b"* 3 EXISTS\r\n")
            self.assertEqual(self.said(), b"* 3 EXISTS\r\n")
            front.connectionLost(DONE)
            dialog.connectionLost(DONE)
        [line] = [formatEvent(e) for e in events if e.get("log_format") == SESSION_LINE]
        self.assertIn("imap 192.0.2.7:40000 toy -> store/s0 user=alice tls=none", line)
        self.assertIn("result=ok", line)
        everything = repr(events)
        self.assertNotIn("s3cr3t", everything)

    def test_literalsNeverLogged(self):
        with capturedLogs() as events:
            front, dialog, server = self.login(b"a LOGIN {5+}\r\nalice {11+}\r\nhidden-word\r\n")
            dialog.dataReceived(b"lbp1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
            self.reactor.advance(2.0)
            front.connectionLost(DONE)
        self.assertNotIn("hidden-word", repr(events))
        self.assertEqual(self.said(), b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")

    def test_refusedThenRetry(self):
        """
        A NO reaches the client under its tag after the delay; the next
        attempt uses a new server connection.
        """
        front, dialog, server = self.login()
        dialog.dataReceived(b"lbp1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        self.assertTrue(server.disconnected)
        self.assertEqual(self.said(), b"")
        self.reactor.advance(2.0)
        self.assertEqual(self.said(), b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        front.dataReceived(b"b LOGIN alice right\r\n")
        self.assertEqual(len(self.reactor.tcpClients), 2)
        dialog, server = self.backend()
        dialog.dataReceived(b"lbp1 OK Logged in\r\n")
        self.assertEqual(self.said(), b"b OK Logged in\r\n")

    def test_quotedWithoutLiteralPlus(self):
        front, dialog, server = self.login(
            b'a LOGIN alice "two words"\r\n', b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n"
        )
        self.assertEqual(server.value(), b'lbp1 LOGIN alice "two words"\r\n')

    def test_literalPlusToServer(self):
        front, dialog, server = self.login(b'a LOGIN alice "two words"\r\n')
        self.assertEqual(server.value(), b"lbp1 LOGIN alice {9+}\r\ntwo words\r\n")

    def test_synchronizingLiteralsToServer(self):
        front, dialog, server = self.login(
            b"a LOGIN {6+}\r\nj\xc3\xb6rg! {2+}\r\n\r\n\r\n", b"* OK [CAPABILITY IMAP4rev1] hi\r\n"
        )
        self.assertEqual(server.value(), b"lbp1 LOGIN {6}\r\n")
        dialog.dataReceived(b"+ go\r\n")
        self.assertEqual(server.value(), b"lbp1 LOGIN {6}\r\nj\xc3\xb6rg! {2}\r\n")
        dialog.dataReceived(b"+ go\r\n")
        self.assertTrue(server.value().endswith(b"! {2}\r\n\r\n\r\n"))
        dialog.dataReceived(b"lbp1 OK done\r\n")
        self.assertEqual(self.said(), b"a OK done\r\n")

    def test_serverRefusesLiteral(self):
        front, dialog, server = self.login(b"a LOGIN alice {2+}\r\n\r\n\r\n", b"* OK [CAPABILITY IMAP4rev1] hi\r\n")
        dialog.dataReceived(b"lbp1 BAD no literals here\r\n")
        self.reactor.advance(2.0)
        self.assertEqual(self.said(), b"a BAD no literals here\r\n")

    def test_plainWithoutSASLIR(self):
        response = b64encode(b"\0alice\0secret")
        front, dialog, server = self.login(
            b"a AUTHENTICATE PLAIN " + response + b"\r\n", b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n"
        )
        self.assertEqual(server.value(), b"lbp1 AUTHENTICATE PLAIN\r\n")
        dialog.dataReceived(b"+ \r\n")
        self.assertEqual(server.value(), b"lbp1 AUTHENTICATE PLAIN\r\n" + response + b"\r\n")

    def test_capabilityAsked(self):
        """
        Without capabilities in the greeting the dialog asks; untagged
        responses before the login answer are not passed on, those with
        it are.
        """
        front, dialog, server = self.login(greeting=b"* OK hi\r\n")
        self.assertEqual(server.value(), b"lbp1 CAPABILITY\r\n")
        server.clear()
        dialog.dataReceived(b"* CAPABILITY IMAP4rev1 LITERAL+\r\nlbp1 OK done\r\n")
        self.assertEqual(server.value(), b"lbp2 LOGIN alice secret\r\n")
        dialog.dataReceived(b"* CAPABILITY IMAP4rev1 IDLE\r\nlbp2 OK Logged in\r\n* 1 EXISTS\r\n")
        self.assertEqual(self.said(), b"* CAPABILITY IMAP4rev1 IDLE\r\na OK Logged in\r\n* 1 EXISTS\r\n")

    def test_idWithClientAddress(self):
        """
        client_address = "id": ID with x-originating-ip/port and the
        client's own ID pairs, pipelined with the login; the ID answer
        is not passed on.
        """
        self.makeFactory(pools={"store": makePool(count=1, retries=0, clientAddress="id")})
        front = self.accept()
        front.dataReceived(b'i ID ("name" "mutt" "x-originating-ip" "6.6.6.6")\r\na LOGIN alice secret\r\n')
        self.said()
        dialog, server = self.backend()
        self.assertEqual(
            server.value(),
            b'lbp1 ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "40000" "name" "mutt")\r\n'
            b"lbp2 LOGIN alice secret\r\n",
        )
        dialog.dataReceived(b'* ID ("name" "Dovecot")\r\nlbp1 OK ID done\r\nlbp2 OK Logged in\r\n')
        self.assertEqual(self.said(), b"a OK Logged in\r\n")

    def test_serverStartTLS(self):
        pool = makePool(count=1, retries=0, tls=BackendTLSConfig(starttls=True))
        pool.tls = FakeBackendTLS()
        self.makeFactory(pools={"store": pool})
        front = self.accept()
        front.dataReceived(b"a LOGIN alice secret\r\n")
        dialog, server = self.backend(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] hi\r\n")
        self.assertEqual(server.value(), b"lbp1 STARTTLS\r\n")
        dialog.dataReceived(b"lbp1 OK Begin TLS\r\n")
        self.assertEqual(server.tlsStarted, ("creator", "s0"))
        self.assertTrue(server.value().endswith(b"lbp2 CAPABILITY\r\n"))
        dialog.dataReceived(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nlbp2 OK\r\n")
        self.assertTrue(server.value().endswith(b"lbp3 LOGIN alice secret\r\n"))
        dialog.dataReceived(b"lbp3 OK in\r\n")
        self.assertEqual(self.said(), b"a OK in\r\n")
        self.assertEqual(dialog.tls, "starttls")

    def test_serverStartTLSInjection(self):
        pool = makePool(count=1, retries=0, tls=BackendTLSConfig(starttls=True))
        pool.tls = FakeBackendTLS()
        self.makeFactory(pools={"store": pool})
        front = self.accept()
        front.dataReceived(b"a LOGIN alice secret\r\n")
        dialog, server = self.backend(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n")
        dialog.dataReceived(b"lbp1 OK Begin TLS\r\n* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] evil\r\n")
        self.assertIsNone(server.tlsStarted)
        self.assertTrue(server.disconnected)
        self.assertEqual(self.said(), b"a NO [UNAVAILABLE] Mail store temporarily unavailable, try again later\r\n")

    def test_serverWithoutStartTLS(self):
        pool = makePool(count=1, retries=0, tls=BackendTLSConfig(starttls=True))
        pool.tls = FakeBackendTLS()
        self.makeFactory(pools={"store": pool})
        front = self.accept()
        front.dataReceived(b"a LOGIN alice secret\r\n")
        dialog, server = self.backend(b"* OK [CAPABILITY IMAP4rev1] hi\r\n")
        self.assertEqual(server.value(), b"")
        self.assertIn(b"[UNAVAILABLE]", self.said())

    def test_badGreeting(self):
        front, dialog, server = self.login(greeting=b"* BYE go away\r\n")
        self.assertIn(b"a NO [UNAVAILABLE]", self.said())

    def test_serverLiteralInResponse(self):
        front, dialog, server = self.login()
        dialog.dataReceived(b"* ID (\"name\" {3}\r\nabc)\r\nlbp1 OK in\r\n")
        self.assertEqual(self.said(), b'* ID ("name" {3}\r\nabc)\r\na OK in\r\n')

    def test_serverLostAfterLogin(self):
        front, dialog, server = self.login()
        dialog.connectionLost(DONE)
        self.assertIn(b"a NO [UNAVAILABLE]", self.said())
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_serverSaysBye(self):
        """
        The BYE a server sent before closing is in the log line.
        """
        front, dialog, server = self.login()
        with capturedLogs() as events:
            dialog.dataReceived(b"* BYE Input buffer full, aborting\r\n")
            dialog.connectionLost(DONE)
        self.assertIn(b"a NO [UNAVAILABLE]", self.said())
        self.assertIn(
            "connection lost: Connection was closed cleanly (the server said: * BYE Input buffer full, aborting)",
            "".join(formatEvent(e) for e in events),
        )

    def test_hugeLiteralBeforeTheAnswer(self):
        """
        A literal announced before the login's answer that would take the
        held bytes past MAX_HELD ends the dialog at once: lbproxy does not
        wait for (or buffer) it, and the client gets the temporary failure.
        """
        front, dialog, server = self.login()
        with capturedLogs() as events:
            dialog.dataReceived(b"* 1 FETCH (BODY[] {%d}\r\n" % MAX_HELD)
        self.assertTrue(server.disconnecting or server.disconnected)
        dialog.connectionLost(DONE)
        self.assertIn(b"a NO [UNAVAILABLE]", self.said())
        self.assertIn("untagged responses before answering the login", "".join(formatEvent(e) for e in events))

    def test_endlessUntaggedBeforeTheAnswer(self):
        """
        Untagged responses held for the client past MAX_HELD end the dialog.
        """
        front, dialog, server = self.login()
        line = b"* OK " + b"x" * 1000 + b"\r\n"
        for _ in range(MAX_HELD // len(line) + 1):
            dialog.dataReceived(line)
        self.assertTrue(server.disconnecting or server.disconnected)
        dialog.connectionLost(DONE)
        self.assertIn(b"a NO [UNAVAILABLE]", self.said())
        self.assertNotIn(b"xxxx", self.said())


def test_serviceFrontFactory():
    """
    The service builds an IMAP listener's factory with its ServerTLS.
    """
    from lbproxy.service import frontFactory

    serverTLS = FakeServerTLS()
    factory = frontFactory(makeListener(tls=STARTTLS), {"store": makePool()}, MemoryReactorClock(), serverTLS)
    assert isinstance(factory, IMAPProxyFactory)
    assert factory.serverTLS is serverTLS
