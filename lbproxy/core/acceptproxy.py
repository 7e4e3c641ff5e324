"""
A trusted proxy's PROXY protocol header in front of a listener whose front
does not read it itself (C{accept_proxy}).

Plain TCP and HTTP fronts read the header as the first bytes of their own
stream (L{lbproxy.tcp.front}, L{lbproxy.http.front}), with their own timeouts
and log lines. Every other listener gets its factory wrapped in
L{AcceptProxyFactory}: a listener terminating TLS, whose header comes
before the handshake, a mail listener and an HTTP redirect listener::

    TCP connection -> ProxyHeaderReader -> [ServerTLSTransport ->] front

For a peer in C{accept_proxy} the reader takes the header (within
L{PROXY_HEADER_TIMEOUT}), tells the protocol it wraps the addresses the
header names (L{IProxiedAddresses}), and steps out of the way: the wrapped
protocol becomes the TCP transport's protocol, so nothing of the reader
stays on the data path, and the front sees the connection only once the
header is read. A peer outside C{accept_proxy} is served directly and is
itself the client. A bad or late header from a trusted peer closes the
connection with one log line; the front never sees it.
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from lbproxy._twisted.handover import handOver
from lbproxy.core.proxyprotocol import PROXY_HEADER_TIMEOUT, ProxyHeaderParser, ProxyProtocolError
from lbproxy.core.wrapping import FactoryLayer
from lbproxy.interfaces import IProxiedAddresses


class ProxyHeaderReader(Protocol):
    """
    Reads one trusted peer's PROXY header, then hands the connection to the
    wrapped protocol. It is not half-closeable: a peer that shuts its side
    before the header is complete has the connection closed; after the
    hand-over, the wrapped protocol gets half-closes as it would directly.

    @ivar wrapped: the protocol the connection is for.
    @ivar factory: the L{AcceptProxyFactory}.
    """

    log = Logger()

    def __init__(self, factory: AcceptProxyFactory, wrapped) -> None:
        self.factory = factory
        self.wrapped = wrapped
        self._parser = ProxyHeaderParser()
        self._received = 0
        self._timer = None
        # Whether this reader still gets the connection's events: after
        # the header only when the transport cannot be given the wrapped
        # protocol (a transport without a "protocol" attribute).
        self._forwarding = False
        self._handedOver = False

    def __repr__(self) -> str:
        return f"<ProxyHeaderReader {self.wrapped!r}>"

    def connectionMade(self) -> None:
        self._timer = self.factory.reactor.callLater(self.factory.timeout, self._timedOut)

    def dataReceived(self, data: bytes) -> None:
        if self._forwarding:
            self.wrapped.dataReceived(data)
            return
        if self._parser is None:
            return
        self._received += len(data)
        try:
            parsed = self._parser.feed(data)
        except ProxyProtocolError as error:
            self._refuse(str(error))
            return
        if parsed is None:
            return
        header, rest = parsed
        self._parser = None
        self._stopTimer()
        wrapped = self.wrapped
        if header.source is not None:
            IProxiedAddresses(wrapped).proxiedAddresses(header.source, header.destination)
        transport = self.transport
        # The transport delivers straight to the wrapped protocol from now
        # on, or (a transport without a "protocol") through this reader.
        if not handOver(transport, self, wrapped):
            self._forwarding = True
        self._handedOver = True
        wrapped.makeConnection(transport)
        if rest and not getattr(transport, "disconnecting", False):
            wrapped.dataReceived(rest)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopTimer()
        if self._handedOver:
            self.wrapped.connectionLost(reason)
            return
        if self._parser is not None and self._received:
            self._parser = None
            self._logRefusal("connection closed before a complete PROXY header")

    def _timedOut(self) -> None:
        self._timer = None
        self._refuse(f"no complete PROXY header within {self.factory.timeout:g}s")

    def _refuse(self, detail: str) -> None:
        self._parser = None
        self._stopTimer()
        self._logRefusal(detail)
        self.transport.loseConnection()

    def _logRefusal(self, detail: str) -> None:
        self.factory.listener.counters.errors += 1
        peer = self.transport.getPeer()
        self.log.warn(
            "{listener}: closed the connection of trusted proxy {peer}: {detail}",
            listener=self.factory.listener.name,
            peer=f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}",
            detail=detail,
        )

    def _stopTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()


class AcceptProxyFactory(FactoryLayer):
    """
    Wraps a listener's factory: connections from a peer in the listener's
    C{accept_proxy} start with a PROXY header read by a L{ProxyHeaderReader}.

    @ivar wrappedFactory: the listener's factory (its TLS layer, if any,
        included).
    @ivar listener: the live L{lbproxy.core.model.Listener}; a bad or late
        header counts as one of its errors.
    @ivar timeout: seconds a trusted peer has to send its header.
    """

    def __init__(self, wrappedFactory, listener, reactor, timeout: float = PROXY_HEADER_TIMEOUT) -> None:
        from lbproxy.core.model import Listener

        super().__init__(wrappedFactory, reactor)
        self.listener = Listener.of(listener)
        self.timeout = timeout

    def buildProtocol(self, addr):
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None or not self.listener.config.trustsProxyFrom(getattr(addr, "host", "")):
            return wrapped
        return ProxyHeaderReader(self, wrapped)
