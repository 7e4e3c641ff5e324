"""
The IMAP and POP3 fronts before login on real loopback sockets, without
stores: clients that write commands and never read the answers (in
plaintext, after STARTTLS, over implicit TLS), and the session log of a
client whose STARTTLS handshake fails.

lbproxy runs in the test process on the real reactor; the blocking
clients run in threads.
"""

from __future__ import annotations

import socket
import ssl

import pytest
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from certs import CertificateAuthority
from lbproxy.core.format import SESSION_LINE
from mailfront import TIMEOUT, MailFrontMixin, recvUntil
from support import freePort

pytestmark = pytest.mark.integration

#: What a flooding client offers to write in all.
FLOOD = 40 * 1024 * 1024

#: Seconds a flooding client's write may stay blocked before it concludes
#: that lbproxy has stopped reading.
STALLED = 3.0

#: Most bytes lbproxy may have read from a flooding client: what the
#: kernel's socket buffers hold of the replies (several MiB on loopback),
#: divided by the replies' size per command, plus one read.
READ_BOUND = 4 * 1024 * 1024


def mailConfig(mode: str, tls: str | None, certificate) -> str:
    """
    A config with one mail listener named C{mail} on a free port, TLS
    (C{"starttls"} or C{"implicit"}) with C{certificate} or none, and a
    pool whose store nothing listens on.
    """
    text = f"""
[listeners.mail]
bind = "tcp:0:interface=127.0.0.1"
mode = "{mode}"
pool = "stores"

[pools.stores]
servers = [{{ name = "a", address = "127.0.0.1:{freePort()}" }}]
"""
    if tls is not None:
        text += f"""
[listeners.mail.tls]
certificates = [{{ cert = "{certificate.chain}", key = "{certificate.key}" }}]
starttls = {str(tls == "starttls").lower()}
"""
    return text


def flood(sock, command: bytes) -> int:
    """
    Write C{command} over and over on C{sock} without reading, until
    L{FLOOD} bytes are written or a write stays blocked for L{STALLED}
    seconds.

    @return: the bytes written.
    """
    chunk = command * (65536 // len(command))
    sock.settimeout(STALLED)
    written = 0
    try:
        while written < FLOOD:
            written += sock.send(chunk)
    except (socket.timeout, ssl.SSLWantWriteError):
        pass
    return written


class FloodTests(MailFrontMixin, TestCase):
    """
    Clients writing CAPABILITY / CAPA without reading the replies: lbproxy
    stops reading from them, so what it reads (and buffers) stays bounded
    while they try to write tens of MiB.
    """

    timeout = 180

    @pytest.fixture(autouse=True)
    def _certificates(self, tmp_path):
        self.ca = CertificateAuthority(tmp_path / "ca")
        self.certificate = self.ca.issue("localhost", "127.0.0.1")

    def clientContext(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca.cert))

    def serve(self, mode: str, tls: str | None = None) -> int:
        return self.listenMail(mailConfig(mode, tls, self.certificate), "flood.toml", "mail")

    async def floodAndCheck(self, port: int, command: bytes, reply: bytes, start=None) -> None:
        """
        Connect, let C{start} (a function of the socket returning the
        socket to write on) begin the session, flood C{command}, and check
        that lbproxy read a bounded amount; over plaintext also that the
        client then reads a C{reply} for every whole command it wrote.
        """

        def run():
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            recvUntil(sock, b"\r\n")
            if start is not None:
                sock = start(sock)
            return sock, flood(sock, command)

        sock, written = await deferToThread(run)
        self.addCleanup(sock.close)
        [session] = self.factory.listener.sessions
        read = session._bytesIn
        self.assertLess(read, READ_BOUND, f"lbproxy read {read} of {written} bytes")
        self.assertLess(len(session._buffer), 1024 * 1024)
        self.assertTrue(session._replies.paused)
        if isinstance(sock, ssl.SSLSocket):
            return

        def drain():
            sock.settimeout(TIMEOUT)
            expected = written // len(command)
            seen = 0
            tail = b""
            while seen < expected:
                data = sock.recv(1 << 20)
                if not data:
                    break
                data = tail + data
                seen += data.count(reply)
                tail = data[-len(reply) + 1 :]
            return expected, seen

        expected, seen = await deferToThread(drain)
        self.assertEqual(seen, expected)
        self.assertFalse(session._replies.paused)

    async def test_imapPlaintext(self):
        port = self.serve("imap")
        await self.floodAndCheck(port, b"a CAPABILITY\r\n", b"a OK CAPABILITY completed\r\n")

    async def test_imapAfterSTARTTLS(self):
        port = self.serve("imap", "starttls")

        def start(sock):
            sock.sendall(b"s STARTTLS\r\n")
            recvUntil(sock, b"s OK")
            return self.clientContext().wrap_socket(sock, server_hostname="localhost")

        await self.floodAndCheck(port, b"a CAPABILITY\r\n", b"a OK", start)

    async def test_imapPlaintextSideOfSTARTTLS(self):
        port = self.serve("imap", "starttls")
        await self.floodAndCheck(port, b"a CAPABILITY\r\n", b"a OK CAPABILITY completed\r\n")

    async def test_imapImplicitTLS(self):
        port = self.serve("imap", "implicit")

        def run():
            raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            sock = self.clientContext().wrap_socket(raw, server_hostname="localhost")
            recvUntil(sock, b"\r\n")
            return sock, flood(sock, b"a CAPABILITY\r\n")

        sock, written = await deferToThread(run)
        self.addCleanup(sock.close)
        [session] = self.factory.listener.sessions
        self.assertLess(session._bytesIn, READ_BOUND, f"lbproxy read {session._bytesIn} of {written} bytes")
        self.assertTrue(session._replies.paused)

    async def test_pop3Plaintext(self):
        port = self.serve("pop3")
        await self.floodAndCheck(port, b"CAPA\r\n", b"IMPLEMENTATION lbproxy\r\n.\r\n")

    async def test_pop3PlaintextSideOfSTLS(self):
        port = self.serve("pop3", "starttls")
        await self.floodAndCheck(port, b"CAPA\r\n", b"IMPLEMENTATION lbproxy\r\n.\r\n")


class FailedHandshakeTests(MailFrontMixin, TestCase):
    """
    A client whose TLS handshake fails (it does not trust the listener's
    certificate): the session line says the handshake failed, and names
    no TLS version, though the server side had chosen one.
    """

    timeout = 60

    @pytest.fixture(autouse=True)
    def _certificates(self, tmp_path):
        self.certificate = CertificateAuthority(tmp_path / "ca").issue("localhost", "127.0.0.1")
        self.otherCA = CertificateAuthority(tmp_path / "other", name="other CA")

    async def failedSession(self, mode: str, tls: str, start: bytes, expect: bytes) -> str:
        port = self.listenMail(mailConfig(mode, tls, self.certificate), "handshake.toml", "mail")
        context = ssl.create_default_context(cafile=str(self.otherCA.cert))

        def run():
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
                if start:
                    recvUntil(sock, b"\r\n")
                    sock.sendall(start)
                    recvUntil(sock, expect)
                try:
                    context.wrap_socket(sock, server_hostname="localhost")
                except ssl.SSLCertVerificationError as e:
                    return e.verify_message
                return "verified"

        with capturedLogs() as events:
            self.assertIn("unable to get local issuer certificate", await deferToThread(run))
            await self.sessionsOver()
        [line] = [formatEvent(e) for e in events if e.get("log_format") == SESSION_LINE]
        self.assertNotIn("TLSv1", line)
        self.assertIn(" end=tls-handshake-failed (", line)
        return line

    async def test_imapSTARTTLS(self):
        line = await self.failedSession("imap", "starttls", b"s STARTTLS\r\n", b"s OK")
        self.assertIn(" tls=starttls server_tls=- ", line)

    async def test_pop3STLS(self):
        line = await self.failedSession("pop3", "starttls", b"STLS\r\n", b"+OK")
        self.assertIn(" tls=starttls server_tls=- ", line)

    async def test_imapImplicitTLS(self):
        line = await self.failedSession("imap", "implicit", b"", b"")
        self.assertIn(" tls=implicit server_tls=- ", line)
