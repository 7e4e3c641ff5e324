"""
bench/h2_attacks.py: its reading of a server's frames, and one short real
run (C{--quick}) against the daemon: every attack gets an answer from
lbproxy, and another client is served meanwhile and after (nothing here
asserts on time or memory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hpack import Encoder
from hyperframe.frame import GoAwayFrame, HeadersFrame, RstStreamFrame, SettingsFrame

from support import CHECKOUT, benchModule, requireExecutable, twistd

# The script imports its siblings by plain name (bench/ first on its path).
harness = sys.modules.setdefault("harness", benchModule("harness"))
h2_idle = sys.modules.setdefault("h2_idle", benchModule("h2_idle"))
h2_attacks = benchModule("h2_attacks")


def test_serverFrames():
    """
    GOAWAY outranks RST_STREAM, which outranks response statuses; frames
    cut anywhere are read once whole; SETTINGS are counted to acknowledge.
    """
    frames = h2_attacks.ServerFrames()
    head = HeadersFrame(1, flags=["END_HEADERS"])
    head.data = Encoder().encode([(b":status", b"200")])
    reset = RstStreamFrame(3)
    reset.error_code = 7
    goAway = GoAwayFrame(0)
    goAway.error_code = 11
    data = SettingsFrame(0).serialize() + head.serialize() + reset.serialize() + goAway.serialize()
    for index, byte in enumerate(data):
        frames.receive(bytes([byte]), float(index))
    assert frames.settings == 1
    assert frames.statuses == {"200": 1}
    assert frames.resets == {"REFUSED_STREAM": 1}
    assert frames.goAway == "ENHANCE_YOUR_CALM"
    assert h2_attacks.answerOf(frames, False, 0.0)[0] == "GOAWAY ENHANCE_YOUR_CALM"
    frames.goAway = None
    assert h2_attacks.answerOf(frames, False, 0.0)[0] == "RST_STREAM REFUSED_STREAM x1"
    frames.resets.clear()
    assert h2_attacks.answerOf(frames, True, 0.0)[0] == "HTTP 200 x1"
    frames.statuses.clear()
    assert h2_attacks.answerOf(frames, True, 0.0) == ("closed", None)


def test_parseArgs():
    args = h2_attacks.parseArgs(["--quick", "--attacks", "ping-flood,rapid-reset"])
    assert args.attacks == ["rapid-reset", "ping-flood"]
    assert args.counts == h2_attacks.QUICK and args.timeout == 5.0
    assert h2_attacks.parseArgs([]).attacks == list(h2_attacks.ATTACKS)


def test_attackConfig(tmp_path):
    """
    The HTTP/2 table enables the front and sets no limit of its own.
    """
    from lbproxy.config import loadBytes

    tls = harness.makeCertificate(str(tmp_path), "ec")
    text = h2_attacks.attackConfig(40000, 40001, tls)
    listener = loadBytes(text.encode(), "bench.toml").listeners["bench"]
    assert "h2" in listener.tls.alpn
    assert text.endswith("[listeners.bench.http2]\nenabled = true\n")


def test_quickRun(tmp_path):
    """
    Every attack, with tiny counts, against the real daemon: each row
    says lbproxy sent a GOAWAY, RST_STREAMs or response statuses, and the
    other client was served during and after each.
    """
    requireExecutable("nginx")
    output = tmp_path / "attacks.json"
    done = subprocess.run(
        [sys.executable, os.path.join(CHECKOUT, "bench", "h2_attacks.py"),
         "--quick", "--twistd", twistd(), "--json", str(output)],
        capture_output=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    results = json.loads(output.read_text())["results"]
    assert [r["attack"] for r in results] == list(h2_attacks.ATTACKS)
    for r in results:
        assert r["answer"].startswith(("GOAWAY ", "RST_STREAM ", "HTTP ")), r
        assert r["seconds"] is not None, r
        assert r["servedDuring"] and r["servedAfter"], r
    stdout = done.stdout.decode()
    assert all(name in stdout for name in h2_attacks.ATTACKS)
