"""
Tests for the admin listener (lbproxy.admin): the runtime API and its
token, the stats page, its JSON and the Prometheus metrics, and
lbproxy-ctl, against a BalancerService with [admin] on a loopback port
in this process.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile

import pytest

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from lbproxy.admin import ctl
from lbproxy.admin.api import MAX_BODY
from lbproxy.config import loadBytes
from lbproxy.config.admin import loadToken
from lbproxy.core.connect import Lease
from lbproxy.core.pool import ServerState
from lbproxy.service import BalancerService
from support import freePort

pytestmark = pytest.mark.filterwarnings("ignore:Using readBody with a transport")

TOKEN = "s3cret-token-of-the-test-0123456789"

CONFIG = """
[admin]
bind = "tcp:{admin}:interface=127.0.0.1"
{token}

[pools.web]
servers = [
    {{ name = "a", address = "127.0.0.1:{a}" }},
    {{ name = "b", address = "127.0.0.1:{b}", weight = 2 }},
    {{ name = "c", address = "127.0.0.1:{c}" }},
]

[listeners.front]
bind = "tcp:{port}:interface=127.0.0.1"
mode = "http"
pool = "web"
"""


class AdminTestsMixin:
    token = True

    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.adminPort, self.port = freePort(), freePort()
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        tokenFile = os.path.join(directory, "admin.token")
        with open(tokenFile, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(tokenFile, 0o600)
        self.tokenFile = tokenFile
        text = CONFIG.format(
            admin=self.adminPort,
            token=f'token_file = "{tokenFile}"' if self.token else "",
            a=freePort(),
            b=freePort(),
            c=freePort(),
            port=self.port,
        )
        config = loadBytes(text.encode(), "lb.toml")
        from dataclasses import replace

        config = replace(config, admin=loadToken(config.admin, "lb.toml"))
        self.config = config
        self.service = BalancerService(config, reactor)
        self.service.loader = lambda: config
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.pool = self.service.balancer.pools["web"]

    @inlineCallbacks
    def request(self, method: bytes, path: str, body=None, token: str | None = TOKEN, headers=None):
        """
        C{(status, headers, body)} of a request to the admin listener.
        """
        from twisted.web.client import FileBodyProducer

        all = Headers({b"x-lbproxy-operator": [b"alice"]})
        if token is not None:
            all.addRawHeader(b"authorization", f"Bearer {token}".encode())
        for name, value in (headers or {}).items():
            all.addRawHeader(name, value)
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
        response = yield Agent(reactor).request(method, f"http://127.0.0.1:{self.adminPort}{path}".encode(), all, producer)
        data = yield readBody(response)
        return response.code, response.headers, data

    def logged(self, word: str) -> list[str]:
        return [formatEvent(e) for e in self.events if word in formatEvent(e)]


class TokenTests(AdminTestsMixin, TestCase):
    @inlineCallbacks
    def test_withoutAWrongAndTheRightToken(self):
        """
        Without a token or with a wrong one: 401 and one log line each
        (never the token); with the right one the change is made and
        logged with who asked.
        """
        status, headers, body = yield self.request(b"POST", "/api/servers/web/a/state", {"state": "drain"}, token=None)
        self.assertEqual(status, 401)
        self.assertEqual(headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="lbproxy"'])
        self.assertIn("Authorization: Bearer", json.loads(body)["error"])
        status, _, body = yield self.request(b"POST", "/api/servers/web/a/state", {"state": "drain"}, token="wrong-" + TOKEN)
        self.assertEqual((status, json.loads(body)), (401, {"error": "wrong token"}))
        self.assertEqual(self.pool.server("a").state, ServerState.UP)
        refused = self.logged("admin API: refused")
        self.assertEqual(
            refused,
            [
                "admin API: refused POST /api/servers/web/a/state from 127.0.0.1 with no bearer token",
                "admin API: refused POST /api/servers/web/a/state from 127.0.0.1 with a wrong token",
            ],
        )
        status, _, body = yield self.request(b"POST", "/api/servers/web/a/state", {"state": "drain"})
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body), {"ok": True, "server": "web/a", "state": "drain", "was": "up"})
        self.assertEqual(self.pool.server("a").state, ServerState.DRAIN)
        (line,) = self.logged("admin API: set")
        self.assertRegex(line, r"^admin API: set web/a drain \(was up\) \(admin API, asked by alice@127\.0\.0\.1:\d+\)$")
        self.assertFalse([e for e in self.events if TOKEN in formatEvent(e)])

    @inlineCallbacks
    def test_refusalsAreLoggedOnceASecond(self):
        for _ in range(5):
            status, _, _ = yield self.request(b"POST", "/api/reload", token="x")
            self.assertEqual(status, 401)
        self.assertEqual(len(self.logged("admin API: refused")), 1)

    @inlineCallbacks
    def test_pagesNeedNoToken(self):
        for path in ("/", "/stats.json", "/metrics"):
            status, _, _ = yield self.request(b"GET", path, token=None)
            self.assertEqual(status, 200, path)


class APIOffTests(AdminTestsMixin, TestCase):
    token = False

    @inlineCallbacks
    def test_noTokenFileNoAPI(self):
        status, _, body = yield self.request(b"POST", "/api/reload")
        self.assertEqual(status, 403)
        self.assertEqual(json.loads(body)["error"], "the runtime API is off: [admin] names no token_file")


class APITests(AdminTestsMixin, TestCase):
    @inlineCallbacks
    def test_states(self):
        """
        ready, drain and maint; out of maintenance a checked server would
        be down until its checks pass (this pool has none: up at once).
        """
        for word, state in (("maint", "maint"), ("ready", "up"), ("drain", "drain"), ("ready", "up")):
            status, _, body = yield self.request(b"POST", "/api/servers/web/b/state", {"state": word})
            self.assertEqual((status, json.loads(body)["state"]), (200, state))
        status, _, body = yield self.request(b"POST", "/api/servers/web/b/state", {"state": "up"})
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(body)["error"], 'expected state "ready", "drain" or "maint", got "up"')

    @inlineCallbacks
    def test_weight(self):
        status, _, body = yield self.request(b"POST", "/api/servers/web/b/weight", {"weight": 7})
        self.assertEqual(json.loads(body), {"ok": True, "server": "web/b", "weight": 7, "was": 2})
        self.assertEqual(self.pool.server("b").weight, 7)
        for bad in (257, -1, "3", True, None):
            status, _, body = yield self.request(b"POST", "/api/servers/web/b/weight", {"weight": bad})
            self.assertEqual(status, 400, bad)
            self.assertIn("expected a weight from 0 to 256", json.loads(body)["error"])
        self.assertEqual(self.pool.server("b").weight, 7)

    @inlineCallbacks
    def test_addAndRemove(self):
        """
        A server added is checked as the config's are and serves; one
        removed leaves selection at once and stays in the stats while it
        finishes its flows.
        """
        port = freePort()
        status, _, body = yield self.request(
            b"POST", "/api/pools/web/servers", {"name": "d", "address": f"127.0.0.1:{port}", "weight": 3}
        )
        self.assertEqual(status, 201, body)
        self.assertEqual(json.loads(body)["address"], f"tcp:host=127.0.0.1:port={port}")
        self.assertIn(self.pool.server("d"), self.pool.eligible())
        status, _, body = yield self.request(b"POST", "/api/pools/web/servers", {"name": "d", "address": "127.0.0.1:1"})
        self.assertEqual(status, 409)
        status, _, body = yield self.request(b"POST", "/api/pools/web/servers", {"name": "e", "address": "nope"})
        self.assertEqual(status, 400)
        self.assertTrue(json.loads(body)["error"].startswith("server.address: expected"), body)
        status, _, body = yield self.request(b"POST", "/api/pools/web/servers", {"name": "e", "address": "127.0.0.1:1", "x": 1})
        self.assertEqual((status, json.loads(body)["error"]), (400, "server.x: unknown key"))
        lease = Lease(self.pool.server("a"))
        status, _, body = yield self.request(b"DELETE", "/api/servers/web/a")
        self.assertEqual(json.loads(body), {"ok": True, "server": "web/a", "removed": True, "flows": 1})
        self.assertEqual([s.name for s in self.pool.servers], ["b", "c", "d"])
        snapshot = self.service.balancer.snapshot()["pools"][0]["servers"]
        self.assertEqual([(s["name"], s["removed"]) for s in snapshot][-1], ("a", True))
        lease.release()
        self.assertEqual(self.pool.removing, [])
        for name in ("b", "c"):
            yield self.request(b"DELETE", f"/api/servers/web/{name}")
        status, _, body = yield self.request(b"DELETE", "/api/servers/web/d")
        self.assertEqual(status, 409)
        self.assertEqual(json.loads(body)["error"], "pool 'web' would have no server left")

    @inlineCallbacks
    def test_errors(self):
        cases = [
            (b"POST", "/api/servers/nope/a/state", {"state": "drain"}, 404, "no pool 'nope'"),
            (b"POST", "/api/servers/web/z/state", {"state": "drain"}, 404, "no server 'z' in pool 'web'"),
            (b"GET", "/api/servers/web/a/state", None, 405, "expected POST on this resource"),
            (b"POST", "/api/whatever", {}, 404, "no such resource"),
            (b"POST", "/api/servers/web/a/state", b"{nope", 400, None),
            (b"POST", "/api/servers/web/a/state", b"[1]", 400, "expected a JSON object, got list"),
            (b"POST", "/api/servers/web/a/state", b"x" * (MAX_BODY + 1), 413, f"expected a body of at most {MAX_BODY} bytes"),
            (b"GET", "/api/listeners/nope/sessions", None, 404, "no listener 'nope'"),
        ]
        for method, path, body, expected, error in cases:
            status, _, answer = yield self.request(method, path, body)
            self.assertEqual(status, expected, (path, answer))
            if error is not None:
                self.assertEqual(json.loads(answer)["error"], error)

    @inlineCallbacks
    def test_sessions(self):
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol

        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), Protocol())
        self.addCleanup(client.transport.loseConnection)
        listener = self.service.balancer.listeners["front"]
        while not listener.sessions:
            from twisted.internet.task import deferLater

            yield deferLater(reactor, 0.01, lambda: None)
        status, _, body = yield self.request(b"GET", "/api/listeners/front/sessions")
        answer = json.loads(body)
        self.assertEqual((answer["listener"], answer["count"]), ("front", 1))
        (session,) = answer["sessions"]
        self.assertEqual(session["client"], f"127.0.0.1:{client.transport.getHost().port}")
        self.assertEqual((session["phase"], session["server"], session["requests"]), ("head", None, 0))

    @inlineCallbacks
    def test_reload(self):
        status, _, body = yield self.request(b"POST", "/api/reload")
        self.assertEqual(status, 200, body)
        self.assertIn("reload asked by alice@127.0.0.1:", json.loads(body)["result"])
        self.assertEqual(self.service.reloads, {"applied": 1, "refused": 0})

        def broken():
            from lbproxy.errors import ConfigError

            raise ConfigError("lb.toml", "pools", "bad")

        self.service.loader = broken
        status, _, body = yield self.request(b"POST", "/api/reload")
        self.assertEqual(status, 409)
        self.assertTrue(json.loads(body)["error"].endswith("refused, the running configuration stays: lb.toml: pools: bad"))


class PagesTests(AdminTestsMixin, TestCase):
    @inlineCallbacks
    def test_statsPage(self):
        """
        The page shows every server with its state; a server down stands
        out (its row's class), one draining too; it refreshes itself.
        """
        self.pool.server("a").setState(ServerState.DOWN, "3 checks failed")
        self.pool.server("b").setState(ServerState.DRAIN, "operator")
        status, headers, body = yield self.request(b"GET", "/", token=None)
        page = body.decode()
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        self.assertIn('<meta http-equiv="refresh" content="5">', page)
        self.assertIn('<tr class="down"><td class="name">a</td>', page)
        self.assertIn('<tr class="drain"><td class="name">b</td>', page)
        self.assertIn("Pool web: 1 of 3 servers up", page)
        self.assertNotIn("http://", page.replace('href="', ""))
        _, _, body = yield self.request(b"GET", "/?refresh=0", token=None)
        self.assertNotIn(b"http-equiv", body)

    @inlineCallbacks
    def test_statsJSON(self):
        status, _, body = yield self.request(b"GET", "/stats.json", token=None)
        snapshot = json.loads(body)
        self.assertEqual([s["name"] for s in snapshot["pools"][0]["servers"]], ["a", "b", "c"])
        self.assertEqual(snapshot["process"]["pid"], os.getpid())
        self.assertEqual(snapshot["listeners"][0]["state"], "serving")

    @inlineCallbacks
    def test_metrics(self):
        """
        A scrape parses with prometheus_client's parser; counters and
        gauges are the model's.
        """
        listener = self.service.balancer.listeners["front"]
        listener.counters.requests = 5
        listener.counters.responses[2] = 4
        listener.counters.responses[5] = 1
        listener.counters.countDuration(0.003)
        listener.counters.countDuration(0.2)
        server = self.pool.server("b")
        server.bytesOut = 1234
        server.setState(ServerState.MAINT)
        status, headers, body = yield self.request(b"GET", "/metrics", token=None)
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}

        def sample(name, **labels):
            (value,) = [s.value for f in families.values() for s in f.samples if s.name == name and s.labels == labels]
            return value

        self.assertEqual(families["lbproxy_listener_http_requests"].type, "counter")
        self.assertEqual(sample("lbproxy_listener_http_requests_total", listener="front"), 5)
        self.assertEqual(sample("lbproxy_listener_http_responses_total", listener="front", code="2xx"), 4)
        self.assertEqual(sample("lbproxy_listener_http_responses_total", listener="front", code="5xx"), 1)
        self.assertEqual(sample("lbproxy_server_sent_bytes_total", pool="web", server="b"), 1234)
        self.assertEqual(sample("lbproxy_server_state", pool="web", server="b", state="maint"), 1)
        self.assertEqual(sample("lbproxy_server_state", pool="web", server="b", state="up"), 0)
        self.assertEqual(sample("lbproxy_server_weight", pool="web", server="b"), 2)
        self.assertEqual(families["lbproxy_listener_http_request_duration_seconds"].type, "histogram")
        self.assertEqual(sample("lbproxy_listener_http_request_duration_seconds_bucket", listener="front", le="0.005"), 1)
        self.assertEqual(sample("lbproxy_listener_http_request_duration_seconds_bucket", listener="front", le="0.25"), 2)
        self.assertEqual(sample("lbproxy_listener_http_request_duration_seconds_count", listener="front"), 2)
        self.assertAlmostEqual(sample("lbproxy_listener_http_request_duration_seconds_sum", listener="front"), 0.203)
        self.assertEqual(sample("lbproxy_listener_state", listener="front", state="serving"), 1)
        self.assertIn("process_open_fds", families)


class CtlTests(AdminTestsMixin, TestCase):
    def ctl(self, *argv):
        out, err = io.StringIO(), io.StringIO()

        def run():
            return ctl.main(["--url", f"http://127.0.0.1:{self.adminPort}", "--token-file", self.tokenFile, *argv], out, err)

        return threads.deferToThread(run).addCallback(lambda code: (code, out.getvalue(), err.getvalue()))

    @inlineCallbacks
    def test_commands(self):
        code, out, err = yield self.ctl("server", "drain", "web/a")
        self.assertEqual((code, out, err), (0, "web/a: drain (was up)\n", ""))
        code, out, _ = yield self.ctl("server", "weight", "web/b", "9")
        self.assertEqual((code, out), (0, "web/b: weight 9 (was 2)\n"))
        code, out, _ = yield self.ctl("status")
        self.assertEqual(code, 0)
        self.assertIn("pool web (roundrobin, queue 0)", out)
        self.assertRegex(out, r"\na +drain +\S+ +1 ")
        code, out, _ = yield self.ctl("server", "add", "web/d", "127.0.0.1:1", "--weight", "4")
        self.assertEqual((code, out), (0, "web/d: added at tcp:host=127.0.0.1:port=1, up\n"))
        code, out, _ = yield self.ctl("server", "remove", "web/d")
        self.assertEqual((code, out), (0, "web/d: removed, 0 flows finishing\n"))
        code, out, _ = yield self.ctl("sessions", "front")
        self.assertEqual((code, out), (0, "0 sessions on listener front\n"))
        code, out, _ = yield self.ctl("reload")
        self.assertEqual(code, 0)
        self.assertIn("applied", out)

    @inlineCallbacks
    def test_exitStatuses(self):
        code, _, err = yield self.ctl("server", "drain", "web/nope")
        self.assertEqual((code, err), (1, "lbproxy-ctl: no server 'nope' in pool 'web'\n"))
        code, _, err = yield self.ctl("server", "drain", "nonsense")
        self.assertEqual((code, err), (2, "lbproxy-ctl: expected POOL/SERVER, got 'nonsense'\n"))
        with open(self.tokenFile, "w") as f:
            f.write("another-token-of-sufficient-length")
        code, _, err = yield self.ctl("server", "drain", "web/a")
        self.assertEqual((code, err), (4, "lbproxy-ctl: wrong token\n"))
        out, err = io.StringIO(), io.StringIO()
        code = yield threads.deferToThread(ctl.main, ["--url", f"http://127.0.0.1:{freePort()}", "status"], out, err)
        self.assertEqual(code, 3)
        self.assertIn("cannot reach the admin listener", err.getvalue())
