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
TCP connections (TLS, UNIX sockets, test transports) get a plain
C{transport.write}; for TLS over a plain TCP connection (lbproxy's own
L{ServerTLSTransport} of implicit-TLS listeners, or
C{TLSMemoryBIOProtocol}, as Twisted's TLS endpoints make), the data is
encrypted at once and what the TLS layer writes to the TCP connection
goes through the batch, from that write on: the encrypted records are
sent at the end of the iteration too, without the writability round
trip, and (for C{TLSMemoryBIOProtocol}) without the per-connection
C{callLater(0)} of Twisted's C{BufferingTLSTransport}.
"""

from __future__ import annotations

from collections.abc import Sequence
from errno import ENOBUFS, EWOULDBLOCK

from functools import partial

from twisted.internet import tcp
from twisted.protocols.tls import TLSMemoryBIOProtocol, _AggregateSmallWrites

from lbproxy.tls.transport import ServerTLSTransport

# Only the exact plain TCP transport classes, whose buffering this relies
# on; subclasses may send differently (UNIX ones pass descriptors along).
_PLAIN = frozenset({tcp.Server, tcp.Client})

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
        # The batch is due to be flushed by callAfterEvents.
        self._due = False

    def write(self, transport, data: bytes) -> None:
        """
        Write C{data} to C{transport}.
        """
        kind = type(transport)
        if kind not in _PLAIN or transport.TLS:
            if kind is ServerTLSTransport:
                if transport._batch is not self:
                    self._adoptServerTLS(transport)
                transport.write(data)
                return
            if isinstance(transport, TLSMemoryBIOProtocol) and self._adoptTLS(transport):
                self._writeTLS(transport, data)
                return
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

    def _adoptServerTLS(self, tls: ServerTLSTransport) -> None:
        """
        Send the records C{tls} encrypts with this batch when its TCP
        connection is a plain one; its own C{write} encrypts at once.
        """
        lower = tls.transport
        if type(lower) in _PLAIN and not lower.TLS:
            tls.sendRecordsWith(self, partial(self.write, lower))
        else:
            tls.sendRecordsWith(self, lower.write)

    def _adoptTLS(self, tls: TLSMemoryBIOProtocol) -> bool:
        """
        Send what C{tls} writes to its TCP connection with this batch;
        L{False} when that is not a plain TCP connection (or another batch
        sends it).
        """
        lower = tls.transport
        if type(lower) not in _PLAIN or lower.TLS:
            return False
        write = vars(lower).get("write")
        if write is None:
            # The TLS layer calls its transport's write: the batch's, for
            # this connection only.
            write = lower.write = partial(self.write, lower)
        return isinstance(write, partial) and write.func == self.write

    def _writeTLS(self, tls: TLSMemoryBIOProtocol, data: bytes) -> None:
        """
        Encrypt C{data} now: its records join the batch with the TCP
        connection's other data. A C{BufferingTLSTransport} would instead
        keep it for a C{callLater(0)} of its own, per connection and
        iteration; what it holds already from plain writes goes first.
        """
        aggregator = getattr(tls, "_aggregator", None)
        if type(aggregator) is not _AggregateSmallWrites:
            # A plain TLSMemoryBIOProtocol, or one whose connection is
            # gone (its writes are dropped).
            tls.write(data)
            return
        aggregator.flush()
        TLSMemoryBIOProtocol.write(tls, data)

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
            buffered = transport._tempDataBuffer
            if not buffered:
                continue
            data = buffered[0] if len(buffered) == 1 else b"".join(buffered)
            try:
                sent = transport.socket.send(data)
            except OSError as error:
                if error.errno not in _TRY_LATER:
                    # Broken: the reactor's write finds out and reports it.
                    transport.startWriting()
                    continue
                sent = 0
            # What FileDescriptor.doWrite does with its buffers.
            transport._tempDataBuffer = []
            transport._tempDataLen = 0
            if sent < len(data):
                transport.dataBuffer = data
                transport.offset = sent
                transport.startWriting()
            elif transport.producer is not None and (
                not transport.streamingProducer or transport.producerPaused
            ):
                transport.producerPaused = False
                transport.producer.resumeProducing()
