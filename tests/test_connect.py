"""
Tests for lbproxy.core.connect: placing a flow on a server, with connect
timeouts, retries, redispatch, leases and cancellation, on a
MemoryReactorClock.
"""

import errno

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectBindError, ConnectionRefusedError
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject
from twisted.internet.defer import CancelledError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.config import PoolConfig
from lbproxy.core.connect import BackendConnection, BackendConnector, Lease
from lbproxy.core.context import FlowContext
from lbproxy._twisted.directconnect import IConnectAttempt
from lbproxy.errors import ConnectFailed, LocalLimitReached, NoServerAvailable, QueueTimeout
from lbproxy.core.pool import Pool, Server, ServerState
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin

from memoryconnections import DirectAttemptRecord, DirectMemoryReactor, refuseAttempt


CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)
LOCAL = IPv4Address("TCP", "127.0.0.1", 8080)


def makePool(count=2, retries=2, connectTimeout=5.0, queueTimeout=5.0, maxQueue=0, **serverOptions):
    servers = [
        Server(f"s{i}", f"tcp:host=127.0.0.1:port={8001 + i}", **serverOptions)
        for i in range(count)
    ]
    options = PoolConfig(
        name="web",
        servers=(),
        retries=retries,
        connectTimeout=connectTimeout,
        queueTimeout=queueTimeout,
        maxQueue=maxQueue,
    )
    return Pool("web", servers, SmoothWeightedRoundRobin(), options)


class ConnectorTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()

    def connector(self, pool):
        return BackendConnector(pool, self.reactor)

    def connect(self, connector, context=None):
        context = context or FlowContext(CLIENT, LOCAL)
        return connector.connect(context, Factory.forProtocol(Protocol)), context

    def attempt(self, index):
        """
        Host, port and wrapping factory of the index-th connection attempt.
        """
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[index]
        return host, port, factory

    def succeed(self, index):
        host, port, factory = self.attempt(index)
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        protocol.makeConnection(StringTransport())
        return protocol

    def refuse(self, index):
        refuseAttempt(self.reactor, index)

    def test_proxyHeaderFirst(self):
        """
        With send_proxy, the connector writes the PROXY header for the
        context's addresses before the caller gets the connection, so it
        precedes every byte of the caller's; after a failed attempt, the
        next server gets it too.
        """
        pool = makePool()
        pool.options = PoolConfig(name="web", servers=(), sendProxy="v1")
        d, context = self.connect(self.connector(pool))
        self.refuse(0)
        protocol = self.succeed(1)
        header = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 8080\r\n"
        self.assertEqual(protocol.transport.value(), header)
        self.successResultOf(d)

    def test_noProxyHeaderByDefault(self):
        pool = makePool()
        d, context = self.connect(self.connector(pool))
        protocol = self.succeed(0)
        self.assertEqual(protocol.transport.value(), b"")

    def test_connects(self):
        """
        The first server picked is connected to; the result names it,
        carries the protocol, a held lease and the connect time.
        """
        pool = makePool()
        d, context = self.connect(self.connector(pool))
        self.assertEqual(self.attempt(0)[:2], ("127.0.0.1", 8001))
        s0 = pool.server("s0")
        self.assertEqual(s0.active, 1)
        self.assertNoResult(d)
        self.reactor.advance(0.25)
        self.succeed(0)
        connection = self.successResultOf(d)
        self.assertIsInstance(connection, BackendConnection)
        self.assertIs(connection.server, s0)
        self.assertIsInstance(connection.protocol, Protocol)
        self.assertEqual(connection.connectTime, 0.25)
        self.assertEqual(connection.attempts, 1)
        self.assertFalse(connection.lease.released)
        server, protocol = connection
        self.assertIs(server, s0)
        self.assertIs(protocol, connection.protocol)
        self.assertEqual(s0.active, 1)
        connection.release()
        self.assertEqual(s0.active, 0)

    def test_releaseExactlyOnce(self):
        server = Server("a", "tcp:host=127.0.0.1:port=1")
        lease = Lease(server)
        self.assertEqual((server.active, server.totalConnections), (1, 1))
        lease.release()
        lease.release()
        self.assertEqual(server.active, 0)
        self.assertTrue(lease.released)

    def test_retriesOnAnotherServer(self):
        """
        A refused connection is reported to the server, the server is
        excluded, and the next attempt goes to another server.
        """
        pool = makePool()
        d, context = self.connect(self.connector(pool))
        s0, s1 = pool.servers
        self.refuse(0)
        self.assertEqual(s0.connectFailures, 1)
        self.assertEqual(s0.active, 0)
        self.assertIn(s0, context.excluded)
        self.assertEqual(self.attempt(1)[:2], ("127.0.0.1", 8002))
        self.assertEqual(s1.active, 1)
        self.succeed(1)
        connection = self.successResultOf(d)
        self.assertIs(connection.server, s1)
        self.assertEqual(connection.attempts, 2)
        self.assertEqual(s1.connectFailures, 0)

    def test_successResetsFailures(self):
        pool = makePool(count=1)
        s0 = pool.servers[0]
        s0.connectFailures = 2
        d, context = self.connect(self.connector(pool))
        self.succeed(0)
        self.successResultOf(d)
        self.assertEqual(s0.connectFailures, 0)

    def test_attemptsExhausted(self):
        """
        After 1 + retries failed attempts the result is ConnectFailed with
        the last reason; every server is released.
        """
        pool = makePool(count=2, retries=1)
        d, context = self.connect(self.connector(pool))
        self.refuse(0)
        self.refuse(1)
        failure = self.failureResultOf(d, ConnectFailed)
        self.assertEqual(failure.value.attempts, 2)
        self.assertIn("refused", failure.value.reason)
        self.assertIn("refused", str(failure.value))
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual([s.active for s in pool.servers], [0, 0])

    def test_attemptBudget(self):
        """
        A caller's C{attempts} replaces the pool's 1 + retries: the budget
        left of a flow that already spent some attempts.
        """
        pool = makePool(count=2, retries=3)
        connector = self.connector(pool)
        d = connector.connect(FlowContext(CLIENT, LOCAL), Factory.forProtocol(Protocol), attempts=1)
        self.refuse(0)
        failure = self.failureResultOf(d, ConnectFailed)
        self.assertEqual(failure.value.attempts, 1)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual([s.active for s in pool.servers], [0, 0])

    def test_noRetries(self):
        pool = makePool(count=2, retries=0)
        d, context = self.connect(self.connector(pool))
        self.refuse(0)
        self.failureResultOf(d, ConnectFailed)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_redispatchToSameServers(self):
        """
        With every server tried and retries left, the exclusions are
        cleared and the same servers are tried again.
        """
        pool = makePool(count=1, retries=2)
        d, context = self.connect(self.connector(pool))
        self.refuse(0)
        self.refuse(1)
        self.assertEqual(
            [c[1] for c in self.reactor.tcpClients], [8001, 8001, 8001]
        )
        self.succeed(2)
        connection = self.successResultOf(d)
        self.assertEqual(connection.attempts, 3)
        self.assertEqual(pool.servers[0].active, 1)

    def test_connectTimeout(self):
        """
        An attempt still pending after connectTimeout is cancelled and
        counts as a failure of that server; the next server is tried.
        """
        pool = makePool(connectTimeout=3.0)
        d, context = self.connect(self.connector(pool))
        self.reactor.advance(2.9)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(0.1)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        s0 = pool.servers[0]
        self.assertEqual(s0.connectFailures, 1)
        self.assertEqual(s0.active, 0)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.reactor.advance(3.0)
        self.reactor.advance(3.0)
        failure = self.failureResultOf(d, ConnectFailed)
        self.assertEqual(failure.value.reason, "connect timeout after 3s")
        self.assertEqual(failure.value.attempts, 3)
        self.assertEqual([s.active for s in pool.servers], [0, 0])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_timerCancelledOnSuccess(self):
        pool = makePool()
        d, context = self.connect(self.connector(pool))
        self.succeed(0)
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_noServerAvailable(self):
        pool = makePool()
        for server in pool.servers:
            server.setState(ServerState.DOWN)
        d, context = self.connect(self.connector(pool))
        self.failureResultOf(d, NoServerAvailable)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_noServerLeftAfterFailures(self):
        """
        When the servers tried go down meanwhile (passive checks), the
        result is ConnectFailed with the last reason rather than
        NoServerAvailable.
        """
        pool = makePool(count=1, retries=3)
        pool.servers[0].passiveFall = 1
        d, context = self.connect(self.connector(pool))
        self.refuse(0)
        self.assertIs(pool.servers[0].state, ServerState.DOWN)
        failure = self.failureResultOf(d, ConnectFailed)
        self.assertEqual(failure.value.attempts, 1)
        self.assertIn("no server left", str(failure.value))

    def test_passiveFailureMarking(self):
        """
        Consecutive failed connections mark a server down (passive health
        checking), through Server.connectFailed.
        """
        pool = makePool(count=2, retries=0)
        for server in pool.servers:
            server.passiveFall = 2
        s0, s1 = pool.servers
        connector = self.connector(pool)
        index = 0
        for _ in range(4):
            d, context = self.connect(connector)
            self.refuse(index)
            index += 1
            self.failureResultOf(d, ConnectFailed)
        self.assertIs(s0.state, ServerState.DOWN)
        self.assertIs(s1.state, ServerState.DOWN)

    def test_cancelWhileConnecting(self):
        """
        Cancelling the result (the client went away) stops the attempt,
        releases the server and does not count against it.
        """
        pool = makePool()
        d, context = self.connect(self.connector(pool))
        s0 = pool.servers[0]
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(s0.active, 0)
        self.assertEqual(s0.connectFailures, 0)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_cancelAfterConnectedDoesNothing(self):
        pool = makePool()
        d, context = self.connect(self.connector(pool))
        self.succeed(0)
        connection = self.successResultOf(d)
        d.cancel()
        self.assertEqual(connection.server.active, 1)

    def test_serverMaxconn(self):
        """
        A server at its maxconn is not picked; with all full and no queue
        (timeouts.queue = 0), no server is available. Releasing a lease
        makes room again.
        """
        pool = makePool(count=2, maxconn=1, queueTimeout=0)
        connector = self.connector(pool)
        first, _ = self.connect(connector)
        second, _ = self.connect(connector)
        self.assertEqual([c[1] for c in self.reactor.tcpClients], [8001, 8002])
        third, _ = self.connect(connector)
        self.failureResultOf(third, NoServerAvailable)
        self.succeed(0)
        self.successResultOf(first).release()
        fourth, _ = self.connect(connector)
        self.assertEqual(self.reactor.tcpClients[-1][1], 8001)

    # The queue.

    def test_queuedUntilASlotFrees(self):
        """
        With every server full the flow waits; the slot a finished flow
        frees is taken for it at once and its attempt starts on the next
        turn of the reactor. The time queued is reported apart from the
        connect time.
        """
        pool = makePool(count=1, maxconn=1)
        connector = self.connector(pool)
        first, _ = self.connect(connector)
        self.succeed(0)
        waiting, _ = self.connect(connector)
        self.assertNoResult(waiting)
        self.assertEqual((pool.queued, len(self.reactor.tcpClients)), (1, 1))
        self.reactor.advance(1.5)
        self.successResultOf(first).release()
        server = pool.servers[0]
        self.assertEqual((pool.queued, server.active), (0, 1))
        # A newer flow does not get the slot the queued one was given.
        self.assertFalse(pool.pick(FlowContext(CLIENT, LOCAL)))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.reactor.advance(0.25)
        self.succeed(1)
        connection = self.successResultOf(waiting)
        self.assertEqual(connection.queueTime, 1.5)
        self.assertEqual(connection.connectTime, 0.25)
        connection.release()
        self.assertEqual(server.active, 0)

    def test_queueIsFirstInFirstOut(self):
        pool = makePool(count=1, maxconn=1)
        connector = self.connector(pool)
        first, _ = self.connect(connector)
        self.succeed(0)
        waiters = [self.connect(connector)[0] for _ in range(3)]
        self.assertEqual(pool.queued, 3)
        previous = self.successResultOf(first)
        for index, waiter in enumerate(waiters):
            previous.release()
            self.reactor.advance(0)
            self.succeed(index + 1)
            previous = self.successResultOf(waiter)
            for later in waiters[index + 1:]:
                self.assertNoResult(later)
        self.assertEqual(pool.queued, 0)

    def test_queueTimeout(self):
        pool = makePool(count=2, maxconn=1, queueTimeout=3.0)
        connector = self.connector(pool)
        self.connect(connector)
        self.connect(connector)
        waiting, _ = self.connect(connector)
        self.reactor.advance(2.9)
        self.assertNoResult(waiting)
        self.reactor.advance(0.1)
        failure = self.failureResultOf(waiting, QueueTimeout)
        self.assertEqual(failure.value.waited, 3.0)
        self.assertIn("stayed at its maxconn for 3s", str(failure.value))
        self.assertEqual(pool.queued, 0)
        self.assertEqual([s.active for s in pool.servers], [1, 1])

    def test_maxQueue(self):
        """
        Beyond max_queue waiting flows, a flow is refused at once.
        """
        pool = makePool(count=1, maxconn=1, maxQueue=1)
        connector = self.connector(pool)
        self.connect(connector)
        queued, _ = self.connect(connector)
        refused, _ = self.connect(connector)
        self.assertNoResult(queued)
        failure = self.failureResultOf(refused, NoServerAvailable)
        self.assertNotIsInstance(failure.value, QueueTimeout)

    def test_nothingUpNotQueued(self):
        """
        The queue waits for room, not for servers to come back: with no
        server up the flow is refused at once.
        """
        pool = makePool(count=2)
        for server in pool.servers:
            server.setState(ServerState.DOWN)
        d, _ = self.connect(self.connector(pool))
        self.failureResultOf(d, NoServerAvailable)
        self.assertEqual(pool.queued, 0)

    def test_serverComingUpServesTheQueue(self):
        pool = makePool(count=2, maxconn=1)
        down = pool.servers[1]
        down.setState(ServerState.DOWN)
        connector = self.connector(pool)
        self.connect(connector)
        waiting, _ = self.connect(connector)
        self.assertEqual(pool.queued, 1)
        down.setState(ServerState.UP)
        self.assertEqual((pool.queued, down.active), (0, 1))
        self.reactor.advance(0)
        self.assertEqual(self.reactor.tcpClients[-1][1], 8002)

    def test_cancelWhileQueued(self):
        pool = makePool(count=1, maxconn=1)
        connector = self.connector(pool)
        first, _ = self.connect(connector)
        self.succeed(0)
        waiting, _ = self.connect(connector)
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual(pool.queued, 0)
        self.successResultOf(first).release()
        self.reactor.advance(10)
        self.assertEqual((len(self.reactor.tcpClients), pool.servers[0].active), (1, 0))

    def test_cancelAfterTheGrant(self):
        """
        A flow that leaves after it was granted a slot, before its attempt
        started, passes the slot on to the next in the queue.
        """
        pool = makePool(count=1, maxconn=1)
        connector = self.connector(pool)
        first, _ = self.connect(connector)
        self.succeed(0)
        leaving, _ = self.connect(connector)
        staying, _ = self.connect(connector)
        self.successResultOf(first).release()
        leaving.cancel()
        self.failureResultOf(leaving, CancelledError)
        self.assertEqual((pool.queued, pool.servers[0].active), (0, 1))
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.succeed(1)
        self.successResultOf(staying)

    def test_badEndpointCountsAsFailure(self):
        """
        An address the endpoint parser rejects fails that attempt like a
        refused connection.
        """
        pool = makePool(count=2, retries=1)
        pool.servers[0].address = "nosuchtype:foo"
        d, context = self.connect(self.connector(pool))
        self.assertEqual(pool.servers[0].connectFailures, 1)
        self.assertEqual(pool.servers[0].active, 0)
        self.succeed(0)
        self.assertIs(self.successResultOf(d).server, pool.servers[1])

    def test_endpointCachedPerServer(self):
        pool = makePool(count=1)
        connector = self.connector(pool)
        server = pool.servers[0]
        endpoint = connector.endpointFor(server)
        self.assertIs(connector.endpointFor(server), endpoint)
        server.address = "tcp:host=127.0.0.1:port=9999"
        other = connector.endpointFor(server)
        self.assertIsNot(other, endpoint)
        self.assertEqual(other._port, 9999)


class DirectConnectorTests(ConnectorTests):
    """
    The same, on a reactor that connects to IP addresses directly
    (lbproxy's C{connectDirect}, L{lbproxy._twisted.directconnect}): the
    connector uses it for servers at plain C{tcp:} IP addresses, with one
    timer per attempt and no endpoint.
    """

    def setUp(self):
        self.reactor = DirectMemoryReactor()

    def succeed(self, index):
        record = self.reactor.connectors[index]
        if isinstance(record, DirectAttemptRecord):
            return record.succeed(StringTransport())
        return super().succeed(index)

    def test_directForIPLiterals(self):
        """
        A server at a plain C{tcp:} IP address is connected to directly;
        one at a host name, or with endpoint options, through its
        endpoint.
        """
        pool = makePool(count=3, retries=2)
        pool.servers[1].address = "tcp:host=localhost:port=8002"
        pool.servers[2].address = "tcp:host=127.0.0.1:port=8003:timeout=2"
        connector = self.connector(pool)
        self.assertEqual(connector.directFor(pool.servers[0]), ("127.0.0.1", 8001))
        self.assertIsNone(connector.directFor(pool.servers[1]))
        self.assertIsNone(connector.directFor(pool.servers[2]))
        d, context = self.connect(connector)
        self.assertIsInstance(self.reactor.connectors[0], DirectAttemptRecord)
        self.refuse(0)
        self.assertNotIsInstance(self.reactor.connectors[1], DirectAttemptRecord)
        self.assertEqual(self.reactor.tcpClients[1][:2], ("localhost", 8002))

    def test_notDirectWithoutTheReactorsSupport(self):
        """
        A reactor without C{connectDirect} connects through endpoints.
        """
        connector = BackendConnector(makePool(), MemoryReactorClock())
        self.assertIsNone(connector.directFor(connector.pool.servers[0]))

    def test_oneTimerPerAttempt(self):
        """
        A direct attempt arms one timer, the connector's own; it is gone
        once connected.
        """
        pool = makePool()
        d, context = self.connect(self.connector(pool))
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.succeed(0)
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_failedAtOnce(self):
        """
        An attempt the reactor fails before C{connectDirect} returns (no
        descriptor for the socket) is a local limit: refused at once,
        blaming no server, no timer left.
        """
        reactor = self.reactor

        def failing(host, port, attempt):
            record = DirectAttemptRecord(host, port, attempt)
            reactor.connectors.append(record)
            record.clientConnectionFailed(None, Failure(ConnectBindError(errno.EMFILE, "Too many open files")))
            return record

        reactor.connectDirect = failing
        pool = makePool()
        d, context = self.connect(self.connector(pool))
        failure = self.failureResultOf(d, LocalLimitReached)
        self.assertEqual(failure.value.attempts, 1)
        self.assertEqual([s.connectFailures for s in pool.servers], [0, 0])
        self.assertEqual([s.active for s in pool.servers], [0, 0])
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_refusedAtOnceRetries(self):
        """
        A refusal told before C{connectDirect} returns counts against the
        server and the next attempt follows, as a later one would.
        """
        reactor = self.reactor
        direct = reactor.connectDirect
        refusals = [True]

        def refusingFirst(host, port, attempt):
            record = direct(host, port, attempt)
            if refusals:
                refusals.pop()
                record.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
            return record

        reactor.connectDirect = refusingFirst
        pool = makePool()
        d, context = self.connect(self.connector(pool))
        self.assertEqual(pool.servers[0].connectFailures, 1)
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        self.succeed(1)
        self.assertIs(self.successResultOf(d).server, pool.servers[1])
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_attemptProvidesInterface(self):
        pool = makePool()
        self.connect(self.connector(pool))
        self.assertTrue(verifyObject(IConnectAttempt, self.reactor.connectors[0].attempt))
