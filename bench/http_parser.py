"""
HTTP/1.1 request parsing speed: lbproxy.http.parser.RequestParser against
the parsing path of twisted.web.http.HTTPChannel, in one process, in memory.

Run from the repository root with the interpreter that has Twisted and
httptools:

    python bench/http_parser.py              # about 10 s
    python bench/http_parser.py --rounds 9

Each case feeds the same bytes to a long-lived keep-alive parser, request
after request (or several pipelined requests per chunk), and reports
requests per second (the best of the rounds, since interference only ever
slows a round down). lbproxy's parser is measured twice: without a head
cache, every head through llhttp and the checks (the strict path, as for
a head never seen before), and as a listener's front uses it, with the
listener's L{HeadCache}: a read holding one whole request whose head was
accepted before is taken in one step (C{wholeMessage}), and anything else
is parsed from the cache's records where it can. HTTPChannel gets a
trivial request factory whose process() only tells the channel the request
is done, so what is measured is its line parsing, header handling and
Request set-up, not response writing. This is a report, not a test:
nothing fails on slow figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import httptools  # noqa: E402
import twisted  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.web import http  # noqa: E402

from lbproxy.http.headcache import HeadCache  # noqa: E402
from lbproxy.http.parser import RequestParser  # noqa: E402

BROWSER_GET = (
    b"GET /static/js/app.3f9c2b.js?v=20240101 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: */*\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: https://www.example.com/products/index.html\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=4f2a9c0e7b1d48f3a6e5c2b9d0f1e3a7; theme=dark; consent=yes\r\n"
    b"Sec-Fetch-Dest: script\r\n"
    b"Sec-Fetch-Mode: no-cors\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Priority: u=2\r\n"
    b"\r\n"
)

FORM_POST = (
    b"POST /api/v1/items HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: application/json\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 1024\r\n"
    b"\r\n" + b"x" * 1024
)

CASES = [
    # name, bytes of one chunk, requests per chunk
    ("browser GET, 1 per chunk", BROWSER_GET, 1),
    ("browser GET, 10 pipelined per chunk", BROWSER_GET * 10, 10),
    ("POST 1 KiB body, 1 per chunk", FORM_POST, 1),
]


class CountingReceiver:
    """
    The least a front would do with parser events.
    """

    def __init__(self) -> None:
        self.requests = 0

    def headersComplete(self, head) -> None:
        pass

    def bodyData(self, data: bytes) -> None:
        pass

    def messageComplete(self) -> None:
        self.requests += 1


class _DoneRequest(http.Request):
    """
    A request that is finished as soon as it is parsed.
    """

    def process(self) -> None:
        self.channel.requests_done += 1
        self.channel.requestDone(self)


def lbproxyRunner(chunk: bytes, perChunk: int, chunks: int) -> float:
    receiver = CountingReceiver()
    parser = RequestParser(receiver)
    feed = parser.dataReceived
    start = time.perf_counter()
    for _ in range(chunks):
        feed(chunk)
    elapsed = time.perf_counter() - start
    assert receiver.requests == chunks * perChunk, receiver.requests
    return elapsed


def cachedRunner(cache: HeadCache):
    """
    A runner parsing as the front does, with the listener's C{cache}.
    """

    def run(chunk: bytes, perChunk: int, chunks: int) -> float:
        receiver = CountingReceiver()
        parser = RequestParser(receiver, cache=cache)
        whole = parser.wholeMessage
        feed = parser.dataReceived
        taken = 0
        start = time.perf_counter()
        for _ in range(chunks):
            if whole(chunk) is None:
                feed(chunk)
            else:
                taken += 1
        elapsed = time.perf_counter() - start
        assert receiver.requests + taken == chunks * perChunk, (receiver.requests, taken)
        return elapsed

    return run


def twistedRunner(chunk: bytes, perChunk: int, chunks: int) -> float:
    channel = http.HTTPChannel()
    channel.requestFactory = _DoneRequest
    channel.callLater = Clock().callLater
    channel.timeOut = None
    channel.requests_done = 0
    transport = StringTransport()
    channel.makeConnection(transport)
    feed = channel.dataReceived
    start = time.perf_counter()
    for _ in range(chunks):
        feed(chunk)
    elapsed = time.perf_counter() - start
    assert channel.requests_done == chunks * perChunk, channel.requests_done
    assert not transport.value(), transport.value()[:200]
    return elapsed


def best(runner, chunk: bytes, perChunk: int, requests: int, rounds: int) -> float:
    """
    Requests per second of the fastest of C{rounds} runs.
    """
    chunks = max(1, requests // perChunk)
    runner(chunk, perChunk, max(1, chunks // 10))  # warm-up
    fastest = min(runner(chunk, perChunk, chunks) for _ in range(rounds))
    return chunks * perChunk / fastest


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs per case (best is kept)")
    parser.add_argument("--requests", type=int, default=30000, help="requests per run")
    options = parser.parse_args(argv)

    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"Twisted {twisted.__version__}, httptools {httptools.__version__}, "
        f"{platform.machine()}"
    )
    print(f"{options.rounds} rounds of {options.requests} requests per case; best round shown")
    print()
    header = (
        f"{'case':40} {'lbproxy strict':>14} {'lbproxy cached':>14} "
        f"{'HTTPChannel req/s':>18} {'ratios':>13}"
    )
    print(header)
    print("-" * len(header))
    for name, chunk, perChunk in CASES:
        ours = best(lbproxyRunner, chunk, perChunk, options.requests, options.rounds)
        cached = best(cachedRunner(HeadCache()), chunk, perChunk, options.requests, options.rounds)
        theirs = best(twistedRunner, chunk, perChunk, options.requests, options.rounds)
        print(
            f"{name:40} {ours:14,.0f} {cached:14,.0f} {theirs:18,.0f} "
            f"{ours / theirs:5.1f}x {cached / theirs:5.1f}x"
        )
    print()
    print(f"request sizes: browser GET {len(BROWSER_GET)} B, POST {len(FORM_POST)} B")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
