"""
lbproxy running out of file descriptors, for real: C{twistd -n lbproxy}
started with a soft and hard C{RLIMIT_NOFILE} of 64, one backend (the
sink) checked every second with C{fall = 2} and C{passive_fall = 1}, so
a single failed connection counted against it would take it down, and
more clients than descriptors.

The server is never marked down; the health checks lbproxy could not make
are logged as skipped for its limit; a listener out of descriptors stops
accepting for a moment instead of accepting and closing the waiting
connections; HTTP requests that cannot get a server connection get a 503
logged C{PC}; and once the clients leave, everything serves again.
"""

from __future__ import annotations

import socket
import sys
import time

import pytest

from peers import startSink
from processes import lbproxyArgv, processes, waitUntil  # noqa: F401 (a fixture)
from support import freePort

pytestmark = pytest.mark.integration

LIMIT = 64

CONFIG = """\
[listeners.www]
bind = "tcp:{http}:interface=127.0.0.1"
mode = "http"
pool = "web"

[listeners.raw]
bind = "tcp:{raw}:interface=127.0.0.1"
pool = "raw"

[pools.web]
servers = [ {{ name = "sink", address = "127.0.0.1:{sink}" }} ]

[pools.web.health]
type = "http"
interval = "1s"
timeout = "1s"
fall = 2
passive_fall = 1

[pools.raw]
servers = [ {{ name = "sink", address = "127.0.0.1:{sink}" }} ]

[pools.raw.health]
interval = "1s"
timeout = "1s"
fall = 2
passive_fall = 1
"""

#: Runs the rest of its command line with RLIMIT_NOFILE set to argv[1].
WITH_LIMIT = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)


def connectAll(port: int, count: int) -> list[socket.socket]:
    clients = []
    for _ in range(count):
        client = socket.socket()
        client.settimeout(30)
        client.connect(("127.0.0.1", port))
        clients.append(client)
    return clients


def statusOf(client: socket.socket) -> str:
    """
    The status line the client received, or how its connection ended.
    """
    received = b""
    try:
        while b"\r\n" not in received:
            data = client.recv(4096)
            if not data:
                return "closed" + (f" after {received!r}" if received else "")
            received += data
    except OSError as e:
        return f"error {e}"
    return received.split(b"\r\n", 1)[0].decode("latin-1")


def get(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: lbproxy\r\nConnection: close\r\n\r\n")
        return statusOf(client)


def test_outOfDescriptors(tmp_path, processes):
    sink, sinkPort = startSink(processes, "sink")
    http, raw = freePort(), freePort()
    config = tmp_path / "lbproxy.toml"
    config.write_text(CONFIG.format(http=http, raw=raw, sink=sinkPort))
    argv = lbproxyArgv(tmp_path, "--config", str(config))
    lbproxy = processes([sys.executable, "-c", WITH_LIMIT, str(LIMIT), *argv], "lbproxy")
    lbproxy.waitForPort(http)
    lbproxy.waitForPort(raw)
    waitUntil(lambda: get(http) == "HTTP/1.1 200 OK", "the first answer", timeout=30)

    def log() -> str:
        return lbproxy.stdout

    # Hold more TCP flows than descriptors allow (each holds two), long
    # enough for several health checks of both pools to be due.
    held = connectAll(raw, LIMIT)
    waitUntil(
        lambda: "stopped accepting on 127.0.0.1:" in log()
        and "skipped" in log().split("stopped accepting", 1)[1],
        "the listener's pause and skipped health checks",
        timeout=30,
    )
    time.sleep(2)
    for client in held:
        client.close()
    waitUntil(lambda: get(http) == "HTTP/1.1 200 OK", "an answer after the TCP clients left", timeout=30)

    # More HTTP clients than descriptors, all asking at once: those whose
    # request finds no descriptor for a server connection get a 503.
    clients = connectAll(http, LIMIT + 16)
    for client in clients:
        client.sendall(b"GET / HTTP/1.1\r\nHost: lbproxy\r\nConnection: close\r\n\r\n")
    statuses = [statusOf(client) for client in clients]
    for client in clients:
        client.close()
    answered = {"HTTP/1.1 200 OK", "HTTP/1.1 503 Service Unavailable"}
    assert set(statuses) <= answered, statuses
    assert "HTTP/1.1 503 Service Unavailable" in statuses, statuses

    # Everything serves again, through both listeners.
    assert get(http) == "HTTP/1.1 200 OK"
    with socket.create_connection(("127.0.0.1", raw), timeout=30) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: lbproxy\r\nConnection: close\r\n\r\n")
        assert statusOf(client) == "HTTP/1.1 200 OK"

    text = log()
    description = lbproxy.describe()
    assert " is down " not in text, description
    assert "lbproxy is out of file descriptors (EMFILE): refused " in text, description
    assert " PC-- " in text, description
    assert "skipped " in text and "(not a server failure; servers keep their state)" in text, description
    # Twisted's own EMFILE recovery (accept and close every waiting
    # connection, a line each) did not run.
    assert "EMFILE recovery" not in text, description
