"""
Prometheus metrics of the running balancer, served at C{/metrics} of the
admin listener.

L{BalancerCollector} is a C{prometheus_client} collector that reads the
live model at each scrape (nothing is copied or updated on the data path
for it): listeners, pools, servers and the HA heartbeat, with the
conventional names (C{lbproxy_..._total} for counters, base units in
C{_bytes} and C{_seconds}) and C{listener}, C{pool} and C{server} labels.

The HTTP request duration histogram of each listener
(C{lbproxy_listener_http_request_duration_seconds}) is counted by the
front as one integer increment per request into the listener's buckets
(L{lbproxy.core.model.ListenerCounters.durations}) and exposed here as a
histogram: C{prometheus_client}'s own C{Histogram.observe} takes a lock
and walks its buckets in Python for every request.

A server removed and still finishing its flows is not exposed (its name
may already belong to the server that replaced it).

With workers (L{lbproxy.workers}) the model read is the control
process's, into which the workers' counters were summed just before the
scrape; C{lbproxy_worker_state} and C{lbproxy_worker_restarts_total} tell
of the workers themselves, and the process metrics are the control
process's.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from lbproxy.core.model import DURATION_BUCKETS, ListenerState
from lbproxy.core.pool import STATUS_CLASSES, ServerState

_LISTENER_STATES = [state.value for state in ListenerState]
_SERVER_STATES = [state.value for state in ServerState]
_CODES = STATUS_CLASSES[1:]


class BalancerCollector(Collector):
    """
    Collects the metrics of C{service}'s balancer at each scrape.
    """

    def __init__(self, service) -> None:
        self.service = service

    def collect(self):
        balancer = self.service.balancer
        now = balancer.clock.seconds()
        yield from self._listeners(balancer.listeners.values())
        yield from self._pools(balancer.pools.values(), now)
        parts = balancer.snapshot()
        yield from self._process(parts.get("ha"))
        if parts.get("workers"):
            yield from self._workers(parts["workers"])

    def _listeners(self, listeners):
        labels = ["listener"]
        state = GaugeMetricFamily("lbproxy_listener_state", "1 for the state the listener is in.", labels=["listener", "state"])
        sessions = GaugeMetricFamily("lbproxy_listener_current_sessions", "Client connections served now.", labels=labels)
        limit = GaugeMetricFamily("lbproxy_listener_max_sessions", "The listener's maxconn (0: no limit).", labels=labels)
        counters = {
            "connections": CounterMetricFamily("lbproxy_listener_connections", "Client connections accepted.", labels=labels),
            "refused": CounterMetricFamily("lbproxy_listener_refused_connections", "Connections refused at maxconn.", labels=labels),
            "errors": CounterMetricFamily("lbproxy_listener_errors", "Sessions or requests that ended in an error.", labels=labels),
            "bytesIn": CounterMetricFamily("lbproxy_listener_received_bytes", "Bytes received from clients.", labels=labels),
            "bytesOut": CounterMetricFamily("lbproxy_listener_sent_bytes", "Bytes sent to clients.", labels=labels),
            "requests": CounterMetricFamily("lbproxy_listener_http_requests", "HTTP requests received.", labels=labels),
            "logins": CounterMetricFamily("lbproxy_listener_mail_logins", "Successful mail logins.", labels=labels),
            "loginFailures": CounterMetricFamily("lbproxy_listener_mail_login_failures", "Refused mail logins.", labels=labels),
        }
        responses = CounterMetricFamily(
            "lbproxy_listener_http_responses", "HTTP responses sent, by status class.", labels=["listener", "code"]
        )
        durations = HistogramMetricFamily(
            "lbproxy_listener_http_request_duration_seconds",
            "HTTP requests by time from their first byte to the end of their response.",
            labels=labels,
        )
        for listener in listeners:
            name = listener.name
            for value in _LISTENER_STATES:
                state.add_metric([name, value], 1.0 if listener.state.value == value else 0.0)
            sessions.add_metric([name], listener.sessionCount)
            limit.add_metric([name], listener.config.maxconn)
            c = listener.counters
            for key, family in counters.items():
                family.add_metric([name], getattr(c, key))
            if listener.config.mode == "http":
                for code, count in zip(_CODES, c.responses[1:]):
                    responses.add_metric([name, code], count)
                durations.add_metric([name], _buckets(c.durations), c.durationSum)
        yield from (state, sessions, limit, *counters.values(), responses, durations)

    def _pools(self, pools, now: float):
        pool = ["pool"]
        labels = ["pool", "server"]
        queue = GaugeMetricFamily("lbproxy_pool_queued_flows", "Flows waiting for a server to free a slot.", labels=pool)
        available = GaugeMetricFamily("lbproxy_pool_servers_available", "Servers the selector may choose now.", labels=pool)
        state = GaugeMetricFamily("lbproxy_server_state", "1 for the state the server is in.", labels=["pool", "server", "state"])
        gauges = {
            "weight": GaugeMetricFamily("lbproxy_server_weight", "The server's weight.", labels=labels),
            "active": GaugeMetricFamily("lbproxy_server_current_sessions", "Flows on the server now.", labels=labels),
            "maxconn": GaugeMetricFamily("lbproxy_server_max_sessions", "The server's maxconn (0: no limit).", labels=labels),
        }
        counters = {
            "totalConnections": CounterMetricFamily("lbproxy_server_sessions", "Flows placed on the server.", labels=labels),
            "bytesIn": CounterMetricFamily("lbproxy_server_received_bytes", "Bytes clients sent to the server.", labels=labels),
            "bytesOut": CounterMetricFamily("lbproxy_server_sent_bytes", "Bytes the server sent to clients.", labels=labels),
            "connectErrors": CounterMetricFamily("lbproxy_server_connect_errors", "Failed connection attempts.", labels=labels),
            "responseErrors": CounterMetricFamily("lbproxy_server_response_errors", "HTTP responses the server broke.", labels=labels),
            "retries": CounterMetricFamily("lbproxy_server_retries", "Failed attempts after which the flow was tried again.", labels=labels),
            "downs": CounterMetricFamily("lbproxy_server_check_up_down", "Times the server went from up to down.", labels=labels),
        }
        responses = CounterMetricFamily(
            "lbproxy_server_http_responses", "HTTP responses the server gave, by status class.", labels=["pool", "server", "code"]
        )
        since = GaugeMetricFamily(
            "lbproxy_server_state_change_timestamp_seconds", "When the server entered its state (Unix time).", labels=labels
        )
        healthy = GaugeMetricFamily("lbproxy_server_check_healthy", "1 when the last health check passed, 0 when it failed.", labels=labels)
        checked = GaugeMetricFamily(
            "lbproxy_server_check_timestamp_seconds", "When the last health check finished (Unix time).", labels=labels
        )
        took = GaugeMetricFamily("lbproxy_server_check_duration_seconds", "How long the last health check took.", labels=labels)
        for p in pools:
            queue.add_metric([p.name], p.queued)
            available.add_metric([p.name], len(p.eligible()))
            for server in p.servers:
                key = [p.name, server.name]
                for value in _SERVER_STATES:
                    state.add_metric([*key, value], 1.0 if server.state.value == value else 0.0)
                for attribute, family in gauges.items():
                    family.add_metric(key, getattr(server, attribute))
                for attribute, family in counters.items():
                    family.add_metric(key, getattr(server, attribute))
                for code, count in zip(_CODES, server.responses[1:]):
                    responses.add_metric([*key, code], count)
                since.add_metric(key, server.since)
                health = server.health
                if health.lastCheck is not None:
                    healthy.add_metric(key, 1.0 if health.healthy else 0.0)
                    checked.add_metric(key, health.lastCheck)
                    took.add_metric(key, health.duration or 0.0)
        yield from (queue, available, state, *gauges.values(), *counters.values(), responses, since, healthy, checked, took)

    def _process(self, ha: dict | None):
        process = self.service.processInfo()
        reloads = CounterMetricFamily("lbproxy_reloads", "Reloads asked for, by result.", labels=["result"])
        reloads.add_metric(["applied"], process["reloads"]["applied"])
        reloads.add_metric(["refused"], process["reloads"]["refused"])
        started = GaugeMetricFamily("lbproxy_start_time_seconds", "When lbproxy started (Unix time).")
        started.add_metric([], process["started"])
        yield reloads
        yield started
        if ha:
            role = GaugeMetricFamily("lbproxy_ha_role", "1 for the role the HA heartbeat has.", labels=["role"])
            for value in ("init", "backup", "master", "fault"):
                role.add_metric([value], 1.0 if ha.get("role") == value else 0.0)
            yield role


    def _workers(self, workers: dict):
        states = ("starting", "serving", "stopping", "restarting", "exited")
        state = GaugeMetricFamily("lbproxy_worker_state", "1 for the state the worker is in.", labels=["worker", "state"])
        restarts = CounterMetricFamily("lbproxy_worker_restarts", "Times the worker was started again.", labels=["worker"])
        for worker in workers["workers"]:
            number = str(worker["worker"])
            for value in states:
                state.add_metric([number, value], 1.0 if worker["state"] == value else 0.0)
            restarts.add_metric([number], worker["restarts"])
        yield state
        yield restarts


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    """
    The cumulative buckets of a histogram from per-bucket counts.
    """
    total = 0
    buckets = []
    for bound, count in zip((*(f"{b}" for b in DURATION_BUCKETS), "+Inf"), counts):
        total += count
        buckets.append((bound, total))
    return buckets


def registry(service) -> CollectorRegistry:
    """
    The registry served at C{/metrics}: the balancer's collector and the
    process's (CPU, memory, open files).
    """
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(BalancerCollector(service))
    ProcessCollector(registry=registry)
    return registry
