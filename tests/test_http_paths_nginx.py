"""
Path normalisation between real peers: the real C{twistd -n lbproxy} in
front of nginx, with a route for C{/admin}. Every spelling lbproxy
normalises reaches the pool its normal form reaches, the server receives
the normal form, and nginx reads that form as the same path as the raw
spelling sent to it directly: the router and the server agree.
"""

from __future__ import annotations

import socket
from urllib.parse import unquote_to_bytes

import pytest

from peers import startNginx
from processes import processes, startLbproxy  # noqa: F401 (a fixture)
from support import freePort
from test_http_paths import CLIMBS, NORMALISED, PERCENT, REFUSED

pytestmark = pytest.mark.integration

CONFIG = """\
[listeners.front]
bind = "tcp:{front}:interface=127.0.0.1"
pool = "web"
mode = "http"
routes = [{{ path_prefix = "/admin", pool = "admin" }}]

[pools.web]
servers = [{{ name = "web1", address = "127.0.0.1:{web}" }}]

[pools.admin]
servers = [{{ name = "admin1", address = "127.0.0.1:{admin}" }}]
"""


def get(port: int, target: bytes) -> tuple[int, dict[bytes, bytes]]:
    """
    C{GET target} on a new connection to C{port}: the status and the
    fields of nginx's report (empty for another answer).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: paths.test\r\nConnection: close\r\n\r\n")
        answer = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    fields = {}
    if status == 200:
        for line in body.splitlines():
            name, _, value = line.partition(b": ")
            fields[name] = value
    return status, fields


def test_routerAndServerAgree(processes, tmp_path):  # noqa: F811 (the fixture)
    nginx = startNginx(processes, tmp_path, "nginx", count=2)
    web, admin = nginx.ports
    front = freePort()
    startLbproxy(processes, tmp_path, CONFIG.format(front=front, web=web, admin=admin), front)
    for spelling, normal in NORMALISED:
        status, proxied = get(front, spelling)
        assert status == 200, spelling
        expected = admin if normal.startswith(b"/admin") else web
        assert proxied[b"port"] == b"%d" % expected, (spelling, proxied)
        assert proxied[b"request"] == normal, (spelling, proxied)
        status, direct = get(web, spelling)
        assert status == 200, spelling
        assert direct[b"uri"] == proxied[b"uri"] == unquote_to_bytes(normal), (spelling, direct, proxied)
    for spelling, reason in REFUSED:
        if b" " in spelling or b"\x00" in spelling or b"\x7f" in spelling:
            continue
        assert get(front, spelling)[0] == 400, spelling
        if reason in (CLIMBS, PERCENT):
            # nginx refuses these too.
            assert get(web, spelling)[0] == 400, spelling
