"""
What may come before and at the start of a request: empty lines (bounded
by the request-line limit) and a method (anything else is refused at its
first byte). In memory against the parser and the front, and on loopback
with a raw socket streaming CRLFs.
"""

from __future__ import annotations

import random
import select
import socket

import pytest
from twisted.internet import reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from lbproxy.http.config import HTTPLimits
from lbproxy.http.errors import HTTPParseError
from lbproxy.http.factory import HTTPProxyFactory
from lbproxy.http.headcache import HeadCache
from lbproxy.http.parser import TLS_ON_PLAINTEXT

from support import freePort
from test_clienthello import pyOpenSSLHello, pythonHello
from test_http_front import GET, OK, ProxyTestCase, makeListener, makePool
from test_http_parser import HOST, feed, request, requestParser

LIMIT = 256
CRLFS = b"\r\n" * (64 * 1024)


def refusal(pieces, **limits) -> tuple[HTTPParseError, int]:
    """
    Feed C{pieces} to a request parser until it refuses them; return the
    error and how many bytes it was given.
    """
    parser, _ = requestParser(**limits)
    given = 0
    for piece in pieces:
        given += len(piece)
        try:
            parser.dataReceived(piece)
        except HTTPParseError as error:
            return error, given
    raise AssertionError("the parser took every piece")


# -- empty lines before a request --------------------------------------------


def test_emptyLinesCountAgainstTheRequestLine() -> None:
    """
    Empty lines and the request line after them share the request-line
    limit: what fits alone does not fit after too many empty lines.
    """
    line = b"GET /" + b"a" * 40 + b" HTTP/1.1"
    raw = request(line, HOST)
    room = LIMIT - len(line)
    parser, recorder = requestParser(maxRequestLine=LIMIT)
    parser.dataReceived(b"\r\n" * (room // 2) + raw)
    assert [kind for kind, _ in recorder.events] == ["head", "complete"]
    error, _ = refusal([b"\r\n" * (room // 2 + 1) + raw], maxRequestLine=LIMIT)
    assert error.status == 414


@pytest.mark.parametrize("size", [1, 2, 3, 4096, len(CRLFS)])
def test_streamedEmptyLinesRefused(size: int) -> None:
    """
    A client streaming CRLFs, byte by byte, in odd pieces (CR and LF in
    different reads) or in big chunks, is refused with 400 once their bytes
    pass the request-line limit, not read forever.
    """
    pieces = [CRLFS[i : i + size] for i in range(0, len(CRLFS), size)]
    error, given = refusal(pieces, maxRequestLine=LIMIT)
    assert error.status == 400
    assert error.reason == "too many empty lines before the start line"
    assert given <= max(LIMIT + 2, size)


def test_emptyLinesAfterAResponseCount() -> None:
    """
    On a keep-alive connection, the empty lines between a complete request
    and the next are bounded the same way.
    """
    parser, recorder = requestParser(maxRequestLine=LIMIT, pauseAfterMessage=True)
    parser.dataReceived(request(b"GET / HTTP/1.1", HOST))
    assert [kind for kind, _ in recorder.events] == ["head", "complete"]
    parser.resumeParsing()
    given = 0
    with pytest.raises(HTTPParseError) as caught:
        for _ in range(LIMIT):
            given += 2
            parser.dataReceived(b"\r\n")
    assert caught.value.status == 400
    assert given == LIMIT + 2


def test_emptyLinesForgottenWithTheRequest() -> None:
    """
    The count starts again with each request: empty lines before one
    request do not shorten the next one's request line.
    """
    parser, recorder = requestParser(maxRequestLine=LIMIT, pauseAfterMessage=True)
    line = b"GET /" + b"a" * (LIMIT - 40) + b" HTTP/1.1"
    for _ in range(3):
        parser.dataReceived(b"\r\n" * 8 + request(line, HOST))
        parser.resumeParsing()
    assert [kind for kind, _ in recorder.events] == ["head", "complete"] * 3


def test_cachedHeadAfterEmptyLines() -> None:
    """
    A head accepted before, and kept in the listener's cache, is still held
    to the request-line limit left by the empty lines read before it: one
    that no longer fits is refused with 414, as the first time it would
    have been.
    """
    cache = HeadCache()
    line = b"GET /" + b"a" * (LIMIT - 120) + b" HTTP/1.1"
    for _ in range(2):
        first, recorder = requestParser(maxRequestLine=LIMIT, cache=cache)
        first.dataReceived(request(line, b"Host: a"))
        assert [kind for kind, _ in recorder.events] == ["head", "complete"]
    assert cache.find(request(line, b"Host: a")) is not None
    parser, _ = requestParser(maxRequestLine=LIMIT, cache=cache)
    parser.dataReceived(b"\r\n" * 100)
    with pytest.raises(HTTPParseError) as caught:
        parser.dataReceived(request(line, b"Host: a"))
    assert caught.value.status == 414


# -- the first bytes of a request --------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_randomBinaryIs400(seed: int) -> None:
    """
    Random binary data is a bad request however it arrives: at once in a
    64 KiB read (which a too-long request line check would otherwise see
    first) and byte by byte, refused on its first byte that cannot be part
    of a method.
    """
    rng = random.Random(seed)
    data = bytes(rng.getrandbits(8) for _ in range(65536))
    error, _ = refusal([data])
    assert error.status == 400
    error, given = refusal([data[i : i + 1] for i in range(len(data))])
    assert error.status == 400
    methodBytes = len(data) - len(data.lstrip(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))
    assert given <= min(methodBytes, 64) + 1


@pytest.mark.parametrize(
    "start",
    [
        b"\x00", b"\x7f", b" GET", b"\tGET", b"(GET", b"GET\x00", b"GET\r\n", b"G\xe9T /", b"\xef\xbb\xbfGET",
        # Only CRLF ends an empty line: a bare LF, or CR CR, starts no method.
        b"\n", b"\r\n\n", b"\r\r", b"\r\n\r\r\n",
    ],
)
def test_nonMethodStartIs400AtOnce(start: bytes) -> None:
    parser, _ = requestParser()
    with pytest.raises(HTTPParseError) as caught:
        parser.dataReceived(start)
    assert (caught.value.status, caught.value.reason) == (400, "invalid method")


def test_longMethodIs400() -> None:
    error, given = refusal([b"A"] * 100)
    assert (error.status, given) == (400, 65)
    parser, _ = requestParser()
    parser.dataReceived(b"A" * 64)


@pytest.mark.parametrize("hello", [pyOpenSSLHello, pythonHello], ids=["pyopenssl", "python"])
def test_clientHelloIs400(hello) -> None:
    """
    A TLS ClientHello sent to a plaintext port is refused on its first
    byte, with a reason saying what it is.
    """
    data = hello()
    assert data[:2] == b"\x16\x03"
    error, given = refusal([data])
    assert (error.status, error.reason) == (400, TLS_ON_PLAINTEXT)
    error, given = refusal([data[i : i + 1] for i in range(len(data))])
    assert (error.status, error.reason, given) == (400, TLS_ON_PLAINTEXT, 1)


def test_knownMethodsStillAccepted() -> None:
    for method in (b"GET", b"M-SEARCH", b"PROPFIND"):
        parser, recorder = requestParser()
        feed(parser, [bytes([b]) for b in request(method + b" / HTTP/1.1", HOST)])
        assert recorder.events[0][1].method == method


# -- through the front ---------------------------------------------------------


class FrontTests(ProxyTestCase):
    def listener(self):
        return makeListener(limits=HTTPLimits(requestLine=LIMIT))

    def assertRefusedOnce(self, client, status: int = 400) -> None:
        self.assertTrue(client.received().startswith(b"HTTP/1.1 %d " % status), client.received())
        self.assertTrue(client.closing)
        client.close()
        self.assertEqual(len(self.log.records), 1)
        self.assertLastRecord(status=status, termination="PR", method=b"", pool="-")
        self.assertEqual(len(self.reactor.tcpClients), 0)

    def test_crlfFlood(self):
        """
        A client streaming CRLFs gets one 400 and the close after the
        request-line limit, one access log line; nothing more is read.
        """
        self.makeFactory(self.listener())
        client = self.connectClient()
        sent = 0
        while not client.closing and sent < len(CRLFS) * 16:
            client.send(CRLFS[:4096])
            sent += 4096
        self.assertLessEqual(sent, LIMIT + 4096)
        self.assertRefusedOnce(client)

    def test_crlfFloodByteByByte(self):
        self.makeFactory(self.listener())
        client = self.connectClient()
        sent = 0
        while not client.closing and sent < 4 * LIMIT:
            client.send(b"\r\n"[sent % 2 : sent % 2 + 1])
            sent += 1
        self.assertEqual(sent, LIMIT + 2)
        self.assertRefusedOnce(client)

    def test_crlfFloodAfterAResponse(self):
        """
        Empty lines streamed on a keep-alive connection after a complete
        response: the first request is served and logged, the flood refused.
        """
        self.makeFactory(self.listener())
        client = self.connectClient()
        self.exchange(client, GET, OK)
        client.clear()
        client.send(CRLFS)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 400 "), client.received())
        self.assertTrue(client.closing)
        self.assertEqual([r.status for r in self.log.records], [200, 400])

    def test_randomBinary(self):
        self.makeFactory()
        client = self.connectClient()
        rng = random.Random(9)
        client.send(bytes(rng.getrandbits(8) for _ in range(65536)))
        self.assertRefusedOnce(client)

    def test_clientHelloLoggedOnce(self):
        """
        A TLS ClientHello on the plaintext listener: 400 and the close, one
        access log line, and one daemon log line at info level that says
        why.
        """
        self.makeFactory()
        client = self.connectClient()
        with capturedLogs() as events:
            client.send(pythonHello())
        self.assertRefusedOnce(client)
        mine = [e for e in events if e.get("log_namespace", "").startswith("lbproxy.http.front")]
        self.assertEqual(len(mine), 1)
        self.assertEqual(mine[0]["log_level"], LogLevel.info)
        self.assertIn(TLS_ON_PLAINTEXT, formatEvent(mine[0]))
        self.assertIn("listener web", formatEvent(mine[0]))


# -- on loopback -----------------------------------------------------------------


def streamCRLFs(port: int, cap: int) -> tuple[int, bytes | None]:
    """
    Stream CRLFs to C{port} from a raw socket until the server answers or
    closes, or C{cap} bytes were sent; return the bytes sent and the
    answer (L{None} when the cap was reached first).
    """
    chunk = b"\r\n" * 2048
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        while sent < cap:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        else:
            return sent, None
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
    return sent, answer


@pytest.mark.integration
class LoopbackTests(TestCase):
    @inlineCallbacks
    def test_crlfStreamClosed(self):
        """
        A raw socket streaming CRLFs to a real listener gets 400 and the
        close after a bounded number of bytes (the request-line limit plus
        what the kernel buffers), not an endless read.
        """
        pool = makePool()
        listener = makeListener(requestTimeout=120.0, limits=HTTPLimits(requestLine=8192))
        factory = HTTPProxyFactory(listener, {"web": pool}, reactor)
        records = []
        factory.accessLog.log = records.append
        port = reactor.listenTCP(freePort(), factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        cap = 256 * 1024 * 1024
        sent, answer = yield threads.deferToThread(streamCRLFs, port.getHost().port, cap)
        self.assertIsNotNone(answer, f"still reading after {sent} bytes")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer)
        self.assertLess(sent, cap // 4)
        self.assertEqual([(r.status, r.termination) for r in records], [(400, "PR")])
