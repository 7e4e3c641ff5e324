"""
The mail benchmark's parts (bench/run_mail.py, bench/imap_load.py and the
mail pieces of bench/harness.py): the lbproxy config it generates goes
through the real loader, and the IMAP load generator completes sessions
and FETCHes against a real Dovecot (a few, bounded; nothing here asserts
on speed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from dovecot import dovecot, dovecotStores  # noqa: F401 (fixtures)
from lbproxy.config import loadBytes
from test_bench_harness import harness

LOAD = os.path.join(os.path.dirname(harness.__file__), "imap_load.py")


def test_imapConfig():
    """
    The benchmark's lbproxy config: an IMAP listener, a pool hashing on
    the user and telling the server the client's address with ID.
    """
    text = harness.lbproxyConfig(
        1143,
        [("dovecot", 10143)],
        mode="imap",
        selector='{ name = "hash", key = "user" }',
        poolLines=['client_address = "id"'],
    )
    config = loadBytes(text.encode(), "bench.toml")
    assert config.listeners["bench"].mode == "imap"
    pool = config.pools["servers"]
    assert pool.clientAddress == "id"
    assert pool.selector == "hash" and pool.selectorOptions["key"] == "user"


def load(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, LOAD, *args], capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_imapLoadAgainstDovecot(dovecot):
    """
    Both load modes against a store: sessions log in, select and log out;
    FETCH reads the large message whole (its size checked); the caps on
    requests stop the runs.
    """
    store = dovecot.stores[0]
    common = ["--port", str(store.ports["imap"]), "--users", "alice", "--password", dovecot.users["alice"]]
    sessions = load("sessions", *common, "--duration", "10", "--concurrency", "2", "--max-requests", "4")
    assert sessions["errors"] == 0, sessions
    assert 4 <= sessions["requests"] <= 5
    size = len(dovecot.largeMessage)
    fetched = load(
        "fetch", *common, "--duration", "10", "--concurrency", "1", "--max-requests", "2",
        "--message", str(dovecot.messageCount), "--size", str(size),
    )
    assert fetched["errors"] == 0, fetched
    assert fetched["requests"] == 2
    assert fetched["bytes"] == 2 * size
    wrong = load("fetch", *common, "--duration", "10", "--concurrency", "1", "--size", "1")
    assert wrong["errors"] == 1 and "expected 1" in wrong["firstError"]
