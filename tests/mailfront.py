"""
What the IMAP and POP3 tests against the real Dovecot stores share: the
TLS tables of their configs, an in-process mail front on a loopback port
(wired as the daemon wires it), waiting for its sessions to end, and
scripted sessions on raw sockets.
"""

from __future__ import annotations

import socket
import ssl
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from lbproxy.config import loadBytes
from lbproxy.runtime import Balancer
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
        port = reactor.listenTCP(0, wrapFront(listener, front, reactor, serverTLS), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        sessions = self.factory.sessions
        self.addCleanup(lambda: Deferred.fromCoroutine(self.sessionsOver(sessions)))
        return port.getHost().port

    def clientContext(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.stores.ca.cert))

    async def sessionsOver(self, sessions=None):
        """
        Wait until the proxy has finished (and logged) every session.
        """
        if sessions is None:
            sessions = self.factory.sessions
        deadline = time.monotonic() + TIMEOUT
        while sessions and time.monotonic() < deadline:
            await deferLater(reactor, 0.01, lambda: None)
