"""Test doubles for the stdio tests: a FIFO client and a container.

The client plays containerd's ``cio`` side of the FIFOs; ``take()`` plays
the runc child that inherits a boot's fds. Everything lives under the
test's own tmp_path. No tests here.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import termios
import threading
import time
from pathlib import Path

from rebootshim.stdio import Boot, ChildFds

TIMEOUT = 10.0


def open_fds() -> set[str]:
    """The fd numbers open in this process (listdir's own fd included)."""
    return set(os.listdir("/proc/self/fd"))


def make_fifo(tmp_path: Path, name: str) -> str:
    path = str(tmp_path / name)
    os.mkfifo(path, 0o600)
    return path


def take(boot: Boot) -> ChildFds:
    """The container's copies of a boot's fds, as runc's child holds them."""
    assert boot.fds is not None
    return ChildFds(*(os.dup(fd) for fd in boot.fds))


def close_all(fds: ChildFds) -> None:
    for fd in set(fds):
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_exactly(fd: int, size: int, timeout: float = TIMEOUT) -> bytes:
    """Read ``size`` bytes (less only at EOF), failing after ``timeout``."""
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < size:
        if not is_readable(fd, deadline - time.monotonic()):
            raise TimeoutError(f"read {data!r}, wanted {size} bytes")
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def is_readable(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def get_winsize(tty_fd: int) -> tuple[int, int]:
    """(width, height) of a terminal."""
    raw = fcntl.ioctl(tty_fd, termios.TIOCGWINSZ, b"\0" * 8)
    rows, cols, _, _ = struct.unpack("HHHH", raw)
    return cols, rows


class FifoReader:
    """containerd's client reading a stdout/stderr FIFO, maybe slowly."""

    def __init__(self, path: str, *, delay: float = 0.0, chunk: int = 65536) -> None:
        # Non-blocking open: the shim (the writer) is not there yet.
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self._delay = delay
        self._chunk = chunk
        self._data = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not is_readable(self._fd, 0.05):
                continue
            try:
                chunk = os.read(self._fd, self._chunk)
            except BlockingIOError:
                continue
            if not chunk:
                time.sleep(0.01)  # no writer right now; a FIFO keeps HUP
            with self._lock:
                self._data += chunk
            time.sleep(self._delay)

    def data(self) -> bytes:
        with self._lock:
            return bytes(self._data)

    def wait_for(self, size: int, timeout: float = TIMEOUT) -> bytes:
        """Everything read once ``size`` bytes came (or at the timeout)."""
        deadline = time.monotonic() + timeout
        while len(self.data()) < size and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.data()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self._fd)
