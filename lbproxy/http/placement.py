"""
Where a request of any HTTP front becomes "route it, pick a server, send it
there": the steps an HTTP/1.1 client connection
(L{lbproxy.http.front.HTTPProxyProtocol}) and an HTTP/2 stream
(L{lbproxy.http2.stream.H2Stream}) share, so both go through the same
path normalisation, routing, persistence, rewriting (forwarding headers),
server selection, keep-alive reuse, connector (retries, redispatch,
queueing), failure statuses and request counting.

L{RequestPlacement} is mixed into each of them. What it needs from its
host:

  - C{factory} (the listener's L{lbproxy.http.factory.HTTPProxyFactory}),
    C{listener}, C{client}, C{local}, C{_peer}, C{_seconds}, C{timer},
    C{log}, C{exchange} and C{_backendFull};
  - C{requests} (requests so far on the client connection; the first one
    takes no idle server connection in reuse mode C{"safe"}) and
    C{reuseKey} (what a server connection kept for one client connection
    is kept under, reuse mode C{"never"});
  - C{_attach(exchange, backend)}: send the request on a server connection;
  - C{_sendError(exchange, status, termination)}: end it with an error;
  - C{_logRefusal(error)}: say why a request was refused;
  - C{_holdRequestBody()}: stop taking the request body while the request
    is sent again.
"""

from __future__ import annotations

from bisect import bisect_left

from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from lbproxy.core.connect import BackendConnection, Lease
from lbproxy.core.model import DURATION_BUCKETS
from lbproxy.core.pool import statusIndex
from lbproxy.errors import ConnectFailed, LocalLimitReached, NoServerAvailable, QueueTimeout
from lbproxy.http.backend import BackendHTTPConnection
from lbproxy.http.context import HTTPFlowContext
from lbproxy.http.errors import HTTPParseError
from lbproxy.http.exchange import Exchange
from lbproxy.http.message import RequestHead
from lbproxy.http.rewrite import retryable
from lbproxy.tls.client import tlsFailureText

#: The phase of a request being placed (its timeout is the connector's).
CONNECT_PHASE = "connect"


class RequestPlacement:
    """
    Placing a request on a server and what a server's failure means for it
    (see the module docstring).
    """

    __slots__ = ()

    def _place(self, exchange: Exchange, head: RequestHead) -> None:
        """
        Normalise the path, route, rewrite and place the request of
        C{exchange}.
        """
        factory = self.factory
        paths = factory.paths
        if paths is not None:
            try:
                paths.normalize(head)
            except HTTPParseError as error:
                self._logRefusal(error)
                self._sendError(exchange, error.status, "PR")
                return
        pool = factory.router.route(head)
        route = exchange.route = factory.routeFor(pool)
        server = None
        persistence = route.persistence
        if persistence is not None:
            stickiness = exchange.stickiness = persistence.inspect(head, pool)
            server = stickiness.server
        try:
            exchange.headBytes, exchange.upgrade, exchange.xff = factory.rewriter.rewrite(
                head, self._peer, not route.backends.reuse
            )
        except ValueError:
            self._sendError(exchange, 400, "PR")
            return
        context = exchange.context = HTTPFlowContext(self.client, self.local, head)
        if server is None:
            server = pool.pick(context)
            if server is None:
                # Every server is down or full: the connector queues the
                # request for a slot, or refuses it.
                self._connect(exchange, None)
                return
        exchange.server = server
        connection = route.backends.takeIdle(server, self.reuseKey, self.requests == 1)
        if connection is not None:
            exchange.reused = True
            exchange.connectTime = 0.0
            exchange.lease = Lease(server)
            if pool.stick is not None:
                # A new connection is recorded by the connector.
                pool.stick.record(context, server)
            self._attach(exchange, connection)
        else:
            self._connect(exchange, server)

    def _connect(self, exchange: Exchange, server) -> None:
        self.timer.enter(CONNECT_PHASE, None)
        route = exchange.route
        backends = route.backends
        attempts = None
        if exchange.attempts:
            # A redispatch: only the attempts the first placement left.
            attempts = 1 + route.pool.options.retries - exchange.attempts
        connecting = exchange.connecting = backends.connector.connect(
            exchange.context, backends.factory, server, attempts
        )
        connecting.addCallbacks(self._connected, self._notConnected)

    def _connected(self, connection: BackendConnection) -> None:
        exchange = self.exchange
        backend = connection.protocol
        backend.server = connection.server
        if exchange is None or exchange.connecting is None:
            connection.release()
            backend.abort()
            return
        exchange.connecting = None
        exchange.server = connection.server
        exchange.lease = connection.lease
        exchange.connectTime = (exchange.connectTime or 0.0) + connection.connectTime
        exchange.queueTime += connection.queueTime
        exchange.attempts += connection.attempts
        self._attach(exchange, backend)

    def _notConnected(self, reason: Failure) -> None:
        if reason.check(CancelledError):
            return
        exchange = self.exchange
        if exchange is None:
            return
        exchange.connecting = None
        if reason.check(QueueTimeout):
            exchange.queueTime += reason.value.waited
            self._sendError(exchange, 503, "sQ")
        elif reason.check(NoServerAvailable):
            self._sendError(exchange, 503, "SC")
        elif reason.check(LocalLimitReached):
            # lbproxy's own descriptor/socket limit, as HAProxy's PC.
            self._sendError(exchange, 503, "PC")
        elif reason.check(ConnectFailed):
            timedOut = reason.value.reason.startswith("connect timeout")
            self._sendError(exchange, 502, "sC" if timedOut else "SC")
        else:
            self.log.failure(
                "placing a request of listener {listener} failed",
                reason,
                listener=self.listener.name,
            )
            self._sendError(exchange, 502, "SC")

    def _log(self, exchange: Exchange) -> float:
        """
        Count C{exchange} on the listener and its server, and log it (every
        request, or only errors and abnormal ends with C{log_requests =
        "errors"}).
        """
        now = self._seconds()
        factory = self.factory
        status = exchange.status
        counters = self.listener.counters
        counters.bytesIn += exchange.bytesIn
        counters.bytesOut += exchange.bytesOut
        if exchange.head is not None:
            counters.requests += 1
            # ListenerCounters.countDuration, written out: this runs per
            # request.
            seconds = now - exchange.firstByte
            counters.durations[bisect_left(DURATION_BUCKETS, seconds)] += 1
            counters.durationSum += seconds
        index = statusIndex(status)
        counters.responses[index] += 1
        normal = exchange.termination == "--"
        if not normal:
            counters.errors += 1
        server = exchange.server
        if server is not None:
            server.responses[index] += 1
            server.bytesIn += exchange.bytesIn
            server.bytesOut += exchange.bytesOut
        if factory.logAll or not normal or not 100 <= status < 500:
            factory.accessLog.log(exchange.record(self.client, self.listener.name, now))
        return now

    # -- timeouts -----------------------------------------------------------

    def backendFailed(
        self, connection: BackendHTTPConnection, error: HTTPParseError, closed: bool
    ) -> None:
        exchange = self.exchange
        if exchange is None or exchange.backend is not connection:
            return
        if closed and not exchange.reused and exchange.response is None and not connection.bytesReceived:
            refusal = tlsFailureText(connection.lostReason)
            if refusal is not None:
                self._refusedAfterHandshake(exchange, refusal)
                return
        if (
            closed
            and exchange.response is None
            and not connection.bytesReceived
            and not exchange.bytesIn
            and retryable(exchange.head)
        ):
            if exchange.reused:
                # The keep-alive race: the server is fine, the idle
                # connection was not.
                self.factory.staleRetries += 1
                self._resend(exchange, exchange.server)
                return
            if exchange.attempts <= exchange.route.pool.options.retries:
                # A fresh connection died under the request (the server
                # crashed or was killed): another server gets it.
                self.factory.redispatched += 1
                exchange.context.excluded.add(exchange.server)
                self._resend(exchange, None)
                return
        if exchange.response is None:
            self._backendBroken(exchange, "SH" if closed else "PH")
        else:
            self._backendBroken(exchange, "SD" if closed else "PD")

    def _refusedAfterHandshake(self, exchange: Exchange, refusal: str) -> None:
        """
        The server ended a fresh connection with a TLS alert before any of
        the response: under TLS 1.3 a server refuses the proxy's client
        certificate (or its lack of one) only after the proxy's side of
        the handshake is done. The server processed nothing, so this is a
        failed connect attempt: counted, logged, and redispatched while
        attempts remain (whatever the method, if no body was sent yet).
        """
        retries = exchange.route.pool.options.retries
        retry = not exchange.bytesIn and exchange.attempts <= retries
        exchange.route.backends.connector.failedAfterConnect(
            exchange.server, refusal, retry, exchange.attempts, 1 + retries, established=True
        )
        if retry:
            self.factory.redispatched += 1
            exchange.context.excluded.add(exchange.server)
            self._resend(exchange, None)
        else:
            self._sendError(exchange, 502, "SC")

    def _resend(self, exchange: Exchange, server) -> None:
        """
        The connection carrying an idempotent request closed before any of
        the response came and before any of its body was sent: send it
        again on a fresh connection, to C{server} or, if L{None}, to one
        the pool's selector picks.
        """
        exchange.backend = None
        exchange.reused = False
        exchange.resends += 1
        if exchange.lease is not None:
            exchange.lease.release()
            exchange.lease = None
        self._backendFull = False
        self._holdRequestBody()
        self._connect(exchange, server)

    def _backendBroken(self, exchange: Exchange, termination: str) -> None:
        """
        The backend failed the request: a 502 when nothing of the response
        was sent yet, else the client connection is closed. It counts as
        an error of the server.
        """
        exchange.server.responseErrors += 1
        self._sendError(exchange, 502, termination)
