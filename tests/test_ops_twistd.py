"""
Operations on a real C{twistd -n lbproxy} in front of nginx, with wrk as
the load: a full reload (SIGHUP) under load that changes weights, adds a
server and removes one; an invalid reload under load; a drain and a
maintenance under load through lbproxy-ctl; SIGTERM with slow requests in
flight; and the stats page in headless Chromium with one server down and
one draining.

Each test counts wrk's failed requests (socket errors and non-2xx
responses): every one must be 0.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from peers import curl, startNginx, startSink, wrk
from processes import processes, startLbproxy, waitUntil  # noqa: F401
from support import freePort, requireExecutable

TOKEN = "ops-test-token-0123456789abcdef"

CONFIG = """
[admin]
bind = "tcp:{admin}:interface=127.0.0.1"
token_file = "{tokenFile}"

[daemon]
grace = "20s"

[pools.web]
servers = [
{servers}
]
{health}
[pools.web.cookie]
name = "LBSRV"

[listeners.web]
bind = "tcp:{port}:interface=127.0.0.1"
mode = "http"
pool = "web"
"""


def server(name: str, port: int, weight: int = 1) -> str:
    return f'    {{ name = "{name}", address = "127.0.0.1:{port}", weight = {weight} }},'


class Daemon:
    """
    The daemon under test, its config file, and its admin listener.
    """

    def __init__(self, processes, tmp_path, servers: list[str], health: str = "") -> None:  # noqa: F811
        self.tmp = tmp_path
        self.port, self.admin = freePort(), freePort()
        self.tokenFile = tmp_path / "admin.token"
        self.tokenFile.write_text(TOKEN + "\n")
        os.chmod(self.tokenFile, 0o600)
        self.process = startLbproxy(processes, tmp_path, self.config(servers, health), self.port)
        self.path = tmp_path / "lbproxy.toml"

    def config(self, servers: list[str], health: str = "") -> str:
        return CONFIG.format(
            admin=self.admin, tokenFile=self.tokenFile, servers="\n".join(servers), health=health, port=self.port
        )

    def write(self, text: str) -> None:
        self.path.write_text(text)

    def stats(self) -> dict:
        connection = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=10)
        try:
            connection.request("GET", "/stats.json")
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def servers(self) -> dict[str, dict]:
        (pool,) = self.stats()["pools"]
        return {s["name"]: s for s in pool["servers"] if not s["removed"]}

    def ctl(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "lbproxy.admin.ctl", "--config", str(self.path), *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


def underLoad(url: str, duration: float, action, after: float = 1.0):
    """
    Run wrk against C{url} for C{duration} seconds, and C{action()} after
    C{after} seconds of it; return wrk's result and the action's.
    """
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(wrk, url, 2, 20, f"{duration:g}s")
        time.sleep(after)
        done = action()
        return load.result(), done


def assertNoFailure(result) -> None:
    assert result.requests > 500, result.output
    assert result.socketErrors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}, result.output
    assert result.non2xx == 0, result.output


def test_reloadUnderLoad(processes, tmp_path):  # noqa: F811
    """
    SIGHUP under wrk load, with a config that changes a weight, adds a
    server and removes one: no request fails, the kept server keeps its
    counters, the new one serves, the removed one gets nothing more. Then
    an invalid config under load: refused in one line, no request fails,
    the running config still serves.
    """
    nginx = startNginx(processes, tmp_path, "nginx", count=3)
    a, b, c = nginx.ports
    daemon = Daemon(processes, tmp_path, [server("a", a), server("b", b)])
    daemon.write(daemon.config([server("a", a, 3), server("c", c)]))

    def hangup():
        before = daemon.servers()
        daemon.process.popen.send_signal(signal.SIGHUP)
        waitUntil(lambda: "reload asked by SIGHUP applied" in daemon.process.stdout, "the reload", timeout=20)
        return before

    result, before = underLoad(daemon.url, 4, hangup)
    assertNoFailure(result)
    after = daemon.servers()
    assert sorted(after) == ["a", "c"]
    assert after["a"]["weight"] == 3
    assert after["a"]["total"] > before["a"]["total"] > 0
    assert after["c"]["total"] > 0
    assert "pools ~web(+c -b ~servers)" in daemon.process.stdout
    print(f"reload under load: {result.requests} requests, 0 failed")

    daemon.write(daemon.config([server("a", a), server("c", c)]).replace("weight = 1 }", "weight = 999 }"))

    def badHangup():
        daemon.process.popen.send_signal(signal.SIGHUP)
        waitUntil(lambda: "refused" in daemon.process.stdout, "the refused reload", timeout=20)

    result, _ = underLoad(daemon.url, 3, badHangup)
    assertNoFailure(result)
    refused = [line for line in daemon.process.stdout.splitlines() if "reload asked by SIGHUP refused" in line]
    assert len(refused) == 1
    assert "pools.web.servers[0].weight: expected an integer from 0 to 256, got 999" in refused[0]
    assert {name: s["weight"] for name, s in daemon.servers().items()} == {"a": 3, "c": 1}
    print(f"invalid reload under load: {result.requests} requests, 0 failed")


def seenPort(*arguments: str) -> int:
    """
    The nginx port that answered a request made by curl with C{arguments}.
    """
    out = curl("-s", "-D", "-", "-o", "/dev/null", *arguments).decode()
    for line in out.splitlines():
        if line.lower().startswith("x-seen-port:"):
            return int(line.split(":", 1)[1])
    raise AssertionError(out)


def test_drainAndMaintenanceUnderLoad(processes, tmp_path):  # noqa: F811
    """
    lbproxy-ctl drains a server under load: no request fails, the server
    gets no new unpinned request, and a client pinned to it by its cookie
    still reaches it. In maintenance it gets nothing at all, pinned
    clients included.
    """
    nginx = startNginx(processes, tmp_path, "nginx", count=2)
    a, b = nginx.ports
    daemon = Daemon(processes, tmp_path, [server("a", a), server("b", b)])
    daemon.path = tmp_path / "lbproxy.toml"

    def drain():
        done = daemon.ctl("server", "drain", "web/a")
        return done, daemon.servers()["a"]["total"]

    result, (done, total) = underLoad(daemon.url, 3, drain)
    assert (done.returncode, done.stdout, done.stderr) == (0, "web/a: drain (was up)\n", "")
    assertNoFailure(result)
    assert daemon.servers()["a"]["total"] == total
    assert daemon.servers()["b"]["total"] > result.requests // 2
    print(f"drain under load: {result.requests} requests, 0 failed")
    assert seenPort("--cookie", "LBSRV=a", daemon.url) == a
    assert seenPort(daemon.url) == b
    pinned = daemon.servers()["a"]["total"]
    assert pinned == total + 1

    def maintenance():
        done = daemon.ctl("server", "maint", "web/a")
        return done, daemon.servers()["a"]["total"]

    result, (done, total) = underLoad(daemon.url, 3, maintenance)
    assert done.returncode == 0, done.stderr
    assertNoFailure(result)
    assert seenPort("--cookie", "LBSRV=a", daemon.url) == b
    assert daemon.servers()["a"]["total"] == total
    status = daemon.ctl("status")
    assert status.returncode == 0
    assert "maint" in status.stdout
    print(f"maintenance under load: {result.requests} requests, 0 failed")
    logged = [line for line in daemon.process.stdout.splitlines() if "admin API: set web/a" in line]
    assert len(logged) == 2 and all("asked by" in line for line in logged)


def test_sigtermWithSlowRequestsInFlight(processes, tmp_path):  # noqa: F811
    """
    SIGTERM while slow requests are in flight: each is answered (with
    Connection: close), then the daemon exits.
    """
    _, sink = startSink(processes, "slow")
    daemon = Daemon(processes, tmp_path, [server("slow", sink)])
    results: list = []

    def slow() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        try:
            connection.request("GET", "/delay/2000")
            response = connection.getresponse()
            results.append((response.status, response.getheader("connection"), json.loads(response.read())["delayed"]))
        except Exception as error:  # noqa: BLE001 - counted as a failure
            results.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=slow) for _ in range(5)]
    for thread in threads:
        thread.start()
    waitUntil(lambda: daemon.stats()["listeners"][0]["sessions"] >= 5, "the slow requests in flight")
    time.sleep(0.3)
    started = time.monotonic()
    daemon.process.popen.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    assert results == [(200, "close", 2000)] * 5
    assert daemon.process.wait(30) == -signal.SIGTERM
    assert time.monotonic() - started < 15
    assert "Server Shut Down." in daemon.process.stdout
    print("SIGTERM with 5 slow requests in flight: 0 failed")


def test_statsPageInChromium(processes, tmp_path):  # noqa: F811
    """
    The stats page as headless Chromium renders it (its DOM), with one
    server down (its health check fails) and one draining.
    """
    chromium = requireExecutable("chromium", "chromium-browser")
    nginx = startNginx(processes, tmp_path, "nginx", count=2)
    up, draining = nginx.ports
    health = '[pools.web.health]\ninterval = "200ms"\ntimeout = "150ms"\nfall = 1\n'
    daemon = Daemon(
        processes, tmp_path, [server("up", up), server("dead", freePort()), server("draining", draining)], health
    )
    assert daemon.ctl("server", "drain", "web/draining").returncode == 0
    waitUntil(lambda: daemon.servers()["dead"]["state"] == "down", "the dead server down")
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--dump-dom", f"http://127.0.0.1:{daemon.admin}/",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    dom = result.stdout
    assert "<h1>lbproxy</h1>" in dom, result.stderr[-2000:]
    assert 'http-equiv="refresh"' in dom
    assert "Pool web: 1 of 3 servers up" in dom
    assert '<tr class="down"><td class="name">dead</td>' in dom
    assert '<td class="state">DOWN</td>' in dom
    assert '<tr class="drain"><td class="name">draining</td>' in dom
    assert '<td class="state">draining</td>' in dom
    assert '<tr class="up"><td class="name">up</td>' in dom
    assert "Connection refused" in dom or "connection refused" in dom.lower()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s"]))


def test_metricsMatchTheTraffic(processes, tmp_path):  # noqa: F811
    """
    A scrape of /metrics, parsed with prometheus_client's parser, counts
    exactly the requests sent: by status class, bytes sent to the client,
    each on the servers, and in the duration histogram.
    """
    from prometheus_client.parser import text_string_to_metric_families
    import socket

    nginx = startNginx(processes, tmp_path, "nginx", count=2)
    daemon = Daemon(processes, tmp_path, [server("a", nginx.ports[0]), server("b", nginx.ports[1])])
    received = 0
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        for index in range(53):
            path = "/" if index < 50 else "/static/missing"
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int([line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")][0].split(b":")[1])
            while len(body) < length:
                body += s.recv(65536)
            received += len(head) + 4 + len(body)
    connection = http.client.HTTPConnection("127.0.0.1", daemon.admin, timeout=10)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(name, **labels):
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("lbproxy_listener_http_requests_total", listener="web") == 53
    assert value("lbproxy_listener_http_responses_total", listener="web", code="2xx") == 50
    assert value("lbproxy_listener_http_responses_total", listener="web", code="4xx") == 3
    assert value("lbproxy_listener_sent_bytes_total", listener="web") == received
    # Ours, and the one that found the daemon listening.
    assert value("lbproxy_listener_connections_total", listener="web") == 2
    assert value("lbproxy_listener_http_request_duration_seconds_count", listener="web") == 53
    assert value("lbproxy_listener_http_request_duration_seconds_bucket", listener="web", le="+Inf") == 53
    assert 0 < value("lbproxy_listener_http_request_duration_seconds_sum", listener="web") < 53 * 5
    per = [value("lbproxy_server_sessions_total", pool="web", server=name) for name in ("a", "b")]
    assert per == [27, 26]
    sent = [value("lbproxy_server_sent_bytes_total", pool="web", server=name) for name in ("a", "b")]
    assert sum(sent) == received
    assert value("lbproxy_server_state", pool="web", server="a", state="up") == 1
