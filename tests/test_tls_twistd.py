"""
TLS termination in the real daemon (C{twistd -n lbproxy}): certificates
reloaded on SIGHUP, a bad reload logged and ignored, and unusable
certificates refused at startup and by C{--check} in one line.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import ssl
import subprocess

from cryptography import x509

from certs import CertificateAuthority
from peers import startSink
from processes import lbproxyArgv, processes, startLbproxy, waitUntil  # noqa: F401 (fixture)
from support import checkoutEnvironment, freePort

CONFIG = """\
[listeners.web]
bind = "tcp:{port}:interface=127.0.0.1"
pool = "app"
mode = "http"

[listeners.web.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}]

[pools.app]
servers = [{{ name = "a", address = "127.0.0.1:{backend}" }}]
"""


def presented(port: int, ca) -> str:
    """
    The common name of the certificate the daemon presents now.
    """
    context = ssl.create_default_context(cafile=str(ca.cert))
    context.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="www.example.test") as s:
            der = s.getpeercert(binary_form=True)
    certificate = x509.load_der_x509_certificate(der)
    return certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value


def install(issued, cert, key) -> None:
    shutil.copy(issued.chain, cert)
    shutil.copy(issued.key, key)


def request(s: ssl.SSLSocket) -> bytes:
    """
    One keep-alive request on C{s}; the sink's JSON report.
    """
    s.sendall(b"GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = int(re.search(rb"(?i)content-length: *([0-9]+)", head).group(1))
    while len(body) < length:
        body += s.recv(65536)
    return json.loads(body)


def test_sighupReload(processes, tmp_path):
    ca = CertificateAuthority(tmp_path / "ca")
    first = ca.issue("www.example.test", commonName="first")
    second = ca.issue("www.example.test", commonName="second")
    cert, key = tmp_path / "site.pem", tmp_path / "site.key"
    install(first, cert, key)
    _, backend = startSink(processes, "app")
    port = freePort()
    config = CONFIG.format(port=port, cert=cert, key=key, backend=backend)
    daemon = startLbproxy(processes, tmp_path, config, port)
    assert presented(port, ca) == "first"

    # A connection made before the reload goes on afterwards.
    context = ssl.create_default_context(cafile=str(ca.cert))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    established = context.wrap_socket(raw, server_hostname="www.example.test")
    try:
        assert request(established)["proto"] == "https"

        install(second, cert, key)
        daemon.popen.send_signal(signal.SIGHUP)
        waitUntil(lambda: presented(port, ca) == "second", "the new certificate after SIGHUP")
        assert "reload asked by SIGHUP applied" in daemon.stdout
        again = request(established)
        assert again["requests"] == 2

        # A key that does not match: the reload is refused in one line,
        # the second certificate stays.
        shutil.copy(first.key, key)
        daemon.popen.send_signal(signal.SIGHUP)
        waitUntil(lambda: "refused" in daemon.stdout, "the refused reload in the log")
        failures = [line for line in daemon.stdout.splitlines() if "reload asked by SIGHUP refused" in line]
        assert len(failures) == 1
        assert f"listeners.web.tls.certificates[0].key: the private key in {key} does not belong" in failures[0]
        assert presented(port, ca) == "second"

        # Gone altogether: the same.
        cert.unlink()
        daemon.popen.send_signal(signal.SIGHUP)
        waitUntil(lambda: "No such file" in daemon.stdout, "the second refused reload in the log")
        assert presented(port, ca) == "second"
        assert daemon.running()
    finally:
        established.close()


def test_badCertificateAtStartupAndCheck(processes, tmp_path):
    ca = CertificateAuthority(tmp_path / "ca")
    old = ca.issue("www.example.test", expired=True)
    port = freePort()
    path = tmp_path / "lb.toml"
    path.write_text(CONFIG.format(port=port, cert=old.chain, key=old.key, backend=freePort()))
    for extra in (["--check"], []):
        result = subprocess.run(
            lbproxyArgv(tmp_path, "--config", str(path), *extra),
            capture_output=True,
            text=True,
            timeout=60,
            env=checkoutEnvironment(),
            cwd=tmp_path,
        )
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"lbproxy: {path}: listeners.web.tls.certificates[0].cert: certificate in {old.chain} expired on ")
