"""What the init and an exec share: identity, stdio, state and the exit.

The reboot logic lives in container.py; this module knows nothing of it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from rebootshim.container.state import State, transition
from rebootshim.errors import NotFound
from rebootshim.stdio import Upstream

# Go's zero time.Time, what the runc shim sends for "not exited" (rule 7).
GO_ZERO_SECONDS = -62135596800


@dataclass(frozen=True, slots=True)
class Stdio:
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


@dataclass(frozen=True, slots=True)
class Exit:
    status: int
    at: float  # time.time()


class Process:
    """One process of a container, as containerd sees it."""

    def __init__(self, id: str, stdio: Stdio, upstream: Upstream) -> None:
        self.id = id
        self.stdio = stdio
        self.upstream = upstream
        self.pid = 0
        self.state = State.CREATED
        self.exit: Exit | None = None
        self._exited = asyncio.Event()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id} pid={self.pid} state={self.state}>"

    def move(self, new: State) -> None:
        self.state = transition(self.state, new, f"process {self.id}")

    def set_exited(self, status: int) -> Exit:
        """Record the final exit and wake every Wait."""
        self.exit = Exit(status, time.time())
        if self.state is not State.STOPPED:
            self.move(State.STOPPED)
        self._exited.set()
        return self.exit

    @property
    def has_exited(self) -> bool:
        return self._exited.is_set()

    async def wait(self) -> Exit:
        await self._exited.wait()
        assert self.exit is not None
        return self.exit

    def check_alive(self) -> None:
        """Kill on an exited process MUST raise NotFound (containerd)."""
        if self.state in (State.STOPPED, State.DELETED):
            raise NotFound(f"process {self.id} already finished")


class Exec(Process):
    """A process started by Exec in a running container."""

    def __init__(
        self, id: str, stdio: Stdio, upstream: Upstream, spec: dict[str, object]
    ) -> None:
        super().__init__(id, stdio, upstream)
        self.spec = spec
