"""The shim's single reaper: subreaper, SIGCHLD and the only waitpid loop.

Rule 9 of the protocol doc: the shim must be child subreaper so that the
container init, orphaned when ``runc create`` exits, is reparented to us;
and exactly one loop may call waitpid, or it races with anyone else who
does.  So every child (runc calls, a ``binary://`` logger) is started by
``spawn`` here and waited for through ``wait``; nothing uses subprocess.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
# An exit nobody waits for yet (an init or exec reparented to us before
# its pid file was read) is kept this long for a later wait(pid).
UNCLAIMED_TTL = 60.0


def exit_status(status: int) -> int:
    """The status containerd reports: the exit code, or 128 + signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def set_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"failed to become child subreaper: {os.strerror(err)}")


class Reaper:
    """Owns waitpid for every child of the shim."""

    def __init__(self) -> None:
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._unclaimed: dict[int, tuple[int, float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[Callable[[int, int], None]] = []

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        set_subreaper()
        self._loop = loop
        loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def add_listener(self, listener: Callable[[int, int], None]) -> None:
        """Call ``listener(pid, status)`` for every exit, claimed or not."""
        self._listeners.append(listener)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        extra_fds: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
    ) -> tuple[int, asyncio.Future[int]]:
        """Start ``argv`` with posix_spawn; return its pid and exit future.

        The future is made before the loop can reap, so no exit is missed.

        The given fds are dup2'd onto 0, 1, 2 and 3.. (dup2 clears
        O_CLOEXEC on the copy); every other fd of the shim is O_CLOEXEC
        (PEP 446) and does not leak.  A missing stdio fd is /dev/null.
        """
        sources = [stdin, stdout, stderr, *extra_fds]
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        # file_actions run in order, so a source sitting on a lower target
        # would be overwritten before its own turn: copy those away first.
        moved = {
            fd: os.dup(fd)
            for target, fd in enumerate(sources)
            if fd is not None and fd < len(sources) and fd != target
        }
        try:
            actions = [
                (os.POSIX_SPAWN_DUP2, null if fd is None else moved.get(fd, fd), target)
                for target, fd in enumerate(sources)
            ]
            argv = list(argv)
            pid = os.posix_spawn(
                argv[0],
                argv,
                dict(env if env is not None else os.environ),
                file_actions=actions,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD),
                setsigmask=(),
            )
        finally:
            for fd in (null, *moved.values()):
                os.close(fd)
        # A status kept for an earlier process with this pid is stale now.
        self._unclaimed.pop(pid, None)
        return pid, self._waiter(pid)

    def wait(self, pid: int) -> asyncio.Future[int]:
        """A future for the raw wait status of ``pid``, a child we did not
        spawn ourselves (an init or exec reparented to the subreaper)."""
        fut = self._waiter(pid)
        if not fut.done() and pid in self._unclaimed:
            fut.set_result(self._unclaimed.pop(pid)[0])
        return fut

    def forget(self, pid: int) -> None:
        """Stop tracking ``pid``: nobody will wait for it any more."""
        fut = self._waiters.pop(pid, None)
        if fut is not None and not fut.done():
            fut.cancel()

    def _waiter(self, pid: int) -> asyncio.Future[int]:
        fut = self._waiters.get(pid)
        if fut is None:
            loop = self._loop or asyncio.get_running_loop()
            fut = self._waiters[pid] = loop.create_future()
        return fut

    def reap(self) -> None:
        """Collect every exited child (SIGCHLD handler, on the loop)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self._deliver(pid, status)
        self._expire()

    def _deliver(self, pid: int, status: int) -> None:
        fut = self._waiters.pop(pid, None)
        if fut is not None and not fut.done():
            fut.set_result(status)
        else:
            self._unclaimed[pid] = (status, time.monotonic())
        for listener in self._listeners:
            try:
                listener(pid, status)
            except Exception:
                log.exception("exit listener failed pid=%d", pid)

    def _expire(self) -> None:
        horizon = time.monotonic() - UNCLAIMED_TTL
        for pid in [p for p, (_, t) in self._unclaimed.items() if t < horizon]:
            del self._unclaimed[pid]
