"""
Stick-table replication (lbproxy.ha.replication) between two nodes whose
channels (lbproxy.ha.channel) are joined in memory by iosim: updates sent
incrementally and acknowledged, a full resync on (re)join streamed window
by window, a reconnection resumed where it broke, a node coming back
after a failover taught what the new master made, bounded queues, and
every malformed line from the peer refused.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.test import iosim
from zope.interface.verify import verifyObject

from lbproxy.config import PoolConfig
from lbproxy.config.stick import StickConfig
from lbproxy.core.context import FlowContext
from lbproxy.core.pool import Pool, Server
from lbproxy.core.stick import StickTable
from lbproxy.ha import replication as replicationModule
from lbproxy.ha.channel import MAX_LINE, Channel, ChannelProtocol
from lbproxy.ha.interfaces import IChannelMessages
from lbproxy.ha.replication import FLUSH_DELAY, WINDOW, Replication
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin
from hamachines import KEY, OWN, PEER, haConfig

LOCAL = IPv4Address("TCP", "192.0.2.100", 80)
SALT = b"the salt both nodes derive alike"


def client(n: int) -> FlowContext:
    return FlowContext(IPv4Address("TCP", f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 40000), LOCAL)


class Node:
    """
    One lbproxy node: a pool "web" of three servers with a replicated
    stick table (unless C{tables} is false), its replication and channel.
    """

    def __init__(self, address, peer, reactor, tables: bool = True, size: int = 100000, servers=("s0", "s1", "s2")):
        self.address = address
        self.peer = peer
        self.reactor = reactor
        options = PoolConfig(name="web", servers=(), stick=StickConfig("src", 1800.0, size, True))
        members = [Server(name, f"tcp:host=127.0.0.1:port={8001 + i}") for i, name in enumerate(servers)]
        self.pool = Pool("web", members, SmoothWeightedRoundRobin(), options)
        self.pool.clock = reactor
        self.pool.stick = StickTable(options.stick, self.pool, SALT)
        self.table = self.pool.stick
        self.replication = Replication({"web": self.table} if tables else {}, [peer], reactor)
        self.feed = self.replication.feeds[peer]
        self.intake = self.replication.intakes[peer]
        config = haConfig(address=address, peers=(peer,), channelPort=5799)
        self.channel = Channel(config, reactor, lambda *gone: None, messages=self.replication)
        self.channel._running = True

    def pin(self, n: int, server: str) -> None:
        self.table.record(client(n), self.pool.server(server))

    def pinnedTo(self, n: int) -> str | None:
        server = self.table.lookup(client(n))
        return server.name if server is not None else None


class Link:
    """
    The connection C{sender} opened to C{receiver}: C{sender}'s feed.
    """

    def __init__(self, sender: Node, receiver: Node, reactor) -> None:
        self.connector = ChannelProtocol(sender.channel, connector=True)
        self.acceptor = ChannelProtocol(receiver.channel, connector=False)
        self.connectorTransport = iosim.FakeTransport(
            self.connector,
            isServer=False,
            hostAddress=IPv4Address("TCP", str(sender.address), 40000),
            peerAddress=IPv4Address("TCP", str(receiver.address), 5799),
        )
        self.acceptorTransport = iosim.FakeTransport(
            self.acceptor,
            isServer=True,
            hostAddress=IPv4Address("TCP", str(receiver.address), 5799),
            peerAddress=IPv4Address("TCP", str(sender.address), 40000),
        )
        self.pump = iosim.connect(
            self.acceptor, self.acceptorTransport, self.connector, self.connectorTransport, greet=False, clock=reactor
        )

    def flush(self) -> None:
        self.pump.flush()

    def cut(self) -> None:
        """
        The connection resets: whatever is in flight is lost.
        """
        self.connectorTransport.getOutBuffer()
        self.acceptorTransport.getOutBuffer()
        self.connectorTransport.abortConnection()
        self.flush()


def nodes(**options):
    reactor = MemoryReactorClock()
    reactor.advance(1000)
    return Node(OWN, PEER, reactor, **options), Node(PEER, OWN, reactor), reactor


def settle(reactor, *links) -> None:
    for _ in range(3):
        reactor.advance(FLUSH_DELAY)
        for link in links:
            link.flush()


def test_interface():
    a, b, reactor = nodes()
    assert verifyObject(IChannelMessages, a.replication)


def test_incrementalAndAcknowledged():
    """
    Entries the master makes reach the backup, which follows them; the
    master's updates are acknowledged, nothing stays in flight.
    """
    a, b, reactor = nodes()
    link = Link(a, b, reactor)
    back = Link(b, a, reactor)
    settle(reactor, link, back)
    assert a.feed.resyncs == 1 and a.feed.lastResync["entries"] == 0
    for n in range(20):
        a.pin(n, f"s{n % 3}")
    settle(reactor, link, back)
    assert [b.pinnedTo(n) for n in range(20)] == [f"s{n % 3}" for n in range(20)]
    assert (a.feed.sent, a.feed.acknowledged, len(a.feed.inflight), len(a.feed.pending)) == (20, 20, 0, 0)
    assert b.intake.snapshot()["applied"] == 20 and b.intake.complete
    assert b.table.learned == 20
    # The backup's own lookups do not feed anything back.
    assert b.feed.sent == 0


def test_coalesced():
    """
    A client pinned, re-pinned and used a thousand times between two
    flushes costs one update, with its latest server.
    """
    a, b, reactor = nodes()
    link = Link(a, b, reactor)
    settle(reactor, link)
    for server in ("s0", "s1", "s2", "s1"):
        a.pin(7, server)
    for _ in range(1000):
        a.pin(7, "s1")
    settle(reactor, link)
    assert a.feed.sent == 1
    assert b.pinnedTo(7) == "s1"


def test_fullResyncOnJoinIsWindowed():
    """
    A backup joining a master that holds 5000 entries asks for them; the
    master streams them WINDOW updates at a time, as acknowledgements
    come back, never more in flight.
    """
    a, b, reactor = nodes()
    for n in range(5000):
        a.pin(n, f"s{n % 3}")
    link = Link(a, b, reactor)
    inflight = []
    queued = []
    while link.pump.pump():
        inflight.append(len(a.feed.inflight))
        queued.append(b"".join(link.connectorTransport.stream).count(b"\nU "))
    assert max(inflight) == WINDOW
    assert max(queued) <= WINDOW
    assert all(count <= WINDOW for count in inflight)
    assert b.intake.complete and b.intake.lastResync["entries"] == 5000
    assert all(b.pinnedTo(n) == f"s{n % 3}" for n in range(5000))
    assert a.feed.lastResync["entries"] == 5000 and a.feed.acknowledged == 5000


def test_reconnectionResumes():
    """
    The connection breaks with updates in flight and more made while it
    is down: on reconnection the backup says how far it got, and only
    what it missed is sent, not the whole table.
    """
    a, b, reactor = nodes()
    for n in range(100):
        a.pin(n, "s0")
    link = Link(a, b, reactor)
    settle(reactor, link)
    assert a.feed.resyncs == 1
    for n in range(100, 110):
        a.pin(n, "s1")
    reactor.advance(FLUSH_DELAY)
    assert len(a.feed.inflight) == 10
    link.cut()
    assert a.feed.protocol is None and a.feed.state == "idle"
    for n in range(110, 115):
        a.pin(n, "s2")
    sent = a.feed.sent
    link = Link(a, b, reactor)
    settle(reactor, link)
    assert (a.feed.resyncs, a.feed.resumes) == (1, 1)
    assert a.feed.sent - sent == 15
    assert [b.pinnedTo(n) for n in (0, 99, 100, 109, 110, 114)] == ["s0", "s0", "s1", "s1", "s2", "s2"]


def test_interruptedResyncStartsAgain():
    a, b, reactor = nodes()
    for n in range(3000):
        a.pin(n, "s1")
    link = Link(a, b, reactor)
    for _ in range(4):
        link.pump.pump()
    assert a.feed.snapshot()["resyncing"]
    link.cut()
    assert a.feed.needFull and not b.intake.complete
    link = Link(a, b, reactor)
    settle(reactor, link)
    assert a.feed.resyncs == 2 and a.feed.resumes == 0
    assert b.intake.complete and all(b.pinnedTo(n) == "s1" for n in range(3000))


def test_restartedReceiverAsksForAll():
    """
    The backup restarts (its tables empty): it asks for a full resync
    although the master's stream goes on.
    """
    a, b, reactor = nodes()
    for n in range(50):
        a.pin(n, "s2")
    link = Link(a, b, reactor)
    settle(reactor, link)
    link.cut()
    b = Node(PEER, OWN, reactor)
    link = Link(a, b, reactor)
    settle(reactor, link)
    assert a.feed.resyncs == 2
    assert all(b.pinnedTo(n) == "s2" for n in range(50))


def test_failoverAndReturn():
    """
    The master dies; the backup serves, following the master's pins and
    making new ones. The old master comes back empty (a new process): it
    is sent everything the new master holds, its own old pins included.
    """
    a, b, reactor = nodes()
    links = [Link(a, b, reactor), Link(b, a, reactor)]
    settle(reactor, *links)
    for n in range(30):
        a.pin(n, f"s{n % 3}")
    settle(reactor, *links)
    for link in links:
        link.cut()
    # b is master now: its clients keep their servers, new ones get pinned.
    for n in range(30):
        assert b.pool.pick(client(n)).name == f"s{n % 3}"
        b.pin(n, f"s{n % 3}")
    for n in range(30, 40):
        b.pin(n, "s0")
    reactor.advance(60)
    a = Node(OWN, PEER, reactor)
    links = [Link(a, b, reactor), Link(b, a, reactor)]
    settle(reactor, *links)
    assert [a.pinnedTo(n) for n in range(40)] == [f"s{n % 3}" for n in range(30)] + ["s0"] * 10
    assert a.intake.complete and b.intake.complete


def test_pendingBoundedWhilePeerAway(monkeypatch):
    """
    While the peer is away, at most MAX_PENDING updates wait; beyond, they
    are dropped and the peer gets a full resync when it comes.
    """
    monkeypatch.setattr(replicationModule, "MAX_PENDING", 100)
    a, b, reactor = nodes()
    for n in range(150):
        a.pin(n, "s1")
    assert a.feed.needFull and len(a.feed.pending) == 0 and a.feed.dropped == 101
    link = Link(a, b, reactor)
    settle(reactor, link)
    assert a.feed.resyncs == 1 and not a.feed.needFull
    assert all(b.pinnedTo(n) == "s1" for n in range(150))


def test_overflowWhileConnectedResyncs(monkeypatch):
    """
    A peer too slow to acknowledge while entries pour in: the waiting
    updates are dropped and a full resync starts on the connection.
    """
    monkeypatch.setattr(replicationModule, "MAX_PENDING", 100)
    monkeypatch.setattr(replicationModule, "WINDOW", 10)
    a, b, reactor = nodes()
    link = Link(a, b, reactor)
    settle(reactor, link)
    for n in range(150):
        a.pin(n, "s0")
    assert a.feed.resyncs == 2
    settle(reactor, link)
    assert all(b.pinnedTo(n) == "s0" for n in range(150))
    assert b.intake.complete


def test_peerWithoutTables():
    """
    A peer replicating no table still speaks the protocol: our updates
    are dropped there and counted, the channel stays up.
    """
    reactor = MemoryReactorClock()
    a = Node(OWN, PEER, reactor)
    b = Node(PEER, OWN, reactor, tables=False)
    link = Link(a, b, reactor)
    settle(reactor, link)
    a.pin(1, "s0")
    settle(reactor, link)
    assert b.intake.rejected == 1 and b.intake.applied == 0
    assert a.feed.acknowledged == 1
    assert not link.connectorTransport.disconnecting


def test_unknownServerDropped():
    reactor = MemoryReactorClock()
    a = Node(OWN, PEER, reactor)
    b = Node(PEER, OWN, reactor, servers=("s0", "s1"))
    link = Link(a, b, reactor)
    settle(reactor, link)
    a.pin(1, "s2")
    a.pin(2, "s1")
    settle(reactor, link)
    assert b.intake.rejected == 1 and b.pinnedTo(2) == "s1" and b.pinnedTo(1) is None
    assert not link.acceptorTransport.disconnecting


# Hostile or broken peers


def accepted(node: Node):
    """
    An authenticated connection from the peer to C{node}, in memory.
    """
    protocol = ChannelProtocol(node.channel, connector=False)
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", str(node.address), 5799), peerAddress=IPv4Address("TCP", str(node.peer), 40000)
    )
    protocol.makeConnection(transport)
    authenticate(protocol)
    transport.clear()
    return protocol, transport


def authenticate(protocol) -> None:
    """
    Take C{protocol} past the handshake, as if the peer had proved itself.
    """
    protocol._theirNonce = b"n" * 16
    protocol.authenticated = True
    protocol._timer.cancel()
    protocol.channel.up(protocol)


FEED = b"FEED " + b"ab" * 16 + b"\n"
UPDATE = b"U 1 web s0 5 " + b"00" * 16 + b"\n"


@pytest.mark.parametrize(
    "lines",
    [
        [UPDATE],
        [b"FULL 3\n"],
        [b"FEED xyz\n"],
        [FEED, FEED],
        [FEED, b"DONE\n"],
        [FEED, b"U 1 web s0 5 " + b"00" * 15 + b"\n"],
        [FEED, b"U 1 web s0 5 " + b"0G" * 16 + b"\n"],
        [FEED, b"U 01 web s0 5 " + b"00" * 16 + b"\n"],
        [FEED, b"U 1 web s0 -5 " + b"00" * 16 + b"\n"],
        [FEED, b"U 1 w\x00b s0 5 " + b"00" * 16 + b"\n"],
        [FEED, b"U 1  web s0 5 " + b"00" * 16 + b"\n"],
        [FEED, b"U 1 web s0 5 " + b"00" * 16 + b" \n"],
        [FEED, b"U 1 web s0 1234567890123 " + b"00" * 16 + b"\n"],
        [FEED, b"U 12345678901234567890 web s0 5 " + b"00" * 16 + b"\n"],
        [FEED, b"U 1 " + b"w" * 65 + b" s0 5 " + b"00" * 16 + b"\n"],
        [FEED, UPDATE, UPDATE],
        [FEED, b"ACK 1\n"],
        [FEED, b"RESYNC\n"],
        [FEED, b"PINGS\n"],
        [FEED, b"x" * (MAX_LINE + 1)],
    ],
)
def test_malformedFromSender(lines):
    """
    Each malformed or out-of-order line on a connection the peer opened
    closes it, with one log line; what came before it stands.
    """
    a, b, reactor = nodes()
    protocol, transport = accepted(a)
    for line in lines:
        protocol.dataReceived(line)
    assert transport.disconnecting, lines
    assert a.channel.refusedCount == 1


@pytest.mark.parametrize(
    "lines",
    [
        [b"ACK 1\n"],
        [b"RESYNC\n", b"RESYNC\n"],
        [b"RESYNC\n", b"ACK 5\n"],
        [UPDATE],
        [FEED],
        [b"RESUME x\n"],
    ],
)
def test_malformedFromReceiver(lines):
    """
    On our own connection the peer may only ask once and acknowledge
    what was sent.
    """
    a, b, reactor = nodes()
    protocol = ChannelProtocol(a.channel, connector=True)
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", str(OWN), 40000), peerAddress=IPv4Address("TCP", str(PEER), 5799)
    )
    protocol.makeConnection(transport)
    authenticate(protocol)
    assert transport.value().endswith(b"FEED " + a.replication.incarnation.hex().encode() + b"\n")
    for line in lines:
        protocol.dataReceived(line)
    assert transport.disconnecting, lines


def test_acknowledgementsBatched():
    """
    Many updates in one read are acknowledged with one ACK.
    """
    a, b, reactor = nodes()
    protocol, transport = accepted(a)
    protocol.dataReceived(FEED)
    assert transport.value() == b"RESYNC\n"
    transport.clear()
    protocol.dataReceived(b"".join(b"U %d web s%d 5 %032x\n" % (n, n % 3, n) for n in range(1, 301)))
    assert transport.value() == b""
    reactor.advance(0)
    assert transport.value() == b"ACK 300\n"
    assert a.intake.applied == 300 and a.table.learned == 300


def test_rejectionsLoggedOnceAMinute():
    from twisted.logger import globalLogPublisher

    a, b, reactor = nodes()
    protocol, transport = accepted(a)
    protocol.dataReceived(FEED)
    lines = []

    def observe(event):
        if "stick tables: dropped" in event.get("log_format", ""):
            lines.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        protocol.dataReceived(b"".join(b"U %d other%d s0 5 %032x\n" % (n, n, n) for n in range(1, 1001)))
        reactor.advance(61)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [event["count"] for event in lines] == ["1 update", "999 updates"]
    assert a.intake.rejected == 1000
    assert not transport.disconnecting


def test_readingPausedWhileThePeerDoesNotRead():
    """
    A channel connection's transport has a producer that stops reading
    while what we write piles up; closing unregisters it first, so the
    close is not held up.
    """
    a, b, reactor = nodes()
    protocol, transport = accepted(a)
    producer = transport.producer
    assert producer is not None and transport.streaming
    producer.pauseProducing()
    assert transport.producerState == "paused"
    producer.resumeProducing()
    assert transport.producerState == "producing"
    protocol.close()
    assert transport.producer is None and transport.disconnecting


def test_snapshot():
    a, b, reactor = nodes()
    link = Link(a, b, reactor)
    settle(reactor, link)
    a.pin(1, "s0")
    settle(reactor, link)
    snapshot = a.replication.snapshot()
    sending = snapshot["peers"][str(PEER)]["sending"]
    assert snapshot["tables"] == ["web"]
    assert (sending["connected"], sending["state"], sending["sent"], sending["acknowledged"], sending["pending"]) == (
        True,
        "streaming",
        1,
        1,
        0,
    )
    assert sending["lastResync"]["entries"] == 0
    receiving = b.replication.snapshot()["peers"][str(OWN)]["receiving"]
    assert receiving["connected"] and receiving["inSync"] and receiving["applied"] == 1


def test_attachReplicatesTheTablesThatSaySo():
    """
    The daemon's heartbeat replicates the pools whose stick table
    replicates (the default with a channel), and its state is part of the
    balancer's snapshot.
    """
    import json
    from dataclasses import replace

    from lbproxy.config import loadBytes
    from lbproxy.ha.service import attach
    from lbproxy.service import BalancerService

    text = """
[ha]
interface = "eth0"
address = "192.0.2.11"
peers = ["192.0.2.12"]
key_file = "ha.key"
virtual_addresses = ["192.0.2.100/24"]

[listeners.web]
bind = "tcp:80:interface=192.0.2.100"
pool = "web"

[listeners.api]
bind = "tcp:81:interface=192.0.2.100"
pool = "api"

[pools.web]
servers = [{ name = "a", address = "192.0.2.21:8080" }]
[pools.web.stick]
on = "src"

[pools.api]
servers = [{ name = "a", address = "192.0.2.23:8080" }]
[pools.api.stick]
on = "src"
replicate = false
"""
    config = loadBytes(text.encode(), "lb.toml")
    config = replace(config, ha=replace(config.ha, key=KEY))
    service = BalancerService(config, MemoryReactorClock())
    ha = attach(service, config.ha, MemoryReactorClock())
    pools = service.balancer.pools
    assert ha.replication.tables == {"web": pools["web"].stick}
    assert pools["web"].stick.changed == ha.replication.changed and pools["api"].stick.changed is None
    assert ha.channel.messages is ha.replication
    assert service.getServiceNamed("stick") is not None
    snapshot = service.balancer.snapshot()
    json.dumps(snapshot)
    assert snapshot["ha"]["replication"]["tables"] == ["web"]
    assert [pool["stick"]["replicate"] for pool in snapshot["pools"]] == [True, False]
