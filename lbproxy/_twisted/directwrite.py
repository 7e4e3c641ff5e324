"""
Relayed chunks sent at once when the connection has nothing queued.

Twisted's C{write} queues the bytes, registers the socket for
writability, sends on the next reactor iteration and unregisters: two
C{epoll_ctl} calls and one more pass of the loop per relayed chunk. When
the transport has nothing queued, sending straight away puts the same
bytes on the wire in the same order for less. This reads a plain TCP
connection's write buffers (C{_tempDataLen}, C{dataBuffer}) and its
C{socket}, below Twisted's public API.
"""

from __future__ import annotations

from collections.abc import Callable

from lbproxy._twisted import PLAIN_TCP


def directWriter(transport) -> Callable[[bytes], None]:
    """
    A write function for C{transport} that sends at once when nothing is
    queued; whatever the kernel does not take goes through
    C{transport.write}, which keeps the producer accounting (pausing the
    peer above C{bufferSize}) as it was.

    Only plain TCP connections get this; any other transport (TLS, a TCP
    connection switched to TLS by C{startTLS}, UNIX, test transports) gets
    its own C{write}.
    """
    write = transport.write
    if type(transport) not in PLAIN_TCP:
        return write
    send = transport.socket.send

    def directWrite(data: bytes) -> None:
        if (
            transport._tempDataLen
            or transport.dataBuffer
            or transport.disconnecting
            or transport.TLS
            or not transport.connected
        ):
            write(data)
            return
        try:
            sent = send(data)
        except OSError:
            # EAGAIN, or an error Twisted reports on its own attempt.
            write(data)
            return
        if sent < len(data):
            write(data[sent:])

    return directWrite
