"""
The channel: an authenticated TCP connection between the nodes of a pair.

Its use now is to tell, at once, that the peer's process is gone. When a
process dies (SIGKILL, a crash), its kernel closes its connections (FIN or
RST) and refuses new ones (RST to the SYN): two answers a dead link, or a
dead host, never gives. So when a channel connection is lost, the node
connects again at once; a refused connection means nothing listens there
any more: the heartbeat treats the peer as gone (L{Heartbeat.peerGone}:
the backup takes over after its skew, instead of Master_Down_Interval).
Anything else (a timeout, an unreachable network, a connection that
succeeds) leaves the adverts' timers in charge.

Failure modes, and why they are safe:

  - A forged RST (or FIN) ends the connection, but the reconnection
    succeeds: the peer is there, nothing changes. Forging the refusal of
    the new connection as well takes an attacker who sees the traffic;
    the result is a dual master, resolved by the adverts (signed) within
    an interval, as after a partition.
  - A peer that restarts quickly may listen again before the probe
    arrives: the probe connects, and the adverts' down timer decides, as
    without the channel.
  - A peer stopping gracefully keeps the channel until it has handed over
    (priority 0 adverts, then the new master's advert); its channel then
    closes and the probe is refused, but this node is master already.

Connections: each node listens on C{channel_port} of its address and
connects to every peer's (from its own address), so a pair has two
connections; a peer counts as connected while either is authenticated.
Only configured peers may connect; each side proves it holds the key by a
challenge-response at connect time, bound to the direction and to both
addresses (a proof cannot be reflected or relayed)::

    -> LBHA-CHANNEL 1 GROUP NONCE      (both sides, at once)
    -> AUTH HMAC-SHA256(key, label, role, prover, verifier, group,
                        verifier's nonce, prover's nonce)
    -> PING                            (every PING_INTERVAL, both sides)

A line longer than L{MAX_LINE}, an unexpected line, a wrong proof, or no
proof within L{HANDSHAKE_TIMEOUT} closes the connection with one log
line. After the handshake, the lines other than PING belong to the
stick-table replication (L{lbproxy.ha.replication}, an
L{IChannelMessages}), which says which it refuses. While the peer does not
read what this node sends (the connection's buffer is full), this node
stops reading what the peer sends: a peer cannot make it queue answers
without bound.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Callable

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from zope.interface import implementer

from lbproxy.config.ha import HAConfig
from lbproxy.core.limits import LimitLog
from lbproxy.ha.advert import Address, _pack16
from lbproxy.ha.interfaces import IChannelMessages

VERSION = b"1"
MAX_LINE = 512
HANDSHAKE_TIMEOUT = 5.0
PING_INTERVAL = 5.0
#: Seconds between connection attempts to a peer that is not connected.
RETRY = 1.0
#: How long a probe after a lost connection may take.
PROBE_TIMEOUT = 1.0
_LABEL = b"lbproxy-ha-channel-1\0"


def proof(key: bytes, role: bytes, prover: Address, verifier: Address, group: int, verifierNonce: bytes, proverNonce: bytes) -> bytes:
    """
    What the C{role} side (C{b"connect"} or C{b"accept"}) sends to prove it
    holds C{key}.
    """
    message = _LABEL + role + b"\0" + _pack16(prover) + _pack16(verifier) + bytes([group]) + verifierNonce + proverNonce
    return hmac.new(key, message, hashlib.sha256).hexdigest().encode("ascii")


@implementer(IPushProducer)
class _ReadWhileHeard:
    """
    The producer of a channel connection's transport: while what this node
    writes piles up (the peer does not read it), the connection is not
    read either.
    """

    def __init__(self, transport) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


class ChannelProtocol(LineOnlyReceiver):
    """
    One channel connection, either direction.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, channel: Channel, connector: bool) -> None:
        self.channel = channel
        self.connector = connector
        self.peer: Address | None = None
        self.authenticated = False
        self.nonce = channel.nonce()
        self._theirNonce: bytes | None = None
        self._timer = None
        self._ping = None

    def connectionMade(self) -> None:
        self.peer = ipaddress.ip_address(self.transport.getPeer().host)
        if self.peer not in self.channel.config.peers:
            self.channel.refused(self.peer, "not a configured peer")
            self.transport.abortConnection()
            return
        self.transport.registerProducer(_ReadWhileHeard(self.transport), True)
        self.sendLine(b"LBHA-CHANNEL %s %d %s" % (VERSION, self.channel.config.group, self.nonce.hex().encode()))
        self._timer = self.channel.reactor.callLater(HANDSHAKE_TIMEOUT, self._fail, "no handshake in time")

    def _fail(self, why: str) -> None:
        self._timer = None
        self.channel.refused(self.peer, why)
        self.transport.abortConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._fail(f"a line longer than {MAX_LINE} bytes")

    def lineReceived(self, line: bytes) -> None:
        config = self.channel.config
        if self._theirNonce is None:
            parts = line.split(b" ")
            if len(parts) != 4 or parts[0] != b"LBHA-CHANNEL" or parts[1] != VERSION:
                return self._fail("not an lbproxy channel of this version")
            if parts[2] != str(config.group).encode():
                return self._fail(f"group {parts[2][:8]!r}, ours is {config.group}")
            try:
                nonce = bytes.fromhex(parts[3].decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                return self._fail("a malformed nonce")
            if len(nonce) != 16:
                return self._fail("a malformed nonce")
            self._theirNonce = nonce
            role = b"connect" if self.connector else b"accept"
            self.sendLine(b"AUTH " + proof(config.key, role, config.address, self.peer, config.group, nonce, self.nonce))
            return None
        if not self.authenticated:
            role = b"accept" if self.connector else b"connect"
            expected = proof(config.key, role, self.peer, config.address, config.group, self.nonce, self._theirNonce)
            if not line.startswith(b"AUTH ") or not hmac.compare_digest(line[5:], expected):
                return self._fail("its proof does not verify with our key")
            self.authenticated = True
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            self._schedulePing()
            self.channel.up(self)
            return None
        if line == b"PING":
            return None
        messages = self.channel.messages
        if messages is None:
            problem = f"an unexpected line {line[:32]!r}"
        else:
            problem = messages.lineReceived(self, line)
        if problem is not None:
            self._fail(problem)
        return None

    def close(self) -> None:
        """
        Close the connection once what is written is sent.
        """
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _schedulePing(self) -> None:
        self._ping = self.channel.reactor.callLater(PING_INTERVAL, self._sendPing)

    def _sendPing(self) -> None:
        self.sendLine(b"PING")
        self._schedulePing()

    def connectionLost(self, reason) -> None:
        for call in (self._timer, self._ping):
            if call is not None and call.active():
                call.cancel()
        if self.peer is not None:
            self.channel.lost(self, reason)


class _Accepting(Factory):
    noisy = False

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def buildProtocol(self, addr):
        return ChannelProtocol(self.channel, connector=False)


class _Connecting(ClientFactory):
    noisy = False

    def __init__(self, channel: Channel, peer: Address, probe: bool) -> None:
        self.channel = channel
        self.peer = peer
        self.probe = probe

    def buildProtocol(self, addr):
        return ChannelProtocol(self.channel, connector=True)

    def clientConnectionFailed(self, connector, reason) -> None:
        self.channel.connectFailed(self.peer, reason, self.probe)


class Channel:
    """
    The channel connections of this node to its peers.

    @param gone: called with a peer's address and a reason when its
        process is known to be gone.
    @param messages: what the connections carry besides the heartbeat
        (the stick-table replication), or None.
    """

    log = Logger()

    def __init__(
        self,
        config: HAConfig,
        reactor,
        gone: Callable[[Address, str], None],
        nonce=lambda: os.urandom(16),
        messages: IChannelMessages | None = None,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.nonce = nonce
        self.messages = messages
        self._gone = gone
        self._port = None
        self._running = False
        self.connections: dict[Address, set[ChannelProtocol]] = {peer: set() for peer in config.peers}
        self._attempting: dict[Address, object] = {}
        self._retries: dict[Address, object] = {}
        self._limitLog = LimitLog(reactor, period=60.0)
        self.refusedCount = 0

    def connected(self, peer: Address | None = None) -> bool:
        """
        Whether C{peer} (or any peer) has an authenticated connection now.
        """
        peers = [peer] if peer is not None else list(self.connections)
        return any(any(p.authenticated for p in self.connections.get(x, ())) for x in peers)

    def listen(self) -> None:
        """
        Listen on the channel port (C{CannotListenError} if it cannot).
        """
        self._port = self.reactor.listenTCP(self.config.channelPort, _Accepting(self), interface=str(self.config.address))

    def start(self) -> None:
        self._running = True
        for peer in self.config.peers:
            self._connect(peer, probe=False)

    def stop(self):
        """
        Close every connection and stop listening.

        @return: a L{Deferred} firing when the port is closed, or None.
        """
        self._running = False
        for call in self._retries.values():
            if call.active():
                call.cancel()
        self._retries.clear()
        for connector in self._attempting.values():
            connector.stopConnecting()
        self._attempting.clear()
        for protocols in self.connections.values():
            for protocol in list(protocols):
                protocol.close()
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening()
        return None

    # Connecting

    def _connect(self, peer: Address, probe: bool) -> None:
        self._retries.pop(peer, None)
        if not self._running or peer in self._attempting:
            return
        self._attempting[peer] = self.reactor.connectTCP(
            str(peer),
            self.config.channelPort,
            _Connecting(self, peer, probe),
            timeout=PROBE_TIMEOUT if probe else RETRY * 3,
            bindAddress=(str(self.config.address), 0),
        )

    def _retryLater(self, peer: Address) -> None:
        if self._running and peer not in self._retries and not self.connected(peer):
            self._retries[peer] = self.reactor.callLater(RETRY, self._connect, peer, False)

    def connectFailed(self, peer: Address, reason, probe: bool) -> None:
        self._attempting.pop(peer, None)
        if probe and reason.check(ConnectionRefusedError):
            self.log.info("ha: channel to {peer}: connection refused after the channel closed", peer=str(peer))
            self._gone(peer, "its channel closed and it refuses new connections: its lbproxy process is gone")
        self._retryLater(peer)

    # Connection events

    def up(self, protocol: ChannelProtocol) -> None:
        if protocol.connector:
            self._attempting.pop(protocol.peer, None)
        wasConnected = self.connected(protocol.peer)
        self.connections[protocol.peer].add(protocol)
        if not wasConnected:
            self.log.info("ha: channel to {peer} is up", peer=str(protocol.peer))
        if self.messages is not None:
            self.messages.connectionUp(protocol)

    def lost(self, protocol: ChannelProtocol, reason) -> None:
        peer = protocol.peer
        if protocol.authenticated and self.messages is not None:
            self.messages.connectionLost(protocol)
        if protocol.connector:
            self._attempting.pop(peer, None)
        protocols = self.connections.get(peer)
        if protocols is None or protocol not in protocols:
            if protocol.connector:
                self._retryLater(peer)
            return
        protocols.discard(protocol)
        if self.connected(peer) or not self._running:
            return
        self.log.info(
            "ha: channel to {peer} lost: {reason}",
            peer=str(peer),
            reason=reason.getErrorMessage(),
        )
        # Connect again at once: a refusal tells the process is gone.
        self._connect(peer, probe=True)
        if peer not in self._attempting:
            self._retryLater(peer)

    def refused(self, peer: Address | None, why: str) -> None:
        self.refusedCount += 1

        def emit(count: int) -> None:
            self.log.warn(
                "ha: channel connection from {peer} closed: {why}{more}",
                peer=str(peer),
                why=why,
                more=f" ({count} such)" if count > 1 else "",
            )

        self._limitLog.note((peer, why), emit)
