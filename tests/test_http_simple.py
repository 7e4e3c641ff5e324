"""
Tests for the one-step parsing of messages in the simple form
(L{RequestParser.simpleRequest}, L{ResponseParser.simpleResponse}) and the
front's use of it: whatever the one-step path takes, the strict path takes
too, with the same head, body and framing, and the front sends the same
bytes and logs the same record either way.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.http import parser as parsermodule
from lbproxy.http.errors import HTTPParseError
from lbproxy.http.message import BodyKind, Headers
from lbproxy.http.parser import RequestParser, ResponseParser
from lbproxy.http.rewrite import stripHopByHop
from lbproxy.http.serialize import _fieldLines

from test_http_front import ProxyTestCase, makeListener, makePool

WRK = b"GET /100B HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
BROWSER = (
    b"GET /static/app.js?v=2 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: */*\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=4f2a9c; theme=dark\r\n"
    b"\r\n"
)
POST = b"POST /api HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello"
NGINX = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Date: Sat, 28 Nov 2026 05:40:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Length: 10\r\n"
    b"Connection: keep-alive\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b'ETag: "6928c4a0-a"\r\n'
    b"\r\n"
    b"0123456789"
)


class Receiver:
    def __init__(self):
        self.events = []

    def headersComplete(self, head):
        self.events.append(("head", head))

    def bodyData(self, data):
        self.events.append(("body", data))

    def messageComplete(self):
        self.events.append(("complete",))


def strictRequest(data: bytes):
    """
    What the strict path makes of C{data}: its events, or the error status.
    """
    receiver = Receiver()
    try:
        RequestParser(receiver).dataReceived(data)
    except HTTPParseError as error:
        return error.status
    return receiver.events


def simpleRequest(data: bytes, **limits):
    """
    What the one-step path makes of C{data}, as events; None when it
    declines.
    """
    result = RequestParser(Receiver(), **limits).simpleRequest(data)
    if result is None:
        return None
    head, body = result
    return [("head", head)] + ([("body", body)] if body else []) + [("complete",)]


def strictResponse(data: bytes, method: bytes = b"GET"):
    receiver = Receiver()
    parser = ResponseParser(receiver)
    parser.expectResponse(method)
    try:
        parser.dataReceived(data)
    except HTTPParseError as error:
        return error.status
    return receiver.events


def simpleResponse(data: bytes, method: bytes = b"GET"):
    parser = ResponseParser(Receiver())
    parser.expectResponse(method)
    result = parser.simpleResponse(data)
    if result is None:
        return None
    head, body, complete = result
    return [("head", head)] + ([("body", body)] if body else []) + (
        [("complete",)] if complete else []
    )


def requestVariants():
    """
    Requests in and around the simple form: every byte in the target, a
    field name, a field value and Host, every method, bodies, options.
    """
    for byte in range(256):
        b = bytes([byte])
        yield b"GET /a" + b + b"b HTTP/1.1\r\nHost: a\r\n\r\n"
        yield b"GET /a HTTP/1.1\r\nHost: a\r\nX-A: a" + b + b"b\r\n\r\n"
        yield b"GET /a HTTP/1.1\r\nHost: a\r\nX" + b + b"A: ab\r\n\r\n"
        yield b"GET /a HTTP/1.1\r\nHost: a" + b + b"\r\n\r\n"
        yield b"GET /a HTTP/1.1\r\nHost: a\r\nX-A:" + b + b"\r\n\r\n"
    for method in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT",
                   b"TRACE", b"get", b"FOO"):
        yield method + b" /x?y=1 HTTP/1.0\r\nHost: a:80\r\nConnection: keep-alive, close\r\n\r\n"
        yield method + b" /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        yield method + b" /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
        yield method + b" /x HTTP/1.1\r\nhost:   a   \r\nX-Y:\r\nX-Z: \t \r\n\r\n"
    yield WRK
    yield BROWSER
    yield POST
    yield b"GET / HTTP/1.1\r\n\r\n"
    yield b"GET / HTTP/1.0\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: \r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: [zz]\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n"
    yield b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"
    yield b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"
    yield b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"
    yield b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"
    yield b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"
    yield b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\n X: folded\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nX: b\rc\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nx"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nxy"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: x-a, , keep-alive\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: 5\r\nTE: trailers\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + b" " * 3000 + b"b" + b" " * 3000 + b"\r\n\r\n"


def responseVariants():
    for byte in range(256):
        b = bytes([byte])
        yield b"HTTP/1.1 200 O" + b + b"K\r\nContent-Length: 1\r\n\r\nx"
        yield b"HTTP/1.1 200 OK\r\nX-A: a" + b + b"b\r\nContent-Length: 1\r\n\r\nx"
        yield b"HTTP/1.1 200 OK\r\nX" + b + b"A: b\r\nContent-Length: 1\r\n\r\nx"
    for status in (100, 101, 199, 200, 204, 206, 301, 304, 404, 500, 599, 600):
        yield b"HTTP/1.0 %d X\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n" % status
        yield b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % status
        yield b"HTTP/1.1 %d \r\nContent-Length: 2\r\n\r\nab" % status
        yield b"HTTP/1.1 %d\r\nContent-Length: 2\r\n\r\nab" % status
    yield NGINX
    yield NGINX[:-5]
    yield NGINX + b"x"
    yield NGINX[: NGINX.index(b"\r\n\r\n") + 4]
    yield b"HTTP/1.1 200 OK\r\n\r\nabc"
    yield b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\nx"
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nUpgrade: h2c\r\nTE: x\r\n\r\nx"
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nSet-Cookie: a=b\r\nSet-Cookie: c=d\r\n\r\nx"


class SimpleRequestTests(SynchronousTestCase):
    def test_commonRequestsTaken(self):
        """
        wrk's request, a browser's and a small POST are in the simple form.
        """
        for data in (WRK, BROWSER, POST):
            self.assertIsNotNone(simpleRequest(data), data)

    def test_sameAsStrict(self):
        """
        Every request the one-step path takes, the strict path takes with
        the same head (Connection options and all) and body.
        """
        taken = 0
        for data in requestVariants():
            simple = simpleRequest(data)
            if simple is None:
                continue
            taken += 1
            strict = strictRequest(data)
            self.assertEqual(simple, strict, data)
            self.assertEqual(simple[0][1].connection, strict[0][1].connection, data)
            self.assertTrue(simple[0][1].checked)
        self.assertGreater(taken, 300)

    def test_refusedByStrictNeverTaken(self):
        """
        Smuggling and syntax problems are left to the strict path.
        """
        for data in requestVariants():
            if isinstance(strictRequest(data), int):
                self.assertIsNone(simpleRequest(data), data)

    def test_limits(self):
        """
        A request over a limit is left to the strict path, which refuses it
        with the limit's status.
        """
        self.assertIsNone(simpleRequest(WRK, maxRequestLine=10))
        self.assertIsNone(simpleRequest(BROWSER, maxHeaderBytes=100))
        self.assertIsNone(simpleRequest(BROWSER, maxHeaders=3))
        self.assertIsNone(simpleRequest(POST, maxBodySize=4))

    def test_parserStateAfter(self):
        """
        The parser is left paused, as after delivering the message to a
        receiver that paused it, and parses the next request on resuming.
        """
        receiver = Receiver()
        parser = RequestParser(receiver)
        head, _ = parser.simpleRequest(WRK)
        self.assertTrue(parser.paused)
        self.assertTrue(parser.idle)
        parser.resumeParsing()
        parser.dataReceived(b"GET /2 HTTP/1.1\r\nHost: a\r\n")
        self.assertIsNone(parser.simpleRequest(b"\r\n"))
        parser.dataReceived(b"\r\n")
        self.assertEqual(receiver.events[0][1].target, b"/2")

    def test_notWhileBusy(self):
        """
        While the parser holds part of a message, or is paused, the
        one-step path declines.
        """
        parser = RequestParser(Receiver())
        parser.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertIsNone(parser.simpleRequest(WRK))
        parser = RequestParser(Receiver())
        parser.pauseParsing()
        self.assertIsNone(parser.simpleRequest(WRK))

    def test_closeAfter(self):
        """
        After a request that closes the connection, later bytes are
        ignored, as on the strict path.
        """
        receiver = Receiver()
        parser = RequestParser(receiver)
        head, _ = parser.simpleRequest(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        self.assertFalse(head.keepAlive)
        parser.resumeParsing()
        parser.dataReceived(WRK)
        self.assertEqual(receiver.events, [])

    def test_rememberedLinesBounded(self):
        """
        The tables of remembered lines are emptied when full.
        """
        for index in range(parsermodule._SIMPLE_LIMIT + 10):
            simpleRequest(b"GET /%d HTTP/1.1\r\nHost: a\r\nX-N: %d\r\n\r\n" % (index, index))
        self.assertLessEqual(len(parsermodule._simpleFields), parsermodule._SIMPLE_LIMIT)
        self.assertLessEqual(
            len(parsermodule._simpleRequestLines), parsermodule._SIMPLE_LIMIT
        )
        self.assertLessEqual(
            len(parsermodule._simpleRequestHeads), parsermodule._SIMPLE_HEAD_LIMIT
        )

    def test_rememberedHeadLimits(self):
        """
        A head remembered whole is still held to each parser's own limits:
        one that a parser with the defaults took, a parser with smaller
        limits declines, as it would have the first time.
        """
        head = b"GET /limits HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
        self.assertIsNotNone(simpleRequest(head))
        self.assertIn(head[:-4], parsermodule._simpleRequestHeads)
        self.assertIsNone(simpleRequest(head, maxHeaders=2))
        self.assertIsNone(simpleRequest(head, maxRequestLine=10))
        self.assertIsNone(simpleRequest(head, maxHeaderBytes=20))
        self.assertIsNotNone(simpleRequest(head, maxHeaders=3))
        posted = b"POST /limits HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        self.assertIsNotNone(simpleRequest(posted))
        self.assertIsNone(simpleRequest(posted, maxBodySize=2))
        self.assertIsNone(simpleRequest(posted[:-1]))
        self.assertEqual(strictRequest(posted[:-1] + b"x"), simpleRequest(posted[:-1] + b"x"))

    def test_rememberedHeadsFresh(self):
        """
        Heads parsed from the same bytes share nothing mutable: changing
        one's fields leaves the next one's as received.
        """
        first = RequestParser(Receiver()).simpleRequest(WRK)[0]
        first.headers.add(b"X-Added", b"1")
        second = RequestParser(Receiver()).simpleRequest(WRK)[0]
        self.assertIsNot(first, second)
        self.assertEqual(second.headers.items(), [(b"Host", b"127.0.0.1:8080")])


class SimpleResponseTests(SynchronousTestCase):
    def test_nginxTaken(self):
        self.assertIsNotNone(simpleResponse(NGINX))

    def test_rememberedHead(self):
        """
        A response head remembered whole gives the same result again, is
        still held to each parser's limits and the request's method, and
        each response gets its own fields.
        """
        first = simpleResponse(NGINX)
        self.assertIn(NGINX[: NGINX.find(b"\r\n\r\n")], parsermodule._simpleResponseHeads)
        second = simpleResponse(NGINX)
        self.assertEqual(first, second)
        self.assertIsNot(first[0][1].headers._items, second[0][1].headers._items)
        headOnly = NGINX[: NGINX.find(b"\r\n\r\n") + 4]
        self.assertIsNotNone(simpleResponse(headOnly, b"HEAD"))
        self.assertEqual(strictResponse(headOnly, b"HEAD"), simpleResponse(headOnly, b"HEAD"))
        self.assertIsNone(simpleResponse(NGINX, b"HEAD"))
        for limits in ({"maxHeaders": 3}, {"maxStatusLine": 5}, {"maxHeaderBytes": 40}):
            parser = ResponseParser(Receiver(), **limits)
            parser.expectResponse(b"GET")
            self.assertIsNone(parser.simpleResponse(NGINX))

    def test_rememberedHeadsBounded(self):
        """
        The table of remembered response heads is emptied when full.
        """
        for index in range(parsermodule._SIMPLE_HEAD_LIMIT + 10):
            simpleResponse(b"HTTP/1.1 204 No Content\r\nX-N: %d\r\n\r\n" % (index,))
        self.assertLessEqual(
            len(parsermodule._simpleResponseHeads), parsermodule._SIMPLE_HEAD_LIMIT
        )

    def test_sameAsStrict(self):
        """
        Every response the one-step path takes, the strict path takes with
        the same head and body, for GET and HEAD; its field lines are those
        the serialiser writes after hop-by-hop removal.
        """
        taken = 0
        for method in (b"GET", b"HEAD"):
            for data in responseVariants():
                simple = simpleResponse(data, method)
                if simple is None:
                    continue
                taken += 1
                strict = strictResponse(data, method)
                self.assertEqual(simple, strict, data)
                head = simple[0][1]
                headers = Headers._fromLowered(list(head.headers._items))
                stripHopByHop(headers, head.connection)
                self.assertEqual(
                    head.fields, _fieldLines(headers, BodyKind.NONE, None), data
                )
        self.assertGreater(taken, 100)

    def test_refusedByStrictNeverTaken(self):
        for method in (b"GET", b"HEAD"):
            for data in responseVariants():
                if isinstance(strictResponse(data, method), int):
                    self.assertIsNone(simpleResponse(data, method), data)

    def test_partialBody(self):
        """
        A head with part of its body leaves the parser reading the rest.
        """
        receiver = Receiver()
        parser = ResponseParser(receiver)
        parser.expectResponse(b"GET")
        head, body, complete = parser.simpleResponse(NGINX[:-4])
        self.assertEqual((body, complete), (b"012345", False))
        parser.dataReceived(b"6789")
        self.assertEqual(receiver.events, [("body", b"6789"), ("complete",)])
        self.assertTrue(parser.idle)

    def test_declined(self):
        """
        Interim responses, tunnels, CONNECT and a response nobody asked
        for go the strict way.
        """
        parser = ResponseParser(Receiver())
        self.assertIsNone(parser.simpleResponse(NGINX))
        parser.expectResponse(b"GET", True)
        self.assertIsNone(parser.simpleResponse(NGINX))
        parser = ResponseParser(Receiver())
        parser.expectResponse(b"CONNECT")
        self.assertIsNone(parser.simpleResponse(NGINX))


def splitReads(data: bytes) -> list[bytes]:
    """
    C{data} a byte at a time: the strict path, whatever its form.
    """
    return [data[i : i + 1] for i in range(len(data))]


class FrontTests(ProxyTestCase):
    """
    A request and its response in one read each (the one-step paths) and
    a byte at a time (the strict paths) give the same bytes and records.
    """

    def serve(self, requests, response, split, **listenerOptions):
        self.setUp()
        self.makeFactory(listener=makeListener(**listenerOptions))
        client = self.connectClient()
        sent = []
        for request in requests:
            for piece in splitReads(request) if split else [request]:
                client.send(piece)
            if self.pendingAttempts():
                self.connectBackend()
            carrier = client.protocol.exchange.backend
            [backend] = [b for b in self.backends if b.protocol is carrier]
            sent.append(backend.received())
            backend.clear()
            for piece in splitReads(response) if split else [response]:
                backend.send(piece)
        records = [
            (r.status, r.bytesOut, r.bytesIn, r.termination, r.cookie, r.xff, r.method, r.target)
            for r in self.log.records
        ]
        return sent, client.received(), records, client.closing

    def assertSame(self, requests, response, **listenerOptions):
        taken = []

        def counting(original):
            def wrapper(parser, data):
                result = original(parser, data)
                if result is not None:
                    taken.append(type(parser))
                return result

            return wrapper

        self.patch(RequestParser, "simpleRequest", counting(RequestParser.simpleRequest))
        self.patch(ResponseParser, "simpleResponse", counting(ResponseParser.simpleResponse))
        fast = self.serve(requests, response, False, **listenerOptions)
        # Both one-step paths were taken for every request.
        self.assertEqual(taken.count(RequestParser), len(requests))
        self.assertEqual(taken.count(ResponseParser), len(requests))
        strict = self.serve(requests, response, True, **listenerOptions)
        self.assertEqual(fast, strict)
        return fast

    def test_keepAlive(self):
        sent, received, records, closing = self.assertSame([WRK, BROWSER, POST], NGINX)
        self.assertEqual(len(records), 3)
        self.assertFalse(closing)
        self.assertIn(b"Content-Length: 5\r\n\r\nhello", sent[2])

    def test_close(self):
        request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        sent, received, records, closing = self.assertSame([request], NGINX)
        self.assertIn(b"Connection: close\r\n", received)
        self.assertTrue(closing)

    def test_http10(self):
        request = b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
        sent, received, records, closing = self.assertSame([request, request], NGINX)
        self.assertIn(b"Connection: keep-alive\r\n", received)
        self.assertFalse(closing)

    def test_responseClosing(self):
        response = NGINX.replace(b"Connection: keep-alive", b"Connection: close")
        self.assertSame([WRK, WRK], response)

    def test_connectionNamesFields(self):
        request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-a\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
        sent, received, records, closing = self.assertSame([request], NGINX)
        self.assertNotIn(b"X-A", sent[0])
        self.assertIn(b"X-B: 2", sent[0])

    def test_forwardingFieldsReplaced(self):
        request = (
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\n"
            b"X-Client-Subject: CN=admin\r\n\r\n"
        )
        sent, received, records, closing = self.assertSame([request], NGINX)
        self.assertNotIn(b"10.0.0.1", sent[0])
        self.assertNotIn(b"CN=admin", sent[0])

    def test_headResponse(self):
        request = b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"
        response = NGINX[: NGINX.index(b"\r\n\r\n") + 4]
        self.assertSame([request, request], response)

    def test_cookiePersistence(self):
        """
        With a persistence cookie the response fields change: the general
        way, the same result.
        """
        from lbproxy.config import CookieConfig

        def makeFactory(listener=None, pools=None, **options):
            return ProxyTestCase.makeFactory(
                self, listener, {"web": makePool(cookie=CookieConfig(name="SRV"))}
            )

        self.makeFactory = makeFactory
        sent, received, records, closing = self.assertSame([WRK, WRK], NGINX)
        self.assertIn(b"Set-Cookie: SRV=", received)


class ProducerOnCloseTests(ProxyTestCase):
    """
    A connection the proxy closes stops being its transport's producer
    first: a TLS transport (TLSMemoryBIOProtocol) sends its close alert and
    closes only once no producer is registered.
    """

    def test_clientConnectionClosed(self):
        self.makeFactory()
        client = self.connectClient()
        self.exchange(client, b"GET / HTTP/1.0\r\n\r\n", NGINX)
        self.assertTrue(client.closing)
        self.assertIsNone(client.transport.producer)

    def test_backendConnectionClosed(self):
        self.makeFactory()
        client = self.connectClient()
        backend = self.exchange(
            client, WRK, NGINX.replace(b"Connection: keep-alive", b"Connection: close")
        )
        self.assertTrue(backend.transport.disconnecting)
        self.assertIsNone(backend.transport.producer)
        self.assertFalse(client.closing)
        self.assertIs(client.transport.producer, client.protocol)
