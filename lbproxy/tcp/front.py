"""
The L4 TCP front: one listener relaying each connection to a server of its
pool.

Per connection: enforce the listener's C{maxconn}; read a PROXY header
first when the peer is a trusted proxy (C{accept_proxy}); on a listener
with SNI routes, read the client's TLS ClientHello (without terminating
TLS) and choose the pool by its server name; pick and connect a server
(L{lbproxy.core.connect}); send the pool's PROXY header (C{send_proxy}) to it;
then relay bytes both ways (L{lbproxy.core.relay}), starting with the bytes
read so far, untouched. Every connection ends with one log line::

    tcp 127.0.0.1:53210 web -> web/web1 in=78 out=612 connect=0.4ms duration=12.0ms end=client-closed

with C{sni=NAME} (C{sni=-} without one) after the server on a listener
with SNI routes, and C{queue=TIME} after the connect time when the
connection waited in the pool's queue.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.core.connect import BackendConnection, BackendConnector, describeFailure
from lbproxy.core.context import FlowContext
from lbproxy.core.format import formatAddress, formatSeconds
from lbproxy.tcp.sni import SNIFlowContext, SNIRoutes
from lbproxy.errors import ConnectFailed, LocalLimitReached, NoServerAvailable, QueueTimeout
from lbproxy.core.proxyprotocol import PROXY_HEADER_TIMEOUT, ProxyHeaderParser, ProxyProtocolError
from lbproxy.core.relay import Relay, RelayResult
from lbproxy.tls.client import sslErrorText
from lbproxy.tls.clienthello import ClientHelloError, ClientHelloReader

SESSION_FORMAT = (
    "tcp {client} {listener} -> {server}{sniField} in={bytesIn} out={bytesOut} "
    "connect={connect}{queueField} duration={duration} end={end}{details}"
)


@implementer(IHalfCloseableProtocol, IHandshakeListener)
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
    @ivar pool: the pool the flow goes to: the listener's, or the one its
        SNI routes chose.
    @ivar sni: the server name of the client's ClientHello (listeners with
        SNI routes), else None.

    On a listener that terminates TLS the flow is placed once the client's
    handshake has succeeded: a client that never completes one costs no
    server connection.
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
        self.pool = factory.pool
        self.sni: str | None = None
        self._hello: ClientHelloReader | None = None
        self._helloTimer = None
        self._leg = None
        self._parser: ProxyHeaderParser | None = None
        self._headerBytes = 0
        self._headerTimer = None
        self._connecting = None
        self._started = 0.0
        self._logged = False
        # Seconds waited in the pool's queue by a connection that timed out there.
        self._queueSeconds = 0.0
        self._awaitingHandshake = False

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
        if listener.tls is not None:
            # The TLS layer reads on until the handshake is done.
            self._awaitingHandshake = True
            return
        transport.pauseProducing()
        if listener.trustsProxyFrom(getattr(self.peer, "host", "")):
            self._parser = ProxyHeaderParser()
            self._headerTimer = self._reactor.callLater(
                factory.proxyHeaderTimeout, self._headerTimedOut
            )
            transport.resumeProducing()
        else:
            self._afterHeader(b"")

    def handshakeCompleted(self) -> None:
        """
        The client's TLS handshake succeeded: place the flow.
        """
        if self._awaitingHandshake:
            self._awaitingHandshake = False
            self.transport.pauseProducing()
            self._afterHeader(b"")

    # Events of the client connection: to the relay once the flow is being
    # placed, to the PROXY header parser before.

    def dataReceived(self, data: bytes) -> None:
        if self._awaitingHandshake:
            self.handshakeCompleted()
        leg = self._leg
        if leg is not None:
            leg.dataReceived(data)
        elif self._hello is not None:
            self._helloReceived(data)
        elif self._parser is not None:
            self._headerReceived(data)

    def readConnectionLost(self) -> None:
        if self._awaitingHandshake:
            self.transport.loseConnection()
        elif self._leg is not None:
            self._leg.readConnectionLost()
        elif self._hello is not None:
            self._helloAbandoned("connection closed")
            self.transport.loseConnection()
        elif self._parser is not None:
            self._headerAbandoned("connection closed")
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        if self._leg is not None:
            self._leg.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._awaitingHandshake:
            self._awaitingHandshake = False
            if isinstance(reason.value, SSL.Error):
                detail = sslErrorText(reason.value)
            else:
                detail = describeFailure(reason)
            self._finish("tls-handshake-failed", detail=detail)
            return
        if self._leg is not None:
            self._leg.connectionLost(reason)
        elif self._hello is not None:
            self._helloAbandoned("connection lost")
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
        self._afterHeader(rest)

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

    # The ClientHello, on a listener with SNI routes.

    def _afterHeader(self, held: bytes) -> None:
        """
        The connection is admitted and any PROXY header read: read the
        ClientHello when the listener routes by SNI, else place the flow.
        """
        if not self.factory.sniRoutes:
            self._beginFlow(held)
            return
        self._hello = ClientHelloReader()
        self._helloTimer = self._reactor.callLater(
            self.factory.listener.helloTimeout, self._helloTimedOut
        )
        self.transport.resumeProducing()
        if held:
            self._helloReceived(held)

    def _helloReceived(self, data: bytes) -> None:
        reader = self._hello
        try:
            hello = reader.feed(data)
        except ClientHelloError as e:
            self._helloFailed("bad-clienthello", str(e))
            return
        if hello is None:
            return
        self._stopHelloTimer()
        self._hello = None
        self.sni = hello.serverName
        if hello.serverName is None:
            self._fallBack("no-sni", "ClientHello without a server name", reader.received)
            return
        pool = self.factory.sniRoutes.poolFor(hello.serverName)
        if pool is not None:
            self.pool = pool
        self.transport.pauseProducing()
        self._beginFlow(reader.received)

    def _helloTimedOut(self) -> None:
        self._helloTimer = None
        reader = self._hello
        detail = f"no complete ClientHello within {self.factory.listener.helloTimeout:g}s"
        if reader.size:
            detail += f" ({reader.size} bytes received)"
        self._helloFailed("bad-clienthello", detail)

    def _helloFailed(self, end: str, detail: str) -> None:
        reader, self._hello = self._hello, None
        self._stopHelloTimer()
        self._fallBack(end, detail, reader.received)

    def _fallBack(self, end: str, detail: str, held: bytes) -> None:
        """
        No server name to route by: the listener's pool gets the flow
        (C{sni_fallback = "default"}), or the connection is closed.
        """
        if self.factory.listener.sniFallback == "reject":
            self._finish(end, detail=detail)
            self.transport.loseConnection()
            return
        self.log.debug(
            "listener {listener}: {detail}; to its pool {pool}",
            listener=self.factory.listener.name,
            detail=detail,
            pool=self.pool.name,
        )
        self.transport.pauseProducing()
        self._beginFlow(held)

    def _helloAbandoned(self, how: str) -> None:
        """
        The client left before its ClientHello was complete.
        """
        reader, self._hello = self._hello, None
        self._stopHelloTimer()
        if reader.size:
            self._finish("bad-clienthello", detail=f"{how} before a complete ClientHello ({reader.size} bytes)")
        else:
            self._finish("client-closed", detail="before sending a ClientHello")

    def _stopHelloTimer(self) -> None:
        if self._helloTimer is not None:
            if self._helloTimer.active():
                self._helloTimer.cancel()
            self._helloTimer = None

    # Placing the flow.

    def _beginFlow(self, held: bytes) -> None:
        factory = self.factory
        relay = self.relay = Relay(self._reactor, idleTimeout=factory.listener.idleTimeout)
        self._leg = relay.client
        relay.client.makeConnection(self.transport)
        if held:
            relay.client.dataReceived(held)
        relay.finished.addCallback(self._relayFinished)
        if factory.sniRoutes:
            context = SNIFlowContext(self.client, self.local, self.sni)
        else:
            context = FlowContext(self.client, self.local)
        connecting = self._connecting = factory.connectorFor(self.pool).connect(
            context, relay.serverFactory()
        )
        connecting.addCallbacks(self._connected, self._notConnected)

    def _connected(self, connection: BackendConnection) -> None:
        self._connecting = None
        self.connection = connection
        self.relay.start()

    def _notConnected(self, reason: Failure) -> None:
        self._connecting = None
        if reason.check(CancelledError):
            return
        if reason.check(QueueTimeout):
            self._queueSeconds = reason.value.waited
            end, detail = "queue-timeout", str(reason.value)
        elif reason.check(NoServerAvailable):
            end, detail = "no-server", str(reason.value)
        elif reason.check(LocalLimitReached):
            end, detail = "local-limit", str(reason.value)
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
            queueSeconds = connection.queueTime
        else:
            server = f"{self.pool.name}/-"
            connectSeconds = None
            queueSeconds = self._queueSeconds
        durationSeconds = self._reactor.seconds() - self._started
        self.log.info(
            SESSION_FORMAT,
            client=formatAddress(self.client),
            clientHost=getattr(self.client, "host", None),
            clientPort=getattr(self.client, "port", None),
            peer=formatAddress(self.peer),
            listener=factory.listener.name,
            pool=self.pool.name,
            server=server,
            sni=self.sni,
            sniField=(f" sni={self.sni or '-'}" if factory.sniRoutes else ""),
            bytesIn=bytesIn,
            bytesOut=bytesOut,
            connect=formatSeconds(connectSeconds),
            connectSeconds=connectSeconds,
            queueSeconds=queueSeconds,
            queueField=f" queue={formatSeconds(queueSeconds)}" if queueSeconds else "",
            duration=formatSeconds(durationSeconds),
            durationSeconds=durationSeconds,
            end=end,
            detail=detail,
            details=f" ({detail})" if detail else "",
        )


class TCPProxyFactory(ServerFactory):
    """
    Serves one TCP listener: relays its connections to servers of a pool,
    or, with SNI routes, of the pool the client's server name chooses.

    @ivar listener: the L{lbproxy.config.ListenerConfig}; C{maxconn} 0
        means no limit.
    @ivar pool: the listener's L{lbproxy.core.pool.Pool}.
    @ivar connector: the L{BackendConnector} placing flows on the pool.
    @ivar sniRoutes: the listener's L{SNIRoutes} (empty without routes).
    @ivar sessions: the connections being served (counted for maxconn).
    @ivar rejected: connections closed because the listener was full.
    """

    protocol = TCPProxyProtocol
    proxyHeaderTimeout = PROXY_HEADER_TIMEOUT

    def __init__(self, listener, pool, reactor, pools: dict | None = None) -> None:
        """
        @param pools: every live pool by name, for the listener's SNI
            routes (needed only when it has routes).
        """
        self.listener = listener
        self.pool = pool
        self._reactor = reactor
        self.connector = BackendConnector(pool, reactor)
        self.sniRoutes = SNIRoutes(listener.routes, pools or {pool.name: pool})
        self._connectors = {pool: self.connector}
        for routed in (*self.sniRoutes.exact.values(), *self.sniRoutes.wildcards.values()):
            if routed not in self._connectors:
                self._connectors[routed] = BackendConnector(routed, reactor)
        self.sessions: set[TCPProxyProtocol] = set()
        self.rejected = 0

    def __repr__(self) -> str:
        return f"<TCPProxyFactory {self.listener.name} -> {self.pool.name}>"

    def connectorFor(self, pool) -> BackendConnector:
        """
        The connector placing flows on C{pool}, one of the listener's.
        """
        return self._connectors[pool]

    def buildProtocol(self, addr: IAddress) -> TCPProxyProtocol:
        return self.protocol(self, self._reactor)
