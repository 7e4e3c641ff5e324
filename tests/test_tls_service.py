"""
TLS in the service tree and on the command line: listeners wrapped in
TLS termination, L{BalancerService.reloadTLS}, SIGHUP, and C{--check} /
startup reading the certificates.
"""

from __future__ import annotations

import io
import os
import shutil
import signal

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher

from certs import CertificateAuthority
from lbproxy import tap
from lbproxy.config import loadFile
from lbproxy.errors import ConfigError
from lbproxy.http.factory import HTTPProxyFactory
from lbproxy.http.redirect import RedirectFactory
from lbproxy.service import BalancerService, loadListenerTLS
from lbproxy.tls.server import ServerTLS
from lbproxy.tls.transport import ServerTLSFactory

CONFIG = """\
[listeners.web]
bind = "tcp:18443:interface=127.0.0.1"
pool = "web"
mode = "http"

[listeners.web.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}, {{ cert = "{other}", key = "{otherKey}" }}]

[listeners.plain]
bind = "tcp:18080:interface=127.0.0.1"
mode = "http"
redirect_https = 18443

[listeners.raw]
bind = "tcp:18444:interface=127.0.0.1"
pool = "web"

[listeners.raw.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}]

[pools.web]
servers = [{{ name = "a", address = "127.0.0.1:18081" }}]
"""


@pytest.fixture
def setup(tmp_path):
    ca = CertificateAuthority(tmp_path / "ca")
    site = ca.issue("www.example.test")
    other = ca.issue("other.example.test")
    cert, key = tmp_path / "site.pem", tmp_path / "site.key"
    shutil.copy(site.chain, cert)
    shutil.copy(site.key, key)
    path = tmp_path / "lb.toml"
    path.write_text(CONFIG.format(cert=cert, key=key, other=other.chain, otherKey=other.key))
    return {"ca": ca, "config": path, "cert": cert, "key": key, "other": other}


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_listenersWrapped(setup):
    service = BalancerService(loadFile(str(setup["config"])), MemoryReactorClock())
    web = service.getServiceNamed("listener:web").switch.wrappedFactory
    assert isinstance(web, ServerTLSFactory)
    assert isinstance(web.wrappedFactory, HTTPProxyFactory)
    assert web.wrappedFactory.secure
    assert isinstance(service.getServiceNamed("listener:plain").switch.wrappedFactory, RedirectFactory)
    raw = service.getServiceNamed("listener:raw").switch.wrappedFactory
    assert isinstance(raw, ServerTLSFactory)
    assert sorted(service.serverTLS) == ["raw", "web"]
    assert all(isinstance(s, ServerTLS) for s in service.serverTLS.values())


def test_loadListenerTLSError(setup):
    setup["cert"].unlink()
    with pytest.raises(ConfigError) as raised:
        loadListenerTLS(loadFile(str(setup["config"])))
    assert raised.value.key == "listeners.web.tls.certificates[0].cert"


def test_reloadGood(setup, logged):
    service = BalancerService(loadFile(str(setup["config"])), MemoryReactorClock())
    before = {name: s.certificates for name, s in service.serverTLS.items()}
    fresh = setup["ca"].issue("fresh.example.test")
    shutil.copy(fresh.chain, setup["cert"])
    shutil.copy(fresh.key, setup["key"])
    assert service.reloadTLS() == {"listener:web": None, "listener:raw": None}
    for name, serverTLS in service.serverTLS.items():
        assert serverTLS.certificates is not before[name]
        assert serverTLS.certificates.certificates[0].names == ("fresh.example.test",)
    messages = [e["log_format"] for e in logged if e.get("log_namespace", "").startswith("lbproxy.service")]
    assert len(messages) == 2


def test_reloadBadKeepsThePrevious(setup, logged):
    service = BalancerService(loadFile(str(setup["config"])), MemoryReactorClock())
    before = service.serverTLS["web"].certificates
    shutil.copy(setup["other"].key, setup["key"])
    results = service.reloadTLS()
    assert service.serverTLS["web"].certificates is before
    assert results["listener:web"] == (
        f"{setup['config']}: listeners.web.tls.certificates[0].key: the private key in {setup['key']} "
        f"does not belong to the certificate in {setup['cert']}"
    )
    errors = [e for e in logged if e.get("log_level") is not None and e["log_level"].name == "error"]
    assert len(errors) == 2
    assert str(setup["key"]) in errors[0]["error"]


def test_reloadPools(setup, logged):
    service = BalancerService(loadFile(str(setup["config"])), MemoryReactorClock())
    calls = []

    class PoolTLS:
        def __init__(self, error=None):
            self.error = error

        def reload(self):
            calls.append(self)
            if self.error is not None:
                raise self.error

    pool = service.balancer.pools["web"]
    pool.tls = PoolTLS(ConfigError("lb.toml", "pools.web.tls.ca", "cannot read ca.pem"))
    results = service.reloadTLS()
    assert results["pool:web"] == "lb.toml: pools.web.tls.ca: cannot read ca.pem"
    pool.tls = PoolTLS()
    assert service.reloadTLS()["pool:web"] is None
    pool.tls = PoolTLS(RuntimeError("surprise"))
    assert service.reloadTLS()["pool:web"] == "RuntimeError: surprise"
    assert len(calls) == 3


class FakeReactor:
    def __init__(self):
        self.calls = []

    def callFromThread(self, f, *args):
        self.calls.append(f)


def test_hangupSchedulesAReload():
    reactor = FakeReactor()

    class Target:
        def __init__(self):
            self.reloads = []

        def reload(self, who):
            self.reloads.append(who)

    target = Target()
    previous = signal.getsignal(signal.SIGHUP)
    service = tap.ReloadOnHangup(target, reactor)
    service.startService()
    try:
        assert signal.getsignal(signal.SIGHUP) == service._received
        os.kill(os.getpid(), signal.SIGHUP)
        (scheduled,) = reactor.calls
        scheduled()
        assert target.reloads == ["SIGHUP"]
    finally:
        service.stopService()
    assert signal.getsignal(signal.SIGHUP) == previous


def test_usr1ReopensAfterThePreviousHandler():
    """
    SIGUSR1 runs the handler it replaced first (twistd's log rotation),
    then schedules the reopening of the access logs.
    """
    reactor = FakeReactor()
    before = []
    previous = signal.signal(signal.SIGUSR1, lambda number, frame: before.append(number))
    try:
        reopened = []
        service = tap.ReopenOnUSR1(lambda: reopened.append(True), reactor)
        service.startService()
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert before == [signal.SIGUSR1]
            (scheduled,) = reactor.calls
            scheduled()
            assert reopened == [True]
        finally:
            service.stopService()
    finally:
        signal.signal(signal.SIGUSR1, previous)


def parse(*argv):
    options = tap.Options()
    options.stdout, options.stderr = io.StringIO(), io.StringIO()
    code = None
    try:
        options.parseOptions(list(argv))
    except SystemExit as e:
        code = e.code
    return options, code


def test_checkReadsCertificates(setup):
    options, code = parse("--config", str(setup["config"]), "--check")
    assert code == 0
    assert "configuration OK" in options.stdout.getvalue()


@pytest.mark.parametrize("check", [True, False])
def test_badCertificateOneLine(setup, check):
    setup["cert"].write_text("not a certificate\n")
    options, code = parse("--config", str(setup["config"]), *(["--check"] if check else []))
    assert code == 1
    error = options.stderr.getvalue()
    assert error == (
        f"lbproxy: {setup['config']}: listeners.web.tls.certificates[0].cert: "
        f"expected PEM certificates in {setup['cert']}, found none that parse\n"
    )


def test_makeServiceUsesTheLoadedCertificates(setup, monkeypatch):
    monkeypatch.setattr("sys.excepthook", __import__("sys").excepthook)
    options, code = parse("--config", str(setup["config"]))
    assert code is None
    service = tap.makeService(options)
    assert service.serverTLS is options.serverTLS
    assert service.balancer is options.balancer
    assert isinstance(service.getServiceNamed("reload-on-hangup"), tap.ReloadOnHangup)
