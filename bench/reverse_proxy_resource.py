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

With C{--cert} and C{--key} (PEM files), the port speaks TLS 1.3 only and
offers ALPN h2 then http/1.1: twisted.web serves HTTP/2 to a client that
picks h2 (the h2 package must be importable) and HTTP/1.1 otherwise.
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


def tlsOptions(certPath: str, keyPath: str):
    """
    TLS 1.3 with C{certPath} and C{keyPath}, offering ALPN h2 and
    http/1.1 (twisted.web picks its HTTP/2 channel when h2 is negotiated).
    """
    from twisted.internet.ssl import CertificateOptions, TLSVersion
    from OpenSSL import crypto

    with open(certPath, "rb") as f:
        cert = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
    with open(keyPath, "rb") as f:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read())
    return CertificateOptions(
        privateKey=key, certificate=cert, raiseMinimumTo=TLSVersion.TLSv1_3,
        acceptableProtocols=[b"h2", b"http/1.1"],
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument(
        "--backend", action="append", required=True, metavar="HOST:PORT",
        help="an HTTP server to proxy to (repeat for several)",
    )
    parser.add_argument("--cert", help="PEM certificate: serve TLS (with --key)")
    parser.add_argument("--key", help="PEM private key of --cert")
    args = parser.parse_args(argv)
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    backends = []
    for backend in args.backend:
        host, _, port = backend.rpartition(":")
        backends.append(ReverseProxyResource(host, int(port), b"", reactor))
    site = QuietSite(RoundRobinProxy(backends))
    if args.cert:
        reactor.listenSSL(args.port, site, tlsOptions(args.cert, args.key), backlog=4096,
                          interface="127.0.0.1")
    else:
        reactor.listenTCP(args.port, site, backlog=4096, interface="127.0.0.1")
    print(f"reactor class: {type(reactor).__module__}.{type(reactor).__name__}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
