"""
Tests for L{lbproxy.http.paths}, the normal form of request paths: the
issue's spellings of C{/admin} and many more, what is refused and what a
listener may allow; then through the front (routing, hash keys, what the
server receives, the access log) and the configuration.
"""

from __future__ import annotations

import random

import pytest
from twisted.internet.address import IPv4Address

from lbproxy.http.config import HTTPListenerConfig, RouteConfig
from lbproxy.http.errors import HTTPParseError
from lbproxy.http.message import Headers, RequestHead
from lbproxy.http.paths import (
    _NORMAL,
    PathNormalizer,
    PathsConfig,
    _normalize,
    normalizePath,
    normalizeTarget,
)
from lbproxy.core.pool import Server
from lbproxy.selectors import findSelector

from test_config_http import listener as withListenerLines
from test_config_http import load, loadError
from test_http_front import OK, ProxyTestCase, makeListener, makePool

CLIMBS = "path climbs above the root"
SLASH = "encoded slash in the path"
BACKSLASH = "backslash in the path"
CONTROL = "encoded control character in the path"
RAW_CONTROL = "control character in the path"
PERCENT = "malformed percent-encoding in the path"
DOT_PARAMETERS = "dot segment with parameters in the path"

#: The spellings of /admin the issue found routed past a /admin rule.
ISSUE_SPELLINGS = [b"/%61dmin", b"//admin", b"/./admin", b"/web/../admin", b"/adm%69n", b"/x/%2e%2e/admin"]

NORMALISED = [(spelling, b"/admin") for spelling in ISSUE_SPELLINGS] + [
    # already normal: returned as they are
    (b"/", b"/"),
    (b"/admin", b"/admin"),
    (b"/a/b/", b"/a/b/"),
    (b"/a-b_c.d~e/f", b"/a-b_c.d~e/f"),
    (b"/!$&'()*+,;=:@", b"/!$&'()*+,;=:@"),
    # percent-encoded unreserved characters, any case
    (b"/%41%44%4d%49%4E", b"/ADMIN"),
    (b"/%7euser", b"/~user"),
    (b"/%7Euser", b"/~user"),
    (b"/a%2d%5f%2e%7e%30", b"/a-_.~0"),
    # other percent-encodings: upper case, never decoded
    (b"/caf%c3%a9", b"/caf%C3%A9"),
    (b"/caf%C3%A9", b"/caf%C3%A9"),
    (b"/a%20b", b"/a%20b"),
    (b"/a%3fb%23c", b"/a%3Fb%23c"),
    (b"/a%25b", b"/a%25b"),
    (b"/%252e%252e/admin", b"/%252e%252e/admin"),
    (b"/a%3bb", b"/a%3Bb"),
    # bytes a path may not hold raw: encoded
    (b"/a{b}", b"/a%7Bb%7D"),
    (b"/a|b^c`d", b"/a%7Cb%5Ec%60d"),
    (b'/a"b<c>[d]', b"/a%22b%3Cc%3E%5Bd%5D"),
    # dot segments, percent-encoded ones included, in any case
    (b"/x/%2E%2e/admin", b"/admin"),
    (b"/x/.%2e/admin", b"/admin"),
    (b"/x/%2e./admin", b"/admin"),
    (b"/%2e/admin", b"/admin"),
    (b"/a/b/../../admin", b"/admin"),
    (b"/a/b/c/../../admin", b"/a/admin"),
    (b"/a/./b/./c", b"/a/b/c"),
    # a path ending with a dot segment ends with /
    (b"/.", b"/"),
    (b"/admin/.", b"/admin/"),
    (b"/admin/%2e", b"/admin/"),
    (b"/admin/..", b"/"),
    (b"/a/b/..", b"/a/"),
    (b"/a/b/.%2E", b"/a/"),
    # not dot segments
    (b"/...", b"/..."),
    (b"/a/.../b", b"/a/.../b"),
    (b"/.well-known/x", b"/.well-known/x"),
    (b"/admin.", b"/admin."),
    (b"/..a/b", b"/..a/b"),
    (b"/a..", b"/a.."),
    # repeated slashes merged, at the start too
    (b"//", b"/"),
    (b"///admin", b"/admin"),
    (b"/admin//", b"/admin/"),
    (b"/a//b///c", b"/a/b/c"),
    (b"//a//..//b", b"/b"),
    # parameters stay part of their segment
    (b"/admin;jsessionid=1", b"/admin;jsessionid=1"),
    (b"/a;x/../admin", b"/admin"),
    (b"/;x/admin", b"/;x/admin"),
    (b"/a/b;.", b"/a/b;."),
]

REFUSED = [
    # a .. above the root
    (b"/..", CLIMBS),
    (b"/../admin", CLIMBS),
    (b"/%2e%2e/admin", CLIMBS),
    (b"/%2E%2E", CLIMBS),
    (b"/a/../../admin", CLIMBS),
    (b"/a/b/../../..", CLIMBS),
    # encoded slashes
    (b"/admin%2Fx", SLASH),
    (b"/admin%2fx", SLASH),
    (b"/a%2f..%2fadmin", SLASH),
    # backslashes
    (b"/a%5Cb", BACKSLASH),
    (b"/a%5cb", BACKSLASH),
    (b"/a\\b", BACKSLASH),
    (b"/..\\admin", BACKSLASH),
    # encoded control characters
    (b"/a%00b", CONTROL),
    (b"/a%0d%0aSet-Cookie:%20x", CONTROL),
    (b"/a%09", CONTROL),
    (b"/a%1F", CONTROL),
    (b"/a%7f", CONTROL),
    # raw control characters (the parser never lets them through)
    (b"/a\x00b", RAW_CONTROL),
    (b"/a b", RAW_CONTROL),
    (b"/a\x7f", RAW_CONTROL),
    # malformed percent-encodings
    (b"/a%zz", PERCENT),
    (b"/a%", PERCENT),
    (b"/a%4", PERCENT),
    (b"/a%%41", PERCENT),
    # dot segments with parameters, which servlet containers resolve
    (b"/..;/admin", DOT_PARAMETERS),
    (b"/.;/admin", DOT_PARAMETERS),
    (b"/a/..;x/admin", DOT_PARAMETERS),
    (b"/a/%2e%2e;/admin", DOT_PARAMETERS),
    (b"/a/.%2e;x=1/admin", DOT_PARAMETERS),
]

ALLOWED = [
    (PathsConfig(allowEncodedSlash=True), b"/api/a%2fb", b"/api/a%2Fb"),
    (PathsConfig(allowEncodedSlash=True), b"/a%2F..%2Fb", b"/a%2F..%2Fb"),
    (PathsConfig(allowEncodedSlash=True), b"/x/a%2Fb/../c", b"/x/c"),
    (PathsConfig(allowBackslash=True), b"/a\\b", b"/a\\b"),
    (PathsConfig(allowBackslash=True), b"/a%5cb", b"/a%5Cb"),
    (PathsConfig(allowBackslash=True), b"/a/..\\b", b"/a/..\\b"),
    (PathsConfig(allowEncodedControl=True), b"/a%00", b"/a%00"),
    (PathsConfig(allowEncodedControl=True), b"/a%0d%0a", b"/a%0D%0A"),
    (PathsConfig(allowEncodedControl=True), b"/%61%7f", b"/a%7F"),
]

NOT_ALLOWED = [
    (PathsConfig(allowEncodedSlash=True), b"/a%5Cb", BACKSLASH),
    (PathsConfig(allowEncodedSlash=True), b"/a%00", CONTROL),
    (PathsConfig(allowBackslash=True), b"/a%2Fb", SLASH),
    (PathsConfig(allowEncodedControl=True), b"/a%2Fb", SLASH),
    (PathsConfig(allowEncodedControl=True), b"/a\x00", RAW_CONTROL),
    (PathsConfig(True, True, True, True), b"/../a", CLIMBS),
    (PathsConfig(True, True, True, True), b"/a%g0", PERCENT),
]


@pytest.mark.parametrize("path, normal", NORMALISED, ids=[repr(p)[2:-1] for p, _ in NORMALISED])
def test_normalised(path: bytes, normal: bytes) -> None:
    assert normalizePath(path) == normal
    assert normalizePath(normal) == normal


@pytest.mark.parametrize("path, reason", REFUSED, ids=[repr(p)[2:-1] for p, _ in REFUSED])
def test_refused(path: bytes, reason: str) -> None:
    with pytest.raises(HTTPParseError) as caught:
        normalizePath(path)
    assert (caught.value.status, caught.value.reason) == (400, reason)


@pytest.mark.parametrize("rules, path, normal", ALLOWED)
def test_allowed(rules: PathsConfig, path: bytes, normal: bytes) -> None:
    """
    What a listener allows passes as it is (hex in upper case), never
    decoded, so it is no separator for dot segments either.
    """
    assert normalizePath(path, rules) == normal


@pytest.mark.parametrize("rules, path, reason", NOT_ALLOWED)
def test_allowingOneAllowsNoOther(rules: PathsConfig, path: bytes, reason: str) -> None:
    with pytest.raises(HTTPParseError) as caught:
        normalizePath(path, rules)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "target, normal",
    [
        (b"/a/./b?x=/../y&p=%61", b"/a/b?x=/../y&p=%61"),
        (b"/%61dmin?%2F=%00", b"/admin?%2F=%00"),
        (b"/?a//b", b"/?a//b"),
        (b"//?", b"/?"),
        (b"/a/..?", b"/?"),
    ],
)
def test_queryUntouched(target: bytes, normal: bytes) -> None:
    assert normalizeTarget(target) == normal


def test_encodedSlashBeforeTheQueryRefused() -> None:
    with pytest.raises(HTTPParseError):
        normalizeTarget(b"/a%2Fb?x=1")


def randomPaths(seed: int, count: int):
    rng = random.Random(seed)
    alphabet = [b"a", b"Z", b".", b"/", b"%", b"2", b"e", b"E", b"f", b"F", b"5", b"c", b";", b"~", b"{", b"\\", b"0", b"7"]
    for _ in range(count):
        yield b"/" + b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 14)))


@pytest.mark.parametrize("rules", [PathsConfig(), PathsConfig(True, True, True, True)])
def test_quickCheckAgreesWithTheFullNormalisation(rules: PathsConfig) -> None:
    """
    A path the quick check lets through is one the full normalisation
    leaves as it is; and the normal form is a fixed point, without empty
    or dot segments.
    """
    checked = normal = 0
    for path in randomPaths(3, 20000):
        if _NORMAL.match(path) is not None:
            checked += 1
            assert _normalize(path, rules) == path, path
        try:
            result = normalizePath(path, rules)
        except HTTPParseError:
            continue
        normal += 1
        assert normalizePath(result, rules) == result, (path, result)
        assert b"//" not in result, (path, result)
        segments = result.split(b"/")[1:]
        assert b"." not in segments and b".." not in segments, (path, result)
    assert checked > 1000 and normal > 5000


# -- heads ----------------------------------------------------------------------


def head(target: bytes, form: str = "origin", method: bytes = b"GET") -> RequestHead:
    return RequestHead(method, target, (1, 1), Headers([(b"Host", b"a")]), targetForm=form)


def test_headNormalised() -> None:
    request = head(b"/x/%2e%2e/admin?q=%2e%2e")
    PathNormalizer().normalize(request)
    assert (request.target, request.rawTarget) == (b"/admin?q=%2e%2e", b"/x/%2e%2e/admin?q=%2e%2e")


def test_normalHeadUntouched() -> None:
    target = b"/static/app.js?v=1"
    request = head(target)
    normalizer = PathNormalizer()
    for _ in range(2):
        normalizer.normalize(request)
        assert request.target is target
        assert request.rawTarget is None


@pytest.mark.parametrize(
    "target, normal",
    [
        (b"http://a/%61dmin", b"http://a/admin"),
        (b"http://a//admin?x=/../y", b"http://a/admin?x=/../y"),
        (b"https://a:8443/x/%2E%2E/admin", b"https://a:8443/admin"),
        (b"http://a", b"http://a"),
        (b"http://a?x", b"http://a?x"),
        (b"http://a/", b"http://a/"),
        (b"http://a/./?x", b"http://a/?x"),
    ],
)
def test_absoluteForm(target: bytes, normal: bytes) -> None:
    request = head(target, "absolute")
    PathNormalizer().normalize(request)
    assert request.target == normal
    assert request.rawTarget == (None if normal == target else target)


def test_absoluteFormRefused() -> None:
    with pytest.raises(HTTPParseError) as caught:
        PathNormalizer().normalize(head(b"http://a/../admin", "absolute"))
    assert caught.value.reason == CLIMBS


@pytest.mark.parametrize(
    "target, form, method",
    [(b"*", "asterisk", b"OPTIONS"), (b"a:443", "authority", b"CONNECT")],
)
def test_noPathNoNormalisation(target: bytes, form: str, method: bytes) -> None:
    request = head(target, form, method)
    PathNormalizer().normalize(request)
    assert (request.target, request.rawTarget) == (target, None)


# -- through the front ----------------------------------------------------------


def adminListener(**kwargs) -> HTTPListenerConfig:
    return makeListener(routes=(RouteConfig(pool="admin", pathPrefix="/admin"),), **kwargs)


class FrontTests(ProxyTestCase):
    """
    A route for /admin (pool admin, port 9001) before the listener's pool
    (web, ports 8001 and 8002).
    """

    def makeAdmin(self, **kwargs):
        pools = {
            "web": makePool("web", reuseMaxIdle=0),
            "admin": makePool("admin", count=1, basePort=9001, reuseMaxIdle=0),
        }
        self.makeFactory(adminListener(**kwargs), pools)

    def place(self, data: bytes, pieces: int = 1):
        """
        Send C{data} in C{pieces} reads on a new connection; the backend
        that got it and the port it was for.
        """
        client = self.connectClient()
        size = -(-len(data) // pieces)
        for start in range(0, len(data), size):
            client.send(data[start : start + size])
        port = self.attemptPort()
        backend = self.connectBackend()
        backend.send(OK)
        return client, backend, port

    def test_issueSpellingsRouted(self):
        """
        Each spelling of /admin goes to the admin pool, in one read (the
        one-step parse of a whole request) and spread over reads (the
        parser's events), and the server receives /admin; the access log
        keeps the request line as the client sent it.
        """
        self.makeAdmin()
        for spelling in ISSUE_SPELLINGS:
            request = b"GET " + spelling + b" HTTP/1.1\r\nHost: example.com\r\n\r\n"
            for pieces in (1, 3):
                client, backend, port = self.place(request, pieces)
                self.assertEqual(port, 9001, (spelling, pieces))
                self.assertTrue(
                    backend.received().startswith(b"GET /admin HTTP/1.1\r\n"), backend.received()
                )
                self.assertLastRecord(pool="admin", target=spelling, status=200)
                client.close()

    def test_otherPathsStillDefault(self):
        self.makeAdmin()
        for path in (b"/", b"/index", b"/web/admin", b"/%2561dmin"):
            client, backend, port = self.place(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertIn(port, (8001, 8002), path)
            client.close()

    def test_pipelinedSpelling(self):
        """
        A spelling in the second of two pipelined requests (never seen by
        the one-step parse) is normalised too.
        """
        self.makeAdmin()
        client = self.connectClient()
        client.send(
            b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /web/../admin/users HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual(self.attemptPort(), 8001)
        self.connectBackend().send(OK)
        self.assertEqual(self.attemptPort(), 9001)
        backend = self.connectBackend()
        self.assertTrue(backend.received().startswith(b"GET /admin/users HTTP/1.1\r\n"))

    def test_postWithBody(self):
        self.makeAdmin()
        client = self.connectClient()
        client.send(b"POST /%61dmin/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertEqual(self.attemptPort(), 9001)
        backend = self.connectBackend()
        client.send(b"2\r\nhi\r\n0\r\n\r\n")
        self.assertTrue(backend.received().startswith(b"POST /admin/x HTTP/1.1\r\n"))
        self.assertTrue(backend.received().endswith(b"2\r\nhi\r\n0\r\n\r\n"))

    def test_absoluteForm(self):
        self.makeAdmin()
        client, backend, port = self.place(
            b"GET http://example.com/x/%2e%2e/admin?a=%2e HTTP/1.1\r\nHost: example.com\r\n\r\n"
        )
        self.assertEqual(port, 9001)
        self.assertTrue(backend.received().startswith(b"GET /admin?a=%2e HTTP/1.1\r\n"))

    def assertRefused(self, request: bytes, reason: str):
        client = self.connectClient()
        client.send(request)
        self.assertTrue(client.received().startswith(b"HTTP/1.1 400 "), client.received())
        self.assertTrue(client.closing)
        self.assertEqual(self.pendingAttempts(), 0)
        target = request.split(b" ")[1]
        self.assertLastRecord(status=400, termination="PR", pool="-", target=target)
        client.close()

    def test_refusedSpellings(self):
        """
        What cannot be normalised safely is refused with 400 before any
        server is chosen, once, with the request line in the access log.
        """
        self.makeAdmin()
        for path, reason in REFUSED:
            if b" " in path or b"\x00" in path or b"\x7f" in path:
                continue
            self.assertRefused(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n", reason)
        self.assertEqual(len(self.log.records), len(REFUSED) - 3)

    def test_allowedEncodedSlashPassesAsItIs(self):
        self.makeAdmin(paths=PathsConfig(allowEncodedSlash=True))
        client, backend, port = self.place(b"GET /%61dmin/a%2fb HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(port, 9001)
        self.assertTrue(backend.received().startswith(b"GET /admin/a%2Fb HTTP/1.1\r\n"))

    def test_normalisationOff(self):
        """
        With normalize = false, paths are matched and sent as received.
        """
        self.makeAdmin(paths=PathsConfig(normalize=False))
        self.assertIsNone(self.factory.paths)
        client, backend, port = self.place(b"GET /%61dmin HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIn(port, (8001, 8002))
        self.assertTrue(backend.received().startswith(b"GET /%61dmin HTTP/1.1\r\n"))
        client, backend, port = self.place(b"GET /a%2Fb/../%00 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(backend.received().startswith(b"GET /a%2Fb/../%00 HTTP/1.1\r\n"))

    def serverFor(self, request: bytes, clientPort: int) -> str:
        client = self.connectClient(IPv4Address("TCP", "192.0.2.7", clientPort))
        client.send(request)
        self.connectBackend().send(OK)
        client.close()
        return self.log.records[-1].server

    def test_hashKeysSeeTheNormalPath(self):
        """
        Hashing on path or uri: every spelling of a path reaches the
        server its normal form reaches.
        """
        for key in ("path", "uri"):
            servers = [Server(f"s{i}", f"tcp:host=127.0.0.1:port={8001 + i}") for i in range(7)]
            selector = findSelector("hash").build({"key": key})
            self.makeFactory(pools={"web": makePool(servers=servers, selector=selector, reuseMaxIdle=0)})
            placed = {}
            for index, name in enumerate([b"alpha", b"bravo", b"charlie", b"delta", b"echo"]):
                spellings = [
                    b"/files/" + name,
                    b"//files/./" + name,
                    b"/x/../files/" + name,
                    b"/%66iles/" + name,
                ]
                seen = {
                    self.serverFor(b"GET " + s + b"?v=1 HTTP/1.1\r\nHost: a\r\n\r\n", 41000 + index * 10 + n)
                    for n, s in enumerate(spellings)
                }
                self.assertEqual(len(seen), 1, (key, name, seen))
                placed[name] = seen.pop()
            self.assertGreater(len(set(placed.values())), 1, placed)


# -- configuration ----------------------------------------------------------------


PATHS_ONLY = "expected only with normalize = true (without it every path passes as received)"


def test_pathsDefaults():
    assert load(withListenerLines("")).listeners["web"].paths == PathsConfig()
    assert PathsConfig() == PathsConfig(True, False, False, False)


def test_pathsSet():
    text = withListenerLines(
        "paths = { allow_encoded_slash = true, allow_backslash = true, allow_encoded_control = true }\n"
    )
    assert load(text).listeners["web"].paths == PathsConfig(True, True, True, True)
    off = load(withListenerLines("paths = { normalize = false }\n")).listeners["web"].paths
    assert off == PathsConfig(normalize=False)


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("paths = 1\n", "listeners.web.paths: expected a table, got 1"),
        ('paths = { normalize = "yes" }\n', "listeners.web.paths.normalize: expected true or false, got 'yes'"),
        ("paths = { allow_slash = true }\n", "listeners.web.paths.allow_slash: unknown key"),
        ("paths = { allow_backslash = 1 }\n", "listeners.web.paths.allow_backslash: expected true or false, got 1"),
        (
            "paths = { normalize = false, allow_encoded_slash = false }\n",
            f"listeners.web.paths.allow_encoded_slash: {PATHS_ONLY}",
        ),
        (
            "paths = { normalize = false, allow_encoded_control = true }\n",
            f"listeners.web.paths.allow_encoded_control: {PATHS_ONLY}",
        ),
        (
            'routes = [{ pool = "api", path_prefix = "/%7Euser/" }]\n',
            "listeners.web.routes[0].path_prefix: expected a path in normal form (requests are "
            "matched after normalisation), '/~user/', got '/%7Euser/'",
        ),
        (
            'routes = [{ pool = "api", path_prefix = "/a" }, { pool = "api", path_prefix = "//b/./c" }]\n',
            "listeners.web.routes[1].path_prefix: expected a path in normal form (requests are "
            "matched after normalisation), '/b/c', got '//b/./c'",
        ),
        (
            'routes = [{ pool = "api", path_prefix = "/a%2Fb" }]\n',
            "listeners.web.routes[0].path_prefix: expected a path that normalisation accepts, "
            "got '/a%2Fb' (encoded slash in the path)",
        ),
        (
            'routes = [{ pool = "api", path_prefix = "/../a" }]\n',
            "listeners.web.routes[0].path_prefix: expected a path that normalisation accepts, "
            "got '/../a' (path climbs above the root)",
        ),
    ],
)
def test_pathsErrors(extra: str, expected: str):
    assert loadError(withListenerLines(extra)) == expected


def test_prefixesAsWrittenWithoutNormalisation():
    text = withListenerLines(
        'paths = { normalize = false }\nroutes = [{ pool = "api", path_prefix = "/%7Euser/" }]\n'
    )
    assert load(text).listeners["web"].routes[0].pathPrefix == "/%7Euser/"


def test_allowedEncodedSlashInPrefix():
    text = withListenerLines(
        'paths = { allow_encoded_slash = true }\nroutes = [{ pool = "api", path_prefix = "/a%2Fb" }]\n'
    )
    assert load(text).listeners["web"].routes[0].pathPrefix == "/a%2Fb"


def test_pathsOnRedirectListener():
    text = withListenerLines("").replace('pool = "web"\n', 'redirect_https = 443\npaths = { normalize = false }\n', 1)
    assert loadError(text) == (
        "listeners.web.paths: expected no paths table with redirect_https (no request is routed or forwarded)"
    )


def test_pathsOnTcpListener():
    text = withListenerLines("paths = { normalize = false }\n").replace('mode = "http"\n', "")
    assert loadError(text) == 'listeners.web.paths: expected only with mode = "http"'
