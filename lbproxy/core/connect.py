"""
Connecting a flow to a backend server, with retries and redispatch.

Every front (TCP, HTTP, mail) places a flow the same way: ask the pool for
a server, count the flow on it, connect within the pool's connect timeout,
and on failure tell the server (passive health checking), exclude it and
try another, up to the pool's C{retries}. The caller gets a
L{BackendConnection} whose L{Lease} it releases when the flow ends.

An attempt that fails because lbproxy itself is out of a resource (file
descriptors, socket buffers, local ports: L{lbproxy.core.limits}) is not the
server's failure: it is not counted against the server nor retried (any
server would fail the same way), and the flow is refused with
L{LocalLimitReached} at once, which frees its client's descriptor soonest.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy._twisted.directconnect import IConnectAttempt

from lbproxy.core.endpoints import directAddress
from lbproxy.core.limits import LimitLog, describeLocalLimit, localLimit, plural
from lbproxy.core.proxyprotocol import buildHeader
from lbproxy.errors import ConnectFailed, LocalLimitReached, NoServerAvailable, QueueTimeout
from lbproxy.interfaces import IServer, ISelectionContext


class Lease:
    """
    One flow counted on one server: created by C{server.acquire()}, ended
    by L{release}, which calls C{server.release()} exactly once however
    many times it is called (connect failure, cancellation and the end of
    the flow may all try).
    """

    __slots__ = ("server", "released")

    def __init__(self, server: IServer) -> None:
        server.acquire()
        self.server = server
        self.released = False

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<Lease {self.server.name} {state}>"

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.server.release()


class BackendConnection:
    """
    A flow's established connection to a server.

    @ivar server: the server connected to.
    @ivar protocol: the protocol the caller's factory built for it.
    @ivar lease: the flow's count on C{server}; call L{release} when the
        flow ends.
    @ivar connectTime: seconds from L{BackendConnector.connect} to the
        established connection, retries included, time in the pool's
        queue not.
    @ivar attempts: connection attempts made (1 when the first succeeded).
    @ivar queueTime: seconds the flow waited in the pool's queue for a
        server to free a slot (0 when it did not wait).
    """

    __slots__ = ("server", "protocol", "lease", "connectTime", "attempts", "queueTime")

    def __init__(
        self,
        server: IServer,
        protocol: IProtocol,
        lease: Lease,
        connectTime: float,
        attempts: int,
        queueTime: float = 0.0,
    ) -> None:
        self.server = server
        self.protocol = protocol
        self.lease = lease
        self.connectTime = connectTime
        self.attempts = attempts
        self.queueTime = queueTime

    def __iter__(self):
        """
        Unpack as C{server, protocol}.
        """
        return iter((self.server, self.protocol))

    def release(self) -> None:
        """
        The flow ended: stop counting it on the server.
        """
        self.lease.release()


def describeFailure(reason: Failure) -> str:
    """
    One line saying why a connection attempt failed.
    """
    text = reason.getErrorMessage().strip().rstrip(".") or reason.type.__name__
    return text.splitlines()[0]


class BackendConnector:
    """
    Connects flows of one pool to its servers.

    Endpoints are built once per server address and reused.
    """

    log = Logger()

    def __init__(self, pool, reactor) -> None:
        """
        @param pool: a L{lbproxy.core.pool.Pool}; its C{options} give C{retries}
            and C{connectTimeout}.
        @param reactor: provides C{callLater}, C{seconds} and whatever the
            servers' endpoint strings need (C{connectTCP}...).
        """
        self.pool = pool
        self._reactor = reactor
        self._endpoints: dict = {}
        #: The lines about flows refused for lbproxy's own limits.
        self.limitLog = LimitLog(reactor)
        tls = getattr(pool, "tls", None)
        #: The pool's L{lbproxy.tls.client.BackendTLS} when connections
        #: start with TLS (implicit TLS); None for plaintext and for pools
        #: upgraded with STARTTLS by their mail front.
        self.tls = tls if tls is not None and not tls.config.starttls else None
        options = getattr(pool, "options", None)
        #: What TLS connections offer by ALPN: C{h2} alone for an HTTP/2
        #: pool (a server selecting nothing else is refused by its user).
        self.alpn: tuple[bytes, ...] = (
            (b"h2",) if getattr(options, "protocol", "http/1.1") == "h2" else ()
        )

    def endpointFor(self, server: IServer):
        """
        The client endpoint of C{server}, from its address string, with
        TLS on top when the pool has it: the endpoint's connection is then
        established once the handshake succeeded, so a certificate that
        does not verify fails the attempt like a refused connection.
        """
        target = self._targetFor(server)
        if target[1] is None:
            endpoint = clientFromString(self._reactor, target[0])
            if self.tls is not None:
                endpoint = self.tls.wrapEndpoint(endpoint, server, self._reactor, self.alpn)
            target[1] = endpoint
        return target[1]

    def directFor(self, server: IServer) -> tuple[str, int] | None:
        """
        The IP address and port to connect to C{server} at without an
        endpoint (L{lbproxy._twisted.directconnect}): when its address is a
        plain C{tcp:} endpoint to an IP literal, the pool has no TLS and the
        reactor connects that way. Else None: the endpoint connects.
        """
        return self._targetFor(server)[2]

    def _targetFor(self, server: IServer) -> list:
        """
        C{[address, endpoint or None until built, direct address or None]}
        of C{server}, kept while its address stays the same.
        """
        target = self._endpoints.get(server)
        if target is None or target[0] != server.address:
            direct = None
            if self.tls is None and getattr(self._reactor, "connectDirect", None) is not None:
                direct = directAddress(server.address)
            target = self._endpoints[server] = [server.address, None, direct]
        return target

    def failedAfterConnect(
        self,
        server: IServer,
        reason: str,
        retrying: bool,
        attempt: int,
        attempts: int,
        established: bool = False,
    ) -> None:
        """
        Count and log a failed connection attempt to C{server}: one that
        failed to connect, or one its user found unusable before it carried
        anything (a TLS 1.3 server refusing the client certificate after
        the handshake).

        @param retrying: whether another attempt follows.
        @param attempt: this attempt's number, of C{attempts} at most.
        @param established: the connection had been counted as made (see
            L{lbproxy.core.pool.Server.connectFailed}).
        """
        server.connectFailed(reason, established)
        if retrying:
            server.retries += 1
        self.log.warn(
            "connect to {server} failed: {reason}; {action}",
            server=getattr(server, "qualifiedName", server.name),
            reason=reason,
            action="retrying" if retrying else "giving up",
            attempt=attempt,
            attempts=attempts,
        )

    def refusedForLimit(self, number: int) -> None:
        """
        Log a flow refused because lbproxy hit its own limit C{number} (an
        errno of L{lbproxy.core.limits.LOCAL_ERRORS}): one line a second at
        most, with the count.
        """
        limit = describeLocalLimit(number)

        def emit(count: int) -> None:
            self.log.error(
                "{limit}: refused {refused} of pool {pool} (not a server failure)",
                limit=limit,
                refused=plural(count, "client"),
                pool=self.pool.name,
                count=count,
            )

        self.limitLog.note(number, emit)

    def connect(
        self,
        context: ISelectionContext,
        protocolFactory: IProtocolFactory,
        server: IServer | None = None,
        attempts: int | None = None,
    ) -> Deferred[BackendConnection]:
        """
        Connect the flow described by C{context} to a server of the pool.

        @param server: a server of the pool the caller already chose (a
            persistence pin, or the server it looked for an idle connection
            to): the first attempt goes there instead of to the selector's
            pick; retries after a failure are picked (redispatched) as usual.
        @param attempts: the most connection attempts to make; the pool's
            C{1 + retries} when None. A caller that already spent some of
            its flow's attempts (a mail login whose first server connected
            but could not be used) passes what is left.

        The pool's PROXY protocol header (C{send_proxy}), built from the
        context's client and local addresses, is the first thing written
        on the connection: before any byte of the caller's, and before the
        TLS handshake when the pool connects with TLS.

        When every server the flow may use is up but at its C{maxconn},
        the flow waits in the pool's queue (L{lbproxy.core.pool.Pool.mayQueue})
        for up to the pool's C{timeouts.queue}: the first slot a server
        frees goes to the flow that has waited longest.

        @return: a L{Deferred} firing with a L{BackendConnection}, or failing
            with L{NoServerAvailable} (the selector gave no server before
            any attempt), L{QueueTimeout} (no slot freed in time) or
            L{ConnectFailed} (attempts exhausted, or no server left after
            failed attempts), or its subclass L{LocalLimitReached} (lbproxy
            ran out of descriptors, buffers or ports). Cancelling it abandons the attempt in
            progress, or leaves the queue, and releases its server.
        """
        options = self.pool.options
        attempt = _ConnectAttempts(
            self,
            context,
            protocolFactory,
            attempts=1 + options.retries if attempts is None else max(1, attempts),
            timeout=options.connectTimeout,
            queueTimeout=options.queueTimeout,
            first=server,
            preamble=buildHeader(options.sendProxy, context.client, context.local),
        )
        attempt.next()
        return attempt.result


@implementer(IConnectAttempt)
class _DirectAttempt:
    """
    One attempt of a L{_ConnectAttempts} made with the reactor's
    C{connectDirect}: passes what happens to it on, once.

    @ivar attempts: the L{_ConnectAttempts}, until the attempt is over.
    @ivar transport: the connection being made.
    """

    __slots__ = ("attempts", "server", "transport")

    def __init__(self, attempts: _ConnectAttempts, server: IServer) -> None:
        self.attempts = attempts
        self.server = server
        self.transport = None

    def buildProtocol(self, addr):
        return self.attempts.protocolFactory.buildProtocol(addr)

    def connectionMade(self, transport) -> None:
        attempts, self.attempts = self.attempts, None
        if attempts is not None:
            attempts._connected(transport.protocol, self.server)

    def connectionFailed(self, reason: Failure) -> None:
        attempts, self.attempts = self.attempts, None
        if attempts is not None:
            attempts._failed(reason, self.server)

    def cancel(self) -> None:
        """
        Abandon the attempt (its timeout, or the caller's cancellation):
        the connection stops connecting and L{connectionFailed} follows.
        """
        transport = self.transport
        if transport is not None:
            transport.stopConnecting()


class _ConnectAttempts:
    """
    The attempts of one L{BackendConnector.connect} call.
    """

    def __init__(
        self,
        connector: BackendConnector,
        context: ISelectionContext,
        protocolFactory: IProtocolFactory,
        attempts: int,
        timeout: float,
        first: IServer | None = None,
        preamble: bytes = b"",
        queueTimeout: float = 0.0,
    ) -> None:
        self.connector = connector
        self.preamble = preamble
        self.first = first
        self.context = context
        self.protocolFactory = protocolFactory
        self.maxAttempts = attempts
        self.timeout = timeout
        self.made = 0
        self.lastReason = ""
        self.result: Deferred[BackendConnection] = Deferred(self._cancel)
        self.reactor = connector._reactor
        self.started = self.reactor.seconds()
        self.lease: Lease | None = None
        self.pending: Deferred | None = None
        self.timer = None
        self.timedOut = False
        self.cancelled = False
        self.queueTimeout = queueTimeout
        self.queueTime = 0.0
        # While queued: when it began and the queue timeout's call; once a
        # server granted a slot: the call that starts the attempt.
        self.queuedAt: float | None = None
        self.queueTimer = None
        self.granted = None

    def pick(self) -> IServer | None:
        if self.first is not None:
            server, self.first = self.first, None
            return server
        pool = self.connector.pool
        server = pool.pick(self.context)
        if server is None and self.context.excluded:
            # Every usable server was tried: redispatch over all of them
            # again while attempts remain.
            self.context.excluded.clear()
            server = pool.pick(self.context)
        return server

    def next(self) -> None:
        server = self.pick()
        if server is None:
            pool = self.connector.pool
            if self.queueTimeout and pool.mayQueue(self.context):
                self._enqueue()
                return
            if self.made:
                self.result.errback(
                    ConnectFailed(
                        f"no server left of pool {self.connector.pool.name} after "
                        f"{self.made} failed attempts, last: {self.lastReason}",
                        reason=self.lastReason,
                        attempts=self.made,
                    )
                )
            else:
                self.result.errback(
                    NoServerAvailable(
                        f"no server of pool {self.connector.pool.name} is available"
                    )
                )
            return
        self._attempt(server, Lease(server))

    def _attempt(self, server: IServer, lease: Lease) -> None:
        self.made += 1
        self.lease = lease
        self.timedOut = False
        connector = self.connector
        try:
            direct = connector.directFor(server)
            if direct is not None:
                self._attemptDirect(server, direct)
                return
            endpoint = connector.endpointFor(server)
            if self.preamble and connector.tls is not None:
                pending = endpoint.connect(self.protocolFactory, preamble=self.preamble)
            else:
                pending = endpoint.connect(self.protocolFactory)
        except Exception:
            pending = fail()
        self.pending = pending
        if not pending.called:
            self.timer = self.reactor.callLater(self.timeout, self._timedOut)
        pending.addCallbacks(
            self._connected, self._failed, callbackArgs=(server,), errbackArgs=(server,)
        )

    def _attemptDirect(self, server: IServer, address: tuple[str, int]) -> None:
        """
        Connect to C{server} at its IP C{address} with the reactor's
        C{connectDirect}: no endpoint, connector or Deferred, and this
        attempt's timer the only one.
        """
        attempt = _DirectAttempt(self, server)
        attempt.transport = self.reactor.connectDirect(address[0], address[1], attempt)
        if attempt.attempts is not None:
            # Neither connected nor failed at once: it is pending.
            self.pending = attempt
            self.timer = self.reactor.callLater(self.timeout, self._timedOut)

    # The pool's queue.

    def _enqueue(self) -> None:
        self.queuedAt = self.reactor.seconds()
        self.connector.pool.enqueue(self)
        self.queueTimer = self.reactor.callLater(self.queueTimeout, self._queueTimedOut)

    def serverGranted(self, server: IServer) -> None:
        """
        The pool gives the queued flow a slot C{server} just freed: take it
        at once (so that no newer flow gets it), and start the attempt on
        the next turn of the reactor, outside the code that freed it.
        """
        self.lease = Lease(server)
        self.queueTime += self.reactor.seconds() - self.queuedAt
        self.queuedAt = None
        timer, self.queueTimer = self.queueTimer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.granted = self.reactor.callLater(0, self._grantedAttempt, server)

    def _grantedAttempt(self, server: IServer) -> None:
        self.granted = None
        self._attempt(server, self.lease)

    def _queueTimedOut(self) -> None:
        self.queueTimer = None
        self.connector.pool.dequeue(self)
        self.queueTime += self.reactor.seconds() - self.queuedAt
        self.queuedAt = None
        name = self.connector.pool.name
        self.connector.log.warn(
            "no server of pool {pool} freed a slot within {timeout}s (timeouts.queue); {queued} still queued",
            pool=name,
            timeout=f"{self.queueTimeout:g}",
            queued=self.connector.pool.queued,
        )
        self.result.errback(
            QueueTimeout(
                f"every server of pool {name} stayed at its maxconn for {self.queueTimeout:g}s (timeouts.queue)",
                waited=self.queueTime,
            )
        )

    def _stopTimer(self) -> None:
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None

    def _timedOut(self) -> None:
        self.timer = None
        self.timedOut = True
        self.pending.cancel()

    def _connected(self, protocol: IProtocol, server: IServer) -> None:
        self._stopTimer()
        self.pending = None
        lease, self.lease = self.lease, None
        if self.cancelled:
            lease.release()
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abortConnection()
            return
        server.connectSucceeded()
        stick = getattr(self.connector.pool, "stick", None)
        if stick is not None:
            stick.record(self.context, server)
        if self.preamble and self.connector.tls is None:
            protocol.transport.write(self.preamble)
        self.result.callback(
            BackendConnection(
                server,
                protocol,
                lease,
                self.reactor.seconds() - self.started - self.queueTime,
                self.made,
                self.queueTime,
            )
        )

    def _failed(self, reason: Failure, server: IServer) -> None:
        self._stopTimer()
        self.pending = None
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        if self.cancelled:
            return
        if self.timedOut:
            text = f"connect timeout after {self.timeout:g}s"
        else:
            number = localLimit(reason)
            if number is not None:
                self._refuse(number, server)
                return
            text = describeFailure(reason)
        self.lastReason = text
        self.context.excluded.add(server)
        retry = self.made < self.maxAttempts
        self.connector.failedAfterConnect(server, text, retry, self.made, self.maxAttempts)
        if retry:
            self.next()
        else:
            self.result.errback(
                ConnectFailed(
                    f"{self.made} connection attempts to pool "
                    f"{self.connector.pool.name} failed, last: {text}",
                    reason=text,
                    attempts=self.made,
                )
            )

    def _refuse(self, number: int, server: IServer) -> None:
        """
        The attempt failed for lbproxy's own limit C{number}: refuse the
        flow, blaming no server.
        """
        limit = describeLocalLimit(number)
        self.connector.refusedForLimit(number)
        self.result.errback(
            LocalLimitReached(
                f"{limit} connecting to {getattr(server, 'qualifiedName', server.name)} "
                "(not a server failure)",
                reason=limit,
                attempts=self.made,
                errno=number,
            )
        )

    def _cancel(self, result: Deferred) -> None:
        """
        The caller gave up (its client went away): stop the attempt and
        release the server. The result then fails with L{CancelledError}.
        """
        self.cancelled = True
        self._stopTimer()
        if self.queuedAt is not None:
            self.connector.pool.dequeue(self)
            self.queuedAt = None
        for call in (self.queueTimer, self.granted):
            if call is not None and call.active():
                call.cancel()
        self.queueTimer = self.granted = None
        if self.pending is not None:
            self.pending.cancel()
        if self.lease is not None:
            self.lease.release()
            self.lease = None

