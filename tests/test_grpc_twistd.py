"""
gRPC through the real daemon (C{twistd -n lbproxy}): a grpcio server
behind a pool with C{protocol = "h2"} (cleartext, and TLS with ALPN h2),
a grpcio client on an HTTP/2 listener (h2c prior knowledge). Unary,
server streaming, bidirectional streaming, an error status with its
message, and large streamed messages, with the service defined in code
(bytes in, bytes out: no generated stubs); and an HTTP/1.1 client's
gRPC-framed request carried to the same server.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from concurrent import futures

import pytest

from certs import CertificateAuthority
from processes import processes, startLbproxy, waitUntil  # noqa: F401 (fixture)
from support import freePort, missing

pytestmark = pytest.mark.integration

SERVICE = "lbproxy.test.Echo"
#: Bytes of each message of the large stream, and their count.
LARGE = 1024 * 1024
LARGE_COUNT = 6

CONFIG = """\
[listeners.plain]
bind = "tcp:{plainPort}:interface=127.0.0.1"
pool = "grpc"
mode = "http"
access_log = "{accessLog}"

[listeners.plain.http2]
enabled = true
cleartext = true

[[listeners.plain.routes]]
path_prefix = "/{service}.Secure/"
pool = "grpctls"

[pools.grpc]
protocol = "h2"
servers = [{{ name = "g1", address = "tcp:host=127.0.0.1:port={backend}" }}]

[pools.grpctls]
protocol = "h2"
max_streams = 4
servers = [{{ name = "t1", address = "tcp:host=127.0.0.1:port={tlsBackend}" }}]

[pools.grpctls.tls]
ca = "{ca}"
server_name = "grpc.example.test"
"""


def grpcModule():
    try:
        import grpc
    except ImportError:
        missing("grpcio is not installed")
    return grpc


def startServer(grpc, credentials=None):
    """
    A grpcio server on 127.0.0.1, port chosen by the system, serving
    C{SERVICE} (and C{SERVICE}.Secure with the same methods).
    """

    def unary(request, context):
        if request == b"fail":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")
        metadata = dict(context.invocation_metadata())
        return b"echo:" + request + b":" + metadata.get("x-forwarded-for", "-").encode()

    def serverStream(request, context):
        count = int(request)
        for index in range(count):
            yield b"%d" % (index,) + b"." * LARGE if count == LARGE_COUNT else b"item-%d" % (index,)

    def bidi(requests, context):
        for request in requests:
            yield b"re:" + request

    def digest(requests, context):
        hashed = hashlib.sha256()
        for request in requests:
            hashed.update(request)
        return hashed.hexdigest().encode()

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(serverStream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Digest": grpc.stream_unary_rpc_method_handler(digest),
    }
    options = [("grpc.max_receive_message_length", 8 * LARGE), ("grpc.max_send_message_length", 8 * LARGE)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(SERVICE, handlers),
            grpc.method_handlers_generic_handler(SERVICE + ".Secure", handlers),
        )
    )
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


@pytest.fixture
def daemon(processes, tmp_path):
    grpc = grpcModule()
    ca = CertificateAuthority(tmp_path / "ca")
    issued = ca.issue("grpc.example.test")
    plain, backend = startServer(grpc)
    credentials = grpc.ssl_server_credentials([(issued.key.read_bytes(), issued.chain.read_bytes())])
    secure, tlsBackend = startServer(grpc, credentials)
    plainPort = freePort()
    accessLog = tmp_path / "access.log"
    config = CONFIG.format(
        plainPort=plainPort,
        backend=backend,
        tlsBackend=tlsBackend,
        ca=ca.cert,
        accessLog=accessLog,
        service=SERVICE,
    )
    process = startLbproxy(processes, tmp_path, config, plainPort)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{plainPort}",
        options=[
            ("grpc.enable_http_proxy", 0),
            ("grpc.max_receive_message_length", 8 * LARGE),
            ("grpc.max_send_message_length", 8 * LARGE),
        ],
    )
    yield grpc, channel, process, accessLog, plainPort
    channel.close()
    plain.stop(None)
    secure.stop(None)


def method(channel, kind: str, name: str, service: str = SERVICE):
    return getattr(channel, kind)(f"/{service}/{name}")


@pytest.mark.parametrize("service", [SERVICE, SERVICE + ".Secure"], ids=["h2c", "tls"])
def test_unaryAndErrorStatus(daemon, service):
    """
    A unary call reaches the server with the forwarding fields and its
    answer comes back; a non-zero grpc-status and its message pass
    through, over cleartext and TLS pools.
    """
    grpc, channel, _, accessLog, _ = daemon
    unary = method(channel, "unary_unary", "Unary", service)
    assert unary(b"hello", timeout=10) == b"echo:hello:127.0.0.1"
    with pytest.raises(grpc.RpcError) as raised:
        unary(b"fail", timeout=10)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert raised.value.details() == "not for you"
    line = f"POST /{service}/Unary HTTP/2.0"
    waitUntil(lambda: line in accessLog.read_text(), "the access log line")


def test_serverStreaming(daemon):
    grpc, channel, _, _, _ = daemon
    stream = method(channel, "unary_stream", "ServerStream")
    assert list(stream(b"5", timeout=10)) == [b"item-%d" % (i,) for i in range(5)]


def test_bidiStreaming(daemon):
    """
    Each request's answer comes before the next request is sent: the
    response streams while the request is still open.
    """
    grpc, channel, _, _, _ = daemon
    bidi = method(channel, "stream_stream", "Bidi")
    outgoing: list[bytes] = []
    ready = threading.Semaphore(0)

    def requests():
        for index in range(5):
            ready.acquire(timeout=10)
            outgoing.append(b"m%d" % (index,))
            yield outgoing[-1]

    ready.release()
    answers = []
    for answer in bidi(requests(), timeout=20):
        answers.append(answer)
        ready.release()
    assert answers == [b"re:m%d" % (i,) for i in range(5)]


def test_largeStreams(daemon):
    """
    Megabytes both ways, as streams of large messages: flow control
    carries them whole.
    """
    grpc, channel, _, _, _ = daemon
    stream = method(channel, "unary_stream", "ServerStream")
    received = list(stream(b"%d" % (LARGE_COUNT,), timeout=30))
    assert len(received) == LARGE_COUNT
    assert all(len(item) == LARGE + 1 for item in received)
    digest = method(channel, "stream_unary", "Digest")
    chunks = [bytes([index]) * LARGE for index in range(LARGE_COUNT)]
    assert digest(iter(chunks), timeout=30) == hashlib.sha256(b"".join(chunks)).hexdigest().encode()


def test_manyConcurrentCalls(daemon):
    """
    Calls at once from one client connection share the server
    connections (at most max_streams streams each on the TLS pool).
    """
    grpc, channel, _, _, _ = daemon
    unary = method(channel, "unary_unary", "Unary", SERVICE + ".Secure")
    calls = [unary.future(b"c%d" % (i,), timeout=20) for i in range(20)]
    assert [call.result() for call in calls] == [b"echo:c%d:127.0.0.1" % (i,) for i in range(20)]


def test_http11ClientToGrpcServer(daemon):
    """
    An HTTP/1.1 client's gRPC-framed POST reaches the grpcio server as an
    HTTP/2 stream; the response comes back chunked, grpc-status in its
    chunked trailers.
    """
    grpc, channel, process, accessLog, port = daemon
    message = b"hi"
    frame = b"\x00" + len(message).to_bytes(4, "big") + message
    request = (
        f"POST /{SERVICE}/Unary HTTP/1.1\r\nHost: grpc.example.test\r\n"
        "Content-Type: application/grpc\r\nTE: trailers\r\n"
        f"Content-Length: {len(frame)}\r\n\r\n"
    ).encode() + frame
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while not data.endswith(b"\r\n\r\n") or b"grpc-status" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"echo:hi:127.0.0.1" in body
    assert b"grpc-status: 0" in body
