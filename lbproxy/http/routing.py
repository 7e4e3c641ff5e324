"""
Choosing the pool of an HTTP request by a listener's ordered rules.

Each L{lbproxy.http.config.RouteConfig} names a pool and up to five conditions;
a rule applies when every condition it gives holds. The first rule that
applies wins; when none does, the request goes to the listener's own pool.

Conditions:
  - host: the request's host (see L{lbproxy.http.context.requestHost}:
    Host field or absolute-form authority, lower case, no port, no trailing
    dot) equals the rule's host; C{*.example.com} matches any name ending in
    C{.example.com} (C{a.example.com}, C{a.b.example.com}) but not
    C{example.com} itself;
  - path prefix: the path (before C{"?"}, see
    L{lbproxy.http.context.requestPath}) starts with the prefix;
  - path regex: C{re.search} finds the pattern in the path;
  - header: some field of that name is present, and when the rule gives a
    value, some field of that name has exactly that value (case-sensitive,
    after the parser's removal of surrounding whitespace);
  - methods: the method is one of them (case-sensitive, as methods are).

Paths are matched in their normal form (L{lbproxy.http.paths}): the front
normalises the target before routing, and the backend gets that same
normalised path, so a rule sees exactly the bytes the backend will see. A
prefix rule on C{/admin/} therefore matches C{/%61dmin/}, C{//admin/} and
C{/public/../admin/}. With a listener's C{paths.normalize = false}, paths
are matched (and sent) as received, and these spellings pass the rule by.
Routing is still not access control: a backend must not rely on the
proxy's rules to guard what it serves.

Routing only ever yields pools from the configuration: an absolute-form
target (C{GET http://elsewhere/ HTTP/1.1}) is matched by its host like
any other request, and a host no rule names goes to the listener's pool.
A client can never make the proxy connect to a host of its choosing.

Requests without a host (HTTP/1.0 without Host) or without a path
(C{CONNECT} authority form) match no host or path condition.
"""

from __future__ import annotations

import re

from lbproxy.core.pool import Pool
from lbproxy.http.config import HTTPListenerConfig, RouteConfig
from lbproxy.http.context import requestHost, requestPath
from lbproxy.http.message import RequestHead


class _Rule:
    """
    One route, prepared for matching: the host split into exact name or
    wildcard suffix, strings turned into bytes once.
    """

    __slots__ = (
        "pool",
        "exactHost",
        "hostSuffix",
        "prefix",
        "regex",
        "headerName",
        "headerValue",
        "methods",
    )

    def __init__(self, route: RouteConfig, pool: Pool) -> None:
        self.pool = pool
        self.exactHost: bytes | None = None
        self.hostSuffix: bytes | None = None
        if route.host is not None:
            host = route.host.lower().encode("ascii")
            if host.startswith(b"*."):
                self.hostSuffix = host[1:]
            else:
                self.exactHost = host
        self.prefix = route.pathPrefix.encode("ascii") if route.pathPrefix is not None else None
        regex = route.pathRegex
        if regex is not None and isinstance(regex.pattern, str):
            regex = re.compile(regex.pattern.encode("utf-8"), regex.flags & ~re.UNICODE)
        self.regex = regex
        self.headerName, self.headerValue = route.header if route.header else (None, None)
        self.methods = route.methods or None

    @property
    def needsHost(self) -> bool:
        return self.exactHost is not None or self.hostSuffix is not None

    @property
    def needsPath(self) -> bool:
        return self.prefix is not None or self.regex is not None

    def matches(self, head: RequestHead, host: bytes | None, path: bytes | None) -> bool:
        if self.methods is not None and head.method not in self.methods:
            return False
        if self.exactHost is not None and host != self.exactHost:
            return False
        if self.hostSuffix is not None and (
            host is None
            or not host.endswith(self.hostSuffix)
            or len(host) == len(self.hostSuffix)
        ):
            return False
        if self.prefix is not None and (path is None or not path.startswith(self.prefix)):
            return False
        if self.regex is not None and (path is None or self.regex.search(path) is None):
            return False
        if self.headerName is not None:
            values = head.headers.getAll(self.headerName)
            if not values:
                return False
            if self.headerValue is not None and self.headerValue not in values:
                return False
        return True


class Router:
    """
    The routing rules of one HTTP listener.

    @ivar default: the listener's pool, for requests no rule matches.
    """

    #: Hosts (see L{requestHost}) by authority, kept while the router
    #: lives: the same few authorities come request after request. Emptied
    #: when it holds this many; authorities longer than L{_HOST_SIZE} bytes
    #: are not kept.
    _HOSTS_LIMIT = 4096
    _HOST_SIZE = 256

    def __init__(self, listener: HTTPListenerConfig, pools: dict[str, Pool]) -> None:
        """
        @param pools: the live pools by name; must hold the listener's pool
            and every pool its routes name (the config loader checked they
            exist), else L{KeyError}.
        """
        self.default = pools[listener.pool]
        self._rules = tuple(_Rule(route, pools[route.pool]) for route in listener.routes)
        self._needHost = any(rule.needsHost for rule in self._rules)
        self._needPath = any(rule.needsPath for rule in self._rules)
        self._hosts: dict[bytes, bytes | None] = {}

    def _host(self, head: RequestHead) -> bytes | None:
        authority = head.authority
        hosts = self._hosts
        try:
            return hosts[authority]
        except KeyError:
            pass
        host = requestHost(head)
        if authority is not None and len(authority) <= self._HOST_SIZE:
            if len(hosts) >= self._HOSTS_LIMIT:
                hosts.clear()
            hosts[authority] = host
        return host

    def route(self, head: RequestHead) -> Pool:
        """
        The pool of the first rule matching C{head}, else the listener's.
        """
        rules = self._rules
        if not rules:
            return self.default
        host = self._host(head) if self._needHost else None
        path = requestPath(head) if self._needPath else None
        for rule in rules:
            if rule.matches(head, host, path):
                return rule.pool
        return self.default
