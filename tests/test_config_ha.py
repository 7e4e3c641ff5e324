"""
The [ha] table and the listeners' freebind key: defaults, every bad value
as one line naming the key, and the key file's checks.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from lbproxy.config import loadBytes
from lbproxy.config.ha import DEFAULT_TRACK, MULTICAST, TrackConfig, loadFiles
from lbproxy.errors import ConfigError

KEY = b"0123456789abcdef0123456789abcdef\n"


@pytest.fixture
def keyFile(tmp_path) -> Path:
    path = tmp_path / "ha.key"
    path.write_bytes(KEY)
    path.chmod(0o600)
    return path


def document(keyFile: Path, ha: str = "", listener: str = 'bind = "tcp:80:interface=192.0.2.100"') -> str:
    return f"""
[ha]
interface = "eth0"
address = "192.0.2.11"
peers = ["192.0.2.12"]
key_file = "{keyFile}"
virtual_addresses = ["192.0.2.100/24", "2001:db8::100/64"]
{ha}

[listeners.web]
{listener}
pool = "web"

[pools.web]
servers = [{{ name = "a", address = "192.0.2.21:8080" }}, {{ name = "b", address = "192.0.2.22:8080" }}]

[pools.api]
servers = [{{ name = "a", address = "192.0.2.23:8080" }}]
"""


def load(text: str):
    """
    Load C{text}, then read the files of its [ha] table, as the daemon
    and --check do.
    """
    from dataclasses import replace

    config = loadBytes(text.encode(), "lb.toml")
    if config.ha is not None:
        config = replace(config, ha=loadFiles(config.ha, "lb.toml"))
    return config


def error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(text)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_defaults(keyFile):
    config = load(document(keyFile))
    ha = config.ha
    assert (ha.group, ha.priority, ha.interval, ha.preempt, ha.preemptDelay) == (1, 100, 1.0, True, 0.0)
    assert ha.peers == (ipaddress.ip_address("192.0.2.12"),)
    assert ha.multicastGroup is None
    assert (ha.port, ha.channelPort, ha.handoverTimeout) == (5798, 5799, 3.0)
    assert (ha.announceCount, ha.announceInterval, ha.addressLifetime) == (5, 1.0, 3)
    assert ha.key == KEY.strip()
    assert ha.track == DEFAULT_TRACK
    assert "0123456789abcdef" not in repr(ha)


def test_noHA(keyFile):
    text = document(keyFile)
    withoutHA = text[text.index("[listeners.web]"):]
    config = load(withoutHA)
    assert config.ha is None
    assert config.listeners["web"].freebind is False


def test_freebindOnAVirtualAddress(keyFile):
    assert load(document(keyFile)).listeners["web"].freebind is True
    other = load(document(keyFile, listener='bind = "tcp:8080:interface=192.0.2.11"'))
    assert other.listeners["web"].freebind is False
    six = load(document(keyFile, listener='bind = "tcp6:port=80:interface=2001\\\\:db8\\\\:\\\\:100"'))
    assert six.listeners["web"].freebind is True
    off = load(document(keyFile, listener='bind = "tcp:80:interface=192.0.2.100"\nfreebind = false'))
    assert off.listeners["web"].freebind is False
    on = load(document(keyFile, listener='bind = "tcp:8080"\nfreebind = true'))
    assert on.listeners["web"].freebind is True


def test_freebindOnlyOnTCP(keyFile, tmp_path):
    message = error(document(keyFile, listener=f'bind = "unix:{tmp_path}/s"\nfreebind = true'))
    assert message.startswith('lb.toml: listeners.web.freebind: expected only on a "tcp:" or "tcp6:" listener')


def test_multicast(keyFile):
    config = load(document(keyFile, "channel_port = 0").replace('peers = ["192.0.2.12"]\n', ""))
    assert config.ha.multicastGroup == MULTICAST[4]
    assert config.ha.channelPort == 0
    assert config.ha.peers == ()


@pytest.mark.parametrize(
    "ha, expected",
    [
        ("priority = 255", "ha.priority: expected an integer from 1 to 254, got 255"),
        ("priority = 0", "ha.priority: expected an integer from 1 to 254, got 0"),
        ("group = 256", "ha.group: expected an integer from 1 to 255, got 256"),
        ('interval = "50ms"', 'ha.interval: expected a multiple of 10ms from "100ms" to "40.95s", got \'50ms\''),
        ('interval = "105ms"', 'ha.interval: expected a multiple of 10ms'),
        ('interval = "41s"', 'ha.interval: expected a multiple of 10ms'),
        ('preempt = "yes"', "ha.preempt: expected true or false"),
        ('multicast_group = "224.0.0.18"', "ha.multicast_group: expected no multicast group with peers"),
        ("handover_timeout = 61", "ha.handover_timeout: expected at most 60s"),
        ("address_lifetime = 1", "ha.address_lifetime: expected an integer from 2 to 3600, got 1"),
        ("unknown = 1", "ha.unknown: unknown key"),
        ('[ha.notify]\nmaster = "script"', "ha.notify.master: expected a command as an array of strings"),
        ('[ha.notify]\nmaster = ["script"]', "ha.notify.master: expected a command as an array of strings, its program an absolute path"),
        ('[ha.notify]\nmaster = ["/nonexistent/script"]', "ha.notify.master: expected an executable program, got '/nonexistent/script'"),
        ('[ha.notify]\nstart = ["/bin/true"]', "ha.notify.start: unknown key"),
        ('[[ha.track]]\ntype = "pool"\npool = "nope"', "ha.track[0].pool: expected the name of a pool (one of api, web), got 'nope'"),
        ('[[ha.track]]\ntype = "pool"\npool = "web"\nmin_up = 3', "ha.track[0].min_up: expected an integer from 1 to 2, got 3"),
        ('[[ha.track]]\ntype = "disk"', "ha.track[0].type: expected one of command, listeners, pool, pools, got 'disk'"),
        ('[[ha.track]]\npool = "web"', "ha.track[0].type: required key is missing"),
        ('[[ha.track]]\ntype = "listeners"\nweight = 254', "ha.track[0].weight: expected an integer from 0 to 253, got 254"),
        ('[[ha.track]]\ntype = "listeners"\npool = "web"', "ha.track[0].pool: unknown key"),
        ('[[ha.track]]\ntype = "listeners"\n[[ha.track]]\ntype = "listeners"', "ha.track[1].type: expected each condition once"),
        (
            '[[ha.track]]\ntype = "command"\ncommand = ["/bin/true"]\ninterval = "1s"\ntimeout = "2s"',
            "ha.track[0].timeout: expected at most the interval (1s), got 2s",
        ),
    ],
)
def test_badValues(keyFile, ha, expected):
    assert expected in error(document(keyFile, ha))


@pytest.mark.parametrize(
    "replace, by, expected",
    [
        ('address = "192.0.2.11"', 'address = "not an address"', 'ha.address: expected an IP address such as "192.0.2.11"'),
        ('address = "192.0.2.11"\n', "", "ha.address: required key is missing"),
        ('peers = ["192.0.2.12"]', 'peers = ["2001:db8::12"]', "ha.peers[0]: expected an IPv4 address like address"),
        ('peers = ["192.0.2.12"]', 'peers = ["192.0.2.11"]', "ha.peers[0]: expected another node's address, once"),
        ('interface = "eth0"', 'interface = "eth0; rm -rf /"', "ha.interface: expected a network interface name"),
        ('"192.0.2.100/24", ', "", ""),
        ('["192.0.2.100/24", "2001:db8::100/64"]', "[]", "ha.virtual_addresses: expected 1 to 20 addresses, got 0"),
        ('"192.0.2.100/24"', '"192.0.2.100"', 'ha.virtual_addresses[0]: expected the prefix length too, such as "192.0.2.100/24"'),
        ('"192.0.2.100/24"', '"192.0.2.11/24"', "ha.virtual_addresses[0]: expected an address other than this node's own"),
        ('"192.0.2.100/24"', '"224.0.0.1/24"', "ha.virtual_addresses[0]: expected a unicast address"),
        ('"192.0.2.100/24"', '"2001:db8::100/64"', "ha.virtual_addresses[1]: expected each address once"),
        ('"192.0.2.100/24"', '"192.0.2.100/99"', "ha.virtual_addresses[0]: expected an address with its prefix length"),
    ],
)
def test_badAddresses(keyFile, replace, by, expected):
    text = document(keyFile).replace(replace, by)
    if not expected:
        assert load(text).ha.virtualAddresses == (ipaddress.ip_interface("2001:db8::100/64"),)
    else:
        assert expected in error(text)


def test_channelNeedsPeers(keyFile):
    text = document(keyFile, "channel_port = 5799").replace('peers = ["192.0.2.12"]\n', "")
    assert "ha.channel_port: expected 0 without peers" in error(text)


def test_keyFileReadableByOthers(keyFile):
    keyFile.chmod(0o644)
    message = error(document(keyFile))
    assert "ha.key_file: expected a file only its owner can access (chmod 600), got mode 0644" in message
    assert "0123456789abcdef" not in message


def test_keyFileMissingShortOrNotAFile(keyFile, tmp_path):
    assert "ha.key_file: cannot read" in error(document(tmp_path / "absent"))
    keyFile.write_bytes(b"short\n")
    assert "ha.key_file: expected a key of 16 to 4096 bytes" in error(document(keyFile))
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    assert "ha.key_file: " in error(document(directory))


def test_track(keyFile):
    config = load(document(keyFile, """
[[ha.track]]
type = "pool"
pool = "web"
min_up = 2
weight = 50

[[ha.track]]
type = "command"
command = ["/bin/true", "--flag"]
interval = "5s"
fall = 3
"""))
    assert config.ha.track == (
        TrackConfig("pool", weight=50, pool="web", minUp=2),
        TrackConfig("command", command=("/bin/true", "--flag"), interval=5.0, fall=3),
    )
    assert config.ha.track[0].name == "pool web has at least 2 servers up"
    assert config.ha.track[1].name == "command /bin/true"


def test_noTracking(keyFile):
    assert load(document(keyFile, "track = []")).ha.track == ()


def test_filesReadOnlyByLoadFiles(tmp_path):
    """
    Loading the table reads no file (as with TLS files, they are read when
    the daemon starts and by --check).
    """
    config = loadBytes(document(tmp_path / "absent").encode(), "lb.toml")
    assert config.ha.key == b""
    with pytest.raises(ConfigError):
        loadFiles(config.ha, "lb.toml")


def test_examplePair():
    """
    The example pair's files: the same group, addresses and interval,
    each other's peers, the primary with the higher priority.
    """
    root = Path(__file__).parent.parent / "conf"
    primary, backup = (loadBytes((root / name).read_bytes(), name).ha for name in ("ha-primary.toml", "ha-backup.toml"))
    assert (primary.group, primary.virtualAddresses, primary.interval) == (
        backup.group, backup.virtualAddresses, backup.interval
    )
    assert primary.peers == (backup.address,) and backup.peers == (primary.address,)
    assert primary.priority > backup.priority


def test_notifyCommands(keyFile):
    config = load(document(keyFile, '[ha.notify]\nmaster = ["/bin/true", "x"]\ntimeout = "2s"'))
    assert config.ha.notify.master == ("/bin/true", "x")
    assert config.ha.notify.backup == ()
    assert config.ha.notify.timeout == 2.0
    assert os.access("/bin/true", os.X_OK)
