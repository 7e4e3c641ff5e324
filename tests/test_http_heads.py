"""
Tests for lbproxy.http.heads, the one builder of heads, and for the cache
in front of it: whatever a head cache gives back for some bytes is exactly
what the strict path (llhttp and the builder) made of the same bytes, and
nothing llhttp or the builder refuses ever gets into a cache, for every
byte value at each position around the common forms.
"""

from __future__ import annotations

import dataclasses

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.http.errors import HTTPParseError
from lbproxy.http.headcache import HeadCache
from lbproxy.http.heads import ResponseRecord
from lbproxy.http.message import BodyKind, Headers, RequestHead, ResponseHead
from lbproxy.http.parser import RequestParser, ResponseParser
from lbproxy.http.rewrite import stripHopByHop
from lbproxy.http.serialize import HeadWriter

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
    """
    Records a parser's events.
    """

    def __init__(self):
        self.events = []

    def headersComplete(self, head):
        self.events.append(("head", head))

    def bodyData(self, data):
        if self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + data)
        else:
            self.events.append(("body", data))

    def messageComplete(self):
        self.events.append(("complete",))


def requestEvents(data: bytes, cache: HeadCache | None = None, **limits):
    """
    What a request parser (with C{cache}) makes of C{data} in one read: its
    events, and the error status it failed with (L{None} if none).
    """
    receiver = Receiver()
    try:
        RequestParser(receiver, cache=cache, **limits).dataReceived(data)
    except HTTPParseError as error:
        return receiver.events, error.status
    return receiver.events, None


def wholeRequest(data: bytes, cache: HeadCache | None, **limits):
    """
    What a request parser's one-step path makes of C{data}, as events, or
    L{None} when it declines.
    """
    parser = RequestParser(Receiver(), cache=cache, **limits)
    whole = parser.wholeMessage(data)
    if whole is None:
        return None
    head, body = whole
    return [("head", head)] + ([("body", body)] if body else []) + [("complete",)]


def responseEvents(data: bytes, method: bytes = b"GET", cache: HeadCache | None = None):
    """
    What a response parser (with C{cache}) makes of C{data} answering
    C{method}, then the end of the connection: its events, and the error
    status it failed with (L{None} if none).
    """
    receiver = Receiver()
    parser = ResponseParser(receiver, cache=cache)
    parser.expectResponse(method)
    try:
        parser.dataReceived(data)
        parser.connectionLost()
    except HTTPParseError as error:
        return receiver.events, error.status
    return receiver.events, None


def wholeResponse(data: bytes, cache: HeadCache, method: bytes = b"GET"):
    parser = ResponseParser(Receiver(), cache=cache)
    parser.expectResponse(method)
    whole = parser.wholeMessage(data)
    if whole is None:
        return None
    head, body = whole
    return [("head", head)] + ([("body", body)] if body else []) + [("complete",)]


def headBytes(data: bytes) -> bytes:
    """
    The header block C{data} starts with (after empty lines), final CRLF
    CRLF included.
    """
    while data.startswith(b"\r\n"):
        data = data[2:]
    end = data.find(b"\r\n\r\n")
    return data[: end + 4] if end >= 0 else data


def allFields(head) -> dict:
    """
    Every field of a head, those left out of its equality included.
    """
    return {f.name: getattr(head, f.name) for f in dataclasses.fields(head)}


def requestVariants():
    """
    Requests in and around the common forms: every byte value in the
    target, a field name, a field value and Host, every method, bodies,
    framing and Connection options.
    """
    for byte in range(256):
        b = bytes([byte])
        yield b"GET /a" + b + b"b HTTP/1.1\r\nHost: a\r\n\r\n"
        yield b"GET /a HTTP/1.1\r\nHost: a\r\nX-A: a" + b + b"b\r\n\r\n"
        yield b"GET /a HTTP/1.1\r\nHost: a\r\nX" + b + b"A: ab\r\n\r\n"
        yield b"GET /a HTTP/1.1\r\nHost: a" + b + b"\r\n\r\n"
        yield b"GET /a HTTP/1.1\r\nHost: a\r\nX-A:" + b + b"\r\n\r\n"
        yield b"G" + b + b"T /a HTTP/1.1\r\nHost: a\r\n\r\n"
        yield b"GET /a HTTP/1." + b + b"\r\nHost: a\r\n\r\n"
        yield b"GET http://a" + b + b"/ HTTP/1.1\r\nHost: a\r\n\r\n"
        yield b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 1" + b + b"\r\n\r\nx"
        yield b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked" + b + b"\r\n\r\n0\r\n\r\n"
    for method in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT",
                   b"TRACE", b"get", b"FOO"):
        yield method + b" /x?y=1 HTTP/1.0\r\nHost: a:80\r\nConnection: keep-alive, close\r\n\r\n"
        yield method + b" /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        yield method + b" /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
        yield method + b" /x HTTP/1.1\r\nhost:   a   \r\nX-Y:\r\nX-Z: \t \r\n\r\n"
        yield method + b" a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"
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
    yield b"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n"
    yield b"GET https://a:443/x HTTP/1.1\r\nHost: a\r\n\r\n"
    yield b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"
    yield b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"
    yield b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\n X: folded\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\n:b\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nX: b:c\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nX: b\rc\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nx"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nxy"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"
    yield b"GET / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: web socket\r\nConnection: upgrade\r\n\r\n"
    yield b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: upgrade\r\nContent-Length: 1\r\n\r\nx"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: x-a, , keep-alive\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: 5\r\nTE: trailers\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + b" " * 3000 + b"b" + b" " * 3000 + b"\r\n\r\n"
    yield b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\nX-A: \xc3\xa9\r\n\r\n"


def responseVariants():
    for byte in range(256):
        b = bytes([byte])
        yield b"HTTP/1.1 200 O" + b + b"K\r\nContent-Length: 1\r\n\r\nx"
        yield b"HTTP/1.1 200 OK\r\nX-A: a" + b + b"b\r\nContent-Length: 1\r\n\r\nx"
        yield b"HTTP/1.1 200 OK\r\nX" + b + b"A: b\r\nContent-Length: 1\r\n\r\nx"
        yield b"HTTP/1.1 2" + b + b"0 OK\r\nContent-Length: 1\r\n\r\nx"
        yield b"HTTP/1." + b + b" 200 OK\r\nContent-Length: 1\r\n\r\nx"
        yield b"HTTP/1.1 200 OK\r\nContent-Length: " + b + b"\r\n\r\nx"
    for status in (100, 101, 199, 200, 204, 206, 301, 304, 404, 500, 599, 600):
        yield b"HTTP/1.0 %d X\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello" % status
        yield b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % status
        yield b"HTTP/1.1 %d \r\nContent-Length: 2\r\n\r\nab" % status
        yield b"HTTP/1.1 %d\r\nContent-Length: 2\r\n\r\nab" % status
        yield b"HTTP/1.1 %d OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n" % status
        yield b"HTTP/1.1 %d OK\r\n\r\nuntil close" % status
    yield NGINX
    yield NGINX[:-5]
    yield NGINX + b"x"
    yield NGINX[: NGINX.index(b"\r\n\r\n") + 4]
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\nx"
    yield b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    yield b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nx"
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\nx"
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: host, close\r\nHost: a\r\n\r\nx"
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nUpgrade: h2c\r\nTE: x\r\n\r\nx"
    yield b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nSet-Cookie: a=b\r\nSet-Cookie: c=d\r\n\r\nx"
    yield b"HTTP/1.1 200 \xc3\xa9\r\nX-A: \xc3\xa9\r\nContent-Length: 1\r\n\r\nx"


class DifferentialTests(SynchronousTestCase):
    """
    The cache and the one-step path against the strict path.
    """

    def test_requestsCachedAsParsed(self):
        """
        For every request variant: once the strict path accepted a head
        twice, the cache holds the record it made, and both the one-step
        path (with that cache, or parsing the head itself) and a parser
        taking the head from the cache deliver exactly what the strict path
        did (every field of the head, those left out of its equality
        included), and fail where it failed. A head the strict path refuses
        never gets into the cache, the one-step path declines it, and a
        parser with the cache refuses it with the same status.
        """
        counts = self.compare(requestVariants(), requestEvents, wholeRequest)
        self.assertGreater(counts["whole"], 700)
        self.assertGreater(counts["cached"], 700)
        self.assertGreater(counts["refused"], 1800)

    def test_responsesCachedAsParsed(self):
        """
        The same for responses, answering GET and HEAD requests.
        """
        counts = {"whole": 0, "cached": 0, "refused": 0}
        for method in (b"GET", b"HEAD"):

            def events(data, cache=None):
                return responseEvents(data, method, cache)

            def whole(data, cache):
                return wholeResponse(data, cache, method)

            for key, count in self.compare(responseVariants(), events, whole).items():
                counts[key] += count
        self.assertGreater(counts["whole"], 500)
        self.assertGreater(counts["cached"], 1100)
        self.assertGreater(counts["refused"], 1900)

    def compare(self, variants, events, whole) -> dict:
        """
        Check each of C{variants} with C{events} (the parser's events, with
        a cache or not) and C{whole} (the one-step path) as the tests above
        say; return how many heads were refused, cached, and taken whole.
        """
        counts = {"whole": 0, "cached": 0, "refused": 0}
        for data in variants:
            cache = HeadCache()
            strict = events(data)
            self.assertEqual(events(data, cache), strict, data)
            self.assertEqual(events(data, cache), strict, data)
            record = cache.find(headBytes(data))
            if not strict[0]:
                # The head was refused.
                counts["refused"] += 1
                self.assertIsNone(record, data)
                self.assertEqual(len(cache), 0, data)
                self.assertIsNone(whole(data, cache), data)
                self.assertIsNone(whole(data, HeadCache()), data)
                continue
            self.assertIsNotNone(record, data)
            counts["cached"] += 1
            cached = events(data, cache)
            self.assertEqual(cached, strict, data)
            self.assertEqual(allFields(cached[0][0][1]), allFields(strict[0][0][1]), data)
            taken = whole(data, cache)
            self.assertEqual(whole(data, HeadCache()), taken, data)
            if taken is not None:
                counts["whole"] += 1
                self.assertIsNone(strict[1], data)
                self.assertEqual(taken, strict[0], data)
                self.assertEqual(allFields(taken[0][1]), allFields(strict[0][0][1]), data)
        return counts

    def test_partsAsParsed(self):
        """
        A head never seen whole but whose field lines were each accepted in
        other heads is built from its parts (llhttp checks its start line
        alone): for every start line around the common forms, and for
        known lines put together in ways llhttp refuses as a whole (two
        Content-Length, Content-Length with Transfer-Encoding, two Host, a
        body on an upgrade...), the result is the strict path's, field by
        field, or its refusal with the same status.
        """
        lines = [
            b"Host: a",
            b"Host: b",
            b"Host: a:443",
            b"Content-Length: 1",
            b"Content-Length: 2",
            b"Transfer-Encoding: chunked",
            b"Connection: upgrade",
            b"Connection: close",
            b"Connection: keep-alive, x-a",
            b"Upgrade: websocket",
            b"Upgrade: web socket",
            b"X-A: 1",
            b"Expect: 100-continue",
        ]
        cache = HeadCache()
        for index, line in enumerate(lines):
            host = b"" if line.startswith(b"Host") else b"Host: a\r\n"
            for _ in range(2):
                data = b"GET /warm%d HTTP/1.1\r\n%s%s\r\n\r\n" % (index, host, line)
                self.assertIsNone(requestEvents(data, cache)[1], line)
        self.assertEqual(cache.lineCount, len(lines))
        built = []
        self.patch(
            RequestParser, "_fromParts", self.counting(RequestParser._fromParts, built)
        )
        heads = [
            b"POST /x HTTP/1.1\r\n%s\r\n\r\nx" % b"\r\n".join(combo)
            for combo in [
                (b"Host: a", b"Content-Length: 1", b"Content-Length: 1"),
                (b"Host: a", b"Content-Length: 1", b"Content-Length: 2"),
                (b"Host: a", b"Content-Length: 1", b"Transfer-Encoding: chunked"),
                (b"Host: a", b"Transfer-Encoding: chunked", b"Content-Length: 1"),
                (b"Host: a", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
                (b"Host: a", b"Transfer-Encoding: gzip, chunked"),
                (b"Host: a", b"Host: b", b"Content-Length: 1"),
                (b"Host: a", b"Host: a", b"Content-Length: 1"),
                (b"Content-Length: 1",),
                (b"Host: a", b"Connection: upgrade", b"Upgrade: websocket", b"Content-Length: 1"),
                (b"Host: a", b"Connection: upgrade", b"Upgrade: web socket", b"Content-Length: 1"),
                (b"Host: a", b"Connection: close", b"Content-Length: 1", b"X-A: 1"),
                (b"X-A: 1", b"Connection: keep-alive, x-a", b"Host: a", b"Content-Length: 1"),
                (b"Host: a", b"Expect: 100-continue", b"Content-Length: 1"),
            ]
        ]
        heads += [data.replace(b"HTTP/1.1", b"HTTP/1.0") for data in heads]
        heads += [data.replace(b"POST /x", b"GET http://b/") for data in heads]
        heads += [data.replace(b"POST /x", b"CONNECT a:443") for data in heads]
        for byte in range(256):
            b = bytes([byte])
            heads.append(b"GET /a" + b + b"b HTTP/1.1\r\nHost: a\r\n\r\n")
            heads.append(b"G" + b + b"T /a HTTP/1.1\r\nHost: a\r\n\r\n")
            heads.append(b"GET /a HTTP/1." + b + b"\r\nHost: a\r\n\r\n")
            heads.append(b"GET http://a" + b + b"/ HTTP/1.1\r\nHost: a\r\n\r\n")
        accepted = 0
        for data in heads:
            strict = requestEvents(data)
            ours = requestEvents(data, cache)
            self.assertEqual(ours, strict, data)
            if strict[0]:
                accepted += 1
                self.assertEqual(allFields(ours[0][0][1]), allFields(strict[0][0][1]), data)
            self.assertEqual(wholeRequest(data, cache), wholeRequest(data, None), data)
        self.assertGreater(built.count(True), 500)
        self.assertGreater(accepted, 100)

    @staticmethod
    def counting(original, calls):
        """
        C{original}, a parser method, noting in C{calls} whether each call
        built a record or raised (rather than finding a field line
        unknown).
        """

        def wrapper(parser, *args):
            try:
                record = original(parser, *args)
            except HTTPParseError:
                calls.append(True)
                raise
            calls.append(record is not None)
            return record

        return wrapper

    def test_oneStepTakesTheCommonForms(self):
        """
        wrk's request, a browser's, a small POST and nginx's response are
        taken in one step once their heads are cached.
        """
        cache = HeadCache()
        for data in (WRK, BROWSER, POST):
            requestEvents(data, cache)
            requestEvents(data, cache)
            self.assertIsNotNone(wholeRequest(data, cache), data)
        responses = HeadCache()
        responseEvents(NGINX, cache=responses)
        responseEvents(NGINX, cache=responses)
        self.assertIsNotNone(wholeResponse(NGINX, responses))


class RecordTests(SynchronousTestCase):
    """
    The records and the heads built from them.
    """

    def test_headFactoriesComplete(self):
        """
        The heads a record builds have every field of L{RequestHead} or
        L{ResponseHead} set (one left out would be missing, not
        defaulted), as a head built by keyword from the record's values.
        """
        cache = HeadCache()
        for _ in range(2):
            requestEvents(POST, cache)
        record = cache.find(headBytes(POST))
        expected = RequestHead(
            method=record.method,
            target=record.target,
            version=record.version,
            headers=Headers._fromLowered(list(record.items)),
            bodyKind=record.bodyKind,
            contentLength=record.contentLength,
            keepAlive=record.keepAlive,
            upgrade=record.upgrade,
            targetForm=record.targetForm,
            authority=record.authority,
            connection=record.connection,
            checked=record.checked,
        )
        self.assertEqual(allFields(record.head()), allFields(expected))
        responses = HeadCache()
        for _ in range(2):
            responseEvents(NGINX, cache=responses)
        record = responses.find(headBytes(NGINX))
        expected = ResponseHead(
            status=record.status,
            reason=record.reason,
            version=record.version,
            headers=Headers._fromLowered(list(record.items)),
            bodyKind=BodyKind.LENGTH,
            contentLength=record.contentLength,
            keepAlive=record.persistent,
            tunnel=False,
            connection=record.connection,
            fields=record.fields,
        )
        self.assertEqual(allFields(record.head(b"GET", False)), allFields(expected))

    def test_headsShareNothingMutable(self):
        """
        Heads built from the same record share no field list: changing
        one's fields leaves the next one's as received.
        """
        cache = HeadCache()
        requestEvents(WRK, cache)
        requestEvents(WRK, cache)
        first = wholeRequest(WRK, cache)[0][1]
        first.headers.add(b"X-Added", b"1")
        second = wholeRequest(WRK, cache)[0][1]
        self.assertIsNot(first, second)
        self.assertEqual(second.headers.items(), [(b"Host", b"127.0.0.1:8080")])

    def test_responseFieldsAsWritten(self):
        """
        The field lines a response head carries are those the general
        writer writes after hop-by-hop removal, for every response the
        strict path accepts whose values can be written.
        """
        writer = HeadWriter()
        checked = 0
        for method in (b"GET", b"HEAD"):
            for data in responseVariants():
                events, _ = responseEvents(data, method)
                if not events:
                    continue
                head = events[0][1]
                headers = Headers._fromLowered(list(head.headers._items))
                stripHopByHop(headers, head.connection)
                try:
                    general = writer.responseHead(head.status, head.reason, headers)
                except ValueError:
                    self.assertIsNone(head.fields, data)
                    continue
                checked += 1
                self.assertEqual(
                    writer.checkedResponseHead(
                        head.status, head.reason, head.fields, BodyKind.NONE, None
                    ),
                    general,
                    data,
                )
        self.assertGreater(checked, 1000)

    def test_checkedRequests(self):
        """
        A request head is checked exactly when it is in origin form and
        its target and fields can be written as they are.
        """
        writer = HeadWriter()
        for data in requestVariants():
            events, _ = requestEvents(data)
            if not events:
                continue
            head = events[0][1]
            try:
                writer.requestHead(head.method, head.target, head.headers)
                writable = True
            except ValueError:
                writable = False
            self.assertEqual(head.checked, writable and head.targetForm == "origin", data)

    def test_responseFramingByRequest(self):
        """
        One record answers each request its own way: no body for HEAD, a
        tunnel for a 2xx to CONNECT, a 101 only to an allowed upgrade.
        """
        cache = HeadCache()
        data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
        for _ in range(2):
            responseEvents(data + b"ab", cache=cache)
        record = cache.find(data)
        self.assertIsInstance(record, ResponseRecord)
        head = record.head(b"HEAD", False)
        self.assertEqual((head.bodyKind, head.contentLength), (BodyKind.NONE, 2))
        head = record.head(b"CONNECT", False)
        self.assertEqual((head.bodyKind, head.tunnel), (BodyKind.NONE, True))
        self.assertIsInstance(head, ResponseHead)
        switch = HeadCache()
        upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        for _ in range(2):
            parser = ResponseParser(Receiver(), cache=switch)
            parser.expectResponse(b"GET", True)
            parser.dataReceived(upgrade)
        record = switch.find(upgrade)
        self.assertTrue(record.head(b"GET", True).tunnel)
        with self.assertRaises(HTTPParseError) as caught:
            record.head(b"GET", False)
        self.assertEqual(caught.exception.status, 502)
