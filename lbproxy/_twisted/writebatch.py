"""
Writes to TCP connections sent together after the reactor has handled the
events it woke up for.

C{transport.write} buffers the data and registers the connection for
writability (an C{epoll_ctl}); on its next iteration the reactor wakes up
for it, sends, and unregisters it (another C{epoll_ctl}). A proxy answering
every small read with one small write on another connection pays that round
trip, and the reactor's per-event dispatch, for each of them. L{WriteBatch}
puts the data in the same buffer without registering the connection, and
once the events of the current iteration are handled (lbproxy's reactor's
C{callAfterEvents}, or with another reactor a C{callLater(0)}, run before
the reactor polls again) sends what every such connection holds
with one C{send} each, registering only those the kernel could not take
everything from, as C{FileDescriptor.doWrite} leaves its buffers. Sends
still happen once per connection per iteration, as with
C{transport.write}, so the peers keep getting their data in batches.

Because the data is in the transport's own buffer, everything else behaves
as with C{transport.write}: later writes queue behind it, C{loseConnection}
sends it before closing, C{abortConnection} drops it, and the transport
pauses its producer when too much is buffered. Transports other than plain
TCP connections (UNIX sockets, test transports) get a plain
C{transport.write}; for TLS over a plain TCP connection the data is
encrypted at once and the encrypted records go through the batch
(L{lbproxy._twisted.tlsbatch}).

This works on the write buffers of Twisted's plain TCP connections
(C{_tempDataBuffer}, C{_tempDataLen}, C{dataBuffer}, C{offset}) and their
socket, below Twisted's public API.
"""

from __future__ import annotations

from collections.abc import Sequence
from errno import ENOBUFS, EWOULDBLOCK

from lbproxy._twisted import PLAIN_TCP
from lbproxy._twisted.tlsbatch import writeTLS
from lbproxy.tls.transport import ServerTLSTransport

# Errors of send() that only mean "not now" (as for tcp.Connection).
_TRY_LATER = frozenset({EWOULDBLOCK, ENOBUFS})


class WriteBatch:
    """
    Data for several TCP connections, sent at the end of the reactor
    iteration.
    """

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self._pending: dict = {}
        self._call = None
        self._afterEvents = getattr(reactor, "callAfterEvents", None)
        # The TLS transports' records are sent with this very function
        # object, by which they know whose they are (tlsbatch).
        self._sendTo = self.write
        # The batch is due to be flushed by callAfterEvents.
        self._due = False

    def write(self, transport, data: bytes) -> None:
        """
        Write C{data} to C{transport}.
        """
        if type(transport) not in PLAIN_TCP or transport.TLS:
            if not writeTLS(self._sendTo, transport, data):
                transport.write(data)
            return
        if not data or not transport.connected or transport._writeDisconnected:
            # What FileDescriptor.write ignores.
            return
        transport._tempDataBuffer.append(data)
        transport._tempDataLen += len(data)
        if transport._tempDataLen + len(transport.dataBuffer) > transport.bufferSize:
            # What FileDescriptor.write does, only needed when full.
            transport._maybePauseProducer()
        self._pending[transport] = None
        if self._due or self._call is not None:
            return
        afterEvents = self._afterEvents
        if afterEvents is not None:
            self._due = True
            afterEvents(self.flush)
        else:
            self._call = self._reactor.callLater(0, self.flush)

    def writeNow(self, transport, data: bytes) -> None:
        """
        Write C{data}, part of a body, to C{transport} and send it at once,
        with whatever the batch holds for the transport before it, as the
        relay sends what it forwards (L{lbproxy._twisted.directwrite}).
        A transport the reactor is sending to already or closing, or that
        is not a plain TCP connection, gets L{write}.

        A body arrives in large reads: waiting for the batch would save no
        send, and a read above the transport's C{bufferSize} would pause
        its producer (the other connection's reading) until the batch is
        flushed, on every read. Here the producer is paused only when the
        kernel leaves more than C{bufferSize} unsent.
        """
        if (
            type(transport) not in PLAIN_TCP
            or transport.TLS
            or transport.dataBuffer
            or not data
            or not transport.connected
            or transport.disconnecting
            or transport._writeDisconnecting
            or transport._writeDisconnected
        ):
            self.write(transport, data)
            return
        transport._tempDataBuffer.append(data)
        transport._tempDataLen += len(data)
        self._send(transport)

    def writeSequence(self, transport, pieces: Sequence[bytes]) -> None:
        """
        Write each of C{pieces} to C{transport}, in order; to a TLS
        transport of lbproxy's as one write, so in one record.
        """
        if type(transport) is ServerTLSTransport:
            self.write(transport, b"".join(pieces))
            return
        for piece in pieces:
            self.write(transport, piece)

    def flush(self) -> None:
        """
        Send what the connections written to hold; leave what the kernel
        does not take, and connections that are closing, to the reactor.
        """
        self._due = False
        call = self._call
        if call is not None:
            self._call = None
            if call.active():
                call.cancel()
        pending = self._pending
        if not pending:
            return
        self._pending = {}
        for transport in pending:
            if transport._aborting or not transport.connected:
                # Dropped with the connection, as abortConnection drops the
                # transport's buffer.
                continue
            if transport.disconnecting or transport._writeDisconnecting or transport.dataBuffer:
                # Registered for writing when it began to close, or since
                # the kernel last took only part of its data: the reactor
                # sends it.
                continue
            if transport._tempDataBuffer:
                self._send(transport)

    @staticmethod
    def _send(transport) -> None:
        """
        Send what C{transport}, with nothing in C{dataBuffer}, holds in its
        temporary buffer; leave what the kernel does not take to the
        reactor, as C{FileDescriptor.doWrite} leaves its buffers.
        """
        buffered = transport._tempDataBuffer
        data = buffered[0] if len(buffered) == 1 else b"".join(buffered)
        try:
            sent = transport.socket.send(data)
        except OSError as error:
            if error.errno not in _TRY_LATER:
                # Broken: the reactor's write finds out and reports it.
                transport.startWriting()
                return
            sent = 0
        transport._tempDataBuffer = []
        transport._tempDataLen = 0
        if sent < len(data):
            transport.dataBuffer = data
            transport.offset = sent
            transport.startWriting()
            if len(data) - sent > transport.bufferSize and not transport.producerPaused:
                transport._maybePauseProducer()
        elif transport.producer is not None and (
            not transport.streamingProducer or transport.producerPaused
        ):
            transport.producerPaused = False
            transport.producer.resumeProducing()
