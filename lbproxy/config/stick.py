"""
The C{[pools.NAME.stick]} table: a stick table remembering which server a
client was sent to (see README.rst, "Stick tables"; the live table is
L{lbproxy.core.stick.StickTable}).

C{on} is checked here against every key some mode provides, and by the
config loader against the modes of the listeners using the pool, as a
hashing selector's C{key} is. C{replicate} is settled once C{[ha]} is
read (L{settleReplication}): it defaults to true when the node has a
channel to its peer, and cannot be true without one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lbproxy.config.table import Table, show
from lbproxy.errors import ConfigError

#: Most entries a table may hold.
MAX_SIZE = 10_000_000
DEFAULT_SIZE = 100_000
DEFAULT_EXPIRE = 1800.0
#: The shortest C{expire}: entries are replicated with their age in
#: milliseconds and refreshed a few times per expiry.
MIN_EXPIRE = 1.0


@dataclass(frozen=True)
class StickConfig:
    """
    A pool's stick table.

    @ivar on: the key a flow is remembered by (a selector key spec:
        C{"src"}, C{"header:X-Session"}, C{"cookie:SID"}, C{"user"}...).
    @ivar expire: seconds an entry lives after its last use.
    @ivar size: most entries; the least recently used go first.
    @ivar replicate: push entries to the HA peer; None until
        L{settleReplication} decides from C{[ha]}.
    """

    on: str
    expire: float = DEFAULT_EXPIRE
    size: int = DEFAULT_SIZE
    replicate: bool | None = None


def parseStick(t: Table) -> StickConfig:
    """
    Validate a C{[pools.NAME.stick]} table.
    """
    from lbproxy.selectors.options import keySpec

    on = t.get("on", required=True)
    try:
        keySpec(on)
    except ValueError as e:
        t.fail("on", str(e))
    expire = t.duration("expire", DEFAULT_EXPIRE)
    if expire < MIN_EXPIRE:
        t.fail("expire", f"expected at least 1s, got {show(t.data['expire'])}")
    replicate = t.get("replicate")
    if replicate is not None and not isinstance(replicate, bool):
        t.fail("replicate", f"expected true or false, got {show(replicate)}")
    config = StickConfig(on=on, expire=expire, size=t.integer("size", 1, MAX_SIZE, DEFAULT_SIZE), replicate=replicate)
    t.done()
    return config


def settleReplication(source: str, pools: dict, ha) -> dict:
    """
    The pools with each stick table's C{replicate} decided: true by
    default when C{ha} (the C{[ha]} table, or None) has a channel, false
    otherwise; an explicit C{replicate = true} without a channel is an
    error (it would do nothing).
    """
    channel = ha is not None and bool(ha.channelPort)
    settled = {}
    for name, pool in pools.items():
        stick = pool.stick
        if stick is not None:
            if stick.replicate and not channel:
                raise ConfigError(
                    source,
                    f"pools.{name}.stick.replicate",
                    "expected false without a channel to an HA peer ([ha] with peers and channel_port "
                    "above 0): entries are replicated over it",
                )
            if stick.replicate is None:
                pool = replace(pool, stick=replace(stick, replicate=channel))
        settled[name] = pool
    return settled
