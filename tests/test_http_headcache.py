"""
Tests for L{lbproxy.http.headcache.HeadCache}, the parsers' use of it
(L{dataReceived} and the one-step L{wholeMessage}), and the front's: a
cache stays within its bounds whatever heads come, keeps the heads that
come back, and the front sends the same bytes and logs the same records
whether a request and its response are taken in one step each or parsed
a byte at a time.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbproxy.http.headcache import HeadCache
from lbproxy.http.parser import RequestParser, ResponseParser

from test_http_front import ProxyTestCase, makeListener, makePool
from test_http_heads import (
    BROWSER,
    NGINX,
    POST,
    WRK,
    Receiver,
    headBytes,
    requestEvents,
    responseEvents,
    wholeRequest,
    wholeResponse,
)


def cached(*messages: bytes, cache: HeadCache | None = None) -> HeadCache:
    """
    A request head cache holding the heads of C{messages}, each accepted
    twice by the strict path.
    """
    cache = HeadCache() if cache is None else cache
    for data in messages:
        for _ in range(2):
            requestEvents(data, cache)
    return cache


class HeadCacheTests(SynchronousTestCase):
    """
    What the cache keeps, and its bounds.
    """

    def test_keptOnceAcceptedTwice(self):
        """
        A head accepted once is only remembered on probation; accepted a
        second time, its record is kept (the record made then).
        """
        cache = HeadCache()
        requestEvents(WRK, cache)
        self.assertIsNone(cache.find(WRK))
        self.assertEqual((len(cache), cache.onProbation), (0, 1))
        requestEvents(WRK, cache)
        self.assertIsNotNone(cache.find(WRK))
        self.assertEqual((len(cache), cache.onProbation), (1, 0))

    def test_uniqueHeadsBounded(self):
        """
        An attacker sending a new head with every request keeps the cache
        and its probation within their bounds (entries and bytes), gets
        the strict path's answer each time, and does not push out the
        heads that come back.
        """
        cache = cached(WRK, BROWSER, cache=HeadCache(maxEntries=8, maxBytes=64 * 1024, probation=16))
        hot = cache.find(WRK)
        for index in range(3000):
            data = b"GET /%d HTTP/1.1\r\nHost: a\r\nX-N: %s\r\n\r\n" % (index, b"n" * (index % 500))
            events, error = requestEvents(data, cache)
            self.assertIsNone(error)
            self.assertEqual(events[0][1].target, b"/%d" % (index,))
            self.assertLessEqual(len(cache), 8)
            self.assertLessEqual(cache.weight, 64 * 1024)
            self.assertLessEqual(cache.onProbation, 16)
            # A quarter of the heads' bytes, and of the field lines'.
            self.assertLessEqual(cache.probationBytes, 16 * 1024 + 4 * 1024)
            self.assertLessEqual(cache.lineWeight, 16 * 1024)
        self.assertIs(cache.find(WRK), hot)
        self.assertIsNotNone(cache.find(BROWSER))
        self.assertIsNotNone(cache.findLine(b"Accept: */*"))

    def test_repeatedHeadsBounded(self):
        """
        Heads (and field lines) each sent twice do get in, and push the
        oldest out: the cache stays within its bounds, in entries and in
        bytes (heads with many fields weigh more), and answers stay right.
        """
        cache = HeadCache(maxEntries=16, maxBytes=32 * 1024, probation=4, maxLines=32)
        for index in range(500):
            fields = b"".join(b"X-%d: %d\r\n" % (n, n) for n in range(index % 60))
            data = b"GET /%d HTTP/1.1\r\nHost: a\r\n%s\r\n" % (index, fields)
            for _ in range(3):
                events, error = requestEvents(data, cache, maxHeaders=100)
                self.assertIsNone(error)
                self.assertEqual(len(events[0][1].headers), 1 + index % 60)
            self.assertLessEqual(len(cache), 16)
            self.assertLessEqual(cache.weight, 32 * 1024)
            self.assertLessEqual(cache.lineCount, 32)
            self.assertLessEqual(cache.lineWeight, 8 * 1024)
        self.assertIsNotNone(cache.find(headBytes(data)))

    def test_longHeadsNotKept(self):
        """
        A head longer than the cache takes is parsed each time, never kept.
        """
        cache = HeadCache(maxHeadBytes=100)
        data = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + b"a" * 100 + b"\r\n\r\n"
        for _ in range(3):
            self.assertIsNone(requestEvents(data, cache)[1])
        self.assertEqual((len(cache), cache.onProbation), (0, 0))

    def test_clear(self):
        cache = cached(WRK)
        cache.clear()
        self.assertEqual((len(cache), cache.weight, cache.onProbation), (0, 0, 0))


class WholeRequestTests(SynchronousTestCase):
    """
    L{RequestParser.wholeMessage}.
    """

    def test_limits(self):
        """
        A cached head is held to each parser's own limits: a parser with
        smaller ones declines it, and its strict path refuses it with the
        limit's status.
        """
        cache = cached(WRK, BROWSER, POST)
        for data, limits, status in [
            (WRK, {"maxRequestLine": 10}, 414),
            (BROWSER, {"maxHeaderBytes": 100}, 431),
            (BROWSER, {"maxHeaders": 3}, 431),
            (POST, {"maxBodySize": 4}, 413),
        ]:
            self.assertIsNone(wholeRequest(data, cache, **limits), limits)
            self.assertEqual(requestEvents(data, cache, **limits)[1], status, limits)
        self.assertIsNotNone(wholeRequest(BROWSER, cache, maxHeaders=6))

    def test_notAWholeMessage(self):
        """
        A read that holds less or more than one whole message, or a
        message after which HTTP does not go on by itself (an upgrade,
        CONNECT), is declined.
        """
        upgrade = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        connect = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"
        cache = cached(WRK, POST, upgrade, connect)
        self.assertIsNone(wholeRequest(POST[:-1], cache))
        self.assertIsNone(wholeRequest(POST + b"x", cache))
        self.assertIsNone(wholeRequest(WRK + WRK, cache))
        self.assertIsNone(wholeRequest(upgrade, cache))
        self.assertIsNone(wholeRequest(connect, cache))
        self.assertIsNone(wholeRequest(b"\r\n" + WRK, cache))

    def test_parsedWhenNotCached(self):
        """
        A whole request whose head the cache does not hold (or without a
        cache) is parsed by the strict path and taken, its head then
        remembered as seen once; one the strict path refuses is declined,
        left for L{dataReceived} to refuse, and never remembered.
        """
        cache = HeadCache()
        self.assertEqual(wholeRequest(WRK, cache), requestEvents(WRK)[0])
        self.assertEqual((len(cache), cache.onProbation), (0, 1))
        self.assertEqual(wholeRequest(WRK, cache), requestEvents(WRK)[0])
        self.assertIsNotNone(cache.find(WRK))
        self.assertIsNotNone(RequestParser(Receiver()).wholeMessage(WRK))
        bad = WRK.replace(b"Host", b"Ho st")
        for _ in range(3):
            self.assertIsNone(wholeRequest(bad, cache))
        self.assertEqual(requestEvents(bad, cache)[1], 400)
        self.assertEqual((len(cache), cache.onProbation), (1, 0))

    def test_declinedAfterParsingNotRemembered(self):
        """
        A head parsed by the one-step path for a read that is not one whole
        message is remembered only once, when L{dataReceived} parses it.
        """
        cache = HeadCache()
        parser = RequestParser(Receiver(), cache=cache)
        self.assertIsNone(parser.wholeMessage(POST[:-1]))
        self.assertEqual(cache.onProbation, 0)
        parser.dataReceived(POST[:-1])
        self.assertEqual((len(cache), cache.onProbation), (0, 1))

    def test_notWhileBusy(self):
        """
        While the parser holds part of a message, or is paused, the
        one-step path declines.
        """
        cache = cached(WRK)
        parser = RequestParser(Receiver(), cache=cache)
        parser.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertIsNone(parser.wholeMessage(WRK))
        parser = RequestParser(Receiver(), cache=cache)
        parser.pauseParsing()
        self.assertIsNone(parser.wholeMessage(WRK))

    def test_parserStateAfter(self):
        """
        The parser is left as after delivering the message, and parses the
        next request.
        """
        receiver = Receiver()
        parser = RequestParser(receiver, cache=cached(WRK))
        self.assertIsNotNone(parser.wholeMessage(WRK))
        self.assertTrue(parser.idle)
        parser.dataReceived(b"GET /2 HTTP/1.1\r\nHost: a\r\n")
        self.assertIsNone(parser.wholeMessage(b"\r\n"))
        parser.dataReceived(b"\r\n")
        self.assertEqual(receiver.events[0][1].target, b"/2")

    def test_closeAfter(self):
        """
        After a request that closes the connection, later bytes are
        ignored, as on the strict path.
        """
        closing = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        receiver = Receiver()
        parser = RequestParser(receiver, cache=cached(closing))
        head, _ = parser.wholeMessage(closing)
        self.assertFalse(head.keepAlive)
        parser.dataReceived(WRK)
        self.assertEqual(receiver.events, [])


class WholeResponseTests(SynchronousTestCase):
    """
    L{ResponseParser.wholeMessage}.
    """

    def cache(self, *responses: bytes, method: bytes = b"GET") -> HeadCache:
        cache = HeadCache()
        for data in responses:
            for _ in range(2):
                responseEvents(data, method, cache)
        return cache

    def test_byRequest(self):
        """
        A cached response head is framed for the request it answers: whole
        to HEAD without its body, refused to HEAD with one, held to each
        parser's limits.
        """
        headOnly = NGINX[: NGINX.index(b"\r\n\r\n") + 4]
        cache = self.cache(NGINX)
        self.assertEqual(wholeResponse(NGINX, cache), responseEvents(NGINX)[0])
        self.assertEqual(wholeResponse(headOnly, cache, b"HEAD"), responseEvents(headOnly, b"HEAD")[0])
        self.assertIsNone(wholeResponse(NGINX, cache, b"HEAD"))
        for limits in ({"maxHeaders": 3}, {"maxStatusLine": 5}, {"maxHeaderBytes": 40}):
            parser = ResponseParser(Receiver(), cache=cache, **limits)
            parser.expectResponse(b"GET")
            self.assertIsNone(parser.wholeMessage(NGINX))

    def test_declined(self):
        """
        Part of a body, interim responses, tunnels, CONNECT and a response
        nobody asked for go the event way.
        """
        cont = b"HTTP/1.1 100 Continue\r\n\r\n"
        switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        cache = self.cache(NGINX, cont)
        self.assertIsNone(wholeResponse(NGINX[:-4], cache))
        self.assertIsNone(wholeResponse(cont, cache))
        self.assertIsNone(wholeResponse(NGINX, cache, b"CONNECT"))
        parser = ResponseParser(Receiver(), cache=cache)
        self.assertIsNone(parser.wholeMessage(NGINX))
        for _ in range(2):
            parser = ResponseParser(Receiver(), cache=cache)
            parser.expectResponse(b"GET", True)
            parser.dataReceived(switch)
        parser = ResponseParser(Receiver(), cache=cache)
        parser.expectResponse(b"GET", True)
        self.assertIsNone(parser.wholeMessage(switch))

    def test_answersTheOldest(self):
        """
        A whole response answers the oldest request sent; the parser then
        expects the next.
        """
        cache = self.cache(NGINX)
        parser = ResponseParser(Receiver(), cache=cache)
        parser.expectResponse(b"GET")
        parser.expectResponse(b"HEAD")
        self.assertIsNotNone(parser.wholeMessage(NGINX))
        self.assertEqual(parser.expecting, 1)
        headOnly = NGINX[: NGINX.index(b"\r\n\r\n") + 4]
        head, body = parser.wholeMessage(headOnly)
        self.assertEqual((head.contentLength, body, parser.expecting), (10, b"", 0))


def splitReads(data: bytes) -> list[bytes]:
    """
    C{data} a byte at a time: the strict path, whatever its form.
    """
    return [data[i : i + 1] for i in range(len(data))]


class FrontTests(ProxyTestCase):
    """
    A request and its response in one read each (taken in one step once
    their heads are cached) and a byte at a time (the strict paths) give
    the same bytes and records.
    """

    def serve(self, requests, response, split, **listenerOptions):
        """
        Serve C{requests}, each answered with C{response}, in one read each
        or (with C{split}) a byte at a time; return what was sent to the
        backend, what the client received, the access records and whether
        the client connection is closing.
        """
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
        """
        Serve C{requests} (each answered with C{response}) in one read each
        and a byte at a time: the same bytes are sent each way and the same
        records logged. In one read, every request and response is taken
        in one step, from the third with the same head on without parsing
        it (its record cached).
        """
        taken = []
        parsed = []

        def counting(original, calls):
            def wrapper(parser, *args):
                result = original(parser, *args)
                calls.append(type(parser))
                return result

            return wrapper

        def wholes(original):
            def wrapper(parser, data):
                result = original(parser, data)
                if result is not None:
                    taken.append(type(parser))
                return result

            return wrapper

        self.patch(RequestParser, "wholeMessage", wholes(RequestParser.wholeMessage))
        self.patch(ResponseParser, "wholeMessage", wholes(ResponseParser.wholeMessage))
        self.patch(RequestParser, "_parseHead", counting(RequestParser._parseHead, parsed))
        self.patch(ResponseParser, "_parseHead", counting(ResponseParser._parseHead, parsed))
        fast = self.serve(requests, response, False, **listenerOptions)
        self.assertEqual(taken.count(RequestParser), len(requests))
        self.assertEqual(taken.count(ResponseParser), len(requests))
        if len(set(requests)) == 1:
            self.assertEqual(parsed.count(RequestParser), min(2, len(requests)))
            self.assertEqual(parsed.count(ResponseParser), min(2, len(requests)))
        strict = self.serve(requests, response, True, **listenerOptions)
        self.assertEqual(fast, strict)
        return fast

    def test_keepAlive(self):
        sent, received, records, closing = self.assertSame([WRK, BROWSER, POST] * 3, NGINX)
        self.assertEqual(len(records), 9)
        self.assertFalse(closing)
        self.assertIn(b"Content-Length: 5\r\n\r\nhello", sent[8])

    def test_sameRequestAgain(self):
        sent, received, records, closing = self.assertSame([WRK] * 4, NGINX)
        self.assertEqual(len(set(sent)), 1)

    def test_close(self):
        request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        sent, received, records, closing = self.assertSame([request], NGINX)
        self.assertIn(b"Connection: close\r\n", received)
        self.assertTrue(closing)

    def test_http10(self):
        request = b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
        sent, received, records, closing = self.assertSame([request] * 3, NGINX)
        self.assertIn(b"Connection: keep-alive\r\n", received)
        self.assertFalse(closing)

    def test_responseClosing(self):
        response = NGINX.replace(b"Connection: keep-alive", b"Connection: close")
        self.assertSame([WRK, WRK], response)

    def test_connectionNamesFields(self):
        request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-a\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
        response = NGINX.replace(b"Connection: keep-alive", b"Connection: x-secret\r\nX-Secret: 1")
        sent, received, records, closing = self.assertSame([request] * 3, response)
        self.assertNotIn(b"X-A", sent[2])
        self.assertIn(b"X-B: 2", sent[2])
        self.assertNotIn(b"X-Secret", received)

    def test_forwardingFieldsReplaced(self):
        request = (
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\n"
            b"X-Client-Subject: CN=admin\r\n\r\n"
        )
        sent, received, records, closing = self.assertSame([request] * 3, NGINX)
        self.assertNotIn(b"10.0.0.1", sent[2])
        self.assertNotIn(b"CN=admin", sent[2])

    def test_headResponse(self):
        request = b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"
        response = NGINX[: NGINX.index(b"\r\n\r\n") + 4]
        self.assertSame([request] * 3, response)

    def test_chunkedRequest(self):
        """
        A chunked request's head is written from its checked values, the
        same in one read as a byte at a time, and its body sent on chunked.
        """
        request = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        fast = self.serve([request] * 3, NGINX, False)
        strict = self.serve([request] * 3, NGINX, True)
        heads = [[sent.split(b"\r\n\r\n")[0] for sent in served[0]] for served in (fast, strict)]
        self.assertEqual(heads[0], heads[1])
        self.assertEqual(fast[2], strict[2])
        self.assertTrue(fast[0][2].endswith(b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"))

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
        sent, received, records, closing = self.assertSame([WRK] * 3, NGINX)
        self.assertIn(b"Set-Cookie: SRV=", received)

    def test_nextRequestWaitsForTheAnswer(self):
        """
        A request taken in one step holds the client's parser until it is
        answered: the next one, arriving in a read of its own meanwhile, is
        placed only then, and both are answered in order.
        """
        self.makeFactory(count=1)
        client = self.connectClient()
        first = WRK.replace(b"/100B", b"/first")
        second = WRK.replace(b"/100B", b"/second")
        for request in (first, first, second, second):
            backend = self.exchange(client, request, NGINX)
        self.assertIsNotNone(self.factory.requestHeads.find(second))
        backend.clear()
        client.clear()
        client.send(first)
        self.assertEqual(client.protocol.exchange.head.target, b"/first")
        client.send(second)
        self.assertEqual(client.protocol.exchange.head.target, b"/first")
        self.assertEqual(backend.received().count(b"GET "), 1)
        backend.send(NGINX)
        self.assertEqual(client.protocol.exchange.head.target, b"/second")
        self.assertEqual(backend.received().count(b"GET "), 2)
        backend.send(NGINX)
        self.assertIsNone(client.protocol.exchange)
        self.assertEqual(client.received().count(b"HTTP/1.1 200 OK"), 2)
        self.assertEqual([r.target for r in self.log.records][-2:], [b"/first", b"/second"])


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
