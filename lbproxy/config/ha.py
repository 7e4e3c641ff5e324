"""
The C{[ha]} table: a node of an active/passive pair (see README.rst,
"High availability").

The table is checked when the configuration is loaded; the files it
names are read and checked by L{loadFiles}, as the TLS files are, when
the daemon starts and by C{--check}: the key file must be accessible by
its owner only, and its content never appears in a message or a
C{repr}; the commands must be executable.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, replace

from lbproxy.config.secrets import readSecret
from lbproxy.config.table import Table, oneOf, show
from lbproxy.errors import ConfigError
from lbproxy.ha.advert import MAX_INTERVAL_CS, MIN_INTERVAL_CS, Address, Interface

#: Default UDP port of the adverts, and TCP port of the channel.
ADVERT_PORT = 5798
CHANNEL_PORT = 5799
#: Default multicast groups by address family (VRRP's).
MULTICAST = {4: ipaddress.ip_address("224.0.0.18"), 6: ipaddress.ip_address("ff02::12")}
MAX_VIRTUAL_ADDRESSES = 20
MIN_KEY_SIZE = 16
MAX_KEY_SIZE = 4096
TRACK_TYPES = ("listeners", "pools", "pool", "command")
NOTIFY_ROLES = ("master", "backup", "fault", "stop")
_INTERFACE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")


@dataclass(frozen=True)
class TrackConfig:
    """
    One condition of the balancer's health the heartbeat follows.

    @ivar kind: C{listeners} (every listener bound), C{pools} (at least one
        server up in some pool), C{pool} (at least C{minUp} servers up in
        C{pool}), C{command} (C{command} exits 0).
    @ivar weight: 0: a failure puts the node in fault; else the failure
        lowers the node's priority by this much.
    """

    kind: str
    weight: int = 0
    pool: str = ""
    minUp: int = 1
    command: tuple[str, ...] = ()
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 2

    @property
    def name(self) -> str:
        """
        How log lines and the snapshot name the condition.
        """
        if self.kind == "pool":
            return f"pool {self.pool} has at least {self.minUp} server{'s' if self.minUp > 1 else ''} up"
        if self.kind == "command":
            return f"command {self.command[0]}"
        if self.kind == "pools":
            return "some pool has a server up"
        return "every listener is bound"


@dataclass(frozen=True)
class NotifyConfig:
    """
    The commands run on entering a role (an argv each, or empty).
    """

    master: tuple[str, ...] = ()
    backup: tuple[str, ...] = ()
    fault: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    timeout: float = 10.0


@dataclass(frozen=True)
class HAConfig:
    """
    The C{[ha]} table, validated.

    @ivar peers: the other nodes' addresses (unicast adverts); empty:
        adverts go to C{multicastGroup}.
    @ivar key: the shared key's bytes (never shown), once L{loadFiles}
        has read it.
    """

    group: int
    priority: int
    interval: float
    interface: str
    address: Address
    virtualAddresses: tuple[Interface, ...]
    keyFile: str
    key: bytes = field(default=b"", repr=False)
    peers: tuple[Address, ...] = ()
    multicastGroup: Address | None = None
    port: int = ADVERT_PORT
    preempt: bool = True
    preemptDelay: float = 0.0
    handoverTimeout: float = 3.0
    channelPort: int = CHANNEL_PORT
    announceCount: int = 5
    announceInterval: float = 1.0
    #: Seconds the kernel keeps a virtual address the master stopped
    #: renewing (it was killed).
    addressLifetime: int = 3
    notify: NotifyConfig = NotifyConfig()
    track: tuple[TrackConfig, ...] = ()

    def isVirtual(self, host: str) -> bool:
        """
        Whether C{host} (a listener's bind address) is one of the virtual
        addresses.
        """
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(interface.ip == address for interface in self.virtualAddresses)


#: The conditions followed when the table has no C{track}: the node hands
#: over when a listener is not bound or when every pool is down.
DEFAULT_TRACK = (TrackConfig("listeners"), TrackConfig("pools"))


def parseHA(t: Table, pools: dict) -> HAConfig:
    """
    Validate the C{[ha]} table.

    @param pools: the pools by name (a C{pool} condition names one).
    """
    address = _address(t, "address", required=True)
    peers = []
    for index, item in enumerate(t.list("peers")):
        peer = _addressValue(t, f"peers[{index}]", item)
        if peer.version != address.version:
            t.fail(f"peers[{index}]", f"expected an IPv{address.version} address like address, got {item!r}")
        if peer == address or peer in peers:
            t.fail(f"peers[{index}]", f"expected another node's address, once, got {item!r} again")
        peers.append(peer)
    multicast = None
    if peers:
        if "multicast_group" in t.data:
            t.fail("multicast_group", "expected no multicast group with peers (adverts go to the peers)")
    else:
        multicast = _address(t, "multicast_group") or MULTICAST[address.version]
        if not multicast.is_multicast or multicast.version != address.version:
            t.fail("multicast_group", f"expected an IPv{address.version} multicast address, got {str(multicast)!r}")
    interval = t.duration("interval", 1.0)
    if not MIN_INTERVAL_CS <= round(interval * 100) <= MAX_INTERVAL_CS or abs(interval * 100 - round(interval * 100)) > 1e-6:
        t.fail("interval", f'expected a multiple of 10ms from "100ms" to "40.95s", got {show(t.data.get("interval"))}')
    interface = t.string("interface", required=True)
    if not _INTERFACE.fullmatch(interface):
        t.fail("interface", f'expected a network interface name such as "eth0", got {interface!r}')
    channelPort = t.integer("channel_port", 0, 65535, CHANNEL_PORT if peers else 0)
    if channelPort and not peers:
        t.fail("channel_port", "expected 0 without peers (the channel connects to the peers)")
    keyFile = t.string("key_file", required=True)
    config = HAConfig(
        group=t.integer("group", 1, 255, 1),
        priority=t.integer("priority", 1, 254, 100),
        interval=interval,
        interface=interface,
        address=address,
        virtualAddresses=_virtualAddresses(t, address),
        keyFile=keyFile,
        peers=tuple(peers),
        multicastGroup=multicast,
        port=t.integer("port", 1, 65535, ADVERT_PORT),
        preempt=t.boolean("preempt", True),
        preemptDelay=t.duration("preempt_delay", 0.0, allowZero=True),
        handoverTimeout=t.duration("handover_timeout", 3.0),
        channelPort=channelPort,
        announceCount=t.integer("announce_count", 1, 100, 5),
        announceInterval=t.duration("announce_interval", 1.0),
        addressLifetime=t.integer("address_lifetime", 2, 3600, 3),
        notify=_parseNotify(t.table("notify")),
        track=_parseTrack(t, pools),
    )
    if config.handoverTimeout > 60:
        t.fail("handover_timeout", f"expected at most 60s, got {show(t.data['handover_timeout'])}")
    t.done()
    return config


def _addressValue(t: Table, key: str, value) -> Address:
    try:
        if not isinstance(value, str):
            raise ValueError
        return ipaddress.ip_address(value)
    except ValueError:
        t.fail(key, f'expected an IP address such as "192.0.2.11" or "2001:db8::11", got {show(value)}')


def _address(t: Table, key: str, required: bool = False) -> Address | None:
    value = t.get(key, None, required)
    return None if value is None else _addressValue(t, key, value)


def _virtualAddresses(t: Table, own: Address) -> tuple[Interface, ...]:
    items = t.list("virtual_addresses", required=True)
    if not items or len(items) > MAX_VIRTUAL_ADDRESSES:
        t.fail("virtual_addresses", f"expected 1 to {MAX_VIRTUAL_ADDRESSES} addresses, got {len(items)}")
    found: list[Interface] = []
    for index, item in enumerate(items):
        key = f"virtual_addresses[{index}]"
        try:
            if not isinstance(item, str):
                raise ValueError
            interface = ipaddress.ip_interface(item)
        except ValueError:
            t.fail(key, f'expected an address with its prefix length such as "192.0.2.100/24", got {show(item)}')
        if "/" not in item:
            t.fail(key, f'expected the prefix length too, such as "{item}/24", got {item!r}')
        ip = interface.ip
        if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local:
            t.fail(key, f"expected a unicast address that is not loopback or link-local, got {item!r}")
        if ip == own:
            t.fail(key, f"expected an address other than this node's own ({own}), got {item!r}")
        if any(other.ip == ip for other in found):
            t.fail(key, f"expected each address once, got {item!r} again")
        found.append(interface)
    return tuple(found)


def loadFiles(ha: HAConfig, source: str) -> HAConfig:
    """
    C{ha} with its key read from C{key_file}, after checking that the file
    is accessible by its owner only and that every command is executable.

    @raise ConfigError: naming the key, one line, without the key's bytes.
    """
    for name in NOTIFY_ROLES:
        _checkExecutable(source, f"ha.notify.{name}", getattr(ha.notify, name))
    for index, condition in enumerate(ha.track):
        _checkExecutable(source, f"ha.track[{index}].command", condition.command)
    return replace(ha, key=_readKey(source, ha.keyFile))


def _checkExecutable(source: str, key: str, argv: tuple[str, ...]) -> None:
    if argv and (not os.access(argv[0], os.X_OK) or os.path.isdir(argv[0])):
        raise ConfigError(source, key, f"expected an executable program, got {argv[0]!r} (missing or not executable)")


def _readKey(source: str, path: str) -> bytes:
    """
    The key in C{path}: the file's bytes without trailing white space.
    """
    return readSecret(source, "ha.key_file", path, MIN_KEY_SIZE, MAX_KEY_SIZE, "key")


def _command(t: Table, key: str, value) -> tuple[str, ...]:
    expected = 'expected a command as an array of strings, its program an absolute path, such as ["/usr/local/bin/check"]'
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and "\0" not in a for a in value):
        t.fail(key, f"{expected}, got {show(value)}")
    if not os.path.isabs(value[0]):
        t.fail(key, f"{expected}, got {value[0]!r}")
    return tuple(value)


def _parseNotify(t: Table) -> NotifyConfig:
    commands = {role: _command(t, role, t.get(role)) for role in NOTIFY_ROLES if role in t.data}
    for role in NOTIFY_ROLES:
        t.get(role)
    config = NotifyConfig(**commands, timeout=t.duration("timeout", 10.0))
    t.done()
    return config


def _parseTrack(t: Table, pools: dict) -> tuple[TrackConfig, ...]:
    if "track" not in t.data:
        t.get("track")
        return DEFAULT_TRACK
    conditions = []
    for index, item in enumerate(t.list("track")):
        c = t.tableAt("track", index, item)
        c.get("type", required=True)
        kind = c.choice("type", TRACK_TYPES, "")
        values: dict = {"kind": kind, "weight": c.integer("weight", 0, 253, 0)}
        if kind == "pool":
            pool = c.string("pool", required=True)
            if pool not in pools:
                c.fail("pool", f"expected the name of a pool ({oneOf(pools)}), got {pool!r}")
            values.update(pool=pool, minUp=c.integer("min_up", 1, len(pools[pool].servers), 1))
        elif kind == "command":
            values.update(
                command=_command(c, "command", c.get("command", required=True)),
                interval=c.duration("interval", 2.0),
                timeout=c.duration("timeout", 1.0),
                rise=c.integer("rise", 1, 100, 2),
                fall=c.integer("fall", 1, 100, 2),
            )
            if values["timeout"] > values["interval"]:
                c.fail("timeout", f"expected at most the interval ({values['interval']:g}s), got {values['timeout']:g}s")
        condition = TrackConfig(**values)
        if condition in conditions:
            c.fail("type", "expected each condition once")
        c.done()
        conditions.append(condition)
    return tuple(conditions)
