"""
End to end with the real daemon (C{twistd -n lbproxy}) and OpenSSL servers:
SNI passthrough routes curl's TLS connections by name, and an HTTP
listener's pool reaches its server over verified TLS.
"""

from __future__ import annotations

import subprocess

import pytest

from certs import CertificateAuthority
from processes import processes, startLbproxy  # noqa: F401 (fixture)
from support import freePort, requireExecutable

pytestmark = pytest.mark.integration


def opensslServer(processes, openssl: str, issued, port: int, label: str):  # noqa: F811
    server = processes(
        [
            openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-www", "-quiet",
            "-cert", str(issued.chain), "-key", str(issued.key),
        ],
        label,
    )
    server.waitForPort(port)
    return server


def curl(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [requireExecutable("curl"), "-sS", "--max-time", "10", *arguments],
        capture_output=True,
        timeout=30,
    )


def test_sniPassthroughAndBackendTLS(tmp_path, processes):  # noqa: F811
    openssl = requireExecutable("openssl")
    requireExecutable("curl")
    ca = CertificateAuthority(tmp_path / "ca")
    portA, portB, sniPort, webPort = freePort(), freePort(), freePort(), freePort()
    opensslServer(processes, openssl, ca.issue("a.example.test"), portA, "server-a")
    opensslServer(processes, openssl, ca.issue("b.example.test", "*.b.example.test"), portB, "server-b")
    config = f"""
[listeners.sni]
bind = "tcp:{sniPort}:interface=127.0.0.1"
pool = "a"
sni_fallback = "reject"
routes = [
    {{ sni = "a.example.test", pool = "a" }},
    {{ sni = "*.b.example.test", pool = "b" }},
]

[listeners.web]
bind = "tcp:{webPort}:interface=127.0.0.1"
mode = "http"
pool = "secure"

[pools.a]
servers = [{{ name = "a1", address = "127.0.0.1:{portA}" }}]

[pools.b]
servers = [{{ name = "b1", address = "127.0.0.1:{portB}" }}]

[pools.secure]
reuse.max_idle = 0
servers = [{{ name = "s1", address = "127.0.0.1:{portB}" }}]

[pools.secure.tls]
ca = "{ca.cert}"
server_name = "www.b.example.test"
"""
    daemon = startLbproxy(processes, tmp_path, config, sniPort)
    daemon.waitForPort(webPort)
    # Each certificate is valid for its own names only: curl verifying
    # both shows each name reached its own server.
    for name in ("a.example.test", "www.b.example.test"):
        result = curl("--resolve", f"{name}:{sniPort}:127.0.0.1", "--cacert", str(ca.cert), f"https://{name}:{sniPort}/")
        assert result.returncode == 0, (name, result.stderr, daemon.describe())
        assert b"s_server" in result.stdout
    # No route for this name: the listener's pool, whose certificate is
    # not valid for it.
    result = curl("--resolve", f"c.example.test:{sniPort}:127.0.0.1", "--cacert", str(ca.cert), f"https://c.example.test:{sniPort}/")
    assert result.returncode != 0
    assert b"no alternative certificate subject name matches" in result.stderr or b"SSL" in result.stderr
    # HTTP in, verified TLS out.
    result = curl(f"http://127.0.0.1:{webPort}/")
    assert result.returncode == 0, (result.stderr, daemon.describe())
    assert b"s_server" in result.stdout
    daemon.stop()
    log = daemon.stdout
    assert "sni -> a/a1 sni=a.example.test " in log, log
    assert "sni -> b/b1 sni=www.b.example.test " in log, log
    assert "sni -> a/a1 sni=c.example.test " in log, log
