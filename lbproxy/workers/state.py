"""
Server states between the control process and the workers.

The control process's model is the one that decides: its health checks
and the admin API change its servers, and L{StatePusher} turns each change
into a message for every worker. A worker's L{StateFollower} applies them
to the worker's own model (the same objects, the same observers: a
worker's selection and its log read them as a single process's do).

A worker's passive checks may take one of its servers down: the follower
reports it (C{down}); the control process applies it to its model if the
server is up there, which pushes it to every worker, or else sends the
reporting worker the state it has (L{StatePusher.downReported}).

A C{sync} message carries every pool's servers as the control process has
them; a worker applies it whole (L{StateFollower.applySync}): at its start
(the admin API may have changed servers since the file was read) and after
each reload (both reloaded the same file).
"""

from __future__ import annotations

from twisted.logger import Logger

from lbproxy.config import ServerConfig
from lbproxy.core.model import Balancer, StateChange
from lbproxy.core.pool import Server, ServerState


def serverRecord(server: Server) -> dict:
    """
    What a worker needs to build or check one server.
    """
    return {
        "name": server.name,
        "address": server.address,
        "weight": server.weight,
        "backup": server.backup,
        "maxconn": server.maxconn,
        "cookie": server.cookie,
    }


def syncMessage(balancer: Balancer) -> dict:
    """
    The C{sync} message of C{balancer}: every pool's servers, their
    settings, states and last check.
    """
    pools = {}
    for pool in balancer.pools.values():
        pools[pool.name] = [
            {**serverRecord(s), "state": s.state.value, "healthy": s.health.healthy} for s in pool.servers
        ]
    return {"op": "sync", "pools": pools}


class _ModelObserver:
    """
    What observes the balancer's state changes from L{start} to L{stop}:
    its C{changed} is called with each L{StateChange}.
    """

    balancer = None

    def start(self) -> None:
        self.balancer.addObserver(self.changed)

    def stop(self) -> None:
        try:
            self.balancer.removeObserver(self.changed)
        except ValueError:
            pass

    def changed(self, change: StateChange) -> None:
        raise NotImplementedError


class StatePusher(_ModelObserver):
    """
    In the control process: every change of its model's servers, as a
    message to C{send} (which sends it to every worker).

    While C{paused} (a reload is being applied: the workers reload the
    same file themselves), nothing is sent; a C{sync} follows.
    """

    log = Logger()

    def __init__(self, balancer: Balancer, send) -> None:
        self.balancer = balancer
        self.send = send
        self.paused = False
        #: The health each server was last pushed with.
        self._healthy: dict[tuple[str, str], bool | None] = {}

    def start(self) -> None:
        super().start()
        self.noteHealth()

    def changed(self, change: StateChange) -> None:
        if self.paused or not change.kind.startswith("server"):
            return
        poolName, _, serverName = change.name.partition("/")
        message = {"pool": poolName, "server": serverName, "reason": change.reason}
        if change.kind == "server":
            self.send({"op": "state", **message, "state": change.new})
        elif change.kind == "server-weight":
            self.send({"op": "weight", **message, "weight": int(change.new)})
        elif change.kind == "server-added":
            server = self._server(poolName, serverName)
            if server is not None:
                self.send({"op": "add", **message, "server": serverRecord(server)})
        elif change.kind == "server-removed":
            self.send({"op": "remove", **message})

    def _server(self, poolName: str, serverName: str) -> Server | None:
        pool = self.balancer.pools.get(poolName)
        if pool is None:
            return None
        try:
            return pool.server(serverName)
        except KeyError:
            return None

    def noteHealth(self) -> None:
        """
        Remember every server's health as the workers have it now (a sync
        carries it).
        """
        self._healthy = {
            (pool.name, server.name): server.health.healthy
            for pool in self.balancer.pools.values()
            for server in pool.servers
        }

    def pushHealth(self) -> None:
        """
        Send the servers whose last check changed its verdict since the
        last push (a draining server whose checks fail no longer takes
        the clients pinned to it: L{Server.pinnable}).
        """
        if self.paused:
            return
        for pool in self.balancer.pools.values():
            for server in pool.servers:
                key = (pool.name, server.name)
                healthy = server.health.healthy
                if self._healthy.get(key) is not healthy:
                    self._healthy[key] = healthy
                    self.send({"op": "health", "pool": pool.name, "server": server.name, "healthy": healthy})

    def downReported(self, message: dict, worker: str, reply) -> None:
        """
        A worker's passive checks took a server down: take it down here
        (every worker follows) when it is up here; otherwise C{reply} to
        that worker with the state it has here.
        """
        server = self._server(str(message.get("pool")), str(message.get("server")))
        if server is None:
            return
        if server.state is ServerState.UP:
            server.setState(ServerState.DOWN, f"{message.get('reason') or 'passive checks'} ({worker})")
        else:
            reply({"op": "state", "pool": server.pool.name, "server": server.name,
                   "state": server.state.value, "reason": "as the control process has it"})


class StateFollower(_ModelObserver):
    """
    In a worker: applies the control process's messages to the worker's
    model, and reports (through C{report}) a server that its own passive
    checks took down.
    """

    log = Logger()

    def __init__(self, balancer: Balancer, report) -> None:
        self.balancer = balancer
        self.report = report
        self._applying = False

    def changed(self, change: StateChange) -> None:
        if self._applying or change.kind != "server" or change.new != ServerState.DOWN.value:
            return
        poolName, _, serverName = change.name.partition("/")
        self.report({"op": "down", "pool": poolName, "server": serverName, "reason": change.reason})

    def apply(self, message: dict) -> None:
        """
        Apply one message of the control process (C{state}, C{weight},
        C{health}, C{add}, C{remove} or C{sync}).
        """
        self._applying = True
        try:
            getattr(self, "_" + message["op"])(message)
        finally:
            self._applying = False

    def _server(self, message: dict) -> Server | None:
        pool = self.balancer.pools.get(message.get("pool"))
        if pool is None:
            return None
        try:
            return pool.server(message.get("server"))
        except KeyError:
            return None

    def _state(self, message: dict) -> None:
        server = self._server(message)
        if server is not None:
            server.setState(ServerState(message["state"]), message.get("reason", ""))

    def _weight(self, message: dict) -> None:
        server = self._server(message)
        if server is not None:
            server.setWeight(message["weight"], message.get("reason", ""))

    def _health(self, message: dict) -> None:
        server = self._server(message)
        if server is not None:
            server.health.healthy = message["healthy"]

    def _add(self, message: dict) -> None:
        pool = self.balancer.pools.get(message.get("pool"))
        if pool is None:
            return
        record = message["server"]
        try:
            existing = pool.server(record["name"])
        except KeyError:
            existing = None
        if existing is not None:
            if existing.address == record["address"]:
                return
            pool.removeServer(existing.name, message.get("reason", ""))
        pool.addServer(ServerConfig(**record), message.get("reason", ""))

    def _remove(self, message: dict) -> None:
        server = self._server(message)
        if server is not None:
            server.pool.removeServer(server.name, message.get("reason", ""))

    def _sync(self, message: dict) -> None:
        reason = "as the control process has it"
        for poolName, records in message["pools"].items():
            pool = self.balancer.pools.get(poolName)
            if pool is None:
                continue
            wanted = {record["name"]: record for record in records}
            for server in list(pool.servers):
                record = wanted.get(server.name)
                if record is None or record["address"] != server.address:
                    pool.removeServer(server.name, reason)
            for record in records:
                settings = {k: record[k] for k in ("name", "address", "weight", "backup", "maxconn", "cookie")}
                try:
                    server = pool.server(record["name"])
                except KeyError:
                    server = pool.addServer(ServerConfig(**settings), reason)
                else:
                    pool.updateServer(ServerConfig(**settings), reason)
                server.health.healthy = record["healthy"]
                server.setState(ServerState(record["state"]), reason)
