"""
Validation of TOML tables: typed getters whose errors name the file and the
full key path (L{ConfigError}), and a check for unknown keys.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from lbproxy.config.endpoints import EndpointError, parseAddress, parseBind
from lbproxy.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: A host name to match: exact, or a C{*.example.com} wildcard (lower case).
HOST_PATTERN = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def oneOf(names) -> str:
    names = sorted(names)
    return "one of " + ", ".join(names) if names else "none defined"


class Table:
    """
    A TOML table being validated: typed getters that raise L{ConfigError}
    with the full key path, and a check for unknown keys.
    """

    def __init__(self, data: dict | None, path: str, source: str) -> None:
        self.present = data is not None
        self.data = data if data is not None else {}
        self.path = path
        self.source = source
        self.seen: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, message: str):
        raise ConfigError(self.source, self._key(key), message)

    def keys(self) -> list[str]:
        return list(self.data)

    def get(self, key: str, default: Any = None, required: bool = False) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if required:
                self.fail(key, "required key is missing")
            return default
        return self.data[key]

    def done(self) -> None:
        for key in self.data:
            if key not in self.seen:
                self.fail(key, "unknown key")

    def checkName(self, name: str, key: str = "") -> None:
        if not _NAME.match(name):
            message = f"expected a name of letters, digits, '_', '.' or '-' (at most 64), got {name!r}"
            if key:
                self.fail(key, message)
            raise ConfigError(self.source, self.path, message)

    def table(self, key: str, required: bool = False) -> Table:
        value = self.get(key, None, required)
        if value is not None and not isinstance(value, dict):
            self.fail(key, f"expected a table, got {show(value)}")
        return Table(value, self._key(key), self.source)

    def tableAt(self, key: str, index: int, value: Any) -> Table:
        path = f"{self._key(key)}[{index}]"
        if not isinstance(value, dict):
            raise ConfigError(self.source, path, f"expected a table, got {show(value)}")
        return Table(value, path, self.source)

    def list(self, key: str, required: bool = False) -> list:
        value = self.get(key, [], required)
        if not isinstance(value, list):
            self.fail(key, f"expected an array, got {show(value)}")
        return value

    def string(self, key: str, default: Any = None, required: bool = False) -> Any:
        value = self.get(key, default, required)
        if value is not default and not isinstance(value, str):
            self.fail(key, f"expected a string, got {show(value)}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {show(value)}")
        return value

    def integer(self, key: str, low: int, high: int, default: int) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(key, f"expected an integer from {low} to {high}, got {show(value)}")
        return value

    def choice(self, key: str, choices, default: str) -> str:
        value = self.get(key, default)
        if value not in choices:
            self.fail(key, f"expected {oneOf(choices)}, got {show(value)}")
        return value

    def duration(self, key: str, default: float, allowZero: bool = False) -> float:
        """
        A duration in seconds: a number or a string such as C{"500ms"};
        above 0 (or 0 too, with C{allowZero}) and at most 7 days.
        """
        value = self.get(key, default)
        expected = 'expected a duration in seconds or a string such as "500ms", "5s", "2m"'
        if isinstance(value, bool):
            self.fail(key, f"{expected}, got {show(value)}")
        if isinstance(value, (int, float)):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
        else:
            self.fail(key, f"{expected}, got {show(value)}")
        if allowZero and seconds == 0:
            return seconds
        if not 0 < seconds <= 86400 * 7:
            lowest = "of 0 or more" if allowZero else "above 0"
            self.fail(key, f"expected a duration {lowest} and at most 7 days, got {show(value)}")
        return seconds

    def optionalDuration(self, key: str) -> float | None:
        if key not in self.data:
            self.seen.add(key)
            return None
        return self.duration(key, 0.0)

    def endpoint(self, key: str, server: bool, required: bool = False) -> str:
        """
        A listener's C{bind} (C{server}) or a server's C{address}, checked
        by L{lbproxy.config.endpoints}; an address is returned as the
        client endpoint string that reaches it.
        """
        value = self.string(key, required=required)
        try:
            if server:
                parseBind(value)
                return value
            return parseAddress(value)
        except EndpointError as e:
            self.fail(key, e.describe(value))

    def networks(self, key: str) -> tuple:
        value = self.list(key)
        networks = []
        for index, item in enumerate(value):
            try:
                if not isinstance(item, str):
                    raise TypeError(item)
                networks.append(ipaddress.ip_network(item, strict=False))
            except (ValueError, TypeError):
                raise ConfigError(
                    self.source,
                    f"{self._key(key)}[{index}]",
                    f"expected an address or network such as \"127.0.0.1\" or \"10.0.0.0/8\", got {show(item)}",
                )
        return tuple(networks)

    def statusRanges(self, key: str, default) -> tuple:
        value = self.get(key, None)
        if value is None:
            return default
        expected = 'expected an array of statuses or ranges such as [200, "300-399"]'
        if not isinstance(value, list) or not value:
            self.fail(key, f"{expected}, got {show(value)}")
        ranges = []
        for item in value:
            if isinstance(item, int) and not isinstance(item, bool):
                low = high = item
            elif isinstance(item, str) and re.fullmatch(r"\d{3}-\d{3}", item):
                low, high = map(int, item.split("-"))
            else:
                self.fail(key, f"{expected}, got {show(item)}")
            if not 100 <= low <= high <= 599:
                self.fail(key, f"{expected}, got {show(item)}")
            ranges.append((low, high))
        return tuple(ranges)
