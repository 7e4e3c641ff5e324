"""
Shared test helpers.

A test that needs a real external component calls L{requireExecutable} (or
L{missing}): it skips with a reason when the component is absent, and fails
instead when LBPROXY_REQUIRE_INTEGRATION=1, so CI cannot pass by skipping.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys

import pytest


def integrationRequired() -> bool:
    return os.environ.get("LBPROXY_REQUIRE_INTEGRATION") == "1"


def missing(reason: str):
    """
    Skip the running test because of C{reason}, or fail it when
    integration tests are required.
    """
    if integrationRequired():
        pytest.fail(f"required for integration tests: {reason}")
    pytest.skip(reason)


def requireExecutable(name: str, *alternatives: str) -> str:
    """
    Path of the first of C{name}, C{alternatives} found on PATH (or in
    /usr/sbin, where Debian puts daemons).
    """
    for candidate in (name, *alternatives):
        path = shutil.which(candidate) or shutil.which(
            candidate, path="/usr/sbin:/usr/local/sbin:/sbin"
        )
        if path:
            return path
    missing(f"{name} is not installed")


#: The root of the checkout the tests run from.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def twistd() -> str:
    """
    The twistd script of the running interpreter's environment (next to
    C{sys.executable}), whatever PATH holds, so a daemon started by a test
    has the same packages as the test.
    """
    path = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.access(path, os.X_OK):
        missing(f"there is no twistd next to {sys.executable}")
    return path


def readmeCodeBlock(heading: str) -> str:
    """
    The first Python code block of README.rst's section C{heading}.
    """
    import textwrap

    with open(os.path.join(CHECKOUT, "README.rst")) as f:
        text = f.read()
    section = text.split(f"\n{heading}\n", 1)[1]
    block = section.split(".. code-block:: python\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


def checkoutEnvironment() -> dict[str, str]:
    """
    The environment for a subprocess that must run the lbproxy under test:
    the checkout comes first on PYTHONPATH, as it does for the tests
    themselves (run as C{python -m pytest} from the checkout). Whether an
    installed copy works on its own is test_packaging's business.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (CHECKOUT, env.get("PYTHONPATH")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


def benchHarness():
    """
    bench/harness.py (see L{benchModule}).
    """
    return benchModule("harness")


def benchModule(name: str):
    """
    bench/NAME.py, loaded from its file under a distinct name: bench/ is
    not a package, and putting it on sys.path would expose its modules
    (a top-level C{harness}...) to every test.
    """
    qualified = f"lbproxy_bench_{name}"
    if qualified not in sys.modules:
        path = os.path.join(CHECKOUT, "bench", f"{name}.py")
        spec = importlib.util.spec_from_file_location(qualified, path)
        module = importlib.util.module_from_spec(spec)
        # dataclasses look their module up in sys.modules.
        sys.modules[qualified] = module
        spec.loader.exec_module(module)
    return sys.modules[qualified]


#: The reactors the tests can run on, by the name LBPROXY_TEST_REACTOR
#: gives: lbproxy's (the default on Linux: what "twistd lbproxy" runs on)
#: and Twisted's own epoll reactor (what "--reactor=epoll" gives), on which
#: test_reactors runs the loopback tests again. Each module has install()
#: and its EPollReactor class.
TEST_REACTORS = {
    "lbproxy": "lbproxy._twisted.reactor",
    "epoll": "twisted.internet.epollreactor",
}

#: The variable that chooses the reactor.
TEST_REACTOR_VARIABLE = "LBPROXY_TEST_REACTOR"


def reactorUnderTest() -> str | None:
    """
    The name of the reactor this run installs (see L{TEST_REACTORS}), or
    L{None}, Twisted's default, off Linux, where lbproxy's reactor does
    not run.
    """
    name = os.environ.get(TEST_REACTOR_VARIABLE)
    if name is None:
        return "lbproxy" if sys.platform == "linux" else None
    if name not in TEST_REACTORS:
        raise pytest.UsageError(f"{TEST_REACTOR_VARIABLE}={name!r}: expected one of {', '.join(TEST_REACTORS)}")
    return name


def installReactorUnderTest() -> None:
    """
    Install the reactor L{reactorUnderTest} names (tests/conftest.py does,
    before any test module imports the reactor).
    """
    name = reactorUnderTest()
    if name is None:
        return
    if "twisted.internet.reactor" in sys.modules:
        raise pytest.UsageError(f"a reactor was installed before the tests could install the {name} reactor")
    importlib.import_module(TEST_REACTORS[name]).install()


def freePort(host: str = "127.0.0.1") -> int:
    """
    A TCP port free on C{host} now, outside the kernel's ephemeral range so
    that no outgoing connection takes it before the test listens on it.
    """
    return benchHarness().freePort(host)
