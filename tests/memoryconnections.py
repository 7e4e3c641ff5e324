"""
Connections made by hand in memory, for the fronts' tests: a client
accepted by a listener's factory, and a backend connection attempt on a
L{MemoryReactorClock} completed or refused.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
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
