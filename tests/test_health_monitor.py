"""
HealthMonitor on a task.Clock with a scripted check: scheduling, rise and
fall, and a loop that survives misbehaving checks.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from lbproxy.config import HealthConfig, PoolConfig, ServerConfig
from lbproxy.health.checks import HealthCheckFailed, HTTPCheck
from lbproxy.core.pool import ServerHealth
from lbproxy.health.monitor import HealthMonitor
from lbproxy.interfaces import IHealthCheck
from lbproxy.core.pool import Pool, Server, ServerState
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin


@implementer(IHealthCheck)
class ScriptedCheck:
    """
    Answers each probe from C{outcomes[server.name]}: True (healthy), a
    reason string (unhealthy), an exception instance (raised), or
    C{"pending"} (a Deferred the test fires itself).
    """

    def __init__(self, clock) -> None:
        self.clock = clock
        self.outcomes: dict[str, object] = {}
        self.calls: list[tuple[float, str]] = []
        self.pending: list[Deferred] = []
        self.cancelled: list[Deferred] = []

    def check(self, server):
        self.calls.append((self.clock.seconds(), server.name))
        outcome = self.outcomes.get(server.name, True)
        if outcome is True:
            return succeed(None)
        if outcome == "pending":
            d = Deferred(self.cancelled.append)
            self.pending.append(d)
            return d
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, Deferred):
            return outcome
        return fail(HealthCheckFailed(outcome))

    def callsFor(self, name: str) -> list[float]:
        return [when for when, called in self.calls if called == name]


def makePool(names=("a",), **health) -> Pool:
    config = HealthConfig(**{"interval": 2.0, "timeout": 1.0, "rise": 2, "fall": 3, **health})
    servers = [Server(name, f"tcp:host=127.0.0.1:port={8000 + i}") for i, name in enumerate(names)]
    options = PoolConfig(
        name="web",
        servers=tuple(ServerConfig(s.name, s.address) for s in servers),
        health=config,
    )
    return Pool("web", servers, SmoothWeightedRoundRobin(), options)


class MonitorTestMixin:
    def setUp(self) -> None:
        self.clock = Clock()
        self.check = ScriptedCheck(self.clock)
        self.changes: list[tuple[str, ServerState, ServerState, str]] = []

    def monitor(self, pool: Pool) -> HealthMonitor:
        pool.addObserver(
            lambda server, old, new, reason: self.changes.append((server.name, old, new, reason))
        )
        monitor = HealthMonitor(pool, reactor=self.clock, check=self.check)
        monitor.startService()
        self.addCleanup(lambda: monitor.running and monitor.stopService())
        return monitor

    def tick(self, count: int = 1, interval: float = 2.0) -> None:
        self.clock.pump([interval] * count)


class SchedulingTests(MonitorTestMixin, SynchronousTestCase):
    def test_defaultCheckFromConfig(self) -> None:
        monitor = HealthMonitor(makePool(type="http"), reactor=MemoryReactorClock())
        self.assertIsInstance(monitor.check, HTTPCheck)

    def test_realCheckConnectsOnStart(self) -> None:
        reactor = MemoryReactorClock()
        monitor = HealthMonitor(makePool(), reactor=reactor)
        monitor.startService()
        self.addCleanup(monitor.stopService)
        self.assertEqual(reactor.tcpClients[0][:2], ("127.0.0.1", 8000))

    def test_serviceContract(self) -> None:
        """
        The service tree builds monitors as C{HealthMonitor(pool,
        reactor=reactor)} under a MultiService; each is named after its pool.
        """
        parent = MultiService()
        pool = makePool()
        HealthMonitor(pool, reactor=MemoryReactorClock()).setServiceParent(parent)
        self.assertIsInstance(parent.getServiceNamed("web"), HealthMonitor)

    def test_firstProbeImmediateThenEveryInterval(self) -> None:
        self.monitor(makePool())
        self.assertEqual(self.check.callsFor("a"), [0.0])
        self.tick(3)
        self.assertEqual(self.check.callsFor("a"), [0.0, 2.0, 4.0, 6.0])

    def test_firstProbesSpreadOverInterval(self) -> None:
        self.monitor(makePool(("a", "b", "c", "d")))
        self.assertEqual(self.check.calls, [(0.0, "a")])
        self.clock.pump([0.5] * 4)
        self.assertEqual(
            self.check.calls,
            [(0.0, "a"), (0.5, "b"), (1.0, "c"), (1.5, "d"), (2.0, "a")],
        )
        self.clock.pump([0.5] * 4)
        self.assertEqual(self.check.callsFor("d"), [1.5, 3.5])

    def test_spreadIsDeterministic(self) -> None:
        self.monitor(makePool(("a", "b", "c")))
        first = list(self.check.calls)
        self.clock.pump([0.5] * 8)
        firstRun = list(self.check.calls)
        clock = Clock()
        check = ScriptedCheck(clock)
        other = HealthMonitor(makePool(("a", "b", "c")), reactor=clock, check=check)
        other.startService()
        self.addCleanup(other.stopService)
        self.assertEqual(check.calls, first)
        clock.pump([0.5] * 8)
        self.assertEqual(check.calls, firstRun)

    def test_overlappingProbeNotDoubled(self) -> None:
        self.check.outcomes["a"] = "pending"
        monitor = self.monitor(makePool())
        self.tick(3)
        self.assertEqual(self.check.callsFor("a"), [0.0])
        self.check.pending[0].callback(None)
        self.assertEqual(monitor.pool.servers[0].health.checks, 1)
        self.tick()
        self.assertEqual(self.check.callsFor("a"), [0.0, 8.0])

    def test_maintSkipped(self) -> None:
        pool = makePool(("a", "b"))
        pool.server("a").setState(ServerState.MAINT)
        self.monitor(pool)
        self.tick(3)
        self.assertEqual(self.check.callsFor("a"), [])
        self.assertEqual(len(self.check.callsFor("b")), 3)
        self.assertEqual(pool.server("a").health, ServerHealth())
        pool.server("a").setState(ServerState.DOWN, "maintenance over")
        self.tick()
        self.assertEqual(self.check.callsFor("a"), [8.0])

    def test_stopCancelsProbesAndTimers(self) -> None:
        self.check.outcomes["a"] = "pending"
        monitor = self.monitor(makePool(("a", "b")))
        self.assertTrue(self.clock.getDelayedCalls())
        monitor.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.check.cancelled, self.check.pending)
        self.assertEqual(monitor.pool.server("a").health.checks, 0)
        self.assertEqual(self.check.calls, [(0.0, "a")])

    def test_restart(self) -> None:
        monitor = self.monitor(makePool())
        monitor.stopService()
        self.tick(2)
        monitor.startService()
        self.assertEqual(self.check.callsFor("a"), [0.0, 4.0])
        self.tick()
        self.assertEqual(self.check.callsFor("a"), [0.0, 4.0, 6.0])


class RiseFallTests(MonitorTestMixin, SynchronousTestCase):
    def test_serversStartUp(self) -> None:
        pool = makePool(("a", "b"))
        self.monitor(pool)
        self.assertEqual([s.state for s in pool.servers], [ServerState.UP] * 2)

    def test_fall(self) -> None:
        pool = makePool()
        self.check.outcomes["a"] = "connection refused"
        self.monitor(pool)
        self.tick(1)
        self.assertIs(pool.server("a").state, ServerState.UP)
        self.tick(1)
        self.assertEqual(
            self.changes,
            [("a", ServerState.UP, ServerState.DOWN, "3 checks failed, last: connection refused")],
        )

    def test_fallOfOne(self) -> None:
        pool = makePool(fall=1)
        self.check.outcomes["a"] = "status 503"
        self.monitor(pool)
        self.assertEqual(self.changes[0][3], "1 check failed, last: status 503")

    def test_rise(self) -> None:
        pool = makePool()
        pool.server("a").setState(ServerState.DOWN)
        self.monitor(pool)
        self.assertIs(pool.server("a").state, ServerState.DOWN)
        self.tick()
        self.assertEqual(
            self.changes,
            [("a", ServerState.DOWN, ServerState.UP, "2 of 2 checks passed")],
        )

    def test_successInterruptsFall(self) -> None:
        pool = makePool()
        self.monitor(pool)
        for outcome in ("refused", "refused", True, "refused", "refused"):
            self.check.outcomes["a"] = outcome
            self.tick()
        self.assertIs(pool.server("a").state, ServerState.UP)
        self.assertEqual(pool.server("a").health.failures, 2)
        self.tick()
        self.assertIs(pool.server("a").state, ServerState.DOWN)

    def test_failureInterruptsRise(self) -> None:
        pool = makePool(rise=3)
        pool.server("a").setState(ServerState.DOWN)
        self.monitor(pool)
        for outcome in (True, "refused", True, True):
            self.check.outcomes["a"] = outcome
            self.tick()
        self.assertIs(pool.server("a").state, ServerState.DOWN)
        self.tick()
        self.assertEqual(self.changes[-1][2:], (ServerState.UP, "3 of 3 checks passed"))

    def test_downAndBackUp(self) -> None:
        pool = makePool()
        self.check.outcomes["a"] = "timeout after 1s"
        self.monitor(pool)
        self.tick(2)
        self.check.outcomes["a"] = True
        self.tick(2)
        self.assertEqual(
            [(old, new) for _, old, new, _ in self.changes],
            [(ServerState.UP, ServerState.DOWN), (ServerState.DOWN, ServerState.UP)],
        )

    def test_healthRecord(self) -> None:
        pool = makePool()
        self.monitor(pool)
        record = pool.server("a").health
        self.assertEqual((record.healthy, record.reason, record.lastCheck), (True, "ok", 0.0))
        self.check.outcomes["a"] = "pending"
        self.tick()
        self.clock.advance(0.5)
        self.check.pending[0].errback(HealthCheckFailed("status 500"))
        self.assertEqual(
            (record.healthy, record.reason, record.lastCheck, record.duration),
            (False, "status 500", 2.5, 0.5),
        )
        self.assertEqual((record.successes, record.failures, record.checks), (0, 1, 2))

    def test_drainProbedButLeftDraining(self) -> None:
        pool = makePool()
        pool.server("a").setState(ServerState.DRAIN)
        self.check.outcomes["a"] = "connection refused"
        self.monitor(pool)
        self.tick(4)
        server = pool.server("a")
        self.assertIs(server.state, ServerState.DRAIN)
        self.assertEqual(server.health.failures, 5)
        self.assertEqual(server.health.reason, "connection refused")
        # Back to UP, the failures seen while draining still count.
        server.setState(ServerState.UP, "operator")
        self.tick()
        self.assertIs(server.state, ServerState.DOWN)

    def test_drainHealthyNotRaised(self) -> None:
        pool = makePool()
        pool.server("a").setState(ServerState.DRAIN)
        self.monitor(pool)
        self.tick(3)
        self.assertIs(pool.server("a").state, ServerState.DRAIN)
        self.assertTrue(pool.server("a").health.healthy)

    def test_resultWhileEnteringMaintChangesNothing(self) -> None:
        pool = makePool(fall=1)
        self.check.outcomes["a"] = "pending"
        self.monitor(pool)
        pool.server("a").setState(ServerState.MAINT)
        self.check.pending[0].errback(HealthCheckFailed("connection refused"))
        self.assertIs(pool.server("a").state, ServerState.MAINT)
        self.assertEqual(pool.server("a").health.reason, "connection refused")

    def test_externalDownNeedsRiseSuccesses(self) -> None:
        pool = makePool()
        self.monitor(pool)
        self.tick(3)
        self.assertEqual(pool.server("a").health.successes, 4)
        pool.server("a").setState(ServerState.DOWN, "passive")
        self.tick()
        self.assertIs(pool.server("a").state, ServerState.DOWN)
        self.tick()
        self.assertIs(pool.server("a").state, ServerState.UP)
        self.assertEqual(self.changes[-1][3], "2 of 2 checks passed")


class MisbehavingCheckTests(MonitorTestMixin, SynchronousTestCase):
    def test_raisingCheckCountsAsFailureAndLoopGoesOn(self) -> None:
        pool = makePool()
        self.check.outcomes["a"] = RuntimeError("bug in check")
        self.monitor(pool)
        self.tick(5)
        self.assertEqual(len(self.check.callsFor("a")), 6)
        self.assertIs(pool.server("a").state, ServerState.DOWN)
        self.assertEqual(pool.server("a").health.reason, "check error: RuntimeError")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 6)
        self.check.outcomes["a"] = True
        self.tick(2)
        self.assertIs(pool.server("a").state, ServerState.UP)

    def test_unexpectedFailureCountsAsFailure(self) -> None:
        pool = makePool(fall=1)
        self.check.outcomes["a"] = "pending"
        self.monitor(pool)
        self.check.pending[0].errback(ZeroDivisionError())
        self.assertIs(pool.server("a").state, ServerState.DOWN)
        self.assertEqual(pool.server("a").health.reason, "check error: ZeroDivisionError")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.tick()
        self.assertEqual(len(self.check.callsFor("a")), 2)

    def test_nonDeferredResultTreatedAsHealthy(self) -> None:
        pool = makePool()
        pool.server("a").setState(ServerState.DOWN)
        self.check.outcomes["a"] = "pending"

        @implementer(IHealthCheck)
        class Plain:
            def check(self, server):
                return None

        monitor = HealthMonitor(pool, reactor=self.clock, check=Plain())
        monitor.startService()
        self.addCleanup(monitor.stopService)
        self.tick()
        self.assertIs(pool.server("a").state, ServerState.UP)

    def test_observerErrorDoesNotStopLoop(self) -> None:
        pool = makePool(fall=1)

        def broken(server, old, new, reason):
            raise ValueError("observer bug")

        pool.addObserver(broken)
        self.check.outcomes["a"] = "refused"
        self.monitor(pool)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.tick(2)
        self.assertEqual(len(self.check.callsFor("a")), 3)

    def test_errorStartingProbeDoesNotStopLoop(self) -> None:
        monitor = self.monitor(makePool())
        check, monitor.check = monitor.check, object()
        self.tick(2)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 2)
        monitor.check = check
        self.tick()
        self.assertEqual(self.check.callsFor("a"), [0.0, 6.0])

    def test_scriptedCheckProvidesInterface(self) -> None:
        self.assertTrue(verifyObject(IHealthCheck, self.check))


class ChangingServersTests(MonitorTestMixin, SynchronousTestCase):
    def test_addedServerIsProbed(self) -> None:
        """
        A server added to a monitored pool is probed at once, then every
        interval.
        """
        pool = makePool()
        self.monitor(pool)
        self.clock.advance(1)
        pool.addServer(ServerConfig("b", "tcp:host=127.0.0.1:port=8009"))
        self.assertEqual(self.check.callsFor("b"), [1.0])
        self.tick(2)
        self.assertEqual(self.check.callsFor("b"), [1.0, 3.0, 5.0])

    def test_removedServerIsNoLongerProbed(self) -> None:
        """
        A server removed from the pool is not probed any more, and a probe
        of it still running is cancelled without being recorded.
        """
        pool = makePool(("a", "b"))
        self.monitor(pool)
        self.tick(1)
        self.check.outcomes["b"] = "pending"
        self.tick(1)
        before = len(self.check.callsFor("b"))
        server = pool.removeServer("b")
        self.assertEqual(len(self.check.cancelled), 1)
        checks = server.health.checks
        self.tick(5)
        self.assertEqual(len(self.check.callsFor("b")), before)
        self.assertEqual(server.health.checks, checks)
