"""
Connecting to a server's IP address without Twisted's connector,
resolution step and endpoint.

Connecting through C{clientFromString(...).connect(factory)} costs, for
every backend connection: the endpoint's wrapping factory and protocol, two
L{Deferred}s and their callbacks, a connector with its own timeout timer,
a C{callLater(0)} before the socket connects and a Deferred for the
"resolution" of an address that is already an IP literal. For a client
that sends one request per connection, that is a fifth of lbproxy's time.

L{DirectClient} is a L{LeanClient} that starts connecting as it is made:
C{connect()} is called on its socket within L{connectDirect}, and what
happens next is told to an L{IConnectAttempt} (buildProtocol, then
C{connectionMade} or C{connectionFailed}). The caller keeps the only
timer. A failure found at once (no descriptor for the socket) is told
before L{connectDirect} returns. Once connected, the socket stays
registered for reading instead of being unregistered and registered
again, and C{connect()} is not called a second time: three C{epoll_ctl}
calls and one C{connect} less per connection than Twisted's C{doConnect}.

Everything else (C{_connectDone}, C{failIfNotConnected}, the connected
transport) is Twisted's own code; C{tests/test_twisted_internals.py}
checks the methods relied upon still exist and behave.
"""

from __future__ import annotations

import errno
import os
import socket

from twisted.internet import abstract
from twisted.internet.error import getConnectError
from twisted.python.failure import Failure
from zope.interface import Interface

from lbproxy._twisted.transports import LeanClient


class IConnectAttempt(Interface):
    """
    What is told about one L{connectDirect} attempt.
    """

    def buildProtocol(addr):
        """
        The protocol of the connection to C{addr}, now established.
        """

    def connectionMade(transport):
        """
        The protocol built is connected (its C{connectionMade} ran) on
        C{transport}.
        """

    def connectionFailed(reason: Failure):
        """
        The attempt failed (or was stopped: C{UserError}).
        """


#: What C{connect_ex} answers a non-blocking socket whose connection is
#: under way.
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY})


class _Connected:
    """
    The C{connector} of a L{DirectClient} once connected: Twisted tells it
    when the connection is lost, which nobody needs to hear, and the
    attempt is not kept alive as long as the connection.
    """

    __slots__ = ()

    def connectionLost(self, reason: Failure) -> None:
        pass

    def connectionFailed(self, reason: Failure) -> None:
        pass


_CONNECTED = _Connected()


class DirectClient(LeanClient):
    """
    An outgoing connection to an IP address that connects as it is made
    and reports to an L{IConnectAttempt} instead of a connector.
    """

    __slots__ = ()

    def _finishInit(self, whenDone, skt, error, reactor) -> None:
        # Twisted schedules whenDone (resolveAddress) or the failure with
        # callLater(0); the address is a literal, so connect now.
        if whenDone:
            self._commonConnection.__init__(self, skt, None, reactor)
            self.realAddress = self.addr
            self._startConnecting()
        else:
            self.failIfNotConnected(error)

    def _startConnecting(self) -> None:
        """
        Call C{connect()}; while it is in progress, the next readiness
        event (writable once connected; readable too when it failed)
        finishes it.
        """
        try:
            result = self.socket.connect_ex(self.realAddress)
        except OSError as e:
            result = e.args[0]
        if result in _IN_PROGRESS:
            self.doRead = self.doWrite = self._finishConnecting
            self.startReading()
            self.startWriting()
        elif result and result != errno.EISCONN:
            self.failIfNotConnected(getConnectError((result, os.strerror(result))))
        else:
            self._connectDone()

    def _finishConnecting(self):
        """
        The socket is readable or writable: the outcome of C{connect()} is
        its C{SO_ERROR}. Twisted's C{doConnect} calls C{connect()} again and
        registers the socket anew for reading; a connected socket needs
        neither: it stays registered for reading and stops writing.
        """
        skt = getattr(self, "socket", None)
        if self.connected or self.disconnected or skt is None:
            return None
        err = skt.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.failIfNotConnected(getConnectError((err, os.strerror(err))))
            return None
        del self.doRead
        del self.doWrite
        self.stopWriting()
        self._connectDone()
        return None

    def _connectDone(self) -> None:
        attempt = self.connector
        super()._connectDone()
        self.connector = _CONNECTED
        attempt.connectionMade(self)

    def stopConnecting(self) -> None:
        """
        Abandon the attempt if it is still connecting (the attempt hears
        C{connectionFailed} with C{UserError}); nothing once connected.
        """
        if not self.connected:
            super().stopConnecting()


def isIPLiteral(host: str) -> bool:
    """
    Whether C{host} is an IPv4 or IPv6 address (no name to resolve).
    """
    return abstract.isIPAddress(host) or abstract.isIPv6Address(host)


def connectDirect(reactor, host: str, port: int, attempt) -> DirectClient:
    """
    Start connecting to C{host} (an IP literal) and C{port}, telling
    C{attempt} (an L{IConnectAttempt}) what happens; call
    C{stopConnecting()} on the result to abandon it.
    """
    if not isIPLiteral(host):
        raise ValueError(f"not an IP address: {host!r}")
    return DirectClient(host, port, None, attempt, reactor)

