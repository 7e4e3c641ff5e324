"""
What every HTTP listener's factory holds, proxying or redirecting: the
parser limits, the access log, the open connections and the stopping flag.
"""

from __future__ import annotations

from twisted.internet.protocol import ServerFactory

from lbproxy.core.model import Listener
from lbproxy.http.accesslog import AccessLog
from lbproxy.http.headcache import HeadCache


def requestParserLimits(limits) -> dict:
    """
    The L{lbproxy.http.parser.RequestParser} keyword arguments for a
    listener's C{limits}.
    """
    return {
        "maxRequestLine": limits.requestLine,
        "maxHeaderBytes": limits.headerSize,
        "maxHeaders": limits.headerCount,
        "maxBodySize": limits.bodySize or None,
    }


class HTTPListenerFactory(ServerFactory):
    """
    The part of an HTTP listener's factory that does not depend on what it
    answers with; a subclass names its C{protocol}, built with the factory
    and the reactor.

    @ivar listener: the live L{lbproxy.core.model.Listener}.
    @ivar config: its L{lbproxy.http.config.HTTPListenerConfig}.
    @ivar parserLimits: keyword arguments of the connections' parsers.
    @ivar requestHeads: the L{HeadCache} the connections' parsers share.
    @ivar accessLog: the listener's L{AccessLog}.
    @ivar logAll: whether every request is logged (log_requests = "all"),
        or only errors and abnormal ends.
    @ivar stopping: the listener is stopping: responses close their
        connections.
    """

    noisy = False

    def __init__(self, listener, reactor) -> None:
        """
        @param listener: the live listener (or, outside a balancer, its
            config).
        """
        self.listener = listener = Listener.of(listener)
        self.config = config = listener.config
        self._reactor = reactor
        self.parserLimits = requestParserLimits(config.limits)
        self.requestHeads = HeadCache()
        self.accessLog = AccessLog(config.accessLog, reactor)
        self.logAll = config.logRequests == "all"
        self.stopping = False

    def buildProtocol(self, addr):
        return self.protocol(self, self._reactor)

    def startFactory(self) -> None:
        """
        Started again after a stop: reopen the access log it closed.
        """
        if self.stopping:
            self.stopping = False
            self.accessLog = AccessLog(self.config.accessLog, self._reactor)
