"""A container: one OCI bundle, one id, its init and its execs.

The init's exit is classified here (reboot.py decides) and a reboot runs
as an explicit REBOOTING state (DESIGN.md, flow 3): the old container is
deleted with runc and created again from the same bundle, on the same
rootfs mount, the pinned network namespace and the same upstream stdio,
while containerd keeps seeing RUNNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from rebootshim.container import spec as specs
from rebootshim.container.process import Exec, Process, Stdio
from rebootshim.container.reboot import ExitKind, Mode, Policy, StormWindow, classify
from rebootshim.container.state import State
from rebootshim.errors import FailedPrecondition, NotFound
from rebootshim.log import ctx
from rebootshim.reaper import Reaper, exit_status
from rebootshim.runtime import mount, oom
from rebootshim.runtime.runc import NULL_STDIO, Runc, StdioFds
from rebootshim.stdio import Boot, Upstream

log = logging.getLogger(__name__)

# How long an init's exit waits for its execs' exits (they die with the
# PID namespace, so this is only reached when an exec escaped it).
EXEC_EXIT_GRACE = 2.0
NETNS_PIN = "netns"
# How long after a Kill a death by that signal is blamed on the Kill.  An
# init that owns its PID namespace cannot die of a signal it has no
# handler for (SIGNAL_UNKILLABLE; kernel sig_task_ignored()), so this
# guard is defensive, and kept short: a real reboot soon after a
# "reload" SIGHUP must still restart the container.
SIGNAL_GRACE = 0.1
# After a failed runc exec, how long to look for a reboot that explains it.
EXEC_RACE_GRACE = 0.1
# The status Wait reports for an exec whose start failed.
EXEC_FAILED = 255
# How long Delete waits for output still in flight to reach the client.
DRAIN_AT_DELETE = 2.0


class Notifier(Protocol):
    """The events a container emits; the service turns them into protobuf."""

    def started(self, id: str, pid: int) -> None: ...
    def exec_started(self, id: str, exec_id: str, pid: int) -> None: ...
    def exited(
        self, id: str, process_id: str, pid: int, status: int, at: float
    ) -> None: ...
    def oom(self, id: str) -> None: ...


def read_pid(path: str) -> int:
    with open(path, encoding="ascii") as f:
        return int(f.read().strip())


def write_json_atomic(path: str, value: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f)
    os.replace(tmp, path)


class Container(Process):
    """The init process is the container (as in containerd's model)."""

    def __init__(
        self,
        id: str,
        namespace: str,
        bundle: str,
        stdio: Stdio,
        upstream: Upstream,
        runc: Runc,
        reaper: Reaper,
        notifier: Notifier,
        spec: specs.Spec,
        policy: Policy,
    ) -> None:
        super().__init__(id, stdio, upstream)
        self.namespace = namespace
        self.bundle = bundle
        self.runc = runc
        self.reaper = reaper
        self.notifier = notifier
        self.spec = spec
        self.policy = policy
        self.owns_pid_ns = specs.owns_namespace(spec, "pid")
        self.execs: dict[str, Exec] = {}
        self.rootfs_mounted = False
        self.reboot_count = 0
        self._storm = StormWindow(policy.max_reboots, policy.window)
        # signal -> when Kill sent it, for the current boot (classify()).
        self._signalled: dict[int, float] = {}
        self._abort_signal: int | None = None
        self._reboot_task: asyncio.Task[None] | None = None
        self._spec_dirty = False
        self._netns_pin: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._oom: oom.OomWatch | None = None

    @property
    def pid_file(self) -> str:
        return os.path.join(self.bundle, "init.pid")

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on the loop, keeping a reference until it ends."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ctx(self, **fields: Any) -> dict[str, dict[str, Any]]:
        return ctx(id=self.id, pid=self.pid, **fields)

    # -- create / start ----------------------------------------------------

    async def create(self) -> int:
        """runc create the first boot; the caller cleans up on failure."""
        self.pid = await self._create_boot()
        self._watch_init(self.pid)
        if self.policy.mode is Mode.RESTART and specs.owns_namespace(
            self.spec, "network"
        ):
            self._pin_netns()
        return self.pid

    def _pin_netns(self) -> None:
        # Pinned once at the first boot; every later boot joins it, so its
        # interfaces, addresses and routes survive the reboot.
        path = os.path.join(self.bundle, NETNS_PIN)
        mount.pin_namespace(self.pid, "net", path)
        self._netns_pin = path
        self.spec = specs.join_network(self.spec, path)
        self._spec_dirty = True

    async def _create_boot(self) -> int:
        boot = self.upstream.new_boot()
        try:
            await self.runc.create(
                self.id, self.bundle, self.pid_file, _fds(boot), boot.console_socket
            )
            await boot.started()
        except BaseException:
            boot.abort()
            raise
        pid = read_pid(self.pid_file)
        self._watch_oom(pid)
        return pid

    def _watch_oom(self, pid: int) -> None:
        """Each boot has a cgroup of its own (runc makes it anew)."""
        self._stop_oom()
        self._oom = oom.watch_oom(pid, lambda: self.notifier.oom(self.id))

    def _stop_oom(self) -> None:
        if self._oom is not None:
            self._oom.close()
            self._oom = None

    async def start(self) -> int:
        if self.state is not State.CREATED:
            raise FailedPrecondition(
                f"container {self.id} is {self.state}, not created"
            )
        await self.runc.start(self.id, self.bundle)
        if self.state is State.CREATED:
            self.move(State.RUNNING)
        self.notifier.started(self.id, self.pid)
        log.info("started", extra=self._ctx())
        return self.pid

    def _watch_init(self, pid: int) -> None:
        fut = self.reaper.wait(pid)
        fut.add_done_callback(lambda f: self._on_init_exit(pid, f))

    # -- the init's exit: reboot, power-off or exit --------------------------

    def _on_init_exit(self, pid: int, fut: asyncio.Future[int]) -> None:
        if fut.cancelled() or pid != self.pid:
            return
        status = fut.result()
        if self.state not in (State.CREATED, State.RUNNING, State.PAUSED):
            return
        kind = classify(status, self.owns_pid_ns, self._recent_signals())
        code = exit_status(status)
        if kind is ExitKind.REBOOT and self.policy.mode is Mode.RESTART:
            if self._storm.allow(time.monotonic()):
                self.move(State.REBOOTING)
                self._reboot_task = asyncio.create_task(self._reboot(code))
                return
            log.warning(
                "reboot storm: more than %d reboots in %.0fs, exiting",
                self.policy.max_reboots,
                self.policy.window,
                extra=self._ctx(exit_status=code, reboot_count=self.reboot_count),
            )
        self._background(self._finish(code, kind.value))

    def _recent_signals(self) -> set[int]:
        """Signals Kill delivered shortly before the init died.

        An init that owns its PID namespace ignores a handler-less signal
        from outside (pid_namespaces(7)), so one sent long ago, ignored,
        must not turn a later real reboot into an exit.
        """
        now = time.monotonic()
        return {s for s, at in self._signalled.items() if now - at < SIGNAL_GRACE}

    async def _finish(self, code: int, exit_type: str) -> None:
        """The container ends: execs' exits first, then the init's."""
        await self._end_execs()
        if self.state is State.DELETED or self.has_exited:
            return
        exit = self.set_exited(code)
        self._stop_oom()
        log.info("exited", extra=self._ctx(exit_status=code, exit_type=exit_type))
        self.notifier.exited(self.id, self.id, self.pid, code, exit.at)
        # Clients wait for their stdio copy to end before they Delete
        # (containerd task.Delete calls io.Wait first), so close it now.
        self._background(finish_io(self.upstream))

    async def _end_execs(self) -> None:
        """Wait for the execs that died with the PID namespace; publish them."""
        alive = [e for e in self.execs.values() if e.state is State.RUNNING]
        if not alive:
            return
        waits = [asyncio.ensure_future(e.wait()) for e in alive]
        _, pending = await asyncio.wait(waits, timeout=EXEC_EXIT_GRACE)
        for fut in pending:
            fut.cancel()
        for e in alive:
            if not e.has_exited:
                # Outside our PID namespace (e.g. a shared one): end it.
                _kill_quietly(e.pid, signal.SIGKILL)
        if pending:
            await asyncio.wait([asyncio.ensure_future(e.wait()) for e in alive])

    # -- the reboot flow -------------------------------------------------------

    async def _reboot(self, code: int) -> None:
        """DESIGN.md flow 3, steps 2-5; a Kill or Delete ends it early.

        The abort flag is checked after every await that precedes RUNNING;
        the last check and the move to RUNNING happen in one step of the
        loop, so a Kill is either seen here or lands on the new boot.
        """
        began = time.monotonic()
        self.reboot_count += 1
        self._signalled.clear()
        self._stop_oom()  # the old cgroup's removal is no OOM
        log.info("rebooting", extra=self._ctx(reboot_count=self.reboot_count))
        try:
            pid = await self._recreate()
        except Exception as exc:
            log.error(
                "reboot failed, ending the container: %s",
                exc,
                extra=self._ctx(reboot_count=self.reboot_count),
            )
            await self._delete_quietly()
            return await self._finish(code, ExitKind.REBOOT.value)
        if pid is None or self._aborted():
            return await self._abort_reboot(created=pid is not None)
        self.pid = pid
        self.move(State.RUNNING)
        self._watch_init(pid)
        downtime = (time.monotonic() - began) * 1000
        self.notifier.started(self.id, pid)
        log.info(
            "rebooted",
            extra=self._ctx(
                reboot_count=self.reboot_count, downtime_ms=f"{downtime:.1f}"
            ),
        )

    async def _recreate(self) -> int | None:
        """Steps 2-4: the new boot's pid, or None if a Kill came first."""
        await self._end_execs()
        if not self.runc.remove_stopped(self.id):
            await self._delete_runc_container()
        if self._aborted():
            return None
        self._write_spec_if_dirty()
        pid = await self._create_boot()
        if self._aborted():
            await self._delete_quietly()
            return None
        await self.runc.start(self.id, self.bundle)
        return pid

    def _aborted(self) -> bool:
        return self._abort_signal is not None

    async def _abort_reboot(self, created: bool = False) -> None:
        if created:
            await self._delete_quietly()
        sig = self._abort_signal or signal.SIGKILL
        log.info("reboot cancelled by kill", extra=self._ctx(signal=sig))
        await self._finish(128 + sig, ExitKind.EXIT.value)

    async def _delete_runc_container(self) -> None:
        with contextlib.suppress(NotFound):
            await self.runc.delete(self.id, self.bundle, force=True)

    async def _delete_quietly(self) -> None:
        """On a path that ends the container anyway: log, never raise."""
        try:
            await self._delete_runc_container()
        except Exception as exc:
            log.warning("runc delete failed: %s", exc, extra=self._ctx())

    def _write_spec_if_dirty(self) -> None:
        if self._spec_dirty:
            write_json_atomic(os.path.join(self.bundle, "config.json"), self.spec)
            self._spec_dirty = False

    async def wait_reboot(self) -> None:
        """Return once no reboot is in flight."""
        task = self._reboot_task
        if task is not None and not task.done():
            await asyncio.shield(task)

    # -- requests on a live container -----------------------------------------

    async def kill(self, sig: int, all: bool) -> None:
        if self.state is State.REBOOTING:
            # No init to signal: the kill wins and the reboot stops.
            self._abort_signal = sig
            return
        if self.state is State.STOPPED and all:
            return
        self.check_alive()
        self._signalled[sig] = time.monotonic()
        await self.runc.kill(self.id, self.bundle, sig, all=all)

    async def pause(self) -> None:
        if self.state is not State.RUNNING:
            raise FailedPrecondition(
                f"container {self.id} is {self.state}, not running"
            )
        await self.runc.pause(self.id, self.bundle)
        if self.state is not State.RUNNING:
            # The init died (say, rebooted) while runc froze the cgroup.
            raise FailedPrecondition(f"container {self.id} is {self.state} now")
        self.move(State.PAUSED)

    async def resume(self) -> None:
        if self.state is not State.PAUSED:
            raise FailedPrecondition(f"container {self.id} is {self.state}, not paused")
        await self.runc.resume(self.id, self.bundle)
        if self.state is State.PAUSED:  # else it exited or rebooted meanwhile
            self.move(State.RUNNING)

    async def update(self, resources: dict[str, Any]) -> None:
        """Apply now and keep for every later boot (merged, as runc update
        merges: limits the request does not name stay as they were)."""
        await self.wait_reboot()
        self.check_alive()
        await self.runc.update(self.id, self.bundle, resources)
        self.spec = specs.with_resources(self.spec, resources)
        self._spec_dirty = True

    async def pids(self) -> list[int]:
        self.check_alive()
        if self.state is State.REBOOTING:
            await self.wait_reboot()
        return await self.runc.ps(self.id, self.bundle)

    # -- execs -----------------------------------------------------------------

    def get_process(self, exec_id: str) -> Process:
        if not exec_id:
            return self
        try:
            return self.execs[exec_id]
        except KeyError:
            raise NotFound(f"exec {exec_id} not found in container {self.id}") from None

    async def start_exec(self, proc: Exec) -> int:
        """runc exec; an exec that raced a reboot runs in the new boot."""
        for attempt in (1, 2):
            await self.wait_reboot()
            if self.state not in (State.RUNNING, State.PAUSED):
                self._exec_failed(proc)
                raise FailedPrecondition(
                    f"container {self.id} is {self.state}, not running"
                )
            boots = self.reboot_count
            try:
                await self._exec_once(proc)
                break
            except Exception:
                if attempt == 1 and await self._rebooted_since(boots):
                    continue
                self._exec_failed(proc)
                raise
        proc.move(State.RUNNING)
        self.notifier.exec_started(self.id, proc.id, proc.pid)
        fut = self.reaper.wait(proc.pid)
        fut.add_done_callback(lambda f: self._on_exec_exit(proc, f))
        return proc.pid

    async def _rebooted_since(self, boots: int) -> bool:
        """Whether a reboot began after ``boots``; the init's exit may reach
        the reaper a moment after runc found the container stopped."""
        await asyncio.sleep(EXEC_RACE_GRACE)
        return self.reboot_count != boots or self.state is State.REBOOTING

    async def _exec_once(self, proc: Exec) -> None:
        pid_file = os.path.join(self.bundle, f"{proc.id}.pid")
        process = specs.prepare_exec(proc.spec, self.policy, self.spec)
        boot = proc.upstream.new_boot()
        try:
            await self.runc.exec(
                self.id, self.bundle, process, pid_file, _fds(boot), boot.console_socket
            )
            await boot.started()
            proc.pid = read_pid(pid_file)
        except BaseException:
            boot.abort()
            raise
        finally:
            _unlink_quietly(pid_file)

    def _exec_failed(self, proc: Exec) -> None:
        """An exec that never ran: close its stdio, so a client waiting for
        the FIFOs to end (the Go client does after a failed Start) returns,
        and end its Wait, as the runc shim does.  No exit event: it never
        started."""
        proc.upstream.close()
        proc.set_exited(EXEC_FAILED)

    def _on_exec_exit(self, proc: Exec, fut: asyncio.Future[int]) -> None:
        if fut.cancelled() or proc.has_exited:
            return
        code = exit_status(fut.result())
        exit = proc.set_exited(code)
        log.info(
            "exec exited",
            extra=ctx(id=self.id, exec_id=proc.id, pid=proc.pid, exit_status=code),
        )
        self.notifier.exited(self.id, proc.id, proc.pid, code, exit.at)
        self._background(finish_io(proc.upstream))

    # -- delete ----------------------------------------------------------------

    async def delete(self) -> None:
        """Tear everything down; the container must be stopped or created."""
        if self.state is State.REBOOTING:
            self._abort_signal = self._abort_signal or signal.SIGKILL
            await self.wait_reboot()
        if self.state not in (State.CREATED, State.STOPPED):
            raise FailedPrecondition(
                f"cannot delete container {self.id}: it is {self.state}"
            )
        await self._delete_runc_container()
        if not self.has_exited:
            self.set_exited(128 + signal.SIGKILL)
        await self.release()
        self.move(State.DELETED)

    async def release(self) -> None:
        """Undo what Create set up: netns pin, rootfs, stdio.  Idempotent."""
        self._stop_oom()
        if self._netns_pin is not None:
            mount.unpin_namespace(self._netns_pin)
            self._netns_pin = None
        if self.rootfs_mounted:
            mount.unmount_all(os.path.join(self.bundle, "rootfs"))
            self.rootfs_mounted = False
        for proc in [self, *self.execs.values()]:
            await finish_io(proc.upstream, DRAIN_AT_DELETE)


def _fds(boot: Boot) -> StdioFds:
    return StdioFds(*boot.fds) if boot.fds is not None else NULL_STDIO


async def finish_io(upstream: Upstream, timeout: float | None = None) -> None:
    """Deliver what is left of the output, then close the client's streams.

    With ``timeout``, a pipe some escaped process still holds open cannot
    keep Delete waiting: what it has not written by then is not relayed.
    """
    try:
        await asyncio.wait_for(upstream.drain(), timeout)
    except TimeoutError:
        log.warning("stdio still open %.0fs after exit, closing it", timeout)
    upstream.close()


def _kill_quietly(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
