"""
The gRPC health check: one C{grpc.health.v1.Health/Check} call over HTTP/2.

gRPC servers report their health through the standard health service
(U{https://github.com/grpc/grpc/blob/master/doc/health-checking.md}); a
plain TCP or HTTP/1.1 probe says nothing about whether the server is
SERVING. This check speaks HTTP/2 with the C{h2} library (prior-knowledge
h2c in the clear, ALPN C{h2} over the pool's TLS), sends one
C{HealthCheckRequest{service}} and is healthy only on C{:status} 200, a gRPC
content-type, one C{HealthCheckResponse{status = SERVING}} message and
C{grpc-status: 0}. The two protobuf messages have one field each, so they
are encoded and decoded here by hand rather than with a protobuf dependency.

Everything a server sends is bounded (header list, message size, total
bytes), the probe's timeout applies as for every check, and the connection
is always closed.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from twisted.internet import error
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.config import HealthConfig
from lbproxy.core.endpoints import hostHeader
from lbproxy.core.format import formatErrorCode
from lbproxy.interfaces import IHealthCheck, IServer

from .checks import _asciiHost, _ConnectingCheck, _ProbeProtocol, _short

#: The method of the standard health service.
HEALTH_PATH = b"/grpc.health.v1.Health/Check"

#: Largest response message accepted: a HealthCheckResponse is 2 bytes.
MAX_MESSAGE_BYTES = 4096

#: Largest header (and trailer) list accepted, advertised in SETTINGS.
MAX_HEADER_LIST_BYTES = 8192

#: Most bytes read from the server over the whole probe.
MAX_TOTAL_BYTES = 65536

#: HealthCheckResponse.ServingStatus values.
SERVING_STATUS = {0: "UNKNOWN status", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}

#: gRPC status code names, for failure reasons.
GRPC_CODES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND", 6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL",
    14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class MalformedMessage(ValueError):
    """
    A protobuf message that does not decode; C{str()} says why.
    """


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _readVarint(data: bytes, offset: int) -> tuple[int, int]:
    """
    The varint at C{offset} and the offset after it.
    """
    value = 0
    for shift in range(0, 70, 7):
        if offset >= len(data):
            raise MalformedMessage("truncated varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
    raise MalformedMessage("varint longer than 10 bytes")


def encodeRequest(service: str) -> bytes:
    """
    A gRPC length-prefixed C{HealthCheckRequest{service}}: field 1, wire
    type 2; an empty name (the whole server) is the empty message.
    """
    name = service.encode("utf-8")
    message = b"\x0a" + _varint(len(name)) + name if name else b""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def decodeStatus(message: bytes) -> int:
    """
    The C{status} (field 1) of a C{HealthCheckResponse}, 0 (UNKNOWN) when
    absent as proto3 says; unknown fields are skipped.

    @raise MalformedMessage: when the message does not decode.
    """
    status = 0
    offset = 0
    while offset < len(message):
        key, offset = _readVarint(message, offset)
        field, wireType = key >> 3, key & 7
        if field == 0:
            raise MalformedMessage("field number 0")
        if wireType == 0:
            value, offset = _readVarint(message, offset)
            if field == 1:
                status = value
                continue
        elif field == 1:
            raise MalformedMessage(f"status with wire type {wireType}")
        elif wireType == 1:
            offset += 8
        elif wireType == 5:
            offset += 4
        elif wireType == 2:
            length, offset = _readVarint(message, offset)
            offset += length
        else:
            raise MalformedMessage(f"unsupported wire type {wireType}")
        if offset > len(message):
            raise MalformedMessage("truncated field")
    return status


def _grpcMessage(value: bytes, limit: int = 80) -> str:
    """
    A C{grpc-message} (percent-encoded UTF-8) fit for a log line.
    """
    text = unquote_to_bytes(value).decode("utf-8", "replace")
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    return text[:limit] + ("..." if len(text) > limit else "")


class _GRPCHealthProtocol(_ProbeProtocol):
    """
    One HTTP/2 connection carrying one health-check call.
    """

    def __init__(self, authority: bytes, secure: bool, service: str, timeout: float = 0.0) -> None:
        """
        @param timeout: the probe's timeout, sent as C{grpc-timeout} so the
            server gives up when lbproxy does (0: not sent).
        """
        self._authority = authority
        self._timeout = timeout
        self._secure = secure
        self._service = service
        self._h2 = H2Connection(
            H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=True)
        )
        self._stream = 0
        self._received = 0
        self._body = b""
        self._message: bytes | None = None

    def probeStarted(self) -> None:
        if self._secure:
            selected = getattr(self.transport, "negotiatedProtocol", None)
            if selected != b"h2":
                name = selected.decode("ascii", "replace") if selected else "nothing"
                self.probe.fail(f"not HTTP/2 (ALPN selected {name})")
                return
        h2 = self._h2
        h2.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_BYTES,
                SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # Advertised in the first SETTINGS, and enforced from the first
        # response on (h2 would only follow the setting once acknowledged).
        h2.decoder.max_header_list_size = MAX_HEADER_LIST_BYTES
        h2.initiate_connection()
        self._stream = h2.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https" if self._secure else b"http"),
            (b":path", HEALTH_PATH),
            (b":authority", self._authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", b"lbproxy-health"),
        ]
        if self._timeout > 0:
            headers.append((b"grpc-timeout", b"%dm" % max(1, round(self._timeout * 1000))))
        h2.send_headers(self._stream, headers)
        h2.send_data(self._stream, encodeRequest(self._service), end_stream=True)
        self._flush()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        if self.probe.finished:
            return
        if not self._received and data.startswith(b"HTTP/1."):
            # An HTTP/1.1 server's answer to the HTTP/2 preface (h2 would
            # only wait for a SETTINGS frame that never comes).
            self.probe.fail(f"not HTTP/2 (server answered {_short(data.decode('latin-1'), 40)!r})")
            return
        self._received += len(data)
        if self._received > MAX_TOTAL_BYTES:
            self.probe.fail(f"more than {MAX_TOTAL_BYTES} bytes received")
            return
        try:
            events = self._h2.receive_data(data)
        except ProtocolError as e:
            self.probe.fail(f"HTTP/2 protocol error: {_short(e)}")
            return
        for event in events:
            if self.probe.finished:
                return
            self._event(event)
        if not self.probe.finished:
            self._flush()

    def _event(self, event) -> None:
        if isinstance(event, ConnectionTerminated):
            # Even a graceful one (NO_ERROR): h2 closes the connection on
            # GOAWAY and would reject the answer that may still follow.
            self.probe.fail(f"GOAWAY {formatErrorCode(event.error_code)}")
        elif getattr(event, "stream_id", self._stream) != self._stream:
            return
        elif isinstance(event, StreamReset):
            self.probe.fail(f"stream reset {formatErrorCode(event.error_code)}")
        elif isinstance(event, ResponseReceived):
            self._response(dict(event.headers), event.stream_ended is not None)
        elif isinstance(event, DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length, self._stream)
            self._data(event.data)
        elif isinstance(event, TrailersReceived):
            self._trailers(dict(event.headers))
        elif isinstance(event, StreamEnded):
            self.probe.fail("stream ended without grpc-status", graceful=True)

    def _response(self, headers: dict[bytes, bytes], ended: bool) -> None:
        status = headers.get(b":status", b"")
        if status != b"200":
            self.probe.fail(f"HTTP status {status.decode('ascii', 'replace')}", graceful=True)
            return
        if b"grpc-status" in headers or ended:
            # Trailers-Only: the call failed before any message.
            self._trailers(headers)
            return
        contentType = headers.get(b"content-type", b"")
        if not contentType.startswith(b"application/grpc"):
            self.probe.fail(f"content-type {_short(contentType.decode('latin-1'), 40)!r}", graceful=True)

    def _data(self, data: bytes) -> None:
        if self._message is not None:
            self.probe.fail("more than one response message", graceful=True)
            return
        self._body += data
        if len(self._body) < 5:
            return
        if self._body[0] & 1:
            self.probe.fail("compressed response", graceful=True)
            return
        length = int.from_bytes(self._body[1:5], "big")
        if length > MAX_MESSAGE_BYTES:
            self.probe.fail(f"response message of {length} bytes (limit {MAX_MESSAGE_BYTES})", graceful=True)
            return
        if len(self._body) > 5 + length:
            self.probe.fail("more than one response message", graceful=True)
        elif len(self._body) == 5 + length:
            self._message, self._body = self._body[5:], b""

    def _trailers(self, trailers: dict[bytes, bytes]) -> None:
        raw = trailers.get(b"grpc-status")
        if raw is None:
            self.probe.fail("no grpc-status in trailers", graceful=True)
            return
        if not raw.isdigit() or len(raw) > 9:
            self.probe.fail(f"malformed grpc-status {_short(raw.decode('latin-1'), 20)!r}", graceful=True)
            return
        code = int(raw)
        if code != 0:
            reason = f"grpc-status {code} ({GRPC_CODES.get(code, 'unknown code')})"
            message = trailers.get(b"grpc-message")
            if message:
                reason += f": {_grpcMessage(message)}"
            self.probe.fail(reason, graceful=True)
            return
        if self._body:
            self.probe.fail("truncated response message", graceful=True)
            return
        if self._message is None:
            self.probe.fail("no response message", graceful=True)
            return
        try:
            status = decodeStatus(self._message)
        except MalformedMessage as e:
            self.probe.fail(f"malformed response message ({e})", graceful=True)
            return
        if status == 1:
            self._goodbye()
            self.probe.succeed()
        else:
            self.probe.fail(SERVING_STATUS.get(status, f"serving status {status}"), graceful=True)

    def _goodbye(self) -> None:
        self._h2.close_connection()
        self._flush()

    def closedReason(self, reason: Failure) -> str:
        if reason.check(error.ConnectionDone):
            return "connection closed before the health response"
        return f"connection lost before the health response: {_short(reason.value)}"


@implementer(IHealthCheck)
class GRPCCheck(_ConnectingCheck):
    """
    Healthy when the server's gRPC health service answers SERVING for
    C{config.service} (C{""}: the server as a whole).
    """

    # h2 first; http/1.1 after it so that an HTTP/1.1-only server selects it
    # and the probe can say so, rather than failing the handshake with a bare
    # "no application protocol" alert.
    alpn = (b"h2", b"http/1.1")

    def __init__(self, reactor, config: HealthConfig, tls=None) -> None:
        super().__init__(reactor, config, tls)
        if config.host is not None and not re.fullmatch(r"[!-~]+", config.host):
            raise ValueError(f"health check host {config.host!r} is not a valid :authority")

    def buildProtocol(self, server: IServer) -> _ProbeProtocol:
        tls = self.tlsFor(server)
        authority = self.config.host or hostHeader(server.address, tls)
        return _GRPCHealthProtocol(
            _asciiHost(authority), tls is not None, self.config.service, self.config.timeout
        )
