"""
The stats page: the running balancer at a glance, one HTML page rendered
from L{lbproxy.core.model.Balancer.snapshot}, with no external asset (its
style is inline, it has no script) and refreshing itself.

One table of listeners, then one table per pool with its servers: state
and for how long, last check (result, how long ago, how long it took),
weight, sessions now and in all, queue, bytes in and out, HTTP responses
by status class, errors and retries. A server that is down has its row in
red, draining in amber, in maintenance in grey, removed (finishing its
flows) in italics; the pool's title says how many servers are up.
"""

from __future__ import annotations

from html import escape

from lbproxy.core.pool import STATUS_CLASSES

#: Seconds between two refreshes of the page unless C{?refresh=N} says.
DEFAULT_REFRESH = 5

_STYLE = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 18px; margin: 0 0 .2em; } h2 { font-size: 15px; margin: 1.4em 0 .3em; }
.meta { color: #555; margin-bottom: 1em; }
table { border-collapse: collapse; margin-bottom: .5em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #eee; } td.name, th.name { text-align: left; }
tr.up td.state { background: #cfc; } tr.serving td.state { background: #cfc; }
tr.down td { background: #f99; font-weight: bold; } tr.down td.state { background: #e33; color: #fff; }
tr.drain td { background: #fe9; } tr.maint td { background: #ddd; color: #555; }
tr.draining td { background: #fe9; } tr.failed td, tr.stopped td { background: #f99; }
tr.removed td { font-style: italic; color: #666; }
.bad { color: #c00; font-weight: bold; } .ok { color: #070; }
"""


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, int) else escape(str(value))


def _bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1024
    return str(count)


def duration(seconds: float | None) -> str:
    """
    C{seconds} as an operator reads it: C{42s}, C{3m12s}, C{2h05m}, C{3d4h}.
    """
    if seconds is None:
        return "-"
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"


def _cells(values, names=()) -> str:
    return "".join(f'<td class="{escape(n)}">{v}</td>' if n else f"<td>{v}</td>" for v, n in zip(values, (*names, *[""] * len(values))))


def _responses(responses: dict) -> list[str]:
    return [_number(responses.get(name, 0)) for name in STATUS_CLASSES[1:]]


def _check(check: dict, now: float) -> str:
    if check.get("lastCheck") is None:
        return "-"
    ago = duration(now - check["lastCheck"])
    took = check.get("duration")
    took = f", {took * 1000:.0f} ms" if took is not None else ""
    if check.get("healthy"):
        return f'<span class="ok">ok</span> {ago} ago{took}'
    return f'<span class="bad">{escape(check.get("reason") or "failed")}</span> {ago} ago{took}'


def _listeners(listeners: list[dict], title: str) -> str:
    head = ["Listener", "Mode", "Bind", "State", "For", "Sessions", "Max", "Connections", "Refused", "Errors",
            "Bytes in", "Bytes out", "Requests", *STATUS_CLASSES[1:]]
    rows = []
    for listener in listeners:
        counters = listener["counters"]
        values = [
            escape(listener["name"]),
            escape(listener["mode"]),
            escape(listener["bind"]),
            escape(listener["state"]),
            duration(listener["for"]),
            _number(listener["sessions"]),
            _number(listener["maxconn"]) if listener["maxconn"] else "-",
            _number(counters["connections"]),
            _number(counters["refused"]),
            _number(counters["errors"]),
            _bytes(counters["bytesIn"]),
            _bytes(counters["bytesOut"]),
            _number(counters["requests"]),
            *_responses(counters["responses"]),
        ]
        rows.append(f'<tr class="{escape(listener["state"])}">{_cells(values, ("name", "name", "name", "state"))}</tr>')
    header = "".join(f'<th class="name">{h}</th>' if i < 3 else f"<th>{h}</th>" for i, h in enumerate(head))
    return f"<h2>{escape(title)}</h2><table><tr>{header}</tr>{''.join(rows)}</table>"


def _pool(pool: dict, now: float) -> str:
    servers = pool["servers"]
    live = [s for s in servers if not s.get("removed")]
    up = sum(1 for s in live if s["state"] == "up")
    head = ["Server", "Address", "State", "For", "Last check", "Weight", "Sessions", "Max", "Total", "Bytes in",
            "Bytes out", *STATUS_CLASSES[1:], "Conn. errors", "Resp. errors", "Retries", "Downs"]
    rows = []
    for server in servers:
        state = server["state"]
        classes = [state] + (["removed"] if server.get("removed") else [])
        label = {"up": "up", "down": "DOWN", "drain": "draining", "maint": "maintenance"}.get(state, state)
        if server.get("removed"):
            label += " (removed)"
        if server.get("backup"):
            label += ", backup"
        values = [
            escape(server["name"]),
            escape(server["address"]),
            escape(label),
            duration(server["for"]),
            _check(server["check"], now),
            _number(server["weight"]),
            _number(server["sessions"]),
            _number(server["maxconn"]) if server["maxconn"] else "-",
            _number(server["total"]),
            _bytes(server["bytesIn"]),
            _bytes(server["bytesOut"]),
            *_responses(server["responses"]),
            _number(server["connectErrors"]),
            _number(server["responseErrors"]),
            _number(server.get("retries", 0)),
            _number(server["downs"]),
        ]
        rows.append(f'<tr class="{" ".join(classes)}">{_cells(values, ("name", "name", "state", "", "name"))}</tr>')
    header = "".join(f'<th class="name">{h}</th>' if i in (0, 1, 2, 4) else f"<th>{h}</th>" for i, h in enumerate(head))
    status = "" if up else ' <span class="bad">NO SERVER UP</span>'
    title = (
        f"Pool {escape(pool['name'])}: {up} of {len(live)} servers up, selector {escape(str(pool['selector']))}, "
        f"queue {pool['queue']}{status}"
    )
    return f"<h2>{title}</h2><table><tr>{header}</tr>{''.join(rows)}</table>"


def render(snapshot: dict, refresh: int = DEFAULT_REFRESH) -> bytes:
    """
    The stats page of C{snapshot} (L{Balancer.snapshot}), refreshing
    itself every C{refresh} seconds (never for 0).
    """
    now = snapshot["time"]
    process = snapshot.get("process", {})
    meta = []
    if process:
        meta.append(f"config {escape(process.get('config', '-'))}")
        meta.append(f"pid {process.get('pid')}")
        meta.append(f"up {duration(now - process['started'])}" if process.get("started") else "")
        reload = process.get("lastReload")
        if reload:
            verdict = "applied" if reload["ok"] else '<span class="bad">refused</span>'
            meta.append(f"last reload {verdict} {duration(now - reload['time'])} ago")
    workers = snapshot.get("workers")
    if workers:
        serving = [w for w in workers["workers"] if w["state"] == "serving"]
        pids = ", ".join(str(w["pid"]) for w in serving)
        restarts = sum(w["restarts"] for w in workers["workers"])
        meta.append(f"workers {len(serving)} of {workers['count']} serving (pids {pids}), {restarts} restarts")
    ha = snapshot.get("ha")
    if ha:
        meta.append(f"HA role <b>{escape(str(ha.get('role', '-')))}</b>")
    meta.append(f"refreshes every {refresh}s" if refresh else "no refresh")
    parts = [_listeners(snapshot["listeners"], "Listeners")]
    if snapshot.get("draining"):
        parts.append(_listeners(snapshot["draining"], "Listeners removed, finishing their sessions"))
    parts += [_pool(pool, now) for pool in snapshot["pools"]]
    refreshTag = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    page = (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8">{refreshTag}'
        f"<title>lbproxy stats</title><style>{_STYLE}</style></head><body>"
        f"<h1>lbproxy</h1><div class=\"meta\">{' · '.join(m for m in meta if m)}</div>"
        f"{''.join(parts)}"
        '<p class="meta">The same as JSON: <a href="stats.json">stats.json</a>; Prometheus: '
        '<a href="metrics">metrics</a>.</p></body></html>\n'
    )
    return page.encode("utf-8")
