"""
What the IMAP and POP3 fronts share: the pre-login session with its limits,
timers and TLS policy, placement on a backend and the hand-off to the relay.

A front subclasses L{MailFrontProtocol} (the client side) and
L{lbproxy.mail.dialog.BackendDialog} (the server side before relaying,
in its own module), and serves a listener
with a L{MailProxyFactory} subclass naming both. The base classes do the
protocol-independent work; the subclasses parse and answer commands.

The hooks a subclass implements are declared by
L{lbproxy.mail.interfaces.IMailFrontHooks} (the client side) and
L{lbproxy.mail.interfaces.IMailDialogHooks} (the server side).
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lbproxy.core.connect import BackendConnection, BackendConnector
from lbproxy.core.format import SESSION_LINE, formatAddress, formatSeconds
from lbproxy.core.model import Listener
from lbproxy.core.relay import Relay, RelayResult
from lbproxy.core.session import FrontConnection
from lbproxy.errors import ConnectFailed, NoServerAvailable
from lbproxy.mail.arguments import asText, loginRefusal
from lbproxy.mail.backpressure import ReplyBackpressure
from lbproxy.mail.config import normaliseUser
from lbproxy.mail.context import MailFlowContext
from lbproxy.mail.dialog import (
    TLS_IMPLICIT,
    TLS_NONE,
    TLS_STARTTLS,
    BackendDialog,
    DialogFailed,
    DialogResult,
    _DialogFactory,
)
from lbproxy.mail.lines import LineBuffer
from lbproxy.mail.logtext import printable, tlsVersion
from lbproxy.mail.placement import Placement
from lbproxy.mail.sasl import Credentials
from lbproxy.mail.throttle import FailedLogins
from lbproxy.tls.client import sslErrorText

#: How a session ends without an error.
_CLEAN_ENDS = frozenset({"client-closed", "server-closed", "logout"})

# Session states.
_PRELOGIN = "prelogin"
_PLACING = "placing"
_DELAYING = "delaying"
_RELAYING = "relaying"
_CLOSED = "closed"


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class MailFrontProtocol(FrontConnection, LineBuffer):
    """
    One client connection of an IMAP or POP3 listener (see the module
    docstring for the hooks a subclass implements).

    What every front does with a connection (its listener's C{maxconn},
    the addresses of a trusted proxy's PROXY header, the phase timer, the
    relay's hand-over) is L{FrontConnection}'s.

    @cvar protocolName: C{"imap"} or C{"pop3"}, first word of the log line.
    @ivar factory: the L{MailProxyFactory}.
    @ivar clientTLS: C{"none"}, C{"starttls"} or C{"implicit"}.
    @ivar user: the normalised user of the last login attempt, or None.
    @ivar failures: failed logins on this connection.
    @ivar relay: the L{Relay} after a successful login, else None.
    @ivar connection: the L{BackendConnection} being used, else None.
    @ivar result: how the login went, for the log: C{"none"} (no
        attempt), C{"failed"}, C{"unavailable"} or C{"ok"}.
    """

    protocolName = "mail"
    log = Logger()

    def __init__(self, factory: MailProxyFactory, reactor) -> None:
        super().__init__(factory.listener, reactor)
        self.factory = factory
        config = self.config
        self.maxLine = config.limits.line
        tls = config.tls
        self.clientTLS = TLS_IMPLICIT if tls is not None and not tls.starttls else TLS_NONE
        self.user: str | None = None
        self.failures = 0
        self.relay: Relay | None = None
        self.connection: BackendConnection | None = None
        self.dialog: BackendDialog | None = None
        self.result = "none"
        self.state = _PRELOGIN
        self._bytesIn = 0
        self._bytesOut = 0
        self._delayTimer = None
        self._connecting: Deferred | None = None
        self._placement = None
        self._lastServer: str | None = None
        self._clientTLSVersion: str | None = None
        self._tlsEstablished = False
        self.lastDetail = ""
        self._replies = ReplyBackpressure(reactor, self._repliesUnread, self._repliesRead)
        self._initBuffer()

    # Policy.

    @property
    def tlsActive(self) -> bool:
        """
        The client connection is encrypted.
        """
        return self.clientTLS != TLS_NONE

    @property
    def loginAllowed(self) -> bool:
        """
        Credentials may be sent now: TLS is not required, or active.
        """
        return self.tlsActive or not self.config.tlsRequired

    @property
    def startTLSOffered(self) -> bool:
        """
        STARTTLS/STLS can be used now: the listener offers it and the
        connection is not encrypted yet.
        """
        tls = self.config.tls
        return (
            tls is not None
            and tls.starttls
            and not self.tlsActive
            and self.factory.serverTLS is not None
        )

    # Connection events.

    def refused(self) -> None:
        self.state = _CLOSED
        self._finish("maxconn", f"listener at its maxconn of {self.config.maxconn}")
        self.transport.loseConnection()

    def accepted(self) -> None:
        self._replies.register(self.transport)
        self.timer.enter("login", self.config.loginTimeout)
        self.greet()

    def dataReceived(self, data: bytes) -> None:
        if self.state == _CLOSED:
            return
        self._bytesIn += len(data)
        self._feed(data)

    def readConnectionLost(self) -> None:
        if self.relayLeg is not None:
            self.relayLeg.readConnectionLost()
        elif self.state != _CLOSED:
            self.close("client-closed")

    def writeConnectionLost(self) -> None:
        if self.relayLeg is not None:
            self.relayLeg.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.relayLeg is not None:
            self.relayLeg.connectionLost(reason)
            return
        if self.state != _CLOSED:
            self.state = _CLOSED
            end = "client-closed" if reason.check(ConnectionDone) else "client-reset"
            detail = "" if end == "client-closed" else reason.getErrorMessage()
            if self.tlsActive and not self._tlsEstablished:
                end = "tls-handshake-failed"
                detail = sslErrorText(reason.value) if isinstance(reason.value, SSL.Error) else detail
            self._teardown()
            self._finish(end, detail)
        else:
            self._teardown()

    # Offered to the subclass.

    def send(self, data: bytes) -> None:
        """
        Write C{data} to the client (counted for the log).
        """
        self._bytesOut += len(data)
        self.transport.write(data)

    def close(self, end: str, detail: str = "") -> None:
        """
        End the session before any relay: send what is queued, close, and
        log with C{end}.
        """
        if self.state == _CLOSED:
            return
        self.state = _CLOSED
        self._stopped = True
        self._teardown()
        unread = self._replies.paused
        if unread:
            detail += "; " if detail else ""
            detail += f"the client left its replies unread for {self._replies.unreadFor():.1f}s"
        self._replies.unregister()
        self._finish(end, detail)
        if unread:
            # It would never take what is queued: closing after it would
            # keep the connection forever.
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def startTLS(self, reply: bytes) -> None:
        """
        The client asked for STARTTLS/STLS and may have it: unless it
        pipelined bytes after the command (CVE-2011-0411: they would be
        taken as sent over TLS), send C{reply} and switch to TLS.
        Pipelined bytes are discarded and the connection closed, logged
        with end C{starttls-injection}.
        """
        if self._buffer:
            count = len(self._takeBuffer())
            self.log.warn(
                "{protocol} client {client} of listener {listener} sent {count} bytes "
                "after STARTTLS in plaintext; discarded, closing",
                protocol=self.protocolName,
                client=formatAddress(self.client),
                listener=self.listener.name,
                count=count,
            )
            self.close("starttls-injection", f"{count} bytes pipelined after STARTTLS")
            return
        self.send(reply)
        self.transport.startTLS(self.factory.serverTLS.creator)
        self.clientTLS = TLS_STARTTLS
        self.tlsStarted()

    def tlsStarted(self) -> None:
        """
        Hook: the connection switched to TLS.
        """

    def handshakeCompleted(self) -> None:
        """
        The client's TLS handshake (implicit TLS, or after STARTTLS)
        succeeded: read what it negotiated, for the log (a lost TLS
        connection no longer says).
        """
        self._tlsEstablished = True
        self._clientTLSVersion = tlsVersion(self.transport)

    def login(self, credentials: Credentials) -> None:
        """
        Place the login: pick the user's pool and a server, run the
        backend dialog, and then hand off (accepted), answer after the
        failure delay (refused) or answer with C{loginUnavailable}.
        No line is delivered meanwhile. Credentials no store may see
        (L{loginRefusal}) are refused as a failed login.
        """
        self.user = user = normaliseUser(asText(credentials.user), self.config.userDomain)
        failedLogins = self.factory.failedLogins
        if failedLogins is not None and failedLogins.refused(self.client, self.protocolName):
            self.rejectLogin(self.failedLoginReply(), counted=False)
            return
        refusal = loginRefusal(credentials, self.config.limits.user)
        if refusal is not None:
            self._warnLogin("refused before any store", refusal)
            self.rejectLogin(self.failedLoginReply())
            return
        poolName = self.config.poolFor(user)
        pool = self.factory.pools[poolName]
        self.state = _PLACING
        self._holding = True
        self.transport.pauseProducing()
        placement = self._placement = Placement(pool, MailFlowContext(self.client, self.local, user), credentials)
        if placement.home is not None:
            self._lastServer = placement.home.qualifiedName
        self._connect()

    def _warnLogin(self, outcome: str, why: str) -> None:
        """
        Log one line about the login in progress: C{outcome}, and C{why}.
        """
        self.log.warn(
            "{protocol} login of {user} from {client} (listener {listener}) {outcome}: {why}",
            protocol=self.protocolName,
            user=printable(self.user),
            client=formatAddress(self.client),
            listener=self.listener.name,
            outcome=outcome,
            why=why,
        )

    def rejectLogin(self, reply: bytes, counted: bool = True) -> None:
        """
        Count a failed login and send C{reply} after the failure delay
        (closing after C{tooManyFailures} when the cap is reached). Used
        for refusals by the server and by the proxy alike, so a client
        cannot tell them apart by timing.

        @param counted: count it for the client's address too (not when
            the address is over its limit already).
        """
        if counted and self.factory.failedLogins is not None:
            self.factory.failedLogins.failed(self.client)
        self.failures += 1
        self.listener.counters.loginFailures += 1
        self.result = "failed"
        self.state = _DELAYING
        self._holding = True
        self.transport.pauseProducing()
        self._delayTimer = self._reactor.callLater(
            self.config.authFailureDelay, self._delayOver, reply
        )

    # Placement.

    def _connect(self) -> None:
        placement = self._placement
        refusal = placement.refusal()
        if refusal is not None:
            self._warnLogin("not placed", f"{refusal}; no other store holds the mailbox")
            self._unavailable(refusal)
            return
        connector = self.factory.connectorFor(placement.pool.name)
        connecting = self._connecting = placement.connect(connector, _DialogFactory(self, placement.credentials))
        connecting.addCallbacks(self._connected, self._notConnected)

    def _connected(self, connection: BackendConnection) -> None:
        self._connecting = None
        if self.state != _PLACING:
            connection.release()
            connection.protocol.abandon()
            return
        self.connection = connection
        self._placement.attempts += connection.attempts
        self._lastServer = connection.server.qualifiedName
        dialog = self.dialog = connection.protocol
        dialog.result.addCallbacks(self._answered, self._dialogFailed)
        dialog.begin(connection.server, self._placement.pool)

    def _notConnected(self, reason: Failure) -> None:
        self._connecting = None
        if reason.check(CancelledError) or self.state != _PLACING:
            return
        if reason.check(ConnectFailed) and self._placement.connectFailed(reason.value):
            self._connect()
            return
        if reason.check(NoServerAvailable, ConnectFailed):
            detail = str(reason.value)
        else:
            self.log.failure(
                "placing a login of listener {listener} failed",
                reason,
                listener=self.listener.name,
            )
            detail = reason.getErrorMessage()
        self._unavailable(detail)

    def _dialogFailed(self, reason: Failure) -> None:
        connection, self.connection = self.connection, None
        dialog, self.dialog = self.dialog, None
        if connection is not None:
            connection.release()
        if dialog is not None:
            dialog.abandon()
        if self.state != _PLACING:
            return
        failure = reason.value
        if not reason.check(DialogFailed):
            self.log.failure("backend dialog failed", reason)
            self._unavailable(reason.getErrorMessage())
            return
        placement = self._placement
        server = connection.server if connection is not None else None
        self.log.warn(
            "{protocol} server {server} unusable for a login: {detail}",
            protocol=self.protocolName,
            server=getattr(server, "qualifiedName", "-"),
            detail=failure.detail,
        )
        if server is not None:
            server.connectFailed(failure.detail, established=True)
            placement.context.excluded.add(server)
        if placement.mayRetryDialog(failure.retryable):
            self._connect()
        else:
            self._unavailable(failure.detail)

    def _unavailable(self, detail: str) -> None:
        self._placement = None
        self.result = "unavailable"
        self.lastDetail = detail
        self.state = _PRELOGIN
        self.loginUnavailable(detail)
        self._resume()

    def _answered(self, answer: DialogResult) -> None:
        if self.state != _PLACING:
            return
        self._placement = None
        if answer.accepted:
            self._handOff(answer)
            return
        connection, self.connection = self.connection, None
        dialog, self.dialog = self.dialog, None
        connection.release()
        dialog.abandon()
        self.rejectLogin(answer.reply)

    def _delayOver(self, reply: bytes) -> None:
        self._delayTimer = None
        if self.state != _DELAYING:
            return
        self.send(reply)
        if self.failures >= self.config.maxAuthFailures:
            self.tooManyFailures()
            self.close("too-many-failures", f"{self.failures} failed logins")
            return
        self.state = _PRELOGIN
        self._resume()

    def _resume(self) -> None:
        if self.state != _PRELOGIN:
            return
        self._holding = False
        if not self._blocked:
            self.transport.resumeProducing()
        self._deliver()

    def _repliesUnread(self) -> None:
        """
        The client leaves more replies unread than its transport buffers:
        read and answer nothing more until it has taken them.
        """
        if self.state in (_RELAYING, _CLOSED):
            return
        self._blocked = True
        self.transport.pauseProducing()

    def _repliesRead(self) -> None:
        if not self._blocked:
            return
        self._blocked = False
        if self.state == _PRELOGIN and not self._holding:
            self.transport.resumeProducing()
            self._deliver()

    # Hand-off.

    def _handOff(self, answer: DialogResult) -> None:
        self.state = _RELAYING
        self.result = "ok"
        self.listener.counters.logins += 1
        self._stopped = True
        self._replies.unregister()
        self.send(answer.reply)
        relay = self.relay = Relay(self._reactor, idleTimeout=self.config.idleTimeout)
        self.relayTo(relay.client)
        self.dialog.attach(relay.server)
        pipelined = self._takeBuffer()
        if pipelined:
            # Counted again by the relay's client leg.
            self._bytesIn -= len(pipelined)
            relay.client.dataReceived(pipelined)
        if answer.rest:
            relay.server.dataReceived(answer.rest)
        relay.whenFinished(self._relayFinished)
        relay.start()

    def _relayFinished(self, result: RelayResult) -> None:
        self._finish(
            result.end,
            result.detail,
            self._bytesIn + result.bytesIn,
            self._bytesOut + result.bytesOut,
        )

    # Timers and the end.

    def phaseExpired(self, phase: str) -> None:
        if self.state in (_RELAYING, _CLOSED):
            return
        self.loginTimedOut()
        self.close("login-timeout", f"no login within {self.config.loginTimeout:g}s")

    def _lineOverflow(self) -> None:
        self.lineTooLong()
        self.close("line-too-long", f"a line longer than {self.maxLine} bytes")

    def _teardown(self) -> None:
        """
        Stop timers and drop any backend work in progress.
        """
        self.timer.stop()
        if self._delayTimer is not None:
            if self._delayTimer.active():
                self._delayTimer.cancel()
            self._delayTimer = None
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        if self.dialog is not None:
            dialog, self.dialog = self.dialog, None
            dialog.abandon()
        if self.connection is not None:
            connection, self.connection = self.connection, None
            connection.release()

    def _finish(self, end: str, detail: str = "", bytesIn=None, bytesOut=None) -> None:
        """
        The session is over: free its slots, count it, and log its one
        line.
        """
        bytesIn = self._bytesIn if bytesIn is None else bytesIn
        bytesOut = self._bytesOut if bytesOut is None else bytesOut
        if not self.ended(bytesIn, bytesOut, error=end not in _CLEAN_ENDS):
            return
        connection = self.connection
        server = self._lastServer or f"{self.config.pool}/-"
        serverTLS = "-"
        if self.relay is not None and connection is not None:
            connection.release()
            server = connection.server.qualifiedName
            connection.server.bytesIn += bytesIn
            connection.server.bytesOut += bytesOut
            serverTLS = self.dialog.tls
            if self.dialog.tlsVersion is not None:
                serverTLS = f"{serverTLS}/{self.dialog.tlsVersion}"
        clientTLS = self.clientTLS
        # Only a completed handshake has a version: a failed one may have
        # chosen one before it failed.
        if self._clientTLSVersion is not None:
            clientTLS = f"{clientTLS}/{self._clientTLSVersion}"
        if detail == "" and self.result == "unavailable":
            detail = self.lastDetail
        durationSeconds = self._reactor.seconds() - self.started
        protocol = self.protocolName
        client = formatAddress(self.client)
        listener = self.listener.name
        user = printable(self.user) if self.user is not None else "-"
        result = self.result
        duration = formatSeconds(durationSeconds)
        details = f" ({detail})" if detail else ""
        self.log.info(
            SESSION_LINE,
            line=f"{protocol} {client} {listener} -> {server} user={user} tls={clientTLS} "
            f"server_tls={serverTLS} result={result} in={bytesIn} out={bytesOut} "
            f"duration={duration} end={end}{details}",
            protocol=protocol,
            client=client,
            listener=listener,
            server=server,
            user=user,
            clientTLS=clientTLS,
            serverTLS=serverTLS,
            result=result,
            failures=self.failures,
            bytesIn=bytesIn,
            bytesOut=bytesOut,
            duration=duration,
            durationSeconds=durationSeconds,
            end=end,
            detail=detail,
        )


class MailProxyFactory(ServerFactory):
    """
    Serves one IMAP or POP3 listener.

    Subclasses set C{protocol} to their L{MailFrontProtocol}.

    @ivar listener: the live L{lbproxy.core.model.Listener} (its C{config}
        a L{lbproxy.mail.config.MailListenerConfig}).
    @ivar pools: every live pool by name (C{user_pools} may name several).
    @ivar serverTLS: the listener's L{lbproxy.tls.server.ServerTLS} (its
        C{creator} is used for STARTTLS), or None.
    @ivar failedLogins: the L{FailedLogins} of the client addresses, or
        None without C{auth.address_max_failures}.
    """

    protocol = MailFrontProtocol

    noisy = False

    def __init__(self, listener, pools: dict, reactor, serverTLS=None) -> None:
        self.listener = listener = Listener.of(listener)
        self.config = listener.config
        self.pools = pools
        self._reactor = reactor
        self.serverTLS = serverTLS
        self.connectors: dict[str, BackendConnector] = {}
        limit = self.config.addressLimit
        self.failedLogins = FailedLogins(limit, reactor, listener.name) if limit.maxFailures else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.listener.name} -> {self.config.pool}>"

    def connectorFor(self, poolName: str) -> BackendConnector:
        """
        The connector placing flows on pool C{poolName}, made once.
        """
        connector = self.connectors.get(poolName)
        if connector is None:
            connector = self.connectors[poolName] = BackendConnector(
                self.pools[poolName], self._reactor
            )
        return connector

    def backendTLSFor(self, poolName: str):
        """
        The L{lbproxy.tls.client.BackendTLS} of pool C{poolName} (its
        C{creatorFor(server)} upgrades STARTTLS connections), or None.
        """
        return self.pools[poolName].tls

    def buildProtocol(self, addr: IAddress) -> MailFrontProtocol:
        return self.protocol(self, self._reactor)
