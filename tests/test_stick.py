"""
Stick tables (lbproxy.core.stick, lbproxy.config.stick): the table alone
(pins, LRU and size cap, expiry, sweeping, hostile keys), the pool asking
it before its selector, the connector recording where a flow went after
its retries, and the [pools.NAME.stick] table's checks.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport

from lbproxy.config import PoolConfig, loadBytes
from lbproxy.config.stick import StickConfig
from lbproxy.core.connect import BackendConnector
from lbproxy.core.context import FlowContext
from lbproxy.core.model import Balancer
from lbproxy.core.pool import Pool, Server, ServerState
from lbproxy.core.stick import KEY_SIZE, SWEEP_INTERVAL, SWEEP_LIMIT, StickEntry, StickSweeper, StickTable, keySalt
from lbproxy.errors import ConfigError
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin

from memoryconnections import refuseAttempt

LOCAL = IPv4Address("TCP", "192.0.2.100", 80)
SALT = b"s" * 32


def client(n: int, port: int = 40000) -> FlowContext:
    return FlowContext(IPv4Address("TCP", f"198.51.100.{n}", port), LOCAL)


class KeyedContext(FlowContext):
    """
    A flow offering a "header:X-Session" key of any value.
    """

    def __init__(self, value: bytes | None) -> None:
        super().__init__(IPv4Address("TCP", "198.51.100.1", 40000), LOCAL)
        self.value = value

    def key(self, spec):
        return self.value if spec == "header:X-Session" else super().key(spec)


def makePool(count: int = 3, on: str = "src", expire: float = 60.0, size: int = 1000, retries: int = 2):
    clock = Clock()
    servers = [Server(f"s{i}", f"tcp:host=127.0.0.1:port={8001 + i}") for i in range(count)]
    options = PoolConfig(name="web", servers=(), retries=retries, stick=StickConfig(on, expire, size, False))
    pool = Pool("web", servers, SmoothWeightedRoundRobin(), options)
    pool.clock = clock
    pool.stick = StickTable(options.stick, pool, SALT)
    return pool, clock


# The table


def test_pinsAfterRecord():
    """
    A flow is placed by the selector until recorded; from then on its key
    goes to the recorded server, whatever the selector would say.
    """
    pool, clock = makePool()
    table = pool.stick
    assert table.lookup(client(1)) is None
    table.record(client(1), pool.server("s2"))
    for _ in range(5):
        assert pool.pick(client(1, port=40000 + _)) is pool.server("s2")
    assert (table.hits, table.misses) == (5, 1)
    assert len(table.entries) == 1


def test_keysAreFixedSizeDigests():
    """
    Whatever the key's value (a 64 KiB header, NUL and control bytes), the
    table keeps a 16-byte keyed digest, never the value; a flow without a
    value, or with an empty one, is not pinned; the same value under
    another salt gives another digest.
    """
    pool, clock = makePool(on="header:X-Session")
    table = pool.stick
    hostile = [b"x" * 65536, b"\0\r\n\x7f", b"a", bytes(range(256))]
    for value in hostile:
        table.record(KeyedContext(value), pool.server("s1"))
    assert len(table.entries) == len(hostile)
    assert all(len(key) == KEY_SIZE for key in table.entries)
    assert not any(value in key or key in value for key in table.entries for value in hostile if len(value) > 1)
    for value in hostile:
        assert pool.pick(KeyedContext(value)) is pool.server("s1")
    for value in (None, b""):
        table.record(KeyedContext(value), pool.server("s0"))
        assert table.lookup(KeyedContext(value)) is None
    assert len(table.entries) == len(hostile)
    other = StickTable(table.config, pool, b"t" * 32)
    assert other.keyOf(KeyedContext(b"a")) != table.keyOf(KeyedContext(b"a"))


def test_sizeCapEvictsLeastRecentlyUsed():
    """
    Beyond its size the table drops the entry used longest ago; a use
    (record) makes an entry the most recent.
    """
    pool, clock = makePool(size=3)
    table = pool.stick
    for n in (1, 2, 3):
        table.record(client(n), pool.server("s0"))
        clock.advance(1)
    table.record(client(1), pool.server("s0"))
    table.record(client(4), pool.server("s1"))
    assert table.evictions == 1
    assert len(table.entries) == 3
    assert table.lookup(client(2)) is None
    for n in (1, 3, 4):
        assert table.lookup(client(n)) is not None


def test_manyClientsStayBounded():
    pool, clock = makePool(size=100)
    for n in range(5000):
        pool.stick.record(FlowContext(IPv4Address("TCP", f"10.0.{n // 256}.{n % 256}", 1), LOCAL), pool.server("s0"))
    assert len(pool.stick.entries) == 100
    assert pool.stick.evictions == 4900


def test_expiresAfterLastUse():
    """
    An entry lives C{expire} seconds after its last use: a lookup after
    that misses and drops it.
    """
    pool, clock = makePool(expire=60.0)
    table = pool.stick
    table.record(client(1), pool.server("s1"))
    clock.advance(50)
    table.record(client(1), pool.server("s1"))
    clock.advance(50)
    assert table.lookup(client(1)) is pool.server("s1")
    clock.advance(11)
    assert table.lookup(client(1)) is None
    assert (table.expired, len(table.entries)) == (1, 0)


def test_sweepIsBounded():
    """
    L{StickTable.sweep} drops expired entries from the old end, at most
    its limit, and stops at the first live one; each use drops a couple.
    """
    pool, clock = makePool(expire=10.0, size=100000)
    table = pool.stick
    for n in range(300):
        table.record(FlowContext(IPv4Address("TCP", f"10.1.{n // 256}.{n % 256}", 1), LOCAL), pool.server("s0"))
    clock.advance(5)
    table.record(client(1), pool.server("s1"))
    clock.advance(6)
    assert table.sweep(100) == 100
    assert table.sweep() == 200
    assert table.sweep() == 0
    assert list(table.entries) == [table.keyOf(client(1))]
    assert table.expired == 300
    for n in range(10):
        table.record(FlowContext(IPv4Address("TCP", f"10.2.0.{n}", 1), LOCAL), pool.server("s0"))
    clock.advance(11)
    table.record(client(2), pool.server("s0"))
    assert len(table.entries) == 11 - 2 + 1


def test_sweeperRunsEverySecond():
    config = loadBytes(
        b"""
[listeners.web]
bind = "tcp:8080"
pool = "web"
[pools.web]
servers = [{ name = "a", address = "127.0.0.1:8081" }]
[pools.web.stick]
on = "src"
expire = "10s"
""",
        "lb.toml",
    )
    balancer = Balancer(config)
    clock = Clock()
    balancer.setClock(clock)
    table = balancer.pools["web"].stick
    for n in range(SWEEP_LIMIT + 10):
        table.entries[n.to_bytes(16, "big")] = StickEntry("a", clock.seconds())
    sweeper = StickSweeper(balancer, clock)
    sweeper.startService()
    clock.pump([SWEEP_INTERVAL] * 10)
    assert len(table.entries) == SWEEP_LIMIT + 10
    clock.advance(SWEEP_INTERVAL)
    assert len(table.entries) == 10
    clock.advance(SWEEP_INTERVAL)
    assert len(table.entries) == 0
    sweeper.stopService()


# The pool before its selector


def test_pinnedServerStates():
    """
    A pin reaches its server while it is up or draining; one down, in
    maintenance, at its maxconn or already tried for the flow is skipped
    and the selector picks.
    """
    pool, clock = makePool()
    s1 = pool.server("s1")
    pool.stick.record(client(1), s1)
    s1.setState(ServerState.DRAIN)
    assert s1 not in pool.eligible()
    assert pool.pick(client(1)) is s1
    for state in (ServerState.DOWN, ServerState.MAINT):
        s1.setState(state)
        picked = pool.pick(client(1))
        assert picked is not None and picked is not s1
    s1.setState(ServerState.UP)
    s1.maxconn = 1
    s1.acquire()
    assert pool.pick(client(1)) is not s1
    s1.release()
    context = client(1)
    context.excluded.add(s1)
    assert pool.pick(context) is not s1
    assert pool.stick.redispatched == 4


def test_unknownServerIsSkipped():
    """
    An entry naming a server the pool no longer has is not followed.
    """
    pool, clock = makePool()
    pool.stick.record(client(1), Server("gone", "tcp:host=127.0.0.1:port=1"))
    assert pool.pick(client(1)) in pool.servers


# The connector


class TestConnector:
    def setup_method(self):
        self.reactor = MemoryReactorClock()

    def succeed(self, index):
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        protocol.makeConnection(StringTransport())
        return protocol

    def connect(self, pool, context, server=None):
        return BackendConnector(pool, self.reactor).connect(context, Factory.forProtocol(Protocol), server)

    def attempted(self, index):
        return self.reactor.tcpClients[index][1] - 8001

    def test_recordsTheServerReachedAfterRetries(self):
        """
        The pin is made once connected, to the server the flow reached
        after a refused attempt; the client's next flow goes there first.
        """
        pool, clock = makePool()
        d = self.connect(pool, client(1))
        first = self.attempted(0)
        assert len(pool.stick.entries) == 0
        refuseAttempt(self.reactor, 0)
        second = self.attempted(1)
        assert second != first
        self.succeed(1)
        assert self.successResultOf(d) is not None
        for n in range(4):
            self.connect(pool, client(1, 50000 + n))
            assert self.attempted(2 + n) == second

    def successResultOf(self, d):
        results = []
        d.addBoth(results.append)
        return results[0]

    def test_pinnedServerDownIsRepicked(self):
        """
        The pinned server is down: the selector picks another, and the pin
        moves there.
        """
        pool, clock = makePool()
        pool.stick.record(client(1), pool.server("s0"))
        pool.server("s0").setState(ServerState.DOWN)
        self.connect(pool, client(1))
        moved = self.attempted(0)
        assert moved != 0
        self.succeed(0)
        pool.server("s0").setState(ServerState.UP)
        self.connect(pool, client(1))
        assert self.attempted(1) == moved

    def test_drainingPinStillReached(self):
        pool, clock = makePool()
        pool.stick.record(client(1), pool.server("s2"))
        pool.server("s2").setState(ServerState.DRAIN)
        self.connect(pool, client(1))
        assert self.attempted(0) == 2
        self.connect(pool, client(2))
        assert self.attempted(1) != 2

    def test_givenServerWins(self):
        """
        A server the caller chose (an HTTP cookie pin) is connected first,
        and the table follows it.
        """
        pool, clock = makePool()
        pool.stick.record(client(1), pool.server("s0"))
        self.connect(pool, client(1), pool.server("s1"))
        assert self.attempted(0) == 1
        self.succeed(0)
        assert pool.pick(client(1)) is pool.server("s1")


# Replication hooks


def test_changesPassedOnSparingly():
    """
    C{changed} hears of a new entry and of a move at once, and of a use
    of an unchanged entry only after its refresh interval: a hot client
    costs a few updates, not one per flow.
    """
    pool, clock = makePool(expire=1800.0)
    table = pool.stick
    heard = []
    table.changed = lambda t, key: heard.append(key)
    table.record(client(1), pool.server("s0"))
    assert len(heard) == 1
    for _ in range(1000):
        clock.advance(0.001)
        table.record(client(1), pool.server("s0"))
    assert len(heard) == 1
    table.record(client(1), pool.server("s1"))
    assert len(heard) == 2
    clock.advance(table.refresh)
    table.record(client(1), pool.server("s1"))
    assert len(heard) == 3
    assert table.refresh == 10.0


def test_applyFromPeer():
    """
    An entry from the peer is taken with its age; unknown servers are
    refused, expired entries and entries older than ours ignored.
    """
    pool, clock = makePool(expire=60.0)
    clock.advance(1000)
    table = pool.stick
    key = table.keyOf(client(1))
    assert table.apply(key, "s1", 5.0)
    assert pool.pick(client(1)) is pool.server("s1")
    assert table.current(key) == ("s1", 5.0)
    assert not table.apply(key, "nope", 0.0)
    assert table.apply(table.keyOf(client(2)), "s1", 61.0)
    assert table.lookup(client(2)) is None
    table.record(client(1), pool.server("s2"))
    assert table.apply(key, "s1", 3.0)
    assert pool.pick(client(1)) is pool.server("s2")
    assert table.learned == 1


def test_saltFollowsTheHAKey():
    from dataclasses import replace

    from hamachines import haConfig

    class Config:
        ha = haConfig(key=b"k" * 32)

    assert keySalt(Config) == keySalt(Config)
    other = Config()
    other.ha = replace(Config.ha, key=b"l" * 32)
    assert keySalt(other) != keySalt(Config)
    assert keySalt(None) != keySalt(None)


def test_snapshot():
    pool, clock = makePool()
    pool.stick.record(client(1), pool.server("s0"))
    pool.pick(client(1))
    assert pool.snapshot(0.0)["stick"] == {
        "on": "src",
        "expire": 60.0,
        "size": 1000,
        "replicate": False,
        "entries": 1,
        "hits": 1,
        "misses": 0,
        "redispatched": 0,
        "expired": 0,
        "evictions": 0,
        "learned": 0,
    }


# The configuration

BASE = """
[listeners.web]
bind = "tcp:8080"
mode = "MODE"
pool = "web"

[pools.web]
servers = [{ name = "a", address = "127.0.0.1:8081" }, { name = "b", address = "127.0.0.1:8082" }]
POOL
"""


def load(stick: str, mode: str = "tcp", pool: str = "", ha: str = ""):
    text = BASE.replace("MODE", mode).replace("POOL", pool) + "[pools.web.stick]\n" + stick + ha
    return loadBytes(text.encode(), "lb.toml")


def error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        load(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_configDefaults():
    stick = load('on = "src"').pools["web"].stick
    assert stick == StickConfig(on="src", expire=1800.0, size=100000, replicate=False)
    stick = load('on = "header:X-Session"\nexpire = "2h"\nsize = 5\nreplicate = false', mode="http").pools["web"].stick
    assert stick == StickConfig(on="header:X-Session", expire=7200.0, size=5, replicate=False)
    assert load('on = "cookie:SID"', mode="http").pools["web"].stick.on == "cookie:SID"


@pytest.mark.parametrize(
    "stick, mode, expected",
    [
        ("", "tcp", "lb.toml: pools.web.stick.on: required key is missing"),
        ('on = "nope"', "tcp", 'lb.toml: pools.web.stick.on: expected a key such as "src" or "header:NAME"'),
        ("on = 3", "tcp", 'lb.toml: pools.web.stick.on: expected a key such as "src"'),
        ('on = "header:"', "http", "lb.toml: pools.web.stick.on: expected a key"),
        (
            'on = "header:X-Session"',
            "tcp",
            "lb.toml: listeners.web.pool: pool 'web' sticks on key 'header:X-Session', which a tcp listener "
            "cannot provide; expected one of 5tuple, dst, sni, src, src_port",
        ),
        ('on = "user"', "http", "lb.toml: listeners.web.pool: pool 'web' sticks on key 'user', which a http listener"),
        ('on = "src"\nexpire = "500ms"', "tcp", "lb.toml: pools.web.stick.expire: expected at least 1s, got '500ms'"),
        ('on = "src"\nexpire = "200h"', "tcp", "lb.toml: pools.web.stick.expire: expected a duration above 0"),
        ('on = "src"\nsize = 0', "tcp", "lb.toml: pools.web.stick.size: expected an integer from 1 to 10000000"),
        ('on = "src"\nreplicate = "yes"', "tcp", "lb.toml: pools.web.stick.replicate: expected true or false, got 'yes'"),
        ('on = "src"\nwhat = 1', "tcp", "lb.toml: pools.web.stick.what: unknown key"),
        (
            'on = "src"\nreplicate = true',
            "tcp",
            "lb.toml: pools.web.stick.replicate: expected false without a channel to an HA peer ([ha] with peers "
            "and channel_port above 0): entries are replicated over it",
        ),
    ],
)
def test_configErrors(stick, mode, expected):
    assert error(stick, mode).startswith(expected)


HA = """
[ha]
interface = "eth0"
address = "192.0.2.11"
PEERS
key_file = "ha.key"
virtual_addresses = ["192.0.2.100/24"]
"""


def test_replicateDefaultsToTheChannel():
    """
    With an [ha] channel, tables replicate unless told not to; without
    one (no peers, or channel_port = 0) they cannot.
    """
    withChannel = HA.replace("PEERS", 'peers = ["192.0.2.12"]')
    assert load('on = "src"', ha=withChannel).pools["web"].stick.replicate is True
    assert load('on = "src"\nreplicate = false', ha=withChannel).pools["web"].stick.replicate is False
    noChannel = HA.replace("PEERS", 'peers = ["192.0.2.12"]\nchannel_port = 0')
    assert load('on = "src"', ha=noChannel).pools["web"].stick.replicate is False
    assert "stick.replicate: expected false without a channel" in error('on = "src"\nreplicate = true', ha=noChannel)
    multicast = HA.replace("PEERS", "")
    assert load('on = "src"', ha=multicast).pools["web"].stick.replicate is False


@pytest.mark.parametrize("mode", ["imap", "pop3"])
def test_mailPools(mode):
    """
    A mail pool of distinct stores already sends each user to its store:
    a stick table there is refused. With replicas it may stick on the
    user (or the address).
    """
    user = 'selector = { name = "hash", key = "user" }'
    assert error('on = "user"', mode=mode, pool=user) == (
        "lb.toml: listeners.web.pool: pool 'web' has a stick table, but its servers hold distinct mailboxes: "
        "each user always goes to the store holding its mailbox; expected no [pools.web.stick], or "
        'stores = "replicas" when every server holds every mailbox'
    )
    replicas = load('on = "user"', mode=mode, pool='stores = "replicas"')
    assert replicas.pools["web"].stick.on == "user"
