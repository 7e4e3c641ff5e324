"""
The heartbeat's wire format: round trips, and every way a datagram is
rejected (with its cause), sequences and replays.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from lbproxy.ha.advert import (
    DIGEST_SIZE,
    HEADER_SIZE,
    MIN_SIZE,
    Advert,
    AdvertRejected,
    ReplayGuard,
    Sequence,
    decode,
    encode,
    intervalCentiseconds,
)

KEY = b"k" * 32


def advert(**changes) -> Advert:
    values = dict(
        group=51,
        priority=200,
        interval=0.2,
        sequence=1_700_000_000_000_000_000,
        sender=ipaddress.ip_address("192.0.2.11"),
        addresses=(
            ipaddress.ip_interface("192.0.2.100/24"),
            ipaddress.ip_interface("2001:db8::100/64"),
        ),
    )
    values.update(changes)
    return Advert(**values)


def rejected(data: bytes, group: int = 51, key: bytes = KEY) -> str:
    with pytest.raises(AdvertRejected) as caught:
        decode(data, key, group)
    return caught.value.cause


def resign(body: bytes, key: bytes = KEY) -> bytes:
    import hashlib
    import hmac

    return body + hmac.new(key, body, hashlib.sha256).digest()


def test_roundTrip():
    original = advert()
    data = encode(original, KEY)
    assert len(data) == MIN_SIZE + 2 * 17
    assert decode(data, KEY, 51) == original


def test_roundTripIPv6SenderSolicitPriorityZero():
    original = advert(sender=ipaddress.ip_address("2001:db8::11"), solicit=True, priority=0, addresses=())
    decoded = decode(encode(original, KEY), KEY, 51)
    assert decoded == original
    assert decoded.leaving and decoded.solicit


def test_roundTripYield():
    original = advert(yielding=True)
    decoded = decode(encode(original, KEY), KEY, 51)
    assert decoded.yielding and not decoded.solicit and not decoded.fromMaster


def test_intervalCentiseconds():
    assert intervalCentiseconds(0.1) == 10
    assert intervalCentiseconds(40.95) == 4095
    for bad in (0.09, 41.0, 0):
        with pytest.raises(ValueError):
            intervalCentiseconds(bad)


def test_truncated():
    data = encode(advert(), KEY)
    assert rejected(data[:10]) == "truncated"
    assert rejected(data[: MIN_SIZE - 1]) == "truncated"
    # Long enough for a header and a signature, but short of the addresses
    # its count announces.
    assert rejected(data[:-1]) == "truncated"
    assert rejected(b"") == "truncated"


def test_otherProtocolOrVersion():
    data = bytearray(encode(advert(), KEY))
    for offset, value in ((0, ord("X")), (4, 2), (5, 9)):
        changed = bytearray(data)
        changed[offset] = value
        assert rejected(bytes(changed)) == "version"


def test_foreignGroup():
    data = encode(advert(group=52), b"their key")
    assert rejected(data) == "group"


def test_forgedSignature():
    data = bytearray(encode(advert(), KEY))
    data[-1] ^= 1
    assert rejected(bytes(data)) == "auth"
    assert rejected(encode(advert(), b"another key")) == "auth"


def test_tamperedFieldsFailTheSignature():
    """
    Every byte is signed: raising the priority of a captured advert, or
    changing its sequence or addresses, breaks the signature.
    """
    data = encode(advert(), KEY)
    for offset in (7, 8, 12, 20, HEADER_SIZE + 3):
        changed = bytearray(data)
        changed[offset] ^= 0x40
        assert rejected(bytes(changed)) == "auth", offset


def test_extraBytes():
    data = encode(advert(), KEY)
    assert rejected(data + b"\0") == "malformed"
    assert rejected(resign(data[:-DIGEST_SIZE] + b"\0")) == "malformed"


def test_signedButOutOfRange():
    body = bytearray(encode(advert(addresses=()), KEY)[:-DIGEST_SIZE])
    for offset, value, what in ((7, 255, "priority"), (10, 0x04, "flags")):
        changed = bytearray(body)
        changed[offset] = value
        with pytest.raises(AdvertRejected) as caught:
            decode(resign(bytes(changed)), KEY, 51)
        assert caught.value.cause == "malformed"
        assert what in caught.value.detail
    for interval in (9, 4096):
        changed = bytearray(body)
        struct.pack_into("!H", changed, 8, interval)
        assert rejected(resign(bytes(changed))) == "malformed"


def test_addressPrefixOutOfRange():
    data = bytearray(encode(advert(addresses=(ipaddress.ip_interface("192.0.2.100/24"),)), KEY)[:-DIGEST_SIZE])
    data[HEADER_SIZE + 16] = 33
    assert rejected(resign(bytes(data))) == "malformed"


def test_encodeRefusesOutOfRange():
    for changes in ({"group": 0}, {"priority": 255}, {"interval": 0.05}):
        with pytest.raises(ValueError):
            encode(advert(**changes), KEY)


def test_keyNeverInTheDetail():
    data = bytearray(encode(advert(), KEY))
    data[-1] ^= 1
    with pytest.raises(AdvertRejected) as caught:
        decode(bytes(data), KEY, 51)
    assert "k" * 8 not in str(caught.value)


def test_sequenceIncreasesAcrossAStalledClock():
    now = [1000]
    sequence = Sequence(lambda: now[0])
    assert [sequence.next(), sequence.next()] == [1000, 1001]
    now[0] = 5000
    assert sequence.next() == 5000
    now[0] = 10
    assert sequence.next() == 5001


def test_sequenceOfARestartIsAbove():
    """
    The wall clock makes a restarted sender's sequence higher than what it
    sent before.
    """
    first = Sequence(lambda: 1000)
    sent = [first.next() for _ in range(5)]
    second = Sequence(lambda: 2000)
    assert second.next() > max(sent)


def test_replayGuard():
    guard = ReplayGuard()
    guard.check(advert(sequence=10))
    guard.check(advert(sequence=11))
    for sequence in (11, 10, 3):
        with pytest.raises(AdvertRejected) as caught:
            guard.check(advert(sequence=sequence))
        assert caught.value.cause == "replay"
    # Per sender.
    guard.check(advert(sequence=1, sender=ipaddress.ip_address("192.0.2.12")))
    guard.check(advert(sequence=12))
