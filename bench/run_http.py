"""
HTTP (L7) throughput: lbproxy's http mode against HAProxy's mode http,
nginx as a reverse proxy and Twisted's ReverseProxyResource, all in front
of the same two nginx backends on loopback; and, with clients that close
every connection, lbproxy's http mode against its own tcp mode.

Run from the repository root with the interpreter that has Twisted:

    python bench/run_http.py                 # 5 rounds of 5 s per target
    python bench/run_http.py --rounds 9 --json http.json

See bench/README.rst for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

from harness import (
    roundsLine,
    say,
    sayProfiles,
    latencyCpuCells,
    rateCells,
    addRoundArguments,
    runMain,
    resolvePins,
    addCommonArguments,
    addWorkersArgument,
    addLogRequestsArgument,
    LOOPBACK,
    UPLOAD_PATH,
    writeUploadScript,
    cpuPerRequestCell,
    processCpuCell,
    BenchError,
    NginxBackends,
    NginxProxy,
    ProcessGroup,
    besidePython,
    fileTail,
    findExecutable,
    formatTable,
    freePort,
    haproxyConfig,
    lbproxyArgv,
    lbproxyConfig,
    lbproxyEnv,
    makePayload,
    makeWorkdir,
    pinned,
    profileWhileLoading,
    reactorInLog,
    runWrk,
    toolVersion,
    topFunctions,
    verifyBody,
    waitForChild,
    waitForPort,
    writeResults,
    measureRounds,
    goalLines,
)

TARGETS = ("direct", "haproxy", "nginx", "twisted-web", "lbproxy", "lbproxy-tcp")
PAYLOAD = makePayload("100B", 100)
LARGE = makePayload("1MiB", 1024 * 1024)
PROXIES = ("direct", "haproxy", "nginx", "lbproxy", "lbproxy-tcp")


@dataclass(frozen=True)
class Scenario:
    """
    One kind of load: wrk's extra headers, the targets in turn order, the
    path asked for, and whether each request uploads C{LARGE} (a POST the
    backends answer with a short body).
    """

    headers: tuple[str, ...]
    targets: tuple[str, ...]
    path: str = PAYLOAD.path
    upload: bool = False


SCENARIOS = {
    "keepalive": Scenario((), TARGETS),
    "close": Scenario(("Connection: close",), PROXIES),
    "download": Scenario((), PROXIES, path=LARGE.path),
    "upload": Scenario((), PROXIES, path=UPLOAD_PATH, upload=True),
}
# (scenario, ours, theirs, goal, strictly above): ours/theirs must reach goal.
GOALS = (
    ("keepalive", "lbproxy", "haproxy", 0.7, False),
    ("keepalive", "lbproxy", "twisted-web", 10.0, False),
    ("close", "lbproxy", "lbproxy-tcp", 1.0, True),
    ("download", "lbproxy", "haproxy", 0.8, False),
    ("download", "lbproxy", "lbproxy-tcp", 0.9, False),
    ("upload", "lbproxy", "haproxy", 0.8, False),
    ("upload", "lbproxy", "lbproxy-tcp", 0.9, False),
)
# Idle connections lbproxy keeps per server: more than wrk's connections,
# as HAProxy (http-reuse always) and nginx (keepalive 64) keep.
REUSE_MAX_IDLE = 64
# Which requests may take an idle server connection, for HAProxy
# (http-reuse) and lbproxy (reuse.mode) alike.
REUSE_MODES = ("never", "safe", "always")
HERE = os.path.dirname(os.path.abspath(__file__))


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare lbproxy's HTTP mode with HAProxy, nginx and "
        "Twisted's ReverseProxyResource on loopback (wrk against nginx)."
    )
    addRoundArguments(parser, run="wrk run")
    parser.add_argument(
        "--connections", type=int, default=50, help="wrk connections (default 50)"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--reuse", choices=REUSE_MODES, default="always",
        help="HAProxy's http-reuse and lbproxy's reuse.mode (default always, "
        "idle server connections shared by every client connection)",
    )
    parser.add_argument(
        "--targets", default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)} (default all)",
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default all)",
    )
    parser.add_argument(
        "--python", default=None,
        help="Python with Twisted for the ReverseProxyResource target "
        "(default: the one next to twistd)",
    )
    addCommonArguments(parser, "per scenario (HTTP mode)")
    addLogRequestsArgument(parser)
    addWorkersArgument(parser)
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        parser.error(f"--targets: expected names from {','.join(TARGETS)}, got {args.targets!r}")
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not scenarios or any(s not in SCENARIOS for s in scenarios):
        parser.error(
            f"--scenarios: expected names from {','.join(SCENARIOS)}, got {args.scenarios!r}"
        )
    args.scenarios = [s for s in SCENARIOS if s in scenarios]
    args.targetsByScenario = {
        s: [t for t in SCENARIOS[s].targets if t in targets] for s in args.scenarios
    }
    if not any(args.targetsByScenario.values()):
        parser.error("--targets and --scenarios leave nothing to measure")
    args.targets = [t for t in TARGETS if any(t in ts for ts in args.targetsByScenario.values())]
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.connections < 1 or args.workers < 1:
        parser.error("--rounds, --duration, --connections and --workers must be positive")
    if args.profile and "lbproxy" not in args.targets:
        parser.error("--profile needs the lbproxy target")
    if args.profile and args.workers > 1:
        parser.error("--profile samples one process: use it with --workers 1")
    resolvePins(args)
    return args


def startLbproxy(
    args, group: ProcessGroup, workdir: str, name: str, config: str, port: int
) -> tuple[int, str]:
    """
    Start twistd with C{config} as C{NAME}; its pid and reactor class.
    """
    path = os.path.join(workdir, f"{name}.toml")
    with open(path, "w") as f:
        f.write(config)
    twistd = args.twistd or besidePython("twistd")
    argv = lbproxyArgv(twistd, path, workdir, args.reactor, name=name)
    pid = group.start(
        name, pinned(argv, args.proxyCpus), env=lbproxyEnv(args.lbproxy_source)
    ).pid
    try:
        waitForPort(port, group, timeout=30.0)
    except BenchError as e:
        raise BenchError(f"{e}\ntwistd log:\n{fileTail(os.path.join(workdir, name + '.log'), 30)}")
    reactor = reactorInLog(workdir, name) or "unknown"
    say(f"{name}: {' '.join(argv)}")
    say(f"{name} reactor: {reactor}")
    return pid, reactor


def run(args: argparse.Namespace) -> int:
    workdir = makeWorkdir("lbproxy-bench-http-", args.keep_workdir)
    accessLog = os.path.join(workdir, "access.log")
    with ProcessGroup(workdir) as group:
        backendPorts = [freePort(), freePort()]
        servers = [("nginx1", backendPorts[0]), ("nginx2", backendPorts[1])]
        for index, port in enumerate(backendPorts, 1):
            backend = NginxBackends(workdir, [port], [PAYLOAD, LARGE], name=f"nginx{index}")
            group.start(f"nginx{index}", pinned(backend.argv(), args.backendCpus))
        for port in backendPorts:
            waitForPort(port, group)

        ports = {"direct": backendPorts[0]}
        pids: dict[str, int] = {}
        details: dict[str, str] = {}
        if "haproxy" in args.targets:
            ports["haproxy"] = freePort()
            path = os.path.join(workdir, "haproxy.cfg")
            with open(path, "w") as f:
                f.write(haproxyConfig(ports["haproxy"], servers, mode="http", reuse=args.reuse))
            pids["haproxy"] = group.start(
                "haproxy",
                pinned([findExecutable("haproxy"), "-db", "-f", path], args.proxyCpus),
            ).pid
            waitForPort(ports["haproxy"], group)
        if "nginx" in args.targets:
            ports["nginx"] = freePort()
            proxy = NginxProxy(workdir, ports["nginx"], servers)
            master = group.start("nginx-proxy", pinned(proxy.argv(), args.proxyCpus)).pid
            waitForPort(ports["nginx"], group)
            # The worker does the proxying; the master only watches it.
            pids["nginx"] = waitForChild(master, group)
        if "twisted-web" in args.targets:
            ports["twisted-web"] = freePort()
            twistd = args.twistd or besidePython("twistd")
            python = args.python or os.path.join(os.path.dirname(twistd), "python")
            argv = [python, os.path.join(HERE, "reverse_proxy_resource.py"),
                    "--port", str(ports["twisted-web"])]
            for _, port in servers:
                argv += ["--backend", f"{LOOPBACK}:{port}"]
            pids["twisted-web"] = group.start("twisted-web", pinned(argv, args.proxyCpus)).pid
            waitForPort(ports["twisted-web"], group)
        if "lbproxy" in args.targets:
            ports["lbproxy"] = freePort()
            config = lbproxyConfig(
                ports["lbproxy"], servers, mode="http",
                accessLog=accessLog, reuseMaxIdle=REUSE_MAX_IDLE, reuseMode=args.reuse,
                logRequests=args.log_requests, workers=args.workers,
            )
            pids["lbproxy"], details["lbproxyReactor"] = startLbproxy(
                args, group, workdir, "lbproxy", config, ports["lbproxy"]
            )
        if "lbproxy-tcp" in args.targets:
            ports["lbproxy-tcp"] = freePort()
            config = lbproxyConfig(ports["lbproxy-tcp"], servers, mode="tcp", workers=args.workers)
            pids["lbproxy-tcp"], details["lbproxyTcpReactor"] = startLbproxy(
                args, group, workdir, "lbproxy-tcp", config, ports["lbproxy-tcp"]
            )
        if "lbproxy" in pids:
            details["lbproxyLogRequests"] = args.log_requests
        if args.lbproxy_source and ("lbproxy" in pids or "lbproxy-tcp" in pids):
            details["lbproxyRevision"] = toolVersion(
                ["git", "-C", args.lbproxy_source, "describe", "--always", "--dirty"]
            )

        def url(target: str, port: int | None = None, path: str = PAYLOAD.path) -> str:
            return f"http://{LOOPBACK}:{port or ports[target]}{path}"

        # One request per target on fresh connections; twice through each
        # proxy so round robin reaches both backends.
        for port in backendPorts:
            verifyBody(url("direct", port), PAYLOAD.body)
        for target in args.targets:
            if target != "direct":
                for _ in servers:
                    verifyBody(url(target), PAYLOAD.body)
        say(f"verified: every target returns the expected {PAYLOAD.name} body")

        uploadScript = None
        if any(SCENARIOS[s].upload for s in args.scenarios):
            uploadScript = writeUploadScript(workdir, LARGE.body)
        for scenario in args.scenarios:
            if SCENARIOS[scenario].path == LARGE.path:
                for target in args.targetsByScenario[scenario]:
                    verifyBody(url(target, path=LARGE.path), LARGE.body)

        def measure(target: str, scenario: str, duration: float = args.duration):
            group.checkAlive()
            kind = SCENARIOS[scenario]
            return runWrk(
                url(target, path=kind.path),
                duration,
                args.connections,
                threads=args.threads,
                cpus=args.loadCpus,
                measuredPid=pids.get(target),
                headers=kind.headers,
                script=uploadScript if kind.upload else None,
            )

        series, info, pins, elapsed, loadAfter = measureRounds(
            args, args.scenarios, args.targets, measure, say,
            group=group, details=details, pinRoles=("wrk", "nginx"),
            tools=(
                ("haproxy", [findExecutable("haproxy"), "-v"]),
                ("nginx", [findExecutable("nginx"), "-v"]),
                ("wrk", [findExecutable("wrk"), "--version"]),
            ),
            targetsByScenario=args.targetsByScenario,
        )
        profiles = []
        if args.profile:
            profiles = profileLbproxy(args, pids["lbproxy"], url, uploadScript)
        logLines = countLines(accessLog) if "lbproxy" in pids else None

    sayProfiles(profiles)
    say("")
    say(report(series, args))
    if logLines is not None:
        say(f"\nlbproxy access log: {logLines} lines written")
    say(roundsLine(args.rounds, args.duration, elapsed, loadAfter))
    writeResults(
        args, "http", info, loadAfter,
        {
            "connections": args.connections,
            "threads": args.threads,
            "payload": PAYLOAD.name,
            "scenarios": {
                s: {"headers": SCENARIOS[s].headers, "path": SCENARIOS[s].path,
                    "upload": LARGE.name if SCENARIOS[s].upload else None}
                for s in args.scenarios
            },
            "pin": pins,
            "reactor": args.reactor,
            "lbproxyWorkers": args.workers,
            "lbproxyReuseMaxIdle": REUSE_MAX_IDLE,
            "reuse": args.reuse,
        },
        details, series, ratios(series), accessLogLines=logLines,
    )
    return 0


def countLines(path: str) -> int:
    """
    Lines in the file at C{path} (0 if there is none), after a pause for
    lbproxy's access log buffer, which is flushed at least once a second.
    """
    time.sleep(1.5)
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def profileLbproxy(args: argparse.Namespace, pid: int, url, uploadScript) -> list:
    """
    One more load run per scenario on lbproxy's HTTP mode, sampled by py-spy.
    """
    pySpy = besidePython("py-spy")
    os.makedirs(args.profile, exist_ok=True)
    profiles = []
    for scenario in args.scenarios:
        if "lbproxy" not in args.targetsByScenario[scenario]:
            continue
        kind = "native" if args.profile_native else "python"
        path = os.path.join(args.profile, f"lbproxy-http-{scenario}-{kind}.collapsed")
        say(f"profiling lbproxy, {scenario}, for {args.duration:g}s")
        result = profileWhileLoading(
            pid, url("lbproxy", path=SCENARIOS[scenario].path), args.duration, args.connections,
            path, pySpy, loadCpus=args.loadCpus, native=args.profile_native,
            headers=SCENARIOS[scenario].headers,
            script=uploadScript if SCENARIOS[scenario].upload else None,
        )
        profiles.append((scenario, path, result, topFunctions(path)))
    return profiles


def ratios(series) -> list[dict]:
    """
    The goals' ratios of median requests/s, with whether each was met.
    """
    out = []
    for scenario, ours, theirs, goal, strict in GOALS:
        a = series.get((ours, scenario))
        b = series.get((theirs, scenario))
        if a is None or b is None:
            continue
        ratio = a.median() / b.median() if b.median() else 0.0
        out.append({
            "scenario": scenario,
            "ours": ours,
            "theirs": theirs,
            "ratio": ratio,
            "goal": goal,
            "strict": strict,
            "met": ratio > goal if strict else ratio >= goal,
        })
    return out


def report(series, args) -> str:
    rows = []
    for scenario in args.scenarios:
        for target in args.targetsByScenario[scenario]:
            s = series[(target, scenario)]
            errors = sum(r.socketErrors + r.non2xx for r in s.runs)
            rows.append([
                scenario,
                target,
                *rateCells(s),
                *latencyCpuCells(s),
                processCpuCell(s),
                cpuPerRequestCell(s),
                str(errors),
            ])
    table = formatTable(
        ["scenario", "target", "median req/s", "min", "max", "spread",
         "p99 ms", "proxy CPU", "per process", "µs/req", "errors"],
        rows,
    )
    lines = [table]
    found = ratios(series)
    lines.extend(goalLines(
        (
            f"{r['scenario']:<9} {r['ours']}/{r['theirs']}: {r['ratio']:.2f}x  "
            f"(goal {'>' if r['strict'] else '>='} {r['goal']:g}x)",
            r["met"],
        )
        for r in found
    ))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    return runMain("run_http", parseArgs, run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
