"""
Option checkers for L{lbproxy.selectors.base.SelectorPlugin}.

Each checker takes the raw TOML value and returns the value to pass to the
selector, or raises L{ValueError} with an "expected ..., got ..." text; the
config loader prefixes it with the file and key path, e.g.::

    lb.toml: pools.web.selector.table_size: expected a prime from 251 to 1000003, got 65536
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any



def describe(value: Any) -> str:
    """
    How an error message shows a rejected TOML value.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def keySpec(value: Any) -> str:
    """
    A key specification some mode provides (L{lbproxy.modes.allSelectionKeys}): a kind such as
    C{"src"}, or C{"kind:argument"} (C{"header:X-User"}) for the kinds that
    take an argument. Whether the listener's mode can provide it is checked
    later, by the config loader.
    """
    from lbproxy.modes import allSelectionKeys, keyKnown

    if not isinstance(value, str) or not keyKnown(value):
        kinds = ", ".join(
            sorted(k + "NAME" if k.endswith(":") else k for k in allSelectionKeys())
        )
        raise ValueError(
            f'expected a key such as "src" or "header:NAME" (one of {kinds}), '
            f"got {describe(value)}"
        )
    return value


def oneOf(*choices: str) -> Callable[[Any], str]:
    """
    A checker accepting exactly one of C{choices}.
    """

    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            names = ", ".join(repr(c) for c in choices)
            raise ValueError(f"expected one of {names}, got {describe(value)}")
        return value

    return check


def isPrime(n: int) -> bool:
    """
    Trial division; enough for table sizes up to a few million.
    """
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    divisor = 3
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 2
    return True


def primeBetween(low: int, high: int) -> Callable[[Any], int]:
    """
    A checker accepting a prime integer from C{low} to C{high}.
    """

    def check(value: Any) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not low <= value <= high
            or not isPrime(value)
        ):
            raise ValueError(
                f"expected a prime from {low} to {high}, got {describe(value)}"
            )
        return value

    return check
