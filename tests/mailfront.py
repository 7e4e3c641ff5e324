"""
What the IMAP and POP3 tests against the real Dovecot stores share: the
TLS tables of their configs, an in-process mail front on a loopback port
(wired as the daemon wires it), waiting for its sessions to end, scripted
sessions on raw sockets, and the check that a user whose store is down
gets the temporary failure.
"""

from __future__ import annotations

import socket
import ssl
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent

from lbproxy.config import loadBytes
from lbproxy.core.format import SESSION_LINE
from lbproxy.core.pool import ServerState
from lbproxy.core.model import Balancer
from lbproxy.service import frontFactory, loadListenerTLS, wrapFront

#: Seconds a client of these tests waits for any answer.
TIMEOUT = 20


def recvUntil(sock: socket.socket, marker: bytes) -> bytes:
    """
    Read from C{sock} until C{marker} has arrived (or the peer closed).
    """
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def scriptedSession(port: int, steps, quit: bytes, farewell: bytes) -> list[bytes]:
    """
    On a new connection to C{port}: read the greeting, then for each
    C{(send, expect)} of C{steps} send C{send} and read until C{expect};
    end with C{quit}, read until C{farewell}.

    @return: what each step read.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        recvUntil(sock, b"\r\n")
        replies = []
        for send, expect in steps:
            sock.sendall(send)
            replies.append(recvUntil(sock, expect))
        sock.sendall(quit)
        recvUntil(sock, farewell)
        return replies


def tlsTables(stores, listener: str, listenerTLS: str | None, poolTLS: str | None) -> str:
    """
    The C{[tls]} tables of listener C{listener} and of pool C{stores}.

    @param listenerTLS: None, C{"starttls"} or C{"implicit"}.
    @param poolTLS: None, C{"starttls"} or C{"implicit"} toward the stores,
        verified against the stores' CA.
    """
    text = ""
    if listenerTLS is not None:
        text += f"""
[listeners.{listener}.tls]
certificates = [{{ cert = "{stores.certificate.chain}", key = "{stores.certificate.key}" }}]
starttls = {str(listenerTLS == "starttls").lower()}
"""
    if poolTLS is not None:
        text += f"""
[pools.stores.tls]
ca = "{stores.ca.cert}"
starttls = {str(poolTLS == "starttls").lower()}
"""
    return text


class MailFrontMixin:
    """
    For trial test cases: C{listenMail} runs the front of a config's
    listener in this process, on the real reactor.

    @ivar balancer: the live pools of the last config listened on.
    @ivar factory: the front's factory (inside any TLS wrapping).
    """

    def listenMail(self, text: str, source: str, name: str) -> int:
        """
        Serve listener C{name} of config C{text} on a free loopback port,
        with its TLS as the daemon sets it up, until the test ends (then
        wait for its sessions to finish).

        @return: the port.
        """
        config = loadBytes(text.encode(), source)
        listener = config.listeners[name]
        self.balancer = Balancer(config)
        serverTLS = loadListenerTLS(config).get(name)
        front = self.factory = frontFactory(listener, self.balancer.pools, reactor, serverTLS)
        port = reactor.listenTCP(0, wrapFront(front.listener, front, reactor, serverTLS), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        sessions = self.factory.listener.sessions
        self.addCleanup(lambda: Deferred.fromCoroutine(self.sessionsOver(sessions)))
        return port.getHost().port

    def clientContext(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.stores.ca.cert))

    async def sessionsOver(self, sessions=None):
        """
        Wait until the proxy has finished (and logged) every session.
        """
        if sessions is None:
            sessions = self.factory.listener.sessions
        deadline = time.monotonic() + TIMEOUT
        while sessions and time.monotonic() < deadline:
            await deferLater(reactor, 0.01, lambda: None)

    async def checkStoreDown(self, port: int, user: str, temporary: str) -> None:
        """
        The stores hold distinct mailboxes: while a health check has the
        store of C{user} marked down, and once it is stopped, C{user} gets
        the C{temporary} failure (never the other store's mailbox), logged
        with its store, and a user of the other store logs in.

        The test case has C{stores} (the L{dovecot} fixture's) and
        C{loginResult(port, user)}: the store serving C{user}, or the
        server's answer when it is not logged in.
        """
        homes = {}
        for name in self.stores.users:
            homes[name] = await deferToThread(self.loginResult, port, name)
        down = homes[user]
        other = next(name for name, store in homes.items() if store != down)
        server = self.balancer.pools["stores"].server(down)
        server.setState(ServerState.DOWN, "health check")
        self.assertIn(temporary, await deferToThread(self.loginResult, port, user))
        self.assertEqual(await deferToThread(self.loginResult, port, other), homes[other])
        server.setState(ServerState.UP)
        self.assertEqual(await deferToThread(self.loginResult, port, user), down)
        await deferToThread(self.stores.byName[down].stop)
        with capturedLogs() as events:
            self.assertIn(temporary, await deferToThread(self.loginResult, port, user))
            self.assertEqual(await deferToThread(self.loginResult, port, other), homes[other])
            await self.sessionsOver()
        lines = [formatEvent(e) for e in events if e.get("log_format") == SESSION_LINE]
        self.assertTrue(
            any(f"-> stores/{down} user={user}@example.test " in line and "result=unavailable" in line for line in lines),
            lines,
        )
