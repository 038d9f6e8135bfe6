"""The runc CLI driver: one coroutine per runc command.

Every runc process is started through the reaper (which owns waitpid),
with ``--log <bundle>/log.json --log-format json`` so that a failure
can quote runc's own last error line, the way the runc shim does.
Command lines follow go-runc (protocol doc section 5.4).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rebootshim.errors import NotFound, ShimError, Unavailable
from rebootshim.reaper import Reaper, exit_status

log = logging.getLogger(__name__)


class RuncError(ShimError):
    """runc failed; the message ends with runc's own last error line."""


@dataclass(frozen=True, slots=True)
class StdioFds:
    """The fds a runc create/exec child gets as 0, 1 and 2 (None: null)."""

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None


NULL_STDIO = StdioFds()


def find_runc(name: str = "runc") -> str:
    path = shutil.which(name, path=os.environ.get("PATH", os.defpath) + ":/usr/sbin")
    if path is None:
        raise Unavailable(f"runtime binary {name} not found in PATH")
    return path


class Runc:
    """Drives one runc root (state dir) for the containers of a shim."""

    def __init__(self, reaper: Reaper, root: str, binary: str = "runc") -> None:
        self._reaper = reaper
        self.root = root
        self.name = binary
        self._path: str | None = None

    @property
    def binary(self) -> str:
        """runc's path, looked up at first use so that a missing runc fails
        the request (Unavailable, naming it) rather than the shim."""
        if self._path is None:
            self._path = find_runc(self.name)
        return self._path

    async def create(
        self,
        id: str,
        bundle: str,
        pid_file: str,
        stdio: StdioFds,
        console_socket: str | None = None,
    ) -> None:
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        await self._run([*args, id], bundle, stdio=stdio)

    def remove_stopped(self, id: str) -> bool:
        """What ``runc delete`` does for a container whose init is dead
        and that has no poststop hooks (libcontainer's destroy(): remove
        its cgroups, then its state), without starting runc: about 10 ms
        of every reboot's downtime.  False where anything is not as
        expected; the caller then runs ``runc delete``, which also
        finishes whatever this left.
        """
        state_dir = os.path.join(self.root, id)
        try:
            with open(os.path.join(state_dir, "state.json"), "rb") as f:
                state = json.load(f)
            hooks = state["config"].get("Hooks") or {}
            paths = {p for p in (state.get("cgroup_paths") or {}).values() if p}
        except (OSError, ValueError, KeyError, AttributeError, TypeError):
            return False
        if hooks.get("poststop") or state.get("intel_rdt_path") or _is_alive(state):
            return False
        for path in sorted(paths, reverse=True):  # children before parents
            try:
                os.rmdir(path)
            except FileNotFoundError:
                continue
            except OSError:
                return False  # busy or nested: runc's own removal retries
        shutil.rmtree(state_dir, ignore_errors=True)
        return not os.path.exists(state_dir)

    async def start(self, id: str, bundle: str) -> None:
        await self._run(["start", id], bundle)

    async def kill(self, id: str, bundle: str, sig: int, all: bool = False) -> None:
        args = ["kill", "--all"] if all else ["kill"]
        await self._run([*args, id, str(sig)], bundle)

    async def delete(self, id: str, bundle: str, force: bool = False) -> None:
        args = ["delete", "--force"] if force else ["delete"]
        await self._run([*args, id], bundle)

    async def exec(
        self,
        id: str,
        bundle: str,
        process: dict[str, Any],
        pid_file: str,
        stdio: StdioFds,
        console_socket: str | None = None,
    ) -> None:
        fd, spec_path = tempfile.mkstemp(prefix=".exec-", suffix=".json", dir=bundle)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(process, f)
            args = ["exec", "--process", spec_path, "--detach", "--pid-file", pid_file]
            if console_socket:
                args += ["--console-socket", console_socket]
            await self._run([*args, id], bundle, stdio=stdio)
        finally:
            os.unlink(spec_path)

    async def ps(self, id: str, bundle: str) -> list[int]:
        out = await self._run(["ps", "--format", "json", id], bundle)
        pids = json.loads(out or b"[]")
        return [int(p) for p in pids or []]

    async def pause(self, id: str, bundle: str) -> None:
        await self._run(["pause", id], bundle)

    async def resume(self, id: str, bundle: str) -> None:
        await self._run(["resume", id], bundle)

    async def update(self, id: str, bundle: str, resources: dict[str, Any]) -> None:
        await self._run(
            ["update", "--resources", "-", id], bundle, input=json.dumps(resources)
        )

    async def state(self, id: str, bundle: str) -> dict[str, Any]:
        out = await self._run(["state", id], bundle)
        state: dict[str, Any] = json.loads(out)
        return state

    async def _run(
        self,
        args: Sequence[str],
        bundle: str,
        stdio: StdioFds | None = None,
        input: str | None = None,
    ) -> bytes:
        """Run one runc command; return its stdout or raise RuncError.

        With ``stdio`` (create, exec) the child's stdio belongs to the
        container, so errors come from the JSON log alone.
        """
        log_path = os.path.join(bundle, "log.json")
        argv = [self.binary, "--root", self.root, "--log", log_path]
        argv += ["--log-format", "json", *args]
        offset = _size(log_path)
        log.debug("runc %s", " ".join(args))
        if stdio is not None:
            out, status = b"", await self._spawn_stdio(argv, stdio)
            err = b""
        else:
            out, err, status = await self._spawn_captured(argv, input)
        if status != 0:
            raise _error(args[0], args[-1], status, log_path, offset, err)
        return out

    async def _spawn_stdio(self, argv: list[str], stdio: StdioFds) -> int:
        _, done = self._reaper.spawn(
            argv, stdin=stdio.stdin, stdout=stdio.stdout, stderr=stdio.stderr
        )
        return exit_status(await done)

    async def _spawn_captured(
        self, argv: list[str], input: str | None
    ) -> tuple[bytes, bytes, int]:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        in_r, in_w = os.pipe2(os.O_CLOEXEC) if input is not None else (None, None)
        try:
            _, done = self._reaper.spawn(argv, stdin=in_r, stdout=out_w, stderr=err_w)
        finally:
            for fd in (out_w, err_w, in_r):
                if fd is not None:
                    os.close(fd)
        if in_w is not None:
            # Resources JSON is far below the 64 KiB pipe buffer.
            os.write(in_w, (input or "").encode())
            os.close(in_w)
        out, err = await asyncio.gather(_read_all(out_r), _read_all(err_r))
        return out, err, exit_status(await done)


async def _read_all(fd: int) -> bytes:
    """Read a pipe to EOF without blocking the loop; closes ``fd``."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    eof: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if data:
            chunks.append(data)
        elif not eof.done():
            eof.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await eof
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return b"".join(chunks)


def _is_alive(state: dict[str, Any]) -> bool:
    """Whether the init runc recorded still runs (same pid, same start)."""
    pid, started = state.get("init_process_pid", 0), state.get("init_process_start")
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, TypeError, IndexError):
        return False
    # Field 22 (starttime), the 20th after the command's closing paren.
    return len(fields) > 19 and fields[19] == str(started) and fields[0] != "Z"


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _last_error(log_path: str, offset: int) -> str:
    """runc's last error message written to its JSON log since ``offset``."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            lines = f.read().splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            return str(entry.get("msg", ""))
    return ""


def _error(
    cmd: str, id: str, status: int, log_path: str, offset: int, stderr: bytes
) -> ShimError:
    reason = _last_error(log_path, offset)
    if not reason:
        lines = stderr.decode(errors="replace").strip().splitlines()
        reason = lines[-1] if lines else f"exit status {status}"
    message = f"runc {cmd} failed: {reason}"
    if "does not exist" in reason or "container not found" in reason:
        return NotFound(f"container {id}: {message}")
    return RuncError(message)
