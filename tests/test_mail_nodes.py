"""
Routing by user across lbproxy nodes, end to end: two real
C{twistd -n lbproxy} processes (two proxy nodes) with the same pool of two
Dovecot stores (tests/dovecot.py), keyed on the user. Every user reaches
the same store from either node, whatever form of its name it logs in
with, and the users are spread over both stores. A store going down
leaves its users without service (the stores hold distinct mailboxes)
and the others where they were; with stores = "replicas", Maglev moves
only its users.
"""

from __future__ import annotations

import imaplib
import poplib

import pytest

from dovecot import dovecot, dovecotStores  # noqa: F401 (fixtures)
from processes import processes, startLbproxy  # noqa: F401 (a fixture)
from support import freePort

pytestmark = pytest.mark.integration

TIMEOUT = 20

USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "heidi")

CONFIG = """\
[listeners.imap]
bind = "tcp:{imap}:interface=127.0.0.1"
mode = "imap"
pool = "imap"
user_domain = "example.test"

[listeners.pop3]
bind = "tcp:{pop3}:interface=127.0.0.1"
mode = "pop3"
pool = "pop3"
user_domain = "example.test"

[pools.imap]
selector = {{ name = "{selector}", key = "user" }}
client_address = "id"
retries = 1
{stores}
servers = [
    {{ name = "a", address = "127.0.0.1:{aImap}" }},
    {{ name = "b", address = "127.0.0.1:{bImap}" }},
]

[pools.pop3]
selector = {{ name = "{selector}", key = "user" }}
client_address = "xclient"
retries = 1
{stores}
servers = [
    {{ name = "a", address = "127.0.0.1:{aPop3}" }},
    {{ name = "b", address = "127.0.0.1:{bPop3}" }},
]
"""


def startNodes(processes, tmp_path, stores, selector: str, poolStores: str = "") -> list[dict]:  # noqa: F811
    """
    Two lbproxy nodes with the same pools; each node's IMAP and POP3
    ports.
    """
    a, b = stores.stores
    nodes = []
    for label in ("node1", "node2"):
        ports = {"imap": freePort(), "pop3": freePort()}
        config = CONFIG.format(
            selector=selector,
            stores=f'stores = "{poolStores}"' if poolStores else "",
            aImap=a.ports["imap"], bImap=b.ports["imap"],
            aPop3=a.ports["pop3"], bPop3=b.ports["pop3"],
            **ports,
        )
        directory = tmp_path / label
        directory.mkdir()
        process = startLbproxy(processes, directory, config, ports["imap"], label)
        process.waitForPort(ports["pop3"])
        nodes.append(ports)
    return nodes


def imapStore(stores, port: int, name: str, password: str) -> str:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=TIMEOUT)
    try:
        try:
            client.login(name, password)
        except imaplib.IMAP4.error as e:
            return "unavailable" if "[UNAVAILABLE]" in str(e) else str(e)
        client.select("INBOX", readonly=True)
        _, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return stores.storeOf(data[0][1].decode()).name
    finally:
        client.logout()


def pop3Store(stores, port: int, name: str, password: str) -> str:
    client = poplib.POP3("127.0.0.1", port, timeout=TIMEOUT)
    try:
        client.user(name)
        try:
            client.pass_(password)
        except poplib.error_proto as e:
            return "unavailable" if "[SYS/TEMP]" in str(e) else str(e)
        _, lines, _ = client.top(1, 0)
        subject = next(line for line in lines if line.startswith(b"Subject: "))
        return stores.storeOf(subject.decode()).name
    finally:
        client.quit()


def placements(stores, nodes, users=USERS) -> dict[str, set[str]]:
    """
    The stores each user reached, over both nodes, both protocols and
    three forms of its name.
    """
    served: dict[str, set[str]] = {}
    for user in users:
        password = stores.users[user]
        for node in nodes:
            for name in (user, user.upper(), f"{user}@example.test"):
                served.setdefault(user, set()).add(imapStore(stores, node["imap"], name, password))
                served[user].add(pop3Store(stores, node["pop3"], name, password))
    return served


@pytest.mark.parametrize("selector", ["hash", "maglev"])
def test_sameStoreFromEveryNode(processes, tmp_path, dovecot, selector):  # noqa: F811
    nodes = startNodes(processes, tmp_path, dovecot, selector)
    served = placements(dovecot, nodes)
    for user, stores in served.items():
        assert len(stores) == 1, f"{user} reached stores {sorted(stores)}"
    assert {next(iter(s)) for s in served.values()} == {"a", "b"}


def test_storeDownLeavesOnlyItsUsersWithoutService(processes, tmp_path, dovecot):  # noqa: F811
    """
    With store b down, b's users get the temporary failure from both
    nodes, over both protocols (no other store holds their mail); a's
    users stay on a.
    """
    nodes = startNodes(processes, tmp_path, dovecot, "maglev")
    before = {user: next(iter(s)) for user, s in placements(dovecot, nodes).items()}
    assert set(before.values()) == {"a", "b"}
    dovecot.byName["b"].stop()
    after = placements(dovecot, nodes)
    for user, stores in after.items():
        expected = {"a"} if before[user] == "a" else {"unavailable"}
        assert stores == expected, f"{user} reached {sorted(stores)}"


def test_maglevReplicasStoreDownMovesOnlyItsUsers(processes, tmp_path, dovecot):  # noqa: F811
    """
    stores = "replicas": with store b down, b's users reach a (the
    selector's next choice) from both nodes; a's users stay where they
    were.
    """
    nodes = startNodes(processes, tmp_path, dovecot, "maglev", "replicas")
    before = {user: next(iter(s)) for user, s in placements(dovecot, nodes).items()}
    dovecot.byName["b"].stop()
    after = placements(dovecot, nodes)
    for user, stores in after.items():
        assert stores == {"a"}, f"{user} reached {sorted(stores)}"
    assert "b" in before.values()
