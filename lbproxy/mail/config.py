"""
The settings of IMAP and POP3 listeners (C{mode = "imap"} / C{"pop3"}).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lbproxy.config import STORES_REPLICAS, ListenerConfig
from lbproxy.config.table import Table, oneOf, show

_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")

#: Built-in selectors that place a user on one server when they hash the
#: user; the others never do.
_USER_HASHING = ("hash", "maglev")
_NOT_PLACING = ("roundrobin", "leastconn", "random2", "first")

#: Default idle timeout of a mail session after login: IMAP IDLE clients
#: re-issue their command every 29 minutes at most.
MAIL_IDLE_TIMEOUT = 1800.0


@dataclass(frozen=True)
class MailLimits:
    #: Longest command line accepted before login, CRLF included.
    line: int = 8192
    #: Longest IMAP literal accepted before login.
    literal: int = 8192
    #: Longest user name (and SASL authorization identity) passed to a
    #: store, in bytes: a full e-mail address fits (RFC 5321 caps a path
    #: at 256 octets), and so does what Dovecot's login processes take.
    user: int = 256


@dataclass(frozen=True)
class AddressFailureLimit:
    """
    Failed logins allowed from one client address across connections
    (see L{lbproxy.mail.throttle}).

    @ivar maxFailures: failed logins within C{window} after which the
        address's logins are refused until the window ends; 0: no limit.
    @ivar window: seconds from an address's first counted failure.
    @ivar ipv6Prefix: IPv6 addresses are counted by this many leading
        bits (128: each address; 64: each /64).
    @ivar tableSize: most addresses counted at once.
    """

    maxFailures: int = 20
    window: float = 300.0
    ipv6Prefix: int = 128
    tableSize: int = 16384


@dataclass(frozen=True)
class MailListenerConfig(ListenerConfig):
    """
    An IMAP or POP3 listener: what it adds to every listener's settings.

    @ivar tlsRequired: refuse LOGIN/USER/PASS/AUTHENTICATE until the
        connection is encrypted (and advertise LOGINDISABLED, hide
        USER/SASL). Defaults to true on a STARTTLS listener; it cannot be
        set without TLS.
    @ivar userPools: normalised user name -> pool name; users not listed
        go to the listener's pool.
    @ivar userDomain: appended as C{@domain} to user names without one
        before they are normalised, so C{alice} and C{alice@example.com}
        are the same user.
    @ivar loginTimeout: time from connecting to a successful login; the
        session is closed when it runs out.
    @ivar maxAuthFailures: failed logins after which the connection is
        closed.
    @ivar authFailureDelay: wait before answering a failed login.
    @ivar addressLimit: failed logins allowed per client address.
    """

    idleTimeout: float = MAIL_IDLE_TIMEOUT
    tlsRequired: bool = False
    userPools: tuple[tuple[str, str], ...] = ()
    userDomain: str | None = None
    limits: MailLimits = MailLimits()
    loginTimeout: float = 60.0
    maxAuthFailures: int = 3
    authFailureDelay: float = 2.0
    addressLimit: AddressFailureLimit = AddressFailureLimit()

    def poolFor(self, user: str) -> str:
        """
        The pool serving normalised user C{user}.
        """
        for name, pool in self.userPools:
            if name == user:
                return pool
        return self.pool

    def poolsUsed(self) -> set[str]:
        used = super().poolsUsed()
        used.update(pool for _, pool in self.userPools)
        return used


def normaliseUser(user: str, domain: str | None) -> str:
    """
    The form of a user name that routing compares and hashes: lower case,
    with C{@domain} when it has no domain of its own.
    """
    user = user.strip().lower()
    if domain and "@" not in user:
        user = f"{user}@{domain}"
    return user


def mailPoolProblem(name: str, pool) -> str | None:
    """
    Why pool C{name} (a L{lbproxy.config.PoolConfig}) cannot serve a mail
    listener, or None. A pool of distinct stores must place each user on
    one server whatever the servers' state (see L{lbproxy.mail.placement}):
    no backup server, and with several servers a selector hashing the
    user (a plugin selector is trusted to). It has no use for a stick
    table: the user's store is its only server.
    """
    if pool.stores == STORES_REPLICAS:
        return None
    replicas = f'stores = "{STORES_REPLICAS}" when every server holds every mailbox'
    if pool.stick is not None:
        return (
            f"pool {name!r} has a stick table, but its servers hold distinct mailboxes: each user "
            f"always goes to the store holding its mailbox; expected no [pools.{name}.stick], or {replicas}"
        )
    for server in pool.servers:
        if server.backup:
            return (
                f"pool {name!r} has backup server {server.name!r}, but its servers hold distinct "
                f"mailboxes (a backup holds none of the others' users); expected no backup server, or {replicas}"
            )
    if len(pool.servers) < 2:
        return None
    key = pool.selectorOptions.get("key", "src")
    if pool.selector in _USER_HASHING and key == "user":
        return None
    if pool.selector in _USER_HASHING or pool.selector in _NOT_PLACING:
        chosen = pool.selector + (f" on key {key!r}" if pool.selector in _USER_HASHING else "")
        return (
            f"pool {name!r} has {len(pool.servers)} servers holding distinct mailboxes, but its selector "
            f"({chosen}) does not place each user on one of them; expected selector = "
            f'{{ name = "hash" or "maglev", key = "user" }}, or {replicas}'
        )
    return None


def parseMailListener(t: Table, timeouts: Table, common: dict, pools: dict) -> MailListenerConfig:
    """
    Validate the mail keys of a listener table; C{common} holds the
    settings every listener has.
    """
    if not common["pool"]:
        t.fail("pool", "required key is missing")
    tlsStartTLS = None if common["tls"] is None else common["tls"].starttls
    domain = t.string("user_domain", default=None)
    if domain is not None:
        if not _DOMAIN.fullmatch(domain.lower()):
            t.fail("user_domain", f'expected a domain such as "example.com", got {domain!r}')
        domain = domain.lower()
    usersTable = t.table("user_pools")
    userPools = []
    for user in usersTable.keys():
        pool = usersTable.string(user, required=True)
        if pool not in pools:
            usersTable.fail(user, f"expected the name of a pool ({oneOf(pools)}), got {pool!r}")
        userPools.append((normaliseUser(user, domain), pool))
    usersTable.done()
    seen = set()
    for user, _ in userPools:
        if user in seen:
            t.fail("user_pools", f"expected each user once, got {user!r} twice (after normalising)")
        seen.add(user)
    required = t.get("tls_required", tlsStartTLS is True)
    if not isinstance(required, bool):
        t.fail("tls_required", f"expected true or false, got {show(required)}")
    if required and tlsStartTLS is None:
        t.fail("tls_required", "expected false without a [tls] table (the listener cannot encrypt)")
    limits = t.table("limits")
    auth = t.table("auth")
    config = MailListenerConfig(
        **common,
        tlsRequired=required,
        userPools=tuple(userPools),
        userDomain=domain,
        limits=MailLimits(
            line=limits.integer("line", 512, 65536, 8192),
            literal=limits.integer("literal", 256, 65536, 8192),
            user=limits.integer("user", 32, 65536, 256),
        ),
        loginTimeout=timeouts.duration("login", 60.0),
        maxAuthFailures=auth.integer("max_failures", 1, 100, 3),
        authFailureDelay=auth.duration("failure_delay", 2.0),
        addressLimit=_parseAddressLimit(auth),
    )
    limits.done()
    auth.done()
    return config


def _parseAddressLimit(auth: Table) -> AddressFailureLimit:
    limit = AddressFailureLimit(
        maxFailures=auth.integer("address_max_failures", 0, 100000, 20),
        window=auth.duration("address_window", 300.0),
        ipv6Prefix=auth.integer("address_ipv6_prefix", 32, 128, 128),
        tableSize=auth.integer("address_table_size", 256, 1_000_000, 16384),
    )
    if not limit.maxFailures:
        for key in ("address_window", "address_ipv6_prefix", "address_table_size"):
            if key in auth.data:
                auth.fail(key, "expected only with address_max_failures above 0 (no address is counted)")
    return limit
