"""
The tracked conditions on a task.Clock: pools and listeners through the
live model's observers, check commands with rise and fall, fault or
weight, and one log line naming each change.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from lbproxy.config.ha import DEFAULT_TRACK, TrackConfig
from lbproxy.ha.commands import CommandResult
from lbproxy.ha.tracking import Tracker
from lbproxy.core.pool import ServerState
from hamachines import FakeBalancer
from lbproxy.core.pool import Pool, Server
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin


class ScriptedRunner:
    def __init__(self) -> None:
        self.pending: list[Deferred] = []
        self.argv: list[tuple] = []

    def __call__(self, reactor, argv, timeout):
        self.argv.append(argv)
        d = Deferred()
        self.pending.append(d)
        return d

    def finish(self, status: int, output: bytes = b"") -> None:
        self.pending.pop(0).callback(CommandResult(status, output))


def tracker(conditions, balancer=None, runner=None):
    clock = Clock()
    balancer = balancer or FakeBalancer()
    changes: list = []
    t = Tracker(conditions, balancer, lambda *c: changes.append(c), clock, runner or ScriptedRunner())
    return t, balancer, changes, clock


def logged(action):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        action()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [e for e in events if e.get("log_format", "").startswith("ha: condition")]


def test_poolBelowMinimumIsAFault():
    t, balancer, changes, _ = tracker((TrackConfig("pool", pool="web", minUp=2),))
    t.start()
    assert t.summary() == (None, 0)
    servers = balancer.pools["web"].servers
    lines = logged(lambda: servers[0].setState(ServerState.DOWN))
    assert changes == [("failed: pool web has at least 2 servers up", 0)]
    assert lines[0]["detail"] == "1 of 2 servers up" and lines[0]["action"] == "fault"
    servers[0].setState(ServerState.MAINT)
    assert len(changes) == 1
    servers[0].setState(ServerState.UP)
    assert changes[-1] == (None, 0)


def test_weightLowersPriorityInstead():
    t, balancer, changes, _ = tracker((TrackConfig("pool", pool="web", weight=30),))
    t.start()
    for server in balancer.pools["web"].servers:
        server.setState(ServerState.DOWN)
    assert changes == [(None, 30)]


def test_defaultConditions():
    balancer = FakeBalancer()
    balancer.addPool(Pool("api", [Server("c", "x:3")], SmoothWeightedRoundRobin()))
    t, _, changes, clock = tracker(DEFAULT_TRACK, balancer)
    t.start()
    balancer.pools["api"].servers[0].setState(ServerState.DOWN)
    assert changes == []
    for server in balancer.pools["web"].servers:
        server.setState(ServerState.DOWN)
    assert changes == [("failed: some pool has a server up", 0)]
    balancer.setUnbound(["www"])
    assert changes[-1] == ("failed: every listener is bound; some pool has a server up", 0)
    assert t.states[0].detail == "not bound: www"


def test_startsFailing():
    balancer = FakeBalancer()
    balancer.unbound = ["www"]
    t, _, changes, _ = tracker((TrackConfig("listeners"),), balancer)
    t.start()
    assert t.summary() == ("failed: every listener is bound", 0)


def test_commandRiseAndFall():
    runner = ScriptedRunner()
    condition = TrackConfig("command", command=("/bin/check",), interval=2.0, timeout=1.0, fall=2, rise=2, weight=10)
    t, _, changes, clock = tracker((condition,), runner=runner)
    t.start()
    runner.finish(1, b"uplink down\n")
    assert changes == []
    clock.advance(2)
    runner.finish(1)
    assert changes == [(None, 10)]
    assert "exit status 1" in t.states[0].detail
    clock.advance(2)
    runner.finish(0)
    assert changes == [(None, 10)]
    clock.advance(2)
    runner.finish(0)
    assert changes == [(None, 10), (None, 0)]


def test_commandStillRunningIsNotStartedAgain():
    runner = ScriptedRunner()
    condition = TrackConfig("command", command=("/bin/check",), interval=1.0, timeout=1.0)
    t, _, _, clock = tracker((condition,), runner=runner)
    t.start()
    clock.advance(1)
    assert len(runner.argv) == 1


def test_stopForgetsPools():
    t, balancer, changes, clock = tracker((TrackConfig("pool", pool="web"),))
    t.start()
    t.stop()
    for server in balancer.pools["web"].servers:
        server.setState(ServerState.DOWN)
    assert changes == []


def test_poolAddedWhileRunning():
    """
    A pool a reload adds counts for "some pool has a server up" as soon
    as the model announces it.
    """
    balancer = FakeBalancer()
    t, _, changes, _ = tracker((TrackConfig("pools"),), balancer)
    t.start()
    for server in balancer.pools["web"].servers:
        server.setState(ServerState.DOWN)
    assert changes == [("failed: some pool has a server up", 0)]
    balancer.addPool(Pool("api", [Server("c", "x:3")], SmoothWeightedRoundRobin()))
    assert changes[-1] == (None, 0)
    assert t.states[0].detail == "1 of 2 pools have a server up"


def test_trackedPoolGone():
    balancer = FakeBalancer()
    t, _, changes, _ = tracker((TrackConfig("pool", pool="web"),), balancer)
    t.start()
    del balancer.pools["web"]
    balancer.announce("pool", "web", "running", "removed")
    assert (t.states[0].ok, t.states[0].detail) == (False, "the pool is gone")
    assert changes == [(f"failed: {t.states[0].config.name}", 0)]
