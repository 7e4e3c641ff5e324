"""
A connection handed from one protocol to another, the way C{startTLS}
does it.

A protocol that reads something first (a PROXY header) and then wants
to step out of the data path replaces itself as the transport's
C{protocol}: Twisted's connections deliver every later event (data,
half-close, loss) to whatever that attribute holds, which is what
C{twisted.internet._newtls.startTLS} relies on to put the TLS layer in.
The attribute is not part of Twisted's transport interfaces.
"""

from __future__ import annotations


def handOver(transport, current, protocol) -> bool:
    """
    Make C{transport} deliver its events to C{protocol} from now on
    instead of to C{current}, its protocol so far. L{False} when
    C{transport} does not deliver to C{current} through a C{protocol}
    attribute (a test transport, or a wrapper in between): then
    C{current} has to pass the events on itself.
    """
    if getattr(transport, "protocol", None) is not current:
        return False
    transport.protocol = protocol
    return True
