"""
Tests for the full reload (lbproxy.reload, BalancerService.reload): what a
new configuration changes in the running balancer and what it keeps, on
real loopback sockets in this process.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from lbproxy.config import loadBytes
from lbproxy.core.connect import Lease
from lbproxy.core.model import ListenerState
from lbproxy.core.pool import ServerState
from lbproxy.errors import ConfigError
from lbproxy.reload import sameAddress
from lbproxy.service import BalancerService
from support import freePort

POOLS = """
[pools.web]
selector = "{selector}"
servers = [
{servers}
]
{health}
"""

LISTENER = """
[listeners.{name}]
bind = "tcp:{port}:interface=127.0.0.1"
mode = "{mode}"
pool = "web"
"""


def config(listeners, servers, selector="roundrobin", health="", extra="") -> str:
    """
    A config of pool C{web} with C{servers} (C{(name, port, weight)}), and
    C{listeners} (C{(name, port, mode)}).
    """
    lines = ",\n".join(
        f'    {{ name = "{name}", address = "127.0.0.1:{port}", weight = {weight} }}' for name, port, weight in servers
    )
    text = POOLS.format(selector=selector, servers=lines, health=health)
    for name, port, mode in listeners:
        text += LISTENER.format(name=name, port=port, mode=mode)
    return text + extra


class Reloading(TestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.backends = [freePort() for _ in range(4)]

    def start(self, text: str) -> BalancerService:
        service = BalancerService(loadBytes(text.encode(), "lb.toml"), reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def reload(self, service, text: str, who="a test"):
        service.loader = lambda: loadBytes(text.encode(), "lb.toml")
        return service.reload(who)

    def lines(self, word: str) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if word in formatEvent(e)]

    def test_serversKeptChangedAddedRemoved(self):
        """
        A server keeping its name and address is the same live server: its
        state (drain included), health and counters stay, and it takes its
        new weight. A removed one leaves selection at once and is gone when
        its last flow ends; an added one starts up.
        """
        a, b, c = self.backends[:3]
        port = freePort()
        service = self.start(config([("front", port, "tcp")], [("a", a, 1), ("b", b, 1)]))
        pool = service.balancer.pools["web"]
        first, second = pool.servers
        first.setState(ServerState.DRAIN, "operator")
        first.totalConnections = 7
        lease = Lease(second)
        ok, line = self.reload(service, config([("front", port, "tcp")], [("a", a, 3), ("c", c, 2)]))
        self.assertTrue(ok, line)
        self.assertIs(service.balancer.pools["web"], pool)
        kept, added = pool.servers
        self.assertIs(kept, first)
        self.assertEqual((kept.state, kept.weight, kept.totalConnections), (ServerState.DRAIN, 3, 7))
        self.assertEqual((added.name, added.state, added.weight), ("c", ServerState.UP, 2))
        self.assertTrue(second.removed)
        self.assertEqual(pool.removing, [second])
        self.assertEqual(pool.eligible(), (added,))
        self.assertEqual([s["name"] for s in pool.snapshot(0)["servers"]], ["a", "c", "b"])
        lease.release()
        self.assertEqual(pool.removing, [])
        self.assertEqual(len(self.lines("reload asked by a test applied")), 1)
        self.assertIn("~web(+c -b ~servers)", line)

    def test_addressChangeIsANewServer(self):
        a, b = self.backends[:2]
        port = freePort()
        service = self.start(config([("front", port, "tcp")], [("a", a, 1)]))
        pool = service.balancer.pools["web"]
        (old,) = pool.servers
        old.setState(ServerState.MAINT)
        ok, line = self.reload(service, config([("front", port, "tcp")], [("a", b, 1)]))
        self.assertTrue(ok, line)
        (new,) = pool.servers
        self.assertIsNot(new, old)
        self.assertEqual((new.address, new.state), (f"tcp:host=127.0.0.1:port={b}", ServerState.UP))
        self.assertTrue(old.removed)

    def test_selectorRebuiltOnlyWhenChanged(self):
        port = freePort()
        servers = [("a", self.backends[0], 1)]
        service = self.start(config([("front", port, "tcp")], servers))
        pool = service.balancer.pools["web"]
        selector = pool.selector
        self.assertTrue(self.reload(service, config([("front", port, "tcp")], servers))[0])
        self.assertIs(pool.selector, selector)
        self.assertTrue(self.reload(service, config([("front", port, "tcp")], servers, selector="leastconn"))[0])
        self.assertIsNot(pool.selector, selector)
        self.assertEqual(pool.options.selector, "leastconn")

    def test_invalidConfigRefused(self):
        """
        A configuration that does not load is refused in one line naming
        the problem; nothing changes.
        """
        port = freePort()
        service = self.start(config([("front", port, "tcp")], [("a", self.backends[0], 1)]))
        running = service.config
        factory = service.listenerServices["front"].switch.wrappedFactory

        def broken():
            raise ConfigError("lb.toml", "pools.web.servers[0].weight", 'expected an integer from 0 to 256, got "x"')

        service.loader = broken
        ok, line = service.reload("SIGHUP")
        self.assertFalse(ok)
        self.assertIs(service.config, running)
        self.assertIs(service.listenerServices["front"].switch.wrappedFactory, factory)
        (logged,) = self.lines("refused")
        self.assertEqual(
            logged,
            "reload asked by SIGHUP refused, the running configuration stays: lb.toml: "
            'pools.web.servers[0].weight: expected an integer from 0 to 256, got "x"',
        )

    def test_noReloadWhileStopping(self):
        port = freePort()
        text = config([("front", port, "tcp")], [("a", self.backends[0], 1)])
        service = self.start(text)
        service.stopService()
        ok, line = self.reload(service, text.replace("tcp:", "tcp6:"))
        self.assertFalse(ok)
        self.assertTrue(line.endswith("refused, the running configuration stays: lbproxy is stopping"))

    def test_haChangeRefused(self):
        port = freePort()
        service = self.start(config([("front", port, "tcp")], [("a", self.backends[0], 1)]))
        changed = loadBytes(config([("front", port, "tcp")], [("a", self.backends[0], 1)]).encode(), "lb.toml")
        from dataclasses import replace

        from lbproxy.reload import ReloadRefused, prepare

        with self.assertRaises(ReloadRefused) as raised:
            prepare(service, replace(changed, ha=object()))
        self.assertIn("ha: the [ha] table changed", str(raised.exception))

    @inlineCallbacks
    def test_listenerKeepsItsSocket(self):
        """
        A listener keeping its name and address keeps its port; a new
        front serves the connections accepted from then on, and the one
        before stops only once its sessions ended. An HTTP front replaced
        is told to stop (its responses close their connections).
        """
        port = freePort()
        servers = [("a", self.backends[0], 1)]
        service = self.start(config([("front", port, "http")], servers))
        listener = service.balancer.listeners["front"]
        listenerService = service.listenerServices["front"]
        openPort = listener.port
        oldFront = listener.factory
        session = object()
        self.assertTrue(listener.admit(session))
        ok, line = self.reload(service, config([("front", port, "tcp")], servers))
        self.assertTrue(ok, line)
        self.assertIs(listener.port, openPort)
        self.assertIs(service.balancer.listeners["front"], listener)
        self.assertEqual(listener.config.mode, "tcp")
        self.assertIsNot(listener.factory, oldFront)
        self.assertIs(listenerService.switch.front, listener.factory)
        self.assertTrue(oldFront.stopping)
        self.assertEqual(listenerService.switch.retiring, [(oldFront, oldFront)])
        listener.leave(session)
        self.assertEqual(listenerService.switch.retiring, [])
        # The socket accepts, and the new front serves.
        connected = yield _connect(port)
        self.assertEqual(type(connected).__name__, "socket")
        connected.close()

    @inlineCallbacks
    def test_listenersAddedRemovedRebound(self):
        """
        A new listener opens; a removed one closes and drains; one whose
        address changed opens the new socket and closes the old.
        """
        one, two, three, moved = (freePort() for _ in range(4))
        servers = [("a", self.backends[0], 1)]
        service = self.start(config([("one", one, "tcp"), ("two", two, "tcp")], servers))
        two_ = service.balancer.listeners["two"]
        session = object()
        two_.admit(session)
        ok, line = self.reload(service, config([("one", moved, "tcp"), ("three", three, "tcp")], servers))
        self.assertTrue(ok, line)
        self.assertIn("listeners +one +three -one -two", line)
        listeners = service.balancer.listeners
        self.assertEqual(sorted(listeners), ["one", "three"])
        self.assertEqual(listeners["one"].state, ListenerState.SERVING)
        self.assertEqual(listeners["one"].config.bind, f"tcp:{moved}:interface=127.0.0.1")
        self.assertEqual(two_.state, ListenerState.DRAINING)
        self.assertIn(two_, service.balancer.draining)
        yield _settle()
        for port in (moved, three):
            (yield _connect(port)).close()
        for port in (one, two):
            with self.assertRaises(ConnectionRefusedError):
                yield _connect(port)
        two_.leave(session)
        yield _settle()
        self.assertEqual(two_.state, ListenerState.STOPPED)
        self.assertNotIn(two_, service.balancer.draining)
        self.assertNotIn("listener:two (draining)", service.namedServices)

    @inlineCallbacks
    def test_newListenerThatCannotListen(self):
        """
        A new listener whose port is taken refuses the whole reload: the
        sockets it opened for other new listeners close again, nothing
        else changed.
        """
        port, free = freePort(), freePort()
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        self.addCleanup(taken.close)
        busy = taken.getsockname()[1]
        servers = [("a", self.backends[0], 1)]
        service = self.start(config([("front", port, "tcp")], servers))
        ok, line = self.reload(
            service, config([("front", port, "tcp"), ("first", free, "tcp"), ("second", busy, "tcp")], servers)
        )
        self.assertFalse(ok)
        self.assertIn(f"listeners.second.bind: cannot listen on 127.0.0.1:{busy}: Address already in use", line)
        self.assertEqual(sorted(service.balancer.listeners), ["front"])
        yield _settle()
        probe = socket.socket()
        self.addCleanup(probe.close)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", free))

    def test_renamedListenerSaysWhoHoldsTheAddress(self):
        port = freePort()
        servers = [("a", self.backends[0], 1)]
        service = self.start(config([("front", port, "tcp")], servers))
        ok, line = self.reload(service, config([("renamed", port, "tcp")], servers))
        self.assertFalse(ok)
        self.assertIn("listener front holds it until the reload is done", line)
        self.assertEqual(sorted(service.balancer.listeners), ["front"])

    def test_poolsAddedRemovedAndHealthChecks(self):
        """
        A new pool runs (with its health checks); a removed one is gone,
        its checks stopped; changed checks restart, the servers' health
        history kept.
        """
        port = freePort()
        servers = [("a", self.backends[0], 1)]
        health = "[pools.web.health]\ninterval = \"1s\"\n"
        other = '[pools.other]\nservers = [{ name = "x", address = "127.0.0.1:9" }]\n[pools.other.health]\n'
        service = self.start(config([("front", port, "tcp")], servers, health=health, extra=other))
        monitor = service.health.getServiceNamed("web")
        server = service.balancer.pools["web"].servers[0]
        server.health.checks = 5
        ok, line = self.reload(service, config([("front", port, "tcp")], servers, health=health.replace("1s", "2s")))
        self.assertTrue(ok, line)
        self.assertEqual(sorted(service.balancer.pools), ["web"])
        self.assertEqual(sorted(service.health.namedServices), ["web"])
        self.assertIsNot(service.health.getServiceNamed("web"), monitor)
        self.assertFalse(monitor.running)
        self.assertGreaterEqual(server.health.checks, 5)
        ok, line = self.reload(service, config([("front", port, "tcp")], servers, extra=other.replace("other", "more")))
        self.assertTrue(ok, line)
        self.assertEqual(sorted(service.health.namedServices), ["more"])
        self.assertEqual(sorted(service.balancer.pools), ["more", "web"])


def _settle():
    """
    A Deferred firing after a few turns of the reactor (a port closes on
    the next one).
    """
    done = Deferred()
    reactor.callLater(0.05, done.callback, None)
    return done


def _connect(port: int):
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), Protocol())

    def connected(protocol):
        protocol.transport.loseConnection()
        return socket.socket()

    def failed(reason):
        from twisted.internet.error import ConnectionRefusedError as Refused

        reason.trap(Refused)
        raise ConnectionRefusedError(port)

    return d.addCallbacks(connected, failed)


def test_sameAddress():
    from lbproxy.config import ListenerConfig

    def listener(bind, freebind=False):
        return ListenerConfig(name="x", bind=bind, pool="", freebind=freebind)

    assert sameAddress(listener("tcp:8080:interface=127.0.0.1"), listener("tcp:port=8080:interface=127.0.0.1"))
    assert not sameAddress(listener("tcp:8080:interface=127.0.0.1"), listener("tcp:8081:interface=127.0.0.1"))
    assert not sameAddress(listener("tcp:8080:interface=127.0.0.1"), listener("tcp:8080:interface=127.0.0.1", True))


