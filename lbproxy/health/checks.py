"""
Active health checks: one probe of one server per call.

Every check connects to the server's endpoint (the same client endpoint
string the proxy uses), runs a tiny protocol and closes. Each enforces the
configured timeout itself, so a monitor can rely on the returned Deferred
firing within the timeout, and each closes its connection whatever the
outcome. A failed probe fails with L{HealthCheckFailed}, whose text is a
short reason for logs and the stats page ("status 503", "connection
refused", "timeout after 1s"). A probe that could not connect because
lbproxy itself is out of descriptors, buffers or ports (L{lbproxy.core.limits})
fails with L{HealthCheckSkipped} instead: it says nothing of the server.
"""

from __future__ import annotations

import re

from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.config import HealthConfig
from lbproxy.core.endpoints import hostHeader
from lbproxy.core.limits import describeLocalLimit, localLimit
from lbproxy.errors import TLSHandshakeFailed
from lbproxy.interfaces import IHealthCheck, IServer

#: Most bytes an HTTP check reads before it has the final status line
#: (interim 1xx responses included).
MAX_STATUS_BYTES = 8192

#: Most bytes a banner check reads looking for the end of the banner line.
MAX_BANNER_BYTES = 4096

_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([1-5][0-9]{2})(?: [^\r\n]*)?")


class HealthCheckFailed(Exception):
    """
    A probe found the server unhealthy; C{str()} is the short reason.
    """


class HealthCheckSkipped(Exception):
    """
    A probe could not be made for a limit of lbproxy's own (out of file
    descriptors...): neither a success nor a failure of the server.
    C{str()} names the limit.

    @ivar errno: the limit's error number (C{errno.EMFILE}...).
    """

    def __init__(self, message: str, errno: int) -> None:
        super().__init__(message)
        self.errno = errno


def _short(value: object, limit: int = 80) -> str:
    text = str(value).splitlines()[0] if str(value) else ""
    return text[:limit] or value.__class__.__name__


def _snippet(data: bytes, limit: int = 40) -> str:
    """
    The start of what a server sent, quoted for a failure reason.
    """
    return repr(data[:limit])[1:] + ("..." if len(data) > limit else "")


def connectFailureReason(reason: Failure) -> str:
    """
    A short reason for a failed connection attempt.
    """
    e = reason.value
    if isinstance(e, TLSHandshakeFailed):
        return str(e)
    if isinstance(e, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, error.TimeoutError):
        return "connect timeout"
    if isinstance(e, error.DNSLookupError):
        return "DNS lookup failed"
    if isinstance(e, error.NoRouteError):
        return "no route to host"
    return f"connect failed: {_short(e)}"


def _asciiHost(host: str) -> bytes:
    try:
        return host.encode("ascii")
    except UnicodeEncodeError:
        return host.encode("idna")


class _ProbeProtocol(Protocol):
    """
    The protocol side of one probe: reports its verdict to C{probe}.

    @ivar probe: the L{_Probe} this connection belongs to.
    """

    probe: _Probe

    def connectionMade(self) -> None:
        self.probe.connected(self.transport)
        self.probeStarted()

    def probeStarted(self) -> None:
        """
        The connection is up; start talking.
        """

    def closedReason(self, reason: Failure) -> str:
        """
        Why the probe failed when the server closed the connection first.
        """
        if reason.check(error.ConnectionDone):
            return "connection closed by server"
        return f"connection lost: {_short(reason.value)}"

    def connectionLost(self, reason: Failure) -> None:
        self.probe.lost(self.closedReason(reason))


class _OneProtocolFactory(Factory):
    """
    Hands out the single protocol instance of one probe, quietly (a factory
    per probe would otherwise log start and stop every few seconds).
    """

    noisy = False

    def __init__(self, protocol: _ProbeProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr) -> _ProbeProtocol:
        return self._protocol


class _Probe:
    """
    One running check of one server: the connection attempt, the timeout
    and the outcome, which is decided once.

    @ivar result: fires with L{None} when healthy, fails with
        L{HealthCheckFailed} otherwise; cancelling it aborts the probe.
    """

    def __init__(self, reactor, endpoint, protocol: _ProbeProtocol, timeout: float) -> None:
        self.result: Deferred[None] = Deferred(self._cancel)
        self.finished = False
        self._timeout = timeout
        self._transport = None
        protocol.probe = self
        self._timer = reactor.callLater(timeout, self._timedOut)
        try:
            self._connecting = endpoint.connect(_OneProtocolFactory(protocol))
        except Exception as e:
            self._connecting = fail(e)
        self._connecting.addErrback(self._connectFailed)

    def connected(self, transport) -> None:
        self._transport = transport

    def succeed(self) -> None:
        """
        The server is healthy; close the connection politely.
        """
        self._finish(None, graceful=True)

    def fail(self, reason: str, graceful: bool = False) -> None:
        """
        The server is unhealthy because of C{reason}.

        @param graceful: close with a normal shutdown (the server spoke its
            protocol properly) rather than an abort.
        """
        self._finish(reason, graceful)

    def lost(self, reason: str) -> None:
        """
        The connection closed before the protocol reached a verdict.
        """
        self._transport = None
        self._finish(reason, graceful=False)

    def _connectFailed(self, reason: Failure) -> None:
        if self.finished:
            return
        number = localLimit(reason)
        if number is not None:
            self._finish(HealthCheckSkipped(describeLocalLimit(number), number), graceful=False)
        else:
            self._finish(connectFailureReason(reason), graceful=False)

    def _timedOut(self) -> None:
        prefix = "" if self._transport is not None else "connect "
        self._finish(f"{prefix}timeout after {self._timeout:g}s", graceful=False)

    def _cancel(self, result: Deferred) -> None:
        if not self.finished:
            self.finished = True
            self._cleanUp(graceful=False)

    def _cleanUp(self, graceful: bool) -> None:
        if self._timer.active():
            self._timer.cancel()
        transport, self._transport = self._transport, None
        if transport is not None:
            if graceful:
                transport.loseConnection()
            else:
                transport.abortConnection()
        elif not self._connecting.called:
            self._connecting.cancel()

    def _finish(self, reason: str | HealthCheckSkipped | None, graceful: bool) -> None:
        if self.finished:
            return
        self.finished = True
        self._cleanUp(graceful)
        if reason is None:
            self.result.callback(None)
        elif isinstance(reason, HealthCheckSkipped):
            self.result.errback(reason)
        else:
            self.result.errback(HealthCheckFailed(reason))


class _ConnectingCheck:
    """
    What every check shares: connect to the server within the timeout and
    run one probe protocol, which subclasses make in C{buildProtocol(server)}.
    """

    #: The protocols a probe over TLS offers by ALPN (none: the server's
    #: default, as a plain connection of the pool would get).
    alpn: tuple[bytes, ...] = ()

    def __init__(self, reactor, config: HealthConfig, tls=None) -> None:
        """
        @param tls: the L{lbproxy.tls.client.BackendTLS} to check over;
            by default, when C{config.tls} is set, that of the server's
            pool (unless the pool upgrades with STARTTLS).
        """
        self._reactor = reactor
        self.config = config
        self.tls = tls

    def tlsFor(self, server: IServer):
        """
        The L{lbproxy.tls.client.BackendTLS} a probe of C{server} starts
        TLS with, or None for plaintext.
        """
        if self.tls is not None:
            return self.tls
        if not self.config.tls:
            return None
        tls = getattr(getattr(server, "pool", None), "tls", None)
        if tls is None or tls.config.starttls:
            return None
        return tls

    def check(self, server: IServer) -> Deferred[None]:
        try:
            endpoint = clientFromString(self._reactor, server.address)
            tls = self.tlsFor(server)
            if tls is not None:
                # The probe's protocol starts once the handshake succeeded;
                # a failed one fails the probe with its reason.
                endpoint = tls.wrapEndpoint(endpoint, server, self._reactor, self.alpn)
        except Exception as e:
            return fail(HealthCheckFailed(f"bad address: {_short(e)}"))
        probe = _Probe(
            self._reactor, endpoint, self.buildProtocol(server), self.config.timeout
        )
        return probe.result


class _ConnectProtocol(_ProbeProtocol):
    def probeStarted(self) -> None:
        self.probe.succeed()


@implementer(IHealthCheck)
class TCPCheck(_ConnectingCheck):
    """
    Healthy when a connection to the server's endpoint can be established
    within the timeout: with the pool's TLS (C{health.tls}), a connection
    whose handshake succeeded, certificate verified. Over a C{tls:}/C{ssl:}
    endpoint string it is the TCP connection; that handshake is not waited
    for.
    """

    def buildProtocol(self, server: IServer) -> _ProbeProtocol:
        return _ConnectProtocol()


class _StatusLineProtocol(_ProbeProtocol):
    """
    Sends one request and judges the final status line of the response,
    skipping interim (1xx) responses.
    """

    def __init__(self, request: bytes, expectStatus) -> None:
        self._request = request
        self._expectStatus = expectStatus
        self._buffer = b""
        self._read = 0
        self._interim = False

    def probeStarted(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        if self.probe.finished:
            return
        self._buffer += data
        while not self.probe.finished:
            line, newline, rest = self._buffer.partition(b"\n")
            if self._read + len(line) > MAX_STATUS_BYTES:
                self.probe.fail(f"no status line in the first {MAX_STATUS_BYTES} bytes")
                return
            if not newline:
                return
            self._read += len(line) + 1
            self._buffer = rest
            self._lineReceived(line.removesuffix(b"\r"))

    def _lineReceived(self, line: bytes) -> None:
        if self._interim:
            self._interim = bool(line)
            return
        match = _STATUS_LINE.fullmatch(line)
        if match is None:
            self.probe.fail(f"malformed status line {_snippet(line)}")
            return
        status = int(match.group(1))
        if 100 <= status < 200 and status != 101:
            self._interim = True
        elif any(low <= status <= high for low, high in self._expectStatus):
            self.probe.succeed()
        else:
            self.probe.fail(f"status {status}", graceful=True)

    def closedReason(self, reason: Failure) -> str:
        if reason.check(error.ConnectionDone):
            return "connection closed before status line"
        return f"connection lost before status line: {_short(reason.value)}"


@implementer(IHealthCheck)
class HTTPCheck(_ConnectingCheck):
    """
    Healthy when C{METHOD PATH} answers with a status in one of the
    configured C{expectStatus} ranges. Only the status line is read.
    """

    def __init__(self, reactor, config: HealthConfig, tls=None) -> None:
        super().__init__(reactor, config, tls)
        if config.host is not None and not re.fullmatch(r"[!-~]+", config.host):
            raise ValueError(f"health check host {config.host!r} is not a valid Host header")

    def request(self, server: IServer) -> bytes:
        """
        The request sent to C{server}.
        """
        host = self.config.host or hostHeader(server.address, self.tlsFor(server))
        return b"".join(
            [
                f"{self.config.method} {self.config.path} HTTP/1.1\r\n".encode("ascii"),
                b"Host: ",
                _asciiHost(host),
                b"\r\nConnection: close\r\nUser-Agent: lbproxy-health\r\n\r\n",
            ]
        )

    def buildProtocol(self, server: IServer) -> _ProbeProtocol:
        return _StatusLineProtocol(self.request(server), self.config.expectStatus)


class _BannerProtocol(_ProbeProtocol):
    """
    Reads the greeting line, compares its start, then says goodbye.
    """

    def __init__(self, expect: bytes, send: bytes) -> None:
        self._expect = expect
        self._send = send
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        if self.probe.finished:
            return
        self._buffer += data
        line, newline, _ = self._buffer.partition(b"\n")
        if newline:
            self._judge(line.removesuffix(b"\r"))
        elif not (
            line.startswith(self._expect) or self._expect.startswith(line)
        ):
            self.probe.fail(f"unexpected banner {_snippet(line)}")
        elif len(line) > MAX_BANNER_BYTES:
            self.probe.fail(f"banner longer than {MAX_BANNER_BYTES} bytes")

    def _judge(self, line: bytes) -> None:
        if len(line) > MAX_BANNER_BYTES:
            self.probe.fail(f"banner longer than {MAX_BANNER_BYTES} bytes")
        elif not line.startswith(self._expect):
            self.probe.fail(f"unexpected banner {_snippet(line)}")
        else:
            if self._send:
                self.transport.write(self._send)
            self.probe.succeed()

    def closedReason(self, reason: Failure) -> str:
        if reason.check(error.ConnectionDone):
            return "connection closed before banner"
        return f"connection lost before banner: {_short(reason.value)}"


@implementer(IHealthCheck)
class BannerCheck(_ConnectingCheck):
    """
    Healthy when the server's first line starts with C{expect} (C{* OK} for
    IMAP, C{+OK} for POP3); C{send} (a logout command) is then written
    before closing, so the server logs a clean session.
    """

    def buildProtocol(self, server: IServer) -> _ProbeProtocol:
        return _BannerProtocol(self.config.expect, self.config.send)
