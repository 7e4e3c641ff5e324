"""
Failover: an lbproxy pair against keepalived in front of HAProxy, in the
same network namespaces, side by side in one run.

    python bench/run_failover.py                  # 5 rounds, adverts every 0.2 s
    python bench/run_failover.py --rounds 9 --interval 1.0 --json failover.json
    python bench/run_failover.py --scenarios load --load-duration 10
    python bench/run_failover.py --scenarios stick --stick-clients 32

Needs root, iproute2, keepalived and HAProxy (Debian packages); see
bench/README.rst for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

import netns
from failover_peers import VIP, VIP6, analyse, honoured, lbproxyNodeConfig, stickSources
from harness import (
    REPO,
    BenchError,
    ProcessGroup,
    besidePython,
    cpuSeconds,
    fileTail,
    findExecutable,
    formatTable,
    lbproxyEnv,
    machineInfo,
    makeWorkdir,
    nginxPreamble,
    nginxTempPaths,
    runMain,
    say,
    toolVersion,
    writeJson,
)

TARGETS = ("lbproxy", "keepalived")
SCENARIOS = ("startup", "sigkill", "graceful", "load", "stick")
HOSTS = {"a": 11, "b": 12, "client": 50, "be1": 21, "be2": 22}
PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "failover_peers.py")
#: The log line of a starting heartbeat, by target.
STARTED = {"lbproxy": "ha: backup (was init)", "keepalived": "Entering BACKUP STATE"}
#: The targets of issue 11: gap after SIGKILL at 0.2 s adverts, requests
#: lost on a graceful stop.
GOALS = {"sigkillGapMs": 600, "gracefulLost": 0}


def parseArgs(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare the failover of an lbproxy pair with keepalived + HAProxy in network namespaces."
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--interval", type=float, default=0.2, help="advert interval in seconds (default 0.2)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"subset of {','.join(TARGETS)}")
    parser.add_argument(
        "--scenarios", default="startup,sigkill,graceful",
        help=f"subset of {','.join(SCENARIOS)} (default all but load and stick)",
    )
    parser.add_argument(
        "--stick-clients", type=int, default=32, help="client source addresses pinned (scenario stick; 1 to 100)"
    )
    parser.add_argument("--client-duration", type=float, default=3.0, help="seconds of client traffic per run")
    parser.add_argument("--load-duration", type=float, default=10.0, help="seconds of wrk load (scenario load)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (scenario load)")
    parser.add_argument(
        "--load-nodes", default="master,backup", choices=("master,backup", "master", "backup"),
        help="which nodes wrk loads (scenario load; default both at once)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    parser.add_argument("--twistd", default=None, help="twistd to run lbproxy with")
    args = parser.parse_args(argv)
    args.targets = [t for t in TARGETS if t in args.targets.split(",")]
    args.scenarios = [s for s in SCENARIOS if s in args.scenarios.split(",")]
    if not args.targets or not args.scenarios or args.rounds < 1:
        parser.error("expected at least one target, one scenario and one round")
    if not 0.1 <= args.interval <= 40 or not 0.5 <= args.client_duration <= 60:
        parser.error("--interval from 0.1 to 40 s, --client-duration from 0.5 to 60 s")
    if not 1 <= args.stick_clients <= 100:
        parser.error("--stick-clients from 1 to 100")
    return args


#: The load scenario's pool of nginx servers, with a listener on the
#: virtual address and one on the node's own address.
LOAD_TABLES = """
[pools.load]
servers = [
    {{ name = "be1", address = "192.0.2.21:8081" }},
    {{ name = "be2", address = "192.0.2.22:8081" }},
]

[listeners.load]
bind = "tcp:8081:interface={vip}"
pool = "load"

[listeners.own]
bind = "tcp:8000:interface={own}"
pool = "load"
"""


#: The stick scenario's table: lbproxy's, and HAProxy's with its peers
#: (each HAProxy is started with -L and its node's name).
LBPROXY_STICK = """
[pools.web.stick]
on = "src"
expire = "30m"
"""
HAPROXY_STICK = """
peers lbha
    peer a 192.0.2.11:10000
    peer b 192.0.2.12:10000
"""
HAPROXY_STICK_BACKEND = """    stick-table type ip size 100k expire 30m peers lbha
    stick on src
"""
#: The first of the client's source addresses in the stick scenario (its
#: own, .50, shifts the round-robin turns first).
STICK_FIRST = 130


def startNginx(group: ProcessGroup, host, workdir: str) -> None:
    """
    An nginx in C{host} on port 8081 answering every request with a short
    body, keep-alive unbounded: the servers of the load scenario.
    """
    prefix = os.path.join(workdir, f"nginx-{host.name}")
    for sub in ("logs", "tmp"):
        os.makedirs(os.path.join(prefix, sub), exist_ok=True)
    config = os.path.join(prefix, "nginx.conf")
    with open(config, "w") as f:
        f.write(
            nginxPreamble(prefix)
            + nginxTempPaths(os.path.join(prefix, "tmp"))
            + f"""    keepalive_requests 1000000;
    server {{
        listen {host.address}:8081;
        location / {{ return 200 "{host.name}\\n"; }}
    }}
}}
"""
        )
    group.start(f"nginx-{host.name}", host.argv(findExecutable("nginx"), "-p", prefix, "-c", config))


def keepalivedConfig(host, peer, priority: int, interval: float, workdir: str) -> str:
    return f"""
global_defs {{
    vrrp_version 3
    script_user root
}}
vrrp_instance lbha {{
    state {"MASTER" if priority == 254 else "BACKUP"}
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int {interval:g}
    unicast_src_ip {host.address}
    unicast_peer {{
        {peer.address}
    }}
    virtual_ipaddress {{
        {VIP}/24 dev eth0
    }}
}}
"""


def haproxyConfig(stick: bool = False) -> str:
    return (HAPROXY_STICK if stick else "") + f"""
global
    maxconn 4000
defaults
    mode tcp
    timeout connect 1s
    timeout client 10s
    timeout server 10s
frontend web
    bind {VIP}:80 transparent
    default_backend web
backend web
    balance roundrobin
    server be1 192.0.2.21:8080
    server be2 192.0.2.22:8080
""" + (HAPROXY_STICK_BACKEND if stick else "")


class Node:
    """
    The processes of one node of one target.
    """

    def __init__(self, run: Run, name: str, target: str, stick: bool = False) -> None:
        self.run = run
        self.name = name
        self.target = target
        self.stick = stick
        self.host = run.hosts[name]
        self.processes: list[subprocess.Popen] = []
        self.log = os.path.join(run.workdir, f"{target}-{name}-{run.serial}.log")

    def start(self) -> None:
        args = self.run.args
        peer = self.run.hosts["b" if self.name == "a" else "a"]
        priority = 254 if self.name == "a" else 250
        base = os.path.join(self.run.workdir, f"{self.target}-{self.name}")
        if self.target == "lbproxy":
            with open(base + ".toml", "w") as f:
                f.write(lbproxyNodeConfig(
                    self.host, peer, self.run.keyFile, priority, f"{round(args.interval * 1000)}ms",
                    listeners=LOAD_TABLES.format(own=self.host.address, vip=VIP) + (LBPROXY_STICK if self.stick else ""),
                ))
            twistd = args.twistd or besidePython("twistd")
            self._spawn(
                [twistd, "-n", "--pidfile", base + ".pid", "--logfile", self.log, "lbproxy", "--config", base + ".toml"],
                env=lbproxyEnv(REPO),
            )
        else:
            with open(base + ".haproxy.cfg", "w") as f:
                f.write(haproxyConfig(self.stick))
            with open(base + ".keepalived.conf", "w") as f:
                f.write(keepalivedConfig(self.host, peer, priority, args.interval, self.run.workdir))
            self._spawn(
                [findExecutable("haproxy"), "-db", "-L", self.name, "-f", base + ".haproxy.cfg"],
                log=self.log + ".haproxy",
            )
            self._spawn(
                [
                    findExecutable("keepalived"), "--dont-fork", "--log-console", "--log-detail", "--vrrp",
                    "--use-file", base + ".keepalived.conf", "--pid", base + ".pid", "--vrrp_pid", base + ".vrrp.pid",
                ],
            )

    def _spawn(self, argv: list[str], env: dict | None = None, log: str | None = None) -> None:
        with open(log or self.log, "ab") as out:
            self.processes.append(subprocess.Popen(
                self.host.argv(*argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            ))

    @property
    def heartbeat(self) -> subprocess.Popen:
        """
        The HA daemon: lbproxy itself, or keepalived.
        """
        return self.processes[-1]

    def hasVIP(self) -> bool:
        return VIP in self.host.addresses()

    def signal(self, signum: int, everything: bool) -> None:
        for process in self.processes if everything else [self.heartbeat]:
            try:
                os.killpg(process.pid, signum)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        self.signal(signal.SIGTERM, True)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        # Addresses a killed node left behind.
        for address in (f"{VIP}/24", f"{VIP6}/64"):
            self.host.run("ip", "addr", "del", address, "dev", "eth0", check=False)

    def logText(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


def waitFor(condition, what: str, timeout: float = 30.0, step: float = 0.002) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)
    return time.monotonic()


class Run:
    """
    The namespaces, the backends, and one measurement after the other.
    """

    def __init__(self, args, hosts, group: ProcessGroup, workdir: str) -> None:
        self.args = args
        self.hosts = hosts
        self.group = group
        self.workdir = workdir
        self.serial = 0
        self.keyFile = os.path.join(workdir, "ha.key")
        with open(os.open(self.keyFile, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(os.urandom(24).hex())

    def pair(self, target: str, startB: bool = True, stick: bool = False) -> tuple[Node, Node]:
        self.serial += 1
        a, b = Node(self, "a", target, stick), Node(self, "b", target, stick)
        a.start()
        waitFor(a.hasVIP, f"{target} node a to take the virtual address")
        if startB:
            b.start()
            # b settles as backup: its log says so (lbproxy), or give
            # keepalived a down interval to start.
            time.sleep(1.0 + 4 * self.args.interval)
            if b.hasVIP():
                raise BenchError(f"{target}: node b took the address while a was master:\n{fileTail(b.log)}")
        return a, b

    def client(self, duration: float, address: str = VIP) -> tuple[subprocess.Popen, str]:
        out = os.path.join(self.workdir, f"client-{self.serial}.json")
        process = subprocess.Popen(
            self.hosts["client"].argv(
                sys.executable, PEERS, "client", "--address", address, "--port", "80", "--out", out,
                "--duration", str(duration), "--timeout", "1",
            ),
            stdin=subprocess.DEVNULL,
        )
        return process, out

    def clientResults(self, process: subprocess.Popen, out: str) -> list:
        if process.wait(120):
            raise BenchError(f"the client failed with status {process.returncode}")
        with open(out) as f:
            return json.load(f)["requests"]

    def startup(self, target: str) -> dict:
        """
        Node a alone, configured as master: from its heartbeat's start
        (its log says it is backup) to its owning the virtual address; and
        from the process's start (lbproxy's includes importing Twisted).
        """
        self.serial += 1
        a = Node(self, "a", target)
        started = time.monotonic()
        a.start()
        pattern = STARTED[target]
        try:
            heartbeat = waitFor(lambda: pattern in a.logText(), f"{target} to start its heartbeat")
            owned = waitFor(a.hasVIP, f"{target} to take the virtual address")
        finally:
            a.stop()
        return {"heartbeatMs": round((owned - heartbeat) * 1000, 1), "processMs": round((owned - started) * 1000, 1)}

    def failover(self, target: str, scenario: str) -> dict:
        a, b = self.pair(target)
        try:
            process, out = self.client(self.args.client_duration)
            time.sleep(1.0)
            event = time.monotonic()
            if scenario == "sigkill":
                # The whole node's software dies at once: the heartbeat and
                # the proxy (for keepalived, HAProxy too).
                a.signal(signal.SIGKILL, True)
            else:
                a.signal(signal.SIGTERM, False)
            took = waitFor(b.hasVIP, f"{target} node b to take over") - event
            requests = self.clientResults(process, out)
        finally:
            a.stop()
            b.stop()
        figures = analyse(requests)
        return {"takeoverMs": round(took * 1000, 1), **figures}

    def sticky(self, sources: list[str]) -> list:
        """
        One request from each of C{sources} in turn: C{[source, ok, backend]}.
        """
        out = os.path.join(self.workdir, f"sticky-{self.serial}.json")
        process = subprocess.run(
            self.hosts["client"].argv(
                sys.executable, PEERS, "sticky", "--address", VIP, "--port", "80", "--out", out,
                "--sources", ",".join(sources), "--timeout", "2",
            ),
            stdin=subprocess.DEVNULL,
            timeout=60 + 2 * len(sources),
        )
        if process.returncode:
            raise BenchError(f"the sticky client failed with status {process.returncode}")
        with open(out) as f:
            return json.load(f)["sticky"]

    def stick(self, target: str) -> dict:
        """
        Clients pinned by their source address on the master (a stick
        table, replicated to the backup), then SIGKILL of every process
        of the master: how many of them the backup sends to the same
        backend. A first request from the client's own address shifts
        the master's round-robin turns, so without replication none would.
        """
        sources = stickSources(STICK_FIRST, self.args.stick_clients)
        a, b = self.pair(target, stick=True)
        try:
            self.sticky(["192.0.2.50"])
            pinned = self.sticky(sources)
            # The updates go out within tens of milliseconds.
            time.sleep(1.0)
            a.signal(signal.SIGKILL, True)
            waitFor(b.hasVIP, f"{target} node b to take over")
            after = self.sticky(sources)
        finally:
            a.stop()
            b.stop()
        return {**honoured(pinned, after), "clients": len(sources)}

    def loadTargets(self) -> list[str]:
        urls = {"master": f"http://{VIP}:8081/", "backup": f"http://{self.hosts['b'].address}:8000/"}
        return [urls[name] for name in self.args.load_nodes.split(",")]

    def load(self) -> dict:
        """
        wrk saturates both lbproxy nodes (the master through the virtual
        address, the backup on its own address) while they keep up their
        heartbeat; their stop lines give how late adverts went out and how
        long received ones waited for the reactor.
        """
        a, b = self.pair("lbproxy")
        wrk = findExecutable("wrk")
        client = self.hosts["client"]
        seconds = f"{self.args.load_duration:g}s"
        cpuBefore = sum(cpuSeconds(a.heartbeat.pid))
        loads = [
            subprocess.Popen(
                client.argv(wrk, "-t1", f"-c{self.args.connections}", f"-d{seconds}", url),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for url in self.loadTargets()
        ]
        began = time.monotonic()
        outputs = [p.communicate(timeout=self.args.load_duration + 60)[0] for p in loads]
        cpu = 100 * (sum(cpuSeconds(a.heartbeat.pid)) - cpuBefore) / (time.monotonic() - began)
        changed = "ha: master (was backup)" in b.logText() or "ha: backup (was master)" in a.logText()
        a.stop()
        b.stop()
        rates = [re.search(r"Requests/sec:\s+([\d.]+)", o) for o in outputs]
        return {
            "requestsPerSecond": [float(r.group(1)) if r else None for r in rates],
            "masterCpuPercent": round(cpu),
            "roleChanged": changed,
            "master": _timingLine(a.logText()),
            "backup": _timingLine(b.logText()),
        }


def _timingLine(log: str) -> dict:
    match = re.search(r"ha: stopped; (\d+) adverts sent, late by (.*?); adverts handled after (.*?); dropped", log)
    if not match:
        return {}
    return {"sent": int(match.group(1)), "sendLate": match.group(2), "receiveDelay": match.group(3)}


def median(values: list) -> float:
    return statistics.median(values) if values else float("nan")


def run(args: argparse.Namespace) -> int:
    reason = netns.available()
    if reason is not None:
        raise BenchError(reason)
    for tool in ("haproxy", "keepalived") if "keepalived" in args.targets else ():
        findExecutable(tool)
    netns.removeLeftovers()
    workdir = makeWorkdir("lbproxy-bench-failover-", args.keep_workdir)
    hosts = netns.makeHosts(HOSTS)
    results: dict = {}
    try:
        with ProcessGroup(workdir) as group:
            for name in ("be1", "be2"):
                host = hosts[name]
                group.start(name, host.argv(sys.executable, PEERS, "backend", "--address", host.address, "--port", "8080", "--name", name))
                if "load" in args.scenarios:
                    startNginx(group, host, workdir)
            if "stick" in args.scenarios:
                for address in stickSources(STICK_FIRST, args.stick_clients):
                    hosts["client"].run("ip", "addr", "add", f"{address}/24", "dev", "eth0")
            time.sleep(1.0)
            group.checkAlive()
            measurement = Run(args, hosts, group, workdir)
            details = {
                "keepalived": toolVersion([findExecutable("keepalived"), "--version"]) if "keepalived" in args.targets else "",
                "haproxy": toolVersion([findExecutable("haproxy"), "-v"]) if "keepalived" in args.targets else "",
                "lbproxyRevision": toolVersion(["git", "-C", REPO, "describe", "--always", "--dirty"]),
            }
            say("details: " + "; ".join(f"{k}: {v}" for k, v in details.items() if v))
            started = time.monotonic()
            for number in range(1, args.rounds + 1):
                for scenario in args.scenarios:
                    for target in (["lbproxy"] if scenario == "load" else args.targets):
                        if scenario == "startup":
                            figures = measurement.startup(target)
                        elif scenario == "load":
                            figures = measurement.load()
                        elif scenario == "stick":
                            figures = measurement.stick(target)
                        else:
                            figures = measurement.failover(target, scenario)
                        results.setdefault((scenario, target), []).append(figures)
                        say(f"round {number}/{args.rounds} {scenario:<8} {target:<10} {figures}")
            elapsed = time.monotonic() - started
    finally:
        hosts.close()
    say("")
    say(report(results, args))
    say(f"\n{args.rounds} rounds in {elapsed:.0f}s; load average after: "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.json:
        writeJson(args.json, {
            "benchmark": "failover",
            "machine": machineInfo(),
            "settings": {"rounds": args.rounds, "interval": args.interval, "clientDuration": args.client_duration},
            "details": details,
            "results": [
                {"scenario": s, "target": t, "runs": runs} for (s, t), runs in results.items()
            ],
        })
        say(f"JSON written to {args.json}")
    return 0


def report(results: dict, args) -> str:
    rows = []
    for (scenario, target), runs in results.items():
        if scenario == "startup":
            rows.append([
                "startup", target, f"{median([r['heartbeatMs'] for r in runs]):.0f}",
                "-", "-", "-", f"(process {median([r['processMs'] for r in runs]):.0f})",
            ])
            continue
        if scenario in ("load", "stick"):
            continue
        lost = [r.get("lost") for r in runs if r.get("lost") is not None]
        gaps = [r["gapMs"] for r in runs if "gapMs" in r]
        rows.append([
            scenario,
            target,
            f"{median([r['takeoverMs'] for r in runs]):.0f}",
            f"{median(gaps):.0f}" if gaps else "-",
            f"{median(lost):.0f}" if lost else "-",
            f"{max(lost)}" if lost else "-",
            f"{median([r['requests'] for r in runs]):.0f}" if lost else "-",
        ])
    lines = [formatTable(
        ["scenario", "target", "takeover ms", "gap ms", "lost", "max lost", "requests"], rows
    )]
    for runs in [results.get(("load", "lbproxy"))] if ("load", "lbproxy") in results else []:
        lines.append("\nheartbeat under wrk load (each round):")
        for r in runs:
            lines.append(
                f"  master {r['masterCpuPercent']}% CPU, {r['requestsPerSecond']} req/s; "
                f"master adverts late by {r['master'].get('sendLate')}; "
                f"backup handled adverts after {r['backup'].get('receiveDelay')}; "
                f"role changed: {r['roleChanged']}"
            )
    stick = [(target, results[("stick", target)]) for target in TARGETS if ("stick", target) in results]
    if stick:
        lines.append("\nstick entries honoured by the backup after SIGKILL of the master (each round):")
        for target, runs in stick:
            lines.append(f"  {target}: " + ", ".join(f"{r['honoured']} of {r['of']}" for r in runs))
    sigkill = results.get(("sigkill", "lbproxy"))
    graceful = results.get(("graceful", "lbproxy"))
    if sigkill and args.interval == 0.2:
        gap = median([r["gapMs"] for r in sigkill])
        lines.append(f"\nlbproxy gap after SIGKILL: {gap:.0f} ms (goal <= {GOALS['sigkillGapMs']} ms) "
                     + ("PASS" if gap <= GOALS["sigkillGapMs"] else "MISS"))
    if graceful:
        lost = max(r["lost"] for r in graceful)
        lines.append(f"lbproxy requests lost on a graceful stop, worst round: {lost} (goal 0) "
                     + ("PASS" if lost == 0 else "MISS"))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    return runMain("run_failover", parseArgs, run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
