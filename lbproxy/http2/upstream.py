"""
HTTP/2 to the servers of a pool with C{protocol = "h2"}.

An L{H2ServerConnection} is the client side of one HTTP/2 connection to a
server (prior knowledge in cleartext; with the pool's TLS, ALPN offering
C{h2} alone). It carries many streams at once, for any client connection:
an L{H2BackendPool} keeps each server's connections and hands a request
the first one with a free stream slot, or none (the request's placement
then opens another through the pool's connector, with its retries). A
connection without a stream is closed after the pool's
C{reuse.idle_timeout}.

Each request is one L{UpstreamStream}, whose I{user} (the client's
L{lbproxy.http2.stream.H2Stream}) hears of the response head, DATA,
trailers, the end of the stream, a reset, and of the connection ending
under it. Flow control both ways, per stream:

  - request DATA goes out as far as the stream's and connection's send
    windows let; what they hold back waits here and the user is told
    (C{backendWriteBlocked}), so it stops acknowledging its client's DATA:
    the client's window closes and nothing grows without bound;
  - response DATA is acknowledged (its window given back to the server)
    only while the user is not paused (C{pauseReading}): a client that
    does not read closes the server's window of that stream alone.

A GOAWAY from the server: no new stream goes on the connection; streams
above its last stream id were never processed and are handed back to
their users to be sent again (L{IUpstreamUser.upstreamRefused}); the
others finish. The connection lost: each open stream ends (one log line
for the connection).
"""

from __future__ import annotations

from collections import deque

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import NoAvailableStreamIDError, ProtocolError
from h2.settings import SettingCodes
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.core.connect import BackendConnector, describeFailure
from lbproxy.core.format import formatErrorCode
from lbproxy.core.relay import setNoDelay
from lbproxy.http2.flow import sendWithinWindows
from lbproxy.interfaces import IUpstreamStream


#: The window of each stream toward lbproxy (HTTP/2's initial one).
_STREAM_WINDOW = 65535


@implementer(IUpstreamStream)
class UpstreamStream:
    """
    One request stream on an L{H2ServerConnection} (see the module
    docstring). It stands where an HTTP/1.1 exchange keeps its backend
    connection (C{exchange.backend}): C{abort} and C{close} reset it.

    @ivar connection: the L{H2ServerConnection}.
    @ivar streamId: its stream id there.
    @ivar user: who gets the response (an L{H2Stream}), or L{None} once
        the stream is over.
    @ivar server: the connection's server.
    """

    def __init__(self, connection: H2ServerConnection, streamId: int, user) -> None:
        self.connection = connection
        self.streamId = streamId
        self.user = user
        self.server = connection.server
        self._pending: deque[bytes] = deque()
        # The trailer fields (or []) ending the request once sent, or None.
        self._end: list | None = None
        self._ended = False
        self._paused = False
        self._unacked = 0
        self._blocked = False

    def __repr__(self) -> str:
        return f"<UpstreamStream {self.streamId} on {self.connection!r}>"

    # -- the request ----------------------------------------------------------

    @property
    def writeBlocked(self) -> bool:
        return self._blocked

    def send(self, data: bytes) -> None:
        if self._ended or self.user is None:
            return
        self._pending.append(data)
        self.drain()

    def end(self, trailers: list) -> None:
        if self._ended or self.user is None or self._end is not None:
            return
        self._end = trailers
        self.drain()

    def drain(self) -> None:
        """
        Send what the windows let of the request body, then its end.
        """
        if self.user is None or self._ended:
            return
        pending = self._pending
        _, ended = sendWithinWindows(self.connection.h2, self.streamId, pending, self._end)
        if ended:
            self._ended = True
        elif ended is None:
            # The server closed or reset the stream: its event follows.
            pending.clear()
        self.connection.flush()
        self._setBlocked(bool(pending) or self.connection.writeBlocked)

    def _setBlocked(self, blocked: bool) -> None:
        if blocked == self._blocked or self.user is None:
            return
        self._blocked = blocked
        if blocked:
            self.user.backendWriteBlocked()
        else:
            self.user.backendWriteUnblocked()

    # -- the response ---------------------------------------------------------

    def acknowledge(self, count: int) -> None:
        """
        C{count} bytes of response DATA were taken: give their window back
        to the server, or once reading resumes.
        """
        self._unacked += count
        if not self._paused:
            self._giveBack()

    def _giveBack(self) -> None:
        count, self._unacked = self._unacked, 0
        if count and self.user is not None:
            self.connection.acknowledge(count, self.streamId)

    def pauseReading(self) -> None:
        self._paused = True

    def resumeReading(self) -> None:
        self._paused = False
        self._giveBack()

    # -- ending ---------------------------------------------------------------

    def close(self) -> None:
        """
        The user is done with the stream (its response read): reset what
        is still open of it, without error.
        """
        self.connection.streamOver(self, ErrorCodes.NO_ERROR)

    def abort(self) -> None:
        """
        The user gave the request up: reset the stream with C{CANCEL}.
        """
        self.connection.streamOver(self, ErrorCodes.CANCEL)


@implementer(IPushProducer)
class H2ServerConnection(Protocol):
    """
    The client side of one HTTP/2 connection to a server (see the module
    docstring).

    @ivar backends: the L{H2BackendPool} that made it.
    @ivar server: the server (set by whoever connected it).
    @ivar h2: the L{H2Connection}.
    @ivar streams: the open L{UpstreamStream}s by stream id.
    @ivar refusal: why the connection cannot be used (the server did not
        select C{h2} by ALPN), or L{None}.
    @ivar goingAway: the server sent GOAWAY, or lbproxy is closing it: no
        new stream.
    @ivar lost: the connection is gone.
    @ivar writeBlocked: the transport does not take more now.
    """

    log = Logger()

    def __init__(self, backends: H2BackendPool, reactor) -> None:
        self.backends = backends
        self._reactor = reactor
        self.server = None
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, UpstreamStream] = {}
        self.refusal: str | None = None
        self.goingAway = False
        self.lost = False
        self.writeBlocked = False
        self.registered = False
        self._idleCall = None

    def __repr__(self) -> str:
        name = getattr(self.server, "name", None)
        return f"<H2ServerConnection {name} streams={len(self.streams)}>"

    # -- transport events -----------------------------------------------------

    def connectionMade(self) -> None:
        setNoDelay(self.transport)
        if self.backends.connector.tls is not None:
            chosen = getattr(self.transport, "negotiatedProtocol", None)
            if chosen != b"h2":
                shown = "none" if chosen is None else chosen.decode("ascii", "replace")
                self.refusal = f"the server did not select h2 by ALPN (selected: {shown})"
                self.goingAway = True
                return
        conn = self.h2
        conn.local_settings.update({SettingCodes.ENABLE_PUSH: 0})
        conn.initiate_connection()
        # Room in the connection's window for every stream's whole window:
        # a stream whose client does not read holds back its own window
        # only, never the other streams sharing the connection.
        conn.increment_flow_control_window(self.backends.maxStreams * _STREAM_WINDOW)
        self.transport.registerProducer(self, True)
        self.flush()

    def dataReceived(self, data: bytes) -> None:
        if self.lost:
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as error:
            self.log.warn(
                "HTTP/2 connection to {server}: protocol error {error}; closing it",
                server=getattr(self.server, "qualifiedName", None),
                error=type(error).__name__,
            )
            self.flush()
            self._close(abort=True)
            return
        for event in events:
            self._handle(event)
        self.flush()

    def _handle(self, event) -> None:
        kind = type(event)
        if kind is DataReceived:
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.acknowledge(event.flow_controlled_length, event.stream_id)
            else:
                stream.user.upstreamData(event.data, event.flow_controlled_length)
        elif kind is ResponseReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.user.upstreamHeaders(event.headers, event.stream_ended is not None)
        elif kind is TrailersReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.user.upstreamTrailers(event.headers)
        elif kind is StreamEnded:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                user = stream.user
                if stream._ended:
                    self._forget(stream)
                user.upstreamEnded()
        elif kind is StreamReset:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                user = stream.user
                self._forget(stream)
                user.upstreamReset(event.error_code)
        elif kind is InformationalResponseReceived:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.user.upstreamInformational(event.headers)
        elif kind is WindowUpdated:
            if event.stream_id == 0:
                self._drainAll()
            else:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.drain()
        elif kind is RemoteSettingsChanged:
            if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._drainAll()
        elif kind is ConnectionTerminated:
            self._goneAway(event)

    def _goneAway(self, event: ConnectionTerminated) -> None:
        """
        The server's GOAWAY: no new stream here; streams it never processed
        go back to their users, the others may finish.
        """
        self.goingAway = True
        self.backends.discard(self)
        last = event.last_stream_id if event.last_stream_id is not None else 0
        code = formatErrorCode(event.error_code)
        self.log.info(
            "HTTP/2 connection to {server}: GOAWAY {code} (last stream {last}, {open} open)",
            server=getattr(self.server, "qualifiedName", None),
            code=code,
            last=last,
            open=len(self.streams),
        )
        for streamId in sorted(self.streams):
            if streamId > last:
                stream = self.streams.pop(streamId)
                user, stream.user = stream.user, None
                user.upstreamRefused()
        if not self.streams:
            self._close()
        elif event.error_code == ErrorCodes.NO_ERROR:
            # The h2 library takes no frame after a GOAWAY it received, not
            # even those of the streams the server still finishes (a
            # graceful shutdown): the connection is kept open for them, as
            # RFC 9113 §6.8 has it; goingAway keeps new streams off it.
            self.h2.state_machine.state = ConnectionState.CLIENT_OPEN

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.lost:
            return
        self.lost = True
        self.goingAway = True
        self._cancelIdle()
        self.backends.discard(self)
        streams = list(self.streams.values())
        self.streams.clear()
        if streams:
            self.log.warn(
                "HTTP/2 connection to {server} lost with {count} open streams: {reason}",
                server=getattr(self.server, "qualifiedName", None),
                count=len(streams),
                reason=describeFailure(reason),
            )
        for stream in streams:
            user, stream.user = stream.user, None
            if user is not None:
                user.upstreamLost()

    # -- streams --------------------------------------------------------------

    @property
    def freeSlots(self) -> int:
        """
        Streams this connection may open now.
        """
        if self.goingAway or self.lost or self.refusal is not None:
            return 0
        limit = min(self.h2.remote_settings.max_concurrent_streams, self.backends.maxStreams)
        return limit - len(self.streams)

    def openStream(self, user, fields: list, endStream: bool) -> UpstreamStream | None:
        """
        Send a request's HEADERS on a new stream for C{user}; L{None} when
        the connection cannot take it (going away, lost, full).
        """
        if self.freeSlots <= 0:
            return None
        conn = self.h2
        try:
            streamId = conn.get_next_available_stream_id()
        except NoAvailableStreamIDError:
            # Every stream id was used: the connection retires.
            self.goAway()
            return None
        try:
            conn.send_headers(streamId, fields, end_stream=endStream)
        except (ProtocolError, ValueError, TypeError):
            return None
        self._cancelIdle()
        stream = self.streams[streamId] = UpstreamStream(self, streamId, user)
        stream._ended = endStream
        self.flush()
        return stream

    def streamOver(self, stream: UpstreamStream, code: ErrorCodes) -> None:
        """
        C{stream}'s user is done with it: reset what is still open of it.
        """
        if stream.user is None:
            return
        stream.user = None
        if self.streams.pop(stream.streamId, None) is None or self.lost:
            return
        try:
            self.h2.reset_stream(stream.streamId, code)
        except ProtocolError:
            # Closed both ways already.
            pass
        self.flush()
        self._maybeIdle()

    def _forget(self, stream: UpstreamStream) -> None:
        """
        C{stream} is closed both ways (or was reset): it ends here.
        """
        self.streams.pop(stream.streamId, None)
        stream.user = None
        self._maybeIdle()

    def acknowledge(self, count: int, streamId: int) -> None:
        if self.lost or not count:
            return
        try:
            self.h2.acknowledge_received_data(count, streamId)
        except ProtocolError:
            # The stream is closed: the connection's window was given back.
            pass
        self.flush()

    def _drainAll(self) -> None:
        for stream in list(self.streams.values()):
            stream.drain()

    # -- idle -----------------------------------------------------------------

    def _maybeIdle(self) -> None:
        if self.streams or self.lost:
            return
        if self.goingAway:
            self._close()
            return
        timeout = self.backends.idleTimeout
        if timeout and self._idleCall is None:
            self._idleCall = self._reactor.callLater(timeout, self._idleExpired)

    def _cancelIdle(self) -> None:
        call, self._idleCall = self._idleCall, None
        if call is not None and call.active():
            call.cancel()

    def _idleExpired(self) -> None:
        self._idleCall = None
        if not self.streams:
            self.goAway()

    def goAway(self) -> None:
        """
        Close the connection gracefully (GOAWAY C{NO_ERROR}) once its
        streams are over.
        """
        self.goingAway = True
        self.backends.discard(self)
        if self.lost:
            return
        try:
            self.h2.close_connection()
        except ProtocolError:
            pass
        self.flush()
        if not self.streams:
            self._close()

    def _close(self, abort: bool = False) -> None:
        self._cancelIdle()
        if self.lost or self.transport is None:
            return
        self.transport.unregisterProducer()
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    # -- writing --------------------------------------------------------------

    def flush(self) -> None:
        if self.lost:
            return
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def pauseProducing(self) -> None:
        self.writeBlocked = True
        for stream in list(self.streams.values()):
            stream._setBlocked(True)

    def resumeProducing(self) -> None:
        self.writeBlocked = False
        self._drainAll()

    def stopProducing(self) -> None:
        pass


class _H2ConnectionFactory(Factory):
    """
    Builds the L{H2ServerConnection}s of one L{H2BackendPool}.
    """

    def __init__(self, backends: H2BackendPool, reactor) -> None:
        self.backends = backends
        self._reactor = reactor

    def buildProtocol(self, addr) -> H2ServerConnection:
        return H2ServerConnection(self.backends, self._reactor)


class H2BackendPool:
    """
    How one HTTP listener reaches the servers of an HTTP/2 pool: what
    L{lbproxy.http.backend.BackendPool} is to an HTTP/1.1 pool, with
    shared connections instead of idle ones.

    @ivar pool: the L{lbproxy.core.pool.Pool}.
    @ivar connector: opens new connections (retries, redispatch, queue).
    @ivar factory: builds their protocol.
    @ivar maxStreams: most streams at once on one connection (the server's
        own limit when lower).
    @ivar idleTimeout: seconds a connection without a stream stays open.
    """

    #: Streams of any client share connections.
    http2 = True
    reuse = True
    mode = "always"

    def __init__(self, pool, reactor) -> None:
        self.pool = pool
        self._reactor = reactor
        self.connector = BackendConnector(pool, reactor)
        self.factory = _H2ConnectionFactory(self, reactor)
        options = pool.options
        self.maxStreams = options.maxStreams
        self.idleTimeout = options.reuseIdleTimeout
        self._connections: dict = {}
        # Servers a connection is being opened to, and the Deferreds of
        # the requests waiting for it.
        self._opening: dict = {}

    def __repr__(self) -> str:
        return f"<H2BackendPool {self.pool.name}>"

    def takeIdle(self, server, client, first: bool) -> H2ServerConnection | None:
        """
        A connection to C{server} with a free stream slot, or L{None}.
        """
        for connection in self._connections.get(server, ()):
            if connection.freeSlots > 0:
                return connection
        return None

    def isOpening(self, server) -> bool:
        """
        Whether a connection to C{server} is being opened for a request.
        """
        return server in self._opening

    def startOpening(self, server) -> None:
        self._opening.setdefault(server, [])

    def waitForOpening(self, server) -> Deferred:
        """
        A L{Deferred} firing with L{None} once the connection being opened
        to C{server} is made or failed (the waiter then looks for a free
        slot, or opens a connection itself); cancelling it stops waiting.
        """
        waiters = self._opening[server]

        def cancel(waiting: Deferred) -> None:
            if waiting in waiters:
                waiters.remove(waiting)

        waiting: Deferred = Deferred(cancel)
        waiters.append(waiting)
        return waiting

    def finishOpening(self, server) -> None:
        """
        The connection being opened to C{server} is made (and registered)
        or failed: tell the requests waiting for it.
        """
        for waiting in self._opening.pop(server, ()):
            waiting.callback(None)

    def register(self, connection: H2ServerConnection) -> None:
        """
        C{connection} (newly made) may carry other requests' streams.
        """
        if connection.registered or connection.goingAway or connection.lost:
            return
        connection.registered = True
        self._connections.setdefault(connection.server, []).append(connection)

    def discard(self, connection: H2ServerConnection) -> None:
        if not connection.registered:
            return
        connection.registered = False
        connections = self._connections.get(connection.server)
        if connections and connection in connections:
            connections.remove(connection)
            if not connections:
                del self._connections[connection.server]

    def release(self, stream: UpstreamStream, client) -> bool:
        """
        A request's response was read: its stream is over (reset if the
        server left its side open); the connection stays for others.
        """
        stream.close()
        return True

    def forget(self, client) -> None:
        pass

    def connections(self) -> list[H2ServerConnection]:
        return [c for connections in self._connections.values() for c in connections]

    def idleCount(self) -> int:
        return sum(1 for connection in self.connections() if not connection.streams)

    def closeIdle(self) -> None:
        """
        The listener stops: every connection closes once its streams end.
        """
        for connection in self.connections():
            connection.goAway()


__all__ = ["H2BackendPool", "H2ServerConnection", "UpstreamStream"]
