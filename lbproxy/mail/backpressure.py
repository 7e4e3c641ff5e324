"""
Backpressure on what lbproxy answers a mail client before login.

Before login lbproxy answers the client itself: every CAPABILITY, NOOP or
CAPA it reads produces a reply. A client that writes commands and never
reads the replies would make the replies pile up in the transport's write
buffer without bound. So the session registers a L{ReplyBackpressure} as
the streaming producer of the client's transport, as a relay registers
each leg as the other's: the transport pauses it when more than its
buffer size (64 KiB for TCP, the same on the TLS layers, which hand their
records to the TCP transport) waits to be sent, and resumes it once all of
it is sent. While paused, the session reads nothing from the client and
answers nothing of what it already read, which stays in its line buffer:
what one read brought, at most.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class ReplyBackpressure:
    """
    The streaming producer a pre-login session registers on its client's
    transport.

    @ivar paused: the transport has more replies waiting than its buffer
        size.
    @ivar pausedSince: when it last paused (the reactor's C{seconds()}),
        or None while not paused.
    @ivar registered: the producer is registered on C{transport}.
    """

    def __init__(self, reactor, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        """
        @param reactor: provides C{seconds()}.
        @param pause: called when the client stops taking replies.
        @param resume: called when it has taken all of them again.
        """
        self._reactor = reactor
        self._pause = pause
        self._resume = resume
        self.paused = False
        self.pausedSince: float | None = None
        self.registered = False
        self._transport = None

    def register(self, transport) -> None:
        """
        Become C{transport}'s streaming producer.
        """
        transport.registerProducer(self, True)
        self._transport = transport
        self.registered = True

    def unregister(self) -> None:
        """
        Stop being the transport's producer (before a relay registers its
        own, and before closing: a TLS transport does not close while a
        producer is registered). Call it only while the transport is
        connected.
        """
        if self.registered:
            self.registered = False
            self._transport.unregisterProducer()

    def unreadFor(self) -> float:
        """
        Seconds the client has left its replies unread (0 when it reads).
        """
        if self.pausedSince is None:
            return 0.0
        return self._reactor.seconds() - self.pausedSince

    # IPushProducer

    def pauseProducing(self) -> None:
        # A TCP transport calls this on every write while its buffer is
        # full.
        if not self.paused and self.registered:
            self.paused = True
            self.pausedSince = self._reactor.seconds()
            self._pause()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.pausedSince = None
            if self.registered:
                self._resume()

    def stopProducing(self) -> None:
        """
        The connection is lost: the session hears of it by
        C{connectionLost}.
        """
        self.paused = False
        self.pausedSince = None
