"""
HTTP/2 over TLS: lbproxy's HTTP/2 front against HAProxy ("alpn h2") and
twisted.web's own HTTP/2 server as a ReverseProxyResource, with the same
ECDSA P-256 certificate (TLS 1.3) in front of the same two nginx backends
on loopback:

  - requests per second with h2load, 10 connections of 1 and of 10
    concurrent streams each, in alternating rounds, with each proxy's CPU
    time per request;
  - resident memory per idle HTTP/2 connection (1,000 connections that
    have exchanged SETTINGS, then stay quiet).

Run from the repository root with the interpreter that has Twisted:

    python bench/run_h2.py                    # 5 rounds of 5 s per target
    python bench/run_h2.py --rounds 3 --duration 5 --json h2.json

See bench/README.rst for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from h2_idle import H2Error, IdleH2Clients
from h2load import parseH2load, runH2load
from harness import (
    LOOPBACK,
    BenchError,
    MemoryUse,
    NginxBackends,
    ProcessGroup,
    Series,
    addCommonArguments,
    addRoundArguments,
    besidePython,
    cpuPerRequestCell,
    findExecutable,
    formatTable,
    freePort,
    haproxyConfig,
    lbproxyConfig,
    makeCertificate,
    makePayload,
    makeWorkdir,
    pinned,
    processMemory,
    raiseOpenFileLimit,
    rateCells,
    resolvePins,
    roundsLine,
    runMain,
    say,
    startLbproxy,
    toolVersion,
    verifyBody,
    waitForPort,
    writeResults,
    measureRounds,
    goalLines,
)

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = ("haproxy", "lbproxy", "twisted-web")
PAYLOAD = makePayload("100B", 100)
REUSE_MAX_IDLE = 64
#: lbproxy's http2 max_requests by default here: high enough that no
#: connection is closed during a run, as neither rival closes one.
MAX_REQUESTS = 1_000_000_000
#: (scenario, rival, goal): lbproxy's median over the rival's must reach goal.
RATE_GOALS = (("m1", "haproxy", 0.2), ("m1", "twisted-web", 4.0), ("m10", "haproxy", 0.1))
#: lbproxy's RSS per idle connection over HAProxy's must not exceed this.
IDLE_GOAL = 1.0


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare lbproxy's HTTP/2 front with HAProxy's and twisted.web's "
        "on loopback (h2load requests/s, RSS per idle h2 connection)."
    )
    addRoundArguments(parser)
    parser.add_argument(
        "--connections", type=int, default=10, help="h2load connections (default 10)"
    )
    parser.add_argument(
        "--streams", default="1,10",
        help="concurrent streams per connection, one scenario each (default 1,10)",
    )
    parser.add_argument(
        "--idle-connections", type=int, default=1000,
        help="idle h2 connections for the RSS measurement (default 1000, 0 = skip)",
    )
    parser.add_argument(
        "--targets", default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)} (default all)",
    )
    parser.add_argument(
        "--python", default=None,
        help="Python with Twisted (and h2, priority) for the twisted-web target "
        "(default: the one next to twistd)",
    )
    parser.add_argument(
        "--max-requests", type=int, default=MAX_REQUESTS,
        help="lbproxy's [http2] max_requests, streams per connection before it closes "
        f"gracefully (default {MAX_REQUESTS:,}: never during a run; 0 = lbproxy's "
        "default, 1000, after which h2load, which does not reconnect, loses the connection)",
    )
    parser.add_argument(
        "--log-requests", choices=("errors", "all"), default=None,
        help="lbproxy's log_requests (default: not set, lbproxy's default)",
    )
    addCommonArguments(parser, "per scenario")
    args = parser.parse_args(argv)
    chosen = [x.strip() for x in args.targets.split(",") if x.strip()]
    if not chosen or any(x not in TARGETS for x in chosen):
        parser.error(f"--targets: expected names from {','.join(TARGETS)}")
    args.targets = [x for x in TARGETS if x in chosen]
    try:
        args.streamCounts = sorted({int(x) for x in args.streams.split(",") if x.strip()})
    except ValueError:
        parser.error("--streams: expected numbers such as 1,10")
    if not args.streamCounts or min(args.streamCounts) < 1:
        parser.error("--streams: expected positive numbers")
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0 or args.connections < 1:
        parser.error("--rounds and --connections must be positive, --duration at least 1")
    if args.idle_connections < 0 or args.max_requests < 0:
        parser.error("--idle-connections and --max-requests must not be negative")
    if args.profile:
        parser.error("--profile is not supported by this script")
    args.scenarios = [f"m{n}" for n in args.streamCounts]
    resolvePins(args)
    return args


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------


def h2HaproxyConfig(port: int, servers, bundle: str, maxconn: int) -> str:
    """
    HAProxy terminating TLS 1.3 with ALPN h2 (then http/1.1) in mode
    http, one thread, server connections reused (L{haproxyConfig}).
    """
    text = haproxyConfig(port, servers, mode="http", tlsBundle=bundle, maxconn=maxconn)
    bind = " alpn http/1.1"
    if bind not in text:
        raise BenchError("haproxyConfig no longer has the expected bind line")
    return text.replace(bind, " alpn h2,http/1.1 ssl-min-ver TLSv1.3")


def h2LbproxyConfig(
    port: int, servers, tls, maxconn: int, maxRequests: int = 0, logRequests: str | None = None
) -> str:
    """
    lbproxy with an http listener terminating TLS 1.3 and its HTTP/2
    front enabled, with C{max_requests} streams per connection (0:
    lbproxy's default); the access log stays at lbproxy's default, and so
    does C{log_requests} unless C{logRequests} is given.
    """
    text = lbproxyConfig(
        port, servers, mode="http", tls=tls,
        reuseMaxIdle=REUSE_MAX_IDLE, reuseMode="always", maxconn=maxconn,
    )
    if logRequests is not None:
        text = text.replace('mode = "http"\n', f'mode = "http"\nlog_requests = "{logRequests}"\n', 1)
    table = "[listeners.bench.tls]\n"
    if table not in text:
        raise BenchError("lbproxyConfig no longer has the expected [tls] table")
    text = text.replace(table, table + 'min_version = "1.3"\n')
    text += "\n[listeners.bench.http2]\nenabled = true\n"
    if maxRequests:
        text += f"max_requests = {maxRequests}\n"
    return text


def twistedWebArgv(python: str, port: int, servers, tls) -> list[str]:
    """
    bench/reverse_proxy_resource.py serving TLS 1.3 with ALPN h2.
    """
    argv = [python, os.path.join(HERE, "reverse_proxy_resource.py"), "--port", str(port),
            "--cert", tls.cert, "--key", tls.key]
    for _, backendPort in servers:
        argv += ["--backend", f"{LOOPBACK}:{backendPort}"]
    return argv


# ---------------------------------------------------------------------------
# Idle connections
# ---------------------------------------------------------------------------


@dataclass
class IdleRun:
    """
    A proxy's memory before and after C{connections} idle h2 connections.
    """

    target: str
    connections: int
    before: MemoryUse
    after: MemoryUse
    seconds: float
    dropped: int

    @property
    def kibPerConnection(self) -> float:
        return (self.after.rss - self.before.rss) / self.connections

    def summary(self) -> dict:
        return {**asdict(self), "rssKiBPerConnection": self.kibPerConnection}


def measureIdle(target: str, port: int, pid: int, count: int, settle: float = 1.0) -> IdleRun:
    """
    Open C{count} idle h2 connections to C{port}, after a few opened and
    closed first (so code loaded on first use is not counted), and read
    the proxy's RSS before and after.
    """
    warm = IdleH2Clients()
    try:
        warm.open(LOOPBACK, port, min(20, count), timeout=30)
    except H2Error as e:
        raise BenchError(f"{target}: idle h2 connections failed: {e}")
    finally:
        warm.close()
    time.sleep(settle)
    before = processMemory(pid)
    clients = IdleH2Clients()
    try:
        try:
            seconds = clients.open(LOOPBACK, port, count, timeout=120)
        except H2Error as e:
            raise BenchError(f"{target}: idle h2 connections failed: {e}")
        time.sleep(settle)
        after = processMemory(pid)
        dropped = clients.dropped()
    finally:
        clients.close()
    return IdleRun(target, count, before, after, seconds, dropped)


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def checkH2(url: str, target: str) -> None:
    """
    A few requests over h2 with h2load: all of them 2xx, over h2.
    """
    argv = [findExecutable("h2load"), "-n", "4", "-c", "1", "-m", "1", url]
    done = subprocess.run(argv, capture_output=True, timeout=30)
    result = parseH2load(done.stdout.decode("utf-8", "replace"))
    if result.problems():
        raise BenchError(f"{target} over h2: {result.problems()}")


def startTargets(args, group: ProcessGroup, workdir: str, servers, tls, maxconn: int):
    """
    Start each chosen proxy; their ports, process ids and details.
    """
    ports: dict[str, int] = {}
    pids: dict[str, int] = {}
    details: dict[str, str] = {}
    if "haproxy" in args.targets:
        ports["haproxy"] = freePort()
        path = os.path.join(workdir, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(h2HaproxyConfig(ports["haproxy"], servers, tls.bundle, maxconn))
        argv = pinned([findExecutable("haproxy"), "-db", "-f", path], args.proxyCpus)
        pids["haproxy"] = group.start("haproxy", argv).pid
        waitForPort(ports["haproxy"], group)
    if "lbproxy" in args.targets:
        ports["lbproxy"] = freePort()
        config = h2LbproxyConfig(
            ports["lbproxy"], servers, tls, maxconn, args.max_requests, args.log_requests
        )
        process, details["lbproxyReactor"] = startLbproxy(
            args, group, workdir, "lbproxy", config, ports["lbproxy"]
        )
        pids["lbproxy"] = process.pid
        if args.lbproxy_source:
            details["lbproxyRevision"] = toolVersion(
                ["git", "-C", args.lbproxy_source, "describe", "--always", "--dirty"]
            )
    if "twisted-web" in args.targets:
        ports["twisted-web"] = freePort()
        twistd = args.twistd or besidePython("twistd")
        python = args.python or os.path.join(os.path.dirname(twistd), "python")
        enabled = subprocess.run(
            [python, "-c", "from twisted.web.http import H2_ENABLED; print(H2_ENABLED)"],
            capture_output=True, timeout=60,
        ).stdout.strip()
        if enabled != b"True":
            raise BenchError(
                f"twisted.web cannot speak HTTP/2 under {python}: install the h2 and "
                "priority packages (Twisted's http2 extra)"
            )
        argv = twistedWebArgv(python, ports["twisted-web"], servers, tls)
        pids["twisted-web"] = group.start("twisted-web", pinned(argv, args.proxyCpus)).pid
        waitForPort(ports["twisted-web"], group)
    return ports, pids, details


def run(args: argparse.Namespace) -> int:
    findExecutable("h2load")
    findExecutable("curl")
    if "haproxy" in args.targets:
        findExecutable("haproxy")
    workdir = makeWorkdir("lbproxy-bench-h2-", args.keep_workdir)
    maxconn = max(4000, 2 * args.idle_connections + 100)
    raiseOpenFileLimit(2 * maxconn + 100)
    with ProcessGroup(workdir) as group:
        backendPorts = [freePort(), freePort()]
        servers = [("nginx1", backendPorts[0]), ("nginx2", backendPorts[1])]
        for index, port in enumerate(backendPorts, 1):
            backend = NginxBackends(workdir, [port], [PAYLOAD], name=f"nginx{index}")
            group.start(f"nginx{index}", pinned(backend.argv(), args.backendCpus))
        for port in backendPorts:
            waitForPort(port, group)
        tls = makeCertificate(os.path.join(workdir, "certs"), "ec")
        ports, pids, details = startTargets(args, group, workdir, servers, tls, maxconn)

        def url(target: str) -> str:
            return f"https://{LOOPBACK}:{ports[target]}{PAYLOAD.path}"

        for target in args.targets:
            for _ in servers:
                verifyBody(url(target), PAYLOAD.body, cacert=tls.cert)
            checkH2(url(target), target)
        say(f"verified: every target returns the expected {PAYLOAD.name} body, and answers over h2")

        idle = {}
        if args.idle_connections:
            for target in args.targets:
                group.checkAlive()
                found = idle[target] = measureIdle(
                    target, ports[target], pids[target], args.idle_connections
                )
                say(
                    f"idle {target:<11} {found.kibPerConnection:6.2f} KiB/conn  (RSS "
                    f"{found.before.rss / 1024:.1f} -> {found.after.rss / 1024:.1f} MiB, "
                    f"opened in {found.seconds:.1f}s, dropped {found.dropped})"
                )

        def measure(target: str, scenario: str, duration: float = args.duration):
            group.checkAlive()
            result = runH2load(
                url(target), duration, args.connections, int(scenario[1:]),
                cpus=args.loadCpus, measuredPid=pids[target],
            )
            if result.problems():
                say(f"  {target} {scenario}: {result.problems()} "
                    f"(h2load said {result.reportedRequestsPerSecond:.0f} req/s)")
            return result

        series, info, pins, elapsed, loadAfter = measureRounds(
            args, args.scenarios, args.targets, measure, say,
            group=group, details=details, pinRoles=("h2load", "nginx"),
            tools=(
                ("haproxy", [findExecutable("haproxy"), "-v"]),
                ("h2load", [findExecutable("h2load"), "--version"]),
            ),
        )

    say("")
    say(report(series, idle, args))
    say(roundsLine(args.rounds, args.duration, elapsed, loadAfter))
    writeResults(
        args, "h2", info, loadAfter,
        {
            "connections": args.connections,
            "streams": args.streamCounts,
            "idleConnections": args.idle_connections,
            "payload": PAYLOAD.name,
            "certificate": "ECDSA P-256",
            "tls": "1.3",
            "pin": pins,
            "reactor": args.reactor,
            "lbproxyReuseMaxIdle": REUSE_MAX_IDLE,
            "lbproxyMaxRequests": args.max_requests or "default",
            "lbproxyLogRequests": args.log_requests or "default",
        },
        details, series, ratios(series, idle),
        idle=[r.summary() for r in idle.values()],
    )
    return 0


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------


def ratios(series: dict, idle: dict) -> list[dict]:
    """
    lbproxy against each rival the goals name: its median rate over
    theirs (at least the goal), its KiB per idle connection over
    HAProxy's (at most the goal).
    """
    out = []
    for scenario, rival, goal in RATE_GOALS:
        ours, theirs = series.get(("lbproxy", scenario)), series.get((rival, scenario))
        if ours is None or theirs is None:
            continue
        ratio = ours.median() / theirs.median() if theirs.median() else None
        out.append({
            "scenario": scenario, "ours": "lbproxy", "theirs": rival, "ratio": ratio,
            "goal": goal, "met": ratio is not None and ratio >= goal,
        })
    if "lbproxy" in idle and "haproxy" in idle:
        theirs = idle["haproxy"].kibPerConnection
        ratio = idle["lbproxy"].kibPerConnection / theirs if theirs > 0 else None
        out.append({
            "scenario": "idle", "ours": "lbproxy", "theirs": "haproxy", "ratio": ratio,
            "goal": IDLE_GOAL, "met": ratio is not None and ratio <= IDLE_GOAL,
        })
    return out


def badRuns(s: Series) -> str:
    bad = [r for r in s.runs if r.problems()]
    return f"{len(bad)}/{len(s.runs)}" if bad else "0"


def meanLatencyCell(s: Series) -> str:
    value = s.median("latencyMeanMs")
    return f"{value:.2f}" if value is not None else "-"


def proxyCpuCell(s: Series) -> str:
    cpu, system = s.median("proxyCpuPercent"), s.median("proxySystemPercent")
    return f"{cpu:.0f}% ({system:.0f}% sys)" if cpu is not None else "-"


def report(series: dict, idle: dict, args: argparse.Namespace) -> str:
    rows = []
    for scenario in args.scenarios:
        for target in args.targets:
            s = series[(target, scenario)]
            rows.append([
                scenario, target, *rateCells(s), meanLatencyCell(s), proxyCpuCell(s),
                cpuPerRequestCell(s), badRuns(s),
            ])
    lines = [
        formatTable(
            ["scenario", "target", "median /s", "min", "max", "spread", "mean ms",
             "proxy CPU", "CPU us/req", "bad runs"],
            rows,
        ),
        "",
        f"(mN: h2load, {args.connections} connections of N concurrent streams, requests/s; "
        "a bad run (failures, errors, non-2xx, not h2) counts 0 req/s)",
    ]
    if idle:
        lines += ["", formatTable(
            ["idle h2", "target", "KiB/conn", "RSS before MiB", "RSS after MiB", "dropped"],
            [[str(r.connections), r.target, f"{r.kibPerConnection:.2f}",
              f"{r.before.rss / 1024:.1f}", f"{r.after.rss / 1024:.1f}", str(r.dropped)]
             for r in idle.values()],
        )]
    found = ratios(series, idle)
    def check(r: dict) -> tuple[str, bool]:
        sign = "<=" if r["scenario"] == "idle" else ">="
        shown = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "n/a"
        return (
            f"{r['scenario']:<5} lbproxy/{r['theirs']:<11} {shown:>7}  "
            f"(goal {sign} {r['goal']:g}x)",
            r["met"],
        )

    lines.extend(goalLines(check(r) for r in found))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    return runMain("run_h2", parseArgs, run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
