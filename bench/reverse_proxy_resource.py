"""
Twisted's own reverse proxy, twisted.web.proxy.ReverseProxyResource, as a
benchmark target: a Site on a loopback port whose every request goes, in
turn, to one of the given HTTP servers.

    python bench/reverse_proxy_resource.py --port 8080 \\
        --backend 127.0.0.1:8081 --backend 127.0.0.1:8082

ReverseProxyResource proxies to one server; the root resource here hands
each request to the next server's, round robin, so the target sees the same
two backends as the other proxies. It is used as Twisted ships it: a new
backend connection for each request, the whole response body buffered by
twisted.web before it is written. The Site writes no access log (the other
targets write none either). Runs on the epoll reactor.
"""

from __future__ import annotations

import argparse
import sys

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.web.proxy import ReverseProxyResource  # noqa: E402
from twisted.web.resource import Resource  # noqa: E402
from twisted.web.server import Site  # noqa: E402


class RoundRobinProxy(Resource):
    """
    Hands each request to the next of several L{ReverseProxyResource}s.
    """

    def __init__(self, backends: list[ReverseProxyResource]) -> None:
        Resource.__init__(self)
        self._backends = backends
        self._next = 0

    def getChildWithDefault(self, path: bytes, request) -> Resource:
        backend = self._backends[self._next]
        self._next = (self._next + 1) % len(self._backends)
        return backend.getChild(path, request)

    def render(self, request) -> bytes:
        backend = self._backends[self._next]
        self._next = (self._next + 1) % len(self._backends)
        return backend.render(request)


class QuietSite(Site):
    """
    A Site that logs nothing per request.
    """

    noisy = False

    def log(self, request) -> None:
        pass


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument(
        "--backend", action="append", required=True, metavar="HOST:PORT",
        help="an HTTP server to proxy to (repeat for several)",
    )
    args = parser.parse_args(argv)
    backends = []
    for backend in args.backend:
        host, _, port = backend.rpartition(":")
        backends.append(ReverseProxyResource(host, int(port), b"", reactor))
    reactor.listenTCP(args.port, QuietSite(RoundRobinProxy(backends)), backlog=4096,
                      interface="127.0.0.1")
    print(f"reactor class: {type(reactor).__module__}.{type(reactor).__name__}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
