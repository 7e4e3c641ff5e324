"""
Tests for the built-in selectors: the interface, how each one spreads
flows, and the rules every selector keeps (through L{Pool.pick} as well as
directly).
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from twisted.internet.address import IPv4Address
from zope.interface.verify import verifyObject

from lbproxy.core.context import FlowContext
from lbproxy.interfaces import IBackendSelector
from lbproxy.core.pool import Pool, Server, ServerState
from lbproxy.selectors.base import lessLoaded, usable
from lbproxy.selectors.first import FirstAvailable
from lbproxy.selectors.keyhash import KeyHash
from lbproxy.selectors.leastconn import WeightedLeastConnections
from lbproxy.selectors.maglev import Maglev
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin
from lbproxy.selectors.twochoices import RandomTwoChoices

FACTORIES = {
    "roundrobin": SmoothWeightedRoundRobin,
    "leastconn": WeightedLeastConnections,
    "random2": lambda: RandomTwoChoices(random.Random(7)),
    "first": FirstAvailable,
    "hash": KeyHash,
    "hash-xor": lambda: KeyHash(key="5tuple", method="xor"),
    "hash-nokey": lambda: KeyHash(key="header:X-User"),
    "maglev": lambda: Maglev(table_size=251),
    "maglev-nokey": lambda: Maglev(key="uri", table_size=251),
}


def context(host: str = "10.0.0.1", port: int = 40000) -> FlowContext:
    return FlowContext(
        IPv4Address("TCP", host, port), IPv4Address("TCP", "10.0.0.2", 80)
    )


def contexts(count: int):
    """
    C{count} flows from different clients.
    """
    return [context(f"10.{i // 250}.{i % 250}.1", 1024 + i) for i in range(count)]


def servers(*weights: int) -> tuple[Server, ...]:
    return tuple(
        Server(chr(ord("a") + i), f"tcp:host=127.0.0.1:port={9000 + i}", weight=w)
        for i, w in enumerate(weights)
    )


def names(picked) -> str:
    return "".join(s.name for s in picked)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_verifyObject(name):
    assert verifyObject(IBackendSelector, FACTORIES[name]())


# roundrobin


def test_roundrobinSmoothSequence():
    """
    Weights 5, 1, 1 interleave the light servers into the heavy one's turns.
    """
    pool = servers(5, 1, 1)
    selector = SmoothWeightedRoundRobin()
    ctx = context()
    assert names(selector.pick(pool, ctx) for _ in range(14)) == "aabacaa" * 2


@pytest.mark.parametrize("weights", [(1, 1, 1), (3, 2, 1), (1, 4), (10, 1, 7, 2)])
def test_roundrobinProportions(weights):
    """
    Every whole cycle gives each server exactly its weight in picks.
    """
    pool = servers(*weights)
    selector = SmoothWeightedRoundRobin()
    ctx = context()
    counts = Counter(selector.pick(pool, ctx) for _ in range(sum(weights) * 10))
    assert [counts[s] for s in pool] == [w * 10 for w in weights]


# leastconn


def test_leastconnLowestRatio():
    a, b, c = pool = servers(1, 3, 2)
    a.active, b.active, c.active = 2, 3, 5
    assert WeightedLeastConnections().pick(pool, context()) is b


def test_leastconnTiesAlternate():
    """
    Equal idle servers take turns instead of the first one taking all.
    """
    pool = servers(1, 1, 1)
    selector = WeightedLeastConnections()
    ctx = context()
    assert names(selector.pick(pool, ctx) for _ in range(6)) == "abcabc"


def test_leastconnTiesOnlyAmongLowest():
    a, b, c = pool = servers(1, 1, 1)
    a.active = 1
    selector = WeightedLeastConnections()
    ctx = context()
    assert names(selector.pick(pool, ctx) for _ in range(4)) == "bcbc"


def test_leastconnBalancesByWeight():
    """
    With connections that stay open, the active counts follow the weights.
    """
    pool = servers(1, 3, 2)
    selector = WeightedLeastConnections()
    ctx = context()
    for _ in range(60):
        selector.pick(pool, ctx).acquire()
    assert [s.active for s in pool] == [10, 30, 20]


def test_lessLoadedIsExact():
    a, b = servers(3, 1)
    a.active, b.active = 3, 1
    assert not lessLoaded(a, b) and not lessLoaded(b, a)
    a.active = 2
    assert lessLoaded(a, b)


# random2


def test_random2Proportions():
    """
    Without load, the first draw decides, so picks follow the weights.
    """
    pool = servers(1, 2, 3)
    selector = RandomTwoChoices(random.Random(20261128))
    ctx = context()
    picks = 30000
    counts = Counter(selector.pick(pool, ctx) for _ in range(picks))
    for server in pool:
        assert abs(counts[server] / picks - server.weight / 6) < 0.02


def test_random2PrefersLessLoaded():
    a, b, c = pool = servers(1, 1, 1)
    a.active = 5
    selector = RandomTwoChoices(random.Random(1))
    ctx = context()
    counts = Counter(selector.pick(pool, ctx) for _ in range(3000))
    assert counts[a] == 0
    assert counts[b] > 1000 and counts[c] > 1000


def test_random2DrawsTwoDistinct():
    """
    With two servers both are always compared, so the loaded one never
    wins, even when it is drawn first with a large weight.
    """
    a, b = pool = servers(50, 1)
    a.active = 1
    selector = RandomTwoChoices(random.Random(3))
    ctx = context()
    assert {selector.pick(pool, ctx) for _ in range(500)} == {b}


def test_random2Reproducible():
    pool = servers(1, 1, 1, 1)
    ctx = context()
    first = RandomTwoChoices(random.Random(99))
    second = RandomTwoChoices(random.Random(99))
    assert [first.pick(pool, ctx) for _ in range(50)] == [
        second.pick(pool, ctx) for _ in range(50)
    ]


# first


def test_firstFillsInOrder():
    a, b, c = pool = servers(1, 1, 1)
    for server in pool:
        server.maxconn = 2
    selector = FirstAvailable()
    ctx = context()
    picked = []
    for _ in range(6):
        server = selector.pick(pool, ctx)
        server.acquire()
        picked.append(server)
    assert names(picked) == "aabbcc"
    assert selector.pick(pool, ctx) is None
    b.release()
    assert selector.pick(pool, ctx) is b
    a.release()
    assert selector.pick(pool, ctx) is a


# Rules every selector keeps, end to end through Pool.pick.


class RuleChecker:
    """
    Wraps a selector and checks each of its answers, which the pool would
    otherwise turn into a logged error and None.
    """

    def __init__(self, selector) -> None:
        self.selector = selector

    def pick(self, servers, ctx):
        server = self.selector.pick(servers, ctx)
        assert server is None or (server in servers and usable(server, ctx))
        return server


def makePool(name, *serverList):
    return Pool("web", serverList, RuleChecker(FACTORIES[name]()))


def pickMany(pool, flows):
    """
    The set of servers the pool picked for C{flows}.
    """
    return {pool.pick(ctx) for ctx in flows}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_onlyUpServersWithWeight(name):
    down, drain, maint, idle, up1, up2 = servers(1, 1, 1, 0, 1, 2)
    down.state = ServerState.DOWN
    drain.state = ServerState.DRAIN
    maint.state = ServerState.MAINT
    pool = makePool(name, down, drain, maint, idle, up1, up2)
    assert pickMany(pool, contexts(60)) <= {up1, up2}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_fullServerNotPicked(name):
    a, b, c = servers(1, 1, 1)
    a.maxconn = 1
    a.acquire()
    pool = makePool(name, a, b, c)
    assert pickMany(pool, contexts(60)) <= {b, c}
    c.maxconn = 3
    c.active = 3
    assert pickMany(pool, contexts(20)) == {b}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_excludedServerNotPicked(name):
    a, b, c = servers(1, 1, 1)
    pool = makePool(name, a, b, c)
    flows = contexts(60)
    for ctx in flows:
        ctx.excluded.add(a)
    assert pickMany(pool, flows) <= {b, c}
    for ctx in flows:
        ctx.excluded.add(c)
    assert pickMany(pool, flows) == {b}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_backupsOnlyWhenAllPrimariesDown(name):
    p1, p2, b1, b2 = servers(1, 1, 1, 1)
    b1.backup = b2.backup = True
    pool = makePool(name, p1, p2, b1, b2)
    flows = contexts(40)
    assert pickMany(pool, flows) <= {p1, p2}
    p1.setState(ServerState.DOWN)
    assert pickMany(pool, flows) == {p2}
    p2.setState(ServerState.MAINT)
    assert pickMany(pool, flows) <= {b1, b2}
    b1.setState(ServerState.DRAIN)
    assert pickMany(pool, flows) == {b2}
    p2.setState(ServerState.UP)
    assert pickMany(pool, flows) == {p2}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_fullPrimariesDoNotWakeBackups(name):
    """
    Backups stand in for primaries that are down, not for busy ones: with
    every primary at its maxconn the flow gets no server.
    """
    p1, b1 = servers(1, 1)
    b1.backup = True
    p1.maxconn = 1
    p1.acquire()
    pool = makePool(name, p1, b1)
    assert pickMany(pool, contexts(5)) == {None}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_noneWhenNothingFits(name):
    a, b = servers(1, 1)
    pool = makePool(name, a, b)
    flows = contexts(10)
    for ctx in flows:
        ctx.excluded.update({a, b})
    assert pickMany(pool, flows) == {None}
    a.setState(ServerState.DOWN)
    b.setState(ServerState.DOWN)
    assert pickMany(pool, contexts(10)) == {None}
    assert pool.selector.pick((), context()) is None
