"""
Passive health checks (Server.connectFailed) and how active checks bring a
passively failed server back.
"""

from __future__ import annotations

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lbproxy.config import HealthConfig, PoolConfig, ServerConfig
from lbproxy.health.checks import HealthCheckFailed
from lbproxy.health.monitor import HealthMonitor
from lbproxy.interfaces import IHealthCheck
from lbproxy.core.pool import Pool, Server, ServerState
from lbproxy.core.model import buildPool
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin


def poolConfig(health: HealthConfig | None) -> PoolConfig:
    return PoolConfig(
        name="web",
        servers=(
            ServerConfig("a", "tcp:host=127.0.0.1:port=8001"),
            ServerConfig("b", "tcp:host=127.0.0.1:port=8002"),
        ),
        health=health,
    )


class PassiveFallTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = Server("a", "tcp:host=127.0.0.1:port=8001")
        self.pool = Pool("web", [self.server], SmoothWeightedRoundRobin())
        self.changes = []
        self.pool.addObserver(lambda *change: self.changes.append(change))

    def test_disabledByDefault(self) -> None:
        for _ in range(10):
            self.server.connectFailed("connection refused")
        self.assertIs(self.server.state, ServerState.UP)
        self.assertEqual(self.server.connectFailures, 10)

    def test_establishedThenUnusable(self) -> None:
        """
        A connection counted as made that fails before carrying anything
        takes its success back: alternating "made, then unusable" still
        adds up to passiveFall. A success of another connection since
        then stands.
        """
        server = self.server
        server.passiveFall = 3
        for _ in range(2):
            server.connectSucceeded()
            server.connectFailed("TLS: alert", established=True)
        self.assertEqual(server.connectFailures, 2)
        server.connectSucceeded()
        server.connectSucceeded()
        server.connectFailed("TLS: alert", established=True)
        self.assertEqual(server.connectFailures, 1)
        server.connectFailed("connection refused")
        server.connectSucceeded()
        server.connectFailed("TLS: alert", established=True)
        self.assertEqual(server.connectFailures, 3)
        self.assertIs(server.state, ServerState.DOWN)

    def test_marksDownAfterPassiveFall(self) -> None:
        self.server.passiveFall = 3
        self.server.connectFailed("connection refused")
        self.server.connectFailed("connection refused")
        self.assertIs(self.server.state, ServerState.UP)
        self.server.connectFailed("connect timeout")
        self.assertEqual(
            self.changes,
            [
                (
                    self.server,
                    ServerState.UP,
                    ServerState.DOWN,
                    "3 consecutive failed connections, last: connect timeout",
                )
            ],
        )
        self.assertEqual(self.pool.eligible(), ())

    def test_successResetsCount(self) -> None:
        self.server.passiveFall = 2
        self.server.connectFailed("connection refused")
        self.server.connectSucceeded()
        self.server.connectFailed("connection refused")
        self.assertIs(self.server.state, ServerState.UP)
        self.server.connectFailed("connection refused")
        self.assertIs(self.server.state, ServerState.DOWN)

    def test_onlyUpServersMarkedDown(self) -> None:
        self.server.passiveFall = 1
        for state in (ServerState.DRAIN, ServerState.MAINT):
            self.server.setState(state)
            self.server.connectFailed("connection refused")
            self.assertIs(self.server.state, state)

    def test_runtimeEnablesOnlyWithHealthBlock(self) -> None:
        without = buildPool(poolConfig(None))
        self.assertEqual([s.passiveFall for s in without.servers], [0, 0])
        withHealth = buildPool(poolConfig(HealthConfig(passiveFall=4)))
        self.assertEqual([s.passiveFall for s in withHealth.servers], [4, 4])
        disabled = buildPool(poolConfig(HealthConfig(passiveFall=0)))
        self.assertEqual([s.passiveFall for s in disabled.servers], [0, 0])


@implementer(IHealthCheck)
class SwitchCheck:
    """
    Healthy while C{healthy} is true.
    """

    healthy = True

    def check(self, server):
        if self.healthy:
            return succeed(None)
        return fail(HealthCheckFailed("connection refused"))


class PassiveThenActiveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = buildPool(
            poolConfig(HealthConfig(interval=2.0, timeout=1.0, rise=3, fall=3, passiveFall=2))
        )
        self.server = self.pool.server("a")
        self.check = SwitchCheck()
        self.monitor = HealthMonitor(self.pool, reactor=self.clock, check=self.check)
        self.monitor.startService()
        self.addCleanup(self.monitor.stopService)
        self.changes = []
        self.pool.addObserver(lambda s, old, new, reason: self.changes.append((s.name, new, reason)))

    def test_activeChecksBringServerBackAfterRise(self) -> None:
        self.clock.pump([2.0] * 3)
        self.assertGreaterEqual(self.server.health.successes, 3)
        self.server.connectFailed("connection refused")
        self.server.connectFailed("connection refused")
        self.assertIs(self.server.state, ServerState.DOWN)
        self.assertEqual(self.pool.eligible(), (self.pool.server("b"),))
        self.clock.pump([2.0] * 2)
        self.assertIs(self.server.state, ServerState.DOWN)
        self.clock.pump([2.0])
        self.assertIs(self.server.state, ServerState.UP)
        self.assertEqual(
            self.changes,
            [
                ("a", ServerState.DOWN, "2 consecutive failed connections, last: connection refused"),
                ("a", ServerState.UP, "3 of 3 checks passed"),
            ],
        )
        self.assertIn(self.server, self.pool.eligible())

    def test_failingActiveChecksKeepServerDown(self) -> None:
        self.server.connectFailed("connection refused")
        self.server.connectFailed("connection refused")
        self.check.healthy = False
        self.clock.pump([2.0] * 5)
        self.assertIs(self.server.state, ServerState.DOWN)
        self.assertEqual([c for c in self.changes if c[0] == "a"], self.changes[:1])
        self.check.healthy = True
        self.clock.pump([2.0] * 3)
        self.assertIs(self.server.state, ServerState.UP)
