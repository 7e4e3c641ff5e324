"""
mode = "http" between real peers: the real C{twistd -n lbproxy --config}
in front of nginx (Debian's, started here on free loopback ports) and the
Python sink backend (L{httpsink}), with curl, Python's http.client, raw
sockets and wrk as clients.

One set of processes serves the whole module:

  - nginx listening on three ports: C{web1} and C{web2} form the pool
    C{web} (round-robin, cookie persistence), C{api1} alone the pool
    C{api};
  - the sink, pool C{sink}, which counts uploaded bodies and echoes
    websocket tunnels;
  - lbproxy with two listeners: C{front} routes C{Host: api.test} to
    C{api}, C{/upload} and C{/ws} to C{sink} and the rest to C{web};
    C{edge} trusts 127.0.0.1 as a proxy (keeps its X-Forwarded-* values)
    and adds RFC 7239 Forwarded.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from peers import Nginx, curl, report, startNginx, startSink, wrk
from processes import Process, ProcessGroup, startLbproxy, waitUntil
from support import freePort, requireExecutable

pytestmark = pytest.mark.integration

CONFIG = """\
[listeners.front]
bind = "tcp:{front}:interface=127.0.0.1"
pool = "web"
mode = "http"
access_log = "{accessLog}"
routes = [
    {{ host = "api.test", pool = "api" }},
    {{ path_prefix = "/upload", pool = "sink" }},
    {{ path_prefix = "/ws", pool = "sink" }},
]

[listeners.edge]
bind = "tcp:{edge}:interface=127.0.0.1"
pool = "web"
mode = "http"
access_log = "{accessLog}"
trusted_proxies = ["127.0.0.1"]
forwarded = true

[pools.web]
servers = [
    {{ name = "web1", address = "127.0.0.1:{web1}" }},
    {{ name = "web2", address = "127.0.0.1:{web2}" }},
]
cookie = {{ name = "SRV" }}

[pools.api]
servers = [{{ name = "api1", address = "127.0.0.1:{api1}" }}]

[pools.sink]
servers = [{{ name = "sink1", address = "127.0.0.1:{sink}" }}]
"""

#: Size of the static file served by nginx.
STATIC_SIZE = 16 * 1024 * 1024


@dataclass
class Peers:
    """
    The running processes and where they listen.
    """

    nginx: Nginx
    lbproxy: Process
    front: int
    edge: int
    sink: int
    accessLog: Path
    staticDigest: str

    @property
    def web(self) -> set[str]:
        return {str(port) for port in self.nginx.ports[:2]}

    @property
    def api(self) -> str:
        return str(self.nginx.ports[2])

    def url(self, path: str = "/", listener: str = "front") -> str:
        return f"http://127.0.0.1:{getattr(self, listener)}{path}"

    def logged(self, path: str) -> list[str]:
        """
        The access log lines of requests for C{path}.
        """
        if not self.accessLog.exists():
            return []
        marker = f' {path} HTTP/1.1"'
        return [line for line in self.accessLog.read_text().splitlines() if marker in line]


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    requireExecutable("curl")
    directory = tmp_path_factory.mktemp("peers")
    group = ProcessGroup(directory)
    try:
        nginx = startNginx(group, directory, "nginx", count=3)
        big = os.urandom(STATIC_SIZE)
        (nginx.static / "big.bin").write_bytes(big)
        _, sink = startSink(group, "sink1")
        front, edge = freePort(), freePort()
        accessLog = directory / "access.log"
        web1, web2, api1 = nginx.ports
        config = CONFIG.format(
            front=front, edge=edge, accessLog=accessLog, web1=web1, web2=web2, api1=api1, sink=sink
        )
        lbproxy = startLbproxy(group, directory, config, front)
        lbproxy.waitForPort(edge)
        lbproxy.logs.append(accessLog)
        yield Peers(nginx, lbproxy, front, edge, sink, accessLog, hashlib.sha256(big).hexdigest())
        assert lbproxy.running(), lbproxy.describe()
    finally:
        group.stopAll()


def get(connection: http.client.HTTPConnection, path: str, headers: dict | None = None):
    """
    One GET on C{connection}: the response and its whole body.
    """
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    return response, response.read()


def test_keepAliveReusesBackendConnections(peers):
    """
    Several requests on one http.client connection are answered on that
    connection, alternately by the two nginx ports, and each port sees
    them arrive on one backend connection: nginx's connection number stays
    the same and its request count goes up by one each time.
    """
    connection = http.client.HTTPConnection("127.0.0.1", peers.front, timeout=10)
    seen = defaultdict(list)
    try:
        get(connection, "/keepalive/warm")
        sock = connection.sock
        for index in range(8):
            response, body = get(connection, f"/keepalive/{index}")
            assert response.status == 200
            assert connection.sock is sock, "the proxy closed the client connection"
            fields = report(body.decode())
            assert fields["port"] == response.getheader("X-Seen-Port")
            seen[fields["port"]].append(
                (int(response.getheader("X-Seen-Connection")), int(response.getheader("X-Seen-Requests")))
            )
    finally:
        connection.close()
    assert set(seen) == peers.web, seen
    for port, uses in seen.items():
        assert len({number for number, _ in uses}) == 1, (port, uses)
        counts = [count for _, count in uses]
        assert counts == list(range(counts[0], counts[0] + len(counts))), (port, uses)


def test_forwardingHeadersSeenByNginx(peers):
    """
    nginx sees the client in X-Forwarded-For and the scheme in
    X-Forwarded-Proto; values a client made up are replaced, unless the
    client is a trusted proxy (listener edge), whose values are kept and
    extended, with RFC 7239 Forwarded added. The access log shows the
    X-Forwarded-For value sent.
    """
    spoof = ["-H", "X-Forwarded-For: 203.0.113.7", "-H", "X-Forwarded-Proto: https"]
    direct = report(curl(*spoof, peers.url("/xff/front")).decode())
    assert direct["xff"] == "127.0.0.1"
    assert direct["proto"] == "http"
    assert direct["host"] == f"127.0.0.1:{peers.front}"
    assert direct["forwarded"] is None

    trusted = report(curl(*spoof, peers.url("/xff/edge", "edge")).decode())
    assert trusted["xff"] == "203.0.113.7, 127.0.0.1"
    assert trusted["proto"] == "https"
    # The Forwarded element of this hop: the client as lbproxy saw it.
    assert re.fullmatch(
        rf'for="127\.0\.0\.1:\d+";proto=http;host="127\.0\.0\.1:{peers.edge}"', trusted["forwarded"] or ""
    ), trusted

    waitUntil(lambda: peers.logged("/xff/front") and peers.logged("/xff/edge"), "access log lines")
    [front] = peers.logged("/xff/front")
    [edge] = peers.logged("/xff/edge")
    assert re.search(r' front web/web[12] [-\d/]+ 200 \d+ 0 --NI "127\.0\.0\.1" "GET /xff/front HTTP/1\.1"$', front), front
    assert re.search(r' edge web/web[12] .* "203\.0\.113\.7, 127\.0\.0\.1" "GET /xff/edge HTTP/1\.1"$', edge), edge


def test_cookieStickinessWithCurl(peers, tmp_path):
    """
    curl without cookies alternates between the nginx ports; with a
    cookie jar it sticks to the port that served it first, and the
    persistence cookie never reaches nginx (indirect).
    """
    plain = [report(curl(peers.url("/plain")).decode())["port"] for _ in range(4)]
    assert set(plain) == peers.web
    assert all(a != b for a, b in zip(plain, plain[1:])), plain

    jar = str(tmp_path / "jar")
    sticky = [report(curl("-b", jar, "-c", jar, peers.url("/sticky")).decode()) for _ in range(5)]
    assert len({fields["port"] for fields in sticky}) == 1, sticky
    assert all(fields["cookie"] is None for fields in sticky), sticky
    assert "\tSRV\tweb" in Path(jar).read_text()

    # Another cookie of the client's still reaches the server.
    other = report(curl("-b", jar, "-b", "theme=dark", peers.url("/sticky")).decode())
    assert other["cookie"] == "theme=dark"
    assert other["port"] == sticky[0]["port"]


def test_routingByHostAndPath(peers):
    """
    The listener's rules send Host api.test to the api pool and /upload to
    the sink; anything else goes to the listener's own pool.
    """
    api = [report(curl("-H", "Host: api.test", peers.url("/anything")).decode())["port"] for _ in range(3)]
    assert api == [peers.api] * 3
    assert report(curl("-H", "Host: API.test:80", peers.url("/")).decode())["port"] == peers.api
    others = {report(curl("-H", "Host: www.test", peers.url(f"/web/{i}")).decode())["port"] for i in range(2)}
    assert others == peers.web
    sink = json.loads(curl(peers.url("/upload/probe")))
    assert sink["name"] == "sink1"
    assert sink["method"] == "GET"


def test_largeStaticFile(peers, tmp_path):
    """
    A 16 MiB file from nginx arrives whole through curl, and twice on one
    http.client connection.
    """
    out = tmp_path / "big.bin"
    curl("-o", str(out), peers.url("/static/big.bin"))
    assert hashlib.sha256(out.read_bytes()).hexdigest() == peers.staticDigest
    connection = http.client.HTTPConnection("127.0.0.1", peers.front, timeout=20)
    try:
        for _ in range(2):
            response, body = get(connection, "/static/big.bin")
            assert response.status == 200
            assert response.getheader("Content-Length") == str(STATIC_SIZE)
            assert hashlib.sha256(body).hexdigest() == peers.staticDigest
    finally:
        connection.close()


def test_chunkedUploadWithCurl(peers):
    """
    A chunked upload from curl's standard input reaches the backend whole,
    still chunked; a Content-Length upload from http.client keeps its
    length.
    """
    data = os.urandom(5 * 1024 * 1024 + 17)
    answer = json.loads(
        curl("-H", "Transfer-Encoding: chunked", "-T", "-", peers.url("/upload/chunked"), input=data)
    )
    assert answer["bytes"] == len(data)
    assert answer["sha256"] == hashlib.sha256(data).hexdigest()
    assert answer["chunked"] is True
    assert answer["xff"] == "127.0.0.1"

    connection = http.client.HTTPConnection("127.0.0.1", peers.front, timeout=20)
    try:
        connection.request("POST", "/upload/length", body=data)
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 200
    assert (answer["bytes"], answer["chunked"]) == (len(data), False)
    assert answer["sha256"] == hashlib.sha256(data).hexdigest()


def readHead(sock: socket.socket) -> tuple[bytes, bytes]:
    """
    Read a response head from C{sock}: the head and what followed it.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, data
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def test_websocketUpgrade(peers):
    """
    A websocket upgrade becomes a tunnel after the backend's 101: bytes go
    both ways unchanged. An h2c upgrade is not passed on: the backend
    answers the plain request.
    """
    with socket.create_connection(("127.0.0.1", peers.front), timeout=10) as sock:
        sock.sendall(
            b"GET /ws/echo HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        head, rest = readHead(sock)
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert b"upgrade: websocket" in head.lower()
        for message in (b"\x81\x05hello", b"\x00" * 100000, b"bye"):
            sock.sendall(message)
            echoed = rest
            while len(echoed) < len(message):
                piece = sock.recv(65536)
                assert piece
                echoed += piece
            assert echoed == message
            rest = b""

    with socket.create_connection(("127.0.0.1", peers.front), timeout=10) as sock:
        sock.sendall(
            b"GET /ws/h2c HTTP/1.1\r\nHost: ws.test\r\nUpgrade: h2c\r\n"
            b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
        head, rest = readHead(sock)
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        while len(rest) < length:
            rest += sock.recv(65536)
        assert json.loads(rest)["path"] == "/ws/h2c"


def test_wrkKeepAlive(peers):
    """
    wrk's keep-alive load through the proxy to both nginx ports completes
    without a socket error or a non-2xx response.
    """
    result = wrk(peers.url("/wrk"), threads=1, connections=10, duration="2s")
    assert result.requests > 0, result.output
    assert result.socketErrors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}, result.output
    assert result.non2xx == 0, result.output
    assert peers.lbproxy.running(), peers.lbproxy.describe()
