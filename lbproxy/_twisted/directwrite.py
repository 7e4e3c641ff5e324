"""
Relayed chunks sent at once when the connection has nothing queued.

Twisted's C{write} queues the bytes, registers the socket for
writability, sends on the next reactor iteration and unregisters: two
C{epoll_ctl} calls and one more pass of the loop per relayed chunk. When
the transport has nothing queued, sending straight away puts the same
bytes on the wire in the same order for less. This reads a plain TCP
connection's write buffers (C{_tempDataLen}, C{dataBuffer}) and its
C{socket}, below Twisted's public API.

The functions take the transport as an argument, so that a relay holds
one shared function per direction and the transport it already knows,
instead of a closure (and the bound methods it keeps) per connection.
"""

from __future__ import annotations

from collections.abc import Callable

from lbproxy._twisted import PLAIN_TCP


def directWrite(transport, data: bytes) -> None:
    """
    Write C{data} to C{transport}, a plain TCP connection: send it at once
    when nothing is queued; whatever the kernel does not take goes through
    C{transport.write}, which keeps the producer accounting (pausing the
    peer above C{bufferSize}) as it was.
    """
    if (
        transport._tempDataLen
        or transport.dataBuffer
        or transport.disconnecting
        or transport.TLS
        or not transport.connected
    ):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except OSError:
        # EAGAIN, or an error Twisted reports on its own attempt.
        transport.write(data)
        return
    if sent < len(data):
        transport.write(data[sent:])


def transportWrite(transport, data: bytes) -> None:
    """
    Write C{data} with C{transport}'s own C{write}.
    """
    transport.write(data)


def writerFor(transport) -> Callable[[object, bytes], None]:
    """
    The function writing relayed chunks to C{transport}, called as
    C{write(transport, data)}: L{directWrite} for plain TCP connections,
    L{transportWrite} for any other transport (TLS, a TCP connection
    switched to TLS by C{startTLS}, UNIX, test transports).
    """
    return directWrite if type(transport) in PLAIN_TCP else transportWrite
