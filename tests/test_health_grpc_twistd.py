"""
End to end: a real C{twistd -n lbproxy} checks a real grpcio server with
C{type = "grpc"} health checks, and the admin API shows the server going
down and up as its grpc.health.v1 status flips.
"""

from __future__ import annotations

import http.client
import json

import pytest

from processes import processes, startLbproxy, waitUntil  # noqa: F401
from support import freePort
from test_health_grpc_loopback import healthServer

pytestmark = pytest.mark.integration

CONFIG = """
[admin]
bind = "tcp:{admin}:interface=127.0.0.1"

[pools.grpc]
servers = [{{ name = "g1", address = "127.0.0.1:{backend}" }}]

[pools.grpc.health]
type = "grpc"
service = "demo.Echo"
interval = "100ms"
timeout = "100ms"
rise = 1
fall = 1

[listeners.grpc]
bind = "tcp:{port}:interface=127.0.0.1"
mode = "tcp"
pool = "grpc"
"""


def serverState(admin: int) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    try:
        connection.request("GET", "/stats.json")
        (pool,) = json.loads(connection.getresponse().read())["pools"]
    finally:
        connection.close()
    (server,) = pool["servers"]
    return server


def test_downAndUpWithTheHealthStatus(processes, tmp_path):  # noqa: F811
    server, servicer, pb2, address = healthServer()
    try:
        servicer.set("demo.Echo", pb2.HealthCheckResponse.SERVING)
        backend = int(address.rsplit("=", 1)[1])
        port, admin = freePort(), freePort()
        config = CONFIG.format(admin=admin, backend=backend, port=port)
        daemon = startLbproxy(processes, tmp_path, config, port)

        def state(expected: str, reason: str | None = None):
            def holds() -> bool:
                s = serverState(admin)
                check = s["check"]
                if s["state"] != expected or check.get("lastCheck") is None:
                    return False
                return check.get("healthy") if reason is None else check.get("reason") == reason

            return holds

        waitUntil(state("up"), "the server to be up after a passed check", timeout=15)
        servicer.set("demo.Echo", pb2.HealthCheckResponse.NOT_SERVING)
        waitUntil(state("down", "NOT_SERVING"), "the server to be down with NOT_SERVING", timeout=15)
        servicer.set("demo.Echo", pb2.HealthCheckResponse.SERVING)
        waitUntil(state("up"), "the server to be up again", timeout=15)
        assert "NOT_SERVING" in daemon.stdout, daemon.describe()
    finally:
        server.stop(None)
