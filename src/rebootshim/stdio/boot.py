"""The downstream side of one boot: what runc create/exec gets as stdio.

A boot lives from ``Upstream.new_boot()`` until runc returned and
``started()`` handed its parent ends to the upstream relays (or until
``abort()`` after a failed runc call). After either, it holds no fd.

Without a terminal, each stream that has an upstream gets a fresh pipe
(others /dev/null); ``fds`` are the child ends for runc. They are O_CLOEXEC
like every fd here: the runc driver spawns with posix_spawn file_actions
dup2 onto 0/1/2, which clears the flag on the copies only.

With a terminal, runc gets ``console_socket`` and sends the pty master
there (console.py); the master serves as both stdin and stdout.
"""

from __future__ import annotations

import enum
import os
from typing import NamedTuple, Protocol

from rebootshim.errors import FailedPrecondition
from rebootshim.stdio.console import ConsoleSocket
from rebootshim.stdio.fdio import close_quietly


class ChildFds(NamedTuple):
    """The fds runc's child gets as 0, 1 and 2."""

    stdin: int
    stdout: int
    stderr: int


class Relays(Protocol):
    """Where a started boot's parent ends go (the Upstream).

    Both take ownership of the fds they are given, even when they raise.
    """

    def attach_pipes(
        self, stdin: int | None, stdout: int | None, stderr: int | None
    ) -> None: ...

    def attach_console(self, master: int) -> None: ...


class BootState(enum.StrEnum):
    NEW = "new"  # fds or console socket ready for runc
    STARTED = "started"  # parent ends handed to the relays
    ABORTED = "aborted"  # everything closed


class Boot:
    """One boot's pipes or console socket; see the module docstring."""

    def __init__(
        self,
        relays: Relays,
        *,
        fds: ChildFds | None = None,
        parent_ends: tuple[int | None, int | None, int | None] = (None, None, None),
        console: ConsoleSocket | None = None,
    ) -> None:
        self._relays = relays
        self.fds = fds
        self._parent_ends = parent_ends
        self._console = console
        self.state = BootState.NEW

    @classmethod
    def with_pipes(
        cls,
        relays: Relays,
        streams: tuple[bool, bool, bool],
        owner: tuple[int, int] | None = None,
    ) -> Boot:
        """A pipe per stream in ``streams`` (stdin, stdout, stderr).

        ``owner`` (uid, gid) gets the child ends, so a process in a user
        namespace can reopen /proc/self/fd/N (runc shim io_uid/io_gid).
        """
        opened: list[int] = []
        try:
            # /dev/null only for the streams without a pipe: an fd no child
            # end holds would be closed by nobody.
            null = -1
            if not all(streams):
                null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                opened.append(null)
            child = [null, null, null]
            parent: list[int | None] = [None, None, None]
            for index, wanted in enumerate(streams):
                if wanted:
                    child[index], parent[index] = _pipe(index, opened, owner)
        except OSError as exc:
            close_quietly(opened)
            raise FailedPrecondition(f"failed to create stdio pipes: {exc}") from exc
        fds = ChildFds(*child)
        return cls(relays, fds=fds, parent_ends=(parent[0], parent[1], parent[2]))

    @classmethod
    def with_console(cls, relays: Relays) -> Boot:
        return cls(relays, console=ConsoleSocket())

    def __repr__(self) -> str:
        where = self.console_socket if self._console else self.fds
        return f"<Boot {self.state} {where}>"

    @property
    def console_socket(self) -> str | None:
        """The path for ``runc --console-socket``; None without a terminal."""
        return self._console.path if self._console else None

    async def started(self, timeout: float = 5.0) -> None:
        """Wire the boot to the relays, after runc create/exec returned.

        Closes our copies of the child ends (else no EOF would ever come)
        or receives the pty master. On failure the boot is aborted.
        """
        if self.state is not BootState.NEW:
            raise FailedPrecondition(f"stdio boot is {self.state}, not new")
        self.state = BootState.STARTED
        try:
            if self._console is not None:
                await self._start_console(self._console, timeout)
            else:
                self._start_pipes()
        except BaseException:
            self.state = BootState.ABORTED
            self._close_all()
            raise

    def abort(self) -> None:
        """Close everything of a boot that will not start; idempotent.

        Call it when runc create/exec failed; a started boot holds nothing.
        """
        if self.state is BootState.NEW:
            self.state = BootState.ABORTED
            self._close_all()

    def _close_all(self) -> None:
        self._close_child_ends()
        close_quietly(self._parent_ends)
        self._parent_ends = (None, None, None)
        if self._console is not None:
            self._console.close()

    def _close_child_ends(self) -> None:
        close_quietly(set(self.fds or ()))
        self.fds = None

    def _start_pipes(self) -> None:
        self._close_child_ends()
        ends, self._parent_ends = self._parent_ends, (None, None, None)
        self._relays.attach_pipes(*ends)

    async def _start_console(self, console: ConsoleSocket, timeout: float) -> None:
        try:
            master = await console.receive_master(timeout)
        finally:
            console.close()
        self._relays.attach_console(master)


def _pipe(
    index: int, opened: list[int], owner: tuple[int, int] | None
) -> tuple[int, int]:
    """One pipe: (child end, parent end); stdin's child end is the reader."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    opened += (read_end, write_end)
    child, parent = (read_end, write_end) if index == 0 else (write_end, read_end)
    if owner is not None:
        os.fchown(child, *owner)
    return child, parent
