"""
TLS over a plain TCP connection, its records sent with a write batch.

A write batch (L{lbproxy._twisted.writebatch}) hands the data for a TLS
transport to it at once, to be encrypted now, and what the TLS layer then
writes to its TCP connection goes through the batch, from that write on:
the records are sent at the end of the iteration with the connection's
other data, without the writability round trip. Two kinds of TLS
transport take part:

  - lbproxy's own L{ServerTLSTransport} (implicit-TLS listeners) hands its
    records to its C{sendRecords} attribute, which this points at the
    batch;
  - Twisted's C{TLSMemoryBIOProtocol} (what Twisted's TLS endpoints and
    C{TLSMemoryBIOFactory} make) writes its records with its TCP
    transport's C{write}, looked up at each write: the TCP connection gets
    the batch's instead, as an attribute of that connection alone. Its
    C{BufferingTLSTransport} subclass would keep small writes for a
    C{callLater(0)} of its own, per connection and iteration (its
    C{_aggregator}, an C{_AggregateSmallWrites}): the data is encrypted at
    once with C{TLSMemoryBIOProtocol.write} instead, after what the
    aggregator holds from plain writes. These are Twisted's internals.
"""

from __future__ import annotations

from functools import partial

from twisted.protocols.tls import TLSMemoryBIOProtocol, _AggregateSmallWrites

from lbproxy._twisted import PLAIN_TCP
from lbproxy.tls.transport import ServerTLSTransport


def writeTLS(sendTo, transport, data: bytes) -> bool:
    """
    Write C{data} to C{transport}, a TLS transport over a plain TCP
    connection, so that its records go out with C{sendTo(connection,
    records)}: a write batch's C{write}, the same function on every call.

    @return: L{False} when C{transport} is not such a TLS transport (or
        another batch sends its records); the caller then writes to it as
        to any transport.
    """
    if type(transport) is ServerTLSTransport:
        send = transport.sendRecords
        if type(send) is not partial or send.func is not sendTo:
            lower = transport.transport
            if type(lower) not in PLAIN_TCP or lower.TLS:
                return False
            transport.sendRecords = partial(sendTo, lower)
        transport.write(data)
        return True
    if isinstance(transport, TLSMemoryBIOProtocol) and _sendsWith(sendTo, transport):
        _encryptNow(transport, data)
        return True
    return False


def _sendsWith(sendTo, tls: TLSMemoryBIOProtocol) -> bool:
    """
    Have C{tls} write its records with C{sendTo} when its TCP connection
    is a plain one; L{False} when it is not (or another batch sends them).
    """
    lower = tls.transport
    if type(lower) not in PLAIN_TCP or lower.TLS:
        return False
    write = vars(lower).get("write")
    if write is None:
        # The TLS layer calls its transport's write: the batch's, for this
        # connection only.
        write = lower.write = partial(sendTo, lower)
    return type(write) is partial and write.func is sendTo


def _encryptNow(tls: TLSMemoryBIOProtocol, data: bytes) -> None:
    """
    Encrypt C{data} now, so that its records join the batch with the TCP
    connection's other data; what C{tls}'s aggregator holds already from
    plain writes goes first.
    """
    aggregator = getattr(tls, "_aggregator", None)
    if type(aggregator) is not _AggregateSmallWrites:
        # A plain TLSMemoryBIOProtocol, or one whose connection is gone
        # (its writes are dropped).
        tls.write(data)
        return
    aggregator.flush()
    TLSMemoryBIOProtocol.write(tls, data)
