"""
Every class of lbproxy that says it provides an interface (zope.interface
C{implementer}) is checked with C{verifyObject} on a real instance: the
table below builds one per class (an abstract base through a concrete
subclass). A class added without a row fails L{test_everyImplementerHasARow}.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import socket

import pytest
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementedBy
from zope.interface.verify import verifyObject

import lbproxy
from lbproxy.config import HealthConfig, loadBytes
from lbproxy.config.tls import CertificateConfig, ListenerTLSConfig
from lbproxy.core.context import FlowContext
from lbproxy.core.model import Balancer
from lbproxy.core.pool import Server
from lbproxy.core.relay import Relay, RelayLeg
from lbproxy.mail.sasl import Credentials
from lbproxy.modes import findMode
from lbproxy.selectors import findSelector

from memoryconnections import acceptClient
from test_relay import FakeTCPTransport
from test_tcp import HOST, PEER

CONFIG = b"""
[pools.web]
servers = [{ name = "a", address = "tcp:host=127.0.0.1:port=9001" }]

[pools.store]
servers = [{ name = "s", address = "tcp:host=127.0.0.1:port=9143" }]

[listeners.tcp]
bind = "tcp:8000"
pool = "web"

[listeners.http]
bind = "tcp:8001"
mode = "http"
pool = "web"

[listeners.h2c]
bind = "tcp:8009"
mode = "http"
pool = "web"
http2 = { enabled = true, cleartext = true }

[listeners.redirect]
bind = "tcp:8002"
mode = "http"
redirect_https = 443

[listeners.imap]
bind = "tcp:8003"
mode = "imap"
pool = "store"

[listeners.pop3]
bind = "tcp:8004"
mode = "pop3"
pool = "store"
"""


def balancer() -> Balancer:
    return Balancer(loadBytes(CONFIG, "lb.toml"))


def connected(listenerName: str):
    """
    A client connection of the named listener, accepted in memory.
    """
    model = balancer()
    listener = model.listeners[listenerName]
    factory = listener.mode.buildFactory(listener, model.pools, MemoryReactorClock())
    return acceptClient(factory, FakeTCPTransport(), PEER, HOST)


def http2Connection():
    """
    The HTTP/2 side of a client connection that began with the preface.
    """
    from h2.config import H2Configuration
    from h2.connection import H2Connection

    protocol = connected("h2c")
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    protocol.dataReceived(client.data_to_send())
    protocol.http2.client = client
    return protocol.http2


def http2Stream():
    """
    A stream of an HTTP/2 connection whose request is being placed.
    """
    connection = http2Connection()
    client = connection.client
    client.send_headers(
        1, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")], end_stream=True
    )
    connection.dataReceived(client.data_to_send())
    return connection.streams[1]


def h2Pool():
    from lbproxy.config import PoolConfig
    from lbproxy.core.pool import Pool
    from lbproxy.http2.upstream import H2BackendPool

    config = PoolConfig(name="grpc", servers=(), protocol="h2")
    pool = Pool("grpc", [Server("a", "tcp:host=127.0.0.1:port=9001")], findSelector("roundrobin").build({}), config)
    return H2BackendPool(pool, MemoryReactorClock())


def h2ServerConnection():
    """
    An HTTP/2 connection to a server, made in memory.
    """
    connection = h2Pool().factory.buildProtocol(None)
    connection.makeConnection(StringTransport())
    return connection


def upstreamStream():
    from lbproxy.http2.upstream import UpstreamStream

    connection = h2ServerConnection()
    return UpstreamStream(connection, 1, None)


def haService():
    from hamachines import FakeAddresses, FakeBalancer, FakeNotifier, haConfig

    from lbproxy.ha.service import HAService

    return HAService(haConfig(), FakeBalancer(), Clock(), FakeAddresses(), FakeNotifier())


def advertSocket():
    from hamachines import haConfig

    from lbproxy.ha.transport import AdvertSocket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return AdvertSocket(sock, haConfig(), lambda *a: None, Clock())


def handshakeEndpoint():
    from lbproxy.tls.client import HandshakeEndpoint

    reactor = MemoryReactorClock()
    return HandshakeEndpoint(None, TCP4ClientEndpoint(reactor, "127.0.0.1", 1), None, reactor)


def handshakeGate():
    from twisted.internet.defer import Deferred

    from lbproxy.tls.client import _HandshakeGate

    return _HandshakeGate(handshakeEndpoint(), Factory.forProtocol(Protocol), Deferred(), None)


def serverTLSTransport():
    from lbproxy.tls.transport import ServerTLSFactory, ServerTLSTransport

    factory = ServerTLSFactory(None, Factory.forProtocol(Protocol), Clock(), 10.0)
    return ServerTLSTransport(factory, Protocol())


def dialog(mode: str):
    front = connected(mode)
    return front.makeDialog(Credentials(b"alice", b"secret"))


def check(kind: str):
    from lbproxy.health.kinds import buildCheck

    return buildCheck(Clock(), HealthConfig(type=kind, expect=b"OK"))


def parser():
    from lbproxy.http.parser import RequestParser

    return RequestParser(connected("http"))


#: Qualified class name -> a function building an instance to verify.
INSTANCES = {
    "lbproxy.config.endpoints._NullReactor": lambda: importlib.import_module("lbproxy.config.endpoints")._NullReactor(),
    "lbproxy.core.connect._DirectAttempt": lambda: importlib.import_module("lbproxy.core.connect")._DirectAttempt(
        None, Server("a", "tcp:host=127.0.0.1:port=9001")
    ),
    "lbproxy.core.context.FlowContext": lambda: FlowContext(PEER, HOST),
    "lbproxy.core.model.Balancer": balancer,
    "lbproxy.core.pool.Server": lambda: Server("a", "tcp:host=127.0.0.1:port=9001"),
    "lbproxy.core.relay.RelayLeg": lambda: RelayLeg(Relay(Clock()), "client"),
    "lbproxy.core.session.FrontConnection": lambda: connected("tcp"),
    "lbproxy.ha.channel._ReadWhileHeard": lambda: importlib.import_module("lbproxy.ha.channel")._ReadWhileHeard(
        StringTransport()
    ),
    "lbproxy.ha.addresses.NetlinkAddresses": lambda: importlib.import_module("lbproxy.ha.addresses").NetlinkAddresses(
        "eth0", (), Clock()
    ),
    "lbproxy.ha.notify.CommandNotifier": lambda: importlib.import_module("lbproxy.ha.notify").CommandNotifier(
        importlib.import_module("hamachines").haConfig().notify, 1, Clock()
    ),
    "lbproxy.ha.replication.Replication": lambda: importlib.import_module("lbproxy.ha.replication").Replication(
        {}, (), Clock()
    ),
    "lbproxy.ha.service.HAService": haService,
    "lbproxy.ha.transport.AdvertSocket": advertSocket,
    "lbproxy.health.checks.BannerCheck": lambda: check("banner"),
    "lbproxy.health.checks.HTTPCheck": lambda: check("http"),
    "lbproxy.health.checks.TCPCheck": lambda: check("tcp"),
    "lbproxy.health.grpc.GRPCCheck": lambda: check("grpc"),
    "lbproxy.http.backend.BackendHTTPConnection": lambda: importlib.import_module(
        "lbproxy.http.backend"
    ).BackendHTTPConnection(),
    "lbproxy.http.front.HTTPProxyProtocol": lambda: connected("http"),
    "lbproxy.http.parsing.MessageParser": parser,
    "lbproxy.http.redirect.RedirectProtocol": lambda: connected("redirect"),
    "lbproxy.http2.connection.H2FrontConnection": http2Connection,
    "lbproxy.http2.bridge.HTTP11StreamBridge": lambda: importlib.import_module(
        "lbproxy.http2.bridge"
    ).HTTP11StreamBridge(connected("http"), None),
    "lbproxy.http2.stream.H2Stream": http2Stream,
    "lbproxy.http2.upstream.H2ServerConnection": h2ServerConnection,
    "lbproxy.http2.upstream.UpstreamStream": upstreamStream,
    "lbproxy.mail.backpressure.ReplyBackpressure": lambda: importlib.import_module(
        "lbproxy.mail.backpressure"
    ).ReplyBackpressure(Clock(), lambda: None, lambda: None),
    "lbproxy.mail.dialog.BackendDialog": lambda: dialog("pop3"),
    "lbproxy.mail.imap.IMAPDialog": lambda: dialog("imap"),
    "lbproxy.mail.imap.IMAPFront": lambda: connected("imap"),
    "lbproxy.mail.pop3.POP3Dialog": lambda: dialog("pop3"),
    "lbproxy.mail.pop3.POP3Front": lambda: connected("pop3"),
    "lbproxy.mail.session.MailFrontProtocol": lambda: connected("imap"),
    "lbproxy.modes.FrontMode": lambda: findMode("tcp"),
    "lbproxy.selectors.base.SelectorPlugin": lambda: findSelector("roundrobin"),
    "lbproxy.selectors.first.FirstAvailable": lambda: findSelector("first").build({}),
    "lbproxy.selectors.keyhash.KeyHash": lambda: findSelector("hash").build({}),
    "lbproxy.selectors.leastconn.WeightedLeastConnections": lambda: findSelector("leastconn").build({}),
    "lbproxy.selectors.maglev.Maglev": lambda: findSelector("maglev").build({}),
    "lbproxy.selectors.roundrobin.SmoothWeightedRoundRobin": lambda: findSelector("roundrobin").build({}),
    "lbproxy.selectors.twochoices.RandomTwoChoices": lambda: findSelector("random2").build({}),
    "lbproxy.sockets.BuiltSocketEndpoint": lambda: importlib.import_module("lbproxy.sockets").BuiltSocketEndpoint(
        Clock(), socket.AF_INET, "127.0.0.1", 0
    ),
    "lbproxy.admin.notify.SystemdNotifier": lambda: importlib.import_module("lbproxy.admin.notify").SystemdNotifier(
        "/run/systemd/notify", Clock()
    ),
    "lbproxy.tcp.front.TCPProxyProtocol": lambda: connected("tcp"),
    "lbproxy.tls.client.HandshakeEndpoint": handshakeEndpoint,
    "lbproxy.tls.client.UnverifiedClientCreator": lambda: importlib.import_module(
        "lbproxy.tls.client"
    ).UnverifiedClientCreator(CertificateOptions(), "example.test"),
    "lbproxy.tls.client._HandshakeGate": handshakeGate,
    "lbproxy.tls.server.ServerTLS": lambda: importlib.import_module("lbproxy.tls.server").ServerTLS(
        "web", ListenerTLSConfig(certificates=(CertificateConfig("c.pem", "c.pem"),)), "lb.toml"
    ),
    "lbproxy.tls.transport.ServerTLSTransport": serverTLSTransport,
    "lbproxy.workers.supervisor._ControlPipe": lambda: importlib.import_module(
        "lbproxy.workers.supervisor"
    )._ControlPipe(object()),
}


def implementers() -> dict[str, type]:
    """
    Every class of lbproxy declaring an interface, by qualified name.
    """
    found = {}
    for info in pkgutil.walk_packages(lbproxy.__path__, "lbproxy."):
        if info.name.startswith("lbproxy.plugins.") and info.name != "lbproxy.plugins.lbproxy_builtin":
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == module.__name__ and list(implementedBy(value).declared):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_everyImplementerHasARow():
    assert sorted(implementers()) == sorted(INSTANCES)


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_verifyObject(name):
    cls = implementers()[name]
    instance = INSTANCES[name]()
    assert isinstance(instance, cls)
    for interface in implementedBy(cls).declared:
        assert verifyObject(interface, instance), interface
    # The transport some builders connect is not needed any more.
    transport = getattr(instance, "transport", None)
    if isinstance(transport, StringTransport):
        transport.clear()
