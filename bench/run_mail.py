"""
IMAP through lbproxy against IMAP straight to Dovecot, on loopback:
whole sessions per second (connect, LOGIN, SELECT INBOX, LOGOUT) and
large-FETCH throughput (MB/s of a 5 MiB message fetched over and over).

Run from the repository root, as root (Dovecot's mail processes change
uid), with the interpreter that has Twisted:

    python bench/run_mail.py                  # 5 rounds of 5 s per target
    python bench/run_mail.py --rounds 3 --duration 3 --json mail.json

See bench/README.rst for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import imaplib
import os
import sys

from harness import (
    roundsLine,
    say,
    latencyCpuCells,
    rateCells,
    addRoundArguments,
    runMain,
    resolvePins,
    BenchError,
    DovecotBackend,
    ProcessGroup,
    addCommonArguments,
    besidePython,
    fileTail,
    findExecutable,
    formatTable,
    freePort,
    humanBytes,
    lbproxyArgv,
    lbproxyConfig,
    lbproxyEnv,
    makeWorkdir,
    pinned,
    reactorInLog,
    runImapLoad,
    toolVersion,
    waitForPort,
    writeResults,
    LOOPBACK,
    measureRounds,
)

TARGETS = ("direct", "lbproxy")
SCENARIOS = ("sessions", "fetch")
#: Required lbproxy/direct ratio, by scenario (sessions/s, bytes/s).
GOALS = {"sessions": 0.7, "fetch": 0.8}


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare IMAP through lbproxy with IMAP straight to Dovecot on loopback."
    )
    addRoundArguments(parser)
    parser.add_argument(
        "--sessions-concurrency", type=int, default=16,
        help="sessions in flight at once in the sessions scenario (default 16)",
    )
    parser.add_argument(
        "--fetch-concurrency", type=int, default=2,
        help="logged-in connections fetching at once in the fetch scenario (default 2)",
    )
    parser.add_argument(
        "--max-requests", type=int, default=1_000_000,
        help="cap on sessions or FETCHes per run, besides --duration",
    )
    parser.add_argument(
        "--client-address", choices=("none", "id"), default="id",
        help="how lbproxy tells Dovecot the client's address (default id: IMAP ID)",
    )
    parser.add_argument("--users", type=int, default=20, help="Dovecot users (default 20)")
    parser.add_argument(
        "--imap-processes", choices=("shared", "per-session"), default="per-session",
        help="a new Dovecot imap process per session, as Dovecot's default configuration "
        "runs (default), or imap processes serving many sessions each (logins then cost "
        "Dovecot little, and lbproxy's share of a session shows most)",
    )
    parser.add_argument(
        "--message-size", type=int, default=5 * 1024 * 1024,
        help="bytes of the fetched message (default 5 MiB)",
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default all)",
    )
    addCommonArguments(parser, "per scenario")
    args = parser.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not scenarios or any(s not in SCENARIOS for s in scenarios):
        parser.error(f"--scenarios: expected names from {','.join(SCENARIOS)}, got {args.scenarios!r}")
    args.scenarios = [s for s in SCENARIOS if s in scenarios]
    if (
        args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.users < 1
        or args.sessions_concurrency < 1 or args.fetch_concurrency < 1 or args.message_size < 1024
    ):
        parser.error("--rounds, --duration, --users, the concurrencies and --message-size must be positive")
    if args.profile:
        parser.error("--profile is not supported by the mail benchmark")
    resolvePins(args)
    return args


def verify(port: int, backend: DovecotBackend, expectedGreeting: bytes) -> None:
    """
    Log in through C{port} with imaplib, check the greeting and that the
    large message comes back whole.
    """
    client = imaplib.IMAP4(LOOPBACK, port, timeout=30)
    try:
        if expectedGreeting not in client.welcome:
            raise BenchError(f"port {port}: unexpected greeting {client.welcome!r}")
        client.login("user0", backend.password)
        typ, data = client.select("INBOX")
        if typ != "OK" or int(data[0]) != backend.largeNumber:
            raise BenchError(f"port {port}: SELECT INBOX answered {typ} {data}")
        typ, data = client.fetch(str(backend.largeNumber), "(BODY.PEEK[])")
        body = data[0][1] if typ == "OK" else b""
        expected = backend.largeMessage().replace(b"\n", b"\r\n")
        if body != expected:
            raise BenchError(f"port {port}: FETCH returned {len(body)} bytes, expected {len(expected)}")
    except imaplib.IMAP4.error as e:
        raise BenchError(f"port {port}: {e}")
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def run(args: argparse.Namespace) -> int:
    workdir = makeWorkdir("lbproxy-bench-mail-", args.keep_workdir)
    with ProcessGroup(workdir) as group:
        dovecotPort = freePort()
        backend = DovecotBackend(
            workdir,
            dovecotPort,
            userCount=args.users,
            largeSize=args.message_size,
            sharedImapProcesses=args.imap_processes == "shared",
        )
        group.start("dovecot", pinned(backend.argv(), args.backendCpus))
        try:
            waitForPort(dovecotPort, group)
        except BenchError as e:
            raise BenchError(f"{e}\ndovecot log:\n{fileTail(backend.logPath, 30)}")
        ports = {"direct": dovecotPort, "lbproxy": freePort()}
        details: dict[str, str] = {}
        path = os.path.join(workdir, "lbproxy.toml")
        with open(path, "w") as f:
            f.write(
                lbproxyConfig(
                    ports["lbproxy"],
                    [("dovecot", dovecotPort)],
                    mode="imap",
                    selector='{ name = "hash", key = "user" }',
                    poolLines=[f'client_address = "{args.client_address}"'],
                )
            )
        twistd = args.twistd or besidePython("twistd")
        argv = lbproxyArgv(twistd, path, workdir, args.reactor)
        pids = {
            "lbproxy": group.start(
                "lbproxy", pinned(argv, args.proxyCpus), env=lbproxyEnv(args.lbproxy_source)
            ).pid
        }
        try:
            waitForPort(ports["lbproxy"], group, timeout=30.0)
        except BenchError as e:
            raise BenchError(f"{e}\ntwistd log:\n{fileTail(os.path.join(workdir, 'twistd.log'), 30)}")
        details["lbproxyReactor"] = reactorInLog(workdir) or "unknown"
        if args.lbproxy_source:
            details["lbproxyRevision"] = toolVersion(
                ["git", "-C", args.lbproxy_source, "describe", "--always", "--dirty"]
            )
        details["dovecotVersion"] = toolVersion([findExecutable("dovecot"), "--version"])
        say(f"lbproxy: {' '.join(argv)}")
        say(f"lbproxy reactor: {details['lbproxyReactor']}")

        verify(ports["direct"], backend, b"Dovecot")
        verify(ports["lbproxy"], backend, b"lbproxy")
        say(f"verified: both targets log in and return the {humanBytes(backend.largeWireSize)} message whole")

        concurrency = {"sessions": args.sessions_concurrency, "fetch": args.fetch_concurrency}

        def measure(target: str, scenario: str, duration: float = args.duration):
            group.checkAlive()
            return runImapLoad(
                scenario,
                ports[target],
                duration,
                concurrency[scenario],
                backend,
                cpus=args.loadCpus,
                measuredPid=pids.get(target),
                maxRequests=args.max_requests,
            )

        series, info, pins, elapsed, loadAfter = measureRounds(
            args, args.scenarios, TARGETS, measure, say,
            group=group, details=details, pinRoles=("load", "dovecot"),
            detailsLabel="details",
        )

    say("")
    say(report(series, args))
    say(roundsLine(args.rounds, args.duration, elapsed, loadAfter))
    writeResults(
        args, "mail", info, loadAfter,
        {
            "sessionsConcurrency": args.sessions_concurrency,
            "fetchConcurrency": args.fetch_concurrency,
            "clientAddress": args.client_address,
            "users": args.users,
            "imapProcesses": args.imap_processes,
            "messageSize": args.message_size,
            "pin": pins,
            "reactor": args.reactor,
        },
        details, series, ratios(series, args.scenarios),
    )
    return 0


def figure(scenario: str) -> str:
    """
    The attribute compared for C{scenario}: sessions per second, or bytes
    per second of FETCH.
    """
    return "requestsPerSecond" if scenario == "sessions" else "bytesPerSecond"


def ratios(series, scenarios) -> dict:
    """
    lbproxy/direct medians by scenario, with the goal and whether it was
    met.
    """
    out = {}
    for scenario in scenarios:
        attribute = figure(scenario)
        ours = series[("lbproxy", scenario)].median(attribute)
        theirs = series[("direct", scenario)].median(attribute)
        ratio = ours / theirs if theirs else 0.0
        goal = GOALS[scenario]
        out[scenario] = {"ratio": ratio, "goal": goal, "met": ratio >= goal}
    return out


def report(series, args) -> str:
    rows = []
    for scenario in args.scenarios:
        for target in TARGETS:
            s = series[(target, scenario)]
            rows.append([
                scenario,
                target,
                *rateCells(s),
                f"{s.median('bytesPerSecond') / 1e6:.0f} MB/s" if scenario == "fetch" else "-",
                *latencyCpuCells(s),
                str(sum(r.non2xx for r in s.runs)),
            ])
    table = formatTable(
        ["scenario", "target", "median /s", "min", "max", "spread",
         "throughput", "p99 ms", "proxy CPU", "errors"],
        rows,
    )
    lines = [table, ""]
    for name, r in ratios(series, args.scenarios).items():
        unit = "sessions/s" if name == "sessions" else "MB/s"
        verdict = "PASS" if r["met"] else "MISS"
        lines.append(
            f"lbproxy/direct {name:>8} ({unit}): {r['ratio']:.2f}x  (goal >= {r['goal']:.1f}x)  {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    return runMain("run_mail", parseArgs, run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
