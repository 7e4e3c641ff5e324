"""
Helpers for writing selectors, built-in or third party.
"""

from __future__ import annotations

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
