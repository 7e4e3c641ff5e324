"""
Tests for L{lbproxy.tap}: the command line of C{twistd lbproxy} and the
service tree it builds.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address
from twisted.application.service import IService, IServiceMaker
from twisted.internet.error import CannotListenError
from twisted.plugin import getPlugins
from zope.interface.verify import verifyObject

from lbproxy import demo, tap
from lbproxy.core.context import FlowContext
from lbproxy.interfaces import IBackendSelector, ISelectorPlugin
from lbproxy.core.pool import Server
from lbproxy.service import BalancerService
from support import checkoutEnvironment, readmeCodeBlock, twistd

GOOD = """\
[listeners.web]
bind = "tcp:0:interface=127.0.0.1"
pool = "web"

[listeners.admin]
bind = "tcp:0:interface=127.0.0.1"
pool = "web"

[pools.web]
servers = [
    { name = "a", address = "127.0.0.1:8081" },
    { name = "b", address = "127.0.0.1:8082" },
]

[pools.web.health]
type = "tcp"

[pools.other]
servers = [{ name = "c", address = "127.0.0.1:8083" }]
"""

BAD = GOOD.replace('name = "b", address = "127.0.0.1:8082"', 'name = "b", address = "127.0.0.1:8082", weight = -1')
BAD_MESSAGE = "pools.web.servers[1].weight: expected an integer from 0 to 256, got -1"


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    return str(path)


@pytest.fixture
def bad(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    return str(path)


def parse(*argv: str) -> tuple[tap.Options, io.StringIO, io.StringIO]:
    options = tap.Options()
    options.stdout = io.StringIO()
    options.stderr = io.StringIO()
    options.parseOptions(list(argv))
    return options, options.stdout, options.stderr


def parseExit(*argv: str) -> tuple[int, str, str]:
    """
    Parse C{argv}, which must end the process: (exit status, stdout,
    stderr).
    """
    options = tap.Options()
    options.stdout = io.StringIO()
    options.stderr = io.StringIO()
    with pytest.raises(SystemExit) as info:
        options.parseOptions(list(argv))
    return info.value.code, options.stdout.getvalue(), options.stderr.getvalue()


# Options


def test_defaultIsTheDemo():
    options, out, err = parse()
    assert options.demo
    assert options.config == tap.demoConfig()
    assert options.config.source == tap.DEMO_SOURCE
    assert (out.getvalue(), err.getvalue()) == ("", "")


def test_configFile(good):
    options, out, err = parse("--config", good)
    assert not options.demo
    assert options.config.source == good
    assert sorted(options.config.listeners) == ["admin", "web"]
    assert (out.getvalue(), err.getvalue()) == ("", "")


def test_configShortOption(good):
    options, _, _ = parse("-c", good)
    assert options.config.source == good


def test_badConfigOneLine(bad):
    """
    A bad config ends the process with status 1 and one line on stderr.
    """
    assert parseExit("--config", bad) == (1, "", f"lbproxy: {bad}: {BAD_MESSAGE}\n")


def test_missingConfigOneLine(tmp_path):
    path = tmp_path / "nowhere.toml"
    assert parseExit("--config", str(path)) == (
        1,
        "",
        f"lbproxy: {path}: cannot read config file: No such file or directory\n",
    )


def test_checkGood(good):
    assert parseExit("--check", "--config", good) == (0, f"{good}: configuration OK\n", "")


def test_checkBad(bad):
    assert parseExit("--config", bad, "--check") == (1, "", f"lbproxy: {bad}: {BAD_MESSAGE}\n")


def test_checkDemo():
    assert parseExit("--check") == (0, f"{tap.DEMO_SOURCE}: configuration OK\n", "")


def test_unknownOption():
    with pytest.raises(tap.usage.UsageError):
        tap.Options().parseOptions(["--bogus"])


def test_demoConfigMatchesDemoServers():
    """
    demo.toml's pool names the servers lbproxy.demo starts, at their
    addresses, and its listener is where the startup hint sends the user.
    """
    config = tap.demoConfig()
    (listener,) = config.listeners.values()
    assert listener.bind == "tcp:8080:interface=127.0.0.1"
    assert demo.URL == "http://127.0.0.1:8080/"
    pool = config.pools[listener.pool]
    served = {
        name: bind.replace("tcp:", "tcp:host=127.0.0.1:port=").replace(
            ":interface=127.0.0.1", ""
        )
        for name, bind in demo.SERVERS
    }
    assert {s.name: s.address for s in pool.servers} == served
    assert pool.selector == "roundrobin"
    assert pool.health is not None and pool.health.type == "http"


# The plugin


def test_pluginRegistered():
    """
    The twisted.plugins entry names this module.
    """
    import twisted.plugins

    makers = {m.tapname: m for m in getPlugins(IServiceMaker, twisted.plugins)}
    assert makers["lbproxy"].module == "lbproxy.tap"
    assert makers["lbproxy"].options is tap.Options


# makeService


@pytest.fixture
def keepExcepthook(monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)


def childNames(service) -> list[str]:
    return sorted(child.name for child in service)


def test_makeServiceTree(good, keepExcepthook):
    """
    One named listening service per listener and a health service holding
    a monitor per checked pool; nothing is started or bound.
    """
    options, _, _ = parse("--config", good)
    service = tap.makeService(options)
    assert isinstance(service, BalancerService)
    assert IService.providedBy(service)
    assert childNames(service) == ["health", "listener:admin", "listener:web", "reload-on-hangup", "reopen-on-usr1", "stick"]
    health = service.getServiceNamed("health")
    assert [m.pool.name for m in health] == ["web"]
    for name in ("listener:admin", "listener:web"):
        listener = service.getServiceNamed(name)
        assert isinstance(listener, StreamServerEndpointService)
        assert listener._raiseSynchronously
        assert not listener.running
    assert not service.running
    assert service.config is options.config


def test_makeServiceDemo(keepExcepthook):
    """
    The built-in demo adds the demo web servers beside the listener.
    """
    options, _, _ = parse()
    service = tap.makeService(options)
    assert childNames(service) == ["demo", "health", "listener:demo", "reload-on-hangup", "reopen-on-usr1", "stick"]
    demoService = service.getServiceNamed("demo")
    assert isinstance(demoService, demo.DemoService)
    assert childNames(demoService) == ["demo:web1", "demo:web2"]


def test_makeServiceInstallsBriefListenErrors(good, keepExcepthook):
    previous = sys.excepthook
    options, _, _ = parse("--config", good)
    tap.makeService(options)
    hook = sys.excepthook
    assert isinstance(hook, tap._BriefListenErrors)
    assert hook.previous is previous
    tap.makeService(options)
    assert sys.excepthook is hook


def test_briefListenErrors():
    """
    A listener that cannot bind is reported as one line; anything else goes
    to the previous hook with its traceback.
    """
    seen = []
    err = io.StringIO()
    hook = tap._BriefListenErrors(lambda *exc: seen.append(exc), err)
    error = CannotListenError("127.0.0.1", 8080, OSError(98, "Address already in use"))
    hook(CannotListenError, error, None)
    assert err.getvalue() == (
        "lbproxy: cannot start: Couldn't listen on 127.0.0.1:8080: "
        "[Errno 98] Address already in use.\n"
    )
    assert seen == []
    other = ValueError("boom")
    hook(ValueError, other, None)
    assert seen == [(ValueError, other, None)]


# The real command line


def runTwistd(*argv: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [twistd(), *argv],
        cwd=cwd,
        env=checkoutEnvironment(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_twistdCheckGood(good, tmp_path):
    result = runTwistd("lbproxy", "--check", "--config", good, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"{good}: configuration OK\n",
        "",
    )


def test_twistdCheckBad(bad, tmp_path):
    result = runTwistd("lbproxy", "--check", "--config", bad, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "",
        f"lbproxy: {bad}: {BAD_MESSAGE}\n",
    )


def test_twistdCheckDemo(tmp_path):
    result = runTwistd("lbproxy", "--check", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"{tap.DEMO_SOURCE}: configuration OK\n",
        "",
    )


def test_twistdHelp(tmp_path):
    result = runTwistd("lbproxy", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "--config=" in result.stdout
    assert "--check" in result.stdout


# The selector plugin example of README.rst


def readmePluginExample() -> str:
    """
    The Python block of README.rst's "Writing a selector plugin" section.
    """
    return readmeCodeBlock("Writing a selector plugin")


def test_readmePluginExampleSelects():
    namespace: dict = {}
    exec(compile(readmePluginExample(), "wrandom.py", "exec"), namespace)
    plugin = namespace["wrandom"]
    assert verifyObject(ISelectorPlugin, plugin)
    selector = plugin.build({"seed": 42})
    assert verifyObject(IBackendSelector, selector)
    servers = (Server("a", "tcp:host=127.0.0.1:port=1"), Server("b", "tcp:host=127.0.0.1:port=2", weight=3))
    context = FlowContext(IPv4Address("TCP", "127.0.0.1", 1), IPv4Address("TCP", "127.0.0.1", 2))
    picked = {selector.pick(servers, context).name for _ in range(50)}
    assert picked == {"a", "b"}
    context.excluded.add(servers[1])
    assert {selector.pick(servers, context).name for _ in range(10)} == {"a"}
    context.excluded.add(servers[0])
    assert selector.pick(servers, context) is None


def test_readmePluginExampleDiscovered(tmp_path):
    """
    Dropped into an lbproxy/plugins directory of its own on PYTHONPATH, the
    example is found by the config loader, which checks its option.
    """
    plugins = tmp_path / "ext" / "lbproxy" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "wrandom.py").write_text(readmePluginExample())
    good = tmp_path / "good.toml"
    good.write_text(GOOD.replace("[pools.web]\n", '[pools.web]\nselector = { name = "wrandom", seed = 42 }\n'))
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("[pools.web]\n", '[pools.web]\nselector = { name = "wrandom", seed = "x" }\n'))
    env = checkoutEnvironment()
    env["PYTHONPATH"] += os.pathsep + str(tmp_path / "ext")
    for config, expected in [
        (good, (0, f"{good}: configuration OK\n", "")),
        (bad, (1, "", f"lbproxy: {bad}: pools.web.selector.seed: expected an integer, got 'x'\n")),
    ]:
        result = subprocess.run(
            [twistd(), "lbproxy", "--check", "--config", str(config)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )
        assert (result.returncode, result.stdout, result.stderr) == expected
