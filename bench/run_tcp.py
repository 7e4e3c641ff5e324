"""
TCP (L4) throughput: lbproxy's tcp mode against HAProxy's mode tcp and a
direct connection, all in front of the same nginx backends on loopback.

Run from the repository root with the interpreter that has Twisted:

    python bench/run_tcp.py                 # 5 rounds of 5 s per target
    python bench/run_tcp.py --rounds 9 --json tcp.json

See bench/README.rst for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from harness import (
    roundsLine,
    say,
    sayProfiles,
    latencyCpuCells,
    cpuPerRequestCell,
    processCpuCell,
    rateCells,
    addRoundArguments,
    runMain,
    resolvePins,
    addCommonArguments,
    addWorkersArgument,
    LOOPBACK,
    BenchError,
    NginxBackends,
    ProcessGroup,
    formatTable,
    fileTail,
    findExecutable,
    freePort,
    haproxyConfig,
    humanBytes,
    lbproxyArgv,
    lbproxyConfig,
    lbproxyEnv,
    makePayload,
    makeWorkdir,
    pinned,
    profileWhileLoading,
    reactorInLog,
    runWrk,
    topFunctions,
    besidePython,
    toolVersion,
    verifyBody,
    waitForPort,
    writeResults,
    measureRounds,
    goalLines,
)

TARGETS = ("direct", "haproxy", "lbproxy")
PAYLOADS = (makePayload("100B", 100), makePayload("1MiB", 1024 * 1024))


@dataclass(frozen=True)
class Load:
    """
    One kind of load: its name in the report, the payload asked for, and
    wrk's extra headers.
    """

    name: str
    payload: str
    headers: tuple[str, ...] = ()


LOADS = {
    load.name: load
    for load in (
        Load("100B", "100B"),
        Load("1MiB", "1MiB"),
        # A new connection, to the proxy and from it to a server, for
        # each request: what a proxy's connection setup costs.
        Load("close", "100B", ("Connection: close",)),
    )
}
# Required lbproxy/HAProxy requests-per-second ratio, by load.
GOALS = {"100B": 0.8, "1MiB": 1.0, "close": 0.6}


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare lbproxy's TCP mode with HAProxy and a direct "
        "connection on loopback (wrk against nginx)."
    )
    addRoundArguments(parser, run="wrk run", each="load")
    parser.add_argument(
        "--connections", type=int, default=50, help="wrk keep-alive connections (default 50)"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--targets", default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)} (default all)",
    )
    parser.add_argument(
        "--loads", default=",".join(LOADS),
        help=f"comma-separated subset of {','.join(LOADS)} (default all; close: "
        "a new connection per request, wrk -H 'Connection: close')",
    )
    addCommonArguments(parser, "per load")
    addWorkersArgument(parser)
    args = parser.parse_args(argv)
    loads = [name.strip() for name in args.loads.split(",") if name.strip()]
    if not loads or any(name not in LOADS for name in loads):
        parser.error(f"--loads: expected names from {','.join(LOADS)}, got {args.loads!r}")
    args.loads = [LOADS[name] for name in LOADS if name in loads]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        parser.error(f"--targets: expected names from {','.join(TARGETS)}, got {args.targets!r}")
    args.targets = [t for t in TARGETS if t in targets]
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.connections < 1 or args.workers < 1:
        parser.error("--rounds, --duration, --connections and --workers must be positive")
    if args.profile and "lbproxy" not in args.targets:
        parser.error("--profile needs the lbproxy target")
    if args.profile and args.workers > 1:
        parser.error("--profile samples one process: use it with --workers 1")
    resolvePins(args)
    return args


def run(args: argparse.Namespace) -> int:
    workdir = makeWorkdir("lbproxy-bench-tcp-", args.keep_workdir)
    with ProcessGroup(workdir) as group:
        backendPorts = [freePort(), freePort()]
        servers = [("nginx1", backendPorts[0]), ("nginx2", backendPorts[1])]
        nginx = NginxBackends(workdir, backendPorts, PAYLOADS)
        group.start("nginx", pinned(nginx.argv(), args.backendCpus))
        for port in backendPorts:
            waitForPort(port, group)

        ports = {"direct": backendPorts[0]}
        pids: dict[str, int] = {}
        details: dict[str, str] = {}
        if "haproxy" in args.targets:
            ports["haproxy"] = freePort()
            path = os.path.join(workdir, "haproxy.cfg")
            with open(path, "w") as f:
                f.write(haproxyConfig(ports["haproxy"], servers))
            haproxy = findExecutable("haproxy")
            pids["haproxy"] = group.start(
                "haproxy", pinned([haproxy, "-db", "-f", path], args.proxyCpus)
            ).pid
            waitForPort(ports["haproxy"], group)
        if "lbproxy" in args.targets:
            ports["lbproxy"] = freePort()
            path = os.path.join(workdir, "lbproxy.toml")
            with open(path, "w") as f:
                f.write(lbproxyConfig(ports["lbproxy"], servers, workers=args.workers))
            twistd = args.twistd or besidePython("twistd")
            argv = lbproxyArgv(twistd, path, workdir, args.reactor)
            pids["lbproxy"] = group.start(
                "lbproxy", pinned(argv, args.proxyCpus), env=lbproxyEnv(args.lbproxy_source)
            ).pid
            try:
                waitForPort(ports["lbproxy"], group, timeout=30.0)
            except BenchError as e:
                raise BenchError(
                    f"{e}\ntwistd log:\n{fileTail(os.path.join(workdir, 'twistd.log'), 30)}"
                )
            details["lbproxyReactor"] = reactorInLog(workdir) or "unknown"
            if args.lbproxy_source:
                details["lbproxyRevision"] = toolVersion(
                    ["git", "-C", args.lbproxy_source, "describe", "--always", "--dirty"]
                )
            say(f"lbproxy: {' '.join(argv)}")
            say(f"lbproxy reactor: {details['lbproxyReactor']}")

        def url(target: str, payload: str, port: int | None = None) -> str:
            return f"http://{LOOPBACK}:{port or ports[target]}/{payload}"

        # One request per target and payload, on fresh connections; twice
        # through each proxy so round robin reaches both backends.
        for payload in PAYLOADS:
            for port in backendPorts:
                verifyBody(url("direct", payload.name, port), payload.body)
            for target in args.targets:
                if target != "direct":
                    for _ in servers:
                        verifyBody(url(target, payload.name), payload.body)
        say(f"verified: every target returns the expected {', '.join(p.name for p in PAYLOADS)} bodies")

        def measure(target: str, load: str, duration: float = args.duration):
            group.checkAlive()
            return runWrk(
                url(target, LOADS[load].payload),
                duration,
                args.connections,
                threads=args.threads,
                cpus=args.loadCpus,
                measuredPid=pids.get(target),
                headers=LOADS[load].headers,
            )

        series, info, pins, elapsed, loadAfter = measureRounds(
            args, [load.name for load in args.loads], args.targets, measure, say,
            group=group, details=details, pinRoles=("wrk", "nginx"),
            tools=(
                ("haproxy", [findExecutable("haproxy"), "-v"]),
                ("nginx", [findExecutable("nginx"), "-v"]),
                ("wrk", [findExecutable("wrk"), "--version"]),
            ),
            detailsLabel="details",
        )
        profiles = []
        if args.profile:
            profiles = profileLbproxy(args, pids["lbproxy"], url)

    sayProfiles(profiles)
    say("")
    say(report(series, args))
    say(roundsLine(args.rounds, args.duration, elapsed, loadAfter))
    writeResults(
        args, "tcp", info, loadAfter,
        {
            "connections": args.connections,
            "threads": args.threads,
            "pin": pins,
            "reactor": args.reactor,
            "lbproxyWorkers": args.workers,
        },
        details, series, ratios(series),
    )
    return 0


def profileLbproxy(args: argparse.Namespace, pid: int, url) -> list:
    """
    One more run of each load on lbproxy, sampled by py-spy.
    """
    pySpy = besidePython("py-spy")
    os.makedirs(args.profile, exist_ok=True)
    profiles = []
    for load in args.loads:
        kind = "native" if args.profile_native else "python"
        path = os.path.join(args.profile, f"lbproxy-tcp-{load.name}-{kind}.collapsed")
        say(f"profiling lbproxy with the {load.name} load for {args.duration:g}s")
        result = profileWhileLoading(
            pid, url("lbproxy", load.payload), args.duration, args.connections,
            path, pySpy, loadCpus=args.loadCpus, native=args.profile_native,
            headers=load.headers,
        )
        profiles.append((load.name, path, result, topFunctions(path)))
    return profiles


def ratios(series) -> dict:
    """
    lbproxy/HAProxy median requests/s by load, with the goal and whether
    it was met.
    """
    out = {}
    for name in LOADS:
        ours = series.get(("lbproxy", name))
        theirs = series.get(("haproxy", name))
        if ours is None or theirs is None:
            continue
        ratio = ours.median() / theirs.median() if theirs.median() else 0.0
        goal = GOALS[name]
        out[name] = {"ratio": ratio, "goal": goal, "met": ratio >= goal}
    return out


def report(series, args) -> str:
    rows = []
    for load in args.loads:
        for target in args.targets:
            s = series[(target, load.name)]
            errors = sum(r.socketErrors + r.non2xx for r in s.runs)
            rows.append([
                load.name,
                target,
                *rateCells(s),
                humanBytes(s.median("bytesPerSecond")) + "/s",
                *latencyCpuCells(s),
                processCpuCell(s),
                cpuPerRequestCell(s),
                str(errors),
            ])
    table = formatTable(
        ["load", "target", "median req/s", "min", "max", "spread",
         "throughput", "p99 ms", "proxy CPU", "per process", "µs/req", "errors"],
        rows,
    )
    lines = [table]
    found = ratios(series)
    lines.extend(goalLines(
        (f"lbproxy/HAProxy {name:>5}: {r['ratio']:.2f}x  (goal >= {r['goal']:.1f}x)", r["met"])
        for name, r in found.items()
    ))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    return runMain("run_tcp", parseArgs, run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
