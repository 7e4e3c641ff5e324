"""
The heartbeat's parts that touch the system, with real processes and
sockets on loopback: commands and notify, the advert socket (TTL and
kernel timestamps), the announcement packets, freebind listeners.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from lbproxy.config.ha import NotifyConfig
from lbproxy.errors import CannotStart
from lbproxy.ha import addresses as addressesModule
from lbproxy.ha.addresses import NetlinkAddresses, gratuitousARP, unsolicitedNA
from lbproxy.ha.commands import runCommand
from lbproxy.ha.notify import CommandNotifier
from lbproxy.ha.transport import AdvertSocket, openAdvertSocket
from lbproxy.sockets import BuiltSocketEndpoint, listeningSocket, serverEndpoint, tcpBind
from support import freePort
from hamachines import VIPS, haConfig


class CommandTests(TestCase):
    async def test_statusAndOutput(self):
        result = await runCommand(reactor, ("/bin/sh", "-c", "echo hello; echo oops >&2; exit 3"), 10)
        assert result.status == 3 and not result.ok
        assert b"hello" in result.output and b"oops" in result.output
        assert result.describe() == "exit status 3: hello"

    async def test_timeoutKills(self):
        result = await runCommand(reactor, ("/bin/sleep", "30"), 0.2)
        assert result.timedOut and not result.ok
        assert result.describe() == "killed after its timeout"

    async def test_missingProgram(self):
        result = await runCommand(reactor, ("/nonexistent/program",), 5)
        assert not result.ok

    async def test_outputBounded(self):
        result = await runCommand(reactor, ("/bin/sh", "-c", "head -c 100000 /dev/zero"), 10)
        assert result.ok and len(result.output) == 4096

    async def test_environment(self):
        result = await runCommand(reactor, ("/bin/sh", "-c", 'echo "$LBPROXY_HA_GROUP $SECRET"'), 10, {"LBPROXY_HA_GROUP": "51"})
        assert result.output.strip() == b"51"


class NotifyTests(TestCase):
    async def test_inOrderWithArguments(self):
        import shutil
        import tempfile

        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "notified")
        script = os.path.join(directory, "notify.sh")
        with open(script, "w") as f:
            f.write(f'#!/bin/sh\nsleep 0.$((RANDOM % 3)) 2>/dev/null; echo "$*" >> {path}\n')
        os.chmod(script, 0o755)
        notifier = CommandNotifier(NotifyConfig(master=(script, "web"), backup=(script,), stop=(script,)), 51, reactor)
        first = notifier.notify("backup", "init", "started")
        notifier.notify("master", "backup", "no master heard")
        assert (await notifier.notify("fault", "master", "broken")) is None
        last = notifier.notify("init", "master", "stopped")
        await first
        await last
        with open(path) as f:
            assert f.read().splitlines() == [
                "backup init started",
                "web master backup no master heard",
                "stop master stopped",
            ]


class AdvertSocketTests(TestCase):
    """
    Two advert sockets on loopback addresses (127.0.0.0/8 is all local).
    """

    def test_sendAndReceive(self):
        port = freePort()
        one = haConfig(address=ipaddress.ip_address("127.0.0.1"), peers=(ipaddress.ip_address("127.0.0.2"),), port=port)
        two = haConfig(address=ipaddress.ip_address("127.0.0.2"), peers=(ipaddress.ip_address("127.0.0.1"),), port=port)
        received = []
        done = Deferred()

        def got(data, source, ttl, delay):
            received.append((data, source, ttl, delay))
            done.callback(None)

        sender = AdvertSocket(openAdvertSocket(one, 0), one, lambda *a: None, reactor)
        receiver = AdvertSocket(openAdvertSocket(two, 0), two, got, reactor)
        receiver.startReading()
        self.addCleanup(sender.close)
        self.addCleanup(receiver.close)
        sender.send(b"advert")

        def check(_):
            data, source, ttl, delay = received[0]
            assert (data, source, ttl) == (b"advert", ipaddress.ip_address("127.0.0.1"), 255)
            assert 0 <= delay < 5

        return done.addCallback(check)

    def test_bindFailsForAForeignAddress(self):
        config = haConfig(address=ipaddress.ip_address("198.51.100.7"), port=freePort())
        with pytest.raises(OSError) as caught:
            openAdvertSocket(config, 0)
        assert caught.value.errno == errno.EADDRNOTAVAIL


def test_gratuitousARP():
    mac = bytes.fromhex("020000000001")
    frame = gratuitousARP(mac, ipaddress.ip_address("192.0.2.100"))
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac and frame[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = struct.unpack("!HHBBH6s4s6s4s", frame[14:])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    assert sha == mac and spa == tpa == bytes([192, 0, 2, 100]) and tha == b"\0" * 6


def test_unsolicitedNA():
    mac = bytes.fromhex("020000000001")
    message = unsolicitedNA(mac, ipaddress.ip_address("2001:db8::100"))
    kind, code, checksum, flags = struct.unpack("!BBHI", message[:8])
    assert (kind, code, checksum) == (136, 0, 0)
    assert flags == 0x20000000
    assert message[8:24] == ipaddress.ip_address("2001:db8::100").packed
    assert message[24:] == b"\x02\x01" + mac


def test_missingCapabilities(monkeypatch):
    monkeypatch.setattr(addressesModule, "capabilities", lambda: 1 << addressesModule.CAP_NET_RAW)
    with pytest.raises(CannotStart) as caught:
        NetlinkAddresses("eth0", VIPS, reactor).open()
    assert str(caught.value).startswith("ha: managing the virtual addresses needs CAP_NET_ADMIN (run lbproxy as root")


def test_missingInterface():
    if not addressesModule.capabilities() & (1 << addressesModule.CAP_NET_ADMIN):
        pytest.skip("needs CAP_NET_ADMIN (root)")
    with pytest.raises(CannotStart) as caught:
        NetlinkAddresses("lbha-absent0", VIPS, reactor).open()
    assert str(caught.value) == "ha: interface 'lbha-absent0' does not exist"


def test_tcpBind():
    assert tcpBind("tcp:80:interface=192.0.2.100") == (socket.AF_INET, "192.0.2.100", 80, 50)
    assert tcpBind("tcp6:port=80:interface=2001\\:db8\\:\\:100") == (socket.AF_INET6, "2001:db8::100", 80, 50)
    assert tcpBind("tcp:8080") == (socket.AF_INET, "0.0.0.0", 8080, 50)
    assert tcpBind("unix:/run/x.sock") is None
    with pytest.raises(ValueError):
        serverEndpoint(reactor, "unix:/run/x.sock", freebind=True)


def test_freebindBindsAnAbsentAddress():
    """
    Without freebind, an address the host does not have cannot be bound;
    with it, it can (no packet is sent).
    """
    with pytest.raises(OSError) as caught:
        listeningSocket(socket.AF_INET, "198.51.100.7", freePort(), 5)
    assert caught.value.errno == errno.EADDRNOTAVAIL
    sock = listeningSocket(socket.AF_INET, "198.51.100.7", freePort(), 5, freebind=True)
    sock.close()
    sock6 = listeningSocket(socket.AF_INET6, "2001:db8::7", freePort("::1"), 5, freebind=True)
    sock6.close()


class BuiltSocketTests(TestCase):
    async def test_serves(self):
        port = freePort()
        endpoint = BuiltSocketEndpoint(reactor, socket.AF_INET, "127.0.0.1", port, 50, freebind=True)

        class Hello(Protocol):
            def connectionMade(self):
                self.transport.write(b"hi")
                self.transport.loseConnection()

        listening = await endpoint.listen(Factory.forProtocol(Hello))
        self.addCleanup(listening.stopListening)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.setblocking(False)
            data = b""
            for _ in range(100):
                await deferLater(reactor, 0.02, lambda: None)
                try:
                    data += client.recv(10)
                except BlockingIOError:
                    continue
                if data:
                    break
        assert data == b"hi"

    async def test_bindErrorIsCannotListen(self):
        from twisted.internet.error import CannotListenError

        endpoint = BuiltSocketEndpoint(reactor, socket.AF_INET, "198.51.100.7", freePort(), 50)
        with pytest.raises(CannotListenError):
            await endpoint.listen(Factory.forProtocol(Protocol))
