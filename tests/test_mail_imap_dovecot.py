"""
The IMAP front against two real Dovecot stores (tests/dovecot.py), with
Python's imaplib, raw sockets and curl as clients: every login form,
SELECT/FETCH/IDLE through the relay, STARTTLS and implicit TLS on both
legs, wrong passwords, users kept on their own store, a store down, the
client's address passed with ID, and an injection after STARTTLS.

lbproxy runs in the test process on the real reactor; the blocking
clients run in threads.
"""

from __future__ import annotations

import imaplib
import socket
import ssl
import subprocess
import time
from base64 import b64encode

import pytest
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from dovecot import dovecot, dovecotStores  # noqa: F401 (fixtures)
from lbproxy.core.format import SESSION_LINE
from processes import processes, startLbproxy, waitUntil  # noqa: F401 (fixture)
from mailfront import TIMEOUT, MailFrontMixin, recvUntil, scriptedSession, tlsTables
from support import freePort, requireExecutable

pytestmark = pytest.mark.integration


class IMAPDovecotTests(MailFrontMixin, TestCase):
    timeout = 120

    @pytest.fixture(autouse=True)
    def _stores(self, dovecot):  # noqa: F811 (the fixture)
        self.stores = dovecot

    def startProxy(
        self,
        listenerTLS: str | None = None,
        poolTLS: str | None = None,
        tlsRequired: bool | None = None,
        clientAddress: str = "id",
        failureDelay: str = "100ms",
        maxFailures: int = 3,
        userPools: str = "",
        listenerExtra: str = "",
        poolExtra: str = "",
        authExtra: str = "",
    ) -> int:
        """
        Serve an IMAP listener in front of both stores (hashing on the
        user) on a loopback port, and return the port.

        @param listenerTLS: None, C{"starttls"} or C{"implicit"}.
        @param poolTLS: None, C{"starttls"} or C{"implicit"} toward the
            stores, verified against the stores' CA.
        """
        stores = self.stores
        listenerPort = "imaps" if poolTLS == "implicit" else "imap"
        servers = ", ".join(
            f'{{ name = "{store.name}", address = "127.0.0.1:{store.ports[listenerPort]}" }}'
            for store in stores.stores
        )
        text = f"""
[listeners.imap]
bind = "tcp:0:interface=127.0.0.1"
pool = "stores"
mode = "imap"
user_domain = "example.test"
{"" if tlsRequired is None else f"tls_required = {str(tlsRequired).lower()}"}
{listenerExtra}

[listeners.imap.auth]
max_failures = {maxFailures}
failure_delay = "{failureDelay}"
{authExtra}

[listeners.imap.user_pools]
{userPools}

[pools.stores]
selector = {{ name = "hash", key = "user" }}
client_address = "{clientAddress}"
retries = 1
servers = [{servers}]
{poolExtra}

[pools.only_a]
servers = [{{ name = "a", address = "127.0.0.1:{stores.stores[0].ports["imap"]}" }}]
"""
        text += tlsTables(stores, "imap", listenerTLS, poolTLS)
        return self.listenMail(text, "dovecot-test.toml", "imap")

    def imap(self, port: int) -> imaplib.IMAP4:
        return imaplib.IMAP4("127.0.0.1", port, timeout=TIMEOUT)

    def storeServing(self, client: imaplib.IMAP4) -> str:
        """
        Which store the logged-in C{client} reads its INBOX from.
        """
        typ, _ = client.select("INBOX")
        assert typ == "OK"
        typ, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK", data
        return self.stores.storeOf(data[0][1].decode()).name

    async def inThread(self, function, *args):
        return await deferToThread(function, *args)


    # Logins.

    async def test_loginSelectFetchConsistently(self):
        """
        LOGIN with imaplib: the server's post-login capabilities come
        back, each user reads its own store every time whatever form of
        its name it uses, and the users are spread over both stores.
        """
        port = self.startProxy()

        def run():
            served = {}
            for user in self.stores.users:
                for name in (user, user.upper(), f"{user}@example.test"):
                    client = self.imap(port)
                    try:
                        typ, data = client.login(name, self.stores.users[user])
                        assert typ == "OK"
                        assert b"IDLE" in data[0], data
                        served.setdefault(user, set()).add(self.storeServing(client))
                    finally:
                        client.logout()
            return served

        served = await self.inThread(run)
        for user, stores in served.items():
            self.assertEqual(len(stores), 1, f"{user} reached {stores}")
        self.assertEqual({next(iter(s)) for s in served.values()}, {"a", "b"})

    async def test_userPools(self):
        """
        A user listed in user_pools goes to that pool.
        """
        port = self.startProxy(userPools='"bob" = "only_a"\n"carol@example.test" = "only_a"')

        def run():
            result = []
            for user in ("bob", "carol"):
                client = self.imap(port)
                client.login(user, self.stores.users[user])
                result.append(self.storeServing(client))
                client.logout()
            return result

        self.assertEqual(await self.inThread(run), ["a", "a"])

    async def test_authenticatePlain(self):
        port = self.startProxy()

        def run():
            client = self.imap(port)
            typ, _ = client.authenticate("PLAIN", lambda challenge: b"\0dave\0dave-secret")
            store = self.storeServing(client)
            client.logout()
            return typ, store

        typ, store = await self.inThread(run)
        self.assertEqual(typ, "OK")
        self.assertIn(store, ("a", "b"))

    async def test_rawLoginForms(self):
        """
        Synchronizing literals (with the proxy's continuations), LITERAL+,
        quoted strings and AUTHENTICATE PLAIN with SASL-IR, on a raw
        socket.
        """
        port = self.startProxy()
        users = self.stores.users

        def session(steps):
            return scriptedSession(port, steps, b"z LOGOUT\r\n", b"z OK")

        def run():
            erin = users["erin"].encode()
            literal = session(
                [
                    (b"a LOGIN {4}\r\n", b"+ "),
                    (b"erin {%d}\r\n" % len(erin), b"+ "),
                    (erin + b"\r\n", b"a OK"),
                    (b"b SELECT INBOX\r\n", b"b OK"),
                ]
            )
            plus = session([(b"a LOGIN {4+}\r\nerin {%d+}\r\n%s\r\n" % (len(erin), erin), b"a OK")])
            quoted = session([(b'a LOGIN "erin" "%s"\r\n' % erin, b"a OK")])
            response = b64encode(b"\0frank\0" + users["frank"].encode())
            saslIR = session([(b"a AUTHENTICATE PLAIN " + response + b"\r\n", b"a OK")])
            return literal, plus, quoted, saslIR

        literal, plus, quoted, saslIR = await self.inThread(run)
        self.assertEqual(literal[0], b"+ Ready for literal data\r\n")
        self.assertIn(b"a OK [CAPABILITY IMAP4rev1", literal[2])
        self.assertIn(b"b OK [READ-WRITE]", literal[3])
        self.assertIn(b"a OK [CAPABILITY", plus[0])
        self.assertTrue(plus[0].startswith(b"a OK"), plus[0])
        self.assertIn(b"a OK", quoted[0])
        self.assertIn(b"a OK", saslIR[0])

    async def test_idleAndLargeFetch(self):
        """
        IDLE passes through (a message appended meanwhile is announced),
        and the large message comes back byte for byte.
        """
        port = self.startProxy()
        users = self.stores.users

        def run():
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
                recvUntil(sock, b"\r\n")
                sock.sendall(b"a LOGIN grace %s\r\nb SELECT INBOX\r\n" % users["grace"].encode())
                selected = recvUntil(sock, b"b OK")
                sock.sendall(b"c IDLE\r\n")
                idling = recvUntil(sock, b"+ ")
                return selected, idling, sock.dup()

        selected, idling, sock = await self.inThread(run)
        self.addCleanup(sock.close)
        self.assertIn(b"+ idling", idling)

        def appendAndRead():
            # Append on both stores: only grace's own store's copy is seen.
            for store in self.stores.stores:
                direct = imaplib.IMAP4("127.0.0.1", store.ports["imap"], timeout=TIMEOUT)
                direct.login("grace", users["grace"])
                direct.append("INBOX", None, None, b"Subject: appended\r\n\r\nhello\r\n")
                direct.logout()
            announced = recvUntil(sock, b"EXISTS")
            sock.sendall(b"DONE\r\n")
            done = recvUntil(sock, b"c OK")
            count = self.stores.messageCount
            sock.sendall(b"d FETCH %d BODY.PEEK[]\r\n" % count)
            large = recvUntil(sock, b"d OK")
            sock.sendall(b"e EXPUNGE\r\n")
            return announced, done, large

        announced, done, large = await self.inThread(appendAndRead)
        self.assertIn(b"EXISTS", announced)
        self.assertIn(b"c OK", done)
        self.assertIn(self.stores.largeMessage, large)

    async def test_wrongPassword(self):
        """
        A wrong password gets NO after the delay and the client may try
        again on the same connection; too many failures close it.
        """
        port = self.startProxy(maxFailures=2, failureDelay="300ms")

        def run():
            client = self.imap(port)
            started = time.monotonic()
            try:
                client.login("heidi", "wrong")
            except imaplib.IMAP4.error as e:
                first = str(e)
            delayed = time.monotonic() - started
            typ, _ = client.login("heidi", self.stores.users["heidi"])
            client.logout()
            client = self.imap(port)
            errors = []
            for _ in range(2):
                try:
                    client.login("heidi", "wrong")
                except imaplib.IMAP4.error as e:
                    errors.append(str(e))
                except imaplib.IMAP4.abort as e:
                    errors.append("abort: " + str(e))
            try:
                client.noop()
                closed = False
            except (imaplib.IMAP4.abort, OSError):
                closed = True
            return first, delayed, typ, errors, closed

        with capturedLogs() as events:
            first, delayed, typ, errors, closed = await self.inThread(run)
            await self.sessionsOver()
        self.assertIn("AUTHENTICATIONFAILED", first)
        self.assertGreaterEqual(delayed, 0.3)
        self.assertEqual(typ, "OK")
        self.assertEqual(len(errors), 2)
        self.assertTrue(closed)
        lines = [formatEvent(e) for e in events if e.get("log_format") == SESSION_LINE]
        self.assertTrue(any("end=too-many-failures" in line for line in lines), lines)
        self.assertNotIn("heidi-secret", repr(events))

    def loginResult(self, port: int, user: str, password: str | None = None) -> str:
        """
        Log C{user} in (with its password unless C{password} is given):
        the store serving it, or the server's NO.
        """
        client = self.imap(port)
        try:
            client.login(user, password or self.stores.users[user])
        except imaplib.IMAP4.error as e:
            client.noop()
            client.logout()
            return str(e)
        store = self.storeServing(client)
        client.logout()
        return store

    async def test_storeDown(self):
        """
        The stores hold distinct mailboxes: while a health check has one
        marked down, and once it is stopped, its users get NO
        [UNAVAILABLE] and may try again; the other users log in.
        """
        await self.checkStoreDown(self.startProxy(), "alice", "[UNAVAILABLE]")

    async def test_storeDownReplicas(self):
        """
        With stores = "replicas", a user whose store is down reaches the
        other store; with both down the client gets NO [UNAVAILABLE].
        """
        port = self.startProxy(poolExtra='stores = "replicas"')
        store = await self.inThread(self.loginResult, port, "alice")
        await self.inThread(self.stores.byName[store].stop)
        other = await self.inThread(self.loginResult, port, "alice")
        self.assertEqual(other, "b" if store == "a" else "a")
        await self.inThread(self.stores.byName[other].stop)
        self.assertIn("[UNAVAILABLE]", await self.inThread(self.loginResult, port, "alice"))

    async def test_failuresPerAddress(self):
        """
        Failed logins add up over the connections of one address: past
        auth.address_max_failures even the right password is refused, like
        a failed login and without asking a store, while another address
        logs in.
        """
        port = self.startProxy(authExtra="address_max_failures = 3")
        password = self.stores.users["erin"]

        def run():
            results = []
            for attempt in ("wrong", "wrong", "wrong", password):
                results.append(self.loginResult(port, "erin", attempt))
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=("127.0.0.2", 0)) as sock:
                recvUntil(sock, b"\r\n")
                sock.sendall(b"a LOGIN erin %s\r\n" % password.encode())
                results.append(recvUntil(sock, b"a ").decode())
            return results

        with capturedLogs() as events:
            results = await self.inThread(run)
            await self.sessionsOver()
        self.assertEqual([result.split("]")[0] for result in results[:4]], ["b'[AUTHENTICATIONFAILED"] * 4)
        self.assertIn("a OK", results[4])
        lines = [formatEvent(e) for e in events]
        self.assertEqual(sum("its logins are refused" in line for line in lines), 1)
        refused = [line for line in lines if "-> stores/- user=erin@example.test " in line]
        self.assertEqual(len(refused), 1)
        self.assertIn("result=failed", refused[0])

    async def test_clientAddressByID(self):
        """
        The store logs the client's own address (here 127.0.0.2), passed
        with ID, not the proxy's; an x-originating-ip the client sent is
        dropped.
        """
        port = self.startProxy()
        users = self.stores.users

        def run():
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=("127.0.0.2", 0)) as sock:
                recvUntil(sock, b"\r\n")
                sock.sendall(
                    b'i ID ("name" "test-client" "x-originating-ip" "10.9.9.9")\r\n'
                    b"a LOGIN bob %s\r\n" % users["bob"].encode()
                )
                reply = recvUntil(sock, b"a OK")
                sock.sendall(b"z LOGOUT\r\n")
                recvUntil(sock, b"z OK")
                return reply

        reply = await self.inThread(run)
        self.assertIn(b"a OK", reply)
        logs = "".join(store.log() for store in self.stores.stores)
        logins = [line for line in logs.splitlines() if "user=<bob>" in line and "Login:" in line]
        self.assertTrue(any("rip=127.0.0.2" in line for line in logins), logins[-3:])
        self.assertFalse(any("10.9.9.9" in line for line in logins))

    async def test_clientAddressFromProxyHeader(self):
        """
        accept_proxy on a mail listener, plain and implicit TLS: the
        trusted proxy's PROXY header (before the greeting, before the
        handshake) names the client, and that is the address the store
        learns with ID.
        """
        users = self.stores.users
        header = b"PROXY TCP4 192.0.2.77 192.0.2.1 45678 143\r\n"
        for listenerTLS in (None, "implicit"):
            port = self.startProxy(listenerTLS=listenerTLS, listenerExtra='accept_proxy = ["127.0.0.1"]')

            def run():
                with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
                    raw.sendall(header)
                    sock = raw
                    if listenerTLS == "implicit":
                        sock = self.clientContext().wrap_socket(raw, server_hostname="localhost")
                    recvUntil(sock, b"\r\n")
                    sock.sendall(b"a LOGIN bob %s\r\n" % users["bob"].encode())
                    reply = recvUntil(sock, b"a OK")
                    sock.sendall(b"z LOGOUT\r\n")
                    recvUntil(sock, b"z OK")
                    return reply

            self.assertIn(b"a OK", await self.inThread(run))
            logs = "".join(store.log() for store in self.stores.stores)
            logins = [line for line in logs.splitlines() if "user=<bob>" in line and "Login:" in line]
            self.assertTrue(any("rip=192.0.2.77" in line for line in logins), logins[-3:])

    # TLS.

    async def test_startTLS(self):
        """
        tls_required on a STARTTLS listener: LOGINDISABLED and a refused
        LOGIN in plaintext; after STARTTLS (imaplib asks CAPABILITY again)
        the login works.
        """
        port = self.startProxy(listenerTLS="starttls")

        def run():
            client = self.imap(port)
            before = client.capabilities
            try:
                client.login("alice", self.stores.users["alice"])
                refused = None
            except imaplib.IMAP4.error as e:
                refused = str(e)
            client.starttls(self.clientContext())
            after = client.capabilities
            typ, _ = client.login("alice", self.stores.users["alice"])
            store = self.storeServing(client)
            client.logout()
            return before, refused, after, typ, store

        with capturedLogs() as events:
            before, refused, after, typ, store = await self.inThread(run)
            await self.sessionsOver()
        self.assertIn("LOGINDISABLED", before)
        self.assertIn("STARTTLS", before)
        self.assertNotIn("AUTH=PLAIN", before)
        self.assertIn("PRIVACYREQUIRED", refused)
        self.assertNotIn("STARTTLS", after)
        self.assertIn("AUTH=PLAIN", after)
        self.assertEqual(typ, "OK")
        lines = [formatEvent(e) for e in events if e.get("log_format") == SESSION_LINE]
        self.assertTrue(any("tls=starttls/TLSv1." in line for line in lines), lines)

    async def test_injectionAfterSTARTTLS(self):
        """
        A LOGIN pipelined after STARTTLS in plaintext is discarded and the
        connection closed without going to TLS.
        """
        port = self.startProxy(listenerTLS="starttls")

        def run():
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
                recvUntil(sock, b"\r\n")
                sock.sendall(b"a STARTTLS\r\nb LOGIN alice %s\r\n" % self.stores.users["alice"].encode())
                return recvUntil(sock, b"never")

        self.assertEqual(await self.inThread(run), b"")
        self.assertEqual(self.factory.listener.sessions, set())

    async def test_implicitTLS(self):
        port = self.startProxy(listenerTLS="implicit")

        def run():
            client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=self.clientContext(), timeout=TIMEOUT)
            typ, _ = client.login("carol", self.stores.users["carol"])
            store = self.storeServing(client)
            client.logout()
            return typ, store

        typ, store = await self.inThread(run)
        self.assertEqual(typ, "OK")
        self.assertIn(store, ("a", "b"))

    async def test_serverTLS(self):
        """
        Implicit TLS and STARTTLS toward the stores, verified against
        their CA: the session log says which.
        """
        for poolTLS in ("implicit", "starttls"):
            port = self.startProxy(poolTLS=poolTLS)

            def run():
                client = self.imap(port)
                typ, _ = client.login("dave", self.stores.users["dave"])
                self.storeServing(client)
                client.logout()
                return typ

            with capturedLogs() as events:
                self.assertEqual(await self.inThread(run), "OK")
                await self.sessionsOver()
                lines = [formatEvent(e) for e in events if e.get("log_format") == SESSION_LINE]
            self.assertTrue(any(f"server_tls={poolTLS}/TLSv1." in line for line in lines), lines)

    # curl.

    async def test_curl(self):
        curl = requireExecutable("curl")
        plainPort = self.startProxy()
        tlsPort = self.startProxy(listenerTLS="starttls")
        users = self.stores.users

        def run(*args):
            return subprocess.run(
                [curl, "-sS", "--max-time", str(TIMEOUT), *args],
                capture_output=True,
                timeout=TIMEOUT + 5,
            )

        plain = await self.inThread(
            run, f"imap://127.0.0.1:{plainPort}/INBOX;UID=1", "-u", f"alice:{users['alice']}"
        )
        self.assertEqual(plain.returncode, 0, plain.stderr)
        self.assertIn(b"message 1 for alice", plain.stdout)
        secured = await self.inThread(
            run,
            f"imap://127.0.0.1:{tlsPort}/INBOX;UID=2",
            "--ssl-reqd",
            "--cacert",
            str(self.stores.ca.cert),
            "-u",
            f"bob:{users['bob']}",
        )
        self.assertEqual(secured.returncode, 0, secured.stderr)
        self.assertIn(b"message 2 for bob", secured.stdout)
        wrong = await self.inThread(run, f"imap://127.0.0.1:{plainPort}/INBOX;UID=1", "-u", "alice:wrong")
        self.assertNotEqual(wrong.returncode, 0)


def test_twistdIMAP(dovecot, processes, tmp_path):  # noqa: F811 (the fixture)
    """
    The real daemon serves an IMAP listener with STARTTLS in front of the
    stores over implicit TLS: a client logs in after STARTTLS and reads
    its mailbox, and the daemon logs the session.
    """
    port = freePort()
    servers = ", ".join(
        f'{{ name = "{store.name}", address = "127.0.0.1:{store.ports["imaps"]}" }}' for store in dovecot.stores
    )
    config = f"""
[listeners.imap]
bind = "tcp:{port}:interface=127.0.0.1"
mode = "imap"
pool = "stores"

[listeners.imap.tls]
certificates = [{{ cert = "{dovecot.certificate.chain}", key = "{dovecot.certificate.key}" }}]
starttls = true

[pools.stores]
selector = {{ name = "hash", key = "user" }}
client_address = "id"
servers = [{servers}]

[pools.stores.tls]
ca = "{dovecot.ca.cert}"
"""
    process = startLbproxy(processes, tmp_path, config, port)
    client = imaplib.IMAP4("127.0.0.1", port, timeout=TIMEOUT)
    assert "LOGINDISABLED" in client.capabilities
    client.starttls(ssl.create_default_context(cafile=str(dovecot.ca.cert)))
    typ, _ = client.login("alice", dovecot.users["alice"])
    assert typ == "OK"
    client.select("INBOX")
    typ, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert "message 1 for alice" in data[0][1].decode()
    client.logout()
    waitUntil(lambda: "user=alice" in process.stdout, "the session log line")
    line = next(line for line in process.stdout.splitlines() if "user=alice" in line)
    assert "tls=starttls/TLSv1." in line and "server_tls=implicit/TLSv1." in line, line
    assert dovecot.users["alice"] not in process.stdout
