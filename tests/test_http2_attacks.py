"""
The published HTTP/2 attacks, each sent to the HTTP/2 front in memory:
Rapid Reset (CVE-2023-44487), CONTINUATION flood, HPACK bomb, SETTINGS,
PING, PRIORITY and empty-DATA floods, too many streams, oversized headers,
and too many requests on one connection. Each ends in a GOAWAY with the
error it deserves (or refused streams), one log line, no server
connections for what was never a request, and other clients served.
"""

from __future__ import annotations

from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, PingFrame, PriorityFrame, SettingsFrame
from twisted.logger import globalLogPublisher

from lbproxy.http.config import HTTPLimits
from lbproxy.http2.config import HTTP2Settings

from test_http_front import OK
from test_http2_front import H2Client, H2TestCase

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"example.com")]


class RawClient:
    """
    A client writing frames of its own making (hyperframe), to send what
    a well-behaved h2 client would refuse to.
    """

    def __init__(self, client):
        self.client = client
        self.encoder = Encoder()
        client.send(PREFACE + SettingsFrame(0).serialize())

    def send(self, *frames):
        self.client.send(b"".join(frame.serialize() for frame in frames))

    def headers(self, streamId, fields=GET, flags=("END_HEADERS", "END_STREAM")):
        frame = HeadersFrame(streamId)
        frame.data = self.encoder.encode(fields)
        frame.flags = set(flags)
        return frame

    def goAway(self):
        """
        The error code of the GOAWAY the proxy sent, or None.
        """
        from h2.config import H2Configuration
        from h2.connection import H2Connection

        # A client connection state to read the server's frames with.
        reader = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        reader.initiate_connection()
        reader.data_to_send()
        data = self.client.received()
        code = None
        try:
            for event in reader.receive_data(data):
                if isinstance(event, ConnectionTerminated):
                    code = event.error_code
        except Exception:
            # Frames for streams this reader never opened: look at the
            # frames themselves.
            from hyperframe.frame import Frame, GoAwayFrame

            offset = 0
            while offset + 9 <= len(data):
                frame, length = Frame.parse_frame_header(memoryview(data[offset : offset + 9]))
                frame.parse_body(memoryview(data[offset + 9 : offset + 9 + length]))
                offset += 9 + length
                if isinstance(frame, GoAwayFrame):
                    code = ErrorCodes(frame.error_code)
        return code


class AttackTestCase(H2TestCase):
    def setUp(self):
        super().setUp()
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def closeLines(self):
        return [e for e in self.logged if "closed an HTTP/2 connection" in e.get("log_format", "")]

    def assertOthersServed(self):
        """
        A new client of the same listener is served.
        """
        h2 = self.connectH2()
        sid = h2.request(b"/other")
        if self.pendingAttempts():
            self.connectBackend().send(OK)
        else:
            self.backends[-1].send(OK)
        h2.read()
        self.assertEqual(h2.bodies.get(sid), b"ok")

    def attacker(self, **settings):
        self.makeH2Factory(HTTP2Settings(cleartext=True, **settings))
        return RawClient(self.connectClient())


class AttackTests(AttackTestCase):
    def test_rapidReset(self):
        """
        CVE-2023-44487: streams opened and reset at once are never placed;
        past max_resets the connection gets GOAWAY ENHANCE_YOUR_CALM.
        """
        raw = self.attacker(maxResets=20)
        from hyperframe.frame import RstStreamFrame

        for n in range(30):
            sid = 1 + 2 * n
            reset = RstStreamFrame(sid)
            reset.error_code = ErrorCodes.CANCEL
            raw.send(raw.headers(sid, flags=("END_HEADERS",)), reset)
            if raw.client.closing:
                break
        self.assertEqual(len(self.reactor.tcpClients), 0)
        self.assertEqual(raw.goAway(), ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(raw.client.closing)
        [line] = self.closeLines()
        self.assertIn("RST_STREAM", line["why"])
        self.assertOthersServed()

    def test_rapidResetAcrossReads(self):
        """
        Streams reset after they were placed: their server connections are
        dropped, and the resets still count.
        """
        raw = self.attacker(maxResets=5)
        from hyperframe.frame import RstStreamFrame

        for n in range(6):
            sid = 1 + 2 * n
            raw.send(raw.headers(sid, flags=("END_HEADERS",)))
            reset = RstStreamFrame(sid)
            reset.error_code = ErrorCodes.CANCEL
            raw.send(reset)
        self.assertEqual(raw.goAway(), ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(all(r.termination in ("CC", "CD") for r in self.log.records))

    def test_continuationFlood(self):
        """
        CONTINUATION frames without end: the h2 library stops after 64
        (PROTOCOL_ERROR); what is buffered meanwhile is bounded by the
        frame size.
        """
        raw = self.attacker()
        frame = raw.headers(1, flags=())
        raw.send(frame)
        for _ in range(100):
            more = ContinuationFrame(1)
            more.data = b"\x00" * 1000
            raw.send(more)
            if raw.client.closing:
                break
        self.assertTrue(raw.client.closing)
        self.assertEqual(raw.goAway(), ErrorCodes.PROTOCOL_ERROR)
        self.assertEqual(len(self.closeLines()), 1)
        self.assertOthersServed()

    def test_hpackBomb(self):
        """
        A small header block decoding to far more than the header size
        limit (one large entry in the dynamic table, referenced again and
        again): GOAWAY ENHANCE_YOUR_CALM.
        """
        raw = self.attacker()
        fields = GET + [(b"x-bomb", b"a" * 4000)]
        block = raw.encoder.encode(fields)
        # Index 62: the newest dynamic table entry, x-bomb.
        frame = HeadersFrame(1)
        frame.data = block + b"\xbe" * 200
        frame.flags = {"END_HEADERS", "END_STREAM"}
        self.assertLess(len(frame.data), 5000)
        raw.send(frame)
        self.assertEqual(raw.goAway(), ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(raw.client.closing)
        self.assertEqual(len(self.reactor.tcpClients), 0)
        self.assertOthersServed()

    def test_oversizedHeaders(self):
        """
        One header block larger than limits.header_size, in CONTINUATIONs.
        """
        self.makeH2Factory(HTTP2Settings(cleartext=True), limits=HTTPLimits(headerSize=8192))
        raw = RawClient(self.connectClient())
        block = raw.encoder.encode(GET + [(b"x-big", b"b" * 20000)])
        first = HeadersFrame(1)
        first.data = block[:16000]
        first.flags = {"END_STREAM"}
        last = ContinuationFrame(1)
        last.data = block[16000:]
        last.flags = {"END_HEADERS"}
        raw.send(first, last)
        self.assertEqual(raw.goAway(), ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertEqual(len(self.reactor.tcpClients), 0)

    def test_settingsFlood(self):
        raw = self.attacker(maxSettings=10)
        raw.send(*[SettingsFrame(0) for _ in range(20)])
        self.assertEqual(raw.goAway(), ErrorCodes.ENHANCE_YOUR_CALM)
        [line] = self.closeLines()
        self.assertIn("SETTINGS", line["why"])
        self.assertOthersServed()

    def test_pingFlood(self):
        raw = self.attacker(maxPings=10)
        pings = []
        for n in range(50):
            ping = PingFrame(0)
            ping.opaque_data = b"%08d" % n
            pings.append(ping)
        raw.send(*pings)
        self.assertEqual(raw.goAway(), ErrorCodes.ENHANCE_YOUR_CALM)
        # No answer to the flood: only the GOAWAY.
        self.assertEqual(raw.client.received().count(b"\x00\x00\x08\x06\x01"), 0)
        self.assertOthersServed()

    def test_pingsWithinLimitAcrossWindows(self):
        """
        The limits count per window: a client pinging now and then is fine.
        """
        raw = self.attacker(maxPings=5, floodWindow=1.0)
        for n in range(4):
            for _ in range(5):
                ping = PingFrame(0)
                ping.opaque_data = b"12345678"
                raw.send(ping)
            self.reactor.advance(1.1)
        self.assertFalse(raw.client.closing)

    def test_emptyDataFlood(self):
        raw = self.attacker(maxEmptyFrames=10)
        raw.send(raw.headers(1, flags=("END_HEADERS",)))
        backend = self.connectBackend()
        raw.send(*[DataFrame(1) for _ in range(20)])
        self.assertEqual(raw.goAway(), ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(backend.transport.disconnecting or backend.transport.disconnected)
        self.assertOthersServed()

    def test_priorityFlood(self):
        raw = self.attacker(maxPriority=10)
        frames = []
        for n in range(20):
            priority = PriorityFrame(1 + 2 * n)
            priority.depends_on = 0
            priority.stream_weight = 16
            frames.append(priority)
        raw.send(*frames)
        self.assertEqual(raw.goAway(), ErrorCodes.ENHANCE_YOUR_CALM)

    def test_tooManyStreams(self):
        """
        More streams at once than max_concurrent_streams: the h2 library
        refuses the connection (PROTOCOL_ERROR); no stream is placed
        beyond the limit.
        """
        raw = self.attacker(maxConcurrentStreams=4)
        raw.send(*[raw.headers(1 + 2 * n, flags=("END_HEADERS",)) for n in range(6)])
        self.assertEqual(raw.goAway(), ErrorCodes.PROTOCOL_ERROR)
        self.assertLessEqual(len(self.reactor.tcpClients), 4)
        self.assertTrue(raw.client.closing)
        self.assertOthersServed()

    def test_maxRequests(self):
        """
        After max_requests streams, new ones are refused (REFUSED_STREAM:
        the client may send them elsewhere) and the connection closes
        with GOAWAY NO_ERROR once its last response is sent.
        """
        self.makeH2Factory(HTTP2Settings(cleartext=True, maxRequests=2))
        h2 = self.connectH2()
        one = h2.request(b"/1")
        two = h2.request(b"/2")
        three = h2.request(b"/3")
        self.assertEqual(h2.resets.get(three), ErrorCodes.REFUSED_STREAM)
        self.connectBackend().send(OK)
        self.connectBackend().send(OK)
        h2.read()
        self.assertEqual((h2.bodies[one], h2.bodies[two]), (b"ok", b"ok"))
        self.assertEqual(h2.terminated, ErrorCodes.NO_ERROR)
        self.assertTrue(h2.client.closing)

    def test_keepaliveTimeout(self):
        self.makeH2Factory(keepaliveTimeout=5.0)
        h2 = self.connectH2()
        sid = h2.request()
        self.connectBackend().send(OK)
        h2.read()
        self.assertEqual(h2.bodies[sid], b"ok")
        self.reactor.advance(6)
        h2.read()
        self.assertEqual(h2.terminated, ErrorCodes.NO_ERROR)
        self.assertTrue(h2.client.closing)

    def test_listenerStopping(self):
        self.makeH2Factory()
        h2 = self.connectH2()
        sid = h2.request()
        backend = self.connectBackend()
        h2.client.protocol.listenerStopping()
        self.assertFalse(h2.client.closing)
        backend.send(OK)
        h2.read()
        self.assertEqual(h2.bodies[sid], b"ok")
        self.assertEqual(h2.terminated, ErrorCodes.NO_ERROR)

    def test_clientGoneEndsStreams(self):
        self.makeH2Factory()
        h2 = self.connectH2()
        h2.request()
        backend = self.connectBackend()
        h2.client.close()
        self.assertTrue(backend.transport.disconnecting or backend.transport.disconnected)
        self.assertLastRecord(termination="CH")
        self.assertEqual(self.factory.listener.sessions, set())


class StreamErrorTests(AttackTestCase):
    def test_badRequestHeadersKillOnlyConnection(self):
        """
        A connection-specific field (RFC 9113 §8.2.2) is refused by the h2
        library: PROTOCOL_ERROR for that connection, others served.
        """
        raw = self.attacker()
        raw.send(raw.headers(1, GET + [(b"connection", b"keep-alive")]))
        self.assertEqual(raw.goAway(), ErrorCodes.PROTOCOL_ERROR)
        self.assertEqual(len(self.reactor.tcpClients), 0)
        self.assertOthersServed()

    def test_malformedNeverForwarded(self):
        """
        Each malformed request of RFC 9113 §8.1.1-§8.3 closes its
        connection (PROTOCOL_ERROR) without reaching a server.
        """
        cases = [
            GET + [(b"transfer-encoding", b"chunked")],
            GET + [(b"te", b"gzip")],
            GET + [(b"upgrade", b"websocket")],
            GET + [(b"host", b"other.example")],
            [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"example.com")],
            GET + [(b":path", b"/again")],
            [(b"x-first", b"1")] + GET,
            GET + [(b"X-Upper", b"1")],
            GET + [(b"x-bad", b"a\r\nb")],
        ]
        self.makeH2Factory()
        for fields in cases:
            raw = RawClient(self.connectClient())
            raw.send(raw.headers(1, fields))
            self.assertEqual(raw.goAway(), ErrorCodes.PROTOCOL_ERROR, fields)
            self.assertTrue(raw.client.closing)
        self.assertEqual(len(self.reactor.tcpClients), 0)

    def test_contentLengthMismatch(self):
        """
        More DATA than content-length: the excess never reaches the
        server, whose connection is dropped with the client's.
        """
        raw = self.attacker()
        raw.send(raw.headers(1, GET + [(b"content-length", b"3")], flags=("END_HEADERS",)))
        backend = self.connectBackend()
        data = DataFrame(1)
        data.data = b"abcdef"
        raw.send(data)
        self.assertEqual(raw.goAway(), ErrorCodes.PROTOCOL_ERROR)
        self.assertNotIn(b"abc", backend.received())
        self.assertTrue(backend.transport.disconnecting or backend.transport.disconnected)

    def test_bodyLimit(self):
        self.makeH2Factory(limits=HTTPLimits(bodySize=10))
        h2 = self.connectH2()
        sid = h2.request(method=b"POST", body=b"x" * 20, end=False)
        h2.read()
        self.assertEqual(h2.responses[sid][b":status"], b"413")
        self.assertLastRecord(status=413, termination="PD")


def test_clientHelper():
    """
    (The H2Client helper is shared with the front's tests.)
    """
    assert H2Client.holdWindow is False
