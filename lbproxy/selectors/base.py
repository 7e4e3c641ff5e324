"""
Helpers for writing selectors, built-in or third party.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from lbproxy.errors import OptionError
from lbproxy.interfaces import ISelectorPlugin


def usable(server, context) -> bool:
    """
    Whether C{server} may take the flow of C{context}: not at its maxconn
    and not already tried for this flow.
    """
    return not server.full and server not in context.excluded


def lessLoaded(server, other) -> bool:
    """
    Whether C{server} has fewer active connections per unit of weight than
    C{other}. Compared by cross-multiplying, so there is no division and no
    rounding; both weights must be positive (the pool only offers such
    servers).
    """
    return server.active * other.weight < other.active * server.weight


def stableHash(data: bytes) -> int:
    """
    A 64-bit hash of C{data} that is the same in every process and on every
    node (BLAKE2b). Python's built-in C{hash()} is randomised per process,
    so two lbproxy nodes, or one node after a restart, would place the same
    key differently.
    """
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@implementer(IPlugin, ISelectorPlugin)
class SelectorPlugin:
    """
    An L{ISelectorPlugin} made of a selector class and the options it takes.

    @param factory: called with the validated options as keyword arguments;
        returns an L{IBackendSelector}.
    @param options: option name -> C{(default, check)}; C{check(value)}
        returns the value to pass on, or raises L{ValueError} whose text
        says what was expected.
    """

    def __init__(
        self,
        name: str,
        description: str,
        factory: Callable[..., Any],
        options: Mapping[str, tuple[Any, Callable[[Any], Any]]] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.factory = factory
        self.options = dict(options or {})

    def __repr__(self) -> str:
        return f"<SelectorPlugin {self.name}>"

    def build(self, options: Mapping[str, Any]):
        kwargs = {}
        for key in options:
            if key not in self.options:
                known = ", ".join(sorted(self.options)) or "none"
                raise OptionError(key, f"unknown option of selector {self.name!r} (known: {known})")
        for key, (default, check) in self.options.items():
            if key in options:
                try:
                    kwargs[key] = check(options[key])
                except ValueError as e:
                    raise OptionError(key, str(e))
            else:
                kwargs[key] = default
        return self.factory(**kwargs)
