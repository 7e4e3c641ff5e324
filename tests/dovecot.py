"""
Two real Dovecot instances as two mail stores, for the IMAP and POP3 tests.

    from dovecot import dovecot, dovecotStores  # noqa: F401 (fixtures)

    def test_something(dovecot):
        store = dovecot.stores[0]
        imaplib.IMAP4("127.0.0.1", store.ports["imap"])
        user = dovecot.users["alice"]            # name and password
        store.subject                            # subject of its own first message

Each store is a C{dovecot -F} of its own, generated in a temporary
directory (configuration, base_dir, state, logs, maildirs and certificates
all inside it), listening on free loopback ports:

    imap, imaps, pop3, pop3s      the usual listeners
    imapProxy, pop3Proxy          listeners that require the PROXY protocol
                                  (C{haproxy = yes})

Both stores know the same users with the same passwords (passwd-file,
plain scheme; C{auth_username_format = %Ln}, so C{Alice@example.test} logs
in as C{alice}), but each user's INBOX on store C{a} holds messages whose
subjects say C{store a}, and likewise on C{b}: a test proves which store
served a user by reading a subject, the greeting (C{store a ready}) or the
store's log. The last message of every INBOX is L{LARGE_SIZE} bytes, for
FETCH and RETR throughput; its exact wire form is L{DovecotStores.largeMessage}.

Loopback is a trusted network for both stores (C{login_trusted_networks},
C{haproxy_trusted_networks}), so the client address a proxy passes with
IMAP C{ID}, POP3 C{XCLIENT} or the PROXY protocol shows in the store's log
as C{rip=}. Failed logins are answered without delay.

The stores run for the whole test session (starting one takes about a
second); the L{dovecot} fixture restarts any store a test stopped, before
and after the test, so C{store.stop()} is how a test takes a backend down.

Dovecot runs as root here (as its own service would): mail processes run
as an unprivileged uid chrooted into the store's mail directory, because
pytest's temporary directories are not readable by other users.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from certs import CertificateAuthority, Issued
from processes import Process, waitUntil
from support import freePort, missing, requireExecutable

#: Users on both stores; each one's password is C{NAME-secret}.
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")

#: Size of the large message at the end of every INBOX (as stored, LF line
#: ends; its CRLF wire form is a little larger).
LARGE_SIZE = 5 * 1024 * 1024

#: Small messages before the large one in every INBOX.
SMALL_MESSAGES = 3

#: The uid (and gid) mail processes run as. No account needs to exist.
MAIL_UID = 4242

#: Listener names and the service and options of each.
LISTENERS = {
    "imap": ("imap-login", ""),
    "imaps": ("imap-login", "ssl = yes"),
    "imapProxy": ("imap-login", "haproxy = yes"),
    "pop3": ("pop3-login", ""),
    "pop3s": ("pop3-login", "ssl = yes"),
    "pop3Proxy": ("pop3-login", "haproxy = yes"),
}

#: Seconds a store may take to answer on all its ports.
STARTUP = 20.0


def password(user: str) -> str:
    return f"{user}-secret"


def smallMessage(store: str, user: str, number: int) -> bytes:
    """
    Message C{number} (from 1) of C{user}'s INBOX on store C{store}, as
    stored (LF line ends).
    """
    return (
        f"From: sender@example.test\n"
        f"To: {user}@example.test\n"
        f"Subject: store {store} message {number} for {user}\n"
        f"Message-ID: <{store}.{number}.{user}@example.test>\n"
        f"Date: Sat, 28 Nov 2026 06:00:0{number} +0000\n"
        f"\n"
        f"This is message {number} of {user} on store {store}.\n"
    ).encode("ascii")


def largeMessage(size: int = LARGE_SIZE) -> bytes:
    """
    The large message, as stored (LF line ends): numbered 64-byte lines,
    so a truncated or reordered copy is obvious.
    """
    head = (
        b"From: sender@example.test\n"
        b"Subject: large message\n"
        b"Message-ID: <large@example.test>\n"
        b"Date: Sat, 28 Nov 2026 06:00:59 +0000\n"
        b"\n"
    )
    lines = []
    total = len(head)
    number = 0
    while total < size:
        line = b"%08d " % number + b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRST\n"
        lines.append(line)
        total += len(line)
        number += 1
    return (head + b"".join(lines))[:size - 1] + b"\n"


def wireForm(message: bytes) -> bytes:
    """
    A stored message as IMAP FETCH BODY[] and POP3 RETR send it (CRLF line
    ends; POP3 dot-stuffing aside).
    """
    return message.replace(b"\n", b"\r\n")


@dataclass
class DovecotStore:
    """
    One running Dovecot: a mail store.

    @ivar name: C{"a"}, C{"b"}: appears in its greeting and subjects.
    @ivar ports: listener name (see L{LISTENERS}) -> port on 127.0.0.1.
    @ivar logPath: the store's log file (C{log_path}).
    """

    name: str
    directory: Path
    config: Path
    logPath: Path
    ports: dict[str, int]
    executable: str
    process: Process | None = None
    starts: int = 0

    @property
    def subject(self) -> str:
        """
        The start of every subject in this store's INBOXes.
        """
        return f"store {self.name} "

    @property
    def greeting(self) -> str:
        return f"store {self.name} ready"

    def address(self, listener: str = "imap") -> str:
        """
        The Twisted client endpoint string of one of its listeners.
        """
        return f"tcp:127.0.0.1:{self.ports[listener]}"

    def start(self) -> None:
        """
        Start the store (if it is not running) and wait until every
        listener answers.
        """
        if self.running():
            return
        self.starts += 1
        self.process = Process(
            [self.executable, "-F", "-c", str(self.config)],
            self.directory,
            f"dovecot-{self.name}-{self.starts}",
        )
        self.process.logs.append(self.logPath)
        deadline = time.monotonic() + STARTUP
        for port in self.ports.values():
            while not _answers(port):
                if not self.process.running():
                    pytest.fail(f"Dovecot {self.name} exited:\n{self.process.describe()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"Dovecot {self.name} not listening on {port}:\n{self.process.describe()}")
                time.sleep(0.05)

    def stop(self) -> None:
        """
        Stop the store (a backend that is down): its ports refuse
        connections once this returns.
        """
        if self.process is not None:
            self.process.stop()
            self.process = None
        waitUntil(lambda: not any(_answers(p) for p in self.ports.values()), f"Dovecot {self.name} to stop")

    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def log(self) -> str:
        """
        Everything the store has logged so far.
        """
        if not self.logPath.exists():
            return ""
        return self.logPath.read_text(errors="replace")


@dataclass
class DovecotStores:
    """
    The two stores, their users and the files a client needs.

    @ivar users: user name -> password.
    @ivar ca: the CA that signed the stores' certificate (trust anchor for
        clients and for lbproxy pools with C{verify}).
    @ivar certificate: the stores' certificate (names C{localhost},
        C{127.0.0.1}, C{store-a.test}, C{store-b.test}).
    @ivar largeMessage: the wire form (CRLF) of the large message, the last
        of every INBOX.
    @ivar messageCount: messages in every INBOX.
    """

    stores: list[DovecotStore]
    users: dict[str, str]
    ca: CertificateAuthority
    certificate: Issued
    largeMessage: bytes
    messageCount: int = SMALL_MESSAGES + 1
    byName: dict[str, DovecotStore] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.byName = {s.name: s for s in self.stores}

    def ensureRunning(self) -> None:
        for store in self.stores:
            store.start()

    def stopAll(self) -> None:
        for store in self.stores:
            if store.process is not None:
                store.process.stop()
                store.process = None

    def storeOf(self, subject: str) -> DovecotStore:
        """
        The store a message subject (or greeting) comes from.
        """
        for store in self.stores:
            if store.subject in subject or store.greeting in subject:
                return store
        raise LookupError(f"no store's subject in {subject!r}")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _writeMaildirs(root: Path, store: str, large: Path) -> None:
    """
    An INBOX for every user under C{root}/USER/Maildir, owned by
    L{MAIL_UID}; the large message is a hard link to C{large}.
    """
    for user in USERS:
        maildir = root / user / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        for number in range(1, SMALL_MESSAGES + 1):
            (maildir / "cur" / f"{1700000000 + number}.M{number}P1.test:2,").write_bytes(
                smallMessage(store, user, number)
            )
        os.link(large, maildir / "cur" / f"{1700000099}.M99P1.test:2,")
    for path in [root, *root.rglob("*")]:
        os.chown(path, MAIL_UID, MAIL_UID)


def _config(name: str, directory: Path, ports: dict[str, int], certificate: Issued) -> str:
    listeners: dict[str, list[str]] = {}
    for listener, (service, options) in LISTENERS.items():
        listeners.setdefault(service, []).append(
            f"  inet_listener {listener} {{\n    port = {ports[listener]}\n"
            + (f"    {options}\n" if options else "")
            + "  }\n"
        )
    services = "".join(
        f"service {service} {{\n{''.join(blocks)}"
        "  service_count = 0\n  process_min_avail = 1\n  client_limit = 1000\n}\n"
        for service, blocks in listeners.items()
    )
    return f"""\
# Generated by tests/dovecot.py: mail store {name}.
base_dir = {directory}/run
state_dir = {directory}/state
log_path = {directory}/dovecot.log
instance_name = lbproxy-test-{name}
protocols = imap pop3
listen = 127.0.0.1
login_greeting = store {name} ready.
login_trusted_networks = 127.0.0.0/8
haproxy_trusted_networks = 127.0.0.0/8
haproxy_timeout = 5 secs
shutdown_clients = yes
default_client_limit = 1000

ssl = yes
ssl_cert = <{certificate.chain}
ssl_key = <{certificate.key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no

auth_mechanisms = plain login
auth_username_format = %Ln
auth_failure_delay = 0
auth_cache_size = 0
passdb {{
  driver = passwd-file
  args = {directory}/passwd
}}
userdb {{
  driver = passwd-file
  args = {directory}/passwd
}}
service auth {{
  user = root
}}
service auth-worker {{
  user = root
}}

first_valid_uid = {MAIL_UID}
last_valid_uid = {MAIL_UID}
first_valid_gid = {MAIL_UID}
valid_chroot_dirs = {directory}/mail
mail_location = maildir:~/Maildir
mail_max_userip_connections = 1000
namespace inbox {{
  inbox = yes
}}
protocol imap {{
  mail_max_userip_connections = 1000
}}
protocol pop3 {{
  mail_max_userip_connections = 1000
}}
{services}"""


def _createStore(name: str, base: Path, certificate: Issued, largeFile: Path, executable: str) -> DovecotStore:
    directory = base / f"store-{name}"
    (directory / "run").mkdir(parents=True)
    (directory / "state").mkdir()
    _writeMaildirs(directory / "mail", name, largeFile)
    # The home "/./" splits the chroot (the store's mail directory) from
    # the home inside it.
    (directory / "passwd").write_text(
        "".join(
            f"{user}:{{PLAIN}}{password(user)}:{MAIL_UID}:{MAIL_UID}::{directory}/mail/./{user}::\n"
            for user in USERS
        )
    )
    ports = {listener: freePort() for listener in LISTENERS}
    config = directory / "dovecot.conf"
    config.write_text(_config(name, directory, ports, certificate))
    return DovecotStore(
        name=name,
        directory=directory,
        config=config,
        logPath=directory / "dovecot.log",
        ports=ports,
        executable=executable,
    )


def startStores(tmp_path_factory) -> DovecotStores:
    """
    Create and start the two stores in a new temporary directory.
    """
    executable = requireExecutable("dovecot")
    if os.geteuid() != 0:
        missing("the Dovecot stores run as root (mail processes change uid and chroot)")
    base = tmp_path_factory.mktemp("dovecot")
    ca = CertificateAuthority(base / "ca")
    certificate = ca.issue("localhost", "127.0.0.1", "store-a.test", "store-b.test", fileName="store")
    large = largeMessage()
    largeFile = base / "large.eml"
    largeFile.write_bytes(large)
    stores = DovecotStores(
        stores=[_createStore(name, base, certificate, largeFile, executable) for name in ("a", "b")],
        users={user: password(user) for user in USERS},
        ca=ca,
        certificate=certificate,
        largeMessage=wireForm(large),
    )
    try:
        stores.ensureRunning()
    except BaseException:
        stores.stopAll()
        raise
    return stores


#: The running stores and how many fixture instances use them. Each test
#: module that imports the fixtures has fixtures of its own in pytest's
#: eyes, each instantiated once per session: they share one pair of stores,
#: stopped when the last of them is torn down.
_shared: dict = {"stores": None, "users": 0}


@pytest.fixture(scope="session")
def dovecotStores(tmp_path_factory):
    """
    The two Dovecot stores, started once for the whole session (see the
    module docstring). Tests use L{dovecot}, which also restarts stores a
    test stopped.
    """
    if _shared["stores"] is None:
        _shared["stores"] = startStores(tmp_path_factory)
    stores = _shared["stores"]
    _shared["users"] += 1
    try:
        yield stores
    finally:
        _shared["users"] -= 1
        if not _shared["users"]:
            _shared["stores"] = None
            stores.stopAll()


@pytest.fixture
def dovecot(dovecotStores):
    """
    The running stores (L{DovecotStores}); any store the test stopped is
    started again afterwards.
    """
    dovecotStores.ensureRunning()
    yield dovecotStores
    dovecotStores.ensureRunning()
