"""
HTTPS (TLS termination) throughput: lbproxy's http mode with a [tls] table
against HAProxy's mode http with "bind ... ssl", with the same certificate,
in front of the same two nginx backends on loopback, for ECDSA P-256 and
RSA 2048 certificates:

  - keep-alive requests per second (wrk over HTTPS, 50 connections);
  - full handshakes per second (a new TLS connection, never resumed, for
    each request: parallel "openssl s_time -new" clients).

Run from the repository root with the interpreter that has Twisted:

    python bench/run_https.py                 # 5 rounds of 5 s per target
    python bench/run_https.py --kinds ec --rounds 3 --json https.json

See bench/README.rst for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import os
import sys

from harness import (
    roundsLine,
    say,
    sayProfiles,
    latencyCpuCells,
    rateCells,
    addRoundArguments,
    runMain,
    LOOPBACK,
    resolvePins,
    BenchError,
    NginxBackends,
    ProcessGroup,
    addCommonArguments,
    addLogRequestsArgument,
    besidePython,
    fileTail,
    findExecutable,
    formatTable,
    freePort,
    haproxyConfig,
    lbproxyArgv,
    lbproxyConfig,
    lbproxyEnv,
    makeCertificate,
    makePayload,
    makeWorkdir,
    pinned,
    profileWhileLoading,
    reactorInLog,
    runHandshakes,
    runWrk,
    toolVersion,
    topFunctions,
    verifyBody,
    waitForPort,
    writeResults,
    measureRounds,
)

TARGETS = ("haproxy", "lbproxy")
KINDS = ("ec", "rsa")
MODES = ("keepalive", "handshake")
PAYLOAD = makePayload("100B", 100)
# (mode, goal): lbproxy/HAProxy must reach goal.
GOALS = (("keepalive", 0.4), ("handshake", 0.7))
REUSE_MAX_IDLE = 64


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare lbproxy's TLS termination with HAProxy's on loopback "
        "(keep-alive requests and full handshakes, ECDSA and RSA certificates)."
    )
    addRoundArguments(parser)
    parser.add_argument(
        "--connections", type=int, default=50, help="wrk connections, keep-alive (default 50)"
    )
    parser.add_argument(
        "--clients", type=int, default=8,
        help="parallel openssl s_time clients for handshakes (default 8)",
    )
    parser.add_argument(
        "--kinds", default=",".join(KINDS),
        help="certificate key kinds: ec (P-256), rsa (2048) (default both)",
    )
    parser.add_argument(
        "--modes", default=",".join(MODES),
        help=f"comma-separated subset of {','.join(MODES)} (default both)",
    )
    parser.add_argument(
        "--targets", default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)} (default both)",
    )
    addCommonArguments(parser, "per scenario")
    addLogRequestsArgument(parser)
    args = parser.parse_args(argv)
    for name, allowed in (("kinds", KINDS), ("modes", MODES), ("targets", TARGETS)):
        chosen = [x.strip() for x in getattr(args, name).split(",") if x.strip()]
        if not chosen or any(x not in allowed for x in chosen):
            parser.error(f"--{name}: expected names from {','.join(allowed)}")
        setattr(args, name, [x for x in allowed if x in chosen])
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0 or args.connections < 1 or args.clients < 1:
        parser.error("--rounds, --connections and --clients must be positive, --duration at least 1")
    if args.profile and "lbproxy" not in args.targets:
        parser.error("--profile needs the lbproxy target")
    # One scenario per mode and certificate kind, e.g. "keepalive-ec".
    args.scenarios = [f"{mode}-{kind}" for kind in args.kinds for mode in args.modes]
    resolvePins(args)
    return args


def startLbproxy(args, group: ProcessGroup, workdir: str, name: str, config: str, port: int):
    path = os.path.join(workdir, f"{name}.toml")
    with open(path, "w") as f:
        f.write(config)
    twistd = args.twistd or besidePython("twistd")
    argv = lbproxyArgv(twistd, path, workdir, args.reactor, name=name)
    pid = group.start(name, pinned(argv, args.proxyCpus), env=lbproxyEnv(args.lbproxy_source)).pid
    try:
        waitForPort(port, group, timeout=30.0)
    except BenchError as e:
        raise BenchError(f"{e}\ntwistd log:\n{fileTail(os.path.join(workdir, name + '.log'), 30)}")
    reactor = reactorInLog(workdir, name) or "unknown"
    say(f"{name}: {' '.join(argv)}")
    say(f"{name} reactor: {reactor}")
    return pid, reactor


def run(args: argparse.Namespace) -> int:
    workdir = makeWorkdir("lbproxy-bench-https-", args.keep_workdir)
    findExecutable("openssl")
    with ProcessGroup(workdir) as group:
        backendPorts = [freePort(), freePort()]
        servers = [("nginx1", backendPorts[0]), ("nginx2", backendPorts[1])]
        for index, port in enumerate(backendPorts, 1):
            backend = NginxBackends(workdir, [port], [PAYLOAD], name=f"nginx{index}")
            group.start(f"nginx{index}", pinned(backend.argv(), args.backendCpus))
        for port in backendPorts:
            waitForPort(port, group)

        # (target, kind) -> port and pid: one process per target and
        # certificate, each with the same certificate as its rival.
        ports: dict[tuple[str, str], int] = {}
        pids: dict[tuple[str, str], int] = {}
        details: dict[str, str] = {}
        certificates = {}
        for kind in args.kinds:
            files = certificates[kind] = makeCertificate(os.path.join(workdir, "certs"), kind)
            if "haproxy" in args.targets:
                port = ports[("haproxy", kind)] = freePort()
                path = os.path.join(workdir, f"haproxy-{kind}.cfg")
                with open(path, "w") as f:
                    f.write(haproxyConfig(port, servers, mode="http", tlsBundle=files.bundle))
                pids[("haproxy", kind)] = group.start(
                    f"haproxy-{kind}",
                    pinned([findExecutable("haproxy"), "-db", "-f", path], args.proxyCpus),
                ).pid
                waitForPort(port, group)
            if "lbproxy" in args.targets:
                port = ports[("lbproxy", kind)] = freePort()
                config = lbproxyConfig(
                    port, servers, mode="http",
                    accessLog=os.path.join(workdir, f"access-{kind}.log"),
                    reuseMaxIdle=REUSE_MAX_IDLE, reuseMode="always", tls=files,
                    logRequests=args.log_requests,
                )
                pids[("lbproxy", kind)], details[f"lbproxyReactor-{kind}"] = startLbproxy(
                    args, group, workdir, f"lbproxy-{kind}", config, port
                )
        if "lbproxy" in args.targets:
            details["lbproxyLogRequests"] = args.log_requests
        if args.lbproxy_source and "lbproxy" in args.targets:
            details["lbproxyRevision"] = toolVersion(
                ["git", "-C", args.lbproxy_source, "describe", "--always", "--dirty"]
            )

        def url(target: str, kind: str) -> str:
            return f"https://{LOOPBACK}:{ports[(target, kind)]}{PAYLOAD.path}"

        for target in args.targets:
            for kind in args.kinds:
                for _ in servers:
                    verifyBody(url(target, kind), PAYLOAD.body, cacert=certificates[kind].cert)
        say(f"verified: every target returns the expected {PAYLOAD.name} body over HTTPS")

        def measure(target: str, scenario: str, duration: float = args.duration):
            group.checkAlive()
            mode, kind = scenario.split("-")
            pid = pids[(target, kind)]
            if mode == "keepalive":
                return runWrk(
                    url(target, kind), duration, args.connections,
                    cpus=args.loadCpus, measuredPid=pid,
                )
            return runHandshakes(
                LOOPBACK, ports[(target, kind)], PAYLOAD.path, duration, args.clients,
                cpus=args.loadCpus, measuredPid=pid,
            )

        series, info, pins, elapsed, loadAfter = measureRounds(
            args, args.scenarios, args.targets, measure, say,
            group=group, details=details, pinRoles=("load", "nginx"),
            tools=(
                ("haproxy", [findExecutable("haproxy"), "-v"]),
                ("wrk", [findExecutable("wrk"), "--version"]),
                ("openssl", [findExecutable("openssl"), "version"]),
            ),
        )
        profiles = []
        if args.profile:
            profiles = profileLbproxy(args, pids, url)

    sayProfiles(profiles)
    say("")
    say(report(series, args))
    say(roundsLine(args.rounds, args.duration, elapsed, loadAfter))
    writeResults(
        args, "https", info, loadAfter,
        {
            "connections": args.connections,
            "clients": args.clients,
            "payload": PAYLOAD.name,
            "scenarios": args.scenarios,
            "pin": pins,
            "reactor": args.reactor,
            "lbproxyReuseMaxIdle": REUSE_MAX_IDLE,
        },
        details, series, ratios(series),
    )
    return 0


def profileLbproxy(args: argparse.Namespace, pids: dict, url) -> list:
    """
    One more keep-alive run per certificate kind on lbproxy, sampled by
    py-spy (handshakes are OpenSSL's time, which py-spy does not see).
    """
    pySpy = besidePython("py-spy")
    os.makedirs(args.profile, exist_ok=True)
    profiles = []
    for kind in args.kinds:
        name = f"keepalive-{kind}"
        path = os.path.join(
            args.profile, f"lbproxy-https-{name}-{'native' if args.profile_native else 'python'}.collapsed"
        )
        say(f"profiling lbproxy, {name}, for {args.duration:g}s")
        result = profileWhileLoading(
            pids[("lbproxy", kind)], url("lbproxy", kind), args.duration, args.connections,
            path, pySpy, loadCpus=args.loadCpus, native=args.profile_native,
        )
        profiles.append((name, path, result, topFunctions(path)))
    return profiles


def ratios(series) -> list[dict]:
    """
    lbproxy's median over HAProxy's per scenario, with the goal of its mode.
    """
    goals = dict(GOALS)
    out = []
    for (target, scenario), ours in sorted(series.items()):
        if target != "lbproxy":
            continue
        theirs = series.get(("haproxy", scenario))
        if theirs is None:
            continue
        goal = goals[scenario.split("-")[0]]
        ratio = ours.median() / theirs.median() if theirs.median() else 0.0
        out.append({
            "scenario": scenario,
            "ours": "lbproxy",
            "theirs": "haproxy",
            "ratio": ratio,
            "goal": goal,
            "met": ratio >= goal,
        })
    return out


def report(series, args) -> str:
    rows = []
    for scenario in args.scenarios:
        for target in args.targets:
            s = series[(target, scenario)]
            errors = sum(r.socketErrors + r.non2xx for r in s.runs)
            rows.append([
                scenario,
                target,
                *rateCells(s),
                *latencyCpuCells(s),
                str(errors),
            ])
    table = formatTable(
        ["scenario", "target", "median /s", "min", "max", "spread", "p99 ms", "proxy CPU", "errors"],
        rows,
    )
    lines = [table, "", "(keepalive: requests/s; handshake: new TLS connections/s, one request each)"]
    found = ratios(series)
    if found:
        lines.append("")
        for r in found:
            verdict = "PASS" if r["met"] else "MISS"
            lines.append(
                f"{r['scenario']:<13} lbproxy/haproxy: {r['ratio']:.2f}x  "
                f"(goal >= {r['goal']:g}x)  {verdict}"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    return runMain("run_https", parseArgs, run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
