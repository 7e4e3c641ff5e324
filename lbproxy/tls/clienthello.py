"""
Reading the server name from a TLS ClientHello without terminating TLS
(SNI passthrough).

A L{ClientHelloReader} is fed the first bytes of a connection, as they
arrive, and answers once it has a whole ClientHello: the host name of its
server_name extension (lower case), or None when it has none. What it was
fed is kept, untouched, for the proxy to send on to the server.

It reads TLS records (a ClientHello may be split over several records, and
a record over several reads), and stops with a L{ClientHelloError} saying
what is wrong as soon as it can tell: not TLS at all, an SSL 2.0 hello,
a record or message that breaks the format, or more than
L{MAX_CLIENT_HELLO} bytes of hello. The buffer is therefore bounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Longest ClientHello accepted (the handshake message body), and so the
#: most handshake bytes ever buffered: one full TLS record's worth.
MAX_CLIENT_HELLO = 16384

#: Longest TLS plaintext record.
MAX_RECORD = 16384

#: Most records a ClientHello may be split into: enough for any real
#: client, few enough that tiny records cannot inflate the buffer.
MAX_RECORDS = 8

#: Most bytes ever buffered: the hello, its records' headers and the
#: 4-byte handshake header.
MAX_BUFFER = MAX_CLIENT_HELLO + 4 + 5 * MAX_RECORDS

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_HOST_NAME = 0
_RECORD_TYPES = {20: "change_cipher_spec", 21: "alert", 23: "application_data"}
_HOST = re.compile(rb"[a-z0-9_]([a-z0-9_.-]{0,251}[a-z0-9_])?\.?")


class ClientHelloError(Exception):
    """
    The connection does not start with a usable TLS ClientHello; C{str()}
    says why in one line.
    """


class NotTLS(ClientHelloError):
    """
    The first bytes are not a TLS handshake record at all (another
    protocol, or an SSL 2.0 hello).
    """


@dataclass(frozen=True)
class ClientHello:
    """
    What lbproxy reads from a ClientHello.

    @ivar serverName: the host name of the server_name extension, lower
        case without a trailing dot; None when the client sent none.
    @ivar version: the legacy_version field (C{0x0303} for TLS 1.2 and 1.3).
    """

    serverName: str | None
    version: int


class _Cursor:
    """
    Bounds-checked reading of one handshake message body.
    """

    def __init__(self, data: bytes, what: str = "ClientHello") -> None:
        self.data = data
        self.offset = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self.data) - self.offset

    def take(self, count: int, field: str) -> bytes:
        if count > self.remaining:
            raise ClientHelloError(
                f"malformed {self.what}: {field} runs past its end "
                f"({count} bytes, {self.remaining} left)"
            )
        start = self.offset
        self.offset += count
        return self.data[start : self.offset]

    def number(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "big")

    def vector(self, lengthSize: int, field: str) -> bytes:
        return self.take(self.number(lengthSize, f"{field} length"), field)


def parseClientHello(body: bytes) -> ClientHello:
    """
    Parse the body of a ClientHello handshake message.

    @raise ClientHelloError: the body breaks the ClientHello format.
    """
    cursor = _Cursor(body)
    version = cursor.number(2, "legacy_version")
    cursor.take(32, "random")
    sessionID = cursor.vector(1, "legacy_session_id")
    if len(sessionID) > 32:
        raise ClientHelloError(f"malformed ClientHello: session id of {len(sessionID)} bytes")
    suites = cursor.vector(2, "cipher_suites")
    if not suites or len(suites) % 2:
        raise ClientHelloError(f"malformed ClientHello: cipher_suites of {len(suites)} bytes")
    if not cursor.vector(1, "compression_methods"):
        raise ClientHelloError("malformed ClientHello: no compression method")
    if not cursor.remaining:
        return ClientHello(None, version)
    extensions = _Cursor(cursor.vector(2, "extensions"), "extensions")
    if cursor.remaining:
        raise ClientHelloError(f"malformed ClientHello: {cursor.remaining} bytes after the extensions")
    serverName = None
    seen = set()
    while extensions.remaining:
        kind = extensions.number(2, "extension type")
        data = extensions.vector(2, f"extension {kind}")
        if kind in seen:
            raise ClientHelloError(f"malformed ClientHello: extension {kind} sent twice")
        seen.add(kind)
        if kind == _SERVER_NAME:
            serverName = _serverName(data)
    return ClientHello(serverName, version)


def _serverName(data: bytes) -> str | None:
    """
    The host name of a server_name extension, or None when it is empty
    (as a server's acknowledgement is; a client's should not be).
    """
    if not data:
        return None
    cursor = _Cursor(data, "server_name extension")
    names = _Cursor(cursor.vector(2, "server_name_list"), "server_name extension")
    if cursor.remaining:
        raise ClientHelloError("malformed server_name extension: bytes after the name list")
    hostName = None
    while names.remaining:
        kind = names.number(1, "name type")
        name = names.vector(2, "name")
        if kind != _HOST_NAME:
            continue
        if hostName is not None:
            raise ClientHelloError("malformed server_name extension: more than one host_name")
        hostName = name
    if hostName is None:
        return None
    lowered = hostName.lower()
    if not _HOST.fullmatch(lowered):
        shown = hostName[:64].decode("ascii", "backslashreplace")
        raise ClientHelloError(f"malformed server name '{shown}'")
    return lowered.rstrip(b".").decode("ascii")


class ClientHelloReader:
    """
    Incremental reader of the ClientHello at the start of a connection.

    @ivar received: every byte fed so far, to relay untouched once the
        hello is read (or the reader gave up).
    """

    def __init__(self, maxHello: int = MAX_CLIENT_HELLO, maxRecords: int = MAX_RECORDS) -> None:
        self._maxHello = maxHello
        self._maxRecords = maxRecords
        self._chunks: list[bytes] = []
        self._size = 0
        self._pending = b""
        self._handshake = bytearray()
        self._records = 0
        self._needed: int | None = None
        self.result: ClientHello | None = None
        self.error: ClientHelloError | None = None

    @property
    def received(self) -> bytes:
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    @property
    def size(self) -> int:
        """
        Bytes fed so far.
        """
        return self._size

    def feed(self, data: bytes) -> ClientHello | None:
        """
        Read C{data}, the next bytes of the connection.

        @return: the L{ClientHello} once complete (and on every later
            call), else None: more bytes are needed.
        @raise ClientHelloError: the connection does not start with a
            usable ClientHello (raised again by later calls).
        """
        if self.result is not None:
            self._keep(data)
            return self.result
        if self.error is not None:
            self._keep(data)
            raise self.error
        self._keep(data)
        try:
            self.result = self._read(data)
        except ClientHelloError as e:
            self.error = e
            raise
        return self.result

    def truncated(self) -> ClientHelloError:
        """
        The error for a connection that ended (or timed out) before the
        hello was complete.
        """
        if self.error is not None:
            return self.error
        if not self._size:
            return ClientHelloError("no ClientHello")
        return ClientHelloError(f"incomplete ClientHello ({self._size} bytes received)")

    def _keep(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self._size += len(data)

    def _read(self, data: bytes) -> ClientHello | None:
        pending = self._pending + data if self._pending else data
        offset = 0
        if self._records == 0 and pending:
            _checkFirstByte(pending)
        while len(pending) - offset >= 5:
            kind = pending[offset]
            major, minor = pending[offset + 1], pending[offset + 2]
            length = int.from_bytes(pending[offset + 3 : offset + 5], "big")
            if kind != _HANDSHAKE:
                name = _RECORD_TYPES.get(kind, f"type {kind}")
                raise ClientHelloError(
                    f"expected a handshake record, got {name} before the ClientHello was complete"
                )
            if major != 3 or minor > 4:
                raise NotTLS(f"not TLS: record version {major}.{minor}")
            if length == 0:
                raise ClientHelloError("malformed record: empty handshake fragment")
            if length > MAX_RECORD:
                raise ClientHelloError(
                    f"malformed record: {length} bytes, longer than TLS allows ({MAX_RECORD})"
                )
            if len(pending) - offset < 5 + length:
                break
            self._records += 1
            if self._records > self._maxRecords:
                raise ClientHelloError(f"ClientHello split over more than {self._maxRecords} records")
            self._handshake += pending[offset + 5 : offset + 5 + length]
            offset += 5 + length
            hello = self._message()
            if hello is not None:
                self._pending = b""
                return hello
        self._pending = pending[offset:]
        if self._size > MAX_BUFFER:
            raise ClientHelloError(f"no complete ClientHello in the first {MAX_BUFFER} bytes")
        return None

    def _message(self) -> ClientHello | None:
        handshake = self._handshake
        if self._needed is None:
            if len(handshake) < 4:
                return None
            if handshake[0] != _CLIENT_HELLO:
                raise ClientHelloError(f"expected a ClientHello, got handshake message type {handshake[0]}")
            length = int.from_bytes(handshake[1:4], "big")
            if length > self._maxHello:
                raise ClientHelloError(f"ClientHello of {length} bytes, longer than {self._maxHello}")
            self._needed = 4 + length
        if len(handshake) < self._needed:
            return None
        return parseClientHello(bytes(handshake[4 : self._needed]))


def _checkFirstByte(data: bytes) -> None:
    first = data[0]
    if first == _HANDSHAKE:
        return
    if first & 0x80 and (len(data) < 3 or data[2] == 1):
        # An SSL 2.0 record header: two bytes of length with the top bit
        # set, then message type 1 (CLIENT-HELLO).
        raise NotTLS("not TLS: an SSL 2.0 ClientHello")
    if first in _RECORD_TYPES:
        raise ClientHelloError(f"expected a handshake record, got {_RECORD_TYPES[first]}")
    shown = data[:8].decode("ascii", "backslashreplace")
    raise NotTLS(f"not TLS: starts with {shown!r}")


__all__ = [
    "ClientHello",
    "ClientHelloError",
    "ClientHelloReader",
    "MAX_CLIENT_HELLO",
    "NotTLS",
    "parseClientHello",
]
