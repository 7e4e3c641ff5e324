"""
Bounded memory in mode = "http": 1 GiB down and 1 GiB up (once with
Content-Length, once chunked) through the real C{twistd -n lbproxy
--config}, with the proxy's peak resident memory (VmHWM of
C{/proc/PID/status}) compared to its idle resident memory.

The backend is the sink (L{httpsink}), which streams and consumes bodies
without keeping them; the client is a plain socket that streams too. Each
transfer includes a one-second stall of the receiving side (the client
stops reading the download; the sink stops reading the upload), so a proxy
that buffered instead of pausing the sender would take in hundreds of
megabytes meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time

import pytest

from httpsink import BLOCK, patternDigest
from peers import startSink
from processes import memoryStatus, processes, resetPeakMemory, startLbproxy, waitUntil  # noqa: F401
from support import freePort

pytestmark = pytest.mark.integration

SIZE = 1 << 30

#: Most the proxy's peak resident memory may exceed its idle one.
HEADROOM = 100 * 1024 * 1024

CONFIG = """\
[listeners.front]
bind = "tcp:{front}:interface=127.0.0.1"
pool = "sink"
mode = "http"
access_log = "{accessLog}"

[pools.sink]
servers = [{{ name = "sink", address = "127.0.0.1:{backend}" }}]
"""


class Connection:
    """
    A keep-alive client connection on a plain socket that never holds a
    whole body.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def readHead(self) -> tuple[int, dict[bytes, bytes]]:
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            assert data, self.buffer
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def readBody(self, length: int, stallAfter: int | None = None) -> tuple[int, str]:
        """
        Read C{length} body bytes: how many came and their SHA-256; with
        C{stallAfter}, stop reading for a second once that many came.
        """
        digest = hashlib.sha256()
        received = len(self.buffer[:length])
        digest.update(self.buffer[:length])
        self.buffer = self.buffer[length:]
        view = memoryview(bytearray(1 << 20))
        stalled = stallAfter is None
        while received < length:
            if not stalled and received >= stallAfter:
                time.sleep(1.0)
                stalled = True
            count = self.sock.recv_into(view, min(len(view), length - received))
            assert count, f"connection closed after {received} bytes"
            digest.update(view[:count])
            received += count
        return received, digest.hexdigest()

    def readJSON(self) -> dict:
        status, headers = self.readHead()
        assert status == 200, (status, headers)
        length = int(headers[b"content-length"])
        while len(self.buffer) < length:
            data = self.sock.recv(65536)
            assert data
            self.buffer += data
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return json.loads(body)

    def upload(self, path: str, size: int, chunked: bool) -> None:
        """
        Send a PUT of C{size} bytes of the sink's pattern.
        """
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
        self.sock.sendall(b"PUT %s HTTP/1.1\r\nHost: big.test\r\n%s\r\n\r\n" % (path.encode(), framing))
        sent = 0
        while sent < size:
            piece = BLOCK[: size - sent]
            if chunked:
                self.sock.sendmsg([b"%x\r\n" % len(piece), piece, b"\r\n"])
            else:
                self.sock.sendall(piece)
            sent += len(piece)
        if chunked:
            self.sock.sendall(b"0\r\n\r\n")


def test_gibibyteBothWaysBoundedMemory(processes, tmp_path):
    """
    1 GiB downloaded and 1 GiB uploaded twice on one client connection
    arrive complete and intact, while the proxy's resident memory never
    grows by more than HEADROOM.
    """
    _, backend = startSink(processes, "big")
    front = freePort()
    accessLog = tmp_path / "access.log"
    lbproxy = startLbproxy(
        processes, tmp_path, CONFIG.format(front=front, accessLog=accessLog, backend=backend), front
    )
    lbproxy.logs.append(accessLog)
    pid = lbproxy.pid
    client = Connection(front)
    try:
        # Every code path runs once before the idle size is taken.
        client.sock.sendall(b"GET /bytes/100000 HTTP/1.1\r\nHost: big.test\r\n\r\n")
        status, headers = client.readHead()
        assert client.readBody(int(headers[b"content-length"]))[1] == patternDigest(100000)
        for chunked in (False, True):
            client.upload("/warm", 100000, chunked)
            assert client.readJSON()["bytes"] == 100000
        time.sleep(0.2)
        idle = memoryStatus(pid)["VmRSS"]
        if not resetPeakMemory(pid):
            idle = max(idle, memoryStatus(pid)["VmHWM"])
        expected = patternDigest(SIZE)
        timings = {}

        started = time.monotonic()
        client.sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: big.test\r\n\r\n" % SIZE)
        status, headers = client.readHead()
        assert status == 200
        assert int(headers[b"content-length"]) == SIZE
        assert client.readBody(SIZE, stallAfter=SIZE // 4) == (SIZE, expected)
        timings["download"] = time.monotonic() - started

        for chunked in (False, True):
            started = time.monotonic()
            client.upload("/pause/1000", SIZE, chunked)
            answer = client.readJSON()
            assert (answer["bytes"], answer["sha256"], answer["chunked"]) == (SIZE, expected, chunked)
            timings["upload chunked" if chunked else "upload"] = time.monotonic() - started
    finally:
        client.close()
    memory = memoryStatus(pid)
    peak = memory["VmHWM"]
    print(
        f"lbproxy idle RSS {idle >> 20} MiB, peak {peak >> 20} MiB; "
        + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items())
    )
    assert peak - idle < HEADROOM, (idle, memory)
    # The access log counts every byte: the download's head and body sent,
    # the uploads' bodies received.
    fields = re.compile(r' 200 (\d+) (\d+) ---- "127\.0\.0\.1" "(\w+ \S+) HTTP/1\.1"$')
    # The access log is flushed within a second of the last request.
    waitUntil(
        lambda: accessLog.exists() and accessLog.read_text().count("PUT /pause/1000") == 2,
        "the access log lines of the transfers",
    )
    logged = [fields.search(line).groups() for line in accessLog.read_text().splitlines()[-3:]]
    (downOut, downIn, down), (upOut, upIn, up), (chunkOut, chunkIn, chunk) = logged
    assert down == f"GET /bytes/{SIZE}" and SIZE < int(downOut) < SIZE + 1000 and downIn == "0"
    assert up == chunk == "PUT /pause/1000"
    assert int(upIn) == int(chunkIn) == SIZE
