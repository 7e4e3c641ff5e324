"""
One HTTP/2 client connection of an HTTP listener.

An L{lbproxy.http.front.HTTPProxyProtocol} hands its connection over to an
L{H2FrontConnection} when the client chose C{h2} by ALPN, or (with
C{cleartext = true}) began with the HTTP/2 connection preface. The h2
library frames, checks and keeps the state of the connection; each request
stream is an L{lbproxy.http2.stream.H2Stream}, placed and forwarded like an
HTTP/1.1 request.

What the h2 library does not meter is counted here (an
L{lbproxy.http2.guard.FloodMeter}): past a limit, or on a protocol error
(including the library's own limits: concurrent streams, CONTINUATION
frames, decoded header list size), the connection is closed with a GOAWAY
naming the error, each stream open on it ends (logged), and one line says
why. Other connections are not affected.

A connection closes gracefully (GOAWAY C{NO_ERROR}) once it is idle after
C{max_requests} streams, when the listener stops, after the client's own
GOAWAY, or after C{timeouts.keepalive} without a stream (C{timeouts.request}
before the first). Streams opened once it is closing are refused
(RST_STREAM C{REFUSED_STREAM}: the client may retry them elsewhere).

Backpressure: the connection is the streaming producer of the client
transport; a client that stops reading pauses every stream's server
connection. Each stream pauses its own server connection while the
client's flow-control window holds back its response.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.core.format import formatAddress, formatErrorCode
from lbproxy.http2.guard import EMPTY, PING, PRIORITY, RESET, SETTINGS, FloodMeter
from lbproxy.http2.stream import H2Stream

#: The connection's phases on its client connection's timer.
_IDLE = "h2-idle"
_BUSY = "h2-busy"
#: The connection-level window HTTP/2 starts with (RFC 9113 §6.9.2).
_DEFAULT_WINDOW = 65535


@implementer(IPushProducer)
class H2FrontConnection:
    """
    The HTTP/2 side of one client connection (see the module docstring).

    @ivar owner: the L{lbproxy.http.front.HTTPProxyProtocol} that accepted
        the connection: its session (admission, addresses, end) and timer.
    @ivar h2: the L{H2Connection}.
    @ivar streams: the open L{H2Stream}s by stream id.
    @ivar requests: streams opened so far.
    @ivar writeBlocked: the client transport does not take more now.
    """

    log = Logger()

    def __init__(self, owner, factory, reactor) -> None:
        self.owner = owner
        self.factory = factory
        self.transport = owner.transport
        self.settings = settings = factory.config.http2
        self._reactor = reactor
        self._seconds = reactor.seconds
        limits = factory.config.limits
        conn = self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: settings.maxConcurrentStreams,
                SettingCodes.INITIAL_WINDOW_SIZE: settings.initialWindowSize,
                SettingCodes.MAX_FRAME_SIZE: settings.maxFrameSize,
                SettingCodes.MAX_HEADER_LIST_SIZE: limits.headerSize,
            },
        )
        conn.max_inbound_frame_size = settings.maxFrameSize
        # What the decoder accepts in all (the HPACK bomb's defence).
        conn.decoder.max_header_list_size = limits.headerSize
        self.meter = FloodMeter(settings, self._seconds)
        self.streams: dict[int, H2Stream] = {}
        self.requests = 0
        self.writeBlocked = False
        self._closing = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<H2FrontConnection {self.owner.listener.name} streams={len(self.streams)}>"

    # -- from the client connection -----------------------------------------

    def start(self, data: bytes) -> None:
        """
        Send the server's preface, and take C{data}, what the client sent
        so far.
        """
        conn = self.h2
        conn.initiate_connection()
        extra = self.settings.connectionWindowSize - _DEFAULT_WINDOW
        if extra > 0:
            conn.increment_flow_control_window(extra)
        self.transport.registerProducer(self, True)
        self.owner.timer.enter(_IDLE, self.owner.config.requestTimeout)
        self.flush()
        if data:
            self.dataReceived(data)

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as error:
            # The library queued its GOAWAY.
            self._fail(type(error).__name__, error.error_code)
            return
        self._handle(events)
        if not self._closed:
            self.flush()

    def readConnectionLost(self) -> None:
        """
        The client sends no more: what is open may finish, nothing opens.
        """
        self._closing = True
        if not self.streams and not self._closed:
            self._goAway(ErrorCodes.NO_ERROR)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        if self._closed:
            return
        self._closed = True
        self._endStreams("client-gone")

    def listenerStopping(self) -> None:
        """
        The listener stops: no new stream, and close once idle.
        """
        self._closing = True
        if not self.streams and not self._closed:
            self._goAway(ErrorCodes.NO_ERROR)

    def phaseExpired(self, phase: str) -> None:
        if phase == _IDLE and not self._closed:
            self._goAway(ErrorCodes.NO_ERROR)

    # -- events -------------------------------------------------------------

    def _handle(self, events: list) -> None:
        meter = self.meter
        # Streams the client reset in the same read as it opened them
        # (Rapid Reset): never placed.
        reset = {event.stream_id for event in events if type(event) is StreamReset}
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                stream = self.streams.get(event.stream_id)
                if not event.data and event.stream_ended is None and meter.count(EMPTY):
                    self._calm(EMPTY)
                    return
                if stream is not None:
                    stream.bodyReceived(event.data, event.flow_controlled_length)
                elif event.flow_controlled_length:
                    self._acknowledge(event.flow_controlled_length, event.stream_id)
            elif kind is RequestReceived:
                self._request(event, event.stream_id in reset)
            elif kind is StreamEnded:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.requestEnded()
            elif kind is StreamReset:
                if meter.count(RESET):
                    self._calm(RESET)
                    return
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.clientReset()
            elif kind is WindowUpdated:
                if event.stream_id == 0:
                    self._drainAll()
                else:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None:
                        stream.drain()
            elif kind is PingReceived or kind is PingAckReceived:
                if meter.count(PING):
                    self._calm(PING)
                    return
            elif kind is RemoteSettingsChanged:
                if meter.count(SETTINGS):
                    self._calm(SETTINGS)
                    return
                if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    self._drainAll()
            elif kind is PriorityUpdated:
                if meter.count(PRIORITY):
                    self._calm(PRIORITY)
                    return
            elif kind is TrailersReceived:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.trailersReceived(event.headers)
            elif kind is ConnectionTerminated:
                # The client's GOAWAY: what is open ends, nothing opens.
                self._closing = True
                if not self.streams:
                    self._close()
                    return
            if self._closed:
                return

    def _request(self, event: RequestReceived, resetAlready: bool) -> None:
        self.requests += 1
        streamId = event.stream_id
        if resetAlready:
            return
        if self._closing or self.requests > self.settings.maxRequests or self.factory.stopping:
            self._closing = True
            self.h2.reset_stream(streamId, ErrorCodes.REFUSED_STREAM)
            return
        stream = H2Stream(self, streamId, self.requests)
        if not self.streams:
            self.owner.timer.enter(_BUSY, None)
        self.streams[streamId] = stream
        stream.start(event.headers, event.stream_ended is not None)

    def _acknowledge(self, count: int, streamId: int) -> None:
        """
        Give back the windows' share of DATA that was taken (or that went
        nowhere: its stream had ended).
        """
        try:
            self.h2.acknowledge_received_data(count, streamId)
        except ProtocolError:
            pass

    def _drainAll(self) -> None:
        for stream in list(self.streams.values()):
            stream.drain()

    # -- for the streams ----------------------------------------------------

    def flush(self) -> None:
        """
        Send what the h2 library has queued.
        """
        if self._closed:
            return
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def streamDone(self, stream: H2Stream) -> None:
        """
        C{stream} ended (its response sent, or it was reset).
        """
        if self.streams.pop(stream.streamId, None) is None or self._closed:
            return
        if not self.streams:
            if self._closing or self.requests >= self.settings.maxRequests:
                self.flush()
                self._goAway(ErrorCodes.NO_ERROR)
                return
            self.owner.timer.enter(_IDLE, self.owner.config.keepaliveTimeout)

    # -- IPushProducer: the client's reading ---------------------------------

    def pauseProducing(self) -> None:
        self.writeBlocked = True
        for stream in self.streams.values():
            stream.clientWriteBlocked()

    def resumeProducing(self) -> None:
        self.writeBlocked = False
        for stream in list(self.streams.values()):
            stream.clientWriteUnblocked()

    def stopProducing(self) -> None:
        pass

    # -- closing ------------------------------------------------------------

    def _calm(self, kind: str) -> None:
        """
        The client sent more frames of C{kind} than a window allows: what
        the h2 library queued in answer (PING and SETTINGS acknowledgments)
        is dropped, only the GOAWAY is sent.
        """
        self.h2.clear_outbound_data_buffer()
        self._goAway(ErrorCodes.ENHANCE_YOUR_CALM, f"more than {self.meter.limits[kind]} {kind} frames in {self.settings.floodWindow:g} s")

    def _fail(self, what: str, code) -> None:
        """
        The h2 library refused what the client sent (C{what}, the name of
        its error: never the offending bytes) and queued a GOAWAY with
        C{code}.
        """
        self._log(f"protocol error {what}", code)
        self.flush()
        self._close()

    def _goAway(self, code, why: str | None = None) -> None:
        if why is not None:
            self._log(why, code)
        try:
            self.h2.close_connection(error_code=code)
        except ProtocolError:
            pass
        self.flush()
        self._close()

    def _log(self, why: str, code) -> None:
        self.log.info(
            "listener {listener}: closed an HTTP/2 connection from {client}: {why} (GOAWAY {code})",
            listener=self.owner.listener.name,
            client=formatAddress(self.owner.client),
            why=why,
            code=formatErrorCode(code),
        )

    def _close(self) -> None:
        """
        End every stream and close the client connection after what is
        written.
        """
        if self._closed:
            return
        self._closed = True
        self._endStreams("closed")
        transport = self.transport
        # A TLS transport closes only once its producer is gone.
        transport.unregisterProducer()
        self.owner.closeHTTP2()

    def _endStreams(self, why: str) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.connectionEnded()
