"""
Validation of the TLS termination settings of listeners
(C{[listeners.NAME.tls]}) and of C{redirect_https}. Every error is one
exact line naming the key.
"""

from __future__ import annotations

import pytest

from lbproxy.config import loadBytes
from lbproxy.config.tls import DEFAULT_CIPHERS, CertificateConfig, ListenerTLSConfig
from lbproxy.errors import ConfigError

BASE = """\
[listeners.web]
bind = "tcp:8443:interface=127.0.0.1"
pool = "web"
mode = "MODE"

[pools.web]
servers = [{ name = "a", address = "127.0.0.1:8081" }]
"""

TLS = """
[listeners.web.tls]
certificates = [{ cert = "site.pem", key = "site.key" }]
"""


def load(text: str):
    return loadBytes(text.encode("utf-8"), "lb.toml")


def config(tls: str = "", mode: str = "http", listener: str = "") -> str:
    text = BASE.replace("MODE", mode).replace('mode = "' + mode + '"\n', 'mode = "' + mode + '"\n' + listener, 1)
    return text + TLS + tls


def loadError(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("lb.toml: ")
    return message[len("lb.toml: "):]


def tlsOf(text: str) -> ListenerTLSConfig:
    return load(text).listeners["web"].tls


class TestDefaults:
    def test_http(self):
        assert tlsOf(config()) == ListenerTLSConfig(
            certificates=(CertificateConfig(cert="site.pem", key="site.key"),),
            minVersion="1.2",
            ciphers=DEFAULT_CIPHERS,
            alpn=("http/1.1",),
            clientCA=None,
            clientVerify="none",
            clientSubjectHeader="X-Client-Subject",
            starttls=False,
        )

    def test_tcpOffersNoALPN(self):
        assert tlsOf(config(mode="tcp")).alpn == ()

    def test_keyDefaultsToTheCertificateFile(self):
        text = config().replace(', key = "site.key"', "")
        assert tlsOf(text).certificates[0].key == "site.pem"

    def test_withoutTLS(self):
        assert load(BASE.replace("MODE", "http")).listeners["web"].tls is None


class TestCertificates:
    def test_several(self):
        text = config().replace(
            '[{ cert = "site.pem", key = "site.key" }]',
            '[{ cert = "a.pem" }, { cert = "b.pem", key = "b.key", names = ["WWW.example.com", "*.api.example.com"] }]',
        )
        assert tlsOf(text).certificates == (
            CertificateConfig(cert="a.pem", key="a.pem"),
            CertificateConfig(cert="b.pem", key="b.key", names=("www.example.com", "*.api.example.com")),
        )

    def test_required(self):
        text = config().replace('certificates = [{ cert = "site.pem", key = "site.key" }]\n', "alpn = []\n")
        assert "listeners.web.tls.certificates" in loadError(text)

    def test_empty(self):
        text = config().replace('[{ cert = "site.pem", key = "site.key" }]', "[]")
        assert loadError(text) == "listeners.web.tls.certificates: expected at least one certificate"

    def test_certRequired(self):
        text = config().replace('{ cert = "site.pem", key = "site.key" }', '{ key = "site.key" }')
        assert "listeners.web.tls.certificates[0].cert" in loadError(text)

    @pytest.mark.parametrize("name", ["a..b", "*", "*.*.example.com", "-x.example.com", 7, "x_y.example.com"])
    def test_badNames(self, name):
        shown = f'"{name}"' if isinstance(name, str) else str(name)
        text = config().replace('key = "site.key" }', f'key = "site.key", names = [{shown}] }}')
        assert loadError(text).startswith("listeners.web.tls.certificates[0].names[0]: expected a host name")

    def test_unknownKey(self):
        text = config().replace('key = "site.key" }', 'key = "site.key", chain = "x" }')
        assert "listeners.web.tls.certificates[0].chain" in loadError(text)

    def test_emptyPath(self):
        text = config().replace('cert = "site.pem"', 'cert = ""')
        assert loadError(text).startswith("listeners.web.tls.certificates[0].cert: expected a file path")


class TestVersionsAndCiphers:
    def test_minVersion13(self):
        assert tlsOf(config('min_version = "1.3"\n')).minVersion == "1.3"

    @pytest.mark.parametrize("value", ['"1.1"', '"1.0"', "1.2", '"tls1.3"'])
    def test_badMinVersion(self, value):
        assert loadError(config(f"min_version = {value}\n")).startswith("listeners.web.tls.min_version: expected")

    def test_ciphers(self):
        assert tlsOf(config('ciphers = "ECDHE-RSA-AES128-GCM-SHA256"\n')).ciphers == "ECDHE-RSA-AES128-GCM-SHA256"

    def test_badCiphers(self):
        assert loadError(config('ciphers = "AES GCM"\n')).startswith("listeners.web.tls.ciphers: expected an OpenSSL cipher list")


class TestALPN:
    def test_http11(self):
        assert tlsOf(config('alpn = ["http/1.1"]\n')).alpn == ("http/1.1",)

    def test_none(self):
        assert tlsOf(config("alpn = []\n")).alpn == ()

    def test_httpRefusesH2WithoutHTTP2(self):
        assert loadError(config('alpn = ["h2", "http/1.1"]\n')) == (
            'listeners.web.tls.alpn: expected no "h2" without [http2] enabled = true (the listener would not speak it)'
        )

    def test_httpRefusesOthers(self):
        assert loadError(config('alpn = ["imap"]\n')) == (
            'listeners.web.tls.alpn[0]: expected only "h2" or "http/1.1" on a mode = "http" listener '
            "(the protocols it speaks), got 'imap'"
        )

    def test_tcpAnyProtocol(self):
        assert tlsOf(config('alpn = ["imap", "x-custom"]\n', mode="tcp")).alpn == ("imap", "x-custom")

    def test_badProtocol(self):
        assert loadError(config('alpn = ["a b"]\n', mode="tcp")).startswith("listeners.web.tls.alpn[0]: expected a protocol name")


class TestClientCertificates:
    @pytest.mark.parametrize("verify", ["optional", "required"])
    def test_verify(self, verify):
        tls = tlsOf(config(f'client_verify = "{verify}"\nclient_ca = "clients.pem"\n'))
        assert (tls.clientVerify, tls.clientCA) == (verify, "clients.pem")

    def test_verifyNeedsCA(self):
        assert loadError(config('client_verify = "required"\n')) == (
            'listeners.web.tls.client_ca: expected a CA file to verify client certificates with client_verify = "required"'
        )

    def test_caNeedsVerify(self):
        assert loadError(config('client_ca = "clients.pem"\n')).startswith("listeners.web.tls.client_verify: expected")

    def test_badVerify(self):
        assert loadError(config('client_verify = "yes"\nclient_ca = "c.pem"\n')).startswith(
            "listeners.web.tls.client_verify: expected"
        )

    def test_subjectHeader(self):
        assert tlsOf(config('client_subject_header = "X-SSL-Subject"\n')).clientSubjectHeader == "X-SSL-Subject"

    def test_badSubjectHeader(self):
        assert loadError(config('client_subject_header = "X SSL"\n')) == (
            "listeners.web.tls.client_subject_header: expected a header name, got 'X SSL'"
        )

    def test_subjectHeaderOnlyHTTP(self):
        assert loadError(config('client_subject_header = "X-S"\n', mode="tcp")) == (
            'listeners.web.tls.client_subject_header: expected only with mode = "http"'
        )


class TestStartTLS:
    def test_notOnHTTP(self):
        assert loadError(config("starttls = true\n")) == (
            'listeners.web.tls.starttls: expected only with mode = "imap" or "pop3"'
        )

    def test_notOnTCP(self):
        assert "starttls" in loadError(config("starttls = true\n", mode="tcp"))


class TestUnknownKeys:
    def test_unknown(self):
        assert "listeners.web.tls.certfile" in loadError(config('certfile = "x"\n'))


REDIRECT = """\
[listeners.plain]
bind = "tcp:8080:interface=127.0.0.1"
mode = "http"
EXTRA
[listeners.web]
bind = "tcp:8443:interface=127.0.0.1"
pool = "web"
mode = "http"

[pools.web]
servers = [{ name = "a", address = "127.0.0.1:8081" }]
"""


def redirect(extra: str) -> str:
    return REDIRECT.replace("EXTRA\n", extra)


class TestRedirectHttps:
    def test_port(self):
        listener = load(redirect("redirect_https = 8443\n")).listeners["plain"]
        assert listener.redirectHttps == 8443
        assert listener.pool == ""
        assert listener.tls is None

    def test_notSet(self):
        assert load(redirect('pool = "web"\n')).listeners["plain"].redirectHttps is None

    @pytest.mark.parametrize("value", ["0", "65536", '"443"', "true"])
    def test_badPort(self, value):
        assert loadError(redirect(f"redirect_https = {value}\n")).startswith("listeners.plain.redirect_https: expected")

    @pytest.mark.parametrize(
        "extra, key",
        [
            ('pool = "web"\n', "pool"),
            ('routes = [{ path_prefix = "/a", pool = "web" }]\n', "routes"),
            ('[listeners.plain.tls]\ncertificates = [{ cert = "a.pem" }]\n', "tls"),
        ],
    )
    def test_nothingToForwardTo(self, extra, key):
        text = redirect("redirect_https = 443\n" + extra)
        if extra.startswith("["):
            text = redirect("redirect_https = 443\n").replace("[listeners.web]", extra + "[listeners.web]")
        assert loadError(text) == (
            f"listeners.plain.{key}: expected no pool, routes or tls with redirect_https (every request is redirected)"
        )

    @pytest.mark.parametrize(
        "extra, key",
        [
            ('trusted_proxies = ["10.0.0.0/8"]\n', "trusted_proxies"),
            ("forwarded = true\n", "forwarded"),
        ],
    )
    def test_noForwardingSettings(self, extra, key):
        assert loadError(redirect("redirect_https = 443\n" + extra)) == (
            f"listeners.plain.{key}: expected no forwarding settings with redirect_https (no request is forwarded)"
        )

    def test_noTunnelTimeout(self):
        text = redirect("redirect_https = 443\n").replace(
            "[listeners.web]", "[listeners.plain.timeouts]\ntunnel = 10\n\n[listeners.web]"
        )
        assert loadError(text) == (
            "listeners.plain.timeouts.tunnel: expected no tunnel timeout with redirect_https (no request is forwarded)"
        )

    def test_acceptProxy(self):
        """
        A redirect listener behind the same PROXY-speaking balancer as the
        TLS listener it redirects to.
        """
        listener = load(redirect('redirect_https = 443\naccept_proxy = ["10.0.0.0/8"]\n')).listeners["plain"]
        assert listener.trustsProxyFrom("10.9.9.9")

    def test_limitsAndTimeoutsAllowed(self):
        text = redirect("redirect_https = 443\naccess_log = \"a.log\"\n").replace(
            "[listeners.web]", "[listeners.plain.timeouts]\nrequest = 5\nkeepalive = 7\n\n[listeners.web]"
        )
        listener = load(text).listeners["plain"]
        assert (listener.requestTimeout, listener.keepaliveTimeout, listener.accessLog) == (5.0, 7.0, "a.log")

    def test_onlyHTTP(self):
        text = redirect('redirect_https = 443\n').replace('mode = "http"\nredirect', "redirect", 1)
        assert "listeners.plain.redirect_https" in loadError(text)


@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_acceptProxyWithTLS(mode):
    """
    A PROXY header before the TLS handshake (lbproxy.core.acceptproxy reads it).
    """
    listener = load(config(mode=mode, listener='accept_proxy = ["127.0.0.1"]\n')).listeners["web"]
    assert listener.trustsProxyFrom("127.0.0.1")
    assert listener.tls is not None
