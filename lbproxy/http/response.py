"""
How the HTTP front forwards a server's answer to the client: the response
head rewritten for the client (hop-by-hop fields, persistence cookie,
framing) and its body streamed, and the websocket tunnel a C{101
Switching Protocols} opens (what a server's failure means for the request
is L{lbproxy.http.placement}'s).

L{ResponseForwarding} is the part of L{lbproxy.http.front.HTTPProxyProtocol}
that implements L{lbproxy.http.interfaces.IBackendUser}; it works on the
connection's current L{lbproxy.http.exchange.Exchange}.
"""

from __future__ import annotations

from lbproxy.core.relay import Relay, RelayResult
from lbproxy.http.exchange import Exchange
from lbproxy.http.message import BodyKind, ResponseHead
from lbproxy.http.rewrite import stripHopByHop
from lbproxy.http.serialize import encodeChunk, lastChunk

_TUNNEL_ENDS = {
    "client-closed": "--",
    "server-closed": "--",
    "client-reset": "CT",
    "server-reset": "ST",
    "idle-timeout": "cT",
}


class ResponseForwarding:
    """
    The response side of an HTTP/1.1 client connection: the methods of
    L{lbproxy.http.interfaces.IBackendUser} but C{backendFailed} (shared
    with HTTP/2 streams in L{lbproxy.http.placement}), and what they
    need. Mixed into
    L{lbproxy.http.front.HTTPProxyProtocol}, whose state it shares.
    """

    __slots__ = ()

    def responseHeadReceived(self, head: ResponseHead, body: bytes | None) -> None:
        exchange = self.exchange
        request = exchange.head
        if body is not None and head.fields is not None and exchange.stickiness is None:
            # The common case: a whole final response with a length or no
            # body, as the parser's wholeMessage delivers it (no interim
            # response, no tunnel, nothing to re-frame), its field lines
            # ready. It is written and the exchange ends at once, so no
            # response phase begins.
            exchange.response = head
            exchange.responseTime = self._seconds()
            exchange.status = head.status
            self._writeReady(exchange, head, head.bodyKind, self._keepAlive(exchange, head.bodyKind), body)
            self._finish(exchange)
            return
        headers = head.headers
        if head.status < 200 and head.interim:
            if request.version >= (1, 1):
                stripHopByHop(headers, head.connection)
                self._writeHead(exchange, head, BodyKind.NONE)
            return
        now = self._seconds()
        exchange.response = head
        exchange.responseTime = now
        exchange.status = head.status
        if head.tunnel:
            headers.removeHopByHop(keepWebSocket=True)
            self._writeHead(exchange, head, BodyKind.NONE)
            return
        self._enterResponse(exchange, now)
        stickiness = exchange.stickiness
        fields = head.fields
        if fields is None or stickiness is not None:
            stripHopByHop(headers, head.connection)
        kind = head.bodyKind
        if kind is BodyKind.CHUNKED or kind is BodyKind.UNTIL_CLOSE:
            if request.version >= (1, 1):
                kind = BodyKind.CHUNKED
                exchange.chunkedOut = True
            else:
                kind = BodyKind.UNTIL_CLOSE
                exchange.closeDelimited = True
        keepAlive = self._keepAlive(exchange, kind)
        if fields is not None and stickiness is None:
            # Its field lines are ready: the head, and a whole body that
            # came with it, in one write.
            self._writeReady(exchange, head, kind, keepAlive, body)
            if body is not None:
                self._finish(exchange)
            return
        if not keepAlive:
            headers.add(b"Connection", b"close")
        elif request.version == (1, 0):
            headers.add(b"Connection", b"keep-alive")
        if stickiness is not None:
            exchange.cookie = exchange.route.persistence.responseHeaders(
                headers, exchange.server, stickiness, secure=self.factory.secure
            )
        self._writeHead(exchange, head, kind)
        if body is not None and self.exchange is exchange and exchange.backend is not None:
            # The whole response came with its head (and writing the head
            # did not end the exchange).
            if body:
                self.responseBodyReceived(body)
            self.responseCompleted()

    def _keepAlive(self, exchange: Exchange, kind: BodyKind) -> bool:
        """
        Whether the client connection persists after the response of
        C{exchange}, sent with body framing C{kind}; kept on the exchange.
        """
        request = exchange.head
        keepAlive = exchange.keepAlive = (
            request.keepAlive
            and exchange.requestComplete
            and kind is not BodyKind.UNTIL_CLOSE
            and not self.factory.stopping
        )
        return keepAlive

    def _writeReady(
        self, exchange: Exchange, head: ResponseHead, kind: BodyKind, keepAlive: bool, body: bytes | None
    ) -> None:
        """
        Write the head of C{head}, whose field lines are ready
        (L{ResponseHead.fields}), framed as C{kind}, with C{body} when the
        whole body came with it.
        """
        fields = head.fields
        if not keepAlive:
            fields += b"Connection: close\r\n"
        elif exchange.head.version == (1, 0):
            fields += b"Connection: keep-alive\r\n"
        data = self.factory.writer.checkedResponseHead(
            head.status, head.reason, fields, kind, head.contentLength
        )
        if body:
            data += body
        exchange.bytesOut += len(data)
        self._writes.write(self.transport, data)

    def _writeHead(self, exchange: Exchange, head: ResponseHead, kind: BodyKind) -> None:
        try:
            data = self.factory.writer.responseHead(
                head.status, head.reason, head.headers, kind, head.contentLength
            )
        except ValueError:
            exchange.response = None
            exchange.status = -1
            self._backendBroken(exchange, "PH")
            return
        exchange.bytesOut += len(data)
        self._writes.write(self.transport, data)

    def responseBodyReceived(self, data: bytes) -> None:
        exchange = self.exchange
        if not self._writeBlocked:
            self.timer.extend(self._seconds() + exchange.route.pool.options.serverTimeout)
        if exchange.chunkedOut:
            pieces = encodeChunk(data)
            exchange.bytesOut += len(data) + len(pieces[0]) + 2
            self._writes.writeSequence(self.transport, pieces)
        else:
            exchange.bytesOut += len(data)
            self._writes.writeNow(self.transport, data)

    def responseCompleted(self) -> None:
        exchange = self.exchange
        response = exchange.response
        if response is None:
            # The end of an interim response.
            return
        if response.tunnel:
            self._openTunnel(exchange)
            return
        if exchange.chunkedOut:
            try:
                end = lastChunk(response.trailers)
            except ValueError:
                end = lastChunk()
            exchange.bytesOut += len(end)
            self._writes.write(self.transport, end)
        self._finish(exchange)

    # -- tunnels ------------------------------------------------------------

    def _openTunnel(self, exchange: Exchange) -> None:
        """
        The backend switched protocols: relay both connections as they are.
        """
        backend = exchange.backend
        relay = exchange.relay = Relay(
            self._reactor, idleTimeout=self.config.tunnelTimeout or None
        )
        clientRest = self.parser.detachTunnel()
        self._producing = False
        self.transport.unregisterProducer()
        backendRest = backend.handOver(relay.server)
        self._readPaused = False
        self.relayTo(relay.client)
        relay.server.makeConnection(backend.transport)
        if clientRest:
            relay.client.dataReceived(clientRest)
        if backendRest:
            relay.server.dataReceived(backendRest)
        if self._readClosed:
            relay.client.readConnectionLost()
        relay.whenFinished(self._tunnelFinished)
        relay.start()

    def _tunnelFinished(self, result: RelayResult) -> None:
        exchange = self.exchange
        self.exchange = None
        self._closed = True
        self.ended()
        exchange.backend = None
        if exchange.lease is not None:
            exchange.lease.release()
        exchange.bytesIn += result.bytesIn
        exchange.bytesOut += result.bytesOut
        exchange.termination = _TUNNEL_ENDS.get(result.end, "PT")
        self._log(exchange)
