"""
What the health monitor logs about failing servers, on a task.Clock: state
changes once, then a reminder every few minutes, never a line per probe.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from lbproxy.health.episodes import REPEAT_INTERVAL
from lbproxy.health.monitor import HealthMonitor
from lbproxy.core.pool import ServerState

from test_health_monitor import ScriptedCheck, makePool


class EpisodeLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.check = ScriptedCheck(self.clock)
        capturing = capturedLogs()
        self.events = capturing.__enter__()
        self.addCleanup(capturing.__exit__, None, None, None)

    def start(self, pool, **kwargs) -> HealthMonitor:
        monitor = HealthMonitor(pool, reactor=self.clock, check=self.check, **kwargs)
        monitor.startService()
        self.addCleanup(lambda: monitor.running and monitor.stopService())
        return monitor

    def tick(self, count: int = 1) -> None:
        self.clock.pump([2.0] * count)

    def lines(self, server: str = "web/a", level: LogLevel | None = None) -> list[str]:
        return [
            formatEvent(e)
            for e in self.events
            if server in formatEvent(e) and (level is None or e["log_level"] is level)
        ]

    def test_downTwentyMinutes(self):
        """
        A server down for 20 minutes, probed every 2 seconds (600 failed
        probes), gives the first failure, the down, and one reminder every
        5 minutes: 6 lines, not 600.
        """
        self.check.outcomes["a"] = "connection refused"
        self.start(makePool())
        # Down after the third probe, at 4s; then 20 minutes.
        self.tick(2 + 600)
        lines = self.lines()
        self.assertEqual(len(lines), 6, "\n".join(lines))
        self.assertEqual(
            lines[:2],
            [
                "health check of web/a failed: connection refused",
                "server web/a is down (was up): 3 checks failed, last: connection refused",
            ],
        )
        self.assertEqual(
            lines[2],
            "server web/a still down since 1970-01-01 00:00:04 UTC (5m), "
            "150 checks failed, last: connection refused",
        )
        self.assertEqual(
            [line.split(" (", 1)[1].split(")")[0] for line in lines[3:]], ["10m", "15m", "20m"]
        )

    def test_reasonChangeOncePerInterval(self):
        """
        A new reason while down is logged at once, once per interval; a
        reason that keeps changing shows in the reminders.
        """
        self.check.outcomes["a"] = "connection refused"
        self.start(makePool())
        self.tick(10)
        before = len(self.lines())
        self.check.outcomes["a"] = "status 503"
        self.tick()
        (line,) = self.lines()[before:]
        self.assertEqual(
            line,
            "health check of web/a now fails with status 503, was connection refused; "
            "down since 1970-01-01 00:00:04 UTC (18s), 9 checks failed",
        )
        for outcome in ["connection refused", "status 503"] * 20:
            self.check.outcomes["a"] = outcome
            self.tick()
        self.assertEqual(len(self.lines()), before + 1)
        for outcome in ["connection refused", "status 503"] * 70:
            self.check.outcomes["a"] = outcome
            self.tick()
        # Past the interval: a reason line and a reminder at most.
        self.assertLessEqual(len(self.lines()), before + 3)

    def test_upAgainThenDownAgain(self):
        """
        Coming back up is logged once by the pool; a later failure starts a
        new episode.
        """
        self.check.outcomes["a"] = "connection refused"
        self.start(makePool())
        self.tick(100)
        self.check.outcomes["a"] = True
        self.tick(2)
        self.assertEqual(self.lines()[-1], "server web/a is up (was down): 2 of 2 checks passed")
        count = len(self.lines())
        self.check.outcomes["a"] = "status 500"
        self.tick()
        self.assertEqual(self.lines()[count:], ["health check of web/a failed: status 500"])

    def test_passiveDown(self):
        """
        A server taken down by passive checks gets the same reminders,
        counted from when it went down.
        """
        pool = makePool()
        server = pool.servers[0]
        server.passiveFall = 1
        self.start(pool)
        self.tick(5)
        self.check.outcomes["a"] = "connection refused"
        server.connectFailed("connection refused")
        self.assertIs(server.state, ServerState.DOWN)
        self.tick(300)
        lines = self.lines()
        self.assertEqual(len(lines), 3, "\n".join(lines))
        self.assertTrue(lines[0].startswith("server web/a is down (was up): "), lines[0])
        self.assertEqual(
            lines[1],
            "server web/a still down since 1970-01-01 00:00:10 UTC (5m), "
            "150 checks failed, last: connection refused",
        )

    def test_drainingServerFailing(self):
        """
        A draining server keeps its state whatever its checks say: its
        failing checks are logged once, then reminded of.
        """
        pool = makePool()
        pool.servers[0].setState(ServerState.DRAIN)
        self.check.outcomes["a"] = "connection refused"
        self.start(pool)
        self.tick(600)
        lines = self.lines()
        self.assertEqual(len(lines), 6, "\n".join(lines))
        self.assertEqual(
            lines[2],
            "server web/a still failing checks since 1970-01-01 00:00:00 UTC (5m), "
            "151 checks failed, last: connection refused",
        )

    def test_flappingWhileUp(self):
        """
        A failed probe of an up server that passes again is logged (debug)
        with its recovery.
        """
        self.check.outcomes["a"] = "timeout after 1s"
        self.start(makePool())
        self.check.outcomes["a"] = True
        self.tick()
        self.assertEqual(
            self.lines(level=LogLevel.debug),
            [
                "health check of web/a failed: timeout after 1s",
                "health check of web/a passes again after 1 failed check",
            ],
        )

    def test_repeatIntervalSetting(self):
        self.check.outcomes["a"] = "connection refused"
        self.start(makePool(), repeatInterval=60.0)
        self.tick(300)
        self.assertEqual(len(self.lines()), 2 + 9)
        self.assertEqual(REPEAT_INTERVAL, 300.0)

    def test_stopForgets(self):
        self.check.outcomes["a"] = "connection refused"
        monitor = self.start(makePool())
        self.tick(10)
        monitor.stopService()
        self.assertEqual(monitor.failureLog._episodes, {})
        monitor.pool.servers[0].setState(ServerState.UP)
        self.assertEqual(monitor.failureLog._episodes, {})
