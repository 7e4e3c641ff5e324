"""
Building blocks for lbproxy's loopback benchmarks.

Each benchmark script (run_tcp.py now; HTTP, TLS and IMAP later) starts its
backends and proxies as real subprocesses on 127.0.0.1, checks that every
target answers with the expected bytes, then loads the targets in
alternating rounds with a bounded load generator and reports medians.

Everything here is bounded: each load run has a fixed duration and a hard
subprocess timeout, every readiness wait has a deadline, and every process
started through L{ProcessGroup} is killed (its whole process group) when the
group closes, when the interpreter exits, or on SIGTERM/SIGINT.

Only the standard library is used, so any Python 3.11+ can run the scripts;
lbproxy itself runs under whatever interpreter owns the C{twistd} given.

Script modules are named C{run_*.py}: a script's own directory comes first
on C{sys.path}, so a name such as C{http.py} would shadow the standard
library module of that name.
"""

from __future__ import annotations

import argparse

import atexit
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

#: CPU lists for (load generator, proxy, backend) by --pin preset.
PIN_PRESETS = {
    "none": (None, None, None),
    "split": ("0", "1", "0"),
}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def addLogRequestsArgument(parser: argparse.ArgumentParser) -> None:
    """
    The HTTP benchmarks' choice of which requests lbproxy logs.
    """
    parser.add_argument(
        "--log-requests", choices=("errors", "all"), default="errors",
        help="lbproxy's log_requests: 'errors' (default) writes no line for a normal "
        "request, like the other targets, which log nothing per request; 'all' "
        "writes one per request",
    )


def addRoundArguments(
    parser: argparse.ArgumentParser, run: str = "run", each: str = "scenario"
) -> None:
    """
    The options that say how long a benchmark loads: C{--rounds} of
    L{alternatingRounds}, C{--duration} of each C{run} (e.g. "wrk run") and
    C{--warmup}, unmeasured load per target and C{each} (e.g. "payload").
    """
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument(
        "--duration", type=float, default=5.0, help=f"seconds per {run} (default 5)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0,
        help=f"seconds of unmeasured load per target and {each} first (default 2, 0 = none)",
    )


def addCommonArguments(parser: argparse.ArgumentParser, profiled: str) -> None:
    """
    The options every load benchmark script takes: CPU pinning, which
    lbproxy to run and how, JSON output, profiling (of C{profiled}, e.g.
    "per payload") and keeping the work directory.
    """
    parser.add_argument(
        "--pin", choices=sorted(PIN_PRESETS), default="none",
        help="CPU pinning with taskset: 'none' lets the scheduler place "
        "everything; 'split' puts wrk and nginx on CPU 0 and the proxy on "
        "CPU 1 (default none: steadier here, see bench/README.rst)",
    )
    parser.add_argument("--load-cpus", help="taskset CPU list for wrk (overrides --pin)")
    parser.add_argument("--proxy-cpus", help="taskset CPU list for the proxies (overrides --pin)")
    parser.add_argument("--backend-cpus", help="taskset CPU list for nginx (overrides --pin)")
    addLbproxyArguments(parser)
    parser.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    parser.add_argument(
        "--profile", metavar="DIR",
        help=f"after the rounds, load lbproxy once more {profiled} while py-spy "
        "samples it; write collapsed stacks to DIR and print the top functions",
    )
    parser.add_argument(
        "--profile-native", action="store_true",
        help="with --profile: include C frames (syscalls), at a higher sampling cost",
    )
    addKeepWorkdirArgument(parser)


def addLbproxyArguments(parser: argparse.ArgumentParser) -> None:
    """
    Which lbproxy to run and how: C{--twistd}, C{--lbproxy-source},
    C{--reactor} (what L{startLbproxy} reads).
    """
    parser.add_argument(
        "--twistd", default=None,
        help="twistd to run lbproxy with (default: next to this Python, else on PATH)",
    )
    parser.add_argument(
        "--lbproxy-source", default=REPO,
        help="directory put first on twistd's PYTHONPATH (default: this checkout; "
        "'' to use the installed lbproxy)",
    )
    parser.add_argument(
        "--reactor", default=None,
        help="twistd reactor name for lbproxy, e.g. 'epoll' for Twisted's own "
        "(default: none given, so lbproxy runs on the reactor it installs itself)",
    )


def addKeepWorkdirArgument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-workdir", action="store_true",
        help="keep the temporary directory with configs and logs",
    )


def resolvePins(args: argparse.Namespace) -> None:
    """
    Set C{args.loadCpus}, C{args.proxyCpus} and C{args.backendCpus} from
    the C{--pin} preset that L{addCommonArguments} defines, each overridden
    by its own C{--load-cpus}, C{--proxy-cpus} or C{--backend-cpus} when given.
    """
    load, proxy, backend = PIN_PRESETS[args.pin]
    args.loadCpus = args.load_cpus if args.load_cpus is not None else load
    args.proxyCpus = args.proxy_cpus if args.proxy_cpus is not None else proxy
    args.backendCpus = args.backend_cpus if args.backend_cpus is not None else backend


LOOPBACK = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


class BenchError(Exception):
    """
    A benchmark could not be set up or run; the message says why.
    """


class ProcessGroup:
    """
    The subprocesses of one benchmark run.

    Each child starts in its own session, so stopping it also stops anything
    it forked (nginx's worker). L{close} runs at most once, from a C{with}
    block, from C{atexit}, or after SIGTERM/SIGINT (turned into
    C{SystemExit} so C{finally} blocks run).
    """

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self._closed = False
        atexit.register(self.close)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._onSignal)

    def _onSignal(self, signum: int, frame) -> None:
        raise SystemExit(128 + signum)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(
        self, name: str, argv: Sequence[str], env: dict | None = None
    ) -> subprocess.Popen:
        """
        Start C{argv} with its output in C{workdir/NAME.log}.
        """
        logPath = os.path.join(self.workdir, f"{name}.log")
        logFile = open(logPath, "wb")
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=logFile,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
            )
        finally:
            logFile.close()
        self.processes.append((name, process))
        return process

    def logTail(self, name: str, lines: int = 20) -> str:
        """
        The last C{lines} lines a child wrote, for error messages.
        """
        return fileTail(os.path.join(self.workdir, f"{name}.log"), lines)

    def checkAlive(self) -> None:
        """
        Raise L{BenchError} naming the first child that has exited.
        """
        for name, process in self.processes:
            if process.poll() is not None:
                raise BenchError(
                    f"{name} exited with status {process.returncode}:\n"
                    + self.logTail(name)
                )

    def stop(self, process: subprocess.Popen, grace: float = 10.0) -> int | None:
        """
        Stop one child before the others (a target started afresh for each
        run): SIGTERM to its process group, SIGKILL after C{grace} seconds;
        it is then no longer the group's. Returns its exit status.
        """
        _signalGroup(process, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        _signalGroup(process, signal.SIGKILL)
        try:
            process.wait(2.0)
        except subprocess.TimeoutExpired:
            pass
        self.processes = [(n, p) for n, p in self.processes if p is not process]
        return process.returncode

    def close(self, grace: float = 5.0) -> None:
        """
        Stop every child: SIGTERM to its process group, SIGKILL after
        C{grace} seconds.
        """
        if self._closed:
            return
        self._closed = True
        for _, process in self.processes:
            _signalGroup(process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _, process in self.processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _, process in self.processes:
            # The group may hold children that outlived their parent.
            _signalGroup(process, signal.SIGKILL)
            try:
                process.wait(2.0)
            except subprocess.TimeoutExpired:
                pass


def fileTail(path: str, lines: int = 20) -> str:
    """
    The last C{lines} lines of the file at C{path}, or a note that there is
    none.
    """
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return f"({path} cannot be read)"
    return "\n".join(text.splitlines()[-lines:])


def toolVersion(argv: Sequence[str]) -> str:
    """
    The first line C{argv} (a C{--version}-style command) prints on stdout
    or stderr, or an empty string.
    """
    try:
        result = subprocess.run(list(argv), capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (result.stdout or result.stderr).decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else ""


def _signalGroup(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def makeWorkdir(prefix: str, keep: bool) -> str:
    """
    A fresh temporary directory, removed at exit unless C{keep}.
    """
    path = tempfile.mkdtemp(prefix=prefix)
    # nginx started as root serves files as an unprivileged worker user.
    os.chmod(path, 0o755)
    if not keep:
        atexit.register(shutil.rmtree, path, True)
    return path


def findExecutable(name: str, *extraDirs: str) -> str:
    """
    The path of C{name} on PATH, in /usr/sbin or in C{extraDirs}.
    """
    path = shutil.which(name) or shutil.which(
        name, path=os.pathsep.join((*extraDirs, "/usr/sbin", "/usr/local/sbin", "/sbin"))
    )
    if path is None:
        raise BenchError(f"{name} not found on PATH")
    return path


def _ephemeralRange() -> tuple[int, int]:
    """
    The kernel's range for automatically chosen local ports (Linux's
    C{ip_local_port_range}; the Linux default where that cannot be read).
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(word) for word in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _portCandidates() -> range:
    low, high = _ephemeralRange()
    if low - 10000 >= 2000:
        return range(10000, low)
    return range(high + 1, 65536)


_PORTS = _portCandidates()
#: Where this process's next port search starts: a start that differs
#: between processes, then ports in turn, so no port is handed out twice
#: while it is still unbound.
_portCursor = [os.getpid() * 7919 % len(_PORTS)]


def freePort(host: str = LOOPBACK) -> int:
    """
    A TCP port that is free on C{host} now, for a listener started later.

    The port is outside the kernel's ephemeral range: a port taken from
    that range (by binding port 0) can be given to any outgoing connection
    before the caller listens on it, and then the listen fails with
    EADDRINUSE. The probe binds without C{SO_REUSEADDR}, so a port with
    connections still in TIME_WAIT is passed over too.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(len(_PORTS)):
        port = _PORTS[_portCursor[0] % len(_PORTS)]
        _portCursor[0] += 1
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        return port
    raise BenchError(f"no free TCP port on {host} between {_PORTS.start} and {_PORTS.stop - 1}")


def waitForPort(
    port: int, group: ProcessGroup, timeout: float = 15.0, host: str = LOOPBACK
) -> None:
    """
    Wait until C{host:port} accepts a connection, failing early if a child
    has died.
    """
    deadline = time.monotonic() + timeout
    while True:
        group.checkAlive()
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"nothing listens on {host}:{port} after {timeout:g}s")
        time.sleep(0.05)


def pinned(argv: Sequence[str], cpus: str | None) -> list[str]:
    """
    C{argv} run under C{taskset -c CPUS}, or unchanged when C{cpus} is None.

    taskset execs the command, so the process id stays the command's own.
    """
    if cpus is None:
        return list(argv)
    return [findExecutable("taskset"), "-c", cpus, *argv]


def cpuSeconds(pid: int) -> tuple[float, float]:
    """
    User and system CPU seconds consumed so far by process C{pid} (all of
    its threads), from /proc.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read().decode()
    # The command name in parentheses may contain spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


@dataclass(frozen=True)
class MemoryUse:
    """
    A process's resident memory, in KiB: C{rss} (its resident pages,
    /proc/PID/status VmRSS) and C{pss} (the same with each page shared
    with other processes divided among them, /proc/PID/smaps_rollup), or
    None where the kernel does not tell.
    """

    rss: int
    pss: int | None = None


def parseProcStatusKiB(text: str, key: str) -> int | None:
    """
    The C{key} field of a /proc/PID/status or smaps_rollup text (C{"VmRSS:
    1234 kB"}), in KiB; None when it is absent.
    """
    match = re.search(rf"^{re.escape(key)}:\s+(\d+) kB$", text, re.M)
    return int(match.group(1)) if match else None


def processMemory(pid: int) -> MemoryUse:
    """
    The resident memory of process C{pid} now (see L{MemoryUse}).
    """
    with open(f"/proc/{pid}/status") as f:
        rss = parseProcStatusKiB(f.read(), "VmRSS")
    if rss is None:
        raise BenchError(f"process {pid} has no VmRSS (a zombie?)")
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            pss = parseProcStatusKiB(f.read(), "Pss")
    except OSError:
        pss = None
    return MemoryUse(rss, pss)


def resetPeakMemory(pid: int) -> bool:
    """
    Reset the peak resident size (VmHWM) of process C{pid} to its
    resident size now (C{5} written to /proc/PID/clear_refs); False when
    the kernel does not allow it.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def peakMemory(pid: int) -> int:
    """
    The peak resident size (VmHWM) of process C{pid} in KiB: since it
    started, or since L{resetPeakMemory}.
    """
    with open(f"/proc/{pid}/status") as f:
        peak = parseProcStatusKiB(f.read(), "VmHWM")
    if peak is None:
        raise BenchError(f"process {pid} has no VmHWM (a zombie?)")
    return peak


def raiseOpenFileLimit(needed: int) -> int:
    """
    Raise this process's soft open-file limit (C{RLIMIT_NOFILE}) to at
    least C{needed}, and the hard limit too when that is below and the
    process may (root); never lower either. Returns the soft limit now.
    Subprocesses started afterwards inherit it.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        except (ValueError, OSError):
            raise BenchError(
                f"open-file limit {soft} (hard {hard}) is below the {needed} needed, "
                "and this process may not raise it: run as root or raise ulimit -n"
            )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed
def processTreeCpu(pid: int) -> dict[int, tuple[float, float]]:
    """
    User and system CPU seconds of process C{pid} and of its children
    (lbproxy's worker processes, with C{workers} above 1), by process id,
    C{pid} first; a child that has exited meanwhile is left out.
    """
    found = {pid: cpuSeconds(pid)}
    for child in childPids(pid):
        try:
            found[child] = cpuSeconds(child)
        except OSError:
            pass
    return found


def cpuShares(
    before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]], elapsed: float
) -> tuple[float, float, list[float]]:
    """
    The CPU shares (100 = one full core) used between two
    L{processTreeCpu} readings C{elapsed} seconds apart: in total, in the
    kernel, and by process (the first process first, then the others by
    process id). Only the processes present in both readings count.
    """
    total = system = 0.0
    each = []
    ordered = [pid for pid in after if pid in before]
    ordered = ordered[:1] + sorted(ordered[1:])
    for pid in ordered:
        user = after[pid][0] - before[pid][0]
        kernel = after[pid][1] - before[pid][1]
        total += user + kernel
        system += kernel
        each.append(100.0 * (user + kernel) / elapsed)
    return 100.0 * total / elapsed, 100.0 * system / elapsed, each


def addWorkersArgument(parser: argparse.ArgumentParser) -> None:
    """
    lbproxy's C{workers}: the processes serving its listeners.
    """
    parser.add_argument(
        "--workers", type=int, default=1,
        help="lbproxy's workers: N processes serving the listener beside the control "
        "process (default 1: one process); the proxy CPU is the sum of all of them",
    )


# ---------------------------------------------------------------------------
# Backends and proxies
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    """
    One static response body the backend serves at C{path}.
    """

    name: str
    path: str
    body: bytes



def nginxPreamble(prefix: str) -> str:
    """
    The start of a one-worker nginx config kept under C{prefix}, up to and
    including the opening of its C{http} block (with access logging off).
    """
    return f"""\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{
    worker_connections 4096;
    multi_accept on;
}}
http {{
    access_log off;
"""


def nginxTempPaths(temp: str) -> str:
    """
    The C{http}-block lines keeping nginx's temporary files under C{temp}.
    """
    return "".join(
        f"    {kind}_temp_path {temp}/{name};\n"
        for kind, name in (
            ("client_body", "client"),
            ("proxy", "proxy"),
            ("fastcgi", "fastcgi"),
            ("uwsgi", "uwsgi"),
            ("scgi", "scgi"),
        )
    )

def makePayload(name: str, size: int) -> Payload:
    """
    A deterministic body of C{size} bytes (printable, ends with a newline)
    served at C{/NAME}.
    """
    line = b"lbproxy benchmark payload 0123456789 abcdefghijklmnopqrstuvwxyz\n"
    body = (line * (size // len(line) + 1))[: size - 1] + b"\n"
    return Payload(name=name, path=f"/{name}", body=body)


class NginxBackends:
    """
    One nginx with a single worker process, listening on several loopback
    ports (the proxies' servers), serving static payloads.

    A single worker keeps the backend's CPU budget identical for every
    target: the direct path and the proxies all talk to the same process.
    Keep-alive is unbounded (C{keepalive_requests}) so a load run never
    reconnects, and there is no access log.
    """

    def __init__(
        self,
        workdir: str,
        ports: Sequence[int],
        payloads: Sequence[Payload],
        name: str = "nginx",
    ):
        self.prefix = os.path.join(workdir, name)
        self.ports = list(ports)
        self.payloads = list(payloads)

    def writeConfig(self) -> str:
        root = os.path.join(self.prefix, "html")
        for sub in ("html", "logs", "temp"):
            os.makedirs(os.path.join(self.prefix, sub), exist_ok=True)
        for payload in self.payloads:
            with open(os.path.join(root, payload.name), "wb") as f:
                f.write(payload.body)
        temp = os.path.join(self.prefix, "temp")
        listens = "\n".join(
            f"        listen {LOOPBACK}:{port} backlog=4096;" for port in self.ports
        )
        conf = f"""\
{nginxPreamble(self.prefix)}    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    default_type application/octet-stream;
{nginxTempPaths(temp)}    server {{
{listens}
        root {root};
        etag off;
        location = {UPLOAD_PATH} {{
            client_max_body_size 0;
            return 200 "uploaded\\n";
        }}
    }}
}}
"""
        path = os.path.join(self.prefix, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        return path

    def argv(self) -> list[str]:
        conf = self.writeConfig()
        return [findExecutable("nginx"), "-p", self.prefix + "/", "-c", conf]


def haproxyConfig(
    listenPort: int,
    servers: Sequence[tuple[str, int]],
    mode: str = "tcp",
    tlsBundle: str | None = None,
    reuse: str = "always",
    maxconn: int = 4000,
    globalLines: Sequence[str] = (),
) -> str:
    """
    An HAProxy config with one thread, one frontend on loopback and a
    round-robin backend over C{servers} (name, port), accepting up to
    C{maxconn} connections at once (the global limit and the frontend's;
    HAProxy raises its open-file limit to two descriptors per connection,
    and by default refuses to start where it cannot: C{no strict-limits}
    in C{globalLines}, further lines of the C{global} section, makes that
    a warning).

    With C{mode="http"}, client connections are kept alive and idle server
    connections are reused as C{reuse} says (C{http-reuse}; by default
    C{always}, shared between client connections). Nothing is logged per
    request either way.

    With C{tlsBundle} (a PEM file with the certificate and its key), the
    frontend terminates TLS as L{lbproxyConfig} makes lbproxy do: TLS 1.2
    or later, L{TLS12_CIPHERS}, ALPN http/1.1, OpenSSL's default session
    cache and tickets.
    """
    serverLines = "\n".join(
        f"    server {name} {LOOPBACK}:{port}" for name, port in servers
    )
    httpDefaults = httpBackend = ""
    if mode == "http":
        httpDefaults = "    timeout http-keep-alive 300s\n    timeout http-request 30s\n"
        httpBackend = f"    http-reuse {reuse}\n"
    tlsGlobal = tlsBind = ""
    tlsGlobal += "".join(f"    {line}\n" for line in globalLines)
    if tlsBundle is not None:
        tlsGlobal += (
            f"    ssl-default-bind-ciphers {TLS12_CIPHERS}\n"
            "    ssl-default-bind-options ssl-min-ver TLSv1.2\n"
        )
        tlsBind = f" ssl crt {tlsBundle} alpn http/1.1"
    return f"""\
global
    nbthread 1
    maxconn {maxconn}
    log stderr format raw local0 err
{tlsGlobal}
defaults
    mode {mode}
    maxconn {maxconn}
    timeout connect 5s
    timeout client 300s
    timeout server 300s
{httpDefaults}
frontend bench
    bind {LOOPBACK}:{listenPort}{tlsBind}
    default_backend servers

backend servers
    balance roundrobin
{httpBackend}{serverLines}
"""


class NginxProxy:
    """
    nginx as an HTTP reverse proxy: one worker process, a round-robin
    upstream over loopback servers with idle keep-alive connections kept
    for reuse, HTTP/1.1 to the servers, no access log.
    """

    def __init__(
        self,
        workdir: str,
        listenPort: int,
        servers: Sequence[tuple[str, int]],
        keepalive: int = 64,
        name: str = "nginx-proxy",
    ):
        self.prefix = os.path.join(workdir, name)
        self.listenPort = listenPort
        self.servers = list(servers)
        self.keepalive = keepalive

    def writeConfig(self) -> str:
        for sub in ("logs", "temp"):
            os.makedirs(os.path.join(self.prefix, sub), exist_ok=True)
        temp = os.path.join(self.prefix, "temp")
        upstream = "\n".join(
            f"        server {LOOPBACK}:{port};" for _, port in self.servers
        )
        conf = f"""\
{nginxPreamble(self.prefix)}    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
{nginxTempPaths(temp)}    upstream servers {{
{upstream}
        keepalive {self.keepalive};
        keepalive_requests 10000000;
        keepalive_timeout 120s;
    }}
    server {{
        listen {LOOPBACK}:{self.listenPort} backlog=4096;
        location / {{
            proxy_pass http://servers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
        path = os.path.join(self.prefix, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        return path

    def argv(self) -> list[str]:
        conf = self.writeConfig()
        return [findExecutable("nginx"), "-p", self.prefix + "/", "-c", conf]


def childPids(pid: int) -> list[int]:
    """
    The process ids of the children of process C{pid} (from /proc).
    """
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def waitForChild(pid: int, group: ProcessGroup, timeout: float = 15.0) -> int:
    """
    The first child of process C{pid} (nginx's worker), once it exists.
    """
    deadline = time.monotonic() + timeout
    while True:
        group.checkAlive()
        children = childPids(pid)
        if children:
            return children[0]
        if time.monotonic() > deadline:
            raise BenchError(f"process {pid} started no child in {timeout:g}s")
        time.sleep(0.05)


def lbproxyConfig(
    listenPort: int,
    servers: Sequence[tuple[str, int]],
    mode: str = "tcp",
    accessLog: str | None = None,
    reuseMaxIdle: int | None = None,
    reuseMode: str | None = None,
    selector: str = '"roundrobin"',
    poolLines: Sequence[str] = (),
    tls: TLSFiles | None = None,
    logRequests: str = "all",
    maxconn: int | None = None,
    timeouts: dict[str, str] | None = None,
    workers: int = 1,
) -> str:
    """
    An lbproxy TOML config: one listener on loopback, one pool over
    C{servers} (name, port), round-robin unless C{selector} says otherwise.

    @param workers: lbproxy's C{workers} (above 1: a control process and
        that many worker processes).

    @param tls: the certificate the listener terminates TLS with (its
        C{[tls]} table, with L{TLS12_CIPHERS}).

    @param accessLog: for an HTTP listener, the file its access log lines
        are appended to (buffered), instead of the daemon's log.
    @param logRequests: for an HTTP listener, its C{log_requests}: "all",
        or "errors" (no line for a normal request).
    @param reuseMaxIdle: for an HTTP listener's pool, idle connections kept
        per server (lbproxy's default otherwise).
    @param reuseMode: for an HTTP listener's pool, its C{reuse.mode}
        (lbproxy's default otherwise).
    @param selector: the pool's C{selector} value, as TOML (a string or an
        inline table such as C{{ name = "hash", key = "user" }}).
    @param poolLines: further C{key = value} lines of the pool table.
    @param maxconn: the listener's C{maxconn} (lbproxy's default otherwise).
    @param timeouts: the listener's C{[timeouts]} by key, as durations
        (C{{"idle": "300s"}}).
    """
    serverLines = "\n".join(
        f'    {{ name = "{name}", address = "tcp:{LOOPBACK}:{port}" }},'
        for name, port in servers
    )
    listenerExtra = f'access_log = "{accessLog}"\n' if accessLog is not None else ""
    if logRequests != "all":
        listenerExtra += f'log_requests = "{logRequests}"\n'
    if maxconn is not None:
        listenerExtra += f"maxconn = {maxconn}\n"
    if timeouts:
        listenerExtra += "\n[listeners.bench.timeouts]\n" + "".join(
            f'{key} = "{value}"\n' for key, value in timeouts.items()
        )
    reuseLines = ""
    if reuseMaxIdle is not None:
        reuseLines += f"max_idle = {reuseMaxIdle}\n"
    if reuseMode is not None:
        reuseLines += f'mode = "{reuseMode}"\n'
    poolExtra = f"\n[pools.servers.reuse]\n{reuseLines}" if reuseLines else ""
    extraPoolLines = "".join(f"{line}\n" for line in poolLines)
    tlsTable = ""
    if tls is not None:
        tlsTable = (
            "[listeners.bench.tls]\n"
            f'certificates = [{{ cert = "{tls.cert}", key = "{tls.key}" }}]\n'
            f'ciphers = "{TLS12_CIPHERS}"\n'
        )
    top = f"workers = {workers}\n\n" if workers != 1 else ""
    return f"""\
{top}[listeners.bench]
bind = "tcp:{listenPort}:interface={LOOPBACK}"
mode = "{mode}"
pool = "servers"
{listenerExtra}
{tlsTable}
[pools.servers]
selector = {selector}
{extraPoolLines}servers = [
{serverLines}
]
{poolExtra}"""


def lbproxyArgv(
    twistd: str,
    configPath: str,
    workdir: str,
    reactor: str | None,
    name: str = "twistd",
) -> list[str]:
    """
    C{twistd -n lbproxy --config FILE} in the foreground with its pid file
    and log file (C{NAME.pid}, C{NAME.log}) under C{workdir}, on the twistd
    reactor named C{reactor}, or with None on the one lbproxy installs
    itself.
    """
    return [
        twistd,
        "--nodaemon",
        *([f"--reactor={reactor}"] if reactor else []),
        f"--pidfile={os.path.join(workdir, name + '.pid')}",
        f"--logfile={os.path.join(workdir, name + '.log')}",
        "lbproxy",
        "--config",
        configPath,
    ]


def lbproxyEnv(source: str | None) -> dict:
    """
    The environment for twistd: C{source} (a checkout) first on
    PYTHONPATH so its lbproxy package and twisted/plugins entry are used.
    """
    env = dict(os.environ)
    if source:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (source, env.get("PYTHONPATH")) if p
        )
    return env


def startLbproxy(
    args: argparse.Namespace,
    group: ProcessGroup,
    workdir: str,
    name: str,
    config: str,
    port: int,
) -> tuple[subprocess.Popen, str]:
    """
    Write C{config} to C{workdir/NAME.toml} and start twistd lbproxy on it
    as C{NAME} (the options of L{addCommonArguments}: C{--twistd},
    C{--reactor}, C{--lbproxy-source}; C{args.proxyCpus} when the script
    pins), once it accepts connections on C{port}; the process and the
    reactor class it reported.
    """
    path = os.path.join(workdir, f"{name}.toml")
    with open(path, "w") as f:
        f.write(config)
    twistd = args.twistd or besidePython("twistd")
    argv = lbproxyArgv(twistd, path, workdir, args.reactor, name=name)
    process = group.start(
        name, pinned(argv, getattr(args, "proxyCpus", None)), env=lbproxyEnv(args.lbproxy_source)
    )
    try:
        waitForPort(port, group, timeout=30.0)
    except BenchError as e:
        raise BenchError(f"{e}\ntwistd log:\n{fileTail(os.path.join(workdir, name + '.log'), 30)}")
    return process, reactorInLog(workdir, name) or "unknown"


def besidePython(name: str) -> str:
    """
    The executable C{name} installed with this Python, else on PATH.
    """
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(beside, os.X_OK):
        return beside
    return findExecutable(name)


def reactorInLog(workdir: str, name: str = "twistd") -> str | None:
    """
    The reactor class twistd reported at startup in C{workdir/NAME.log}.
    """
    try:
        with open(os.path.join(workdir, name + ".log")) as f:
            match = re.search(r"reactor class: (\S+)", f.read())
    except OSError:
        return None
    return match.group(1).rstrip(".") if match else None


# ---------------------------------------------------------------------------
# Checks and load
# ---------------------------------------------------------------------------


def fetch(url: str, timeout: float = 10.0, cacert: str | None = None) -> bytes:
    """
    The body curl gets for C{url} on a new connection; BenchError unless
    the status is 200. C{cacert} is the file of the CA (or self-signed
    certificate) an https URL's certificate is verified against.
    """
    trust = ["--cacert", cacert] if cacert is not None else []
    result = subprocess.run(
        [findExecutable("curl"), "-sS", "--fail", "--max-time", str(timeout), *trust, url],
        capture_output=True,
        timeout=timeout + 5,
    )
    if result.returncode != 0:
        raise BenchError(
            f"curl {url} failed ({result.returncode}): "
            + result.stderr.decode("utf-8", "replace").strip()
        )
    return result.stdout


def verifyBody(url: str, expected: bytes, cacert: str | None = None) -> None:
    """
    Fetch C{url} once and raise L{BenchError} unless the body is exactly
    C{expected} (C{cacert}: see L{fetch}).
    """
    body = fetch(url, cacert=cacert)
    if body != expected:
        raise BenchError(
            f"{url}: expected {len(expected)} bytes "
            f"(sha256 {hashlib.sha256(expected).hexdigest()[:12]}), got {len(body)} "
            f"(sha256 {hashlib.sha256(body).hexdigest()[:12]})"
        )


@dataclass
class WrkResult:
    """
    The figures of one wrk run.
    """

    requestsPerSecond: float
    bytesPerSecond: float
    requests: int
    latencyP50Ms: float | None
    latencyP99Ms: float | None
    socketErrors: int
    non2xx: int
    proxyCpuPercent: float | None = None
    proxySystemPercent: float | None = None
    #: The share of each process of the proxy (with lbproxy's workers: the
    #: control process, then the workers); the total is C{proxyCpuPercent}.
    processCpuPercents: list[float] | None = None


_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "b": 1}
_TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _number(text: str, units: dict) -> float:
    match = re.fullmatch(r"([\d.]+)([A-Za-z]*)", text)
    if match is None:
        raise ValueError(text)
    return float(match.group(1)) * units[match.group(2).lower()]


def parseWrk(output: str) -> WrkResult:
    """
    Read requests/s, transfer/s, latency percentiles and errors from wrk's
    text output (run with C{--latency}).
    """
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    transfer = re.search(r"^Transfer/sec:\s+(\S+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in", output, re.M)
    if rps is None or transfer is None or total is None:
        raise BenchError("cannot read wrk output:\n" + output)
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", output, re.M))
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requestsPerSecond=float(rps.group(1)),
        bytesPerSecond=_number(transfer.group(1), _UNITS),
        requests=int(total.group(1)),
        latencyP50Ms=_number(percentiles["50"], _TIME_UNITS) if "50" in percentiles else None,
        latencyP99Ms=_number(percentiles["99"], _TIME_UNITS) if "99" in percentiles else None,
        socketErrors=sum(int(n) for n in errors.groups()) if errors else 0,
        non2xx=int(non2xx.group(1)) if non2xx else 0,
    )


#: The path the nginx backends answer a POST of any body on, with a short
#: body of their own (the upload scenarios).
UPLOAD_PATH = "/upload"


def writeUploadScript(workdir: str, body: bytes) -> str:
    """
    A wrk Lua script making every request a POST of C{body}; its path.
    """
    path = os.path.join(workdir, "upload.lua")
    with open(path, "w") as f:
        f.write(
            'wrk.method = "POST"\n'
            f"wrk.body = string.rep(\"x\", {len(body)})\n"
            'wrk.headers["Content-Type"] = "application/octet-stream"\n'
        )
    return path


def runWrk(
    url: str,
    duration: float,
    connections: int,
    threads: int = 1,
    cpus: str | None = None,
    measuredPid: int | None = None,
    headers: Sequence[str] = (),
    script: str | None = None,
) -> WrkResult:
    """
    Load C{url} with wrk's keep-alive connections for C{duration} seconds.

    With C{measuredPid}, the CPU share that process and its children
    (lbproxy's workers) used during the run is recorded too (100 = one
    full core), in total, in the kernel and by process.
    C{headers} (C{"Name: value"}) are added to every request; with
    C{"Connection: close"} wrk opens a new connection for each request.
    C{script} is a wrk Lua script (L{writeUploadScript}).
    """
    headerArgs = [arg for header in headers for arg in ("-H", header)]
    if script is not None:
        headerArgs += ["-s", script]
    argv = pinned(
        [
            findExecutable("wrk"),
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration:g}s",
            "--timeout",
            "10s",
            "--latency",
            *headerArgs,
            url,
        ],
        cpus,
    )
    cpuBefore = processTreeCpu(measuredPid) if measuredPid else None
    started = time.monotonic()
    try:
        result = subprocess.run(
            argv, capture_output=True, timeout=duration + 30, start_new_session=True
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk against {url} did not finish in {duration + 30:g}s")
    elapsed = time.monotonic() - started
    output = result.stdout.decode("utf-8", "replace")
    if result.returncode != 0:
        raise BenchError(
            f"wrk failed ({result.returncode}): "
            + result.stderr.decode("utf-8", "replace")
            + output
        )
    parsed = parseWrk(output)
    if measuredPid:
        total, system, each = cpuShares(cpuBefore, processTreeCpu(measuredPid), elapsed)
        parsed.proxyCpuPercent = total
        parsed.proxySystemPercent = system
        parsed.processCpuPercents = each
    return parsed


def profileWhileLoading(
    pid: int,
    url: str,
    duration: float,
    connections: int,
    outPath: str,
    pySpy: str,
    loadCpus: str | None = None,
    native: bool = False,
    headers: Sequence[str] = (),
    script: str | None = None,
) -> WrkResult:
    """
    Load C{url} with wrk for C{duration} seconds while py-spy samples
    process C{pid}, writing collapsed stacks (one C{frame;frame;... count}
    line per stack, the input of flame graph tools) to C{outPath}.

    Sampling starts one second into the load and stops one second before
    its end. C{native} adds C frames (syscalls show as libc functions); it
    stops the process for each sample, so it slows it down more.
    """
    if duration < 4:
        raise BenchError("profiling needs a duration of at least 4 s")
    argv = [
        pySpy, "record", "--pid", str(pid), "--rate", "200",
        "--duration", str(int(duration - 2)), "--format", "raw", "--output", outPath,
    ]
    argv.append("--native" if native else "--nonblocking")
    sampler = []

    def startSampler() -> None:
        time.sleep(1.0)
        sampler.append(
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        )

    starter = threading.Thread(target=startSampler, daemon=True)
    starter.start()
    try:
        result = runWrk(
            url, duration, connections, cpus=loadCpus, measuredPid=pid, headers=headers,
            script=script,
        )
    finally:
        starter.join()
        for process in sampler:
            try:
                _, err = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise BenchError("py-spy did not finish")
            if process.returncode != 0:
                raise BenchError("py-spy failed: " + err.decode("utf-8", "replace"))
    return result


def topFunctions(collapsedPath: str, count: int = 15) -> str:
    """
    The functions taking most samples in a collapsed-stacks file, by self
    time (the innermost frame) and by inclusive time (anywhere on the
    stack), as percentages of all samples.
    """
    selfCounts: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    with open(collapsedPath) as f:
        for line in f:
            stack, _, number = line.rstrip("\n").rpartition(" ")
            if not stack or not number.isdigit():
                continue
            samples = int(number)
            total += samples
            # "function (file:line)" -> "function (file)"
            frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
            frames = [_shortPath(frame) for frame in frames]
            selfCounts[frames[-1]] = selfCounts.get(frames[-1], 0) + samples
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + samples
    if not total:
        return "(no samples)"
    lines = [f"{total} samples; self time:"]
    for frame, samples in sorted(selfCounts.items(), key=lambda i: -i[1])[:count]:
        lines.append(f"  {100 * samples / total:5.1f}%  {frame}")
    lines.append("inclusive time (frames on 95% of stacks or more, the main loop, left out):")
    inclusive = {f: n for f, n in inclusive.items() if n < 0.95 * total}
    for frame, samples in sorted(inclusive.items(), key=lambda i: -i[1])[:count]:
        lines.append(f"  {100 * samples / total:5.1f}%  {frame}")
    return "\n".join(lines)


def _shortPath(frame: str) -> str:
    """
    C{frame} with its file path cut to the package-relative part for
    lbproxy and Twisted, to the file name for anything else.
    """
    match = re.fullmatch(r"(.*) \((.*)\)", frame)
    if match is None:
        return frame
    function, path = match.groups()
    package = re.search(r"(?:^|/)((?:lbproxy|twisted)/.*)$", path)
    return f"{function} ({package.group(1) if package else os.path.basename(path)})"


# ---------------------------------------------------------------------------
# TLS: certificates and full handshakes
# ---------------------------------------------------------------------------

#: The TLS 1.2 cipher suites both proxies offer in the TLS benchmark
#: (lbproxy's default list; TLS 1.3 suites are OpenSSL's for both).
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


@dataclass
class TLSFiles:
    """
    A certificate and its key as PEM files, and both in one file (what
    HAProxy's C{crt} takes).
    """

    cert: str
    key: str
    bundle: str


def makeCertificate(directory: str, kind: str = "ec", name: str = LOOPBACK) -> TLSFiles:
    """
    A self-signed server certificate for C{name} (an IP address or a DNS
    name), valid for two days, with an ECDSA P-256 key (C{kind="ec"}) or an
    RSA 2048 one (C{"rsa"}), written under C{directory} as
    C{KIND.crt}, C{KIND.key} and C{KIND.pem}. Made with the cryptography
    package: the benchmark clients do not verify it.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"unknown key kind {kind!r}")
    try:
        altName = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        altName = x509.DNSName(name)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([altName]), critical=False)
        .sign(key, hashes.SHA256())
    )
    certPEM = cert.public_bytes(serialization.Encoding.PEM)
    keyPEM = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    os.makedirs(directory, exist_ok=True)
    files = TLSFiles(
        *(os.path.join(directory, f"{kind}.{suffix}") for suffix in ("crt", "key", "pem"))
    )
    for path, data in ((files.cert, certPEM), (files.key, keyPEM), (files.bundle, certPEM + keyPEM)):
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o600)
    return files


def parseSTime(output: str) -> int:
    """
    The connections one C{openssl s_time} run made, from its summary line
    C{N connections in T real seconds}.
    """
    match = re.search(r"^(\d+) connections in [\d.]+ real seconds", output, re.M)
    if match is None:
        raise BenchError("cannot read openssl s_time output:\n" + output)
    return int(match.group(1))


def runHandshakes(
    host: str,
    port: int,
    path: str,
    duration: float,
    clients: int,
    cpus: str | None = None,
    measuredPid: int | None = None,
) -> WrkResult:
    """
    Full TLS handshakes per second: C{clients} C{openssl s_time -new}
    processes side by side for C{duration} seconds, each opening one
    connection after another, each with a new session (never resumed: wrk
    resumes sessions when it reconnects), fetching C{path} with an HTTP/1.0
    GET and closing.

    The result is a L{WrkResult} with handshakes per second as its
    C{requestsPerSecond} (and, with C{measuredPid}, that process's CPU);
    a client that failed counts as a socket error.
    """
    seconds = max(1, round(duration))
    argv = pinned(
        [
            findExecutable("openssl"),
            "s_time",
            "-connect",
            f"{host}:{port}",
            "-new",
            "-time",
            str(seconds),
            "-www",
            path,
        ],
        cpus,
    )
    cpuBefore = cpuSeconds(measuredPid) if measuredPid else None
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(clients)
    ]
    total = failed = 0
    try:
        for process in processes:
            try:
                output, _ = process.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                raise BenchError(f"openssl s_time against {host}:{port} did not finish")
            text = output.decode("utf-8", "replace")
            if process.returncode != 0 or "ERROR" in text:
                failed += 1
                continue
            total += parseSTime(text)
    finally:
        for process in processes:
            if process.poll() is None:
                _signalGroup(process, signal.SIGKILL)
                process.wait()
    elapsed = time.monotonic() - started
    result = WrkResult(
        requestsPerSecond=total / seconds,
        bytesPerSecond=0.0,
        requests=total,
        latencyP50Ms=None,
        latencyP99Ms=None,
        socketErrors=failed,
        non2xx=0,
    )
    if measuredPid:
        user, system = cpuSeconds(measuredPid)
        result.proxyCpuPercent = 100.0 * (user - cpuBefore[0] + system - cpuBefore[1]) / elapsed
        result.proxySystemPercent = 100.0 * (system - cpuBefore[1]) / elapsed
    return result


# ---------------------------------------------------------------------------
# Mail: a Dovecot backend and the IMAP load generator
# ---------------------------------------------------------------------------

#: The uid (and gid) Dovecot's mail processes run as; no account needed.
DOVECOT_MAIL_UID = 4242


class DovecotBackend:
    """
    One Dovecot serving IMAP on a loopback port, with everything (config,
    base_dir, state, log, maildirs) under C{workdir/NAME}: C{userCount}
    users C{user0}... with password C{password}, each INBOX holding
    C{smallMessages} short messages and then one message of
    C{largeSize} bytes (message number C{smallMessages + 1}).

    Tuned for load rather than isolation: login processes serve many
    connections each (C{service_count = 0}), there is no failure delay
    and no per-user connection limit to speak of. With
    C{sharedImapProcesses} the imap processes serve many sessions each too
    (all users share one uid), so a login costs Dovecot far less and the
    proxy's share of a session shows more; without it each session gets a
    new imap process, as in Dovecot's default configuration. Dovecot is
    started as root, as its own service is (mail processes then run as
    L{DOVECOT_MAIL_UID}).
    """

    def __init__(
        self,
        workdir: str,
        port: int,
        userCount: int = 20,
        password: str = "bench",
        smallMessages: int = 3,
        largeSize: int = 5 * 1024 * 1024,
        name: str = "dovecot",
        sharedImapProcesses: bool = True,
    ) -> None:
        self.prefix = os.path.join(workdir, name)
        self.port = port
        self.userCount = userCount
        self.password = password
        self.smallMessages = smallMessages
        self.largeSize = largeSize
        self.logPath = os.path.join(self.prefix, "dovecot.log")
        self.sharedImapProcesses = sharedImapProcesses

    @property
    def largeNumber(self) -> int:
        return self.smallMessages + 1

    def largeMessage(self) -> bytes:
        """
        The large message as stored (LF line ends); IMAP sends it with
        CRLF, see L{largeWireSize}.
        """
        head = b"Subject: large message\nMessage-ID: <large@bench.test>\n\n"
        body = makePayload("large", self.largeSize - len(head)).body
        return head + body

    @property
    def largeWireSize(self) -> int:
        message = self.largeMessage()
        return len(message) + message.count(b"\n")

    def _writeMaildirs(self) -> None:
        root = os.path.join(self.prefix, "mail")
        large = os.path.join(self.prefix, "large.eml")
        with open(large, "wb") as f:
            f.write(self.largeMessage())
        for number in range(self.userCount):
            cur = os.path.join(root, f"user{number}", "Maildir", "cur")
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(os.path.dirname(cur), sub), exist_ok=True)
            for message in range(1, self.smallMessages + 1):
                with open(os.path.join(cur, f"{1700000000 + message}.M{message}P1.bench:2,"), "wb") as f:
                    f.write(b"Subject: message %d\n\nbody %d\n" % (message, message))
            os.link(large, os.path.join(cur, "1700000099.M99P1.bench:2,"))
        for directory, dirs, files in os.walk(root):
            for entry in [directory, *(os.path.join(directory, f) for f in files)]:
                os.chown(entry, DOVECOT_MAIL_UID, DOVECOT_MAIL_UID)

    def writeConfig(self) -> str:
        if os.geteuid() != 0:
            raise BenchError("the Dovecot backend is started as root (its mail processes change uid)")
        for sub in ("run", "state"):
            os.makedirs(os.path.join(self.prefix, sub), exist_ok=True)
        self._writeMaildirs()
        passwd = os.path.join(self.prefix, "passwd")
        with open(passwd, "w") as f:
            for number in range(self.userCount):
                f.write(
                    f"user{number}:{{PLAIN}}{self.password}:{DOVECOT_MAIL_UID}:{DOVECOT_MAIL_UID}"
                    f"::{self.prefix}/mail/user{number}::\n"
                )
        imapReuse = (
            "  service_count = 0\n  process_min_avail = 2\n  client_limit = 1000\n"
            if self.sharedImapProcesses
            else ""
        )
        conf = f"""\
base_dir = {self.prefix}/run
state_dir = {self.prefix}/state
log_path = {self.logPath}
instance_name = lbproxy-bench-{os.path.basename(self.prefix)}
protocols = imap
listen = {LOOPBACK}
login_trusted_networks = 127.0.0.0/8
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
service auth {{
  user = root
}}
first_valid_uid = {DOVECOT_MAIL_UID}
first_valid_gid = {DOVECOT_MAIL_UID}
mail_location = maildir:~/Maildir
mail_max_userip_connections = 10000
default_client_limit = 4000
namespace inbox {{
  inbox = yes
}}
service imap-login {{
  inet_listener imap {{
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  service_count = 0
  process_min_avail = 1
  client_limit = 4000
}}
service imap {{
  process_limit = 1000
{imapReuse}}}
"""
        path = os.path.join(self.prefix, "dovecot.conf")
        with open(path, "w") as f:
            f.write(conf)
        return path

    def argv(self) -> list[str]:
        conf = self.writeConfig()
        return [findExecutable("dovecot"), "-F", "-c", conf]


def runImapLoad(
    mode: str,
    port: int,
    duration: float,
    concurrency: int,
    backend: DovecotBackend,
    cpus: str | None = None,
    measuredPid: int | None = None,
    maxRequests: int = 1_000_000,
) -> WrkResult:
    """
    One bounded run of bench/imap_load.py (C{mode} "sessions" or "fetch")
    against C{127.0.0.1:port}, in a process of its own; its figures as a
    L{WrkResult} (a "request" is a session or a FETCH; C{non2xx} counts
    failed sessions or commands).

    With C{measuredPid}, the CPU share that process used during the run is
    recorded too, as L{runWrk} does.
    """
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imap_load.py")
    argv = pinned(
        [
            sys.executable, script, mode,
            "--port", str(port),
            "--users", "user%d",
            "--user-count", str(backend.userCount),
            "--password", backend.password,
            "--duration", f"{duration:g}",
            "--concurrency", str(concurrency),
            "--max-requests", str(maxRequests),
            "--message", str(backend.largeNumber),
            "--size", str(backend.largeWireSize),
        ],
        cpus,
    )
    cpuBefore = cpuSeconds(measuredPid) if measuredPid else None
    started = time.monotonic()
    try:
        result = subprocess.run(argv, capture_output=True, timeout=duration + 60, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise BenchError(f"imap_load {mode} on port {port} did not finish in {duration + 60:g}s")
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise BenchError(
            f"imap_load {mode} failed ({result.returncode}): "
            + result.stderr.decode("utf-8", "replace")[-2000:]
        )
    figures = json.loads(result.stdout)
    if figures["errors"] and not figures["requests"]:
        raise BenchError(f"imap_load {mode} on port {port}: every attempt failed: {figures['firstError']}")
    parsed = WrkResult(
        requestsPerSecond=figures["requestsPerSecond"],
        bytesPerSecond=figures["bytesPerSecond"],
        requests=figures["requests"],
        latencyP50Ms=figures["latencyP50Ms"],
        latencyP99Ms=figures["latencyP99Ms"],
        socketErrors=0,
        non2xx=figures["errors"],
    )
    if measuredPid:
        user, system = cpuSeconds(measuredPid)
        parsed.proxyCpuPercent = 100.0 * (user - cpuBefore[0] + system - cpuBefore[1]) / elapsed
        parsed.proxySystemPercent = 100.0 * (system - cpuBefore[1]) / elapsed
    return parsed


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass
class Series:
    """
    All measured runs of one target at one payload.
    """

    target: str
    payload: str
    runs: list[WrkResult] = field(default_factory=list)

    def median(self, attribute: str = "requestsPerSecond") -> float | None:
        values = [getattr(r, attribute) for r in self.runs]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def spread(self) -> float:
        """
        (max - min) / median of requests/s: how noisy the rounds were.
        """
        values = [r.requestsPerSecond for r in self.runs]
        middle = statistics.median(values)
        return (max(values) - min(values)) / middle if middle else 0.0

    def summary(self) -> dict:
        return {
            "target": self.target,
            "payload": self.payload,
            "medianRequestsPerSecond": self.median(),
            "medianBytesPerSecond": self.median("bytesPerSecond"),
            "medianLatencyP99Ms": self.median("latencyP99Ms"),
            "medianProxyCpuPercent": self.median("proxyCpuPercent"),
            "medianProxySystemPercent": self.median("proxySystemPercent"),
            "spread": self.spread(),
            "errors": sum(r.socketErrors + r.non2xx for r in self.runs),
            "runs": [asdict(r) for r in self.runs],
        }


def alternatingRounds(
    rounds: int,
    payloads: Iterable[str],
    targets: Sequence[str],
    measure: Callable[[str, str], WrkResult],
    progress: Callable[[str], None] = lambda line: None,
    targetsByPayload: dict[str, Sequence[str]] | None = None,
) -> dict[tuple[str, str], Series]:
    """
    Run C{measure(target, payload)} for C{rounds} rounds; within a round,
    for each payload, the targets take turns, so slow drifts of the
    machine's load hit every target alike.

    C{targetsByPayload} gives some payloads (or scenarios) their own list
    of targets instead of C{targets}.
    """
    payloads = list(payloads)
    byPayload = {p: list((targetsByPayload or {}).get(p, targets)) for p in payloads}
    series = {(t, p): Series(t, p) for p in payloads for t in byPayload[p]}
    for number in range(1, rounds + 1):
        for payload in payloads:
            for target in byPayload[payload]:
                result = measure(target, payload)
                series[(target, payload)].runs.append(result)
                cpu = (
                    f"  proxy cpu {result.proxyCpuPercent:5.1f}%"
                    if result.proxyCpuPercent is not None
                    else ""
                )
                if result.processCpuPercents and len(result.processCpuPercents) > 1:
                    cpu += " (" + " + ".join(f"{p:.0f}" for p in result.processCpuPercents) + ")"
                errors = result.socketErrors + result.non2xx
                progress(
                    f"round {number}/{rounds} {payload:>6} {target:<8} "
                    f"{result.requestsPerSecond:10.0f} req/s{cpu}"
                    + (f"  ERRORS {errors}" if errors else "")
                )
    return series


def rateCells(series: Series) -> list[str]:
    """
    The run table's rate columns for one target and scenario: median,
    minimum and maximum requests (or sessions) per second, and the spread.
    """
    rates = [r.requestsPerSecond for r in series.runs]
    return [
        f"{series.median():.0f}",
        f"{min(rates):.0f}",
        f"{max(rates):.0f}",
        f"{100 * series.spread():.0f}%",
    ]


def latencyCpuCells(series: Series) -> list[str]:
    """
    The run table's median p99 latency and proxy CPU columns, "-" where
    the runs did not measure them.
    """
    p99 = series.median("latencyP99Ms")
    cpu = series.median("proxyCpuPercent")
    system = series.median("proxySystemPercent")
    return [
        f"{p99:.2f}" if p99 is not None else "-",
        f"{cpu:.0f}% ({system:.0f}% sys)" if cpu is not None else "-",
    ]


def processCpuCell(series: Series) -> str:
    """
    The proxy's CPU share by process (median of each), "3+88+87%" for
    lbproxy's control process and two workers; "-" for one process.
    """
    runs = [r.processCpuPercents for r in series.runs if r.processCpuPercents]
    if not runs or max(len(r) for r in runs) < 2:
        return "-"
    count = max(len(r) for r in runs)
    medians = [statistics.median(r[i] for r in runs if len(r) > i) for i in range(count)]
    return "+".join(f"{m:.0f}" for m in medians) + "%"


def cpuPerRequestCell(series: Series) -> str:
    """
    The proxy's CPU time per request, in microseconds (median CPU share
    over median rate): what a request costs whatever the machine's size.
    """
    cpu = series.median("proxyCpuPercent")
    rate = series.median()
    if cpu is None or not rate:
        return "-"
    return f"{cpu * 1e4 / rate:.1f}"


def formatTable(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """
    A plain text table, columns right-aligned except the first two.
    """
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    lines = []
    for index, row in enumerate([headers, *rows]):
        cells = [
            str(c).ljust(w) if i < 2 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def humanBytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def machineInfo() -> dict:
    """
    What the numbers were measured on.
    """
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpuModel": model,
        "loadAverage": os.getloadavg(),
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def writeJson(path: str, document: dict) -> None:
    with open(path, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")


def writeResults(
    args: argparse.Namespace,
    benchmark: str,
    info: dict,
    loadAfter: Sequence[float],
    settings: dict,
    details: dict,
    series: dict,
    ratios: object,
    **extra: object,
) -> None:
    """
    With C{--json}, write a script's results in the layout every script
    shares: the machine, the load after, the settings (C{--rounds},
    C{--duration} and C{--warmup} first, then the script's own), details,
    each L{Series}' summary, the goals' ratios and any C{extra} fields.
    """
    if not args.json:
        return
    writeJson(args.json, {
        "benchmark": benchmark,
        "machine": info,
        "loadAverageAfter": loadAfter,
        "settings": {
            "rounds": args.rounds,
            "duration": args.duration,
            "warmup": args.warmup,
            **settings,
        },
        "details": details,
        "results": [s.summary() for s in series.values()],
        "ratios": ratios,
        **extra,
    })
    say(f"JSON written to {args.json}")


def runMain(
    name: str,
    parseArgs: Callable[[list[str]], argparse.Namespace],
    run: Callable[[argparse.Namespace], int],
    argv: list[str],
) -> int:
    """
    A benchmark script's C{main}: parse C{argv}, run, and turn a
    L{BenchError} into a one-line message prefixed with the script's
    C{name} on stderr and exit code 2, the same for every script.
    """
    args = parseArgs(argv)
    try:
        return run(args)
    except BenchError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2


def say(line: str) -> None:
    """
    Print a progress or result line at once, so that a long run shows
    where it is even when its output goes to a pipe.
    """
    print(line, flush=True)


def pinsByRole(args: argparse.Namespace, load: str, backend: str) -> dict:
    """
    The CPU lists from L{resolvePins} by the role names a script reports
    them under, e.g. C{load="wrk"} and C{backend="nginx"}.
    """
    return {load: args.loadCpus, "proxy": args.proxyCpus, backend: args.backendCpus}


def loadBeforeLine(info: dict, pins: dict) -> str:
    """
    The line printed before the rounds: load average and CPU count from
    L{machineInfo}'s C{info}, and the pinning of each role in C{pins}.
    """
    return (
        f"load average before: {' '.join(f'{x:.2f}' for x in info['loadAverage'])}; "
        f"{info['cpus']} CPUs; pinning "
        + " ".join(f"{role}={cpus or 'any'}" for role, cpus in pins.items())
    )


def roundsLine(rounds: int, duration: float, elapsed: float, loadAfter: Sequence[float]) -> str:
    """
    The last line of a report: how many rounds of how long took how long,
    and the load average after them.
    """
    return (
        f"\n{rounds} rounds x {duration:g}s in {elapsed:.0f}s; load average after: "
        + " ".join(f"{x:.2f}" for x in loadAfter)
    )


def sayProfiles(profiles: Sequence[tuple]) -> None:
    """
    Print each (name, path, result, top functions) profile that a script's
    --profile run collected.
    """
    for name, path, result, top in profiles:
        say(f"\nlbproxy profile, {name} ({result.requestsPerSecond:.0f} req/s while "
            f"sampled), collapsed stacks in {path}:\n{top}")


def measureRounds(
    args: argparse.Namespace,
    scenarios: Sequence[str],
    targets: Sequence[str],
    measure: Callable[[str, str, float], object],
    say: Callable[[str], None],
    *,
    group: ProcessGroup,
    details: dict,
    pinRoles: tuple[str, str],
    tools: Sequence[tuple[str, list[str]]] = (),
    detailsLabel: str = "versions",
    targetsByScenario: dict[str, Sequence[str]] | None = None,
) -> tuple[dict[tuple[str, str], Series], dict, dict, float, tuple[float, float, float]]:
    """
    The measuring part every C{run_*} script shares: warm each
    scenario/target up for C{args.warmup} seconds, note the machine, the
    pins and each of C{tools}' version (stored in C{details} as
    C{<tool>Version}), say them, then run C{args.rounds} alternating rounds.

    C{tools} is a sequence of C{(name, argv)} whose output is the version;
    C{pinRoles} names the load generator's and the backend's pin roles;
    C{targetsByScenario} gives scenarios their own targets (for warm-up and
    rounds alike).  C{group} must still be alive after the rounds.

    @return: C{(series, info, pins, elapsed, loadAfter)}.
    """
    if args.warmup:
        for scenario in scenarios:
            for target in (targetsByScenario or {}).get(scenario, targets):
                measure(target, scenario, args.warmup)
    info = machineInfo()
    pins = pinsByRole(args, *pinRoles)
    for tool, argv in tools:
        details[f"{tool}Version"] = toolVersion(argv)
    say(f"{detailsLabel}: " + "; ".join(f"{k}: {v}" for k, v in details.items()))
    say(loadBeforeLine(info, pins))
    started = time.monotonic()
    series = alternatingRounds(
        args.rounds, scenarios, targets, measure, say,
        targetsByPayload=targetsByScenario,
    )
    elapsed = time.monotonic() - started
    loadAfter = os.getloadavg()
    group.checkAlive()
    return series, info, pins, elapsed, loadAfter


def goalLines(checks: Iterable[tuple[str, bool]]) -> list[str]:
    """
    The report's goal lines: each C{(text, met)} becomes C{text} followed by
    C{PASS} or C{MISS}; with a blank line before them, or nothing at all when
    there are no checks.
    """
    lines = [f"{text}  {'PASS' if met else 'MISS'}" for text, met in checks]
    return [""] + lines if lines else []
