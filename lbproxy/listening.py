"""
Opening the listeners' sockets, and what can be known about them before.

Before anything starts (and by C{--check}), L{checkListenAddresses} looks
at what the config alone cannot tell: whether a UNIX socket's directory
exists and can be written, and whether an IP address a listener binds to
belongs to this machine. Each problem is one L{ConfigError} naming the
listener's C{bind}.

At startup, a listener whose socket still cannot be opened (a port another
process holds, a port below 1024 without the privilege, a systemd socket
that was not passed) stops the daemon with one L{ListenerStartError} line
naming the listener, its address and the system's reason, rather than a
traceback (L{lbproxy.tap} prints it).
"""

from __future__ import annotations

import errno
import os
import socket
import stat

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from lbproxy._twisted.listen import raiseListenErrors
from lbproxy.config import Config, ListenerConfig
from lbproxy.config.endpoints import BindAddress, EndpointError, parseBind, plainReason
from lbproxy.core.acceptproxy import AcceptProxyFactory
from lbproxy.core.model import Listener, ListenerState
from lbproxy.core.proxyprotocol import PROXY_HEADER_TIMEOUT
from lbproxy.core.wrapping import FactoryLayer
from lbproxy.errors import ConfigError
from lbproxy.sockets import serverEndpoint


class ListenerStartError(Exception):
    """
    A listener could not open its socket; C{str()} is the one line an
    operator reads::

        lb.toml: listeners.web.bind: cannot listen on 127.0.0.1:8080: Address already in use (another process listens there)
    """


def _bindKey(listener: ListenerConfig) -> str:
    return f"listeners.{listener.name}.bind"


def checkListenAddresses(config: Config, bindTest=None) -> None:
    """
    Refuse listeners whose socket cannot be opened on this machine, for a
    reason found without opening it: a UNIX socket in a directory that is
    missing or not writable, or at a path held by something other than a
    socket; an IP address this machine does not have.

    Ports in use and privileged ports are not checked: the daemon being
    checked may already run (a check before a restart), and C{--check}
    may run as another user. They are reported when the daemon starts.

    @param bindTest: C{(family, sockaddr) -> errno or 0}; by default
        L{_tryBind}, which binds a throwaway socket to port 0.
    @raise ConfigError: naming the listener's C{bind}.
    """
    bindTest = bindTest or _tryBind
    for listener in config.listeners.values():
        try:
            bind = parseBind(listener.bind)
            if bind is None:
                continue
            if bind.kind == "unix":
                _checkUnixPath(bind.path)
            elif bind.kind == "inet" and bind.host is not None and not listener.freebind:
                # With IP_FREEBIND the address may arrive later (a virtual
                # address the HA heartbeat adds on takeover).
                _checkLocal(bind, bindTest)
        except EndpointError as e:
            raise ConfigError(config.source, _bindKey(listener), e.describe(listener.bind))


def _checkUnixPath(path: str) -> None:
    if path.startswith("\0"):
        return
    directory = os.path.dirname(os.path.abspath(path))
    expected = "a socket path in an existing directory lbproxy can write to"
    if not os.path.isdir(directory):
        reason = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise EndpointError(expected, f"{directory} {reason}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise EndpointError(expected, f"{directory} is not writable by user id {os.geteuid()}")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise EndpointError("a socket path where no other file is", f"{path} exists and is not a socket")


def _checkLocal(bind: BindAddress, bindTest) -> None:
    family = socket.AF_INET6 if bind.version == 6 else socket.AF_INET
    info = socket.getaddrinfo(str(bind.host), 0, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    if bindTest(family, info[0][4]) == errno.EADDRNOTAVAIL:
        sysctl = f"net.ipv{bind.version}.ip_nonlocal_bind" if bind.version == 4 else "net.ipv6.ip_nonlocal_bind"
        raise EndpointError(
            "an IP address of this machine",
            f"no interface has {bind.host}; to listen on an address this machine takes over "
            f"later, such as a virtual IP, set the sysctl {sysctl} = 1",
        )


def _tryBind(family: int, address) -> int:
    """
    Bind a throwaway socket to C{address} (port 0): the error number, or
    0 when it binds.
    """
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind(address)
    except OSError as e:
        # EAFNOSUPPORT (IPv6 disabled) and the like: the start says so.
        return e.errno or 0
    return 0


#: A hint after the system's reason, by error number.
_HINTS = {
    errno.EADDRINUSE: "another process listens there",
    errno.EADDRNOTAVAIL: "no interface has this address",
    errno.ENOENT: "the directory does not exist",
}


def bindFailure(value: str, key: str, source: str, error: BaseException) -> ListenerStartError:
    """
    The one-line error for the socket of C{value} (a server endpoint
    string, at C{key} in the config) that could not be opened because of
    C{error}.
    """
    try:
        bind = parseBind(value)
    except EndpointError:
        bind = None
    where = bind.describe() if bind is not None else repr(value)
    cause = error.socketError if isinstance(error, CannotListenError) else error
    if bind is not None and bind.kind == "systemd" and isinstance(cause, (IndexError, KeyError)):
        reason = "systemd passed no such socket"
        hint = "start lbproxy from a systemd socket unit that passes it"
    elif isinstance(cause, OSError):
        reason = cause.strerror or plainReason(cause)
        hint = _HINTS.get(cause.errno)
        if cause.errno == errno.EACCES and bind is not None and bind.kind == "inet" and 0 < bind.port < 1024:
            hint = "ports below 1024 need root or CAP_NET_BIND_SERVICE"
        # A lock file's symlink names the link second.
        filename = cause.filename2 if cause.filename2 is not None else cause.filename
        if filename is not None:
            reason = f"{os.fsdecode(filename)}: {reason}"
    elif cause == "Cannot acquire lock" and bind is not None:
        reason, hint = f"{bind.path}.lock is held", "another process listens there"
    else:
        reason, hint = plainReason(cause) if isinstance(cause, BaseException) else str(cause), None
    line = f"{key}: cannot listen on {where}: {reason}"
    if hint:
        line += f" ({hint})"
    return ListenerStartError(f"{source}: {line}" if source else line)


def stopFront(front) -> None:
    """
    Tell a front's factory that its listener stops serving it (a reload
    replaced it, or the daemon stops): an HTTP front answers the requests
    in flight with C{Connection: close}; other fronts have no such flag.
    """
    if hasattr(front, "stopping"):
        front.stopping = True


class FactorySwitch(FactoryLayer):
    """
    What a listener's port serves: the listener's factory (its front
    inside its TLS and PROXY header layers), which a reload replaces
    (L{replace}) without closing the port: the connections accepted from
    then on get the new factory, those already open keep the one that
    built them.

    A factory replaced, or the last one once the port closes, is
    I{retired}: its front is told it stops (L{stopFront}), and its
    C{doStop} (an HTTP front closes its access log and idle server
    connections) waits until every session it served has ended, and a
    connection still reading a trusted proxy's PROXY header has had its
    time to become one.

    @ivar listener: the live L{Listener}.
    @ivar front: the front factory of the current C{wrappedFactory}.
    @ivar retiring: the factories retired whose sessions have not ended.
    """

    log = Logger()

    def __init__(self, wrappedFactory, listener: Listener, reactor, front=None) -> None:
        super().__init__(wrappedFactory, reactor)
        self.listener = listener
        self.front = front if front is not None else listener.factory
        self.retiring: list = []
        self.closed = False
        # The timers of retired factories waiting for PROXY headers.
        self._settling: dict = {}

    def buildProtocol(self, addr):
        return self.wrappedFactory.buildProtocol(addr)

    def replace(self, wrappedFactory, front) -> Deferred:
        """
        Serve new connections with C{wrappedFactory} (whose front factory
        is C{front}) from now on, and retire the one before.

        @return: a L{Deferred} firing once the one before is stopped.
        """
        wrappedFactory.doStart()
        old, oldFront = self.wrappedFactory, self.front
        self.wrappedFactory, self.front = wrappedFactory, front
        return self._retire(old, oldFront)

    def doStop(self) -> None:
        """
        The port closed: retire the factory it served (unless L{close} did).
        """
        self.close()

    def close(self) -> None:
        """
        The port is closing: retire the factory it serves.
        """
        if not self.closed:
            self.closed = True
            self._retire(self.wrappedFactory, self.front)

    def _retire(self, factory, front) -> Deferred:
        stopFront(front)
        entry = (factory, front)
        self.retiring.append(entry)
        settle = PROXY_HEADER_TIMEOUT if isinstance(factory, AcceptProxyFactory) else 0.0
        done = self.listener.whenSessionsEnd()

        def settled(_):
            if settle and entry in self.retiring:
                waited: Deferred = Deferred()
                self._settling[entry] = self.reactor.callLater(settle, waited.callback, None)
                return waited

        def stop(_):
            self._settling.pop(entry, None)
            if entry in self.retiring:
                self.retiring.remove(entry)
                factory.doStop()

        return done.addCallback(settled).addCallback(stop)

    def stopRetired(self) -> None:
        """
        Stop every retired factory now (their sessions were closed).
        """
        retiring, self.retiring = self.retiring, []
        settling, self._settling = self._settling, {}
        for call in settling.values():
            if call.active():
                call.cancel()
        for factory, _ in retiring:
            factory.doStop()


def endpointFor(reactor, bind: str, freebind: bool = False, reusePort: bool = False):
    """
    The server endpoint of C{bind}; one whose C{listen} fails with the
    reason when the string cannot be turned into an endpoint on this
    machine (a systemd socket that was not passed).
    """
    try:
        return serverEndpoint(reactor, bind, freebind, reusePort)
    except Exception as error:
        return _Unusable(error)


class SocketService(StreamServerEndpointService):
    """
    A listening socket opened once, in L{privilegedStartService} (before
    twistd drops privileges; or by a reload before the service joins the
    tree): any failure to open it raises L{ListenerStartError}, one line
    naming C{key} (the config key of C{bind}), instead of being logged
    while the daemon runs without it.
    """

    def __init__(self, endpoint, factory, bind: str, key: str, source: str) -> None:
        super().__init__(endpoint, factory)
        self.bind = bind
        self.key = key
        self.source = source
        self._opened = False
        raiseListenErrors(self)

    def privilegedStartService(self) -> None:
        if self._opened:
            return
        self._opened = True
        try:
            super().privilegedStartService()
        except Exception as error:
            raise bindFailure(self.bind, self.key, self.source, error) from error


class ListenerService(SocketService):
    """
    The listening socket of one listener, opened in
    L{privilegedStartService} (before twistd drops privileges). Any
    failure to open it, including an endpoint string that cannot be turned
    into an endpoint on this machine (a systemd socket that was not
    passed), raises L{ListenerStartError} there.

    The live L{Listener} follows it: its C{port} and its state (serving
    once the port is open, failed when it cannot be, draining from the
    moment it closes while its sessions end, stopped once they have).

    The port serves a L{FactorySwitch}: a reload gives the listener a new
    factory (L{replaceFactory}) and the socket stays open, so no
    connection waiting in its accept queue is lost.

    Stopping (L{stopService}, or L{drain} for a listener a reload removes)
    closes the socket, tells the front it stops (an HTTP front answers the
    requests in flight with C{Connection: close} and closes its idle
    keep-alive connections), and waits for the sessions to end: within
    C{grace} seconds when set, after which those left are closed.

    @ivar switch: the L{FactorySwitch} the port serves.
    @ivar grace: seconds the sessions get to end once stopping; None: as
        long as they take.
    """

    log = Logger()

    def __init__(
        self, listener: Listener | ListenerConfig, source: str, factory, reactor, front=None, reusePort: bool = False
    ) -> None:
        """
        @param reusePort: open the socket with C{SO_REUSEPORT} (a worker's,
            beside the other workers' on the same address).
        """
        listener = Listener.of(listener)
        config = listener.config
        self.switch = FactorySwitch(factory, listener, reactor, front)
        endpoint = _Following(endpointFor(reactor, config.bind, config.freebind, reusePort), listener)
        super().__init__(endpoint, self.switch, config.bind, _bindKey(config), source)
        self.listener = listener
        self.grace: float | None = None
        self._reactor = reactor
        self._draining: Deferred | None = None
        self.setName(f"listener:{listener.name}")

    def replaceFactory(self, factory, front) -> Deferred:
        """
        Serve new connections with C{factory} (whose front is C{front});
        see L{FactorySwitch.replace}.
        """
        return self.switch.replace(factory, front)

    def stopService(self):
        Service.stopService(self)
        return self.drain()

    def drain(self) -> Deferred:
        """
        Close the socket and let the sessions end (within L{grace}); the
        listener is stopped once they have.
        """
        if self._draining is not None:
            return self._draining
        listener = self.listener
        port = listener.port
        if listener.state is ListenerState.SERVING:
            listener.setState(ListenerState.DRAINING, "closed to new connections")
        self.switch.close()
        for session in list(listener.sessions):
            stopping = getattr(session, "listenerStopping", None)
            if stopping is not None:
                stopping()
        closed = succeed(None) if port is None else maybeDeferred(port.stopListening)
        self._draining = closed.addCallback(lambda _: self._sessionsEnded())
        return self._draining

    def _sessionsEnded(self) -> Deferred:
        listener = self.listener
        ended = listener.whenSessionsEnd()
        if ended.called or self.grace is None:
            return ended.addCallback(self._stopped)
        timer = self._reactor.callLater(self.grace, self._graceOver, ended)

        def cancelTimer(result):
            if timer.active():
                timer.cancel()
            return result

        return ended.addBoth(cancelTimer).addCallback(self._stopped)

    def _graceOver(self, ended: Deferred) -> None:
        """
        The grace period is over: close the sessions left.
        """
        listener = self.listener
        left = list(listener.sessions)
        self.log.warn(
            "listener {listener}: {grace}s grace period over, closing {count} sessions still open",
            listener=listener.name,
            grace=f"{self.grace:g}",
            count=len(left),
        )
        for session in left:
            transport = getattr(session, "transport", None)
            if transport is not None:
                transport.abortConnection()
        # An aborted connection is told on the next turn; a session that
        # never says it ended does not hold the stop up for long.
        late = self._reactor.callLater(1.0, lambda: ended.called or ended.callback(None))

        def cancelLate(result):
            if late.active():
                late.cancel()
            return result

        ended.addBoth(cancelLate)

    def _stopped(self, _=None) -> None:
        listener = self.listener
        self.switch.stopRetired()
        if listener.state is not ListenerState.FAILED:
            listener.setState(ListenerState.STOPPED)
        listener.port = None
        if listener.balancer is not None:
            listener.balancer.forgetListener(listener)


class _Following:
    """
    A listener's endpoint, telling the live L{Listener} how listening went.
    """

    def __init__(self, endpoint, listener: Listener) -> None:
        self.endpoint = endpoint
        self.listener = listener

    def listen(self, factory):
        listener = self.listener

        def listening(port):
            listener.port = port
            listener.setState(ListenerState.SERVING)
            return port

        def failed(reason):
            listener.setState(ListenerState.FAILED, reason.getErrorMessage())
            return reason

        return self.endpoint.listen(factory).addCallbacks(listening, failed)


class _Unusable:
    """
    The endpoint of a listener whose endpoint string could not be turned
    into one: listening fails with the parser's error.
    """

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def listen(self, factory):
        return fail(self.error)
