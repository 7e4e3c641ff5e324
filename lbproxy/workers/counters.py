"""
The workers' counters, summed in the control process's model.

A worker answers a C{counters} request with L{collect}: its listeners'
and servers' counters and what they serve now. The control process, which
serves nothing itself, writes the sum of every worker's into its own
model (L{CounterSum.apply}), so the stats page, the JSON and the metrics,
which read that model, show the whole balancer. The counters of a worker
that exited are kept (L{CounterSum.retire}): totals do not go back when a
worker is replaced. What a worker counted after its last answer and
before it died is lost.
"""

from __future__ import annotations

from lbproxy.core.model import Balancer, ListenerCounters

#: The listener counters that are plain numbers.
LISTENER_NUMBERS = ("connections", "refused", "errors", "bytesIn", "bytesOut", "requests", "logins",
                    "loginFailures", "durationSum")
#: The listener counters that are lists of numbers.
LISTENER_LISTS = ("responses", "durations")
#: The server counters that are plain numbers.
SERVER_NUMBERS = ("totalConnections", "connectErrors", "retries", "responseErrors", "bytesIn", "bytesOut")


def collect(balancer: Balancer) -> dict:
    """
    A worker's counters as plain data: by listener (draining ones
    included), and by pool and server (removed ones finishing their
    flows included), with the sessions, flows and queued flows of now.
    """
    listeners = {}
    for listener in [*balancer.draining, *balancer.listeners.values()]:
        counters = listener.counters
        plain = {name: getattr(counters, name) for name in LISTENER_NUMBERS}
        plain.update({name: list(getattr(counters, name)) for name in LISTENER_LISTS})
        plain["sessions"] = len(listener.sessions)
        listeners[listener.name] = plain
    pools = {}
    for pool in balancer.pools.values():
        servers = {}
        for server in (*pool.removing, *pool.servers):
            plain = {name: getattr(server, name) for name in SERVER_NUMBERS}
            plain["responses"] = list(server.responses)
            plain["active"] = server.active
            plain["address"] = server.address
            servers[server.name] = plain
        pools[pool.name] = {"queued": pool.queued, "servers": servers}
    return {"listeners": listeners, "pools": pools}


def _add(total: dict, plain: dict, keys, lists) -> None:
    for key in keys:
        total[key] = total.get(key, 0) + plain.get(key, 0)
    for key in lists:
        values = plain.get(key) or []
        current = total.setdefault(key, [0] * len(values))
        if len(current) < len(values):
            current.extend([0] * (len(values) - len(current)))
        for index, value in enumerate(values):
            current[index] += value


class CounterSum:
    """
    The sum of the workers' counters, applied to the control process's
    model.

    @ivar retired: the totals of workers that exited, by listener and by
        (pool, server, address).
    """

    def __init__(self) -> None:
        self.retiredListeners: dict[str, dict] = {}
        self.retiredServers: dict[tuple[str, str, str], dict] = {}

    def retire(self, snapshot: dict | None) -> None:
        """
        A worker exited; C{snapshot} is its last L{collect}: its totals
        count on (what it served now does not).
        """
        if not snapshot:
            return
        for name, plain in snapshot.get("listeners", {}).items():
            _add(self.retiredListeners.setdefault(name, {}), plain, LISTENER_NUMBERS, LISTENER_LISTS)
        for poolName, pool in snapshot.get("pools", {}).items():
            for serverName, plain in pool.get("servers", {}).items():
                key = (poolName, serverName, plain.get("address"))
                _add(self.retiredServers.setdefault(key, {}), plain, SERVER_NUMBERS, ("responses",))

    def apply(self, balancer: Balancer, snapshots: list[dict]) -> None:
        """
        Write the sum of C{snapshots} (one L{collect} per live worker) and
        of the retired totals into C{balancer}'s listeners and servers.
        A removed server no worker has any flow on any more is gone.
        """
        for listener in [*balancer.draining, *balancer.listeners.values()]:
            total = _copy(self.retiredListeners.get(listener.name, {}))
            sessions = 0
            for snapshot in snapshots:
                plain = snapshot.get("listeners", {}).get(listener.name)
                if plain is not None:
                    _add(total, plain, LISTENER_NUMBERS, LISTENER_LISTS)
                    sessions += plain.get("sessions", 0)
            _setListener(listener.counters, total)
            listener.elsewhere = sessions
        for pool in balancer.pools.values():
            queued = 0
            for snapshot in snapshots:
                queued += snapshot.get("pools", {}).get(pool.name, {}).get("queued", 0)
            pool.queuedElsewhere = queued
            for server in (*pool.removing, *pool.servers):
                key = (pool.name, server.name, server.address)
                total = _copy(self.retiredServers.get(key, {}))
                active = 0
                for snapshot in snapshots:
                    plain = snapshot.get("pools", {}).get(pool.name, {}).get("servers", {}).get(server.name)
                    if plain is not None and plain.get("address") == server.address:
                        _add(total, plain, SERVER_NUMBERS, ("responses",))
                        active += plain.get("active", 0)
                for key in SERVER_NUMBERS:
                    setattr(server, key, total.get(key, 0))
                responses = total.get("responses") or []
                server.responses = [*responses, *[0] * (len(server.responses) - len(responses))]
                server.active = active
            for server in list(pool.removing):
                if not server.active:
                    pool.forgetRemoved(server)


def _copy(totals: dict) -> dict:
    return {key: list(value) if isinstance(value, list) else value for key, value in totals.items()}


def _setListener(counters: ListenerCounters, total: dict) -> None:
    for key in LISTENER_NUMBERS:
        setattr(counters, key, total.get(key, 0))
    for key in LISTENER_LISTS:
        current = getattr(counters, key)
        values = total.get(key) or []
        current[:] = [*values, *[0] * (len(current) - len(values))]
