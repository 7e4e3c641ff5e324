"""
Servers that break the response side of HTTP, on loopback with the real
reactor: raw-socket servers (plain and TLS) that reset a body, end TLS
without close_notify, write a response nobody asked for, or send a body
with a HEAD answer; curl and raw Twisted clients in front.

curl is the judge of a cut body: it must report the transfer incomplete
(exit 18, "transfer closed with outstanding read data remaining", or 56,
"Recv failure: Connection reset by peer"), never succeed with the part.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import struct
import tempfile
import threading

import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import capturedLogs


from certs import CertificateAuthority
from support import requireExecutable
from test_http_loopback import RawClient, RecordingLog
from test_http_response_faults import serverErrors
from test_tls_backend_loopback import FrontsOnLoopback

pytestmark = pytest.mark.integration

#: The start of a response whose body ends when the server closes.
UNTIL_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n"
PART = b"p" * 3000
UNREQUESTED = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nunrequested"

#: curl's exit codes for a transfer cut short.
INCOMPLETE = {18: "partial file", 56: "receive error (reset)"}


def answer(path: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path)


def readHead(connection, buffered: bytearray) -> bytes | None:
    """
    The next request head on C{connection} (requests without body), or
    L{None} when the peer closed.
    """
    while b"\r\n\r\n" not in buffered:
        data = connection.recv(65536)
        if not data:
            return None
        buffered += data
    end = buffered.index(b"\r\n\r\n") + 4
    head = bytes(buffered[:end])
    del buffered[:end]
    return head


def requestPath(head: bytes) -> bytes:
    return head.split(b" ", 2)[1]


def reset(connection) -> None:
    """
    Close C{connection} with a reset (SO_LINGER 0) instead of a FIN.
    """
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


class RawServer:
    """
    A loopback server on plain sockets: each accepted connection runs
    C{script(connection, number)} in a thread of its own (C{number} counts
    from 1), with a generous timeout on every socket call.
    """

    def __init__(self, script, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.stopping = False
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            thread = threading.Thread(
                target=self._serve, args=(connection, self.accepted), daemon=True
            )
            self.threads.append(thread)
            thread.start()

    def _serve(self, connection, number: int) -> None:
        connection.settimeout(20)
        try:
            if self.tls is not None:
                connection = self.tls.wrap_socket(connection, server_side=True)
            self.script(connection, number)
        except OSError:
            pass
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopping = True
        self.listener.close()
        for thread in [self.acceptor, *self.threads]:
            thread.join(5)


class ResponseFaultsLoopbackTests(FrontsOnLoopback):
    def server(self, script, tls: ssl.SSLContext | None = None) -> RawServer:
        raw = RawServer(script, tls)
        self.addCleanup(raw.stop)
        return raw

    def proxy(self, backend: int, pool: str = "") -> int:
        """
        An HTTP listener on loopback in front of one server; C{pool}:
        more lines of the pool's table.
        """
        port = self.front(
            f"""retries = 0
servers = [{{ name = "web1", address = "tcp:host=127.0.0.1:port={backend}" }}]
{pool}"""
        )
        self.fronts[-1].accessLog = self.log = RecordingLog()
        return port

    @inlineCallbacks
    def curl(self, port: int, *options: str):
        """
        Run curl against the proxy: its exit code and what it printed.
        """
        out, err, code = yield getProcessOutputAndValue(
            requireExecutable("curl"),
            ["-sS", "--max-time", "20", *options, f"http://127.0.0.1:{port}/download"],
            env=os.environ,
        )
        return code, out, err.decode(errors="replace")

    @inlineCallbacks
    def waitFor(self, condition, what: str):
        for _ in range(200):
            if condition():
                return
            yield deferLater(reactor, 0.05, lambda: None)
        self.fail(f"timed out waiting for {what}")

    # -- a body cut by a reset ----------------------------------------------

    @staticmethod
    def resetMidBody(connection, number):
        """
        The issue's server: 200 without length, part of the body, then a
        reset (SO_LINGER 0), once the proxy has had time to read the part.
        """
        readHead(connection, bytearray())
        connection.sendall(UNTIL_CLOSE + PART)
        threading.Event().wait(0.5)
        reset(connection)

    @staticmethod
    def closeAfterBody(connection, number):
        readHead(connection, bytearray())
        connection.sendall(UNTIL_CLOSE + PART)
        threading.Event().wait(0.5)
        connection.shutdown(socket.SHUT_WR)

    @inlineCallbacks
    def assertCutForCurl(self, port: int, code: int, *options: str):
        """
        curl got the part and reported the transfer incomplete with exit
        C{code}; the request is logged C{SD} and counted on the server.
        """
        exit, out, err = yield self.curl(port, *options)
        self.assertEqual(exit, code, f"curl exit {exit} ({INCOMPLETE.get(exit)}): {err}")
        self.assertEqual(out, PART)
        yield self.waitFor(lambda: self.log.records, "the access log line")
        record = self.log.records[-1]
        self.assertEqual((record.status, record.termination), (200, "SD"))
        self.assertEqual(self.pool.servers[0].responseErrors, 1)

    @inlineCallbacks
    def test_resetMidBodyIncompleteForHttp11(self):
        """
        The HTTP/1.1 client gets the part chunked, without the last chunk,
        and a closed connection.
        """
        port = self.proxy(self.server(self.resetMidBody).port)
        yield self.assertCutForCurl(port, 18)

    @inlineCallbacks
    def test_resetMidBodyIncompleteForHttp10(self):
        """
        An HTTP/1.0 client reads the body until the close: it gets the
        proxy's reset, not a close it would take as the end.
        """
        port = self.proxy(self.server(self.resetMidBody).port)
        yield self.assertCutForCurl(port, 56, "--http1.0")

    @inlineCallbacks
    def test_finEndsCloseDelimitedBody(self):
        port = self.proxy(self.server(self.closeAfterBody).port)
        for options in ((), ("--http1.0",)):
            code, out, err = yield self.curl(port, *options)
            self.assertEqual((code, out), (0, PART), err)
        self.assertEqual([r.termination for r in self.log.records], ["--", "--"])

    # -- TLS to the server ----------------------------------------------------

    def tlsContext(self) -> tuple[ssl.SSLContext, str]:
        directory = tempfile.mkdtemp(prefix="lbproxy-resp-")
        self.addCleanup(shutil.rmtree, directory, True)
        ca = CertificateAuthority(os.path.join(directory, "ca"))
        issued = ca.issue("web1.test")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(issued.chain), str(issued.key))
        return context, f'[pools.web.tls]\nca = "{ca.cert}"\nserver_name = "web1.test"\n'

    @inlineCallbacks
    def test_tlsWithoutCloseNotifyIsATruncation(self):
        """
        Over TLS, a close-delimited body ends with the server's
        close_notify; a TCP close without it may be an attacker's
        truncation, and is taken as a cut body.
        """

        def truncate(connection, number):
            readHead(connection, bytearray())
            connection.sendall(UNTIL_CLOSE + PART)
            threading.Event().wait(0.5)
            # The TCP connection ends under TLS: no close_notify.
            socket.socket(fileno=connection.detach()).shutdown(socket.SHUT_WR)

        context, tls = self.tlsContext()
        port = self.proxy(self.server(truncate, context).port, tls)
        yield self.assertCutForCurl(port, 18)

    @inlineCallbacks
    def test_tlsCloseNotifyEndsCloseDelimitedBody(self):
        def closeNotify(connection, number):
            readHead(connection, bytearray())
            connection.sendall(UNTIL_CLOSE + PART)
            connection.unwrap().shutdown(socket.SHUT_WR)

        context, tls = self.tlsContext()
        port = self.proxy(self.server(closeNotify, context).port, tls)
        code, out, err = yield self.curl(port)
        self.assertEqual((code, out), (0, PART), err)
        yield self.waitFor(lambda: self.log.records, "the access log line")
        self.assertEqual(self.log.records[-1].termination, "--")

    # -- a response nobody asked for ----------------------------------------

    @staticmethod
    def strayResponse(connection, number):
        """
        On the first connection, answers the first request, then 0.5 s
        later writes a second, unrequested response, and answers later
        requests slowly; on other connections, answers at once.
        """
        buffered = bytearray()
        head = readHead(connection, buffered)
        connection.sendall(answer(requestPath(head)))
        if number == 1:
            threading.Event().wait(0.5)
            connection.sendall(UNREQUESTED)
        while (head := readHead(connection, buffered)) is not None:
            if number == 1:
                threading.Event().wait(1.0)
            connection.sendall(answer(requestPath(head)))

    @inlineCallbacks
    def get(self, port: int, path: bytes, method: bytes = b"GET") -> RawClient:
        client = RawClient([method])
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        self.addCleanup(client.transport.abortConnection)
        client.transport.write(b"%s %s HTTP/1.1\r\nHost: a\r\n\r\n" % (method, path))
        yield client.done
        return client

    @inlineCallbacks
    def test_strayResponseNeverAnswersAnotherClient(self):
        """
        The issue's case with the default reuse mode (safe): client B's
        first request, sent while the server is about to write a stray
        response on client A's idle connection, goes on a new connection
        and gets its own answer. The stray response is logged as the
        server's error and its connection closed.
        """
        raw = self.server(self.strayResponse)
        port = self.proxy(raw.port)
        with capturedLogs() as events:
            a = yield self.get(port, b"/a")
            b = yield self.get(port, b"/b")
            self.assertEqual(a.bodies(), [b"/a"])
            self.assertEqual(b.bodies(), [b"/b"])
            yield self.waitFor(lambda: serverErrors(events), "the stray response's log line")
        self.assertEqual(
            serverErrors(events),
            [
                f"server web/web1 sent {len(UNREQUESTED)} bytes on an idle connection, "
                "answering no request; connection closed"
            ],
        )
        self.assertEqual(raw.accepted, 2)
        self.assertEqual(self.pool.servers[0].responseErrors, 1)

    # -- a body on a HEAD answer ----------------------------------------------

    @inlineCallbacks
    def test_bodyOnHeadAnswer(self):
        """
        A HEAD answered with a body in the same write: curl gets the head
        and succeeds; the body is logged as the server's error, and the
        next request goes on a new connection.
        """

        def headWithBody(connection, number):
            buffered = bytearray()
            while readHead(connection, buffered) is not None:
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

        raw = self.server(headWithBody)
        port = self.proxy(raw.port)
        with capturedLogs() as events:
            client = yield self.get(port, b"/", b"HEAD")
            yield self.waitFor(lambda: serverErrors(events), "the extra bytes' log line")
        self.assertEqual(client.responses.items[0][0].status, 200)
        self.assertEqual(client.bodies(), [b""])
        self.assertEqual(
            serverErrors(events),
            [
                "server web/web1 sent 5 bytes after the end of its 200 response to HEAD "
                "(a body on a response that has none); connection closed"
            ],
        )
        code, out, err = yield self.curl(port, "--head")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
        self.assertEqual(raw.accepted, 2)
