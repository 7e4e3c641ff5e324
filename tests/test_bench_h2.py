"""
The HTTP/2 benchmark (bench/run_h2.py, bench/h2load.py, bench/h2_idle.py):
h2load's output read from real samples, the configs it generates for each
target, and one short real run of the whole script (bounded; nothing here
asserts on speed or memory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from lbproxy.config import loadBytes
from support import CHECKOUT, benchModule, missing, requireExecutable, twistd

# The scripts import their siblings by plain name (bench/ first on their path).
harness = sys.modules.setdefault("harness", benchModule("harness"))
h2_idle = sys.modules.setdefault("h2_idle", benchModule("h2_idle"))
h2load = sys.modules.setdefault("h2load", benchModule("h2load"))
run_h2 = benchModule("run_h2")

CLEAN = """\
starting benchmark...
spawning thread #0: 10 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
TLS Protocol: TLSv1.3
Cipher: TLS_AES_256_GCM_SHA384
Server Temp Key: X25519 253 bits
Application protocol: h2
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 42690.50 req/s, 6.59MB/s
requests: 85381 total, 85391 started, 85381 done, 85381 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 85381 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 13.18MB (13822392) total, 1.79MB (1877710) headers (space savings 93.71%), 8.14MB (8538100) data
                     min         max         mean         sd        +/- sd
time for request:      103us      4.78ms       203us        87us    97.63%
time for connect:     6.61ms     10.02ms      8.40ms      1.10ms    60.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :    4152.34     4384.11     4269.05       71.01    70.00%
"""

NOT_FOUND = """\
finished in 18.46s, 632.00 req/s, 0B/s
requests: 1264 total, 1265 started, 1264 done, 0 succeeded, 1264 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 1264 4xx, 0 5xx
traffic: 0B (0) total, 1.29MB (1350178) headers (space savings 0.00%), 2.72MB (2854699) data
                     min         max         mean         sd        +/- sd
time for request:      847us      5.59ms      1.83ms       493us    71.99%
"""

REFUSED = """\
starting benchmark...
spawning thread #0: 2 total client(s). 10 total requests

finished in 896us, 0.00 req/s, 0B/s
requests: 10 total, 0 started, 0 done, 0 succeeded, 10 failed, 10 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 0B (0) total, 0B (0) headers (space savings 0.00%), 0B (0) data
                     min         max         mean         sd        +/- sd
time for request:        0us         0us         0us         0us     0.00%
"""

HTTP11 = """\
TLS Protocol: TLSv1.3
Application protocol: http/1.1

finished in 27.63ms, 723.96 req/s, 342.18KB/s
requests: 20 total, 20 started, 20 done, 20 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 20 2xx, 0 3xx, 0 4xx, 0 5xx
time for request:     2.33ms      7.43ms      3.97ms      1.53ms    75.00%
"""

# In-flight answers at the end of a timed run: more 2xx statuses than done.
IN_FLIGHT = """\
Application protocol: h2
finished in 2.00s, 2156.00 req/s, 310.20KB/s
requests: 4312 total, 4412 started, 4312 done, 4312 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 4401 2xx, 0 3xx, 0 4xx, 0 5xx
time for request:    10.10ms     90.00ms     45.60ms      5.00ms    80.00%
"""


def test_parseClean():
    result = h2load.parseH2load(CLEAN)
    assert result.requestsPerSecond == 42690.50
    assert result.reportedRequestsPerSecond == 42690.50
    assert result.requests == result.succeeded == result.status2xx == 85381
    assert result.protocol == "h2"
    assert result.latencyMeanMs == pytest.approx(0.203)
    assert result.bytesPerSecond == pytest.approx(6.59 * 1024**2)
    assert result.problems() == ""
    assert result.socketErrors == result.non2xx == 0


def test_parseInFlightAtTheEndIsClean():
    result = h2load.parseH2load(IN_FLIGHT)
    assert result.problems() == ""
    assert result.requestsPerSecond == 2156.0
    assert result.non2xx == 0


def test_parseNon2xxIsNotSpeed():
    result = h2load.parseH2load(NOT_FOUND)
    assert result.requestsPerSecond == 0.0
    assert result.reportedRequestsPerSecond == 632.0
    assert result.non2xx == 1264
    assert result.socketErrors == 0
    assert result.problems() == "1264 failed, 1264 non-2xx, protocol none"


def test_parseErrors():
    result = h2load.parseH2load(REFUSED)
    assert result.requestsPerSecond == 0.0
    assert result.errored == 10 and result.failed == 10
    assert result.socketErrors == 10
    assert "10 errored" in result.problems() and "no request done" in result.problems()


def test_parseOtherProtocol():
    result = h2load.parseH2load(HTTP11)
    assert result.requestsPerSecond == 0.0
    assert result.problems() == "protocol http/1.1"


def test_parseRejectsOtherOutput():
    with pytest.raises(harness.BenchError):
        h2load.parseH2load("No protocol negotiated\n")


def test_h2loadArgv():
    argv = h2load.h2loadArgv("https://127.0.0.1:1/100B", 5, 10, 1)
    assert argv[1:] == ["-t", "1", "-c", "10", "-m", "1", "-D", "5", "https://127.0.0.1:1/100B"]


@pytest.fixture
def tlsFiles(tmp_path):
    return harness.makeCertificate(str(tmp_path), "ec")


def test_lbproxyConfig(tlsFiles):
    """
    TLS 1.3 only, the HTTP/2 front enabled, the access log left alone.
    """
    text = run_h2.h2LbproxyConfig(40000, [("a", 40001), ("b", 40002)], tlsFiles, 4000)
    config = loadBytes(text.encode(), "bench.toml")
    listener = config.listeners["bench"]
    assert listener.mode == "http"
    assert listener.http2 is not None
    assert "h2" in listener.tls.alpn
    assert listener.tls.minVersion == "1.3"
    assert "access_log" not in text and "log_requests" not in text
    assert len(config.pools[listener.pool].servers) == 2
    assert listener.http2.maxRequests == 1000
    raised = run_h2.h2LbproxyConfig(40000, [("a", 40001)], tlsFiles, 4000, run_h2.MAX_REQUESTS)
    assert loadBytes(raised.encode(), "bench.toml").listeners["bench"].http2.maxRequests == run_h2.MAX_REQUESTS
    quiet = run_h2.h2LbproxyConfig(40000, [("a", 40001)], tlsFiles, 4000, 0, "errors")
    assert 'log_requests = "errors"' in quiet
    loadBytes(quiet.encode(), "bench.toml")


def test_haproxyConfig():
    text = run_h2.h2HaproxyConfig(40000, [("a", 40001), ("b", 40002)], "/certs/ec.pem", 4000)
    assert "bind 127.0.0.1:40000 ssl crt /certs/ec.pem alpn h2,http/1.1 ssl-min-ver TLSv1.3\n" in text
    assert "    mode http\n" in text and "nbthread 1" in text and "http-reuse always" in text


def test_twistedWebArgv(tlsFiles):
    argv = run_h2.twistedWebArgv("python", 40000, [("a", 40001), ("b", 40002)], tlsFiles)
    assert argv[1].endswith("reverse_proxy_resource.py")
    assert argv[2:] == [
        "--port", "40000", "--cert", tlsFiles.cert, "--key", tlsFiles.key,
        "--backend", "127.0.0.1:40001", "--backend", "127.0.0.1:40002",
    ]


def test_parseArgs():
    args = run_h2.parseArgs(["--streams", "10,1", "--targets", "lbproxy,haproxy"])
    assert args.scenarios == ["m1", "m10"]
    assert args.targets == ["haproxy", "lbproxy"]
    assert args.connections == 10 and args.idle_connections == 1000
    with pytest.raises(SystemExit):
        run_h2.parseArgs(["--targets", "nginx"])


def test_serverSettingsSeen():
    settings = h2_idle.frame(h2_idle.SETTINGS, payload=b"\x00\x03\x00\x00\x00\x64")
    assert h2_idle.serverSettingsSeen(settings[:5]) is None
    assert h2_idle.serverSettingsSeen(settings) is True
    assert h2_idle.serverSettingsSeen(settings + h2_idle.SETTINGS_ACK) is True
    with pytest.raises(h2_idle.H2Error):
        h2_idle.serverSettingsSeen(h2_idle.frame(h2_idle.GOAWAY, payload=bytes(8)))
    assert h2_idle.frameKinds(h2_idle.SETTINGS_ACK + h2_idle.frame(h2_idle.GOAWAY)) == [4, 7]


def test_shortRealRun(tmp_path):
    """
    The whole script, briefly, against all three targets: every run
    parsed, every target measured for idle connections.
    """
    for tool in ("h2load", "haproxy", "nginx", "curl"):
        requireExecutable(tool)
    python = os.path.join(os.path.dirname(twistd()), "python")
    enabled = subprocess.run(
        [python, "-c", "from twisted.web.http import H2_ENABLED; print(H2_ENABLED)"],
        capture_output=True, timeout=60,
    ).stdout.strip()
    if enabled != b"True":
        missing("twisted.web has no HTTP/2 here (the priority package is missing)")
    output = tmp_path / "h2.json"
    done = subprocess.run(
        [sys.executable, os.path.join(CHECKOUT, "bench", "run_h2.py"),
         "--rounds", "1", "--duration", "1", "--warmup", "0", "--idle-connections", "50",
         "--twistd", twistd(), "--json", str(output)],
        capture_output=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    document = json.loads(output.read_text())
    assert {(r["target"], r["payload"]) for r in document["results"]} == {
        (t, s) for t in run_h2.TARGETS for s in ("m1", "m10")
    }
    assert [r["target"] for r in document["idle"]] == list(run_h2.TARGETS)
    assert all(r["connections"] == 50 for r in document["idle"])
    assert {r["scenario"] for r in document["ratios"]} == {"m1", "m10", "idle"}
    assert "lbproxy/haproxy" in done.stdout.decode()


class TinyH2Server:
    """
    A TLS server on a free loopback port that picks ALPN h2, sends its
    SETTINGS to each client and then, with C{goaway}, a GOAWAY.
    """

    def __init__(self, tls, goaway: bool = False) -> None:
        import socket
        import ssl
        import threading

        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(tls.cert, tls.key)
        self.context.set_alpn_protocols(["h2"])
        self.goaway = goaway
        self.listening = socket.create_server(("127.0.0.1", 0))
        self.listening.settimeout(0.2)
        self.port = self.listening.getsockname()[1]
        self.accepted = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import socket

        while not self.stopping:
            try:
                raw, _ = self.listening.accept()
            except socket.timeout:
                continue
            raw.settimeout(5)
            conn = self.context.wrap_socket(raw, server_side=True)
            conn.sendall(h2_idle.frame(h2_idle.SETTINGS))
            if self.goaway:
                conn.sendall(h2_idle.frame(h2_idle.GOAWAY, payload=bytes(8)))
            self.accepted.append(conn)

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        for conn in self.accepted:
            conn.close()
        self.listening.close()


@pytest.mark.parametrize("goaway", [False, True])
def test_idleClients(tlsFiles, goaway):
    """
    Connections that got the server's SETTINGS are idle; a GOAWAY after
    it counts the connection as dropped.
    """
    server = TinyH2Server(tlsFiles, goaway)
    clients = h2_idle.IdleH2Clients()
    try:
        seconds = clients.open("127.0.0.1", server.port, 6, concurrency=3, timeout=20)
        assert len(clients.sockets) == 6 and seconds < 20
        deadline = time.monotonic() + 5
        while goaway and clients.dropped() < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert clients.dropped() == (6 if goaway else 0)
    finally:
        clients.close()
        server.close()
