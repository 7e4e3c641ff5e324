"""
The POP3 front against two real Dovecot stores (tests/dovecot.py), with
Python's poplib, raw sockets and curl as clients: USER/PASS, AUTH PLAIN,
pipelining, RETR of the large message byte for byte, STLS and implicit TLS
on both legs, wrong passwords, users kept on their own store, a store
down, the client's address passed with XCLIENT or the PROXY protocol, and
an injection after STLS.

lbproxy runs in the test process on the real reactor; the blocking
clients run in threads.
"""

from __future__ import annotations

import poplib
import socket
import subprocess
import time
from base64 import b64encode

import pytest
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from dovecot import dovecot, dovecotStores  # noqa: F401 (fixtures)
from lbproxy.core.format import SESSION_LINE
from mailfront import TIMEOUT, MailFrontMixin, recvUntil, scriptedSession, tlsTables
from support import requireExecutable

pytestmark = pytest.mark.integration

#: Store listener the pool's servers use, by the pool's TLS and PROXY use.
_STORE_PORT = {None: "pop3", "starttls": "pop3", "implicit": "pop3s"}


def sessionLines(events) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_format") == SESSION_LINE]


class POP3DovecotTests(MailFrontMixin, TestCase):
    timeout = 120

    @pytest.fixture(autouse=True)
    def _stores(self, dovecot):  # noqa: F811 (the fixture)
        self.stores = dovecot

    def startProxy(
        self,
        listenerTLS: str | None = None,
        poolTLS: str | None = None,
        tlsRequired: bool | None = None,
        clientAddress: str = "xclient",
        sendProxy: str = "none",
        failureDelay: str = "100ms",
        maxFailures: int = 3,
        poolExtra: str = "",
    ) -> int:
        """
        Serve a POP3 listener in front of both stores (hashing on the
        user) on a loopback port, and return the port.

        @param listenerTLS: None, C{"starttls"} or C{"implicit"}.
        @param poolTLS: None, C{"starttls"} or C{"implicit"} toward the
            stores, verified against the stores' CA.
        @param sendProxy: the pool's C{send_proxy}; other than C{"none"},
            the stores' PROXY-protocol listeners are used.
        """
        stores = self.stores
        storePort = "pop3Proxy" if sendProxy != "none" else _STORE_PORT[poolTLS]
        servers = ", ".join(
            f'{{ name = "{store.name}", address = "127.0.0.1:{store.ports[storePort]}" }}'
            for store in stores.stores
        )
        text = f"""
[listeners.pop3]
bind = "tcp:0:interface=127.0.0.1"
pool = "stores"
mode = "pop3"
user_domain = "example.test"
{"" if tlsRequired is None else f"tls_required = {str(tlsRequired).lower()}"}

[listeners.pop3.auth]
max_failures = {maxFailures}
failure_delay = "{failureDelay}"

[pools.stores]
selector = {{ name = "hash", key = "user" }}
client_address = "{clientAddress}"
send_proxy = "{sendProxy}"
retries = 1
servers = [{servers}]
{poolExtra}
"""
        text += tlsTables(stores, "pop3", listenerTLS, poolTLS)
        return self.listenMail(text, "dovecot-pop3-test.toml", "pop3")

    def pop3(self, port: int) -> poplib.POP3:
        return poplib.POP3("127.0.0.1", port, timeout=TIMEOUT)

    def storeServing(self, client: poplib.POP3) -> str:
        """
        Which store the logged-in C{client} reads its first message from.
        """
        _, lines, _ = client.top(1, 0)
        subject = next(line for line in lines if line.startswith(b"Subject: "))
        return self.stores.storeOf(subject.decode()).name

    async def inThread(self, function, *args):
        return await deferToThread(function, *args)


    # Logins.

    async def test_userPassConsistently(self):
        """
        USER/PASS with poplib: each user reads its own store every time,
        whatever form of its name it uses, and the users are spread over
        both stores; CAPA after login is the server's.
        """
        port = self.startProxy()

        def run():
            served = {}
            for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
                for name in (user, user.upper(), f"{user}@example.test"):
                    client = self.pop3(port)
                    try:
                        before = client.capa()
                        client.user(name)
                        assert client.pass_(self.stores.users[user]).startswith(b"+OK")
                        assert client.stat()[0] == self.stores.messageCount
                        after = client.capa()
                        served.setdefault(user, set()).add(self.storeServing(client))
                    finally:
                        client.quit()
            return served, before, after

        served, before, after = await self.inThread(run)
        for user, stores in served.items():
            self.assertEqual(len(stores), 1, f"{user} reached {stores}")
        self.assertEqual({next(iter(s)) for s in served.values()}, {"a", "b"})
        self.assertIn("USER", before)
        self.assertNotIn("TOP", before)
        self.assertIn("TOP", after)
        self.assertIn("UIDL", after)

    async def test_retrLargeMessage(self):
        """
        RETR of the 5 MiB message through the relay comes back byte for
        byte (poplib undoes the dot-stuffing).
        """
        port = self.startProxy()

        def run():
            client = self.pop3(port)
            client.user("erin")
            client.pass_(self.stores.users["erin"])
            response, lines, octets = client.retr(self.stores.messageCount)
            client.quit()
            return response, lines, octets

        with capturedLogs() as events:
            response, lines, octets = await self.inThread(run)
            await self.sessionsOver()
        self.assertTrue(response.startswith(b"+OK"))
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", self.stores.largeMessage)
        [line] = sessionLines(events)
        self.assertIn("result=ok", line)
        self.assertIn("user=erin@example.test", line)
        self.assertNotIn("erin-secret", repr(events))

    async def test_authPlainAndPipelining(self):
        """
        AUTH PLAIN with an initial response and after a continuation, on a
        raw socket; USER, PASS and STAT pipelined in one write are
        answered in order.
        """
        port = self.startProxy()
        users = self.stores.users

        def session(steps):
            return scriptedSession(port, steps, b"QUIT\r\n", b"+OK Logging out")

        def run():
            dave = b64encode(b"\0dave\0" + users["dave"].encode())
            frank = b64encode(b"\0frank\0" + users["frank"].encode())
            initial = session([(b"AUTH PLAIN " + dave + b"\r\n", b"\r\n"), (b"STAT\r\n", b"\r\n")])
            continued = session([(b"AUTH PLAIN\r\n", b"\r\n"), (frank + b"\r\n", b"\r\n")])
            pipelined = session(
                [(b"USER carol\r\nPASS " + users["carol"].encode() + b"\r\nSTAT\r\n", b"+OK %d " % self.stores.messageCount)]
            )
            return initial, continued, pipelined

        initial, continued, pipelined = await self.inThread(run)
        self.assertTrue(initial[0].startswith(b"+OK Logged in"), initial)
        self.assertTrue(initial[1].startswith(b"+OK %d " % self.stores.messageCount), initial)
        self.assertEqual(continued[0], b"+ \r\n")
        self.assertTrue(continued[1].startswith(b"+OK Logged in"), continued)
        self.assertTrue(pipelined[0].startswith(b"+OK\r\n+OK Logged in"), pipelined)

    async def test_wrongPassword(self):
        """
        A wrong password gets -ERR after the delay and the client may try
        again on the same connection; too many failures close it.
        """
        port = self.startProxy(maxFailures=2, failureDelay="300ms")

        def run():
            client = self.pop3(port)
            started = time.monotonic()
            client.user("heidi")
            try:
                client.pass_("wrong")
            except poplib.error_proto as e:
                first = str(e)
            delayed = time.monotonic() - started
            client.user("heidi")
            client.pass_(self.stores.users["heidi"])
            client.quit()
            capped = self.pop3(port)
            errors = []
            for _ in range(2):
                capped.user("heidi")
                try:
                    capped.pass_("wrong")
                except poplib.error_proto as e:
                    errors.append(str(e))
            # The goodbye and the close follow the second answer.
            rest = capped.file.read()
            capped.close()
            return first, delayed, errors, rest

        with capturedLogs() as events:
            first, delayed, errors, rest = await self.inThread(run)
            await self.sessionsOver()
        self.assertIn("[AUTH]", first)
        self.assertGreaterEqual(delayed, 0.3)
        self.assertEqual(len(errors), 2)
        self.assertIn(b"Too many authentication failures", rest)
        self.assertTrue(any("end=too-many-failures" in line for line in sessionLines(events)))
        self.assertNotIn("heidi-secret", repr(events))

    def loginResult(self, port: int, user: str) -> str:
        """
        Log C{user} in with USER/PASS: the store serving it, or the
        server's -ERR.
        """
        client = self.pop3(port)
        client.user(user)
        try:
            client.pass_(self.stores.users[user])
        except poplib.error_proto as e:
            client.quit()
            return str(e)
        store = self.storeServing(client)
        client.quit()
        return store

    async def test_storeDown(self):
        """
        The stores hold distinct mailboxes: while a health check has one
        marked down, and once it is stopped, its users get -ERR
        [SYS/TEMP]; the other users log in.
        """
        await self.checkStoreDown(self.startProxy(), "bob", "[SYS/TEMP]")

    async def test_storeDownReplicas(self):
        """
        With stores = "replicas", a user whose store is down reaches the
        other store; with both down the client gets -ERR [SYS/TEMP].
        """
        port = self.startProxy(poolExtra='stores = "replicas"')
        store = await self.inThread(self.loginResult, port, "bob")
        await self.inThread(self.stores.byName[store].stop)
        other = await self.inThread(self.loginResult, port, "bob")
        self.assertEqual(other, "b" if store == "a" else "a")
        await self.inThread(self.stores.byName[other].stop)
        self.assertIn("[SYS/TEMP]", await self.inThread(self.loginResult, port, "bob"))

    async def test_clientAddress(self):
        """
        The store logs the client's own address (127.0.0.2), passed with
        XCLIENT or with the PROXY protocol, not the proxy's.
        """
        users = self.stores.users

        def login(port, user):
            with socket.create_connection(
                ("127.0.0.1", port), timeout=TIMEOUT, source_address=("127.0.0.2", 0)
            ) as sock:
                recvUntil(sock, b"\r\n")
                sock.sendall(b"USER %s\r\nPASS %s\r\nQUIT\r\n" % (user.encode(), users[user].encode()))
                return recvUntil(sock, b"Logging out")

        for user, options in (("alice", {}), ("bob", {"sendProxy": "v2", "clientAddress": "none"})):
            port = self.startProxy(**options)
            reply = await self.inThread(login, port, user)
            self.assertIn(b"+OK Logged in", reply)
            logs = "".join(store.log() for store in self.stores.stores)
            logins = [line for line in logs.splitlines() if f"user=<{user}>" in line and "pop3-login: Info: Login:" in line]
            self.assertIn("rip=127.0.0.2", logins[-1])

    # TLS.

    async def test_stls(self):
        """
        tls_required on a STLS listener: CAPA hides USER and SASL and
        USER is refused in plaintext; after STLS the login works.
        """
        port = self.startProxy(listenerTLS="starttls")

        def run():
            client = self.pop3(port)
            before = client.capa()
            try:
                client.user("alice")
                refused = None
            except poplib.error_proto as e:
                refused = str(e)
            client.stls(self.clientContext())
            after = client.capa()
            client.user("alice")
            client.pass_(self.stores.users["alice"])
            store = self.storeServing(client)
            client.quit()
            return before, refused, after, store

        with capturedLogs() as events:
            before, refused, after, store = await self.inThread(run)
            await self.sessionsOver()
        self.assertIn("STLS", before)
        self.assertNotIn("USER", before)
        self.assertNotIn("SASL", before)
        self.assertIn("[AUTH]", refused)
        self.assertNotIn("STLS", after)
        self.assertIn("USER", after)
        self.assertTrue(any("tls=starttls/TLSv1." in line for line in sessionLines(events)))

    async def test_injectionAfterSTLS(self):
        """
        USER and PASS pipelined after STLS in plaintext are discarded and
        the connection closed without going to TLS; no store hears of it.
        """
        port = self.startProxy(listenerTLS="starttls")
        logSizes = [len(store.log()) for store in self.stores.stores]

        def run():
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
                recvUntil(sock, b"\r\n")
                sock.sendall(b"STLS\r\nUSER alice\r\nPASS %s\r\n" % self.stores.users["alice"].encode())
                return recvUntil(sock, b"never")

        with capturedLogs() as events:
            self.assertEqual(await self.inThread(run), b"")
            await self.sessionsOver()
        self.assertTrue(any("end=starttls-injection" in line for line in sessionLines(events)))
        self.assertEqual(self.factory.connectors, {})
        self.assertEqual([len(store.log()) for store in self.stores.stores], logSizes)

    async def test_implicitTLSAndServerTLS(self):
        """
        POP3S on the listener, and STLS or implicit TLS toward the stores,
        verified against their CA: the session log says which.
        """
        for poolTLS in ("starttls", "implicit"):
            port = self.startProxy(listenerTLS="implicit", poolTLS=poolTLS)

            def run():
                client = poplib.POP3_SSL("127.0.0.1", port, context=self.clientContext(), timeout=TIMEOUT)
                client.user("carol")
                client.pass_(self.stores.users["carol"])
                store = self.storeServing(client)
                client.quit()
                return store

            with capturedLogs() as events:
                await self.inThread(run)
                await self.sessionsOver()
            lines = sessionLines(events)
            self.assertTrue(any("tls=implicit/TLSv1." in line for line in lines), lines)
            self.assertTrue(any(f"server_tls={poolTLS}/TLSv1." in line for line in lines), lines)

    # curl.

    async def curl(self, *args: str) -> subprocess.CompletedProcess:
        curl = requireExecutable("curl")
        return await self.inThread(
            lambda: subprocess.run(
                [curl, "-sS", "--max-time", str(TIMEOUT), *args],
                capture_output=True,
                timeout=TIMEOUT + 5,
            )
        )

    async def test_curl(self):
        """
        curl lists and retrieves over pop3:// (plain, and STLS with
        --ssl-reqd); a wrong password fails.
        """
        plainPort = self.startProxy()
        stlsPort = self.startProxy(listenerTLS="starttls")
        users = self.stores.users
        ca = str(self.stores.ca.cert)
        run = self.curl

        listing = await run(f"pop3://127.0.0.1:{plainPort}/", "-u", f"alice:{users['alice']}")
        self.assertEqual(listing.returncode, 0, listing.stderr)
        self.assertEqual(len(listing.stdout.splitlines()), self.stores.messageCount)
        secured = await run(
            f"pop3://127.0.0.1:{stlsPort}/2", "--ssl-reqd", "--cacert", ca, "-u", f"bob:{users['bob']}"
        )
        self.assertEqual(secured.returncode, 0, secured.stderr)
        self.assertIn(b"message 2 for bob", secured.stdout)
        wrong = await run(f"pop3://127.0.0.1:{plainPort}/1", "-u", "alice:wrong")
        self.assertNotEqual(wrong.returncode, 0)

    async def test_curlImplicitTLS(self):
        """
        curl over pop3s://: its close_notify after QUIT, arriving once the
        store has closed, ends the session cleanly.
        """
        port = self.startProxy(listenerTLS="implicit")
        users = self.stores.users
        with capturedLogs() as events:
            result = await self.curl(
                f"pop3s://127.0.0.1:{port}/1", "--cacert", str(self.stores.ca.cert), "-u", f"dave:{users['dave']}"
            )
            await self.sessionsOver()
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"message 1 for dave", result.stdout)
        [line] = sessionLines(events)
        self.assertIn("result=ok", line)
        self.assertIn("tls=implicit/TLSv1.", line)
