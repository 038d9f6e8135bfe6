"""``binary:///path?k=v`` stdio: a logging binary the shim starts.

The contract is containerd's (pkg/process/io.go ``NewBinaryIO``; protocol
doc section 5.1): argv is the path then each query key and its first value,
the environment holds only CONTAINER_ID and CONTAINER_NAMESPACE, fd 3 and 4
are the read ends of the stdout and stderr pipes, fd 5 is a "ready" pipe
the binary closes or writes to once it is ready to read.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

from rebootshim.errors import FailedPrecondition
from rebootshim.stdio.fdio import close_quietly, open_error, wait_readable


class Spawn(Protocol):
    """Starts a child and returns its pid; the shim's reaper owns its exit.

    ``extra_fds[i]`` becomes fd ``3 + i`` in the child (posix_spawn
    file_actions dup2, which also clears FD_CLOEXEC on the copy); every
    other fd of the shim is O_CLOEXEC and stays out of the child. Raises
    OSError if the binary cannot be started.
    """

    def __call__(
        self, argv: list[str], *, extra_fds: tuple[int, ...], env: dict[str, str]
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class Logger:
    """A started logging binary; the caller owns both write ends."""

    pid: int
    stdout: int
    stderr: int


def logger_argv(uri: str) -> list[str]:
    """argv for ``binary:///path?k=v&k2=v2``: ``[path, k, v, k2, v2]``.

    Like containerd, each key appears once, with its first value.
    """
    parts = urlsplit(uri)
    args: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        args.setdefault(key, value)
    return [parts.path, *(item for pair in args.items() for item in pair)]


async def start_logger(
    uri: str, *, namespace: str, id: str, spawn: Spawn, timeout: float
) -> Logger:
    """Start the logging binary of ``uri`` and wait until it is ready."""
    argv = logger_argv(uri)
    env = {"CONTAINER_ID": id, "CONTAINER_NAMESPACE": namespace}
    ours: list[int] = []  # our ends: closed on failure
    theirs: list[int] = []  # the binary's ends: closed once it has them
    try:
        for _ in range(3):
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            ours.append(write_end)
            theirs.append(read_end)
        # stdout, stderr read ends for the binary; the ready pipe reversed.
        ours[2], theirs[2] = theirs[2], ours[2]
        _lift(theirs)
        pid = spawn(argv, extra_fds=tuple(theirs), env=env)
    except BaseException as exc:
        close_quietly(ours + theirs)
        if isinstance(exc, OSError):
            raise open_error("logging binary", argv[0], exc, "start") from exc
        raise
    close_quietly(theirs)
    try:
        await wait_readable(ours[2], timeout)
    except TimeoutError:
        close_quietly(ours)
        raise FailedPrecondition(
            f"logging binary {argv[0]} (pid {pid}) not ready after {timeout:g}s"
        ) from None
    except BaseException:
        close_quietly(ours)
        raise
    os.close(ours[2])
    return Logger(pid=pid, stdout=ours[0], stderr=ours[1])


def _lift(fds: list[int]) -> None:
    """Move each of ``fds`` above the child's targets 3..3+len, in place.

    A spawn dup2s them onto 3, 4, 5 in turn; a source already at 4 or 5
    would be overwritten before its own turn.
    """
    floor = 3 + len(fds)
    for index, fd in enumerate(fds):
        if fd < floor:
            fds[index] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
            os.close(fd)
