"""
The Dovecot stores of tests/dovecot.py, reached directly (no lbproxy):
what the IMAP and POP3 tests rely on.
"""

from __future__ import annotations

import imaplib
import poplib
import socket
import ssl

import pytest

from dovecot import dovecot, dovecotStores  # noqa: F401 (fixtures)


def clientContext(stores) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(stores.ca.cert))
    context.check_hostname = True
    return context


def test_imapLoginShowsOwnStore(dovecot):
    """
    Each store greets with its name and its messages carry it; the large
    message comes back byte for byte.
    """
    for store in dovecot.stores:
        client = imaplib.IMAP4("127.0.0.1", store.ports["imap"], timeout=10)
        try:
            assert store.greeting.encode() in client.welcome
            client.login("Alice@Example.test", dovecot.users["alice"])
            typ, data = client.select("INBOX")
            assert typ == "OK" and int(data[0]) == dovecot.messageCount
            typ, data = client.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])")
            assert dovecot.storeOf(data[0][1].decode()) is store
            typ, data = client.fetch(str(dovecot.messageCount), "(BODY.PEEK[])")
            assert data[0][1] == dovecot.largeMessage
        finally:
            client.logout()


def test_pop3UserPassAndImplicitTLS(dovecot):
    """
    POP3 USER/PASS in plaintext, and POP3S verified against the test CA.
    """
    store = dovecot.stores[1]
    client = poplib.POP3("127.0.0.1", store.ports["pop3"])
    client.user("bob")
    client.pass_(dovecot.users["bob"])
    _, lines, _ = client.retr(1)
    assert any(line.startswith(b"Subject: " + store.subject.encode()) for line in lines)
    client.quit()
    secure = poplib.POP3_SSL("localhost", store.ports["pop3s"], context=clientContext(dovecot))
    secure.user("bob")
    secure.pass_(dovecot.users["bob"])
    assert secure.stat()[0] == dovecot.messageCount
    secure.quit()


def test_imapsAndWrongPassword(dovecot):
    """
    IMAPS with the test CA; a wrong password is refused (at once: no
    failure delay).
    """
    store = dovecot.stores[0]
    client = imaplib.IMAP4_SSL("localhost", store.ports["imaps"], ssl_context=clientContext(dovecot))
    with pytest.raises(imaplib.IMAP4.error):
        client.login("carol", "wrong")
    client.login("carol", dovecot.users["carol"])
    client.logout()


def test_xclientFromTrustedNetwork(dovecot):
    """
    Loopback is trusted: POP3 XCLIENT sets the address the store logs.
    """
    store = dovecot.stores[0]
    client = poplib.POP3("127.0.0.1", store.ports["pop3"], timeout=10)
    assert client._shortcmd("XCLIENT ADDR=192.0.2.7 PORT=4711").startswith(b"+OK")
    client.user("dave")
    client.pass_(dovecot.users["dave"])
    client.quit()
    assert "rip=192.0.2.7" in store.log()


def test_proxyProtocolListener(dovecot):
    """
    The haproxy listener takes the client address from a PROXY header.
    """
    store = dovecot.stores[1]
    with socket.create_connection(("127.0.0.1", store.ports["imapProxy"]), timeout=10) as s:
        s.sendall(b"PROXY TCP4 198.51.100.9 127.0.0.1 5555 143\r\n")
        f = s.makefile("rb")
        assert store.greeting.encode() in f.readline()
        s.sendall(b"a LOGIN erin " + dovecot.users["erin"].encode() + b"\r\nb LOGOUT\r\n")
        replies = f.read()
    assert replies.startswith(b"a OK ") and b"\r\nb OK " in replies
    assert "rip=198.51.100.9" in store.log()


def test_stopAndStart(dovecot):
    """
    A stopped store refuses connections; the fixture starts it again.
    """
    store = dovecot.stores[0]
    store.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", store.ports["pop3"]), timeout=2).close()
    store.start()
    poplib.POP3("127.0.0.1", store.ports["pop3"]).quit()
