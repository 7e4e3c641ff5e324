"""
The example configurations of conf/: after conf/make-test-certs has made
the files they name, C{twistd lbproxy --check} accepts every one of them,
as on a fresh checkout. A new example that --check rejects fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import CHECKOUT, checkoutEnvironment, twistd

CONF = Path(CHECKOUT) / "conf"
EXAMPLES = sorted(path.name for path in CONF.glob("*.toml"))


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=checkoutEnvironment(), capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """
    A copy of conf/ as on a fresh checkout (no tls/ beside it), after
    conf/make-test-certs ran in it.
    """
    root = tmp_path_factory.mktemp("checkout")
    shutil.copytree(CONF, root / "conf", ignore=shutil.ignore_patterns("tls"))
    result = run([sys.executable, "conf/make-test-certs"], root)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def test_examplesExist():
    assert {"lbproxy.toml", "https.toml", "imap.toml", "pop3.toml"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_checkPasses(checkout, name):
    result = run([twistd(), "lbproxy", "--check", "--config", f"conf/{name}"], checkout)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"conf/{name}: configuration OK\n", "")


def test_withoutTheFilesCheckSaysWhichFile(tmp_path):
    """
    Before the script runs, --check names the first file missing (the
    issue's conf/pop3.toml case).
    """
    shutil.copytree(CONF, tmp_path / "conf", ignore=shutil.ignore_patterns("tls"))
    result = run([twistd(), "lbproxy", "--check", "--config", "conf/pop3.toml"], tmp_path)
    assert (result.returncode, result.stderr) == (
        1,
        "lbproxy: conf/pop3.toml: listeners.pop3.tls.certificates[0].cert: cannot read tls/mail.pem: "
        "No such file or directory\n",
    )


def test_scriptMadeEveryFile(checkout):
    """
    Every TLS path the examples name exists, under tls/ of the directory
    the script ran in; keys are readable by their owner only.
    """
    named = set()
    for name in EXAMPLES:
        for line in (CONF / name).read_text().splitlines():
            if not line.lstrip().startswith("#"):
                named.update(re.findall(r'"(tls/[^"]+)"', line))
    assert named
    for path in sorted(named):
        assert (checkout / path).is_file(), path
    assert (checkout / "tls/mail.key").stat().st_mode & 0o777 == 0o600


def test_scriptKeepsWhatExists(checkout):
    """
    A second run makes nothing and changes nothing; --force makes every
    file again.
    """
    before = {path: path.read_bytes() for path in (checkout / "tls").iterdir()}
    result = run([sys.executable, "conf/make-test-certs"], checkout)
    assert result.returncode == 0, result.stderr
    assert "made" not in result.stdout and result.stdout.count("kept ") >= 1
    assert {path: path.read_bytes() for path in (checkout / "tls").iterdir()} == before


def test_scriptForce(tmp_path):
    shutil.copytree(CONF, tmp_path / "conf", ignore=shutil.ignore_patterns("tls"))
    assert run([sys.executable, "conf/make-test-certs", "conf/pop3.toml"], tmp_path).returncode == 0
    before = (tmp_path / "tls/mail.pem").read_bytes()
    result = run([sys.executable, "conf/make-test-certs", "--force", "conf/pop3.toml"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tls/mail.pem").read_bytes() != before
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == ["mail-ca.pem", "mail.key", "mail.pem"]


def test_scriptRefusesHalfAPair(tmp_path):
    """
    A certificate whose key file is missing is not remade alone (a new key
    would not match the certificate kept).
    """
    shutil.copytree(CONF, tmp_path / "conf", ignore=shutil.ignore_patterns("tls"))
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls/mail.pem").write_text("kept")
    result = run([sys.executable, "conf/make-test-certs", "conf/pop3.toml"], tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        "make-test-certs: tls/mail.pem exists but tls/mail.key does not; remove the other or run with "
        "--force to make both again\n"
    )
    assert (tmp_path / "tls/mail.pem").read_text() == "kept"


@pytest.mark.parametrize("name", EXAMPLES)
def test_headerSaysToRunTheScript(name):
    """
    An example naming TLS files says, before its first table, to make them
    with the script.
    """
    text = (CONF / name).read_text()
    header = text.split("\n[", 1)[0]
    if re.search(r'^[^#\n]*"tls/', text, re.MULTILINE):
        assert "conf/make-test-certs" in header, name
