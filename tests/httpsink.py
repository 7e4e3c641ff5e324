"""
A small HTTP/1.1 backend for the real-peer tests, run as a process of its
own::

    python tests/httpsink.py --port PORT [--name NAME] [--idle-close SECONDS]

It never holds a body in memory, so a test can push or pull gigabytes
through a proxy in front of it and measure the proxy alone:

  - C{GET /bytes/N}: N bytes of L{pattern}, streamed with backpressure
    (Content-Length N);
  - C{POST} or C{PUT} to any path: the body is counted and digested, the
    answer is a JSON report (C{bytes}, C{sha256}, C{chunked}: whether the
    body came chunked); to C{/pause/MS}, the server also stops reading for
    MS milliseconds once the head arrived, as a slow server would;
  - C{GET /delay/MS}: the JSON report, MS milliseconds after the request
    (a slow server);
  - C{GET} with C{Upgrade: websocket}: C{101 Switching Protocols}, then
    every byte received is echoed;
  - any other request: a JSON report of what the server saw.

Every JSON report also holds the server's C{name} and C{port}, the
C{X-Forwarded-For} and C{X-Forwarded-Proto} values received, C{connection}
(a number per accepted connection) and C{requests} (requests on that
connection so far), so a test can tell whether the proxy reused a backend
connection.

With C{--idle-close S} a keep-alive connection left idle for S seconds
after a response is closed by the server: the keep-alive race a proxy's
backend connection pool has to survive. On loopback the server's close
reaches the proxy long before the proxy could choose that connection for
a request, so the race itself is rare; C{--race-window W} makes it
certain: a request arriving on a connection idle for more than S - W
seconds is not answered, the connection is closed instead, as if the
server's close had crossed the request on the wire. JSON reports count
these requests in C{crossed}.

The request parser is httptools, not lbproxy's own, so the proxy is not
checked against itself.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json

import httptools
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

#: The repeating block of a C{/bytes/N} body.
BLOCK = bytes(range(256)) * 1024


def pattern(size: int):
    """
    The body of C{GET /bytes/SIZE}, as successive pieces.
    """
    while size > 0:
        piece = BLOCK if size >= len(BLOCK) else BLOCK[:size]
        size -= len(piece)
        yield piece


def patternDigest(size: int) -> str:
    """
    The SHA-256 hex digest of the body of C{GET /bytes/SIZE}.
    """
    digest = hashlib.sha256()
    for piece in pattern(size):
        digest.update(piece)
    return digest.hexdigest()


@implementer(IPushProducer)
class SinkProtocol(Protocol):
    """
    One client connection of the sink (see the module docstring).
    """

    def __init__(self, factory: SinkFactory, number: int) -> None:
        self.factory = factory
        self.number = number
        self.requests = 0
        self.parser = httptools.HttpRequestParser(self)
        self.tunnel = False
        self.idleTimer = None
        self.streaming = None
        self.paused = False
        self.idleSince = None

    # -- transport ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.cancelIdle()
        idleSince, self.idleSince = self.idleSince, None
        factory = self.factory
        if idleSince is not None and factory.raceWindow:
            if factory.reactor.seconds() - idleSince >= factory.idleClose - factory.raceWindow:
                factory.crossed += 1
                self.transport.loseConnection()
                return
        if self.tunnel:
            self.transport.write(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0]
            self.startTunnel(data[offset:])
        except httptools.HttpParserError:
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self.cancelIdle()
        self.streaming = None

    # -- httptools callbacks ------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.bodyBytes = 0
        self.digest = hashlib.sha256()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in self.headers:
            self.headers[name] += b", " + value
        else:
            self.headers[name] = value

    def on_headers_complete(self) -> None:
        if self.url.startswith(b"/pause/") and self.parser.get_method() in (b"POST", b"PUT"):
            transport = self.transport
            transport.pauseProducing()
            delay = int(self.url[len(b"/pause/"):]) / 1000
            self.factory.reactor.callLater(delay, transport.resumeProducing)

    def on_body(self, body: bytes) -> None:
        self.bodyBytes += len(body)
        self.digest.update(body)

    def on_message_complete(self) -> None:
        self.requests += 1
        method = self.parser.get_method()
        if self.parser.should_upgrade():
            return
        if method in (b"POST", b"PUT"):
            self.answerJSON(
                {
                    "bytes": self.bodyBytes,
                    "sha256": self.digest.hexdigest(),
                    "chunked": b"chunked" in self.headers.get(b"transfer-encoding", b"").lower(),
                }
            )
        elif self.url.startswith(b"/bytes/"):
            self.answerBytes(int(self.url[len(b"/bytes/"):]))
        elif self.url.startswith(b"/delay/"):
            delay = int(self.url[len(b"/delay/"):])
            self.factory.reactor.callLater(delay / 1000, self.answerJSON, {"delayed": delay})
        else:
            self.answerJSON({"method": method.decode("ascii"), "path": self.url.decode("latin-1")})

    # -- responses ----------------------------------------------------------

    def report(self) -> dict:
        headers = self.headers
        return {
            "name": self.factory.name,
            "port": self.transport.getHost().port,
            "xff": headers.get(b"x-forwarded-for", b"").decode("latin-1"),
            "proto": headers.get(b"x-forwarded-proto", b"").decode("latin-1"),
            "connection": self.number,
            "requests": self.requests,
            "crossed": self.factory.crossed,
        }

    def answerJSON(self, extra: dict) -> None:
        body = json.dumps({**self.report(), **extra}).encode("utf-8") + b"\n"
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n%s\r\n%s"
            % (len(body), self.connectionField(), body)
        )
        self.responseDone()

    def connectionField(self) -> bytes:
        return b"" if self.parser.should_keep_alive() else b"Connection: close\r\n"

    def answerBytes(self, size: int) -> None:
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (size, self.connectionField())
        )
        self.streaming = pattern(size)
        self.keepAlive = self.parser.should_keep_alive()
        self.transport.pauseProducing()
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def responseDone(self) -> None:
        if not self.parser.should_keep_alive():
            self.transport.loseConnection()
        elif self.factory.idleClose:
            self.idleSince = self.factory.reactor.seconds()
            self.idleTimer = self.factory.reactor.callLater(
                self.factory.idleClose, self.transport.loseConnection
            )

    def cancelIdle(self) -> None:
        if self.idleTimer is not None:
            if self.idleTimer.active():
                self.idleTimer.cancel()
            self.idleTimer = None

    # -- IPushProducer: the streamed body -----------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        pieces = self.streaming
        while pieces is not None and not self.paused:
            piece = next(pieces, None)
            if piece is None:
                self.streaming = None
                self.transport.unregisterProducer()
                self.transport.resumeProducing()
                self.responseDone()
                return
            self.transport.write(piece)

    def stopProducing(self) -> None:
        self.streaming = None

    # -- tunnel -------------------------------------------------------------

    def startTunnel(self, rest: bytes) -> None:
        self.tunnel = True
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        if rest:
            self.transport.write(rest)


class SinkFactory(Factory):
    noisy = False

    def __init__(
        self, name: str, idleClose: float | None, raceWindow: float | None, reactor
    ) -> None:
        self.reactor = reactor
        self.name = name
        self.idleClose = idleClose
        self.raceWindow = raceWindow
        self.crossed = 0
        self.numbers = itertools.count(1)

    def buildProtocol(self, addr) -> SinkProtocol:
        return SinkProtocol(self, next(self.numbers))


def main() -> None:
    from twisted.internet import reactor

    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    arguments.add_argument("--port", type=int, required=True)
    arguments.add_argument("--name", default="sink")
    arguments.add_argument("--idle-close", type=float, default=None)
    arguments.add_argument("--race-window", type=float, default=None)
    options = arguments.parse_args()
    if options.race_window and not options.idle_close:
        arguments.error("--race-window needs --idle-close")
    reactor.listenTCP(
        options.port, SinkFactory(options.name, options.idle_close, options.race_window, reactor), interface="127.0.0.1"
    )
    reactor.run()


if __name__ == "__main__":
    main()
