"""
What TLS termination changes in the HTTP front, in memory: the
client-subject field, X-Forwarded-Proto, Secure persistence cookies, and
the listener that redirects to https.
"""

from __future__ import annotations

import ipaddress

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from certs import CertificateAuthority
from lbproxy.config import PoolConfig
from lbproxy.http.config import HTTPListenerConfig
from lbproxy.config.tls import CertificateConfig, ListenerTLSConfig
from lbproxy.http.factory import HTTPProxyFactory
from lbproxy.http.interfaces import IHTTPMessageReceiver
from lbproxy.http.parser import RequestParser
from lbproxy.http.redirect import RedirectFactory, RedirectProtocol, redirectHost, redirectTarget
from lbproxy.http.rewrite import RequestRewriter
from lbproxy.core.pool import Pool, Server
from lbproxy.selectors.roundrobin import SmoothWeightedRoundRobin
from tlsmemory import clientContext, handshake, listenerTLS

CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)
LOCAL = IPv4Address("TCP", "198.51.100.1", 8443)

TLS = ListenerTLSConfig(certificates=(CertificateConfig(cert="a.pem", key="a.key"),), alpn=("http/1.1",))


def parse(data: bytes):
    heads = []

    class Receiver:
        def headersComplete(self, head):
            heads.append(head)

        def bodyData(self, data):
            pass

        def messageComplete(self):
            pass

    RequestParser(Receiver()).dataReceived(data)
    return heads[0]


def fields(data: bytes) -> list[tuple[bytes, bytes]]:
    lines = data.split(b"\r\n")[1:-2]
    return [tuple(line.split(b": ", 1)) for line in lines]


def listener(**kwargs) -> HTTPListenerConfig:
    kwargs.setdefault("name", "web")
    kwargs.setdefault("bind", "tcp:8443")
    kwargs.setdefault("pool", "web")
    kwargs.setdefault("mode", "http")
    return HTTPListenerConfig(**kwargs)


class HandshakeTransport:
    """
    A transport whose C{getHandle} is the server side of a TLS connection,
    as a L{TLSMemoryBIOProtocol}'s is.
    """

    def __init__(self, connection) -> None:
        self.connection = connection

    def getHandle(self):
        return self.connection


@pytest.fixture(scope="module")
def verified(tmp_path_factory):
    """
    A server-side TLS connection that verified the client certificate of
    C{CN=alice,O=lbproxy tests}.
    """
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory)
    clients = CertificateAuthority(directory / "clients", name="client CA")
    site = ca.issue("www.example.test")
    alice = clients.issue(client=True, commonName="alice")
    from lbproxy.tls.server import ServerTLS

    server = ServerTLS("web", listenerTLS(site, clientCA=str(clients.cert), clientVerify="required"), "t.toml")
    server.load()
    result = handshake(server, clientContext(ca.cert, cert=alice.chain, key=alice.key))
    assert result.ok, result.error
    return result.server


class TestClientSubject:
    SPOOFED = b"GET / HTTP/1.1\r\nHost: a\r\nX-Client-Subject: CN=admin\r\nx-client-subject: CN=root\r\n\r\n"

    def test_removedOnPlainListeners(self):
        rewriter = RequestRewriter(listener(bind="tcp:8080"))
        data, _, _ = rewriter.rewrite(parse(self.SPOOFED), rewriter.peer(CLIENT, LOCAL, StringTransport()))
        assert b"client-subject" not in data.lower()

    def test_removedWithoutClientCertificate(self):
        rewriter = RequestRewriter(listener(tls=TLS))
        data, _, _ = rewriter.rewrite(parse(self.SPOOFED), rewriter.peer(CLIENT, LOCAL, None))
        assert b"client-subject" not in data.lower()

    def test_setFromTheVerifiedCertificate(self, verified):
        rewriter = RequestRewriter(listener(tls=TLS))
        peer = rewriter.peer(CLIENT, LOCAL, HandshakeTransport(verified))
        for _ in range(2):
            data, _, _ = rewriter.rewrite(parse(self.SPOOFED), peer)
            subjects = [v for n, v in fields(data) if n.lower() == b"x-client-subject"]
            assert subjects == [b"CN=alice,O=lbproxy tests"]

    def test_configuredName(self, verified):
        tls = ListenerTLSConfig(certificates=TLS.certificates, clientSubjectHeader="X-SSL-Subject")
        rewriter = RequestRewriter(listener(tls=tls))
        head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-SSL-Subject: CN=admin\r\nX-Client-Subject: kept\r\n\r\n")
        data, _, _ = rewriter.rewrite(head, rewriter.peer(CLIENT, LOCAL, HandshakeTransport(verified)))
        assert (b"X-SSL-Subject", b"CN=alice,O=lbproxy tests") in fields(data)
        assert (b"X-Client-Subject", b"kept") in fields(data)
        assert b"CN=admin" not in data

    def test_namedByConnection(self, verified):
        rewriter = RequestRewriter(listener(tls=TLS))
        head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Client-Subject\r\nX-Client-Subject: x\r\n\r\n")
        data, _, _ = rewriter.rewrite(head, rewriter.peer(CLIENT, LOCAL, HandshakeTransport(verified)))
        assert [v for n, v in fields(data) if n == b"X-Client-Subject"] == [b"CN=alice,O=lbproxy tests"]

    @pytest.mark.parametrize("variant", ["trusted", "forwarded", "websocket"])
    def test_slowPath(self, verified, variant):
        kwargs = {"tls": TLS}
        request = self.SPOOFED
        if variant == "trusted":
            kwargs["trustedProxies"] = (ipaddress.ip_network("192.0.2.0/24"),)
        elif variant == "forwarded":
            kwargs["forwarded"] = True
        else:
            request = request.replace(b"\r\n\r\n", b"\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        rewriter = RequestRewriter(listener(**kwargs))
        data, _, _ = rewriter.rewrite(parse(request), rewriter.peer(CLIENT, LOCAL, HandshakeTransport(verified)))
        subjects = [v for n, v in fields(data) if n.lower() == b"x-client-subject"]
        assert subjects == [b"CN=alice,O=lbproxy tests"]
        if variant == "forwarded":
            assert b"proto=https" in dict(fields(data))[b"Forwarded"]


class TestScheme:
    def test_tlsListenerIsHttps(self):
        rewriter = RequestRewriter(listener(tls=TLS))
        assert rewriter.proto == "https"
        data, _, _ = rewriter.rewrite(parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), rewriter.peer(CLIENT, LOCAL))
        assert (b"X-Forwarded-Proto", b"https") in fields(data)

    def test_starttlsListenerIsNot(self):
        tls = ListenerTLSConfig(certificates=TLS.certificates, starttls=True)
        assert RequestRewriter(listener(tls=tls)).proto == "http"

    def test_plainListener(self):
        assert RequestRewriter(listener(bind="tcp:8080")).proto == "http"

    def test_secureCookies(self):
        pool = Pool("web", [Server("a", "tcp:127.0.0.1:1")], SmoothWeightedRoundRobin(), PoolConfig(name="web", servers=()))
        assert HTTPProxyFactory(listener(tls=TLS), {"web": pool}, Clock()).secure
        assert not HTTPProxyFactory(listener(bind="tcp:8080"), {"web": pool}, Clock()).secure


class TestRedirectUnits:
    @pytest.mark.parametrize(
        "authority, host",
        [
            (b"www.example.com", b"www.example.com"),
            (b"WWW.Example.com:8080", b"www.example.com"),
            (b"www.example.com.", b"www.example.com."),
            (b"192.0.2.1:80", b"192.0.2.1"),
            (b"[2001:db8::1]:8080", b"[2001:db8::1]"),
            (b"localhost", b"localhost"),
        ],
    )
    def test_hosts(self, authority, host):
        assert redirectHost(authority) == host

    @pytest.mark.parametrize(
        "authority",
        [None, b"", b"a b", b"evil.com/x", b"a@b.com", b"[zz::1]", b"a..b", b"x:y", b"-x.com", b"a%2fb", b"[::1"],
    )
    def test_unusableHosts(self, authority):
        assert redirectHost(authority) is None

    def test_target(self):
        head = parse(b"GET /a/b?c=d&e HTTP/1.1\r\nHost: www.example.com:8080\r\n\r\n")
        assert redirectTarget(head, 443) == b"https://www.example.com/a/b?c=d&e"
        assert redirectTarget(head, 8443) == b"https://www.example.com:8443/a/b?c=d&e"

    def test_absoluteForm(self):
        head = parse(b"GET http://www.example.com/x?y HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        assert redirectTarget(head, 443) == b"https://www.example.com/x?y"

    def test_asterisk(self):
        head = parse(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
        assert redirectTarget(head, 443) == b"https://h/"


class TestRedirectProtocol:
    def connect(self, port=443, **kwargs):
        clock = Clock()
        records = []
        factory = RedirectFactory(listener(pool="", bind="tcp:8080", redirectHttps=port, **kwargs), clock)

        class Log:
            def log(self, record):
                records.append(record)

            def close(self):
                pass

        factory.accessLog = Log()
        protocol = factory.buildProtocol(CLIENT)
        transport = StringTransport(peerAddress=CLIENT, hostAddress=LOCAL)
        protocol.makeConnection(transport)
        return protocol, transport, clock, records

    def test_interface(self):
        protocol, _, _, _ = self.connect()
        assert verifyObject(IHTTPMessageReceiver, protocol)
        assert isinstance(protocol, RedirectProtocol)

    def test_get(self):
        protocol, transport, _, records = self.connect()
        protocol.dataReceived(b"GET /p?q=1 HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        assert transport.value() == (
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://www.example.com/p?q=1\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        assert not transport.disconnecting
        assert [(r.status, r.termination) for r in records] == [(301, "LR")]

    def test_logRequestsErrors(self):
        """
        With log_requests = "errors" redirects are not logged; a request
        refused with 400 (no Host) is.
        """
        protocol, transport, _, records = self.connect(logRequests="errors")
        protocol.dataReceived(b"GET /p HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        assert transport.value().startswith(b"HTTP/1.1 301")
        assert records == []
        protocol.dataReceived(b"GET /p HTTP/1.1\r\n\r\n")
        assert [r.status for r in records] == [400]

    def test_head(self):
        protocol, transport, _, _ = self.connect(8443)
        protocol.dataReceived(b"HEAD / HTTP/1.1\r\nHost: h:8080\r\n\r\n")
        assert transport.value().startswith(b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://h:8443/\r\n")

    @pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"])
    def test_otherMethods308(self, method):
        protocol, transport, _, _ = self.connect()
        protocol.dataReceived(method + b" /form HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
        assert transport.value().startswith(b"HTTP/1.1 308 Permanent Redirect\r\nLocation: https://h/form\r\n")

    def test_pipelinedWithBodies(self):
        protocol, transport, _, records = self.connect()
        protocol.dataReceived(
            b"POST /1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
            b"GET /3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
            b"GET /4 HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        value = transport.value()
        assert value.count(b"HTTP/1.1 ") == 3
        assert [line for line in value.split(b"\r\n") if line.startswith(b"Location")] == [
            b"Location: https://h/1",
            b"Location: https://h/2",
            b"Location: https://h/3",
        ]
        assert value.endswith(b"Connection: close\r\n\r\n")
        assert transport.disconnecting
        assert [r.bytesIn for r in records] == [3, 0, 0]

    def test_http10WithoutHost(self):
        protocol, transport, _, records = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        assert transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert transport.disconnecting
        assert records[0].status == 400

    @pytest.mark.parametrize("host", [b"", b"a@b", b"x:y", b"a..b"])
    def test_badHost(self, host):
        protocol, transport, _, _ = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n")

    def test_malformedRequest(self):
        protocol, transport, _, _ = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost h\r\n\r\n")
        assert transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert transport.disconnecting

    def test_upgradeEndsTheConnection(self):
        protocol, transport, _, _ = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        assert transport.value().startswith(b"HTTP/1.1 301 ")
        assert b"Connection: close\r\n" in transport.value()
        assert transport.disconnecting

    def test_requestTimeout(self):
        protocol, transport, clock, records = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        clock.advance(10)
        assert transport.value().startswith(b"HTTP/1.1 408 ")
        assert records[0].termination == "cR"

    def test_keepaliveTimeout(self):
        protocol, transport, clock, _ = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        clock.advance(59)
        assert not transport.disconnecting
        clock.advance(1)
        assert transport.disconnecting

    def test_maxconn(self):
        protocol, transport, clock, _ = self.connect(maxconn=1)
        second = protocol.factory.buildProtocol(CLIENT)
        other = StringTransport()
        second.makeConnection(other)
        assert other.value().startswith(b"HTTP/1.1 503 ")
        assert protocol.factory.listener.counters.refused == 1

    def test_bodyTooLarge(self):
        from lbproxy.http.config import HTTPLimits

        protocol, transport, _, _ = self.connect(limits=HTTPLimits(bodySize=4))
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n")
        assert transport.value().startswith(b"HTTP/1.1 413 ")

    def test_stoppingCloses(self):
        protocol, transport, _, _ = self.connect()
        protocol.factory.stopping = True
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert b"Connection: close" in transport.value()
        assert transport.disconnecting
