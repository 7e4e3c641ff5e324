"""
h2load (nghttp2-client) runs for bench/run_h2.py: the command, its
output read into a L{H2loadResult}, and the proxy's CPU while it ran.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass

from harness import (
    BenchError,
    WrkResult,
    cpuShares,
    findExecutable,
    pinned,
    processTreeCpu,
)

_TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass
class H2loadResult(WrkResult):
    """
    One h2load run. C{requestsPerSecond} is h2load's figure only for a
    clean run (every request done, answered 2xx, over h2); a run with any
    failure, error, timeout or non-2xx answer counts 0 there, and its own
    figure stays in C{reportedRequestsPerSecond}.
    """

    reportedRequestsPerSecond: float = 0.0
    succeeded: int = 0
    failed: int = 0
    errored: int = 0
    timeouts: int = 0
    status2xx: int = 0
    protocol: str | None = None
    latencyMeanMs: float | None = None

    @property
    def clean(self) -> bool:
        return self.requestsPerSecond > 0

    def problems(self) -> str:
        """
        What was wrong with the run, "" for a clean one.
        """
        found = [
            f"{count} {name}"
            for name, count in (
                ("failed", self.failed), ("errored", self.errored),
                ("timeout", self.timeouts), ("non-2xx", self.non2xx),
            )
            if count
        ]
        if self.protocol != "h2":
            found.append(f"protocol {self.protocol or 'none'}")
        if not self.requests:
            found.append("no request done")
        return ", ".join(found)


def _duration(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(text)
    return float(match.group(1)) * _TIME_UNITS[match.group(2)]


def parseH2load(output: str) -> H2loadResult:
    """
    Read h2load's summary: requests/s, requests done, succeeded, failed,
    errored and timed out, 2xx answers, the application protocol and the
    mean time per request.
    """
    finished = re.search(r"^finished in \S+, ([\d.]+) req/s, (\S+)/s", output, re.M)
    requests = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        output, re.M,
    )
    status = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output, re.M)
    if finished is None or requests is None or status is None:
        raise BenchError("cannot read h2load output:\n" + output)
    protocol = re.search(r"^Application protocol: (\S+)", output, re.M)
    latency = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)", output, re.M)
    done, succeeded, failed, errored, timeouts = (int(n) for n in requests.groups()[2:])
    status2xx, status3xx, status4xx, status5xx = (int(n) for n in status.groups())
    rate = float(finished.group(1))
    result = H2loadResult(
        requestsPerSecond=rate,
        bytesPerSecond=_bytes(finished.group(2)),
        requests=done,
        latencyP50Ms=None,
        latencyP99Ms=None,
        # h2load's failed requests include the errored, the timed out
        # and those answered 4xx or 5xx.
        socketErrors=max(errored + timeouts, failed - status4xx - status5xx),
        non2xx=status3xx + status4xx + status5xx,
        reportedRequestsPerSecond=rate,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeouts=timeouts,
        status2xx=status2xx,
        protocol=protocol.group(1) if protocol else None,
        latencyMeanMs=_duration(latency.group(3)) if latency else None,
    )
    if result.problems():
        result.requestsPerSecond = 0.0
    return result


def _bytes(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)([KMG]?)B", text)
    if match is None:
        return 0.0
    return float(match.group(1)) * 1024 ** " KMG".index(match.group(2) or " ")


def h2loadArgv(url: str, duration: float, connections: int, streams: int) -> list[str]:
    """
    h2load for C{duration} seconds, one thread, C{connections} connections
    of C{streams} concurrent streams each (h2 by ALPN: h2load offers only h2).
    """
    return [
        findExecutable("h2load"),
        "-t", "1",
        "-c", str(connections),
        "-m", str(streams),
        "-D", f"{duration:g}",
        url,
    ]


def runH2load(
    url: str,
    duration: float,
    connections: int,
    streams: int,
    cpus: str | None = None,
    measuredPid: int | None = None,
) -> H2loadResult:
    """
    Load C{url} with h2load; with C{measuredPid}, the CPU share that
    process (and its children) used meanwhile is recorded too.
    """
    argv = pinned(h2loadArgv(url, duration, connections, streams), cpus)
    before = processTreeCpu(measuredPid) if measuredPid else None
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, timeout=duration + 30, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise BenchError(f"h2load against {url} did not finish in {duration + 30:g}s")
    elapsed = time.monotonic() - started
    output = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0:
        raise BenchError(
            f"h2load failed ({done.returncode}): " + done.stderr.decode("utf-8", "replace") + output
        )
    result = parseH2load(output)
    if measuredPid:
        total, system, each = cpuShares(before, processTreeCpu(measuredPid), elapsed)
        result.proxyCpuPercent = total
        result.proxySystemPercent = system
        result.processCpuPercents = each
    return result
