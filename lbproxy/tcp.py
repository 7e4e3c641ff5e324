"""
The L4 TCP front: one listener relaying each connection to a server of its
pool.

Per connection: enforce the listener's C{maxconn}; read a PROXY header
first when the peer is a trusted proxy (C{accept_proxy}); pick and connect
a server (L{lbproxy.connect}); send the pool's PROXY header (C{send_proxy})
to it; then relay bytes both ways (L{lbproxy.relay}). Every connection ends
with one log line::

    tcp 127.0.0.1:53210 web -> web/web1 in=78 out=612 connect=0.4ms duration=12.0ms end=client-closed
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.connect import BackendConnection, BackendConnector
from lbproxy.context import FlowContext
from lbproxy.errors import ConnectFailed, NoServerAvailable
from lbproxy.proxyprotocol import ProxyHeaderParser, ProxyProtocolError, buildHeader
from lbproxy.relay import Relay, RelayResult

#: Seconds a trusted proxy has to send its PROXY header (the specification
#: asks for at least 3, to cover one TCP retransmission).
PROXY_HEADER_TIMEOUT = 5.0

SESSION_FORMAT = (
    "tcp {client} {listener} -> {server} in={bytesIn} out={bytesOut} "
    "connect={connect} duration={duration} end={end}{details}"
)


def formatAddress(address: IAddress) -> str:
    """
    C{host:port}, C{[v6host]:port}, or the text of a non-IP address.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        name = getattr(address, "name", None)
        if isinstance(name, bytes):
            return name.decode("utf-8", "replace")
        return str(name or address)
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def formatSeconds(seconds: float | None) -> str:
    """
    A duration for a log line: milliseconds below a second, else seconds;
    C{-} for none.
    """
    if seconds is None:
        return "-"
    if seconds < 1.0:
        return f"{seconds * 1000:.1f}ms"
    return f"{seconds:.3f}s"


@implementer(IHalfCloseableProtocol)
class TCPProxyProtocol(Protocol):
    """
    One client connection of a TCP listener.

    @ivar peer: the connection's peer address (a trusted proxy's own
        address when it sends a PROXY header).
    @ivar client: the client's address: the PROXY header's source when a
        trusted proxy sent one, else the connection's peer.
    @ivar local: the address the client connected to, likewise.
    @ivar relay: the L{Relay} once the flow is being placed, else None.
    @ivar connection: the L{BackendConnection} once connected, else None.
    """

    log = Logger()

    def __init__(self, factory: TCPProxyFactory, reactor) -> None:
        self.factory = factory
        self._reactor = reactor
        self.peer: IAddress | None = None
        self.client: IAddress | None = None
        self.local: IAddress | None = None
        self.relay: Relay | None = None
        self.connection: BackendConnection | None = None
        self._leg = None
        self._parser: ProxyHeaderParser | None = None
        self._headerBytes = 0
        self._headerTimer = None
        self._connecting = None
        self._started = 0.0
        self._logged = False

    def connectionMade(self) -> None:
        factory = self.factory
        listener = factory.listener
        transport = self.transport
        self._started = self._reactor.seconds()
        self.peer = self.client = transport.getPeer()
        self.local = transport.getHost()
        if listener.maxconn and len(factory.sessions) >= listener.maxconn:
            factory.rejected += 1
            self._finish("maxconn", detail=f"listener at its maxconn of {listener.maxconn}")
            transport.loseConnection()
            return
        factory.sessions.add(self)
        transport.pauseProducing()
        if listener.trustsProxyFrom(getattr(self.peer, "host", "")):
            self._parser = ProxyHeaderParser()
            self._headerTimer = self._reactor.callLater(
                factory.proxyHeaderTimeout, self._headerTimedOut
            )
            transport.resumeProducing()
        else:
            self._beginFlow(b"")

    # Events of the client connection: to the relay once the flow is being
    # placed, to the PROXY header parser before.

    def dataReceived(self, data: bytes) -> None:
        leg = self._leg
        if leg is not None:
            leg.dataReceived(data)
        elif self._parser is not None:
            self._headerReceived(data)

    def readConnectionLost(self) -> None:
        if self._leg is not None:
            self._leg.readConnectionLost()
        elif self._parser is not None:
            self._headerAbandoned("connection closed")
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        if self._leg is not None:
            self._leg.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._leg is not None:
            self._leg.connectionLost(reason)
        elif not self._logged:
            self._headerAbandoned("connection lost")

    def _headerAbandoned(self, how: str) -> None:
        """
        The trusted peer left before its PROXY header was complete. With
        no byte at all it is a plain close (a TCP health check, say).
        """
        self._parser = None
        self._stopHeaderTimer()
        if self._headerBytes:
            self._finish("bad-proxy-header", detail=f"{how} before a complete PROXY header")
        else:
            self._finish("client-closed", detail="before sending a PROXY header")

    # The PROXY header from a trusted proxy.

    def _headerReceived(self, data: bytes) -> None:
        self._headerBytes += len(data)
        try:
            parsed = self._parser.feed(data)
        except ProxyProtocolError as e:
            self._badHeader(str(e))
            return
        if parsed is None:
            return
        header, rest = parsed
        self._parser = None
        self._stopHeaderTimer()
        if header.source is not None:
            self.client, self.local = header.source, header.destination
        self.transport.pauseProducing()
        self._beginFlow(rest)

    def _headerTimedOut(self) -> None:
        self._headerTimer = None
        self._badHeader(
            f"no complete PROXY header within {self.factory.proxyHeaderTimeout:g}s"
        )

    def _stopHeaderTimer(self) -> None:
        if self._headerTimer is not None:
            if self._headerTimer.active():
                self._headerTimer.cancel()
            self._headerTimer = None

    def _badHeader(self, detail: str) -> None:
        self._parser = None
        self._stopHeaderTimer()
        self._finish("bad-proxy-header", detail=detail)
        self.transport.loseConnection()

    # Placing the flow.

    def _beginFlow(self, held: bytes) -> None:
        factory = self.factory
        relay = self.relay = Relay(self._reactor, idleTimeout=factory.listener.idleTimeout)
        self._leg = relay.client
        relay.client.makeConnection(self.transport)
        if held:
            relay.client.dataReceived(held)
        relay.finished.addCallback(self._relayFinished)
        context = FlowContext(self.client, self.local)
        connecting = self._connecting = factory.connector.connect(
            context, relay.serverFactory()
        )
        connecting.addCallbacks(self._connected, self._notConnected)

    def _connected(self, connection: BackendConnection) -> None:
        self._connecting = None
        self.connection = connection
        preamble = buildHeader(self.factory.pool.options.sendProxy, self.client, self.local)
        self.relay.start(preamble)

    def _notConnected(self, reason: Failure) -> None:
        self._connecting = None
        if reason.check(CancelledError):
            return
        if reason.check(NoServerAvailable):
            end, detail = "no-server", str(reason.value)
        elif reason.check(ConnectFailed):
            end, detail = "connect-failed", str(reason.value)
        else:
            self.log.failure(
                "placing a connection of listener {listener} failed",
                reason,
                listener=self.factory.listener.name,
            )
            end, detail = "internal-error", reason.getErrorMessage()
        self.relay.close(end, detail)

    def _relayFinished(self, result: RelayResult) -> None:
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        self._finish(result.end, result.bytesIn, result.bytesOut, result.detail)

    def _finish(
        self, end: str, bytesIn: int = 0, bytesOut: int = 0, detail: str = ""
    ) -> None:
        """
        The session is over: free its slots and log its one line.
        """
        if self._logged:
            return
        self._logged = True
        factory = self.factory
        factory.sessions.discard(self)
        connection = self.connection
        if connection is not None:
            connection.release()
            server = connection.server.qualifiedName
            connectSeconds = connection.connectTime
        else:
            server = f"{factory.pool.name}/-"
            connectSeconds = None
        durationSeconds = self._reactor.seconds() - self._started
        self.log.info(
            SESSION_FORMAT,
            client=formatAddress(self.client),
            clientHost=getattr(self.client, "host", None),
            clientPort=getattr(self.client, "port", None),
            peer=formatAddress(self.peer),
            listener=factory.listener.name,
            pool=factory.pool.name,
            server=server,
            bytesIn=bytesIn,
            bytesOut=bytesOut,
            connect=formatSeconds(connectSeconds),
            connectSeconds=connectSeconds,
            duration=formatSeconds(durationSeconds),
            durationSeconds=durationSeconds,
            end=end,
            detail=detail,
            details=f" ({detail})" if detail else "",
        )


class TCPProxyFactory(ServerFactory):
    """
    Serves one TCP listener: relays its connections to servers of a pool.

    @ivar listener: the L{lbproxy.config.ListenerConfig}; C{maxconn} 0
        means no limit.
    @ivar pool: the L{lbproxy.pool.Pool}.
    @ivar connector: the L{BackendConnector} placing flows on the pool.
    @ivar sessions: the connections being served (counted for maxconn).
    @ivar rejected: connections closed because the listener was full.
    """

    protocol = TCPProxyProtocol
    proxyHeaderTimeout = PROXY_HEADER_TIMEOUT

    def __init__(self, listener, pool, reactor) -> None:
        self.listener = listener
        self.pool = pool
        self._reactor = reactor
        self.connector = BackendConnector(pool, reactor)
        self.sessions: set[TCPProxyProtocol] = set()
        self.rejected = 0

    def __repr__(self) -> str:
        return f"<TCPProxyFactory {self.listener.name} -> {self.pool.name}>"

    def buildProtocol(self, addr: IAddress) -> TCPProxyProtocol:
        return self.protocol(self, self._reactor)
