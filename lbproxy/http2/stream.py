"""
One request stream of an HTTP/2 client connection.

An L{H2Stream} turns its request into the L{RequestHead} an HTTP/1.1
request would be (L{lbproxy.http2.heads}) and places it through the same
code as the HTTP/1.1 front (L{lbproxy.http.placement.RequestPlacement}):
path normalisation, routing, cookie and stick persistence, hash keys,
forwarding headers, header rewriting, keep-alive reuse of the pool's
server connections, retries and redispatch, error statuses, and one
access log line (whose request line says C{HTTP/2.0}). To a pool with
C{protocol = "h2"} the request is then one stream of a shared HTTP/2
server connection (L{lbproxy.http2.relay}); else it goes in HTTP/1.1.

Flow control both ways, per stream:

  - Request body: DATA is written to the server connection as it comes
    and its window given back only while the server reads; while the
    server does not (or before a server connection is there), the client
    can send no more than the stream's window, so nothing grows without
    bound.
  - Response body: sent as far as the client's windows let; what they hold
    back waits here, and meanwhile the stream's server connection is
    paused (and only that one), until a WINDOW_UPDATE.

Timeouts are those of the HTTP/1.1 front, per stream: the pool's response
timeout for the response head (504), its server timeout while a server
stalls (504, or the stream is reset once the response began), the
listener's idle timeout while the client sends nothing of a body or holds
its window closed (the stream is reset: a zero-window stall holds nothing
for longer).
"""

from __future__ import annotations

from collections import deque
from http import HTTPStatus

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from twisted.logger import Logger
from zope.interface import implementer

from lbproxy.core.timers import PhaseTimer
from lbproxy.http.errors import HTTPParseError
from lbproxy.http.exchange import Exchange
from lbproxy.http.interfaces import IBackendUser
from lbproxy.http.message import BodyKind, Headers, ResponseHead
from lbproxy.http.placement import CONNECT_PHASE
from lbproxy.http.serialize import encodeChunk, lastChunk
from lbproxy.http2.flow import sendWithinWindows
from lbproxy.http2.heads import refusedHead, requestHead, responseFields, trailerFields
from lbproxy.http2.relay import UpstreamRelay
from lbproxy.http2.upstream import H2ServerConnection
from lbproxy.interfaces import IUpstreamUser

# Phases of a stream (CONNECT_PHASE while it is placed).
_BODY = "body"
_WAIT = "wait"
_RESPONSE = "response"


@implementer(IBackendUser, IUpstreamUser)
class H2Stream(UpstreamRelay):
    """
    One request of an L{lbproxy.http2.connection.H2FrontConnection} (see
    the module docstring).

    @ivar connection: the L{H2FrontConnection}.
    @ivar streamId: its stream identifier.
    @ivar exchange: the L{Exchange} of its request.
    @ivar requests: streams the connection had opened with this one (the
        first takes no idle server connection in reuse mode C{"safe"}).
    @ivar reuseKey: the client connection (reuse mode C{"never"}).
    """

    log = Logger()

    def __init__(self, connection, streamId: int, requests: int) -> None:
        owner = connection.owner
        self.connection = connection
        self.h2 = connection.h2
        self.streamId = streamId
        self.requests = requests
        self.reuseKey = owner
        self.factory = connection.factory
        self.listener = owner.listener
        self.config = owner.config
        self.client = owner.client
        self.local = owner.local
        self._peer = owner._peer
        self._seconds = connection._seconds
        self.timer = PhaseTimer(connection._reactor, self, self.factory.timers)
        self.exchange: Exchange | None = None
        self._backendFull = False
        # Request body received before a server connection took it.
        self._held: list[bytes] = []
        # Request body bytes received and not yet acknowledged.
        self._unacked = 0
        # Response body the client's windows hold back.
        self._pending: deque[bytes] = deque()
        # The trailer fields to end the response with once it is sent
        # (an empty list: none), or None while the response goes on.
        self._end: list | None = None
        self._windowBlocked = False
        self._blockedSince = 0.0
        self._done = False

    def __repr__(self) -> str:
        return f"<H2Stream {self.streamId} {self.exchange!r}>"

    # -- the request --------------------------------------------------------

    def start(self, fields, endStream: bool) -> None:
        now = self._seconds()
        try:
            head = requestHead(fields, endStream, self.factory.parserLimits["maxHeaders"])
        except HTTPParseError as error:
            self._logRefusal(error)
            self._sendError(Exchange(refusedHead(fields), now, now, now), error.status, "PR")
            return
        exchange = self.exchange = Exchange(head, now, now, now)
        exchange.requestComplete = endStream
        limit = self.factory.parserLimits["maxBodySize"]
        if limit is not None and head.contentLength is not None and head.contentLength > limit:
            self._sendError(exchange, 413, "PR")
            return
        self._place(exchange, head)

    def bodyReceived(self, data: bytes, flowLength: int) -> None:
        """
        DATA of the request body (C{flowLength} counts against the windows,
        padding included).
        """
        self._unacked += flowLength
        exchange = self.exchange
        if self._done or exchange is None:
            self._acknowledge()
            return
        if data:
            limit = self.factory.parserLimits["maxBodySize"]
            if limit is not None and exchange.bytesIn + len(data) + sum(map(len, self._held)) > limit:
                self._sendError(exchange, 413, "PD")
                return
            if exchange.backend is None:
                self._held.append(data)
                return
            self._forward(data)
            if self.timer.phase == _BODY and not self._backendFull:
                self.timer.extend(self._seconds() + self.config.idleTimeout)
        if exchange.backend is not None and not self._backendFull:
            self._acknowledge()

    def trailersReceived(self, fields) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.head is not None:
            exchange.head.trailers = Headers(fields)

    def requestEnded(self) -> None:
        exchange = self.exchange
        if self._done or exchange is None or exchange.requestComplete:
            return
        exchange.requestComplete = True
        backend = exchange.backend
        if backend is not None:
            if self._upstream:
                self._endUpstreamRequest()
            elif exchange.chunked:
                backend.transport.write(lastChunk(exchange.head.trailers))
            if exchange.response is None:
                self.timer.enter(_WAIT, exchange.route.pool.options.responseTimeout)

    def _forward(self, data: bytes) -> None:
        exchange = self.exchange
        exchange.bytesIn += len(data)
        if self._upstream:
            exchange.backend.send(data)
            return
        transport = exchange.backend.transport
        if exchange.chunked:
            transport.writeSequence(encodeChunk(data))
        else:
            transport.write(data)

    def _acknowledge(self) -> None:
        count = self._unacked
        if count:
            self._unacked = 0
            self.connection._acknowledge(count, self.streamId)

    # -- RequestPlacement ---------------------------------------------------

    def _holdRequestBody(self) -> None:
        # Sent again only when none of the body was: what comes meanwhile
        # is held until the next server connection.
        pass

    def _logRefusal(self, error: HTTPParseError) -> None:
        self.log.debug(
            "listener {listener}: refused an HTTP/2 request from {client}: {status} {reason}",
            listener=self.listener.name,
            client=self.client,
            status=error.status,
            reason=error.reason,
        )

    def _attach(self, exchange: Exchange, backend) -> None:
        if isinstance(backend, H2ServerConnection):
            self._attachUpstream(exchange, backend)
            return
        exchange.backend = backend
        backend.attach(self, exchange.head.method, False)
        if self._windowBlocked or self.connection.writeBlocked:
            backend.pauseReading()
        self._backendFull = backend.writeBlocked
        now = self._seconds()
        exchange.sentTime = now
        transport = backend.transport
        transport.write(exchange.headBytes)
        held = self._held
        if held:
            self._held = []
            for data in held:
                self._forward(data)
        if exchange.requestComplete:
            if exchange.chunked:
                transport.write(lastChunk(exchange.head.trailers))
            self.timer.enter(_WAIT, exchange.route.pool.options.responseTimeout, now)
        else:
            self._enterBody(now)
        if not self._backendFull:
            self._acknowledge()
            self.connection.flush()

    # -- IBackendUser -------------------------------------------------------

    def responseHeadReceived(self, head: ResponseHead, body: bytes | None) -> None:
        exchange = self.exchange
        if head.status < 200:
            if head.status != 101:
                self._informational(head)
            return
        now = self._seconds()
        exchange.response = head
        exchange.responseTime = now
        exchange.status = head.status
        stickiness = exchange.stickiness
        if stickiness is not None:
            exchange.cookie = exchange.route.persistence.responseHeaders(
                head.headers, exchange.server, stickiness, secure=self.factory.secure
            )
        fields = responseFields(head)
        endNow = head.bodyKind is BodyKind.NONE or (body is not None and not body)
        try:
            self.h2.send_headers(self.streamId, fields, end_stream=endNow)
        except (ProtocolError, ValueError, TypeError):
            # Fields HTTP/2 cannot carry.
            exchange.response = None
            exchange.status = -1
            self._backendBroken(exchange, "PH")
            return
        exchange.bytesOut += sum(len(name) + len(value) + 4 for name, value in fields)
        if endNow:
            self._end = []
            self._responseRead()
            self._finished()
            return
        self._enterResponse(now)
        if body is not None:
            self._send(body)
            self.responseCompleted()
            return
        self.connection.flush()

    def _informational(self, head: ResponseHead) -> None:
        """
        Pass on an interim response (C{100 Continue}, C{103 Early Hints}).
        """
        try:
            self.h2.send_headers(self.streamId, responseFields(head))
        except (ProtocolError, ValueError, TypeError):
            return
        self.connection.flush()

    def responseBodyReceived(self, data: bytes) -> None:
        if not self._windowBlocked and not self.connection.writeBlocked:
            self.timer.extend(self._seconds() + self.exchange.route.pool.options.serverTimeout)
        self._send(data)

    def responseCompleted(self) -> None:
        exchange = self.exchange
        response = exchange.response
        if response is None:
            # The end of an interim response.
            return
        self._end = trailerFields(response.trailers)
        self._responseRead()
        self.drain()

    def backendWriteBlocked(self) -> None:
        self._backendFull = True
        if self.timer.phase == _BODY:
            self._enterBody(self._seconds())

    def backendWriteUnblocked(self) -> None:
        self._backendFull = False
        if self.timer.phase == _BODY:
            self._enterBody(self._seconds())
        if not self._done:
            self._acknowledge()
            self.connection.flush()

    # -- sending the response -----------------------------------------------

    def _send(self, data: bytes) -> None:
        self._pending.append(data)
        self.drain()

    def drain(self) -> None:
        """
        Send what the windows let of the response body, and its end once
        all is sent; pause the stream's server connection while the
        windows hold some back.
        """
        if self._done:
            return
        pending = self._pending
        sent, ended = sendWithinWindows(self.h2, self.streamId, pending, self._end)
        self.exchange.bytesOut += sent
        if ended:
            self._finished()
            return
        if ended is None:
            # The stream closed under the response (the client's reset is
            # handled as its own event).
            return
        self._windowHeld(bool(pending))
        self.connection.flush()

    def _windowHeld(self, held: bool) -> None:
        if held == self._windowBlocked:
            return
        self._windowBlocked = held
        backend = self.exchange.backend
        if held:
            self._blockedSince = self._seconds()
            if self.timer.phase == _RESPONSE:
                self.timer.enter(_RESPONSE, self.config.idleTimeout, self._blockedSince)
            if backend is not None:
                backend.pauseReading()
        else:
            if self.timer.phase == _RESPONSE:
                self._enterResponse(self._seconds())
            if backend is not None and not self.connection.writeBlocked:
                backend.resumeReading()

    def clientWriteBlocked(self) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.backend is not None:
            exchange.backend.pauseReading()

    def clientWriteUnblocked(self) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.backend is not None and not self._windowBlocked:
            exchange.backend.resumeReading()

    # -- ending -------------------------------------------------------------

    def _responseRead(self) -> None:
        """
        The whole response came from the server: its connection goes back
        to the pool (or is closed, when the request was not all sent), the
        server's count of requests in flight drops.
        """
        exchange = self.exchange
        backend = exchange.backend
        if backend is not None:
            exchange.backend = None
            if exchange.requestComplete and not self._upstream:
                exchange.route.backends.release(backend, self.reuseKey)
            else:
                backend.close()
        if exchange.lease is not None:
            exchange.lease.release()
            exchange.lease = None
        self._backendFull = False
        self._held = []

    def _finished(self) -> None:
        """
        The response was sent whole: tell a client still sending the
        request body that it is not needed (RST_STREAM C{NO_ERROR}), log.
        """
        exchange = self.exchange
        if not exchange.requestComplete:
            try:
                self.h2.reset_stream(self.streamId, ErrorCodes.NO_ERROR)
            except ProtocolError:
                pass
        self._complete(exchange)

    def _complete(self, exchange: Exchange) -> None:
        """
        The stream is over: count and log its exchange once.
        """
        if self._done:
            return
        self._done = True
        self.timer.stop()
        self._pending.clear()
        self._held = []
        self._acknowledge()
        self._log(exchange)
        self.connection.streamDone(self)
        self.connection.flush()

    def _abandon(self, exchange: Exchange) -> None:
        """
        Drop whatever C{exchange} holds on the server side.
        """
        exchange.dropServerSide()
        self._backendFull = False

    def _sendError(self, exchange: Exchange, status: int | None, termination: str) -> None:
        """
        End the stream with an error: the proxy's own response with
        C{status} when nothing of a response was sent yet, else a reset
        (C{INTERNAL_ERROR}; C{CANCEL} without a status: a stalled client).
        """
        if self.exchange is None:
            self.exchange = exchange
        self._abandon(exchange)
        exchange.termination = termination
        if self._done:
            return
        if exchange.response is None and exchange.status == -1 and status is not None:
            phrase = HTTPStatus(status).phrase.encode("ascii")
            body = b"%d %s\n" % (status, phrase)
            fields = [
                (b":status", b"%d" % (status,)),
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % (len(body),)),
                (b"cache-control", b"no-store"),
            ]
            exchange.status = status
            head = exchange.head
            withBody = head is None or head.method != b"HEAD"
            try:
                self.h2.send_headers(self.streamId, fields, end_stream=not withBody)
            except ProtocolError:
                self._complete(exchange)
                return
            exchange.bytesOut += sum(len(name) + len(value) + 4 for name, value in fields)
            if withBody:
                self._pending.clear()
                self._end = []
                self._send(body)
            else:
                self._finished()
            return
        try:
            self.h2.reset_stream(
                self.streamId, ErrorCodes.CANCEL if status is None else ErrorCodes.INTERNAL_ERROR
            )
        except ProtocolError:
            pass
        self._complete(exchange)

    def _termination(self, exchange: Exchange) -> str:
        """
        The termination state of a stream the client gave up.
        """
        if exchange.response is not None:
            return "CD"
        if exchange.connecting is not None:
            since = exchange.route.pool.queuedSince(exchange.context)
            if since is None:
                return "CC"
            exchange.queueTime += self._seconds() - since
            return "CQ"
        if exchange.requestComplete:
            return "CH"
        return "CD"

    def clientReset(self) -> None:
        """
        The client reset the stream.
        """
        exchange = self.exchange
        if self._done or exchange is None:
            self._done = True
            self.timer.stop()
            self.connection.streamDone(self)
            return
        exchange.termination = self._termination(exchange)
        self._abandon(exchange)
        self._complete(exchange)

    def connectionEnded(self) -> None:
        """
        The client connection ended (the client left, or lbproxy closed
        it): the stream ends with it.
        """
        exchange = self.exchange
        if self._done or exchange is None:
            self._done = True
            self.timer.stop()
            return
        if exchange.termination == "--" and (exchange.response is None or self._end is None or self._pending):
            exchange.termination = self._termination(exchange)
        self._abandon(exchange)
        self._done = True
        self.timer.stop()
        self._log(exchange)

    # -- timeouts -----------------------------------------------------------

    def _enterBody(self, now: float) -> None:
        if self._backendFull:
            self.timer.enter(_BODY, self.exchange.route.pool.options.serverTimeout, now)
        else:
            self.timer.enter(_BODY, self.config.idleTimeout, now)

    def _enterResponse(self, now: float) -> None:
        if self._windowBlocked:
            self.timer.enter(_RESPONSE, self.config.idleTimeout, self._blockedSince)
        else:
            self.timer.enter(_RESPONSE, self.exchange.route.pool.options.serverTimeout, now)

    def phaseExpired(self, phase: str) -> None:
        if self._done:
            return
        exchange = self.exchange
        if phase == _WAIT:
            self._sendError(exchange, 504, "sH")
        elif phase == _BODY:
            if self._backendFull:
                self._sendError(exchange, 504, "sD")
            else:
                self._sendError(exchange, 408 if exchange.response is None else None, "cD")
        elif phase == _RESPONSE:
            if self._windowBlocked:
                self._sendError(exchange, None, "cD")
            else:
                self._sendError(exchange, 504, "sD")
        self.connection.flush()


__all__ = ["H2Stream", "CONNECT_PHASE"]
