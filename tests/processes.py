"""
Subprocesses for end-to-end tests: the real C{twistd -n lbproxy} and the
peers around it, each with its output in files of the test's temporary
directory, all stopped when the test ends.

Use the L{processes} fixture (import it into the test module) to start
them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support import checkoutEnvironment, twistd

#: Seconds a process may take to start listening (twistd scans plugins and
#: imports Twisted on its first run).
STARTUP = 30.0


def _dieWithParent() -> None:
    """
    In the child: be sent SIGTERM when the test run that started it dies,
    so that a test run killed midway leaves no daemon behind (Linux).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


_PR_SET_PDEATHSIG = 1


class Process:
    """
    A subprocess whose stdout and stderr go to files, in a session (process
    group) of its own, stopped with SIGTERM and, if it lingers, SIGKILL.

    @ivar logs: further files whose text L{describe} shows (a daemon's own
        log files).
    """

    def __init__(
        self, argv: list[str], directory: Path, label: str, extraEnv: dict | None = None
    ) -> None:
        self.argv = argv
        self.label = label
        self.logs: list[Path] = []
        env = checkoutEnvironment()
        for name, value in (extraEnv or {}).items():
            # PYTHONPATH entries are added after the checkout's.
            env[name] = os.pathsep.join(filter(None, [env.get(name), value]))
        self.stdoutPath = directory / f"{label}.stdout"
        self.stderrPath = directory / f"{label}.stderr"
        with open(self.stdoutPath, "wb") as out, open(self.stderrPath, "wb") as err:
            self.popen = subprocess.Popen(
                argv,
                cwd=directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=_dieWithParent,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def stdout(self) -> str:
        return self.stdoutPath.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderrPath.read_text(errors="replace")

    def describe(self) -> str:
        text = (
            f"{' '.join(self.argv)}\n--- stdout ---\n{self.stdout}"
            f"--- stderr ---\n{self.stderr}"
        )
        for path in self.logs:
            if path.exists():
                text += f"--- {path.name} ---\n{path.read_text(errors='replace')}"
        return text

    def waitForPort(self, port: int) -> None:
        """
        Wait until something accepts connections on 127.0.0.1:C{port}; fail
        with the process's output if it exits or takes too long.
        """
        deadline = time.monotonic() + STARTUP
        while True:
            if self.popen.poll() is not None:
                pytest.fail(f"exited with {self.popen.returncode} before listening on {port}:\n{self.describe()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"not listening on {port} after {STARTUP}s:\n{self.describe()}")
                time.sleep(0.05)

    def wait(self, timeout: float = STARTUP) -> int:
        return self.popen.wait(timeout)

    def running(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """
        SIGKILL the whole process group at once (a daemon's master and its
        workers), as a crash would end them.
        """
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        try:
            # Leftovers of the group (workers of a daemon whose master died).
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class ProcessGroup:
    """
    Starts processes in one directory and stops them all, the last started
    first. Called like the L{processes} fixture: C{group(argv, label)}.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Process] = []

    def __call__(self, argv: list[str], label: str, extraEnv: dict | None = None) -> Process:
        process = Process(argv, self.directory, label, extraEnv)
        self.started.append(process)
        return process

    def stopAll(self) -> None:
        for process in reversed(self.started):
            process.stop()
        self.started = []


@pytest.fixture
def processes(tmp_path):
    """
    Start processes in C{tmp_path}; all are stopped after the test, the
    last started first.
    """
    group = ProcessGroup(tmp_path)
    yield group
    group.stopAll()


def lbproxyArgv(tmp_path: Path, *options: str) -> list[str]:
    """
    The command line of C{twistd -n lbproxy OPTIONS}, logging to stdout,
    with its pidfile in C{tmp_path}.
    """
    return [
        twistd(),
        "-n",
        "--pidfile",
        str(tmp_path / "twistd.pid"),
        "--logfile",
        "-",
        "lbproxy",
        *options,
    ]


def startLbproxy(processes, tmp_path: Path, config: str, port: int, label: str = "lbproxy") -> Process:
    """
    Write C{config} to C{tmp_path}/C{label}.toml, start the real daemon on
    it and wait until it listens on C{port}.
    """
    path = tmp_path / f"{label}.toml"
    path.write_text(config)
    process = processes(lbproxyArgv(tmp_path, "--config", str(path)), label)
    process.waitForPort(port)
    return process


def waitUntil(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """
    Poll C{condition} until it holds; fail naming C{what} after C{timeout}
    seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def memoryStatus(pid: int) -> dict[str, int]:
    """
    The C{Vm*} lines of C{/proc/PID/status}, in bytes.
    """
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Vm"):
                name, value = line.split(":", 1)
                values[name] = int(value.split()[0]) * 1024
    return values


def resetPeakMemory(pid: int) -> bool:
    """
    Reset the peak resident size (VmHWM) of C{pid} to its current resident
    size; L{False} when the kernel does not allow it.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True
