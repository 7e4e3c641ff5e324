"""
Servers that break the response side of HTTP, in memory: a body cut by a
reset or a close.

A cut body is never passed on as complete: the client sees no last chunk
and a closed connection (a reset when the body is delimited by the
close), the access log says C{SD}, and the server's C{responseErrors}
counts it.
"""

from __future__ import annotations

from test_http_front import DONE, GET, RESET, ProxyTestCase, _dechunk, chunked

GET10 = b"GET /x HTTP/1.0\r\n\r\n"
UNTIL_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"


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

    def test_lengthBodyCutByReset(self):
        client, backend = self.startResponse(
            GET, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
        )
        backend.close(RESET)
        self.assertCut(client, aborted=False)

    def test_lengthBodyCutByFin(self):
        client, backend = self.startResponse(
            GET, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
        )
        backend.finClose()
        self.assertCut(client, aborted=False)

    def test_lengthBodyCutByFinToHttp10(self):
        """
        The HTTP/1.0 client knows the length: a close tells it the body
        is short.
        """
        client, backend = self.startResponse(
            GET10, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
        )
        backend.finClose()
        self.assertTrue(client.received().endswith(b"\r\n\r\nabc"))
        self.assertCut(client, aborted=False)

    def test_chunkedBodyCutByFin(self):
        client, backend = self.startResponse(
            GET, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        backend.finClose()
        self.assertCut(client, aborted=False)

    def test_chunkedBodyCutByResetToHttp10(self):
        """
        A chunked body goes until close to an HTTP/1.0 client: cut, it
        ends with a reset.
        """
        client, backend = self.startResponse(
            GET10, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        backend.close(RESET)
        self.assertCut(client, aborted=True)

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
