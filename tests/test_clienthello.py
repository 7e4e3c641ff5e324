"""
The ClientHello reader of SNI passthrough (L{lbproxy.tls.clienthello}),
fed real ClientHellos captured in memory from pyOpenSSL and Python's ssl
module, and hand-built broken ones.
"""

from __future__ import annotations

import ssl
import struct

import pytest
from OpenSSL import SSL

from lbproxy.tls.clienthello import (
    MAX_BUFFER,
    MAX_CLIENT_HELLO,
    ClientHello,
    ClientHelloError,
    ClientHelloReader,
    NotTLS,
    parseClientHello,
)


def pyOpenSSLHello(serverName: bytes | None = b"www.example.test", maxVersion=None) -> bytes:
    """
    The first flight of a pyOpenSSL client: its ClientHello record(s).
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if maxVersion is not None:
        context.set_max_proto_version(maxVersion)
    connection = SSL.Connection(context, None)
    connection.set_connect_state()
    if serverName is not None:
        connection.set_tlsext_host_name(serverName)
    with pytest.raises(SSL.WantReadError):
        connection.do_handshake()
    return connection.bio_read(65536)


def pythonHello(serverName: str | None = "api.example.test") -> bytes:
    """
    The ClientHello of Python's ssl module (with ALPN, TLS 1.3 key shares).
    """
    context = ssl.create_default_context()
    context.check_hostname = serverName is not None
    if serverName is None:
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=serverName)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def handshakeMessage(data: bytes) -> bytes:
    """
    The ClientHello handshake message inside one-record C{data}.
    """
    assert data[0] == 22
    length = struct.unpack("!H", data[3:5])[0]
    return data[5 : 5 + length]


def records(message: bytes, sizes: list[int], version: bytes = b"\x03\x01") -> bytes:
    """
    C{message} framed as handshake records of the given fragment sizes
    (the last takes the rest).
    """
    out = []
    offset = 0
    for size in sizes + [len(message)]:
        piece = message[offset : offset + size]
        if not piece:
            break
        out.append(b"\x16" + version + struct.pack("!H", len(piece)) + piece)
        offset += len(piece)
    return b"".join(out)


def helloBody(extensions: bytes | None = b"", suites: bytes = b"\x13\x01", compression: bytes = b"\x00", sessionID: bytes = b"") -> bytes:
    body = b"\x03\x03" + b"r" * 32 + bytes([len(sessionID)]) + sessionID
    body += struct.pack("!H", len(suites)) + suites
    body += bytes([len(compression)]) + compression
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    return body


def extension(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def sni(*names: bytes, nameType: int = 0) -> bytes:
    entries = b"".join(bytes([nameType]) + struct.pack("!H", len(n)) + n for n in names)
    return extension(0, struct.pack("!H", len(entries)) + entries)


def wrap(body: bytes) -> bytes:
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return records(message, [])


def read(data: bytes) -> ClientHello | None:
    return ClientHelloReader().feed(data)


def readError(data: bytes) -> str:
    with pytest.raises(ClientHelloError) as raised:
        read(data)
    return str(raised.value)


# Real clients.


def test_pyOpenSSLHello():
    hello = read(pyOpenSSLHello(b"WWW.Example.Test"))
    assert hello.serverName == "www.example.test"
    assert hello.version == 0x0303


def test_pyOpenSSLTLS12Hello():
    assert read(pyOpenSSLHello(b"old.example.test", SSL.TLS1_2_VERSION)).serverName == "old.example.test"


def test_pythonHello():
    assert read(pythonHello()).serverName == "api.example.test"


def test_noServerName():
    assert read(pyOpenSSLHello(None)) == ClientHello(None, 0x0303)
    assert read(pythonHello(None)).serverName is None


def test_byteByByte():
    data = pythonHello()
    reader = ClientHelloReader()
    for index in range(len(data) - 1):
        assert reader.feed(data[index : index + 1]) is None
    assert reader.feed(data[-1:]).serverName == "api.example.test"
    assert reader.received == data
    assert reader.size == len(data)


def test_splitOverRecords():
    message = handshakeMessage(pyOpenSSLHello(b"split.example.test"))
    data = records(message, [1, 3, 40, 100])
    reader = ClientHelloReader()
    assert reader.feed(data[:7]) is None
    assert reader.feed(data[7:]).serverName == "split.example.test"
    assert reader.received == data


def test_recordsAndReadsAcross():
    message = handshakeMessage(pythonHello())
    data = records(message, [200, 50])
    reader = ClientHelloReader()
    results = [reader.feed(data[i : i + 33]) for i in range(0, len(data), 33)]
    assert results[-1].serverName == "api.example.test"
    assert all(r is None for r in results[:-1])
    assert reader.received == data


def test_bytesAfterHelloKept():
    data = pyOpenSSLHello() + b"\x17\x03\x03\x00\x05early"
    reader = ClientHelloReader()
    assert reader.feed(data).serverName == "www.example.test"
    assert reader.feed(b"more") == reader.result
    assert reader.received == data + b"more"


def test_truncated():
    data = pythonHello()
    reader = ClientHelloReader()
    assert reader.feed(data[:-1]) is None
    assert str(reader.truncated()) == f"incomplete ClientHello ({len(data) - 1} bytes received)"
    assert str(ClientHelloReader().truncated()) == "no ClientHello"


# Not TLS.


def test_httpRequest():
    with pytest.raises(NotTLS) as raised:
        read(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert str(raised.value) == "not TLS: starts with 'GET / HT'"


def test_sslv2Hello():
    with pytest.raises(NotTLS) as raised:
        read(b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10")
    assert str(raised.value) == "not TLS: an SSL 2.0 ClientHello"


def test_firstByteDecides():
    reader = ClientHelloReader()
    with pytest.raises(NotTLS):
        reader.feed(b"S")
    with pytest.raises(NotTLS):
        reader.feed(b"SH-2.0")
    assert reader.received == b"SSH-2.0"


def test_alertFirst():
    assert readError(b"\x15\x03\x03\x00\x02\x02\x28") == "expected a handshake record, got alert"


def test_badRecordVersion():
    assert readError(b"\x16\x05\x01\x00\x10" + b"x" * 16) == "not TLS: record version 5.1"


# Malformed or oversized.


def test_notClientHello():
    message = b"\x02\x00\x00\x04abcd"
    assert readError(records(message, [])) == "expected a ClientHello, got handshake message type 2"


def test_emptyFragment():
    assert readError(b"\x16\x03\x01\x00\x00") == "malformed record: empty handshake fragment"


def test_recordTooLong():
    assert readError(b"\x16\x03\x01\x40\x01") == "malformed record: 16385 bytes, longer than TLS allows (16384)"


def test_helloTooLong():
    message = b"\x01" + (MAX_CLIENT_HELLO + 1).to_bytes(3, "big") + b"x" * 100
    assert readError(records(message, [])) == "ClientHello of 16385 bytes, longer than 16384"


def test_tooManyRecords():
    message = handshakeMessage(pyOpenSSLHello())
    data = records(message, [1] * 20)
    assert readError(data) == "ClientHello split over more than 8 records"


def test_bufferBounded():
    """
    A hello that claims the largest size, then a record that never
    completes: the reader gives up within MAX_BUFFER bytes and a read.
    """
    start = b"\x01" + MAX_CLIENT_HELLO.to_bytes(3, "big") + b"x" * 16000
    reader = ClientHelloReader()
    assert reader.feed(records(start, [])) is None
    assert reader.feed(b"\x16\x03\x01\x40\x00") is None
    with pytest.raises(ClientHelloError) as raised:
        for _ in range(40):
            reader.feed(b"y" * 1000)
    assert str(raised.value) == f"no complete ClientHello in the first {MAX_BUFFER} bytes"
    assert reader.size <= MAX_BUFFER + 1000


def test_largestHelloAccepted():
    padding = extension(21, b"\x00" * (MAX_CLIENT_HELLO - 200))
    body = helloBody(sni(b"big.example.test") + padding)
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    assert len(body) <= MAX_CLIENT_HELLO
    data = records(message, [16384])
    assert read(data).serverName == "big.example.test"


def test_errorRepeats():
    reader = ClientHelloReader()
    with pytest.raises(NotTLS):
        reader.feed(b"GET /")
    with pytest.raises(NotTLS):
        reader.feed(pyOpenSSLHello())


@pytest.mark.parametrize(
    "body, expected",
    [
        (helloBody(suites=b"\x13"), "malformed ClientHello: cipher_suites of 1 bytes"),
        (helloBody(suites=b""), "malformed ClientHello: cipher_suites of 0 bytes"),
        (helloBody(compression=b""), "malformed ClientHello: no compression method"),
        (helloBody(sessionID=b"s" * 33), "malformed ClientHello: session id of 33 bytes"),
        (helloBody(b"")[:20], "malformed ClientHello: random runs past its end (32 bytes, 18 left)"),
        (helloBody(extension(0, b"\x00\x10\x00")), "malformed server_name extension: server_name_list runs past its end (16 bytes, 1 left)"),
        (helloBody(sni(b"a.test", b"b.test")), "malformed server_name extension: more than one host_name"),
        (helloBody(sni(b"bad name.test")), "malformed server name 'bad name.test'"),
        (helloBody(sni(b"caf\xc3\xa9.test")), "malformed server name 'caf\\xc3\\xa9.test'"),
        (helloBody(sni(b"a.test") + sni(b"b.test")), "malformed ClientHello: extension 0 sent twice"),
        (helloBody(b"\x00\x00\x00\x09xx"), "malformed extensions: extension 0 runs past its end (9 bytes, 2 left)"),
        (helloBody(b"") + b"x", "malformed ClientHello: 1 bytes after the extensions"),
    ],
)
def test_malformed(body, expected):
    assert readError(wrap(body)) == expected


def test_handBuilt():
    assert parseClientHello(helloBody(None)) == ClientHello(None, 0x0303)
    assert parseClientHello(helloBody(b"")).serverName is None
    assert parseClientHello(helloBody(extension(0, b""))).serverName is None
    assert parseClientHello(helloBody(sni(b"x.test", nameType=7))).serverName is None
    assert parseClientHello(helloBody(sni(b"Trailing.Example.") + extension(16, b"\x00\x03\x02h2"))).serverName == "trailing.example"
