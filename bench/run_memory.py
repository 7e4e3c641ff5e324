"""
Memory per connection: the resident memory an idle proxied connection
costs lbproxy and HAProxy, in TCP mode (to an echo backend, after one byte
echoed each way) and in HTTP mode (keep-alive clients, each after one
request answered by nginx).

Run from the repository root with the interpreter that has Twisted:

    python bench/run_memory.py                     # 3 rounds, both modes
    python bench/run_memory.py --modes tcp --tcp-connections 2000 --rounds 1

See bench/README.rst for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

from harness import (
    LOOPBACK,
    BenchError,
    MemoryUse,
    NginxBackends,
    ProcessGroup,
    addKeepWorkdirArgument,
    addLbproxyArguments,
    addLogRequestsArgument,
    findExecutable,
    formatTable,
    freePort,
    haproxyConfig,
    lbproxyConfig,
    machineInfo,
    makePayload,
    makeWorkdir,
    processMemory,
    raiseOpenFileLimit,
    runMain,
    say,
    startLbproxy,
    toolVersion,
    verifyBody,
    waitForPort,
    writeJson,
)
from memory_peers import ECHO_BYTE, IdleClients, PeerError, answeredWith, echoed, httpRequest

TARGETS = ("lbproxy", "haproxy")
MODES = ("tcp", "http")
PAYLOAD = makePayload("100B", 100)
#: lbproxy's KiB per connection may be at most this many times HAProxy's.
GOAL = 1.5
#: Connections beyond the measured and warm-up ones that the proxies
#: must accept (readiness probes).
MAXCONN_MARGIN = 100
#: Descriptors HAProxy needs beyond two per connection (its listeners,
#: pollers, logs), for the check that tells it not to insist on them.
HAPROXY_OWN_DESCRIPTORS = 100
#: Every idle timeout of both proxies: far longer than a run.
IDLE_TIMEOUT = "300s"
#: Idle server connections lbproxy keeps (more than the clients opening at
#: once, as HAProxy's http-reuse always keeps them), as run_http.py does.
REUSE_MAX_IDLE = 64
HERE = os.path.dirname(os.path.abspath(__file__))


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure the resident memory an idle proxied connection costs "
        "lbproxy and HAProxy, in TCP and HTTP mode, on loopback."
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}"
    )
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}"
    )
    parser.add_argument(
        "--tcp-connections", type=int, default=5000,
        help="idle proxied TCP connections measured (default 5000)",
    )
    parser.add_argument(
        "--http-connections", type=int, default=10000,
        help="idle keep-alive HTTP clients measured (default 10000)",
    )
    parser.add_argument(
        "--warmup-connections", type=int, default=200,
        help="connections opened first, before the baseline, and kept open (default 200)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=50,
        help="connections being opened at once (default 50)",
    )
    parser.add_argument(
        "--settle", type=float, default=2.0,
        help="seconds waited before each memory reading (default 2)",
    )
    parser.add_argument(
        "--open-timeout", type=float, default=120.0,
        help="seconds allowed to open each batch of connections (default 120)",
    )
    addLbproxyArguments(parser)
    addLogRequestsArgument(parser)
    parser.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    addKeepWorkdirArgument(parser)
    args = parser.parse_args(argv)
    args.modes = _subset(parser, "--modes", args.modes, MODES)
    args.targets = _subset(parser, "--targets", args.targets, TARGETS)
    if min(args.rounds, args.tcp_connections, args.http_connections, args.concurrency) < 1:
        parser.error("--rounds, --*-connections and --concurrency must be positive")
    if args.warmup_connections < 0 or args.settle < 0 or args.open_timeout <= 0:
        parser.error("--warmup-connections and --settle must not be negative")
    return args


def _subset(parser, option: str, value: str, known: tuple[str, ...]) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    if not chosen or any(v not in known for v in chosen):
        parser.error(f"{option}: expected names from {','.join(known)}, got {value!r}")
    return [v for v in known if v in chosen]


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------


@dataclass
class MemoryRun:
    """
    One measurement: C{connections} idle connections through a fresh
    proxy, its memory with the warm-up connections only (C{before}) and
    with all of them (C{after}).
    """

    target: str
    mode: str
    connections: int
    before: MemoryUse
    after: MemoryUse
    openSeconds: float
    dropped: int

    @property
    def rssPerConnection(self) -> float:
        """
        KiB of resident memory per connection.
        """
        return (self.after.rss - self.before.rss) / self.connections

    @property
    def pssPerConnection(self) -> float | None:
        if self.after.pss is None or self.before.pss is None:
            return None
        return (self.after.pss - self.before.pss) / self.connections


@dataclass
class MemorySeries:
    target: str
    mode: str
    runs: list[MemoryRun] = field(default_factory=list)

    def median(self, attribute: str = "rssPerConnection") -> float | None:
        values = [getattr(r, attribute) for r in self.runs]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def summary(self) -> dict:
        return {
            "target": self.target,
            "mode": self.mode,
            "medianRssKiBPerConnection": self.median(),
            "medianPssKiBPerConnection": self.median("pssPerConnection"),
            "runs": [
                {**asdict(r), "rssKiBPerConnection": r.rssPerConnection,
                 "pssKiBPerConnection": r.pssPerConnection}
                for r in self.runs
            ],
        }


class Bench:
    """
    The processes of a run: the nginx backend (HTTP mode), and for each
    measurement a fresh echo backend (TCP mode) and a fresh proxy.
    """

    def __init__(self, args: argparse.Namespace, group: ProcessGroup, workdir: str) -> None:
        self.args = args
        self.group = group
        self.workdir = workdir
        self.nginxPort: int | None = None
        self.details: dict[str, str] = {}
        self.number = 0

    def startNginx(self) -> None:
        self.nginxPort = freePort()
        nginx = NginxBackends(self.workdir, [self.nginxPort], [PAYLOAD])
        self.group.start("nginx", nginx.argv())
        waitForPort(self.nginxPort, self.group)
        verifyBody(f"http://{LOOPBACK}:{self.nginxPort}{PAYLOAD.path}", PAYLOAD.body)

    def connections(self, mode: str) -> int:
        return self.args.tcp_connections if mode == "tcp" else self.args.http_connections

    def measure(self, target: str, mode: str) -> MemoryRun:
        """
        One measurement of C{target} in C{mode}, on processes started for it
        and stopped after it.
        """
        self.number += 1
        started: list = []
        try:
            if mode == "tcp":
                backendPort = freePort()
                started.append(self.group.start(
                    f"echo-{self.number}",
                    [sys.executable, os.path.join(HERE, "memory_peers.py"), "echo",
                     "--port", str(backendPort), "--max-seconds", "3600"],
                ))
                waitForPort(backendPort, self.group)
            else:
                backendPort = self.nginxPort
            port = freePort()
            proxy = self.startProxy(target, mode, port, backendPort)
            started.append(proxy)
            return self.load(target, mode, port, proxy.pid)
        finally:
            for process in reversed(started):
                self.group.stop(process)

    def startProxy(self, target: str, mode: str, port: int, backendPort: int):
        args = self.args
        count = self.connections(mode)
        maxconn = args.warmup_connections + count + MAXCONN_MARGIN
        servers = [("backend", backendPort)]
        name = f"{target}-{mode}-{self.number}"
        if target == "haproxy":
            path = os.path.join(self.workdir, f"{name}.cfg")
            with open(path, "w") as f:
                f.write(haproxyConfig(
                    port, servers, mode=mode, maxconn=maxconn,
                    globalLines=self.haproxyLimits(maxconn),
                ))
            process = self.group.start(name, [findExecutable("haproxy"), "-db", "-f", path])
            waitForPort(port, self.group)
            return process
        timeouts = {"idle": IDLE_TIMEOUT}
        if mode == "http":
            timeouts["keepalive"] = IDLE_TIMEOUT
        config = lbproxyConfig(
            port, servers, mode=mode, maxconn=maxconn, timeouts=timeouts,
            reuseMode="always" if mode == "http" else None,
            reuseMaxIdle=REUSE_MAX_IDLE if mode == "http" else None,
            logRequests=args.log_requests if mode == "http" else "all",
        )
        process, reactor = startLbproxy(args, self.group, self.workdir, name, config, port)
        self.details["lbproxyReactor"] = reactor
        return process

    def haproxyLimits(self, maxconn: int) -> list[str]:
        """
        HAProxy wants two descriptors per connection of its C{maxconn} and
        refuses to start unless it gets them; an HTTP client costs one (the
        server connections are shared), so where the hard limit this
        process may not raise is below two per connection, HAProxy is told
        to start anyway (as lbproxy does, with a warning).
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and 2 * maxconn + HAPROXY_OWN_DESCRIPTORS > hard:
            self.details["haproxyLimits"] = f"no strict-limits (hard open-file limit {hard})"
            return ["no strict-limits"]
        return []

    def load(self, target: str, mode: str, port: int, pid: int) -> MemoryRun:
        args = self.args
        if mode == "tcp":
            request, complete = ECHO_BYTE, echoed
        else:
            request, complete = httpRequest(port, PAYLOAD.path), answeredWith(PAYLOAD.body)
        clients = IdleClients()
        try:
            if args.warmup_connections:
                clients.open(
                    port, args.warmup_connections, request, complete, args.concurrency,
                    args.open_timeout,
                )
            time.sleep(args.settle)
            before = processMemory(pid)
            count = self.connections(mode)
            seconds = clients.open(
                port, count, request, complete, args.concurrency, args.open_timeout
            )
            time.sleep(args.settle)
            after = processMemory(pid)
            dropped = clients.dropped()
            self.group.checkAlive()
        except PeerError as e:
            self.group.checkAlive()
            raise BenchError(f"{target} {mode}: {e}")
        finally:
            clients.close()
        return MemoryRun(target, mode, count, before, after, seconds, dropped)


def run(args: argparse.Namespace) -> int:
    workdir = makeWorkdir("lbproxy-bench-memory-", args.keep_workdir)
    most = max(
        args.warmup_connections + (args.tcp_connections if "tcp" in args.modes else 0),
        args.warmup_connections + (args.http_connections if "http" in args.modes else 0),
    )
    # The clients of this process; the echo backend and the proxies raise
    # their own limits (up to the hard limit they inherit).
    raiseOpenFileLimit(most + MAXCONN_MARGIN)
    series = {(t, m): MemorySeries(t, m) for m in args.modes for t in args.targets}
    with ProcessGroup(workdir) as group:
        bench = Bench(args, group, workdir)
        if "http" in args.modes:
            bench.startNginx()
        details = bench.details
        details["haproxyVersion"] = toolVersion([findExecutable("haproxy"), "-v"])
        if (
            args.lbproxy_source
            and "lbproxy" in args.targets
            and os.path.exists(os.path.join(args.lbproxy_source, ".git"))
        ):
            details["lbproxyRevision"] = toolVersion(
                ["git", "-C", args.lbproxy_source, "describe", "--always", "--dirty"]
            )
        info = machineInfo()
        say("versions: " + "; ".join(f"{k}: {v}" for k, v in details.items() if v))
        started = time.monotonic()
        for number in range(1, args.rounds + 1):
            for mode in args.modes:
                for target in args.targets:
                    result = bench.measure(target, mode)
                    series[(target, mode)].runs.append(result)
                    say(
                        f"round {number}/{args.rounds} {mode:<4} {target:<8} "
                        f"{result.rssPerConnection:6.2f} KiB/conn  (RSS "
                        f"{result.before.rss / 1024:.1f} -> {result.after.rss / 1024:.1f} MiB, "
                        f"{result.connections / result.openSeconds:.0f} conn/s)"
                        + (f"  DROPPED {result.dropped}" if result.dropped else "")
                    )
        elapsed = time.monotonic() - started

    say("")
    say(report(series, args))
    say(f"\n{args.rounds} rounds in {elapsed:.0f}s")
    if args.json:
        writeJson(args.json, {
            "benchmark": "memory",
            "machine": info,
            "settings": {
                "rounds": args.rounds,
                "modes": args.modes,
                "tcpConnections": args.tcp_connections,
                "httpConnections": args.http_connections,
                "warmupConnections": args.warmup_connections,
                "concurrency": args.concurrency,
                "settle": args.settle,
                "reactor": args.reactor,
                "logRequests": args.log_requests,
            },
            "details": details,
            "results": [s.summary() for s in series.values()],
            "ratios": ratios(series),
        })
        say(f"JSON written to {args.json}")
    return 1 if any(r.dropped for s in series.values() for r in s.runs) else 0


def ratios(series: dict) -> list[dict]:
    """
    lbproxy's median KiB per connection over HAProxy's, by mode, with the
    goal and whether it was met.
    """
    out = []
    for mode in MODES:
        ours, theirs = series.get(("lbproxy", mode)), series.get(("haproxy", mode))
        if ours is None or theirs is None:
            continue
        ratio = ours.median() / theirs.median() if theirs.median() else float("inf")
        out.append({"mode": mode, "ratio": ratio, "goal": GOAL, "met": ratio <= GOAL})
    return out


def report(series: dict, args: argparse.Namespace) -> str:
    rows = []
    for (target, mode), s in series.items():
        perConnection = [r.rssPerConnection for r in s.runs]
        pss = s.median("pssPerConnection")
        rows.append([
            mode,
            target,
            str(s.runs[0].connections),
            f"{s.median():.2f}",
            f"{min(perConnection):.2f}",
            f"{max(perConnection):.2f}",
            f"{pss:.2f}" if pss is not None else "-",
            f"{statistics.median(r.before.rss for r in s.runs) / 1024:.1f}",
            f"{statistics.median(r.after.rss for r in s.runs) / 1024:.1f}",
            str(sum(r.dropped for r in s.runs)),
        ])
    lines = [formatTable(
        ["mode", "target", "connections", "KiB/conn", "min", "max", "PSS KiB/conn",
         "RSS before MiB", "RSS after MiB", "dropped"],
        rows,
    )]
    found = ratios(series)
    if found:
        lines.append("")
        for r in found:
            verdict = "PASS" if r["met"] else "MISS"
            lines.append(
                f"{r['mode']:<4} lbproxy/HAProxy KiB per connection: {r['ratio']:.2f}x  "
                f"(goal <= {r['goal']:g}x)  {verdict}"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    return runMain("run_memory", parseArgs, run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
