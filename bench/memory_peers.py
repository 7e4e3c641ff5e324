"""
The peers of bench/run_memory.py and bench/memory_breakdown.py (stdlib
only): an echo backend, and idle clients.

    python memory_peers.py echo --port P [--host 127.0.0.1] [--max-seconds 600]

C{echo}: a small event-driven TCP echo server, one process, one thread,
non-blocking sockets on C{selectors}: it accepts every connection and
sends back whatever each one sends, holding thousands of idle connections
for the price of their sockets. It stops after C{--max-seconds}, or when
the process that started it is gone, whichever comes first, so it never
outlives a benchmark.

L{IdleClients}: client connections opened C{concurrency} at a time, each
taken through one exchange (one byte echoed, L{echoed}; one HTTP request
answered, L{answeredWith}) and then kept open without a byte more.
"""

from __future__ import annotations

import argparse
import errno
import os
import resource
import select
import selectors
import socket
import sys
import time
from typing import Callable

LOOPBACK = "127.0.0.1"
#: Bytes the echo server reads per call; an echo backend of idle
#: connections needs little.
READ_SIZE = 16384
#: The byte each TCP client sends and expects back.
ECHO_BYTE = b"x"


class PeerError(Exception):
    """
    A client's exchange went wrong; the message says how.
    """


# ---------------------------------------------------------------------------
# The echo server
# ---------------------------------------------------------------------------


class EchoServer:
    """
    Echoes every connection accepted on C{listening}.

    @ivar pending: bytes read but not yet sent back, by socket (only for a
        peer that does not read what it is sent).
    """

    def __init__(self, listening: socket.socket) -> None:
        self.listening = listening
        listening.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(listening, selectors.EVENT_READ, self._accept)
        self.pending: dict[socket.socket, bytes] = {}
        self.stopping = False

    def runUntil(self, deadline: float, parent: int | None = None) -> None:
        """
        Serve until C{deadline} (C{time.monotonic}), until this process's
        parent is no longer C{parent}, or until L{stopping} is set (within
        a tenth of a second).
        """
        while (
            not self.stopping
            and time.monotonic() < deadline
            and (parent is None or os.getppid() == parent)
        ):
            for key, events in self.selector.select(timeout=min(0.1, max(0.0, deadline - time.monotonic()))):
                key.data(key.fileobj, events)

    def close(self) -> None:
        for connection in list(self.pending):
            self._close(connection)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()

    def _accept(self, listening: socket.socket, events: int) -> None:
        for _ in range(256):
            try:
                connection, _ = listening.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return
                raise
            connection.setblocking(False)
            self.selector.register(connection, selectors.EVENT_READ, self._serve)

    def _serve(self, connection: socket.socket, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            self._send(connection, self.pending.pop(connection), writing=True)
            return
        try:
            data = connection.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(connection)
            return
        self._send(connection, data, writing=False)

    def _send(self, connection: socket.socket, data: bytes, writing: bool) -> None:
        try:
            sent = connection.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(connection)
            return
        if sent < len(data):
            # Stop reading until the peer has taken what it was sent.
            self.pending[connection] = data[sent:]
            if not writing:
                self.selector.modify(connection, selectors.EVENT_WRITE, self._serve)
        elif writing:
            self.selector.modify(connection, selectors.EVENT_READ, self._serve)

    def _close(self, connection: socket.socket) -> None:
        self.pending.pop(connection, None)
        self.selector.unregister(connection)
        connection.close()


def listen(host: str, port: int) -> socket.socket:
    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.bind((host, port))
    listening.listen(4096)
    return listening


# ---------------------------------------------------------------------------
# Idle clients
# ---------------------------------------------------------------------------


def echoed(received: bytes) -> bool:
    """
    Whether a TCP client has its byte back (L{PeerError} for anything else).
    """
    if not received:
        return False
    if received != ECHO_BYTE:
        raise PeerError(f"echo: expected {ECHO_BYTE!r}, got {received[:40]!r}")
    return True


def httpRequest(port: int, path: str) -> bytes:
    """
    A keep-alive HTTP/1.1 GET of C{path} from C{127.0.0.1:port}.
    """
    return (
        f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
        "User-Agent: lbproxy-bench-memory\r\n\r\n"
    ).encode()


def answeredWith(body: bytes) -> Callable[[bytes], bool]:
    """
    A check of what a keep-alive HTTP client received: whether it is a
    whole response, a 200 with C{body} framed by Content-Length that keeps
    the connection open (L{PeerError} for any other response).
    """

    def answered(received: bytes) -> bool:
        end = received.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = received[:end].decode("latin-1").split("\r\n")
        if not head[0].startswith("HTTP/1.1 200 "):
            raise PeerError(f"http: expected a 200 response, got {head[0]!r}")
        length = None
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "connection" and "close" in value.lower():
                raise PeerError("http: the response closes the connection")
        if length is None:
            raise PeerError("http: a response without Content-Length")
        received = received[end + 4:]
        if len(received) < length:
            return False
        if received != body:
            raise PeerError(f"http: unexpected body of {len(received)} bytes")
        return True

    return answered


class IdleClients:
    """
    Client connections this process opens, takes through one exchange,
    and then keeps open without a byte more, all on non-blocking sockets.
    """

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def open(
        self,
        port: int,
        count: int,
        request: bytes,
        complete: Callable[[bytes], bool],
        concurrency: int,
        timeout: float,
    ) -> float:
        """
        Open C{count} connections to C{127.0.0.1:port}, C{concurrency} at a
        time; on each send C{request} and read until C{complete(received)}.
        Returns the seconds it took; L{PeerError} if any connection fails
        or the whole takes longer than C{timeout}.
        """
        selector = selectors.DefaultSelector()
        pending: dict[socket.socket, bytearray] = {}
        started = done = 0
        begun = time.monotonic()
        deadline = begun + timeout
        try:
            while done < count:
                while started < count and len(pending) < concurrency:
                    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    connection.setblocking(False)
                    pending[connection] = bytearray()
                    started += 1
                    status = connection.connect_ex((LOOPBACK, port))
                    if status not in (0, errno.EINPROGRESS):
                        raise PeerError(f"connect to port {port}: {os.strerror(status)}")
                    selector.register(connection, selectors.EVENT_WRITE)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PeerError(f"{done} of {count} connections to port {port} opened in {timeout:g}s")
                for key, events in selector.select(min(remaining, 1.0)):
                    connection = key.fileobj
                    if events & selectors.EVENT_WRITE:
                        status = connection.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if status:
                            raise PeerError(f"connect to port {port}: {os.strerror(status)}")
                        if connection.send(request) != len(request):
                            raise PeerError("a short send of a small request")
                        selector.modify(connection, selectors.EVENT_READ)
                        continue
                    try:
                        data = connection.recv(65536)
                    except ConnectionError as e:
                        raise PeerError(f"connection to port {port}: {e}")
                    received = pending[connection]
                    if not data:
                        raise PeerError(f"port {port} closed a connection after {len(received)} bytes")
                    received += data
                    if complete(bytes(received)):
                        selector.unregister(connection)
                        del pending[connection]
                        self.sockets.append(connection)
                        done += 1
        finally:
            for connection in pending:
                connection.close()
            selector.close()
        return time.monotonic() - begun

    def dropped(self) -> int:
        """
        How many of the idle connections have been closed or written to
        by the other end since their exchange (none should have been).
        """
        poller = select.poll()
        for connection in self.sockets:
            poller.register(connection, select.POLLIN | select.POLLERR | select.POLLHUP)
        return len(poller.poll(0))

    def close(self) -> None:
        for connection in self.sockets:
            connection.close()
        self.sockets = []


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="The peers of bench/run_memory.py.")
    sub = parser.add_subparsers(dest="command", required=True)
    echo = sub.add_parser("echo", help="an echo server")
    echo.add_argument("--host", default=LOOPBACK)
    echo.add_argument("--port", type=int, required=True)
    echo.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = EchoServer(listen(args.host, args.port))
    server.runUntil(time.monotonic() + args.max_seconds, os.getppid())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
