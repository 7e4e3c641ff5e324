"""
The admin listener (C{[admin]}): a small twisted.web site beside the
data path, on its own socket::

    /            the stats page (HTML, refreshing itself; ?refresh=N)
    /stats.json  the same as JSON (Balancer.snapshot)
    /metrics     Prometheus metrics (lbproxy.admin.metrics)
    /api/...     the runtime API, with the bearer token (lbproxy.admin.api)

The pages and metrics need no token: the listener is on loopback unless
C{allow_remote} says otherwise. Requests are not logged one by one (a
scrape every few seconds would fill the log); the API logs every change
and every refused token.
"""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from lbproxy.admin import metrics, stats
from lbproxy.admin.api import API, BoundedContent, TokenCheck
from lbproxy.config.admin import AdminConfig
from lbproxy.listening import SocketService, endpointFor

#: Seconds an admin connection may stay idle.
IDLE_TIMEOUT = 30


class AdminSite(Site):
    """
    A site whose request bodies are kept in memory up to the API's limit,
    and whose requests are not written to the log.
    """

    noisy = False
    logger = Logger()

    def __init__(self, resource, reactor) -> None:
        super().__init__(resource, timeout=IDLE_TIMEOUT, reactor=reactor)

    def getContentFile(self, length):
        return BoundedContent()

    def log(self, request) -> None:
        pass


def afterRefresh(service, request, render) -> bytes | int:
    """
    C{render()} once the model's counters are current: at once in a
    single process; once the workers' counters are summed in the control
    process of workers (L{lbproxy.workers}), the answer written then.
    """
    refreshing = service.refreshCounters()
    if refreshing is None:
        return render()
    finished = []
    request.notifyFinish().addBoth(finished.append)

    def done(_):
        if not finished:
            request.write(render())
            request.finish()

    def failed(failure):
        AdminSite.logger.failure("cannot gather the workers' counters", failure)
        if not finished:
            request.setResponseCode(500)
            request.finish()

    refreshing.addCallbacks(done, failed)
    return NOT_DONE_YET


class StatsPage(Resource):
    isLeaf = True

    def __init__(self, service) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request) -> bytes:
        refresh = stats.DEFAULT_REFRESH
        values = request.args.get(b"refresh")
        if values:
            try:
                refresh = max(0, min(int(values[0]), 3600))
            except ValueError:
                pass
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return afterRefresh(self.service, request, lambda: stats.render(self.service.balancer.snapshot(), refresh))


class StatsJSON(Resource):
    isLeaf = True

    def __init__(self, service) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return afterRefresh(
            self.service, request, lambda: json.dumps(self.service.balancer.snapshot(), indent=1).encode("utf-8") + b"\n"
        )


class Metrics(Resource):
    """
    C{/metrics}: the Prometheus text format of L{metrics.registry} (or
    OpenMetrics when the scraper asks for it).
    """

    isLeaf = True

    def __init__(self, service) -> None:
        super().__init__()
        self.service = service
        self.registry = metrics.registry(service)

    def render_GET(self, request) -> bytes:
        from prometheus_client.exposition import choose_encoder

        encoder, contentType = choose_encoder((request.getHeader(b"accept") or b"").decode("latin-1"))
        request.setHeader(b"content-type", contentType.encode("ascii"))
        return afterRefresh(self.service, request, lambda: encoder(self.registry))


def adminRoot(service, tokens: TokenCheck) -> Resource:
    root = Resource()
    page = StatsPage(service)
    root.putChild(b"", page)
    root.putChild(b"stats", page)
    root.putChild(b"stats.json", StatsJSON(service))
    root.putChild(b"metrics", Metrics(service))
    root.putChild(b"api", API(service, tokens))
    return root


class AdminService(SocketService):
    """
    The admin listener of C{service} (a L{lbproxy.service.BalancerService}),
    opened in L{privilegedStartService} like the listeners: a failure to
    open it stops startup with one line naming C{admin.bind}.
    """

    log = Logger()

    def __init__(self, service, config: AdminConfig, reactor) -> None:
        self.config = config
        self.tokens = TokenCheck(config.token, reactor)
        site = AdminSite(adminRoot(service, self.tokens), reactor)
        super().__init__(endpointFor(reactor, config.bind), site, config.bind, "admin.bind", service.config.source)
        self.setName("admin")

    def privilegedStartService(self) -> None:
        opened = self._opened
        super().privilegedStartService()
        if opened:
            return
        api = "off (no token_file)" if self.config.token is None else "on"
        self.log.info("admin listener on {bind}: stats, metrics; runtime API {api}", bind=self.config.bind, api=api)

    def stopService(self):
        self.tokens.limitLog.flush()
        return super().stopService()

    def setToken(self, token: bytes | None) -> None:
        """
        Check the API's requests against C{token} from now on (a reload
        read the token file again).
        """
        self.tokens.token = token
