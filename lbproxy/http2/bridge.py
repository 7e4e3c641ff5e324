"""
An HTTP/1.1 client's request carried to a pool with C{protocol = "h2"}: as
one stream of a shared HTTP/2 connection to the server
(L{lbproxy.http2.upstream}).

The HTTP/1.1 front (L{lbproxy.http.front.HTTPProxyProtocol}) places the
request as any other; L{attachHTTP11} then opens its stream, and an
L{HTTP11StreamBridge} turns what the server sends into the calls an
HTTP/1.1 backend connection would make on the front
(L{lbproxy.http.interfaces.IBackendUser}): the response head becomes an
HTTP/1.1 head (chunked when it has no content-length, or close-delimited
to an HTTP/1.0 client), DATA its body, trailers chunked trailers (dropped
when the response is not chunked). The request's body and trailers go out
as DATA and a trailing HEADERS frame; the front stops reading its client
while the server's windows hold the body back.

A server's reset or the connection lost ends the request as a server
failure of an HTTP/1.1 connection would: 502 before the response head,
the client connection closed after. WebSocket upgrades (which HTTP/2 would
carry by extended CONNECT) are answered 502.
"""

from __future__ import annotations

from zope.interface import implementer

from lbproxy.http.exchange import Exchange
from lbproxy.http.message import BodyKind, Headers, ResponseHead
from lbproxy.http2.heads import serverResponseHead, trailerFields, upstreamRequestFields
from lbproxy.interfaces import IUpstreamUser


@implementer(IUpstreamUser)
class HTTP11StreamBridge:
    """
    The user of one L{lbproxy.http2.upstream.UpstreamStream} carrying an
    HTTP/1.1 client's request (see the module docstring).

    @ivar front: the client's L{lbproxy.http.front.HTTPProxyProtocol}.
    @ivar exchange: the request's L{Exchange}.
    @ivar response: the response head, once received.
    """

    def __init__(self, front, exchange: Exchange) -> None:
        self.front = front
        self.exchange = exchange
        self.response: ResponseHead | None = None

    def _current(self) -> bool:
        return self.front.exchange is self.exchange

    def upstreamInformational(self, fields) -> None:
        if not self._current():
            return
        head = self._head(fields, BodyKind.NONE)
        if head.interim:
            self.front.responseHeadReceived(head, None)

    def upstreamHeaders(self, fields, ended: bool) -> None:
        if not self._current():
            return
        request = self.exchange.head
        head = self._head(fields, None)
        if ended or request.method == b"HEAD" or head.status in (204, 304):
            kind = BodyKind.NONE
        elif head.contentLength is not None:
            kind = BodyKind.LENGTH
        else:
            kind = BodyKind.CHUNKED
        head.bodyKind = kind
        self.response = head
        self.front.responseHeadReceived(head, b"" if ended else None)

    def _head(self, fields, kind: BodyKind | None) -> ResponseHead:
        return serverResponseHead(fields, kind or BodyKind.NONE, (1, 1))

    def upstreamData(self, data: bytes, flowLength: int) -> None:
        exchange = self.exchange
        if not self._current() or exchange.response is None:
            return
        backend = exchange.backend
        if data:
            self.front.responseBodyReceived(data)
        if backend is not None:
            backend.acknowledge(flowLength)

    def upstreamTrailers(self, fields) -> None:
        if self.response is not None:
            self.response.trailers = Headers([(n, v) for n, v in fields if n[:1] != b":"])

    def upstreamEnded(self) -> None:
        # A response ended with its head was finished by the front then
        # (and the front is on to its next request, or none).
        if not self._current() or self.exchange.response is None:
            return
        self.front.responseCompleted()

    def upstreamReset(self, code) -> None:
        self._failed()

    def upstreamRefused(self) -> None:
        exchange = self.exchange
        if not self._current():
            return
        exchange.backend = None
        if exchange.response is None and not exchange.bytesIn and not exchange.body:
            if exchange.resends < 1 + exchange.route.pool.options.retries:
                self.front.factory.staleRetries += 1
                self.front._resend(exchange, None)
                return
        self._failed()

    def upstreamLost(self) -> None:
        self._failed()

    def _failed(self) -> None:
        exchange = self.exchange
        if not self._current():
            return
        exchange.backend = None
        self.front._backendBroken(exchange, "SH" if exchange.response is None else "SD")

    def backendWriteBlocked(self) -> None:
        if self._current():
            self.front.backendWriteBlocked()

    def backendWriteUnblocked(self) -> None:
        if self._current():
            self.front.backendWriteUnblocked()


def attachHTTP11(front, exchange: Exchange, connection) -> bool:
    """
    Open the stream of an HTTP/1.1 request on C{connection} and send what
    there is of it (head, and its body when it came whole). Returns
    whether the front should let the rest of the body flow: L{False} when
    the request is complete, or ended otherwise.
    """
    backends = exchange.route.backends
    if connection.refusal is not None:
        if not connection.lost:
            connection.transport.abortConnection()
        front._refusedAfterHandshake(exchange, connection.refusal)
        return False
    backends.register(connection)
    head = exchange.head
    if exchange.upgrade:
        front.log.info(
            "listener {listener}: a WebSocket upgrade from {client} was routed to pool {pool}, which "
            'speaks HTTP/2 to its servers (protocol = "h2"): 502',
            listener=front.listener.name,
            client=front.client,
            pool=exchange.route.pool.name,
        )
        front._sendError(exchange, 502, "PR")
        return False
    scheme = b"https" if backends.connector.tls is not None else b"http"
    fields = upstreamRequestFields(exchange.headBytes, scheme, head.headers.get(b"te"))
    body = exchange.body
    trailers = trailerFields(head.trailers) if exchange.requestComplete else []
    endNow = exchange.requestComplete and not body and not trailers
    bridge = HTTP11StreamBridge(front, exchange)
    stream = connection.openStream(bridge, fields, endNow)
    if stream is None:
        if exchange.resends < 1 + exchange.route.pool.options.retries:
            front._resend(exchange, None)
        else:
            front._sendError(exchange, 502, "SC")
        return False
    exchange.backend = stream
    exchange.sentTime = front._seconds()
    if front._writeBlocked:
        stream.pauseReading()
    if exchange.requestComplete:
        if body:
            exchange.bytesIn = len(body)
            stream.send(body)
        if not endNow:
            stream.end(trailers)
        front._backendFull = stream.writeBlocked
        return False
    front._backendFull = stream.writeBlocked
    return True


__all__ = ["HTTP11StreamBridge", "attachHTTP11"]
