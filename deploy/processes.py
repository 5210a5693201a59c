"""Supervised child processes: own process group, a log file each, and a tag for the sweep.

Flower's programs start children of their own (a SuperExec, then a ServerApp per run or a
ClientApp per message); the SuperLink starts its SuperExec in a new session, so killing a
process group does not reach everything. Every child therefore gets
``FEDUNLEARN_DEPLOY_TAG=<uuid>`` in its environment, which its descendants inherit, and
``Supervisor.stop_all`` ends, by pid, every live process that still carries the tag
(read from ``/proc/<pid>/environ``; Linux only, elsewhere the sweep finds nothing).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

logger = logging.getLogger(__name__)

TAG_ENV = "FEDUNLEARN_DEPLOY_TAG"


@dataclass
class Child:
    """One started program: its Popen handle and its log file (stdout and stderr)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stopped: bool = False  # its group was signalled after it ended: never signal that id again

    @property
    def pid(self) -> int:
        """Its pid, which is also its process group id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether it is still running."""
        return self.popen.poll() is None

    def log_text(self) -> str:
        """Everything it printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 25) -> str:
        """Return the last lines of the log, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])


class Supervisor:
    """Starts programs in their own process groups and guarantees they all end.

    Use as a context manager (``stop_all`` runs on exit, also after an exception or Ctrl-C).
    """

    def __init__(self, *, log_dir: Path, env: Mapping[str, str]) -> None:
        self.log_dir = log_dir
        self.tag = uuid.uuid4().hex
        self.env = {**env, TAG_ENV: self.tag}
        self.children: list[Child] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> Child:
        """Start ``argv`` in a new session (own process group), output to ``<log_dir>/<name>.log``."""
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(  # noqa: S603 - argv is built by us, never a shell string
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.env, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        child = Child(name, popen, log_path)
        self.children.append(child)
        logger.info("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
        return child

    def run(
        self, name: str, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
    ) -> tuple[int, str]:
        """Run a short command to completion (stopped if it exceeds ``timeout``); returns (exit code, output)."""
        child = self.start(name, argv, env=env)
        try:
            code = child.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(child)
            raise TimeoutError(f"{name} did not finish within {timeout:.0f} s:\n{child.tail()}") from None
        return code, child.log_text()

    def stop(self, child: Child, *, grace: float = 20.0) -> int | None:
        """SIGTERM the child's process group, SIGKILL it after ``grace`` seconds; returns the exit code."""
        if child.stopped:
            return child.popen.returncode
        if child.alive():
            _signal_group(child.pid, signal.SIGTERM)
        try:
            return child.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", child.name, child.pid, grace)
            _signal_group(child.pid, signal.SIGKILL)
            return child.popen.wait(timeout=10)
        finally:
            _signal_group(child.pid, signal.SIGKILL)  # group members the leader left behind
            child.stopped = True

    def stop_all(self, *, grace: float = 20.0) -> list[int]:
        """Stop every child (newest first, all signalled at once), then sweep tagged leftovers.

        Returns the pids that still carry the tag afterwards (empty when all is clean).
        """
        for child in reversed(self.children):
            if child.alive() and not child.stopped:
                _signal_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in reversed(self.children):
            self.stop(child, grace=max(0.1, deadline - time.monotonic()))
        return self.sweep()

    def sweep(self, *, grace: float = 10.0) -> list[int]:
        """End every live process carrying this supervisor's tag (TERM, then KILL); returns survivors."""
        pids = tagged_pids(self.tag)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline:
                time.sleep(0.2)
                pids = tagged_pids(self.tag)
            if not pids:
                break
        if pids:
            logger.error("processes %s survived SIGKILL", pids)
        return pids

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop_all()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def tagged_pids(tag: str) -> list[int]:
    """Live (non-zombie) processes whose environment holds ``FEDUNLEARN_DEPLOY_TAG=<tag>``."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    needle = f"{TAG_ENV}={tag}".encode()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            environ = (entry / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return sorted(found)


def free_ports(count: int, *, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free on ``host`` right now (bound together, then released)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def wait_for_port(host: str, port: int, *, timeout: float, child: Child | None = None) -> None:
    """Wait until ``host:port`` accepts TCP connections; fail early if ``child`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise RuntimeError(
                f"{child.name} exited with code {child.popen.returncode} before listening on "
                f"{host}:{port}:\n{child.tail()}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
            return
        time.sleep(0.3)
    raise TimeoutError(
        f"nothing listens on {host}:{port} after {timeout:.0f} s" + (f":\n{child.tail()}" if child else "")
    )


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived; raised so that ``finally`` blocks stop every child."""


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into ``Interrupted`` while the block runs.

    SIGINT is handled explicitly because a shell starts background jobs with SIGINT ignored,
    and a process that ignores Ctrl-C would never clean up.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(f"received {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
