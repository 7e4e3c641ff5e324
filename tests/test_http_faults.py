"""
Backend faults under mode = "http", with real peers: the real
C{twistd -n lbproxy --config} in front of nginx processes and the Python
sink backend (L{httpsink}).

  - A backend killed (SIGKILL, master and worker) while keep-alive clients
    send idempotent GETs: requests caught on its connections are sent
    again, new ones go to the survivor; no client sees an error.
  - A backend that closes idle keep-alive connections sooner than lbproxy
    would drop them: a request that meets such a connection is sent again
    on a fresh one (the keep-alive race); no client sees a 502.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter

import pytest

from peers import report, startNginx, startSink
from processes import processes, startLbproxy  # noqa: F401 (a fixture)
from support import freePort

pytestmark = pytest.mark.integration

KILL_CONFIG = """\
[listeners.front]
bind = "tcp:{front}:interface=127.0.0.1"
pool = "web"
mode = "http"
access_log = "{accessLog}"

[pools.web]
retries = 2
servers = [
    {{ name = "web1", address = "127.0.0.1:{web1}" }},
    {{ name = "web2", address = "127.0.0.1:{web2}" }},
]

[pools.web.health]
type = "http"
interval = "500ms"
timeout = "400ms"
fall = 2
passive_fall = 1
"""

#: Clients, and the most requests each sends, in the kill test.
CLIENTS = 4
REQUESTS = 3000


class Client(threading.Thread):
    """
    Sends GETs over one keep-alive http.client connection until told to
    stop or C{REQUESTS} are done, recording the nginx port of each answer
    and every failure (an exception or a status other than 200).
    """

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stopping = stop
        self.answers: list[tuple[float, str]] = []
        self.failures: list[str] = []

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            for index in range(REQUESTS):
                if self.stopping.is_set():
                    break
                try:
                    connection.request("GET", f"/load/{index}")
                    response = connection.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException) as e:
                    self.failures.append(f"request {index}: {e!r}")
                    connection.close()
                    continue
                if response.status != 200:
                    self.failures.append(f"request {index}: status {response.status}")
                    continue
                self.answers.append((time.monotonic(), report(body.decode())["port"]))
        finally:
            connection.close()


def test_backendKilledDuringLoad(processes, tmp_path):
    """
    While four keep-alive clients send GETs through lbproxy to two nginx
    processes, one nginx is killed: every request still gets its 200 and,
    soon after the kill, only the survivor answers.
    """
    first = startNginx(processes, tmp_path, "nginx1")
    second = startNginx(processes, tmp_path, "nginx2")
    front = freePort()
    accessLog = tmp_path / "access.log"
    lbproxy = startLbproxy(
        processes,
        tmp_path,
        KILL_CONFIG.format(
            front=front, accessLog=accessLog, web1=first.ports[0], web2=second.ports[0]
        ),
        front,
    )
    lbproxy.logs.append(accessLog)
    stop = threading.Event()
    clients = [Client(front, stop) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    deadline = time.monotonic() + 10
    while sum(len(c.answers) for c in clients) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    killedAt = time.monotonic()
    first.process.kill()
    time.sleep(1.5)
    stop.set()
    for client in clients:
        client.join(30)
        assert not client.is_alive()

    failures = [failure for client in clients for failure in client.failures]
    answers = [answer for client in clients for answer in client.answers]
    assert failures == [], (failures[:10], lbproxy.describe()[-4000:])
    before = Counter(port for at, port in answers if at < killedAt)
    after = Counter(port for at, port in answers if at > killedAt + 0.5)
    survivor = str(second.ports[0])
    assert set(before) == {str(first.ports[0]), survivor}, before
    assert set(after) == {survivor}, after
    assert lbproxy.running(), lbproxy.describe()


IDLE_CONFIG = """\
[listeners.front]
bind = "tcp:{front}:interface=127.0.0.1"
pool = "backend"
mode = "http"
access_log = "{accessLog}"

[pools.backend]
servers = [{{ name = "one", address = "127.0.0.1:{backend}" }}]

[pools.backend.reuse]
max_idle = 4
idle_timeout = "30s"
"""


def spacedRequests(port: int, path: str, gaps: list[float]) -> tuple[list[int], list]:
    """
    GET C{path} on one keep-alive connection, waiting each of C{gaps}
    seconds before the next request: the statuses, and the backend
    connection numbers the answers report.
    """
    statuses = []
    answers = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for gap in [0.0, *gaps]:
            time.sleep(gap)
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            statuses.append(response.status)
            if response.status == 200:
                answers.append(body)
    finally:
        connection.close()
    return statuses, answers


#: Gaps between requests around a backend's idle timeout T, as multiples of
#: T: some requests find the connection still open, some just closed, some
#: meet the close on the way.
GAPS = [0.8, 0.9, 0.95, 1.0, 1.0, 1.02, 1.05, 1.1, 1.2, 1.5, 0.5, 1.0]


def test_nginxClosesIdleConnectionsEarly(processes, tmp_path):
    """
    nginx closes keep-alive connections idle for 300ms while lbproxy would
    keep them 30s: requests spaced around 300ms all get a 200, though
    lbproxy had to open new backend connections.
    """
    nginx = startNginx(processes, tmp_path, "nginx", keepalive="300ms")
    front = freePort()
    accessLog = tmp_path / "access.log"
    lbproxy = startLbproxy(
        processes,
        tmp_path,
        IDLE_CONFIG.format(front=front, accessLog=accessLog, backend=nginx.ports[0]),
        front,
    )
    lbproxy.logs.append(accessLog)
    statuses, answers = spacedRequests(front, "/idle", [gap * 0.3 for gap in GAPS])
    assert statuses == [200] * (len(GAPS) + 1), lbproxy.describe()
    connections = [report(body.decode())["connection"] for body in answers]
    assert len(set(connections)) > 1, connections


def test_backendClosesIdleConnectionsEarly(processes, tmp_path):
    """
    A backend that closes connections idle for 300ms, and whose close
    crosses any request arriving after 150ms of idleness (the keep-alive
    race, made certain), behind lbproxy keeping idle connections 30s:
    requests spaced around those times never get a 502, though some met a
    closing connection.
    """
    _, backend = startSink(processes, "early", "--idle-close", "0.3", "--race-window", "0.15")
    front = freePort()
    accessLog = tmp_path / "access.log"
    lbproxy = startLbproxy(
        processes,
        tmp_path,
        IDLE_CONFIG.format(front=front, accessLog=accessLog, backend=backend),
        front,
    )
    lbproxy.logs.append(accessLog)
    gaps = [gap * 0.3 for gap in GAPS]
    statuses, answers = spacedRequests(front, "/idle", gaps)
    assert statuses == [200] * (len(gaps) + 1), lbproxy.describe()
    reports = [json.loads(body) for body in answers]
    assert len({r["connection"] for r in reports}) > 1, reports
    # Requests after 0.8, 0.9, 0.95 and 0.5 times 300ms crossed a close.
    assert reports[-1]["crossed"] >= 3, reports
