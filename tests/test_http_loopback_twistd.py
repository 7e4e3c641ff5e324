"""
End-to-end tests of mode = "http" through the real C{twistd -n lbproxy
--config FILE} subprocess: curl and http.client as clients, the demo web
servers and a streaming Twisted server as backends; cookie persistence,
X-Forwarded-For, backend connection reuse, and large bodies both ways with
the proxy's memory bounded.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import subprocess
import sys
import time

import pytest

from support import freePort, requireExecutable
from test_twistd_e2e import lbproxyArgv, processes, report, startBackends  # noqa: F401

pytestmark = pytest.mark.integration

CONFIG = """\
[listeners.front]
bind = "tcp:{listen}:interface=127.0.0.1"
pool = "web"
mode = "http"
access_log = "{accessLog}"

[pools.web]
selector = "roundrobin"
servers = [
    {{ name = "alpha", address = "127.0.0.1:{alpha}" }},
    {{ name = "beta", address = "127.0.0.1:{beta}" }},
]

[pools.web.cookie]
name = "SRV"
"""

#: A backend that streams GET /big?n=N and digests POST bodies, without
#: holding either in memory.
STREAMER = """\
import hashlib, sys
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from lbproxy.http.parser import RequestParser

BLOCK = b"z" * 65536

class Handler(Protocol):
    def connectionMade(self):
        self.parser = RequestParser(self, maxBodySize=None)
        self.remaining = 0
    def dataReceived(self, data):
        self.parser.dataReceived(data)
    def headersComplete(self, head):
        self.head = head
        self.digest = hashlib.sha256()
        self.length = 0
    def bodyData(self, data):
        self.digest.update(data)
        self.length += len(data)
    def messageComplete(self):
        if self.head.method == b"POST":
            body = b"%d %s" % (self.length, self.digest.hexdigest().encode())
            self.transport.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
            return
        self.remaining = int(self.head.target.split(b"=")[1])
        self.transport.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % self.remaining)
        self.transport.registerProducer(self, True)
        self.resumeProducing()
    def pauseProducing(self):
        self.paused = True
    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.remaining > 0:
            piece = BLOCK[: self.remaining]
            self.remaining -= len(piece)
            self.transport.write(piece)
        if self.remaining <= 0:
            self.transport.unregisterProducer()
    def stopProducing(self):
        self.remaining = 0

reactor.listenTCP(int(sys.argv[1]), Factory.forProtocol(Handler), interface="127.0.0.1")
reactor.run()
"""


def startProxy(processes, tmp_path, alpha: int, beta: int):
    listen = freePort()
    config = tmp_path / "lb.toml"
    accessLog = tmp_path / "access.log"
    config.write_text(CONFIG.format(listen=listen, alpha=alpha, beta=beta, accessLog=accessLog))
    proxy = processes(lbproxyArgv(tmp_path, "--config", str(config)), "lbproxy")
    proxy.waitForPort(listen)
    return proxy, listen, accessLog


def curl(port: int, *options: str) -> str:
    result = subprocess.run(
        [requireExecutable("curl"), "-sS", "--max-time", "10", *options, f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cookiePersistenceAndForwardedFor(processes, tmp_path):
    """
    Plain curl alternates between the servers; with a cookie jar it sticks
    to one. Each server sees the client in X-Forwarded-For, and the access
    log has one line per request.
    """
    ports = startBackends(processes, ["alpha", "beta"])
    proxy, listen, accessLog = startProxy(processes, tmp_path, ports["alpha"], ports["beta"])
    plain = [report(curl(listen))["server"] for _ in range(4)]
    assert sorted(plain) == ["alpha", "alpha", "beta", "beta"]
    jar = str(tmp_path / "jar")
    sticky = [report(curl(listen, "-b", jar, "-c", jar))["server"] for _ in range(4)]
    assert len(set(sticky)) == 1
    assert report(curl(listen))["x-forwarded-for"] == "127.0.0.1"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = accessLog.read_text().splitlines()
        if len(lines) >= 9:
            break
        time.sleep(0.05)
    assert len(lines) == 9, proxy.describe()
    assert ' 200 ' in lines[0] and '"GET / HTTP/1.1"' in lines[0]
    assert sum(" --VN " in line for line in lines) == 3


def test_keepAliveClient(processes, tmp_path):
    ports = startBackends(processes, ["alpha", "beta"])
    proxy, listen, accessLog = startProxy(processes, tmp_path, ports["alpha"], ports["beta"])
    connection = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
    try:
        servers = []
        for _ in range(6):
            connection.request("GET", "/")
            response = connection.getresponse()
            assert response.status == 200
            assert response.getheader("set-cookie", "").startswith("SRV=")
            servers.append(report(response.read().decode())["server"])
    finally:
        connection.close()
    assert servers == ["alpha", "beta"] * 3


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_largeBodiesBoundedMemory(processes, tmp_path):
    """
    256 MiB down and 256 MiB up pass through with the proxy's resident
    memory growing by far less than the bodies.
    """
    ports = []
    for name in ("alpha", "beta"):
        port = freePort()
        processes([sys.executable, "-c", STREAMER, str(port)], f"streamer-{name}").waitForPort(port)
        ports.append(port)
    proxy, listen, accessLog = startProxy(processes, tmp_path, *ports)
    size = 256 * 1024 * 1024
    before = rss(proxy.popen.pid)
    peak = before
    with socket.create_connection(("127.0.0.1", listen), timeout=30) as sock:
        sock.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
        received = 0
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        head, rest = head.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 OK")
        received = len(rest)
        count = 0
        while received < size:
            data = sock.recv(1 << 20)
            assert data
            received += len(data)
            count += 1
            if count % 64 == 0:
                peak = max(peak, rss(proxy.popen.pid))
        assert received == size

        digest = hashlib.sha256()
        block = b"u" * (1 << 20)
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        for index in range(size // len(block)):
            sock.sendall(block)
            digest.update(block)
            if index % 16 == 0:
                peak = max(peak, rss(proxy.popen.pid))
        answer = b""
        while not answer.endswith(digest.hexdigest().encode()):
            data = sock.recv(65536)
            assert data, answer
            answer += data
    assert b"%d %s" % (size, digest.hexdigest().encode()) in answer
    assert peak - before < 48 * 1024 * 1024, (before, peak)
