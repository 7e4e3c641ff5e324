"""
An HTTP listener's path normalisation: C{[listeners.NAME.paths]} (see
L{lbproxy.http.paths}).
"""

from __future__ import annotations

from lbproxy.config.table import Table
from lbproxy.errors import ConfigError
from lbproxy.http.errors import HTTPParseError
from lbproxy.http.paths import PathsConfig, normalizePath

#: The keys that let something through unnormalised, by PathsConfig field.
_ALLOW_KEYS = (
    ("allow_encoded_slash", "allowEncodedSlash"),
    ("allow_backslash", "allowBackslash"),
    ("allow_encoded_control", "allowEncodedControl"),
)


def parsePaths(t: Table) -> PathsConfig:
    """
    The C{paths} table of an HTTP listener.
    """
    normalize = t.boolean("normalize", True)
    allowed = {field: t.boolean(key, False) for key, field in _ALLOW_KEYS}
    if not normalize:
        for key, _ in _ALLOW_KEYS:
            if key in t.data:
                t.fail(key, "expected only with normalize = true (without it every path passes as received)")
    t.done()
    return PathsConfig(normalize=normalize, **allowed)


def checkRoutePaths(t: Table, routes, paths: PathsConfig) -> None:
    """
    Refuse a route's C{path_prefix} that no normalised path can start with:
    one that is not in the normal form itself (C{/%7Euser}, C{/a//b}), or
    that normalisation refuses.

    @param t: the listener's table (for the key path of the error).
    """
    if not paths.normalize:
        return
    for index, route in enumerate(routes):
        prefix = route.pathPrefix
        if prefix is None:
            continue
        key = f"{t._key('routes')}[{index}].path_prefix"
        try:
            normal = normalizePath(prefix.encode("ascii"), paths)
        except HTTPParseError as e:
            raise ConfigError(
                t.source,
                key,
                f"expected a path that normalisation accepts, got {prefix!r} ({e.reason})",
            )
        if normal != prefix.encode("ascii"):
            raise ConfigError(
                t.source,
                key,
                f"expected a path in normal form (requests are matched after "
                f"normalisation), {normal.decode('ascii')!r}, got {prefix!r}",
            )
