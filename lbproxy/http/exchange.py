"""
One request's trip through the HTTP front: the state kept while it is
served, and the access record it ends as.

Termination states (the access log's first two characters, HAProxy's
meaning) the front sets:

  ====  ==========================================================
  --    normal end (also a tunnel closed cleanly by either side)
  CR    the client left, or sent nothing more, before a full head
  CC    the client left while the proxy was connecting
  CD    the client left while a body was transferred
  CH    the client left while the response head was awaited
  CT    the client reset a tunnel
  cR    no complete request head within the request timeout (408)
  cD    the client stalled a body transfer past the idle timeout
  cT    a tunnel was idle past the tunnel timeout
  PR    the proxy refused the request head (400, 413, 414, 431, 501)
  PD    the proxy refused a body (bad chunk, over the body limit)
  PH    the server's response head was invalid (502)
  SC    no server could take it (503) or every connect failed (502)
  sC    the last connect attempt timed out (502)
  SH    the server closed or reset before a complete response head (502)
  SD    the server closed or reset in the middle of the response body
  ST    the server reset a tunnel
  sH    no response head within the response timeout (504)
  sD    the server stalled a body transfer past the server timeout
  RR    the listener was at its connection limit (503)
  ====  ==========================================================
"""

from __future__ import annotations

from lbproxy.http.accesslog import AccessRecord
from lbproxy.http.message import BodyKind, RequestHead, ResponseHead
from lbproxy.http.serialize import errorResponse

# Builds an AccessRecord from a tuple of all its fields, without the
# keyword handling of its constructor.
_newTuple = tuple.__new__


class Exchange:
    """
    The state of one request (and its response) on a client connection.

    @ivar head: the request head, L{None} when none was accepted.
    @ivar route: the front's per-pool record the request was routed to.
    @ivar stickiness: what cookie persistence said, or L{None}.
    @ivar context: the selection context.
    @ivar server: the server that serves it.
    @ivar lease: the request counted on C{server}.
    @ivar backend: the backend connection carrying it.
    @ivar connecting: the connector's pending L{Deferred}.
    @ivar reused: C{backend} was an idle connection.
    @ivar resends: times the request was sent again after its connection
        closed before any of the response.
    @ivar queueTime: seconds it waited in the pool's queue for a server
        to free a slot.
    @ivar attempts: connection attempts made for it, retries included;
        they are bounded by the pool's C{1 + retries} together, whether a
        connect failed or a fresh connection died under the request.
    @ivar headBytes: the head as sent to the backend.
    @ivar body: the whole request body, when the request came whole in
        one read (see L{lbproxy.http.parser.RequestParser.wholeMessage}),
        sent after the head; else C{b""} and the body streams.
    @ivar chunked: the request body is sent chunked.
    @ivar upgrade: a websocket upgrade was passed on.
    @ivar requestComplete: the whole request was received and forwarded.
    @ivar response: the final response head, once received.
    @ivar chunkedOut: the response body is chunked toward the client.
    @ivar closeDelimited: the response body ends when the client connection
        closes (an HTTP/1.0 client and no known length).
    @ivar keepAlive: the client connection persists after the response.
    @ivar bytesIn: request body bytes received from the client.
    @ivar bytesOut: bytes sent to the client.
    """

    __slots__ = (
        "head",
        "route",
        "stickiness",
        "context",
        "server",
        "lease",
        "backend",
        "connecting",
        "reused",
        "resends",
        "attempts",
        "queueTime",
        "headBytes",
        "body",
        "chunked",
        "upgrade",
        "xff",
        "requestComplete",
        "response",
        "chunkedOut",
        "closeDelimited",
        "keepAlive",
        "status",
        "termination",
        "cookie",
        "bytesIn",
        "bytesOut",
        "acceptTime",
        "firstByte",
        "headTime",
        "connectTime",
        "sentTime",
        "responseTime",
        "relay",
    )

    def __init__(
        self,
        head: RequestHead | None,
        acceptTime: float,
        firstByte: float | None,
        headTime: float | None,
    ) -> None:
        self.head = head
        self.route = None
        self.stickiness = None
        self.context = None
        self.server = None
        self.lease = None
        self.backend = None
        self.connecting = None
        self.reused = False
        self.resends = 0
        self.attempts = 0
        self.queueTime = 0.0
        self.headBytes = b""
        self.body = b""
        self.chunked = head is not None and head.bodyKind is BodyKind.CHUNKED
        self.upgrade = False
        self.xff = None
        self.requestComplete = False
        self.response: ResponseHead | None = None
        self.chunkedOut = False
        self.closeDelimited = False
        self.keepAlive = False
        self.status = -1
        self.termination = "--"
        self.cookie = None
        self.bytesIn = 0
        self.bytesOut = 0
        self.acceptTime = acceptTime
        self.firstByte = firstByte
        self.headTime = headTime
        #: Seconds spent connecting (0 for a reused connection), or None.
        self.connectTime: float | None = None
        self.sentTime: float | None = None
        self.responseTime: float | None = None
        self.relay = None

    def __repr__(self) -> str:
        method = self.head.method if self.head is not None else b"-"
        return f"<Exchange {method.decode('ascii', 'replace')} status={self.status}>"

    def dropServerSide(self) -> None:
        """
        Drop whatever the exchange holds on the server side: stop its
        connection attempt, abort its server connection, and stop counting
        it on its server.
        """
        connecting = self.connecting
        if connecting is not None:
            self.connecting = None
            connecting.cancel()
        backend = self.backend
        if backend is not None:
            self.backend = None
            backend.abort()
        lease = self.lease
        if lease is not None:
            self.lease = None
            lease.release()

    def errorResponse(self, status: int) -> bytes:
        """
        The proxy's own response with C{status} to this exchange (no body
        to a HEAD request), counted as its status and bytes sent.
        """
        head = self.head
        data = errorResponse(status, head is None or head.method != b"HEAD")
        self.status = status
        self.bytesOut += len(data)
        return data

    def record(self, client, listener: str, end: float) -> AccessRecord:
        """
        The access record of the exchange, ended at C{end}.

        @param client: the client's address.
        """
        head = self.head
        route = self.route
        server = self.server
        if self.stickiness is not None:
            cookie = self.cookie or self.stickiness.outcome + "-"
        else:
            cookie = "--"
        acceptTime = self.acceptTime
        firstByte = self.firstByte
        headTime = self.headTime
        sentTime = self.sentTime
        responseTime = self.responseTime
        connectTime = self.connectTime
        # Each timer in milliseconds, -1 for a phase not reached, never
        # below 0 otherwise; written out rather than through a helper (or
        # max()), as this runs once per request.
        tr = tc = trResp = ta = -1
        if firstByte is not None and headTime is not None:
            tr = int((headTime - firstByte) * 1000)
            if tr < 0:
                tr = 0
        if connectTime is not None:
            tc = int(connectTime * 1000)
        if sentTime is not None and responseTime is not None:
            trResp = int((responseTime - sentTime) * 1000)
            if trResp < 0:
                trResp = 0
        if acceptTime is not None and end is not None:
            ta = int((end - acceptTime) * 1000)
            if ta < 0:
                ta = 0
        try:
            where = (client.host, client.port)
        except AttributeError:
            # An address without host and port (a UNIX socket's).
            where = (getattr(client, "host", "-"), getattr(client, "port", 0))
        # The fields of AccessRecord in order, as the tuple it is.
        return _newTuple(
            AccessRecord,
            (
                where,
                listener,
                route.pool.name if route is not None else "-",
                server.name if server is not None else "<NOSRV>",
                acceptTime,
                tr,
                int(self.queueTime * 1000) if route is not None else -1,
                tc,
                trResp,
                ta,
                self.status,
                self.bytesOut,
                self.bytesIn,
                self.termination,
                cookie,
                self.xff,
                head.method if head is not None else b"",
                (head.rawTarget or head.target) if head is not None else b"",
                head.version if head is not None else None,
            ),
        )
