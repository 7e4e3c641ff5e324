"""
What every front does the same way with a client connection of one of its
listeners: L{FrontConnection}, the base of the TCP, HTTP and mail fronts'
protocols.

  - B{Admission}: the connection is counted on its live
    L{lbproxy.core.model.Listener}, which refuses it past the listener's
    C{maxconn}; the front then answers as its protocol does (L{refused}).
  - B{Addresses}: C{peer} is the connection's peer; C{client} and C{local}
    are what a trusted proxy's PROXY header named
    (L{lbproxy.interfaces.IProxiedAddresses}, told by the shared header
    reader of L{lbproxy.core.acceptproxy}), else the connection's own.
  - B{Phase}: the one thing the connection is waiting for now (a request
    head, a login, a ClientHello...) and its deadline
    (L{lbproxy.core.timers.PhaseTimer}).
  - B{Relay}: once a flow is placed, the client connection's events go to
    the relay's client leg (L{relayTo}), at no cost per read.
  - B{End}: L{ended} runs once, however many ways the connection ends;
    the session leaves the listener's C{maxconn} and its bytes are counted.
    The front writes its own log line.
"""

from __future__ import annotations

from twisted.internet.interfaces import IAddress, ILoggingContext, IProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.core.timers import PhaseTimer, TimerWheel
from lbproxy.interfaces import IProxiedAddresses


@implementer(IProtocol, ILoggingContext, IProxiedAddresses)
class FrontConnection:
    """
    The base of every front's client connection protocol (see the module
    docstring): an L{IProtocol} of its own rather than a Twisted
    C{Protocol}, so that a front whose classes all declare C{__slots__}
    (the HTTP front, tens of thousands of idle keep-alive clients) has no
    instance dictionary.

    A subclass implements L{accepted} (the connection may be served) and
    L{refused} (the listener is full), and calls L{ended} exactly when its
    session is over (it runs once). L{phaseExpired} is called when the
    current phase's deadline passes.

    @ivar listener: the live L{lbproxy.core.model.Listener}.
    @ivar config: its config (the listener's mode's settings).
    @ivar transport: the client connection's transport.
    @ivar client: the client's address (a trusted proxy's PROXY header's
        source, else C{peer}).
    @ivar local: the address the client connected to, likewise.
    @ivar started: when the connection was accepted.
    @ivar timer: the connection's L{PhaseTimer}.
    @ivar finished: whether L{ended} ran.
    @ivar relayLeg: the relay's client leg once L{relayTo} handed the
        connection over.
    """

    __slots__ = (
        "listener",
        "config",
        "_reactor",
        "timer",
        "transport",
        "client",
        "local",
        "started",
        "finished",
        "_admitted",
        "relayLeg",
    )

    #: Set by C{Factory.buildProtocol} for fronts built that way (as on a
    #: Twisted C{Protocol}); the HTTP front keeps its own.
    factory = None

    def __init__(self, listener, reactor, timers: TimerWheel | None = None) -> None:
        """
        @param timers: the L{TimerWheel} of a front whose connections change
            phase many times a second, for their L{PhaseTimer}s.
        """
        self.listener = listener
        self.config = listener.config
        self._reactor = reactor
        self.timer = PhaseTimer(reactor, self, timers)
        self.transport = None
        self.client: IAddress | None = None
        self.local: IAddress | None = None
        self.started = 0.0
        self.finished = False
        self._admitted = False
        self.relayLeg = None

    # IProtocol, ILoggingContext

    def makeConnection(self, transport) -> None:
        self.transport = transport
        self.connectionMade()

    def logPrefix(self) -> str:
        return self.__class__.__name__

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the client: each front reads them its own way.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The client connection is gone: each front ends its session.
        """

    @property
    def peer(self) -> IAddress:
        """
        The connection's peer address (C{client} unless a PROXY header
        named another).
        """
        return self.transport.getPeer()

    # IProxiedAddresses

    def proxiedAddresses(self, client: IAddress, local: IAddress) -> None:
        self.client = client
        self.local = local

    # Protocol

    def connectionMade(self) -> None:
        transport = self.transport
        self.started = self._reactor.seconds()
        if self.client is None:
            self.client = transport.getPeer()
            self.local = transport.getHost()
        if not self.listener.admit(self):
            self.refused()
            return
        self._admitted = True
        self.accepted()

    # What a subclass implements.

    def accepted(self) -> None:
        """
        The connection is admitted: begin serving it.
        """

    def refused(self) -> None:
        """
        The listener is at its C{maxconn}: answer as the protocol does,
        close, and call L{ended}.
        """
        self.ended(error=True)
        self.transport.loseConnection()

    def phaseExpired(self, phase: str) -> None:
        """
        The deadline of C{phase} passed.
        """

    def listenerStopping(self) -> None:
        """
        The listener stops serving (the daemon stops, or a reload removed
        it): a front whose connection is idle between two requests closes
        it. By default nothing: a session runs to its end, within the
        listener's grace period.
        """

    # What a subclass calls.

    def relayTo(self, leg) -> None:
        """
        From now on the client connection's events go to C{leg}, the relay's
        client leg: its C{dataReceived} takes this protocol's place (an
        instance attribute, so a read costs no call through this class), and
        the half-close and loss events are forwarded (see the subclasses'
        C{readConnectionLost} and C{connectionLost}).
        """
        self.timer.stop()
        self.relayLeg = leg
        self.receiveWith(leg.dataReceived)
        leg.makeConnection(self.transport)

    def receiveWith(self, receiver) -> None:
        """
        Pass the client's bytes to C{receiver} from now on: by default an
        instance attribute in the place of C{dataReceived} (no cost per
        read), for fronts whose connections have an instance dictionary; a
        front without one overrides this.
        """
        self.dataReceived = receiver

    def ended(self, bytesIn: int = 0, bytesOut: int = 0, error: bool = False) -> bool:
        """
        The session is over: it leaves the listener's C{maxconn}, its bytes
        and (when C{error}) an error are counted on the listener. Runs once:
        returns True the first time (the caller then writes its log line),
        False after.
        """
        if self.finished:
            return False
        self.finished = True
        timer = self.timer
        if timer.phase is not None:
            # (A stopped timer waits for nothing.)
            timer.stop()
        listener = self.listener
        if self._admitted:
            listener.leave(self)
        counters = listener.counters
        counters.bytesIn += bytesIn
        counters.bytesOut += bytesOut
        if error:
            counters.errors += 1
        return True
