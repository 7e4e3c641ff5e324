"""
Tests for the C{hash} selector (L{lbproxy.selectors.keyhash}).
"""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from twisted.internet.address import IPv4Address, IPv6Address

from lbproxy.core.context import FlowContext
from lbproxy.core.pool import Server
from lbproxy.selectors.keyhash import KeyHash, xorFiveTuple, xorFold


def context(host: str = "10.0.0.1", port: int = 40000, local: str = "10.0.0.2"):
    return FlowContext(IPv4Address("TCP", host, port), IPv4Address("TCP", local, 80))


def servers(*weights: int) -> tuple[Server, ...]:
    return tuple(
        Server(f"s{i}", f"tcp:host=127.0.0.1:port={9000 + i}", weight=w)
        for i, w in enumerate(weights)
    )


def clients(count: int):
    return [f"10.{i // 250 % 250}.{i % 250}.{1 + i // 62500}" for i in range(count)]


def test_sameKeySameServer():
    """
    The client address decides, whatever the port, and a fresh selector
    (as on another node, or after a restart) decides the same.
    """
    pool = servers(1, 1, 1, 1)
    selector = KeyHash()
    chosen = {selector.pick(pool, context("192.0.2.7", port)) for port in range(1024, 1100)}
    assert len(chosen) == 1
    assert KeyHash().pick(pool, context("192.0.2.7", 5555)) in chosen


def test_stableHashValue():
    """
    The server is the BLAKE2b hash of the packed address modulo the server
    count: nothing depends on the per-process randomised hash().
    """
    pool = servers(1, 1, 1, 1, 1)
    for host in clients(50):
        packed = bytes(int(part) for part in host.split("."))
        digest = hashlib.blake2b(packed, digest_size=8).digest()
        expected = pool[int.from_bytes(digest, "big") % 5]
        assert KeyHash().pick(pool, context(host)) is expected


def test_spread():
    pool = servers(1, 1, 1)
    selector = KeyHash()
    counts = Counter(selector.pick(pool, context(host)) for host in clients(6000))
    for server in pool:
        assert abs(counts[server] / 6000 - 1 / 3) < 0.03


def test_weights():
    pool = servers(1, 2, 3)
    selector = KeyHash()
    counts = Counter(selector.pick(pool, context(host)) for host in clients(12000))
    for server in pool:
        assert abs(counts[server] / 12000 - server.weight / 6) < 0.03


def test_xorFiveTuple():
    """
    The xor method on the five-tuple is the tutorial's formula: source XOR
    destination XOR ports XOR protocol number, modulo the server count.
    """
    pool = servers(1, 1, 1)
    selector = KeyHash(key="5tuple", method="xor")
    src = (10 << 24) | 1
    dst = (10 << 24) | 2
    for port in range(40000, 40030):
        expected = (src ^ dst ^ port ^ 80 ^ 6) % 3
        assert selector.pick(pool, context("10.0.0.1", port)) is pool[expected]
    assert xorFiveTuple((src, dst, 40000, 80, 6)) == src ^ dst ^ 40000 ^ 80 ^ 6


def test_xorEqualWeightsIgnoreScale():
    """
    Weights are divided by their common divisor, so equal weights of any
    size keep the plain modulo of the server count.
    """
    ones = servers(1, 1, 1)
    fives = servers(5, 5, 5)
    selector = KeyHash(key="5tuple", method="xor")
    for port in range(40000, 40030):
        ctx = context("10.0.0.1", port)
        assert ones.index(selector.pick(ones, ctx)) == fives.index(selector.pick(fives, ctx))


def test_xorFoldsIPv6():
    assert xorFold(0x11111111_22222222_44444444_88888888) == 0xFFFFFFFF
    assert xorFold(0xC0000201) == 0xC0000201
    ctx = FlowContext(IPv6Address("TCP", "::1", 1000), IPv6Address("TCP", "::2", 80))
    assert KeyHash(key="5tuple", method="xor").hashOf(ctx) == 1 ^ 2 ^ 1000 ^ 80 ^ 6


def test_xorSourceKey():
    """
    For other keys the xor method folds the key's bytes: the IPv4 source
    address is its own value.
    """
    pool = servers(1, 1, 1, 1)
    selector = KeyHash(key="src", method="xor")
    for last in range(1, 20):
        expected = ((192 << 24) | (2 << 8) | last) % 4
        assert selector.pick(pool, context(f"192.0.2.{last}")) is pool[expected]


def test_noKeyFallsBackToRoundRobin():
    pool = servers(1, 1, 1)
    selector = KeyHash(key="header:X-User")
    ctx = context()
    assert [selector.pick(pool, ctx) for _ in range(6)] == list(pool) * 2


@pytest.mark.parametrize("method", ["hash", "xor"])
def test_unusableWalksForward(method):
    """
    A full or already tried server hands the key to the next usable one in
    config order, the same way on every pick.
    """
    pool = servers(1, 1, 1, 1)
    selector = KeyHash(method=method)
    ctx = context("198.51.100.9")
    home = pool.index(selector.pick(pool, ctx))
    following = pool[(home + 1) % 4]
    pool[home].maxconn = 1
    pool[home].acquire()
    assert {selector.pick(pool, ctx) for _ in range(5)} == {following}
    ctx.excluded.add(following)
    assert selector.pick(pool, ctx) is pool[(home + 2) % 4]
    pool[home].release()
    assert selector.pick(pool, ctx) is pool[home]


def test_badMethod():
    with pytest.raises(ValueError, match="expected one of"):
        KeyHash(method="crc")
