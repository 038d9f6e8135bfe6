"""The output relay: one thread per upstream stream (stdout or stderr).

It copies its sources strictly one after another: boot N's pipe (or pty
master) is copied to EOF and closed before one byte of boot N+1 is read.
That is the stdio invariant of a transparent reboot: the client sees the
old boot's last words, then the new boot's first ones, never a mix.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import struct
import termios
import threading
from collections import deque

from rebootshim.stdio.fdio import (
    CHUNK,
    READY_IN,
    READY_OUT,
    Waker,
    close_quietly,
    is_fifo,
    resolve_soon,
    set_nonblocking,
    wait_ready,
)

logger = logging.getLogger(__name__)

_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
# Splice only this much or more at once; less goes through read/write.
SPLICE_MIN = 16384
_INT = struct.Struct("i")

# (sources done needed, loop, future) for one drain() call.
_Waiter = tuple[int, asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class OutputRelay:
    """Copies boot after boot into one sink.

    A source (pipe read end or pty master) is owned by the relay from
    ``push()`` on. The sink is borrowed: its owner closes it after
    ``close()`` returned.
    """

    def __init__(self, name: str, sink: int) -> None:
        self.name = name
        self._sink = sink
        self._lock = threading.Lock()
        self._sources: deque[int] = deque()
        self._queued = 0  # sources pushed so far
        self._done = 0  # sources copied to EOF (or given up) and closed
        self._waiters: list[_Waiter] = []
        self._is_stopping = False
        self._waker = Waker()
        self._thread = threading.Thread(
            target=self._run, name=f"stdio-{name}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return (
            f"<OutputRelay {self.name} sink={self._sink} "
            f"done={self._done}/{self._queued}>"
        )

    def push(self, source: int) -> None:
        """Queue ``source`` behind every earlier one; takes ownership."""
        with self._lock:
            is_accepted = not self._is_stopping
            if is_accepted:
                set_nonblocking(source)
                self._sources.append(source)
                self._queued += 1
        if not is_accepted:
            close_quietly((source,))
            return
        self._waker.wake()

    async def drain(self) -> None:
        """Return once every source pushed so far is copied to EOF.

        Also returns when the relay is closed: nothing more will come.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._done >= self._queued or self._is_stopping:
                return
            self._waiters.append((self._queued, loop, fut))
        await fut

    def close(self) -> None:
        """Stop the thread, close the sources it has not finished; idempotent.

        Output not yet copied is dropped: at Delete nobody waits for it.
        """
        with self._lock:
            was_stopping, self._is_stopping = self._is_stopping, True
        if was_stopping:
            return
        self._waker.wake()
        self._thread.join()
        # The thread is gone, so what it left queued is ours to close.
        close_quietly(self._sources)
        self._sources.clear()
        self._waker.close()
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for _, loop, fut in waiters:
            resolve_soon(loop, fut)

    def _stopped(self) -> bool:
        return self._is_stopping

    def _run(self) -> None:
        while (source := self._next_source()) is not None:
            try:
                self._copy(source)
            except OSError as exc:
                logger.warning("failed to copy %s: %s", self.name, exc)
                # Keep the boot from blocking on a full pipe forever.
                self._discard(source)
            finally:
                os.close(source)
                self._finish_one()

    def _next_source(self) -> int | None:
        """Pop the next source, sleeping until one comes; None to stop."""
        while True:
            with self._lock:
                if self._is_stopping:
                    return None
                if self._sources:
                    return self._sources.popleft()
            self._waker.sleep(lambda: self._is_stopping or bool(self._sources))

    def _finish_one(self) -> None:
        with self._lock:
            self._done += 1
            ready = [w for w in self._waiters if w[0] <= self._done]
            self._waiters = [w for w in self._waiters if w[0] > self._done]
        for _, loop, fut in ready:
            resolve_soon(loop, fut)

    def _copy(self, source: int) -> None:
        """Copy ``source`` into the sink until EOF or stop."""
        # splice(2) moves pipe pages without a trip through Python; it
        # needs a pipe on one side and refuses an O_APPEND file (EINVAL).
        # Each splice takes a whole slot of the sink pipe, though (16 in
        # 64 KiB), so a trickle of short lines is written instead, which
        # packs them into pages: an unread FIFO then holds 64 KiB of lines,
        # as with the runc shim, not 16 of them.
        if not (is_fifo(source) and _can_splice_into(self._sink)):
            return self._copy_by_reads(source)
        use_splice = True
        while wait_ready(source, READY_IN, self._waker, self._stopped):
            if use_splice and _available(source) >= SPLICE_MIN:
                try:
                    if os.splice(source, self._sink, CHUNK, flags=_SPLICE_FLAGS) == 0:
                        return
                except BlockingIOError:
                    # The source has data (poll said so): the sink is full.
                    if not wait_ready(
                        self._sink, READY_OUT, self._waker, self._stopped
                    ):
                        return
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    use_splice = False
                continue
            data = _read(source)
            if data == b"":
                return
            if data is not None and not self._write_all(data):
                return

    def _copy_by_reads(self, source: int) -> None:
        """read/write until EOF or stop, polling only when the source is
        empty: a steady stream costs two syscalls per chunk, not three."""
        while not self._stopped():
            data = _read(source)
            if data is None:
                if not wait_ready(source, READY_IN, self._waker, self._stopped):
                    return
            elif data == b"" or not self._write_all(data):
                return

    def _write_all(self, data: bytes) -> bool:
        """Write all of ``data``; False if stopped before that."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._sink, view) :]
            except BlockingIOError:
                if not wait_ready(self._sink, READY_OUT, self._waker, self._stopped):
                    return False
        return True

    def _discard(self, source: int) -> None:
        """Read ``source`` to EOF, dropping the data."""
        try:
            while wait_ready(source, READY_IN, self._waker, self._stopped):
                if _read(source) == b"":
                    return
        except OSError as exc:
            logger.warning("failed to drain %s: %s", self.name, exc)


def _can_splice_into(sink: int) -> bool:
    """splice(2) refuses an O_APPEND file (EINVAL): the file:// case."""
    return not fcntl.fcntl(sink, fcntl.F_GETFL) & os.O_APPEND


def _available(fd: int) -> int:
    """Bytes waiting in pipe ``fd`` (FIONREAD)."""
    try:
        return int(_INT.unpack(fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0])
    except OSError:
        return 0


def _read(source: int) -> bytes | None:
    """One read: data, b"" at EOF, or None when nothing is there yet."""
    try:
        return os.read(source, CHUNK)
    except BlockingIOError:
        return None
    except OSError as exc:
        # A pty master reads EIO once every slave fd is closed (pty(7)):
        # that is the terminal's EOF.
        if exc.errno == errno.EIO:
            return b""
        raise
