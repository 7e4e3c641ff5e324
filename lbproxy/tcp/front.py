"""
The L4 TCP front: one listener relaying each connection to a server of its
pool.

Per connection (after what every front shares, L{lbproxy.core.session}:
the listener's C{maxconn}, the addresses of a trusted proxy's PROXY
header): on a listener with SNI routes, read the client's TLS ClientHello
(without terminating TLS) and choose the pool by its server name; pick and
connect a server
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
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.core.connect import BackendConnection, BackendConnector, describeFailure
from lbproxy.core.context import FlowContext
from lbproxy.core.format import SESSION_LINE, formatAddress, formatSeconds
from lbproxy.core.model import Listener
from lbproxy.core.relay import Relay, RelayResult
from lbproxy.core.session import FrontConnection
from lbproxy.errors import ConnectFailed, LocalLimitReached, NoServerAvailable, QueueTimeout
from lbproxy.tcp.sni import SNIFlowContext, SNIRoutes
from lbproxy.tls.client import sslErrorText
from lbproxy.tls.clienthello import ClientHelloError, ClientHelloReader

#: How a session ends without an error: a side closed, cleanly.
_CLEAN_ENDS = frozenset({"client-closed", "server-closed"})

@implementer(IHalfCloseableProtocol, IHandshakeListener)
class TCPProxyProtocol(FrontConnection):
    """
    One client connection of a TCP listener.

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
        super().__init__(factory.listener, reactor)
        self.factory = factory
        self.relay: Relay | None = None
        self.connection: BackendConnection | None = None
        self.pool = factory.pool
        self.sni: str | None = None
        self._hello: ClientHelloReader | None = None
        self._connecting = None
        # Seconds waited in the pool's queue by a connection that timed out there.
        self._queueSeconds = 0.0
        self._awaitingHandshake = False

    def accepted(self) -> None:
        if self.config.tls is not None:
            # The TLS layer reads on until the handshake is done.
            self._awaitingHandshake = True
            return
        self.transport.pauseProducing()
        self._begin()

    def refused(self) -> None:
        self._finish("maxconn", detail=f"listener at its maxconn of {self.config.maxconn}")
        self.transport.loseConnection()

    def handshakeCompleted(self) -> None:
        """
        The client's TLS handshake succeeded: place the flow.
        """
        if self._awaitingHandshake:
            self._awaitingHandshake = False
            self.transport.pauseProducing()
            self._begin()

    # Events of the client connection before the relay takes them over
    # (FrontConnection.relayTo).

    def dataReceived(self, data: bytes) -> None:
        if self._awaitingHandshake:
            self.handshakeCompleted()
            if self.relayLeg is not None:
                self.relayLeg.dataReceived(data)
                return
        if self._hello is not None:
            self._helloReceived(data)

    def readConnectionLost(self) -> None:
        if self.relayLeg is not None:
            self.relayLeg.readConnectionLost()
        elif self._awaitingHandshake:
            self.transport.loseConnection()
        elif self._hello is not None:
            self._helloAbandoned("connection closed")
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        if self.relayLeg is not None:
            self.relayLeg.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._awaitingHandshake:
            self._awaitingHandshake = False
            if isinstance(reason.value, SSL.Error):
                detail = sslErrorText(reason.value)
            else:
                detail = describeFailure(reason)
            self._finish("tls-handshake-failed", detail=detail)
        elif self.relayLeg is not None:
            self.relayLeg.connectionLost(reason)
        elif self._hello is not None:
            self._helloAbandoned("connection lost")

    def phaseExpired(self, phase: str) -> None:
        self._helloTimedOut()

    # The ClientHello, on a listener with SNI routes.

    def _begin(self) -> None:
        """
        The connection is admitted (and its TLS handshake done): read the
        ClientHello when the listener routes by SNI, else place the flow.
        """
        if not self.factory.sniRoutes:
            self._beginFlow(b"")
            return
        self._hello = ClientHelloReader()
        self.timer.enter("hello", self.config.helloTimeout)
        self.transport.resumeProducing()

    def _helloReceived(self, data: bytes) -> None:
        reader = self._hello
        try:
            hello = reader.feed(data)
        except ClientHelloError as e:
            self._helloFailed("bad-clienthello", str(e))
            return
        if hello is None:
            return
        self.timer.stop()
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
        reader = self._hello
        detail = f"no complete ClientHello within {self.config.helloTimeout:g}s"
        if reader.size:
            detail += f" ({reader.size} bytes received)"
        self._helloFailed("bad-clienthello", detail)

    def _helloFailed(self, end: str, detail: str) -> None:
        reader, self._hello = self._hello, None
        self.timer.stop()
        self._fallBack(end, detail, reader.received)

    def _fallBack(self, end: str, detail: str, held: bytes) -> None:
        """
        No server name to route by: the listener's pool gets the flow
        (C{sni_fallback = "default"}), or the connection is closed.
        """
        if self.config.sniFallback == "reject":
            self._finish(end, detail=detail)
            self.transport.loseConnection()
            return
        self.log.debug(
            "listener {listener}: {detail}; to its pool {pool}",
            listener=self.listener.name,
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
        self.timer.stop()
        if reader.size:
            self._finish("bad-clienthello", detail=f"{how} before a complete ClientHello ({reader.size} bytes)")
        else:
            self._finish("client-closed", detail="before sending a ClientHello")

    # Placing the flow.

    def _beginFlow(self, held: bytes) -> None:
        factory = self.factory
        relay = self.relay = Relay(self._reactor, idleTimeout=self.config.idleTimeout)
        self.relayTo(relay.client)
        if held:
            relay.client.dataReceived(held)
        relay.whenFinished(self._relayFinished)
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
                listener=self.listener.name,
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
        The session is over: free its slots, count it, and log its one
        line.
        """
        if not self.ended(bytesIn, bytesOut, error=end not in _CLEAN_ENDS):
            return
        factory = self.factory
        connection = self.connection
        if connection is not None:
            connection.release()
            server = connection.server.qualifiedName
            connectSeconds = connection.connectTime
            queueSeconds = connection.queueTime
            connection.server.bytesIn += bytesIn
            connection.server.bytesOut += bytesOut
        else:
            server = f"{self.pool.name}/-"
            connectSeconds = None
            queueSeconds = self._queueSeconds
        durationSeconds = self._reactor.seconds() - self.started
        client = formatAddress(self.client)
        sniField = f" sni={self.sni or '-'}" if factory.sniRoutes else ""
        connect = formatSeconds(connectSeconds)
        queueField = f" queue={formatSeconds(queueSeconds)}" if queueSeconds else ""
        duration = formatSeconds(durationSeconds)
        details = f" ({detail})" if detail else ""
        listener = self.listener.name
        self.log.info(
            SESSION_LINE,
            line=f"tcp {client} {listener} -> {server}{sniField} in={bytesIn} out={bytesOut} "
            f"connect={connect}{queueField} duration={duration} end={end}{details}",
            client=client,
            clientHost=getattr(self.client, "host", None),
            clientPort=getattr(self.client, "port", None),
            peer=formatAddress(self.peer),
            listener=listener,
            pool=self.pool.name,
            server=server,
            sni=self.sni,
            bytesIn=bytesIn,
            bytesOut=bytesOut,
            connect=connect,
            connectSeconds=connectSeconds,
            queueSeconds=queueSeconds,
            duration=duration,
            durationSeconds=durationSeconds,
            end=end,
            detail=detail,
        )


class TCPProxyFactory(ServerFactory):
    """
    Serves one TCP listener: relays its connections to servers of a pool,
    or, with SNI routes, of the pool the client's server name chooses.

    @ivar listener: the live L{lbproxy.core.model.Listener} (its
        C{config} a L{lbproxy.tcp.config.TCPListenerConfig}).
    @ivar pool: the listener's L{lbproxy.core.pool.Pool}.
    @ivar connector: the L{BackendConnector} placing flows on the pool.
    @ivar sniRoutes: the listener's L{SNIRoutes} (empty without routes).
    """

    protocol = TCPProxyProtocol
    noisy = False

    def __init__(self, listener, pool, reactor, pools: dict | None = None) -> None:
        """
        @param pools: every live pool by name, for the listener's SNI
            routes (needed only when it has routes).
        """
        self.listener = listener = Listener.of(listener)
        self.pool = pool
        self._reactor = reactor
        self.connector = BackendConnector(pool, reactor)
        self.sniRoutes = SNIRoutes(listener.config.routes, pools or {pool.name: pool})
        self._connectors = {pool: self.connector}
        for routed in (*self.sniRoutes.exact.values(), *self.sniRoutes.wildcards.values()):
            if routed not in self._connectors:
                self._connectors[routed] = BackendConnector(routed, reactor)

    def __repr__(self) -> str:
        return f"<TCPProxyFactory {self.listener.name} -> {self.pool.name}>"

    def connectorFor(self, pool) -> BackendConnector:
        """
        The connector placing flows on C{pool}, one of the listener's.
        """
        return self._connectors[pool]

    def buildProtocol(self, addr: IAddress) -> TCPProxyProtocol:
        return self.protocol(self, self._reactor)
