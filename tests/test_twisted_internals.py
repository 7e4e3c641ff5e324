"""
The canary for lbproxy/_twisted: every attribute, method and behaviour
below Twisted's public API that those modules rely on, checked against the
installed Twisted, one test each, on real objects (connections on
loopback, a listening port, a TLS connection in memory).

A Twisted upgrade that moves one fails here with a line naming it and the
lbproxy module that relies on it, instead of somewhere in the data path.
Code that writes out what a Twisted method does (the reactor's read path,
the write batch's buffers) is checked against a fingerprint of that
method's code: when Twisted changes it, review the copy against the new
code, then record the new fingerprint the failure names.

Adding a reliance on a Twisted internal in lbproxy/_twisted means adding
a row to L{INTERNALS}.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import importlib
import inspect
import select
import socket
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import twisted
from OpenSSL import SSL
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import epollreactor, error
from twisted.internet.defer import fail
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLContextFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from certs import CertificateAuthority
from support import CHECKOUT
from test_reactor import Recorder, _FailingAccept, _iterateUntil
from tlsmemory import clientContext

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="lbproxy's reactor is epoll, Linux only")

REACTOR = "lbproxy/_twisted/reactor.py"
WRITEBATCH = "lbproxy/_twisted/writebatch.py"
TLSBATCH = "lbproxy/_twisted/tlsbatch.py"
DIRECTWRITE = "lbproxy/_twisted/directwrite.py"
HANDOVER = "lbproxy/_twisted/handover.py"
LISTEN = "lbproxy/_twisted/listen.py"
TRANSPORTS = "lbproxy/_twisted/transports.py"
DIRECTCONNECT = "lbproxy/_twisted/directconnect.py"

#: The connected TCP transports of both kinds.
CONNECTIONS = ("tcp.Server", "tcp.Client")


# -- the kinds of rows ---------------------------------------------------------


@dataclass(frozen=True)
class Attribute:
    """
    The objects named by C{subjects} have C{name}, of type C{kind} (any
    type if L{None}; a dotted path names a type of Twisted's).
    """

    subjects: tuple[str, ...]
    name: str
    kind: type | tuple[type, ...] | str | None
    users: tuple[str, ...]

    @property
    def what(self) -> str:
        return f"{'/'.join(self.subjects)}.{self.name}"

    def problem(self, world: World) -> str | None:
        kind = self.kind
        if isinstance(kind, str):
            try:
                kind = resolve(kind)
            except (ImportError, AttributeError):
                return f"there is no {kind}"
        for subject in self.subjects:
            owner = world[subject]
            if not hasattr(owner, self.name):
                return f"{subject} has no {self.name}"
            value = getattr(owner, self.name)
            if kind is not None and not isinstance(value, kind):
                return f"{subject}.{self.name} is a {type(value).__name__}, not {_typeNames(kind)}"
        return None


@dataclass(frozen=True)
class Method:
    """
    The objects named by C{subjects} have a method C{name} taking
    C{parameters}, named as C{inspect.signature} reports them (without
    C{self} for an instance's method, with it for a class's).
    """

    subjects: tuple[str, ...]
    name: str
    parameters: tuple[str, ...]
    users: tuple[str, ...]

    @property
    def what(self) -> str:
        return f"{'/'.join(self.subjects)}.{self.name}()"

    def problem(self, world: World) -> str | None:
        for subject in self.subjects:
            method = getattr(world[subject], self.name, None)
            if not callable(method):
                return f"{subject} has no method {self.name}"
            taken = tuple(inspect.signature(method).parameters)
            if taken != self.parameters:
                return f"{subject}.{self.name} takes ({', '.join(taken)}), not ({', '.join(self.parameters)})"
        return None


@dataclass(frozen=True)
class Unchanged:
    """
    The function C{target} (a dotted path) is code that lbproxy writes out:
    its fingerprint (L{fingerprint}) is one of C{reviewed}, those of the
    Twisted releases the copy was reviewed against.
    """

    target: str
    reviewed: tuple[str, ...]
    users: tuple[str, ...]

    @property
    def what(self) -> str:
        return f"{self.target} unchanged"

    def problem(self, world: World) -> str | None:
        try:
            function = resolve(self.target)
        except (ImportError, AttributeError):
            return f"there is no {self.target}"
        now = fingerprint(function)
        if now in self.reviewed:
            return None
        return (
            f"{self.target} changed (fingerprint {now}, reviewed {', '.join(self.reviewed)}): "
            "review what lbproxy writes out of it against the new code, then add "
            "the new fingerprint to its row in tests/test_twisted_internals.py"
        )


@dataclass(frozen=True)
class Behaviour:
    """
    C{check(world)} shows that Twisted still does what C{what} says; it
    raises L{AssertionError} saying what it saw otherwise.
    """

    what: str
    check: Callable[[World], None]
    users: tuple[str, ...]

    def problem(self, world: World) -> str | None:
        try:
            self.check(world)
        except Unavailable:
            raise
        except AssertionError as e:
            return f"no longer so: {self.what} ({e})"
        except Exception as e:
            return f"no longer so: {self.what} ({type(e).__name__}: {e})"
        return None


def _typeNames(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def resolve(target: str):
    """
    The object a dotted path names: a module, then attributes.
    """
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name)
        return found
    raise ImportError(target)


def _shape(node):
    """
    What the code of an AST node does, without docstrings and type
    annotations, as nested tuples.
    """
    if isinstance(node, list):
        if node and _isDocstring(node[0]):
            node = node[1:]
        return tuple(_shape(each) for each in node)
    if not isinstance(node, ast.AST):
        return node
    fields = []
    for name, value in ast.iter_fields(node):
        if name in ("annotation", "returns", "type_comment", "type_params"):
            continue
        if value is None or value == []:
            continue
        fields.append((name, _shape(value)))
    return (type(node).__name__, *fields)


def _isDocstring(statement) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def fingerprint(function) -> str:
    """
    A short hash of what C{function}'s code does: the same across changes
    of formatting, comments, docstrings and type annotations.
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return hashlib.sha256(repr(_shape(tree.body[0])).encode()).hexdigest()[:12]


def _closePoller(reactor) -> None:
    """
    Close the epoll descriptor of a reactor that is not installed.
    """
    poller = getattr(reactor, "_poller", None)
    if poller is not None:
        poller.close()


# -- behaviours ----------------------------------------------------------------


def iterationOrder(world: World) -> None:
    """
    One iteration runs the timed calls (C{runUntilCurrent}), then polls
    (C{doIteration}).
    """
    calls = []

    class Probe(epollreactor.EPollReactor):
        def runUntilCurrent(self):
            calls.append("runUntilCurrent")
            super().runUntilCurrent()

        def doPoll(self, timeout):
            calls.append("doIteration")
            super().doPoll(timeout)

        doIteration = doPoll

    probe = Probe()
    try:
        probe.iterate(0)
    finally:
        _closePoller(probe)
    assert calls == ["runUntilCurrent", "doIteration"], f"an iteration called {calls}"


def acceptsThroughSocket(world: World) -> None:
    """
    A listening port accepts through its C{socket} attribute, and C{EAGAIN}
    ends its accept loop quietly.
    """
    port = world["tcp.Port"]
    real = port.socket
    noneWaiting = port.socket = _FailingAccept(real, errno.EAGAIN)
    try:
        with capturedLogs() as events:
            port.doRead()
    finally:
        port.socket = real
    assert noneWaiting.calls == 1, f"the port called its socket's accept {noneWaiting.calls} times"
    assert not events, f"the port logged {len(events)} events"


def protocolHandedOver(world: World) -> None:
    """
    A connection delivers data to whatever its C{protocol} attribute holds.
    """
    server, client = world.connect()
    successor = Recorder()
    successor.makeConnection(server.transport)
    server.transport.protocol = successor
    client.transport.write(b"after")
    _iterateUntil(world.reactor, lambda: successor.received or server.received)
    assert server.received == [], "the data went to the former protocol"
    assert successor.received == [b"after"], f"the new protocol got {successor.received}"


def startTLSMarksTheConnection(world: World) -> None:
    """
    C{startTLS} sets the TCP connection's C{TLS} flag.
    """
    server, client = world.connect()
    assert server.transport.TLS is False, f"TLS is {server.transport.TLS!r} before startTLS"
    server.transport.startTLS(CertificateOptions())
    assert server.transport.TLS is True, f"TLS is {server.transport.TLS!r} after startTLS"


@implementer(IOpenSSLContextFactory)
class _Contexts:
    """
    A context factory for TLSMemoryBIOFactory: one ready context.
    """

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def getContext(self) -> SSL.Context:
        return self._context


@implementer(IHandshakeListener)
class _TLSRecorder(Recorder):
    handshaken = False

    def handshakeCompleted(self):
        self.handshaken = True


def tlsRecordsThroughTransportWrite(world: World) -> None:
    """
    C{TLSMemoryBIOProtocol.write} encrypts at once and writes the records
    with its transport's C{write} as looked up at that moment; a
    C{BufferingTLSTransport}'s own C{write} holds small writes in its
    C{_aggregator} until C{_aggregator.flush()}.
    """
    ca = world["ca"]
    leaf = ca.issue("localhost")
    serverContext = SSL.Context(SSL.TLS_SERVER_METHOD)
    serverContext.use_certificate_chain_file(str(leaf.chain))
    serverContext.use_privatekey_file(str(leaf.key))
    clock = Clock()
    server = TLSMemoryBIOFactory(_Contexts(serverContext), False, Factory.forProtocol(_TLSRecorder), clock=clock)
    client = TLSMemoryBIOFactory(
        _Contexts(clientContext(ca=ca.cert)), True, Factory.forProtocol(_TLSRecorder), clock=clock
    )
    serverTLS, clientTLS = server.buildProtocol(None), client.buildProtocol(None)
    serverWire, clientWire = StringTransport(), StringTransport()
    serverTLS.makeConnection(serverWire)
    clientTLS.makeConnection(clientWire)
    for _ in range(10):
        for wire, peer in ((clientWire, serverTLS), (serverWire, clientTLS)):
            data = wire.value()
            wire.clear()
            if data:
                peer.dataReceived(data)
    assert clientTLS.wrappedProtocol.handshaken, "the in-memory handshake did not complete"
    records: list[bytes] = []
    clientWire.write = records.append
    TLSMemoryBIOProtocol.write(clientTLS, b"now ")
    assert records, "TLSMemoryBIOProtocol.write did not write with the transport's write set on it"
    sent = len(records)
    clientTLS.write(b"later")
    assert len(records) == sent, "BufferingTLSTransport.write sent at once"
    clientTLS._aggregator.flush()
    assert len(records) > sent, "_aggregator.flush() sent nothing"
    serverTLS.dataReceived(b"".join(records))
    received = b"".join(serverTLS.wrappedProtocol.received)
    assert received == b"now later", f"the server read {received!r}"


def _leanNames(cls) -> set[str]:
    """
    The attributes a lean connection class keeps without an instance
    dictionary: its slots and the names its descriptors take over.
    """
    names = set()
    for klass in cls.__mro__:
        names.update(vars(klass).get("__slots__", ()))
        names.update(
            name for name, value in vars(klass).items()
            if klass.__module__ == cls.__module__ and hasattr(value, "__set__")
        )
    return names


def connectionAttributesAreSlots(world: World) -> None:
    """
    Every attribute Twisted sets on a TCP connection in a proxied
    connection's usual life (data both ways, producers, pauses, Nagle off,
    addresses, half-close, loss) is a slot of the lean class (or taken
    over by one of its descriptors).
    """
    from lbproxy._twisted.transports import LeanClient, LeanServer

    server, client = world.connect()
    for protocol in (server, client):
        protocol.transport.setTcpNoDelay(True)
        protocol.transport.getHost()
        protocol.transport.getPeer()
    server.transport.registerProducer(client.transport, True)
    client.transport.registerProducer(server.transport, True)
    server.transport.pauseProducing()
    server.transport.resumeProducing()
    client.transport.write(b"x" * 100000)
    server.transport.writeSequence([b"y"])
    _iterateUntil(world.reactor, lambda: sum(map(len, server.received)) == 100000)
    server.transport.unregisterProducer()
    client.transport.unregisterProducer()
    client.transport.loseWriteConnection()
    _iterateUntil(world.reactor, lambda: server.transport.disconnected or not server.transport.connected)
    server.transport.loseConnection()
    _iterateUntil(world.reactor, lambda: client.transport.disconnected)
    for transport, lean in ((server.transport, LeanServer), (client.transport, LeanClient)):
        extra = set(vars(transport)) - _leanNames(lean)
        assert not extra, f"{type(transport).__name__} set {', '.join(sorted(extra))}, not slots of {lean.__name__}"


def directConnectionsReport(world: World) -> None:
    """
    A L{DirectClient} connects within its constructor's call to
    C{_setRealAddress}, builds its protocol from the attempt and tells it
    C{connectionMade} once the protocol's own ran; a refused connection
    and C{stopConnecting} are told as C{connectionFailed}; a connected one
    keeps no reference to its attempt and nothing outside its slots.
    """
    from lbproxy._twisted.directconnect import DirectClient, connectDirect

    class Attempt:
        def __init__(self):
            self.events = []
            self.protocol = Recorder()

        def buildProtocol(self, addr):
            self.events.append(("build", addr.port))
            return self.protocol

        def connectionMade(self, transport):
            self.events.append(("made", transport.protocol is self.protocol and bool(self.protocol.connected)))

        def connectionFailed(self, reason):
            self.events.append(("failed", reason.type))

    port = world["tcp.Port"].getHost().port
    attempt = Attempt()
    transport = connectDirect(world.reactor, "127.0.0.1", port, attempt)
    assert type(transport) is DirectClient
    assert transport.realAddress == ("127.0.0.1", port), "connect() was not called at once"
    _iterateUntil(world.reactor, lambda: attempt.events)
    assert attempt.events == [("build", port), ("made", True)], attempt.events
    assert transport.connector is not attempt
    assert vars(transport) == {}
    fd = transport.fileno()
    assert fd in world.reactor._reads and fd not in world.reactor._writes, "not registered for reading only"
    transport.abortConnection()
    _iterateUntil(world.reactor, lambda: transport.disconnected)

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refusedPort = closed.getsockname()[1]
    closed.close()
    refused = Attempt()
    connectDirect(world.reactor, "127.0.0.1", refusedPort, refused)
    _iterateUntil(world.reactor, lambda: refused.events)
    assert refused.events == [("failed", error.ConnectionRefusedError)], refused.events

    stopped = Attempt()
    transport = connectDirect(world.reactor, "127.0.0.1", port, stopped)
    transport.stopConnecting()
    assert stopped.events == [("failed", error.UserError)], stopped.events
    for _ in range(3):
        world.reactor.iterate(0)
    assert stopped.events == [("failed", error.UserError)], stopped.events


def listenErrorsRaised(world: World) -> None:
    """
    With C{_raiseSynchronously} set, C{privilegedStartService} raises a
    failure the endpoint reports at once.
    """

    class Refusing:
        def listen(self, factory):
            return fail(error.CannotListenError("127.0.0.1", 1, OSError(errno.EADDRINUSE, "in use")))

    service = StreamServerEndpointService(Refusing(), Factory())
    service._raiseSynchronously = True
    try:
        service.privilegedStartService()
    except error.CannotListenError:
        return
    raise AssertionError("privilegedStartService returned")


# -- the table -----------------------------------------------------------------

INTERNALS = [
    # The reactor: its loop, poller and dispatch.
    Behaviour("an iteration runs runUntilCurrent, then doIteration", iterationOrder, (REACTOR,)),
    Attribute(("EPollReactor",), "_poller", select.epoll, (REACTOR,)),
    Attribute(("EPollReactor",), "_selectables", dict, (REACTOR,)),
    Method(("EPollReactor",), "_doReadOrWrite", ("selectable", "fd", "event"), (REACTOR,)),
    Method(("EPollReactor",), "_disconnectSelectable", ("selectable", "why", "isRead", "faildict"), (REACTOR,)),
    Method(("EPollReactor",), "doPoll", ("timeout",), (REACTOR,)),
    Method(("EPollReactor",), "runUntilCurrent", (), (REACTOR,)),
    Method(("EPollReactor",), "listenTCP", ("port", "factory", "backlog", "interface"), (REACTOR,)),
    Method(
        ("EPollReactor",), "listenUNIX", ("address", "factory", "backlog", "mode", "wantPID"), (REACTOR,)
    ),
    Method(("EPollReactor",), "adoptStreamPort", ("fileDescriptor", "addressFamily", "factory"), (REACTOR,)),
    Unchanged("twisted.internet.epollreactor.EPollReactor.doPoll", ("425337360c59",), (REACTOR,)),
    Unchanged("twisted.internet.posixbase._PollLikeMixin._doReadOrWrite", ("468516f23002",), (REACTOR,)),
    Attribute(("twisted.internet.main",), "CONNECTION_DONE", error.ConnectionDone, (REACTOR,)),
    Attribute(("twisted.internet.main",), "CONNECTION_LOST", error.ConnectionLost, (REACTOR,)),
    # The reactor's read of a plain TCP connection.
    Attribute(CONNECTIONS, "socket", socket.socket, (REACTOR, WRITEBATCH, DIRECTWRITE)),
    Attribute(CONNECTIONS, "bufferSize", int, (REACTOR, WRITEBATCH)),
    Attribute(CONNECTIONS, "connected", int, (REACTOR, WRITEBATCH, DIRECTWRITE)),
    Attribute(CONNECTIONS, "_aborting", bool, (REACTOR, WRITEBATCH)),
    Attribute(CONNECTIONS, "protocol", None, (REACTOR, HANDOVER)),
    Unchanged("twisted.internet.tcp.Connection.doRead", ("77bf25257adc",), (REACTOR,)),
    Unchanged("twisted.internet.tcp.Connection._dataReceived", ("3bc59391dd37",), (REACTOR,)),
    Attribute(("twisted.internet.endpoints",), "_WrappingProtocol", type, (REACTOR,)),
    Attribute(("_WrappingProtocol",), "_wrappedProtocol", Recorder, (REACTOR,)),
    Unchanged("twisted.internet.endpoints._WrappingProtocol.dataReceived", ("183208e73420",), (REACTOR,)),
    # The reactor's listening ports (AcceptGuard).
    Attribute(("tcp.Port",), "socket", socket.socket, (REACTOR,)),
    Attribute(("tcp.Port",), "connected", (bool, int), (REACTOR,)),
    Attribute(("tcp.Port",), "disconnecting", (bool, int), (REACTOR,)),
    Behaviour("tcp.Port accepts through its socket attribute until EAGAIN", acceptsThroughSocket, (REACTOR,)),
    Unchanged("twisted.internet.tcp.Port.doRead", ("060588c03bd9",), (REACTOR,)),
    Unchanged("twisted.internet.tcp._accept", ("91ab1e984309",), (REACTOR,)),
    # The write buffers of a plain TCP connection.
    Attribute(CONNECTIONS, "TLS", bool, (WRITEBATCH, TLSBATCH, DIRECTWRITE)),
    Attribute(CONNECTIONS, "disconnecting", int, (WRITEBATCH, DIRECTWRITE)),
    Attribute(CONNECTIONS, "_writeDisconnected", bool, (WRITEBATCH,)),
    Attribute(CONNECTIONS, "_writeDisconnecting", bool, (WRITEBATCH,)),
    Attribute(CONNECTIONS, "_tempDataBuffer", list, (WRITEBATCH,)),
    Attribute(CONNECTIONS, "_tempDataLen", int, (WRITEBATCH, DIRECTWRITE)),
    Attribute(CONNECTIONS, "dataBuffer", bytes, (WRITEBATCH, DIRECTWRITE)),
    Attribute(CONNECTIONS, "offset", int, (WRITEBATCH,)),
    Attribute(CONNECTIONS, "producer", None, (WRITEBATCH,)),
    Attribute(CONNECTIONS, "streamingProducer", (bool, int), (WRITEBATCH,)),
    Attribute(CONNECTIONS, "producerPaused", (bool, int), (WRITEBATCH,)),
    Method(CONNECTIONS, "_maybePauseProducer", (), (WRITEBATCH,)),
    Method(CONNECTIONS, "startWriting", (), (WRITEBATCH,)),
    Unchanged("twisted.internet.abstract.FileDescriptor.write", ("e0523071ac34",), (WRITEBATCH, DIRECTWRITE)),
    Unchanged("twisted.internet.abstract.FileDescriptor.doWrite", ("4ac68fc6933f",), (WRITEBATCH,)),
    Unchanged("twisted.internet.tcp.Connection.writeSomeData", ("51b2e9dcfdec",), (WRITEBATCH,)),
    Behaviour("startTLS sets the TCP connection's TLS flag", startTLSMarksTheConnection, (WRITEBATCH, DIRECTWRITE)),
    # Twisted's TLS over the batch.
    Attribute(CONNECTIONS, "__dict__", dict, (TLSBATCH,)),
    Attribute(("twisted.protocols.tls",), "_AggregateSmallWrites", type, (TLSBATCH,)),
    Attribute(("BufferingTLSTransport",), "_aggregator", "twisted.protocols.tls._AggregateSmallWrites", (TLSBATCH,)),
    Method(("BufferingTLSTransport._aggregator",), "flush", (), (TLSBATCH,)),
    Method(("TLSMemoryBIOProtocol",), "write", ("self", "bytes"), (TLSBATCH,)),
    Behaviour(
        "TLS records go to the transport's write of the moment, small writes to _aggregator",
        tlsRecordsThroughTransportWrite,
        (TLSBATCH,),
    ),
    # The hand-over of a connection.
    Behaviour("a TCP connection delivers to its protocol attribute", protocolHandedOver, (HANDOVER,)),
    # Connections with their attributes in slots, and timed calls sharing
    # what they can.
    Attribute(("tcp.Port",), "transport", type, (REACTOR,)),
    Attribute(("tcp.Port",), "_realPortNumber", int, (TRANSPORTS,)),
    Method(
        ("twisted.internet.tcp.Server",),
        "__init__",
        ("self", "sock", "protocol", "client", "server", "sessionno", "reactor"),
        (TRANSPORTS,),
    ),
    Method(
        ("twisted.internet.tcp.Client",), "__init__", ("self", "host", "port", "bindAddress", "connector", "reactor"),
        (TRANSPORTS,),
    ),
    Method(("twisted.internet.tcp.Connector",), "_makeTransport", ("self",), (TRANSPORTS,)),
    Method(
        ("twisted.internet.tcp.Connector",),
        "__init__",
        ("self", "host", "port", "factory", "timeout", "bindAddress", "reactor"),
        (REACTOR,),
    ),
    Unchanged("twisted.internet.posixbase.PosixReactorBase.connectTCP", ("a0f96c49835c",), (REACTOR,)),
    Method(CONNECTIONS, "_getLogPrefix", ("applicationObject",), (TRANSPORTS,)),
    Unchanged("twisted.internet.tcp.Connection.connectionLost", ("9c20b7f302a4",), (TRANSPORTS,)),
    Unchanged("twisted.internet.tcp.BaseClient.doConnect", ("36c481b8f21b",), (TRANSPORTS,)),
    Behaviour(
        "the attributes Twisted sets on a TCP connection are slots of the lean classes",
        connectionAttributesAreSlots,
        (TRANSPORTS,),
    ),
    # Connections to IP addresses without a connector.
    Unchanged("twisted.internet.tcp._BaseBaseClient._finishInit", ("341958afae7c",), (DIRECTCONNECT,)),
    Attribute(("twisted.internet.tcp.Client",), "_commonConnection", type, (DIRECTCONNECT,)),
    Method(("twisted.internet.tcp.Client",), "_setRealAddress", ("self", "address"), (DIRECTCONNECT,)),
    Method(("twisted.internet.tcp.Client",), "_connectDone", ("self",), (DIRECTCONNECT,)),
    Method(("twisted.internet.tcp.Client",), "failIfNotConnected", ("self", "err"), (DIRECTCONNECT,)),
    Method(("twisted.internet.tcp.Client",), "stopConnecting", ("self",), (DIRECTCONNECT,)),
    Behaviour(
        "a client connection reports to its connector: buildProtocol, connectionFailed",
        directConnectionsReport,
        (DIRECTCONNECT,),
    ),
    Method(
        ("twisted.internet.base.DelayedCall",),
        "__init__",
        ("self", "time", "func", "args", "kw", "cancel", "reset", "seconds"),
        (REACTOR,),
    ),
    Method(("EPollReactor",), "_cancelCallLater", ("delayedCall",), (REACTOR,)),
    # Watching descriptors, written out.
    Unchanged("twisted.internet.epollreactor.EPollReactor._add", ("ec8bc1363d2a",), (REACTOR,)),
    Unchanged("twisted.internet.epollreactor.EPollReactor._remove", ("bf25d0a74cba",), (REACTOR,)),
    Unchanged("twisted.internet.epollreactor.EPollReactor.addReader", ("0e74b612176e",), (REACTOR,)),
    Unchanged("twisted.internet.epollreactor.EPollReactor.addWriter", ("a34c883a1c4a",), (REACTOR,)),
    Unchanged("twisted.internet.epollreactor.EPollReactor.removeReader", ("af4d05294638",), (REACTOR,)),
    Unchanged("twisted.internet.epollreactor.EPollReactor.removeWriter", ("48ee716a0218",), (REACTOR,)),
    Unchanged("twisted.internet.posixbase._ContinuousPolling.isReading", ("2a696980623d",), (REACTOR,)),
    Unchanged("twisted.internet.posixbase._ContinuousPolling.isWriting", ("8565395b95db",), (REACTOR,)),
    Attribute(("_ContinuousPolling",), "_readers", set, (REACTOR,)),
    Attribute(("_ContinuousPolling",), "_writers", set, (REACTOR,)),
    Attribute(("EPollReactor",), "_reads", set, (REACTOR,)),
    Attribute(("EPollReactor",), "_writes", set, (REACTOR,)),
    Attribute(("EPollReactor",), "_selectables", dict, (REACTOR,)),
    Method(("EPollReactor",), "_moveCallLaterSooner", ("delayedCall",), (REACTOR,)),
    Attribute(("EPollReactor",), "_newTimedCalls", list, (REACTOR,)),
    Unchanged("twisted.internet.base.ReactorBase.callLater", ("744f1b01db8f",), (REACTOR,)),
    # Listening errors.
    Attribute(("StreamServerEndpointService",), "_raiseSynchronously", bool, (LISTEN,)),
    Behaviour("_raiseSynchronously makes listen errors raise", listenErrorsRaised, (LISTEN,)),
]


# -- the real objects ----------------------------------------------------------


class Unavailable(Exception):
    """
    An object the table names could not be made.
    """


class World:
    """
    The objects the table names, real ones, each made when a row first
    needs it: connections made on loopback by Twisted's own epoll reactor
    (a private instance, not the global one), through an endpoint on the
    client side, and a TLS connection of Twisted's in memory. An object
    that cannot be made fails the rows that need it, saying why.
    """

    #: What the subjects that are Twisted's classes and modules stand for.
    PATHS = {
        "TLSMemoryBIOProtocol": "twisted.protocols.tls.TLSMemoryBIOProtocol",
        "StreamServerEndpointService": "twisted.application.internet.StreamServerEndpointService",
    }

    def __init__(self, directory) -> None:
        self.reactor = epollreactor.EPollReactor()
        self.directory = directory
        self._made: dict = {}
        self._opened: list = []
        self._built: list[Recorder] = []

    def __getitem__(self, subject: str):
        if subject not in self._made:
            try:
                self._made[subject] = (True, self._make(subject))
            except Exception as e:
                self._made[subject] = (False, f"{subject} could not be made ({type(e).__name__}: {e})")
        made, value = self._made[subject]
        if not made:
            raise Unavailable(value)
        return value

    def _make(self, subject: str):
        if subject == "EPollReactor":
            return self.reactor
        if subject == "_ContinuousPolling":
            return self.reactor._continuousPolling
        if subject == "tcp.Port":
            built = self._built

            class Keeping(Factory):
                noisy = False

                def buildProtocol(self, addr):
                    built.append(Recorder())
                    return built[-1]

            return self.reactor.listenTCP(0, Keeping(), interface="127.0.0.1")
        if subject == "pair":
            return self.connect()
        if subject == "tcp.Server":
            return self["pair"][0].transport
        if subject == "tcp.Client":
            return self["pair"][1].transport
        if subject == "_WrappingProtocol":
            return self["tcp.Client"].protocol
        if subject == "BufferingTLSTransport":
            factory = TLSMemoryBIOFactory(
                optionsForClientTLS("localhost"), True, Factory.forProtocol(Protocol), clock=Clock()
            )
            return factory.buildProtocol(None)
        if subject == "BufferingTLSTransport._aggregator":
            return self["BufferingTLSTransport"]._aggregator
        if subject == "ca":
            return CertificateAuthority(self.directory)
        return resolve(self.PATHS.get(subject, subject))

    def connect(self) -> tuple[Recorder, Recorder]:
        """
        A new connection to the port: its server and client protocols.
        """
        port = self["tcp.Port"]
        connected: list[Recorder] = []
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", port.getHost().port)
        connectProtocol(endpoint, Recorder()).addCallback(connected.append)
        before = len(self._built)
        _iterateUntil(self.reactor, lambda: connected and len(self._built) > before)
        server, client = self._built[-1], connected[0]
        self._opened.extend([server.transport, client.transport])
        return server, client

    def close(self) -> None:
        for transport in self._opened:
            transport.abortConnection()
        made, port = self._made.get("tcp.Port", (False, None))
        if made:
            port.stopListening()
        for _ in range(5):
            self.reactor.iterate(0)
        _closePoller(self.reactor)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = World(tmp_path_factory.mktemp("canary-ca"))
    yield world
    world.close()


@pytest.mark.parametrize("internal", INTERNALS, ids=lambda internal: internal.what)
def test_internal(world, internal):
    try:
        problem = internal.problem(world)
    except Unavailable as e:
        problem = str(e)
    if problem is not None:
        pytest.fail(
            f"Twisted {twisted.__version__}: {problem}; {' and '.join(internal.users)} "
            f"{'relies' if len(internal.users) == 1 else 'rely'} on it",
            pytrace=False,
        )


def test_everyModuleHasRows():
    """
    Every module of lbproxy/_twisted has rows in the table: a new one
    comes with the internals it relies on.
    """
    package = Path(CHECKOUT) / "lbproxy" / "_twisted"
    modules = {f"lbproxy/_twisted/{path.name}" for path in package.glob("*.py") if path.name != "__init__.py"}
    assert {user for internal in INTERNALS for user in internal.users} == modules
