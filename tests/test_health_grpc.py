"""
The gRPC health check driven in memory: a MemoryReactorClock records the
connection attempt and the test plays the server with h2's server side over
a StringTransport.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, DataReceived, RequestReceived
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lbproxy.config import HealthConfig, parse
from lbproxy.errors import ConfigError
from lbproxy.health.checks import HealthCheckFailed, _Probe
from lbproxy.health.kinds import buildCheck
from lbproxy.health.grpc import (
    MAX_HEADER_LIST_BYTES,
    MAX_TOTAL_BYTES,
    GRPCCheck,
    MalformedMessage,
    _GRPCHealthProtocol,
    decodeStatus,
    encodeRequest,
)
from lbproxy.interfaces import IHealthCheck

from test_health_checks import CheckTestMixin

OK = [(b":status", b"200"), (b"content-type", b"application/grpc")]


def message(payload: bytes, flags: int = 0) -> bytes:
    return bytes([flags]) + len(payload).to_bytes(4, "big") + payload


class Peer:
    """
    The server side of one HTTP/2 connection, speaking through h2.
    """

    def __init__(self, protocol, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.h2.initiate_connection()
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.events: list = []
        self.read()
        self.send()

    def read(self) -> None:
        data = self.transport.value()
        self.transport.clear()
        for event in self.h2.receive_data(data):
            self.events.append(event)
            if isinstance(event, RequestReceived):
                self.headers = dict(event.headers)
            elif isinstance(event, DataReceived):
                self.body += event.data

    def send(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.protocol.dataReceived(data)

    def respond(self, headers=OK, body: bytes = b"", trailers=((b"grpc-status", b"0"),)) -> None:
        self.h2.send_headers(1, list(headers), end_stream=trailers is None and not body)
        if body:
            self.h2.send_data(1, body, end_stream=trailers is None)
        if trailers is not None:
            self.h2.send_headers(1, list(trailers), end_stream=True)
        self.send()


class GRPCCheckTests(CheckTestMixin, SynchronousTestCase):
    def check(self, **kwargs) -> GRPCCheck:
        kwargs.setdefault("timeout", 1.0)
        return GRPCCheck(self.reactor, HealthConfig(type="grpc", **kwargs))

    def connect(self, **kwargs):
        result = self.start(self.check(**kwargs))
        protocol, transport = self.accept()
        return result, Peer(protocol, transport)

    def answer(self, payload: bytes, **kwargs) -> str:
        result, peer = self.connect()
        peer.respond(body=message(payload), **kwargs)
        return self.reason(result)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IHealthCheck, self.check()))
        self.assertIsInstance(buildCheck(self.reactor, HealthConfig(type="grpc")), GRPCCheck)

    def test_request(self) -> None:
        """
        One POST of the health method with gRPC's headers, the name of the
        service in the message, and lbproxy's header list limit announced.
        """
        _, peer = self.connect(service="demo.Echo")
        self.assertEqual(peer.headers[b":method"], b"POST")
        self.assertEqual(peer.headers[b":scheme"], b"http")
        self.assertEqual(peer.headers[b":path"], b"/grpc.health.v1.Health/Check")
        self.assertEqual(peer.headers[b":authority"], b"127.0.0.1:8080")
        self.assertEqual(peer.headers[b"content-type"], b"application/grpc")
        self.assertEqual(peer.headers[b"te"], b"trailers")
        self.assertEqual(peer.headers[b"grpc-timeout"], b"1000m")
        self.assertEqual(peer.body, message(b"\x0a\x09demo.Echo"))
        self.assertEqual(peer.h2.remote_settings.max_header_list_size, MAX_HEADER_LIST_BYTES)
        self.assertEqual(peer.h2.remote_settings.enable_push, 0)

    def test_wholeServerAndHost(self) -> None:
        """
        The empty service name (the whole server) is the empty message; a
        configured host is the :authority.
        """
        _, peer = self.connect(host="grpc.example.com")
        self.assertEqual(peer.body, message(b""))
        self.assertEqual(peer.headers[b":authority"], b"grpc.example.com")

    def test_serving(self) -> None:
        result, peer = self.connect()
        peer.respond(body=message(b"\x08\x01"))
        self.assertIsNone(self.successResultOf(result))
        self.assertTrue(peer.transport.disconnecting)
        peer.read()
        self.assertIsInstance(peer.events[-1], ConnectionTerminated)
        self.assertNoTimers()

    def test_servingStatuses(self) -> None:
        self.assertEqual(self.answer(b"\x08\x02"), "NOT_SERVING")
        self.assertEqual(self.answer(b"\x08\x03"), "SERVICE_UNKNOWN")
        self.assertEqual(self.answer(b"\x08\x00"), "UNKNOWN status")
        self.assertEqual(self.answer(b""), "UNKNOWN status")
        self.assertEqual(self.answer(b"\x08\x07"), "serving status 7")

    def test_unknownFieldsSkipped(self) -> None:
        result, peer = self.connect()
        payload = b"\x12\x02ab" + b"\x1d" + b"\x00" * 4 + b"\x21" + b"\x00" * 8 + b"\x28\x96\x01" + b"\x08\x01"
        peer.respond(body=message(payload))
        self.assertIsNone(self.successResultOf(result))

    def test_malformedMessage(self) -> None:
        self.assertEqual(self.answer(b"\x08"), "malformed response message (truncated varint)")
        self.assertEqual(self.answer(b"\x12\x05ab"), "malformed response message (truncated field)")
        self.assertEqual(self.answer(b"\x1b"), "malformed response message (unsupported wire type 3)")
        self.assertEqual(self.answer(b"\x0a\x01\x01"), "malformed response message (status with wire type 2)")
        self.assertEqual(
            self.answer(b"\x08" + b"\xff" * 11), "malformed response message (varint longer than 10 bytes)"
        )

    def test_oversizedMessage(self) -> None:
        result, peer = self.connect()
        peer.respond(body=b"\x00" + (5000).to_bytes(4, "big") + b"\x08\x01", trailers=None)
        self.assertEqual(self.reason(result), "response message of 5000 bytes (limit 4096)")
        self.assertTrue(peer.transport.disconnecting)

    def test_compressed(self) -> None:
        result, peer = self.connect()
        peer.respond(body=message(b"\x08\x01", flags=1))
        self.assertEqual(self.reason(result), "compressed response")

    def test_twoMessages(self) -> None:
        result, peer = self.connect()
        peer.respond(body=message(b"\x08\x01") * 2)
        self.assertEqual(self.reason(result), "more than one response message")

    def test_truncatedMessage(self) -> None:
        result, peer = self.connect()
        peer.respond(body=message(b"\x08\x01")[:-1])
        self.assertEqual(self.reason(result), "truncated response message")

    def test_noMessage(self) -> None:
        result, peer = self.connect()
        peer.h2.send_headers(1, OK)
        peer.h2.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
        peer.send()
        self.assertEqual(self.reason(result), "no response message")

    def test_grpcStatusInTrailers(self) -> None:
        reason = self.answer(
            b"", trailers=[(b"grpc-status", b"12"), (b"grpc-message", b"not%20here%0A%1B[31m")]
        )
        self.assertEqual(reason, "grpc-status 12 (UNIMPLEMENTED): not here\\n\\x1b[31m")

    def test_trailersOnly(self) -> None:
        """
        An early failure comes as one HEADERS frame ending the stream, with
        grpc-status among the headers; a long message is cut.
        """
        result, peer = self.connect()
        peer.respond(
            headers=OK + [(b"grpc-status", b"14"), (b"grpc-message", b"x" * 200)], trailers=None
        )
        self.assertEqual(self.reason(result), "grpc-status 14 (UNAVAILABLE): " + "x" * 80 + "...")
        self.assertTrue(peer.transport.disconnecting)
        self.assertNoTimers()

    def test_missingOrMalformedGRPCStatus(self) -> None:
        self.assertEqual(self.answer(b"\x08\x01", trailers=[(b"x-other", b"1")]), "no grpc-status in trailers")
        self.assertEqual(
            self.answer(b"\x08\x01", trailers=[(b"grpc-status", b"ok")]), "malformed grpc-status 'ok'"
        )
        self.assertTrue(
            self.answer(b"\x08\x01", trailers=[(b"grpc-status", b"9" * 5000)]).startswith("malformed grpc-status '999")
        )

    def test_streamEndedWithoutTrailers(self) -> None:
        result, peer = self.connect()
        peer.respond(body=message(b"\x08\x01"), trailers=None)
        self.assertEqual(self.reason(result), "stream ended without grpc-status")

    def test_httpStatus(self) -> None:
        result, peer = self.connect()
        peer.respond(headers=[(b":status", b"503")], trailers=None)
        self.assertEqual(self.reason(result), "HTTP status 503")

    def test_contentType(self) -> None:
        result, peer = self.connect()
        peer.respond(headers=[(b":status", b"200"), (b"content-type", b"text/html")], body=b"<html>")
        self.assertEqual(self.reason(result), "content-type 'text/html'")

    def test_streamReset(self) -> None:
        result, peer = self.connect()
        peer.h2.reset_stream(1, ErrorCodes.REFUSED_STREAM)
        peer.send()
        self.assertEqual(self.reason(result), "stream reset REFUSED_STREAM")
        self.assertTrue(peer.transport.disconnected)

    def test_goaway(self) -> None:
        result, peer = self.connect()
        peer.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
        peer.send()
        self.assertEqual(self.reason(result), "GOAWAY ENHANCE_YOUR_CALM")

    def test_gracefulGoaway(self) -> None:
        result, peer = self.connect()
        peer.h2.close_connection(ErrorCodes.NO_ERROR, last_stream_id=1)
        peer.send()
        self.assertEqual(self.reason(result), "GOAWAY NO_ERROR")

    def test_oversizedHeaders(self) -> None:
        result, peer = self.connect()
        peer.respond(headers=OK + [(b"x-big", b"y" * MAX_HEADER_LIST_BYTES)])
        self.assertTrue(self.reason(result).startswith("HTTP/2 protocol error: "))
        self.assertTrue(peer.transport.disconnected)

    def test_totalBytes(self) -> None:
        result, peer = self.connect()
        for _ in range(MAX_TOTAL_BYTES // 17 + 1):
            peer.h2.ping(b"12345678")
        peer.send()
        self.assertEqual(self.reason(result), f"more than {MAX_TOTAL_BYTES} bytes received")

    def test_notHTTP2(self) -> None:
        result = self.start(self.check())
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.assertEqual(self.reason(result), "not HTTP/2 (server answered 'HTTP/1.1 400 Bad Request')")
        self.assertTrue(transport.disconnected)

    def test_garbage(self) -> None:
        result = self.start(self.check())
        protocol, transport = self.accept()
        protocol.dataReceived(b"\x00\x00\x00\x07" + b"\x00" * 20)
        self.assertTrue(self.reason(result).startswith("HTTP/2 protocol error: "))
        self.assertTrue(transport.disconnected)

    def test_timeout(self) -> None:
        result, peer = self.connect(timeout=1.0)
        self.reactor.advance(1.0)
        self.assertEqual(self.reason(result), "timeout after 1s")
        self.assertTrue(peer.transport.disconnected)
        # Whatever arrives afterwards is ignored.
        peer.respond(body=message(b"\x08\x01"))
        peer.protocol.connectionLost(Failure(ConnectionDone()))

    def test_connectionLost(self) -> None:
        result, peer = self.connect()
        peer.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.reason(result), "connection closed before the health response")
        result, peer = self.connect()
        peer.protocol.connectionLost(Failure(ConnectionLost("reset by peer")))
        self.assertTrue(self.reason(result).startswith("connection lost before the health response: "))
        self.assertNoTimers()

    def test_connectionRefused(self) -> None:
        result = self.start(self.check())
        self.refuse()
        self.assertEqual(self.reason(result), "connection refused")


class _Connected:
    """
    An endpoint whose connection is up at once, over C{transport}.
    """

    def __init__(self, transport: StringTransport) -> None:
        self.transport = transport

    def connect(self, factory):
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(self.transport)
        return succeed(protocol)


class ALPNTests(SynchronousTestCase):
    """
    Over TLS, HTTP/2 is spoken only when the server selected it by ALPN.
    """

    def probe(self, selected: bytes | None):
        reactor = MemoryReactorClock()
        transport = StringTransport()
        transport.negotiatedProtocol = selected
        protocol = _GRPCHealthProtocol(b"grpc.example.com", True, "")
        return _Probe(reactor, _Connected(transport), protocol, 1.0).result, transport

    def test_http11Selected(self) -> None:
        result, transport = self.probe(b"http/1.1")
        reason = str(self.failureResultOf(result, HealthCheckFailed).value)
        self.assertEqual(reason, "not HTTP/2 (ALPN selected http/1.1)")
        self.assertEqual(transport.value(), b"")

    def test_nothingSelected(self) -> None:
        result, _ = self.probe(None)
        reason = str(self.failureResultOf(result, HealthCheckFailed).value)
        self.assertEqual(reason, "not HTTP/2 (ALPN selected nothing)")

    def test_h2Selected(self) -> None:
        result, transport = self.probe(b"h2")
        self.assertNoResult(result)
        self.assertTrue(transport.value().startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
        server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        server.initiate_connection()
        request = [e for e in server.receive_data(transport.value()) if isinstance(e, RequestReceived)]
        self.assertEqual(dict(request[0].headers)[b":scheme"], b"https")
        result.cancel()
        self.failureResultOf(result)
        self.assertTrue(transport.disconnected)


class MessageTests(SynchronousTestCase):
    def test_encodeLongName(self) -> None:
        """
        A name of 128 bytes or more has a two-byte length varint.
        """
        name = "s" * 200
        self.assertEqual(encodeRequest(name), message(b"\x0a\xc8\x01" + name.encode()))

    def test_decodeRejectsFieldZero(self) -> None:
        with self.assertRaises(MalformedMessage):
            decodeStatus(b"\x00\x01")


class ConfigTests(SynchronousTestCase):
    def parse(self, **health):
        data = {
            "pools": {
                "grpc": {
                    "servers": [{"name": "a", "address": "tcp:host=127.0.0.1:port=50051"}],
                    "health": health,
                }
            },
            "listeners": {"front": {"bind": "tcp:8000", "pool": "grpc"}},
        }
        return parse(data, "lb.toml")

    def health(self, **health) -> HealthConfig:
        return self.parse(**health).pools["grpc"].health

    def error(self, **health) -> str:
        with self.assertRaises(ConfigError) as raised:
            self.parse(**health)
        return str(raised.exception)

    def test_defaults(self) -> None:
        health = self.health(type="grpc")
        self.assertEqual((health.type, health.service, health.host), ("grpc", "", None))

    def test_serviceAndHost(self) -> None:
        health = self.health(type="grpc", service="demo.Echo", host="grpc.example.com")
        self.assertEqual((health.service, health.host), ("demo.Echo", "grpc.example.com"))

    def test_serviceOnlyForGRPC(self) -> None:
        message = self.error(type="http", service="demo.Echo")
        self.assertIn('pools.grpc.health.service: not used by a type = "http" check', message)
        self.assertNotIn("\n", message)

    def test_otherChecksKeysRejected(self) -> None:
        for key, value in (("path", "/health"), ("method", "GET"), ("expect_status", [200]), ("expect", "+OK")):
            message = self.error(type="grpc", **{key: value})
            self.assertIn(f'pools.grpc.health.{key}: not used by a type = "grpc" check', message)
            self.assertNotIn("\n", message)

    def test_badServiceName(self) -> None:
        self.assertIn("expected a gRPC service name", self.error(type="grpc", service="a b"))
        self.assertIn("expected a host name", self.error(type="grpc", host="a b"))
