"""
Tests for selector plugins: the built-in registrations, option checking,
config errors, and discovery of a third-party selector.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
from twisted.internet.address import IPv4Address
from twisted.plugin import IPlugin
from zope.interface.verify import verifyObject

import lbproxy.plugins
from lbproxy.config import loadBytes
from lbproxy.core.context import FlowContext
from lbproxy.modes import allModes, allSelectionKeys, keyKnown
from lbproxy.errors import ConfigError, OptionError
from lbproxy.interfaces import IBackendSelector, ISelectorPlugin
from lbproxy.core.model import buildPool
from lbproxy.selectors import allSelectors, findSelector, selectorNames
from lbproxy.selectors.base import SelectorPlugin
from lbproxy.selectors.options import isPrime, keySpec, oneOf, primeBetween

BUILTIN = ["first", "hash", "leastconn", "maglev", "random2", "roundrobin"]


def configText(selector: str, listener: str = "") -> bytes:
    return textwrap.dedent(
        f"""
        [listeners.front]
        bind = "tcp:0:interface=127.0.0.1"
        pool = "web"
        {listener}

        [pools.web]
        selector = {selector}
        servers = [
            {{ name = "a", address = "127.0.0.1:9001" }},
            {{ name = "b", address = "127.0.0.1:9002" }},
            {{ name = "c", address = "127.0.0.1:9003" }},
        ]
        """
    ).encode()


def configError(selector: str, listener: str = "") -> str:
    with pytest.raises(ConfigError) as error:
        loadBytes(configText(selector, listener), "lb.toml")
    text = str(error.value)
    assert "\n" not in text
    return text


def flow() -> FlowContext:
    return FlowContext(
        IPv4Address("TCP", "10.0.0.1", 40000), IPv4Address("TCP", "10.0.0.2", 80)
    )


# Built-in plugins


def test_builtinsRegistered():
    assert set(BUILTIN) <= set(selectorNames())


@pytest.mark.parametrize("name", BUILTIN)
def test_builtinPluginsProvideInterfaces(name):
    plugin = findSelector(name)
    assert verifyObject(ISelectorPlugin, plugin)
    assert verifyObject(IPlugin, plugin)
    assert plugin.name == name and plugin.description
    assert verifyObject(IBackendSelector, plugin.build({}))


@pytest.mark.parametrize("name", BUILTIN)
def test_builtinConfigLoads(name):
    config = loadBytes(configText(f'"{name}"'), "lb.toml")
    pool = buildPool(config.pools["web"])
    assert pool.pick(flow()) in pool.servers


def test_random2PoolsHaveOwnGenerators():
    plugin = findSelector("random2")
    assert plugin.build({})._random is not plugin.build({})._random


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"key": "5tuple", "method": "xor"}, ("5tuple", "xor")),
        ({"key": "src_port"}, ("src_port", "hash")),
        ({}, ("src", "hash")),
    ],
)
def test_hashOptions(options, expected):
    selector = findSelector("hash").build(options)
    assert (selector.key, selector.method) == expected


# Option checkers


def test_allKeysCoverModes():
    modes = allModes()
    for mode in modes.values():
        assert mode.selectionKeys <= allSelectionKeys()
    assert modes["tcp"].selectionKeys == {"src", "src_port", "dst", "5tuple", "sni"}


@pytest.mark.parametrize("spec", ["src", "dst", "src_port", "5tuple", "sni", "uri", "user", "header:X-User"])
def test_keySpecAccepted(spec):
    assert keyKnown(spec)
    assert keySpec(spec) == spec


@pytest.mark.parametrize("spec", ["", "source", "header:", "header", "src:1", "uri:x", 5, None, ["src"]])
def test_keySpecRefused(spec):
    with pytest.raises(ValueError, match=r'^expected a key such as "src" or "header:NAME" \(one of .*header:NAME.*\), got '):
        keySpec(spec)


def test_oneOf():
    check = oneOf("hash", "xor")
    assert check("xor") == "xor"
    with pytest.raises(ValueError, match="^expected one of 'hash', 'xor', got 'crc'$"):
        check("crc")
    with pytest.raises(ValueError, match="^expected one of 'hash', 'xor', got true$"):
        check(True)


def test_primes():
    assert [n for n in range(30) if isPrime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert isPrime(65537) and isPrime(1_000_003) and not isPrime(65535)
    check = primeBetween(251, 1_000_003)
    assert check(65537) == 65537
    with pytest.raises(ValueError, match="^expected a prime from 251 to 1000003, got 'big'$"):
        check("big")


def test_unknownOption():
    with pytest.raises(OptionError) as error:
        findSelector("maglev").build({"tablesize": 251})
    assert error.value.key == "tablesize"
    assert "unknown option of selector 'maglev' (known: key, table_size)" in error.value.message


# Config errors


def test_unknownSelectorName():
    text = configError('"fastest"')
    assert text.startswith("lb.toml: pools.web.selector: expected a selector (one of ")
    assert text.endswith(", got 'fastest'")
    for name in BUILTIN:
        assert name in text


def test_unknownSelectorNameInTable():
    text = configError('{ name = "fastest" }')
    assert text.startswith("lb.toml: pools.web.selector.name: expected a selector (one of ")


@pytest.mark.parametrize(
    "selector, expected",
    [
        (
            '{ name = "maglev", table_size = 65536 }',
            "lb.toml: pools.web.selector.table_size: expected a prime from 251 to 1000003, got 65536",
        ),
        (
            '{ name = "hash", method = "crc32" }',
            "lb.toml: pools.web.selector.method: expected one of 'hash', 'xor', got 'crc32'",
        ),
        (
            '{ name = "hash", key = "source" }',
            'lb.toml: pools.web.selector.key: expected a key such as "src" or "header:NAME"',
        ),
        (
            '{ name = "roundrobin", weight = 2 }',
            "lb.toml: pools.web.selector.weight: unknown option of selector 'roundrobin' (known: none)",
        ),
    ],
)
def test_badOption(selector, expected):
    assert configError(selector).startswith(expected)


def test_keyTheListenerCannotProvide():
    """
    A well-formed key of another mode passes the plugin and is refused for
    the tcp listener by the config loader.
    """
    text = configError('{ name = "maglev", key = "header:X-User" }')
    assert text.startswith("lb.toml: listeners.front.pool: pool 'web' hashes on key 'header:X-User', which a tcp listener cannot provide")


# Third-party discovery

THIRD_PARTY = '''
"""
A third-party selector: the last usable server in config order.
"""

from zope.interface import implementer

from lbproxy.interfaces import IBackendSelector
from lbproxy.selectors.base import SelectorPlugin, usable


def nonNegative(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


@implementer(IBackendSelector)
class LastUsable:
    def __init__(self, skip=0):
        self.skip = skip

    def pick(self, servers, context):
        usableServers = [s for s in servers if usable(s, context)]
        if len(usableServers) <= self.skip:
            return None
        return usableServers[-1 - self.skip]


lastUsable = SelectorPlugin(
    "thirdparty-xyz-last",
    "the last usable server",
    LastUsable,
    {"skip": (0, nonNegative)},
)
'''


@pytest.fixture
def thirdParty(tmp_path):
    """
    A third-party distribution on sys.path: C{<tmp>/lbproxy/plugins/
    thirdparty_xyz.py}, with no C{lbproxy/__init__.py} of its own.

    L{lbproxy.plugins} extends its C{__path__} with every
    C{lbproxy/plugins} directory on sys.path when it is first imported
    (L{twisted.plugin.pluginPackagePaths}); a third party installed before
    lbproxy starts is found that way. This directory appears after the
    import, so the fixture appends it to C{__path__} itself, and removes
    it, the sys.path entry, the imported module and the C{dropin.cache}
    that L{twisted.plugin.getPlugins} writes, afterwards.
    """
    pluginDirectory = tmp_path / "lbproxy" / "plugins"
    pluginDirectory.mkdir(parents=True)
    (pluginDirectory / "thirdparty_xyz.py").write_text(THIRD_PARTY)
    sys.path.append(str(tmp_path))
    lbproxy.plugins.__path__.append(str(pluginDirectory))
    try:
        yield pluginDirectory
    finally:
        lbproxy.plugins.__path__.remove(str(pluginDirectory))
        sys.path.remove(str(tmp_path))
        sys.modules.pop("lbproxy.plugins.thirdparty_xyz", None)
        (pluginDirectory / "dropin.cache").unlink(missing_ok=True)


def test_thirdPartySelectorFound(thirdParty):
    plugin = findSelector("thirdparty-xyz-last")
    assert plugin is not None
    assert verifyObject(ISelectorPlugin, plugin)
    assert verifyObject(IBackendSelector, plugin.build({"skip": 1}))
    assert set(BUILTIN) <= set(allSelectors())


def test_thirdPartySelectorRoutes(thirdParty):
    config = loadBytes(
        configText('{ name = "thirdparty-xyz-last", skip = 1 }'), "lb.toml"
    )
    assert config.pools["web"].selector == "thirdparty-xyz-last"
    pool = buildPool(config.pools["web"])
    assert pool.pick(flow()).name == "b"
    ctx = flow()
    ctx.excluded.add(pool.server("b"))
    assert pool.pick(ctx).name == "a"
    ctx.excluded.add(pool.server("a"))
    assert pool.pick(ctx) is None


def test_thirdPartyBadOption(thirdParty):
    text = configError('{ name = "thirdparty-xyz-last", skip = -1 }')
    assert text == "lb.toml: pools.web.selector.skip: expected a non-negative integer, got -1"


def test_thirdPartyGone():
    """
    Without its directory on the plugin path the third-party name is an
    unknown selector again (the fixture cleaned up after itself).
    """
    assert findSelector("thirdparty-xyz-last") is None
    assert "thirdparty-xyz-last" not in configError('"thirdparty-xyz-last"').split("(")[1].split(")")[0]


def test_selectorPluginRepr():
    assert repr(SelectorPlugin("x", "y", object)) == "<SelectorPlugin x>"
