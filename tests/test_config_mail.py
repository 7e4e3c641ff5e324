"""
Tests for the settings of IMAP and POP3 listeners and mail pools
(lbproxy.mail.config and its use in lbproxy.config).
"""

from __future__ import annotations

import pytest

from lbproxy.config import loadBytes
from lbproxy.mail.config import AddressFailureLimit, MailLimits, normaliseUser
from lbproxy.errors import ConfigError

TLS = '[listeners.m.tls]\ncertificates = [{ cert = "c.pem" }]\n'
BASE = """
[listeners.m]
bind = "tcp:143"
mode = "MODE"
pool = "stores"
EXTRA

[pools.stores]
servers = [{ name = "a", address = "127.0.0.1:1143" }]
POOL

[pools.vip]
servers = [{ name = "v", address = "127.0.0.1:2143" }]
"""


def config(extra: str = "", pool: str = "", mode: str = "imap"):
    text = BASE.replace("MODE", mode).replace("EXTRA", extra).replace("POOL", pool)
    return loadBytes(text.encode(), "mail.toml")


def error(extra: str = "", pool: str = "", mode: str = "imap") -> str:
    with pytest.raises(ConfigError) as caught:
        config(extra, pool, mode)
    return str(caught.value)


@pytest.mark.parametrize("mode", ["imap", "pop3"])
def test_defaults(mode):
    listener = config(mode=mode).listeners["m"]
    mail = listener
    assert listener.idleTimeout == 1800.0
    assert mail.tlsRequired is False
    assert mail.userPools == ()
    assert mail.userDomain is None
    assert mail.limits == MailLimits(line=8192, literal=8192, user=256)
    assert (mail.loginTimeout, mail.maxAuthFailures, mail.authFailureDelay) == (60.0, 3, 2.0)
    assert mail.addressLimit == AddressFailureLimit(maxFailures=20, window=300.0, ipv6Prefix=128, tableSize=16384)
    assert listener.tls is None


def test_everyKey():
    listener = config(
        """
tls_required = false
user_domain = "Example.COM"
[listeners.m.user_pools]
"Boss" = "vip"
[listeners.m.limits]
line = 1024
literal = 300
user = 100
[listeners.m.auth]
max_failures = 5
failure_delay = "250ms"
address_max_failures = 7
address_window = "1h"
address_ipv6_prefix = 64
address_table_size = 1000
[listeners.m.timeouts]
login = "30s"
idle = "31m"
"""
        + TLS
        + "starttls = true\n",
        '\nclient_address = "id"\n[pools.stores.tls]\nstarttls = true\n',
    ).listeners["m"]
    mail = listener
    assert mail.tlsRequired is False
    assert mail.userDomain == "example.com"
    assert mail.userPools == (("boss@example.com", "vip"),)
    assert mail.poolFor("boss@example.com") == "vip"
    assert mail.poolFor("alice@example.com") == "stores"
    assert mail.limits == MailLimits(line=1024, literal=300, user=100)
    assert (mail.maxAuthFailures, mail.authFailureDelay, mail.loginTimeout) == (5, 0.25, 30.0)
    assert mail.addressLimit == AddressFailureLimit(maxFailures=7, window=3600.0, ipv6Prefix=64, tableSize=1000)
    assert listener.idleTimeout == 31 * 60
    assert listener.tls.starttls is True
    assert "vip" in listener.poolsUsed()


def test_tlsRequiredDefaults():
    assert config(TLS + "starttls = true\n").listeners["m"].tlsRequired is True
    assert config(TLS).listeners["m"].tlsRequired is False
    assert "expected false without a [tls] table" in error("tls_required = true")
    assert "tls_required: expected true or false" in error('tls_required = "yes"')


def test_normaliseUser():
    assert normaliseUser(" Alice ", "example.com") == "alice@example.com"
    assert normaliseUser("Bob@Other.org", "example.com") == "bob@other.org"
    assert normaliseUser("Carol", None) == "carol"


def test_userPoolsErrors():
    assert "user_pools.bob: expected the name of a pool" in error('[listeners.m.user_pools]\nbob = "nowhere"')
    assert "expected each user once" in error('user_domain = "x.org"\n[listeners.m.user_pools]\nbob = "vip"\n"BOB@x.org" = "vip"')
    assert "user_domain: expected a domain" in error('user_domain = "not a domain"')


@pytest.mark.parametrize(
    "extra, key",
    [
        ("[listeners.m.limits]\nline = 100", "limits.line"),
        ("[listeners.m.limits]\nliteral = 100000", "limits.literal"),
        ("[listeners.m.limits]\nuser = 16", "limits.user"),
        ("[listeners.m.limits]\nrequest_line = 100", "limits.request_line"),
        ("[listeners.m.auth]\nmax_failures = 0", "auth.max_failures"),
        ("[listeners.m.auth]\nfailure_delay = -1", "auth.failure_delay"),
        ("[listeners.m.auth]\nbogus = 1", "auth.bogus"),
        ("[listeners.m.auth]\naddress_max_failures = -1", "auth.address_max_failures"),
        ("[listeners.m.auth]\naddress_window = 0", "auth.address_window"),
        ("[listeners.m.auth]\naddress_ipv6_prefix = 129", "auth.address_ipv6_prefix"),
        ("[listeners.m.auth]\naddress_table_size = 10", "auth.address_table_size"),
        ("[listeners.m.timeouts]\nlogin = 0", "timeouts.login"),
        ("[listeners.m.timeouts]\nrequest = 5", "timeouts.request"),
    ],
)
def test_rangesAndUnknownKeys(extra, key):
    assert f"listeners.m.{key}" in error(extra)


def test_addressLimitOff():
    mail = config("[listeners.m.auth]\naddress_max_failures = 0").listeners["m"]
    assert mail.addressLimit.maxFailures == 0
    assert "auth.address_window: expected only with address_max_failures above 0" in error(
        '[listeners.m.auth]\naddress_max_failures = 0\naddress_window = "1m"'
    )


def test_mailKeysOnlyOnMailListeners():
    assert 'expected only with mode = "imap" or "pop3"' in error('user_domain = "x.org"', mode="tcp")
    assert "expected only with mode" in error("[listeners.m.timeouts]\nlogin = 5", mode="http")


def test_clientAddressByMode():
    assert config(pool='client_address = "id"').pools["stores"].clientAddress == "id"
    assert config(pool='client_address = "xclient"', mode="pop3").pools["stores"].clientAddress == "xclient"
    assert "which a imap listener cannot send" in error(pool='client_address = "xclient"')
    assert "which a pop3 listener cannot send" in error(pool='client_address = "id"', mode="pop3")
    assert "tells its servers the client's address in a command (client_address), which a tcp listener does not do" in error(pool='client_address = "id"', mode="tcp")


def test_startTLSOnlyForMail():
    assert "starttls: expected only with mode" in error(TLS + "starttls = true\n", mode="http")
    assert "upgrades server connections with STARTTLS" in error(
        pool="[pools.stores.tls]\nstarttls = true", mode="tcp"
    )
    assert config(pool="[pools.stores.tls]\nstarttls = true").pools["stores"].tls.starttls


def test_userKey():
    assert config(pool='selector = { name = "hash", key = "user" }').pools["stores"]
    assert "cannot provide" in error(pool='selector = { name = "hash", key = "user" }', mode="tcp")


@pytest.mark.parametrize("mode", ["imap", "pop3"])
def test_acceptProxy(mode):
    """
    A mail listener behind a proxy sending PROXY headers (read by
    lbproxy.core.acceptproxy before the greeting).
    """
    listener = config('accept_proxy = ["10.0.0.0/8"]', mode=mode).listeners["m"]
    assert listener.trustsProxyFrom("10.1.2.3")
    assert not listener.trustsProxyFrom("192.0.2.1")


TWO_STORES = """
[listeners.m]
bind = "tcp:143"
mode = "MODE"
pool = "stores"

[pools.stores]
SELECTOR
servers = [{ name = "a", address = "127.0.0.1:1143" }, { name = "b", address = "127.0.0.1:2143"BACKUP }]
"""


def twoStores(selector: str = "", backup: bool = False, mode: str = "imap"):
    text = TWO_STORES.replace("MODE", mode).replace("SELECTOR", selector)
    text = text.replace("BACKUP", ", backup = true" if backup else "")
    return loadBytes(text.encode(), "mail.toml")


def twoStoresError(selector: str = "", backup: bool = False, mode: str = "imap") -> str:
    with pytest.raises(ConfigError) as caught:
        twoStores(selector, backup, mode)
    return str(caught.value)


@pytest.mark.parametrize("mode", ["imap", "pop3"])
def test_distinctStoresNeedUserPlacement(mode):
    """
    The servers of a mail pool hold distinct mailboxes unless it says
    stores = "replicas": with several of them, its selector must place
    each user on one (hash or maglev on the user), and no server may be a
    backup.
    """
    for selector in ('selector = { name = "hash", key = "user" }', 'selector = { name = "maglev", key = "user" }'):
        assert twoStores(selector, mode=mode).pools["stores"].stores is None
    expected = (
        "mail.toml: listeners.m.pool: pool 'stores' has 2 servers holding distinct mailboxes, but its "
        "selector (SELECTOR) does not place each user on one of them; expected selector = "
        '{ name = "hash" or "maglev", key = "user" }, or stores = "replicas" when every server holds '
        "every mailbox"
    )
    assert twoStoresError(mode=mode) == expected.replace("SELECTOR", "roundrobin")
    for name in ("leastconn", "random2", "first"):
        assert twoStoresError(f'selector = "{name}"', mode=mode) == expected.replace("SELECTOR", name)
    assert twoStoresError('selector = { name = "hash", key = "src" }', mode=mode) == expected.replace(
        "SELECTOR", "hash on key 'src'"
    )
    assert "has backup server 'b', but its servers hold distinct mailboxes" in twoStoresError(
        'selector = { name = "hash", key = "user" }', backup=True, mode=mode
    )
    replicas = twoStores('stores = "replicas"', backup=True, mode=mode).pools["stores"]
    assert replicas.stores == "replicas"
    assert twoStores('stores = "distinct"\nselector = { name = "maglev", key = "user" }').pools["stores"].stores == (
        "distinct"
    )


def test_storesKey():
    assert "pools.stores.stores: expected one of distinct, replicas, got 'shared'" in twoStoresError(
        'stores = "shared"'
    )
    assert "says what its mail stores hold (stores), which a tcp listener does not do" in twoStoresError(
        'stores = "replicas"', mode="tcp"
    )
    assert config(pool='selector = "leastconn"').pools["stores"]
