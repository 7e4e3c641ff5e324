"""
C{workers = 2} on the real C{twistd -n lbproxy}: an HTTP listener in front
of two demo web servers, the admin listener beside it.

Both workers accept connections (each is a child of the daemon with its
own process id, and each counts connections); the stats and metrics count
every request, whichever worker served it; a server put in maintenance by
the admin API is avoided by every worker; SIGHUP reaches both; a killed
worker is started again; SIGTERM stops them all.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import time

import pytest

from processes import startLbproxy, waitUntil
from support import freePort
from test_twistd_e2e import processes, startBackends  # noqa: F401

pytestmark = pytest.mark.integration

TOKEN = "workers-test-token-0123456789abcdef"

CONFIG = """\
workers = 2

[admin]
bind = "tcp:{admin}:interface=127.0.0.1"
token_file = "{tokenFile}"

[daemon]
grace = "5s"

[listeners.front]
bind = "tcp:{port}:interface=127.0.0.1"
mode = "http"
pool = "web"

[pools.web]
servers = [
    {{ name = "alpha", address = "127.0.0.1:{alpha}", weight = {weight} }},
    {{ name = "beta", address = "127.0.0.1:{beta}" }},
]
"""


class Daemon:
    def __init__(self, processes, tmp_path) -> None:  # noqa: F811
        self.backends = startBackends(processes, ["alpha", "beta"])
        self.port, self.admin = freePort(), freePort()
        self.tokenFile = tmp_path / "admin.token"
        self.tokenFile.write_text(TOKEN + "\n")
        os.chmod(self.tokenFile, 0o600)
        self.path = tmp_path / "lbproxy.toml"
        self.process = startLbproxy(processes, tmp_path, self.config(), self.port)
        waitUntil(lambda: len(self.serving()) == 2, "two workers serving", timeout=30)

    def config(self, weight: int = 1) -> str:
        return CONFIG.format(
            admin=self.admin, tokenFile=self.tokenFile, port=self.port, weight=weight, **self.backends
        )

    def call(self, method: str, path: str, body: dict | None = None, port: int | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", port or self.admin, timeout=10)
        try:
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            connection.request(method, path, json.dumps(body) if body is not None else None, headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def stats(self) -> dict:
        status, body = self.call("GET", "/stats.json")
        assert status == 200
        return json.loads(body)

    def serving(self) -> list[dict]:
        try:
            return [w for w in self.stats()["workers"]["workers"] if w["state"] == "serving"]
        except OSError:
            return []

    def get(self) -> str:
        """
        One request on a new connection; the name of the server that
        answered.
        """
        status, body = self.call("GET", "/", port=self.port)
        assert status == 200, body
        return body.decode().split("\n", 1)[0].removeprefix("server: ")


def parentOf(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited already.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_bothWorkersServeAndAreCounted(processes, tmp_path):  # noqa: F811
    daemon = Daemon(processes, tmp_path)
    workers = daemon.serving()
    pids = {w["pid"] for w in workers}
    assert len(pids) == 2 and daemon.process.pid not in pids
    assert all(parentOf(pid) == daemon.process.pid for pid in pids)
    answered = [daemon.get() for _ in range(40)]
    assert sorted(set(answered)) == ["alpha", "beta"]
    stats = daemon.stats()
    # Each worker accepted some of the 40 connections (the kernel picks a
    # socket by a hash of the client's port: all 40 on one worker would
    # happen once in 2**39 runs).
    connections = [w["connections"] for w in stats["workers"]["workers"]]
    (listener,) = stats["listeners"]
    # 40 and the connection that waited for the port at start.
    assert listener["counters"]["connections"] == sum(connections) == 41
    assert all(c > 0 for c in connections), connections
    assert listener["counters"]["requests"] == 40
    assert listener["counters"]["responses"]["2xx"] == 40
    assert sum(s["total"] for s in stats["pools"][0]["servers"]) == 40
    status, metrics = daemon.call("GET", "/metrics")
    assert status == 200
    assert b'lbproxy_listener_http_requests_total{listener="front"} 40.0' in metrics
    assert b'lbproxy_worker_state{state="serving",worker="1"} 1.0' in metrics

    # Maintenance set through the admin API: no worker sends to alpha.
    status, body = daemon.call("POST", "/api/servers/web/alpha/state", {"state": "maint"})
    assert status == 200, body
    waitUntil(
        lambda: daemon.process.stdout.count("server web/alpha is maint (was up)") >= 3,
        "both workers to follow the maintenance",
    )
    assert {daemon.get() for _ in range(30)} == {"beta"}
    status, _ = daemon.call("POST", "/api/servers/web/alpha/state", {"state": "ready"})
    assert status == 200
    waitUntil(lambda: "alpha" in {daemon.get() for _ in range(10)}, "alpha back in rotation")


def test_reloadRestartAndStop(processes, tmp_path):  # noqa: F811
    daemon = Daemon(processes, tmp_path)
    first = {w["worker"]: w["pid"] for w in daemon.serving()}

    # SIGHUP reaches both workers: each reloads, and alpha's new weight is
    # every worker's.
    daemon.path.write_text(daemon.config(weight=3))
    daemon.process.popen.send_signal(signal.SIGHUP)
    waitUntil(lambda: "reload asked by SIGHUP: applied by workers 1, 2" in daemon.process.stdout, "both reloads")
    for number in (1, 2):
        assert f"worker {number}: reload asked by SIGHUP (worker {number}) applied" in daemon.process.stdout
    assert daemon.stats()["pools"][0]["servers"][0]["weight"] == 3
    answered = [daemon.get() for _ in range(40)]
    assert answered.count("alpha") > answered.count("beta")

    # A killed worker is logged and started again.
    os.kill(first[1], signal.SIGKILL)
    waitUntil(lambda: f"worker 1 (pid {first[1]}) killed by signal 9" in daemon.process.stdout, "the restart line")
    waitUntil(lambda: {w["worker"] for w in daemon.serving()} == {1, 2}, "worker 1 serving again", timeout=30)
    second = {w["worker"]: w["pid"] for w in daemon.serving()}
    assert second[1] != first[1] and second[2] == first[2]
    assert daemon.stats()["workers"]["workers"][0]["restarts"] == 1
    assert {daemon.get() for _ in range(20)} <= {"alpha", "beta"}

    # SIGTERM to the daemon stops every worker, and the daemon waits.
    daemon.process.popen.send_signal(signal.SIGTERM)
    # twistd ends by the signal that stopped it.
    assert daemon.process.wait(30) == -signal.SIGTERM, daemon.process.stdout[-3000:]
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in second.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in second.values())
    output = daemon.process.stdout
    for number in (1, 2):
        assert f"worker {number} (pid {second[number]}) stopped: exited with status 0" in output
