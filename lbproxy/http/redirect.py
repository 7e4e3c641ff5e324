"""
The HTTP listener that sends clients to https (C{redirect_https = PORT}).

Every request is answered by the proxy itself, with no pool behind it:
C{301 Moved Permanently} for GET and HEAD, C{308 Permanent Redirect} for
any other method (the client repeats it with the same method and body),
to C{https://HOST[:PORT]/path?query}. HOST is the request's Host (or the
authority of an absolute-form target) without its port, checked to be a
host name or an IP address; PORT is left out when it is 443. A request
without a usable Host gets C{400}.

Requests are parsed by the same L{RequestParser} as proxied ones (same
limits); a body is read and dropped, so the client sees the answer
rather than a reset. Keep-alive and pipelining work as for proxied
requests; the listener's request and keep-alive timeouts and maxconn
apply, and each request is written to its access log (termination
state C{LR}: answered locally with a redirect).
"""

from __future__ import annotations

import ipaddress
import re

from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.core.session import FrontConnection
from lbproxy.http.context import requestURI
from lbproxy.http.errors import HTTPParseError
from lbproxy.http.exchange import Exchange
from lbproxy.http.interfaces import IHTTPMessageReceiver
from lbproxy.http.listener import HTTPListenerFactory
from lbproxy.http.message import RequestHead
from lbproxy.http.parser import RequestParser
from lbproxy.http.serialize import errorResponse

_SAFE_METHODS = frozenset({b"GET", b"HEAD"})

_AUTHORITY = re.compile(
    rb"(?P<host>\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?\.?)"
    rb"(?::[0-9]{0,5})?"
)


def redirectHost(authority: bytes | None) -> bytes | None:
    """
    The host part of C{authority} (a Host value) fit for a Location URL,
    lowercased, or L{None} when there is none or it is malformed.
    """
    if not authority:
        return None
    match = _AUTHORITY.fullmatch(authority)
    if match is None:
        return None
    host = match.group("host").lower()
    if host.startswith(b"["):
        try:
            ipaddress.IPv6Address(host[1:-1].decode("ascii"))
        except ValueError:
            return None
    elif b".." in host:
        return None
    return host


def redirectTarget(head: RequestHead, port: int) -> bytes | None:
    """
    The https URL C{head} is sent to, or L{None} when it has no usable
    Host or target.
    """
    host = redirectHost(head.authority)
    if host is None:
        return None
    path = requestURI(head) if head.targetForm in ("origin", "absolute") else b"/"
    if path is None:
        return None
    if port != 443:
        host += b":%d" % (port,)
    return b"https://" + host + path


def redirectResponse(status: int, location: bytes, keepAlive: bool) -> bytes:
    """
    The complete redirect response, without a body.
    """
    reason = b"Moved Permanently" if status == 301 else b"Permanent Redirect"
    return b"HTTP/1.1 %d %s\r\nLocation: %s\r\nContent-Length: 0\r\n%s\r\n" % (
        status,
        reason,
        location,
        b"" if keepAlive else b"Connection: close\r\n",
    )


@implementer(IHTTPMessageReceiver)
class RedirectProtocol(FrontConnection):
    """
    One client connection of a redirecting listener (what every front does
    with a connection is L{FrontConnection}'s).
    """

    log = Logger()

    def __init__(self, factory: RedirectFactory, reactor) -> None:
        super().__init__(factory.listener, reactor)
        self.factory = factory
        self.parser: RequestParser | None = None
        self._exchange: Exchange | None = None
        self._acceptTime = 0.0
        self._firstByte: float | None = None
        self._closed = False

    def accepted(self) -> None:
        self._acceptTime = self.started
        self.parser = RequestParser(self, cache=self.factory.requestHeads, **self.factory.parserLimits)
        self._wait("head", self.config.requestTimeout)

    def refused(self) -> None:
        self._closed = True
        self.ended(error=True)
        self.transport.write(errorResponse(503))
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        if self._firstByte is None:
            self._firstByte = self._reactor.seconds()
            self._wait("head", self.config.requestTimeout)
        try:
            self.parser.dataReceived(data)
        except HTTPParseError as error:
            self._fail(error.status, "PR" if self._exchange is None else "PD")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.ended()
        if not self._closed and self._exchange is not None:
            self._exchange.termination = "CD"
            self._log(self._exchange)
        self._closed = True

    # -- IHTTPMessageReceiver -----------------------------------------------

    def headersComplete(self, head: RequestHead) -> None:
        now = self._reactor.seconds()
        exchange = self._exchange = Exchange(head, self._acceptTime, self._firstByte or now, now)
        self._firstByte = None
        location = redirectTarget(head, self.config.redirectHttps)
        if location is None or head.method == b"CONNECT":
            self._fail(400, "PR")
            return
        status = 301 if head.method in _SAFE_METHODS else 308
        # An upgrade request pauses the parser for a tunnel that never
        # comes: its connection ends with the answer.
        keepAlive = exchange.keepAlive = head.keepAlive and not head.upgrade and not self.factory.stopping
        data = redirectResponse(status, location, keepAlive)
        exchange.status = status
        exchange.bytesOut = len(data)
        exchange.termination = "LR"
        self.transport.write(data)
        # The body, if any, is read and dropped within the idle timeout.
        self._wait("body", self.config.idleTimeout)

    def bodyData(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is not None:
            exchange.bytesIn += len(data)

    def messageComplete(self) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        self._exchange = None
        now = self._log(exchange)
        self._acceptTime = now
        if not exchange.keepAlive:
            self._close()
            return
        self._wait("idle", self.config.keepaliveTimeout)

    # -- helpers ------------------------------------------------------------

    def _fail(self, status: int, termination: str) -> None:
        exchange = self._exchange
        if exchange is None:
            exchange = Exchange(None, self._acceptTime, self._firstByte, None)
        self._exchange = None
        if exchange.status == -1:
            self.transport.write(exchange.errorResponse(status))
        exchange.termination = termination
        self._log(exchange)
        self._close()

    def _close(self) -> None:
        self._closed = True
        self.timer.stop()
        if self.parser is not None:
            self.parser.pauseParsing()
        self.transport.loseConnection()

    def _log(self, exchange: Exchange) -> float:
        now = self._reactor.seconds()
        factory = self.factory
        counters = self.listener.counters
        if exchange.head is not None:
            counters.requests += 1
        counters.countResponse(exchange.status)
        counters.bytesIn += exchange.bytesIn
        counters.bytesOut += exchange.bytesOut
        # A redirect is the normal answer here; with log_requests =
        # "errors", only refused requests (400) are logged.
        if exchange.status >= 400 or exchange.termination not in ("LR", "--"):
            counters.errors += 1
        if factory.logAll or exchange.status >= 400:
            factory.accessLog.log(exchange.record(self.client, self.listener.name, now))
        return now

    def _wait(self, phase: str, timeout: float) -> None:
        self.timer.enter(phase, timeout)

    def phaseExpired(self, phase: str) -> None:
        if self._closed:
            return
        if self._firstByte is not None and self._exchange is None:
            # A head was started and not finished in time.
            self._fail(408, "cR")
        elif self._exchange is not None:
            # The body stopped coming.
            exchange, self._exchange = self._exchange, None
            exchange.termination = "cD"
            self._log(exchange)
            self._close()
        else:
            self._close()


class RedirectFactory(HTTPListenerFactory):
    """
    Serves one listener with C{redirect_https}.

    @ivar listener: the live L{lbproxy.core.model.Listener}.
    @ivar stopping: the listener is stopping: responses close their
        connections.
    """

    protocol = RedirectProtocol

    def __repr__(self) -> str:
        return f"<RedirectFactory {self.listener.name}>"

    def stopFactory(self) -> None:
        self.stopping = True
        self.accessLog.close()
