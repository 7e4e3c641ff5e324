"""
The HTTP/1.1 reverse proxy front (C{mode = "http"}).

One L{HTTPProxyProtocol} serves one client connection. Its requests are
handled one at a time, in order:

  1. The L{RequestParser} delivers a head; the parser is paused (the body
     and any pipelined requests wait in it, and the client transport is
     paused while it holds data).
  2. The request's path is normalised (L{PathNormalizer}), the request
     routed to a pool (L{Router}), pinned by the pool's
     persistence cookie or placed by the pool's selector, and rewritten
     for the backend (L{RequestRewriter}).
  3. An idle keep-alive connection to the chosen server is reused if there
     is one the pool's reuse mode lets the request take (by default, not
     for the first request of a client connection), else the pool's
     connector opens one (retries, redispatch).
     The request is counted on the server (a L{Lease}) until its response
     ends, so leastconn sees requests in flight.
  4. The head is sent and the body streamed (re-chunked when chunked); the
     response is parsed, its head rewritten for the client (hop-by-hop
     fields, persistence cookie, framing) and its body streamed.
  5. The backend connection goes back to its idle list when it can carry
     another request; the parser resumes with the next request, or the
     client connection closes.

Backpressure: the client protocol is the streaming producer of its own
transport (a client that does not read pauses the backend connection),
and each backend connection is the producer of its transport (a backend
that does not read pauses the client).

Timeouts: each phase of a connection (a request head awaited, a body
forwarded, a response awaited...) has a deadline on the connection's
L{lbproxy.core.timers.PhaseTimer}, on the listener's
L{lbproxy.core.timers.TimerWheel}: entering a phase or reading more of a
body moves a deadline, nothing is rescheduled per request or per chunk,
and a connection costs the reactor no timer of its own.

A reused connection that the backend closed or reset before any byte of
the response (the keep-alive race) is not an error: an idempotent request
whose body was not started is sent again on a fresh connection to the same
server. When a fresh connection dies that way (the server crashed), such a
request goes to another server, up to the pool's C{retries} times.

HTTP/2: on a listener with C{[http2]} enabled, a client that chose C{h2}
by ALPN (L{handshakeCompleted}), or that begins with the HTTP/2 preface on
a C{cleartext} listener, is handed to an
L{lbproxy.http2.connection.H2FrontConnection}; this protocol stays its
session (admission, addresses, the connection's timer, its end).

After a backend's C{101 Switching Protocols} to a websocket upgrade, both
connections are handed to a L{Relay} (the listener's C{tunnelTimeout} as
its idle timeout).

Each request ends with one L{AccessRecord}; its termination states are
listed in L{lbproxy.http.exchange}. C{bytesIn} counts the request body
bytes received from the client, C{bytesOut} everything sent to the client
for the request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.core.relay import setNoDelay
from lbproxy.core.session import FrontConnection
from lbproxy.http.backend import BackendHTTPConnection
from lbproxy.http.errors import HTTPParseError
from lbproxy.http.exchange import Exchange
from lbproxy.http.interfaces import IBackendUser, IHTTPMessageReceiver
from lbproxy.http.message import RequestHead
from lbproxy.http.parser import TLS_ON_PLAINTEXT, RequestParser
from lbproxy.http.placement import CONNECT_PHASE, RequestPlacement
from lbproxy.http.response import ResponseForwarding
from lbproxy.http.serialize import encodeChunk, lastChunk
from lbproxy.http2.bridge import attachHTTP11
from lbproxy.http2.heads import trailerFields
from lbproxy.http2.upstream import H2ServerConnection, UpstreamStream

if TYPE_CHECKING:
    from lbproxy.http.factory import HTTPProxyFactory

# Phases of a client connection; each has its own timeout.
_IDLE = "idle"  # keep-alive, before the first byte of the next request
_HEAD = "head"  # receiving a request head: request timeout (408)
_CONNECT = CONNECT_PHASE  # placing the request: the connector's connect timeout
_BODY = "body"  # forwarding the request body: client idle / server timeout
_WAIT = "wait"  # request sent, response head awaited: response timeout (504)
_RESPONSE = "response"  # forwarding the response body: server / client timeout

#: Seconds a keep-alive connection may idle once its listener stops.
STOPPING_IDLE = 1.0



#: What an HTTP/2 client sends first (RFC 9113 §3.4).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@implementer(IHTTPMessageReceiver, IPushProducer, IHalfCloseableProtocol, IHandshakeListener, IBackendUser)
class HTTPProxyProtocol(ResponseForwarding, RequestPlacement, FrontConnection):
    """
    One client connection of an HTTP listener (what every front does with
    a connection is L{FrontConnection}'s; how a request is placed on a
    server, L{RequestPlacement}'s, in L{lbproxy.http.placement}; how a
    server's answer reaches the client, L{ResponseForwarding}'s, in
    L{lbproxy.http.response}).

    @ivar parser: the L{RequestParser} of the connection.
    @ivar exchange: the L{Exchange} being served, or L{None} between
        requests.
    @ivar requests: requests received so far.
    @ivar http2: the L{lbproxy.http2.connection.H2FrontConnection} serving
        the connection once the client chose HTTP/2, else L{None}.
    """

    log = Logger()

    # Its own state lives in slots, not in the instance dictionary: an
    # idle keep-alive connection then costs a few hundred bytes less (the
    # dictionary of a protocol whose attributes appear in varying orders
    # is not shared-key and weighs about 0.8 KiB). The slots start in
    # __init__, in one place.
    __slots__ = (
        "factory",
        "_seconds",
        "_writes",
        "_peer",
        "parser",
        "exchange",
        "requests",
        "_acceptTime",
        "_firstByte",
        "_readPaused",
        "_backendFull",
        "_writeBlocked",
        "_writeBlockedSince",
        "_readClosed",
        "_closed",
        # Registered as the streaming producer of the client transport.
        "_producing",
        "http2",
        # What a client of a listener with prior-knowledge h2c sent before
        # it was known whether it speaks HTTP/2.
        "_sniffed",
        # Where the client's bytes go instead of the HTTP/1.1 parser (the
        # h2c sniffer, the HTTP/2 connection, a tunnel's relay), or None.
        "_receiver",
    )

    def __init__(self, factory: HTTPProxyFactory, reactor) -> None:
        super().__init__(factory.listener, reactor, factory.timers)
        self.factory = factory
        self._seconds = reactor.seconds
        self._writes = factory.writes
        self._peer = None
        self.parser: RequestParser | None = None
        self.exchange: Exchange | None = None
        self.requests = 0
        self._acceptTime = 0.0
        self._firstByte: float | None = None
        self._readPaused = False
        self._backendFull = False
        self._writeBlocked = False
        self._writeBlockedSince = 0.0
        self._readClosed = False
        self._closed = False
        self._producing = False
        self.http2 = None
        self._sniffed = b""
        self._receiver = None

    def __repr__(self) -> str:
        return f"<HTTPProxyProtocol {self.listener.name} requests={self.requests}>"

    @property
    def reuseKey(self):
        """
        The client connection itself (L{RequestPlacement}).
        """
        return self

    def _holdRequestBody(self) -> None:
        self.parser.pauseParsing()

    # -- connection ---------------------------------------------------------

    def accepted(self) -> None:
        factory = self.factory
        transport = self.transport
        self._acceptTime = self.started
        self._peer = factory.rewriter.peer(self.client, self.local, transport)
        setNoDelay(transport)
        transport.registerProducer(self, True)
        self._producing = True
        self.parser = RequestParser(self, cache=factory.requestHeads, **factory.parserLimits)
        self.timer.enter(_HEAD, self.config.requestTimeout, self.started)
        if factory.h2c:
            # Until the first bytes tell.
            self._receiver = self._firstData

    # -- HTTP/2 ---------------------------------------------------------------

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done: a client that chose C{h2} by ALPN is
        served by HTTP/2.
        """
        if self.factory.http2 is not None and self.transport.negotiatedProtocol == b"h2":
            self._speakHTTP2(b"")

    def _firstData(self, data: bytes) -> None:
        """
        The first bytes on a listener with prior-knowledge h2c: the HTTP/2
        preface, or an HTTP/1.1 request. Bytes that agree with the preface
        so far are waited for until they are at least C{"PRI "} (no HTTP/1.1
        request line begins so: C{PRI} is the method RFC 9113 reserves).
        """
        data = self._sniffed + data
        consistent = H2_PREFACE.startswith(data[: len(H2_PREFACE)])
        if consistent and len(data) < 4:
            self._sniffed = data
            return
        self._sniffed = b""
        self._receiver = None
        if consistent:
            self._speakHTTP2(data)
        else:
            self.dataReceived(data)

    def _speakHTTP2(self, data: bytes) -> None:
        """
        Hand the connection to an HTTP/2 connection, C{data} what the client
        sent so far; this protocol stays the session (admission, addresses,
        timer, end).
        """
        from lbproxy.http2.connection import H2FrontConnection

        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()
        self.parser.pauseParsing()
        self._firstByte = None
        http2 = self.http2 = H2FrontConnection(self, self.factory, self._reactor)
        self._receiver = http2.dataReceived
        http2.start(data)

    def closeHTTP2(self) -> None:
        """
        The HTTP/2 connection ended its session: close after what is
        written.
        """
        self._closed = True
        self.timer.stop()
        self.transport.loseConnection()

    def refused(self) -> None:
        self._acceptTime = self.started
        self._closed = True
        self._sendError(Exchange(None, self.started, None, None), 503, "RR")

    def receiveWith(self, receiver) -> None:
        self._receiver = receiver

    def dataReceived(self, data: bytes) -> None:
        receiver = self._receiver
        if receiver is not None:
            receiver(data)
            return
        if self._closed:
            return
        now = self._seconds()
        exchange = self.exchange
        if exchange is None:
            # The common case: one whole request in one read, which the
            # parser takes in one step (its head from the cache, mostly).
            whole = self.parser.wholeMessage(data)
            if whole is not None:
                self._wholeRequest(whole[0], whole[1], now)
                return
            if self._firstByte is None:
                self._firstByte = now
                if self.timer.phase == _IDLE:
                    self.timer.enter(_HEAD, self.config.requestTimeout, now)
        elif not self._backendFull and self.timer.phase == _BODY:
            self.timer.extend(now + self.config.idleTimeout)
        parser = self.parser
        try:
            parser.dataReceived(data)
        except HTTPParseError as error:
            self._requestFailed(error)
            return
        if parser.paused and not self._readPaused and parser.bufferedBytes:
            self._updateReading()

    def readConnectionLost(self) -> None:
        if self.relayLeg is not None:
            self.relayLeg.readConnectionLost()
            return
        if self.http2 is not None:
            self.http2.readConnectionLost()
            return
        if self._closed:
            return
        self._readClosed = True
        exchange = self.exchange
        try:
            self.parser.connectionLost()
        except HTTPParseError:
            if exchange is None:
                exchange = Exchange(None, self._acceptTime, self._firstByte, None)
                self._clientGone("CR", exchange)
            else:
                self._clientGone("CD", exchange)
            self._closeClient()
            return
        if self.exchange is None:
            self._closeClient()

    def writeConnectionLost(self) -> None:
        if self.relayLeg is not None:
            self.relayLeg.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for backends in self.factory.privateBackends:
            backends.forget(self)
        if self.relayLeg is not None:
            self.relayLeg.connectionLost(reason)
            return
        if self.http2 is not None:
            self._closed = True
            self.http2.connectionLost(reason)
            self.ended()
            return
        if self._closed:
            # The proxy closed it, after logging what there was.
            self.ended()
            return
        self._closed = True
        self.ended()
        exchange = self.exchange
        if exchange is not None:
            if exchange.response is not None:
                termination = "CD"
            elif exchange.connecting is not None:
                since = exchange.route.pool.queuedSince(exchange.context)
                if since is None:
                    termination = "CC"
                else:
                    termination = "CQ"
                    exchange.queueTime += self._seconds() - since
            elif exchange.requestComplete:
                termination = "CH"
            else:
                termination = "CD"
            self._clientGone(termination, exchange)
        elif self._firstByte is not None:
            self._clientGone("CR", Exchange(None, self._acceptTime, self._firstByte, None))

    def _clientGone(self, termination: str, exchange: Exchange) -> None:
        """
        The client left (or stopped sending) in the middle of C{exchange}:
        drop its backend side and log it.
        """
        self._abandon(exchange)
        exchange.termination = termination
        self._log(exchange)

    def _closeClient(self, abort: bool = False) -> None:
        """
        Close the client connection after what is buffered for it, or, with
        C{abort}, drop it (a close-delimited body was cut short: the client
        could not tell it from a complete one).
        """
        self._closed = True
        self._firstByte = None
        self.timer.stop()
        if self.parser is not None:
            # Nothing more of what the client sent is looked at.
            self.parser.pauseParsing()
        if abort:
            self.transport.abortConnection()
        else:
            if self._producing:
                # A TLS transport closes only once its producer is gone.
                self._producing = False
                self.transport.unregisterProducer()
            self.transport.loseConnection()

    # -- reading from the client --------------------------------------------

    def _updateReading(self) -> None:
        """
        Pause the client transport while the parser holds unparsed data or
        the backend does not read, resume it otherwise.
        """
        if self._closed:
            return
        parser = self.parser
        pause = self._backendFull or (parser.paused and parser.bufferedBytes > 0)
        if pause != self._readPaused:
            self._readPaused = pause
            if pause:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    # -- IPushProducer: the client's reading of what the proxy writes -------

    def pauseProducing(self) -> None:
        self._writeBlocked = True
        now = self._writeBlockedSince = self._seconds()
        if self.timer.phase == _RESPONSE:
            self.timer.enter(_RESPONSE, self.config.idleTimeout, now)
        exchange = self.exchange
        if exchange is not None and exchange.backend is not None:
            exchange.backend.pauseReading()

    def resumeProducing(self) -> None:
        self._writeBlocked = False
        exchange = self.exchange
        if self.timer.phase == _RESPONSE:
            # The backend was paused for the client: its silence did not count.
            self.timer.enter(_RESPONSE, exchange.route.pool.options.serverTimeout)
        if exchange is not None and exchange.backend is not None:
            exchange.backend.resumeReading()

    def stopProducing(self) -> None:
        pass

    # -- IHTTPMessageReceiver: requests -------------------------------------

    def headersComplete(self, head: RequestHead) -> None:
        self.parser.pauseParsing()
        now = self._seconds()
        exchange = self.exchange = Exchange(
            head, self._acceptTime, self._firstByte or now, now
        )
        self._firstByte = None
        self.requests += 1
        if head.method == b"CONNECT":
            self._sendError(exchange, 501, "PR")
            return
        self._place(exchange, head)

    def _wholeRequest(self, head: RequestHead, body: bytes, now: float) -> None:
        """
        A whole request arrived in one read
        (L{RequestParser.wholeMessage}), C{body} its complete body: it is
        placed as L{headersComplete} would, and sent at once with its body.
        """
        self.parser.pauseParsing()
        exchange = self.exchange = Exchange(
            head, self._acceptTime, self._firstByte or now, now
        )
        self._firstByte = None
        self.requests += 1
        exchange.requestComplete = True
        exchange.body = body
        self._place(exchange, head)

    def bodyData(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None or exchange.backend is None:
            return
        exchange.bytesIn += len(data)
        if type(exchange.backend) is UpstreamStream:
            exchange.backend.send(data)
            return
        if exchange.chunked:
            self._writes.writeSequence(exchange.backend.transport, encodeChunk(data))
        else:
            self._writes.writeNow(exchange.backend.transport, data)

    def messageComplete(self) -> None:
        self.parser.pauseParsing()
        exchange = self.exchange
        if exchange is None:
            return
        exchange.requestComplete = True
        backend = exchange.backend
        if type(backend) is UpstreamStream:
            backend.end(trailerFields(exchange.head.trailers))
        elif backend is not None and exchange.chunked:
            self._writes.write(backend.transport, lastChunk(exchange.head.trailers))
        if exchange.response is None:
            self.timer.enter(_WAIT, exchange.route.pool.options.responseTimeout)

    def _requestFailed(self, error: HTTPParseError) -> None:
        """
        The client sent something the parser refuses.
        """
        self._logRefusal(error)
        exchange = self.exchange
        status = error.status
        if exchange is None:
            exchange = Exchange(None, self._acceptTime, self._firstByte, None)
            termination = "PR"
        else:
            termination = "PD"
        if self._readClosed and error.reason.startswith("connection closed"):
            # The client's own close cut its request short.
            status = None
            termination = "C" + termination[1]
        self._sendError(exchange, status, termination)

    def _logRefusal(self, error: HTTPParseError) -> None:
        """
        Say why a request was refused: at debug level, but at info for a
        TLS handshake (a client configured for https on a plaintext port is
        worth an operator's attention; other refusals are routine).
        """
        emit = self.log.info if error.reason == TLS_ON_PLAINTEXT else self.log.debug
        emit(
            "listener {listener}: refused a request from {client}: {status} {reason}",
            listener=self.listener.name,
            client=self.client,
            status=error.status,
            reason=error.reason,
        )

    # -- placing the request ------------------------------------------------

    def _attach(self, exchange: Exchange, backend: BackendHTTPConnection) -> None:
        """
        Send the request of C{exchange} on C{backend} and let its body flow.
        """
        if type(backend) is H2ServerConnection:
            if not attachHTTP11(self, exchange, backend):
                if exchange.backend is not None and exchange.requestComplete:
                    self.timer.enter(_WAIT, exchange.route.pool.options.responseTimeout)
                return
            self._enterBody(self._seconds())
            try:
                self.parser.resumeParsing()
            except HTTPParseError as error:
                self._requestFailed(error)
                return
            self._updateReading()
            return
        exchange.backend = backend
        backend.attach(self, exchange.head.method, exchange.upgrade)
        if self._writeBlocked:
            backend.pauseReading()
        self._backendFull = backend.writeBlocked
        now = self._seconds()
        exchange.sentTime = now
        transport = backend.transport
        self._writes.write(transport, exchange.headBytes)
        if exchange.requestComplete:
            body = exchange.body
            if body:
                # The whole body came with the head.
                exchange.bytesIn = len(body)
                self._writes.write(transport, body)
            # Or sent again after the keep-alive race: the body was empty.
            if exchange.chunked:
                self._writes.write(transport, lastChunk(exchange.head.trailers))
            self.timer.enter(_WAIT, exchange.route.pool.options.responseTimeout, now)
            return
        self._enterBody(now)
        try:
            self.parser.resumeParsing()
        except HTTPParseError as error:
            self._requestFailed(error)
            return
        self._updateReading()

    # -- the backend's reading of the request body --------------------------

    def backendWriteBlocked(self) -> None:
        self._backendFull = True
        if self.timer.phase == _BODY:
            self._enterBody(self._seconds())
        self._updateReading()

    def backendWriteUnblocked(self) -> None:
        self._backendFull = False
        if self.timer.phase == _BODY:
            self._enterBody(self._seconds())
        self._updateReading()

    # -- ending a request ---------------------------------------------------

    def _finish(self, exchange: Exchange) -> None:
        """
        The response was sent completely.
        """
        self.exchange = None
        backend = exchange.backend
        if backend is not None:
            exchange.backend = None
            if exchange.requestComplete:
                exchange.route.backends.release(backend, self)
            else:
                backend.close()
        if exchange.lease is not None:
            exchange.lease.release()
        self._backendFull = False
        now = self._log(exchange)
        self._acceptTime = now
        if not exchange.keepAlive or self._closed:
            self._closeClient()
            return
        parser = self.parser
        if parser.bufferedBytes:
            self._firstByte = now
            self.timer.enter(_HEAD, self.config.requestTimeout, now)
        else:
            # Once the listener stops, an idle client is not waited for long.
            keepalive = self.config.keepaliveTimeout
            self.timer.enter(_IDLE, min(keepalive, STOPPING_IDLE) if self.factory.stopping else keepalive, now)
        try:
            parser.resumeParsing()
        except HTTPParseError as error:
            self._requestFailed(error)
            return
        if self.exchange is None and self._readClosed:
            self._closeClient()
            return
        if self._readPaused or parser.paused:
            self._updateReading()

    def _abandon(self, exchange: Exchange) -> None:
        """
        Drop whatever C{exchange} holds on the backend side.
        """
        if self.exchange is exchange:
            self.exchange = None
        exchange.dropServerSide()
        self._backendFull = False

    def _sendError(self, exchange: Exchange, status: int | None, termination: str) -> None:
        """
        End C{exchange} with an error and close the client connection: the
        proxy's own response with C{status} when nothing of a response was
        sent yet (none when C{status} is None), else just the close, so a
        half-sent body is never taken as complete.
        """
        self._abandon(exchange)
        exchange.termination = termination
        transport = self.transport
        if exchange.response is None and exchange.status == -1:
            if status is not None:
                transport.write(exchange.errorResponse(status))
            self._log(exchange)
            self._closeClient()
            return
        self._log(exchange)
        self._closeClient(abort=exchange.closeDelimited)

    def _enterBody(self, now: float) -> None:
        """
        The request body is being forwarded: the client may stay silent
        C{timeouts.idle}, or, while the server does not read, the server
        C{timeouts.server}.
        """
        if self._backendFull:
            self.timer.enter(_BODY, self.exchange.route.pool.options.serverTimeout, now)
        else:
            self.timer.enter(_BODY, self.config.idleTimeout, now)

    def _enterResponse(self, exchange: Exchange, now: float) -> None:
        """
        The response is being forwarded: the server may stay silent
        C{timeouts.server}, or, while the client does not read, the client
        C{timeouts.idle} from when it stopped.
        """
        if self._writeBlocked:
            self.timer.enter(_RESPONSE, self.config.idleTimeout, self._writeBlockedSince)
        else:
            self.timer.enter(_RESPONSE, exchange.route.pool.options.serverTimeout, now)

    def phaseExpired(self, phase: str) -> None:
        if self._closed:
            return
        if self.http2 is not None:
            self.http2.phaseExpired(phase)
            return
        if phase == _IDLE:
            self._keepaliveExpired()
        elif phase == _HEAD:
            self._requestTimedOut()
        elif phase == _BODY:
            self._serverStalled() if self._backendFull else self._clientStalled()
        elif phase == _WAIT:
            self._responseTimedOut()
        elif phase == _RESPONSE:
            self._clientStalled() if self._writeBlocked else self._serverStalled()

    def _keepaliveExpired(self) -> None:
        self._closeClient()

    def listenerStopping(self) -> None:
        """
        Closed now when idle between requests; else after the response
        (C{Connection: close}, from the factory's C{stopping}). A client
        that connected but has not sent its first request yet (it may be on
        its way) gets L{STOPPING_IDLE} seconds to send it: closing it now
        would lose a request the client had every reason to send.
        """
        if self.http2 is not None:
            self.http2.listenerStopping()
        elif not self._closed and self.exchange is None and self._firstByte is None and self.relayLeg is None:
            if self.requests:
                self._closeClient()
            else:
                self.timer.enter(_IDLE, STOPPING_IDLE)

    def _requestTimedOut(self) -> None:
        exchange = Exchange(None, self._acceptTime, self._firstByte, None)
        self._sendError(exchange, 408, "cR")

    def _clientStalled(self) -> None:
        self._sendError(self.exchange, None, "cD")

    def _serverStalled(self) -> None:
        self._sendError(self.exchange, 504, "sD")

    def _responseTimedOut(self) -> None:
        self._sendError(self.exchange, 504, "sH")

