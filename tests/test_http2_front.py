"""
Tests for lbproxy.http2, the HTTP/2 front of an HTTP listener, in memory:
the h2 library plays the client, servers are driven by hand. Each stream
goes through the HTTP/1.1 front's pipeline (routing, persistence,
forwarding headers, reuse, error statuses, access log), with flow control
both ways.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from zope.interface.verify import verifyObject

from lbproxy.config import CookieConfig
from lbproxy.core.pool import Server
from lbproxy.selectors import findSelector
from lbproxy.http.config import HTTPLimits
from lbproxy.http.interfaces import IBackendUser
from lbproxy.http2.config import HTTP2Settings
from lbproxy.http2.connection import H2FrontConnection
from lbproxy.http2.stream import H2Stream

from test_http_front import HOST, OK, PEER, RESET, Client, ProxyTestCase, makeListener, makePool, requestHead
from test_relay import FakeTCPTransport

H2C = HTTP2Settings(cleartext=True)


class H2Client:
    """
    An HTTP/2 client (the h2 library) on a connection to the proxy.
    """

    def __init__(self, client, settings=None):
        self.client = client
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.events = []
        self.responses = {}
        self.bodies = {}
        self.ended = set()
        self.resets = {}
        self.trailers = {}
        self.terminated = None
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.client.send(data)
        self.read()

    def read(self):
        data = self.client.received()
        self.client.clear()
        self.client.transport.drain()
        if not data:
            return
        events = self.conn.receive_data(data)
        self.events.extend(events)
        for event in events:
            if isinstance(event, ResponseReceived):
                self.responses[event.stream_id] = dict(event.headers)
            elif isinstance(event, DataReceived):
                self.bodies[event.stream_id] = self.bodies.get(event.stream_id, b"") + event.data
                if event.flow_controlled_length and not self.holdWindow:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, StreamReset):
                self.resets[event.stream_id] = event.error_code
            elif isinstance(event, TrailersReceived):
                self.trailers[event.stream_id] = dict(event.headers)
            elif isinstance(event, ConnectionTerminated):
                self.terminated = event.error_code
        out = self.conn.data_to_send()
        if out and not self.client.closing:
            self.client.send(out)
            self.read()

    holdWindow = False

    def request(self, path=b"/x", method=b"GET", authority=b"example.com", extra=(), body=None, end=True):
        streamId = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", method),
            (b":scheme", b"https"),
            (b":path", path),
            (b":authority", authority),
            *extra,
        ]
        self.conn.send_headers(streamId, headers, end_stream=end and body is None)
        if body is not None:
            self.conn.send_data(streamId, body, end_stream=end)
        self.flush()
        return streamId


class H2TestCase(ProxyTestCase):
    def setUp(self):
        super().setUp()

    def makeH2Factory(self, settings=H2C, **listenerOptions):
        listener = makeListener(http2=settings, **listenerOptions)
        return self.makeFactory(listener)

    def connectH2(self, settings=None) -> H2Client:
        client = self.connectClient()
        return H2Client(client, settings)


class ForwardingTests(H2TestCase):
    def test_interfaces(self):
        self.makeH2Factory()
        h2 = self.connectH2()
        protocol = h2.client.protocol
        self.assertIsInstance(protocol.http2, H2FrontConnection)
        verifyObject(IPushProducer, protocol.http2)
        self.assertIs(h2.client.transport.producer, protocol.http2)
        h2.request()
        stream = next(iter(protocol.http2.streams.values()))
        self.assertIsInstance(stream, H2Stream)
        verifyObject(IBackendUser, stream)

    def test_get(self):
        """
        A stream is one request to a server over HTTP/1.1: Host from
        :authority, forwarding headers added; the response comes back on
        the stream and the access log says HTTP/2.0.
        """
        self.makeH2Factory()
        h2 = self.connectH2()
        sid = h2.request(extra=[(b"user-agent", b"t"), (b"cookie", b"a=1"), (b"cookie", b"b=2")])
        backend = self.connectBackend()
        line, fields = requestHead(backend.received())
        self.assertEqual(line, b"GET /x HTTP/1.1")
        names = dict(fields)
        self.assertEqual(names[b"Host"], b"example.com")
        self.assertEqual(names[b"cookie"], b"a=1; b=2")
        self.assertEqual(names[b"X-Forwarded-For"], b"192.0.2.7")
        backend.send(OK)
        h2.read()
        self.assertEqual(h2.responses[sid][b":status"], b"200")
        self.assertEqual(h2.bodies[sid], b"ok")
        self.assertIn(sid, h2.ended)
        record = self.assertLastRecord(status=200, termination="--", method=b"GET", version=(2, 0))
        self.assertEqual(record.server, "s0")

    def test_concurrentStreams(self):
        """
        Streams of one connection are served at once, each on its own
        server connection; a finished stream's connection is reused.
        """
        self.makeH2Factory()
        h2 = self.connectH2()
        one = h2.request(b"/1")
        two = h2.request(b"/2")
        self.assertEqual(self.pendingAttempts(), 2)
        first = self.connectBackend()
        second = self.connectBackend()
        second.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
        first.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
        h2.read()
        self.assertEqual(h2.bodies, {one: b"one", two: b"two"})
        first.clear()
        h2.request(b"/3")
        self.assertEqual(self.pendingAttempts(), 0)
        self.assertTrue(first.received().startswith(b"GET /3 HTTP/1.1") or second.received().startswith(b"GET /3"))

    def test_requestBodyChunked(self):
        """
        A body without content-length goes to the server chunked.
        """
        self.makeH2Factory()
        h2 = self.connectH2()
        sid = h2.request(method=b"POST", body=b"hello", end=False)
        backend = self.connectBackend()
        h2.conn.send_data(sid, b"world", end_stream=True)
        h2.flush()
        data = backend.received()
        self.assertIn(b"Transfer-Encoding: chunked", data)
        self.assertTrue(data.endswith(b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"), data)
        backend.send(OK)
        h2.read()
        self.assertEqual(h2.bodies[sid], b"ok")
        self.assertLastRecord(bytesIn=10, status=200)

    def test_requestBodyLength(self):
        self.makeH2Factory()
        h2 = self.connectH2()
        sid = h2.request(method=b"PUT", body=b"abc", extra=[(b"content-length", b"3")])
        backend = self.connectBackend()
        data = backend.received()
        self.assertIn(b"Content-Length: 3\r\n", data)
        self.assertTrue(data.endswith(b"\r\n\r\nabc"))
        backend.send(b"HTTP/1.1 204 No Content\r\n\r\n")
        h2.read()
        self.assertEqual(h2.responses[sid][b":status"], b"204")
        self.assertIn(sid, h2.ended)

    def test_chunkedResponseWithTrailers(self):
        self.makeH2Factory()
        h2 = self.connectH2()
        sid = h2.request()
        backend = self.connectBackend()
        backend.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
            b"3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n"
        )
        h2.read()
        headers = h2.responses[sid]
        self.assertNotIn(b"transfer-encoding", headers)
        self.assertNotIn(b"connection", headers)
        self.assertEqual(h2.bodies[sid], b"abc")
        self.assertEqual(h2.trailers[sid], {b"x-sum": b"1"})

    def test_connectsFail(self):
        """
        A request whose connects all fail gets the HTTP/1.1 front's status
        (502), on its stream only: the connection goes on.
        """
        self.makeH2Factory()
        h2 = self.connectH2()
        sid = h2.request()
        self.refuseBackend()
        self.refuseBackend()
        self.refuseBackend()
        h2.read()
        self.assertEqual(h2.responses[sid][b":status"], b"502")
        self.assertIn(sid, h2.ended)
        self.assertIsNone(h2.terminated)
        self.assertLastRecord(status=502, termination="SC")
        two = h2.request()
        self.assertEqual(self.pendingAttempts(), 1)
        self.connectBackend().send(OK)
        h2.read()
        self.assertEqual(h2.bodies[two], b"ok")

    def test_badPath(self):
        """
        A path that normalisation refuses is answered 400 on its stream.
        """
        self.makeH2Factory()
        h2 = self.connectH2()
        sid = h2.request(path=b"/a/../../b")
        h2.read()
        self.assertEqual(h2.responses[sid][b":status"], b"400")

    def test_cookiePersistence(self):
        """
        Cookie persistence inserts its cookie on an HTTP/2 response and
        pins the next request by it.
        """
        self.makeH2Factory()
        self.makeFactory(
            makeListener(http2=H2C), cookie=CookieConfig(name="SRV")
        )
        h2 = self.connectH2()
        sid = h2.request()
        self.connectBackend().send(OK)
        h2.read()
        cookie = h2.responses[sid][b"set-cookie"]
        self.assertTrue(cookie.startswith(b"SRV="), cookie)
        value = cookie.split(b";")[0]
        two = h2.request(extra=[(b"cookie", value)])
        if self.pendingAttempts():
            self.connectBackend().send(OK)
        else:
            self.backends[-1].send(OK)
        h2.read()
        self.assertEqual(h2.bodies[two], b"ok")
        self.assertEqual(self.log.records[-1].server, self.log.records[-2].server)

    def test_tooManyHeaders(self):
        self.makeH2Factory(limits=HTTPLimits(headerCount=8))
        h2 = self.connectH2()
        sid = h2.request(extra=[(b"x-%d" % i, b"v") for i in range(10)])
        self.assertEqual(h2.responses[sid][b":status"], b"431")
        self.assertEqual(self.pendingAttempts(), 0)

    def test_connectMethod(self):
        self.makeH2Factory()
        h2 = self.connectH2()
        streamId = h2.conn.get_next_available_stream_id()
        h2.conn.send_headers(streamId, [(b":method", b"CONNECT"), (b":authority", b"example.com:443")])
        h2.flush()
        self.assertEqual(h2.responses[streamId][b":status"], b"501")
        self.assertLastRecord(status=501, termination="PR", method=b"CONNECT", target=b"example.com:443", version=(2, 0))

    def test_http11StillServed(self):
        """
        On a listener with prior-knowledge h2c, an HTTP/1.1 client is
        served as before.
        """
        self.makeH2Factory()
        client = self.connectClient()
        self.exchange(client, b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 OK"))
        self.assertIsNone(client.protocol.http2)

    def test_prefaceInPieces(self):
        self.makeH2Factory()
        client = self.connectClient()
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        client.send(preface[:1])
        client.send(preface[1:2])
        self.assertIsNone(client.protocol.http2)
        client.send(preface[2:3])
        self.assertIsNone(client.protocol.http2)
        client.send(preface[3:5])
        self.assertIsNotNone(client.protocol.http2)

    def test_methodLikePreface(self):
        """
        A request whose method only begins like the preface is taken as
        HTTP/1.1 (and answered as the HTTP/1.1 front answers it).
        """
        self.makeH2Factory()
        client = self.connectClient()
        client.send(b"PR")
        client.send(b"INT /x HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertIsNone(client.protocol.http2)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 "))

    def test_notOnPlainListenerWithoutCleartext(self):
        """
        Without cleartext = true, a plaintext listener does not take the
        preface (it is an invalid HTTP/1.1 request).
        """
        self.makeH2Factory(settings=HTTP2Settings())
        client = self.connectClient()
        client.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        self.assertIsNone(client.protocol.http2)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 "))


class PipelineTests(H2TestCase):
    """
    More of the HTTP/1.1 front's pipeline, through HTTP/2 streams.
    """

    def test_hashKey(self):
        """
        A pool hashing on a header places each stream by it, as for
        HTTP/1.1.
        """
        servers = [Server(f"s{i}", f"tcp:host=127.0.0.1:port={8001 + i}") for i in range(5)]
        selector = findSelector("hash").build({"key": "header:X-User"})
        self.makeFactory(makeListener(http2=H2C), pools={"web": makePool(servers=servers, selector=selector)})
        placed = {}
        for user in [b"alice", b"bob", b"carol", b"dave", b"erin", b"frank"]:
            seen = set()
            for _ in range(3):
                h2 = self.connectH2()
                sid = h2.request(extra=[(b"x-user", user)])
                self.connectBackend().send(OK)
                h2.read()
                self.assertEqual(h2.bodies[sid], b"ok")
                seen.add(self.log.records[-1].server)
                h2.client.close()
            self.assertEqual(len(seen), 1, (user, seen))
            placed[user] = seen.pop()
        self.assertGreater(len(set(placed.values())), 1, placed)

    def test_staleConnectionRetried(self):
        """
        The keep-alive race on a stream: a reused server connection closed
        before any of the response; the request goes out again on a fresh
        one and the client sees no error.
        """
        self.makeFactory(makeListener(http2=H2C), pools={"web": makePool(count=1)})
        h2 = self.connectH2()
        first = h2.request(b"/1")
        stale = self.connectBackend()
        stale.send(OK)
        h2.read()
        self.assertEqual(h2.bodies[first], b"ok")
        stale.clear()
        again = h2.request(b"/again")
        self.assertIn(b"GET /again", stale.received())
        stale.close(RESET)
        fresh = self.connectBackend()
        self.assertTrue(fresh.received().startswith(b"GET /again HTTP/1.1\r\n"))
        fresh.send(OK)
        h2.read()
        self.assertEqual(h2.bodies[again], b"ok")
        self.assertEqual(self.factory.staleRetries, 1)
        self.assertLastRecord(status=200, termination="--")
        self.assertEqual(self.pool.servers[0].active, 0)

    def test_requestTrailers(self):
        self.makeH2Factory()
        h2 = self.connectH2()
        sid = h2.request(method=b"POST", body=b"data", end=False, extra=[(b"te", b"trailers")])
        backend = self.connectBackend()
        h2.conn.send_headers(sid, [(b"x-checksum", b"abc")], end_stream=True)
        h2.flush()
        data = backend.received()
        self.assertNotIn(b"\r\nte:", data.lower())
        self.assertTrue(data.endswith(b"4\r\ndata\r\n0\r\nx-checksum: abc\r\n\r\n"), data)

    def test_continueForwarded(self):
        """
        An interim 100 Continue passes on, then the final response.
        """
        self.makeH2Factory()
        h2 = self.connectH2()
        sid = h2.request(method=b"PUT", end=False, extra=[(b"expect", b"100-continue"), (b"content-length", b"2")])
        backend = self.connectBackend()
        backend.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        h2.read()
        self.assertIn(b"expect: 100-continue", backend.received().lower())
        statuses = [dict(e.headers)[b":status"] for e in h2.events if hasattr(e, "headers") and e.stream_id == sid]
        self.assertEqual(statuses, [b"100"])
        h2.conn.send_data(sid, b"hi", end_stream=True)
        h2.flush()
        backend.send(OK)
        h2.read()
        self.assertEqual(h2.responses[sid][b":status"], b"200")
        self.assertEqual(h2.bodies[sid], b"ok")

    def test_headRequest(self):
        """
        A response to HEAD keeps its content-length and carries no body.
        """
        self.makeH2Factory()
        h2 = self.connectH2()
        sid = h2.request(method=b"HEAD")
        self.connectBackend().send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        h2.read()
        self.assertEqual(h2.responses[sid][b"content-length"], b"1234")
        self.assertIn(sid, h2.ended)
        self.assertNotIn(sid, h2.bodies)


class NegotiatedTransport(FakeTCPTransport):
    """
    Stands in for a TLS transport once its handshake chose a protocol by
    ALPN.
    """

    negotiatedProtocol = None


class ALPNTests(H2TestCase):
    def connectTLS(self, protocol):
        transport = NegotiatedTransport()
        transport.peerAddr = PEER
        transport.hostAddr = HOST
        proxy = self.factory.buildProtocol(PEER)
        proxy.makeConnection(transport)
        transport.negotiatedProtocol = protocol
        verifyObject(IHandshakeListener, proxy)
        proxy.handshakeCompleted()
        return Client(proxy, transport)

    def test_h2ByALPN(self):
        """
        A client that chose h2 is served by HTTP/2 from the first byte: the
        server's SETTINGS go out at once.
        """
        self.makeH2Factory(settings=HTTP2Settings())
        client = self.connectTLS(b"h2")
        self.assertIsInstance(client.protocol.http2, H2FrontConnection)
        self.assertEqual(client.received()[3:4], b"\x04")
        h2 = H2Client(client)
        sid = h2.request()
        self.connectBackend().send(OK)
        h2.read()
        self.assertEqual(h2.bodies[sid], b"ok")

    def test_http11ByALPN(self):
        self.makeH2Factory(settings=HTTP2Settings())
        client = self.connectTLS(b"http/1.1")
        self.assertIsNone(client.protocol.http2)
        self.exchange(client, b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertTrue(client.received().startswith(b"HTTP/1.1 200 OK"))

    def test_noALPN(self):
        self.makeH2Factory(settings=HTTP2Settings())
        client = self.connectTLS(None)
        self.assertIsNone(client.protocol.http2)

    def test_h2WithoutHTTP2(self):
        """
        A listener without HTTP/2 never offers h2; were it chosen anyway,
        the connection stays HTTP/1.1.
        """
        self.makeFactory()
        client = self.connectTLS(b"h2")
        self.assertIsNone(client.protocol.http2)


class FlowControlTests(H2TestCase):
    def test_slowStreamPausesOnlyItsServer(self):
        """
        A stream whose window the client keeps closed pauses its own server
        connection only.
        """
        self.makeH2Factory()
        h2 = self.connectH2()
        # Room on the connection: only the stream's own window holds back.
        h2.conn.increment_flow_control_window(1 << 20)
        h2.holdWindow = True
        one = h2.request(b"/big")
        two = h2.request(b"/small")
        big = self.connectBackend()
        small = self.connectBackend()
        big.send(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"x" * 100000)
        h2.read()
        self.assertEqual(len(h2.bodies[one]), 65535)
        self.assertTrue(big.transport.producerState == "paused" or big.protocol.readingPaused)
        self.assertFalse(small.protocol.readingPaused)
        small.send(OK)
        h2.read()
        self.assertEqual(h2.bodies[two], b"ok")
        h2.holdWindow = False
        h2.conn.acknowledge_received_data(65535, one)
        h2.flush()
        self.assertEqual(len(h2.bodies[one]), 100000)
        self.assertFalse(big.protocol.readingPaused)

    def test_uploadNotBufferedWhileServerBlocked(self):
        """
        While the server does not read, the request body's window is not
        given back: the client can send no more than it.
        """
        self.makeH2Factory(settings=HTTP2Settings(cleartext=True, initialWindowSize=16384))
        h2 = self.connectH2()
        sid = h2.request(method=b"POST", end=False)
        backend = self.connectBackend()
        backend.protocol.pauseProducing()
        sent = 0
        while h2.conn.local_flow_control_window(sid) > 0:
            chunk = b"y" * min(4096, h2.conn.local_flow_control_window(sid))
            h2.conn.send_data(sid, chunk)
            sent += len(chunk)
            h2.flush()
            self.assertLess(sent, 100000)
        self.assertEqual(sent, 16384)
        self.assertEqual(h2.conn.local_flow_control_window(sid), 0)
        backend.protocol.resumeProducing()
        h2.read()
        self.assertEqual(h2.conn.local_flow_control_window(sid), 16384)

    def test_zeroWindowStall(self):
        """
        A client that never opens its window has its stream reset after the
        idle timeout; the server connection is dropped.
        """
        self.makeH2Factory(idleTimeout=30.0)
        h2 = self.connectH2({SettingCodes.INITIAL_WINDOW_SIZE: 0})
        sid = h2.request()
        backend = self.connectBackend()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        h2.read()
        self.assertEqual(h2.responses[sid][b":status"], b"200")
        self.reactor.advance(31)
        h2.read()
        self.assertEqual(h2.resets.get(sid), ErrorCodes.CANCEL)
        self.assertLastRecord(termination="cD")

    def test_responseTimeout(self):
        self.makeH2Factory()
        h2 = self.connectH2()
        sid = h2.request()
        self.connectBackend()
        self.reactor.advance(31)
        h2.read()
        self.assertEqual(h2.responses[sid][b":status"], b"504")
        self.assertLastRecord(termination="sH")
