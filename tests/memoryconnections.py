"""
Connections made by hand in memory, for the fronts' tests: a client
accepted by a listener's factory, and a backend connection attempt on a
L{MemoryReactorClock} completed or refused.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError, UserError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure


def acceptClient(factory, transport, peer, host):
    """
    Connect C{transport} (a fake TCP transport), from C{peer} to C{host},
    to a protocol of the listener C{factory}.

    @return: the protocol.
    """
    transport.peerAddr = peer
    transport.hostAddr = host
    protocol = factory.buildProtocol(peer)
    protocol.makeConnection(transport)
    return protocol


def completeAttempt(reactor, transport, index=-1):
    """
    Let connection attempt C{index} of C{reactor} succeed on C{transport}.

    @return: the protocol the connector's factory built, and C{transport}.
    """
    host, port, factory, timeout, bind = reactor.tcpClients[index]
    wrapper = factory.buildProtocol(IPv4Address("TCP", host, port))
    wrapper.makeConnection(transport)
    return wrapper._wrappedProtocol, transport


def refuseAttempt(reactor, index=-1):
    """
    Let connection attempt C{index} of C{reactor} fail as refused.
    """
    failAttempt(reactor, ConnectionRefusedError(), index)


def failAttempt(reactor, exception, index=-1):
    """
    Let connection attempt C{index} of C{reactor} fail with C{exception}.
    """
    factory = reactor.tcpClients[index][2]
    factory.clientConnectionFailed(reactor.connectors[index], Failure(exception))


class DirectAttemptRecord:
    """
    A connection attempt made with L{DirectMemoryReactor.connectDirect}:
    what the reactor's C{connectDirect} returns, recorded as the reactor's
    connector (C{stoppedConnecting}) and as the factory of its
    C{tcpClients} entry (C{clientConnectionFailed}), so that the helpers
    above and the connector tests drive it as they drive an endpoint's.
    """

    def __init__(self, host: str, port: int, attempt) -> None:
        self.host = host
        self.port = port
        self.attempt = attempt
        self.stoppedConnecting = False
        self.over = False

    def succeed(self, transport):
        """
        The connection is made on C{transport}: build the protocol, connect
        it, and tell the attempt.

        @return: the protocol.
        """
        assert not self.over, "attempt already over"
        self.over = True
        protocol = self.attempt.buildProtocol(IPv4Address("TCP", self.host, self.port))
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.attempt.connectionMade(transport)
        return protocol

    def clientConnectionFailed(self, connector, reason: Failure) -> None:
        assert not self.over, "attempt already over"
        self.over = True
        self.attempt.connectionFailed(reason)

    def stopConnecting(self) -> None:
        if not self.over:
            self.stoppedConnecting = True
            self.clientConnectionFailed(self, Failure(UserError()))


class DirectMemoryReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} that also connects directly, as lbproxy's
    reactor does (C{connectDirect}): each attempt is a
    L{DirectAttemptRecord} in C{tcpClients} and C{connectors}.
    """

    def connectDirect(self, host: str, port: int, attempt):
        record = DirectAttemptRecord(host, port, attempt)
        self.tcpClients.append((host, port, record, None, None))
        self.connectors.append(record)
        return record
