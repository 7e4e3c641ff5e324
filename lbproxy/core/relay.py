"""
The byte pump between a client connection and a backend connection.

A L{Relay} has two legs, L{Relay.client} and L{Relay.server}, each an
L{IHalfCloseableProtocol}. It forwards what one leg receives to the other
leg's transport, and:

  - applies backpressure both ways: each transport is registered as the
    other's streaming producer, so a slow reader pauses reading on the
    other side instead of letting the proxy buffer without bound;
  - propagates half-closes: a FIN from one side becomes
    C{loseWriteConnection()} toward the other, and a leg is closed once
    both its directions are done;
  - aborts both connections after C{idleTimeout} seconds without a byte
    either way;
  - counts bytes each way and, once both connections are gone, calls the
    function given to L{Relay.whenFinished} and fires L{Relay.finished},
    with a L{RelayResult} saying how the session ended.

Usage by a front::

    relay = Relay(reactor, idleTimeout=300)
    relay.client.makeConnection(clientTransport)  # pauses the client
    ...the front passes its transport's events on to relay.client...
    d = connector.connect(context, relay.serverFactory())
    d.addCallback(lambda connection: relay.start())
    relay.whenFinished(logSession)  # or relay.finished.addCallback(logSession)

A leg is a plain protocol: a front that owns a connection already (the
TCP front reading a PROXY header, an HTTP front switching to a tunnel)
attaches it with C{leg.makeConnection(transport)} and passes the
transport's events (C{dataReceived}, C{readConnectionLost},
C{writeConnectionLost}, C{connectionLost}) on to the leg.

Bytes the client sends before the backend is up are held, and the client
transport is paused on each one, so at most one read is held.

Activity for the idle timeout is a byte received from either side. A side
paused by backpressure resumes, and so counts, each time the slow side has
drained the proxy's buffer (64 KiB for a TCP transport).
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IProtocolFactory,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy._twisted.directwrite import writerFor

CLIENT = "client"
SERVER = "server"

#: Most bytes held from one side before the relay runs. Legs pause their
#: transport on every held read, so this is only reached if a caller keeps
#: feeding a leg by hand.
DEFAULT_MAX_HELD = 256 * 1024

# How much an end reason counts: a reset overrides a clean close, and an end
# decided by the relay's owner (or the idle timer) overrides both.
_CLOSED = 1
_RESET = 2
_DECIDED = 3


@dataclass(frozen=True)
class RelayResult:
    """
    How a relayed session ended.

    @ivar end: C{"client-closed"} or C{"server-closed"} (that side closed
        first, cleanly), C{"client-reset"} or C{"server-reset"} (that side's
        connection failed), C{"idle-timeout"}, or the reason given to
        L{Relay.close} / L{Relay.abort}.
    @ivar bytesIn: bytes received from the client.
    @ivar bytesOut: bytes received from the server (and sent on to the
        client).
    @ivar detail: more about a reset (the error message), or empty.
    """

    end: str
    bytesIn: int
    bytesOut: int
    detail: str = ""


def setNoDelay(transport) -> None:
    """
    Turn off Nagle's algorithm on C{transport} if it is a TCP transport:
    relayed interactive traffic must not wait for more bytes.
    """
    tcp = ITCPTransport(transport, None)
    if tcp is not None:
        try:
            tcp.setTcpNoDelay(True)
        except OSError:
            pass


def _discard(transport, data: bytes) -> None:
    pass


@implementer(IHalfCloseableProtocol)
class RelayLeg(Protocol):
    """
    One side of a L{Relay}: the protocol of the client or backend
    connection.

    @ivar side: L{CLIENT} or L{SERVER}.
    @ivar peer: the other leg.
    @ivar bytesReceived: bytes this leg's connection delivered.
    @ivar readClosed: the remote end sent FIN.
    @ivar writeClosed: our FIN toward the remote end was sent.
    @ivar lost: the connection is gone.

    Its attributes are slots, and it holds no list until it must hold
    bytes: a relay of an idle connection costs as little as it can.
    """

    __slots__ = (
        "relay",
        "side",
        "peer",
        "bytesReceived",
        "readClosed",
        "writeClosed",
        "lost",
        "producing",
        "_write",
        "_target",
        "_held",
        "_heldBytes",
        # Protocol's, which a slot would hide (class defaults).
        "transport",
        "connected",
    )

    def __init__(self, relay: Relay, side: str) -> None:
        self.transport = None
        self.connected = 0
        self.relay = relay
        self.side = side
        self.peer: RelayLeg | None = None
        self.bytesReceived = 0
        self.readClosed = False
        self.writeClosed = False
        self.lost = False
        # Whether this leg's transport is registered as the producer of
        # the peer's transport.
        self.producing = False
        # While relaying, the function writing to the peer transport
        # (lbproxy._twisted.directwrite), called with _target (that
        # transport) and the data; None before that.
        self._write = None
        self._target = None
        self._held: list[bytes] | None = None
        self._heldBytes = 0

    def __repr__(self) -> str:
        return f"<RelayLeg {self.side}>"

    @property
    def heldBytes(self) -> int:
        """
        Bytes received before the relay started, waiting for the peer.
        """
        return self._heldBytes

    def connectionMade(self) -> None:
        self.relay._legConnected(self)

    def dataReceived(self, data: bytes) -> None:
        self.bytesReceived += len(data)
        write = self._write
        if write is None:
            self.relay._hold(self, data)
            return
        relay = self.relay
        relay.lastActivity = relay._seconds()
        write(self._target, data)

    def readConnectionLost(self) -> None:
        self.relay._readClosed(self)

    def writeConnectionLost(self) -> None:
        self.relay._writeClosed(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.relay._lost(self, reason)


class _LegFactory(Factory):
    """
    Builds the server leg, once.
    """

    noisy = False
    __slots__ = ("_leg", "_built", "numPorts")

    def __init__(self, leg: RelayLeg) -> None:
        self.numPorts = 0
        self._leg = leg
        self._built = False

    def buildProtocol(self, addr):
        if self._built:
            return None
        self._built = True
        return self._leg


class Relay:
    """
    Forwards bytes both ways between a client and a backend connection.

    @ivar client: the client leg.
    @ivar server: the server leg.
    @ivar finished: fires once with a L{RelayResult} when both connections
        are gone (or, if the backend never connected, when the client's
        is). It never fails. It is made when first asked for: a front
        that keeps its relay for its connection's life passes its one
        callback to L{whenFinished} instead, for less memory.
    @ivar running: L{start} was called.
    @ivar closing: the session is ending; nothing more is relayed.
    @ivar lastActivity: reactor time of the last byte relayed.
    """

    log = Logger()

    __slots__ = (
        "_reactor",
        "_seconds",
        "idleTimeout",
        "maxHeld",
        "client",
        "server",
        "_finished",
        "_whenFinished",
        "_result",
        "running",
        "closing",
        "end",
        "detail",
        "_endRank",
        "lastActivity",
        "_idleCall",
        "_done",
    )

    def __init__(
        self,
        reactor,
        idleTimeout: float | None = None,
        maxHeld: int = DEFAULT_MAX_HELD,
    ) -> None:
        """
        @param reactor: provides C{seconds} and C{callLater}.
        @param idleTimeout: seconds without a byte either way after which
            both connections are aborted; None or 0 for no limit.
        @param maxHeld: most bytes held from one side before L{start}.
        """
        self._reactor = reactor
        self._seconds = reactor.seconds
        self.idleTimeout = idleTimeout
        self.maxHeld = maxHeld
        self.client = RelayLeg(self, CLIENT)
        self.server = RelayLeg(self, SERVER)
        self.client.peer = self.server
        self.server.peer = self.client
        self._finished: Deferred[RelayResult] | None = None
        self._whenFinished = None
        self._result: RelayResult | None = None
        self.running = False
        self.closing = False
        self.end: str | None = None
        self.detail = ""
        self._endRank = 0
        self.lastActivity = reactor.seconds()
        self._idleCall = None
        self._done = False

    def __repr__(self) -> str:
        return f"<Relay in={self.bytesIn} out={self.bytesOut} end={self.end}>"

    @property
    def finished(self) -> Deferred[RelayResult]:
        finished = self._finished
        if finished is None:
            finished = self._finished = Deferred()
            if self._result is not None:
                finished.callback(self._result)
        return finished

    def whenFinished(self, f) -> None:
        """
        Call C{f} once with the L{RelayResult} when the session is over, as
        a callback of L{finished} would be (and before those), without the
        Deferred and its callback chain (about 450 bytes, for as long as
        the connection lasts). One function per relay; an exception it
        raises is logged.
        """
        if self._whenFinished is not None:
            raise RuntimeError("the relay already has a function to call when finished")
        if self._result is not None:
            self._callWhenFinished(f, self._result)
        else:
            self._whenFinished = f

    def _callWhenFinished(self, f, result: RelayResult) -> None:
        try:
            f(result)
        except Exception:
            self.log.failure("calling {f!r} at the end of a relayed session", f=f)

    @property
    def bytesIn(self) -> int:
        """
        Bytes received from the client.
        """
        return self.client.bytesReceived

    @property
    def bytesOut(self) -> int:
        """
        Bytes received from the server.
        """
        return self.server.bytesReceived

    @property
    def legs(self) -> tuple[RelayLeg, RelayLeg]:
        return (self.client, self.server)

    def serverFactory(self) -> IProtocolFactory:
        """
        A protocol factory for the backend connection; it builds
        L{server}, once.
        """
        return _LegFactory(self.server)

    def start(self) -> None:
        """
        Both legs are connected: write the bytes held from either side, and
        relay. (A PROXY header is already written: the connector sends it.)

        Does nothing when the session already ended (the client left while
        the backend was connecting).
        """
        if self.closing or self._done:
            return
        if self.running:
            raise RuntimeError("relay already started")
        client, server = self.client, self.server
        if client.transport is None or server.transport is None:
            raise RuntimeError("both legs must be connected before start()")
        self.running = True
        clientTransport, serverTransport = client.transport, server.transport
        for leg in (client, server):
            if not leg.readClosed:
                leg.transport.resumeProducing()
        if not client.readClosed:
            serverTransport.registerProducer(clientTransport, True)
            client.producing = True
        if not server.readClosed:
            clientTransport.registerProducer(serverTransport, True)
            server.producing = True
        client._write, client._target = writerFor(serverTransport), serverTransport
        server._write, server._target = writerFor(clientTransport), clientTransport
        for leg in (client, server):
            if leg._held:
                held = leg._held
                leg._held = None
                leg._heldBytes = 0
                leg.peer.transport.writeSequence(held)
        for leg in (client, server):
            if leg.readClosed:
                self._forwardReadClose(leg)
        self.lastActivity = self._seconds()
        if self.idleTimeout and not self._done:
            self._idleCall = self._reactor.callLater(self.idleTimeout, self._checkIdle)

    def close(self, end: str, detail: str = "") -> None:
        """
        End the session with reason C{end}: close both connections after
        sending what is buffered for them.
        """
        self._setEnd(end, _DECIDED, detail)
        self.closing = True
        for leg in self.legs:
            self._stopRelaying(leg)
        for leg in self.legs:
            if leg.transport is not None and not leg.lost:
                leg.transport.loseConnection()
        self._maybeFinish()

    def abort(self, end: str, detail: str = "") -> None:
        """
        End the session with reason C{end}: drop both connections now,
        discarding what is buffered.
        """
        self._setEnd(end, _DECIDED, detail)
        self.closing = True
        for leg in self.legs:
            leg._write, leg._target = _discard, None
        for leg in self.legs:
            if leg.transport is not None and not leg.lost:
                leg.transport.abortConnection()
        self._maybeFinish()

    def _setEnd(self, end: str, rank: int, detail: str = "") -> None:
        if rank > self._endRank:
            self._endRank = rank
            self.end = end
            self.detail = detail

    def _stopRelaying(self, leg: RelayLeg) -> None:
        """
        Forward nothing more from C{leg}, and stop it pausing the peer.

        A peer whose connection is gone has nothing to unregister (and a
        transport switched to TLS with C{startTLS} cannot even be asked
        once it is lost: its TLS layer is gone with it).
        """
        leg._write, leg._target = _discard, None
        if leg.producing:
            leg.producing = False
            if not leg.peer.lost:
                leg.peer.transport.unregisterProducer()

    def _legConnected(self, leg: RelayLeg) -> None:
        if self.closing or self._done:
            # The session ended while this leg was connecting.
            leg.transport.abortConnection()
            return
        setNoDelay(leg.transport)
        if not self.running:
            leg.transport.pauseProducing()

    def _hold(self, leg: RelayLeg, data: bytes) -> None:
        if self.closing:
            return
        if leg._held is None:
            leg._held = []
        leg._held.append(data)
        leg._heldBytes += len(data)
        leg.transport.pauseProducing()
        if leg._heldBytes > self.maxHeld:
            self.log.error(
                "{side} sent {held} bytes before the relay started, more than "
                "{maxHeld}; its transport ignores pauseProducing",
                side=leg.side,
                held=leg._heldBytes,
                maxHeld=self.maxHeld,
            )
            self.abort(f"{leg.side}-overflow")

    def _readClosed(self, leg: RelayLeg) -> None:
        leg.readClosed = True
        self._setEnd(f"{leg.side}-closed", _CLOSED)
        if self.running and not self.closing:
            self._forwardReadClose(leg)

    def _forwardReadClose(self, leg: RelayLeg) -> None:
        """
        C{leg}'s remote end will send nothing more: half-close the peer's
        connection, and close C{leg}'s if its other direction is done too.
        """
        peer = leg.peer
        self._stopRelaying(leg)
        if peer.transport is not None and not peer.lost:
            halfClose = getattr(peer.transport, "loseWriteConnection", None)
            # A TLS transport is closed whole: TLS has no half-close. A TCP
            # transport switched to TLS by startTLS (mail STARTTLS; it then
            # provides ISSLTransport) would shut its socket under the TLS
            # layer without a close_notify, and Twisted's TLSMemoryBIOProtocol
            # (TLS to servers) passes loseWriteConnection through to the
            # TCP transport below it, whose shut socket then breaks the TLS
            # layer when the peer's own close_notify arrives. lbproxy's
            # listener transport (lbproxy.tls.transport) closes whole
            # either way.
            transport = peer.transport
            if halfClose is None or ISSLTransport.providedBy(transport):
                transport.loseConnection()
            else:
                halfClose()
        if leg.writeClosed and not leg.lost:
            leg.transport.loseConnection()

    def _writeClosed(self, leg: RelayLeg) -> None:
        leg.writeClosed = True
        if leg.readClosed and not leg.lost:
            leg.transport.loseConnection()

    def _lost(self, leg: RelayLeg, reason: Failure) -> None:
        leg.lost = True
        if self._done:
            return
        if reason.check(ConnectionDone):
            self._setEnd(f"{leg.side}-closed", _CLOSED)
        else:
            self._setEnd(f"{leg.side}-reset", _RESET, reason.getErrorMessage())
        self.closing = True
        peer = leg.peer
        self._stopRelaying(leg)
        self._stopRelaying(peer)
        if peer.transport is not None and not peer.lost:
            peer.transport.loseConnection()
        self._maybeFinish()

    def _maybeFinish(self) -> None:
        if self._done or not self.closing:
            return
        for leg in self.legs:
            if leg.transport is not None and not leg.lost:
                return
        self._done = True
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = None
        for leg in self.legs:
            leg._held = None
            leg._heldBytes = 0
        result = self._result = RelayResult(self.end or "closed", self.bytesIn, self.bytesOut, self.detail)
        f = self._whenFinished
        if f is not None:
            self._whenFinished = None
            self._callWhenFinished(f, result)
        if self._finished is not None:
            self._finished.callback(result)

    def _checkIdle(self) -> None:
        self._idleCall = None
        if self._done:
            return
        idle = self._seconds() - self.lastActivity
        if idle >= self.idleTimeout:
            self.abort("idle-timeout", f"no data for {idle:g}s")
        else:
            self._idleCall = self._reactor.callLater(
                self.idleTimeout - idle, self._checkIdle
            )
