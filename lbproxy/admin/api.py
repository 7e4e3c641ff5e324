"""
The runtime admin API: HTTP and JSON on the admin listener, under
C{/api/}, each request carrying C{Authorization: Bearer TOKEN} (the token
of C{[admin] token_file}, compared in constant time).

  - C{GET /api/status}: the balancer as plain data (L{Balancer.snapshot}).
  - C{POST /api/servers/POOL/SERVER/state} C{{"state": "ready"|"drain"|"maint"}}
  - C{POST /api/servers/POOL/SERVER/weight} C{{"weight": N}}
  - C{POST /api/pools/POOL/servers} C{{"name": ..., "address": ..., "weight":
    ..., "backup": ..., "maxconn": ..., "cookie": ...}}: add a server, checked
    as the config's are.
  - C{DELETE /api/servers/POOL/SERVER}: remove a server (it leaves
    selection at once, and is gone when its last flow ends).
  - C{GET /api/listeners/NAME/sessions}: the sessions a listener serves
    (how many, and the oldest 1000).
  - C{POST /api/reload}: a full reload (as SIGHUP).

Every answer is a JSON object: C{{"ok": true, ...}} or C{{"error": "one
line"}} with the HTTP status saying which (400 a bad request, 401 no or a
wrong token, 403 the API is off, 404 nothing of that name, 405 another
method, 409 refused in the running state, 413 a body over 64 KiB).
Every change is logged in one line naming who asked: the client's address
and the operator the client names in C{X-Lbproxy-Operator}
(C{lbproxy-ctl} sends the user it runs as); a refused token is logged in
one line (a second at most per address, with a count), never the token.

Changes made here are the running balancer's: a reload applies the
configuration file, so a server added here and not written there is
removed by the next reload, and the states set here (drain, maintenance)
survive a reload of a server kept.
"""

from __future__ import annotations

import hmac
import json
from io import BytesIO

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from lbproxy.config import parseServer
from lbproxy.core.limits import LimitLog
from lbproxy.core.pool import ServerState
from lbproxy.errors import ConfigError

#: The largest request body the API reads.
MAX_BODY = 64 * 1024
#: The most sessions a listener's list shows (the oldest first).
MAX_SESSIONS = 1000
#: The states an operator sets, by the API's (and HAProxy's) words.
STATES = {"ready": ServerState.UP, "drain": ServerState.DRAIN, "maint": ServerState.MAINT}
#: The header naming the operator behind a request.
OPERATOR_HEADER = b"x-lbproxy-operator"


class BoundedContent(BytesIO):
    """
    A request body kept in memory up to L{MAX_BODY} bytes: past that,
    nothing more is kept and C{overflow} is set (the answer is a 413).
    """

    def __init__(self) -> None:
        super().__init__()
        self.overflow = False

    def write(self, data) -> int:
        if self.overflow or self.tell() + len(data) > MAX_BODY:
            self.overflow = True
            return len(data)
        return super().write(data)


class APIError(Exception):
    """
    A request the API refuses: C{status} and one line.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def who(request: Request) -> str:
    """
    Who asked, for the log: the operator the client names, at the
    client's address.
    """
    peer = request.getClientAddress()
    where = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}".rstrip(":") or "a unix socket client"
    operator = request.getHeader(OPERATOR_HEADER)
    if operator:
        text = operator[:64].decode("utf-8", "replace")
        name = "".join(c for c in text if c.isprintable() and c not in "\"\\ ")
        return f"{name}@{where}"
    return where


class TokenCheck:
    """
    The bearer token check: constant-time comparison, and one log line
    a second at most per client address for refused requests.
    """

    log = Logger()

    def __init__(self, token: bytes | None, reactor) -> None:
        self.token = token
        self.limitLog = LimitLog(reactor)

    def check(self, request: Request) -> None:
        """
        @raise APIError: 403 when the API is off, 401 for a missing or
            wrong token.
        """
        if self.token is None:
            raise APIError(403, "the runtime API is off: [admin] names no token_file")
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            self._refused(request, "no bearer token")
            raise APIError(401, "expected an Authorization: Bearer header with the admin token")
        if not hmac.compare_digest(given.strip(), self.token):
            self._refused(request, "a wrong token")
            raise APIError(401, "wrong token")

    def _refused(self, request: Request, why: str) -> None:
        host = getattr(request.getClientAddress(), "host", "unix")
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("ascii", "replace")[:200]

        def emit(count: int) -> None:
            self.log.warn(
                "admin API: refused {method} {path} from {host} with {why}{more}",
                method=method,
                path=path,
                host=host,
                why=why,
                more="" if count == 1 else f" ({count} refused requests from it in the last second)",
                count=count,
            )

        self.limitLog.note((host, why), emit)


class API(Resource):
    """
    The C{/api/} resource of the admin listener.

    @ivar service: the running L{lbproxy.service.BalancerService}.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, service, tokens: TokenCheck) -> None:
        super().__init__()
        self.service = service
        self.tokens = tokens

    def render(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        try:
            self.tokens.check(request)
            if getattr(request.content, "overflow", False):
                raise APIError(413, f"expected a body of at most {MAX_BODY} bytes")
            if request.method == b"GET":
                refreshing = self.service.refreshCounters()
                if refreshing is not None:
                    return self._later(request, refreshing)
            status, answer = self.dispatch(request)
        except APIError as error:
            status, answer = error.status, {"error": str(error)}
            if status == 401:
                request.setHeader(b"www-authenticate", b'Bearer realm="lbproxy"')
        request.setResponseCode(status)
        return json.dumps(answer, indent=1).encode("utf-8") + b"\n"

    def _later(self, request: Request, refreshing) -> int:
        """
        Answer a reading request once the workers' counters are summed
        (the control process of workers).
        """
        from twisted.web.server import NOT_DONE_YET

        finished = []
        request.notifyFinish().addBoth(finished.append)

        def answer(_):
            if finished:
                return
            try:
                status, body = self.dispatch(request)
            except APIError as error:
                status, body = error.status, {"error": str(error)}
            request.setResponseCode(status)
            request.write(json.dumps(body, indent=1).encode("utf-8") + b"\n")
            request.finish()

        refreshing.addCallback(answer).addErrback(
            lambda failure: self.log.failure("cannot answer {path}", failure, path=request.path)
        )
        return NOT_DONE_YET

    def dispatch(self, request: Request) -> tuple[int, dict]:
        method = request.method
        try:
            parts = [p.decode("utf-8") for p in request.postpath if p]
        except UnicodeDecodeError:
            raise APIError(404, "no such resource")
        route = {
            (b"GET", "status"): self.status,
            (b"POST", "reload"): self.reload,
            (b"GET", "listeners", "sessions"): self.sessions,
            (b"POST", "servers", "state"): self.setState,
            (b"POST", "servers", "weight"): self.setWeight,
            (b"DELETE", "servers"): self.removeServer,
            (b"POST", "pools", "servers"): self.addServer,
        }
        shapes = {
            ("status",): ("status",),
            ("reload",): ("reload",),
            ("listeners", None, "sessions"): ("listeners", "sessions"),
            ("servers", None, None, "state"): ("servers", "state"),
            ("servers", None, None, "weight"): ("servers", "weight"),
            ("servers", None, None): ("servers",),
            ("pools", None, "servers"): ("pools", "servers"),
        }
        for shape, key in shapes.items():
            if len(shape) == len(parts) and all(s is None or s == p for s, p in zip(shape, parts)):
                handler = route.get((method, *key))
                if handler is None:
                    allowed = sorted(m.decode() for (m, *k) in route if tuple(k) == key)
                    request.setHeader(b"allow", ", ".join(allowed).encode())
                    raise APIError(405, f"expected {' or '.join(allowed)} on this resource")
                arguments = [p for s, p in zip(shape, parts) if s is None]
                return handler(request, *arguments)
        raise APIError(404, "no such resource")

    # Reading.

    def status(self, request: Request) -> tuple[int, dict]:
        return 200, {"ok": True, **self.service.balancer.snapshot()}

    def sessions(self, request: Request, name: str) -> tuple[int, dict]:
        listener = self.service.balancer.listeners.get(name)
        if listener is None:
            raise APIError(404, f"no listener {name!r}")
        now = self.service.balancer.clock.seconds()
        oldest = sorted(listener.sessions, key=lambda s: getattr(s, "started", now))[:MAX_SESSIONS]
        sessions = [describeSession(s, now) for s in oldest]
        return 200, {"ok": True, "listener": name, "count": listener.sessionCount, "sessions": sessions}

    # Changing.

    def _server(self, poolName: str, serverName: str):
        pool = self.service.balancer.pools.get(poolName)
        if pool is None:
            raise APIError(404, f"no pool {poolName!r}")
        try:
            return pool.server(serverName)
        except KeyError:
            raise APIError(404, f"no server {serverName!r} in pool {poolName!r}")

    def _body(self, request: Request) -> dict:
        request.content.seek(0)
        try:
            body = json.loads(request.content.read() or b"{}")
        except ValueError as error:
            raise APIError(400, f"expected a JSON object, got invalid JSON ({error})")
        if not isinstance(body, dict):
            raise APIError(400, f"expected a JSON object, got {type(body).__name__}")
        return body

    def _changed(self, request: Request, what: str) -> str:
        reason = f"admin API, asked by {who(request)}"
        self.log.info("admin API: {what} ({reason})", what=what, reason=reason)
        return reason

    def setState(self, request: Request, poolName: str, serverName: str) -> tuple[int, dict]:
        server = self._server(poolName, serverName)
        word = self._body(request).get("state")
        state = STATES.get(word) if isinstance(word, str) else None
        if state is None:
            raise APIError(400, f"expected state \"ready\", \"drain\" or \"maint\", got {json.dumps(word)}")
        if state is ServerState.UP and server.state is ServerState.DOWN:
            return 200, {"ok": True, "server": server.qualifiedName, "state": server.state.value, "note": "down: its health checks bring it up"}
        if state is ServerState.UP and server.state is ServerState.UP:
            return 200, {"ok": True, "server": server.qualifiedName, "state": "up"}
        if state is ServerState.UP and server.state is ServerState.MAINT and server.pool.options.health is not None:
            # Out of maintenance, a checked server proves itself first:
            # down until its checks pass (rise), as HAProxy does.
            state = ServerState.DOWN
        old = server.state.value
        reason = self._changed(request, f"set {server.qualifiedName} {word} (was {old})")
        server.setState(state, reason)
        return 200, {"ok": True, "server": server.qualifiedName, "state": server.state.value, "was": old}

    def setWeight(self, request: Request, poolName: str, serverName: str) -> tuple[int, dict]:
        server = self._server(poolName, serverName)
        weight = self._body(request).get("weight")
        old = server.weight
        try:
            reason = f"admin API, asked by {who(request)}"
            server.setWeight(weight, reason)
        except ValueError as error:
            raise APIError(400, str(error))
        self.log.info("admin API: set {server} weight {weight} (was {old}) ({reason})", server=server.qualifiedName, weight=weight, old=old, reason=reason)
        return 200, {"ok": True, "server": server.qualifiedName, "weight": weight, "was": old}

    def addServer(self, request: Request, poolName: str) -> tuple[int, dict]:
        pool = self.service.balancer.pools.get(poolName)
        if pool is None:
            raise APIError(404, f"no pool {poolName!r}")
        body = self._body(request)
        try:
            config = parseServer(body, "server", "admin API")
        except ConfigError as error:
            raise APIError(400, str(error).removeprefix("admin API: "))
        reason = self._changed(request, f"add {poolName}/{config.name} at {config.address}")
        try:
            server = pool.addServer(config, reason)
        except ValueError as error:
            raise APIError(409, str(error))
        except ConfigError as error:
            raise APIError(400, str(error))
        return 201, {"ok": True, "server": server.qualifiedName, "address": server.address, "state": server.state.value}

    def removeServer(self, request: Request, poolName: str, serverName: str) -> tuple[int, dict]:
        server = self._server(poolName, serverName)
        pool = server.pool
        if len(pool.servers) == 1:
            raise APIError(409, f"pool {poolName!r} would have no server left")
        reason = self._changed(request, f"remove {server.qualifiedName} ({server.active} flows left)")
        pool.removeServer(serverName, reason)
        return 200, {"ok": True, "server": server.qualifiedName, "removed": True, "flows": server.active}

    def reload(self, request: Request) -> tuple[int, dict]:
        ok, line = self.service.reload(who(request) + " (admin API)")
        if not ok:
            raise APIError(409, line)
        return 200, {"ok": True, "result": line}


def describeSession(session, now: float) -> dict:
    """
    One session of a listener as plain data: the client, how long it has
    been open, the phase it is in, the server it is placed on.
    """
    client = getattr(session, "client", None)
    exchange = getattr(session, "exchange", None)
    server = getattr(exchange, "server", None)
    if server is None:
        server = getattr(getattr(session, "connection", None), "server", None)
    if server is None:
        server = getattr(session, "server", None)
    timer = getattr(session, "timer", None)
    phase = getattr(timer, "phase", None)
    if phase is None and getattr(session, "relayLeg", None) is not None:
        phase = "relaying"
    return {
        "client": f"{getattr(client, 'host', client)}:{getattr(client, 'port', '')}" if client is not None else None,
        "age": round(now - getattr(session, "started", now), 3),
        "phase": phase,
        "server": getattr(server, "qualifiedName", None),
        "requests": getattr(session, "requests", None),
    }
