"""
Tests for lbproxy.core.model: the live model of the running balancer, its
listeners' admission, states and counters, its observers and its
snapshot.
"""

from __future__ import annotations

import json

from twisted.internet.defer import fail
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from lbproxy.config import loadBytes
from lbproxy.core.model import Balancer, Listener, ListenerState, StateChange
from lbproxy.core.pool import STATUS_CLASSES, ServerState
from lbproxy.interfaces import IBalancerHealth
from lbproxy.listening import ListenerService

CONFIG = b"""
[pools.web]
servers = [
    { name = "a", address = "tcp:host=127.0.0.1:port=9001" },
    { name = "b", address = "tcp:host=127.0.0.1:port=9002", weight = 2 },
]

[listeners.front]
bind = "tcp:8080:interface=127.0.0.1"
mode = "http"
pool = "web"
maxconn = 2

[listeners.raw]
bind = "tcp:8081:interface=127.0.0.1"
pool = "web"
"""


def balancer(clock=None) -> Balancer:
    model = Balancer(loadBytes(CONFIG, "lb.toml"))
    if clock is not None:
        model.setClock(clock)
    return model


class ListenerTests(SynchronousTestCase):
    def test_admission(self):
        """
        A listener admits sessions up to its maxconn, counts every
        connection and each refusal; a session that leaves frees its slot.
        """
        listener = balancer().listeners["front"]
        first, second, third = object(), object(), object()
        self.assertTrue(listener.admit(first))
        self.assertTrue(listener.admit(second))
        self.assertFalse(listener.admit(third))
        self.assertEqual((listener.counters.connections, listener.counters.refused), (3, 1))
        self.assertEqual(listener.sessions, {first, second})
        listener.leave(first)
        self.assertTrue(listener.admit(third))
        self.assertEqual(listener.sessions, {second, third})

    def test_unlimited(self):
        listener = balancer().listeners["raw"]
        self.assertEqual(listener.config.maxconn, 10000)
        listener = Listener.of(listener.config.__class__(name="x", bind="tcp:0", pool="web", maxconn=0))
        for _ in range(100):
            self.assertTrue(listener.admit(object()))

    def test_of(self):
        """
        Listener.of keeps a live listener and wraps a bare config, finding
        its mode's front in the registry.
        """
        model = balancer()
        live = model.listeners["front"]
        self.assertIs(Listener.of(live), live)
        wrapped = Listener.of(live.config)
        self.assertIsNot(wrapped, live)
        self.assertEqual((wrapped.name, wrapped.mode.name), ("front", "http"))


class StateTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.model = balancer(self.clock)
        self.changes: list[StateChange] = []
        self.model.addObserver(self.changes.append)

    def test_listenerFollowsItsPort(self):
        """
        A listener is starting until its port is open, serving while it is,
        draining once closed while its sessions end (none here), then
        stopped; each change reaches the observers with its time.
        """
        listener = self.model.listeners["front"]
        reactor = MemoryReactorClock()
        service = ListenerService(listener, "lb.toml", Factory(), reactor)
        self.assertEqual(listener.state, ListenerState.STARTING)
        self.assertEqual(self.model.unboundListeners(), ["front", "raw"])
        self.clock.advance(5)
        service.privilegedStartService()
        service.startService()
        self.assertEqual(listener.state, ListenerState.SERVING)
        self.assertIsNotNone(listener.port)
        self.assertEqual(self.model.unboundListeners(), ["raw"])
        self.clock.advance(3)
        service.stopService()
        self.assertEqual(listener.state, ListenerState.STOPPED)
        self.assertIsNone(listener.port)
        self.assertEqual(
            [(c.kind, c.name, c.old, c.new, c.time) for c in self.changes],
            [
                ("listener", "front", "starting", "serving", 1005.0),
                ("listener", "front", "serving", "draining", 1008.0),
                ("listener", "front", "draining", "stopped", 1008.0),
            ],
        )

    def test_listenerThatCannotListen(self):
        listener = self.model.listeners["front"]
        service = ListenerService(listener, "lb.toml", Factory(), MemoryReactorClock())
        service.endpoint.endpoint = _Failing()
        with self.assertRaises(Exception):
            service.privilegedStartService()
        self.assertEqual(listener.state, ListenerState.FAILED)
        (change,) = self.changes
        self.assertEqual((change.new, change.reason), ("failed", "no such address"))

    def test_serverChangesAnnounced(self):
        """
        A server's state change in any pool reaches the balancer's
        observers, and the server remembers when it changed and how often
        it went down.
        """
        server = self.model.pools["web"].server("a")
        self.clock.advance(2)
        server.setState(ServerState.DOWN, "3 checks failed")
        self.clock.advance(10)
        server.setState(ServerState.UP, "2 of 2 checks passed")
        self.assertEqual(
            [(c.kind, c.name, c.old, c.new, c.reason, c.time) for c in self.changes],
            [
                ("server", "web/a", "up", "down", "3 checks failed", 1002.0),
                ("server", "web/a", "down", "up", "2 of 2 checks passed", 1012.0),
            ],
        )
        self.assertEqual((server.downs, server.since), (1, 1012.0))

    def test_brokenObserverDoesNotStopOthers(self):
        seen = []

        def broken(change):
            raise RuntimeError("observer bug")

        self.model.removeObserver(self.changes.append)
        self.model.addObserver(broken)
        self.model.addObserver(seen.append)
        self.model.announce("ha", "group 1", "backup", "master", "no master heard")
        self.assertEqual(len(seen), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class _Failing:
    def listen(self, factory):
        return fail(OSError("no such address"))


class SnapshotTests(SynchronousTestCase):
    def test_plainData(self):
        """
        The snapshot holds every listener and pool as plain data that JSON
        can carry, with the counters and states as they are now.
        """
        clock = Clock()
        clock.advance(50)
        model = balancer(clock)
        front = model.listeners["front"]
        front.admit(object())
        front.counters.requests += 3
        front.counters.countResponse(200)
        front.counters.countResponse(503)
        front.counters.countResponse(None)
        server = model.pools["web"].server("b")
        server.acquire()
        server.responses[2] += 1
        server.bytesIn += 10
        server.health.lastCheck = 49.0
        server.health.reason = "ok"
        clock.advance(7)
        model.addPart("ha", lambda: {"role": "master"})
        snapshot = json.loads(json.dumps(model.snapshot()))
        self.assertEqual(snapshot["time"], 57.0)
        self.assertEqual(snapshot["ha"], {"role": "master"})
        listeners = {entry["name"]: entry for entry in snapshot["listeners"]}
        self.assertEqual(
            {key: listeners["front"][key] for key in ("mode", "state", "for", "sessions", "maxconn", "pools")},
            {"mode": "http", "state": "starting", "for": 7.0, "sessions": 1, "maxconn": 2, "pools": ["web"]},
        )
        counters = listeners["front"]["counters"]
        self.assertEqual((counters["connections"], counters["requests"]), (1, 3))
        self.assertEqual(counters["responses"], {"other": 1, "1xx": 0, "2xx": 1, "3xx": 0, "4xx": 0, "5xx": 1})
        (pool,) = snapshot["pools"]
        self.assertEqual((pool["name"], pool["selector"], pool["queue"], pool["available"]), ("web", "roundrobin", 0, 2))
        servers = {entry["name"]: entry for entry in pool["servers"]}
        b = servers["b"]
        self.assertEqual(
            {key: b[key] for key in ("state", "weight", "sessions", "total", "bytesIn", "for")},
            {"state": "up", "weight": 2, "sessions": 1, "total": 1, "bytesIn": 10, "for": 7.0},
        )
        self.assertEqual(b["responses"]["2xx"], 1)
        self.assertEqual((b["check"]["lastCheck"], b["check"]["reason"]), (49.0, "ok"))
        self.assertEqual(list(b["responses"]), list(STATUS_CLASSES))

    def test_balancerHealth(self):
        """
        The model is what the HA heartbeat reads of the balancer.
        """
        model = balancer()
        verifyObject(IBalancerHealth, model)
        self.assertEqual(set(model.pools), {"web"})


class CountingTests(SynchronousTestCase):
    """
    The fronts count on their live listener and servers.
    """

    def test_tcpSession(self):
        from memoryconnections import acceptClient, completeAttempt
        from test_relay import FakeTCPTransport
        from test_tcp import DONE, HOST, PEER

        model = balancer()
        reactor = MemoryReactorClock()
        listener = model.listeners["raw"]
        factory = listener.mode.buildFactory(listener, model.pools, reactor)
        protocol = acceptClient(factory, FakeTCPTransport(), PEER, HOST)
        self.assertEqual(listener.sessions, {protocol})
        leg, backend = completeAttempt(reactor, FakeTCPTransport())
        protocol.dataReceived(b"ping")
        leg.dataReceived(b"pong!")
        protocol.connectionLost(DONE)
        leg.connectionLost(DONE)
        counters = listener.counters
        self.assertEqual((counters.connections, counters.bytesIn, counters.bytesOut, counters.errors), (1, 4, 5, 0))
        self.assertEqual(listener.sessions, set())
        (server,) = [s for s in model.pools["web"].servers if s.totalConnections]
        self.assertEqual((server.bytesIn, server.bytesOut, server.totalConnections), (4, 5, 1))

    def test_httpRequests(self):
        from test_http_front import GET, OK, ProxyTestCase, RecordingLog

        case = ProxyTestCase()
        case.setUp()
        model = balancer()
        listener = model.listeners["front"]
        case.pools = model.pools
        case.pool = model.pools["web"]
        case.factory = listener.mode.buildFactory(listener, model.pools, case.reactor)
        case.log = case.factory.accessLog = RecordingLog()
        client = case.connectClient()
        client.send(GET)
        backend = case.connectBackend()
        backend.send(OK)
        client.send(b"BAD\x00\r\n\r\n")
        counters = listener.counters
        self.assertEqual(counters.requests, 1)
        self.assertEqual(counters.responses[2], 1)
        self.assertEqual(counters.responses[4], 1)
        self.assertEqual(counters.errors, 1)
        (server,) = [s for s in model.pools["web"].servers if s.totalConnections]
        self.assertEqual(server.responses[2], 1)
