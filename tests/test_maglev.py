"""
Tests for the Maglev consistent-hashing selector.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from twisted.internet.address import IPv4Address

from lbproxy.core.context import FlowContext
from lbproxy.errors import OptionError
from lbproxy.plugins.lbproxy_builtin import maglev as maglevPlugin
from lbproxy.core.pool import Pool, Server, ServerState
from lbproxy.selectors import maglev as maglevModule
from lbproxy.selectors.base import stableHash
from lbproxy.selectors.maglev import Maglev, permutation, populate

KEYS = 100_000


def randomKeys(count: int = KEYS, seed: int = 2016) -> list[bytes]:
    """
    C{count} random IPv4 source keys, the same on every run.
    """
    rng = random.Random(seed)
    return [rng.getrandbits(32).to_bytes(4, "big") for _ in range(count)]


def servers(count: int, weights=None) -> tuple[Server, ...]:
    weights = weights or [1] * count
    return tuple(
        Server(f"backend-{i}", f"tcp:host=127.0.0.1:port={9000 + i}", weight=w)
        for i, w in enumerate(weights)
    )


def context(key: bytes, port: int = 40000) -> FlowContext:
    host = ".".join(str(b) for b in key)
    return FlowContext(IPv4Address("TCP", host, port), IPv4Address("TCP", "10.0.0.2", 80))


def referencePopulate(names, weights, size):
    """
    The paper's population loop written plainly (next[i] and
    permutation[i][next[i]]), with C{weight} turns per round.
    """
    params = [permutation(name, size) for name in names]
    nexts = [0] * len(names)
    entry = [-1] * size
    filled = 0
    while True:
        for i, (offset, skip) in enumerate(params):
            for _ in range(weights[i]):
                c = (offset + nexts[i] * skip) % size
                while entry[c] >= 0:
                    nexts[i] += 1
                    c = (offset + nexts[i] * skip) % size
                entry[c] = i
                nexts[i] += 1
                filled += 1
                if filled == size:
                    return entry


def test_permutationFromName():
    offset, skip = permutation("backend-1", 65537)
    assert 0 <= offset < 65537 and 1 <= skip < 65537
    assert permutation("backend-1", 65537) == (offset, skip)
    assert permutation("backend-2", 65537) != (offset, skip)


def test_tablePinned():
    """
    Nodes agree only if they build the same table: a change of the hashes
    or the turn order would split a mixed-version cluster, so the start of
    one table is pinned here.
    """
    assert populate(["a", "b", "c"], [1, 1, 1], 251)[:16] == [
        0, 2, 1, 0, 2, 1, 0, 0, 1, 2, 2, 2, 0, 2, 1, 0,
    ]
    assert populate(["a", "b", "c"], [1, 2, 3], 251)[:16] == [
        0, 2, 1, 0, 2, 1, 0, 2, 1, 2, 2, 2, 0, 2, 1, 0,
    ]


@pytest.mark.parametrize(
    "size, weights", [(251, [1, 1, 1]), (1009, [1] * 7), (1009, [3, 1, 2]), (4099, [2, 4, 6])]
)
def test_populateMatchesPaper(size, weights):
    names = [f"backend-{i}" for i in range(len(weights))]
    divisor = 2 if weights == [2, 4, 6] else 1
    assert populate(names, weights, size) == referencePopulate(
        names, [w // divisor for w in weights], size
    )


@pytest.mark.parametrize("count", range(5, 11))
def test_tableShares(count):
    """
    With equal weights each server owns floor(M/N) or ceil(M/N) slots.
    """
    table = populate([f"backend-{i}" for i in range(count)], [1] * count, 65537)
    shares = Counter(table)
    assert len(shares) == count
    assert set(shares.values()) <= {65537 // count, 65537 // count + 1}


@pytest.mark.parametrize("count", range(5, 11))
def test_keyBalance(count):
    pool = servers(count)
    selector = Maglev()
    counts = Counter(selector.lookup(key, pool) for key in randomKeys())
    for server in pool:
        assert abs(counts[server] / KEYS - 1 / count) < 0.03 / count


def test_pickUsesLookup():
    pool = servers(7)
    selector = Maglev()
    table = selector.table(pool)
    for key in randomKeys(2000):
        assert selector.pick(pool, context(key)) is selector.lookup(key, pool)
        assert selector.lookup(key, pool) is table[stableHash(key) % 65537]


@pytest.mark.parametrize("count, removed", [(5, 0), (8, 3), (10, 9)])
def test_removalMovesFewKeys(count, removed):
    """
    Taking one of N servers away moves about 1/N of the keys: its own, and
    few of the others.
    """
    pool = servers(count)
    gone = pool[removed]
    rest = tuple(s for s in pool if s is not gone)
    selector = Maglev()
    keys = randomKeys()
    before = [selector.lookup(key, pool) for key in keys]
    after = [selector.lookup(key, rest) for key in keys]
    moved = sum(b is not a for b, a in zip(before, after))
    assert moved / KEYS <= 1 / count + 0.03
    survivors = [(b, a) for b, a in zip(before, after) if b is not gone]
    stayed = sum(b is a for b, a in survivors)
    assert stayed / len(survivors) >= 0.97


def test_separateNodesAgree():
    """
    Two selectors built independently, from fresh server objects listed in
    a different order, map every key to the same server name.
    """
    first = servers(8)
    second = tuple(reversed(servers(8)))
    one, two = Maglev(), Maglev()
    for key in randomKeys(20000):
        assert one.lookup(key, first).name == two.lookup(key, second).name


def test_weights():
    weights = [1, 2, 3, 4]
    pool = servers(4, weights)
    selector = Maglev()
    slots = Counter(selector.table(pool))
    counts = Counter(selector.lookup(key, pool) for key in randomKeys())
    for server in pool:
        share = server.weight / sum(weights)
        assert abs(slots[server] / 65537 - share) < 0.001
        assert abs(counts[server] / KEYS - share) < 0.01


def test_tableCachedOnServerTuple(monkeypatch):
    """
    The table is built once per set of eligible servers: not per pick, not
    for a new tuple with the same servers, but again after a state change.
    """
    builds = []

    def countingPopulate(names, weights, size):
        builds.append(tuple(names))
        return populate(names, weights, size)

    monkeypatch.setattr(maglevModule, "populate", countingPopulate)
    primaries = servers(3)
    backup = Server("spare", "tcp:host=127.0.0.1:port=9100", backup=True)
    pool = Pool("web", primaries + (backup,), Maglev(table_size=1009))
    keys = randomKeys(50)
    for key in keys:
        pool.pick(context(key))
    assert len(builds) == 1
    backup.setState(ServerState.DOWN)
    for key in keys:
        pool.pick(context(key))
    assert len(builds) == 1
    primaries[1].setState(ServerState.DOWN)
    picked = {pool.pick(context(key)) for key in keys}
    assert len(builds) == 2 and builds[1] == ("backend-0", "backend-2")
    assert picked <= {primaries[0], primaries[2]}


def test_unusableFallsToNextSlots():
    """
    When a key's server is full or already tried, the following table
    slots decide, the same way for every selector built from the same
    names.
    """
    pool = servers(6)
    selector = Maglev()
    key = randomKeys(1)[0]
    home = selector.lookup(key, pool)
    home.maxconn = 1
    home.acquire()
    table = selector.table(pool)
    slot = stableHash(key) % 65537
    while table[slot] is home:
        slot += 1
    nextChoice = selector.pick(pool, context(key))
    assert nextChoice is table[slot]
    assert Maglev().pick(pool, context(key)) is nextChoice
    ctx = context(key)
    ctx.excluded.add(nextChoice)
    third = selector.pick(pool, ctx)
    assert third not in (home, nextChoice)
    home.release()
    assert selector.pick(pool, context(key)) is home


def test_onlyUnownedServerUsable():
    """
    A table smaller than the number of turns leaves some servers without a
    slot; when only those can serve, round-robin places the flow.
    """
    pool = tuple(Server(f"s{i}", "tcp:host=127.0.0.1:port=9000") for i in range(300))
    selector = Maglev(table_size=251)
    owners = set(selector.table(pool))
    for server in owners:
        server.maxconn = 1
        server.acquire()
    unowned = set(pool) - owners
    assert unowned
    assert selector.pick(pool, context(b"\x0a\x00\x00\x01")) in unowned


def test_noKeyFallsBackToRoundRobin():
    pool = servers(3)
    selector = Maglev(key="header:X-User", table_size=251)
    ctx = context(b"\x0a\x00\x00\x01")
    assert [selector.pick(pool, ctx) for _ in range(6)] == list(pool) * 2


@pytest.mark.parametrize(
    "value", [65536, 250, 1_000_033, 1, 0, -7, True, "65537", 65537.0, 9]
)
def test_tableSizeValidation(value):
    with pytest.raises(OptionError) as error:
        maglevPlugin.build({"table_size": value})
    assert error.value.key == "table_size"
    assert error.value.message.startswith("expected a prime from 251 to 1000003, got ")


@pytest.mark.parametrize("value", [251, 65537, 1009, 1_000_003])
def test_tableSizeAccepted(value):
    assert maglevPlugin.build({"table_size": value}).tableSize == value


def test_defaults():
    selector = maglevPlugin.build({})
    assert (selector.key, selector.tableSize) == ("src", 65537)
