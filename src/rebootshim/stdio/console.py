"""The console socket: how runc hands us the pty master of a terminal boot.

``runc create|exec --console-socket PATH`` connects to PATH and sends the
master with SCM_RIGHTS, the pty name as data (go-runc ``console.go``;
protocol doc section 5.3). It has done so by the time runc returns.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import socket
import struct
import tempfile
import termios

from rebootshim.errors import FailedPrecondition
from rebootshim.stdio.fdio import close_quietly, wait_readable

logger = logging.getLogger(__name__)

# runc sends the pty name ("/dev/pts/N") with the fd; names are short.
_NAME_MAX = 4096


class ConsoleSocket:
    """A listening unix socket in a fresh private (0700) directory."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        try:
            # mkdtemp makes the directory 0700: no one else can connect.
            self._dir: str | None = tempfile.mkdtemp(prefix="rebootshim-pty-")
        except OSError as exc:
            raise FailedPrecondition(f"failed to create console socket: {exc}") from exc
        self.path = os.path.join(self._dir, "pty.sock")
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.setblocking(False)
            self._sock.bind(self.path)
            self._sock.listen(1)
        except OSError as exc:
            self.close()
            raise FailedPrecondition(
                f"failed to listen on console socket {self.path}: {exc}"
            ) from exc

    def __repr__(self) -> str:
        return f"<ConsoleSocket {self.path} closed={self._dir is None}>"

    async def receive_master(self, timeout: float) -> int:
        """Accept runc's connection and return the pty master it sent.

        The caller owns the returned fd (O_CLOEXEC).
        """
        try:
            async with asyncio.timeout(timeout):
                return await self._receive()
        except TimeoutError:
            raise FailedPrecondition(
                f"no pty master on console socket {self.path} after {timeout:g}s"
            ) from None
        except OSError as exc:
            raise FailedPrecondition(
                f"failed to receive pty master on console socket {self.path}: {exc}"
            ) from exc

    async def _receive(self) -> int:
        assert self._sock is not None, "receive on a closed console socket"
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self._sock)
        with conn:
            conn.setblocking(False)
            await wait_readable(conn.fileno(), timeout=None)
            name, fds, _, _ = socket.recv_fds(
                conn, _NAME_MAX, 4, socket.MSG_CMSG_CLOEXEC
            )
        if not fds:
            raise FailedPrecondition(
                f"no pty master on console socket {self.path}: got {name!r}"
            )
        # Anything beyond the one master is not ours to keep.
        close_quietly(fds[1:])
        logger.debug(
            "received pty master %s fd=%d", name.decode(errors="replace"), fds[0]
        )
        return fds[0]

    def close(self) -> None:
        """Close the socket and remove its directory; idempotent."""
        if self._dir is None:
            return
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None


def set_winsize(master: int, width: int, height: int) -> None:
    """TIOCSWINSZ on ``master`` (tty_ioctl(4)); the slave sees SIGWINCH."""
    winsize = struct.pack("HHHH", height, width, 0, 0)
    fcntl.ioctl(master, termios.TIOCSWINSZ, winsize)
