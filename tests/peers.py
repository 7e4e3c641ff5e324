"""
Real peers of lbproxy for end-to-end tests: nginx backends, the Python
sink backend (L{httpsink}), and the curl and wrk clients.

An nginx started here is Debian's nginx binary with a configuration of
its own in the test's temporary directory: one worker, no daemon, pid,
error log and temporary files in that directory, no access log. Each of its
ports answers any path with a report of what it received, as C{name: value}
lines (the same form as the demo servers'), and the same fields as
C{X-Seen-*} response headers::

    port: 41207
    connection: 3
    requests: 2
    xff: 127.0.0.1
    proto: http
    host: 127.0.0.1:40111
    forwarded: for=127.0.0.1;proto=http
    cookie:
    uri: /a/b
    request: /a/./b?x=1

C{connection} and C{requests} are nginx's C{$connection} (serial number of
the connection) and C{$connection_requests} (requests on it so far), so a
test sees whether the proxy reused a backend connection; C{uri} and
C{request} are C{$uri} (the path as nginx normalised and decoded it) and
C{$request_uri} (the target as it arrived). C{/static/} serves
files from the C{www/static} directory (large bodies).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from processes import Process
from support import freePort, requireExecutable

#: The file of the sink backend, run with this interpreter.
SINK = Path(__file__).resolve().parent / "httpsink.py"

_NGINX = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    default_type text/plain;
    server_tokens off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_timeout {keepalive};
    keepalive_requests 100000;
    client_max_body_size 0;

    server {{
{listen}
        root {prefix}/www;

        location / {{
            add_header X-Seen-Port $server_port always;
            add_header X-Seen-Connection $connection always;
            add_header X-Seen-Requests $connection_requests always;
            add_header X-Seen-XFF $http_x_forwarded_for always;
            add_header X-Seen-Proto $http_x_forwarded_proto always;
            return 200 "port: $server_port\\nconnection: $connection\\nrequests: $connection_requests\\nxff: $http_x_forwarded_for\\nproto: $http_x_forwarded_proto\\nhost: $http_x_forwarded_host\\nforwarded: $http_forwarded\\ncookie: $http_cookie\\nuri: $uri\\nrequest: $request_uri\\n";
        }}

        location /static/ {{
            add_header X-Seen-Port $server_port always;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    """
    A running nginx.

    @ivar process: its master process (the group holds the worker).
    @ivar ports: the loopback ports it listens on.
    @ivar prefix: its directory (configuration, logs, C{www}).
    """

    process: Process
    ports: list[int]
    prefix: Path

    @property
    def static(self) -> Path:
        """
        The directory served as C{/static/}.
        """
        return self.prefix / "www" / "static"


def startNginx(
    processes, tmp_path: Path, label: str, count: int = 1, keepalive: str = "75s"
) -> Nginx:
    """
    Start nginx listening on C{count} free loopback ports, closing idle
    keep-alive connections after C{keepalive}.
    """
    binary = requireExecutable("nginx")
    prefix = tmp_path / label
    (prefix / "www" / "static").mkdir(parents=True)
    ports = [freePort() for _ in range(count)]
    config = prefix / "nginx.conf"
    config.write_text(
        _NGINX.format(
            prefix=prefix,
            # Running as root, nginx would switch its worker to an unprivileged
            # user who cannot read the test's directory.
            user="user root;" if os.geteuid() == 0 else "",
            keepalive=keepalive,
            listen="\n".join(f"        listen 127.0.0.1:{port};" for port in ports),
        )
    )
    process = processes([binary, "-p", str(prefix), "-c", str(config)], label)
    process.logs.append(prefix / "error.log")
    for port in ports:
        process.waitForPort(port)
    return Nginx(process, ports, prefix)


def startSink(processes, name: str, *options: str) -> tuple[Process, int]:
    """
    Start the sink backend (L{httpsink}) called C{name} on a free port.
    """
    port = freePort()
    process = processes(
        [sys.executable, str(SINK), "--port", str(port), "--name", name, *options],
        f"sink-{name}",
    )
    process.waitForPort(port)
    return process, port


def report(body: str) -> dict[str, str]:
    """
    The C{name: value} lines of an nginx report as a dict; empty values
    are L{None}.
    """
    fields = {}
    for line in body.splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip() or None
    return fields


def curl(*arguments: str, input: bytes | None = None) -> bytes:
    """
    Run curl with C{arguments} (silent, failing on transport errors, 20
    seconds at most) and return what it printed.
    """
    result = subprocess.run(
        [requireExecutable("curl"), "-sS", "--max-time", "20", *arguments],
        input=input,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


@dataclass
class WrkResult:
    """
    What wrk reported.

    @ivar requests: completed requests.
    @ivar socketErrors: C{connect}, C{read}, C{write}, C{timeout} counts.
    @ivar non2xx: responses whose status was not 2xx or 3xx.
    @ivar output: the whole output.
    """

    requests: int
    socketErrors: dict[str, int]
    non2xx: int
    output: str


def parseWrk(output: str) -> WrkResult:
    """
    Read wrk's summary: C{N requests in ...}, and the C{Socket errors:} and
    C{Non-2xx or 3xx responses:} lines it prints only when there are some.
    """
    requests = re.search(r"^\s*(\d+) requests in ", output, re.MULTILINE)
    if requests is None:
        raise ValueError(f"no request count in wrk's output:\n{output}")
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    line = re.search(r"Socket errors: (.*)$", output, re.MULTILINE)
    if line is not None:
        for name, count in re.findall(r"(\w+) (\d+)", line.group(1)):
            errors[name] = int(count)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(requests.group(1)),
        socketErrors=errors,
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        output=output,
    )


def wrk(url: str, threads: int = 1, connections: int = 10, duration: str = "2s") -> WrkResult:
    """
    Run a bounded wrk load against C{url} and parse its summary.
    """
    result = subprocess.run(
        [
            requireExecutable("wrk"),
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}",
            "--timeout",
            "5s",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return parseWrk(result.stdout)
