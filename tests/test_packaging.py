"""
Packaging: the wheel carries the twistd plugin, the package data and every
module, and a normal install into a fresh virtual environment makes
C{twistd lbproxy} work.

The wheel is built from a copy of the files git tracks (an in-tree build
could pick up stale files from an old build/ directory, and other people's
untracked work in progress is not part of the project yet). The fresh environment is a
plain venv, not one sharing this environment's packages, so a dependency
missing from setup.cfg would show: its dependencies come from a wheelhouse
that C{pip wheel} fills from the same package index the project installs
from.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from support import CHECKOUT

pytestmark = pytest.mark.integration

IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__",
    "dropin.cache", ".pytest_cache", "*.pyc",
)


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result


def copySource(destination: Path) -> None:
    """
    Copy the checkout's tracked files (as they are in the work tree) to
    C{destination}; without git, everything but build output.
    """
    git = shutil.which("git")
    if git is None or not os.path.exists(os.path.join(CHECKOUT, ".git")):
        shutil.copytree(CHECKOUT, destination, ignore=IGNORED)
        return
    listed = run([git, "-C", CHECKOUT, "ls-files", "-z", "--cached"]).stdout
    for name in filter(None, listed.split("\0")):
        origin = Path(CHECKOUT) / name
        if origin.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """
    (the source copy, a wheelhouse holding lbproxy's wheel and those of its
    dependencies).
    """
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    copySource(source)
    wheelhouse = base / "wheelhouse"
    run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheelhouse), str(source)])
    return source, wheelhouse


@pytest.fixture(scope="module")
def wheelNames(built) -> set[str]:
    _, wheelhouse = built
    (wheel,) = wheelhouse.glob("lbproxy-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_twistdPluginInside(wheelNames):
    assert "twisted/plugins/lbproxy_plugin.py" in wheelNames


def test_noTwistedPackageShadowing(wheelNames):
    """
    An __init__.py in twisted/ or twisted/plugins/ would replace Twisted's
    own package on install.
    """
    assert "twisted/__init__.py" not in wheelNames
    assert "twisted/plugins/__init__.py" not in wheelNames
    assert not [n for n in wheelNames if n.endswith("dropin.cache")]


def test_packageDataInside(wheelNames):
    assert "lbproxy/demo.toml" in wheelNames


def test_everyModuleInside(built, wheelNames):
    """
    Every module of the source tree is in the wheel: a new subpackage must
    be listed in setup.cfg, or its modules are silently left out.
    """
    source, _ = built
    modules = {
        path.relative_to(source).as_posix()
        for path in (source / "lbproxy").rglob("*.py")
    }
    assert "lbproxy/plugins/lbproxy_builtin.py" in modules
    assert modules - wheelNames == set()
    assert not [n for n in wheelNames if n.startswith("tests/")]


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory) -> Path:
    """
    The bin directory of a fresh venv with lbproxy installed from its wheel.
    """
    _, wheelhouse = built
    venv = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", str(venv)])
    bin = venv / "bin"
    run([
        str(bin / "python"), "-m", "pip", "install", "-q", "--no-index",
        "--find-links", str(wheelhouse), "lbproxy",
    ])
    return bin


def isolatedEnvironment() -> dict[str, str]:
    """
    The environment without anything pointing at the checkout.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def test_installedTwistdListsLbproxy(installed, tmp_path):
    result = run([str(installed / "twistd"), "--help"], cwd=tmp_path, env=isolatedEnvironment())
    assert any(line.split()[:1] == ["lbproxy"] for line in result.stdout.splitlines()), result.stdout


def test_installedDemoConfig(installed, tmp_path):
    """
    The installed package finds its demo config and its built-in selectors.
    """
    result = run(
        [str(installed / "twistd"), "lbproxy", "--check"], cwd=tmp_path, env=isolatedEnvironment()
    )
    assert result.stdout == "demo.toml (built in): configuration OK\n"
    where = run(
        [str(installed / "python"), "-c", "import lbproxy; print(lbproxy.__file__)"],
        cwd=tmp_path,
        env=isolatedEnvironment(),
    )
    assert where.stdout.startswith(str(installed.parent)), where.stdout


def readmeCommands() -> list[str]:
    """
    The indented command lines before README.rst's first section.
    """
    text = (Path(CHECKOUT) / "README.rst").read_text()
    intro = text.split("\nWhat lbproxy is\n", 1)[0]
    return [line.strip() for line in intro.splitlines() if line.startswith("    ")]


def test_readmeStartsWithTwoCommands():
    demo, tests = readmeCommands()
    assert demo.endswith("twistd -n lbproxy")
    assert "pip install . " in demo
    assert "LBPROXY_REQUIRE_INTEGRATION=1" in tests and "-m pytest" in tests


def test_ciRunsTheReadmeTestCommand():
    _, tests = readmeCommands()
    ci = (Path(CHECKOUT) / ".ci" / "run").read_text()
    assert f"\n{tests} || status=$?\n" in ci
    assert "set -euo pipefail" in ci
