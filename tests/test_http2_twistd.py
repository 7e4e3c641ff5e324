"""
The HTTP/2 front in the real daemon (C{twistd -n lbproxy}) with real
clients: curl (C{--http2} by ALPN, C{--http2-prior-knowledge} on
cleartext), h2load (nghttp2-client), and the h2 library over a real
socket; HTTP/1.1 and HTTP/2 clients on one TLS listener at once; large
bodies both ways; a Rapid Reset flood closed while other clients are
served.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import ssl
import subprocess

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, DataReceived, ResponseReceived, StreamEnded

from certs import CertificateAuthority
from peers import curl, startSink
from processes import memoryStatus, processes, resetPeakMemory, startLbproxy, waitUntil  # noqa: F401 (fixture)
from support import freePort, requireExecutable

pytestmark = pytest.mark.integration

CONFIG = """\
[listeners.secure]
bind = "tcp:{tlsPort}:interface=127.0.0.1"
pool = "app"
mode = "http"
access_log = "{accessLog}"

[listeners.secure.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}]

[listeners.secure.http2]
enabled = true
max_resets = 50

[listeners.plain]
bind = "tcp:{plainPort}:interface=127.0.0.1"
pool = "app"
mode = "http"

[listeners.plain.http2]
enabled = true
cleartext = true

[pools.app]
servers = [{{ name = "a", address = "127.0.0.1:{backend}" }}]
"""


@pytest.fixture
def daemon(processes, tmp_path):
    ca = CertificateAuthority(tmp_path / "ca")
    issued = ca.issue("www.example.test")
    _, backend = startSink(processes, "a")
    tlsPort, plainPort = freePort(), freePort()
    accessLog = tmp_path / "access.log"
    config = CONFIG.format(
        tlsPort=tlsPort,
        plainPort=plainPort,
        cert=issued.chain,
        key=issued.key,
        backend=backend,
        accessLog=accessLog,
    )
    process = startLbproxy(processes, tmp_path, config, tlsPort)
    process.waitForPort(plainPort)
    return process, ca, tlsPort, plainPort, accessLog


def curlVersion(url: str, ca, *options: str) -> tuple[str, dict]:
    """
    The HTTP version curl used, and the JSON body it got.
    """
    out = curl(
        "--cacert",
        str(ca.cert),
        "--resolve",
        f"www.example.test:{url.split(':')[2].split('/')[0]}:127.0.0.1",
        "-w",
        "\n%{http_version}",
        *options,
        url,
    ).decode()
    body, _, version = out.rpartition("\n")
    return version, json.loads(body)


class H2SocketClient:
    """
    The h2 library over a real socket (TLS with ALPN h2, or cleartext).
    """

    def __init__(self, port: int, ca=None):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        if ca is not None:
            context = ssl.create_default_context(cafile=str(ca.cert))
            context.set_alpn_protocols(["h2"])
            raw = context.wrap_socket(raw, server_hostname="www.example.test")
            assert raw.selected_alpn_protocol() == "h2"
        self.sock = raw
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.bodies: dict[int, bytes] = {}
        self.status: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.terminated = None
        # False once a write failed (the server closed): TLS allows no
        # other write after one that failed part way.
        self.writable = True

    def request(self, path: bytes, end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [(b":method", b"GET"), (b":scheme", b"https"), (b":path", path), (b":authority", b"www.example.test")],
            end_stream=end,
        )
        self.sock.sendall(self.conn.data_to_send())
        return sid

    def pump(self, until) -> None:
        while not until():
            data = self.sock.recv(65536)
            if not data:
                return
            for event in self.conn.receive_data(data):
                if isinstance(event, ResponseReceived):
                    self.status[event.stream_id] = dict(event.headers)[b":status"]
                elif isinstance(event, DataReceived):
                    self.bodies[event.stream_id] = self.bodies.get(event.stream_id, b"") + event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded):
                    self.ended.add(event.stream_id)
                elif isinstance(event, ConnectionTerminated):
                    self.terminated = event.error_code
            out = self.conn.data_to_send()
            if out and self.writable:
                try:
                    self.sock.sendall(out)
                except OSError:
                    self.writable = False

    def close(self):
        self.sock.close()


def test_alpnCurlAndHTTP11AtOnce(daemon):
    """
    One TLS listener: an h2 client with a stream open, meanwhile HTTP/1.1
    and HTTP/2 curl requests; each is served, the access log says which
    protocol each used.
    """
    process, ca, tlsPort, plainPort, accessLog = daemon
    h2 = H2SocketClient(tlsPort, ca)
    try:
        slow = h2.request(b"/delay/500")
        version, report = curlVersion(f"https://www.example.test:{tlsPort}/one", ca, "--http1.1")
        assert version == "1.1"
        assert report["proto"] == "https" and report["xff"] == "127.0.0.1"
        version, report = curlVersion(f"https://www.example.test:{tlsPort}/two", ca, "--http2")
        assert version == "2"
        assert report["path"] == "/two" and report["proto"] == "https"
        h2.pump(lambda: slow in h2.ended)
        assert h2.status[slow] == b"200"
        assert json.loads(h2.bodies[slow])["delayed"] == 500
    finally:
        h2.close()
    waitUntil(lambda: accessLog.exists() and len(accessLog.read_text().splitlines()) >= 3, "three access log lines")
    lines = accessLog.read_text()
    assert '"GET /one HTTP/1.1"' in lines
    assert '"GET /two HTTP/2.0"' in lines
    assert '"GET /delay/500 HTTP/2.0"' in lines


def test_priorKnowledgeCleartext(daemon):
    process, ca, tlsPort, plainPort, accessLog = daemon
    out = curl("--http2-prior-knowledge", "-w", "\n%{http_version}", f"http://127.0.0.1:{plainPort}/h2c").decode()
    body, _, version = out.rpartition("\n")
    assert version == "2"
    assert json.loads(body)["path"] == "/h2c"
    # The same listener still serves HTTP/1.1.
    out = curl("-w", "\n%{http_version}", f"http://127.0.0.1:{plainPort}/h1").decode()
    assert out.rpartition("\n")[2] == "1.1"


def test_h2load(daemon):
    """
    h2load: 4 connections, 10 streams each at once, 400 requests, all
    answered 2xx.
    """
    process, ca, tlsPort, plainPort, accessLog = daemon
    h2load = requireExecutable("h2load")
    result = subprocess.run(
        [h2load, "-n", "400", "-c", "4", "-m", "10", f"https://127.0.0.1:{tlsPort}/"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"requests: 400 total, 400 started, 400 done, 400 succeeded, 0 failed", result.stdout), result.stdout
    assert re.search(r"status codes: 400 2xx", result.stdout), result.stdout
    assert "Application protocol: h2" in result.stdout


def test_largeBodiesBothWays(daemon, tmp_path):
    """
    64 MiB up and 64 MiB down over HTTP/2, intact, and the daemon's peak
    resident memory grows by far less than either body (flow control
    both ways, nothing buffered whole).
    """
    process, ca, tlsPort, plainPort, accessLog = daemon
    size = 64 * 1024 * 1024
    pid = process.popen.pid
    # One request first, so what every connection costs is counted before.
    curlVersion(f"https://www.example.test:{tlsPort}/warm", ca, "--http2")
    idle = memoryStatus(pid)["VmRSS"]
    if not resetPeakMemory(pid):
        idle = max(idle, memoryStatus(pid)["VmHWM"])
    upload = tmp_path / "upload.bin"
    block = bytes(range(256)) * 4096
    with open(upload, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
    digest = hashlib.sha256(upload.read_bytes()).hexdigest()
    version, report = curlVersion(
        f"https://www.example.test:{tlsPort}/up", ca, "--http2", "--data-binary", f"@{upload}"
    )
    assert version == "2"
    assert report["bytes"] == size and report["sha256"] == digest
    # Its length was known (content-length): not re-chunked.
    assert report["chunked"] is False
    down = tmp_path / "down.bin"
    curl(
        "--cacert",
        str(ca.cert),
        "--resolve",
        f"www.example.test:{tlsPort}:127.0.0.1",
        "--http2",
        "-o",
        str(down),
        f"https://www.example.test:{tlsPort}/bytes/{size}",
    )
    assert down.stat().st_size == size
    growth = memoryStatus(pid)["VmHWM"] - idle
    assert growth < 24 * 1024 * 1024, growth


def test_rapidResetClosedOthersServed(daemon):
    """
    A Rapid Reset client over a real socket gets GOAWAY ENHANCE_YOUR_CALM
    and one log line; curl is served meanwhile and afterwards.
    """
    process, ca, tlsPort, plainPort, accessLog = daemon
    attacker = H2SocketClient(tlsPort, ca)
    try:
        for _ in range(200):
            # lbproxy closes the connection after its GOAWAY: the write
            # that meets the close fails, the GOAWAY is still read.
            try:
                sid = attacker.request(b"/", end=False)
                attacker.conn.reset_stream(sid, ErrorCodes.CANCEL)
                attacker.sock.sendall(attacker.conn.data_to_send())
            except OSError:
                attacker.writable = False
                break
        attacker.pump(lambda: attacker.terminated is not None)
        assert attacker.terminated == ErrorCodes.ENHANCE_YOUR_CALM
    finally:
        attacker.close()
    version, report = curlVersion(f"https://www.example.test:{tlsPort}/after", ca, "--http2")
    assert version == "2" and report["path"] == "/after"
    waitUntil(lambda: "closed an HTTP/2 connection" in process.stdout, "the log line of the close")
    lines = [line for line in process.stdout.splitlines() if "closed an HTTP/2 connection" in line]
    assert len(lines) == 1
    assert "more than 50 RST_STREAM frames" in lines[0] and "ENHANCE_YOUR_CALM" in lines[0]
