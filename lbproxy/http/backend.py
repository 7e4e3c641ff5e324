"""
The HTTP front's connections to backend servers, and the idle ones kept
for reuse.

A L{BackendHTTPConnection} parses the responses of one backend connection
and passes them to its current I{user}, the client connection whose request
it carries (an L{lbproxy.http.interfaces.IBackendUser}). Between requests it waits, without a user,
in the L{IdleConnections} of its server, most recently used first; it leaves
that list when a request takes it, when the backend closes it, when the
list holds more than the pool's C{reuseMaxIdle}, or after
C{reuseIdleTimeout} seconds unused (which should be shorter than the
backend's own keep-alive timeout, so the proxy, not the backend, closes it).

Which request may take an idle connection is the pool's C{reuseMode}
(L{BackendPool.mode}): by default (C{"safe"}) never the first request of a
client connection.

The end of a connection ends a response delimited by the close only when
it is clean: a FIN, or a TLS close_notify. A reset, an error, or a TLS
connection ending without close_notify (which an attacker on the path can
forge) cuts it short. Bytes a server sends beyond its response (after the
final response in the same read, or on an idle connection) answer no
request: they are logged once as an error naming the server, counted in
its C{responseErrors}, and the connection is dropped.

One L{BackendPool} per pool gathers what a front needs to reach its servers:
the L{lbproxy.core.connect.BackendConnector}, the idle lists and the protocol
factory.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.core.connect import BackendConnector
from lbproxy.core.relay import setNoDelay
from lbproxy.http.errors import HTTPParseError
from lbproxy.http.headcache import HeadCache
from lbproxy.http.interfaces import IHTTPMessageReceiver
from lbproxy.http.message import BodyKind, ResponseHead
from lbproxy.http.parser import ResponseParser



@implementer(IHTTPMessageReceiver, IPushProducer, IHalfCloseableProtocol)
class BackendHTTPConnection(Protocol):
    """
    One connection to a backend server.

    The connection registers itself as the streaming producer of its own
    transport: when the backend stops reading what the proxy writes, its
    user hears of it (L{lbproxy.http.interfaces.IBackendUser.backendWriteBlocked}) and pauses the
    client.

    @ivar user: the L{lbproxy.http.interfaces.IBackendUser} whose request the connection carries,
        or L{None} while idle.
    @ivar server: the server connected to (set by whoever connected it).
    @ivar parser: the L{ResponseParser} of the responses.
    @ivar bytesReceived: bytes received since the current user took the
        connection (the keep-alive race: whether anything of a response
        came before the backend closed).
    @ivar requests: requests the connection has carried.
    @ivar lost: the connection is gone.
    @ivar lostReason: why, once it is gone.
    @ivar closing: the backend closed its side, or the proxy is closing
        the connection: it carries no further request.
    @ivar idleList: the L{IdleConnections} holding the connection while it
        is idle.
    @ivar idleSince: reactor time the connection became idle.
    """

    log = Logger()

    def __init__(self, responseHeads: HeadCache | None = None) -> None:
        """
        @param responseHeads: the L{HeadCache} of the pool's response
            heads, or L{None} to parse every head.
        """
        self.parser = ResponseParser(self, cache=responseHeads)
        self.user = None
        self.server = None
        self.bytesReceived = 0
        self.requests = 0
        self.lost = False
        self.lostReason: Failure | None = None
        self.closing = False
        self.idleList: IdleConnections | None = None
        self.idleSince = 0.0
        self._readingPaused = False
        self._writeBlocked = False
        self._method = b""
        self._leg = None
        # Registered as the streaming producer of its transport.
        self._producing = False

    def __repr__(self) -> str:
        name = getattr(self.server, "name", None)
        return f"<BackendHTTPConnection {name} requests={self.requests}>"

    # -- transport events ---------------------------------------------------

    def connectionMade(self) -> None:
        setNoDelay(self.transport)
        self.transport.registerProducer(self, True)
        self._producing = True

    def dataReceived(self, data: bytes) -> None:
        leg = self._leg
        if leg is not None:
            leg.dataReceived(data)
            return
        user = self.user
        if user is None:
            # Idle (or given up): whatever the server sends answers no
            # request, and must never reach the next request's client.
            if not self.closing:
                self._unsolicited(len(data), "on an idle connection, answering no request")
            return
        self.bytesReceived += len(data)
        # The common case: a whole response in one read, which the parser
        # takes in one step (its head from the cache, mostly).
        whole = self.parser.wholeMessage(data)
        if whole is not None:
            user.responseHeadReceived(whole[0], whole[1])
            return
        try:
            self.parser.dataReceived(data)
        except HTTPParseError as error:
            self._broken(error, closed=False)

    def readConnectionLost(self) -> None:
        if self._leg is not None:
            self._leg.readConnectionLost()
            return
        # A backend's FIN ends the connection for HTTP: it may end a
        # read-until-close body, anything else is cut short.
        self.closing = True
        if self.idleList is not None:
            self.idleList.discard(self)
        self._peerClosed()
        if not self.lost:
            self._loseConnection()

    def _loseConnection(self) -> None:
        if self._producing:
            # A TLS transport closes only once its producer is gone.
            self._producing = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        if self._leg is not None:
            self._leg.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self.lostReason = reason
        self.closing = True
        if self._leg is not None:
            self._leg.connectionLost(reason)
            return
        if self.idleList is not None:
            self.idleList.discard(self)
        if reason.check(ConnectionDone):
            # A clean end: the FIN after readConnectionLost, or a TLS
            # close_notify (TLS has no half-close).
            self._peerClosed()
        elif self.user is not None:
            # A reset, an error, or a TLS connection ending without
            # close_notify (a truncation): nothing ends there, not even a
            # body delimited by the close.
            self._broken(HTTPParseError(502, "connection reset"), closed=True)

    def _peerClosed(self) -> None:
        """
        The backend closed cleanly: complete a read-until-close response,
        or tell the user its response was cut short.
        """
        if self.user is None:
            return
        try:
            self.parser.connectionLost()
        except HTTPParseError as error:
            self._broken(error, closed=True)
            return
        if self.user is not None and self.parser.expecting:
            self._broken(HTTPParseError(502, "connection closed"), closed=True)

    def _broken(self, error: HTTPParseError, closed: bool) -> None:
        user = self.user
        self.user = None
        self.closing = True
        if self.idleList is not None:
            self.idleList.discard(self)
        if not self.lost:
            self.transport.abortConnection()
        if user is not None:
            user.backendFailed(self, error, closed)

    def _unsolicited(self, count: int, what: str) -> None:
        """
        The server sent C{count} bytes no request asked for (C{what} says
        when): it cannot be trusted with another request. Log it once,
        count it on the server, and drop the connection; the bytes go to
        no one.
        """
        server = self.server
        if server is not None:
            server.responseErrors += 1
        self.log.error(
            "server {server} sent {nbytes} bytes {what}; connection closed",
            server=getattr(server, "qualifiedName", server),
            nbytes=count,
            what=what,
        )
        self.user = None
        self.closing = True
        if self.idleList is not None:
            self.idleList.discard(self)
        self.parser.pauseParsing()
        if not self.lost:
            self.transport.abortConnection()

    # -- IHTTPMessageReceiver (the response parser) -------------------------

    # The user may give the connection up from any of these (an error
    # response, the client gone): later events of the same read go nowhere.

    def headersComplete(self, head: ResponseHead) -> None:
        user = self.user
        if user is not None:
            user.responseHeadReceived(head, None)

    def bodyData(self, data: bytes) -> None:
        user = self.user
        if user is not None:
            user.responseBodyReceived(data)

    def messageComplete(self) -> None:
        user = self.user
        if user is not None:
            user.responseCompleted()
        extra = self.parser.extra
        if extra is not None:
            # The response came whole and was served; what followed it in
            # the same read answers nothing (the parser dropped it).
            self.parser.extra = None
            head, count = extra
            why = (
                "a body on a response that has none"
                if head.bodyKind is BodyKind.NONE
                else "more than the response"
            )
            method = self._method.decode("ascii", "replace")
            self._unsolicited(
                count, f"after the end of its {head.status} response to {method} ({why})"
            )

    # -- IPushProducer (the backend's reading of what the proxy writes) ----

    def pauseProducing(self) -> None:
        self._writeBlocked = True
        if self.user is not None:
            self.user.backendWriteBlocked()

    def resumeProducing(self) -> None:
        self._writeBlocked = False
        if self.user is not None:
            self.user.backendWriteUnblocked()

    def stopProducing(self) -> None:
        pass

    # -- for the user -------------------------------------------------------

    @property
    def readingPaused(self) -> bool:
        """
        Whether reading the response is paused for a slow client.
        """
        return self._readingPaused

    @property
    def writeBlocked(self) -> bool:
        """
        Whether the backend has stopped reading what the proxy writes.
        """
        return self._writeBlocked

    def attach(self, user, method: bytes, upgrade: bool) -> None:
        """
        Carry a request of C{user}: its responses go to C{user}.

        @param method: the request's method (framing of the response).
        @param upgrade: the request asks for a protocol switch the proxy
            allows.
        """
        self.user = user
        self._method = method
        self.bytesReceived = 0
        self.requests += 1
        self.parser.expectResponse(method, upgrade)

    @property
    def reusable(self) -> bool:
        """
        Whether the connection can carry another request: still open, the
        last response let it persist, and nothing more was received.
        """
        return not self.closing and self.parser.idle and not self.parser.paused

    def detach(self) -> None:
        """
        The user is done with the connection (its response ended or it gave
        up): events go nowhere until the next L{attach}.
        """
        self.user = None

    def pauseReading(self) -> None:
        """
        Stop reading the response (the client does not keep up).
        """
        if not self._readingPaused and not self.lost:
            self._readingPaused = True
            self.transport.pauseProducing()

    def resumeReading(self) -> None:
        if self._readingPaused and not self.lost:
            self._readingPaused = False
            self.transport.resumeProducing()

    def handOver(self, leg) -> bytes:
        """
        Leave HTTP for a tunnel: pass every later event to the relay leg
        C{leg}, and return the bytes received after the response that
        opened it.
        """
        self.user = None
        self._leg = leg
        self._readingPaused = False
        self._producing = False
        self.transport.unregisterProducer()
        return self.parser.detachTunnel()

    def close(self) -> None:
        """
        Close the connection (after what is buffered for it is sent).
        """
        self.user = None
        self.closing = True
        self.parser.pauseParsing()
        if not self.lost:
            self._loseConnection()

    def abort(self) -> None:
        """
        Drop the connection now.
        """
        self.user = None
        self.closing = True
        self.parser.pauseParsing()
        if not self.lost:
            self.transport.abortConnection()


class BackendProtocolFactory(Factory):
    """
    Builds L{BackendHTTPConnection}s for the connector, sharing
    C{responseHeads} (a L{HeadCache}, or L{None}).
    """

    noisy = False
    protocol = BackendHTTPConnection

    def __init__(self, responseHeads: HeadCache | None = None) -> None:
        self.responseHeads = responseHeads

    def buildProtocol(self, addr) -> BackendHTTPConnection:
        return BackendHTTPConnection(self.responseHeads)


class IdleConnections:
    """
    The idle keep-alive connections to one server, most recent last.

    Connections are reused last-in first-out (the most recently used one is
    the least likely to have been closed by the backend), and expire from
    the other end: a single timer per list fires when the oldest one has
    been idle for C{timeout} seconds.

    @ivar server: the server the connections lead to.
    @ivar maxIdle: most connections kept; when one more becomes idle, the
        oldest is closed.
    @ivar timeout: seconds a connection may stay idle.
    """

    def __init__(self, server, maxIdle: int, timeout: float, reactor) -> None:
        self.server = server
        self.maxIdle = maxIdle
        self.timeout = timeout
        self._reactor = reactor
        self._connections: deque[BackendHTTPConnection] = deque()
        self._timer = None

    def __len__(self) -> int:
        return len(self._connections)

    def __repr__(self) -> str:
        return f"<IdleConnections {self.server.name} {len(self._connections)}>"

    def take(self) -> BackendHTTPConnection | None:
        """
        The most recently used idle connection, removed from the list, or
        L{None}.
        """
        connections = self._connections
        while connections:
            connection = connections.pop()
            connection.idleList = None
            if not connection.closing:
                return connection
        return None

    def put(self, connection: BackendHTTPConnection) -> bool:
        """
        Keep C{connection} for reuse; L{False} (and the caller closes it)
        when reuse is off.
        """
        if self.maxIdle <= 0:
            return False
        # What detach() and resumeReading() do, for this common step.
        connection.user = None
        if connection._readingPaused:
            connection.resumeReading()
        connection.idleList = self
        connection.idleSince = self._reactor.seconds()
        connections = self._connections
        connections.append(connection)
        if len(connections) > self.maxIdle:
            oldest = connections.popleft()
            oldest.idleList = None
            oldest.close()
        if self._timer is None and self.timeout > 0:
            self._timer = self._reactor.callLater(self.timeout, self._expire)
        return True

    def discard(self, connection: BackendHTTPConnection) -> None:
        """
        Forget C{connection} (the backend closed it).
        """
        connection.idleList = None
        try:
            self._connections.remove(connection)
        except ValueError:
            pass

    def _expire(self) -> None:
        self._timer = None
        connections = self._connections
        limit = self._reactor.seconds() - self.timeout
        while connections and connections[0].idleSince <= limit:
            oldest = connections.popleft()
            oldest.idleList = None
            oldest.close()
        if connections:
            self._timer = self._reactor.callLater(
                connections[0].idleSince - limit, self._expire
            )

    def closeAll(self) -> None:
        """
        Close every idle connection and stop the timer.
        """
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        connections = self._connections
        while connections:
            connection = connections.popleft()
            connection.idleList = None
            connection.close()


class BackendPool:
    """
    How one HTTP listener reaches the servers of one pool.

    @ivar pool: the L{lbproxy.core.pool.Pool}.
    @ivar connector: places new connections (retries, redispatch).
    @ivar factory: builds the protocol of each new connection.
    @ivar responseHeads: the L{HeadCache} of the servers' response heads,
        which the connections' parsers share.
    @ivar sendProxy: the PROXY protocol version written at the start of
        each new connection (C{"none"}, C{"v1"}, C{"v2"}).
    @ivar reuse: whether idle connections are kept (C{reuseMaxIdle} > 0 and
        no PROXY protocol).
    @ivar mode: which requests may take an idle connection (the pool's
        C{reuseMode}, HAProxy's C{http-reuse}):
          - C{"never"}: only the later requests of the client connection
            that used it; it is closed when that client connection ends;
          - C{"safe"}: any request but the first of a client connection,
            which always gets a new connection: a server's stray bytes on
            an idle connection never reach a client that never used one;
          - C{"always"}: any request.
        Idle connections count toward C{maxIdle} and expire alike in each.
    """

    #: Its servers speak HTTP/1.1 (see L{lbproxy.http2.upstream.H2BackendPool}).
    http2 = False

    def __init__(self, pool, reactor) -> None:
        self.pool = pool
        self._reactor = reactor
        self.connector = BackendConnector(pool, reactor)
        self.responseHeads = HeadCache()
        self.factory = BackendProtocolFactory(self.responseHeads)
        options = pool.options
        self.maxIdle = options.reuseMaxIdle if options is not None else 0
        self.idleTimeout = options.reuseIdleTimeout if options is not None else 0.0
        self.sendProxy = options.sendProxy if options is not None else "none"
        self.mode = options.reuseMode if options is not None else "safe"
        # A PROXY header names one client: such a connection is never
        # handed to another (the config refuses reuse with send_proxy).
        self.reuse = self.maxIdle > 0 and self.sendProxy == "none"
        self._idle: dict = {}
        # Mode "never": each client connection's idle connections, by
        # server (also in the servers' idle lists, for maxIdle and expiry).
        self._owned: dict = {}

    def __repr__(self) -> str:
        return f"<BackendPool {self.pool.name}>"

    def idleFor(self, server) -> IdleConnections:
        """
        The idle list of C{server}.
        """
        idle = self._idle.get(server)
        if idle is None:
            idle = self._idle[server] = IdleConnections(
                server, self.maxIdle, self.idleTimeout, self._reactor
            )
        return idle

    def takeIdle(self, server, client, first: bool) -> BackendHTTPConnection | None:
        """
        An idle connection to C{server} that a request of C{client} (a
        client connection) may reuse under the pool's L{mode}, or L{None}.

        @param first: the request is the first of C{client}.
        """
        mode = self.mode
        if mode == "never":
            owned = self._owned.get(client)
            if not owned:
                return None
            connection = owned.pop(server, None)
            if connection is None or connection.idleList is None:
                # None kept, or it expired or was closed meanwhile.
                return None
            connection.idleList.discard(connection)
            return None if connection.closing else connection
        if first and mode == "safe":
            return None
        idle = self._idle.get(server)
        if idle is None:
            return None
        return idle.take()

    def release(self, connection: BackendHTTPConnection, client) -> bool:
        """
        A request of C{client}'s response ended on C{connection}: keep it
        for reuse when it can carry another request, else close it.
        Returns whether it was kept.
        """
        server = connection.server
        if self.reuse and server is not None and connection.reusable:
            idle = self._idle.get(server)
            if idle is None:
                idle = self.idleFor(server)
            if idle.put(connection):
                if self.mode == "never":
                    owned = self._owned.get(client)
                    if owned is None:
                        owned = self._owned[client] = {}
                    owned[server] = connection
                return True
        connection.close()
        return False

    def forget(self, client) -> None:
        """
        The client connection C{client} ended: close the idle connections
        kept for it alone (mode C{"never"}).
        """
        owned = self._owned.pop(client, None)
        if owned:
            for connection in owned.values():
                idle = connection.idleList
                if idle is not None:
                    idle.discard(connection)
                    connection.close()

    def idleCount(self) -> int:
        """
        Idle connections over all servers.
        """
        return sum(len(idle) for idle in self._idle.values())

    def closeIdle(self) -> None:
        """
        Close every idle connection (the listener stops).
        """
        for idle in self._idle.values():
            idle.closeAll()


__all__ = [
    "BackendHTTPConnection",
    "BackendPool",
    "BackendProtocolFactory",
    "IdleConnections",
]
