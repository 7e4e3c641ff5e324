"""
Workers in memory: the C{workers} key, the channel's framing, the state
pushed from the control process's model to a worker's and back, the
workers' counters summed, and the supervision of worker processes on a
fake reactor (L{task.Clock} and fake process transports).

The real processes are in test_workers_twistd.
"""

from __future__ import annotations

import json
import socket
import struct

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from lbproxy.config import loadBytes
from lbproxy.core.model import Balancer, ListenerState
from lbproxy.core.pool import ServerState
from lbproxy.errors import ConfigError
from lbproxy.listening import ListenerStartError
from lbproxy.sockets import listeningSocket
from lbproxy.workers.channel import CONTROL_IN, CONTROL_OUT, ChannelProtocol
from lbproxy.workers.control import ControlService, RemoteListenerService
from lbproxy.workers.counters import CounterSum, collect
from lbproxy.workers.state import StateFollower, StatePusher, syncMessage
from lbproxy.workers.supervisor import RestartPolicy, WorkerSupervisor, describeExit

POOL = """
[pools.web]
servers = [
    { name = "a", address = "127.0.0.1:9001" },
    { name = "b", address = "127.0.0.1:9002" },
]
[pools.web.health]
interval = "2s"
"""

LISTENER = """
[listeners.front]
bind = "tcp:8080:interface=127.0.0.1"
mode = "http"
pool = "web"
"""


def load(text: str):
    return loadBytes(text.encode(), "lb.toml")


# The workers key.


def test_workersDefaultsToOne():
    assert load(POOL + LISTENER).workers == 1


def test_workersNumberAndAuto():
    assert load("workers = 3\n" + POOL + LISTENER).workers == 3
    from lbproxy.config import workers

    assert workers.availableCores() >= 1
    root = workers.Table({"workers": "auto"}, "", "lb.toml")
    assert workers.parseWorkers(root, cores=lambda: 6) == 6
    assert workers.parseWorkers(root, cores=lambda: 500) == workers.MAX_WORKERS


@pytest.mark.parametrize("value", ["0", "-1", "65", '"many"', "true", "1.5"])
def test_workersRefused(value):
    with pytest.raises(ConfigError) as caught:
        load(f"workers = {value}\n" + POOL + LISTENER)
    assert str(caught.value).startswith('lb.toml: workers: expected an integer from 1 to 64 or "auto", got ')
    assert "\n" not in str(caught.value)


def test_workersNeedTCPListeners():
    text = "workers = 2\n" + POOL + '[listeners.sock]\nbind = "unix:address=/tmp/lbproxy-test.sock"\npool = "web"\n'
    with pytest.raises(ConfigError) as caught:
        load(text)
    assert str(caught.value) == (
        'lb.toml: listeners.sock.bind: expected a "tcp:" or "tcp6:" endpoint with workers = 2 (each worker '
        "opens its own socket on the address, shared with SO_REUSEPORT), got 'unix:address=/tmp/lbproxy-test.sock'"
    )
    # One process may listen on a UNIX socket as before.
    assert load(text.replace("workers = 2\n", "")).workers == 1


def test_workersStickTablesPerWorker():
    stick = '[pools.web.stick]\non = "src"\n'
    assert load("workers = 2\n" + POOL + stick + LISTENER).pools["web"].stick.replicate is False
    with pytest.raises(ConfigError) as caught:
        load("workers = 2\n" + POOL + stick + "replicate = true\n" + LISTENER)
    assert str(caught.value).startswith("lb.toml: pools.web.stick.replicate: expected false with workers = 2")


def test_checkOption(tmp_path, capsys):
    """
    C{twistd lbproxy --check} validates the key.
    """
    from lbproxy.tap import Options

    path = tmp_path / "lb.toml"
    path.write_text("workers = 0\n" + POOL + LISTENER)
    options = Options()
    with pytest.raises(SystemExit) as exited:
        options.parseOptions(["--check", "--config", str(path)])
    assert exited.value.code == 1
    assert "workers: expected an integer from 1 to 64" in capsys.readouterr().err


# Sockets shared with SO_REUSEPORT.


def test_reusePortSocketsShareAnAddress():
    first = listeningSocket(socket.AF_INET, "127.0.0.1", 0, 5, reusePort=True)
    try:
        port = first.getsockname()[1]
        second = listeningSocket(socket.AF_INET, "127.0.0.1", port, 5, reusePort=True)
        second.close()
        with pytest.raises(OSError):
            listeningSocket(socket.AF_INET, "127.0.0.1", port, 5).close()
    finally:
        first.close()


def test_remoteListenerRefusesATakenPort():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        config = load("workers = 2\n" + POOL + LISTENER.replace("8080", str(port)))
        balancer = Balancer(config)
        service = RemoteListenerService(balancer.listeners["front"], "lb.toml", Clock())
        with pytest.raises(ListenerStartError) as caught:
            service.privilegedStartService()
        assert str(caught.value) == (
            f"lb.toml: listeners.front.bind: cannot listen on 127.0.0.1:{port}: Address already in use "
            "(another process listens there)"
        )
        assert balancer.listeners["front"].state is ListenerState.FAILED
    finally:
        holder.close()


# The channel.


def test_channelFramesJSON():
    got = []
    channel = ChannelProtocol(got.append)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.send({"op": "state", "pool": "web"})
    data = transport.value()
    assert data[4:] == b'{"op":"state","pool":"web"}'
    assert struct.unpack("!I", data[:4])[0] == len(data) - 4
    channel.dataReceived(data[:3])
    channel.dataReceived(data[3:])
    assert got == [{"op": "state", "pool": "web"}]


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'{"no": "op"}'])
def test_channelClosesOnABadMessage(payload):
    got = []
    channel = ChannelProtocol(got.append)
    transport = StringTransport()
    channel.makeConnection(transport)
    with capturedLogs() as logs:
        channel.dataReceived(struct.pack("!I", len(payload)) + payload)
    assert got == []
    assert transport.disconnecting
    assert "closing on a bad message" in logs[0]["log_format"]


# State pushed and followed.


class Pair:
    """
    The control process's model and a worker's, the pusher's messages
    going through JSON to the worker's follower, and the follower's reports
    through JSON to the pusher.
    """

    def __init__(self, text: str = POOL + LISTENER) -> None:
        self.control = Balancer(load(text))
        self.worker = Balancer(load(text))
        self.sent: list[dict] = []
        self.reported: list[dict] = []
        self.pusher = StatePusher(self.control, self._push)
        self.follower = StateFollower(self.worker, self._report)
        self.pusher.start()
        self.follower.start()

    def _push(self, message):
        message = json.loads(json.dumps(message))
        self.sent.append(message)
        self.follower.apply(message)

    def _report(self, message):
        message = json.loads(json.dumps(message))
        self.reported.append(message)
        self.pusher.downReported(message, "worker 1", self._push)

    def server(self, balancer, name):
        return balancer.pools["web"].server(name)


def test_statesAndWeightsFollow():
    pair = Pair()
    pair.server(pair.control, "a").setState(ServerState.DOWN, "3 checks failed")
    pair.server(pair.control, "b").setWeight(7, "admin API")
    assert pair.server(pair.worker, "a").state is ServerState.DOWN
    assert pair.server(pair.worker, "b").weight == 7
    assert [m["op"] for m in pair.sent] == ["state", "weight"]
    assert pair.reported == []


def test_serversAddedAndRemovedFollow():
    from lbproxy.config import ServerConfig

    pair = Pair()
    pair.control.pools["web"].addServer(ServerConfig("c", "127.0.0.1:9003", weight=2), "admin API")
    pair.control.pools["web"].removeServer("a", "admin API")
    assert [s.name for s in pair.worker.pools["web"].servers] == ["b", "c"]
    assert pair.server(pair.worker, "c").weight == 2


def test_passiveDownGoesThroughTheControlProcess():
    pair = Pair()
    worker = pair.server(pair.worker, "a")
    worker.setState(ServerState.DOWN, "3 consecutive failed connections")
    assert pair.reported[0]["op"] == "down"
    control = pair.server(pair.control, "a")
    assert control.state is ServerState.DOWN
    assert control.pool is not None
    # The control process's checks bring it back, for every worker.
    control.setState(ServerState.UP, "2 of 2 checks passed")
    assert worker.state is ServerState.UP


def test_passiveDownOfAServerNotUpHere():
    """
    A worker reporting a server down that is draining in the control
    process gets the control process's state back.
    """
    pair = Pair()
    pair.server(pair.control, "a").setState(ServerState.DRAIN, "admin API")
    pair.follower.apply({"op": "state", "pool": "web", "server": "a", "state": "up", "reason": "stale"})
    pair.server(pair.worker, "a").setState(ServerState.DOWN, "passive")
    assert pair.server(pair.control, "a").state is ServerState.DRAIN
    assert pair.server(pair.worker, "a").state is ServerState.DRAIN


def test_healthVerdictsPushedWhenTheyChange():
    pair = Pair()
    pair.server(pair.control, "a").health.healthy = False
    pair.pusher.pushHealth()
    pair.pusher.pushHealth()
    assert [m["op"] for m in pair.sent] == ["health"]
    assert pair.server(pair.worker, "a").health.healthy is False


def test_pausedPusherSendsNothing():
    pair = Pair()
    pair.pusher.paused = True
    pair.server(pair.control, "a").setState(ServerState.MAINT, "reload")
    assert pair.sent == []


def test_syncMakesTheWorkerAlike():
    from lbproxy.config import ServerConfig

    pair = Pair()
    pair.pusher.paused = True
    control = pair.control.pools["web"]
    control.addServer(ServerConfig("c", "127.0.0.1:9003"), "admin API")
    control.removeServer("b", "admin API")
    control.server("a").setState(ServerState.DRAIN, "admin API")
    control.server("a").setWeight(4, "admin API")
    control.server("a").health.healthy = False
    pair.follower.apply(json.loads(json.dumps(syncMessage(pair.control))))
    worker = pair.worker.pools["web"]
    assert [(s.name, s.state, s.weight, s.health.healthy) for s in worker.servers] == [
        ("a", ServerState.DRAIN, 4, False),
        ("c", ServerState.UP, 1, None),
    ]
    assert pair.reported == []


# Counters.


def test_countersSummed():
    control = Balancer(load(POOL + LISTENER))
    workers = [Balancer(load(POOL + LISTENER)) for _ in range(2)]
    for number, worker in enumerate(workers, 1):
        listener = worker.listeners["front"]
        listener.counters.connections += 10 * number
        listener.counters.countResponse(200)
        listener.counters.countDuration(0.02)
        listener.sessions.add(object())
        server = worker.pools["web"].server("a")
        server.acquire()
        server.bytesOut += 100
        server.responses[2] += number
    total = CounterSum()
    total.apply(control, [json.loads(json.dumps(collect(w))) for w in workers])
    listener = control.listeners["front"]
    assert listener.counters.connections == 30
    assert listener.counters.responses[2] == 2
    assert sum(listener.counters.durations) == 2
    assert listener.sessionCount == 2
    assert listener.snapshot(0)["sessions"] == 2
    server = control.pools["web"].server("a")
    assert (server.totalConnections, server.active, server.bytesOut, server.responses[2]) == (2, 2, 200, 3)
    # A worker exits: its totals stay, its sessions go.
    total.retire(collect(workers[0]))
    total.apply(control, [collect(workers[1])])
    assert listener.counters.connections == 30
    assert listener.sessionCount == 1
    assert server.totalConnections == 2 and server.active == 1


def test_removedServerGoneOnceNoWorkerHasFlows():
    control = Balancer(load(POOL + LISTENER))
    worker = Balancer(load(POOL + LISTENER))
    worker.pools["web"].server("a").acquire()
    total = CounterSum()
    total.apply(control, [collect(worker)])
    control.pools["web"].removeServer("a", "admin API")
    assert [s.name for s in control.pools["web"].removing] == ["a"]
    worker.pools["web"].server("a").release()
    total.apply(control, [collect(worker)])
    assert control.pools["web"].removing == []


# Supervision.


class FakeProcess:
    """
    A process transport: what was written to the child, closed, signalled.
    """

    def __init__(self, protocol, pid: int) -> None:
        self.protocol = protocol
        self.pid = pid
        self.written: dict[int, bytes] = {}
        self.closed: list[int] = []
        self.signals: list[str] = []

    def writeToChild(self, fd: int, data: bytes) -> None:
        self.written[fd] = self.written.get(fd, b"") + data

    def closeChildFD(self, fd: int) -> None:
        self.closed.append(fd)

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def messages(self) -> list[dict]:
        data, out = self.written.get(CONTROL_IN, b""), []
        while data:
            (size,) = struct.unpack("!I", data[:4])
            out.append(json.loads(data[4 : 4 + size]))
            data = data[4 + size :]
        return out

    def say(self, message: dict) -> None:
        payload = json.dumps(message).encode()
        self.protocol.childDataReceived(CONTROL_OUT, struct.pack("!I", len(payload)) + payload)

    def end(self, reason) -> None:
        self.protocol.processEnded(Failure(reason))


class ProcessClock(Clock):
    """
    A clock that spawns fake processes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[FakeProcess, list[str], dict]] = []
        self.stopped = False

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None, **kw):
        process = FakeProcess(protocol, 1000 + len(self.spawned))
        self.spawned.append((process, args, childFDs))
        protocol.makeConnection(process)
        return process

    def stop(self) -> None:
        self.stopped = True


def control(clock: ProcessClock, workers: int = 2, grace: str = "5s") -> ControlService:
    text = f"workers = {workers}\n[daemon]\ngrace = \"{grace}\"\n" + POOL + LISTENER
    service = ControlService(load(text), clock, argv=lambda n: ["python", "-m", "lbproxy.workers.child", str(n)])
    service.supervisor.fatal = fatal.append
    return service


fatal: list[str] = []


def ready(process: FakeProcess) -> None:
    process.say({"op": "ready", "pid": process.pid, "listeners": {"front": "serving"}})


def test_startsWorkersWithTheirPipes():
    clock = ProcessClock()
    service = control(clock)
    service.startService()
    assert [args[-1] for _, args, _ in clock.spawned] == ["1", "2"]
    for process, _, childFDs in clock.spawned:
        assert childFDs == {0: "w", 1: "r", 2: "r", CONTROL_IN: "w", CONTROL_OUT: "r"}
        assert process.closed == [0]
    listener = service.balancer.listeners["front"]
    assert listener.state is ListenerState.STARTING
    first = clock.spawned[0][0]
    ready(first)
    assert first.messages()[0]["op"] == "sync"
    assert listener.state is ListenerState.SERVING
    service.balancer.pools["web"].server("a").setState(ServerState.DOWN, "checks")
    for process, _, _ in clock.spawned:
        assert process.messages()[-1] == {
            "op": "state", "pool": "web", "server": "a", "state": "down", "reason": "checks"
        }


def test_workerLogLines():
    clock = ProcessClock()
    service = control(clock)
    service.startService()
    process = clock.spawned[0][0]
    with capturedLogs() as logs:
        process.protocol.childDataReceived(1, b"warn lbproxy.core.pool.Pool server web/a is down\ninfo x")
        process.protocol.childDataReceived(1, b" y\n")
        process.protocol.childDataReceived(2, b"Traceback (most recent call last):\n")
    assert [(e["log_namespace"], e["log_level"].name, e["text"]) for e in logs] == [
        ("lbproxy.core.pool.Pool", "warn", "server web/a is down"),
        ("x", "info", "y"),
        ("lbproxy.workers.child", "error", "Traceback (most recent call last):"),
    ]
    assert logs[0]["worker"] == "worker 1"


def test_restartedWithBackoffAndLogged():
    clock = ProcessClock()
    service = control(clock)
    service.startService()
    first = clock.spawned[0][0]
    ready(first)
    with capturedLogs() as logs:
        first.end(ProcessTerminated(signal=9))
    assert [e["how"] for e in logs if "how" in e] == ["killed by signal 9"]
    assert "starting it again in 0.5s" in _text(logs)
    assert len(clock.spawned) == 2
    assert service.supervisor.snapshot()["workers"][0]["state"] == "restarting"
    clock.advance(0.5)
    assert len(clock.spawned) == 3
    again = clock.spawned[2][0]
    ready(again)
    assert again.messages()[0]["op"] == "sync"
    worker = service.supervisor.snapshot()["workers"][0]
    assert (worker["pid"], worker["restarts"], worker["lastExit"]) == (again.pid, 1, "killed by signal 9")


def test_restartPolicy():
    policy = RestartPolicy(initial=0.5, maximum=30, perMinute=3, window=60)
    assert [policy.next(0)[0] for _ in range(3)] == [0.5, 1.0, 2.0]
    delay, limited = policy.next(10)
    assert limited and delay == pytest.approx(0.5 + 60 - 10)
    # A minute later, the count starts over.
    assert policy.next(200) == (0.5, False)


def test_workerThatCannotStartStopsTheStart():
    clock = ProcessClock()
    service = control(clock)
    service.startService()
    fatal.clear()
    first = clock.spawned[0][0]
    first.say({"op": "failed", "error": "lb.toml: listeners.front.bind: cannot listen on 127.0.0.1:80: Permission denied"})
    first.end(ProcessTerminated(exitCode=1))
    assert fatal == ["worker 1: lb.toml: listeners.front.bind: cannot listen on 127.0.0.1:80: Permission denied"]
    assert len(clock.spawned) == 2


def test_stopWaitsForEveryWorkerThenKills():
    clock = ProcessClock()
    service = control(clock, grace="5s")
    service.startService()
    for process, _, _ in clock.spawned:
        ready(process)
    stopped = service.supervisor.stopService()
    assert [p.messages()[-1] for p, _, _ in clock.spawned] == [{"op": "stop"}] * 2
    listener = service.balancer.listeners["front"]
    assert listener.state is ListenerState.DRAINING
    first, second = (p for p, _, _ in clock.spawned)
    first.end(ProcessDone(0))
    assert not stopped.called
    clock.advance(5 + 10)
    assert second.signals == ["KILL"]
    second.end(ProcessTerminated(signal=9))
    assert stopped.called
    assert listener.state is ListenerState.STOPPED
    assert len(clock.spawned) == 2


def test_countersAskedAndSummed():
    clock = ProcessClock()
    service = control(clock)
    service.startService()
    worker = Balancer(load(POOL + LISTENER))
    worker.listeners["front"].counters.connections = 4
    for process, _, _ in clock.spawned:
        ready(process)
    refreshed = service.refreshCounters()
    assert not refreshed.called
    for process, _, _ in clock.spawned:
        ask = process.messages()[-1]
        assert ask["op"] == "counters"
        process.say({"op": "counters", "id": ask["id"], "data": collect(worker)})
    assert refreshed.called
    assert service.balancer.listeners["front"].counters.connections == 8
    assert [w["connections"] for w in service.supervisor.snapshot()["workers"]] == [4, 4]


def test_countersOfAWorkerThatDoesNotAnswer():
    clock = ProcessClock()
    service = control(clock)
    service.startService()
    for process, _, _ in clock.spawned:
        ready(process)
    refreshed = service.refreshCounters()
    clock.advance(2)
    assert refreshed.called


def test_reloadReachesEveryWorker(tmp_path):
    path = tmp_path / "lb.toml"
    text = "workers = 2\n" + POOL + LISTENER
    path.write_text(text)
    clock = ProcessClock()
    service = ControlService(loadBytes(text.encode(), str(path)), clock, argv=lambda n: ["python", str(n)])
    service.loader = lambda: loadBytes(path.read_text().encode(), str(path))
    service.startService()
    for process, _, _ in clock.spawned:
        ready(process)
    path.write_text(text.replace('address = "127.0.0.1:9002" }', 'address = "127.0.0.1:9002", weight = 5 }'))
    with capturedLogs() as logs:
        ok, line = service.reload("SIGHUP")
        assert ok, line
        for process, _, _ in clock.spawned:
            ask = process.messages()[-1]
            assert (ask["op"], ask["who"]) == ("reload", "SIGHUP")
            process.say({"op": "reloaded", "id": ask["id"], "ok": True, "line": "applied", "listeners": {"front": "serving"}})
            assert process.messages()[-1]["op"] == "sync"
    # The weight went with the reload and the sync, not as a push of its own.
    assert not any(m["op"] == "weight" for p, _, _ in clock.spawned for m in p.messages())
    assert "reload asked by SIGHUP: applied by workers 1, 2" in _text(logs)


def test_reloadChangingWorkersRefused(tmp_path):
    path = tmp_path / "lb.toml"
    text = "workers = 2\n" + POOL + LISTENER
    service = ControlService(loadBytes(text.encode(), str(path)), ProcessClock(), argv=lambda n: ["python"])
    service.loader = lambda: loadBytes(text.replace("workers = 2", "workers = 3").encode(), str(path))
    service.startService()
    ok, line = service.reload("SIGHUP")
    assert not ok
    assert "workers: expected 2 as running, got 3; the number of workers changes at a restart" in line


def test_describeExit():
    assert describeExit(Failure(ProcessDone(0))) == "exited with status 0"
    assert describeExit(Failure(ProcessTerminated(exitCode=3))) == "exited with status 3"
    assert describeExit(Failure(ProcessTerminated(signal=15))) == "killed by signal 15"


def _text(logs) -> str:
    from twisted.logger import formatEvent

    return "\n".join(formatEvent(e) for e in logs)


def test_supervisorIsAService():
    assert WorkerSupervisor.stopsWithListeners
