"""
Tests for lbproxy.mail.session, lbproxy.mail.sasl and lbproxy.mail.context
in memory, with a toy line protocol standing in for IMAP and POP3: line
and time limits, failed-login delay and cap, placement and redispatch,
the hand-off to the relay (pipelined bytes in order), STARTTLS injection
on both legs, and the session log line.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, ISSLTransport
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides
from zope.interface.verify import verifyObject

from memoryconnections import acceptClient, completeAttempt, refuseAttempt
from lbproxy.config import PoolConfig
from lbproxy.mail.config import MailLimits, MailListenerConfig
from lbproxy.config.tls import BackendTLSConfig, CertificateConfig, ListenerTLSConfig
from lbproxy.interfaces import ISelectionContext
from lbproxy.mail.context import MailFlowContext
from lbproxy.mail.sasl import Credentials, SASLError, decodePlain, encodePlain
from lbproxy.mail.dialog import BackendDialog
from lbproxy.mail.session import (
    MailFrontProtocol,
    MailProxyFactory,
    printable,
)
from lbproxy.core.format import SESSION_LINE
from lbproxy.errors import ConnectFailed
from lbproxy.mail.placement import Placement, homeServer
from lbproxy.core.pool import Pool, Server, ServerState
from lbproxy.selectors.keyhash import KeyHash
from lbproxy.selectors.maglev import Maglev
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin

from test_relay import FakeTCPTransport

PEER = IPv4Address("TCP", "192.0.2.7", 40000)
HOST = IPv4Address("TCP", "198.51.100.1", 143)
DONE = Failure(ConnectionDone())


class TLSFakeTransport(FakeTCPTransport):
    """
    A transport that records C{startTLS} instead of doing it.
    """

    tlsStarted = None

    def startTLS(self, creator):
        self.tlsStarted = creator


class ToyDialog(BackendDialog):
    """
    Server side of the toy protocol: greeting C{OK}, then C{LOGIN u p}
    answered by C{OK} or C{NO}; C{TLS} in the greeting asks for STARTTLS.
    """

    def start(self):
        self.stage = "greeting"

    def lineReceived(self, line):
        if self.stage == "greeting":
            if not line.startswith(b"OK"):
                self.fail("bad greeting")
                return
            self.greetingReceived()
            if line == b"OK TLS":
                self.stage = "tls"
                self.send(b"STARTTLS\r\n")
                return
            self._login()
        elif self.stage == "tls":
            self.startTLS()
            if not self._done:
                self._login()
        elif line.startswith(b"OK"):
            self.accept(b"welcome\r\n")
        else:
            self.refuse(b"denied\r\n")

    def _login(self):
        self.stage = "login"
        self.loginSent = True
        self.send(b"LOGIN " + self.credentials.user + b" " + self.credentials.password + b"\r\n")


class ToyFront(MailFrontProtocol):
    protocolName = "toy"

    def greet(self):
        self.send(b"hello\r\n")

    def lineReceived(self, line):
        if line.startswith(b"LOGIN "):
            _, user, password = line.split(b" ")
            if not self.loginAllowed:
                self.send(b"no-plaintext\r\n")
                return
            self.login(Credentials(user, password))
        elif line == b"STARTTLS" and self.startTLSOffered:
            self.startTLS(b"go\r\n")
        elif line == b"BADLOGIN":
            self.rejectLogin(b"denied-locally\r\n")
        else:
            self.send(b"? " + line + b"\r\n")

    def lineTooLong(self):
        self.send(b"too long\r\n")

    def loginTimedOut(self):
        self.send(b"bye\r\n")

    def makeDialog(self, credentials):
        return ToyDialog(self, credentials)

    def loginUnavailable(self, detail):
        self.send(b"try later\r\n")

    def tooManyFailures(self):
        self.send(b"bye\r\n")

    def failedLoginReply(self):
        return b"refused\r\n"


class ToyFactory(MailProxyFactory):
    protocol = ToyFront


class FakeServerTLS:
    creator = object()


class FakeBackendTLS:
    config = BackendTLSConfig(starttls=True)

    def creatorFor(self, server):
        return ("creator", server.name)


def makeListener(mail=None, tls=None, **kwargs):
    """
    An IMAP listener of pool "store"; C{mail} holds its mail settings.
    """
    return MailListenerConfig(name="toy", bind="tcp:143", pool="store", mode="imap", tls=tls, **(mail or {}), **kwargs)


def makePool(name="store", count=2, retries=2, selector=None, **options):
    servers = [Server(f"s{i}", f"tcp:host=127.0.0.1:port={9001 + i}") for i in range(count)]
    config = PoolConfig(name=name, servers=(), retries=retries, connectTimeout=5.0, **options)
    return Pool(name, servers, selector or SmoothWeightedRoundRobin(), config)


STARTTLS = ListenerTLSConfig(certificates=(CertificateConfig("c.pem", "c.pem"),), starttls=True)


class MailSessionCase(SynchronousTestCase):
    """
    A toy mail front on a memory reactor, and its backend attempts.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()

    def makeFactory(self, listener=None, pools=None, **kwargs):
        self.pools = pools or {"store": makePool()}
        self.factory = ToyFactory(listener or makeListener(), self.pools, self.reactor, **kwargs)
        return self.factory

    def accept(self):
        transport = TLSFakeTransport()
        return acceptClient(self.factory, transport, PEER, HOST), transport

    def backend(self, index=-1):
        return completeAttempt(self.reactor, TLSFakeTransport(), index)

    def refuse(self, index=-1):
        refuseAttempt(self.reactor, index)

    def sessionLines(self, events):
        return [
            formatEvent(e)
            for e in events
            if e.get("log_format") == SESSION_LINE
        ]


class MailSessionTests(MailSessionCase):
    def test_interfaces(self):
        self.makeFactory()
        front, _ = self.accept()
        verifyObject(IHalfCloseableProtocol, front)
        verifyObject(IHalfCloseableProtocol, ToyDialog(front, Credentials(b"u", b"p")))
        verifyObject(ISelectionContext, MailFlowContext(PEER, HOST, "alice"))

    def test_greeting(self):
        self.makeFactory()
        front, client = self.accept()
        self.assertEqual(client.value(), b"hello\r\n")
        front.dataReceived(b"NOOP\r\nNOOP\n")
        self.assertEqual(client.value(), b"hello\r\n? NOOP\r\n? NOOP\r\n")

    def test_lineTooLong(self):
        """
        A line over limits.line, even without its LF yet, gets the
        protocol error and the connection is closed.
        """
        mail = dict(limits=MailLimits(line=512))
        self.makeFactory(makeListener(mail))
        front, client = self.accept()
        front.dataReceived(b"x" * 510 + b"\r\n")
        self.assertFalse(client.disconnecting)
        with capturedLogs() as events:
            front.dataReceived(b"y" * 600)
        self.assertTrue(client.value().endswith(b"too long\r\n"))
        self.assertTrue(client.disconnecting)
        self.assertIn("end=line-too-long", self.sessionLines(events)[0])

    def test_loginTimeout(self):
        self.makeFactory()
        front, client = self.accept()
        with capturedLogs() as events:
            self.reactor.advance(60)
        self.assertTrue(client.value().endswith(b"bye\r\n"))
        self.assertTrue(client.disconnecting)
        self.assertIn("end=login-timeout", self.sessionLines(events)[0])

    def test_handOff(self):
        """
        An accepted login: the client gets the reply, then what the server
        sent after it; bytes the client pipelined after its login reach the
        server after the login, in order; then bytes are relayed.
        """
        self.makeFactory()
        front, client = self.accept()
        front.dataReceived(b"LOGIN alice secret\r\nSELECT inbox\r\n")
        self.assertEqual(client.producerState, "paused")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        dialog, server = self.backend()
        dialog.dataReceived(b"OK ready\r\n")
        self.assertEqual(server.value(), b"LOGIN alice secret\r\n")
        dialog.dataReceived(b"OK logged in\r\n* 1 EXISTS\r\n")
        self.assertEqual(client.value(), b"hello\r\nwelcome\r\n* 1 EXISTS\r\n")
        self.assertEqual(server.value(), b"LOGIN alice secret\r\nSELECT inbox\r\n")
        self.assertEqual(client.producerState, "producing")
        self.assertIs(client.producer, server)
        front.dataReceived(b"IDLE\r\n")
        dialog.dataReceived(b"+ idling\r\n")
        self.assertTrue(server.value().endswith(b"IDLE\r\n"))
        self.assertTrue(client.value().endswith(b"+ idling\r\n"))
        self.assertEqual(self.pools["store"].servers[0].active, 1)
        with capturedLogs() as events:
            front.connectionLost(DONE)
            dialog.connectionLost(DONE)
        [line] = self.sessionLines(events)
        self.assertIn("toy 192.0.2.7:40000 toy -> store/s0 user=alice ", line)
        self.assertIn("result=ok", line)
        self.assertIn("tls=none server_tls=none", line)
        sent = b"LOGIN alice secret\r\nSELECT inbox\r\nIDLE\r\n"
        self.assertIn(f" in={len(sent)} out={len(client.value())} ", line)
        self.assertNotIn("secret", line)
        self.assertEqual(self.pools["store"].servers[0].active, 0)

    def test_userKeyAndUserPools(self):
        """
        The normalised user is the selector's "user" key, and user_pools
        sends listed users to their own pool.
        """
        mail = dict(userDomain="example.com", userPools=(("bob@example.com", "other"),))
        pools = {
            "store": makePool(selector=KeyHash(key="user")),
            "other": makePool("other", count=1),
        }
        self.makeFactory(makeListener(mail), pools)
        picked = set()
        for user in (b"Alice", b"alice@EXAMPLE.com", b"alice@example.com"):
            front, client = self.accept()
            front.dataReceived(b"LOGIN " + user + b" pw\r\n")
            picked.add(self.reactor.tcpClients[-1][1])
        self.assertEqual(len(picked), 1)
        front, client = self.accept()
        front.dataReceived(b"LOGIN BOB pw\r\n")
        self.assertEqual(self.reactor.tcpClients[-1][1], 9001)
        self.assertEqual(front.user, "bob@example.com")
        self.assertIs(self.factory.connectors["other"].pool, pools["other"])

    def test_refusedDelayedAndCapped(self):
        """
        A refused login is answered after the failure delay, pipelined
        commands wait for it, and the cap closes the connection.
        """
        mail = dict(authFailureDelay=2.0, maxAuthFailures=2)
        self.makeFactory(makeListener(mail))
        front, client = self.accept()
        front.dataReceived(b"LOGIN alice wrong\r\nNOOP\r\n")
        dialog, server = self.backend()
        dialog.dataReceived(b"OK ready\r\nNO\r\n")
        self.assertTrue(server.disconnecting or server.disconnected)
        self.assertEqual(client.value(), b"hello\r\n")
        self.reactor.advance(1.9)
        self.assertEqual(client.value(), b"hello\r\n")
        self.reactor.advance(0.1)
        self.assertEqual(client.value(), b"hello\r\ndenied\r\n? NOOP\r\n")
        self.assertEqual(self.pools["store"].servers[0].active, 0)
        with capturedLogs() as events:
            front.dataReceived(b"BADLOGIN\r\n")
            self.reactor.advance(2.0)
        self.assertTrue(client.value().endswith(b"denied-locally\r\nbye\r\n"))
        self.assertTrue(client.disconnecting)
        [line] = self.sessionLines(events)
        self.assertIn("result=failed", line)
        self.assertIn("end=too-many-failures", line)

    def test_serverDownNext(self):
        """
        Replicas: a server refusing connections is skipped for the next; a
        server with a bad greeting too; when the pool's 1 + retries
        attempts, refused or connected, are spent the client gets the
        temporary-failure answer and may go on.
        """
        self.makeFactory(pools={"store": makePool(retries=2, stores="replicas")})
        front, client = self.accept()
        front.dataReceived(b"LOGIN alice pw\r\n")
        self.refuse()
        self.assertEqual(len(self.reactor.tcpClients), 2)
        dialog, server = self.backend()
        dialog.dataReceived(b"garbage\r\n")
        self.assertEqual(len(self.reactor.tcpClients), 3)
        self.refuse()
        self.assertEqual(len(self.reactor.tcpClients), 3)
        self.assertEqual(client.value(), b"hello\r\ntry later\r\n")
        self.assertEqual(front.result, "unavailable")
        front.dataReceived(b"NOOP\r\n")
        self.assertTrue(client.value().endswith(b"? NOOP\r\n"))
        self.assertEqual([s.active for s in self.pools["store"].servers], [0, 0])

    def distinctStores(self, selector=None, retries=2, **options):
        """
        A pool of three distinct stores hashing the user, and alice's
        home among them.
        """
        pool = makePool(count=3, retries=retries, selector=selector or KeyHash(key="user"), **options)
        self.makeFactory(pools={"store": pool})
        home = homeServer(pool, MailFlowContext(PEER, HOST, "alice"))
        self.assertIsNotNone(home)
        return pool, home

    def test_homeIgnoresState(self):
        """
        With every server up a user's home is where the selector picks it;
        it stays there whatever the state of any server.
        """
        for selector in (KeyHash(key="user"), Maglev(key="user", table_size=251)):
            pool = makePool(count=3, selector=selector)
            homes = {}
            for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
                context = MailFlowContext(PEER, HOST, user)
                homes[user] = homeServer(pool, context)
                self.assertIs(pool.pick(context), homes[user])
            self.assertEqual(len(set(homes.values())), 3)
            pool.servers[1].setState(ServerState.DOWN)
            pool.servers[2].active = 1
            pool.servers[2].maxconn = 1
            for user, home in homes.items():
                self.assertIs(homeServer(pool, MailFlowContext(PEER, HOST, user)), home)
        single = makePool(count=1)
        self.assertIs(homeServer(single, MailFlowContext(PEER, HOST, "x")), single.servers[0])

    def test_distinctStoreDown(self):
        """
        A user whose store is down or in maintenance gets the temporary
        failure without any connection attempt, logged with the store, and
        may try again; the other users log in.
        """
        for state in (ServerState.DOWN, ServerState.MAINT):
            pool, home = self.distinctStores()
            home.setState(state)
            front, client = self.accept()
            with capturedLogs() as events:
                front.dataReceived(b"LOGIN alice pw\r\n")
                front.connectionLost(DONE)
            self.assertEqual(self.reactor.tcpClients, [])
            self.assertEqual(client.value(), b"hello\r\ntry later\r\n")
            text = [formatEvent(e) for e in events]
            self.assertIn(
                f"toy login of alice from 192.0.2.7:40000 (listener toy) not placed: its store "
                f"{home.qualifiedName} is {state.value}; no other store holds the mailbox",
                text,
            )
            [line] = self.sessionLines(events)
            self.assertIn(f" -> {home.qualifiedName} user=alice ", line)
            self.assertIn("result=unavailable", line)
            self.assertTrue(line.endswith(f"(its store {home.qualifiedName} is {state.value})"), line)
            other = next(
                user
                for user in ("bob", "carol", "dave", "erin")
                if homeServer(pool, MailFlowContext(PEER, HOST, user)) is not home
            )
            front, client = self.accept()
            front.dataReceived(b"LOGIN " + other.encode() + b" pw\r\n")
            self.assertEqual(len(self.reactor.tcpClients), 1)
            self.reactor.tcpClients.clear()

    def test_distinctConnectFailsRetriesSameStore(self):
        """
        A store refusing connections is tried again, 1 + retries times in
        all, and never another store; then the temporary failure.
        """
        pool, home = self.distinctStores(retries=2)
        port = int(home.address.rpartition("=")[2])
        front, client = self.accept()
        front.dataReceived(b"LOGIN alice pw\r\n")
        for attempt in range(3):
            self.assertEqual(len(self.reactor.tcpClients), attempt + 1)
            self.assertEqual(self.reactor.tcpClients[-1][1], port)
            self.refuse()
        self.assertEqual(len(self.reactor.tcpClients), 3)
        self.assertEqual(client.value(), b"hello\r\ntry later\r\n")
        self.assertEqual([s.active for s in pool.servers], [0, 0, 0])

    def test_distinctUnusableStore(self):
        """
        A store that connects but cannot be used (a bad greeting) is not
        replaced by another.
        """
        pool, home = self.distinctStores()
        front, client = self.accept()
        front.dataReceived(b"LOGIN alice pw\r\n")
        dialog, server = self.backend()
        self.assertIs(dialog.server, home)
        dialog.dataReceived(b"garbage\r\n")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(client.value(), b"hello\r\ntry later\r\n")

    def test_distinctDrainingOrFullStore(self):
        """
        A draining store still takes its users; one at its maxconn answers
        them with the temporary failure.
        """
        pool, home = self.distinctStores()
        home.setState(ServerState.DRAIN)
        front, client = self.accept()
        front.dataReceived(b"LOGIN alice pw\r\n")
        dialog, server = self.backend()
        self.assertIs(dialog.server, home)
        home.maxconn = 1
        front, client = self.accept()
        front.dataReceived(b"LOGIN alice pw\r\n")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(client.value(), b"hello\r\ntry later\r\n")
        self.assertIn(f"its store {home.qualifiedName} is at its maxconn of 1", front.lastDetail)

    def test_distinctRetriesOnlyStoreFailures(self):
        """
        The user's store is tried again after its own connection
        failures; a failure of another kind (a subclass of ConnectFailed,
        such as lbproxy's own resource limits) is not retried.
        """

        class OwnLimit(ConnectFailed):
            pass

        pool, home = self.distinctStores(retries=2)
        placement = Placement(pool, MailFlowContext(PEER, HOST, "alice"), Credentials(b"alice", b"pw"))
        self.assertIs(placement.home, home)
        self.assertTrue(placement.connectFailed(ConnectFailed("refused", attempts=1)))
        self.assertFalse(placement.connectFailed(OwnLimit("out of descriptors", attempts=1)))
        self.assertFalse(Placement(pool, placement.context, placement.credentials).connectFailed(OwnLimit()))

    def test_replicasStoreDown(self):
        """
        Replicas: a user whose server is down goes to another.
        """
        pool, home = self.distinctStores(stores="replicas")
        home.setState(ServerState.DOWN)
        front, client = self.accept()
        front.dataReceived(b"LOGIN alice pw\r\n")
        dialog, server = self.backend()
        self.assertIsNot(dialog.server, home)

    def test_greetingTimeout(self):
        self.makeFactory(pools={"store": makePool(count=1, retries=0)})
        front, client = self.accept()
        front.dataReceived(b"LOGIN alice pw\r\n")
        dialog, server = self.backend()
        self.reactor.advance(5.0)
        self.assertTrue(server.disconnected)
        self.assertEqual(client.value(), b"hello\r\ntry later\r\n")

    def test_clientLeavesWhilePlacing(self):
        self.makeFactory()
        front, client = self.accept()
        front.dataReceived(b"LOGIN alice pw\r\n")
        dialog, server = self.backend()
        front.connectionLost(DONE)
        self.assertTrue(server.disconnected)
        self.assertEqual(self.pools["store"].servers[0].active, 0)
        self.assertEqual(self.factory.listener.sessions, set())

    def test_tlsRequired(self):
        mail = dict(tlsRequired=True)
        self.makeFactory(makeListener(mail, tls=STARTTLS), serverTLS=FakeServerTLS())
        front, client = self.accept()
        self.assertFalse(front.loginAllowed)
        self.assertTrue(front.startTLSOffered)
        front.dataReceived(b"LOGIN alice pw\r\n")
        self.assertTrue(client.value().endswith(b"no-plaintext\r\n"))
        front.dataReceived(b"STARTTLS\r\n")
        self.assertIs(client.tlsStarted, FakeServerTLS.creator)
        self.assertTrue(client.value().endswith(b"go\r\n"))
        self.assertTrue(front.loginAllowed)
        self.assertFalse(front.startTLSOffered)

    def test_startTLSInjection(self):
        """
        Bytes pipelined after STARTTLS are discarded and the connection is
        closed without switching to TLS (CVE-2011-0411).
        """
        self.makeFactory(makeListener(tls=STARTTLS), serverTLS=FakeServerTLS())
        front, client = self.accept()
        with capturedLogs() as events:
            front.dataReceived(b"STARTTLS\r\nLOGIN alice pw\r\n")
        self.assertIsNone(client.tlsStarted)
        self.assertEqual(client.value(), b"hello\r\n")
        self.assertTrue(client.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertIn("end=starttls-injection", self.sessionLines(events)[0])

    def startTLSDialog(self):
        """
        A login on a store of a pool upgrading with STARTTLS, up to the
        proxy's STARTTLS command.
        """
        pools = {"store": makePool(count=1, retries=0)}
        pools["store"].tls = FakeBackendTLS()
        self.makeFactory(pools=pools)
        front, client = self.accept()
        front.dataReceived(b"LOGIN alice pw\r\n")
        dialog, server = self.backend()
        dialog.dataReceived(b"OK TLS\r\n")
        return front, client, dialog, server

    def test_backendStartTLS(self):
        front, client, dialog, server = self.startTLSDialog()
        self.assertEqual(server.value(), b"STARTTLS\r\n")
        dialog.dataReceived(b"OK go\r\n")
        self.assertEqual(server.tlsStarted, ("creator", "s0"))
        self.assertEqual(dialog.tls, "starttls")
        self.assertTrue(server.value().endswith(b"LOGIN alice pw\r\n"))

    def test_backendStartTLSExtraBytes(self):
        """
        A server sending bytes after its STARTTLS answer, before TLS, is
        treated as an attack: the dialog fails, nothing is sent.
        """
        front, client, dialog, server = self.startTLSDialog()
        dialog.dataReceived(b"OK go\r\nOK injected\r\n")
        self.assertIsNone(server.tlsStarted)
        self.assertTrue(server.disconnected)
        self.assertEqual(server.value(), b"STARTTLS\r\n")
        self.assertEqual(client.value(), b"hello\r\ntry later\r\n")

    def test_backendLostAfterStartTLS(self):
        """
        A server closing the connection after the STARTTLS handshake
        succeeded is logged as a lost connection; during the handshake,
        as a TLS failure.
        """
        for handshook, detail in (
            (True, "connection lost: Connection was closed cleanly"),
            (False, "connection closed by server during the TLS handshake"),
        ):
            front, client, dialog, server = self.startTLSDialog()
            dialog.dataReceived(b"OK go\r\n")
            if handshook:
                dialog.handshakeCompleted()
            with capturedLogs() as events:
                dialog.connectionLost(DONE)
                front.connectionLost(DONE)
            [line] = self.sessionLines(events)
            self.assertTrue(line.endswith(f" end=client-closed ({detail})"), line)

    def test_maxconn(self):
        self.makeFactory(makeListener(maxconn=1))
        self.accept()
        front, client = self.accept()
        self.assertTrue(client.disconnecting)
        self.assertEqual(self.factory.listener.counters.refused, 1)

    def test_repliesUnreadStopReading(self):
        """
        A client writing commands without reading the answers: once more
        than the transport's buffer of replies waits, lbproxy stops reading
        and answering (what it read stays in its line buffer), and goes on
        when the client has read them.
        """
        self.makeFactory()
        front, client = self.accept()
        self.assertIs(client.producer, front._replies)
        self.assertTrue(client.streaming)
        flood = b"NOOP\r\n" * 100_000
        front.dataReceived(flood)
        reply = len(b"? NOOP\r\n")
        self.assertEqual(client.producerState, "paused")
        self.assertLessEqual(client.pending, client.bufferSize + reply)
        answered = client.value().count(b"? NOOP\r\n")
        self.assertEqual(len(front._buffer), len(flood) - answered * len(b"NOOP\r\n"))
        front.dataReceived(b"NOOP\r\n")
        self.assertEqual(client.value().count(b"? NOOP\r\n"), answered)
        rounds = 0
        while client.producerState == "paused":
            client.drain()
            self.assertLessEqual(client.pending, client.bufferSize + reply)
            rounds += 1
        self.assertGreater(rounds, 5)
        self.assertEqual(front._buffer, b"")
        self.assertEqual(client.value().count(b"? NOOP\r\n"), 100_001)

    def test_repliesUnreadWhileHolding(self):
        """
        Reading stays paused until both the login in progress and the
        unread replies allow it.
        """
        self.makeFactory()
        front, client = self.accept()
        front.dataReceived(b"LOGIN alice pw\r\nNOOP\r\n")
        client.write(b"x" * client.bufferSize)
        dialog, server = self.backend()
        dialog.dataReceived(b"OK\r\nNO\r\n")
        self.reactor.advance(2.0)
        self.assertTrue(client.value().endswith(b"denied\r\n"))
        self.assertEqual(client.producerState, "paused")
        client.drain()
        self.assertEqual(client.producerState, "producing")
        self.assertTrue(client.value().endswith(b"denied\r\n? NOOP\r\n"))

    def test_repliesUnreadUntilLoginTimeout(self):
        """
        A client that leaves its replies unread until the login timeout is
        dropped at once (closing after what is queued would wait forever),
        with one log line saying so.
        """
        self.makeFactory()
        front, client = self.accept()
        self.reactor.advance(20)
        front.dataReceived(b"NOOP\r\n" * 20_000)
        with capturedLogs() as events:
            self.reactor.advance(40)
        self.assertTrue(client.disconnected)
        [line] = self.sessionLines(events)
        self.assertIn("end=login-timeout (no login within 60s; the client left its replies unread for 40.0s)", line)

    def test_repliesProducerHandedToRelay(self):
        """
        At the hand-off the session's producer gives way to the relay's.
        """
        self.makeFactory()
        front, client = self.accept()
        front.dataReceived(b"LOGIN alice pw\r\n")
        dialog, server = self.backend()
        dialog.dataReceived(b"OK\r\nOK\r\n")
        self.assertIs(client.producer, server)
        self.assertFalse(front._replies.registered)

    def test_printable(self):
        self.assertEqual(printable("a b\x00\\"), "a\\x20b\\x00\\\\")
        self.assertEqual(printable("x" * 300, 4), "xxxx...")


class SASLTests(SynchronousTestCase):
    def test_plain(self):
        creds = decodePlain(encodePlain(b"", b"alice", b"s3cret"))
        self.assertEqual((creds.authzid, creds.user, creds.password), (b"", b"alice", b"s3cret"))
        self.assertEqual(creds.mechanism, "PLAIN")
        self.assertNotIn("s3cret", repr(creds))
        self.assertEqual(decodePlain(creds.plainResponse()), creds)

    def test_plainErrors(self):
        for bad in (b"=", b"not base64!", b"YWxpY2U=", encodePlain(b"", b"", b"pw"), b"AGFsaWNlAP8="):
            self.assertRaises(SASLError, decodePlain, bad)

    def test_context(self):
        context = MailFlowContext(PEER, HOST, "alice@example.com")
        self.assertEqual(context.key("user"), b"alice@example.com")
        self.assertEqual(context.key("src"), bytes([192, 0, 2, 7]))


class RelayUnderStartTLSTests(MailSessionCase):
    """
    The relay with a client transport switched by startTLS: no half-close
    under the TLS layer, and nothing unregistered from it once it is lost.
    """

    def relaying(self):
        self.makeFactory()
        front, client = self.accept()
        front.dataReceived(b"LOGIN alice pw\r\n")
        dialog, server = self.backend()
        dialog.dataReceived(b"OK\r\nOK\r\n")
        self.assertIsNotNone(front.relay)
        return front, client, dialog, server

    def test_serverCloseClosesTLSClient(self):
        front, client, dialog, server = self.relaying()
        # What startTLS does to a TCP transport.
        alsoProvides(client, ISSLTransport)
        dialog.readConnectionLost()
        self.assertTrue(client.disconnecting)
        self.assertFalse(client.writeDisconnecting)

    def test_serverClosePlainClientHalfClosed(self):
        front, client, dialog, server = self.relaying()
        dialog.readConnectionLost()
        self.assertTrue(client.writeDisconnecting)
        self.assertFalse(client.disconnecting)

    def test_lostClientNotUnregistered(self):
        front, client, dialog, server = self.relaying()

        def gone():
            raise AttributeError("protocol")

        client.unregisterProducer = gone
        front.connectionLost(DONE)
        dialog.connectionLost(DONE)
        self.assertTrue(front.relay.finished.called)
