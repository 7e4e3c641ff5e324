"""
Servers that break the response side of HTTP, in memory: a body cut by a
reset or a close, bytes after a complete response (a body on a HEAD, 204
or 304 answer, two responses in one write), bytes on an idle connection.

A cut body is never passed on as complete: the client sees no last chunk
and a closed connection (a reset when the body is delimited by the
close), the access log says C{SD}, and the server's C{responseErrors}
counts it. Bytes a server sends beyond its response are never handed to
anyone: they are logged once as an error naming the server, counted, and
the connection is closed, while the response they followed stays served.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.logger import LogLevel, capturedLogs, formatEvent

from test_http_front import DONE, GET, OK, RESET, Backend, ProxyTestCase, _dechunk, chunked

HEAD = b"HEAD /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
GET10 = b"GET /x HTTP/1.0\r\n\r\n"
UNTIL_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
LENGTH_CUT = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
CHUNKED_CUT = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"


def reset(backend) -> None:
    backend.close(RESET)


def extraLine(count: int, status: int, method: str = "GET", none: bool = False) -> str:
    """
    The error line for C{count} bytes after a C{status} response to
    C{method}; C{none}: a response that has no body.
    """
    why = "a body on a response that has none" if none else "more than the response"
    return (
        f"server web/s0 sent {count} bytes after the end of its {status} response "
        f"to {method} ({why}); connection closed"
    )


def serverErrors(events) -> list[str]:
    """
    The error lines of C{events} from lbproxy.http.backend.
    """
    return [
        formatEvent(event)
        for event in events
        if event.get("log_level") == LogLevel.error
        and event.get("log_namespace", "").startswith("lbproxy.http.backend")
    ]


class CutBodyTests(ProxyTestCase):
    """
    A response body cut short by the server, however it is framed and
    however the server ends the connection.
    """

    def startResponse(self, request: bytes, response: bytes):
        self.makeFactory(count=1)
        client = self.connectClient()
        client.send(request)
        backend = self.connectBackend()
        backend.send(response)
        return client, backend

    def assertCut(self, client, aborted: bool) -> None:
        """
        The client got no end of the body and lost its connection (reset
        when C{aborted}); the request is logged C{SD} and counted on the
        server.
        """
        self.assertFalse(client.received().endswith(b"0\r\n\r\n"), client.received())
        self.assertTrue(client.closing)
        self.assertEqual(client.transport.disconnected, aborted)
        self.assertLastRecord(status=200, termination="SD")
        self.assertEqual(self.pool.servers[0].responseErrors, 1)
        # Nothing more is read from the client on that connection.
        before = len(self.reactor.tcpClients)
        client.send(GET)
        self.assertEqual(len(self.reactor.tcpClients), before)

    def test_resetCutsCloseDelimitedBody(self):
        """
        The issue's case: C{200 OK} without a length, part of the body,
        then a reset. An HTTP/1.1 client gets the part re-chunked without
        the last chunk, and its connection is closed.
        """
        client, backend = self.startResponse(GET, UNTIL_CLOSE + b"part of the body")
        backend.close(RESET)
        head, body = client.received().split(b"\r\n\r\n", 1)
        self.assertIn(b"Transfer-Encoding: chunked", head)
        self.assertEqual(body, chunked(b"part of the body")[: -len(b"0\r\n\r\n")])
        self.assertCut(client, aborted=False)

    def test_resetCutsCloseDelimitedBodyToHttp10(self):
        """
        An HTTP/1.0 client reads the body until the close: it gets a
        reset, never a clean close it would take as the end.
        """
        client, backend = self.startResponse(GET10, UNTIL_CLOSE + b"part")
        backend.close(RESET)
        self.assertTrue(client.received().endswith(b"\r\n\r\npart"))
        self.assertCut(client, aborted=True)

    def test_finEndsCloseDelimitedBody(self):
        """
        A clean close (FIN) is how a body without length ends: complete,
        with the last chunk, and the client connection persists.
        """
        client, backend = self.startResponse(GET, UNTIL_CLOSE + b"all of it")
        backend.finClose()
        backend.close(DONE)
        self.assertEqual(_dechunk(client.received().split(b"\r\n\r\n", 1)[1]), b"all of it")
        self.assertTrue(client.received().endswith(b"0\r\n\r\n"))
        self.assertFalse(client.closing)
        self.assertLastRecord(status=200, termination="--")
        self.assertEqual(self.pool.servers[0].responseErrors, 0)

    def test_closeNotifyEndsCloseDelimitedBody(self):
        """
        Over TLS the end is the server's close_notify, after which the
        connection is lost cleanly (without a half-close).
        """
        client, backend = self.startResponse(GET10, UNTIL_CLOSE + b"all")
        backend.close(DONE)
        self.assertTrue(client.received().endswith(b"\r\n\r\nall"))
        self.assertTrue(client.closing)
        self.assertFalse(client.transport.disconnected)
        self.assertLastRecord(status=200, termination="--")

    def cutBy(self, request: bytes, response: bytes, end, aborted: bool):
        """
        The server sends C{response} to C{request} and ends with C{end}
        (L{Backend.close} with C{RESET}, or L{Backend.finClose}): the body
        is cut, the client connection reset when C{aborted}.
        """
        client, backend = self.startResponse(request, response)
        end(backend)
        self.assertCut(client, aborted=aborted)
        return client

    def test_lengthBodyCutByReset(self):
        self.cutBy(GET, LENGTH_CUT, reset, aborted=False)

    def test_lengthBodyCutByFin(self):
        self.cutBy(GET, LENGTH_CUT, Backend.finClose, aborted=False)

    def test_lengthBodyCutByFinToHttp10(self):
        """
        The HTTP/1.0 client knows the length: a close tells it the body
        is short.
        """
        client = self.cutBy(GET10, LENGTH_CUT, Backend.finClose, aborted=False)
        self.assertTrue(client.received().endswith(b"\r\n\r\nabc"))

    def test_chunkedBodyCutByFin(self):
        self.cutBy(GET, CHUNKED_CUT, Backend.finClose, aborted=False)

    def test_chunkedBodyCutByResetToHttp10(self):
        """
        A chunked body goes until close to an HTTP/1.0 client: cut, it
        ends with a reset.
        """
        self.cutBy(GET10, CHUNKED_CUT, reset, aborted=True)

    def test_resetBeforeTheHeadIsA502(self):
        """
        A reset before any of the response, on a fresh connection with no
        other server to try: 502, logged C{SH}, counted.
        """
        self.makeFactory(count=1, retries=0)
        client = self.connectClient()
        client.send(GET)
        self.connectBackend().close(RESET)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 "))
        self.assertLastRecord(status=502, termination="SH")
        self.assertEqual(self.pool.servers[0].responseErrors, 1)


class ExtraBytesTests(ProxyTestCase):
    """
    Bytes from a server after a complete response, in the same read.
    """

    def answer(self, request: bytes, response: bytes):
        self.makeFactory(count=1)
        client = self.connectClient()
        with capturedLogs() as events:
            backend = self.exchange(client, request, response)
        return client, backend, serverErrors(events)

    def assertDropped(self, client, backend, errors, expected: str) -> None:
        """
        The response was served whole, the rest logged once as
        C{expected}, counted, and the connection closed, never reused.
        """
        self.assertEqual(errors, [expected])
        self.assertLastRecord(termination="--")
        self.assertFalse(client.closing)
        self.assertTrue(backend.transport.disconnecting)
        self.assertEqual(self.pool.servers[0].responseErrors, 1)
        self.assertEqual(self.factory.routeFor(self.pool).backends.idleCount(), 0)
        client.send(GET)
        self.assertEqual(self.pendingAttempts(), 1)

    def test_bodyOnHeadResponse(self):
        client, backend, errors = self.answer(
            HEAD, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        )
        self.assertEqual(client.received(), b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        self.assertDropped(client, backend, errors, extraLine(5, 200, "HEAD", none=True))

    def test_bodyOn204Response(self):
        client, backend, errors = self.answer(GET, b"HTTP/1.1 204 No Content\r\n\r\nbody")
        self.assertEqual(client.received(), b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertDropped(client, backend, errors, extraLine(4, 204, none=True))

    def test_bodyOn304Response(self):
        client, backend, errors = self.answer(
            GET, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\nabc"
        )
        self.assertEqual(
            client.received(), b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n"
        )
        self.assertDropped(client, backend, errors, extraLine(3, 304, none=True))

    def test_twoResponsesInOneWrite(self):
        client, backend, errors = self.answer(GET, OK + OK)
        self.assertEqual(client.received().count(b"HTTP/1.1 200 OK"), 1)
        self.assertTrue(client.received().endswith(b"ok"))
        self.assertDropped(client, backend, errors, extraLine(len(OK), 200))

    def test_moreThanTheLengthAcrossReads(self):
        """
        The response ends inside a later read, which holds more: the same.
        """
        self.makeFactory(count=1)
        client = self.connectClient()
        client.send(GET)
        backend = self.connectBackend()
        with capturedLogs() as events:
            backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
            backend.send(b"cdEXTRA")
        self.assertTrue(client.received().endswith(b"\r\n\r\nabcd"))
        self.assertDropped(client, backend, serverErrors(events), extraLine(5, 200))

    def test_extraAfterChunkedResponse(self):
        client, backend, errors = self.answer(
            GET, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"abc") + b"junk"
        )
        self.assertTrue(client.received().endswith(b"0\r\n\r\n"))
        self.assertDropped(client, backend, errors, extraLine(4, 200))

    def test_extraAfterClosingResponse(self):
        """
        A response that closes the connection (C{Connection: close}) and
        more: logged all the same, though the connection closes anyway.
        """
        client, backend, errors = self.answer(
            GET, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nokMORE"
        )
        self.assertTrue(client.received().endswith(b"ok"))
        self.assertDropped(client, backend, errors, extraLine(4, 200))

    def test_interimThenFinalIsNotExtra(self):
        """
        A 100 Continue and the final response in one read are one answer.
        """
        client, backend, errors = self.answer(
            b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n" + OK,
        )
        self.assertEqual(errors, [])
        self.assertEqual(self.factory.routeFor(self.pool).backends.idleCount(), 1)
        self.assertEqual(self.pool.servers[0].responseErrors, 0)


class IdleBytesTests(ProxyTestCase):
    """
    Bytes a server sends on a connection waiting idle for reuse.
    """

    def test_unsolicitedResponseWhileIdle(self):
        self.makeFactory(count=1)
        client = self.connectClient()
        backend = self.exchange(client, GET)
        self.assertEqual(self.factory.routeFor(self.pool).backends.idleCount(), 1)
        with capturedLogs() as events:
            backend.send(OK)
            backend.send(OK)
        self.assertEqual(
            serverErrors(events),
            [
                f"server web/s0 sent {len(OK)} bytes on an idle connection, "
                "answering no request; connection closed"
            ],
        )
        self.assertTrue(backend.transport.disconnected)
        self.assertEqual(self.factory.routeFor(self.pool).backends.idleCount(), 0)
        self.assertEqual(self.pool.servers[0].responseErrors, 1)
        self.assertEqual(client.received().count(b"200 OK"), 1)

    def test_emptyLinesWhileIdle(self):
        """
        Even an empty line: a server that writes to an idle connection is
        not given another request on it.
        """
        self.makeFactory(count=1)
        client = self.connectClient()
        backend = self.exchange(client, GET)
        with capturedLogs() as events:
            backend.send(b"\r\n")
        self.assertEqual(len(serverErrors(events)), 1)
        self.assertEqual(self.factory.routeFor(self.pool).backends.idleCount(), 0)
        other = self.connectClient(IPv4Address("TCP", "192.0.2.8", 40001))
        other.send(GET)
        self.assertEqual(self.pendingAttempts(), 1)
