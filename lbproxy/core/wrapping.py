"""
A factory standing in front of a listener's factory (TLS termination, the
PROXY header reader): what every such layer does the same way.
"""

from __future__ import annotations

from twisted.internet.protocol import ServerFactory


class FactoryLayer(ServerFactory):
    """
    Wraps C{wrappedFactory}: starting and stopping reach it, and the log
    names it, with C{logSuffix} after its name. A subclass builds its
    layer's protocol around the wrapped factory's in C{buildProtocol}.

    @ivar wrappedFactory: the factory of the layer beneath (the front's
        factory, or another layer).
    @ivar reactor: the reactor the layer times things with.
    """

    noisy = False
    logSuffix = ""

    def __init__(self, wrappedFactory, reactor) -> None:
        self.wrappedFactory = wrappedFactory
        self.reactor = reactor

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.wrappedFactory!r}>"

    def logPrefix(self) -> str:
        prefix = getattr(self.wrappedFactory, "logPrefix", None)
        name = prefix() if prefix is not None else self.wrappedFactory.__class__.__name__
        return name + self.logSuffix

    def doStart(self) -> None:
        self.wrappedFactory.doStart()

    def doStop(self) -> None:
        self.wrappedFactory.doStop()
