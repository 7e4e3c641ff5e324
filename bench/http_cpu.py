"""
CPU cost per request of lbproxy's HTTP front, in one process, in memory.

The front (L{lbproxy.http.factory.HTTPProxyFactory}, built from the same
generated config as in run_http.py: round robin over two servers, access
log to a file, 64 idle connections kept per server) serves keep-alive
clients through fake transports: each request is the exact head wrk sends,
each response nginx's real head for a 100-byte file, in one read each, as
on loopback. No sockets and no reactor loop are involved, so the figure is
lbproxy's own Python cost per request, steady on a busy machine where
run_http.py's req/s are not: use it to compare versions of the code, and
run_http.py to see what it means against the other proxies.

With C{--tls}, the clients speak HTTPS: the listener terminates TLS 1.3
with an ECDSA certificate (as run_https.py's C{ec} kind), each client a
pyOpenSSL connection over memory BIOs whose requests are encrypted before
the timed part (one record per request, as wrk sends them), so the figure
is the proxy's cost, TLS termination included. C{--tls new} runs lbproxy's
own L{lbproxy.tls.transport} (what implicit-TLS listeners use), C{--tls
old} Twisted's C{TLSMemoryBIOFactory} over the same certificates, C{--tls
both} one after the other; the reactor's pending calls run once per round
over all clients, as a reactor iteration would.

Run from the repository root with the interpreter that has Twisted:

    python bench/http_cpu.py                  # about 10 s
    python bench/http_cpu.py --requests 200000 --rounds 7
    python bench/http_cpu.py --profile        # cProfile of one round
    python bench/http_cpu.py --tls both --requests 50000
    python bench/http_cpu.py --connections    # a connection per request

Reports microseconds of CPU per request (the best of the rounds: other load
only ever slows a round down) and, with --profile, the functions that take
the most time. This is a report, not a test: nothing fails on slow figures.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import platform
import pstats
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import twisted  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402
from twisted.internet.testing import MemoryReactorClock  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from OpenSSL import SSL  # noqa: E402
from twisted.protocols.tls import TLSMemoryBIOFactory  # noqa: E402

from harness import lbproxyConfig, makeCertificate  # noqa: E402
from lbproxy.config import loadBytes  # noqa: E402
from lbproxy.core.model import Balancer  # noqa: E402
from lbproxy.service import frontFactory  # noqa: E402
from lbproxy.tls.server import ServerTLS, wrapFactory  # noqa: E402

LISTEN_PORT = 40000
SERVERS = [("nginx1", 40001), ("nginx2", 40002)]
BODY = b"x" * 99 + b"\n"
#: What wrk sends for each request.
REQUEST = b"GET /100B HTTP/1.1\r\nHost: 127.0.0.1:40000\r\n\r\n"
#: What wrk sends for each request with C{-H "Connection: close"}.
CLOSE_REQUEST = b"GET /100B HTTP/1.1\r\nHost: 127.0.0.1:40000\r\nConnection: close\r\n\r\n"
_CLOSED = Failure(ConnectionDone())
#: nginx 1.22's answer for a 100-byte static file, body included.
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Date: Sat, 28 Nov 2026 05:40:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Length: 100\r\n"
    b"Last-Modified: Sat, 28 Nov 2026 05:00:00 GMT\r\n"
    b"Connection: keep-alive\r\n"
    b'ETag: "6928c4a0-64"\r\n'
    b"Accept-Ranges: bytes\r\n"
    b"\r\n" + BODY
)


class FakeTransport:
    """
    The little of a TCP transport the front uses, with writes counted and
    the last ones kept for checking.
    """

    disconnecting = False
    connected = True
    TLS = False

    def __init__(self, peer, host) -> None:
        self.peer = peer
        self.host = host
        self.written = 0
        self.last: list[bytes] = []
        self.producer = None
        self.protocol = None

    def getPeer(self):
        return self.peer

    def getHost(self):
        return self.host

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.last.append(data)

    def writeSequence(self, pieces) -> None:
        for piece in pieces:
            self.write(piece)

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def registerProducer(self, producer, streaming) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.disconnecting = True


def buildFront(accessLog: str, reactor, tls=None, reuseMode: str | None = None):
    """
    The HTTP front of the generated config; with C{tls} (the listener's
    certificate files), the L{ServerTLS} of its listener too.
    """
    text = lbproxyConfig(
        LISTEN_PORT, SERVERS, mode="http", accessLog=accessLog, reuseMaxIdle=64, tls=tls,
        reuseMode=reuseMode,
    )
    config = loadBytes(text.encode(), "bench.toml")
    balancer = Balancer(config)
    [listener] = config.listeners.values()
    if tls is None:
        return frontFactory(listener, balancer.pools, reactor), None
    serverTLS = ServerTLS(listener.name, listener.tls, config.source)
    serverTLS.load()
    return frontFactory(listener, balancer.pools, reactor, serverTLS), serverTLS


class Bench:
    """
    C{clients} keep-alive client connections to one front, each with a
    backend connection of its own once warmed up.
    """

    def __init__(self, clients: int, accessLog: str) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_800_000_000)
        self.factory, _ = buildFront(accessLog, self.reactor)
        self.factory.startFactory()
        self.local = IPv4Address("TCP", "127.0.0.1", LISTEN_PORT)
        self.clients = [self._accept(index)[0] for index in range(clients)]
        self.wrappers = {}
        self.answered = 0

    def _accept(self, index: int) -> tuple:
        """
        The front's protocol and transport for client number C{index},
        connected from its own loopback port.
        """
        peer = IPv4Address("TCP", "127.0.0.1", 50000 + index)
        transport = FakeTransport(peer, self.local)
        protocol = self.factory.buildProtocol(peer)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    def _connectPending(self) -> None:
        tcpClients = self.reactor.tcpClients
        while self.answered < len(tcpClients):
            host, port, factory, _, _ = tcpClients[self.answered]
            self.answered += 1
            address = IPv4Address("TCP", host, port)
            wrapper = factory.buildProtocol(address)
            transport = FakeTransport(address, self.local)
            wrapper.makeConnection(transport)
            self.wrappers[wrapper._wrappedProtocol] = wrapper

    def _answerBackend(self, client, header: bytes) -> None:
        """
        Connect the backend that C{client}'s request asked for, check the
        request head it was sent (with C{header} among its fields) and
        answer it with L{RESPONSE}.
        """
        self._connectPending()
        backend = client.exchange.backend
        sent = b"".join(backend.transport.last)
        if not sent.startswith(b"GET /100B HTTP/1.1\r\n") or header not in sent:
            raise SystemExit(f"unexpected request head sent to the backend: {sent!r}")
        backend.transport.last.clear()
        self.wrappers[backend].dataReceived(RESPONSE)

    def warmUp(self) -> None:
        """
        One request per client, connecting backends as asked, and a check
        of what each side received.
        """
        for client in self.clients:
            client.dataReceived(REQUEST)
            self._answerBackend(client, b"X-Forwarded-For")
            received = b"".join(client.transport.last)
            client.transport.last.clear()
            if not received.startswith(b"HTTP/1.1 200 OK\r\n") or not received.endswith(
                b"\r\n\r\n" + BODY
            ) or b"Connection: keep-alive" in received:
                raise SystemExit(f"unexpected response sent to the client: {received!r}")
            if client.exchange is not None:
                raise SystemExit("the exchange did not end")

    def run(self, count: int) -> float:
        """
        Serve C{count} requests, the clients taking turns; return the CPU
        seconds spent.
        """
        clients = self.clients
        wrappers = self.wrappers
        perClient = len(clients)
        rounds, rest = divmod(count, perClient)
        started = time.process_time()
        for _ in range(rounds):
            for client in clients:
                client.dataReceived(REQUEST)
                wrappers[client.exchange.backend].dataReceived(RESPONSE)
            # What a real transport would have sent by now.
            for client in clients:
                client.transport.last.clear()
            for backend in wrappers:
                backend.transport.last.clear()
        for client in clients[:rest]:
            client.dataReceived(REQUEST)
            wrappers[client.exchange.backend].dataReceived(RESPONSE)
        return time.process_time() - started


class ConnectionBench(Bench):
    """
    A new client connection for each request, closed once it is answered,
    as wrk's clients do with C{Connection: close}: the cost of accepting,
    admitting, serving and ending a connection. C{clients} connections are
    open at any time, as wrk's are: each turn accepts one, and the oldest
    sends its request, gets its answer and closes. Idle server connections
    serve every client (C{reuse.mode = "always"}, as run_http.py runs it),
    so after the first two requests no server is connected any more.
    """

    def __init__(self, clients: int, accessLog: str) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_800_000_000)
        self.factory, _ = buildFront(accessLog, self.reactor, reuseMode="always")
        self.factory.startFactory()
        self.local = IPv4Address("TCP", "127.0.0.1", LISTEN_PORT)
        self.wrappers = {}
        self.answered = 0
        self.accepted = 0
        self.clients = clients
        self.waiting = collections.deque(self._accept(index) for index in range(clients))

    def _serve(self, check: bool = False) -> None:
        """
        One turn: a client connection accepted; the oldest sends its
        request, the server's answer is relayed, and it closes once it has
        it.
        """
        self.waiting.append(self._accept(self.accepted % 20000))
        self.accepted += 1
        client, transport = self.waiting.popleft()
        client.dataReceived(CLOSE_REQUEST)
        backend = client.exchange.backend
        if backend is None:
            # The pool has no idle connection to this server yet.
            self._connectPending()
            backend = client.exchange.backend
        self.wrappers[backend].dataReceived(RESPONSE)
        if check:
            received = b"".join(transport.last)
            if not received.startswith(b"HTTP/1.1 200 OK\r\n") or not received.endswith(
                b"\r\n\r\n" + BODY
            ) or b"Connection: close" not in received or not transport.disconnecting:
                raise SystemExit(f"unexpected answer to a closing client: {received!r}")
        client.connectionLost(_CLOSED)

    def warmUp(self) -> None:
        for _ in range(4):
            self._serve(check=True)
        for backend in self.wrappers:
            backend.transport.last.clear()

    def run(self, count: int) -> float:
        serve = self._serve
        wrappers = self.wrappers
        started = time.process_time()
        for index in range(count):
            serve()
            if index % 1000 == 999:
                for backend in wrappers:
                    backend.transport.last.clear()
        return time.process_time() - started


class TLSBench(Bench):
    """
    L{Bench} with HTTPS clients: C{transport} is C{"new"} (lbproxy's
    L{lbproxy.tls.transport}) or C{"old"} (Twisted's
    C{TLSMemoryBIOFactory}).
    """

    def __init__(self, clients: int, accessLog: str, certificate, transport: str) -> None:
        self.reactor = reactor = MemoryReactorClock()
        reactor.advance(1_800_000_000)
        front, serverTLS = buildFront(accessLog, reactor, certificate)
        if transport == "new":
            self.factory = wrapFactory(serverTLS, front, reactor, 60.0)
        else:
            self.factory = TLSMemoryBIOFactory(serverTLS.creator, False, front, clock=reactor)
        self.factory.doStart()
        self.local = IPv4Address("TCP", "127.0.0.1", LISTEN_PORT)
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_alpn_protos([b"http/1.1"])
        self.clients = []
        self.tls = []
        self.sessions = []
        for index in range(clients):
            protocol, transport = self._accept(index)
            session = SSL.Connection(context, None)
            session.set_connect_state()
            self._handshake(session, protocol, transport)
            self.tls.append(protocol)
            self.sessions.append(session)
            self.clients.append(protocol.wrappedProtocol)
        self.wrappers = {}
        self.answered = 0

    def _handshake(self, session, server, transport) -> None:
        for _ in range(10):
            try:
                session.do_handshake()
            except SSL.WantReadError:
                pass
            else:
                return
            server.dataReceived(session.bio_read(65536))
            self.reactor.advance(0)
            session.bio_write(b"".join(transport.last))
            transport.last.clear()
        raise SystemExit("the TLS handshake did not complete")

    def _decrypt(self, session, transport) -> bytes:
        session.bio_write(b"".join(transport.last))
        transport.last.clear()
        plain = []
        while True:
            try:
                plain.append(session.recv(65536))
            except SSL.WantReadError:
                return b"".join(plain)

    def warmUp(self) -> None:
        for server, client, session in zip(self.tls, self.clients, self.sessions):
            session.send(REQUEST)
            server.dataReceived(session.bio_read(65536))
            self._answerBackend(client, b"X-Forwarded-Proto: https")
            self.reactor.advance(0)
            received = self._decrypt(session, server.transport)
            if not received.startswith(b"HTTP/1.1 200 OK\r\n") or not received.endswith(b"\r\n\r\n" + BODY):
                raise SystemExit(f"unexpected response sent to the client: {received!r}")

    def run(self, count: int) -> float:
        """
        Serve C{count} requests, each arriving as one TLS record encrypted
        beforehand; return the CPU seconds spent.
        """
        perClient = len(self.clients)
        rounds = max(1, count // perClient)
        records = []
        for session in self.sessions:
            mine = []
            for _ in range(rounds):
                session.send(REQUEST)
                mine.append(session.bio_read(65536))
            records.append(mine)
        pairs = list(zip(self.tls, self.clients))
        wrappers = self.wrappers
        advance = self.reactor.advance
        started = time.process_time()
        for turn in range(rounds):
            for index, (server, client) in enumerate(pairs):
                server.dataReceived(records[index][turn])
                wrappers[client.exchange.backend].dataReceived(RESPONSE)
            advance(0)
            for server in self.tls:
                server.transport.last.clear()
            for backend in wrappers:
                backend.transport.last.clear()
        return time.process_time() - started


def measure(bench, args, label: str) -> float:
    bench.warmUp()
    bench.run(min(args.requests, 20000))
    figures = []
    for index in range(args.rounds):
        seconds = bench.run(args.requests)
        figures.append(1e6 * seconds / args.requests)
        print(f"{label}round {index + 1}: {figures[-1]:.2f} us/request", flush=True)
    print(
        f"{label}best {min(figures):.2f} us/request, median {sorted(figures)[len(figures) // 2]:.2f} "
        f"({args.requests} requests x {args.rounds} rounds, {args.clients} clients"
        f"{', a connection each' if args.connections else ''}; "
        f"Python {platform.python_version()}, Twisted {twisted.__version__})",
        flush=True,
    )
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        bench.run(args.requests)
        profile.disable()
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(args.top)
    return min(figures)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100000, help="per round (default 100000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--clients", type=int, default=50, help="client connections (default 50)")
    parser.add_argument(
        "--profile", action="store_true", help="run one more round under cProfile and print it"
    )
    parser.add_argument("--top", type=int, default=30, help="functions printed with --profile")
    parser.add_argument(
        "--connections", action="store_true",
        help="a new client connection for each request, closed after it (Connection: close)",
    )
    parser.add_argument(
        "--tls",
        choices=("new", "old", "both"),
        help="HTTPS clients, through lbproxy's TLS transport (new), Twisted's (old) or both",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lbproxy-http-cpu-") as workdir:
        if args.tls is None:
            kind = ConnectionBench if args.connections else Bench
            measure(kind(args.clients, os.path.join(workdir, "access.log")), args, "")
            return 0
        if args.connections:
            parser.error("--connections runs plain HTTP clients only")
        certificate = makeCertificate(workdir, "ec")
        kinds = ("old", "new") if args.tls == "both" else (args.tls,)
        best = {}
        for kind in kinds:
            bench = TLSBench(args.clients, os.path.join(workdir, f"access-{kind}.log"), certificate, kind)
            best[kind] = measure(bench, args, f"https {kind}: ")
        if len(best) == 2:
            print(f"new/old: {best['new'] / best['old']:.2f} (best rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
