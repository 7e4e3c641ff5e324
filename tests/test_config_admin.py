"""
Tests for the [admin] and [daemon] tables (lbproxy.config.admin).
"""

from __future__ import annotations

import os

import pytest

from lbproxy.config import loadBytes
from lbproxy.config.admin import DEFAULT_ADMIN_BIND, AdminConfig, loadToken
from lbproxy.errors import ConfigError

BASE = """
[pools.web]
servers = [{ name = "a", address = "127.0.0.1:9001" }]

[listeners.web]
bind = "tcp:8080:interface=127.0.0.1"
pool = "web"
"""


def load(extra: str):
    return loadBytes((BASE + extra).encode(), "lb.toml")


def error(extra: str) -> str:
    with pytest.raises(ConfigError) as raised:
        load(extra)
    return str(raised.value)


def test_offWithoutTheTable():
    config = load("")
    assert config.admin is None
    assert config.daemon.grace == 30.0


def test_defaults():
    admin = load("[admin]\n").admin
    assert (admin.bind, admin.tokenFile, admin.allowRemote) == (DEFAULT_ADMIN_BIND, None, False)


@pytest.mark.parametrize(
    "bind", ["tcp:9900:interface=127.0.0.1", "tcp6:port=9900:interface=\\\\:\\\\:1", "unix:address=/tmp/lbproxy-admin.sock"]
)
def test_localBinds(bind):
    assert load(f'[admin]\nbind = "{bind}"\n').admin.bind == bind.replace("\\\\", "\\")


@pytest.mark.parametrize("bind", ["tcp:9900", "tcp:9900:interface=0.0.0.0", "tcp6:9900"])
def test_remoteBindRefused(bind):
    assert error(f'[admin]\nbind = "{bind}"\n') == (
        f"lb.toml: admin.bind: expected a loopback address (127.0.0.1, ::1) or a unix socket, got {bind!r}; "
        "set allow_remote = true to serve the admin pages and API beyond this machine"
    )
    assert load(f'[admin]\nbind = "{bind}"\nallow_remote = true\n').admin.allowRemote


def test_adminOverlapsAListener():
    assert "admin.bind" in error('[admin]\nbind = "tcp:8080:interface=127.0.0.1"\n')


def test_unknownKeys():
    assert error("[admin]\ntoken = 'x'\n") == "lb.toml: admin.token: unknown key"
    assert error("[daemon]\nwhatever = 1\n") == "lb.toml: daemon.whatever: unknown key"


def test_grace():
    assert load('[daemon]\ngrace = "2m"\n').daemon.grace == 120.0
    assert load("[daemon]\ngrace = 0\n").daemon.grace == 0.0
    assert "daemon.grace" in error('[daemon]\ngrace = "soon"\n')


def tokenFile(tmp_path, content: bytes, mode: int = 0o600) -> str:
    path = tmp_path / "admin.token"
    path.write_bytes(content)
    os.chmod(path, mode)
    return str(path)


def test_tokenRead(tmp_path):
    path = tokenFile(tmp_path, b"0123456789abcdef-token\n")
    admin = loadToken(AdminConfig(tokenFile=path), "lb.toml")
    assert admin.token == b"0123456789abcdef-token"
    assert "0123456789abcdef-token" not in repr(admin)


@pytest.mark.parametrize(
    "content, mode, message",
    [
        (b"0123456789abcdef", 0o644, "expected a file only its owner can access (chmod 600), got mode 0644"),
        (b"short", 0o600, "expected a token of 16 to 4096 bytes"),
        (b"0123456789 abcdef", 0o600, "expected a token of printable ASCII characters without spaces"),
    ],
)
def test_tokenRefused(tmp_path, content, mode, message):
    path = tokenFile(tmp_path, content, mode)
    with pytest.raises(ConfigError) as raised:
        loadToken(AdminConfig(tokenFile=path), "lb.toml")
    assert raised.value.key == "admin.token_file"
    assert message in str(raised.value)
    assert content.decode() not in str(raised.value) or content == b"short"


def test_tokenMissing(tmp_path):
    with pytest.raises(ConfigError) as raised:
        loadToken(AdminConfig(tokenFile=str(tmp_path / "nope")), "lb.toml")
    assert "cannot read" in str(raised.value)
