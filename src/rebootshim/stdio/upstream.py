"""The upstream side of one process's stdio: the client's end, and relays.

An Upstream lives from Create/Exec to Delete. It opens the client's FIFOs,
file or logging binary once (endpoints.py) and runs one relay thread per
stream. Each boot of the process (the init gets one per reboot) is wired to
those same relays, so containerd's client sees one continuous stream.

Threads: the relays run in their own threads; every method here is meant
for the event loop thread.
"""

from __future__ import annotations

import asyncio
import logging

from rebootshim.errors import FailedPrecondition
from rebootshim.stdio.binary import Spawn
from rebootshim.stdio.boot import Boot
from rebootshim.stdio.console import set_winsize
from rebootshim.stdio.endpoints import Endpoints, open_endpoints
from rebootshim.stdio.fdio import close_quietly, dup_cloexec
from rebootshim.stdio.input import InputRelay
from rebootshim.stdio.output import OutputRelay

logger = logging.getLogger(__name__)

# How long a logging binary gets to signal readiness on fd 5.
LOGGER_TIMEOUT = 10.0


class Upstream:
    """The client's stdio of one process and the relays feeding it."""

    def __init__(self, ends: Endpoints, *, terminal: bool, label: str) -> None:
        """Takes ownership of ``ends``; use ``await Upstream.open(...)``."""
        self.terminal = terminal
        self._ends = ends
        self._label = label
        self._winsize: tuple[int, int] | None = None  # (width, height)
        # A dup of the current pty master, kept for resize(): the relays'
        # copies close when their boot ends.
        self._console: int | None = None
        self._is_closed = False
        self._stdin: InputRelay | None = None
        self._stdout: OutputRelay | None = None
        self._stderr: OutputRelay | None = None
        try:
            self._start_relays()
        except BaseException:
            self.close()
            raise

    @classmethod
    async def open(
        cls,
        stdin: str,
        stdout: str,
        stderr: str,
        terminal: bool,
        *,
        namespace: str,
        id: str,
        spawn: Spawn | None = None,
        logger_timeout: float = LOGGER_TIMEOUT,
    ) -> Upstream:
        """Open the client's stdio as given in Create/Exec.

        ``spawn`` starts a ``binary://`` logging binary (the reaper's
        spawn); its pid is then ``logger_pid``. Raises InvalidArgument for
        a bad path or URI, FailedPrecondition otherwise; on failure nothing
        stays open.
        """
        ends = await open_endpoints(
            stdin,
            stdout,
            stderr,
            terminal=terminal,
            namespace=namespace,
            id=id,
            spawn=spawn,
            timeout=logger_timeout,
        )
        try:
            upstream = cls(ends, terminal=terminal, label=f"{namespace}/{id}")
        except OSError as exc:
            raise FailedPrecondition(f"failed to start stdio relays: {exc}") from exc
        logger.debug("opened stdio %r", upstream)
        return upstream

    def __repr__(self) -> str:
        state = "closed" if self._is_closed else "open"
        return (
            f"<Upstream {self._label} {state} terminal={self.terminal} "
            f"stdin={self._stdin} stdout={self._stdout} stderr={self._stderr}>"
        )

    @property
    def logger_pid(self) -> int | None:
        """The pid of the ``binary://`` logging binary, if any.

        ``close()`` does not kill it: it exits at EOF of its pipes, and the
        reaper collects it.
        """
        return self._ends.logger_pid

    def new_boot(self, owner: tuple[int, int] | None = None) -> Boot:
        """The downstream stdio of the next boot (see boot.py).

        ``owner`` (uid, gid) gets the pipe ends runc passes on (the runc
        shim's io_uid/io_gid). The caller must end the boot with
        ``started()`` or ``abort()``.
        """
        self._check_open()
        if self.terminal:
            return Boot.with_console(self)
        has_stdin = self._stdin is not None and not self._stdin.is_ended
        streams = (has_stdin, self._stdout is not None, self._stderr is not None)
        return Boot.with_pipes(self, streams, owner)

    def attach_pipes(
        self, stdin: int | None, stdout: int | None, stderr: int | None
    ) -> None:
        """Boot.started(): queue the boot's pipes on the relays (owned)."""
        if self._is_closed:
            close_quietly((stdin, stdout, stderr))
            self._check_open()
        _push(self._stdout, stdout)
        _push(self._stderr, stderr)
        if stdin is not None:
            if self._stdin is not None:
                self._stdin.attach(stdin)
            else:
                close_quietly((stdin,))

    def attach_console(self, master: int) -> None:
        """Boot.started(): size the pty, relay it both ways (owned)."""
        if self._is_closed:
            close_quietly((master,))
            self._check_open()
        assert self._stdout is not None, "terminal mode always relays stdout"
        copies: list[int] = []
        try:
            if self._winsize is not None:
                set_winsize(master, *self._winsize)
            copies.append(dup_cloexec(master))
            if self._stdin is not None:
                copies.append(dup_cloexec(master))
        except OSError as exc:
            close_quietly([master, *copies])
            raise FailedPrecondition(
                f"failed to set up pty of {self._label}: {exc}"
            ) from exc
        close_quietly((self._console,))
        self._console = copies[0]
        if self._stdin is not None:
            self._stdin.attach(copies[1])
        self._stdout.push(master)

    def resize(self, width: int, height: int) -> None:
        """Resize the current pty; later boots start at this size too.

        A process without a terminal ignores it, as the runc shim does.
        """
        self._check_open()
        if not self.terminal:
            return
        self._winsize = (width, height)
        if self._console is None:
            return
        try:
            set_winsize(self._console, width, height)
        except OSError as exc:
            raise FailedPrecondition(
                f"failed to resize pty of {self._label}: {exc}"
            ) from exc

    def close_stdin(self) -> None:
        """CloseIO: the boot sees EOF once the client closed its end too."""
        self._ends.close_stdin_keepalive()

    async def drain(self) -> None:
        """Return once the output of every started boot reached its EOF.

        Call it after the process exited; a boot still running keeps it
        waiting (wrap it in a timeout if a leaked fd may hold a pipe).
        """
        relays = [relay for relay in (self._stdout, self._stderr) if relay]
        await asyncio.gather(*(relay.drain() for relay in relays))

    def close(self) -> None:
        """Stop the relays and close every fd; idempotent (Delete)."""
        if self._is_closed:
            return
        self._is_closed = True
        for relay in (self._stdin, self._stdout, self._stderr):
            if relay is not None:
                relay.close()
        close_quietly((self._console,))
        self._console = None
        self._ends.close()
        logger.debug("closed stdio %s", self._label)

    def _start_relays(self) -> None:
        ends, label = self._ends, self._label
        if ends.stdin is not None:
            self._stdin = InputRelay(f"{label} stdin", ends.stdin)
        if ends.stdout is not None:
            self._stdout = OutputRelay(f"{label} stdout", ends.stdout)
        if ends.stderr is not None:
            self._stderr = OutputRelay(f"{label} stderr", ends.stderr)

    def _check_open(self) -> None:
        if self._is_closed:
            raise FailedPrecondition(f"stdio of {self._label} is closed")


def _push(relay: OutputRelay | None, source: int | None) -> None:
    if source is None:
        return
    if relay is None:
        close_quietly((source,))
    else:
        relay.push(source)
