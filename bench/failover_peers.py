"""
The peers of the failover scenarios, run inside the hosts of
bench/netns.py (stdlib only)::

    python failover_peers.py backend --address A --port P --name NAME
    python failover_peers.py client --address VIP --port P --out FILE \\
        [--spacing 0.01] [--duration 5] [--timeout 1]
    python failover_peers.py sticky --address VIP --port P --out FILE \\
        --sources A,B,... [--timeout 1]

C{backend}: a small HTTP/1.1 server answering every request with its
name, one request per connection.

C{client}: opens a connection to VIP every C{spacing} seconds (not
waiting for the previous ones) for C{duration} seconds, sends a GET on
each and records whether a 200 came back within C{timeout}; writes one
JSON document to C{--out}: C{requests}, a list of C{[start, end, ok,
detail]} on the CLOCK_MONOTONIC of the machine (which every namespace
shares, so a test can place its own events among them).

C{sticky}: one request from each source address in turn (addresses the
client's host has), recording which backend answered; writes
C{{"sticky": [[source, ok, detail], ...]}}: with a stick table on the
source address, the same sources reach the same backends on either node.

L{analyse} turns the requests into what the scenarios report: requests
lost, and the longest gap between two successful responses.
L{lbproxyNodeConfig} is the configuration of an lbproxy node of the pair.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


#: The pair's virtual addresses.
VIP = "192.0.2.100"
VIP6 = "2001:db8::100"


def lbproxyNodeConfig(
    host,
    peer,
    keyFile: str,
    priority: int,
    interval: str = "200ms",
    extra: str = "",
    notify: str = "",
    listeners: str = "",
    multicastIPv6: bool = False,
) -> str:
    """
    The configuration of an lbproxy node of the pair (C{host} and C{peer}
    have C{address}): a TCP listener on each virtual address in front of
    the two backends, health checked every 200 ms.

    @param extra: more keys of C{[ha]}.
    @param notify: a notify command for every role.
    @param listeners: more tables, e.g. a listener on the host's own address.
    @param multicastIPv6: adverts from the host's IPv6 address to the
        multicast group ff02::12 (no peers, no channel) instead of unicast
        IPv4 to the peer.
    """
    if multicastIPv6:
        nodes = f'address = "{host.address6}"\nchannel_port = 0'
    else:
        nodes = f'address = "{host.address}"\npeers = ["{peer.address}"]'
    escaped6 = VIP6.replace(":", "\\\\:")
    roles = "\n".join(f'{role} = ["{notify}"]' for role in ("master", "backup", "fault", "stop")) if notify else ""
    return f"""
[ha]
group = 51
priority = {priority}
interval = "{interval}"
interface = "eth0"
{nodes}
key_file = "{keyFile}"
virtual_addresses = ["{VIP}/24", "{VIP6}/64"]
{extra}

[ha.notify]
{roles}

[pools.web]
servers = [
    {{ name = "be1", address = "192.0.2.21:8080" }},
    {{ name = "be2", address = "192.0.2.22:8080" }},
]

[pools.web.health]
interval = "200ms"
timeout = "150ms"
fall = 2
rise = 1

[listeners.web]
bind = "tcp:80:interface={VIP}"
pool = "web"

[listeners.web6]
bind = "tcp6:port=80:interface={escaped6}"
pool = "web"
{listeners}
"""


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: bytes) -> None:
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(name), name)
        )
        await writer.drain()
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        pass
    finally:
        writer.close()


async def backend(address: str, port: int, name: str) -> None:
    server = await asyncio.start_server(lambda r, w: _serve(r, w, name.encode()), address, port, backlog=1024)
    print(f"listening on {address} port {port}", flush=True)
    async with server:
        await server.serve_forever()


async def _request(address: str, port: int, timeout: float, source: str | None = None) -> tuple[bool, str]:
    writer = None
    try:
        async def exchange():
            nonlocal writer
            local = (source, 0) if source else None
            reader, writer = await asyncio.open_connection(address, port, local_addr=local)
            writer.write(b"GET / HTTP/1.1\r\nHost: failover\r\nConnection: close\r\n\r\n")
            return await reader.read(4096)

        answer = await asyncio.wait_for(exchange(), timeout)
        if answer.startswith(b"HTTP/1.1 200 "):
            return True, answer.rsplit(b"\r\n\r\n", 1)[-1].decode("ascii", "replace")
        return False, answer[:40].decode("ascii", "replace") or "closed without a response"
    except asyncio.TimeoutError:
        return False, "timeout"
    except OSError as e:
        return False, type(e).__name__
    finally:
        if writer is not None:
            writer.close()


async def client(address: str, port: int, spacing: float, duration: float, timeout: float) -> list:
    results: list = []

    async def one() -> None:
        start = time.monotonic()
        ok, detail = await _request(address, port, timeout)
        results.append([start, time.monotonic(), ok, detail])

    tasks = []
    began = time.monotonic()
    count = 0
    while True:
        due = began + count * spacing
        if due - began >= duration:
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one()))
        count += 1
    await asyncio.gather(*tasks)
    results.sort()
    return results


async def sticky(address: str, port: int, sources: list[str], timeout: float) -> list:
    """
    One request from each of C{sources}, one after the other (so that a
    round-robin pool meets them in this order).
    """
    results = []
    for source in sources:
        ok, detail = await _request(address, port, timeout, source)
        results.append([source, ok, detail])
    return results


def stickSources(first: int, count: int) -> list[str]:
    """
    C{count} client source addresses of 192.0.2.0/24 from C{.first} on.
    """
    return [f"192.0.2.{n}" for n in range(first, first + count)]


def honoured(before: list, after: list) -> dict:
    """
    How many sources of C{before} (L{sticky} results) reached the same
    backend in C{after}.
    """
    pinned = {source: detail for source, ok, detail in before if ok}
    again = {source: detail for source, ok, detail in after if ok}
    same = sum(1 for source, detail in pinned.items() if again.get(source) == detail)
    return {"honoured": same, "of": len(pinned)}


def analyse(requests: list, since: float | None = None, until: float | None = None) -> dict:
    """
    Requests lost, and the longest time without a successful response
    (ms, between two successive successful completions), among the
    requests started from C{since} to C{until} (all by default).
    """
    chosen = [r for r in requests if (since is None or r[0] >= since) and (until is None or r[0] <= until)]
    done = sorted(r[1] for r in chosen if r[2])
    gap = max((b - a for a, b in zip(done, done[1:])), default=0.0)
    lost = [r for r in chosen if not r[2]]
    return {
        "requests": len(chosen),
        "lost": len(lost),
        "gapMs": round(gap * 1000, 1),
        "errors": sorted({r[3] for r in lost}),
        "servedBy": sorted({r[3] for r in chosen if r[2]}),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="peers of the failover scenarios")
    sub = parser.add_subparsers(dest="role", required=True)
    b = sub.add_parser("backend")
    b.add_argument("--address", required=True)
    b.add_argument("--port", type=int, required=True)
    b.add_argument("--name", required=True)
    c = sub.add_parser("client")
    c.add_argument("--address", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--spacing", type=float, default=0.01)
    c.add_argument("--duration", type=float, default=5.0)
    c.add_argument("--timeout", type=float, default=1.0)
    s = sub.add_parser("sticky")
    s.add_argument("--address", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--sources", required=True, help="comma-separated source addresses")
    s.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.role == "backend":
        asyncio.run(backend(args.address, args.port, args.name))
        return 0
    if args.role == "sticky":
        sources = [a for a in args.sources.split(",") if a]
        if not 0 < len(sources) <= 1000:
            parser.error("--sources must name 1 to 1000 addresses")
        results = asyncio.run(sticky(args.address, args.port, sources, args.timeout))
        with open(args.out, "w") as f:
            json.dump({"sticky": results}, f)
        return 0
    if not 0 < args.duration <= 600 or not 0.001 <= args.spacing <= 10:
        parser.error("--duration must be at most 600 s and --spacing at least 1 ms")
    requests = asyncio.run(client(args.address, args.port, args.spacing, args.duration, args.timeout))
    with open(args.out, "w") as f:
        json.dump({"requests": requests}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
