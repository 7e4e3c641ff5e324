"""
Tests for lbproxy.http2.upstream and lbproxy.http2.relay: HTTP/2 client
streams carried to the servers of a pool with C{protocol = "h2"}, in
memory, with the h2 library as the client and as the server.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from hyperframe.frame import GoAwayFrame
from zope.interface.verify import verifyObject

from lbproxy.http2.upstream import H2BackendPool, H2ServerConnection, UpstreamStream
from lbproxy.interfaces import IUpstreamStream, IUpstreamUser

from test_http2_front import H2TestCase

GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


class H2Server:
    """
    An HTTP/2 server (the h2 library) on a connection the proxy made.
    """

    def __init__(self, backend, settings=None):
        self.backend = backend
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.requests = {}
        self.bodies = {}
        self.trailers = {}
        self.ended = set()
        self.resets = {}
        self.holdWindow = False
        self.unacked = {}
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.backend.send(data)
        self.read()

    def read(self):
        data = self.backend.received()
        self.backend.clear()
        self.backend.transport.drain()
        if not data:
            return
        for event in self.conn.receive_data(data):
            if isinstance(event, RequestReceived):
                self.requests[event.stream_id] = event.headers
            elif isinstance(event, DataReceived):
                sid = event.stream_id
                self.bodies[sid] = self.bodies.get(sid, b"") + event.data
                if self.holdWindow:
                    self.unacked[sid] = self.unacked.get(sid, 0) + event.flow_controlled_length
                elif event.flow_controlled_length:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, TrailersReceived):
                self.trailers[event.stream_id] = dict(event.headers)
            elif isinstance(event, StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, StreamReset):
                self.resets[event.stream_id] = event.error_code
        self.flush()

    def respond(self, sid, body=b"", trailers=None, status=b"200", end=True):
        self.conn.send_headers(sid, [(b":status", status), (b"content-type", b"application/grpc")])
        if body:
            self.conn.send_data(sid, body, end_stream=end and trailers is None)
        if trailers is not None:
            self.conn.send_headers(sid, trailers, end_stream=True)
        elif end and not body:
            self.conn.end_stream(sid)
        self.flush()


class UpstreamTestCase(H2TestCase):
    def setUp(self):
        super().setUp()
        self.makeFactory(self.h2Listener(), pools=None, protocol="h2", count=1)

    def h2Listener(self):
        from lbproxy.http2.config import HTTP2Settings
        from test_http_front import makeListener

        return makeListener(http2=HTTP2Settings(cleartext=True))

    def server(self, settings=None) -> H2Server:
        return H2Server(self.connectBackend(), settings)


class UpstreamTests(UpstreamTestCase):
    def test_interfaces(self):
        h2 = self.connectH2()
        sid = h2.request(b"/svc/Call", method=b"POST", extra=GRPC, end=False)
        server = self.server()
        stream = h2.client.protocol.http2.streams[sid]
        verifyObject(IUpstreamUser, stream)
        upstream = stream.exchange.backend
        self.assertIsInstance(upstream, UpstreamStream)
        verifyObject(IUpstreamStream, upstream)
        self.assertIsInstance(server.backend.protocol, H2ServerConnection)
        self.assertIsInstance(self.factory.routes[0].backends, H2BackendPool)

    def test_unaryWithTrailers(self):
        """
        The request goes as one stream with :method, :scheme, :authority
        and :path, te: trailers kept, forwarding fields added; the
        response's head, DATA and trailers (grpc-status) come back.
        """
        h2 = self.connectH2()
        sid = h2.request(b"/svc/Call", method=b"POST", extra=GRPC, body=b"\x00\x00\x00\x00\x01x")
        server = self.server()
        [(upId, fields)] = server.requests.items()
        names = dict(fields)
        self.assertEqual(fields[:4], [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"example.com"), (b":path", b"/svc/Call")])
        self.assertEqual(names[b"te"], b"trailers")
        self.assertEqual(names[b"x-forwarded-for"], b"192.0.2.7")
        self.assertNotIn(b"host", names)
        self.assertEqual(server.bodies[upId], b"\x00\x00\x00\x00\x01x")
        self.assertIn(upId, server.ended)
        server.respond(upId, b"\x00\x00\x00\x00\x01y", trailers=[(b"grpc-status", b"0")])
        h2.read()
        self.assertEqual(h2.responses[sid][b":status"], b"200")
        self.assertEqual(h2.bodies[sid], b"\x00\x00\x00\x00\x01y")
        self.assertEqual(h2.trailers[sid], {b"grpc-status": b"0"})
        self.assertIn(sid, h2.ended)
        self.assertLastRecord(status=200, termination="--", version=(2, 0), bytesIn=6)
        self.assertEqual(self.pool.servers[0].responses[2], 1)
        self.assertEqual(self.pool.servers[0].active, 0)

    def test_trailersOnly(self):
        """
        A response whose HEADERS end the stream (gRPC's Trailers-Only, an
        error status) passes as such.
        """
        h2 = self.connectH2()
        sid = h2.request(b"/svc/Call", method=b"POST", extra=GRPC, body=b"x")
        server = self.server()
        server.conn.send_headers(1, [(b":status", b"200"), (b"grpc-status", b"5"), (b"grpc-message", b"nope")], end_stream=True)
        server.flush()
        h2.read()
        self.assertEqual(h2.responses[sid][b"grpc-status"], b"5")
        self.assertEqual(h2.responses[sid][b"grpc-message"], b"nope")
        self.assertIn(sid, h2.ended)

    def test_requestTrailersAndBidi(self):
        """
        The response may start before the request ends; request DATA and
        trailers keep flowing after it, each side ends on its own.
        """
        h2 = self.connectH2()
        sid = h2.request(b"/svc/Chat", method=b"POST", extra=GRPC, body=b"one", end=False)
        server = self.server()
        server.respond(1, b"reply1", end=False)
        h2.read()
        self.assertEqual(h2.bodies[sid], b"reply1")
        h2.conn.send_data(sid, b"two")
        h2.conn.send_headers(sid, [(b"x-end", b"1")], end_stream=True)
        h2.flush()
        server.read()
        self.assertEqual(server.bodies[1], b"onetwo")
        self.assertEqual(server.trailers[1], {b"x-end": b"1"})
        self.assertIn(1, server.ended)
        server.conn.send_data(1, b"reply2")
        server.conn.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
        server.flush()
        h2.read()
        self.assertEqual(h2.bodies[sid], b"reply1reply2")
        self.assertEqual(h2.trailers[sid], {b"grpc-status": b"0"})
        self.assertIn(sid, h2.ended)

    def test_multiplexing(self):
        """
        Streams of several client connections share one server
        connection; a server's SETTINGS_MAX_CONCURRENT_STREAMS caps it, and
        another opens when it is full.
        """
        first = self.connectH2()
        a = first.request(b"/a")
        server = self.server({0x3: 2})
        second = self.connectH2()
        b = second.request(b"/b")
        server.read()
        self.assertEqual(self.pendingAttempts(), 0)
        self.assertEqual(sorted(server.requests), [1, 3])
        c = second.request(b"/c")
        self.assertEqual(self.pendingAttempts(), 1)
        server.respond(1, b"A")
        server.respond(3, b"B")
        first.read()
        second.read()
        self.assertEqual(first.bodies[a], b"A")
        self.assertEqual(second.bodies[b], b"B")
        other = self.server()
        other.respond(1, b"C")
        second.read()
        self.assertEqual(second.bodies[c], b"C")
        # The first connection has free slots again.
        first.request(b"/d")
        self.assertEqual(self.pendingAttempts(), 0)

    def test_clientReset(self):
        h2 = self.connectH2()
        sid = h2.request(b"/svc/Chat", method=b"POST", extra=GRPC, end=False)
        server = self.server()
        h2.conn.reset_stream(sid, ErrorCodes.CANCEL)
        h2.flush()
        server.read()
        self.assertEqual(server.resets[1], ErrorCodes.CANCEL)
        self.assertLastRecord(termination="CD")

    def test_serverReset(self):
        h2 = self.connectH2()
        sid = h2.request(b"/svc/Chat", method=b"POST", extra=GRPC, end=False)
        server = self.server()
        server.respond(1, b"part", end=False)
        server.conn.reset_stream(1, ErrorCodes.INTERNAL_ERROR)
        server.flush()
        h2.read()
        self.assertEqual(h2.resets[sid], ErrorCodes.INTERNAL_ERROR)
        self.assertLastRecord(termination="SD", status=200)

    def test_connectionLost(self):
        """
        The server connection lost: a stream without a response gets 502,
        one whose response began is reset; one log line for the
        connection.
        """
        h2 = self.connectH2()
        one = h2.request(b"/1", method=b"POST", body=b"x", end=False)
        server = self.server()
        two = h2.request(b"/2", method=b"POST", body=b"y", end=False)
        server.read()
        server.respond(1, b"part", end=False)
        server.backend.close()
        h2.read()
        self.assertEqual(h2.resets[one], ErrorCodes.INTERNAL_ERROR)
        self.assertEqual(h2.responses[two][b":status"], b"502")
        self.assertEqual(sorted(r.termination for r in self.log.records), ["SD", "SH"])

    def test_goAwayRetriesUnprocessed(self):
        """
        A GOAWAY: a stream above its last stream id is sent again on a new
        connection, one below finishes.
        """
        h2 = self.connectH2()
        one = h2.request(b"/1")
        server = self.server()
        two = h2.request(b"/2")
        server.read()
        # The GOAWAY written by hand: the h2 library would send nothing
        # more on a connection it closed.
        server.backend.send(GoAwayFrame(0, last_stream_id=1).serialize())
        h2.read()
        self.assertEqual(self.pendingAttempts(), 1)
        server.respond(1, b"one")
        h2.read()
        other = self.server()
        self.assertEqual(dict(other.requests[1])[b":path"], b"/2")
        other.respond(1, b"two")
        h2.read()
        self.assertEqual(h2.bodies, {one: b"one", two: b"two"})

    def test_backpressureUpstreamWindow(self):
        """
        Request DATA beyond the server's window waits, and the client's
        DATA is not acknowledged meanwhile: its window closes.
        """
        h2 = self.connectH2()
        sid = h2.request(b"/up", method=b"POST", end=False)
        server = self.server()
        server.holdWindow = True
        stream = h2.client.protocol.http2.streams[sid]
        sent = 0
        for _ in range(12):
            window = h2.conn.local_flow_control_window(sid)
            if window <= 0:
                break
            chunk = min(16384, window)
            h2.conn.send_data(sid, b"x" * chunk)
            sent += chunk
            h2.flush()
            server.read()
        # The server got its window's worth; the proxy holds at most one
        # window more, and the client can send no more.
        self.assertEqual(len(server.bodies[1]), 65535)
        self.assertTrue(stream.exchange.backend.writeBlocked)
        self.assertEqual(h2.conn.local_flow_control_window(sid), 0)
        self.assertLessEqual(sent, 2 * 65535)
        server.holdWindow = False
        server.conn.acknowledge_received_data(server.unacked.pop(1), 1)
        server.flush()
        h2.read()
        server.read()
        self.assertEqual(len(server.bodies[1]), sent)
        self.assertFalse(stream.exchange.backend.writeBlocked)
        self.assertGreater(h2.conn.local_flow_control_window(sid), 0)

    def test_backpressureClientWindow(self):
        """
        Response DATA the client's window holds back is not acknowledged
        to the server: the server's window of that stream closes.
        """
        h2 = self.connectH2()
        h2.holdWindow = True
        sid = h2.request(b"/down", method=b"POST", end=False)
        server = self.server()
        server.respond(1, b"", end=False)
        for _ in range(6):
            if server.conn.local_flow_control_window(1) <= 0:
                break
            server.conn.send_data(1, b"y" * min(16384, server.conn.local_flow_control_window(1)))
            server.flush()
            h2.read()
        self.assertEqual(len(h2.bodies[sid]), 65535)
        # What the client holds back is bounded by the server's window.
        self.assertLessEqual(server.conn.local_flow_control_window(1), 65535 - 65535 + 65535)
        sent = 65535 - server.conn.local_flow_control_window(1)
        self.assertGreater(sent, 0)
        h2.conn.acknowledge_received_data(65535, sid)
        h2.holdWindow = False
        h2.flush()
        server.read()
        self.assertEqual(server.conn.local_flow_control_window(1), 65535)

    def test_idleConnectionClosed(self):
        h2 = self.connectH2()
        h2.request(b"/1")
        server = self.server()
        server.respond(1, b"x")
        h2.read()
        self.reactor.advance(self.pool.options.reuseIdleTimeout - 1)
        self.assertFalse(server.backend.transport.disconnecting)
        self.reactor.advance(2)
        events = server.conn.receive_data(server.backend.received())
        self.assertTrue(any(isinstance(event, ConnectionTerminated) for event in events))
        self.assertTrue(server.backend.transport.disconnecting)
        self.assertEqual(self.factory.routes[0].backends.connections(), [])


class HTTP11ClientTests(UpstreamTestCase):
    """
    HTTP/1.1 clients routed to an h2 pool: each request one stream.
    """

    def test_lengthResponse(self):
        client = self.connectClient()
        client.send(b"GET /x HTTP/1.1\r\nHost: a.example\r\nTE: trailers\r\n\r\n")
        server = self.server()
        fields = server.requests[1]
        self.assertEqual(fields[:4], [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.example"), (b":path", b"/x")])
        self.assertIn(1, server.ended)
        server.conn.send_headers(1, [(b":status", b"200"), (b"content-length", b"2")])
        server.conn.send_data(1, b"ok", end_stream=True)
        server.flush()
        data = client.received()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data)
        self.assertIn(b"content-length: 2\r\n", data.lower())
        self.assertTrue(data.endswith(b"\r\n\r\nok"))
        self.assertLastRecord(status=200, termination="--", version=(1, 1))
        # The next request of the connection shares the server connection.
        client.clear()
        client.send(b"GET /y HTTP/1.1\r\nHost: a.example\r\n\r\n")
        server.read()
        self.assertEqual(self.pendingAttempts(), 0)
        self.assertEqual(dict(server.requests[3])[b":path"], b"/y")

    def test_chunkedBothWaysWithTrailers(self):
        """
        A chunked request body goes as DATA; a response without a length
        comes back chunked, its trailers as chunked trailers.
        """
        client = self.connectClient()
        client.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        server = self.server()
        names = dict(server.requests[1])
        self.assertNotIn(b"transfer-encoding", names)
        self.assertEqual(server.bodies[1], b"abc")
        server.respond(1, b"", end=False)
        server.conn.send_data(1, b"hello")
        server.flush()
        client.send(b"2\r\nde\r\n0\r\n\r\n")
        server.read()
        self.assertEqual(server.bodies[1], b"abcde")
        self.assertIn(1, server.ended)
        server.conn.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
        server.flush()
        data = client.received()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data)
        self.assertIn(b"transfer-encoding: chunked", data.lower())
        self.assertTrue(data.endswith(b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n"), data)
        self.assertLastRecord(status=200, termination="--", bytesIn=5)

    def test_headResponseEndedByEmptyData(self):
        """
        The response to HEAD has no body whatever its content-length says,
        and completes when the server ends the stream after its head.
        """
        client = self.connectClient()
        client.send(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
        server = self.server()
        server.conn.send_headers(1, [(b":status", b"200"), (b"content-length", b"1234")])
        server.flush()
        server.conn.end_stream(1)
        server.flush()
        data = client.received()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data)
        self.assertIn(b"content-length: 1234\r\n", data.lower())
        self.assertTrue(data.endswith(b"\r\n\r\n"))
        self.assertLastRecord(status=200, termination="--")

    def test_serverResetBeforeHead(self):
        client = self.connectClient()
        client.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        server = self.server()
        server.conn.reset_stream(1, ErrorCodes.INTERNAL_ERROR)
        server.flush()
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 "))
        self.assertLastRecord(status=502, termination="SH")

    def test_clientGoneCancelsStream(self):
        client = self.connectClient()
        client.send(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        server = self.server()
        client.close()
        server.read()
        self.assertEqual(server.resets[1], ErrorCodes.CANCEL)

    def test_websocketRefused(self):
        client = self.connectClient()
        client.send(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.server()
        self.assertTrue(client.received().startswith(b"HTTP/1.1 502 "))
        self.assertLastRecord(status=502, termination="PR")


class ALPNRefusalTests(UpstreamTestCase):
    def test_serverNotSelectingH2(self):
        """
        With the pool's TLS, a server that did not select h2 by ALPN fails
        the connect attempt (counted, logged, retried); the next attempt
        serves the stream.
        """
        from twisted.internet.address import IPv4Address

        from test_relay import FakeTCPTransport

        h2 = self.connectH2()
        sid = h2.request(b"/svc/Call", method=b"POST", extra=GRPC, body=b"x")
        backends = self.factory.routes[0].backends
        host, port, factory = self.reactor.tcpClients[0][:3]
        self.answered += 1
        transport = FakeTCPTransport()
        transport.negotiatedProtocol = b"http/1.1"
        backends.connector.tls = object()
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        backends.connector.tls = None
        self.assertTrue(transport.disconnecting or transport.disconnected)
        server = self.pool.servers[0]
        self.assertEqual(server.connectErrors, 1)
        self.assertEqual(self.pendingAttempts(), 1)
        upstream = self.server()
        upstream.respond(1, b"ok", trailers=[(b"grpc-status", b"0")])
        h2.read()
        self.assertEqual(h2.trailers[sid], {b"grpc-status": b"0"})


class OpeningTests(UpstreamTestCase):
    def test_burstSharesOneConnection(self):
        """
        Streams arriving while the first connection to their server is
        being opened wait for it instead of opening their own.
        """
        h2 = self.connectH2()
        sids = [h2.request(b"/%d" % (i,)) for i in range(3)]
        self.assertEqual(self.pendingAttempts(), 1)
        server = self.server()
        self.assertEqual(sorted(server.requests), [1, 3, 5])
        for upId in (1, 3, 5):
            server.respond(upId, b"r%d" % (upId,))
        h2.read()
        self.assertEqual(sorted(h2.bodies.values()), [b"r1", b"r3", b"r5"])
        self.assertEqual(len(self.log.records), 3)
        # Each stream held a lease on the server (its maxconn counts
        # streams), all released.
        self.assertEqual(self.pool.servers[0].active, 0)
        self.assertEqual(self.pool.servers[0].totalConnections, 3)
        self.assertTrue(all(sid in h2.ended for sid in sids))

    def test_openerResetWaiterConnects(self):
        """
        The stream that was opening the connection is reset: a stream
        waiting for it opens its own.
        """
        h2 = self.connectH2()
        first = h2.request(b"/1")
        second = h2.request(b"/2")
        self.assertEqual(self.pendingAttempts(), 1)
        h2.conn.reset_stream(first, ErrorCodes.CANCEL)
        h2.flush()
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.answered = 1
        server = self.server()
        self.assertEqual(dict(server.requests[1])[b":path"], b"/2")
        server.respond(1, b"two")
        h2.read()
        self.assertEqual(h2.bodies[second], b"two")

    def test_waiterResetStopsWaiting(self):
        h2 = self.connectH2()
        h2.request(b"/1")
        second = h2.request(b"/2")
        h2.conn.reset_stream(second, ErrorCodes.CANCEL)
        h2.flush()
        server = self.server()
        self.assertEqual(sorted(server.requests), [1])
        self.assertEqual(self.log.records[-1].termination, "CC")


class LimitsTests(UpstreamTestCase):
    def setUp(self):
        H2TestCase.setUp(self)
        self.makeFactory(self.h2Listener(), pools=None, protocol="h2", count=1, maxStreams=2, responseTimeout=5.0)

    def test_maxStreams(self):
        """
        max_streams caps the streams of one connection below the server's
        own limit: a third stream opens another connection.
        """
        h2 = self.connectH2()
        h2.request(b"/1")
        server = self.server()
        h2.request(b"/2")
        server.read()
        self.assertEqual(self.pendingAttempts(), 0)
        h2.request(b"/3")
        self.assertEqual(self.pendingAttempts(), 1)
        self.assertEqual(sorted(server.requests), [1, 3])

    def test_responseTimeout(self):
        """
        No response head within timeouts.response: 504 on the client's
        stream, the server's stream cancelled.
        """
        h2 = self.connectH2()
        sid = h2.request(b"/slow")
        server = self.server()
        self.reactor.advance(6)
        h2.read()
        server.read()
        self.assertEqual(h2.responses[sid][b":status"], b"504")
        self.assertEqual(server.resets[1], ErrorCodes.CANCEL)
        self.assertLastRecord(status=504, termination="sH")


class SharedWindowTests(UpstreamTestCase):
    def test_slowClientHoldsOnlyItsStream(self):
        """
        A client that does not read holds its stream's window on the
        shared server connection, not the connection's: another client's
        stream there keeps flowing.
        """
        slow = self.connectH2()
        slow.holdWindow = True
        one = slow.request(b"/slow", method=b"POST", end=False)
        server = self.server()
        fast = self.connectH2()
        two = fast.request(b"/fast", method=b"POST", end=False)
        server.read()
        self.assertEqual(sorted(server.requests), [1, 3])
        server.respond(1, b"", end=False)
        server.respond(3, b"", end=False)
        while server.conn.local_flow_control_window(1) > 0:
            size = min(16384, server.conn.local_flow_control_window(1))
            server.conn.send_data(1, b"z" * size)
            server.flush()
            slow.read()
        self.assertEqual(len(slow.bodies[one]), 65535)
        # Four windows' worth on the other stream, whatever the slow one
        # holds: its window is given back as its client takes the data.
        sent = 0
        for _ in range(64):
            if sent >= 4 * 65535:
                break
            size = min(16384, server.conn.local_flow_control_window(3))
            self.assertGreater(size, 0)
            server.conn.send_data(3, b"f" * size)
            sent += size
            server.flush()
            fast.read()
        self.assertEqual(len(fast.bodies[two]), sent)
        self.assertGreaterEqual(sent, 4 * 65535)
        self.assertEqual(server.conn.local_flow_control_window(1), 0)
