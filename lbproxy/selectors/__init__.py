"""
Backend selectors.

The built-in ones live in this package; all selectors, built-in or third
party, are found the same way: as L{ISelectorPlugin} providers in the
L{lbproxy.plugins} plugin package.
"""

from __future__ import annotations

from twisted.plugin import getPlugins

from lbproxy.interfaces import ISelectorPlugin


def allSelectors() -> dict[str, ISelectorPlugin]:
    """
    Every selector plugin on sys.path, by name. A broken plugin module is
    logged by L{getPlugins} and left out.
    """
    import lbproxy.plugins

    found: dict[str, ISelectorPlugin] = {}
    for plugin in getPlugins(ISelectorPlugin, lbproxy.plugins):
        found.setdefault(plugin.name, plugin)
    return found


def findSelector(name: str) -> ISelectorPlugin | None:
    return allSelectors().get(name)


def selectorNames() -> list[str]:
    return sorted(allSelectors())
