"""
C{lbproxy-ctl}: the runtime admin API from a shell::

    lbproxy-ctl [--config FILE | --url URL --token-file FILE] COMMAND

    status                             listeners, pools and servers
    server ready|drain|maint POOL/SERVER
    server weight POOL/SERVER WEIGHT
    server add POOL/SERVER ADDRESS [--weight N] [--backup] [--maxconn N] [--cookie VALUE]
    server remove POOL/SERVER
    sessions LISTENER                  the sessions a listener serves
    reload                             read the configuration again (as SIGHUP)

With C{--config}, the admin listener's address and token file are read
from the configuration's C{[admin]} table (the file is only read, not
checked as the daemon checks it). C{$LBPROXY_ADMIN_URL} and
C{$LBPROXY_ADMIN_TOKEN_FILE} stand for C{--url} and C{--token-file}.

Exit status: 0 done; 1 the daemon refused (the reason is printed); 2 a
usage error; 3 the daemon could not be reached; 4 the token was refused
(or the API is off).
"""

from __future__ import annotations

import argparse
import getpass
import http.client
import json
import os
import socket
import sys
import tomllib
import urllib.parse
from typing import TextIO

from lbproxy.config.admin import DEFAULT_ADMIN_BIND

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH = 0, 1, 2, 3, 4


class CtlError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _urlOf(bind: str) -> str:
    """
    The URL reaching an admin listener bound with C{bind} (a C{tcp:},
    C{tcp6:} or C{unix:} endpoint string).
    """
    from lbproxy.config.endpoints import EndpointError, parseBind

    try:
        address = parseBind(bind)
    except EndpointError as error:
        raise CtlError(f"cannot read [admin] bind {bind!r}: {error}", EXIT_USAGE)
    if address is None or address.kind not in ("inet", "unix"):
        raise CtlError(f"cannot reach [admin] bind {bind!r}: give --url", EXIT_USAGE)
    if address.kind == "unix":
        return "unix:" + address.path
    host = str(address.host) if address.host is not None else ("127.0.0.1" if address.version == 4 else "::1")
    return f"http://[{host}]:{address.port}" if ":" in host else f"http://{host}:{address.port}"


def _fromConfig(path: str) -> tuple[str, str | None]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise CtlError(f"cannot read {path}: {error}", EXIT_USAGE)
    admin = data.get("admin")
    if not isinstance(admin, dict):
        raise CtlError(f"{path} has no [admin] table: the admin listener is off", EXIT_USAGE)
    tokenFile = admin.get("token_file")
    if tokenFile is not None and not os.path.isabs(tokenFile):
        # Relative paths are the daemon's working directory's; the
        # config's directory is the best guess from here.
        tokenFile = os.path.join(os.path.dirname(os.path.abspath(path)), tokenFile)
    return _urlOf(admin.get("bind", DEFAULT_ADMIN_BIND)), tokenFile


class Client:
    """
    Speaks to the admin listener at C{url} (C{http://host:port} or
    C{unix:/path}).
    """

    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout

    def _connection(self) -> http.client.HTTPConnection:
        if self.url.startswith("unix:"):
            path = self.url[5:]
            timeout = self.timeout

            class UnixConnection(http.client.HTTPConnection):
                def connect(self) -> None:
                    self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self.sock.settimeout(timeout)
                    self.sock.connect(path)

            return UnixConnection("localhost", timeout=timeout)
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme == "https":
            return http.client.HTTPSConnection(parsed.hostname, parsed.port or 443, timeout=self.timeout)
        if parsed.scheme != "http" or not parsed.hostname:
            raise CtlError(f"expected an http://HOST:PORT, https://... or unix:/PATH URL, got {self.url!r}", EXIT_USAGE)
        return http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=self.timeout)

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Accept": "application/json", "X-Lbproxy-Operator": _operator()}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        connection = self._connection()
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except OSError as error:
            raise CtlError(f"cannot reach the admin listener at {self.url}: {error.strerror or error}", EXIT_UNREACHABLE)
        except http.client.HTTPException as error:
            raise CtlError(f"the admin listener at {self.url} answered badly: {error}", EXIT_UNREACHABLE)
        finally:
            connection.close()
        try:
            answer = json.loads(raw)
        except ValueError:
            raise CtlError(f"the admin listener at {self.url} answered {response.status} without JSON", EXIT_REFUSED)
        if response.status in (401, 403):
            raise CtlError(answer.get("error", "refused"), EXIT_AUTH)
        if response.status >= 400:
            raise CtlError(answer.get("error", f"refused ({response.status})"), EXIT_REFUSED)
        return answer


def _operator() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return f"uid {os.getuid()}"


def _serverPath(value: str) -> tuple[str, str]:
    pool, sep, server = value.partition("/")
    if not sep or not pool or not server or "/" in server:
        raise CtlError(f"expected POOL/SERVER, got {value!r}", EXIT_USAGE)
    return urllib.parse.quote(pool, safe=""), urllib.parse.quote(server, safe="")


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n")


def printStatus(snapshot: dict, out: TextIO) -> None:
    from lbproxy.admin.stats import duration

    process = snapshot.get("process", {})
    if process:
        out.write(f"lbproxy pid {process.get('pid')}, config {process.get('config')}\n")
    ha = snapshot.get("ha")
    if ha:
        out.write(f"HA role {ha.get('role')}\n")
    out.write("\n")
    rows = [["LISTENER", "MODE", "STATE", "SESSIONS", "CONNECTIONS", "ERRORS", "BIND"]]
    for listener in snapshot["listeners"] + snapshot.get("draining", []):
        c = listener["counters"]
        rows.append([listener["name"], listener["mode"], listener["state"], str(listener["sessions"]),
                     str(c["connections"]), str(c["errors"]), listener["bind"]])
    _table(rows, out)
    for pool in snapshot["pools"]:
        out.write(f"\npool {pool['name']} ({pool['selector']}, queue {pool['queue']})\n")
        rows = [["SERVER", "STATE", "FOR", "WEIGHT", "SESSIONS", "TOTAL", "CHECK", "ADDRESS"]]
        for server in pool["servers"]:
            check = server["check"]
            result = "-" if check.get("lastCheck") is None else ("ok" if check.get("healthy") else check.get("reason") or "failed")
            state = server["state"].upper() if server["state"] == "down" else server["state"]
            if server.get("removed"):
                state += " (removed)"
            rows.append([server["name"], state, duration(server["for"]), str(server["weight"]),
                         str(server["sessions"]), str(server["total"]), result, server["address"]])
        _table(rows, out)


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="lbproxy-ctl", description="Speak to a running lbproxy's admin API.")
    parser.add_argument("--config", help="the daemon's configuration: where its [admin] listener and token are")
    parser.add_argument("--url", help="the admin listener: http://127.0.0.1:9900 or unix:/run/lbproxy/admin.sock")
    parser.add_argument("--token-file", help="the file holding the admin token")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="listeners, pools and servers")
    commands.add_parser("reload", help="read the configuration again")
    sessions = commands.add_parser("sessions", help="the sessions a listener serves")
    sessions.add_argument("listener")
    server = commands.add_parser("server", help="change a server").add_subparsers(dest="action", required=True)
    for action in ("ready", "drain", "maint", "remove"):
        server.add_parser(action).add_argument("server", metavar="POOL/SERVER")
    weight = server.add_parser("weight")
    weight.add_argument("server", metavar="POOL/SERVER")
    weight.add_argument("weight", type=int)
    add = server.add_parser("add")
    add.add_argument("server", metavar="POOL/SERVER")
    add.add_argument("address")
    add.add_argument("--weight", type=int)
    add.add_argument("--maxconn", type=int)
    add.add_argument("--cookie")
    add.add_argument("--backup", action="store_true")
    try:
        options = parser.parse_args(argv)
    except SystemExit as exit:
        return EXIT_USAGE if exit.code else EXIT_OK
    try:
        return _run(options, out)
    except CtlError as error:
        err.write(f"lbproxy-ctl: {error}\n")
        return error.status


def _run(options, out: TextIO) -> int:
    url = options.url or os.environ.get("LBPROXY_ADMIN_URL")
    tokenFile = options.token_file or os.environ.get("LBPROXY_ADMIN_TOKEN_FILE")
    if options.config:
        configURL, configToken = _fromConfig(options.config)
        url, tokenFile = url or configURL, tokenFile or configToken
    url = url or _urlOf(DEFAULT_ADMIN_BIND)
    token = None
    if tokenFile is not None:
        try:
            with open(tokenFile, "rb") as f:
                token = f.read(8192).strip().decode("ascii")
        except (OSError, UnicodeDecodeError) as error:
            raise CtlError(f"cannot read the token file {tokenFile}: {getattr(error, 'strerror', None) or error}", EXIT_USAGE)
    client = Client(url, token)
    command = options.command
    if command == "status":
        printStatus(client.request("GET", "/stats.json"), out)
    elif command == "reload":
        out.write(client.request("POST", "/api/reload")["result"] + "\n")
    elif command == "sessions":
        answer = client.request("GET", f"/api/listeners/{urllib.parse.quote(options.listener, safe='')}/sessions")
        rows = [["CLIENT", "AGE", "PHASE", "SERVER", "REQUESTS"]]
        for session in answer["sessions"]:
            rows.append([str(session["client"]), f"{session['age']:.1f}s", str(session["phase"] or "-"),
                         str(session["server"] or "-"), "-" if session["requests"] is None else str(session["requests"])])
        shown = "" if len(answer["sessions"]) == answer["count"] else f" (the oldest {len(answer['sessions'])} shown)"
        out.write(f"{answer['count']} sessions on listener {answer['listener']}{shown}\n")
        if len(rows) > 1:
            _table(rows, out)
    else:
        action = options.action
        pool, name = _serverPath(options.server)
        if action in ("ready", "drain", "maint"):
            answer = client.request("POST", f"/api/servers/{pool}/{name}/state", {"state": action})
            out.write(f"{answer['server']}: {answer['state']}" + (f" (was {answer['was']})" if "was" in answer else "") + "\n")
            if "note" in answer:
                out.write(f"note: {answer['note']}\n")
        elif action == "weight":
            answer = client.request("POST", f"/api/servers/{pool}/{name}/weight", {"weight": options.weight})
            out.write(f"{answer['server']}: weight {answer['weight']} (was {answer['was']})\n")
        elif action == "remove":
            answer = client.request("DELETE", f"/api/servers/{pool}/{name}")
            out.write(f"{answer['server']}: removed, {answer['flows']} flows finishing\n")
        elif action == "add":
            body = {"name": urllib.parse.unquote(name), "address": options.address}
            for key in ("weight", "maxconn", "cookie"):
                if getattr(options, key) is not None:
                    body[key] = getattr(options, key)
            if options.backup:
                body["backup"] = True
            answer = client.request("POST", f"/api/pools/{pool}/servers", body)
            out.write(f"{answer['server']}: added at {answer['address']}, {answer['state']}\n")
    return EXIT_OK


def run() -> None:
    """
    The console script's entry point.
    """
    sys.exit(main())


if __name__ == "__main__":
    run()
