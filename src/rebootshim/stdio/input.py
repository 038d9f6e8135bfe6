"""The stdin relay: the client's stdin FIFO -> the current boot's stdin.

One thread per process. The destination changes at every reboot; bytes
read from the client while no boot can take them (the old one is gone, the
new one not yet attached) are held and go to the next boot, so a reboot
loses only what the old boot had in its pipe and never read.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading

from rebootshim.stdio.fdio import (
    CHUNK,
    READY_IN,
    READY_OUT,
    Waker,
    close_quietly,
    set_nonblocking,
    wait_ready,
)

logger = logging.getLogger(__name__)

# A pipe without readers polls POLLERR; a pty master whose slave side is
# closed polls POLLHUP yet still accepts writes, which would be lost.
_GONE = select.POLLHUP | select.POLLERR


class InputRelay:
    """Copies the client's stdin into whichever boot is current.

    The source (stdin FIFO read end, O_NONBLOCK) is borrowed; its owner
    closes it after ``close()``. Destinations (pipe write end or a dup of
    the pty master) are owned from ``attach()`` on.
    """

    def __init__(self, name: str, source: int) -> None:
        self.name = name
        self._source = source
        self._lock = threading.Lock()
        self._next: int | None = None  # attached, not yet taken by the thread
        # No more input will be passed on (client EOF, or the relay
        # failed): later boots get a stdin that reads EOF at once.
        self._is_ended = False
        self._is_stopping = False
        self._waker = Waker()
        self._thread = threading.Thread(
            target=self._run, name=f"stdio-{name}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"<InputRelay {self.name} source={self._source} ended={self._is_ended}>"

    @property
    def is_ended(self) -> bool:
        """True once no more input will be passed on to any boot."""
        return self._is_ended

    def attach(self, dest: int) -> None:
        """Make ``dest`` the current boot's stdin; takes ownership.

        The previous destination is closed by the thread (its boot is
        over). After EOF, ``dest`` is closed at once: the boot reads EOF.
        """
        stale: int | None = dest
        with self._lock:
            if not (self._is_ended or self._is_stopping):
                set_nonblocking(dest)
                # The thread never saw the one it replaces: ours to close.
                stale, self._next = self._next, dest
        close_quietly((stale,))
        if stale != dest:
            self._waker.wake()

    def close(self) -> None:
        """Stop the thread and close every destination; idempotent."""
        with self._lock:
            was_stopping, self._is_stopping = self._is_stopping, True
        if was_stopping:
            return
        self._waker.wake()
        self._thread.join()
        self._waker.close()

    def _has_news(self) -> bool:
        return self._is_stopping or self._next is not None

    def _run(self) -> None:
        dest: int | None = None
        pending = b""
        is_at_eof = False
        try:
            while not self._is_stopping:
                dest = self._adopt(dest)
                if pending and dest is None:
                    self._waker.sleep(self._has_news)
                elif pending and dest is not None:
                    pending, dest = self._deliver(pending, dest)
                elif is_at_eof:
                    break
                else:
                    pending, is_at_eof = self._receive()
        except OSError as exc:
            logger.warning("failed to copy %s, stopped: %s", self.name, exc)
        finally:
            self._finish(dest, is_at_eof and not pending)

    def _adopt(self, dest: int | None) -> int | None:
        """Switch to a newly attached destination, closing the old one."""
        with self._lock:
            new, self._next = self._next, None
        if new is None:
            return dest
        close_quietly((dest,))
        return new

    def _receive(self) -> tuple[bytes, bool]:
        """Read one chunk from the client: (data, is_at_eof)."""
        if not wait_ready(self._source, READY_IN, self._waker, self._has_news):
            return b"", False
        try:
            data = os.read(self._source, CHUNK)
        except BlockingIOError:
            return b"", False
        return data, data == b""

    def _deliver(self, pending: bytes, dest: int) -> tuple[bytes, int | None]:
        """Write some of ``pending``; returns what is left and the dest."""
        revents = wait_ready(dest, READY_OUT, self._waker, self._has_news)
        if revents & _GONE:
            os.close(dest)
            return pending, None
        if not revents:
            return pending, dest
        try:
            written = os.write(dest, pending)
        except BlockingIOError:
            return pending, dest
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EIO):
                raise
            os.close(dest)
            return pending, None
        return pending[written:], dest

    def _finish(self, dest: int | None, is_eof: bool) -> None:
        """Close every destination; later boots get EOF at once."""
        with self._lock:
            self._is_ended = True
            new, self._next = self._next, None
        close_quietly((dest, new))
        if is_eof:
            logger.debug("%s reached eof", self.name)
