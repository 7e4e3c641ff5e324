"""
The channel between the nodes: the challenge-response in memory (each
way a handshake can go wrong), and what a lost connection leads to: a
probe, and the peer taken for gone only when it refuses.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, TimeoutError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from lbproxy.ha.channel import HANDSHAKE_TIMEOUT, MAX_LINE, PROBE_TIMEOUT, Channel, ChannelProtocol, proof
from hamachines import KEY, OWN, PEER, haConfig


def channelOf(address, peer, key=KEY, gone=None):
    reactor = MemoryReactorClock()
    config = haConfig(address=address, peers=(peer,), key=key, channelPort=5799)
    seen = gone if gone is not None else []
    channel = Channel(config, reactor, lambda *g: seen.append(g))
    channel._running = True
    return channel, reactor, seen


def connected(channel, connector: bool, peer) -> tuple[ChannelProtocol, StringTransport]:
    protocol = ChannelProtocol(channel, connector)
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", str(channel.config.address), 5799),
        peerAddress=IPv4Address("TCP", str(peer), 40000),
    )
    protocol.makeConnection(transport)
    return protocol, transport


def exchange(a, aTransport, b, bTransport, rounds: int = 3) -> None:
    for _ in range(rounds):
        for sender, transport, receiver in ((a, aTransport, b), (b, bTransport, a)):
            data = transport.value()
            transport.clear()
            if data and not receiver.transport.disconnecting:
                receiver.dataReceived(data)


def pair(keyA=KEY, keyB=KEY):
    ours, ourReactor, _ = channelOf(OWN, PEER, keyA)
    theirs, theirReactor, _ = channelOf(PEER, OWN, keyB)
    a, at = connected(ours, True, PEER)
    b, bt = connected(theirs, False, OWN)
    exchange(a, at, b, bt)
    return ours, theirs, (a, at), (b, bt), ourReactor


def test_handshake():
    ours, theirs, (a, at), (b, bt), _ = pair()
    assert a.authenticated and b.authenticated
    assert ours.connected(PEER) and theirs.connected(OWN)
    assert not at.disconnecting and not bt.disconnecting


def test_wrongKey():
    ours, theirs, (a, at), (b, bt), _ = pair(keyB=b"x" * 32)
    assert not ours.connected() and not theirs.connected()
    assert at.disconnecting or bt.disconnecting
    assert ours.refusedCount + theirs.refusedCount >= 1


def test_aProofCannotBeReflected():
    """
    An attacker connecting to us cannot answer our challenge with a proof
    we made ourselves: proofs are bound to the direction and addresses.
    """
    nonce = b"n" * 16
    mine = proof(KEY, b"accept", OWN, PEER, 51, nonce, b"m" * 16)
    expected = proof(KEY, b"connect", PEER, OWN, 51, b"m" * 16, nonce)
    assert mine != expected
    relayed = proof(KEY, b"connect", OWN, PEER, 51, nonce, b"m" * 16)
    assert relayed != expected


def test_notAPeer():
    ours, reactor, _ = channelOf(OWN, PEER)
    protocol, transport = connected(ours, False, ipaddress.ip_address("192.0.2.66"))
    assert transport.disconnecting
    assert transport.value() == b""
    assert ours.refusedCount == 1


def handshakeFailure(line: bytes) -> tuple[Channel, StringTransport]:
    ours, reactor, _ = channelOf(OWN, PEER)
    protocol, transport = connected(ours, False, PEER)
    transport.clear()
    protocol.dataReceived(line)
    return ours, transport


def test_badHellos():
    for line in (
        b"GET / HTTP/1.1\n",
        b"LBHA-CHANNEL 2 51 " + b"00" * 16 + b"\n",
        b"LBHA-CHANNEL 1 52 " + b"00" * 16 + b"\n",
        b"LBHA-CHANNEL 1 51 zz\n",
        b"LBHA-CHANNEL 1 51 " + b"00" * 8 + b"\n",
        b"x" * (MAX_LINE + 10),
    ):
        ours, transport = handshakeFailure(line)
        assert transport.disconnecting, line
        assert not ours.connected()


def test_badProofAndUnexpectedLines():
    ours, reactor, _ = channelOf(OWN, PEER)
    protocol, transport = connected(ours, False, PEER)
    protocol.dataReceived(b"LBHA-CHANNEL 1 51 " + b"00" * 16 + b"\n")
    assert transport.value().count(b"\n") == 2
    protocol.dataReceived(b"AUTH " + b"0" * 64 + b"\n")
    assert transport.disconnecting and not protocol.authenticated


def test_handshakeTimeout():
    ours, reactor, _ = channelOf(OWN, PEER)
    protocol, transport = connected(ours, False, PEER)
    reactor.advance(HANDSHAKE_TIMEOUT)
    assert transport.disconnecting


def test_unexpectedLineAfterAuthentication():
    ours, theirs, (a, at), (b, bt), _ = pair()
    a.dataReceived(b"SURPRISE\n")
    assert at.disconnecting
    b.dataReceived(b"PING\n")
    assert not bt.disconnecting


def test_lostConnectionProbes():
    ours, theirs, (a, at), (b, bt), reactor = pair()
    gone = []
    ours._gone = lambda *g: gone.append(g)
    a.connectionLost(Failure(ConnectionDone()))
    assert not ours.connected()
    host, port, factory, timeout, bindAddress = reactor.tcpClients[-1]
    assert (host, port, timeout, bindAddress) == (str(PEER), 5799, PROBE_TIMEOUT, (str(OWN), 0))
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert gone and gone[0][0] == PEER and "refuses new connections" in gone[0][1]


def test_probeTimingOutIsNotGone():
    ours, theirs, (a, at), (b, bt), reactor = pair()
    gone = []
    ours._gone = lambda *g: gone.append(g)
    a.connectionLost(Failure(ConnectionDone()))
    reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(TimeoutError()))
    assert gone == []
    # It tries again later, without judging.
    reactor.advance(1.0)
    assert len(reactor.tcpClients) == 2
    reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert gone == []


def test_otherConnectionStillUp():
    ours, theirs, (a, at), (b, bt), reactor = pair()
    second, secondTransport = connected(ours, False, PEER)
    peerSide, peerTransport = connected(theirs, True, OWN)
    exchange(second, secondTransport, peerSide, peerTransport)
    assert len(ours.connections[PEER]) == 2
    a.connectionLost(Failure(ConnectionDone()))
    assert ours.connected(PEER)
    assert reactor.tcpClients == []


def test_startConnectsAndStopCloses():
    ours, reactor, _ = channelOf(OWN, PEER)
    ours._running = False
    ours.listen()
    ours.start()
    assert reactor.tcpServers[0][0] == 5799 and reactor.tcpServers[0][3] == str(OWN)
    assert reactor.tcpClients[0][0] == str(PEER)
    ours.stop()
    assert not ours._running
