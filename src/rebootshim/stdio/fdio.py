"""Small fd helpers shared by the relay threads and the openers.

The relay threads never block in read(2) or write(2): every fd they touch
is O_NONBLOCK and they sleep in poll(2) together with a ``Waker`` pipe, so
``close()`` from the event loop can always stop them (a close(2) from
another thread does not wake a blocked read on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import select
import stat
from collections.abc import Callable, Iterable

from rebootshim.errors import FailedPrecondition, InvalidArgument, ShimError

# Ready bits that mean "look at the fd now": data, room, or a hang-up.
READY_IN = select.POLLIN | select.POLLHUP | select.POLLERR
READY_OUT = select.POLLOUT | select.POLLHUP | select.POLLERR

# One read or splice moves at most this much; a pipe holds 64 KiB.
CHUNK = 64 * 1024


# errno values that mean "the request named a bad path", not "we failed".
_BAD_PATH = frozenset(
    (
        errno.EACCES,
        errno.EISDIR,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.ENODEV,
        errno.ENOENT,
        errno.ENOEXEC,
        errno.ENOTDIR,
        errno.ENXIO,
        errno.EPERM,
        errno.EROFS,
    )
)


def open_error(what: str, path: str, exc: OSError, action: str = "open") -> ShimError:
    """Translate a failed open of a client-named ``path`` into a ShimError.

    "failed to open stdout fifo /p: no such file or directory"
    """
    reason = (exc.strerror or str(exc)).lower()
    kind = InvalidArgument if exc.errno in _BAD_PATH else FailedPrecondition
    return kind(f"failed to {action} {what} {path}: {reason}")


def close_quietly(fds: Iterable[int | None]) -> None:
    """Close each fd that is not None; used only on fds we own."""
    for fd in fds:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


def is_fifo(fd: int) -> bool:
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


def dup_cloexec(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)


class Waker:
    """A self-pipe: ``wake()`` from any thread interrupts ``wait_ready``."""

    __slots__ = ("_r", "_w")

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def fileno(self) -> int:
        return self._r

    def wake(self) -> None:
        # A full pipe already means "woken"; a closed one means "stopped".
        with contextlib.suppress(OSError):
            os.write(self._w, b"\0")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._r, 512):
                pass

    def sleep(self, interrupted: Callable[[], bool]) -> None:
        """Block until woken with ``interrupted()`` true."""
        poller = select.poll()
        poller.register(self._r, select.POLLIN)
        while not interrupted():
            poller.poll()
            self.clear()

    def close(self) -> None:
        close_quietly((self._r, self._w))


def wait_ready(
    fd: int, mask: int, waker: Waker, interrupted: Callable[[], bool]
) -> int:
    """Sleep until ``fd`` reports one of ``mask`` and return its revents.

    Returns 0 instead when ``interrupted()`` is true after a wake; the
    caller then re-reads its shared state (stop, new destination).
    """
    poller = select.poll()
    poller.register(fd, mask)
    poller.register(waker.fileno(), select.POLLIN)
    while True:
        if interrupted():
            return 0
        revents = 0
        for ready_fd, events in poller.poll():
            if ready_fd == fd:
                revents = events
            else:
                waker.clear()
        if revents and not interrupted():
            return revents


async def wait_readable(fd: int, timeout: float | None) -> None:
    """Wait in the event loop until ``fd`` is readable (or at EOF).

    Raises TimeoutError after ``timeout`` seconds (None: no limit).
    """
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def on_ready() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_ready)
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(fd)


def resolve_soon(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
    """Complete ``fut`` from a relay thread (no-op once its loop closed)."""

    def resolve() -> None:
        if not fut.done():
            fut.set_result(None)

    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(resolve)
