"""
A bounded IMAP load generator for bench/run_mail.py, run as its own
process (so its CPU is not the harness's): asyncio and the standard
library only.

    python bench/imap_load.py sessions --port P --users 'user%d' --user-count 20 \\
        --password W --duration 5 --concurrency 16
    python bench/imap_load.py fetch --port P --users 'user%d' --user-count 20 \\
        --password W --duration 5 --concurrency 2 --message 4 --size BYTES

C{sessions}: each worker loops over whole sessions on new connections,
greeting, LOGIN, SELECT INBOX, LOGOUT; one session is one "request".
C{fetch}: each worker logs in once, selects INBOX and fetches message
C{--message} (C{BODY.PEEK[]}) over and over, checking its size; one FETCH
is one "request" and its literal's bytes are counted.

Every run stops at C{--duration} seconds or C{--max-requests} requests,
whichever comes first; every read has a timeout. The result is one JSON
object on stdout: requests, bytes, seconds, latency percentiles, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time

_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")

#: Seconds any one read may take.
READ_TIMEOUT = 10.0


class IMAPError(Exception):
    """
    The server answered a command with something other than OK.
    """


async def readLine(reader: asyncio.StreamReader) -> bytes:
    line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
    if not line:
        raise ConnectionError("connection closed by the server")
    return line


async def command(reader, writer, tag: bytes, text: bytes) -> int:
    """
    Send C{tag text} and read the answer up to its tagged line, reading
    literals whole; the number of literal bytes read.
    """
    writer.write(tag + b" " + text + b"\r\n")
    literalBytes = 0
    while True:
        line = await readLine(reader)
        match = _LITERAL.search(line)
        if match is not None:
            size = int(match.group(1))
            await asyncio.wait_for(reader.readexactly(size), READ_TIMEOUT)
            literalBytes += size
            continue
        if line.startswith(tag + b" "):
            if not line[len(tag) + 1 :].startswith(b"OK"):
                raise IMAPError(line.decode("ascii", "replace").strip())
            return literalBytes


async def connect(port: int):
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, limit=1 << 20), READ_TIMEOUT
    )
    greeting = await readLine(reader)
    if not greeting.startswith(b"* OK"):
        raise IMAPError(greeting.decode("ascii", "replace").strip())
    return reader, writer


async def close(writer) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


class Run:
    """
    Shared counters and limits of one load run.
    """

    def __init__(self, args) -> None:
        self.args = args
        self.deadline = time.monotonic() + args.duration
        self.requests = 0
        self.bytes = 0
        self.errors = 0
        self.firstError = ""
        self.latencies: list[float] = []

    def more(self) -> bool:
        return time.monotonic() < self.deadline and self.requests < self.args.max_requests

    def failed(self, error: Exception) -> None:
        self.errors += 1
        if not self.firstError:
            self.firstError = f"{type(error).__name__}: {error}"

    def user(self, number: int) -> bytes:
        users = self.args.users.encode()
        if b"%d" not in users:
            return users
        return users % (number % self.args.user_count)


async def sessionWorker(run: Run, worker: int) -> None:
    number = worker
    password = run.args.password.encode()
    while run.more():
        started = time.monotonic()
        writer = None
        try:
            reader, writer = await connect(run.args.port)
            await command(reader, writer, b"a", b"LOGIN " + run.user(number) + b" " + password)
            await command(reader, writer, b"b", b"SELECT INBOX")
            await command(reader, writer, b"c", b"LOGOUT")
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, IMAPError) as e:
            run.failed(e)
            if run.errors > run.args.max_errors:
                return
            continue
        finally:
            if writer is not None:
                await close(writer)
        run.requests += 1
        run.latencies.append(time.monotonic() - started)
        number += run.args.concurrency


async def fetchWorker(run: Run, worker: int) -> None:
    args = run.args
    writer = None
    try:
        reader, writer = await connect(args.port)
        await command(reader, writer, b"a", b"LOGIN " + run.user(worker) + b" " + args.password.encode())
        await command(reader, writer, b"b", b"SELECT INBOX")
        fetch = b"FETCH %d BODY.PEEK[]" % args.message
        while run.more():
            started = time.monotonic()
            size = await command(reader, writer, b"f", fetch)
            if args.size and size != args.size:
                raise IMAPError(f"FETCH returned {size} bytes, expected {args.size}")
            run.requests += 1
            run.bytes += size
            run.latencies.append(time.monotonic() - started)
        await command(reader, writer, b"z", b"LOGOUT")
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, IMAPError) as e:
        run.failed(e)
    finally:
        if writer is not None:
            await close(writer)


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def main(args) -> dict:
    run = Run(args)
    worker = sessionWorker if args.mode == "sessions" else fetchWorker
    started = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(*(worker(run, n) for n in range(args.concurrency))),
        args.duration + 3 * READ_TIMEOUT,
    )
    elapsed = time.monotonic() - started
    return {
        "requests": run.requests,
        "bytes": run.bytes,
        "seconds": elapsed,
        "requestsPerSecond": run.requests / elapsed if elapsed else 0.0,
        "bytesPerSecond": run.bytes / elapsed if elapsed else 0.0,
        "latencyP50Ms": None if not run.latencies else 1000 * percentile(run.latencies, 0.5),
        "latencyP99Ms": None if not run.latencies else 1000 * percentile(run.latencies, 0.99),
        "errors": run.errors,
        "firstError": run.firstError,
    }


def parseArgs(argv: list[str]):
    parser = argparse.ArgumentParser(description="Bounded IMAP load on a loopback port.")
    parser.add_argument("mode", choices=("sessions", "fetch"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--users", default="user%d",
        help="user name, where %%d is replaced by 0.. --user-count - 1 (default 'user%%d')",
    )
    parser.add_argument("--user-count", type=int, default=1, help="users to take turns (default 1)")
    parser.add_argument("--password", required=True)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--max-errors", type=int, default=100, help="stop a sessions run after this many")
    parser.add_argument("--message", type=int, default=1, help="fetch: message number")
    parser.add_argument("--size", type=int, default=0, help="fetch: expected literal size (0: any)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1 or args.user_count < 1:
        parser.error("--duration, --concurrency and --user-count must be positive")
    return args


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parseArgs(sys.argv[1:])))))
