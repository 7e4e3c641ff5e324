"""
An HTTP/2 client stream carried as one stream of an HTTP/2 connection to
a server (a pool with C{protocol = "h2"}, L{lbproxy.http2.upstream}).

L{UpstreamRelay} is mixed into L{lbproxy.http2.stream.H2Stream}: the
request was placed as any other (routing, persistence, forwarding
headers, header rules, selection, connector); here its head goes out as
HTTP/2 fields, its DATA and trailers follow as the server's windows let,
and the response's head, DATA and trailers (gRPC's C{grpc-status} and
C{grpc-message}) come back on the client stream. Each direction ends on
its own: a bidirectional stream's response may begin before its request
ends.

Resets go both ways: a client's reset cancels the server's stream
(C{CANCEL}), a server's reset resets the client's stream with the same
code. A stream the server never processed (above a GOAWAY's last stream
id, or refused with C{REFUSED_STREAM}) is sent again while none of its
body was sent; the connection lost under a stream ends it with a 502
before the response head, or a reset (C{INTERNAL_ERROR}) after.
"""

from __future__ import annotations

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError

from lbproxy.core.connect import Lease
from lbproxy.http.exchange import Exchange
from lbproxy.http.message import BodyKind
from lbproxy.http.placement import CONNECT_PHASE, RequestPlacement
from lbproxy.http.rewrite import retryable
from lbproxy.http2.heads import serverResponseHead, trailerFields, upstreamRequestFields

# The stream's timer phases (as in lbproxy.http2.stream).
_WAIT = "wait"


class UpstreamRelay(RequestPlacement):
    """
    The side of an L{H2Stream} that speaks to an HTTP/2 server (see the
    module docstring). C{exchange.backend} is then an
    L{lbproxy.http2.upstream.UpstreamStream}.

    Streams to a server a connection is being opened to wait for it rather
    than each opening their own (a client's first burst of calls shares
    one connection, up to its stream limit).
    """

    #: The request goes to an HTTP/2 server (set once attached).
    _upstream = False
    #: The response's trailer fields, once received.
    _upstreamTrailers: list | None = None
    #: The (H2BackendPool, server) this stream opens a connection to, for
    #: the streams waiting for it.
    _opening = None

    # -- connecting -----------------------------------------------------------

    def _connect(self, exchange: Exchange, server) -> None:
        backends = exchange.route.backends
        if backends.http2 and server is not None and not exchange.resends:
            if backends.isOpening(server):
                self.timer.enter(CONNECT_PHASE, None)
                waiting = exchange.connecting = backends.waitForOpening(server)
                waiting.addCallbacks(self._opened, lambda reason: None, callbackArgs=(waiting, server))
                return
            backends.startOpening(server)
            self._opening = (backends, server)
        RequestPlacement._connect(self, exchange, server)

    def _opened(self, _, waiting, server) -> None:
        """
        The connection this stream waited for is made (or failed): take a
        free stream slot on a connection to C{server}, or open one.
        """
        exchange = self.exchange
        if self._done or exchange is None or exchange.connecting is not waiting:
            return
        exchange.connecting = None
        backends = exchange.route.backends
        connection = backends.takeIdle(server, self.reuseKey, False)
        if connection is None:
            self._connect(exchange, server)
            return
        exchange.server = server
        exchange.reused = True
        exchange.connectTime = 0.0
        exchange.lease = Lease(server)
        stick = exchange.route.pool.stick
        if stick is not None:
            stick.record(exchange.context, server)
        self._attach(exchange, connection)

    def _openingDone(self) -> None:
        opening, self._opening = self._opening, None
        if opening is not None:
            opening[0].finishOpening(opening[1])

    def _connected(self, connection) -> None:
        RequestPlacement._connected(self, connection)
        self._openingDone()

    def _notConnected(self, reason) -> None:
        self._openingDone()
        RequestPlacement._notConnected(self, reason)

    def _attachUpstream(self, exchange: Exchange, connection) -> None:
        """
        Open the request's stream on C{connection} (new, or shared with
        other requests) and send what there is of the request.
        """
        backends = exchange.route.backends
        if connection.refusal is not None:
            if not connection.lost:
                connection.transport.abortConnection()
            self._refusedAfterHandshake(exchange, connection.refusal)
            return
        backends.register(connection)
        head = exchange.head
        scheme = b"https" if backends.connector.tls is not None else b"http"
        fields = upstreamRequestFields(exchange.headBytes, scheme, head.headers.get(b"te"))
        held, self._held = self._held, []
        trailers = trailerFields(head.trailers) if exchange.requestComplete else []
        endNow = exchange.requestComplete and not held and not trailers
        stream = connection.openStream(self, fields, endNow)
        if stream is None:
            # The connection went away or filled up meanwhile.
            self._held = held
            if exchange.resends <= exchange.route.pool.options.retries:
                self._resend(exchange, None)
            else:
                self._sendError(exchange, 502, "SC")
            return
        self._upstream = True
        exchange.backend = stream
        now = self._seconds()
        exchange.sentTime = now
        if self._windowBlocked or self.connection.writeBlocked:
            stream.pauseReading()
        for data in held:
            self._forward(data)
        if exchange.requestComplete:
            if not endNow:
                stream.end(trailers)
            self.timer.enter(_WAIT, exchange.route.pool.options.responseTimeout, now)
        else:
            self._enterBody(now)
        self._backendFull = stream.writeBlocked
        if not self._backendFull:
            self._acknowledge()
            self.connection.flush()

    def _endUpstreamRequest(self) -> None:
        """
        The client ended its request: end the server's side of the stream
        (with the request's trailers, if any).
        """
        exchange = self.exchange
        exchange.backend.end(trailerFields(exchange.head.trailers))

    # -- IUpstreamUser --------------------------------------------------------

    def upstreamInformational(self, fields) -> None:
        if self._done:
            return
        try:
            self.h2.send_headers(self.streamId, [(n, v) for n, v in fields if n[:1] != b":" or n == b":status"])
        except (ProtocolError, ValueError, TypeError):
            return
        self.connection.flush()

    def upstreamHeaders(self, fields, ended: bool) -> None:
        if self._done:
            return
        exchange = self.exchange
        head = serverResponseHead(fields, BodyKind.NONE if ended else BodyKind.CHUNKED)
        status = head.status
        now = self._seconds()
        exchange.response = head
        exchange.responseTime = now
        exchange.status = status
        stickiness = exchange.stickiness
        if stickiness is not None:
            exchange.cookie = exchange.route.persistence.responseHeaders(
                head.headers, exchange.server, stickiness, secure=self.factory.secure
            )
        out = [(b":status", b"%d" % (status,))]
        out += [(lowered, value) for lowered, _, value in head.headers._items]
        try:
            self.h2.send_headers(self.streamId, out, end_stream=ended)
        except (ProtocolError, ValueError, TypeError):
            exchange.response = None
            exchange.status = -1
            self._backendBroken(exchange, "PH")
            return
        exchange.bytesOut += sum(len(name) + len(value) + 4 for name, value in out)
        if ended:
            self._end = []
            self._responseRead()
            self._finished()
            return
        self._enterResponse(now)
        self.connection.flush()

    def upstreamData(self, data: bytes, flowLength: int) -> None:
        if self._done:
            return
        backend = self.exchange.backend
        if data:
            self.responseBodyReceived(data)
        if backend is not None:
            backend.acknowledge(flowLength)

    def upstreamTrailers(self, fields) -> None:
        self._upstreamTrailers = [(name, value) for name, value in fields if name[:1] != b":"]

    def upstreamEnded(self) -> None:
        if self._done or self.exchange.response is None:
            return
        self._end = self._upstreamTrailers or []
        self._responseRead()
        self.drain()

    def upstreamReset(self, code) -> None:
        if self._done:
            return
        exchange = self.exchange
        exchange.backend = None
        if code == ErrorCodes.REFUSED_STREAM and self._mayResend(exchange):
            self._resend(exchange, None)
            return
        if code not in (ErrorCodes.NO_ERROR, ErrorCodes.CANCEL) and exchange.server is not None:
            exchange.server.responseErrors += 1
        self._resetClient(exchange, code, "SH" if exchange.response is None else "SD")

    def upstreamRefused(self) -> None:
        if self._done:
            return
        exchange = self.exchange
        exchange.backend = None
        if self._mayResend(exchange):
            self.factory.staleRetries += 1
            self._resend(exchange, None)
            return
        self._resetClient(exchange, ErrorCodes.REFUSED_STREAM, "SH")

    def upstreamLost(self) -> None:
        if self._done:
            return
        exchange = self.exchange
        exchange.backend = None
        if self._mayResend(exchange) and retryable(exchange.head):
            self.factory.redispatched += 1
            exchange.context.excluded.add(exchange.server)
            self._resend(exchange, None)
            return
        self._backendBroken(exchange, "SH" if exchange.response is None else "SD")

    def _mayResend(self, exchange: Exchange) -> bool:
        """
        Whether the request may go again: nothing of its body was sent,
        nothing of a response came, and it has resends left.
        """
        return (
            exchange.response is None
            and not exchange.bytesIn
            and exchange.resends < 1 + exchange.route.pool.options.retries
        )

    def _resetClient(self, exchange: Exchange, code, termination: str) -> None:
        """
        End the client's stream with a reset of C{code} (the server's).
        """
        exchange.termination = termination
        self._abandon(exchange)
        try:
            self.h2.reset_stream(self.streamId, code)
        except ProtocolError:
            pass
        self._complete(exchange)


__all__ = ["UpstreamRelay"]
