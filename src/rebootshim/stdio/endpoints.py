"""Opening the client's side of a process's stdio, once, without blocking.

What arrives in Create/Exec (protocol doc section 5.1): a plain path is a
FIFO the client made and holds open; ``file:///p`` is a log file to append
to; ``binary:///p?k=v`` is a logging binary to start; empty is /dev/null.
The FIFOs are opened the way containerd's runc shim opens them (section
5.2), in single non-blocking opens:

- stdout/stderr: O_RDWR, a writer that is also its own keep-alive reader,
  so a vanished client causes no EPIPE and a new client can attach, and
  writes stall once 64 KiB is unread (back-pressure, as in the runc shim);
- stdin: O_RDONLY|O_NONBLOCK, plus an O_WRONLY keep-alive so the reader sees
  EOF only after CloseIO *and* the client closed its end.

Every fd stays O_NONBLOCK: the relay threads poll (see fdio.py).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from rebootshim.errors import FailedPrecondition, InvalidArgument
from rebootshim.stdio.binary import Spawn, start_logger
from rebootshim.stdio.fdio import close_quietly, is_fifo, open_error, set_nonblocking

_SCHEMES = ("", "file", "binary")


@dataclass(slots=True)
class Endpoints:
    """The client's side of one process's stdio.

    Owns ``stdin_keepalive`` and every fd in ``owned``; ``stdout`` and
    ``stderr`` are among them and may be one fd (stdout = stderr URI).
    """

    stdin: int | None = None
    stdin_keepalive: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    logger_pid: int | None = None
    owned: list[int] = field(default_factory=list)

    def close_stdin_keepalive(self) -> None:
        close_quietly((self.stdin_keepalive,))
        self.stdin_keepalive = None

    def close(self) -> None:
        """Close every fd; idempotent."""
        self.close_stdin_keepalive()
        close_quietly(self.owned)
        self.owned.clear()
        self.stdin = self.stdout = self.stderr = None


async def open_endpoints(
    stdin: str,
    stdout: str,
    stderr: str,
    *,
    terminal: bool,
    namespace: str,
    id: str,
    spawn: Spawn | None,
    timeout: float,
) -> Endpoints:
    """Open all of a process's client-side stdio; on failure close it all."""
    _check_uris(stdout=stdout, stderr=stderr)
    ends = Endpoints()
    try:
        if stdin:
            ends.stdin, ends.stdin_keepalive = _open_stdin(stdin)
            ends.owned.append(ends.stdin)
        await _open_outputs(
            ends,
            stdout,
            stderr,
            namespace=namespace,
            id=id,
            spawn=spawn,
            timeout=timeout,
        )
        if terminal and ends.stdout is None:
            # The pty must still be read, or the boot blocks on a full tty.
            ends.stdout = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            ends.owned.append(ends.stdout)
        for sink in (ends.stdout, ends.stderr):
            if sink is not None:
                set_nonblocking(sink)
    except BaseException:
        ends.close()
        raise
    return ends


def _check_uris(**uris: str) -> None:
    """Refuse a bad request before anything is opened or started."""
    for name, uri in uris.items():
        if not uri:
            continue
        parts = urlsplit(uri)
        if parts.scheme not in _SCHEMES:
            raise InvalidArgument(
                f"unsupported {name} uri scheme {parts.scheme!r}: {uri}"
            )
        if parts.scheme and not parts.path.startswith("/"):
            raise InvalidArgument(f"{name} uri has no absolute path: {uri}")
    binaries = {uri for uri in uris.values() if urlsplit(uri).scheme == "binary"}
    if len(binaries) > 1:
        raise InvalidArgument("stdout and stderr name different logging binaries")


def _open_stdin(path: str) -> tuple[int, int | None]:
    """Open the stdin FIFO: (reader, keep-alive writer)."""
    try:
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise open_error("stdin fifo", path, exc) from exc
    try:
        if not is_fifo(reader):
            return reader, None
        # Cannot block or fail with ENXIO: we are a reader already.
        return reader, os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        os.close(reader)
        raise open_error("stdin fifo", path, exc) from exc


async def _open_outputs(
    ends: Endpoints,
    stdout: str,
    stderr: str,
    *,
    namespace: str,
    id: str,
    spawn: Spawn | None,
    timeout: float,
) -> None:
    is_binary = [urlsplit(uri).scheme == "binary" for uri in (stdout, stderr)]
    if any(is_binary):
        if spawn is None:
            raise FailedPrecondition("binary:// stdio needs a spawn function")
        uri = stdout if is_binary[0] else stderr
        logger = await start_logger(
            uri, namespace=namespace, id=id, spawn=spawn, timeout=timeout
        )
        ends.owned += (logger.stdout, logger.stderr)
        ends.logger_pid = logger.pid
        ends.stdout = logger.stdout if is_binary[0] else None
        ends.stderr = logger.stderr if is_binary[1] else None
    # One fd per distinct URI: stdout = stderr = file:///p shares one.
    opened: dict[str, int] = {}
    if stdout and not is_binary[0]:
        ends.stdout = _open_sink(ends, opened, "stdout", stdout)
    if stderr and not is_binary[1]:
        ends.stderr = _open_sink(ends, opened, "stderr", stderr)


def _open_sink(ends: Endpoints, opened: dict[str, int], name: str, uri: str) -> int:
    if uri not in opened:
        parts = urlsplit(uri)
        if parts.scheme == "file":
            sink = _open_file(name, parts.path)
        else:
            sink = _open_fifo(name, uri)
        ends.owned.append(sink)
        opened[uri] = sink
    return opened[uri]


def _open_fifo(name: str, path: str) -> int:
    try:
        if stat.S_ISFIFO(os.stat(path).st_mode):
            return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        # Like the runc shim: a plain path that is no FIFO is appended to.
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOCTTY | os.O_CLOEXEC
        return os.open(path, flags)
    except OSError as exc:
        raise open_error(f"{name} fifo", path, exc) from exc


def _open_file(name: str, path: str) -> int:
    """Append to ``path`` as the runc shim does (mode 0644, dirs 0755)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        os.makedirs(os.path.dirname(path), 0o755, exist_ok=True)
        return os.open(path, flags, 0o644)
    except OSError as exc:
        raise open_error(f"{name} file", path, exc) from exc
