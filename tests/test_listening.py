"""
Listeners that cannot listen: found when the config is loaded (two
listeners on one address), by C{--check} (a UNIX socket's missing
directory, an address this machine does not have), or at startup (a port
in use or not permitted): each is one line naming the listener, never a
traceback.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import socket
import subprocess

import pytest
from twisted.internet.defer import fail
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from lbproxy import demo, tap
from lbproxy.config import loadBytes
from lbproxy.config import endpoints as endpointsModule
from lbproxy.config.endpoints import checkOverlaps
from lbproxy.errors import ConfigError
from lbproxy.listening import ListenerService, ListenerStartError, checkListenAddresses
from processes import STARTUP, lbproxyArgv, processes, waitUntil  # noqa: F401 (a fixture)
from support import checkoutEnvironment, freePort, missing, twistd

POOL = """
[pools.web]
servers = [{ name = "a", address = "127.0.0.1:8081" }]
"""


def config(*binds: str) -> str:
    """
    A config with one listener per bind, named a, b, c...
    """
    listeners = "".join(
        f'[listeners.{chr(ord("a") + index)}]\nbind = "{bind}"\npool = "web"\n\n' for index, bind in enumerate(binds)
    )
    return listeners + POOL


def loadError(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        loadBytes(text.encode("utf-8"), "lb.toml")
    return str(info.value)


@pytest.fixture
def dualStack(monkeypatch):
    """
    An IPv6 wildcard takes IPv4 too (Linux's default), whatever this
    machine's net.ipv6.bindv6only says.
    """
    monkeypatch.setattr(endpointsModule, "ipv6DualStack", lambda: True)


# Two listeners on one address, found when the config is loaded.


@pytest.mark.parametrize(
    "binds, expected",
    [
        (
            ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1"),
            "listeners.a.bind and listeners.b.bind both listen on 127.0.0.1:8080",
        ),
        (
            ("tcp:8080", "tcp:8080:interface=127.0.0.1"),
            "listeners.a.bind and listeners.b.bind both listen on 127.0.0.1:8080 "
            "(listeners.a.bind takes port 8080 on every IPv4 address)",
        ),
        (
            ("tcp:8080:interface=127.0.0.1", "tcp:port=8080:interface=0.0.0.0"),
            "listeners.a.bind and listeners.b.bind both listen on 127.0.0.1:8080 "
            "(listeners.b.bind takes port 8080 on every IPv4 address)",
        ),
        (("tcp:8080", "tcp:8080:interface=0.0.0.0"), "listeners.a.bind and listeners.b.bind both listen on 0.0.0.0:8080"),
        (
            ("tcp6:8080", "tcp:8080:interface=127.0.0.1"),
            "listeners.a.bind and listeners.b.bind both listen on 127.0.0.1:8080 "
            "(listeners.a.bind takes port 8080 on every IPv6 and IPv4 address)",
        ),
        (
            ("tcp:8080", "tcp6:8080"),
            "listeners.a.bind and listeners.b.bind both listen on 0.0.0.0:8080 "
            "(listeners.b.bind takes port 8080 on every IPv6 and IPv4 address)",
        ),
        (
            ("tcp6:8080:interface=\\\\:\\\\:1", "tcp6:8080"),
            "listeners.a.bind and listeners.b.bind both listen on [::1]:8080 "
            "(listeners.b.bind takes port 8080 on every IPv6 and IPv4 address)",
        ),
        (
            ("tcp6:8080:interface=\\\\:\\\\:ffff\\\\:127.0.0.1", "tcp:8080:interface=127.0.0.1"),
            "listeners.a.bind and listeners.b.bind both listen on 127.0.0.1:8080",
        ),
        (
            ("tcp:8080:interface=127.0.0.1", "tcp:8081:interface=127.0.0.1", "tcp:8081:interface=127.0.0.1"),
            "listeners.b.bind and listeners.c.bind both listen on 127.0.0.1:8081",
        ),
        (
            ("unix:/run/lbproxy/lb.sock", "unix:address=/run/lbproxy/../lbproxy/lb.sock:lockfile=0"),
            "listeners.a.bind and listeners.b.bind both listen on unix socket /run/lbproxy/lb.sock",
        ),
        (
            ("systemd:domain=INET:index=0", "systemd:domain=INET6:index=0"),
            "listeners.a.bind and listeners.b.bind both listen on systemd socket index 0",
        ),
    ],
)
def test_overlap(dualStack, binds, expected):
    assert loadError(config(*binds)) == f"lb.toml: {expected}"


@pytest.mark.parametrize(
    "binds",
    [
        ("tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1", "tcp:0"),
        ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.2"),
        ("tcp:8080:interface=127.0.0.1", "tcp6:8080:interface=\\\\:\\\\:1"),
        ("tcp:8080", "tcp:8081"),
        ("unix:/run/lbproxy/a.sock", "unix:/run/lbproxy/b.sock"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=1", "systemd:domain=INET:name=web"),
    ],
)
def test_noOverlap(dualStack, binds):
    assert sorted(loadBytes(config(*binds).encode(), "lb.toml").listeners) == ["abc"[i] for i in range(len(binds))]


def test_ipv6OnlyWildcard(monkeypatch):
    """
    With net.ipv6.bindv6only = 1 the IPv6 wildcard leaves IPv4 alone, and
    "tcp:80" beside "tcp6:80" is the usual pair.
    """
    monkeypatch.setattr(endpointsModule, "ipv6DualStack", lambda: False)
    assert sorted(loadBytes(config("tcp:8080", "tcp6:8080").encode(), "lb.toml").listeners) == ["a", "b"]


def test_demoServersBesideTheDemoListener(dualStack):
    """
    The demo's web servers do not take the demo listener's port.
    """
    (listener,) = tap.demoConfig().listeners.values()
    checkOverlaps("demo", [("listeners.demo.bind", listener.bind)] + [(name, bind) for name, bind in demo.SERVERS])


# What --check finds without listening.


def check(tmp_path, *binds: str) -> tuple[int, str, str]:
    path = tmp_path / "lb.toml"
    path.write_text(config(*binds))
    options = tap.Options()
    options.stdout, options.stderr = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as info:
        options.parseOptions(["--check", "--config", str(path)])
    return info.value.code, options.stdout.getvalue(), options.stderr.getvalue()


UNIX_EXPECTED = "expected a socket path in an existing directory lbproxy can write to"


def test_unixMissingDirectory(tmp_path):
    bind = f"unix:address={tmp_path}/nonexistent-dir/x.sock"
    assert check(tmp_path, bind) == (
        1,
        "",
        f"lbproxy: {tmp_path}/lb.toml: listeners.a.bind: {UNIX_EXPECTED}, got {bind!r} "
        f"({tmp_path}/nonexistent-dir does not exist)\n",
    )


def test_unixDirectoryIsAFile(tmp_path):
    (tmp_path / "file").write_text("")
    bind = f"unix:{tmp_path}/file/x.sock"
    assert check(tmp_path, bind)[2] == (
        f"lbproxy: {tmp_path}/lb.toml: listeners.a.bind: {UNIX_EXPECTED}, got {bind!r} ({tmp_path}/file is not a directory)\n"
    )


def test_unixDirectoryNotWritable(tmp_path, monkeypatch):
    """
    (Root may write anywhere: the test says the directory is read-only.)
    """
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if path == str(tmp_path / "ro") else real(path, mode))
    (tmp_path / "ro").mkdir()
    bind = f"unix:{tmp_path}/ro/x.sock"
    assert check(tmp_path, bind)[2] == (
        f"lbproxy: {tmp_path}/lb.toml: listeners.a.bind: {UNIX_EXPECTED}, got {bind!r} "
        f"({tmp_path}/ro is not writable by user id {os.geteuid()})\n"
    )


def test_unixPathIsAnotherFile(tmp_path):
    (tmp_path / "x.sock").write_text("not a socket")
    bind = f"unix:{tmp_path}/x.sock"
    assert check(tmp_path, bind)[2] == (
        f"lbproxy: {tmp_path}/lb.toml: listeners.a.bind: expected a socket path where no other file is, "
        f"got {bind!r} ({tmp_path}/x.sock exists and is not a socket)\n"
    )


def test_unixStaleSocketIsFine(tmp_path):
    """
    A socket left by an earlier run is replaced when the listener starts.
    """
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(tmp_path / "x.sock"))
    assert check(tmp_path, f"unix:{tmp_path}/x.sock")[0] == 0


def test_nonLocalAddress():
    """
    An address no interface has: the throwaway bind to port 0 fails with
    EADDRNOTAVAIL.
    """
    tried = []

    def bindTest(family, address):
        tried.append((family, address))
        return errno.EADDRNOTAVAIL

    loaded = loadBytes(config("tcp:8080:interface=192.0.2.1", "tcp6:8080:interface=\\\\:\\\\:1").encode(), "lb.toml")
    with pytest.raises(ConfigError) as info:
        checkListenAddresses(loaded, bindTest)
    assert str(info.value) == (
        "lb.toml: listeners.a.bind: expected an IP address of this machine, got 'tcp:8080:interface=192.0.2.1' "
        "(no interface has 192.0.2.1; to listen on an address this machine takes over later, such as a "
        "virtual IP, set the sysctl net.ipv4.ip_nonlocal_bind = 1)"
    )
    assert tried == [(socket.AF_INET, ("192.0.2.1", 0))]


def test_wildcardsAndLoopbackAreLocal(tmp_path):
    assert check(tmp_path, "tcp:0", "tcp:0:interface=127.0.0.1", "tcp6:0")[0] == 0


def runCheck(path, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [twistd(), "lbproxy", "--check", "--config", str(path)],
        cwd=tmp_path, env=checkoutEnvironment(), capture_output=True, text=True, timeout=60,
    )


def test_twistdCheckRefusesWhatCannotListen(tmp_path):
    """
    The issue's cases, through the real command line: each is one line at
    --check time.
    """
    cases = [
        (
            config("unix:address=/nonexistent-dir/x.sock"),
            f"listeners.a.bind: {UNIX_EXPECTED}, got 'unix:address=/nonexistent-dir/x.sock' (/nonexistent-dir does not exist)",
        ),
        (
            config("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1"),
            "listeners.a.bind and listeners.b.bind both listen on 127.0.0.1:8080",
        ),
    ]
    if _nonLocalBindAllowed():
        pytest.fail("net.ipv4.ip_nonlocal_bind = 1 on this machine: 192.0.2.1 would be accepted")
    cases.append(
        (
            config("tcp:8080:interface=192.0.2.1"),
            "listeners.a.bind: expected an IP address of this machine, got 'tcp:8080:interface=192.0.2.1' "
            "(no interface has 192.0.2.1; to listen on an address this machine takes over later, such as a "
            "virtual IP, set the sysctl net.ipv4.ip_nonlocal_bind = 1)",
        )
    )
    for index, (text, line) in enumerate(cases):
        path = tmp_path / f"case{index}.toml"
        path.write_text(text)
        result = runCheck(path, tmp_path)
        assert (result.returncode, result.stdout, result.stderr) == (1, "", f"lbproxy: {path}: {line}\n")


def _nonLocalBindAllowed() -> bool:
    try:
        with open("/proc/sys/net/ipv4/ip_nonlocal_bind") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


# At startup: the socket cannot be opened.


class _FailingEndpoint:
    def __init__(self, error) -> None:
        self.error = error

    def listen(self, factory):
        return fail(self.error)


def startFailure(bind: str, error=None, source: str = "lb.toml") -> str:
    """
    The line of the L{ListenerStartError} a listener on C{bind} raises
    when listening fails with C{error} (by default, whatever its endpoint
    does on a memory reactor).
    """
    listener = loadBytes(config(bind).encode(), source).listeners["a"]
    service = ListenerService(listener, source, Factory(), MemoryReactor())
    if error is not None:
        service.endpoint = _FailingEndpoint(error)
    with pytest.raises(ListenerStartError) as info:
        service.privilegedStartService()
    return str(info.value)


def test_portInUse():
    error = CannotListenError("127.0.0.1", 8080, OSError(errno.EADDRINUSE, "Address already in use"))
    assert startFailure("tcp:8080:interface=127.0.0.1", error) == (
        "lb.toml: listeners.a.bind: cannot listen on 127.0.0.1:8080: Address already in use (another process listens there)"
    )


def test_privilegedPort():
    error = CannotListenError("", 80, OSError(errno.EACCES, "Permission denied"))
    assert startFailure("tcp:80", error) == (
        "lb.toml: listeners.a.bind: cannot listen on 0.0.0.0:80: Permission denied "
        "(ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    )


def test_unixLockHeld():
    error = CannotListenError(None, b"/run/lb.sock", "Cannot acquire lock")
    assert startFailure("unix:/run/lb.sock", error) == (
        "lb.toml: listeners.a.bind: cannot listen on unix socket /run/lb.sock: /run/lb.sock.lock is held "
        "(another process listens there)"
    )


def test_unixDirectoryGone():
    """
    The directory disappeared between the check and the start: the lock
    file cannot be made.
    """
    error = FileNotFoundError(errno.ENOENT, "No such file or directory", "4242", None, b"/gone/lb.sock.lock")
    assert startFailure("unix:/gone/lb.sock", error) == (
        "lb.toml: listeners.a.bind: cannot listen on unix socket /gone/lb.sock: /gone/lb.sock.lock: "
        "No such file or directory (the directory does not exist)"
    )


def test_systemdSocketNotPassed(monkeypatch):
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    assert startFailure("systemd:domain=INET:index=0") == (
        "lb.toml: listeners.a.bind: cannot listen on systemd socket index 0: systemd passed no such socket "
        "(start lbproxy from a systemd socket unit that passes it)"
    )


def test_briefListenErrorsPrintsListenerStartError():
    seen = []
    err = io.StringIO()
    hook = tap._BriefListenErrors(lambda *exc: seen.append(exc), err)
    error = ListenerStartError("lb.toml: listeners.a.bind: cannot listen on 127.0.0.1:80: Permission denied")
    hook(ListenerStartError, error, None)
    assert err.getvalue() == "lbproxy: cannot start: lb.toml: listeners.a.bind: cannot listen on 127.0.0.1:80: Permission denied\n"
    assert seen == []


# The real daemon.


def startAndFail(processes, tmp_path, text: str, prefix: list[str] | None = None):
    path = tmp_path / "lb.toml"
    path.write_text(text)
    process = processes([*(prefix or []), *lbproxyArgv(tmp_path, "--config", str(path))], "lbproxy")
    assert process.wait() == 1, process.describe()
    assert "Traceback" not in process.stdout + process.stderr, process.describe()
    assert not (tmp_path / "twistd.pid").exists()
    return path, process


def test_startUnixMissingDirectory(tmp_path, processes):
    """
    The issue's first case at startup: one line, no traceback.
    """
    path, process = startAndFail(processes, tmp_path, config("unix:address=/nonexistent-dir/x.sock"))
    assert process.stderr == (
        f"lbproxy: {path}: listeners.a.bind: {UNIX_EXPECTED}, got 'unix:address=/nonexistent-dir/x.sock' "
        "(/nonexistent-dir does not exist)\n"
    ), process.describe()


def test_startUnixSocketHeldByAnotherDaemon(tmp_path, processes):
    """
    Two daemons on one UNIX socket: the second says the first has it.
    """
    sock = tmp_path / "lb.sock"
    first = tmp_path / "first"
    first.mkdir()
    (first / "lb.toml").write_text(config(f"unix:{sock}"))
    running = processes(lbproxyArgv(first, "--config", str(first / "lb.toml")), "first")
    waitUntil(lambda: sock.exists() or not running.running(), "the first daemon's socket", STARTUP)
    assert running.running(), running.describe()
    path, process = startAndFail(processes, tmp_path, config(f"unix:{sock}"))
    assert process.stderr == (
        f"lbproxy: cannot start: {path}: listeners.a.bind: cannot listen on unix socket {sock}: "
        f"{sock}.lock is held (another process listens there)\n"
    ), process.describe()
    assert running.running()


def test_startPrivilegedPort(tmp_path, processes):
    """
    A port below 1024 without the privilege to bind it (root is started
    without CAP_NET_BIND_SERVICE).
    """
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            unprivileged = int(f.read())
    except OSError:
        unprivileged = 1024
    if unprivileged <= 1023:
        pytest.skip(f"net.ipv4.ip_unprivileged_port_start is {unprivileged}: every port may be bound")
    prefix = []
    if os.geteuid() == 0:
        setpriv = _setpriv()
        prefix = [setpriv, "--inh-caps=-net_bind_service", "--bounding-set=-net_bind_service", "--"]
    path, process = startAndFail(processes, tmp_path, config("tcp:1023:interface=127.0.0.1"), prefix)
    assert process.stderr == (
        f"lbproxy: cannot start: {path}: listeners.a.bind: cannot listen on 127.0.0.1:1023: Permission denied "
        "(ports below 1024 need root or CAP_NET_BIND_SERVICE)\n"
    ), process.describe()


def _setpriv() -> str:
    path = shutil.which("setpriv")
    if path is None:
        missing("setpriv (util-linux) is not installed")
    return path


def test_startListensOnUnixSocket(tmp_path, processes):
    """
    A UNIX socket in a writable directory serves: the check lets the good
    case through.
    """
    backend = socket.socket()
    backend.bind(("127.0.0.1", freePort()))
    backend.listen()
    sock = tmp_path / "lb.sock"
    (tmp_path / "lb.toml").write_text(config(f"unix:{sock}").replace("127.0.0.1:8081", f"127.0.0.1:{backend.getsockname()[1]}"))
    running = processes(lbproxyArgv(tmp_path, "--config", str(tmp_path / "lb.toml")), "lbproxy")
    waitUntil(lambda: sock.exists() or not running.running(), "the daemon's socket", STARTUP)
    assert running.running(), running.describe()
    with backend, socket.socket(socket.AF_UNIX) as client:
        client.connect(str(sock))
        client.sendall(b"hello")
        backend.settimeout(STARTUP)
        accepted, _ = backend.accept()
        with accepted:
            accepted.settimeout(STARTUP)
            assert accepted.recv(5) == b"hello"
