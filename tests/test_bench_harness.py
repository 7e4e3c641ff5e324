"""
The benchmark harness in bench/: parsing of wrk and py-spy output, and the
configs it generates (the lbproxy one through the real config loader, so
the benchmark follows config changes). The benchmark itself needs nginx,
HAProxy and wrk and is run by hand (bench/README.rst); nothing here
asserts on speed.
"""

from __future__ import annotations

import pytest

from lbproxy.config import loadBytes
from support import benchHarness

harness = benchHarness()

WRK_OUTPUT = """\
Running 5s test @ http://127.0.0.1:40001/100B
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.05ms    0.96ms   7.94ms   90.61%
    Req/Sec    36.61k     1.26k   40.02k    70.00%
  Latency Distribution
     50%  809.00us
     75%    1.25ms
     90%    1.94ms
     99%    5.12ms
  182272 requests in 5.00s, 57.53MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  36454.27
Transfer/sec:     11.51MB
"""


def test_parseWrk():
    result = harness.parseWrk(WRK_OUTPUT)
    assert result.requestsPerSecond == pytest.approx(36454.27)
    assert result.bytesPerSecond == pytest.approx(11.51 * 1024 * 1024)
    assert result.requests == 182272
    assert result.latencyP50Ms == pytest.approx(0.809)
    assert result.latencyP99Ms == pytest.approx(5.12)
    assert result.socketErrors == 3
    assert result.non2xx == 4


def test_parseWrkRejectsOtherOutput():
    with pytest.raises(harness.BenchError):
        harness.parseWrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_lbproxyConfigLoads():
    """
    The generated TOML is a valid lbproxy config with one tcp listener
    and a round-robin pool of the given servers.
    """
    text = harness.lbproxyConfig(40000, [("a", 40001), ("b", 40002)])
    config = loadBytes(text.encode(), "bench.toml")
    [listener] = config.listeners.values()
    assert listener.mode == "tcp"
    assert listener.bind == "tcp:40000:interface=127.0.0.1"
    pool = config.pools[listener.pool]
    assert pool.selector == "roundrobin"
    assert [(s.name, s.address) for s in pool.servers] == [
        ("a", "tcp:127.0.0.1:40001"),
        ("b", "tcp:127.0.0.1:40002"),
    ]


def test_haproxyConfig():
    text = harness.haproxyConfig(40000, [("a", 40001), ("b", 40002)])
    assert "nbthread 1" in text
    assert "mode tcp" in text
    assert "bind 127.0.0.1:40000" in text
    assert "server b 127.0.0.1:40002" in text


def test_makePayload():
    payload = harness.makePayload("1MiB", 1024 * 1024)
    assert len(payload.body) == 1024 * 1024
    assert payload.path == "/1MiB"
    assert payload.body.endswith(b"\n")


def test_topFunctions(tmp_path):
    path = tmp_path / "stacks.collapsed"
    path.write_text(
        "main (/x/twisted/internet/base.py:10);doRead (/x/twisted/internet/tcp.py:5) 3\n"
        "main (/x/twisted/internet/base.py:10);dataReceived (/y/lbproxy/core/relay.py:9) 1\n"
    )
    text = harness.topFunctions(str(path))
    assert text.startswith("4 samples; self time:")
    assert "75.0%  doRead (twisted/internet/tcp.py)" in text
    assert "25.0%  dataReceived (lbproxy/core/relay.py)" in text


def test_seriesMedianAndSpread():
    series = harness.Series("haproxy", "100B")
    for rps in (90.0, 100.0, 110.0):
        series.runs.append(harness.WrkResult(rps, 0.0, 1, None, None, 0, 0))
    assert series.median() == 100.0
    assert series.spread() == pytest.approx(0.2)


def test_haproxyConfigHttp():
    """
    In http mode, HAProxy shares idle server connections between clients.
    """
    text = harness.haproxyConfig(40000, [("a", 40001), ("b", 40002)], mode="http")
    assert "nbthread 1" in text
    assert "mode http" in text
    assert "http-reuse always" in text
    assert "http-reuse safe" in harness.haproxyConfig(40000, [("a", 40001)], mode="http", reuse="safe")
    assert "server a 127.0.0.1:40001" in text
    assert "httplog" not in text


def test_lbproxyHttpConfigLoads():
    """
    The HTTP config an operator would use for speed passes the loader:
    access log to a file, more idle connections kept per server.
    """
    text = harness.lbproxyConfig(
        40000, [("a", 40001), ("b", 40002)], mode="http",
        accessLog="/var/log/lbproxy/access.log", reuseMaxIdle=64, reuseMode="always",
        logRequests="errors",
    )
    config = loadBytes(text.encode(), "bench.toml")
    [listener] = config.listeners.values()
    assert listener.mode == "http"
    assert listener.accessLog == "/var/log/lbproxy/access.log"
    assert listener.logRequests == "errors"
    pool = config.pools[listener.pool]
    assert (pool.reuseMaxIdle, pool.reuseMode) == (64, "always")
    assert pool.health is None


def test_nginxProxyConfig(tmp_path):
    proxy = harness.NginxProxy(str(tmp_path), 40000, [("a", 40001), ("b", 40002)])
    text = open(proxy.writeConfig()).read()
    assert "worker_processes 1;" in text
    assert "listen 127.0.0.1:40000" in text
    assert "server 127.0.0.1:40002;" in text
    assert "keepalive 64;" in text
    assert "proxy_http_version 1.1;" in text
    assert "access_log off;" in text


def test_alternatingRoundsTargetsByPayload():
    """
    Each payload (or scenario) can have its own targets; they still take
    turns within each round.
    """
    calls = []

    def measure(target, payload):
        calls.append((target, payload))
        return harness.WrkResult(1.0, 0.0, 1, None, None, 0, 0)

    series = harness.alternatingRounds(
        2, ["keepalive", "close"], ["a", "b", "c"], measure,
        targetsByPayload={"close": ["c", "a"]},
    )
    assert calls == [
        ("a", "keepalive"), ("b", "keepalive"), ("c", "keepalive"),
        ("c", "close"), ("a", "close"),
    ] * 2
    assert sorted(series) == sorted(
        [("a", "keepalive"), ("b", "keepalive"), ("c", "keepalive"), ("c", "close"), ("a", "close")]
    )


def test_lbproxyArgvReactor():
    """
    Without a reactor name twistd gets no --reactor, so lbproxy installs
    its own; with one, twistd is told to use it.
    """
    own = harness.lbproxyArgv("twistd", "lb.toml", "/w", None)
    assert not any(a.startswith("--reactor") for a in own)
    assert own[-3:] == ["lbproxy", "--config", "lb.toml"]
    assert "--reactor=epoll" in harness.lbproxyArgv("twistd", "lb.toml", "/w", "epoll")


S_TIME_OUTPUT = """\
Collecting connection statistics for 5 seconds
*******************************************************

2931 connections in 1.49s; 1967.11 connections/user sec, bytes read 955506
2931 connections in 6 real seconds, 326 bytes read per connection
"""


def test_parseSTime():
    assert harness.parseSTime(S_TIME_OUTPUT) == 2931
    with pytest.raises(harness.BenchError):
        harness.parseSTime("connect: Connection refused\nconnect:errno=111\n")


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_tlsConfigsLoad(tmp_path, kind):
    """
    The certificate the TLS benchmark makes is accepted by lbproxy's own
    loader (with the harness's cipher list, lbproxy's default), and HAProxy
    gets the same certificate and ciphers.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from lbproxy.config.tls import DEFAULT_CIPHERS
    from lbproxy.tls.server import ServerTLS

    files = harness.makeCertificate(str(tmp_path), kind)
    cert = x509.load_pem_x509_certificate(open(files.cert, "rb").read())
    expected = ec.EllipticCurvePublicKey if kind == "ec" else rsa.RSAPublicKey
    assert isinstance(cert.public_key(), expected)
    assert open(files.bundle, "rb").read() == open(files.cert, "rb").read() + open(files.key, "rb").read()
    assert harness.TLS12_CIPHERS == DEFAULT_CIPHERS

    text = harness.lbproxyConfig(
        40000, [("a", 40001)], mode="http", reuseMaxIdle=64, tls=files
    )
    config = loadBytes(text.encode(), "bench.toml")
    [listener] = config.listeners.values()
    assert listener.tls.certificates[0].cert == files.cert
    ServerTLS(listener.name, listener.tls, "bench.toml").load()

    haproxy = harness.haproxyConfig(40000, [("a", 40001)], mode="http", tlsBundle=files.bundle)
    assert f"bind 127.0.0.1:40000 ssl crt {files.bundle} alpn http/1.1" in haproxy
    assert f"ssl-default-bind-ciphers {harness.TLS12_CIPHERS}" in haproxy
    assert "ssl crt" not in harness.haproxyConfig(40000, [("a", 40001)], mode="http")


def test_nginxBackendsAnswerUploads(tmp_path):
    """
    The backends answer a POST of any size on the upload path with a
    short body, and serve each payload as a file.
    """
    payload = harness.makePayload("1MiB", 1024 * 1024)
    backends = harness.NginxBackends(str(tmp_path), [40001], [payload])
    text = open(backends.writeConfig()).read()
    assert f"location = {harness.UPLOAD_PATH} {{" in text
    assert "client_max_body_size 0;" in text
    assert (tmp_path / "nginx" / "html" / "1MiB").read_bytes() == payload.body


def test_writeUploadScript(tmp_path):
    path = harness.writeUploadScript(str(tmp_path), b"x" * 1024)
    text = open(path).read()
    assert 'wrk.method = "POST"' in text
    assert 'string.rep("x", 1024)' in text


def test_cpuPerRequestCell():
    """
    Half a core at 50,000 requests/s is 10 µs of CPU per request.
    """
    series = harness.Series("lbproxy", "keepalive")
    series.runs.append(harness.WrkResult(50000.0, 0.0, 1, None, None, 0, 0, proxyCpuPercent=50.0))
    assert harness.cpuPerRequestCell(series) == "10.0"
    assert harness.cpuPerRequestCell(harness.Series("direct", "keepalive")) == "-"


STATUS = """\
Name:\tpython3
VmPeak:\t  120000 kB
VmRSS:\t   52344 kB
RssAnon:\t   40000 kB
"""


def test_parseProcStatusKiB():
    assert harness.parseProcStatusKiB(STATUS, "VmRSS") == 52344
    assert harness.parseProcStatusKiB(STATUS, "Rss") is None
    assert harness.parseProcStatusKiB("Rss:  100 kB\nPss:  80 kB\n", "Pss") == 80


def test_processMemoryOfThisProcess():
    import os

    memory = harness.processMemory(os.getpid())
    assert memory.rss > 1000
    assert memory.pss is None or 0 < memory.pss <= memory.rss + 1024


def test_peakMemoryOfThisProcess():
    """
    VmHWM is at least VmRSS, reset or not.
    """
    import os

    harness.resetPeakMemory(os.getpid())
    assert harness.peakMemory(os.getpid()) >= harness.processMemory(os.getpid()).rss - 1024


def test_raiseOpenFileLimitNeverLowers():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert harness.raiseOpenFileLimit(16) == soft
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
    if hard != resource.RLIM_INFINITY and hard > soft:
        try:
            assert harness.raiseOpenFileLimit(hard) == hard
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_haproxyConfigLimits():
    """
    maxconn is the global and the frontends' limit; further global lines
    (such as no strict-limits) go into the global section.
    """
    text = harness.haproxyConfig(40000, [("a", 40001)], maxconn=12000, globalLines=["no strict-limits"])
    assert text.count("maxconn 12000") == 2
    globalSection = text.split("defaults")[0]
    assert "    no strict-limits\n" in globalSection
    assert "maxconn 4000" in harness.haproxyConfig(40000, [("a", 40001)])


def test_lbproxyConfigMaxconnAndTimeouts():
    """
    The listener's maxconn and timeouts pass lbproxy's loader.
    """
    text = harness.lbproxyConfig(
        40000, [("a", 40001)], mode="http", maxconn=12000,
        timeouts={"idle": "300s", "keepalive": "300s"},
    )
    config = loadBytes(text.encode(), "bench.toml")
    listener = config.listeners["bench"]
    assert listener.maxconn == 12000
    assert listener.idleTimeout == 300
    assert listener.keepaliveTimeout == 300


def test_processGroupStopsOneChild(tmp_path):
    """
    stop() ends one child and forgets it; the others run on until close().
    """
    import sys

    with harness.ProcessGroup(str(tmp_path)) as group:
        argv = [sys.executable, "-c", "import time; time.sleep(60)"]
        first = group.start("first", argv)
        second = group.start("second", argv)
        assert group.stop(first, grace=5) is not None
        assert [name for name, _ in group.processes] == ["second"]
        group.checkAlive()
    assert second.poll() is not None
def test_lbproxyConfigWithWorkers():
    """
    C{workers} goes at the top of the file, before the tables; with 1 the
    key is left out (the default).
    """
    text = harness.lbproxyConfig(40000, [("a", 40001)], mode="http", workers=2)
    assert text.startswith("workers = 2\n")
    assert loadBytes(text.encode(), "bench.toml").workers == 2
    assert "workers" not in harness.lbproxyConfig(40000, [("a", 40001)])


def test_cpuShares():
    """
    The shares of the first process and of its children (workers),
    ordered by process id after the first; a child that appeared or left
    between the readings does not count.
    """
    before = {10: (1.0, 0.5), 30: (2.0, 1.0), 20: (0.0, 0.0), 40: (5.0, 5.0)}
    after = {10: (1.1, 0.5), 20: (1.0, 0.5), 30: (3.0, 1.0), 50: (9.0, 9.0)}
    total, system, each = harness.cpuShares(before, after, 2.0)
    assert total == pytest.approx(100 * 2.6 / 2)
    assert system == pytest.approx(100 * 0.5 / 2)
    assert each == pytest.approx([5.0, 75.0, 50.0])


def test_processTreeCpu():
    """
    The process's own CPU and its children's, the process first.
    """
    import os
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        found = harness.processTreeCpu(os.getpid())
        assert next(iter(found)) == os.getpid()
        assert child.pid in found
        assert all(len(times) == 2 and min(times) >= 0 for times in found.values())
    finally:
        child.kill()
        child.wait()


def test_processCpuCell():
    series = harness.Series("lbproxy", "keepalive")
    for shares in ([2.0, 80.0, 70.0], [4.0, 90.0, 60.0], [3.0, 85.0, 65.0]):
        series.runs.append(harness.WrkResult(1.0, 0.0, 1, None, None, 0, 0, proxyCpuPercent=sum(shares),
                                             processCpuPercents=shares))
    assert harness.processCpuCell(series) == "3+85+65%"
    one = harness.Series("lbproxy", "keepalive")
    one.runs.append(harness.WrkResult(1.0, 0.0, 1, None, None, 0, 0, proxyCpuPercent=50.0, processCpuPercents=[50.0]))
    assert harness.processCpuCell(one) == "-"
