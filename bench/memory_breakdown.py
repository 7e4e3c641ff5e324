"""
Where lbproxy's memory per idle connection goes: lbproxy runs inside this
process (its own reactor, the service tree twistd would build) under
tracemalloc, while a client process opens idle connections through it as
bench/run_memory.py does::

    python bench/memory_breakdown.py --mode tcp --connections 2000
    python bench/memory_breakdown.py --mode http --connections 4000 --frames 3

After the warm-up connections and again after the measured ones, it
takes a tracemalloc snapshot and counts the objects the garbage collector
tracks, by type; it prints, per measured connection, the objects of each
type and their C{sys.getsizeof} (an instance's attribute values, stored
apart from it, are the C{(values)} lines of the allocation sites), the
bytes allocated by each source line (with C{--frames} lines of callers),
and the total traced and resident growth. The figures of run_memory.py
come from separate processes without tracing; these say what they are
made of. See bench/README.rst.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
from collections import Counter

from harness import (
    NginxBackends,
    ProcessGroup,
    addKeepWorkdirArgument,
    fileTail,
    formatTable,
    freePort,
    lbproxyConfig,
    makeWorkdir,
    processMemory,
    raiseOpenFileLimit,
    say,
    waitForPort,
)
from memory_peers import ECHO_BYTE, IdleClients, answeredWith, echoed, httpRequest
from run_memory import IDLE_TIMEOUT, PAYLOAD, REUSE_MAX_IDLE

HERE = os.path.dirname(os.path.abspath(__file__))


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    clients = sub.add_parser("clients", help="(internal) the client process")
    clients.add_argument("--port", type=int, required=True)
    clients.add_argument("--mode", choices=("tcp", "http"), required=True)
    clients.add_argument("--concurrency", type=int, default=50)
    clients.add_argument("--most", type=int, default=1000, help="connections it will hold at most")
    parser.add_argument("--mode", choices=("tcp", "http"), default="tcp")
    parser.add_argument("--connections", type=int, default=2000, help="measured connections (default 2000)")
    parser.add_argument("--warmup-connections", type=int, default=200)
    parser.add_argument("--frames", type=int, default=1, help="traceback depth of the allocation sites (default 1)")
    parser.add_argument("--top", type=int, default=25, help="lines per table (default 25)")
    addKeepWorkdirArgument(parser)
    args = parser.parse_args(argv)
    if args.command is None and (args.connections < 1 or args.frames < 1):
        parser.error("--connections and --frames must be positive")
    return args


def runClients(args: argparse.Namespace) -> int:
    """
    The client process: on each C{open N} line from stdin, open N more idle
    connections and answer C{opened N}; at the end of stdin, close them.
    """
    raiseOpenFileLimit(args.most + 100)
    if args.mode == "tcp":
        request, complete = ECHO_BYTE, echoed
    else:
        request, complete = httpRequest(args.port, PAYLOAD.path), answeredWith(PAYLOAD.body)
    clients = IdleClients()
    try:
        for line in sys.stdin:
            count = int(line.split()[1])
            clients.open(args.port, count, request, complete, args.concurrency, 120.0)
            print(f"opened {count} dropped {clients.dropped()}", flush=True)
    finally:
        clients.close()
    return 0


def census() -> tuple[Counter, Counter]:
    """
    The objects the garbage collector tracks, counted and sized by type.
    """
    gc.collect()
    counts: Counter = Counter()
    sizes: Counter = Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj)
    return counts, sizes


class Stage:
    """
    What is known of the process at one point: a tracemalloc snapshot,
    the object census, the resident memory.
    """

    def __init__(self, frames: int) -> None:
        gc.collect()
        self.snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        self.memory = processMemory(os.getpid())
        self.counts, self.sizes = census()
        self.frames = frames


def shortPath(path: str) -> str:
    for marker in ("/lbproxy/", "/twisted/", "/zope/", "/attr/", "/OpenSSL/"):
        index = path.rfind(marker)
        if index >= 0:
            return path[index + 1:]
    return os.path.basename(path)


def report(before: Stage, after: Stage, connections: int, top: int) -> str:
    n = connections
    lines = []
    rows = []
    names = set(after.counts) | set(before.counts)
    growth = sorted(
        ((after.sizes[k] - before.sizes[k], after.counts[k] - before.counts[k], k) for k in names),
        reverse=True,
    )
    for size, count, name in growth[:top]:
        if count <= 0 and size <= 0:
            break
        rows.append([name, "", f"{count / n:.2f}", f"{size / n:.0f}"])
    lines.append("Objects tracked by the garbage collector, per connection (sys.getsizeof):")
    lines.append(formatTable(["type", "", "objects", "bytes"], rows))

    diff = after.snapshot.compare_to(before.snapshot, "traceback" if after.frames > 1 else "lineno")
    rows = []
    for stat in diff[:top]:
        if stat.size_diff <= 0:
            break
        frames = stat.traceback
        where = " <- ".join(
            f"{shortPath(frame.filename)}:{frame.lineno}" for frame in list(frames)[:after.frames]
        )
        rows.append([where, "", f"{stat.count_diff / n:.2f}", f"{stat.size_diff / n:.0f}"])
    lines.append("\nAllocations by source line (tracemalloc), per connection:")
    lines.append(formatTable(["allocated at", "", "blocks", "bytes"], rows))
    byFile: Counter = Counter()
    for stat in after.snapshot.compare_to(before.snapshot, "filename"):
        byFile[shortPath(stat.traceback[0].filename)] += stat.size_diff
    rows = [[f, "", f"{size / n:.0f}"] for f, size in byFile.most_common(12) if size > 0]
    lines.append("\nAllocations by file, per connection:")
    lines.append(formatTable(["file", "", "bytes"], rows))
    lines.append(
        f"\nallocated (traced, without the measurement's own): "
        f"{sum(stat.size_diff for stat in diff) / n:.0f} bytes per connection; "
        f"RSS (with tracemalloc's own): {(after.memory.rss - before.memory.rss) * 1024 / n:.0f}"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    raiseOpenFileLimit(2 * (args.connections + args.warmup_connections) + 1000)
    workdir = makeWorkdir("lbproxy-memory-breakdown-", args.keep_workdir)
    with ProcessGroup(workdir) as group:
        backendPort = freePort()
        if args.mode == "tcp":
            group.start("echo", [sys.executable, os.path.join(HERE, "memory_peers.py"), "echo",
                                 "--port", str(backendPort), "--max-seconds", "3600"])
        else:
            group.start("nginx", NginxBackends(workdir, [backendPort], [PAYLOAD]).argv())
        waitForPort(backendPort, group)
        port = freePort()
        timeouts = {"idle": IDLE_TIMEOUT}
        if args.mode == "http":
            timeouts["keepalive"] = IDLE_TIMEOUT
        path = os.path.join(workdir, "lbproxy.toml")
        with open(path, "w") as f:
            f.write(lbproxyConfig(
                port, [("backend", backendPort)], mode=args.mode, timeouts=timeouts,
                maxconn=args.connections + args.warmup_connections + 100,
                reuseMode="always" if args.mode == "http" else None,
                reuseMaxIdle=REUSE_MAX_IDLE if args.mode == "http" else None,
                logRequests="errors" if args.mode == "http" else "all",
            ))
        stages = serve(args, path, port, workdir)
        if stages is None:
            say("lbproxy log:\n" + fileTail(os.path.join(workdir, "lbproxy.log"), 30))
            return 2
    say(f"lbproxy {args.mode} mode, {args.connections} idle connections after "
        f"{args.warmup_connections} warm-up ones\n")
    say(report(*stages, args.connections, args.top))
    return 0


def serve(args: argparse.Namespace, configPath: str, port: int, workdir: str):
    """
    Run lbproxy in this process until the client process has opened the
    warm-up and the measured connections; the two L{Stage}s, or None if
    something failed.
    """
    tracemalloc.start(args.frames)
    from lbproxy._twisted.reactor import install

    reactor = install()
    from twisted.internet import protocol
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from lbproxy.tap import Options, makeService

    logFile = open(os.path.join(workdir, "lbproxy.log"), "a")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(logFile)], redirectStandardIO=False)
    options = Options()
    options.parseOptions(["--config", configPath])
    service = makeService(options)
    service.privilegedStartService()
    service.startService()
    stages: list[Stage] = []
    failed: list[str] = []

    class Control(protocol.ProcessProtocol):
        buffer = b""

        def connectionMade(self) -> None:
            self.transport.write(f"open {args.warmup_connections}\n".encode())

        def outReceived(self, data: bytes) -> None:
            self.buffer += data
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                words = line.split()
                if words[-1] != b"0":
                    failed.append(f"clients: {line.decode()}")
                reactor.callLater(1.0, self.stage)

        def errReceived(self, data: bytes) -> None:
            sys.stderr.write(data.decode("utf-8", "replace"))

        def stage(self) -> None:
            try:
                stages.append(Stage(args.frames))
            except Exception as e:
                failed.append(f"measuring failed: {e!r}")
                self.transport.signalProcess("KILL")
                return
            if len(stages) == 1:
                self.transport.write(f"open {args.connections}\n".encode())
            else:
                self.transport.closeStdin()

        def processEnded(self, reason) -> None:
            if len(stages) < 2:
                failed.append(f"the client process ended early: {reason.getErrorMessage()}")
            reactor.stop()

    argv = [sys.executable, os.path.abspath(__file__), "clients", "--port", str(port), "--mode", args.mode,
            "--most", str(args.connections + args.warmup_connections)]
    reactor.callWhenRunning(reactor.spawnProcess, Control(), sys.executable, argv, env=os.environ)
    reactor.callLater(600, reactor.stop)
    started = time.monotonic()
    reactor.run(installSignalHandlers=False)
    tracemalloc.stop()
    logFile.close()
    if failed or len(stages) < 2:
        say("; ".join(failed) or f"stopped after {time.monotonic() - started:.0f}s")
        return None
    return stages


def main(argv: list[str]) -> int:
    args = parseArgs(argv)
    if args.command == "clients":
        return runClients(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
