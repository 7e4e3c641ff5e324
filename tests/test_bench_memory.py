"""
The memory benchmark's peers (bench/memory_peers.py): the echo server and
the idle clients, against each other on loopback (a few connections,
bounded; nothing here measures memory).
"""

from __future__ import annotations

import threading
import time

import pytest

from support import benchModule

peers = benchModule("memory_peers")


@pytest.fixture
def echoPort():
    listening = peers.listen("127.0.0.1", 0)
    port = listening.getsockname()[1]
    server = peers.EchoServer(listening)
    thread = threading.Thread(target=server.runUntil, args=(time.monotonic() + 30,), daemon=True)
    thread.start()
    yield port
    server.stopping = True
    thread.join(5)
    assert not thread.is_alive()
    server.close()


def test_idleClientsThroughTheEchoServer(echoPort):
    """
    Each client gets its byte back, then stays open and quiet.
    """
    clients = peers.IdleClients()
    try:
        seconds = clients.open(echoPort, 20, peers.ECHO_BYTE, peers.echoed, concurrency=5, timeout=10)
        assert len(clients.sockets) == 20
        assert seconds < 10
        assert clients.dropped() == 0
    finally:
        clients.close()
    assert clients.sockets == []


def test_closedConnectionsCounted(echoPort):
    """
    A connection the other end closes counts as dropped.
    """
    clients = peers.IdleClients()
    try:
        clients.open(echoPort, 2, peers.ECHO_BYTE, peers.echoed, concurrency=2, timeout=10)
        clients.sockets[0].shutdown(1)  # the echo server closes in turn
        deadline = time.monotonic() + 5
        while clients.dropped() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert clients.dropped() == 1
    finally:
        clients.close()


def test_echoedRefusesOtherBytes():
    assert not peers.echoed(b"")
    assert peers.echoed(peers.ECHO_BYTE)
    with pytest.raises(peers.PeerError):
        peers.echoed(b"y")


def test_answeredWith():
    """
    A whole keep-alive 200 with the expected body is an answer; a partial
    one is not yet; anything else is an error.
    """
    answered = peers.answeredWith(b"hello")
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n"
    assert not answered(head[:10])
    assert not answered(head + b"hel")
    assert answered(head + b"hello")
    with pytest.raises(peers.PeerError):
        answered(head + b"world")
    with pytest.raises(peers.PeerError):
        answered(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(peers.PeerError):
        answered(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello")
    with pytest.raises(peers.PeerError):
        answered(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_httpRequest():
    assert peers.httpRequest(8080, "/100B").startswith(b"GET /100B HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n")
    assert peers.httpRequest(8080, "/100B").endswith(b"\r\n\r\n")
