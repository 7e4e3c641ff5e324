"""
The built-in demo: two small web servers for lbproxy to balance between.

C{twistd -n lbproxy} without C{--config} loads C{demo.toml} (an HTTP
listener on 127.0.0.1:8080, round-robin over web1 and web2, with cookie
persistence) and starts these servers beside it. Each answers every
request with its name, the client address it saw and the X-Forwarded-For
header it received, so requests through the proxy show which backend
served them and what the backend learned about the client.

The demo servers are not part of the data path; they only give the
tutorial something to talk to.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from lbproxy._twisted.listen import raiseListenErrors
from lbproxy.core.format import formatAddress

#: The demo web servers, as (name, server endpoint string). demo.toml's pool
#: names the same servers at the same addresses.
SERVERS = (
    ("web1", "tcp:8081:interface=127.0.0.1"),
    ("web2", "tcp:8082:interface=127.0.0.1"),
)

#: Where the demo listener in demo.toml accepts clients.
URL = "http://127.0.0.1:8080/"


class DemoResource(Resource):
    """
    Answers any request to any path with a plain-text report::

        server: web1
        client: 127.0.0.1:40312
        x-forwarded-for: (none)
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render(self, request) -> bytes:
        forwarded = request.requestHeaders.getRawHeaders(b"x-forwarded-for")
        body = (
            f"server: {self.name}\n"
            f"client: {formatAddress(request.getClientAddress())}\n"
            "x-forwarded-for: "
            + (b", ".join(forwarded).decode("latin-1") if forwarded else "(none)")
            + "\n"
        ).encode("utf-8")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return body


class DemoSite(Site):
    """
    The HTTP factory of one demo server.

    It writes no access log: the proxy's access log already shows each
    request, and the HTTP health check's probes (one per server every
    interval) would bury them.
    """

    noisy = False

    def log(self, request) -> None:
        """
        Leave requests out of the log (see the class docstring).
        """


def demoSite(name: str, reactor) -> Site:
    """
    The HTTP factory of the demo server called C{name}.
    """
    return DemoSite(DemoResource(name), reactor=reactor)


class DemoService(MultiService):
    """
    The demo web servers, one listening service each, and the hint logged
    at startup telling the user what to try.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        servers: Iterable[tuple[str, str]] = SERVERS,
        url: str = URL,
    ) -> None:
        super().__init__()
        self.setName("demo")
        self.url = url
        self.servers = tuple(servers)
        for name, bind in self.servers:
            # A taken port stops startup, as it does for the listeners.
            service = raiseListenErrors(
                StreamServerEndpointService(serverFromString(reactor, bind), demoSite(name, reactor))
            )
            service.setName(f"demo:{name}")
            service.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        self.log.info(
            "demo: web servers {names} are running behind the proxy; "
            "try: curl {url} (twice: the answers alternate), "
            "then curl -b jar -c jar {url} (with a cookie jar they stick to one server)",
            names=", ".join(name for name, _ in self.servers),
            url=self.url,
        )
